"""Dialers killed at random: does any number get two calls at once, any lead lost?

Everything is real and on loopback: a private `redis-server`, `voxdial serve`
(for the status callbacks), several `voxdial dialer` processes, and the local
carrier stand-in, whose call log is the ground truth. A campaign of leads
spread over many time zones runs while dialers are killed with SIGKILL at
random moments and started again. At the end, checked against the carrier's
log and the store:

- overlapping calls to one number: none;
- calls to a number beyond the campaign's attempt limit: none;
- calls placed while the lead's calling window was closed: none;
- leads lost: none (every lead is final, due again, or held by a live lease);
- calls created after a pause was acknowledged: none (if `--pause`).

    python -m benchmarks.dialer_chaos [--leads 2000] [--dialers 3] [--kills 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from benchmarks.harness import Served, _free_port, _wait_healthy
from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    AgentInput,
    CallRecordModel,
    CampaignInput,
    FollowUpRule,
    HourRange,
    Lead,
    Pacing,
    PhoneChannel,
    Schedule,
)
from campaign_store.redis_server import embedded_redis
from campaign_store.store import Store, new_id
from dialer.attempts import Attempts
from dialer.call_status import CallStatus
from dialer.carrier_standin import Answer, CarrierStandin, Scenario
from dialer.lifecycle import FINAL
from dialer.window import window_for

__all__ = ["ChaosProfile", "ChaosReport", "run_chaos"]

log = logging.getLogger("voxdial.bench.chaos")

ACCOUNT = "AC" + "1" * 32
TOKEN = "chaos-token"
TENANT = "chaos"
ZONES = [
    ("+1212555", "America/New_York"),
    ("+1312555", "America/Chicago"),
    ("+1415555", "America/Los_Angeles"),
    ("+1808555", "Pacific/Honolulu"),
    ("+44207946", "Europe/London"),
    ("+61291234", "Australia/Sydney"),
    ("+91981234", "Asia/Kolkata"),
    ("+97714234", "Asia/Kathmandu"),
]


@dataclass(frozen=True)
class ChaosProfile:
    leads: int = 2000
    dialers: int = 3
    kills: int = 20
    seed: int = 7
    max_concurrent: int = 60
    time_scale: float = 20.0
    lease_s: float = 2.0
    limit_s: float = 600.0
    pause: bool = True
    redis_kills: int = 1


@dataclass
class ChaosReport:
    profile: ChaosProfile
    calls: int = 0
    kills: int = 0
    settled_leads: int = 0
    waiting_leads: int = 0
    overlapping: int = 0
    over_limit: int = 0
    outside_window: int = 0
    lost_leads: int = 0
    after_pause: int = 0
    redis_kills: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return (
            self.overlapping
            + self.over_limit
            + self.outside_window
            + self.lost_leads
            + self.after_pause
        )


def _script(seed: int) -> Any:
    rng = random.Random(seed)

    def choose(to: str, attempt: int) -> Scenario:
        roll = rng.random()
        answer: Answer = (
            "human" if roll < 0.5
            else "no-answer" if roll < 0.7
            else "busy" if roll < 0.8
            else "voicemail" if roll < 0.9
            else "failed"
        )  # fmt: skip
        return Scenario(
            answer=answer, ring_s=rng.uniform(0.5, 4), talk_s=rng.uniform(2, 12)
        )

    return choose


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXDIAL_")}
    env.update(
        VOXDIAL_REDIS_URL=redis_url,
        VOXDIAL_TWILIO_ACCOUNT_SID=ACCOUNT,
        VOXDIAL_TWILIO_AUTH_TOKEN=TOKEN,
        VOXDIAL_LOG_LEVEL="WARNING",
        **extra,
    )
    return env


def _voxdial(*args: str) -> list[str]:
    return [sys.executable, "-c", "from voice.cli import main; main()", *args]


@contextlib.asynccontextmanager
async def _serve(
    redis_url: str, workdir: Path, carrier_url: str
) -> AsyncIterator[Served]:
    port = _free_port()
    log_path = workdir / "serve.log"
    env = _env(
        redis_url,
        VOXDIAL_PORT=str(port),
        VOXDIAL_DATA_DIR=str(workdir / "serve"),
        VOXDIAL_TWILIO_API_BASE=carrier_url,
        VOXDIAL_PUBLIC_URL=f"http://127.0.0.1:{port}",
    )
    process = _spawn(_voxdial("serve"), env, log_path)
    served = Served(process.pid, f"http://127.0.0.1:{port}", "", log_path)
    try:
        await _wait_healthy(process, served, 120)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _spawn(
    command: list[str], env: dict[str, str], log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


class _Dialers:
    """The dialer processes, killed and restarted at will."""

    def __init__(self, count: int, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        for i in range(count):
            self.processes.append(self._start(i))

    def _start(self, i: int) -> subprocess.Popen[bytes]:
        return _spawn(_voxdial("dialer"), self.env, self.workdir / f"dialer-{i}.log")

    def kill_and_restart(self, i: int) -> None:
        process = self.processes[i]
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.processes[i] = self._start(i)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _seed_campaign(store: Store, profile: ChaosProfile) -> tuple[str, list[Lead]]:
    agent = await store.create_agent(
        TENANT, AgentInput(name="Chaos", system_prompt="Hi {{name}}")
    )
    campaign = await store.create_campaign(
        TENANT,
        CampaignInput(
            name="chaos",
            agent_id=agent.id,
            channel=PhoneChannel(caller_id="+14155550100"),
            schedule=Schedule(
                days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                hours=[HourRange(start="00:00", end="24:00")],
                pacing=Pacing(
                    calls_per_minute=600, max_concurrent=profile.max_concurrent
                ),
            ),
            follow_ups=[
                FollowUpRule(outcome="no_answer", delay_minutes=0, max_attempts=3),
                FollowUpRule(outcome="voicemail", delay_minutes=0, max_attempts=2),
                FollowUpRule(outcome="failed", delay_minutes=0, max_attempts=2),
            ],
        ),
    )
    leads = [
        Lead(
            id=new_id("lead"),
            campaign_id=campaign.id,
            phone=f"{ZONES[i % len(ZONES)][0]}{i:04d}",
            name=f"Lead {i}",
            timezone=ZONES[i % len(ZONES)][1],
        )
        for i in range(profile.leads)
    ]
    for start in range(0, len(leads), 500):
        await store.add_leads(campaign, leads[start : start + 500])
    return campaign.id, leads


class _Redis:
    """The campaign's redis-server, which the run may kill and bring back."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stack = contextlib.ExitStack()
        self.server = self.stack.enter_context(embedded_redis(directory))

    def kill_and_restart(self) -> None:
        os.kill(self.server.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.server.pid, 0)
        self.server = self.stack.enter_context(
            embedded_redis(self.directory, port=self.server.port)
        )

    def close(self) -> None:
        self.stack.close()


