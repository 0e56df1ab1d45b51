"""WhatsApp conversations on the media server: the agent's written answers.

What the webhooks bring (`voice.whatsapp_webhook`, signatures checked) is
handled here. The rules:

- Every message is handled once: Meta delivers at least once, so a message
  id already seen is ignored (`vx:wa:seen`). A status needs no such memory:
  it never moves a message's status backwards, so a repeat changes nothing.
- A webhook is answered once its items are stored; the agent's reply is
  written and sent after that, in the background, since Meta expects an
  answer within seconds and an LLM with tools may take longer.
- Free text goes out only inside the customer-service window, which the
  lead's last message opens for `whatsapp_service_window_s` (24 h); outside
  it only the dialer's templates go out, when the follow-up rules say.
- An opt-out ("STOP", "don't message me", or the agent's opt_out tool) puts
  the number on the do-not-call list before the webhook is answered; the
  agent confirms in one message and the conversation closes.
- A conversation closes once: by end_call, an opt-out, a failed template, or
  when it lapses (the reply wait, or the service window, ran out). Closing
  extracts the campaign's fields and settles the attempt, so the lead's
  status and follow-ups come from the same rules as a call's.

A message from a lead with no open conversation (a late reply) opens one
of the lead's own, without an attempt, which the agent answers like any
other; from a number on the do-not-call list it is only kept, from a number
that is no lead only logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from campaign_store.conversations import (
    LEASE_GRACE_S,
    ConversationRef,
    Conversations,
    lapses_at,
)
from campaign_store.errors import NotFound, StoreError
from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    CallRecordModel,
    Campaign,
    Lead,
    LeadStatus,
    MessageRecord,
    TurnRecord,
    WhatsAppChannel,
)
from campaign_store.store import new_id
from dialer.attempts import Attempts, mask
from dialer.claims import Claim
from dialer.lifecycle import Result
from dialer.messaging import lapse_result
from dialer.whatsapp import MessageError, WhatsAppAccount
from pipelines.conversation import Turn, context_for, write_reply
from pipelines.errors import LLMError
from pipelines.extract import extract_fields
from pipelines.llm import ChatClient
from pipelines.record import Turn as CallTurn
from pipelines.tools.agent_tools import AgentTools, CallEffects
from pipelines.tools.optout import asks_to_stop_messages
from voice.logs import CallLog
from voice.metrics import Metrics
from voice.persona import persona_for, tool_context
from voice.whatsapp_webhook import IncomingMessage, StatusUpdate

if TYPE_CHECKING:
    import aiohttp

    from voice.settings import Settings
    from voice.webhooks import WebhookSender

__all__ = ["WhatsAppService"]

log = logging.getLogger("voxdial.whatsapp")

OPTED_OUT_TEXT = (
    "Understood: you will not get any more messages from us. Sorry for the trouble."
)
FALLBACK_TEXT = "Sorry, I cannot answer right now. Someone will get back to you."
_STATUS_RANK = {"unknown": -1, "accepted": 0, "sent": 1, "delivered": 2, "read": 3}
UNCONFIRMED = "unconfirmed:"  # the id of an answer whose send went unanswered
LATE = "after the conversation closed: not answered"
_OUTCOMES = {r.value: r for r in Result}


# The conversations.


class WhatsAppService:
    """Carries every WhatsApp conversation on, for one media server process."""

    def __init__(
        self,
        *,
        settings: Settings,
        attempts: Attempts,
        account: WhatsAppAccount,
        llm: ChatClient,
        session: aiohttp.ClientSession,
        webhooks: WebhookSender | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.store = attempts.store
        self.attempts = attempts
        self.conversations = Conversations(attempts.store)
        self.account = account
        self.llm = llm
        self.session = session
        self.webhooks = webhooks
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="whatsapp-sweeper")

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._sweeper] if self._sweeper else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self, limit_s: float = 10.0) -> None:
        """Wait for the replies in progress (tests, shutdown)."""
        deadline = time.monotonic() + limit_s
        # Waited in rounds: an answer may start another task (a close).
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(set(self._tasks), timeout=left)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("WhatsApp task failed", exc_info=task.exception())

    async def handle(self, items: Sequence[IncomingMessage | StatusUpdate]) -> None:
        """Store what one webhook brought; replies follow in the background."""
        for item in items:
            if isinstance(item, StatusUpdate):
                # Idempotent as it is: a status never moves a message back,
                # and a failed template closes its conversation once.
                await self._on_status(item)
                continue
            seen = f"m:{item.wamid}"
            if not await self.conversations.first_seen(seen):
                continue
            try:
                await self._receive(item)
            except BaseException:
                # Not handled: Meta's retry of this webhook must not be
                # taken for a duplicate.
                await self.conversations.forget_seen(seen)
                raise

    # A message from a lead.

    async def _receive(self, item: IncomingMessage, *, stray: bool = True) -> None:
        ref = await self.conversations.find_open(item.phone_number_id, item.wa_id)
        if ref is None:
            if stray:
                await self._stray(item)
            return
        clog = CallLog(log, {"call_id": ref.attempt_id})
        number = "+" + item.wa_id
        # No lock: the record's update is atomic on its own, and waiting here
        # for an answer in progress would keep Meta's webhook waiting.
        # None for a conversation the lead opened (see `_stray`).
        attempt = await self.attempts.get(ref.campaign_id, ref.attempt_id)
        window_until = item.at + self.settings.whatsapp_service_window_s
        opting_out = asks_to_stop_messages(item.text)
        first_reply = False

        def received(record: CallRecordModel) -> CallRecordModel:
            nonlocal first_reply
            closed = record.ended_at is not None
            record.messages.append(_inbound(item, late=closed))
            if closed:
                return record  # settled: its outcome stands
            record.transcript.append(
                TurnRecord(
                    speaker="lead",
                    text=item.text,
                    started_at=item.at,
                    ended_at=item.at,
                    source="whatsapp",
                )
            )
            first_reply = record.answered_at is None
            if first_reply:
                record.answered_at = item.at
            record.service_window_until = max(
                record.service_window_until or 0.0, window_until
            )
            if opting_out:
                record.opted_out = True
                record.outcome = "do_not_call"
                record.outcome_source = "opt_out"
            return record

        record = await self.conversations.update(ref, received)
        self.metrics.messages.inc(1.0, "in")
        clog.info("message from %s", mask(number))
        if first_reply:
            stats = CampaignKeys(ref.campaign_id).stats
            await self.store.redis.hincrby(stats, "replied", 1)
        if opting_out:
            # Before anything else, closed conversation or not.
            campaign = await self.store.campaign_by_id(ref.campaign_id)
            await self.store.dnc_add(campaign.tenant, [number])
            clog.info("%s opted out: on the do-not-call list", mask(number))
        if record.ended_at is not None:
            return  # closed meanwhile: kept, not answered
        lapses = record.service_window_until or window_until
        await self.conversations.set_deadline(ref, lapses)
        if attempt is not None:
            claim = Claim(ref.campaign_id, attempt.lead_id, attempt.token)
            await self._renew_lease(claim, lapses + LEASE_GRACE_S)
            lead = await self.store.lead_by_id(ref.campaign_id, attempt.lead_id)
            if lead.status is LeadStatus.MESSAGED:
                await self.attempts.mark_status(claim, lead, LeadStatus.IN_CONVERSATION)
        self._spawn(self._answer(ref))

    async def _renew_lease(self, claim: Claim, until: float) -> None:
        if not await self.attempts.claims.renew(claim, int(until * 1000)):
            log.warning("conversation %s: its lease is gone", claim.lead_id)

    async def _stray(self, item: IncomingMessage) -> None:
        """A message outside any open conversation: a late reply, most often.

        From a lead of the campaign on that business number, it opens a
        conversation of the lead's own (no attempt: the lead's status and
        follow-ups stay the dialer's, as after an inbound call), which the
        agent answers inside the service window the message opened. From a
        number on the do-not-call list, or one asking to be, it is only kept;
        from a number no lead has, it is only logged.
        """
        number = "+" + item.wa_id
        campaign = await self.store.campaign_for_number(f"wa:{item.phone_number_id}")
        if campaign is None:
            log.info("message to a business number no campaign uses")
            return
        lead = await self.store.lead_for_number(campaign.id, number)
        opting_out = asks_to_stop_messages(item.text)
        if opting_out:
            await self.store.dnc_add(campaign.tenant, [number])
            log.info("%s opted out outside a conversation", mask(number))
        if lead is None:
            log.info("message from %s, who is no lead: not answered", mask(number))
            return
        if opting_out or (await self.store.dnc_contains(campaign.tenant, [number]))[0]:
            await self._keep_late(lead, item)
            return
        record = CallRecordModel(
            id=new_id("conv"),
            campaign_id=campaign.id,
            lead_id=lead.id,
            channel="whatsapp",
            created_at=item.at,
        )
        await self.conversations.open(
            record,
            item.phone_number_id,
            number,
            item.at + self.settings.whatsapp_service_window_s,
            inbound=True,
        )
        log.info("%s wrote outside a conversation: %s opened", mask(number), record.id)
        await self._receive(item, stray=False)

    async def _keep_late(self, lead: Lead, item: IncomingMessage) -> None:
        if not lead.calls:
            return
        ref = ConversationRef(lead.campaign_id, lead.calls[-1])

        def kept(record: CallRecordModel) -> CallRecordModel:
            record.messages.append(_inbound(item, late=True))
            return record

        with contextlib.suppress(NotFound):
            await self.conversations.update(ref, kept)

    # The agent's answer.

    async def _answer(self, ref: ConversationRef) -> None:
        clog = CallLog(log, {"call_id": ref.attempt_id})
        async with self.conversations.locked(ref):
            record = await self.conversations.get(ref)
            if record is None or record.ended_at is not None:
                return
            reading = sum(t.speaker == "lead" for t in record.transcript)
            if reading <= record.lead_messages_answered:
                return  # an earlier answer already read these messages
            campaign = await self.store.campaign_by_id(ref.campaign_id)
            lead = await self.store.lead_by_id(ref.campaign_id, record.lead_id)
            effects = CallEffects(
                outcome=record.outcome,
                callback_at=record.callback_at,
                callback_local=record.callback_local,
                booking=record.booking,
                opted_out=record.opted_out,
            )
            before = dataclasses.replace(effects)
            if record.opted_out:
                text = OPTED_OUT_TEXT
            else:
                text = await self._write(campaign, lead, record, effects, clog)
                if effects.opted_out and not before.opted_out:
                    await self._keep_effects(ref, effects)  # before anything else
            sent = bool(text) and await self._send_text(
                ref, campaign, lead, text, clog, answering=reading
            )
            if effects != before or not sent:
                await self._keep_effects(ref, effects, answered=reading)
            if effects.hang_up or effects.opted_out:
                reason = "opted_out" if effects.opted_out else "agent_closed"
                await self._close(ref, reason, clog=clog)

    async def _write(
        self,
        campaign: Campaign,
        lead: Lead,
        record: CallRecordModel,
        effects: CallEffects,
        clog: CallLog,
    ) -> str:
        persona = await persona_for(self.store, campaign.id, lead.id)
        if persona is None:
            clog.warning("the campaign has no agent: not answered")
            return ""
        context = tool_context(
            campaign,
            lead,
            lead.phone,
            record.id,
            store=self.store,
            session=self.session,
            settings=self.settings,
        )
        tools = AgentTools(persona.tools, context, effects)
        now_local = datetime.now(ZoneInfo(context.timezone))
        messages = context_for(
            persona.system_prompt,
            persona.fields,
            [Turn(t.speaker, t.text) for t in _turns(record)],
            now_local=now_local,
            done_so_far=_done_so_far(effects),
        )
        try:
            if campaign.mcp_bindings:
                from pipelines.tools.mcp_tools import McpToolbox

                async with McpToolbox.open(
                    campaign.mcp_bindings, persona.fields, log=clog
                ) as box:
                    context.mcp = box
                    return await write_reply(self.llm, tools, messages, log=clog)
            return await write_reply(self.llm, tools, messages, log=clog)
        except LLMError as exc:
            clog.warning("the LLM failed (%s): a fallback answer", exc)
            return FALLBACK_TEXT

    async def _send_text(
        self,
        ref: ConversationRef,
        campaign: Campaign,
        lead: Lead,
        text: str,
        clog: CallLog,
        *,
        answering: int,
    ) -> bool:
        """Send the agent's answer to the lead's first `answering` messages.

        False when it was not sent (and is not kept as sent).
        """
        record = await self.conversations.get(ref)
        channel = campaign.channel
        if record is None or not isinstance(channel, WhatsAppChannel):
            return False
        now = time.time()
        if (record.service_window_until or 0.0) <= now:
            clog.info("the service window has closed: the answer is not sent")
            return False
        client = self.account.client(channel.phone_number_id)
        try:
            sent = await client.send_text(lead.phone, text, callback_data=str(ref))
        except MessageError as exc:
            error = str(exc)[:300]
            if exc.placed is not None:
                clog.warning("answer not sent: %s", exc)

                def failed(current: CallRecordModel) -> CallRecordModel:
                    current.errors.append(error)
                    return current

                await self.conversations.update(ref, failed)
                return False
            # It may have reached the lead: kept as written, and matched to
            # its WhatsApp id when a status for it comes (see `_on_status`).
            clog.warning("answer perhaps not sent: %s", exc)
            wamid, status = f"{UNCONFIRMED}{now}", "unknown"
        else:
            wamid, status = sent.wamid, "accepted"
            await self.conversations.index_message(sent.wamid, ref)
        self.metrics.messages.inc(1.0, "out")

        def sent_now(current: CallRecordModel) -> CallRecordModel:
            current.messages.append(
                MessageRecord(
                    id=wamid, direction="out", text=text, at=now, status=status
                )
            )
            current.transcript.append(
                TurnRecord(
                    speaker="agent",
                    text=text,
                    started_at=now,
                    ended_at=now,
                    source="whatsapp",
                )
            )
            current.lead_messages_answered = max(
                current.lead_messages_answered, answering
            )
            return current

        await self.conversations.update(ref, sent_now)
        return True

    async def _keep_effects(
        self, ref: ConversationRef, effects: CallEffects, *, answered: int = 0
    ) -> None:
        def kept(record: CallRecordModel) -> CallRecordModel:
            record.lead_messages_answered = max(record.lead_messages_answered, answered)
            record.callback_at = effects.callback_at
            record.callback_local = effects.callback_local
            record.booking = effects.booking
            if effects.opted_out:
                record.opted_out = True
                record.outcome, record.outcome_source = "do_not_call", "opt_out"
            elif effects.outcome and not record.opted_out:
                record.outcome, record.outcome_source = effects.outcome, "agent"
            if effects.reason:
                record.outcome_reason = effects.reason
            return record

        await self.conversations.update(ref, kept)

    # Statuses.

    async def _on_status(self, item: StatusUpdate) -> None:
        ref = await self.conversations.by_message(item.wamid)
        if ref is None:
            # A send whose answer never came: its statuses name the attempt.
            ref = ConversationRef.parse(item.callback_data)
            if ref is None:
                return
            await self.conversations.index_message(item.wamid, ref)
        opening = False

        def updated(record: CallRecordModel) -> CallRecordModel:
            nonlocal opening
            message = next((m for m in record.messages if m.id == item.wamid), None)
            has_template = any(m.kind == "template" for m in record.messages)
            if message is None and has_template:
                # The template is known: an unknown id is an answer whose send
                # went unconfirmed (the oldest first), or nothing of ours.
                message = next(
                    (m for m in record.messages if m.id.startswith(UNCONFIRMED)), None
                )
                if message is None:
                    return record
                message.id = item.wamid
            if message is None:
                # The template's own send went unconfirmed: this is it.
                message = MessageRecord(
                    id=item.wamid,
                    direction="out",
                    kind="template",
                    text="[template: its send was not confirmed]",
                    at=item.at,
                )
                record.messages.insert(0, message)
            if message.status == "failed" or (
                item.status != "failed"
                and _STATUS_RANK.get(item.status, -1)
                <= _STATUS_RANK.get(message.status, -1)
            ):
                return record  # statuses arrive in any order: never backwards
            message.status = item.status
            message.status_at = item.at
            if item.status == "failed":
                message.error = item.error
                opening = message.kind == "template"
            return record

        try:
            await self.conversations.update(ref, updated)
        except NotFound:
            return
        if item.status == "failed":
            log.info("[%s] message failed: %s", ref.attempt_id, item.error)
        if opening:
            # The template never reached the lead: a failed attempt.
            async with self.conversations.locked(ref):
                await self._close(ref, "template_failed", result=Result.FAILED)

    # Closing.

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.settings.whatsapp_sweep_s)
            try:
                for ref in await self.conversations.lapsed(time.time()):
                    if await self.conversations.take(ref):
                        self._spawn(self._lapse(ref))
            except (RedisError, OSError) as exc:
                log.warning("WhatsApp sweep failed (%s); retrying", exc)

    async def _lapse(self, ref: ConversationRef) -> None:
        async with self.conversations.locked(ref):
            record = await self.conversations.get(ref)
            if record is not None and record.ended_at is None:
                lapses = lapses_at(record)
                if lapses > time.time():
                    # The lead wrote just as it was taken: not over yet.
                    await self.conversations.reschedule(ref, lapses)
                    return
            result, _ = lapse_result(record)
            await self._close(ref, "lapsed", result=result)

    async def _close(
        self,
        ref: ConversationRef,
        reason: str,
        *,
        result: Result | None = None,
        clog: CallLog | None = None,
    ) -> None:
        """End the conversation once, extract its fields, settle its attempt."""
        clog = clog or CallLog(log, {"call_id": ref.attempt_id})
        # None: a conversation the lead opened; nothing for the dialer to settle.
        attempt = await self.attempts.get(ref.campaign_id, ref.attempt_id)
        if attempt is None and result is Result.NO_ANSWER:
            result = Result.COMPLETED  # the lead wrote first
        first = False

        def ended(record: CallRecordModel) -> CallRecordModel:
            nonlocal first
            if record.ended_at is not None:
                return record
            first = True
            record.ended_at = time.time()
            record.end_reason = reason
            if result is not None and not (record.opted_out or record.outcome):
                record.outcome, record.outcome_source = result.value, "rule"
            elif result is Result.FAILED:
                record.outcome, record.outcome_source = "failed", "rule"
            if not record.outcome:
                record.outcome, record.outcome_source = "no_answer", "rule"
            return record

        record = await self.conversations.update(ref, ended)
        if not first:
            return
        campaign = await self.store.campaign_by_id(ref.campaign_id)
        lead = await self.store.lead_by_id(ref.campaign_id, record.lead_id)
        if isinstance(campaign.channel, WhatsAppChannel):
            await self.conversations.forget_open(
                campaign.channel.phone_number_id, lead.phone, ref
            )
        record = await self._extract(ref, campaign, record)
        outcome = _OUTCOMES.get(record.outcome, Result.COMPLETED)
        try:
            if attempt is not None:
                await self.attempts.settle(
                    attempt, outcome, callback_at=record.callback_at, record=record
                )
            else:
                await self.conversations.keep_fields(record)
                await self.attempts.settle_unattempted(record)
        except (StoreError, NotFound) as exc:
            clog.warning("conversation closed, attempt not settled here: %s", exc)
        self.metrics.conversations_total.inc(1.0, reason)
        clog.info(
            "conversation closed: %s, %d messages, outcome %s",
            reason,
            len(record.messages),
            record.outcome,
        )
        if campaign.webhook is not None and self.webhooks is not None:
            payload = {"event": "conversation.completed", "call": record.model_dump()}
            self.webhooks.send(
                campaign.webhook.url, campaign.webhook.secret, record.id, payload
            )

    async def _extract(
        self, ref: ConversationRef, campaign: Campaign, record: CallRecordModel
    ) -> CallRecordModel:
        if not any(f.extract for f in campaign.fields):
            return record
        values, flags = await extract_fields(
            self.llm,
            [
                CallTurn(
                    "agent" if t.speaker == "agent" else "caller",
                    t.text,
                    t.started_at,
                    t.ended_at,
                    source="whatsapp",
                )
                for t in _turns(record)
            ],
            campaign.fields,
        )

        def extracted(current: CallRecordModel) -> CallRecordModel:
            current.extracted, current.extraction_flags = dict(values), flags
            return current

        return await self.conversations.update(ref, extracted)


def _inbound(item: IncomingMessage, *, late: bool) -> MessageRecord:
    return MessageRecord(
        id=item.wamid,
        direction="in",
        text=item.text,
        at=item.at,
        status="received",
        error=LATE if late else "",
    )


def _turns(record: CallRecordModel) -> list[TurnRecord]:
    """The conversation's words, the opening template first."""
    opening = next((m for m in record.messages if m.kind == "template"), None)
    turns = list(record.transcript)
    if opening is not None:
        turns.insert(
            0,
            TurnRecord(
                speaker="agent",
                text=opening.text,
                started_at=opening.at,
                ended_at=opening.at,
                source="template",
            ),
        )
    return turns


def _done_so_far(effects: CallEffects) -> list[str]:
    notes = []
    if effects.booking:
        notes.append(
            f"Already done in this conversation: a meeting is booked for "
            f"{effects.booking.get('start', '')}. Do not book it again."
        )
    if effects.callback_local:
        notes.append(
            f"Already done in this conversation: a callback is set for "
            f"{effects.callback_local}."
        )
    return notes
