"""Claiming a lead and recording an attempt: the dialer's atomic steps.

Each step is one Lua script over a single campaign's keys (one hash slot), so
it is atomic on a single server and on a cluster alike. Times are passed in
(milliseconds) rather than read from the server, so that tests can run a
campaign on a simulated clock; dialers on real clocks must keep them in sync
(NTP): a lease is only as good as the clocks' agreement.

The rules the scripts enforce, whatever any dialer process believes:

1. claim: a lead is claimed only if the campaign is active, the lead is due,
   nobody holds a lease on it, fewer than `max_concurrent` leases are live,
   fewer than `per_minute` claims were made in the last minute, its calling
   window is open for at least the lease's first step, its number is not on
   the do-not-call list and its attempts are under the limit. The claim gets
   a lease (expiry) and a fencing token, strictly increasing per campaign.
2. record: before the carrier is asked to dial, the attempt is recorded under
   that token. A dialer whose lease was lost (expired, reclaimed) is refused,
   and so is every dialer once the campaign is not active: after a pause is
   written no attempt starts. confirm: the same checks once more at the last
   moment before the dial request goes out, for a dialer that was stopped
   (SIGSTOP, a long GC, a VM migration) between recording and dialing.
3. renew / release / settle: only the token's holder may extend its lease or
   let the lead go; a released lead is due again at the given time (or never).
   An attempt given back (canceled by a pause) is taken off the lead's count
   by the release itself, so a settlement racing another refunds it once.

A lease that expires without an attempt recorded goes back to the queue. One
that expires with an attempt recorded is reconciled first (the dial may have
reached the carrier): see `dialer.reaper`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from campaign_store.keys import CampaignKeys

__all__ = ["Claim", "Claims"]

_CLAIM = """
-- KEYS: state due leases lease_info fence attempts dnc pace
-- ARGV: lead phone now_ms lease_ms window_end_ms max_concurrent per_minute
--       max_attempts owner
local lead, phone = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
if redis.call('GET', KEYS[1]) ~= 'active' then return {0, 'not_active'} end
local due = redis.call('ZSCORE', KEYS[2], lead)
if not due or tonumber(due) > now then return {0, 'not_due'} end
if redis.call('HEXISTS', KEYS[4], lead) == 1 then return {0, 'leased'} end
if redis.call('SISMEMBER', KEYS[7], phone) == 1 then
  redis.call('ZREM', KEYS[2], lead)
  return {0, 'do_not_call'}
end
local made = tonumber(redis.call('HGET', KEYS[6], lead) or '0')
if made >= tonumber(ARGV[8]) then
  redis.call('ZREM', KEYS[2], lead)
  return {0, 'attempt_limit'}
end
if tonumber(ARGV[5]) <= now then return {0, 'window_closed'} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then return {0, 'concurrency'} end
redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now - 60000)
if redis.call('ZCARD', KEYS[8]) >= tonumber(ARGV[7]) then return {0, 'pace'} end
local token = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[8], now, token)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), lead)
redis.call('HSET', KEYS[4], lead, token .. '|' .. ARGV[9] .. '|')
redis.call('ZREM', KEYS[2], lead)
return {1, token}
"""

_RECORD = """
-- KEYS: state leases lease_info attempts attempt open placing
-- ARGV: lead token now_ms lease_ms attempt_id record
local lead, token = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
local info = redis.call('HGET', KEYS[3], lead)
if not info then return {0, 'no_lease'} end
local held, owner, recorded = string.match(info, '^(%d+)|([^|]*)|(.*)$')
if held ~= token then return {0, 'fenced'} end
-- A retry of a call whose reply was lost: already done.
if recorded == ARGV[5] then return {1, tonumber(redis.call('HGET', KEYS[4], lead))} end
local expiry = redis.call('ZSCORE', KEYS[2], lead)
if not expiry or tonumber(expiry) <= now then return {0, 'lease_expired'} end
if redis.call('GET', KEYS[1]) ~= 'active' then return {0, 'not_active'} end
local made = redis.call('HINCRBY', KEYS[4], lead, 1)
redis.call('HSET', KEYS[3], lead, token .. '|' .. owner .. '|' .. ARGV[5])
redis.call('SET', KEYS[5], ARGV[6])
redis.call('ZADD', KEYS[6], now, ARGV[5])
redis.call('ZADD', KEYS[7], now, ARGV[5])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), lead)
return {1, made}
"""

_CONFIRM = """
-- KEYS: state leases lease_info
-- ARGV: lead token now_ms until_ms
local info = redis.call('HGET', KEYS[3], ARGV[1])
if not info then return 'no_lease' end
if string.match(info, '^(%d+)|') ~= ARGV[2] then return 'fenced' end
local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not expiry or tonumber(expiry) <= tonumber(ARGV[3]) then
  return 'lease_expired'
end
if redis.call('GET', KEYS[1]) ~= 'active' then return 'not_active' end
redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[1])
return 'held'
"""

_RENEW = """
-- KEYS: leases lease_info
-- ARGV: lead token until_ms
local info = redis.call('HGET', KEYS[2], ARGV[1])
if not info or string.match(info, '^(%d+)|') ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[1])
return 1
"""

_RELEASE = """
-- KEYS: leases lease_info due open placing lead_key status_from status_to
--       attempts
-- ARGV: lead token due_at_ms_or_empty attempt_id_or_empty lead_record_or_empty
--       seq refund
local lead, token = ARGV[1], ARGV[2]
local info = redis.call('HGET', KEYS[2], lead)
if not info or string.match(info, '^(%d+)|') ~= token then return 0 end
redis.call('HDEL', KEYS[2], lead)
-- An attempt not held against the lead is given back with the lease, once.
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[9], lead, -1) end
redis.call('ZREM', KEYS[1], lead)
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('ZREM', KEYS[5], ARGV[4])
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]), lead)
else
  redis.call('ZREM', KEYS[3], lead)
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[6], ARGV[5])
  if KEYS[7] ~= KEYS[8] then
    redis.call('ZREM', KEYS[7], lead)
    redis.call('ZADD', KEYS[8], tonumber(ARGV[6]), lead)
  end