async def run_chaos(profile: ChaosProfile, workdir: Path) -> ChaosReport:
    report = ChaosReport(profile)
    rng = random.Random(profile.seed)
    started = time.monotonic()
    redis = _Redis(workdir / "redis")
    url = redis.server.url
    try:
        store = await Store.connect(url)
        carrier = CarrierStandin(
            ACCOUNT,
            TOKEN,
            script=_script(profile.seed),
            time_scale=profile.time_scale,
            seed=profile.seed,
        )
        await carrier.start()
        try:
            async with _serve(url, workdir, carrier.base_url) as served:
                cid, leads = await _seed_campaign(store, profile)
                env = _env(
                    url,
                    VOXDIAL_TWILIO_API_BASE=carrier.base_url,
                    VOXDIAL_PUBLIC_URL=served.url,
                    VOXDIAL_DIALER_LEASE_S=str(profile.lease_s),
                    VOXDIAL_DIALER_TICK_S="0.05",
                    VOXDIAL_DIALER_CALLS_PER_SECOND="200",
                    VOXDIAL_DIALER_RECONCILE_AFTER_S="5",
                    VOXDIAL_DATA_DIR=str(workdir / "dialer"),
                )
                await store.transition(TENANT, cid, "launch")
                dialers = _Dialers(profile.dialers, env, workdir)
                records = asyncio.create_task(_store_records(store, carrier))
                try:
                    await _chaos(
                        store, cid, dialers, redis, profile, report, rng, carrier
                    )
                finally:
                    dialers.stop()
                    records.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await records
                await _settle_wait(store, cid, 15.0)
                campaign = await store.campaign_by_id(cid)
                limit = max(r.max_attempts for r in campaign.follow_ups)
                _check(report, carrier, leads, campaign.schedule, limit)
                await _check_store(report, store, cid, leads)
        finally:
            await carrier.stop()
            await store.close()
    finally:
        redis.close()
    report.seconds = time.monotonic() - started
    return report


