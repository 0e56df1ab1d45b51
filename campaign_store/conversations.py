"""WhatsApp conversations in Redis: where each one is found, and when it ends.

A conversation is stored as its attempt's record (`CallRecordModel` with
`channel="whatsapp"`, at the campaign's `call:<attempt id>` key), linked
from its lead like a call. Around it, keys without a campaign tag, since a
webhook names only WhatsApp's ids:

    vx:wa:open:<phone number id>:<wa_id>   "campaign:attempt" of the open
                                           conversation with that contact
    vx:wamid:<wamid>                       "campaign:attempt" of a message
    vx:wa:deadlines                        zset "campaign:attempt" -> ms when
                                           it lapses (reply wait, or the end
                                           of the service window)
    vx:wa:seen:<id>                        a webhook item already handled
    vx:wa:lock:<campaign:attempt>          who answers or closes it right now

A contact has at most one open conversation per business number: the
dialer opens one only for a lead it holds the lease of, and the lease is
held until the conversation is settled.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from campaign_store import codec
from campaign_store.keys import PREFIX, CampaignKeys
from campaign_store.models import CallRecordModel, Lead, now
from campaign_store.store import Store

__all__ = ["LEASE_GRACE_S", "ConversationRef", "Conversations", "lapses_at"]

DEADLINES = f"{PREFIX}:wa:deadlines"
# A conversation's lease outlasts its deadline by this much: time for the
# media server to close it before a dialer settles it from its record.
LEASE_GRACE_S = 600.0
# Longer than an answer can take (LLM and tool timeouts): a process that
# dies holding the lock delays the conversation by this much, no more.
LOCK_S = 120.0
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
SEEN_FOR_S = 7 * 86_400  # Meta retries a webhook for up to 7 days
WAMID_FOR_S = 30 * 86_400


def lapses_at(record: CallRecordModel) -> float:
    """When an open conversation runs out of time.

    Once the lead has written, the end of the service window their last
    message opened; before that, the template's reply wait.
    """
    if record.answered_at is not None and record.service_window_until is not None:
        return record.service_window_until
    return record.reply_by or record.service_window_until or 0.0


def _open_key(phone_number_id: str, wa_id: str) -> str:
    return f"{PREFIX}:wa:open:{phone_number_id}:{wa_id.lstrip('+')}"


def _wamid_key(wamid: str) -> str:
    return f"{PREFIX}:wamid:{wamid}"


@dataclass(frozen=True)
class ConversationRef:
    """A conversation's campaign and attempt ids ("campaign:attempt")."""

    campaign_id: str
    attempt_id: str

    def __str__(self) -> str:
        return f"{self.campaign_id}:{self.attempt_id}"

    @classmethod
    def parse(cls, text: str | bytes | None) -> ConversationRef | None:
        if text is None:
            return None
        raw = text.decode() if isinstance(text, bytes) else text
        campaign_id, _, attempt_id = raw.partition(":")
        if not campaign_id or not attempt_id:
            return None
        return cls(campaign_id, attempt_id)


