"""Shared fixtures: the real models (loaded once), a real Redis, a real server.

`voxdial` runs here exactly as in production: a real aiohttp server on a real
port, the real models, the real LLM client talking to the scripted stand-in
over HTTP, the real Twilio REST client talking to the Twilio stand-in (or the
carrier stand-in), a private `redis-server` with append-only persistence, and
a real websocket client (the caller simulator) speaking Twilio's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import redis
from aiohttp import web

from campaign_store.redis_server import EmbeddedRedis, embedded_redis
from campaign_store.sink import StoreCallSink
from campaign_store.store import Store
from dialer.attempts import Attempts
from dialer.dialer import Dialer, DialerConfig
from dialer.twilio_carrier import TwilioCarrier
from dialer.whatsapp import WhatsAppAccount
from dialer.window import Jurisdictions
from pipelines.llm import ChatClient, LLMConfig
from pipelines.llm_standin import Script, StandinServer
from pipelines.record import CallSink, FileCallSink
from voice.calls import CallDirectory
from voice.logs import route_loguru
from voice.metrics import Metrics
from voice.server import Services, call_config, create_app, whatsapp_service
from voice.settings import Settings
from voice.twilio_rest import TwilioRest
from voice.twilio_standin import TwilioStandin
from voice.webhooks import WebhookSender

# pipecat logs through loguru at DEBUG by default: route it as `serve` does.
route_loguru()

CALLER_PHRASES = {
    "appointment": "I would like to book an appointment for next Tuesday.",
    "story": "Can you tell me about your opening hours please?",
    "goodbye": "No thank you, that is all. Goodbye.",
    "fail": "Please explain the cancellation policy.",
    "interrupt": "Excuse me I have a question about the price.",
}

LONG_REPLY = (
    "Our clinic opens at eight in the morning on weekdays and closes at six. "
    "On Saturdays we open at nine and close at one in the afternoon. "
    "We are closed on Sundays and on public holidays, but the phone line stays "
    "open for urgent questions. Parking is free for patients behind the building."
)

TEST_SCRIPT = {
    "rules": [
        {"pattern": "appointment", "reply": "Sure. Which day would suit you best?"},
        {"pattern": "hours|opening|tell me about", "reply": LONG_REPLY},
        {
            "pattern": "price|question",
            "reply": "Of course. What would you like to know?",
        },
        {
            "pattern": "goodbye|that is all",
            "reply": "Thank you. Goodbye!",
            "tool_calls": [
                {"name": "end_call", "arguments": {"outcome": "not_interested"}}
            ],
        },
        {"pattern": "cancellation|policy", "fail": "http_500"},
        {"pattern": "keypad", "reply": "Thanks, I got your digits."},
    ],
    "default_reply": "I see.",
}


@pytest.fixture(scope="session")
def models() -> Any:
    """The real local models, loaded once for the whole test run."""
    from pipelines.models import shared_models

    return shared_models(
        stt_beam_size=1,
        stt_threads=2,
        stt_workers=1,
        tts_workers=1,
        tts_speed=1.0,
        smart_turn=True,
    )


@pytest.fixture(scope="session")
def phrases(models: Any) -> dict[str, np.ndarray]:
    """Caller speech: each phrase synthesized once, as 8 kHz PCM."""
    return {k: models.tts.synthesize_sync(v, 8000) for k, v in CALLER_PHRASES.items()}


# Tests that need the law's calling hours ask for them; the rest must not
# depend on the hour at which the suite runs.
ANYTIME = Jurisdictions(rules={}, fallback=None)


async def until_true(check: Any, limit_s: float, what: str = "a condition") -> None:
    """Poll the coroutine function `check` until it answers True."""
    deadline = time.monotonic() + limit_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def dialing(
    store: Store,
    settings: Settings,
    carrier_url: str,
    server_url: str,
    lease_s: float,
    *,
    whatsapp: bool = False,
) -> AsyncIterator[None]:
    """An in-process dialer on `store`, dialing through the carrier at `carrier_url`.

    `whatsapp`: it also sends templates, through `settings.whatsapp_api_base`.
    """
    carrier = TwilioCarrier(
        settings.twilio_account_sid, settings.twilio_auth_token, base_url=carrier_url
    )
    account = (
        WhatsAppAccount(
            settings.whatsapp_access_token,
            base_url=settings.whatsapp_api_base,
            backoff_s=0.05,
        )
        if whatsapp
        else None
    )
    dialer = Dialer(
        store,
        carrier,
        DialerConfig(
            public_url=server_url,
            lease_s=lease_s,
            tick_s=0.1,
            calls_per_second=10,
            jurisdictions=ANYTIME,
            conversation_grace_s=5.0,
        ),
        whatsapp=account,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(dialer.run(stop))
    try:
        yield
    finally:
        stop.set()
        await running
        await carrier.close()
        if account is not None:
            await account.close()


@dataclass
class Receiver:
    """A campaign's results endpoint: its URL, and every (headers, body) it got."""

    url: str
    received: list[tuple[dict[str, str], bytes]]


