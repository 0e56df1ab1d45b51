"""The dialer's WhatsApp side: a claimed lead's opening template, and its lease.

An attempt on a WhatsApp campaign is one template and the conversation it
opens, the way a call attempt is one dial and the talk after it. The steps
match a dial's, so do the guarantees:

1. The lead is claimed and the attempt recorded under the claim's token,
   then confirmed at the last moment (`dialer.claims`): at most one template
   per attempt, none after a pause is acknowledged.
2. The conversation is stored and indexed before the request goes out, so a
   reply that races the API's answer finds it; the lease is stretched to the
   conversation's deadline (the reply wait) plus `grace_s`.
3. The answer decides: accepted -> the lead is "messaged"; rate limited
   (after the client's own retries) -> due again, not held against the lead;
   a template or token problem -> the campaign is paused, since every lead
   would fail alike; a bad number -> a failed attempt (the failed follow-up
   rule); no answer -> the message may exist, so it is never sent again
   blindly: the conversation waits as if sent, and its status webhooks (they
   carry the attempt in `biz_opaque_callback_data`) tell the rest.

The media server (`voice.whatsapp`) carries the conversation on and settles
the attempt when it ends. Should it never do so (down past the deadline), an
expired lease comes back here (`reconcile`) and is settled from the record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from campaign_store.conversations import ConversationRef, Conversations, lapses_at
from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    Attempt,
    CallRecordModel,
    Campaign,
    Lead,
    LeadStatus,
    MessageRecord,
    WhatsAppChannel,
)
from campaign_store.store import Store
from dialer.attempts import Attempts, mask
from dialer.claims import Claim
from dialer.lifecycle import Result
from dialer.whatsapp import MessageError, WhatsAppAccount
from pipelines.prompt import clean_value, greeting

__all__ = ["OpeningSender", "lapse_result", "template_values"]

log = logging.getLogger(__name__)

_CAMPAIGN_WIDE = frozenset({"template", "unauthorized"})
_LEAD_FAULT = frozenset({"bad_number", "rejected"})
_OUTCOMES = {r.value: r for r in Result}


def template_values(campaign: Campaign, lead: Lead) -> list[str] | str:
    """The template's variables for this lead, or the name of one it lacks."""
    assert isinstance(campaign.channel, WhatsAppChannel)
    known: dict[str, object] = {
        **{f.name: f.default for f in campaign.fields if f.default is not None},
        **{k: v for k, v in lead.placeholder_values().items() if v},
        "phone": lead.phone,
    }
    values = []
    for name in campaign.channel.template.variables:
        # WhatsApp refuses empty parameters and ones with newlines or tabs.
        value = clean_value(known.get(name))
        if not value:
            return name
        values.append(value)
    return values


def lapse_result(record: CallRecordModel | None) -> tuple[Result, str]:
    """What a conversation that ran out of time amounts to, and why.

    The tools' outcome (a booking, a callback) stands; otherwise a lead who
    never wrote, or stopped writing, did not answer: the no_answer follow-up
    rule decides when a template tries again.
    """
    if record is not None:
        if record.opted_out:
            return Result.DO_NOT_CALL, "opt_out"
        if record.outcome and record.outcome in _OUTCOMES:
            return _OUTCOMES[record.outcome], "agent"
    return Result.NO_ANSWER, "rule"


