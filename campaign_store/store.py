"""The campaign store: agents, campaigns, leads, calls and API keys in Redis.

Every read and write names its tenant. An object of another tenant is
reported exactly like a missing one (`NotFound`), so ids leak nothing.

Campaign status follows these rules (anything else is a `Conflict`):

    draft  --launch-->  active  --pause-->  paused  --resume-->  active
    active --complete--> completed
    any but archived --archive--> archived (read-only from then on)

Parts of a campaign may be edited in draft; schedule, follow-ups and MCP
bindings also while paused; nothing while active (pause first), completed or
archived. Leads may be added in draft, active and paused.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from campaign_store import codec, keys
from campaign_store.errors import Conflict, NotFound, ServerUnsuitable, StoreError
from campaign_store.keys import ACTIVE, PAUSING, CampaignKeys, TenantKeys, api_key
from campaign_store.models import (
    Agent,
    AgentInput,
    AgentPatch,
    ApiKey,
    CallRecordModel,
    Campaign,
    CampaignInput,
    CampaignStatus,
    Lead,
    LeadStatus,
    McpBinding,
    McpBindingInput,
    now,
)

__all__ = ["Page", "Store", "check_tenant", "new_id"]

log = logging.getLogger(__name__)

TENANT_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"
KEY_PREFIX = "vxk_"
MAX_PAGE = 200

EDITABLE: dict[str, frozenset[CampaignStatus]] = {
    "basics": frozenset({CampaignStatus.DRAFT}),
    "channel": frozenset({CampaignStatus.DRAFT}),
    "fields": frozenset({CampaignStatus.DRAFT}),
    "schedule": frozenset({CampaignStatus.DRAFT, CampaignStatus.PAUSED}),
    "follow_ups": frozenset({CampaignStatus.DRAFT, CampaignStatus.PAUSED}),
    "mcp_bindings": frozenset({CampaignStatus.DRAFT, CampaignStatus.PAUSED}),
    "calendar": frozenset({CampaignStatus.DRAFT, CampaignStatus.PAUSED}),
    "webhook": frozenset(
        {CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED}
    ),
    "leads": frozenset(
        {CampaignStatus.DRAFT, CampaignStatus.ACTIVE, CampaignStatus.PAUSED}
    ),
}

TRANSITIONS: dict[str, tuple[frozenset[CampaignStatus], CampaignStatus]] = {
    "launch": (frozenset({CampaignStatus.DRAFT}), CampaignStatus.ACTIVE),
    "pause": (frozenset({CampaignStatus.ACTIVE}), CampaignStatus.PAUSED),
    "resume": (frozenset({CampaignStatus.PAUSED}), CampaignStatus.ACTIVE),
    "complete": (
        frozenset({CampaignStatus.ACTIVE, CampaignStatus.PAUSED}),
        CampaignStatus.COMPLETED,
    ),
    "archive": (
        frozenset(
            {
                CampaignStatus.DRAFT,
                CampaignStatus.ACTIVE,
                CampaignStatus.PAUSED,
                CampaignStatus.COMPLETED,
            }
        ),
        CampaignStatus.ARCHIVED,
    ),
}

# Adds leads whose numbers the campaign does not have yet, atomically.
# KEYS: phones, leads, status:new, due, then one lead key per lead.
# ARGV: then per lead: phone, id, seq, record.
# Returns the 1-based positions of the leads refused as duplicates, each
# followed by the id of the lead that already has the number.
_ADD_LEADS = """
local refused = {}
for i = 5, #KEYS do
  local a = (i - 5) * 4
  local phone, id, seq, blob = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  if redis.call('HSETNX', KEYS[1], phone, id) == 1 then
    redis.call('SET', KEYS[i], blob)
    redis.call('ZADD', KEYS[2], seq, id)
    redis.call('ZADD', KEYS[3], seq, id)
    redis.call('ZADD', KEYS[4], 0, id)
  else
    refused[#refused + 1] = i - 4
    refused[#refused + 1] = redis.call('HGET', KEYS[1], phone)
  end
end
return refused
"""


def new_id(prefix: str) -> str:
    """A short random id: `cmp_3kT9...`. Ids carry no order or meaning."""
    return f"{prefix}_{secrets.token_urlsafe(12).replace('-', 'x').replace('_', 'y')}"


def check_tenant(tenant: str) -> str:
    import re

    if not re.match(TENANT_RE, tenant):
        raise ValueError(
            "a tenant is 1-63 lowercase letters, digits and dashes, "
            "starting with a letter or digit"
        )
    return tenant


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Page:
    """One page of a list, and the cursor of the next (None at the end)."""

    items: list[Any]
    next_cursor: str | None


def _cursor(value: str | None) -> float:
    if value is None or value == "":
        return float("-inf")
    try:
        return float(int(value))
    except ValueError as exc:
        raise ValueError("cursor is not one this API returned") from exc


MAX_CONNECTIONS = 64  # per process
CONNECTION_WAIT_S = 30.0


class Store:
    """All campaign data, in one Redis database."""

    def __init__(self, redis: aioredis.Redis) -> None:
        # redis-py's annotations make every reply `bytes | str | ...`; with
        # decode_responses=False they are bytes, and typing them Any here
        # spares a cast at each of the calls below.
        self.redis: Any = redis
        self._add_leads = redis.register_script(_ADD_LEADS)

    @classmethod
    async def connect(cls, url: str) -> Store:
        """A store on the server at `url`, checked to be safe for our data."""
        # Reconnect through a Redis restart or failover rather than fail the
        # caller. A script retried after a lost reply does no harm: see each.
        # A burst (hundreds of WhatsApp webhooks at once, each a WATCH that
        # holds its connection) waits for a free connection instead of
        # failing with "Too many connections", redis-py's default past 100.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=CONNECTION_WAIT_S,
            decode_responses=False,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        client = aioredis.Redis.from_pool(pool)
        store = cls(client)
        try:
            await store.check_server()
        except BaseException:
            await client.aclose()
            raise
        return store

    async def close(self) -> None:
        await self.redis.aclose()

    async def check_server(self) -> None:
        """Refuse a server that may evict keys; warn about one that keeps nothing."""
        try:
            info = await self.redis.info("memory")
            persistence = await self.redis.info("persistence")
        except RedisError as exc:
            raise StoreError(f"cannot reach Redis: {exc}") from exc
        policy = str(info.get("maxmemory_policy", "noeviction"))
        if policy != "noeviction":
            raise ServerUnsuitable(
                f"Redis maxmemory-policy is {policy!r}: it may evict leads and "
                "calls under memory pressure. Set `maxmemory-policy noeviction`."
            )
        if not int(persistence.get("aof_enabled", 0)):
            log.warning(
                "Redis has append-only persistence off: a restart of Redis loses "
                "what was written since its last snapshot. Set `appendonly yes`."
            )
            return
        try:
            fsync = await self.redis.config_get("appendfsync")
        except RedisError:
            return  # managed services may refuse CONFIG: nothing to check
        raw = fsync.get(b"appendfsync") or fsync.get("appendfsync") or b""
        policy = raw.decode() if isinstance(raw, bytes) else str(raw)
        if policy and policy != "always":
            log.warning(
                "Redis appendfsync is %r: a Redis killed hard loses up to a second "
                "of writes, such as a recorded dial. Set `appendfsync always`.",
                policy,
            )

    # API keys.

    async def create_api_key(self, tenant: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for `tenant`: the record, and the key itself (shown once)."""
        check_tenant(tenant)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id=new_id("key"), tenant=tenant, name=name, key_hash=hash_key(secret)
        )
        tk = TenantKeys(tenant)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(api_key(record.key_hash), codec.encode("apikey", record))
            pipe.zadd(tk.api_keys, {f"{record.id}:{record.key_hash}": time.time()})
            await pipe.execute()
        return record, secret

    async def authenticate(self, secret: str) -> str | None:
        """The tenant of an API key, or None."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        digest = hash_key(secret)
        blob = await self.redis.get(api_key(digest))
        if blob is None:
            return None
        record = codec.decode("apikey", blob, ApiKey)
        if not hmac.compare_digest(record.key_hash, digest):
            return None
        return record.tenant

    async def list_api_keys(self, tenant: str) -> list[ApiKey]:
        members = await self.redis.zrange(TenantKeys(tenant).api_keys, 0, -1)
        blobs = await self._mget(
            [api_key(m.decode().split(":", 1)[1]) for m in members]
        )
        return [codec.decode("apikey", b, ApiKey) for b in blobs if b is not None]

    async def revoke_api_key(self, tenant: str, key_id: str) -> None:
        for record in await self.list_api_keys(tenant):
            if record.id == key_id:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.delete(api_key(record.key_hash))
                    pipe.zrem(
                        TenantKeys(tenant).api_keys, f"{record.id}:{record.key_hash}"
                    )
                    await pipe.execute()
                return
        raise NotFound("API key", key_id)

    # Agents.

    async def create_agent(self, tenant: str, data: AgentInput) -> Agent:
        agent = Agent(id=new_id("agt"), tenant=tenant, **data.model_dump())
        tk = TenantKeys(tenant)
        order = await self.redis.incr(tk.seq)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(tk.agent(agent.id), codec.encode("agent", agent))
            pipe.zadd(tk.agents, {agent.id: order})
            await pipe.execute()
        return agent

    async def get_agent(self, tenant: str, agent_id: str) -> Agent:
        blob = await self.redis.get(TenantKeys(tenant).agent(agent_id))
        if blob is None:
            raise NotFound("agent", agent_id)
        return codec.decode("agent", blob, Agent)

    async def list_agents(
        self, tenant: str, cursor: str | None = None, limit: int = 50
    ) -> Page:
        tk = TenantKeys(tenant)
        ids, next_cursor = await self._page(tk.agents, cursor, limit)
        blobs = await self._mget([tk.agent(i) for i in ids])
        agents = [codec.decode("agent", b, Agent) for b in blobs if b is not None]
        return Page(agents, next_cursor)

    async def update_agent(
        self, tenant: str, agent_id: str, patch: AgentPatch
    ) -> Agent:
        key = TenantKeys(tenant).agent(agent_id)
        changes = patch.model_dump(exclude_unset=True)

        def change(agent: Agent) -> Agent:
            return Agent.model_validate(
                {**agent.model_dump(), **changes, "updated_at": now()}
            )

        agent: Agent = await self._update(key, "agent", Agent, agent_id, change)
        return agent

    async def delete_agent(self, tenant: str, agent_id: str) -> None:
        await self.get_agent(tenant, agent_id)
        page = await self.list_campaigns(tenant, limit=MAX_PAGE)
        cursor = page.next_cursor
        campaigns = list(page.items)
        while cursor is not None:
            page = await self.list_campaigns(tenant, cursor=cursor, limit=MAX_PAGE)
            campaigns.extend(page.items)
            cursor = page.next_cursor
        users = [
            c.id
            for c in campaigns
            if c.agent_id == agent_id and c.status != CampaignStatus.ARCHIVED
        ]
        if users:
            raise Conflict(f"agent is used by campaign(s) {', '.join(users)}")
        tk = TenantKeys(tenant)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(tk.agent(agent_id))
            pipe.zrem(tk.agents, agent_id)
            await pipe.execute()

    # Campaigns.

    async def create_campaign(self, tenant: str, data: CampaignInput) -> Campaign:
        if data.agent_id is not None:
            await self.get_agent(tenant, data.agent_id)
        campaign = Campaign(
            id=new_id("cmp"),
            tenant=tenant,
            name=data.name,
            description=data.description,
            agent_id=data.agent_id,
            channel=data.channel,
            schedule=data.schedule,
            fields=data.fields,
            follow_ups=data.follow_ups,
            mcp_bindings=merge_bindings([], data.mcp_bindings),
        )
        check_fields_unique(campaign)
        tk = TenantKeys(tenant)
        ck = CampaignKeys(campaign.id)
        order = await self.redis.incr(tk.seq)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(ck.record, codec.encode("campaign", campaign))
            pipe.set(ck.state, campaign.status.value)
            await pipe.execute()
        await self.redis.zadd(tk.campaigns, {campaign.id: order})
        await self._index_number(campaign)
        return campaign

    async def get_campaign(self, tenant: str, campaign_id: str) -> Campaign:
        blob = await self.redis.get(CampaignKeys(campaign_id).record)
        if blob is None:
            raise NotFound("campaign", campaign_id)
        campaign = codec.decode("campaign", blob, Campaign)
        if campaign.tenant != tenant:
            raise NotFound("campaign", campaign_id)
        return campaign

    async def campaign_by_id(self, campaign_id: str) -> Campaign:
        """A campaign whatever its tenant: for the dialer, never for the API."""
        blob = await self.redis.get(CampaignKeys(campaign_id).record)
        if blob is None:
            raise NotFound("campaign", campaign_id)
        return codec.decode("campaign", blob, Campaign)

    async def lead_by_id(self, campaign_id: str, lead_id: str) -> Lead:
        """A lead whatever its tenant: for the dialer, never for the API."""
        blob = await self.redis.get(CampaignKeys(campaign_id).lead(lead_id))
        if blob is None:
            raise NotFound("lead", lead_id)
        return codec.decode("lead", blob, Lead)

    async def list_campaigns(
        self,
        tenant: str,
        cursor: str | None = None,
        limit: int = 50,
        status: CampaignStatus | None = None,
    ) -> Page:
        tk = TenantKeys(tenant)
        found: list[Campaign] = []
        next_cursor = cursor
        # A status filter may skip many; keep reading pages until one is full.
        while True:
            ids, next_cursor = await self._page(tk.campaigns, next_cursor, limit)
            blobs = await self._mget([CampaignKeys(i).record for i in ids])
            for blob in blobs:
                if blob is None:
                    continue
                campaign = codec.decode("campaign", blob, Campaign)
                if status is None or campaign.status == status:
                    found.append(campaign)
            if status is None or next_cursor is None or len(found) >= limit:
                return Page(found, next_cursor)

    async def edit_campaign(
        self,
        tenant: str,
        campaign_id: str,
        part: str,
        change: Callable[[Campaign], Campaign],
    ) -> Campaign:
        """Apply `change` to the campaign, if `part` may be edited in its status."""
        await self.get_campaign(tenant, campaign_id)
        allowed = EDITABLE[part]

        def guarded(campaign: Campaign) -> Campaign:
            if campaign.status not in allowed:
                states = " or ".join(sorted(s.value for s in allowed))
                raise Conflict(
                    f"the campaign is {campaign.status.value}: its {part} can be "
                    f"edited only while {states}"
                )
            updated = change(campaign)
            updated.updated_at = now()
            return updated

        key = CampaignKeys(campaign_id).record
        before = await self.campaign_by_id(campaign_id)
        updated: Campaign = await self._update(
            key, "campaign", Campaign, campaign_id, guarded
        )
        if part == "channel":
            await self._index_number(before, remove=True)
            await self._index_number(updated)
        return updated

    async def _index_number(self, campaign: Campaign, *, remove: bool = False) -> None:
        channel = campaign.channel
        if channel is None:
            return
        # A WhatsApp campaign is found by its business number's id instead.
        number = (
            channel.caller_id
            if channel.kind == "phone"
            else f"wa:{channel.phone_number_id}"
        )
        key = keys.caller_id(number)
        if remove:
            await self.redis.srem(key, campaign.id)
        else:
            await self.redis.sadd(key, campaign.id)

    async def campaign_for_number(self, number: str) -> Campaign | None:
        """The campaign an inbound call to `number` belongs to.

        `wa:<phone number id>` finds a WhatsApp campaign by its business
        number instead.

        Several campaigns may call from one number: the active one wins, then
        the paused one, then the most recently updated; archived ones never.
        """
        ids = sorted(
            i.decode() for i in await self.redis.smembers(keys.caller_id(number))
        )
        rank = {CampaignStatus.ACTIVE: 0, CampaignStatus.PAUSED: 1}
        found: list[tuple[int, float, Campaign]] = []
        for campaign_id in ids:
            try:
                campaign = await self.campaign_by_id(campaign_id)
            except NotFound:
                continue
            if campaign.status is not CampaignStatus.ARCHIVED:
                order = rank.get(campaign.status, 2)
                found.append((order, -campaign.updated_at, campaign))
        found.sort(key=lambda item: item[:2])
        return found[0][2] if found else None

    async def lead_for_number(self, campaign_id: str, number: str) -> Lead | None:
        """The campaign's lead with this phone number, if any."""
        lead_id = await self.redis.hget(CampaignKeys(campaign_id).phones, number)
        if lead_id is None:
            return None
        try:
            return await self.lead_by_id(campaign_id, lead_id.decode())
        except NotFound:
            return None

    async def transition(
        self, tenant: str, campaign_id: str, action: str, *, when: float | None = None
    ) -> Campaign:
        """launch, pause, resume, complete or archive the campaign."""
        sources, target = TRANSITIONS[action]
        await self.get_campaign(tenant, campaign_id)
        ck = CampaignKeys(campaign_id)
        at = now() if when is None else when
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(ck.record)
                    blob = await pipe.get(ck.record)
                    if blob is None:
                        raise NotFound("campaign", campaign_id)
                    campaign = codec.decode("campaign", blob, Campaign)
                    if campaign.status not in sources:
                        raise Conflict(
                            f"cannot {action} a campaign that is "
                            f"{campaign.status.value}"
                        )
                    campaign.status = target
                    campaign.updated_at = at
                    if action == "launch":
                        campaign.launched_at = at
                    if action == "pause":
                        campaign.paused_at = at
                    if action == "resume":
                        campaign.paused_at = None
                    pipe.multi()
                    # The state key is what the dialer's scripts read: it
                    # changes in the same transaction as the record.
                    pipe.set(ck.record, codec.encode("campaign", campaign))
                    pipe.set(ck.state, target.value)
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        # The dialers' work lists. They are hints: the dialer's scripts check
        # the state key above, so a stale entry can never cause a dial.
        if target == CampaignStatus.ACTIVE:
            await self._mirror_dnc(campaign)
            await self.redis.sadd(ACTIVE, campaign.id)
        else:
            await self.redis.srem(ACTIVE, campaign.id)
        if action == "pause":
            await self.redis.sadd(PAUSING, campaign.id)
        return campaign

    async def _mirror_dnc(self, campaign: Campaign) -> None:
        # The dialer's claim script sees only the campaign's own keys (one hash
        # slot), so the tenant's list is copied next to them.
        numbers = await self.redis.smembers(TenantKeys(campaign.tenant).dnc)
        if numbers:
            await self.redis.sadd(CampaignKeys(campaign.id).dnc, *numbers)

    # Leads.

    async def add_leads(self, campaign: Campaign, leads: Sequence[Lead]) -> list[str]:
        """Store new leads; the ids of the ones refused, each as `index:lead id`.

        A lead whose number the campaign already has is refused, not merged:
        `index` is its position in `leads`, `lead id` the lead that has it.
        """
        if not leads:
            return []
        ck = CampaignKeys(campaign.id)
        last = await self.redis.incrby(ck.seq, len(leads))
        keys = [ck.phones, ck.leads, ck.status(LeadStatus.NEW.value), ck.due]
        args: list[Any] = []
        for offset, lead in enumerate(leads):
            lead.seq = last - len(leads) + offset + 1
            keys.append(ck.lead(lead.id))
            args += [lead.phone, lead.id, lead.seq, codec.encode("lead", lead)]
        # Leads of another status (do-not-call at import) go to their own index.
        refused = await self._add_leads(keys=keys, args=args)
        refused_at = {int(refused[i]) - 1 for i in range(0, len(refused), 2)}
        moved = [
            lead
            for i, lead in enumerate(leads)
            if i not in refused_at and lead.status != LeadStatus.NEW
        ]
        if moved:
            async with self.redis.pipeline(transaction=True) as pipe:
                for lead in moved:
                    pipe.zrem(ck.status(LeadStatus.NEW.value), lead.id)
                    pipe.zadd(ck.status(lead.status.value), {lead.id: lead.seq})
                    pipe.zrem(ck.due, lead.id)
                await pipe.execute()
        return [
            f"{int(refused[i]) - 1}:{refused[i + 1].decode()}"
            for i in range(0, len(refused), 2)
        ]

    async def get_lead(self, tenant: str, campaign_id: str, lead_id: str) -> Lead:
        await self.get_campaign(tenant, campaign_id)
        blob = await self.redis.get(CampaignKeys(campaign_id).lead(lead_id))
        if blob is None:
            raise NotFound("lead", lead_id)
        return codec.decode("lead", blob, Lead)

    async def list_leads(
        self,
        tenant: str,
        campaign_id: str,
        *,
        status: LeadStatus | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        await self.get_campaign(tenant, campaign_id)
        ck = CampaignKeys(campaign_id)
        index = ck.leads if status is None else ck.status(status.value)
        ids, next_cursor = await self._page(index, cursor, limit)
        blobs = await self._mget([ck.lead(i) for i in ids])
        leads = [codec.decode("lead", b, Lead) for b in blobs if b is not None]
        return Page(leads, next_cursor)

    async def lead_counts(self, campaign_id: str) -> dict[str, int]:
        ck = CampaignKeys(campaign_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in LeadStatus:
                pipe.zcard(ck.status(status.value))
            counts = await pipe.execute()
        return {s.value: int(n) for s, n in zip(LeadStatus, counts, strict=True)}

    async def save_lead(self, lead: Lead, previous: LeadStatus | None = None) -> None:
        """Write a changed lead, moving it between status indexes if needed."""
        ck = CampaignKeys(lead.campaign_id)
        lead.updated_at = now()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(ck.lead(lead.id), codec.encode("lead", lead))
            if previous is not None and previous != lead.status:
                pipe.zrem(ck.status(previous.value), lead.id)
                pipe.zadd(ck.status(lead.status.value), {lead.id: lead.seq})
            await pipe.execute()

    # Calls.

    async def save_call(self, call: CallRecordModel) -> None:
        """Store a finished call and link it from its lead."""
        ck = CampaignKeys(call.campaign_id)
        duration = call.duration_s()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(ck.call(call.id), codec.encode("call", call))
            pipe.rpush(ck.lead_calls(call.lead_id), call.id)
            pipe.hincrby(ck.stats, "calls", 1)
            if duration is not None:
                pipe.hincrby(ck.stats, "answered", 1)
                pipe.hincrbyfloat(ck.stats, "talk_seconds", duration)
            await pipe.execute()
        lead_key = ck.lead(call.lead_id)
        blob = await self.redis.get(lead_key)
        if blob is not None:

            def link(lead: Lead) -> Lead:
                if call.id not in lead.calls:
                    lead.calls.append(call.id)
                # What the call learned becomes the lead's: the newest value
                # of each extracted field wins; an empty one changes nothing.
                for name, value in call.extracted.items():
                    if value is not None and value != "":
                        lead.fields[name] = value
                lead.updated_at = now()
                return lead

            await self._update(lead_key, "lead", Lead, call.lead_id, link)

    async def get_call(
        self, tenant: str, campaign_id: str, call_id: str
    ) -> CallRecordModel:
        await self.get_campaign(tenant, campaign_id)
        blob = await self.redis.get(CampaignKeys(campaign_id).call(call_id))
        if blob is None:
            raise NotFound("call", call_id)
        return codec.decode("call", blob, CallRecordModel)

    async def lead_calls(
        self, tenant: str, campaign_id: str, lead_id: str, limit: int = 50
    ) -> list[CallRecordModel]:
        """The lead's most recent calls, newest first."""
        await self.get_lead(tenant, campaign_id, lead_id)
        ck = CampaignKeys(campaign_id)
        ids = await self.redis.lrange(ck.lead_calls(lead_id), -limit, -1)
        blobs = await self._mget([ck.call(i.decode()) for i in reversed(ids)])
        return [codec.decode("call", b, CallRecordModel) for b in blobs if b]

    async def stats(self, campaign_id: str) -> dict[str, float]:
        raw = await self.redis.hgetall(CampaignKeys(campaign_id).stats)
        return {k.decode(): float(v) for k, v in raw.items()}

    # The do-not-call list.

    async def dnc_add(self, tenant: str, numbers: Iterable[str]) -> int:
        numbers = list(numbers)
        if not numbers:
            return 0
        added: int = await self.redis.sadd(TenantKeys(tenant).dnc, *numbers)
        for campaign_id in await self._campaign_ids(tenant):
            await self.redis.sadd(CampaignKeys(campaign_id).dnc, *numbers)
        return added

    async def _campaign_ids(self, tenant: str) -> list[str]:
        ids = await self.redis.zrange(TenantKeys(tenant).campaigns, 0, -1)
        return [i.decode() for i in ids]

    async def dnc_remove(self, tenant: str, number: str) -> bool:
        removed: int = await self.redis.srem(TenantKeys(tenant).dnc, number)
        for campaign_id in await self._campaign_ids(tenant):
            await self.redis.srem(CampaignKeys(campaign_id).dnc, number)
        return removed == 1

    async def dnc_contains(self, tenant: str, numbers: Sequence[str]) -> list[bool]:
        if not numbers:
            return []
        flags = await self.redis.smismember(TenantKeys(tenant).dnc, list(numbers))
        return [bool(f) for f in flags]

    async def dnc_page(
        self, tenant: str, cursor: str | None = None, limit: int = 50
    ) -> Page:
        start = int(cursor) if cursor else 0
        next_start, members = await self.redis.sscan(
            TenantKeys(tenant).dnc, start, count=limit
        )
        items = sorted(m.decode() for m in members)
        return Page(items, str(next_start) if next_start else None)

    # Helpers.

    async def _page(
        self, index: str, cursor: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        limit = max(1, min(limit, MAX_PAGE))
        after = _cursor(cursor)
        low = "-inf" if after == float("-inf") else f"({int(after)}"
        rows = await self.redis.zrangebyscore(
            index, low, "+inf", start=0, num=limit + 1, withscores=True
        )
        ids = [member.decode() for member, _ in rows[:limit]]
        more = len(rows) > limit
        next_cursor = str(int(rows[limit - 1][1])) if more else None
        return ids, next_cursor

    async def _mget(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self.redis.mget(keys)
        return values

    async def _update(
        self,
        key: str,
        kind: str,
        cls: type[Any],
        ident: str,
        change: Callable[[Any], Any],
    ) -> Any:
        """Read-modify-write of one record, retried if it changed meanwhile."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    blob = await pipe.get(key)
                    if blob is None:
                        raise NotFound(kind, ident)
                    updated = change(codec.decode(kind, blob, cls))
                    pipe.multi()
                    pipe.set(key, codec.encode(kind, updated))
                    await pipe.execute()
                    return updated
                except WatchError:
                    continue
                except ResponseError as exc:
                    raise StoreError(f"Redis refused the write: {exc}") from exc


def merge_bindings(
    current: Sequence[McpBinding], wanted: Sequence[McpBindingInput]
) -> list[McpBinding]:
    """The bindings as `wanted` says; a header given as null keeps its value."""
    names = [b.name for b in wanted]
    if len(set(names)) != len(names):
        raise ValueError("two MCP bindings have the same name")
    old = {b.name: b for b in current}
    merged = []
    for binding in wanted:
        previous = old.get(binding.name)
        headers: dict[str, str] = {}
        for name, value in binding.headers.items():
            if value is not None:
                headers[name] = value
            elif previous is not None and name in previous.headers:
                headers[name] = previous.headers[name]
            else:
                raise ValueError(
                    f"MCP binding {binding.name!r}: header {name!r} is null but "
                    "has no value to keep"
                )
        merged.append(
            McpBinding(
                name=binding.name,
                url=binding.url,
                transport=binding.transport,
                allowed_tools=list(binding.allowed_tools),
                headers=headers,
            )
        )
    return merged


def check_fields_unique(campaign: Campaign) -> None:
    names = [f.name for f in campaign.fields]
    if len(set(names)) != len(names):
        raise ValueError("two custom fields have the same name")
