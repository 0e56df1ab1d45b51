"""`voxdial bench`: run the load (the dialer's scale test, WhatsApp), write the report.

    voxdial bench [--profile quick|full] [--mode local|instant|both]
                  [--no-baseline] [--no-dialer] [--no-whatsapp] [--out DIR]

Writes `DIR/<timestamp>/`: `report.md` (tables: every figure as voxdial's
value, the baseline's and their ratio), `results.json` (everything, raw
samples included) and PNG plots when matplotlib is installed (the `bench`
extra): latency against concurrent calls, CPU against concurrent calls, and
the voice-to-voice distribution of the busiest step both targets ran.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.load import LoadReport, StepResult

__all__ = ["add_command", "markdown", "run_bench"]

log = logging.getLogger("voxdial.bench")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None or theirs == 0:
        return "-"
    return f"{ours / theirs:.2f}"


FIGURES: tuple[tuple[str, str, bool], ...] = (
    # (attribute, label, in milliseconds)
    ("v2v_p50_s", "voice to voice p50 (ms)", True),
    ("v2v_p95_s", "voice to voice p95 (ms)", True),
    ("v2v_p99_s", "voice to voice p99 (ms)", True),
    ("barge_in_p95_s", "barge-in to clear p95 (ms)", True),
    ("frames_after_clear", "agent frames after clear", False),
    ("barge_ins_missed", "barge-ins never cleared", False),
    ("gaps", "audible gaps", False),
    ("no_reply", "turns with no reply", False),
    ("cpu_s_per_call_s", "server CPU s per call-second", False),
    ("peak_rss_mb", "server peak RSS (MB)", False),
    ("server_cpu_share", "server CPU (cores)", False),
    ("bench_cpu_share", "the callers' own CPU (cores)", False),
    ("loop_lag_p99_s", "event-loop lag p99 (ms)", True),
)


def _value(step: StepResult | None, attr: str, ms: bool) -> tuple[str, float | None]:
    if step is None:
        return "-", None
    raw = getattr(step, attr)
    if raw is None:
        return "-", None
    if ms:
        return _ms(raw), float(raw)
    if isinstance(raw, float):
        return (f"{raw:.3f}" if raw < 10 else f"{raw:.0f}"), raw
    return str(raw), float(raw)


def markdown(report: LoadReport, scale: str = "") -> str:
    lines = [
        f"# voxdial bench ({report.profile.name} profile)",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(report.started_at))}, "
        f"{report.wall_s / 60:.1f} min; each step held {report.profile.hold_s:.0f} s; "
        f"{report.profile.barge_in_share:.0%} of turns talk over the agent. "
        "The callers run in the benchmark's own process on the same cores.",
        "",
        "## Capacity",
        "",
        f"Largest number of concurrent calls whose p95 voice to voice stays within "
        f"{report.profile.latency_bound}x the single-call value (or "
        f"{report.profile.latency_slack_s * 1000:.0f} ms above it, whichever is "
        "more), with no gap, no missed barge-in and every call greeted:",
        "",
        "| target | speech | calls |",
        "|---|---|---|",
    ]
    for key, value in sorted(report.capacity.items()):
        target, mode = key.split("/")
        lines.append(f"| {target} | {mode} | {value} |")
    for mode in sorted({s.mode for s in report.steps}):
        lines += ["", f"## {mode} speech", ""]
        counts = sorted({s.calls for s in report.steps if s.mode == mode})
        for calls in counts:
            ours = _find(report.steps, "voxdial", mode, calls)
            theirs = _find(report.steps, "baseline", mode, calls)
            lines += [
                f"### {calls} concurrent call{'s' if calls > 1 else ''}",
                "",
                "| figure | voxdial | baseline | ratio |",
                "|---|---|---|---|",
            ]
            for attr, label, ms in FIGURES:
                a, av = _value(ours, attr, ms)
                b, bv = _value(theirs, attr, ms)
                lines.append(f"| {label} | {a} | {b} | {_ratio(av, bv)} |")
            if ours is not None and ours.stage_mean_s:
                parts = ", ".join(
                    f"{stage} {_ms(value)} ms"
                    for stage, value in sorted(ours.stage_mean_s.items())
                )
                lines.append(
                    "\nvoxdial's own turn figures, means (turn_detection and stt "
                    "are durations; the others count from the end of caller "
                    f"speech): {parts}"
                )
            for step in (ours, theirs):
                if step is not None and step.errors:
                    lines.append(f"\n{step.target} caller errors: {step.errors}")
            lines.append("")
    if scale:
        lines += ["## The dialer at scale", "", scale]
    return "\n".join(lines) + "\n"


def _find(
    steps: Sequence[StepResult], target: str, mode: str, calls: int
) -> StepResult | None:
    return next(
        (s for s in steps if (s.target, s.mode, s.calls) == (target, mode, calls)),
        None,
    )


def plots(report: LoadReport, out: Path) -> list[Path]:
    """PNG plots; none (and a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (the `bench` extra): no plots")
        return []
    written = []
    for mode in sorted({s.mode for s in report.steps}):
        fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4))
        for target, style in (("voxdial", "-o"), ("baseline", "--s")):
            mine = sorted(
                (s for s in report.steps if (s.target, s.mode) == (target, mode)),
                key=lambda s: s.calls,
            )
            if not mine:
                continue
            x = [s.calls for s in mine]
            for attr, name in (("v2v_p50_s", "p50"), ("v2v_p95_s", "p95")):
                y = [getattr(s, attr) or float("nan") for s in mine]
                lat.plot(x, y, style, label=f"{target} {name}")
            cpu.plot(x, [s.server_cpu_share for s in mine], style, label=target)
        lat.set(
            title=f"voice to voice ({mode})",
            xlabel="concurrent calls",
            ylabel="seconds",
        )
        cpu.set(title=f"server CPU ({mode})", xlabel="concurrent calls", ylabel="cores")
        lat.legend()
        cpu.legend()
        path = out / f"scaling-{mode}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

        shared = [
            c
            for c in sorted({s.calls for s in report.steps if s.mode == mode})
            if _find(report.steps, "voxdial", mode, c)
            and _find(report.steps, "baseline", mode, c)
        ]
        if shared:
            fig, ax = plt.subplots(figsize=(6, 4))
            for target in ("voxdial", "baseline"):
                step = _find(report.steps, target, mode, shared[-1])
                if step is not None and step.v2v_samples:
                    ax.hist(step.v2v_samples, bins=30, alpha=0.6, label=target)
            ax.set(
                title=f"voice to voice, {shared[-1]} calls ({mode})",
                xlabel="seconds",
                ylabel="turns",
            )
            ax.legend()
            path = out / f"distribution-{mode}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


