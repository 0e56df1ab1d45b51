"""The dialer: active campaigns' due leads into carrier calls.

Each tick, for every active campaign:

1. Leads due by now are read from the campaign's `due` index (oldest first),
   never by scanning the lead list. A lead whose calling window is closed (or
   closes within `START_MARGIN_S`) is moved in the index to the moment it
   opens, so it is not looked at again before then.
2. Each lead whose window is open is claimed (`dialer.claims`); each claim
   becomes an attempt task: record the attempt under the claim's token, wait
   for the carrier-wide pace, ask the carrier to dial, keep the lease alive
   until the attempt is settled.

And, for every campaign this or any dialer has worked on, expired leases are
reconciled (`_reap`): a lease with no attempt recorded goes back to the
queue; one with an attempt is checked against the carrier before the lead
can ever be dialed again.

Any number of dialers may run against one Redis; they coordinate only
through the scripts, and a dialer killed at any point loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from redis.exceptions import RedisError

from campaign_store import codec
from campaign_store.conversations import LEASE_GRACE_S
from campaign_store.errors import NotFound
from campaign_store.keys import ACTIVE, PAUSING, CampaignKeys
from campaign_store.models import (
    Attempt,
    Campaign,
    CampaignStatus,
    Lead,
    LeadStatus,
    PhoneChannel,
    WhatsAppChannel,
)
from campaign_store.store import Store, new_id
from dialer.attempts import Attempts, mask
from dialer.call_status import CallStatus, is_final
from dialer.carrier import Carrier, CarrierError, DialRequest
from dialer.claims import Claim
from dialer.lifecycle import Result
from dialer.messaging import OpeningSender
from dialer.whatsapp import WhatsAppAccount
from dialer.window import DEFAULT_JURISDICTIONS, Jurisdictions, window_for

__all__ = ["Dialer", "DialerConfig"]

log = logging.getLogger(__name__)

DIALING = "vx:dialing"  # campaigns that may hold leases: the reaper's list
CPS = "vx:cps"  # recent dial requests, account-wide
START_MARGIN_S = 60.0

_CPS_GATE = """
-- KEYS: cps   ARGV: now_ms limit id
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - 1000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]), ARGV[3])
return 1
"""


@dataclass(frozen=True)
class DialerConfig:
    public_url: str  # where the carrier reaches voxdial's webhooks
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    lease_s: float = 30.0
    tick_s: float = 0.25
    calls_per_second: float = 1.0  # the carrier account's ceiling
    reconcile_after_s: float = 120.0  # give up waiting for an unknown dial
    record_grace_s: float = 30.0  # wait this long for an answered call's record
    batch: int = 100
    jurisdictions: Jurisdictions = DEFAULT_JURISDICTIONS
    # WhatsApp: how long past its deadline a conversation waits for the
    # media server to close it before the dialer settles it itself.
    conversation_grace_s: float = LEASE_GRACE_S


# A WhatsApp conversation holds its lead's lease for as long as it is open
# (a day, when the lead never answers): those leases are not "calls at once".
UNLIMITED = 1_000_000_000


def _max_attempts(campaign: Campaign) -> int:
    limits = [rule.max_attempts for rule in campaign.follow_ups]
    return max(limits, default=1)


class Dialer:
    """One dialer process's work; several may run side by side."""

    def __init__(
        self,
        store: Store,
        carrier: Carrier,
        config: DialerConfig,
        *,
        clock: Callable[[], float] = time.time,
        whatsapp: WhatsAppAccount | None = None,
    ) -> None:
        self.store = store
        self.redis: Any = store.redis
        self.carrier = carrier
        self.config = config
        self.clock = clock
        self.attempts = Attempts(store, jurisdictions=config.jurisdictions, clock=clock)
        self.claims = self.attempts.claims
        self._cps_gate = store.redis.register_script(_CPS_GATE)
        self._tasks: set[asyncio.Task[None]] = set()
        self.dialed = 0
        self.messaging = (
            None
            if whatsapp is None
            else OpeningSender(
                store,
                self.attempts,
                whatsapp,
                grace_s=config.conversation_grace_s,
                clock=clock,
            )
        )
        self._warned: set[str] = set()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until `stop` is set; then wait for this dialer's calls to settle."""
        log.info("dialer %s started", self.config.owner)
        while not stop.is_set():
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                # Redis restarting, a network blip: nothing is held in memory
                # that the next tick cannot rebuild from Redis.
                log.warning("dialer tick failed (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.tick_s)
        await self.drain()
        sent = self.messaging.sent if self.messaging is not None else 0
        log.info(
            "dialer %s stopped after %d dials and %d templates",
            self.config.owner,
            self.dialed,
            sent,
        )

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def tick(self) -> None:
        for raw in await self.redis.smembers(ACTIVE):
            await self._dial_campaign(raw.decode())
        for raw in await self.redis.smembers(PAUSING):
            await self._cancel_ringing(raw.decode())
        for raw in await self.redis.smembers(DIALING):
            await self._reap(raw.decode())

    # 1. Claiming.

    async def _dial_campaign(self, campaign_id: str) -> None:
        try:
            campaign = await self.store.campaign_by_id(campaign_id)
        except NotFound:
            await self.redis.srem(ACTIVE, campaign_id)
            return
        if campaign.status != CampaignStatus.ACTIVE:
            return
        whatsapp = isinstance(campaign.channel, WhatsAppChannel)
        if not whatsapp and not isinstance(campaign.channel, PhoneChannel):
            return
        if whatsapp and self.messaging is None:
            if campaign_id not in self._warned:
                self._warned.add(campaign_id)
                log.warning(
                    "campaign %s is a WhatsApp campaign and this dialer has no "
                    "WhatsApp access token (VOXDIAL_WHATSAPP_ACCESS_TOKEN)",
                    campaign_id,
                )
            return
        ck = CampaignKeys(campaign_id)
        pacing = campaign.schedule.pacing
        concurrent = UNLIMITED if whatsapp else pacing.max_concurrent
        free = min(concurrent - await self.redis.zcard(ck.leases), self.config.batch)
        if free <= 0:
            return
        now = self.clock()
        ids = await self.redis.zrangebyscore(
            ck.due,
            "-inf",
            int(now * 1000),
            start=0,
            num=max(free * 4, self.config.batch),
        )
        if not ids:
            return
        blobs = await self.redis.mget([ck.lead(i.decode()) for i in ids])
        await self.redis.sadd(DIALING, campaign_id)
        for raw_id, blob in zip(ids, blobs, strict=True):
            if blob is None:
                await self.redis.zrem(ck.due, raw_id)
                continue
            lead = codec.decode("lead", blob, Lead)
            window = window_for(
                campaign.schedule, lead.timezone, lead.phone, self.config.jurisdictions
            )
            now = self.clock()
            closes = window.closes_at(now)
            if closes is None or closes - START_MARGIN_S <= now:
                # Closed, or too near its end to start a call: not looked at
                # again before the window (re)opens.
                opens = window.next_open(
                    now if closes is None else closes, horizon_days=31
                )
                if opens is not None:
                    await self.redis.zadd(ck.due, {lead.id: int(opens * 1000)}, xx=True)
                continue
            closes = min(closes, now + 86_400.0)  # a window that never closes
            claim = await self.claims.claim(
                campaign_id,
                lead.id,
                lead.phone,
                now_ms=int(now * 1000),
                lease_ms=int(self.config.lease_s * 1000),
                # A dial must start well before the window closes, not in
                # its last second: the carrier takes a moment to place it.
                window_end_ms=int((closes - START_MARGIN_S) * 1000),
                max_concurrent=concurrent,
                per_minute=pacing.calls_per_minute,
                max_attempts=_max_attempts(campaign),
                owner=self.config.owner,
            )
            if isinstance(claim, Claim):
                task = asyncio.create_task(self._attempt(claim, campaign, lead))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif claim in ("concurrency", "pace", "not_active"):
                return

    # 2. One attempt.

    async def _attempt(self, claim: Claim, campaign: Campaign, lead: Lead) -> None:
        try:
            await self._place(claim, campaign, lead)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease expires and the reaper reconciles: nothing is lost.
            log.exception("attempt on lead %s failed unexpectedly", lead.id)

    async def _place(self, claim: Claim, campaign: Campaign, lead: Lead) -> None:
        channel = campaign.channel
        whatsapp = isinstance(channel, WhatsAppChannel)
        if isinstance(channel, WhatsAppChannel):
            from_ = channel.phone_number_id
        else:
            assert isinstance(channel, PhoneChannel)
            from_ = channel.caller_id
        attempt_id = new_id("att")
        attempt = Attempt(
            id=attempt_id,
            campaign_id=campaign.id,
            lead_id=lead.id,
            token=claim.token,
            owner=self.config.owner,
            number=0,
            to=lead.phone,
            from_=from_,
            created_at=self.clock(),
            channel="whatsapp" if whatsapp else "phone",
        )
        lease_ms = int(self.config.lease_s * 1000)
        number = await self.claims.record(
            claim,
            attempt_id,
            codec.encode("attempt", attempt),
            now_ms=self._now_ms(),
            lease_ms=lease_ms,
        )
        if isinstance(number, str):
            log.info("attempt on lead %s refused: %s", lead.id, number)
            if number == "not_active":
                await self.claims.release(claim, due_at_ms=self._now_ms())
            return  # fenced or expired: the lead is someone else's now

        def numbered(current: Attempt) -> Attempt:
            current.number = number
            return current

        attempt = await self.attempts.update(campaign.id, attempt_id, numbered)
        if not whatsapp:
            await self._wait_for_carrier_slot(attempt_id)
        # The wait may have been long (or this process stopped): the lease is
        # checked again, as late as can be, before anything reaches the carrier.
        held = await self.claims.confirm(
            claim, now_ms=self._now_ms(), until_ms=self._now_ms() + lease_ms
        )
        if held != "held":
            await self._not_sent(claim, attempt, held)
            return
        ck = CampaignKeys(campaign.id)
        if self.messaging is not None and whatsapp:
            try:
                await self.messaging.send(claim, campaign, lead, attempt)
            finally:
                await self.redis.zrem(ck.placing, attempt_id)
            return
        request = DialRequest(
            attempt_id=attempt_id,
            to=lead.phone,
            from_=from_,
            answer_url=self._url(
                "/twilio/voice",
                call_id=attempt_id,
                lead_id=lead.id,
                campaign_id=campaign.id,
            ),
            status_callback=self._url(
                "/twilio/status", attempt=f"{campaign.id}:{attempt_id}"
            ),
        )
        try:
            sid = await self.carrier.create_call(request)
        except CarrierError as exc:
            await self._not_placed(claim, attempt, exc)
            return
        finally:
            await self.redis.zrem(ck.placing, attempt_id)
        self.dialed += 1
        await self.redis.set(f"vx:callsid:{sid}", f"{campaign.id}:{attempt_id}")

        def placed(current: Attempt) -> Attempt:
            current.placed = "placed"
            current.call_sid = sid
            return current

        await self.attempts.update(campaign.id, attempt_id, placed)
        await self.attempts.mark_status(claim, lead, LeadStatus.DIALING)
        if await self.redis.get(ck.state) != b"active":
            # Paused while the request was on its way: it must not ring on.
            await self._cancel(campaign.id, attempt_id, sid)
        await self._hold(claim, campaign.id, attempt_id)

    async def _not_sent(self, claim: Claim, attempt: Attempt, reason: str) -> None:
        """The dial was refused at the last check: no request went out."""
        log.info("dial of attempt %s not sent: %s", attempt.id, reason)
        await self.redis.zrem(CampaignKeys(attempt.campaign_id).placing, attempt.id)
        if reason in ("fenced", "no_lease"):
            return  # a reaper settled the attempt; the lead is someone else's

        # Still this dialer's lead (expired, or the campaign paused): the
        # attempt is given back and the lead is due again.
        def unsent(current: Attempt) -> Attempt:
            current.placed = "not_placed"
            current.carrier_status = CallStatus.CANCELED.value
            current.error = f"not sent: {reason}"
            return current

        attempt = await self.attempts.update(attempt.campaign_id, attempt.id, unsent)
        await self.attempts.settle(attempt, Result.CANCELED)

    async def _not_placed(
        self, claim: Claim, attempt: Attempt, exc: CarrierError
    ) -> None:
        if exc.placed is False and exc.retryable:
            # Rate limited, or the carrier unreachable before anything was
            # sent: no call exists, so the lead is due again, not penalised.
            log.warning("dial of %s not sent (%s); due again", mask(attempt.to), exc)

            def unsent(current: Attempt) -> Attempt:
                current.placed = "not_placed"
                current.carrier_status = CallStatus.CANCELED.value
                current.error = str(exc)[:300]
                return current

            attempt = await self.attempts.update(
                attempt.campaign_id, attempt.id, unsent
            )
            await self.attempts.settle(attempt, Result.CANCELED)
            return
        if exc.placed is False:
            log.warning("dial of %s refused by the carrier: %s", mask(attempt.to), exc)

            def refused(current: Attempt) -> Attempt:
                current.placed = "not_placed"
                current.carrier_status = CallStatus.FAILED.value
                current.error = str(exc)[:300]
                return current

            attempt = await self.attempts.update(
                attempt.campaign_id, attempt.id, refused
            )
            await self.attempts.settle(attempt, Result.FAILED)
            return
        # The call may exist: keep the lease; the reaper reconciles it.
        log.warning(
            "dial of %s: outcome unknown (%s); reconciling", mask(attempt.to), exc
        )

        def unknown(current: Attempt) -> Attempt:
            current.placed = "unknown"
            current.error = str(exc)[:300]
            return current

        await self.attempts.update(attempt.campaign_id, attempt.id, unknown)

    async def _hold(self, claim: Claim, campaign_id: str, attempt_id: str) -> None:
        """Keep the lease alive until the attempt is settled."""
        step = self.config.lease_s / 3
        renewed = self.clock()
        while True:
            await asyncio.sleep(step)
            if self.clock() - renewed > self.config.lease_s:
                return  # the lease ran out unrenewed: the reaper's now
            try:
                attempt = await self.attempts.get(campaign_id, attempt_id)
                if attempt is None or attempt.settled_at is not None:
                    return
                until = self._now_ms() + int(self.config.lease_s * 1000)
                if not await self.claims.renew(claim, until):
                    return  # settled meanwhile, or taken over
                renewed = self.clock()
                if self._overdue(attempt):
                    # The final callback or the call's record is late (dropped,
                    # the media server down): do what the reaper would do,
                    # rather than hold the lead for as long as this dialer lives.
                    await self._reconcile(claim, attempt_id)
            except (RedisError, OSError) as exc:
                # Redis restarting: the lease outlives a short outage; after a
                # longer one, the lead is left to the reaper.
                log.warning("holding attempt %s: %s", attempt_id, exc)

    def _overdue(self, attempt: Attempt) -> bool:
        """Whether a held attempt waits longer than its callbacks should take."""
        status = attempt.carrier_status
        if status and is_final(CallStatus(status)):
            return self._record_overdue(attempt)
        return self.clock() - attempt.created_at > self.config.reconcile_after_s

    def _record_overdue(self, attempt: Attempt) -> bool:
        """Whether an ended call's record is later than `record_grace_s`.

        The attempt does not keep the call's end, so it is taken as the dial
        plus the talk time; the ringing before makes the grace a little shorter.
        """
        ended = attempt.created_at + (attempt.duration_s or 0)
        return self.clock() - ended > self.config.record_grace_s

    async def _wait_for_carrier_slot(self, attempt_id: str) -> None:
        limit = max(1, int(self.config.calls_per_second))
        # Polled: the slots are shared with every other dialer, in Redis.
        while not await self._cps_gate(  # noqa: ASYNC110
            keys=[CPS], args=[self._now_ms(), limit, attempt_id]
        ):
            await asyncio.sleep(0.05)

    def _url(self, path: str, **query: str) -> str:
        return f"{self.config.public_url.rstrip('/')}{path}?{urlencode(query)}"

    # Pause: ringing calls are canceled.

    async def _cancel_ringing(self, campaign_id: str) -> None:
        ck = CampaignKeys(campaign_id)
        if await self.redis.get(ck.state) == b"active":
            await self.redis.srem(PAUSING, campaign_id)
            return
        pending = False
        for raw in await self.redis.zrange(ck.open, 0, -1):
            attempt = await self.attempts.get(campaign_id, raw.decode())
            if attempt is None or not attempt.call_sid or attempt.answered:
                continue
            status = attempt.carrier_status
            if status in ("", "queued", "initiated", "ringing"):
                pending = True
                await self._cancel(campaign_id, attempt.id, attempt.call_sid)
        if not pending and not await self.redis.zcard(ck.placing):
            await self.redis.srem(PAUSING, campaign_id)

    async def _cancel(self, campaign_id: str, attempt_id: str, sid: str) -> None:
        try:
            canceled = await self.carrier.cancel_call(sid)
        except CarrierError as exc:
            log.warning("cancel of attempt %s failed: %s", attempt_id, exc)
            return
        if canceled:
            log.info("attempt %s canceled: the campaign is paused", attempt_id)

    # 3. Reconciling expired leases.

    async def _reap(self, campaign_id: str) -> None:
        ck = CampaignKeys(campaign_id)
        now_ms = self._now_ms()
        expired = await self.redis.zrangebyscore(
            ck.leases, "-inf", now_ms, start=0, num=50
        )
        if not expired and not await self.redis.zcard(ck.leases):
            if await self.redis.get(ck.state) != b"active":
                await self.redis.srem(DIALING, campaign_id)
            return
        for raw in expired:
            lead_id = raw.decode()
            info = await self.claims.lease_info(campaign_id, lead_id)
            if info is None:
                await self.redis.zrem(ck.leases, lead_id)
                continue
            token, _owner, attempt_id = info
            claim = Claim(campaign_id, lead_id, token)
            if not attempt_id:
                # Claimed, never dialed: back to the queue at once.
                await self.claims.release(claim, due_at_ms=now_ms)
                continue
            await self._reconcile(claim, attempt_id)

    async def _reconcile(self, claim: Claim, attempt_id: str) -> None:
        attempt = await self.attempts.get(claim.campaign_id, attempt_id)
        lease_ms = int(self.config.lease_s * 1000)
        if attempt is None:
            await self.claims.release(claim, due_at_ms=self._now_ms())
            return
        if attempt.settled_at is not None:
            await self.claims.release(claim, due_at_ms=None, attempt_id=attempt_id)
            return
        if attempt.channel == "whatsapp":
            if self.messaging is not None:
                await self.messaging.reconcile(claim, attempt)
            else:
                await self.claims.renew(claim, self._now_ms() + lease_ms)
            return
        status = CallStatus(attempt.carrier_status) if attempt.carrier_status else None
        if status is not None and is_final(status):
            if not await self.attempts.maybe_settle(claim.campaign_id, attempt_id):
                if self._record_overdue(attempt):
                    await self.attempts.maybe_settle(
                        claim.campaign_id, attempt_id, force=True
                    )
                else:
                    await self.claims.renew(claim, self._now_ms() + lease_ms)
            return
        sid = attempt.call_sid
        if not sid:
            sid = await self._find_call(attempt)
        if sid:
            await self._check_call(claim, attempt, sid)
            return
        # Its dialer is gone (the lease expired): its request is no longer
        # in flight, whatever became of it.
        await self.redis.zrem(CampaignKeys(claim.campaign_id).placing, attempt_id)
        if self.clock() - attempt.created_at < self.config.reconcile_after_s:
            await self.claims.renew(claim, self._now_ms() + lease_ms)
            return
        # No callback and no trace at the carrier after the grace period.
        log.warning(
            "attempt %s: no trace at the carrier; counted as unknown", attempt_id
        )

        def unknown(current: Attempt) -> Attempt:
            current.carrier_status = CallStatus.FAILED.value
            return current

        attempt = await self.attempts.update(claim.campaign_id, attempt_id, unknown)
        await self.attempts.settle(attempt, Result.UNKNOWN)

    async def _find_call(self, attempt: Attempt) -> str:
        try:
            calls = await self.carrier.find_calls(
                attempt.to, attempt.from_, attempt.created_at - 5
            )
        except CarrierError as exc:
            log.warning("reconciling attempt %s: %s", attempt.id, exc)
            return ""
        # Another attempt's call to the same number has its SID recorded.
        for call in sorted(calls, key=lambda c: c.created_at or 0):
            owner = await self.redis.get(f"vx:callsid:{call.sid}")
            if owner is None:
                await self.redis.set(
                    f"vx:callsid:{call.sid}", f"{attempt.campaign_id}:{attempt.id}"
                )
                return call.sid
        return ""

    async def _check_call(self, claim: Claim, attempt: Attempt, sid: str) -> None:
        try:
            call = await self.carrier.get_call(sid)
        except CarrierError as exc:
            log.warning("reconciling attempt %s: %s", attempt.id, exc)
            call = None
        lease_ms = int(self.config.lease_s * 1000)
        if call is None or not is_final(call.status):
            await self.claims.renew(claim, self._now_ms() + lease_ms)
            if call is not None:
                await self.attempts.on_status(
                    claim.campaign_id, attempt.id, call.status, call_sid=sid
                )
            return
        await self.attempts.on_status(
            claim.campaign_id,
            attempt.id,
            call.status,
            call_sid=sid,
            answered_by=call.answered_by or "",
            duration_s=call.duration_s,
        )
        if not await self.attempts.maybe_settle(claim.campaign_id, attempt.id):
            await self.claims.renew(claim, self._now_ms() + lease_ms)
