"""Helpers for the dialer's fault tests: campaigns, simulated time, dialers.

Everything stays real: a real `redis-server`, the carrier stand-in on
loopback, `Dialer` objects (or `voxdial dialer` processes) on their own Redis
connections. Only time is simulated, through the dialer's injectable clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    AgentInput,
    Campaign,
    CampaignInput,
    FollowUpRule,
    HourRange,
    Lead,
    Pacing,
    PhoneChannel,
    Schedule,
)
from campaign_store.store import Store, new_id
from dialer.carrier_standin import CarrierStandin
from dialer.dialer import Dialer, DialerConfig
from dialer.twilio_carrier import TwilioCarrier
from dialer.window import Jurisdictions
from pipelines.models import Models

T = "acme"
ACCOUNT = "AC" + "2" * 32
TOKEN = "dialer-token"
ANYTIME = Jurisdictions(rules={}, fallback=None)
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAY = Schedule(days=EVERY_DAY, hours=[HourRange(start="00:00", end="24:00")])
NOWHERE = "http://127.0.0.1:9"  # status callbacks are refused: the dialer asks


async def until(check: Callable[[], Awaitable[bool]], limit_s: float) -> None:
    """Poll `check` until it holds; fail after `limit_s` real seconds."""
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"not reached in {limit_s} s"
        await asyncio.sleep(0.05)


async def seed(
    store: Store,
    numbers: Sequence[tuple[str, str]],
    *,
    schedule: Schedule = ALL_DAY,
    follow_ups: Sequence[FollowUpRule] = (),
    max_concurrent: int = 20,
) -> tuple[Campaign, list[Lead]]:
    """A launched phone campaign with one lead per (phone, time zone)."""
    agent = await store.create_agent(T, AgentInput(name="A", system_prompt="Hi."))
    campaign = await store.create_campaign(
        T,
        CampaignInput(
            name="C",
            agent_id=agent.id,
            channel=PhoneChannel(caller_id="+14155550100"),
            schedule=schedule.model_copy(
                update={
                    "pacing": Pacing(
                        calls_per_minute=600, max_concurrent=max_concurrent
                    )
                }
            ),
            follow_ups=list(follow_ups),
        ),
    )
    leads = [
        Lead(
            id=new_id("lead"),
            campaign_id=campaign.id,
            phone=phone,
            name=f"Lead {i}",
            timezone=zone,
        )
        for i, (phone, zone) in enumerate(numbers)
    ]
    await store.add_leads(campaign, leads)
    await store.transition(T, campaign.id, "launch")
    return campaign, leads


async def unsettled(store: Store, campaign_id: str) -> int:
    """Leads still held by a lease."""
    return int(await store.redis.zcard(CampaignKeys(campaign_id).leases))


class SimClock:
    """Simulated time: it runs at the real rate and jumps ahead when told.

    Jumps are recorded, so that a real instant (the carrier's `created_at`)
    can be read back in simulated time.
    """

    def __init__(self, start: float) -> None:
        self.segments = [(time.time(), start)]

    def __call__(self) -> float:
        real, base = self.segments[-1]
        return base + time.time() - real

    def jump_to(self, at: float) -> None:
        self.segments.append((time.time(), at))

    def at(self, real: float) -> float:
        """The simulated time at real time `real`."""
        for since, base in reversed(self.segments):
            if since <= real:
                return base + real - since
        return self.segments[0][1]


async def fast_forward(
    store: Store,
    campaign_id: str,
    clock: SimClock,
    *,
    stop_at: float,
    done: Callable[[], Awaitable[bool]],
    limit_s: float,
) -> None:
    """Skip the idle hours: jump to the next due lead whenever no lead is held.

    A jump happens only with no lease live, so no dial is in flight; a claim
    racing the jump finds its lease expired when it records its attempt.
    """
    ck = CampaignKeys(campaign_id)
    deadline = time.monotonic() + limit_s
    while clock() < stop_at and not await done():
        assert time.monotonic() < deadline, f"campaign not done in {limit_s} s"
        await asyncio.sleep(0.05)
        if await store.redis.zcard(ck.leases):
            continue
        first = await store.redis.zrange(ck.due, 0, 0, withscores=True)
        if not first:
            continue
        due = float(first[0][1]) / 1000
        if due > clock() + 1:
            clock.jump_to(min(due, stop_at))


def config(**over: Any) -> DialerConfig:
    """A dialer that works fast and asks the carrier rather than wait."""
    values: dict[str, Any] = {
        "public_url": NOWHERE,
        "lease_s": 1.5,
        "tick_s": 0.05,
        "calls_per_second": 100,
        "reconcile_after_s": 0.2,
        "jurisdictions": ANYTIME,
    }
    values.update(over)
    return DialerConfig(**values)


@contextlib.asynccontextmanager
async def dialers(
    url: str,
    carrier: CarrierStandin,
    count: int,
    *,
    clock: Callable[[], float] = time.time,
    **over: Any,
) -> AsyncIterator[list[Dialer]]:
    """`count` dialers, each on its own Redis connection, running in the block."""
    stop = asyncio.Event()
    stack = contextlib.AsyncExitStack()
    running = []
    started = []
    try:
        for i in range(count):
            store = await Store.connect(url)
            stack.push_async_callback(store.close)
            client = TwilioCarrier(ACCOUNT, TOKEN, base_url=carrier.base_url)
            stack.push_async_callback(client.close)
            dialer = Dialer(store, client, config(owner=f"d{i}", **over), clock=clock)
            started.append(dialer)
            running.append(asyncio.create_task(dialer.run(stop)))
        yield started
    finally:
        stop.set()
        await asyncio.gather(*running, return_exceptions=True)
        await stack.aclose()


def dialer_process(
    redis_url: str, carrier_url: str, log_path: Path, **settings: str
) -> subprocess.Popen[bytes]:
    """A `voxdial dialer` process against `redis_url` and the carrier stand-in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXDIAL_")}
    env.update(
        VOXDIAL_REDIS_URL=redis_url,
        VOXDIAL_TWILIO_ACCOUNT_SID=ACCOUNT,
        VOXDIAL_TWILIO_AUTH_TOKEN=TOKEN,
        VOXDIAL_TWILIO_API_BASE=carrier_url,
        VOXDIAL_PUBLIC_URL=NOWHERE,
        VOXDIAL_CALLING_HOURS="none",
        VOXDIAL_DATA_DIR=str(log_path.parent / "data"),
        VOXDIAL_LOG_LEVEL="INFO",
        **{f"VOXDIAL_DIALER_{k.upper()}": v for k, v in settings.items()},
    )
    command = [sys.executable, "-c", "from voice.cli import main; main()", "dialer"]
    with log_path.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def end_process(process: subprocess.Popen[bytes], limit_s: float = 10.0) -> int:
    """SIGTERM (SIGCONT first, in case it is stopped); SIGKILL after `limit_s`."""
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            return process.wait(limit_s)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@pytest.fixture(scope="module")
def instant_models() -> Models:
    """The instant speech stand-ins: WhatsApp conversations have no audio."""
    return Models.instant(smart_turn=False)
