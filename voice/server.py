"""The media server's HTTP surface (aiohttp).

    POST /twilio/voice    TwiML for an answered call: connect its media stream
    GET  /twilio/stream   the media stream websocket
    GET  /healthz         liveness: models loaded, calls in progress
    GET  /metrics         Prometheus text format
    GET  /whatsapp/webhook    Meta's subscription handshake
    POST /whatsapp/webhook    WhatsApp messages and statuses (`voice.whatsapp_webhook`)

Every Twilio request is checked against `X-Twilio-Signature` unless the
`validate_signatures` setting is off (development only; logged loudly).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from campaign_store.store import Store
from pipelines.call import CallConfig
from pipelines.llm import ChatClient
from pipelines.models import Models
from pipelines.record import CallSink
from pipelines.turns import TurnParams
from pipelines.vad import VadParams
from voice import admin
from voice.calls import CallDirectory, ExpectedCall
from voice.logs import mask_number
from voice.metrics import Metrics
from voice.settings import Settings
from voice.signature import SIGNATURE_HEADER, public_url, validate, validate_upgrade
from voice.stream import StreamSession
from voice.twilio_rest import TwilioRest
from voice.twiml import connect_stream_twiml
from voice.webhooks import WebhookSender

if TYPE_CHECKING:
    from dialer.attempts import Attempts
    from voice.whatsapp import WhatsAppService

log = logging.getLogger("voxdial.server")

STREAM_PATH = "/twilio/stream"
FIELD_PREFIX = "field."


@dataclass
class Services:
    """What every request handler shares: one of each per process."""

    settings: Settings
    models: Models
    llm: ChatClient
    rest: TwilioRest
    sink: CallSink
    metrics: Metrics
    directory: CallDirectory
    call_config: CallConfig
    store: Store | None = None
    attempts: Attempts | None = None  # settles the dialer's attempts
    webhooks: WebhookSender | None = None  # campaigns' call-result webhooks
    whatsapp: WhatsAppService | None = None  # WhatsApp campaigns' conversations


def campaign_services(
    settings: Settings,
    *,
    store: Store,
    models: Models,
    session: aiohttp.ClientSession,
    llm_base_url: str,
) -> Services:
    """What `voxdial serve` wires up around a campaign store (the demo too).

    The caller owns the store, the models and the HTTP session; close the
    returned `webhooks` before the session.
    """
    from campaign_store.sink import StoreCallSink
    from dialer.attempts import Attempts
    from dialer.window import parse_jurisdictions
    from pipelines.llm import LLMConfig
    from pipelines.record import FileCallSink

    attempts = Attempts(
        store, jurisdictions=parse_jurisdictions(settings.calling_hours)
    )
    llm = ChatClient(
        LLMConfig(
            base_url=llm_base_url,
            api_key=settings.llm_api_key,
            model=settings.llm_model,
            timeout_s=settings.llm_timeout_s,
            temperature=settings.llm_temperature,
            max_tokens=settings.llm_max_tokens,
        ),
        session=session,
    )
    rest = TwilioRest(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        base_url=settings.twilio_api_base,
        session=session,
    )
    webhooks = WebhookSender(session, redis=store.redis)
    metrics = Metrics()
    return Services(
        settings=settings,
        models=models,
        llm=llm,
        rest=rest,
        sink=StoreCallSink(
            store,
            FileCallSink(settings.data_dir / "calls"),
            after_save=attempts.maybe_settle,
        ),
        metrics=metrics,
        directory=CallDirectory(store.redis),
        call_config=call_config(settings),
        store=store,
        attempts=attempts,
        webhooks=webhooks,
        whatsapp=whatsapp_service(
            settings,
            attempts=attempts,
            llm=llm,
            session=session,
            webhooks=webhooks,
            metrics=metrics,
        ),
    )


def whatsapp_service(
    settings: Settings,
    *,
    attempts: Attempts,
    llm: ChatClient,
    session: aiohttp.ClientSession,
    webhooks: WebhookSender | None,
    metrics: Metrics | None = None,
) -> WhatsAppService | None:
    """The WhatsApp side of a campaign server, when an app secret is set.

    Without the secret no webhook could be checked, so none is accepted.
    """
    from dialer.whatsapp import WhatsAppAccount
    from voice.whatsapp import WhatsAppService

    if not settings.whatsapp_app_secret:
        return None
    account = WhatsAppAccount(
        settings.whatsapp_access_token,
        base_url=settings.whatsapp_api_base,
        session=session,
    )
    return WhatsAppService(
        settings=settings,
        attempts=attempts,
        account=account,
        llm=llm,
        session=session,
        webhooks=webhooks,
        metrics=metrics,
    )


def call_config(settings: Settings) -> CallConfig:
    """The per-call pipeline knobs, from the settings."""
    return CallConfig(
        vad=VadParams(
            threshold=settings.vad_threshold,
            start_ms=settings.vad_start_ms,
            stop_ms=settings.vad_stop_ms,
        ),
        turns=TurnParams(
            silence_ms=settings.turn_silence_ms,
            smart_turn=settings.smart_turn,
            smart_turn_after_ms=settings.smart_turn_silence_ms,
            barge_in_ms=settings.barge_in_min_speech_ms,
        ),
        smart_turn_threshold=settings.smart_turn_threshold,
        playout_lead_ms=settings.playout_lead_ms,
        recording_dir=settings.data_dir / "recordings"
        if settings.record_calls
        else None,
    )


SERVICES = web.AppKey("services", Services)


def create_app(services: Services) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[SERVICES] = services
    app.router.add_post("/twilio/voice", twiml_webhook)
    app.router.add_get(STREAM_PATH, media_stream)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/twilio/status", status_callback)
    from voice import whatsapp_webhook

    app.router.add_get("/whatsapp/webhook", whatsapp_webhook.verify_subscription)
    app.router.add_post("/whatsapp/webhook", whatsapp_webhook.webhook)
    webhooks = services.webhooks
    if webhooks is not None:

        async def start_webhooks(app: web.Application) -> None:
            await webhooks.start()  # a previous run's deliveries too

        app.on_startup.append(start_webhooks)
    conversations = services.whatsapp
    if conversations is not None:

        async def start_whatsapp(app: web.Application) -> None:
            await conversations.start()

        async def stop_whatsapp(app: web.Application) -> None:
            await conversations.close()

        app.on_startup.append(start_whatsapp)
        app.on_cleanup.append(stop_whatsapp)
    settings = services.settings
    if services.store is not None and settings.admin_api:
        admin.mount(
            app,
            services.store,
            max_body_bytes=settings.admin_max_body_bytes,
            max_csv_bytes=settings.admin_max_csv_bytes,
        )
    if not services.settings.validate_signatures:
        log.warning(
            "Twilio signature validation is OFF (VOXDIAL_VALIDATE_SIGNATURES=false): "
            "anyone who can reach this server can start calls. Development only."
        )
    return app


def _stream_url(settings: Settings, request: web.Request) -> str:
    """The wss:// URL of the media stream, as the TwiML gives it to Twilio."""
    base = public_url(str(request.url), request.headers, settings.public_url or None)
    parts = urlsplit(base)
    scheme = "wss" if parts.scheme in ("https", "wss") else "ws"
    return urlunsplit((scheme, parts.netloc, STREAM_PATH, "", ""))