async def _store_records(store: Store, carrier: CarrierStandin) -> None:
    """Store each answered call's record, as `voxdial serve` does at its end.

    The stand-in opens no media stream here (the agent's models would be the
    bottleneck, not the dialers), so nothing else would store the records
    that settle a call a person answered.
    """
    attempts = Attempts(store)
    done: set[str] = set()
    while True:
        await asyncio.sleep(0.05)
        for call in list(carrier.calls.values()):
            if (
                call.sid in done
                or call.ended_at is None
                or call.answered_at is None
                or call.answered_by != "human"
            ):
                continue
            cid, _, attempt_id = call.attempt.partition(":")
            try:
                attempt = await attempts.get(cid, attempt_id)
                if attempt is None:
                    continue  # its record is not yet back from a Redis restart
                await store.save_call(
                    CallRecordModel(
                        id=attempt_id,
                        campaign_id=cid,
                        lead_id=attempt.lead_id,
                        call_sid=call.sid,
                        created_at=call.created_at,
                        answered_at=call.answered_at,
                        ended_at=call.ended_at,
                        end_reason="caller_hangup",
                        outcome="completed",
                    )
                )
                await attempts.maybe_settle(cid, attempt_id)
            except (RedisError, OSError):
                continue  # Redis restarting: tried again on the next round
            done.add(call.sid)


async def _open_work(store: Store, cid: str) -> int:
    """Leads due now (inside their window) or held: what is left to dial."""
    ck = CampaignKeys(cid)
    due = await store.redis.zcount(ck.due, "-inf", int(time.time() * 1000))
    return int(due) + int(await store.redis.zcard(ck.leases))


async def _chaos(
    store: Store,
    cid: str,
    dialers: _Dialers,
    redis: _Redis,
    profile: ChaosProfile,
    report: ChaosReport,
    rng: random.Random,
    carrier: CarrierStandin,
) -> None:
    deadline = time.monotonic() + profile.limit_s
    # Kills spread over the expected run: roughly every few seconds.
    kill_every = max(
        1.0, profile.leads / profile.max_concurrent * 0.6 / max(profile.kills, 1)
    )
    paused_once = False
    while time.monotonic() < deadline:
        await asyncio.sleep(rng.uniform(0.3, 2) * kill_every)
        if report.kills < profile.kills:
            dialers.kill_and_restart(rng.randrange(len(dialers.processes)))
            report.kills += 1
        if (
            report.redis_kills < profile.redis_kills
            and report.kills >= profile.kills // 3
        ):
            redis.kill_and_restart()
            report.redis_kills += 1
        if profile.pause and not paused_once and report.kills >= profile.kills // 2:
            paused_once = True
            await _pause_and_check(store, cid, report, carrier, rng)
        if report.kills >= profile.kills and await _open_work(store, cid) == 0:
            return
    report.notes.append(f"time limit of {profile.limit_s} s reached with work left")


async def _pause_and_check(
    store: Store,
    cid: str,
    report: ChaosReport,
    carrier: CarrierStandin,
    rng: random.Random,
) -> None:
    from campaign_store import operations as ops

    await ops.pause(store, TENANT, cid)
    acknowledged = time.time()
    await asyncio.sleep(rng.uniform(1, 3))
    report.after_pause = sum(
        1 for c in carrier.calls.values() if c.created_at > acknowledged
    )
    await store.transition(TENANT, cid, "resume")


