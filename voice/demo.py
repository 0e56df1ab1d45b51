"""`voxdial demo`: the whole product on this machine, offline, in one command.

What runs, every part started here and stopped on the way out (Ctrl-C too):

- a private `redis-server` with append-only persistence, in the run's folder
  (`DATA_DIR/<date-time>/`, so that each run starts from an empty store);
- the media server with the admin API, in this process (the models load once);
- `--dialers` dialer processes (`voxdial dialer`), logging to `logs/`;
- the local carrier stand-in: Twilio's REST API, status callbacks and media
  streams; its callees speak with the Piper voice, as a phone line carries it;
- the Google Calendar stand-in, where booked visits land;
- the WhatsApp Cloud API stand-in, for the same campaign run over WhatsApp
  beside the voice one (`voice.demo_whatsapp`);
- the scripted LLM stand-in: the agent's answers come from a script
  (`voice.demo_scenarios`), unless `VOXDIAL_LLM_BASE_URL` (with
  `VOXDIAL_LLM_API_KEY`, `VOXDIAL_LLM_MODEL`) names a real OpenAI-compatible
  model, which then plays the same campaign.

The campaign (a clinic confirming appointments) is created through the admin
HTTP API, exactly as an operator would: agent, fields, schedule, follow-ups,
calendar, a CSV lead list, review, launch. Progress is logged every couple of
seconds; the run ends when no lead has anything left to do soon (retries due
beyond that are shown as scheduled), and a summary per lead, read back
through the API, closes it. With `--keep`, everything stays up after the
summary until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import logging
import os
import secrets
import signal
import sys
import textwrap
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from campaign_store.models import (
    CallRecordModel,
    HourRange,
    Lead,
    LeadStatus,
    Pacing,
    Schedule,
)
from campaign_store.redis_server import embedded_redis, find_redis_server
from campaign_store.store import Store
from dialer.window import Jurisdictions, Window, parse_jurisdictions, window_for
from pipelines.models import Models
from voice import demo_scenarios as scenes
from voice.demo_whatsapp import ChatResult, WhatsAppDemo, plan_chat_leads
from voice.demo_whatsapp import render as render_whatsapp
from voice.settings import Settings

__all__ = ["DemoError", "DemoOptions", "DemoResult", "LeadResult", "main", "run_demo"]

log = logging.getLogger("voxdial.demo")

TENANT = "demo"
CALLER_ID = "+14155550199"
CALENDAR_ID = "appointments@maple-street.example"
OAUTH = {"client_id": "demo-client", "client_secret": "demo-secret"}
REFRESH_TOKEN = "demo-refresh-token"
FAST_TIME_SCALE = 10.0  # the carrier's clock in --fast: rings last a tenth
TALK_LIMIT_S = 60.0  # real seconds a callee stays on the line at most
PROGRESS_EVERY_S = 2.0
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
IN_FLIGHT = (LeadStatus.DIALING, LeadStatus.IN_CALL)
FINAL = (
    LeadStatus.QUALIFIED,
    LeadStatus.NOT_INTERESTED,
    LeadStatus.DO_NOT_CALL,
    LeadStatus.COMPLETED,
)
SCRIPTED_NOTE = (
    "the agent's answers are SCRIPTED (the local LLM stand-in), not a model's; "
    "set VOXDIAL_LLM_BASE_URL (+ VOXDIAL_LLM_API_KEY, VOXDIAL_LLM_MODEL) to run "
    "this same demo on a real OpenAI-compatible model"
)


class DemoError(Exception):
    """The demo could not set itself up (an API answer, a missing binary)."""


@dataclass(frozen=True)
class DemoOptions:
    leads: int = 24
    concurrency: int = 4
    fast: bool = False
    keep: bool = False
    dialers: int = 1
    data_dir: Path = Path("data/demo")
    time_limit_s: float = 300.0  # of calling, after set-up; then the summary
    # Retries due sooner than this are waited for; later ones show as scheduled.
    retry_horizon_s: float = 90.0


@dataclass
class LeadResult:
    """One lead as the admin API shows it after the run, and its scenario."""

    planned: scenes.PlannedLead
    lead: Lead
    calls: list[CallRecordModel]  # newest first
    next_local: str  # the next attempt, local to the lead, or ""


@dataclass
class DemoResult:
    leads: list[LeadResult]
    run_dir: Path
    api_url: str
    scripted: bool
    calendar_events: list[dict[str, Any]] = field(default_factory=list)
    do_not_call: list[str] = field(default_factory=list)
    ended: str = ""  # "done", "time limit" or "stopped"
    whatsapp: list[ChatResult] = field(default_factory=list)
    whatsapp_violations: int = 0


# The admin API, as an operator's client uses it.


class _Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, *, csv_text: str = ""
    ) -> Any:
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if csv_text:
            kwargs = {"data": csv_text, "headers": {"Content-Type": "text/csv"}}
        async with self.session.request(method, self.base + path, **kwargs) as reply:
            data = await reply.json() if reply.content_length != 0 else None
            if reply.status >= 300:
                raise DemoError(f"{method} {path}: HTTP {reply.status}: {data}")
            return data

    async def leads(self, campaign_id: str) -> list[Lead]:
        found: list[Lead] = []
        cursor = ""
        while True:
            query = f"?limit=200&cursor={cursor}" if cursor else "?limit=200"
            page = await self.call("GET", f"/campaigns/{campaign_id}/leads{query}")
            found += [Lead.model_validate(item) for item in page["items"]]
            cursor = page["next_cursor"] or ""
            if not cursor:
                return found


def _schedule(options: DemoOptions) -> Schedule:
    # Every day, 08:00-21:00 in each lead's own zone (the law's US hours too):
    # with zones around the globe, some leads are callable at any hour.
    return Schedule(
        days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
        hours=[HourRange(start="08:00", end="21:00")],
        timezone="America/New_York",
        timezone_policy="lead",
        pacing=Pacing(calls_per_minute=30, max_concurrent=options.concurrency),
    )


def _follow_ups(fast: bool) -> list[dict[str, Any]]:
    minutes = {"no_answer": 120, "busy": 30, "voicemail": 240, "failed": 60}
    if fast:
        minutes = dict.fromkeys(minutes, 1)
    rules = [
        {"outcome": name, "delay_minutes": delay, "max_attempts": 2}
        for name, delay in minutes.items()
    ]
    return [*rules, {"outcome": "callback", "delay_minutes": 60, "max_attempts": 3}]


def _csv(plan: Sequence[scenes.PlannedLead]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, scenes.CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(lead.row() for lead in plan)
    return out.getvalue()


@dataclass(frozen=True)
class _Created:
    campaign_id: str
    agent_id: str
    parts: dict[str, Any]  # fields, schedule, follow-ups, calendar: as sent


async def _create_campaign(
    api: _Api, plan: Sequence[scenes.PlannedLead], options: DemoOptions, token_url: str
) -> _Created:
    """Agent, campaign, every part of it, the lead list; then review and launch."""
    agent = await api.call(
        "POST",
        "/agents",
        {
            "name": f"{scenes.CLINIC} assistant",
            "system_prompt": (
                "You are the friendly scheduling assistant of {{clinic}}, calling "
                "{{first_name}} to confirm the appointment on {{appointment_time}}. "
                "Answer in one or two short sentences. If they can come, book it "
                "with book_meeting at the lead's appointment_start, then end the "
                "call as qualified. If they want to talk another time, use "
                "schedule_callback, then end the call as callback. If they are not "
                "interested, end the call as not_interested. If they ask not to "
                "be called again, use opt_out. On a voicemail, leave a short "
                "message and end the call as voicemail."
            ),
            "greeting": (
                "Hello {{first_name}}, this is {{clinic}} calling about your "
                "appointment on {{appointment_time}}. Can you make it?"
            ),
            "tools": ["end_call", "schedule_callback", "book_meeting", "opt_out"],
        },
    )
    fields = [
        {"name": "clinic", "required": True},
        {"name": "appointment_time", "required": True, "description": "As said."},
        {
            "name": "appointment_start",
            "required": True,
            "description": "The visit's local start, YYYY-MM-DDTHH:MM.",
        },
        {"name": "email", "type": "email"},
        {
            "name": "preferred_day",
            "extract": True,
            "description": "The weekday the patient prefers for visits.",
        },
        {
            "name": "attending",
            "type": "boolean",
            "extract": True,
            "description": "Whether the patient will come to the appointment.",
        },
    ]
    campaign = await api.call(
        "POST",
        "/campaigns",
        {
            "name": "Appointment confirmations",
            "description": f"{scenes.CLINIC}: confirm tomorrow's visits.",
            "agent_id": agent["id"],
            "fields": fields,
        },
    )
    path = f"/campaigns/{campaign['id']}"
    credentials = {**OAUTH, "refresh_token": REFRESH_TOKEN, "token_uri": token_url}
    parts = {
        "fields": fields,
        "schedule": _schedule(options).model_dump(mode="json"),
        "follow_ups": _follow_ups(options.fast),
        "calendar": {
            "calendar_id": CALENDAR_ID,
            "credentials": json.dumps(credentials),
            "meeting_title": "Check-up",
        },
    }
    await api.call("PUT", path + "/channel", {"kind": "phone", "caller_id": CALLER_ID})
    await api.call("PUT", path + "/schedule", parts["schedule"])
    await api.call("PUT", path + "/follow-ups", {"follow_ups": parts["follow_ups"]})
    await api.call("PUT", path + "/calendar", parts["calendar"])
    report = await api.call("POST", path + "/leads/import", csv_text=_csv(plan))
    log.info("imported %d leads, %d rejected", report["accepted"], report["rejected"])
    if report["rejected"]:
        raise DemoError(f"the lead list was not accepted whole: {report}")
    review = await api.call("GET", path + "/review")
    if not review["ready"]:
        raise DemoError(f"the campaign is not ready: {review['problems']}")
    await api.call("POST", path + "/launch")
    log.info("campaign %s launched through the admin API", campaign["id"])
    return _Created(str(campaign["id"]), str(agent["id"]), parts)


# What the callees do.


def _carrier_script(
    plan: Sequence[scenes.PlannedLead], speech: dict[str, Any], time_scale: float
) -> Any:
    from dialer.carrier_standin import Scenario

    by_phone = {lead.phone: lead.scenario for lead in plan}

    def script(to: str, attempt_no: int) -> Scenario:
        scene = by_phone.get(to)
        if scene is None:
            return Scenario("no-answer")
        return Scenario(
            answer=scene.answer,
            ring_s=2.0 if scene.answer == "busy" else 3.0,
            # The carrier scales talk time too, but speech runs in real time.
            talk_s=TALK_LIMIT_S * time_scale,
            lines=tuple(speech[text] for text in scene.says),
            barge_in_line=speech[scene.over_agent] if scene.over_agent else None,
        )

    return script


async def _speech(models: Models) -> dict[str, Any]:
    """Every callee line, synthesized once as 8 kHz PCM."""
    texts = {t for s in scenes.SCENARIOS for t in (*s.says, s.over_agent) if t}
    return {
        text: await asyncio.to_thread(models.tts.synthesize_sync, text, 8000)
        for text in sorted(texts)
    }


# The media server: what `voxdial serve` runs, with the models passed in.


@contextlib.asynccontextmanager
async def _media_server(
    settings: Settings, store: Store, models: Models
) -> AsyncIterator[tuple[str, Any]]:
    """`voice.cli.running_server`'s pieces, except that the caller owns the models."""
    from voice.server import campaign_services, create_app

    async with aiohttp.ClientSession() as session:
        services = campaign_services(
            settings,
            store=store,
            models=models,
            session=session,
            llm_base_url=settings.llm_base_url,
        )
        webhooks = services.webhooks
        assert webhooks is not None
        runner = web.AppRunner(
            create_app(services), handle_signals=False, access_log=None
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.host, settings.port).start()
            host, port = runner.addresses[0][:2]
            yield f"http://{host}:{port}", services
        finally:
            await runner.cleanup()
            await webhooks.close()