async def run_bench(args: argparse.Namespace) -> int:
    # Imported here: `voxdial --help` should not load the media server.
    from benchmarks.load import FULL, QUICK, run_load

    profile = FULL if args.profile == "full" else QUICK
    if args.no_baseline:
        profile = replace(profile, baseline=False)
    if args.hold_s:
        profile = replace(profile, hold_s=args.hold_s)
    if args.local_steps:
        profile = replace(profile, local_steps=_steps(args.local_steps))
    if args.instant_steps:
        profile = replace(profile, instant_steps=_steps(args.instant_steps))
    modes = ("local", "instant") if args.mode == "both" else (args.mode,)
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"voxdial bench: {profile.name} profile, {', '.join(modes)} speech -> {out}")
    with tempfile.TemporaryDirectory(prefix="voxdial-bench-") as work:
        report = await run_load(profile, Path(work), modes=modes, progress=say)
    scale_md, scale_json = "", None
    if not args.no_dialer:
        from benchmarks.dialer_scale import ScaleProfile, format_report, run_scale

        say("the dialer at scale ...")
        sizes = (
            (10_000, 100_000)
            if profile.name == "quick"
            else (10_000, 100_000, 1_000_000)
        )
        scale = await run_scale(ScaleProfile(name=profile.name, sizes=sizes))
        scale_md, scale_json = format_report(scale), asdict(scale)
    chat_md, chat_json = "", None
    if not args.no_whatsapp:
        from benchmarks import whatsapp_load

        leads = 20 if profile.name == "quick" else 200
        say(f"WhatsApp: {leads} conversations at once ...")
        with tempfile.TemporaryDirectory(prefix="voxdial-wa-") as work:
            chat = await whatsapp_load.run_whatsapp_load(
                whatsapp_load.WhatsAppProfile(leads=leads), Path(work)
            )
        chat_md, chat_json = whatsapp_load.format_report(chat), asdict(chat)
    text = markdown(report, scale_md)
    if chat_md:
        text += "\n\n" + chat_md
    results: dict[str, Any] = {
        "load": asdict(report),
        "dialer_scale": scale_json,
        "whatsapp": chat_json,
    }
    written = await asyncio.to_thread(_write, out, text, results, report)
    for path in written:
        say(f"plot: {path}")
    say("")
    say(text)
    say(f"report: {out / 'report.md'}")
    return 0


def _steps(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _write(
    out: Path, text: str, results: dict[str, Any], report: LoadReport
) -> list[Path]:
    (out / "report.md").write_text(text)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return plots(report, out)


def add_command(commands: Any) -> None:
    bench = commands.add_parser("bench", help="measure calls per core and latency")
    bench.add_argument("--profile", choices=("quick", "full"), default="quick")
    bench.add_argument("--mode", choices=("local", "instant", "both"), default="both")
    bench.add_argument("--no-baseline", action="store_true", help="voxdial only")
    bench.add_argument("--no-dialer", action="store_true", help="skip the dialer test")
    bench.add_argument(
        "--no-whatsapp", action="store_true", help="skip the WhatsApp load"
    )
    bench.add_argument("--hold-s", type=float, default=0.0, help="seconds per step")
    bench.add_argument("--out", default="bench-results", help="where reports go")
    bench.add_argument("--local-steps", help="call counts, e.g. 1,4,10")
    bench.add_argument("--instant-steps", help="call counts, e.g. 1,25,100")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="voxdial-bench")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(asyncio.run(run_bench(args)))


if __name__ == "__main__":
    main()
