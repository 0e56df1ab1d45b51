"""The dialer under faults: a stopped process, a Redis killed, pauses at random.

The carrier stand-in's call log is the ground truth throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from campaign_store import codec
from campaign_store import operations as ops
from campaign_store.keys import CampaignKeys
from campaign_store.models import Attempt, FollowUpRule, HourRange, LeadStatus, Schedule
from campaign_store.redis_server import embedded_redis
from campaign_store.store import Store
from dialer.call_status import CallStatus
from dialer.carrier_standin import CarrierStandin, Scenario
from dialer.dialer import CPS
from dialer.lifecycle import FINAL
from tests.dialer.conftest import (
    ACCOUNT,
    EVERY_DAY,
    TOKEN,
    SimClock,
    T,
    dialer_process,
    dialers,
    end_process,
    fast_forward,
    seed,
    unsettled,
    until,
)

NY = "America/New_York"


async def _lease(store: Store, cid: str, lead_id: str) -> tuple[str, str]:
    """(token, attempt id) of the lead's lease, or empty strings."""
    raw = await store.redis.hget(CampaignKeys(cid).lease_info, lead_id)
    if raw is None:
        return "", ""
    token, _owner, attempt = raw.decode().split("|", 2)
    return token, attempt


async def test_a_dialer_stopped_past_its_lease_is_fenced_off(
    store: Store, redis_url: str, tmp_path: Path
) -> None:
    """SIGSTOP before the dial, another dialer takes the lead: SIGCONT dials nothing."""
    carrier = CarrierStandin(
        ACCOUNT,
        TOKEN,
        script=lambda to, n: Scenario("busy", ring_s=3.0),
        callback_retries=0,
    )
    await carrier.start()
    campaign, [lead] = await seed(
        store,
        [("+12125550199", NY)],
        follow_ups=[FollowUpRule(outcome="failed", delay_minutes=0, max_attempts=2)],
    )
    # The account's dial slots are taken: a dialer that recorded its attempt
    # waits for one, the moment this test stops it at.
    await store.redis.zadd(CPS, {"closed": time.time() * 1000 + 3_600_000})
    settings = {
        "lease_s": "1",
        "tick_s": "0.05",
        "calls_per_second": "1",
        "reconcile_after_s": "1",
    }
    first = dialer_process(redis_url, carrier.base_url, tmp_path / "d1.log", **settings)
    second = None
    try:

        async def recorded() -> bool:
            return bool((await _lease(store, campaign.id, lead.id))[1])

        await until(recorded, 60)
        stale_token, stale_attempt = await _lease(store, campaign.id, lead.id)
        first.send_signal(signal.SIGSTOP)

        # Past its lease, the lead is reconciled and taken by another dialer.
        second = dialer_process(
            redis_url, carrier.base_url, tmp_path / "d2.log", **settings
        )

        async def taken_over() -> bool:
            token, attempt = await _lease(store, campaign.id, lead.id)
            return bool(attempt) and token != stale_token

        await until(taken_over, 60)
        await store.redis.zrem(CPS, "closed")
        await until(lambda: _true(len(carrier.calls) == 1), 10)

        # Resumed, the stale dialer gets its slot, then is refused.
        first.send_signal(signal.SIGCONT)

        async def slot_taken() -> bool:
            return await store.redis.zscore(CPS, stale_attempt) is not None

        await until(slot_taken, 10)
        assert end_process(first) == 0  # it drains its attempt before exiting
        assert [c.to for c in carrier.calls.values()] == [lead.phone]
        stale = await store.redis.get(CampaignKeys(campaign.id).attempt(stale_attempt))
        assert codec.decode("attempt", stale, Attempt).call_sid == ""
    finally:
        end_process(first)
        if second is not None:
            end_process(second)
        await carrier.stop()


async def _true(value: bool) -> bool:
    return value


