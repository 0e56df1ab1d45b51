"""Call latency, barge-in and memory per call, measured on this machine.

Real local models, the scripted LLM stand-in answering at once, everything on
127.0.0.1, and simulated Twilio callers talking at real-time pace:

1. One call of `--turns` turns: the caller waits for the agent to finish,
   says a phrase, and waits for the reply. Voice to voice is the caller's
   last speech frame sent -> the first agent frame received; the server's
   stages come from the call record.
2. `--barge-ins` trials in one call: the agent starts a long reply and the
   caller talks over it ~1.5 s in. Onset (the caller's first speech frame
   sent) -> `clear` received, and the agent frames of the cut reply that
   still arrived after the clear (there must be none).
3. Memory: `voxdial serve` as a subprocess, its resident memory with one call
   and with `--calls` calls connected, each having said one phrase.

    python -m benchmarks.call_latency [--turns N] [--barge-ins N] [--calls N]
                                      [--json PATH]

The caller phrases are synthesized with the loaded Piper voice and trimmed of
leading and trailing silence, so the first and last frames sent are the onset
and the end of speech.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.caller import SimulatedCaller
from benchmarks.harness import BenchServer, rss_mb, running_server, serve_subprocess
from pipelines.audio import Int16Array
from pipelines.llm_standin import Script, StandinServer
from pipelines.models import Models, shared_models
from voice import logs
from voice.settings import Settings

__all__ = [
    "BargeInResult",
    "BenchResult",
    "MemoryResult",
    "Profile",
    "Summary",
    "TurnsResult",
    "format_table",
    "main",
    "measure_barge_ins",
    "measure_memory",
    "measure_turns",
    "run_benchmark",
    "trim_silence",
]

log = logging.getLogger("voxdial.bench")

# Each caller phrase has a short reply of its own, about as long as the others.
TURNS = [
    ("I would like to book an appointment for next week.", "appointment"),
    ("Tuesday morning would be great.", "tuesday"),
    ("Do you have anything later in the afternoon?", "afternoon"),
    ("How much does the first visit cost?", "cost|visit"),
    ("Can I bring my daughter along?", "daughter|bring"),
    ("Okay, that sounds good to me.", "sounds good|okay"),
]
REPLIES = [
    "Sure. Which day would suit you best?",
    "Great, Tuesday morning it is.",
    "Yes, we have a slot at four.",
    "The first visit is forty dollars.",
    "Of course, she is very welcome.",
    "Perfect. I have booked it for you.",
]
LONG_PROMPT = "Can you tell me about your opening hours?"
INTERRUPTION = "Wait, I have a quick question."
LONG_REPLY = (
    "Our clinic opens at eight in the morning on weekdays and closes at six in "
    "the evening. On Saturdays we open at nine and close at one in the "
    "afternoon, with a shorter team on duty. We are closed on Sundays and on "
    "public holidays, but the phone line stays open for urgent questions. "
    "Parking is free for patients in the large car park behind the building. "
    "If you come by bus, the number twelve stops right outside the main door."
)
SCRIPT: dict[str, Any] = {
    "rules": [
        {"pattern": "hours|opening", "reply": LONG_REPLY},
        {"pattern": "question|wait", "reply": "Of course. Go ahead."},
        *(
            {"pattern": pattern, "reply": reply}
            for (_, pattern), reply in zip(TURNS, REPLIES, strict=True)
        ),
    ],
    "default_reply": "I see.",
}
PARAMS = {"name": "Ada", "company": "Acme Clinic"}
STAGES = (
    "turn_detection_s",
    "stt_s",
    "llm_first_token_s",
    "tts_first_audio_s",
    "first_audio_s",
)

REPLY_LIMIT_S = 10.0  # no agent audio this long after speech: the turn is lost
QUIET_S = 0.5  # no agent frame this long: the agent has finished (lead 0.16 s)
BARGE_IN_AFTER_S = 1.5  # the caller talks over the long reply this far into it
AFTER_SPEECH_S = 0.3  # frames of the cut reply can only arrive before this


@dataclass(frozen=True)
class Profile:
    turns: int = 8
    barge_ins: int = 8
    calls: int = 8


@dataclass
class Summary:
    """Seconds (or MB): how many values, their median, 95th percentile, max."""

    n: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, None, None, None)
        data = np.asarray(values, dtype=float)
        p50, p95 = np.percentile(data, [50, 95])
        return cls(len(values), float(p50), float(p95), float(data.max()))


@dataclass
class TurnsResult:
    turns: int
    answered: int
    voice_to_voice: Summary
    # As recorded: turn_detection_s and stt_s are durations, the later stages
    # are measured from the end of caller speech.
    recorded: dict[str, Summary]
    # Each stage on its own, derived from the recorded figures.
    stages: dict[str, Summary]
    gaps: int
    violations: list[str]
    samples: list[dict[str, float | None]] = field(default_factory=list)


@dataclass
class BargeInResult:
    trials: int
    cleared: int
    onset_to_clear: Summary
    frames_after_clear: int
    server_mean_s: float | None  # voxdial_barge_in_seconds: sum / count
    server_count: int
    interrupted_turns: int
    samples: list[dict[str, float | int | None]] = field(default_factory=list)


@dataclass
class MemoryResult:
    calls: int
    answered: int
    rss_idle_mb: float
    rss_one_mb: float
    rss_all_mb: float
    per_call_mb: float
    clean_exit: bool


@dataclass
class BenchResult:
    profile: Profile
    turns: TurnsResult
    barge_in: BargeInResult
    memory: MemoryResult

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Caller helpers.


def trim_silence(pcm: Int16Array, floor_db: float = -40.0) -> Int16Array:
    """`pcm` without the leading and trailing samples below `floor_db` of its peak."""
    magnitude = np.abs(pcm.astype(np.int32))
    if magnitude.size == 0:
        return pcm
    threshold = magnitude.max() * 10 ** (floor_db / 20)
    loud = np.flatnonzero(magnitude > threshold)
    return pcm[loud[0] : loud[-1] + 1] if loud.size else pcm[:0]


def new_caller(ws_url: str, call_id: str) -> SimulatedCaller:
    return SimulatedCaller(ws_url, custom_parameters={**PARAMS, "call_id": call_id})


async def _until(condition: Callable[[], bool], limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def wait_reply(caller: SimulatedCaller, after: float) -> float | None:
    """When the agent's first frame after `after` arrived, once it fell quiet.

    None if the agent said nothing within `REPLY_LIMIT_S`.
    """
    if not await _until(
        lambda: caller.first_audio_after(after) is not None, REPLY_LIMIT_S
    ):
        return None
    await _until(lambda: time.monotonic() - caller.media_times[-1] > QUIET_S, 60.0)
    return caller.first_audio_after(after)


async def _hang_up(callers: Sequence[SimulatedCaller]) -> None:
    results = await asyncio.gather(
        *(c.hangup() for c in callers), return_exceptions=True
    )
    for result in results:
        if isinstance(result, Exception):
            log.warning("a caller ended with an error: %r", result)


# 1. Turn latency.


async def measure_turns(
    server: BenchServer, phrases: Sequence[Int16Array], turns: int
) -> TurnsResult:
    """One call of `turns` turns; the caller waits for each reply to end."""
    call_id = "bench-turns"
    voice_to_voice: list[float] = []
    async with new_caller(server.ws_url, call_id) as caller:
        await wait_reply(caller, 0.0)  # the greeting
        for i in range(turns):
            await caller.say(phrases[i % len(phrases)])
            spoke = caller.speech_end_times[-1]
            heard = await wait_reply(caller, spoke)
            if heard is not None:
                voice_to_voice.append(heard - spoke)
        gaps, violations = caller.gaps, list(caller.violations)
    record = await server.wait_record(call_id)

    samples = [
        {stage: turn["latency"].get(stage) for stage in STAGES}
        for turn in record["transcript"]
        if turn["speaker"] == "agent"
        and turn["latency"] is not None
        and turn["latency"].get("stt_s") is not None
    ]
    recorded = {
        stage: Summary.of([s[stage] for s in samples if s[stage] is not None])
        for stage in STAGES
    }
    return TurnsResult(
        turns=turns,
        answered=len(voice_to_voice),
        voice_to_voice=Summary.of(voice_to_voice),
        recorded=recorded,
        stages=_stage_durations(samples),
        gaps=gaps,
        violations=violations,
        samples=samples,
    )


def _stage_durations(samples: list[dict[str, float | None]]) -> dict[str, Summary]:
    out: dict[str, list[float]] = {
        k: [] for k in ("turn_detection", "stt", "llm", "tts", "send")
    }
    for s in samples:
        values = [s[stage] for stage in STAGES]
        if any(v is None for v in values):
            continue
        detect, stt, llm, tts, sent = (float(v or 0.0) for v in values)
        out["turn_detection"].append(detect)
        out["stt"].append(stt)
        out["llm"].append(llm - detect - stt)
        out["tts"].append(tts - llm)
        out["send"].append(sent - tts)
    return {k: Summary.of(v) for k, v in out.items()}


# 2. Barge-in.


async def measure_barge_ins(
    server: BenchServer, prompt: Int16Array, interruption: Int16Array, trials: int
) -> BargeInResult:
    """Talk over a long reply `trials` times in one call."""
    call_id = "bench-barge-in"
    before = await _histogram(server.url, "voxdial_barge_in_seconds")
    onset_to_clear: list[float] = []
    samples: list[dict[str, float | int | None]] = []
    async with new_caller(server.ws_url, call_id) as caller:
        await wait_reply(caller, 0.0)
        for _ in range(trials):
            await caller.say(prompt)
            started = await _until(
                lambda: (
                    caller.first_audio_after(caller.speech_end_times[-1]) is not None
                ),
                REPLY_LIMIT_S,
            )
            first = caller.first_audio_after(caller.speech_end_times[-1])
            if not started or first is None:
                samples.append({"onset_to_clear_s": None, "frames_after_clear": 0})
                await wait_reply(caller, 0.0)
                continue
            await asyncio.sleep(max(0.0, first + BARGE_IN_AFTER_S - time.monotonic()))

            await caller.say(interruption)
            onset, end = caller.speech_start_times[-1], caller.speech_end_times[-1]
            cleared = await _wait_clear(caller, onset, 2.0)
            await wait_reply(caller, end)  # the answer to the interruption
            late = 0
            if cleared is not None:
                onset_to_clear.append(cleared - onset)
                horizon = end + AFTER_SPEECH_S
                late = sum(1 for t in caller.media_times if cleared < t <= horizon)
            samples.append(
                {
                    "onset_to_clear_s": None if cleared is None else cleared - onset,
                    "frames_after_clear": late,
                }
            )
    record = await server.wait_record(call_id)
    after = await _histogram(server.url, "voxdial_barge_in_seconds")
    count = int(after[1] - before[1])
    return BargeInResult(
        trials=trials,
        cleared=len(onset_to_clear),
        onset_to_clear=Summary.of(onset_to_clear),
        frames_after_clear=sum(int(s["frames_after_clear"] or 0) for s in samples),
        server_mean_s=(after[0] - before[0]) / count if count else None,
        server_count=count,
        interrupted_turns=sum(1 for t in record["transcript"] if t["interrupted"]),
        samples=samples,
    )


async def _wait_clear(
    caller: SimulatedCaller, after: float, limit_s: float
) -> float | None:
    """When the first `clear` after `after` arrived, waiting up to `limit_s`."""
    deadline = time.monotonic() + limit_s
    while True:
        cleared = next((t for t in caller.clear_times if t > after), None)
        if cleared is not None or time.monotonic() > deadline:
            return cleared
        await asyncio.sleep(0.01)


async def _histogram(url: str, name: str) -> tuple[float, float]:
    """A histogram's sum and count, scraped from /metrics."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for suffix in values:
            if line.startswith(f"{name}_{suffix} "):
                values[suffix] = float(line.split()[1])
    return values["sum"], values["count"]