# Dialer processes.

_DIALER = "import sys; from voice.cli import main; main(['dialer'])"


def _log_file(log_dir: Path, number: int) -> IO[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    return (log_dir / f"dialer-{number}.log").open("ab")


async def _start_dialers(
    count: int, env: dict[str, str], log_dir: Path, stack: contextlib.AsyncExitStack
) -> list[asyncio.subprocess.Process]:
    processes = []
    for number in range(1, count + 1):
        out = stack.enter_context(_log_file(log_dir, number))
        # A session of its own: Ctrl-C reaches the demo, which stops it in turn.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _DIALER,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        stack.push_async_callback(_stop_process, process)
        processes.append(process)
        log.info("dialer %d started (pid %d), log in %s", number, process.pid, out.name)
    return processes


async def _stop_process(
    process: asyncio.subprocess.Process, grace_s: float = 15.0
) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            # Its calls end first; a dialer stopped harder loses nothing.
            await asyncio.wait_for(process.wait(), grace_s)
        except TimeoutError:
            process.kill()
            await process.wait()


# Watching the run.


def _state(lead: Lead, window: Window, now: float, horizon_s: float) -> str:
    """Where a lead stands, in the progress line's words."""
    if lead.status in IN_FLIGHT:
        return "dialed"
    if lead.status in FINAL:
        return "done"
    if lead.status in (LeadStatus.NEW, LeadStatus.QUEUED):
        return "queued" if window.is_open(now) else "waiting for their window"
    if lead.next_attempt_at is None:
        return "done"
    if lead.next_attempt_at <= now + horizon_s:
        return "retry soon"
    return "scheduled"


PENDING = frozenset({"dialed", "queued", "retry soon"})
ORDER = ("ringing", "in a call", "queued", "retry soon", "done", "scheduled")


async def _watch(
    api: _Api,
    campaign_id: str,
    plan: dict[str, scenes.PlannedLead],
    windows: dict[str, Window],
    services: Any,
    options: DemoOptions,
    stop: asyncio.Event,
) -> str:
    """Log progress until nothing is left to do soon; how the run ended."""
    started = time.monotonic()
    shown: dict[str, str] = {}
    last_line = 0.0
    quiet = 0
    while True:
        leads = await api.leads(campaign_id)
        now = time.time()
        states = {
            lead.id: _state(lead, windows[lead.phone], now, options.retry_horizon_s)
            for lead in leads
        }
        for lead in leads:
            status = lead.status.value
            if shown.get(lead.id, "new") != status:
                scene = plan[lead.phone].scenario.name
                log.info("%-22s %-14s -> %s", lead.name, f"({scene})", status)
            shown[lead.id] = status
        elapsed = time.monotonic() - started
        talking = int(services.metrics.active_calls.value())
        if elapsed - last_line >= PROGRESS_EVERY_S:
            last_line = elapsed
            counts = Counter(states.values())
            # Dialed leads are ringing until their media stream is up.
            dialed = counts.pop("dialed", 0)
            counts["in a call"] = min(talking, dialed)
            counts["ringing"] = dialed - counts["in a call"]
            waiting = counts.pop("waiting for their window", 0)
            parts = [f"{counts[s]} {s}" for s in ORDER if counts.get(s)]
            if waiting:
                parts.append(f"{waiting} waiting for their calling window")
            log.info("[%3.0f s] %s", elapsed, ", ".join(parts))
        busy = talking > 0
        quiet = 0 if busy or PENDING & set(states.values()) else quiet + 1
        if quiet >= 2:
            return "done"
        if elapsed > options.time_limit_s:
            log.warning("time limit of %.0f s reached", options.time_limit_s)
            return "time limit"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
            return "stopped"


def _next_local(lead: Lead, window: Window, now: float) -> str:
    zone = ZoneInfo(lead.timezone)
    if lead.next_attempt_at is not None and lead.status not in FINAL:
        return datetime.fromtimestamp(lead.next_attempt_at, zone).strftime("%a %H:%M")
    if lead.status in (LeadStatus.NEW, LeadStatus.QUEUED) and not window.is_open(now):
        opens = window.next_open(now, horizon_days=8)
        if opens is not None:
            return (
                datetime.fromtimestamp(opens, zone).strftime("%a %H:%M") + " (window)"
            )
    return ""


async def _results(
    api: _Api,
    campaign_id: str,
    plan: dict[str, scenes.PlannedLead],
    windows: dict[str, Window],
) -> list[LeadResult]:
    results = []
    now = time.time()
    for lead in await api.leads(campaign_id):
        detail = await api.call("GET", f"/campaigns/{campaign_id}/leads/{lead.id}")
        calls = [CallRecordModel.model_validate(c) for c in detail["calls"]]
        current = Lead.model_validate(detail["lead"])
        window = windows[lead.phone]
        results.append(
            LeadResult(
                plan[lead.phone], current, calls, _next_local(current, window, now)
            )
        )
    order = {phone: i for i, phone in enumerate(plan)}
    return sorted(results, key=lambda r: order[r.lead.phone])


# The summary.


def first_turn_latency(call: CallRecordModel) -> float | None:
    """Voice to voice of the call's first answered turn, from its record."""
    for turn in call.transcript:
        if turn.speaker == "agent" and turn.latency is not None:
            if turn.latency.first_audio_s is not None:
                return turn.latency.first_audio_s
    return None


def _excerpt(call: CallRecordModel) -> str:
    parts = []
    for turn in call.transcript[:4]:
        cut = " [cut off]" if turn.interrupted else ""
        text = turn.text if len(turn.text) <= 60 else turn.text[:57] + "..."
        parts.append(f'{turn.speaker}: "{text}"{cut}')
    return " / ".join(parts)


def render_summary(result: DemoResult) -> str:
    """The table per lead, with a few detail lines under each."""
    head = (
        f"{'lead':<20} {'zone':<20} {'scenario':<15} {'status':<15} "
        f"{'outcome':<15} {'tries':>5}  {'next attempt':<18} {'1st turn':>8}"
    )
    lines = ["", "Summary (read back through the admin API)", head, "-" * len(head)]
    for row in result.leads:
        lead, call = row.lead, (row.calls[0] if row.calls else None)
        latency = first_turn_latency(call) if call is not None else None
        lines.append(
            f"{lead.name[:20]:<20} {lead.timezone[:20]:<20} "
            f"{row.planned.scenario.name:<15} {lead.status.value:<15} "
            f"{(lead.last_outcome or '-'):<15} {lead.attempts:>5}  "
            f"{(row.next_local or '-'):<18} "
            f"{'-' if latency is None else f'{latency:.2f} s':>8}"
        )
        if call is None:
            continue
        if call.extracted:
            values = ", ".join(f"{k}={v}" for k, v in sorted(call.extracted.items()))
            lines.append(f"    extracted: {values}")
        if call.booking:
            booking = call.booking
            lines.append(f"    booked: {booking['title']} at {booking['start']}")
        if call.barge_ins:
            lines.append(f"    barge-ins: {call.barge_ins}")
        lines += textwrap.wrap(
            _excerpt(call), 100, initial_indent="    said: ", subsequent_indent=" " * 10
        )
        lines.append(f"    recording: {call.recording_path or '-'}")
    if result.whatsapp:
        lines.append(render_whatsapp(result.whatsapp, result.whatsapp_violations))
    lines.append("")
    events = len(result.calendar_events)
    lines.append(
        f"{len(result.leads)} leads; {events} visit(s) on the calendar stand-in; "
        f"{len(result.do_not_call)} number(s) on the do-not-call list."
    )
    if result.scripted:
        lines.append(f"Note: {SCRIPTED_NOTE}.")
    lines.append(f"Everything this run wrote is in {result.run_dir}.")
    return "\n".join(lines)


# The run.


def _run_dir(base: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run = base / stamp
    suffix = 1
    while run.exists():
        suffix += 1
        run = base / f"{stamp}-{suffix}"
    run.mkdir(parents=True)
    return run


def _dialer_env(
    settings: Settings, carrier_url: str, server_url: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXDIAL_")}
    env.update(
        {
            "VOXDIAL_DATA_DIR": str(settings.data_dir),
            "VOXDIAL_REDIS_URL": settings.redis_url,
            "VOXDIAL_TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
            "VOXDIAL_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
            "VOXDIAL_TWILIO_API_BASE": carrier_url,
            "VOXDIAL_PUBLIC_URL": server_url,
            "VOXDIAL_CALLING_HOURS": settings.calling_hours,
            "VOXDIAL_DIALER_LEASE_S": "10",
            "VOXDIAL_DIALER_CALLS_PER_SECOND": "2",
            "VOXDIAL_LOG_LEVEL": "INFO",
        }
    )
    return env


async def run_demo(
    options: DemoOptions,
    settings: Settings,
    *,
    models: Models | None = None,
    stop: asyncio.Event | None = None,
    out: IO[str] | None = None,
) -> DemoResult:
    """Run the demo; `models` already loaded are used (and left loaded)."""
    from dialer.carrier_standin import CarrierStandin
    from pipelines.llm_standin import StandinServer
    from pipelines.tools.calendar_standin import CalendarStandin

    stop = stop or asyncio.Event()
    run_dir = _run_dir(options.data_dir)
    async with contextlib.AsyncExitStack() as stack:
        # Every component's log lines, in full, next to what the run wrote.
        handler = logging.FileHandler(run_dir / "demo.log")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        stack.callback(handler.close)
        stack.callback(logging.getLogger().removeHandler, handler)
        log.info("this run's folder: %s (full log in demo.log)", run_dir)

        # The store: a private Redis for this run.
        log.info("redis-server found at %s", find_redis_server())
        redis = stack.enter_context(embedded_redis(run_dir / "redis"))
        log.info("private Redis on %s, append-only, in %s", redis.url, redis.directory)
        store = await Store.connect(redis.url)
        stack.push_async_callback(store.close)

        # The models, and the callees' voices.
        if models is None:
            from pipelines.models import shared_models

            log.info("loading the models (Silero VAD, Smart Turn, Whisper, Piper)")
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
        speech = await _speech(models)

        # The stand-ins: calendar, LLM (unless a real one is set), carrier.
        calendar = CalendarStandin()
        await calendar.start()
        stack.push_async_callback(calendar.stop)
        calendar.add_calendar(CALENDAR_ID)
        calendar.add_refresh_token(
            OAUTH["client_id"], OAUTH["client_secret"], REFRESH_TOKEN
        )
        scripted = not settings.llm_base_url
        if scripted:
            llm = StandinServer(scenes.ClinicScript.from_dict(scenes.CLINIC_SCRIPT))
            await llm.start()
            stack.push_async_callback(llm.stop)
            settings = replace(settings, llm_base_url=llm.base_url)
            log.warning("%s", SCRIPTED_NOTE)
        else:
            log.info(
                "the agent's model: %s at %s", settings.llm_model, settings.llm_base_url
            )
        settings = replace(
            settings,
            data_dir=run_dir,
            redis_url=redis.url,
            host="127.0.0.1",
            port=0,
            twilio_account_sid="AC" + secrets.token_hex(16),
            twilio_auth_token=secrets.token_hex(16),
            validate_signatures=True,
            google_calendar_api_base=calendar.base_url,
            admin_api=True,
        )
        jurisdictions: Jurisdictions = parse_jurisdictions(settings.calling_hours)
        schedule = _schedule(options)
        plan = scenes.plan_leads(options.leads, time.time(), schedule, jurisdictions)
        time_scale = FAST_TIME_SCALE if options.fast else 1.0
        carrier = CarrierStandin(
            settings.twilio_account_sid,
            settings.twilio_auth_token,
            script=_carrier_script(plan, speech, time_scale),
            time_scale=time_scale,
            media=True,
        )
        await carrier.start()
        stack.push_async_callback(carrier.stop)
        settings = replace(settings, twilio_api_base=carrier.base_url)
        chat = WhatsAppDemo(plan_chat_leads(plan, time.time()), fast=options.fast)
        await chat.start()
        stack.push_async_callback(chat.stop)
        settings = chat.server_settings(settings)

        # The media server and the admin API, then the campaign through it.
        server_url, services = await stack.enter_async_context(
            _media_server(settings, store, models)
        )
        log.info("media server and admin API on %s", server_url)
        await chat.subscribe(server_url)
        _, key = await store.create_api_key(TENANT, "demo")
        session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        stack.push_async_callback(session.close)
        api = _Api(session, f"{server_url}/api/v1")
        created = await _create_campaign(api, plan, options, calendar.token_url)
        campaign_id = created.campaign_id
        chat_id = await chat.create_campaign(
            api,
            created.agent_id,
            created.parts,
            _csv([c.planned for c in chat.leads]),
        )

        # The dialers, and the calls and messages they send.
        env = {
            **_dialer_env(settings, carrier.base_url, server_url),
            **chat.dialer_env(),
        }
        dialers = contextlib.AsyncExitStack()
        await stack.enter_async_context(dialers)
        processes = await _start_dialers(
            options.dialers, env, run_dir / "logs", dialers
        )
        by_phone = {lead.phone: lead for lead in plan}
        windows = {
            lead.phone: window_for(schedule, lead.zone, lead.phone, jurisdictions)
            for lead in plan
        }
        ended = await _watch(
            api, campaign_id, by_phone, windows, services, options, stop
        )
        if ended != "stopped" and not await chat.wait(
            api,
            chat_id,
            horizon_s=options.retry_horizon_s,
            limit_s=max(options.time_limit_s / 2, 30.0),
            stop=stop,
        ):
            ended = "stopped" if stop.is_set() else "time limit"
        if ended == "stopped":
            log.warning("stopped before the end: no summary")
            await _halt(carrier, processes)
        elif not options.keep:
            await dialers.aclose()  # calls still up finish first

        # The summary, read through the API.
        result = DemoResult(
            leads=[],
            run_dir=run_dir,
            api_url=f"{server_url}/api/v1",
            scripted=scripted,
            calendar_events=[
                e for events in calendar.events.values() for e in events.values()
            ],
            ended=ended,
        )
        if ended != "stopped":
            result.leads = await _results(api, campaign_id, by_phone, windows)
            result.do_not_call = (await api.call("GET", "/dnc"))["items"]
            result.whatsapp = await chat.results(api, chat_id)
            result.whatsapp_violations = len(chat.standin.violations())
            print(render_summary(result), file=out or sys.stdout, flush=True)
        if options.keep and ended != "stopped":
            print(
                f"\nStill running (Ctrl-C to stop):\n  admin API: {result.api_url}\n"
                f"  API key:   {key}\n  campaign:  {campaign_id}\n"
                f'  try: curl -s -H "Authorization: Bearer {key}" '
                f"{result.api_url}/campaigns/{campaign_id}/overview",
                file=out or sys.stdout,
                flush=True,
            )
            await stop.wait()
            await _halt(carrier, processes)
        log.info("stopping everything")
    return result


async def _halt(carrier: Any, processes: Sequence[asyncio.subprocess.Process]) -> None:
    """Stop at once, calls and all: Ctrl-C has likely stopped Redis already.

    The terminal sends it to the whole process group, `redis-server` included,
    so nothing waits for calls to settle: the carrier hangs up every call and
    the dialers get a moment before they are killed. Their leases expire.
    """
    await carrier.stop()
    await asyncio.gather(*(_stop_process(p, 3.0) for p in processes))


def main(args: argparse.Namespace, settings: Settings) -> int:
    """`voxdial demo`: logging, signals, and the run."""
    options = DemoOptions(
        leads=args.leads,
        concurrency=args.concurrency,
        fast=args.fast,
        keep=args.keep,
        dialers=args.dialers,
        data_dir=Path(args.data_dir),
    )
    console = _quiet_console()

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        main_task = asyncio.current_task()

        def on_signal() -> None:
            # The first asks for an orderly stop; a second one cuts it short.
            if stop.is_set() and main_task is not None:
                main_task.cancel()
            stop.set()
            console.stopping = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            result = await run_demo(options, settings, stop=stop)
        except DemoError as exc:
            log.error("%s", exc)
            return 1
        except Exception:
            if not stop.is_set():
                raise
            log.warning("stopped during set-up")  # Redis went with the Ctrl-C
            return 130
        return 130 if result.ended == "stopped" else 0

    started = time.monotonic()
    try:
        code = asyncio.run(run())
    except (KeyboardInterrupt, asyncio.CancelledError):
        code = 130
    log.info("demo finished in %.0f s", time.monotonic() - started)
    return code


class _Console(logging.Filter):
    """The console shows the demo's own lines, and others' warnings until a stop.

    After Ctrl-C, the parts that lose Redis complain (it stops with the
    terminal's signal); that goes to demo.log only.
    """

    stopping = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log.name:
            return True
        return record.levelno >= logging.WARNING and not self.stopping


def _quiet_console() -> _Console:
    console = _Console()
    for handler in logging.getLogger().handlers:
        handler.addFilter(console)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return console
