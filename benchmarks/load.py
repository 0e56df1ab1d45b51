"""How many calls, how fast: simulated Twilio callers against a live server.

N callers at once (a step), each playing real speech as 20 ms mu-law frames
at real time, pausing between utterances, and some talking over the agent;
steps ramp up, each held for `hold_s`. The same load runs against voxdial and
against the baseline (`benchmarks.baseline_pipecat`, pipecat's stock Twilio
bot), alternating step by step on the same machine, in two service modes:

    local     the real local models (Whisper tiny.en, Piper, Silero VAD)
    instant   STT and TTS that answer at once (the server's own cost)

Per call and in aggregate:

- voice to voice: the caller's last speech frame sent -> first agent frame
  received, p50/p95/p99;
- barge-in: onset of caller speech over the agent -> `clear` received, and
  agent frames received after that clear while the caller still talks (must
  be zero);
- playout health as the caller hears it: gaps once an agent utterance has
  started (underruns), and replies that never came;
- server cost: CPU seconds per call-second, peak resident memory, memory per
  additional call, event-loop lag (voxdial's own /metrics; the baseline has
  none);
- capacity: the largest N at which p95 voice to voice stays within
  `latency_bound` times its single-call value (or `latency_slack_s` above
  it, whichever is more: a 300 ms single-call figure would otherwise fail on
  jitter alone), every call was greeted, every barge-in cleared and no
  caller heard a gap.

Only loopback is ever targeted. The callers run in this process, so on a
small machine they compete with the server for the cores: the report says
how much CPU they used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.caller import SimulatedCaller
from benchmarks.harness import (
    _free_port,
    _stop,
    cpu_seconds,
    rss_mb,
    serve_subprocess,
)
from pipelines.audio import Int16Array
from pipelines.llm_standin import Script, StandinServer

__all__ = [
    "FULL",
    "INTERRUPT",
    "LONG_ASK",
    "PHRASES",
    "QUICK",
    "LoadProfile",
    "LoadReport",
    "StepResult",
    "run_load",
]

log = logging.getLogger("voxdial.bench.load")

PHRASES = (
    "Hi, yes, this is a good time to talk.",
    "Could you tell me what this is about?",
    "Which days do you have available next week?",
    "Thursday afternoon would suit me best.",
)
LONG_ASK = "Can you tell me about your opening hours please?"
INTERRUPT = "Sorry, I have to stop you there for a second."
LONG_REPLY = (
    "Our clinic opens at eight in the morning on weekdays and closes at six. "
    "On Saturdays we open at nine and close at one in the afternoon. "
    "We are closed on Sundays and on public holidays, but the phone line stays "
    "open for urgent questions. Parking is free for patients behind the building."
)
SCRIPT = {
    "rules": [{"pattern": "hours|opening", "reply": LONG_REPLY}],
    "default_reply": "Sure. We can find a time that suits you. Anything else?",
}
GREETING = "Hello, this is the clinic calling about your appointment."


@dataclass(frozen=True)
class LoadProfile:
    name: str
    local_steps: tuple[int, ...]
    instant_steps: tuple[int, ...]
    hold_s: float
    barge_in_share: float = 0.3
    latency_bound: float = 1.5
    latency_slack_s: float = 0.25
    baseline: bool = True
    seed: int = 7


QUICK = LoadProfile("quick", local_steps=(1, 4), instant_steps=(1, 10), hold_s=25.0)
FULL = LoadProfile(
    "full",
    local_steps=(1, 4, 8, 10, 12),
    instant_steps=(1, 10, 25, 50, 100),
    hold_s=45.0,
)


@dataclass
class CallStats:
    v2v_s: list[float] = field(default_factory=list)
    barge_in_s: list[float] = field(default_factory=list)
    frames_after_clear: int = 0
    barge_ins_missed: int = 0
    no_reply: int = 0
    gaps: int = 0
    greeted: bool = False
    error: str = ""


@dataclass
class StepResult:
    target: str
    mode: str
    calls: int
    calls_greeted: int
    turns: int
    no_reply: int
    v2v_p50_s: float | None
    v2v_p95_s: float | None
    v2v_p99_s: float | None
    barge_ins: int
    barge_in_p95_s: float | None
    barge_ins_missed: int
    frames_after_clear: int
    gaps: int
    cpu_s_per_call_s: float
    server_cpu_share: float
    bench_cpu_share: float
    peak_rss_mb: float
    idle_rss_mb: float
    loop_lag_p99_s: float | None
    # voxdial only: each stage's mean, from the server's own turn latencies
    # (turn_detection, stt, llm_first_token, tts_first_audio, total).
    stage_mean_s: dict[str, float] = field(default_factory=dict)
    v2v_samples: list[float] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list)


@dataclass
class LoadReport:
    profile: LoadProfile
    steps: list[StepResult]
    capacity: dict[str, int]  # "<target>/<mode>" -> largest healthy N
    started_at: float
    wall_s: float


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# The targets.


@dataclass
class Target:
    name: str
    ws_url: str
    pid: int
    metrics_url: str | None  # voxdial's /metrics; the baseline has none

    def params(self, call_no: int) -> dict[str, str]:
        return {"call_id": f"bench-{call_no}", "name": "Ada", "company": "the clinic"}


@contextlib.asynccontextmanager
async def voxdial_target(
    workdir: Path, llm_url: str, mode: str
) -> AsyncIterator[Target]:
    env = {
        "VOXDIAL_SPEECH": mode,
        "VOXDIAL_AGENT_GREETING": GREETING,
        "VOXDIAL_ADMIN_API": "false",
        "VOXDIAL_RECORD_CALLS": "false",
    }
    async with serve_subprocess(workdir, llm_url, extra_env=env) as served:
        yield Target("voxdial", served.ws_url, served.pid, served.url + "/metrics")


def _spawn_baseline(
    workdir: Path, port: int, llm_url: str, mode: str
) -> tuple[subprocess.Popen[bytes], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.baseline_pipecat",
        "--port",
        str(port),
        "--llm-base-url",
        llm_url,
        "--greeting",
        GREETING,
    ]
    if mode == "instant":
        command.append("--instant")
    log_path = workdir / "baseline.log"
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return process, log_path


@contextlib.asynccontextmanager
async def baseline_target(
    workdir: Path, llm_url: str, mode: str
) -> AsyncIterator[Target]:
    port = _free_port()
    process, log_path = _spawn_baseline(workdir, port, llm_url, mode)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as session:
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-1500:]
                    raise RuntimeError(f"the baseline exited:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url + "/healthz") as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise TimeoutError("the baseline did not start in 120 s")
                await asyncio.sleep(0.3)
        yield Target("baseline", f"ws://127.0.0.1:{port}/ws", process.pid, None)
    finally:
        _stop(process)


# One caller.


async def _first_audio_after(
    caller: SimulatedCaller, t: float, limit_s: float
) -> float | None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not caller.closed:
        first = caller.first_audio_after(t)
        if first is not None:
            return first
        await asyncio.sleep(0.01)
    return None


async def _clear_after(
    caller: SimulatedCaller, t: float, limit_s: float
) -> float | None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and not caller.closed:
        for at in caller.clear_times:
            if at >= t:
                return at
        await asyncio.sleep(0.005)
    return None


async def _one_call(
    target: Target,
    call_no: int,
    speech: dict[str, Int16Array],
    until: float,
    rng: random.Random,
    barge_share: float,
) -> CallStats:
    stats = CallStats()
    caller = SimulatedCaller(target.ws_url, custom_parameters=target.params(call_no))
    try:
        await caller.connect()
        stats.greeted = await caller.wait_agent_done(0.0, quiet_s=0.5, limit_s=40)
        # Every k-th turn talks over the agent, staggered across callers, so
        # that even a short step of one call has a barge-in in it.
        every = max(1, round(1 / barge_share)) if barge_share > 0 else 0
        turn = 0
        while stats.greeted and time.monotonic() < until and not caller.closed:
            turn += 1
            if every and (turn + call_no) % every == 1 % every:
                await _barge_in_turn(caller, speech, stats, rng)
            else:
                await caller.say(speech[rng.choice(PHRASES)])
                ended = time.monotonic()
                first = await _first_audio_after(caller, ended, 30)
                if first is None:
                    stats.no_reply += 1
                    continue
                stats.v2v_s.append(first - ended)
                await caller.wait_agent_done(ended, quiet_s=0.4, limit_s=40)
            await caller.pause(rng.uniform(0.4, 1.2))
    except Exception as exc:  # a caller that breaks is counted, not fatal
        stats.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        stats.gaps = caller.gaps
        with contextlib.suppress(Exception):
            await caller.hangup()
    return stats


async def _barge_in_turn(
    caller: SimulatedCaller,
    speech: dict[str, Int16Array],
    stats: CallStats,
    rng: random.Random,
) -> None:
    await caller.say(speech[LONG_ASK])
    ended = time.monotonic()
    first = await _first_audio_after(caller, ended, 30)
    if first is None:
        stats.no_reply += 1
        return
    stats.v2v_s.append(first - ended)
    # Talk over the agent a second or two into its long answer.
    await asyncio.sleep(max(0.0, first + rng.uniform(1.0, 2.0) - time.monotonic()))
    onset = time.monotonic()
    talking = asyncio.ensure_future(caller.say(speech[INTERRUPT]))
    cleared = await _clear_after(caller, onset, 3.0)
    await talking
    stopped = time.monotonic()
    if cleared is None:
        stats.barge_ins_missed += 1
    else:
        stats.barge_in_s.append(cleared - onset)
        stats.frames_after_clear += _tail_after(caller.media_times, cleared, stopped)
    await caller.wait_agent_done(stopped, quiet_s=0.4, limit_s=40)


def _tail_after(media_times: Sequence[float], cleared: float, until: float) -> int:
    """Frames of the cut reply that still arrived after its `clear`.

    They would follow the clear without a pause; the agent's answer to the
    interruption comes only after the caller's turn has ended, which takes
    more silence than `_TAIL_GAP_S`, so the count stops at the first pause.
    """
    count, previous = 0, cleared
    for t in media_times:
        if t <= cleared:
            continue
        if t > until or t - previous > _TAIL_GAP_S:
            break
        count, previous = count + 1, t
    return count


_TAIL_GAP_S = 0.15

# A step: N calls at once against one target.


async def _scrape(session: aiohttp.ClientSession, url: str | None) -> str:
    if url is None:
        return ""
    async with session.get(url) as response:
        return await response.text()


def _stage_sums(text: str) -> dict[str, tuple[float, float]]:
    """stage -> (sum, count) of voxdial's turn-latency histogram."""
    found: dict[str, list[float]] = {}
    for match in re.finditer(
        r'^voxdial_turn_latency_seconds_(sum|count)\{stage="([^"]+)"\} (\S+)$',
        text,
        re.M,
    ):
        slot = found.setdefault(match[2], [0.0, 0.0])
        slot[0 if match[1] == "sum" else 1] = float(match[3])
    return {stage: (v[0], v[1]) for stage, v in found.items()}