def _requested(request: web.Request) -> str:
    """The URL as sent, escapes kept: Twilio signs `%3A`, not `:`."""
    return str(request.url.origin()) + request.raw_path


async def _signed_form(request: web.Request) -> MultiDictProxy[str]:
    """The POST form of a Twilio request, once its signature is checked."""
    services = request.app[SERVICES]
    settings = services.settings
    form = await request.post()
    if settings.validate_signatures:
        url = public_url(
            _requested(request), request.headers, settings.public_url or None
        )
        signature = request.headers.get(SIGNATURE_HEADER, "")
        params = [(k, str(v)) for k, v in form.items()]
        if not validate(settings.twilio_auth_token, url, params, signature):
            services.metrics.errors.inc(1.0, "bad_signature")
            raise web.HTTPForbidden(text="invalid X-Twilio-Signature")
    return MultiDictProxy(MultiDict((k, str(v)) for k, v in form.items()))


async def status_callback(request: web.Request) -> web.Response:
    """Twilio's call status callbacks for the dialer's attempts.

    Idempotent and order-independent: a duplicate changes nothing, and a late
    `ringing` never undoes `completed` (see `dialer.call_status`).
    """
    services = request.app[SERVICES]
    form = await _signed_form(request)
    campaign_id, _, attempt_id = request.query.get("attempt", "").partition(":")
    if not campaign_id or not attempt_id:
        raise web.HTTPBadRequest(text="the callback URL has no attempt=<campaign>:<id>")
    from dialer.call_status import parse_callback

    try:
        event = parse_callback(form)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    if services.attempts is None:
        raise web.HTTPServiceUnavailable(text="no campaign store")
    await services.attempts.on_status(
        campaign_id,
        attempt_id,
        event.status,
        call_sid=event.call_sid,
        answered_by=event.answered_by or "",
        duration_s=event.duration_s,
    )
    return web.Response(status=204)


