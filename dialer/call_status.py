"""A call's status as the carrier reports it, merged from unreliable callbacks.

Twilio reports a call's progress in status callbacks that may arrive
duplicated, late, out of order or not at all, so the status we hold is a
merge of whatever arrived, in whatever order. The rules:

- Statuses: `queued`, `initiated`, `ringing`, `in-progress`, then one of the
  final ones: `completed`, `busy`, `no-answer`, `failed`, `canceled`.
- A status only moves forward by rank: queued < initiated < ringing <
  in-progress < any final status. A lower or equal rank changes nothing, so a
  late `ringing` never undoes `in-progress`, and a duplicate is a no-op.
- A final status is never replaced. One call reports a single final status,
  so for the callbacks of one call the merge is order-independent and
  idempotent. Two different final statuses only meet when voxdial decided one
  itself (say, `failed` for a dial with no trace at the carrier) and the
  carrier later said otherwise: the first one stays, and the merge reports a
  conflict so the caller can log it.

Twilio's asynchronous answering-machine callback (`AsyncAmdStatusCallback`)
carries `AnsweredBy` but no `CallStatus`. Machine detection only runs on an
answered call, so `parse_callback` reads such a form as `in-progress`.

Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "ANSWERED_BY",
    "FINAL",
    "CallStatus",
    "Merge",
    "StatusEvent",
    "format_date",
    "is_final",
    "merge",
    "parse_callback",
    "parse_date",
]


class CallStatus(StrEnum):
    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL = frozenset(
    {
        CallStatus.COMPLETED,
        CallStatus.BUSY,
        CallStatus.NO_ANSWER,
        CallStatus.FAILED,
        CallStatus.CANCELED,
    }
)

# Every final status shares the top rank.
_RANK = {
    CallStatus.QUEUED: 0,
    CallStatus.INITIATED: 1,
    CallStatus.RINGING: 2,
    CallStatus.IN_PROGRESS: 3,
}
_FINAL_RANK = 4

# Twilio's values for `AnsweredBy`. Others are kept as given, not refused:
# Twilio has added values before.
ANSWERED_BY = frozenset(
    {
        "human",
        "machine_start",
        "machine_end_beep",
        "machine_end_silence",
        "machine_end_other",
        "fax",
        "unknown",
    }
)


def is_final(status: CallStatus) -> bool:
    """Whether the call has ended with this status."""
    return status in FINAL


def _rank(status: CallStatus) -> int:
    return _RANK.get(status, _FINAL_RANK)


@dataclass(frozen=True)
class Merge:
    """The merged status; whether it moved; whether a final status was contested."""

    status: CallStatus
    changed: bool
    conflict: bool = False


def merge(current: CallStatus | None, new: CallStatus) -> Merge:
    """`current` with `new` folded in, by the rules in the module docstring."""
    if current is None:
        return Merge(new, changed=True)
    if is_final(current):
        return Merge(current, changed=False, conflict=is_final(new) and new != current)
    if _rank(new) > _rank(current):
        return Merge(new, changed=True)
    return Merge(current, changed=False)


@dataclass(frozen=True)
class StatusEvent:
    """One status callback from the carrier, parsed."""

    call_sid: str
    status: CallStatus
    answered_by: str | None = None
    duration_s: int | None = None
    timestamp: float | None = None
    sequence: int | None = None
    to: str = ""
    from_: str = ""
    # An answering-machine verdict, which has no CallStatus of its own.
    from_amd: bool = False


def parse_callback(form: Mapping[str, str]) -> StatusEvent:
    """A status callback's POST form, or ValueError saying what is wrong with it.

    Only `CallSid` and a known `CallStatus` (or, for the machine detection
    callback, `AnsweredBy`) are required. Malformed optional fields are read
    as absent: the status is what matters, and a refused callback is one
    Twilio drops after its retry.
    """
    call_sid = form.get("CallSid", "").strip()
    if not call_sid:
        raise ValueError("status callback without CallSid")
    answered_by = form.get("AnsweredBy", "").strip() or None
    raw_status = form.get("CallStatus", "").strip()
    from_amd = False
    if raw_status:
        try:
            status = CallStatus(raw_status)
        except ValueError:
            raise ValueError(
                f"status callback for {call_sid}: unknown CallStatus {raw_status!r}"
            ) from None
    elif answered_by is not None:
        status, from_amd = CallStatus.IN_PROGRESS, True
    else:
        raise ValueError(
            f"status callback for {call_sid} has neither CallStatus nor AnsweredBy"
        )
    return StatusEvent(
        call_sid=call_sid,
        status=status,
        answered_by=answered_by,
        duration_s=_int_or_none(form.get("CallDuration")),
        timestamp=parse_date(form.get("Timestamp")),
        sequence=_int_or_none(form.get("SequenceNumber")),
        to=form.get("To", ""),
        from_=form.get("From", ""),
        from_amd=from_amd,
    )


def _int_or_none(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        return None


def parse_date(value: str | None) -> float | None:
    """A Twilio date ("Tue, 31 Aug 2010 20:36:28 +0000", RFC 2822) as a POSIX time."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        # RFC 2822's "-0000" means UTC with no claim about the local zone.
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def format_date(t: float) -> str:
    """A POSIX time in Twilio's date format; Twilio keeps whole seconds."""
    moment = dt.datetime.fromtimestamp(int(t), dt.UTC)
    return email.utils.format_datetime(moment)
