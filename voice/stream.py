"""One Twilio media stream: the websocket loop around a call's pipeline.

The loop reads frames, lets `StreamProtocol` turn them into events and hands
those to the call. It owns the stream's hygiene: bad frames are counted by
the protocol and the stream is closed with its close code past the limit; a
stream that goes quiet for `media_timeout_s` (a half-open TCP connection) is
torn down by a watchdog; however the stream ends, the call is closed, its
tasks and files released and its record stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from campaign_store.models import Campaign
from campaign_store.sink import to_model
from pipelines.call import Agent, Call
from pipelines.extract import extract_fields, outcome_for
from pipelines.record import CallRecord
from pipelines.tools.agent_tools import AgentTools, CallEffects, ToolContext
from voice.calls import ExpectedCall
from voice.errors import TwilioError
from voice.logs import CallLog
from voice.persona import Persona, persona_for, tool_context
from voice.twilio_protocol import (
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    StreamProtocol,
)

if TYPE_CHECKING:
    from voice.server import Services

log = logging.getLogger("voxdial.stream")

RESERVED_PARAMETERS = frozenset({"call_id", "lead_id", "campaign_id", "nonce"})
CLOSE_GOING_AWAY = 1001


class MetricsObserver:
    """Adapts the server's metrics to what a call reports."""

    def __init__(self, services: Services) -> None:
        self._m = services.metrics

    def frame_out(self) -> None:
        self._m.frames_out.inc()

    def late_frame(self) -> None:
        self._m.late_frames_out.inc()

    def barge_in(self, seconds: float) -> None:
        self._m.barge_ins.inc()
        self._m.barge_in_latency.observe(seconds)

    def turn_latency(self, stage: str, seconds: float) -> None:
        self._m.turn_latency.observe(seconds, stage)

    def error(self, kind: str) -> None:
        self._m.errors.inc(1.0, kind)