def _stage_means(before: str, after: str) -> dict[str, float]:
    """Each stage's mean cost over the step, from the two scrapes."""
    old, new = _stage_sums(before), _stage_sums(after)
    means = {}
    for stage, (total, count) in new.items():
        base_total, base_count = old.get(stage, (0.0, 0.0))
        if count > base_count:
            means[stage] = (total - base_total) / (count - base_count)
    return means


def _loop_lag_buckets(text: str) -> dict[float, float]:
    buckets = {}
    for match in re.finditer(
        r'^voxdial_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$', text, re.M
    ):
        bound = float("inf") if match[1] == "+Inf" else float(match[1])
        buckets[bound] = float(match[2])
    return buckets


def _lag_p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    deltas = sorted((b, after[b] - before.get(b, 0.0)) for b in after)
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for bound, count in deltas:
        if count >= 0.99 * total:
            return bound
    return None


async def run_step(
    target: Target,
    mode: str,
    calls: int,
    speech: dict[str, Int16Array],
    profile: LoadProfile,
) -> StepResult:
    rng = random.Random(profile.seed * 1000 + calls)
    idle_rss = rss_mb(target.pid)
    async with aiohttp.ClientSession() as session:
        scraped_before = await _scrape(session, target.metrics_url)
        cpu0, bench0, wall0 = (
            cpu_seconds(target.pid),
            time.process_time(),
            time.monotonic(),
        )
        peak = [idle_rss]

        async def sample() -> None:
            while True:
                with contextlib.suppress(OSError, RuntimeError):
                    peak[0] = max(peak[0], rss_mb(target.pid))
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample())
        until = time.monotonic() + profile.hold_s
        callers = []
        for i in range(calls):
            seed = rng.random()
            callers.append(
                asyncio.create_task(
                    _one_call(
                        target,
                        i,
                        speech,
                        until,
                        random.Random(seed),
                        profile.barge_in_share,
                    )
                )
            )
            await asyncio.sleep(min(0.2, 2.0 / calls))  # a short ramp, not a wall
        results = await asyncio.gather(*callers)
        sampler.cancel()
        cpu_used = cpu_seconds(target.pid) - cpu0
        bench_used = time.process_time() - bench0
        wall = time.monotonic() - wall0
        scraped_after = await _scrape(session, target.metrics_url)
        lag = (
            _lag_p99(
                _loop_lag_buckets(scraped_before), _loop_lag_buckets(scraped_after)
            )
            if target.metrics_url
            else None
        )
        stages = _stage_means(scraped_before, scraped_after)
    v2v = [v for r in results for v in r.v2v_s]
    barge = [v for r in results for v in r.barge_in_s]
    return StepResult(
        target=target.name,
        mode=mode,
        calls=calls,
        calls_greeted=sum(r.greeted for r in results),
        turns=len(v2v),
        no_reply=sum(r.no_reply for r in results),
        v2v_p50_s=_pct(v2v, 0.5),
        v2v_p95_s=_pct(v2v, 0.95),
        v2v_p99_s=_pct(v2v, 0.99),
        barge_ins=len(barge),
        barge_in_p95_s=_pct(barge, 0.95),
        barge_ins_missed=sum(r.barge_ins_missed for r in results),
        frames_after_clear=sum(r.frames_after_clear for r in results),
        gaps=sum(r.gaps for r in results),
        cpu_s_per_call_s=cpu_used / max(wall * calls, 1e-9),
        server_cpu_share=cpu_used / wall,
        bench_cpu_share=bench_used / wall,
        peak_rss_mb=peak[0],
        idle_rss_mb=idle_rss,
        loop_lag_p99_s=lag,
        stage_mean_s=stages,
        v2v_samples=v2v,
        errors=[r.error for r in results if r.error][:5],
    )