async def twiml_webhook(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    settings = services.settings
    form = await _signed_form(request)
    call_sid = str(form.get("CallSid", ""))
    if not call_sid:
        raise web.HTTPBadRequest(text="CallSid is missing from the webhook form")
    query = request.query
    expected = ExpectedCall(
        call_id=query.get("call_id") or uuid.uuid4().hex[:16],
        call_sid=call_sid,
        lead_id=query.get("lead_id", ""),
        campaign_id=query.get("campaign_id", ""),
        fields={
            k[len(FIELD_PREFIX) :]: v
            for k, v in query.items()
            if k.startswith(FIELD_PREFIX)
        },
    )
    if form.get("Direction") == "inbound" and not expected.campaign_id:
        expected = await _inbound(services, expected, form)
    nonce = await services.directory.register(expected)
    body = connect_stream_twiml(
        _stream_url(settings, request),
        {
            "call_id": expected.call_id,
            "lead_id": expected.lead_id,
            "campaign_id": expected.campaign_id,
            "nonce": nonce,
        },
    )
    return web.Response(text=body, content_type="text/xml")


async def _inbound(
    services: Services, expected: ExpectedCall, form: MultiDictProxy[str]
) -> ExpectedCall:
    """A call to one of our numbers: the campaign's agent, and its lead if known.

    The campaign is the one calling from the dialed number (`To`); the lead
    is the campaign's lead with the caller's number (`From`). An unknown
    caller still gets the campaign's agent, without lead fields.
    """
    if services.store is None:
        return expected
    to, caller = form.get("To", ""), form.get("From", "")
    campaign = await services.store.campaign_for_number(to)
    if campaign is None:
        log.info("inbound call to %s: no campaign uses that number", mask_number(to))
        return expected
    lead = await services.store.lead_for_number(campaign.id, caller)
    log.info(
        "inbound call from %s for campaign %s (%s)",
        mask_number(caller),
        campaign.id,
        f"lead {lead.id}" if lead else "unknown caller",
    )
    return replace(
        expected,
        campaign_id=campaign.id,
        lead_id=lead.id if lead else "",
        caller=caller,
        inbound=True,
    )


async def media_stream(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    if settings.validate_signatures:
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not validate_upgrade(
            settings.twilio_auth_token, _stream_url(settings, request), signature
        ):
            services.metrics.errors.inc(1.0, "bad_signature")
            raise web.HTTPForbidden(
                text="invalid X-Twilio-Signature on the stream upgrade"
            )
    # aiohttp refuses frames above this outright (close 1009); smaller frames
    # above max_frame_bytes are dropped one by one by the protocol instead.
    ws = web.WebSocketResponse(max_msg_size=4 * settings.max_frame_bytes, autoping=True)
    await ws.prepare(request)
    await StreamSession(ws, services).run()
    return ws


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    active = services.metrics.active_calls.value()
    return web.json_response({"status": "ok", "active_calls": int(active)})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[SERVICES].metrics.render()
    response = web.Response(text=text)
    response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
    return response
