"""Where things live in Redis.

A campaign's keys share the hash tag `{c:<campaign id>}`, so that one Lua
script may touch a campaign, its leads and its indexes on Redis Cluster too.
A tenant's keys share `{t:<tenant>}`. API keys are found by the hash of the
key itself and carry no tag (one key per lookup).

    vx:{t:T}:campaigns        zset  campaign id -> creation order
    vx:{t:T}:agents           zset  agent id -> creation order
    vx:{t:T}:agent:A          agent record
    vx:{t:T}:dnc              set   E.164 numbers never to dial
    vx:{t:T}:keys             zset  API key id -> creation time
    vx:{t:T}:seq              counter for creation order
    vx:apikey:<sha256>        API key record
    vx:{c:C}:campaign         campaign record
    vx:{c:C}:state            campaign status alone, for scripts
    vx:{c:C}:seq              counter for lead order
    vx:{c:C}:leads            zset  lead id -> order
    vx:{c:C}:phones           hash  E.164 -> lead id (one lead per number)
    vx:{c:C}:status:S         zset  lead id -> order, one per lead status
    vx:{c:C}:due              zset  lead id -> next attempt time (dialer)
    vx:{c:C}:stats            hash  attempts, answered, talk seconds, ...
    vx:{c:C}:lead:L           lead record
    vx:{c:C}:lead:L:calls     list  the lead's call ids, oldest first
    vx:{c:C}:call:X           call record
    vx:{c:C}:dnc              set   the tenant's do-not-call numbers, mirrored
    vx:{c:C}:leases           zset  lead id -> lease expiry (ms), claimed leads
    vx:{c:C}:lease_info       hash  lead id -> "token|owner|attempt id"
    vx:{c:C}:fence            counter of fencing tokens
    vx:{c:C}:attempts         hash  lead id -> attempts made
    vx:{c:C}:attempt:A        attempt record
    vx:{c:C}:open             zset  attempt id -> creation (ms), not yet settled
    vx:{c:C}:placing          zset  attempt id -> time (ms), dial request in flight
    vx:{c:C}:pace             zset  claim id -> time (ms), claims of the last minute
    vx:active                 set   ids of active campaigns (the dialers' work list)
    vx:pausing                set   paused campaigns whose ringing calls to cancel
    vx:callsid:SID            "campaign id:attempt id" of a carrier call
    vx:number:E164            set   campaigns calling from this number (inbound)
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "vx"


@dataclass(frozen=True)
class TenantKeys:
    tenant: str

    def _k(self, suffix: str) -> str:
        return f"{PREFIX}:{{t:{self.tenant}}}:{suffix}"

    @property
    def campaigns(self) -> str:
        return self._k("campaigns")

    @property
    def agents(self) -> str:
        return self._k("agents")

    def agent(self, agent_id: str) -> str:
        return self._k(f"agent:{agent_id}")

    @property
    def dnc(self) -> str:
        return self._k("dnc")

    @property
    def api_keys(self) -> str:
        return self._k("keys")

    @property
    def seq(self) -> str:
        return self._k("seq")


ACTIVE = f"{PREFIX}:active"
PAUSING = f"{PREFIX}:pausing"


def call_sid(sid: str) -> str:
    return f"{PREFIX}:callsid:{sid}"


def caller_id(number: str) -> str:
    return f"{PREFIX}:number:{number}"


def api_key(key_hash: str) -> str:
    return f"{PREFIX}:apikey:{key_hash}"


@dataclass(frozen=True)
class CampaignKeys:
    campaign_id: str

    def _k(self, suffix: str) -> str:
        return f"{PREFIX}:{{c:{self.campaign_id}}}:{suffix}"

    @property
    def record(self) -> str:
        return self._k("campaign")

    @property
    def state(self) -> str:
        return self._k("state")

    @property
    def seq(self) -> str:
        return self._k("seq")

    @property
    def leads(self) -> str:
        return self._k("leads")

    @property
    def phones(self) -> str:
        return self._k("phones")

    def status(self, status: str) -> str:
        return self._k(f"status:{status}")

    @property
    def due(self) -> str:
        return self._k("due")

    @property
    def stats(self) -> str:
        return self._k("stats")

    def lead(self, lead_id: str) -> str:
        return self._k(f"lead:{lead_id}")

    def lead_calls(self, lead_id: str) -> str:
        return self._k(f"lead:{lead_id}:calls")

    def call(self, call_id: str) -> str:
        return self._k(f"call:{call_id}")

    @property
    def dnc(self) -> str:
        return self._k("dnc")

    @property
    def leases(self) -> str:
        return self._k("leases")

    @property
    def lease_info(self) -> str:
        return self._k("lease_info")

    @property
    def fence(self) -> str:
        return self._k("fence")

    @property
    def attempts(self) -> str:
        return self._k("attempts")

    def attempt(self, attempt_id: str) -> str:
        return self._k(f"attempt:{attempt_id}")

    @property
    def open(self) -> str:
        return self._k("open")

    @property
    def placing(self) -> str:
        return self._k("placing")

    @property
    def pace(self) -> str:
        return self._k("pace")
