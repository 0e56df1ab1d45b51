"""WhatsApp conversations at once: what voxdial adds to the model's own time.

One process holds everything, on 127.0.0.1: a private `redis-server`, the
media server (`voxdial serve`'s services), an in-process dialer, the Cloud
API stand-in and the scripted LLM stand-in, which answers after
`--model-delay-s` (a model's time to its reply). `--leads` leads get the
template at once; each answers it and then every agent message, `--turns`
times, a moment after the agent wrote.

Measured per turn: the lead's message sent -> the agent's answer accepted
by the Cloud API (the stand-in's own clocks on both ends). The baseline, in
the same run: the same LLM stand-in asked directly with the same number of
requests at the same concurrency, so the ratio is voxdial's whole path
(signed webhook, Redis, prompt, tools, the send) over the model's time
alone. Also: answers per second, turns that got no answer or two, free text
sent outside a service window (must be 0), this process's CPU per answer.

    python -m benchmarks.whatsapp_load [--leads N] [--turns N]
                                       [--model-delay-s S] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import secrets
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from campaign_store.models import (
    AgentInput,
    CampaignInput,
    HourRange,
    Lead,
    Pacing,
    Schedule,
    WhatsAppChannel,
    WhatsAppTemplate,
)
from campaign_store.redis_server import embedded_redis
from campaign_store.store import Store, new_id
from dialer.dialer import Dialer, DialerConfig
from dialer.twilio_carrier import TwilioCarrier
from dialer.whatsapp import WhatsAppAccount
from dialer.whatsapp_standin import Contact, WhatsAppStandin
from dialer.window import Jurisdictions
from pipelines.llm import ChatClient, LLMConfig
from pipelines.llm_standin import Script, StandinServer
from pipelines.models import Models
from voice.server import campaign_services, create_app
from voice.settings import Settings

__all__ = ["WhatsAppLoad", "format_report", "main", "run_whatsapp_load"]

log = logging.getLogger("voxdial.bench")

T = "bench"
NUMBER_ID = "106540352242922"
LINES = ("Hi, who is this?", "What are your opening hours?", "Thanks, bye.")
ANYTIME = Jurisdictions(rules={}, fallback=None)


@dataclass(frozen=True)
class WhatsAppProfile:
    leads: int = 20
    turns: int = 3
    model_delay_s: float = 0.3
    reply_after_s: float = 0.2
    limit_s: float = 120.0


@dataclass
class WhatsAppLoad:
    profile: WhatsAppProfile
    turns_expected: int = 0
    answered: int = 0
    unanswered: int = 0
    answered_twice: int = 0
    violations: int = 0
    reply_p50_s: float | None = None
    reply_p95_s: float | None = None
    baseline_p50_s: float | None = None
    baseline_p95_s: float | None = None
    answers_per_s: float | None = None
    cpu_ms_per_answer: float | None = None
    wall_s: float = 0.0
    samples: list[float] = field(default_factory=list)


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _latencies(standin: WhatsAppStandin, numbers: Sequence[str]) -> dict[str, Any]:
    """Per turn: the lead's message -> the first agent text after it."""
    samples: list[float] = []
    unanswered = twice = 0
    for number in numbers:
        wrote = [m.at for m in standin.received if m.from_ == number]
        texts = [m.at for m in standin.sent_to(number) if m.type == "text"]
        for i, at in enumerate(wrote):
            until = wrote[i + 1] if i + 1 < len(wrote) else float("inf")
            answers = [t for t in texts if at <= t < until]
            if not answers:
                unanswered += 1
                continue
            twice += len(answers) > 1
            samples.append(answers[0] - at)
    return {"samples": samples, "unanswered": unanswered, "twice": twice}


