"""Calls the server expects: one-time nonces handed out in TwiML.

The TwiML webhook registers each answered call here and puts the returned
nonce in the stream's `<Parameter>`s; the stream's `start` must present it,
once, within `ttl_s`. That ties a media stream to a webhook Twilio signed,
so a stranger who reaches the websocket cannot start an agent on our dime.
Kept in process memory: a stream always lands on the server that answered its
webhook when one server runs; a fleet behind a balancer would move this into
Redis next to the campaign store.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ExpectedCall:
    """What the webhook knew about a call when it answered it."""

    call_id: str
    call_sid: str
    lead_id: str = ""
    campaign_id: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    caller: str = ""  # the caller's number, for calls the lead placed to us
    inbound: bool = False


class CallDirectory:
    """Nonce -> expected call, each nonce good for one stream."""

    def __init__(self, ttl_s: float = 120.0) -> None:
        self.ttl_s = ttl_s
        self._expected: dict[str, tuple[float, ExpectedCall]] = {}

    def register(self, call: ExpectedCall) -> str:
        self._expire()
        nonce = secrets.token_urlsafe(18)
        self._expected[nonce] = (time.monotonic() + self.ttl_s, call)
        return nonce

    def claim(self, nonce: str) -> ExpectedCall | None:
        """The call for `nonce`, removing it; None when unknown or expired."""
        self._expire()
        entry = self._expected.pop(nonce, None)
        return entry[1] if entry else None

    def _expire(self) -> None:
        now = time.monotonic()
        for nonce in [
            n for n, (deadline, _) in self._expected.items() if deadline < now
        ]:
            del self._expected[nonce]