# 3. Memory per call.


async def measure_memory(
    calls: int, phrase: Int16Array, workdir: Path, limit_s: float = 120.0
) -> MemoryResult:
    """`voxdial serve`'s resident memory with one call, then with `calls`."""
    if calls < 2:
        raise ValueError("memory per call needs at least 2 calls")
    async with StandinServer(Script.from_dict(SCRIPT)) as llm:
        async with serve_subprocess(workdir, llm.base_url, limit_s) as served:
            idle = await _settled_rss(served.pid)
            callers = [
                new_caller(served.ws_url, f"bench-mem-{i}") for i in range(calls)
            ]
            try:
                await callers[0].connect()
                answered = int(await _talk(callers[0], phrase))
                one = await _settled_rss(served.pid)
                await asyncio.gather(*(c.connect() for c in callers[1:]))
                talked = await asyncio.gather(*(_talk(c, phrase) for c in callers[1:]))
                answered += sum(talked)
                everyone = await _settled_rss(served.pid)
            finally:
                await _hang_up(callers)
        clean = served.returncode == 0
    return MemoryResult(
        calls=calls,
        answered=answered,
        rss_idle_mb=idle,
        rss_one_mb=one,
        rss_all_mb=everyone,
        per_call_mb=(everyone - one) / (calls - 1),
        clean_exit=clean,
    )