async def _baseline(base_url: str, requests: int, concurrency: int) -> list[float]:
    """The model alone: the same requests, as many at once, straight to it."""
    llm = ChatClient(LLMConfig(base_url=base_url, model="standin", api_key=""))
    gate = asyncio.Semaphore(concurrency)
    times: list[float] = []

    async def one(i: int) -> None:
        messages = [
            {"role": "system", "content": "You book visits for the clinic."},
            {"role": "user", "content": LINES[i % len(LINES)]},
        ]
        async with gate:
            started = time.perf_counter()
            await llm.complete(messages, timeout_s=30.0)
            times.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(one(i) for i in range(requests)))
    finally:
        await llm.close()
    return times


async def _campaign(store: Store, numbers: Sequence[str]) -> None:
    agent = await store.create_agent(
        T,
        AgentInput(
            name="Clinic",
            system_prompt="You book visits for the clinic. Be brief.",
            greeting="Hello {{name}}, the clinic would like to see you.",
        ),
    )
    campaign = await store.create_campaign(
        T,
        CampaignInput(
            name="WhatsApp load",
            agent_id=agent.id,
            channel=WhatsAppChannel(
                business_account_id="100200300400500",
                phone_number_id=NUMBER_ID,
                template=WhatsAppTemplate(
                    name="hello", language="en_US", variables=["name"]
                ),
            ),
            schedule=Schedule(
                days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                hours=[HourRange(start="00:00", end="24:00")],
                pacing=Pacing(calls_per_minute=600, max_concurrent=1),
            ),
        ),
    )
    leads = [
        Lead(
            id=new_id("lead"),
            campaign_id=campaign.id,
            phone=number,
            name=f"Lead {i}",
            timezone="America/New_York",
        )
        for i, number in enumerate(numbers)
    ]
    await store.add_leads(campaign, leads)
    await store.transition(T, campaign.id, "launch")


async def run_whatsapp_load(profile: WhatsAppProfile, work: Path) -> WhatsAppLoad:
    """Run the load once; see the module docstring."""
    started = time.monotonic()
    report = WhatsAppLoad(profile=profile)
    numbers = [f"+1212555{i:04d}" for i in range(profile.leads)]
    secret, token = secrets.token_hex(16), "EAAG" + secrets.token_hex(8)
    contact = Contact(
        replies=LINES[: profile.turns], reply_after_s=profile.reply_after_s
    )
    async with contextlib.AsyncExitStack() as stack:
        redis = stack.enter_context(embedded_redis(work / "redis"))
        store = await Store.connect(redis.url)
        stack.push_async_callback(store.close)
        llm = StandinServer(
            Script.from_dict(
                {
                    "default_reply": "Thanks for writing. How can I help?",
                    "first_token_delay_s": profile.model_delay_s,
                }
            )
        )
        await llm.start()
        stack.push_async_callback(llm.stop)
        standin = WhatsAppStandin(
            access_token=token,
            app_secret=secret,
            phone_number_id=NUMBER_ID,
            templates={("hello", "en_US"): 1},
            contacts=lambda number: contact,
            status_delay_s=0.05,
        )
        await standin.start()
        stack.push_async_callback(standin.stop)
        settings = Settings.load(
            {
                "VOXDIAL_VALIDATE_SIGNATURES": "false",
                "VOXDIAL_DATA_DIR": str(work),
                "VOXDIAL_WHATSAPP_API_BASE": standin.base_url,
                "VOXDIAL_WHATSAPP_ACCESS_TOKEN": token,
                "VOXDIAL_WHATSAPP_APP_SECRET": secret,
                "VOXDIAL_WHATSAPP_SWEEP_S": "0.5",
            },
            serving=False,
        )
        models = await asyncio.to_thread(Models.instant, False)
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)
        services = campaign_services(
            settings,
            store=store,
            models=models,
            session=session,
            llm_base_url=llm.base_url,
        )
        assert services.webhooks is not None and services.whatsapp is not None
        stack.push_async_callback(services.webhooks.close)
        runner = web.AppRunner(create_app(services), access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        standin.webhook_url = f"http://{host}:{port}/whatsapp/webhook"
        await _campaign(store, numbers)

        # The templates go out; the leads talk; the agent answers.
        account = WhatsAppAccount(token, base_url=standin.base_url, session=session)
        carrier = TwilioCarrier(
            "AC" + "0" * 32, "unused", base_url="http://127.0.0.1:9"
        )
        stack.push_async_callback(carrier.close)
        dialer = Dialer(
            store,
            carrier,
            DialerConfig(public_url="http://127.0.0.1:9", tick_s=0.05,
                         jurisdictions=ANYTIME),
            whatsapp=account,
        )  # fmt: skip
        stop = asyncio.Event()
        dialing = asyncio.create_task(dialer.run(stop))
        cpu0, t0 = time.process_time(), time.monotonic()
        report.turns_expected = profile.leads * profile.turns
        deadline = time.monotonic() + profile.limit_s
        while time.monotonic() < deadline:
            texts = sum(m.type == "text" for m in standin.sent)
            if texts >= report.turns_expected:
                break
            await asyncio.sleep(0.1)
        busy_s = time.monotonic() - t0
        cpu_s = time.process_time() - cpu0
        await standin.wait_idle()
        await services.whatsapp.idle()
        stop.set()
        await dialing

        found = _latencies(standin, numbers)
        report.samples = found["samples"]
        report.answered = len(report.samples)
        report.unanswered = found["unanswered"]
        report.answered_twice = found["twice"]
        report.violations = len(standin.violations())
        report.reply_p50_s = _quantile(report.samples, 0.5)
        report.reply_p95_s = _quantile(report.samples, 0.95)
        report.answers_per_s = report.answered / busy_s if busy_s else None
        if report.answered:
            report.cpu_ms_per_answer = cpu_s / report.answered * 1000

        # The baseline: the model alone, as many requests, as many at once.
        base = await _baseline(llm.base_url, report.turns_expected, profile.leads)
        report.baseline_p50_s = _quantile(base, 0.5)
        report.baseline_p95_s = _quantile(base, 0.95)
    report.wall_s = time.monotonic() - started
    return report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}"