class OpeningSender:
    """Sends claimed leads their template; one per dialer process."""

    def __init__(
        self,
        store: Store,
        attempts: Attempts,
        account: WhatsAppAccount,
        *,
        grace_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.redis: Any = store.redis
        self.attempts = attempts
        self.claims = attempts.claims
        self.conversations = Conversations(store)
        self.account = account
        self.grace_s = grace_s
        self.clock = clock
        self.sent = 0

    def _ms(self, at: float) -> int:
        return int(at * 1000)

    async def send(
        self, claim: Claim, campaign: Campaign, lead: Lead, attempt: Attempt
    ) -> str:
        """Send the recorded, confirmed attempt's template; what became of it.

        "sent", "unknown", or the error kind; the attempt is updated (and
        settled, when nothing was sent) before this returns.
        """
        channel = campaign.channel
        assert isinstance(channel, WhatsAppChannel)
        values = template_values(campaign, lead)
        if isinstance(values, str):
            error = f"template variable {values!r} has no value for this lead"
            await self._refused(attempt, error, Result.FAILED)
            return "missing_variable"

        # A lead who wrote in on their own is answered there: no template
        # into a conversation, and this attempt waits for it to end.
        busy = await self._open_elsewhere(channel.phone_number_id, lead.phone)
        if busy is not None:
            await self._refused(
                attempt, "the lead is in a conversation", Result.CANCELED
            )
            due = CampaignKeys(campaign.id).due
            await self.redis.zadd(due, {lead.id: self._ms(busy)}, xx=True)
            return "in_conversation"

        # The conversation exists before the request: a fast reply finds it.
        now = self.clock()
        reply_by = now + channel.reply_wait_minutes * 60.0
        record = CallRecordModel(
            id=attempt.id,
            campaign_id=campaign.id,
            lead_id=lead.id,
            channel="whatsapp",
            created_at=now,
            reply_by=reply_by,
        )
        ref = await self.conversations.open(
            record, channel.phone_number_id, lead.phone, reply_by
        )
        # Read again: the lead now links the conversation, and what this
        # dialer writes back must keep that link.
        lead = await self.store.lead_by_id(campaign.id, lead.id)
        await self.claims.renew(claim, self._ms(reply_by + self.grace_s))
        client = self.account.client(channel.phone_number_id)
        try:
            sent = await client.send_template(
                lead.phone,
                channel.template.name,
                channel.template.language,
                values,
                callback_data=str(ref),
            )
        except MessageError as exc:
            return await self._not_accepted(claim, campaign, lead, attempt, ref, exc)
        self.sent += 1
        await self.conversations.index_message(sent.wamid, ref)
        opening = await self._opening_text(campaign, lead, values)

        def accepted(current: CallRecordModel) -> CallRecordModel:
            current.messages.append(
                MessageRecord(
                    id=sent.wamid,
                    direction="out",
                    kind="template",
                    text=opening,
                    at=now,
                )
            )
            return current

        await self.conversations.update(ref, accepted)

        def placed(current: Attempt) -> Attempt:
            current.placed = "placed"
            current.message_id = sent.wamid
            return current

        await self.attempts.update(campaign.id, attempt.id, placed)
        await self.attempts.mark_status(claim, lead, LeadStatus.MESSAGED)
        return "sent"

    async def _open_elsewhere(self, phone_number_id: str, phone: str) -> float | None:
        """When the lead's open conversation lapses, if it has one."""
        ref = await self.conversations.find_open(phone_number_id, phone)
        record = None if ref is None else await self.conversations.get(ref)
        if record is None or record.ended_at is not None:
            return None  # none, or an index a crash left behind
        return lapses_at(record)

    async def _opening_text(
        self, campaign: Campaign, lead: Lead, values: list[str]
    ) -> str:
        """What the lead read, as the transcript keeps it.

        The template's body as the campaign states it, filled; without one
        (the text lives at Meta), the agent's greeting filled the same way.
        """
        template = campaign.channel.template  # type: ignore[union-attr]
        if template.body:
            return template.render(values)
        if campaign.agent_id is not None:
            try:
                agent = await self.store.get_agent(campaign.tenant, campaign.agent_id)
            except Exception:  # the opening is already out: keep the record
                agent = None
            if agent is not None and agent.greeting:
                return greeting(agent.greeting, lead.placeholder_values())
        return f"[template {template.name}: {' | '.join(values)}]"

    async def _not_accepted(
        self,
        claim: Claim,
        campaign: Campaign,
        lead: Lead,
        attempt: Attempt,
        ref: ConversationRef,
        exc: MessageError,
    ) -> str:
        channel = campaign.channel
        assert isinstance(channel, WhatsAppChannel)
        if exc.placed is None:
            # It may be on its way to the lead: the conversation stays, and
            # waits for a reply or its statuses like any other.
            log.warning("template to %s: outcome unknown (%s)", mask(lead.phone), exc)

            def unknown(current: Attempt) -> Attempt:
                current.placed = "unknown"
                current.error = str(exc)[:300]
                return current

            await self.attempts.update(campaign.id, attempt.id, unknown)
            await self.attempts.mark_status(claim, lead, LeadStatus.MESSAGED)
            return "unknown"

        await self.conversations.forget_open(channel.phone_number_id, lead.phone, ref)

        def closed(current: CallRecordModel) -> CallRecordModel:
            current.ended_at = self.clock()
            current.end_reason = f"template_{exc.kind}"
            # Only a refusal of this lead's own number is a failed attempt.
            current.outcome = "failed" if exc.kind in _LEAD_FAULT else ""
            current.errors.append(str(exc)[:300])
            return current

        await self.conversations.update(ref, closed)
        if exc.kind == "rate_limited":
            log.warning("template to %s rate limited; due again", mask(lead.phone))
            await self._refused(attempt, str(exc), Result.CANCELED)
        elif exc.kind in _CAMPAIGN_WIDE:
            log.error(
                "campaign %s paused: WhatsApp refused its %s (%s)",
                campaign.id,
                "template" if exc.kind == "template" else "access token",
                exc,
            )
            await self._refused(attempt, str(exc), Result.CANCELED)
            try:
                await self.store.transition(campaign.tenant, campaign.id, "pause")
            except Exception:  # paused or archived meanwhile: nothing to add
                log.info("campaign %s could not be paused", campaign.id)
        else:
            log.warning("template to %s refused: %s", mask(lead.phone), exc)
            await self._refused(attempt, str(exc), Result.FAILED)
        return exc.kind

    async def _refused(self, attempt: Attempt, error: str, result: Result) -> None:
        def refused(current: Attempt) -> Attempt:
            current.placed = "not_placed"
            current.carrier_status = "failed"
            current.error = error[:300]
            return current

        attempt = await self.attempts.update(attempt.campaign_id, attempt.id, refused)
        await self.attempts.settle(attempt, result)

    async def reconcile(self, claim: Claim, attempt: Attempt) -> None:
        """An expired lease on a WhatsApp attempt: extend it, or settle it."""
        ref = ConversationRef(attempt.campaign_id, attempt.id)
        record = await self.conversations.get(ref)
        now = self.clock()
        if record is None:
            # Its dialer stopped between recording and storing the
            # conversation: nothing was sent.
            stopped = "not sent: the dialer stopped"
            await self._refused(attempt, stopped, Result.CANCELED)
            return
        lapses = lapses_at(record)
        if record.ended_at is None and now < lapses + self.grace_s:
            await self.claims.renew(claim, self._ms(lapses + self.grace_s))
            return
        # The media server did not close it in time: settle from the record.
        if record.ended_at is not None and record.outcome in _OUTCOMES:
            result, source = _OUTCOMES[record.outcome], record.outcome_source
        else:
            result, source = lapse_result(record)
        log.warning(
            "conversation %s settled by the dialer: %s (%s)", ref, result, source
        )
        campaign = await self.store.campaign_by_id(attempt.campaign_id)
        channel = campaign.channel
        if isinstance(channel, WhatsAppChannel):
            lead = await self.store.lead_by_id(attempt.campaign_id, attempt.lead_id)
            await self.conversations.forget_open(
                channel.phone_number_id, lead.phone, ref
            )
        await self.attempts.settle(
            attempt, result, callback_at=record.callback_at, record=record
        )
