"""What an attempt's result does to its lead: the lead lifecycle, without I/O.

An attempt ends in one result: the carrier's (busy, no answer, failed,
canceled, unknown) or, for an answered call, the call's own outcome
(qualified, callback, not interested, wrong person, do not call, voicemail,
completed). `settle` turns it into the lead's next state:

- qualified, not interested, wrong person, do not call and completed are
  final: the lead is never tried again.
- no answer, busy, voicemail, failed and unknown follow the campaign's
  follow-up rule for that result (busy and unknown use the no-answer and
  failed rules): with attempts left, the next attempt is placed `delay`
  after now, moved to the next moment the lead's calling window is open;
  without a rule or with no attempts left, the lead ends there.
- callback: at the time the lead asked for (or after the callback rule's
  delay), moved into the window, within the callback rule's attempt limit.
- canceled (the campaign was paused while the call rang): not held against
  the lead; it is due again at once and waits for the window.

A final status is never left. Everything here is a pure function of its
arguments, the current time included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from campaign_store.models import FollowUpRule, LeadStatus
from dialer.window import Window

__all__ = ["FINAL", "Result", "Settled", "settle"]


class Result(StrEnum):
    QUALIFIED = "qualified"
    CALLBACK = "callback"
    NOT_INTERESTED = "not_interested"
    WRONG_PERSON = "wrong_person"
    DO_NOT_CALL = "do_not_call"
    COMPLETED = "completed"
    VOICEMAIL = "voicemail"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    CANCELED = "canceled"
    UNKNOWN = "unknown"


FINAL = frozenset(
    {
        LeadStatus.QUALIFIED,
        LeadStatus.NOT_INTERESTED,
        LeadStatus.DO_NOT_CALL,
        LeadStatus.COMPLETED,
    }
)

_STATUS = {
    Result.QUALIFIED: LeadStatus.QUALIFIED,
    Result.CALLBACK: LeadStatus.CALLBACK,
    Result.NOT_INTERESTED: LeadStatus.NOT_INTERESTED,
    Result.WRONG_PERSON: LeadStatus.COMPLETED,
    Result.DO_NOT_CALL: LeadStatus.DO_NOT_CALL,
    Result.COMPLETED: LeadStatus.COMPLETED,
    Result.VOICEMAIL: LeadStatus.VOICEMAIL,
    Result.NO_ANSWER: LeadStatus.NO_ANSWER,
    Result.BUSY: LeadStatus.NO_ANSWER,
    Result.FAILED: LeadStatus.FAILED,
    Result.UNKNOWN: LeadStatus.FAILED,
}

# Which follow-up rule a retryable result uses.
_RULE = {
    Result.NO_ANSWER: "no_answer",
    Result.BUSY: "busy",
    Result.VOICEMAIL: "voicemail",
    Result.FAILED: "failed",
    Result.UNKNOWN: "failed",
    Result.CALLBACK: "callback",
}
_FALLBACK_RULE = {"busy": "no_answer"}
DEFAULT_CALLBACK_ATTEMPTS = 3


@dataclass(frozen=True)
class Settled:
    """The lead after an attempt: its status and when it is due again (None: never)."""

    status: LeadStatus
    next_attempt_at: float | None
    final: bool
    reason: str


def _rule(rules: Sequence[FollowUpRule], name: str) -> FollowUpRule | None:
    for candidate in (name, _FALLBACK_RULE.get(name)):
        for rule in rules:
            if rule.outcome == candidate:
                return rule
    return None


def _in_window(window: Window, at: float) -> float | None:
    return at if window.is_open(at) else window.next_open(at, horizon_days=31)


def settle(
    result: Result,
    *,
    attempts: int,
    rules: Sequence[FollowUpRule],
    window: Window,
    now: float,
    callback_at: float | None = None,
) -> Settled:
    """The lead's state after an attempt with `result`; `attempts` counts it."""
    if result is Result.CANCELED:
        return Settled(LeadStatus.NEW, now, False, "canceled before answer")
    status = _STATUS[result]
    if status in FINAL:
        return Settled(status, None, True, result.value)

    rule_name = _RULE[result]
    rule = _rule(rules, rule_name)
    if result is Result.CALLBACK:
        limit = rule.max_attempts if rule else DEFAULT_CALLBACK_ATTEMPTS
        if attempts >= limit:
            return Settled(status, None, True, "callback attempts used up")
        delay = (rule.delay_minutes if rule else 60) * 60.0
        wanted = callback_at if callback_at is not None else now + delay
        due = _in_window(window, max(wanted, now))
        if due is None:
            return Settled(status, None, True, "no calling window for the callback")
        return Settled(status, due, False, "callback")

    if rule is None:
        return Settled(status, None, True, f"no follow-up rule for {rule_name}")
    if attempts >= rule.max_attempts:
        return Settled(status, None, True, f"{rule.max_attempts} attempts made")
    due = _in_window(window, now + rule.delay_minutes * 60.0)
    if due is None:
        return Settled(status, None, True, "no calling window ahead")
    return Settled(status, due, False, f"retry after {rule_name}")