class StreamSession:
    """Runs one websocket from `connected` to close."""

    def __init__(self, ws: web.WebSocketResponse, services: Services) -> None:
        self.ws = ws
        self.services = services
        settings = services.settings
        self.log = CallLog(log, {"call_id": "-"})
        self.protocol = StreamProtocol(
            self.log,
            max_frame_bytes=settings.max_frame_bytes,
            max_bad_frames=settings.max_bad_frames,
        )
        self.call: Call | None = None
        self.end_reason = "stream_closed"
        self._last_message = time.monotonic()
        self._hung_up = False
        self._mcp: asyncio.Task[None] | None = None
        self._mcp_done = asyncio.Event()
        self._persona: Persona | None = None
        self._expected = ExpectedCall(call_id="", call_sid="")

    # CallIO: the only three messages we send, plus hanging up.

    async def send_media(self, payload: bytes) -> None:
        await self._send(self.protocol.media(payload))

    async def send_mark(self, name: str) -> None:
        await self._send(self.protocol.mark(name))

    async def send_clear(self) -> None:
        await self._send(self.protocol.clear())

    async def _send(self, text: str) -> None:
        if self.ws.closed:
            return
        try:
            await self.ws.send_str(text)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            self.log.debug("send on a closing stream dropped")

    async def hang_up(self) -> None:
        """End the call at Twilio, then close the stream, whatever Twilio says."""
        self._hung_up = True
        start = self.protocol.start
        rest = self.services.rest
        try:
            if rest.configured and start is not None and start.call_sid:
                if not await rest.hang_up(start.call_sid):
                    self.log.info("hang-up: the call had already ended")
        except TwilioError as exc:
            self.services.metrics.errors.inc(1.0, "twilio_rest")
            self.log.warning("%s", exc)
        finally:
            await self.ws.close(code=CLOSE_NORMAL)

    # The loop.

    async def run(self) -> None:
        metrics = self.services.metrics
        watchdog = asyncio.create_task(self._watch(), name="watchdog")
        try:
            async for message in self.ws:
                self._last_message = time.monotonic()
                if message.type is aiohttp.WSMsgType.TEXT:
                    event = self.protocol.receive_text(message.data)
                elif message.type is aiohttp.WSMsgType.BINARY:
                    self.protocol.receive_bytes(message.data)
                    event = None
                else:
                    break
                if self.protocol.should_close:
                    self.end_reason = "bad_frames"
                    await self.ws.close(
                        code=self.protocol.close_code or CLOSE_POLICY_VIOLATION
                    )
                    break
                if isinstance(event, Media):
                    metrics.frames_in.inc()
                    if self.call is not None:
                        self.call.on_media(event.payload)
                elif isinstance(event, Mark):
                    if self.call is not None:
                        self.call.on_mark(event.name)
                elif isinstance(event, Dtmf):
                    if self.call is not None:
                        self.call.on_dtmf(event.digit)
                elif isinstance(event, Start):
                    if not await self._start_call(event):
                        break
                elif isinstance(event, Stop):
                    self.end_reason = "caller_hung_up"
                    break
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
            await self._finish()

    async def _watch(self) -> None:
        """Tear the stream down when it stops sending (half-open TCP)."""
        timeout = self.services.settings.media_timeout_s
        while not self.ws.closed:
            await asyncio.sleep(min(1.0, timeout / 2))
            if time.monotonic() - self._last_message > timeout:
                self.end_reason = "media_timeout"
                self.log.warning("no media for %.1f s: closing the stream", timeout)
                await self.ws.close(code=CLOSE_GOING_AWAY)
                return

    async def _start_call(self, start: Start) -> bool:
        services = self.services
        settings = services.settings
        params = start.custom_parameters
        expected = await services.directory.claim(params.get("nonce", ""))
        if expected is None:
            if settings.validate_signatures:
                self.log.warning("stream start with an unknown or used nonce: refused")
                self.end_reason = "bad_nonce"
                await self.ws.close(
                    code=CLOSE_POLICY_VIOLATION, message=b"unknown nonce"
                )
                return False
            # Development mode: the caller's own parameters describe the call.
            fields = {k: v for k, v in params.items() if k not in RESERVED_PARAMETERS}
            expected = ExpectedCall(
                call_id=params.get("call_id") or uuid.uuid4().hex[:16],
                call_sid=start.call_sid,
                lead_id=params.get("lead_id", ""),
                campaign_id=params.get("campaign_id", ""),
                fields=fields,
            )
        self.log.extra = {"call_id": expected.call_id}
        record = CallRecord(
            call_id=expected.call_id,
            call_sid=start.call_sid,
            stream_sid=start.stream_sid,
            lead_id=expected.lead_id,
            campaign_id=expected.campaign_id,
        )
        agent = Agent(settings.agent_system_prompt, settings.agent_greeting)
        fields = dict(expected.fields)
        persona = None
        self._expected = expected
        if services.store is not None and expected.campaign_id:
            persona = await persona_for(
                services.store,
                expected.campaign_id,
                expected.lead_id,
                inbound=expected.inbound,
            )
            if persona is not None:
                agent = Agent(persona.system_prompt, persona.greeting, persona.tools)
                fields.update(persona.fields)
        self._persona = persona
        tools = self._tools_for(agent, persona, record)
        self.call = Call(
            record=record,
            models=services.models,
            llm=services.llm,
            io=self,
            agent=agent,
            fields=fields,
            config=services.call_config,
            observer=MetricsObserver(services),
            log=self.log,
            tools=tools,
        )
        services.metrics.active_calls.inc()
        self.log.info("call started (stream %s)", start.stream_sid)
        await self.call.start()
        return True

    def _tools_for(
        self, agent: Agent, persona: Persona | None, record: CallRecord
    ) -> AgentTools:
        """The call's tools, and the facts they work from."""
        services = self.services
        settings = services.settings
        campaign = persona.campaign if persona is not None else None
        lead = persona.lead if persona is not None else None
        phone = lead.phone if lead is not None else self._expected.caller
        if campaign is None or not phone or services.store is None:
            context = ToolContext(call_id=record.call_id)
        else:
            context = tool_context(
                campaign,
                lead,
                phone,
                record.call_id,
                store=services.store,
                session=services.rest.session,
                settings=settings,
            )
            if campaign.mcp_bindings:
                self._mcp = asyncio.create_task(
                    self._connect_mcp(context, campaign, persona), name="mcp"
                )
        return AgentTools(agent.tools, context, CallEffects())

    async def _connect_mcp(
        self, context: ToolContext, campaign: Campaign, persona: Persona | None
    ) -> None:
        """Hold the call's MCP sessions open, in one task, until the call ends.

        The greeting does not wait: the tools are offered from the first
        request after the sessions are up.
        """
        from pipelines.tools.mcp_tools import McpToolbox

        fields = persona.fields if persona is not None else {}
        async with McpToolbox.open(campaign.mcp_bindings, fields, log=self.log) as box:
            context.mcp = box
            try:
                await self._mcp_done.wait()
            finally:
                context.mcp = None

    async def _finish(self) -> None:
        if not self.ws.closed:
            await self.ws.close(code=CLOSE_NORMAL)
        call, self.call = self.call, None
        if call is None:
            return
        reason = "agent_hung_up" if self._hung_up else self.end_reason
        record = await call.close(reason)
        if self._mcp is not None:
            self._mcp_done.set()
            try:
                await asyncio.wait_for(self._mcp, 2.0)
            except Exception:  # a binding that fails to close must not lose the call
                self.log.warning("MCP sessions did not close cleanly")
        effects = call.effects
        record.callback_at = effects.callback_at
        record.callback_local = effects.callback_local
        record.booking = effects.booking
        record.opted_out = effects.opted_out
        record.outcome_reason = effects.reason
        record.outcome, record.outcome_source = outcome_for(
            record, effects.outcome, effects.opted_out
        )
        campaign = self._persona.campaign if self._persona is not None else None
        if campaign is not None and any(f.extract for f in campaign.fields):
            values, flags = await extract_fields(
                self.services.llm, record.transcript, campaign.fields
            )
            record.extracted, record.extraction_flags = dict(values), flags
        record.bad_frames = dict(self.protocol.bad_frames)
        metrics = self.services.metrics
        metrics.active_calls.dec()
        metrics.calls_total.inc(1.0, record.end_reason)
        for kind, count in self.protocol.bad_frames.items():
            metrics.bad_frames.inc(count, kind)
        self.log.info(
            "call ended: %s, %d turns, %d barge-ins, outcome %s",
            record.end_reason,
            len(record.transcript),
            record.barge_ins,
            record.outcome or "-",
        )
        try:
            await self.services.sink.save(record)
        except OSError as exc:
            metrics.errors.inc(1.0, "sink")
            self.log.error("could not store the call record: %s", exc)
        webhooks = self.services.webhooks
        if campaign is not None and campaign.webhook is not None and webhooks:
            payload = {"event": "call.completed", "call": to_model(record).model_dump()}
            webhooks.send(
                campaign.webhook.url, campaign.webhook.secret, record.call_id, payload
            )
