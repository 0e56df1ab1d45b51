"""Does the dialer's cost per decision stay flat as a campaign's lead list grows?

For each size N, a private `redis-server` (append-only, fsync on every write,
as voxdial runs its own) gets one campaign of N leads spread over 20 time
zones, loaded through `Store.add_leads` in batches. The benchmark runs at one
simulated instant (a Wednesday, 15:30 UTC), never the machine's clock: at it,
11 of the zones are inside the campaign's 09:00-20:00 local hours and 9 are
not. The closed leads are moved in the `due` index to the moment their window
opens, as the dialer's first pass over them would, so the index holds many
leads due now and many that open later. Then, measured:

1. Scheduling: the dialer's per-tick step 1 (`Dialer._dial_campaign`): read
   the campaign, count its leases, ask the `due` index for the oldest leads
   due now (ZRANGEBYSCORE ... LIMIT), fetch their records and decide each
   one's calling window. The batch read is then moved out of the due part
   (and put back at the end), so that each tick reads other leads, as after
   real claims. Reported: the due query alone (as the client sees it, and
   Redis's own time per call), the whole step and the step per lead decided.
2. Dialing: the Redis part of one attempt, with the carrier's part left out
   (the call is taken to ring out unanswered): claim (lease and fencing
   token), record the attempt, confirm before the dial, settle as no answer,
   which releases the lead due again 4 hours later. Leads come from the same
   step 1, a batch per tick, claimed by one client and then by several
   concurrent asyncio clients (each its own connection). Reported: claims per
   second, the claim script's latency, and Redis commands per claim (INFO
   commandstats, the commands run inside scripts included).
3. Redis `used_memory` with the campaign loaded.

The last column is the figure at the largest N over the one at the smallest:
near 1 is what the indexes promise. With fsync on every write, the dialing
figures also carry the disk's fsync latency, which is slower for a while
after the largest loads (a GB written, then rewritten); `--fsync everysec`
leaves it out, and Redis's own time per script shows the server's part.

    python -m benchmarks.dialer_scale [--profile quick|full]
                                      [--sizes 10000,100000]
                                      [--fsync always|everysec] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from campaign_store import codec
from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    Attempt,
    Campaign,
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
from dialer.claims import Claim
from dialer.dialer import START_MARGIN_S, DialerConfig
from dialer.lifecycle import Result
from dialer.window import DEFAULT_JURISDICTIONS, window_for

__all__ = [
    "PROFILES",
    "RATIO_FIGURES",
    "ScaleProfile",
    "ScaleReport",
    "SizeResult",
    "format_report",
    "run_scale",
]

log = logging.getLogger("voxdial.bench.scale")

TENANT = "scale"
CALLER_ID = "+14155550100"
# Wednesday 2025-03-12: the US already on summer time, Europe not yet.
INSTANT = datetime(2025, 3, 12, 15, 30, tzinfo=UTC).timestamp()
LEASE_MS = 30_000
MAX_ATTEMPTS = 3
# (number prefix, digits after it, zone): one region per prefix.
ZONES: tuple[tuple[str, int, str], ...] = (
    ("+1212", 7, "America/New_York"),
    ("+1312", 7, "America/Chicago"),
    ("+1303", 7, "America/Denver"),
    ("+1415", 7, "America/Los_Angeles"),
    ("+1907", 7, "America/Anchorage"),
    ("+1808", 7, "Pacific/Honolulu"),
    ("+5255", 8, "America/Mexico_City"),
    ("+55119", 8, "America/Sao_Paulo"),
    ("+4420", 8, "Europe/London"),
    ("+3491", 7, "Europe/Madrid"),
    ("+4930", 8, "Europe/Berlin"),
    ("+2711", 7, "Africa/Johannesburg"),
    ("+7495", 7, "Europe/Moscow"),
    ("+9714", 7, "Asia/Dubai"),
    ("+9122", 8, "Asia/Kolkata"),
    ("+9771", 7, "Asia/Kathmandu"),
    ("+8621", 8, "Asia/Shanghai"),
    ("+813", 8, "Asia/Tokyo"),
    ("+612", 8, "Australia/Sydney"),
    ("+649", 7, "Pacific/Auckland"),
)
SCHEDULE = Schedule(
    days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    hours=[HourRange(start="09:00", end="20:00")],
    timezone_policy="lead",
    pacing=Pacing(calls_per_minute=600, max_concurrent=1000),
)
# The per-decision figures whose ratio (largest N / smallest) is reported.
RATIO_FIGURES = (
    "load_leads_per_s",
    "bytes_per_lead",
    "due_query_p50_ms",
    "due_query_p95_ms",
    "due_query_redis_us",
    "tick_p50_ms",
    "tick_p95_ms",
    "decision_p50_us",
    "decision_p95_us",
    "claims_per_s",
    "claims_per_s_concurrent",
    "claim_p50_ms",
    "claim_p95_ms",
    "claim_p50_ms_concurrent",
    "claim_p95_ms_concurrent",
    "cycle_p50_ms",
    "cycle_p95_ms",
    "commands_per_claim",
    "script_redis_us",
)


@dataclass(frozen=True)
class ScaleProfile:
    name: str = "quick"
    sizes: tuple[int, ...] = (10_000, 100_000)
    cycles: int = 2500  # attempts per dialing phase, at most half the due leads
    clients: int = 4  # concurrent clients in the second dialing phase
    ticks: int = 200  # scheduling steps measured
    batch: int = DialerConfig.batch  # leads read from `due` per tick
    load_batch: int = 1000  # leads per `add_leads` call
    instant: float = INSTANT
    # "always" is how voxdial runs its own Redis; "everysec" takes the
    # disk's fsync latency out of the dialing figures.
    appendfsync: str = "always"


PROFILES = {
    "quick": ScaleProfile(),
    "full": ScaleProfile(name="full", sizes=(10_000, 100_000, 1_000_000), ticks=300),
}


@dataclass
class SizeResult:
    leads: int
    load_s: float
    load_leads_per_s: float
    used_memory: int  # bytes, the campaign loaded
    bytes_per_lead: float
    due_now: int
    due_later: int
    due_query_p50_ms: float
    due_query_p95_ms: float
    due_query_redis_us: float  # Redis's own time per ZRANGEBYSCORE
    tick_p50_ms: float
    tick_p95_ms: float
    decision_p50_us: float
    decision_p95_us: float
    claims_per_s: float  # one client
    claims_per_s_concurrent: float
    claim_p50_ms: float
    claim_p95_ms: float
    claim_p50_ms_concurrent: float
    claim_p95_ms_concurrent: float
    cycle_p50_ms: float  # claim, record, confirm, settle: one client
    cycle_p95_ms: float
    commands_per_claim: float
    scripts_per_claim: float
    script_redis_us: float  # Redis's own time per script, its fsync aside


@dataclass
class ScaleReport:
    profile: ScaleProfile
    results: list[SizeResult] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    redis_version: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _phone(i: int) -> tuple[str, str]:
    prefix, digits, zone = ZONES[i % len(ZONES)]
    return f"{prefix}{i:0{digits}d}", zone


def _opening_ms(instant: float) -> dict[str, int | None]:
    """Per zone: None if open at `instant`, else when it opens (ms).

    Every number of a prefix is in the same region, so one window per zone
    decides for all its leads.
    """
    opening: dict[str, int | None] = {}
    for prefix, digits, zone in ZONES:
        window = window_for(SCHEDULE, zone, prefix + "5" * digits)
        if window.closes_at(instant) is not None:
            opening[zone] = None
            continue
        opens = window.next_open(instant, horizon_days=31)
        if opens is None:
            raise ValueError(f"the window in {zone} never opens")
        opening[zone] = int(opens * 1000)
    return opening


async def _create_campaign(store: Store) -> Campaign:
    return await store.create_campaign(
        TENANT,
        CampaignInput(
            name="scale",
            channel=PhoneChannel(caller_id=CALLER_ID),
            schedule=SCHEDULE,
            follow_ups=[
                FollowUpRule(
                    outcome="no_answer", delay_minutes=240, max_attempts=MAX_ATTEMPTS
                )
            ],
        ),
    )


async def _load(
    store: Store, campaign: Campaign, n: int, profile: ScaleProfile
) -> None:
    """N leads through the store, the closed ones moved to when they open."""
    due = CampaignKeys(campaign.id).due
    opening = _opening_ms(profile.instant)
    for start in range(0, n, profile.load_batch):
        leads = []
        later: dict[str, int] = {}
        for i in range(start, min(n, start + profile.load_batch)):
            phone, zone = _phone(i)
            lead = Lead(
                id=new_id("lead"),
                campaign_id=campaign.id,
                phone=phone,
                name=f"Lead {i}",
                timezone=zone,
            )
            leads.append(lead)
            opens = opening[zone]
            if opens is not None:
                later[lead.id] = opens
        refused = await store.add_leads(campaign, leads)
        if refused:
            raise RuntimeError(f"{len(refused)} leads refused as duplicates")
        if later:
            await store.redis.zadd(due, later, xx=True)


# 1. Scheduling: what the dialer does per tick before claiming.


async def _read_due(
    store: Store, campaign_id: str, now_ms: int, batch: int
) -> tuple[list[tuple[Lead, float]], list[bytes], float]:
    """Step 1 of `Dialer._dial_campaign`: the due leads whose window is open.

    Each comes with when its window closes; a closed one is moved to when it
    opens. Also returns the ids read and how long the due query took.
    """
    redis = store.redis
    ck = CampaignKeys(campaign_id)
    campaign = await store.campaign_by_id(campaign_id)
    await redis.zcard(ck.leases)
    started = time.perf_counter()
    ids: list[bytes] = await redis.zrangebyscore(
        ck.due, "-inf", now_ms, start=0, num=batch
    )
    query_s = time.perf_counter() - started
    if not ids:
        return [], ids, query_s
    blobs = await redis.mget([ck.lead(i.decode()) for i in ids])
    now = now_ms / 1000
    open_leads = []
    for blob in blobs:
        if blob is None:
            continue
        lead = codec.decode("lead", blob, Lead)
        window = window_for(
            campaign.schedule, lead.timezone, lead.phone, DEFAULT_JURISDICTIONS
        )
        closes = window.closes_at(now)
        if closes is None:
            opens = window.next_open(now, horizon_days=31)
            if opens is not None:
                await redis.zadd(ck.due, {lead.id: int(opens * 1000)}, xx=True)
            continue
        open_leads.append((lead, min(closes, now + 86_400.0)))
    return open_leads, ids, query_s


async def _commandstats(store: Store) -> dict[str, dict[str, float]]:
    raw: dict[str, Any] = await store.redis.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): stats
        for name, stats in raw.items()
        if name.removeprefix("cmdstat_") not in ("info", "config")
    }


async def _scheduling(
    store: Store, campaign_id: str, profile: ScaleProfile
) -> dict[str, float]:
    redis = store.redis
    due = CampaignKeys(campaign_id).due
    now_ms = int(profile.instant * 1000)
    aside_ms = now_ms + 3_600_000  # out of the due part, for the next ticks
    queries: list[float] = []
    ticks: list[float] = []
    decisions: list[float] = []
    aside: list[bytes] = []
    # Each lead is decided once, as in a real run: read again, its number
    # would be in the region cache and the small sizes would look cheaper.
    due_now = int(await redis.zcount(due, "-inf", now_ms))
    await redis.config_resetstat()
    for _ in range(max(1, min(profile.ticks, due_now // profile.batch))):
        started = time.perf_counter()
        _, ids, query_s = await _read_due(store, campaign_id, now_ms, profile.batch)
        tick_s = time.perf_counter() - started
        queries.append(query_s)
        ticks.append(tick_s)
        decisions.append(tick_s / max(len(ids), 1))
        await redis.zadd(due, dict.fromkeys(ids, aside_ms), xx=True)
        aside.extend(ids)
    # Due again, as they were, for the dialing phases.
    await redis.zadd(due, dict.fromkeys(aside, 0), xx=True)
    stats = await _commandstats(store)
    return {
        "due_query_p50_ms": _quantile(queries, 0.5) * 1e3,
        "due_query_p95_ms": _quantile(queries, 0.95) * 1e3,
        "due_query_redis_us": float(stats["zrangebyscore"]["usec_per_call"]),
        "tick_p50_ms": _quantile(ticks, 0.5) * 1e3,
        "tick_p95_ms": _quantile(ticks, 0.95) * 1e3,
        "decision_p50_us": _quantile(decisions, 0.5) * 1e6,
        "decision_p95_us": _quantile(decisions, 0.95) * 1e6,
    }


# 2. Dialing: the Redis side of attempts, the carrier left out.


@dataclass
class _Dialing:
    claims: int = 0
    refused: int = 0
    seconds: float = 0.0
    claim_s: list[float] = field(default_factory=list)
    cycle_s: list[float] = field(default_factory=list)


async def _attempt(
    attempts: Attempts,
    owner: str,
    lead: Lead,
    closes: float,
    now_ms: int,
    out: _Dialing,
) -> None:
    """Claim, record, confirm, and settle as no answer: one dial cycle."""
    claims = attempts.claims
    started = time.perf_counter()
    claim = await claims.claim(
        lead.campaign_id,
        lead.id,
        lead.phone,
        now_ms=now_ms,
        lease_ms=LEASE_MS,
        window_end_ms=int((closes - START_MARGIN_S) * 1000),
        max_concurrent=SCHEDULE.pacing.max_concurrent,
        # The account's pace is not what is measured: no claim waits for it.
        per_minute=10**9,
        max_attempts=MAX_ATTEMPTS,
        owner=owner,
    )
    claimed = time.perf_counter()
    if not isinstance(claim, Claim):
        out.refused += 1
        return
    attempt = Attempt(
        id=new_id("att"),
        campaign_id=lead.campaign_id,
        lead_id=lead.id,
        token=claim.token,
        owner=owner,
        number=0,
        to=lead.phone,
        from_=CALLER_ID,
        created_at=now_ms / 1000,
    )
    number = await claims.record(
        claim,
        attempt.id,
        codec.encode("attempt", attempt),
        now_ms=now_ms,
        lease_ms=LEASE_MS,
    )
    held = await claims.confirm(claim, now_ms=now_ms, until_ms=now_ms + LEASE_MS)
    if isinstance(number, str) or held != "held":
        out.refused += 1
        return
    # Here the carrier would place the call; it rings out unanswered.
    attempt.number = number
    attempt.placed = "placed"
    attempt.carrier_status = CallStatus.NO_ANSWER.value
    await attempts.settle(attempt, Result.NO_ANSWER)
    out.claims += 1
    out.claim_s.append(claimed - started)
    out.cycle_s.append(time.perf_counter() - started)


async def _dial(
    url: str, campaign_id: str, profile: ScaleProfile, clients: int, cycles: int
) -> _Dialing:
    """`cycles` attempts by `clients` clients, fed a batch per tick."""
    now_ms = int(profile.instant * 1000)
    stores = [await Store.connect(url) for _ in range(clients)]
    out = _Dialing()
    queue: asyncio.Queue[tuple[Lead, float] | None] = asyncio.Queue()
    failures: list[Exception] = []

    async def client(k: int) -> None:
        attempts = Attempts(stores[k], clock=lambda: profile.instant)
        while (item := await queue.get()) is not None:
            try:
                await _attempt(attempts, f"bench-{k}", *item, now_ms, out)
            except Exception as exc:
                # Kept for the feeder to raise: a dead client would leave
                # its batch unfinished and the feeder waiting forever.
                failures.append(exc)
            finally:
                queue.task_done()

    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    try:
        started = time.perf_counter()
        fed = 0
        while fed < cycles:
            leads, _, _ = await _read_due(stores[0], campaign_id, now_ms, profile.batch)
            if not leads:
                break
            for item in leads[: cycles - fed]:
                queue.put_nowait(item)
                fed += 1
            # As a tick does: the batch is claimed before the next is read.
            await queue.join()
            if failures:
                raise RuntimeError("a dial cycle failed") from failures[0]
        out.seconds = time.perf_counter() - started
    finally:
        for _ in tasks:
            queue.put_nowait(None)
        await asyncio.gather(*tasks)
        for store in stores:
            await store.close()
    return out


# One size, and the whole run.


async def _run_size(n: int, profile: ScaleProfile, workdir: Path) -> SizeResult:
    with embedded_redis(workdir / f"redis-{n}") as server:
        store = await Store.connect(server.url)
        try:
            baseline = int((await store.redis.info("memory"))["used_memory"])
            campaign = await _create_campaign(store)
            started = time.perf_counter()
            await _load(store, campaign, n, profile)
            load_s = time.perf_counter() - started
            await store.transition(TENANT, campaign.id, "launch")
            await _compact_aof(store)
            await store.redis.config_set("appendfsync", profile.appendfsync)
            used = int((await store.redis.info("memory"))["used_memory"])
            due = CampaignKeys(campaign.id).due
            now_ms = int(profile.instant * 1000)
            due_now = int(await store.redis.zcount(due, "-inf", now_ms))
            due_later = int(await store.redis.zcount(due, f"({now_ms}", "+inf"))
            scheduling = await _scheduling(store, campaign.id, profile)

            cycles = max(1, min(profile.cycles, due_now // 2))
            await store.redis.config_resetstat()
            single = await _dial(server.url, campaign.id, profile, 1, cycles)
            stats = await _commandstats(store)
            concurrent = await _dial(
                server.url, campaign.id, profile, profile.clients, cycles
            )
        finally:
            await store.close()
    commands = sum(float(s["calls"]) for s in stats.values())
    scripts = sum(float(stats[c]["calls"]) for c in ("evalsha", "eval") if c in stats)
    script_us = sum(float(stats[c]["usec"]) for c in ("evalsha", "eval") if c in stats)
    claims = max(single.claims, 1)
    if single.refused or concurrent.refused:
        log.warning(
            "%d leads: %d claims refused", n, single.refused + concurrent.refused
        )
    return SizeResult(
        leads=n,
        load_s=load_s,
        load_leads_per_s=n / load_s,
        used_memory=used,
        bytes_per_lead=(used - baseline) / n,
        due_now=due_now,
        due_later=due_later,
        claims_per_s=single.claims / single.seconds,
        claims_per_s_concurrent=concurrent.claims / concurrent.seconds,
        claim_p50_ms=_quantile(single.claim_s, 0.5) * 1e3,
        claim_p95_ms=_quantile(single.claim_s, 0.95) * 1e3,
        claim_p50_ms_concurrent=_quantile(concurrent.claim_s, 0.5) * 1e3,
        claim_p95_ms_concurrent=_quantile(concurrent.claim_s, 0.95) * 1e3,
        cycle_p50_ms=_quantile(single.cycle_s, 0.5) * 1e3,
        cycle_p95_ms=_quantile(single.cycle_s, 0.95) * 1e3,
        commands_per_claim=commands / claims,
        scripts_per_claim=scripts / claims,
        script_redis_us=script_us / max(scripts, 1),
        **scheduling,
    )


async def _compact_aof(store: Store) -> None:
    """Rewrite the append-only file now, not while something is measured.

    Loading grows it past Redis's automatic rewrite threshold; a rewrite
    running during a phase would slow the fsyncs of that size only.
    """
    redis = store.redis
    info = await redis.info("persistence")
    if not int(info["aof_rewrite_in_progress"]):
        await redis.bgrewriteaof()
    while True:
        info = await redis.info("persistence")
        if not (
            int(info["aof_rewrite_in_progress"]) or int(info["aof_rewrite_scheduled"])
        ):
            break
        await asyncio.sleep(0.05)
    # The new file's pages still being written out would slow the first
    # fsyncs of the measured phases, the more the larger the campaign.
    await asyncio.to_thread(os.sync)


async def _redis_version(workdir: Path) -> str:
    with embedded_redis(workdir / "redis-version") as server:
        store = await Store.connect(server.url)
        try:
            return str((await store.redis.info("server"))["redis_version"])
        finally:
            await store.close()


async def run_scale(profile: ScaleProfile) -> ScaleReport:
    """Every size of `profile`, each on its own fresh redis-server."""
    report = ScaleReport(profile)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="voxdial-scale-") as tmp:
        workdir = Path(tmp)
        report.redis_version = await _redis_version(workdir)
        for n in sorted(profile.sizes):
            result = await _run_size(n, profile, workdir)
            log.info("%d leads done in %.0f s", n, time.perf_counter() - started)
            report.results.append(result)
            if result.load_s > 180:
                report.notes.append(
                    f"loading {n:,} leads took {result.load_s:.0f} s "
                    f"({result.load_leads_per_s:,.0f} leads/s)"
                )
    first, last = report.results[0], report.results[-1]
    for name in RATIO_FIGURES:
        report.ratios[name] = getattr(last, name) / getattr(first, name)
    report.seconds = time.perf_counter() - started
    return report


# The report.

_ROWS: tuple[tuple[str, tuple[str, ...], Callable[[float], str]], ...] = (
    ("load (leads/s)", ("load_leads_per_s",), "{:,.0f}".format),
    ("Redis used_memory (MiB)", ("used_memory",), lambda v: f"{v / 2**20:,.1f}"),
    ("Redis bytes per lead", ("bytes_per_lead",), "{:,.0f}".format),
    ("leads due now / opening later", ("due_now", "due_later"), "{:,.0f}".format),
    (
        "due query p50 / p95 (ms)",
        ("due_query_p50_ms", "due_query_p95_ms"),
        "{:.3f}".format,
    ),
    ("due query, Redis's own time (µs)", ("due_query_redis_us",), "{:.1f}".format),
    ("tick step 1 p50 / p95 (ms)", ("tick_p50_ms", "tick_p95_ms"), "{:.2f}".format),
    (
        "per lead decided p50 / p95 (µs)",
        ("decision_p50_us", "decision_p95_us"),
        "{:.1f}".format,
    ),
    ("claims/s, 1 client", ("claims_per_s",), "{:,.0f}".format),
    ("claims/s, {clients} clients", ("claims_per_s_concurrent",), "{:,.0f}".format),
    (
        "claim p50 / p95 (ms), 1 client",
        ("claim_p50_ms", "claim_p95_ms"),
        "{:.3f}".format,
    ),
    (
        "claim p50 / p95 (ms), {clients} clients",
        ("claim_p50_ms_concurrent", "claim_p95_ms_concurrent"),
        "{:.3f}".format,
    ),
    (
        "dial cycle p50 / p95 (ms), 1 client",
        ("cycle_p50_ms", "cycle_p95_ms"),
        "{:.2f}".format,
    ),
    (
        "Redis commands / scripts per claim",
        ("commands_per_claim", "scripts_per_claim"),
        "{:.1f}".format,
    ),
    ("dial scripts, Redis's own time (µs)", ("script_redis_us",), "{:.1f}".format),
)


def _table(report: ScaleReport) -> Iterator[str]:
    results = report.results
    last, first = results[-1].leads, results[0].leads
    head = [f"{r.leads:,} leads" for r in results] + [f"{last:,} / {first:,}"]
    yield "| | " + " | ".join(head) + " |"
    yield "|---" * (len(head) + 1) + "|"
    for label, names, show in _ROWS:
        cells = [" / ".join(show(getattr(r, n)) for n in names) for r in results]
        ratios = [report.ratios[n] for n in names if n in report.ratios]
        cells.append(" / ".join(f"{x:.2f}" for x in ratios) or "")
        title = label.format(clients=report.profile.clients)
        yield f"| {title} | " + " | ".join(cells) + " |"


def format_report(report: ScaleReport) -> str:
    """The report as a Markdown table, one column per size and the ratio."""
    p = report.profile
    lines = [
        f"Dialer at scale, profile {p.name}: redis-server {report.redis_version} "
        f"(append-only, appendfsync {p.appendfsync}), {len(ZONES)} zones, "
        "simulated instant "
        f"{datetime.fromtimestamp(p.instant, UTC):%Y-%m-%d %H:%M} UTC, "
        f"up to {p.ticks} ticks of {p.batch} leads (each lead read once), up to "
        f"{p.cycles:,} attempts per dialing phase; {report.seconds:.0f} s in all.",
        "",
        *_table(report),
    ]
    lines += [f"\nNote: {note}" for note in report.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dialer_scale", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--sizes", help="lead counts, comma-separated")
    parser.add_argument("--fsync", choices=("always", "everysec"), default="always")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dialer").setLevel(logging.WARNING)
    # Each client's connection would warn about `--fsync everysec` again.
    logging.getLogger("campaign_store").setLevel(logging.ERROR)
    profile = PROFILES[args.profile]
    if args.sizes:
        sizes = tuple(int(s.replace("_", "")) for s in args.sizes.split(","))
        profile = replace(profile, sizes=sizes)
    profile = replace(profile, appendfsync=args.fsync)
    report = asyncio.run(run_scale(profile))
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