def capacity(
    steps: Sequence[StepResult], bound: float, slack_s: float = 0.25
) -> dict[str, int]:
    """Per target and mode: the largest N still within bound and gap-free."""
    out: dict[str, int] = {}
    for key in sorted({(s.target, s.mode) for s in steps}):
        mine = sorted(
            (s for s in steps if (s.target, s.mode) == key), key=lambda s: s.calls
        )
        single = next((s for s in mine if s.calls == 1 and s.v2v_p95_s), None)
        best = 0
        for step in mine:
            healthy = (
                single is not None
                and step.v2v_p95_s is not None
                and step.v2v_p95_s
                <= max(
                    bound * (single.v2v_p95_s or 0.0),
                    (single.v2v_p95_s or 0.0) + slack_s,
                )
                and step.gaps == 0
                and step.calls_greeted == step.calls
                and step.barge_ins_missed == 0
            )
            if not healthy:
                break
            best = step.calls
        out[f"{key[0]}/{key[1]}"] = best
    return out


def _speech() -> dict[str, Int16Array]:
    from pipelines.tts import PiperTTS

    tts = PiperTTS()
    try:
        return {
            text: _trim(tts.synthesize_sync(text, 8000))
            for text in (*PHRASES, LONG_ASK, INTERRUPT)
        }
    finally:
        tts.shutdown()