@pytest.fixture
async def results_hook() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback that records what it is sent."""
    receiver = Receiver("", [])

    async def hook(request: web.Request) -> web.Response:
        receiver.received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.url = "http://{}:{}/hook".format(*runner.addresses[0][:2])
        yield receiver
    finally:
        await runner.cleanup()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One private redis-server (append-only, noeviction) for the test run."""
    with embedded_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """The private server's URL, emptied for each test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    """A campaign store on an empty database."""
    connected = await Store.connect(redis_url)
    try:
        yield connected
    finally:
        await connected.close()


@dataclass
class Harness:
    services: Services
    llm: StandinServer
    twilio: TwilioStandin
    url: str
    ws_url: str
    sink: FileCallSink

    async def wait_record(self, call_id: str, limit_s: float = 5.0) -> dict[str, Any]:
        """The stored record of a call, once its stream has ended."""
        deadline = time.monotonic() + limit_s
        path = self.sink.directory / f"{call_id}.json"
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"no record for {call_id}")
            await asyncio.sleep(0.05)
        return self.sink.load(call_id)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(
        {
            "VOXDIAL_VALIDATE_SIGNATURES": "false",
            "VOXDIAL_DATA_DIR": str(tmp_path),
            "VOXDIAL_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "VOXDIAL_TWILIO_AUTH_TOKEN": "token",
            "VOXDIAL_MEDIA_TIMEOUT_S": "2",
            "VOXDIAL_AGENT_GREETING": "Hello {{name}}, this is {{company}}.",
        }
    )


@pytest.fixture
async def harness(models: Any, settings: Settings) -> AsyncIterator[Harness]:
    async with run_harness(models, settings) as h:
        yield h


class run_harness:  # lower case: used like a function, `async with run_harness(...)`
    """Start the stand-ins and the server with `settings`; stop them all after."""

    def __init__(
        self,
        models: Any,
        settings: Settings,
        script: dict[str, Any] | None = None,
        *,
        store: Store | None = None,
        rest_base: str | None = None,
    ):
        self.models = models
        self.settings = settings
        self.script = script or TEST_SCRIPT
        # With a store, campaign calls are stored and settle the dialer's
        # attempts; `rest_base` points the REST client at another stand-in
        # (the carrier) instead of the plain Twilio one.
        self.store = store
        self.rest_base = rest_base

    async def __aenter__(self) -> Harness:
        self.llm = StandinServer(Script.from_dict(self.script))
        await self.llm.start()
        self.twilio = TwilioStandin(
            self.settings.twilio_account_sid, self.settings.twilio_auth_token
        )
        await self.twilio.start()
        rest_base = self.rest_base or self.twilio.base_url
        settings = replace(self.settings, twilio_api_base=rest_base)
        self.session = aiohttp.ClientSession()
        sink = FileCallSink(settings.data_dir / "calls")
        attempts = None
        call_sink: CallSink = sink
        if self.store is not None:
            attempts = Attempts(self.store, jurisdictions=ANYTIME)
            call_sink = StoreCallSink(
                self.store, sink, after_save=attempts.maybe_settle
            )
        services = Services(
            settings=settings,
            models=self.models,
            llm=ChatClient(
                LLMConfig(
                    base_url=self.llm.base_url,
                    api_key="",
                    model="standin",
                    timeout_s=5.0,
                    temperature=0.0,
                    max_tokens=200,
                ),
                session=self.session,
            ),
            rest=TwilioRest(
                settings.twilio_account_sid,
                settings.twilio_auth_token,
                base_url=rest_base,
                session=self.session,
            ),
            sink=call_sink,
            metrics=Metrics(),
            directory=CallDirectory(None if self.store is None else self.store.redis),
            call_config=call_config(settings),
            store=self.store,
            attempts=attempts,
            webhooks=WebhookSender(
                self.session,
                redis=None if self.store is None else self.store.redis,
                first_delay_s=0.05,
            ),
        )
        if attempts is not None:
            services.whatsapp = whatsapp_service(
                settings,
                attempts=attempts,
                llm=services.llm,
                session=self.session,
                webhooks=services.webhooks,
                metrics=services.metrics,
            )
        self.services = services
        self.runner = web.AppRunner(create_app(services))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        return Harness(
            services=services,
            llm=self.llm,
            twilio=self.twilio,
            url=f"http://{host}:{port}",
            ws_url=f"ws://{host}:{port}/twilio/stream",
            sink=sink,
        )

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        if self.services.webhooks is not None:
            await self.services.webhooks.close()
        await self.session.close()
        await self.llm.stop()
        await self.twilio.stop()