class Conversations:
    """The store's WhatsApp side, shared by the dialer and the media server."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis: Any = store.redis
        self._unlock = store.redis.register_script(_UNLOCK)

    @contextlib.asynccontextmanager
    async def locked(self, ref: ConversationRef) -> AsyncIterator[None]:
        """Hold the conversation: one answer or close at a time, any process."""
        key = f"{PREFIX}:wa:lock:{ref}"
        token = secrets.token_hex(8)
        # Polled: the holder may be another process.
        while not await self.redis.set(  # noqa: ASYNC110
            key, token, nx=True, px=int(LOCK_S * 1000)
        ):
            await asyncio.sleep(0.02)
        try:
            yield
        finally:
            await self._unlock(keys=[key], args=[token])

    async def open(
        self,
        record: CallRecordModel,
        phone_number_id: str,
        wa_id: str,
        lapses_at: float,
        *,
        inbound: bool = False,
    ) -> ConversationRef:
        """Store a new conversation, link it from its lead, index it.

        `inbound`: the lead wrote first (no template, no attempt).
        """
        ref = ConversationRef(record.campaign_id, record.id)
        ck = CampaignKeys(record.campaign_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(ck.call(record.id), codec.encode("call", record))
            pipe.rpush(ck.lead_calls(record.lead_id), record.id)
            stat = "inbound_conversations" if inbound else "conversations"
            pipe.hincrby(ck.stats, stat, 1)
            await pipe.execute()
        await self.redis.set(_open_key(phone_number_id, wa_id), str(ref))
        await self.redis.zadd(DEADLINES, {str(ref): int(lapses_at * 1000)})

        def link(lead: Lead) -> Lead:
            if record.id not in lead.calls:
                lead.calls.append(record.id)
            lead.updated_at = now()
            return lead

        await self.store._update(
            ck.lead(record.lead_id), "lead", Lead, record.lead_id, link
        )
        return ref

    async def keep_fields(self, record: CallRecordModel) -> None:
        """A closed conversation's extracted values, onto its lead.

        For conversations without an attempt: an attempt's settlement writes
        them itself, under the lead's lease.
        """
        key = CampaignKeys(record.campaign_id).lead(record.lead_id)

        def merged(lead: Lead) -> Lead:
            for name, value in record.extracted.items():
                if value is not None and value != "":
                    lead.fields[name] = value
            lead.updated_at = now()
            return lead

        await self.store._update(key, "lead", Lead, record.lead_id, merged)

    async def get(self, ref: ConversationRef) -> CallRecordModel | None:
        blob = await self.redis.get(CampaignKeys(ref.campaign_id).call(ref.attempt_id))
        return None if blob is None else codec.decode("call", blob, CallRecordModel)

    async def update(
        self,
        ref: ConversationRef,
        change: Callable[[CallRecordModel], CallRecordModel],
    ) -> CallRecordModel:
        key = CampaignKeys(ref.campaign_id).call(ref.attempt_id)
        updated: CallRecordModel = await self.store._update(
            key, "call", CallRecordModel, ref.attempt_id, change
        )
        return updated

    async def find_open(
        self, phone_number_id: str, wa_id: str
    ) -> ConversationRef | None:
        raw = await self.redis.get(_open_key(phone_number_id, wa_id))
        return ConversationRef.parse(raw)

    async def forget_open(
        self, phone_number_id: str, wa_id: str, ref: ConversationRef
    ) -> None:
        """Unindex the contact's open conversation, if it is still `ref`."""
        key = _open_key(phone_number_id, wa_id)
        if await self.redis.get(key) == str(ref).encode():
            await self.redis.delete(key)
        await self.redis.zrem(DEADLINES, str(ref))

    async def index_message(self, wamid: str, ref: ConversationRef) -> None:
        await self.redis.set(_wamid_key(wamid), str(ref), ex=WAMID_FOR_S)

    async def by_message(self, wamid: str) -> ConversationRef | None:
        return ConversationRef.parse(await self.redis.get(_wamid_key(wamid)))

    async def set_deadline(self, ref: ConversationRef, lapses_at: float) -> None:
        # XX: a conversation already closed (and unindexed) stays closed.
        await self.redis.zadd(DEADLINES, {str(ref): int(lapses_at * 1000)}, xx=True)

    async def reschedule(self, ref: ConversationRef, lapses_at: float) -> None:
        """Put a conversation taken for closing back, due at `lapses_at`."""
        await self.redis.zadd(DEADLINES, {str(ref): int(lapses_at * 1000)})

    async def lapsed(self, at: float, limit: int = 50) -> list[ConversationRef]:
        raw = await self.redis.zrangebyscore(
            DEADLINES, "-inf", int(at * 1000), start=0, num=limit
        )
        refs = [ConversationRef.parse(r) for r in raw]
        return [r for r in refs if r is not None]

    async def take(self, ref: ConversationRef) -> bool:
        """Claim a lapsed conversation for closing: True for one caller only."""
        return bool(await self.redis.zrem(DEADLINES, str(ref)))

    async def forget_seen(self, item_id: str) -> None:
        await self.redis.delete(f"{PREFIX}:wa:seen:{item_id}")

    async def first_seen(self, item_id: str) -> bool:
        """True the first time a webhook item id is seen, False for a repeat."""
        done = await self.redis.set(
            f"{PREFIX}:wa:seen:{item_id}", "1", nx=True, ex=SEEN_FOR_S
        )
        return bool(done)