def _trim(pcm: Int16Array) -> Int16Array:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 500)
    return pcm if loud.size == 0 else pcm[loud[0] : loud[-1] + 1]


async def run_load(
    profile: LoadProfile,
    workdir: Path,
    *,
    modes: Sequence[str] = ("local", "instant"),
    progress: Any = None,
    speech: dict[str, Int16Array] | None = None,
) -> LoadReport:
    """Every step of the profile, alternating targets, in a fresh pair of servers.

    `speech` maps each of `PHRASES`, `LONG_ASK` and `INTERRUPT` to 8 kHz PCM;
    by default it is synthesized here with the Piper voice.
    """
    started, wall0 = time.time(), time.monotonic()
    say = progress or (lambda text: log.info("%s", text))
    if speech is None:
        speech = await asyncio.to_thread(_speech)
    steps: list[StepResult] = []
    async with StandinServer(Script.from_dict(SCRIPT)) as llm:
        for mode in modes:
            plan = profile.local_steps if mode == "local" else profile.instant_steps
            factories = [voxdial_target]
            if profile.baseline:
                factories.append(baseline_target)
            async with contextlib.AsyncExitStack() as stack:
                targets = []
                for factory in factories:
                    say(f"starting {factory.__name__.split('_')[0]} ({mode} speech)")
                    target = await stack.enter_async_context(
                        factory(
                            workdir / f"{mode}-{factory.__name__}", llm.base_url, mode
                        )
                    )
                    targets.append(target)
                for calls in plan:
                    for target in targets:
                        say(f"{mode}: {calls} calls against {target.name} ...")
                        result = await run_step(target, mode, calls, speech, profile)
                        steps.append(result)
                        say(_one_line(result))
                        await asyncio.sleep(2.0)  # let the last calls wind down
    return LoadReport(
        profile=profile,
        steps=steps,
        capacity=capacity(steps, profile.latency_bound, profile.latency_slack_s),
        started_at=started,
        wall_s=time.monotonic() - wall0,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _one_line(s: StepResult) -> str:
    return (
        f"  {s.target:8} {s.calls:3} calls: v2v p50 {_ms(s.v2v_p50_s)} ms, "
        f"p95 {_ms(s.v2v_p95_s)} ms, barge-in p95 {_ms(s.barge_in_p95_s)} ms, "
        f"{s.gaps} gaps, {s.frames_after_clear} frames after clear, "
        f"{s.server_cpu_share:.2f} cores, peak {s.peak_rss_mb:.0f} MB"
    )