async def test_redis_killed_and_restarted_loses_and_repeats_nothing(
    tmp_path: Path,
) -> None:
    """Redis SIGKILLed mid-campaign, back from its AOF: one call per lead, none lost."""
    numbers = [(f"+1212555{i:04d}", NY) for i in range(40)]
    carrier = CarrierStandin(
        ACCOUNT,
        TOKEN,
        script=lambda to, n: Scenario("busy", ring_s=0.5),
        time_scale=2.0,
        callback_retries=0,
    )
    await carrier.start()
    directory = tmp_path / "redis"
    with contextlib.ExitStack() as servers:
        server = servers.enter_context(embedded_redis(directory))
        store = await Store.connect(server.url)
        try:
            campaign, leads = await seed(store, numbers, max_concurrent=8)

            async def finished() -> bool:
                stored = [await store.lead_by_id(campaign.id, x.id) for x in leads]
                return all(x.attempts == 1 for x in stored) and not (
                    await unsettled(store, campaign.id)
                )

            async with dialers(server.url, carrier, 2):
                await until(lambda: _true(len(carrier.calls) >= 10), 60)
                os.kill(server.pid, signal.SIGKILL)
                await asyncio.sleep(0.5)  # dialers and callbacks hit a dead port
                servers.enter_context(embedded_redis(directory, port=server.port))
                await until(finished, 90)
            for lead in leads:
                stored = await store.lead_by_id(campaign.id, lead.id)
                assert stored.next_attempt_at is None, stored
                assert stored.status == LeadStatus.NO_ANSWER, stored
        finally:
            await store.close()
            await carrier.stop()
    called = sorted(c.to for c in carrier.calls.values())
    assert called == sorted(phone for phone, _ in numbers)
    assert carrier.overlapping_calls() == []


async def test_no_call_is_created_after_a_pause_is_acknowledged(
    store: Store, redis_url: str
) -> None:
    """Pauses at random moments: no call between ack and resume; all inside hours."""
    rng = random.Random(11)
    zones = [NY, "America/Chicago", "America/Los_Angeles", "Europe/London"]
    numbers = [(f"+1212555{i:04d}", zones[i % len(zones)]) for i in range(24)]
    schedule = Schedule(
        days=EVERY_DAY,
        hours=[HourRange(start="09:00", end="10:00")],
        timezone_policy="lead",
    )

    def script(to: str, n: int) -> Scenario:
        answer = rng.choice(["no-answer", "busy", "busy", "failed"])
        return Scenario(answer, ring_s=rng.uniform(0.5, 2.0))

    carrier = CarrierStandin(
        ACCOUNT, TOKEN, script=script, time_scale=60.0, callback_retries=0
    )
    await carrier.start()
    rules = [FollowUpRule(outcome="no_answer", delay_minutes=1, max_attempts=3)]
    campaign, leads = await seed(
        store, numbers, schedule=schedule, follow_ups=rules, max_concurrent=24
    )
    # 09:58:30 in New York: its calls stop 30 s in, mid-campaign (the last
    # minute is the start margin); the other zones open later.
    start = datetime(2026, 6, 3, 9, 58, 30, tzinfo=ZoneInfo(NY)).timestamp()
    clock = SimClock(start)
    quiet: list[tuple[float, float]] = []  # (acknowledged, resumed), real time

    async def done() -> bool:
        stored = [await store.lead_by_id(campaign.id, x.id) for x in leads]
        return all(
            x.status in FINAL or (x.next_attempt_at is None and x.attempts)
            for x in stored
        )

    async def pauses() -> None:
        while len(quiet) < 3 and not await done():
            # A random moment while calls are being placed.
            if not await unsettled(store, campaign.id):
                await asyncio.sleep(0.02)
                continue
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            await ops.pause(store, T, campaign.id)
            acknowledged = time.time()
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            quiet.append((acknowledged, time.time()))
            await store.transition(T, campaign.id, "resume")

    try:
        async with dialers(redis_url, carrier, 2, clock=clock):
            pausing = asyncio.create_task(pauses())
            await fast_forward(
                store,
                campaign.id,
                clock,
                stop_at=start + 3 * 86_400,
                done=done,
                limit_s=120,
            )
            await pausing
    finally:
        await carrier.stop()

    for acknowledged, resumed in quiet:
        late = [c for c in carrier.calls.values() if acknowledged < c.created_at]
        assert all(c.created_at >= resumed for c in late), (acknowledged, late)
    by_phone = {lead.phone: lead for lead in leads}
    for call in carrier.calls.values():
        wall = datetime.fromtimestamp(
            clock.at(call.created_at), ZoneInfo(by_phone[call.to].timezone or NY)
        )
        assert wall.hour == 9, (call.to, wall)
    for phone, _ in numbers:
        counted = [
            c for c in carrier.calls_to(phone) if c.status is not CallStatus.CANCELED
        ]
        assert len(counted) <= 3, phone
    assert carrier.overlapping_calls() == []
    assert len(quiet) >= 2