async def _settle_wait(store: Store, cid: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    # Polled: the leases belong to other processes.
    while time.monotonic() < deadline and await store.redis.zcard(  # noqa: ASYNC110
        CampaignKeys(cid).leases
    ):
        await asyncio.sleep(0.2)


def _check(
    report: ChaosReport,
    carrier: CarrierStandin,
    leads: list[Lead],
    schedule: Schedule,
    max_attempts: int,
) -> None:
    report.calls = len(carrier.calls)
    report.overlapping = len(carrier.overlapping_calls())
    # A call canceled by the pause while it rang is not held against its lead
    # (`dialer.lifecycle`): the limit counts the others.
    per_number = Counter(
        c.to for c in carrier.calls.values() if c.status is not CallStatus.CANCELED
    )
    for number, count in per_number.items():
        if count > max_attempts:
            report.over_limit += 1
            calls = carrier.calls_to(number)
            history = ", ".join(
                f"{c.status.value}@{c.created_at - calls[0].created_at:.1f}s"
                for c in calls
            )
            report.notes.append(f"over the limit: ...{number[-4:]}: {history}")
    by_phone = {lead.phone: lead for lead in leads}
    for call in carrier.calls.values():
        lead = by_phone.get(call.to)
        if lead is None or not window_for(schedule, lead.timezone, lead.phone).is_open(
            call.created_at
        ):
            report.outside_window += 1


async def _check_store(
    report: ChaosReport, store: Store, cid: str, leads: list[Lead]
) -> None:
    ck = CampaignKeys(cid)
    due = {m.decode() for m in await store.redis.zrange(ck.due, 0, -1)}
    leased = {m.decode() for m in await store.redis.zrange(ck.leases, 0, -1)}
    statuses: Counter[str] = Counter()
    for lead in leads:
        stored = await store.lead_by_id(cid, lead.id)
        statuses[stored.status.value] += 1
        final = stored.status in FINAL or (
            stored.next_attempt_at is None and stored.attempts > 0
        )
        if final:
            report.settled_leads += 1
        elif lead.id in due or lead.id in leased:
            report.waiting_leads += 1
        else:
            report.lost_leads += 1
    report.statuses = dict(statuses)


def _iter_lines(report: ChaosReport) -> Iterator[str]:
    p = report.profile
    yield (
        f"{p.leads} leads, {p.dialers} dialers, {report.kills} dialer SIGKILLs, "
        f"{report.redis_kills} Redis SIGKILLs, {report.calls} calls in "
        f"{report.seconds:.0f} s"
    )
    yield f"  overlapping calls to one number:   {report.overlapping}"
    yield f"  numbers called over the limit:     {report.over_limit}"
    yield f"  calls outside the calling window:  {report.outside_window}"
    yield f"  leads lost:                        {report.lost_leads}"
    yield f"  calls created after pause ack:     {report.after_pause}"
    settled, waiting = report.settled_leads, report.waiting_leads
    yield f"  leads settled / still waiting:     {settled} / {waiting}"
    yield f"  lead statuses: {json.dumps(report.statuses, sort_keys=True)}"
    for note in report.notes:
        yield f"  note: {note}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dialer_chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--leads", type=int, default=ChaosProfile.leads)
    parser.add_argument("--dialers", type=int, default=ChaosProfile.dialers)
    parser.add_argument("--kills", type=int, default=ChaosProfile.kills)
    parser.add_argument("--seed", type=int, default=ChaosProfile.seed)
    parser.add_argument("--redis-kills", type=int, default=ChaosProfile.redis_kills)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    profile = ChaosProfile(
        leads=args.leads,
        dialers=args.dialers,
        kills=args.kills,
        seed=args.seed,
        redis_kills=args.redis_kills,
    )
    with tempfile.TemporaryDirectory(prefix="voxdial-chaos-") as tmp:
        report = asyncio.run(run_chaos(profile, Path(tmp)))
    for line in _iter_lines(report):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, default=str))
    raise SystemExit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
