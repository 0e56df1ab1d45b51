"""The lead lifecycle after an attempt: pure rules, on a fixed clock."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from campaign_store.models import FollowUpRule, HourRange, LeadStatus, Schedule
from dialer.lifecycle import Result, settle
from dialer.window import Window

NY = ZoneInfo("America/New_York")
ALWAYS = Window.build(
    Schedule(days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
             hours=[HourRange(start="00:00", end="24:00")]),
    "America/New_York",
)  # fmt: skip
OFFICE = Window.build(Schedule(), "America/New_York")  # weekdays 09:00-17:00
RULES = [
    FollowUpRule(outcome="no_answer", delay_minutes=60, max_attempts=3),
    FollowUpRule(outcome="voicemail", delay_minutes=240, max_attempts=2),
    FollowUpRule(outcome="callback", delay_minutes=30, max_attempts=4),
]


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=NY).timestamp()


def test_final_outcomes_end_the_lead() -> None:
    """Qualified, not interested and do-not-call are never tried again."""
    for result, status in [
        (Result.QUALIFIED, LeadStatus.QUALIFIED),
        (Result.NOT_INTERESTED, LeadStatus.NOT_INTERESTED),
        (Result.DO_NOT_CALL, LeadStatus.DO_NOT_CALL),
        (Result.WRONG_PERSON, LeadStatus.COMPLETED),
    ]:
        settled = settle(
            result, attempts=1, rules=RULES, window=ALWAYS, now=at("2026-12-01T10:00")
        )
        assert settled.status == status and settled.final
        assert settled.next_attempt_at is None


def test_no_answer_is_retried_after_the_delay() -> None:
    """A no-answer with attempts left is due again `delay` later."""
    now = at("2026-12-01T10:00")
    settled = settle(Result.NO_ANSWER, attempts=1, rules=RULES, window=ALWAYS, now=now)
    assert settled.status == LeadStatus.NO_ANSWER and not settled.final
    assert settled.next_attempt_at == now + 3600


def test_retry_moves_into_the_next_window() -> None:
    """A retry that would land after hours waits for the next opening."""
    settled = settle(
        Result.NO_ANSWER,
        attempts=1,
        rules=RULES,
        window=OFFICE,
        now=at("2026-12-04T16:30"),
    )  # a Friday
    assert settled.next_attempt_at == at("2026-12-07T09:00")  # Monday


def test_attempt_limit_makes_it_final() -> None:
    """The last allowed no-answer leaves the lead as no answer, for good."""
    settled = settle(Result.NO_ANSWER, attempts=3, rules=RULES, window=ALWAYS, now=0.0)
    assert settled.final and settled.status == LeadStatus.NO_ANSWER


def test_busy_uses_the_no_answer_rule_and_unruled_results_end() -> None:
    """busy falls back to the no-answer rule; failed without a rule is final."""
    busy = settle(Result.BUSY, attempts=1, rules=RULES, window=ALWAYS, now=0.0)
    assert not busy.final and busy.next_attempt_at == 3600
    failed = settle(Result.FAILED, attempts=1, rules=RULES, window=ALWAYS, now=0.0)
    assert failed.final and failed.status == LeadStatus.FAILED


def test_callback_at_the_asked_time() -> None:
    """A callback is due when the lead asked, moved into the window if needed."""
    now = at("2026-12-01T10:00")
    asked = at("2026-12-02T15:00")
    settled = settle(
        Result.CALLBACK,
        attempts=1,
        rules=RULES,
        window=OFFICE,
        now=now,
        callback_at=asked,
    )
    assert settled.status == LeadStatus.CALLBACK and settled.next_attempt_at == asked
    late = settle(
        Result.CALLBACK, attempts=1, rules=RULES, window=OFFICE, now=now,
        callback_at=at("2026-12-02T20:00"),
    )  # fmt: skip
    assert late.next_attempt_at == at("2026-12-03T09:00")


def test_canceled_is_not_held_against_the_lead() -> None:
    """A call canceled by a pause leaves the lead due again, as new."""
    settled = settle(Result.CANCELED, attempts=1, rules=RULES, window=ALWAYS, now=5.0)
    assert settled.status == LeadStatus.NEW and settled.next_attempt_at == 5.0