def format_report(report: WhatsAppLoad) -> str:
    p = report.profile
    return "\n".join(
        [
            f"## WhatsApp: {p.leads} conversations at once, {p.turns} turns each",
            "",
            f"The model answers after {p.model_delay_s * 1000:.0f} ms; the "
            "baseline is that model asked directly, as often and as many at once.",
            "",
            "| figure | voxdial | model alone | ratio |",
            "|---|---|---|---|",
            f"| answer p50 (ms) | {_ms(report.reply_p50_s)} | "
            f"{_ms(report.baseline_p50_s)} | "
            f"{_ratio(report.reply_p50_s, report.baseline_p50_s)} |",
            f"| answer p95 (ms) | {_ms(report.reply_p95_s)} | "
            f"{_ms(report.baseline_p95_s)} | "
            f"{_ratio(report.reply_p95_s, report.baseline_p95_s)} |",
            "",
            f"Turns answered {report.answered} of {report.turns_expected} "
            f"(unanswered {report.unanswered}, answered twice "
            f"{report.answered_twice}); free text outside a service window: "
            f"{report.violations}; "
            f"{report.answers_per_s or 0:.1f} answers/s; this process's CPU "
            f"(server, dialer and stand-ins) {report.cpu_ms_per_answer or 0:.1f} "
            "ms per answer.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.whatsapp_load")
    parser.add_argument("--leads", type=int, default=20)
    parser.add_argument("--turns", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--model-delay-s", type=float, default=0.3)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    profile = WhatsAppProfile(
        leads=args.leads, turns=args.turns, model_delay_s=args.model_delay_s
    )

    async def run() -> WhatsAppLoad:
        with tempfile.TemporaryDirectory(prefix="voxdial-wa-") as work:
            return await run_whatsapp_load(profile, Path(work))

    report = asyncio.run(run())
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=1))


if __name__ == "__main__":
    main()