async def _talk(caller: SimulatedCaller, phrase: Int16Array) -> bool:
    """Hear the greeting, say the phrase, hear the reply; True if it came."""
    await wait_reply(caller, 0.0)
    await caller.say(phrase)
    return await wait_reply(caller, caller.speech_end_times[-1]) is not None


async def _settled_rss(pid: int) -> float:
    """The median of a few readings over half a second, in MB."""
    readings = []
    for _ in range(5):
        readings.append(rss_mb(pid))
        await asyncio.sleep(0.1)
    return float(np.median(readings))


# The whole run.


def bench_settings(data_dir: Path) -> Settings:
    return Settings.load(
        {
            "VOXDIAL_VALIDATE_SIGNATURES": "false",
            "VOXDIAL_DATA_DIR": str(data_dir),
            "VOXDIAL_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "VOXDIAL_TWILIO_AUTH_TOKEN": "token",
        }
    )


def load_models(settings: Settings) -> Models:
    """The process's shared models, loaded the way `voxdial serve` loads them."""
    return shared_models(
        stt_beam_size=settings.stt_beam_size,
        stt_threads=settings.stt_threads,
        stt_workers=settings.stt_workers,
        tts_workers=settings.tts_workers,
        tts_speed=settings.tts_speed,
        smart_turn=settings.smart_turn,
    )


