"""A campaign across a daylight-saving weekend, in simulated time.

Each lead never answers and is tried again 150 minutes later, which is past
its one-hour window: so it is called once on Saturday, Sunday and Monday,
each time at the opening of its local window, on either side of the change.
A dialer reading a fixed offset would call an hour off on the Sunday.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from campaign_store.models import FollowUpRule, HourRange, Schedule
from campaign_store.store import Store
from dialer.carrier_standin import CarrierStandin, Scenario
from tests.dialer.conftest import (
    ACCOUNT,
    TOKEN,
    SimClock,
    dialers,
    fast_forward,
    seed,
)

WEEKENDS = {
    # US clocks go forward on Sunday 8 March 2026; London's do not.
    "spring-forward": (
        datetime(2026, 3, 7, 0, 0, tzinfo=ZoneInfo("UTC")),
        ["America/New_York", "America/Chicago", "America/Los_Angeles",
         "America/Phoenix", "Europe/London"],
    ),
    # European clocks go back on Sunday 25 October 2026; New York's do not.
    "fall-back": (
        datetime(2026, 10, 24, 0, 0, tzinfo=ZoneInfo("UTC")),
        ["Europe/London", "Europe/Berlin", "Europe/Helsinki", "America/New_York"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("weekend", sorted(WEEKENDS))
async def test_calls_stay_in_local_hours_across_the_change(
    weekend: str, store: Store, redis_url: str
) -> None:
    """Saturday, Sunday and Monday: every call between 09:00 and 10:00 local."""
    saturday, zones = WEEKENDS[weekend]
    numbers = [
        (f"+1212555{i:04d}", zones[i % len(zones)]) for i in range(3 * len(zones))
    ]
    schedule = Schedule(
        days=["sat", "sun", "mon"],
        hours=[HourRange(start="09:00", end="10:00")],
        timezone_policy="lead",
    )
    rules = [FollowUpRule(outcome="no_answer", delay_minutes=150, max_attempts=3)]
    campaign, leads = await seed(
        store, numbers, schedule=schedule, follow_ups=rules, max_concurrent=30
    )
    carrier = CarrierStandin(
        ACCOUNT,
        TOKEN,
        script=lambda to, n: Scenario("no-answer"),
        time_scale=60.0,
        callback_retries=0,
    )
    await carrier.start()
    clock = SimClock(saturday.timestamp())

    async def done() -> bool:
        stored = [await store.lead_by_id(campaign.id, x.id) for x in leads]
        return all(x.attempts == 3 and x.next_attempt_at is None for x in stored)

    try:
        async with dialers(redis_url, carrier, 2, clock=clock):
            await fast_forward(
                store,
                campaign.id,
                clock,
                stop_at=saturday.timestamp() + 4 * 86_400,
                done=done,
                limit_s=60,
            )
    finally:
        await carrier.stop()

    for lead in leads:
        zone = ZoneInfo(lead.timezone or "UTC")
        walls = [
            datetime.fromtimestamp(clock.at(c.created_at), zone)
            for c in carrier.calls_to(lead.phone)
        ]
        assert [w.strftime("%a") for w in walls] == ["Sat", "Sun", "Mon"], walls
        # Each call in the first minutes of the window, none outside it.
        assert all(w.hour == 9 and w.minute < 5 for w in walls), (lead.timezone, walls)
    assert carrier.overlapping_calls() == []
