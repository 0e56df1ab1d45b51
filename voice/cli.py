"""The `voxdial` command.

    voxdial serve     the media server (TwiML webhook, media streams, metrics,
                      the admin API under /api/v1)
    voxdial dialer    a dialer process: active campaigns' leads into calls
    voxdial bench     load test: concurrent calls and latency, against a baseline
    voxdial demo      the whole product, offline, in one command (voice.demo)
    voxdial apikey | leads | campaign    the operator's moves (see admin_cli)

With no `VOXDIAL_LLM_BASE_URL`, `serve` starts the local LLM stand-in in the
same process and says so: no model is reachable offline, so the agent's
answers come from a script until a real OpenAI-compatible endpoint is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import aiohttp
from aiohttp import web

from voice import logs
from voice.admin_cli import add_commands, run_command
from voice.settings import Settings, SettingsError

log = logging.getLogger("voxdial")

OFFLINE_SCRIPT = {
    "rules": [
        {
            "pattern": r"\b(bye|goodbye|that's all)\b",
            "reply": "Thanks for your time. Goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "completed"}}],
        },
        {
            "pattern": r"\b(appointment|book|schedule|meeting)\b",
            "reply": "Sure. I can book that for you. Which day works best?",
        },
        {
            "pattern": r"\b(monday|tuesday|wednesday|thursday|friday)\b",
            "reply": "Great, I have noted that day. Is there anything else?",
        },
        {"pattern": r"\bkeypad\b", "reply": "Thanks, I got the digits you pressed."},
        {
            "pattern": r"\b(who|what) (is|are) (this|you)\b",
            "reply": "I'm an automated assistant calling on behalf of the team.",
        },
    ],
    "default_reply": "I see. Could you tell me a little more about that?",
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="voxdial", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the media server")
    serve.add_argument("--host", help="override VOXDIAL_HOST")
    serve.add_argument("--port", type=int, help="override VOXDIAL_PORT")
    commands.add_parser("dialer", help="run a dialer process (several may run)")
    demo = commands.add_parser("demo", help="run everything offline on a sample")
    demo.add_argument("--leads", type=int, default=24, help="leads to call")
    demo.add_argument("--concurrency", type=int, default=4, help="calls at once")
    demo.add_argument("--dialers", type=int, default=1, help="dialer processes")
    demo.add_argument("--fast", action="store_true", help="short rings and retries")
    demo.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    demo.add_argument("--data-dir", default="data/demo", help="where runs are kept")
    from benchmarks.report import add_command as add_bench

    add_bench(commands)
    add_commands(commands)
    args = parser.parse_args(argv)

    try:
        settings = Settings.load(serving=args.command == "serve")
    except SettingsError as exc:
        print(f"voxdial: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if getattr(args, "host", None):
        settings = replace(settings, host=args.host)
    if getattr(args, "port", None) is not None:
        settings = replace(settings, port=args.port)
    logs.setup(settings.log_level)
    if args.command == "serve":
        asyncio.run(serve_forever(settings))
    elif args.command == "bench":
        from benchmarks.report import run_bench

        raise SystemExit(asyncio.run(run_bench(args)))
    elif args.command == "demo":
        from voice.demo import main as run_demo

        raise SystemExit(run_demo(args, settings))
    elif args.command == "dialer":
        from dialer.service import run_dialer

        raise SystemExit(asyncio.run(run_dialer(settings)))
    else:
        raise SystemExit(asyncio.run(run_command(args, settings)))


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[web.AppRunner]:
    """Everything `serve` runs, started, and stopped again on exit."""
    # Imported here so `voxdial --help` and bad settings answer at once.
    from pipelines.llm_standin import Script, StandinServer
    from pipelines.models import Models, shared_models
    from voice.admin_cli import open_store
    from voice.metrics import watch_loop_lag
    from voice.server import campaign_services, create_app

    async with contextlib.AsyncExitStack() as stack:
        store = await open_store(settings, stack, serving=True)

        started = time.monotonic()
        if settings.speech == "instant":
            log.warning(
                "VOXDIAL_SPEECH=instant: STT and TTS are stand-ins (benchmarks)"
            )
            models = await asyncio.to_thread(Models.instant, settings.smart_turn)
        else:
            models = await asyncio.to_thread(
                shared_models,
                stt_beam_size=settings.stt_beam_size,
                stt_threads=settings.stt_threads,
                stt_workers=settings.stt_workers,
                tts_workers=settings.tts_workers,
                tts_speed=settings.tts_speed,
                smart_turn=settings.smart_turn,
            )
        stack.callback(models.shutdown)
        log.info("models ready in %.1f s", time.monotonic() - started)

        base_url = settings.llm_base_url
        if not base_url:
            standin = StandinServer(Script.from_dict(OFFLINE_SCRIPT))
            await standin.start()
            stack.push_async_callback(standin.stop)
            base_url = standin.base_url
            log.warning(
                "no VOXDIAL_LLM_BASE_URL: the agent's answers come from the local "
                "scripted LLM stand-in at %s, not a real model",
                base_url,
            )
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        services = campaign_services(
            settings,
            store=store,
            models=models,
            session=session,
            llm_base_url=base_url,
        )
        assert services.webhooks is not None
        stack.push_async_callback(services.webhooks.close)
        runner = web.AppRunner(create_app(services), handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        lag = asyncio.create_task(watch_loop_lag(services.metrics), name="loop-lag")
        stack.callback(lag.cancel)
        yield runner


async def serve_forever(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_server(settings) as runner:
        for address in runner.addresses:
            log.info("voxdial serving on %s (webhook: POST /twilio/voice)", address)
        await stop.wait()
        log.info("shutting down")