async def run_benchmark(models: Models, profile: Profile, workdir: Path) -> BenchResult:
    """All three measurements; `workdir` receives the records and server logs."""
    settings = bench_settings(workdir / "in-process")

    def speak(text: str) -> Int16Array:
        return trim_silence(models.tts.synthesize_sync(text, 8000))

    phrases = [speak(text) for text, _ in TURNS]

    async with running_server(models, settings, SCRIPT) as server:
        turns = await measure_turns(server, phrases, profile.turns)
        barge_in = await measure_barge_ins(
            server, speak(LONG_PROMPT), speak(INTERRUPTION), profile.barge_ins
        )
    memory = await measure_memory(profile.calls, phrases[0], workdir / "serve")
    return BenchResult(profile, turns, barge_in, memory)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _row(label: str, s: Summary) -> str:
    return f"  {label:<34}{_ms(s.p50):>7}{_ms(s.p95):>7}{_ms(s.max):>7}{s.n:>4}"


def format_table(result: BenchResult) -> str:
    t, b, m = result.turns, result.barge_in, result.memory
    head = f"  {'':<34}{'p50':>7}{'p95':>7}{'max':>7}{'n':>4}"
    lines = [
        f"single call: {t.answered}/{t.turns} turns answered, "
        f"{t.gaps} gaps, {len(t.violations)} violations (ms)",
        head,
        _row("voice to voice (caller)", t.voice_to_voice),
        "  server, from end of speech:",
        _row("  turn detected", t.recorded["turn_detection_s"]),
        _row("  transcript ready (turn + stt)", _sum_of(t.samples)),
        _row("  LLM first token", t.recorded["llm_first_token_s"]),
        _row("  TTS first audio", t.recorded["tts_first_audio_s"]),
        _row("  first audio sent", t.recorded["first_audio_s"]),
        "  server, each stage:",
        _row("  turn detection", t.stages["turn_detection"]),
        _row("  STT", t.stages["stt"]),
        _row("  LLM to first token", t.stages["llm"]),
        _row("  TTS first sentence", t.stages["tts"]),
        _row("  first frame out", t.stages["send"]),
        "",
        f"barge-in: {b.cleared}/{b.trials} cleared, {b.interrupted_turns} turns "
        f"recorded as interrupted (ms)",
        head,
        _row("onset -> clear (caller)", b.onset_to_clear),
        f"  {'onset -> clear (server, mean)':<34}{_ms(b.server_mean_s):>7}"
        f"{'':>14}{b.server_count:>4}",
        f"  agent frames after clear: {b.frames_after_clear}",
        "",
        f"memory (voxdial serve): idle {m.rss_idle_mb:.0f} MB, 1 call "
        f"{m.rss_one_mb:.0f} MB, {m.calls} calls {m.rss_all_mb:.0f} MB "
        f"({m.answered}/{m.calls} answered)",
        f"  {m.per_call_mb:.2f} MB per additional call; "
        f"server exit {'clean' if m.clean_exit else 'NOT clean'}",
    ]
    return "\n".join(lines)


def _sum_of(samples: list[dict[str, float | None]]) -> Summary:
    return Summary.of(
        [
            float(s["turn_detection_s"]) + float(s["stt_s"])
            for s in samples
            if s["turn_detection_s"] is not None and s["stt_s"] is not None
        ]
    )


async def _until_signalled(work: Awaitable[BenchResult]) -> BenchResult:
    """`work`, cancelled on SIGTERM so that every `finally` (the subprocess) runs."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.call_latency", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--turns", type=int, default=Profile.turns)
    parser.add_argument("--barge-ins", type=int, default=Profile.barge_ins)
    parser.add_argument("--calls", type=int, default=Profile.calls)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.turns < 1 or args.barge_ins < 1 or args.calls < 2:
        parser.error("--turns and --barge-ins must be >= 1, --calls >= 2")
    logs.setup(args.log_level)
    profile = Profile(args.turns, args.barge_ins, args.calls)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="voxdial-bench-") as tmp:
        models = load_models(bench_settings(Path(tmp)))
        try:
            result = asyncio.run(
                _until_signalled(run_benchmark(models, profile, Path(tmp)))
            )
        finally:
            models.shutdown()
    print(format_table(result))
    print(f"\n({time.monotonic() - started:.0f} s in all)")
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    main()
