"""What the dialer needs from a carrier: place, cancel, end and look up calls.

`dialer.twilio_carrier.TwilioCarrier` implements it over Twilio's REST API;
`dialer.carrier_standin.CarrierStandin` is a local server speaking that same
API, so tests run the real client.

Errors, one class:

    CarrierError      any request to the carrier that failed
                      .retryable  worth trying again later (429, 5xx, network)
                      .placed     create_call only: False when the carrier
                                  certainly created no call (it refused the
                                  request, or it was never sent), None when
                                  nobody knows (a timeout, a 5xx, a connection
                                  lost after sending); other operations: None

A dial whose `placed` is None must be reconciled with `find_calls` before the
number is dialed again, or the lead may get two calls at once.

Phone numbers appear in logs and error messages masked to their last four
digits (`mask_number`); the auth token appears nowhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from dialer.call_status import CallStatus

__all__ = [
    "Carrier",
    "CarrierCall",
    "CarrierError",
    "DialRequest",
    "mask_number",
    "mask_numbers_in",
]


@dataclass(frozen=True)
class DialRequest:
    """One call for the carrier to place."""

    attempt_id: str
    to: str  # E.164
    from_: str  # E.164 caller id
    answer_url: str  # the TwiML webhook (voxdial's POST /twilio/voice?...)
    # Where status callbacks go; carries the attempt as the query parameter
    # `attempt`, so a callback finds its attempt without a lookup.
    status_callback: str
    machine_detection: bool = True
    ring_timeout_s: int = 30


@dataclass(frozen=True)
class CarrierCall:
    """What the carrier says about one call. Times are POSIX seconds."""

    sid: str
    to: str
    from_: str
    status: CallStatus
    created_at: float | None
    answered_at: float | None
    ended_at: float | None
    duration_s: int | None
    answered_by: str | None


class CarrierError(Exception):
    """A request to the carrier failed. See the module docstring."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        placed: bool | None,
        status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.placed = placed
        self.status = status  # the HTTP status, when there was a response
        self.code = code  # the carrier's own error code, when it gave one


class Carrier(Protocol):
    async def create_call(self, request: DialRequest) -> str:
        """Ask the carrier to dial; returns the call SID."""
        ...

    async def cancel_call(self, sid: str) -> bool:
        """Cancel a call still queued or ringing; False if it is past that."""
        ...

    async def hang_up(self, sid: str) -> bool:
        """End a call in any state; False if it had already ended."""
        ...

    async def get_call(self, sid: str) -> CarrierCall | None:
        """The call, or None if the carrier does not know it."""
        ...

    async def find_calls(self, to: str, from_: str, since: float) -> list[CarrierCall]:
        """Calls from `from_` to `to` created at or after `since`, newest first."""
        ...

    async def close(self) -> None: ...


def mask_number(number: str) -> str:
    """A phone number cut to its last four digits, for logs."""
    return "…" + number[-4:] if len(number) > 4 else "…"


# Runs of six or more digits standing alone: phone numbers, not SIDs.
_NUMBER = re.compile(r"(?<![A-Za-z0-9])\+?\d{6,}(?![A-Za-z0-9])")


def mask_numbers_in(text: str) -> str:
    """`text` with every phone number in it masked (carrier messages quote them)."""
    return _NUMBER.sub(lambda m: mask_number(m.group()), text)