end
return 1
"""

_WRITE = """
-- KEYS: lease_info lead_key status_from status_to
-- ARGV: lead token lead_record seq
local info = redis.call('HGET', KEYS[1], ARGV[1])
if not info or string.match(info, '^(%d+)|') ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
if KEYS[3] ~= KEYS[4] then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], tonumber(ARGV[4]), ARGV[1])
end
return 1
"""


@dataclass(frozen=True)
class Claim:
    """A lead held by this dialer: its lease's fencing token."""

    campaign_id: str
    lead_id: str
    token: str


class Claims:
    """The scripts, registered once per Redis client."""

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._record = redis.register_script(_RECORD)
        self._renew = redis.register_script(_RENEW)
        self._confirm = redis.register_script(_CONFIRM)
        self._release = redis.register_script(_RELEASE)
        self._write = redis.register_script(_WRITE)

    async def write_lead(
        self, claim: Claim, record: bytes, seq: int, status_from: str, status_to: str
    ) -> bool:
        """Write the lead's record only while `claim` still holds its lease."""
        ck = CampaignKeys(claim.campaign_id)
        keys = [
            ck.lease_info,
            ck.lead(claim.lead_id),
            ck.status(status_from),
            ck.status(status_to),
        ]
        done = await self._write(
            keys=keys, args=[claim.lead_id, claim.token, record, seq]
        )
        return bool(done)

    async def claim(
        self,
        campaign_id: str,
        lead_id: str,
        phone: str,
        *,
        now_ms: int,
        lease_ms: int,
        window_end_ms: int,
        max_concurrent: int,
        per_minute: int,
        max_attempts: int,
        owner: str,
    ) -> Claim | str:
        """The claim, or why the lead was not claimed."""
        ck = CampaignKeys(campaign_id)
        keys = [
            ck.state, ck.due, ck.leases, ck.lease_info, ck.fence,
            ck.attempts, ck.dnc, ck.pace,
        ]  # fmt: skip
        args = [
            lead_id, phone, now_ms, lease_ms, window_end_ms, max_concurrent,
            per_minute, max_attempts, owner,
        ]  # fmt: skip
        ok, value = await self._claim(keys=keys, args=args)
        if ok:
            return Claim(campaign_id, lead_id, str(value))
        return str(value.decode() if isinstance(value, bytes) else value)

    async def record(
        self,
        claim: Claim,
        attempt_id: str,
        record: bytes,
        *,
        now_ms: int,
        lease_ms: int,
    ) -> int | str:
        """The attempt's number for this lead, or why it was refused."""
        ck = CampaignKeys(claim.campaign_id)
        keys = [
            ck.state, ck.leases, ck.lease_info, ck.attempts,
            ck.attempt(attempt_id), ck.open, ck.placing,
        ]  # fmt: skip
        args = [claim.lead_id, claim.token, now_ms, lease_ms, attempt_id, record]
        ok, value = await self._record(keys=keys, args=args)
        if ok:
            return int(value)
        return str(value.decode() if isinstance(value, bytes) else value)

    async def confirm(self, claim: Claim, *, now_ms: int, until_ms: int) -> str:
        """ "held" (and the lease extended), or why the dial must not go out."""
        ck = CampaignKeys(claim.campaign_id)
        value = await self._confirm(
            keys=[ck.state, ck.leases, ck.lease_info],
            args=[claim.lead_id, claim.token, now_ms, until_ms],
        )
        return str(value.decode() if isinstance(value, bytes) else value)

    async def renew(self, claim: Claim, until_ms: int) -> bool:
        ck = CampaignKeys(claim.campaign_id)
        done = await self._renew(
            keys=[ck.leases, ck.lease_info], args=[claim.lead_id, claim.token, until_ms]
        )
        return bool(done)

    async def release(
        self,
        claim: Claim,
        *,
        due_at_ms: int | None,
        attempt_id: str = "",
        lead_record: bytes = b"",
        seq: int = 0,
        status_from: str = "",
        status_to: str = "",
        refund: bool = False,
    ) -> bool:
        """Let the lead go (due again at `due_at_ms`, or never), writing its record.

        `refund` takes the attempt back from the lead's count (a call canceled
        by a pause), in the same step, so that only the holder does it.
        """
        ck = CampaignKeys(claim.campaign_id)
        keys = [
            ck.leases, ck.lease_info, ck.due, ck.open, ck.placing,
            ck.lead(claim.lead_id),
            ck.status(status_from or "none"), ck.status(status_to or "none"),
            ck.attempts,
        ]  # fmt: skip
        args = [
            claim.lead_id, claim.token,
            "" if due_at_ms is None else due_at_ms,
            attempt_id, lead_record, seq, "1" if refund else "",
        ]  # fmt: skip
        done = await self._release(keys=keys, args=args)
        return bool(done)

    async def lease_info(
        self, campaign_id: str, lead_id: str
    ) -> tuple[str, str, str] | None:
        """(token, owner, attempt id) of the lead's lease, if it has one."""
        raw = await self.redis.hget(CampaignKeys(campaign_id).lease_info, lead_id)
        if raw is None:
            return None
        token, owner, attempt = raw.decode().split("|", 2)
        return token, owner, attempt
