"""Attempts from the carrier's side: status callbacks, call records, settlement.

An attempt is settled exactly once, when both of these are known:

- the carrier's final status (from a status callback, or from the carrier's
  call records when callbacks never came), and
- for a call a person answered, the call's own record (its outcome), which
  the media server stores when the stream ends.

Whichever arrives second settles it: the lead's next state comes from
`dialer.lifecycle.settle`, and the lease is released under the attempt's
fencing token, so that a settlement racing another (a duplicate callback, a
reaper) changes nothing the second time.

A call or conversation no attempt placed (the lead called back, or wrote
first on WhatsApp) moves its lead only when it decided something (booked,
not interested, do not call, a callback time) and only while no dialer holds
the lead: a lead under an attempt is that attempt's to settle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import WatchError

from campaign_store import codec
from campaign_store.errors import NotFound
from campaign_store.keys import CampaignKeys
from campaign_store.models import Attempt, CallRecordModel, Lead, LeadStatus
from campaign_store.store import Store
from dialer.call_status import CallStatus, is_final, merge
from dialer.claims import Claim, Claims
from dialer.lifecycle import FINAL, Result, settle
from dialer.window import DEFAULT_JURISDICTIONS, Jurisdictions, window_for

__all__ = ["Attempts", "result_of"]

log = logging.getLogger(__name__)

_CARRIER_RESULT = {
    CallStatus.BUSY: Result.BUSY,
    CallStatus.NO_ANSWER: Result.NO_ANSWER,
    CallStatus.FAILED: Result.FAILED,
    CallStatus.CANCELED: Result.CANCELED,
}
_OUTCOMES = {r.value: r for r in Result}
# What a call or conversation without an attempt may decide for its lead.
_DECIDED = frozenset(
    {
        Result.QUALIFIED,
        Result.NOT_INTERESTED,
        Result.WRONG_PERSON,
        Result.DO_NOT_CALL,
        Result.CALLBACK,
    }
)


def mask(number: str) -> str:
    return "…" + number[-4:] if len(number) > 4 else "…"


def result_of(attempt: Attempt, record: CallRecordModel | None) -> Result:
    """What an attempt with a final carrier status amounts to."""
    status = CallStatus(attempt.carrier_status)
    if status in _CARRIER_RESULT and not attempt.answered:
        return _CARRIER_RESULT[status]
    if attempt.answered_by.startswith("machine") or attempt.answered_by == "fax":
        return Result.VOICEMAIL
    if record is None:
        return Result.COMPLETED
    return _OUTCOMES.get(record.outcome.replace(" ", "_"), Result.COMPLETED)


class Attempts:
    """Reads and settles attempts; shared by the media server and the dialers."""

    def __init__(
        self,
        store: Store,
        *,
        jurisdictions: Jurisdictions = DEFAULT_JURISDICTIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.redis: Any = store.redis
        self.claims = Claims(store.redis)
        self.jurisdictions = jurisdictions
        self.clock = clock

    async def get(self, campaign_id: str, attempt_id: str) -> Attempt | None:
        blob = await self.redis.get(CampaignKeys(campaign_id).attempt(attempt_id))
        return None if blob is None else codec.decode("attempt", blob, Attempt)

    async def update(
        self, campaign_id: str, attempt_id: str, change: Callable[[Attempt], Attempt]
    ) -> Attempt:
        key = CampaignKeys(campaign_id).attempt(attempt_id)
        updated: Attempt = await self.store._update(
            key, "attempt", Attempt, attempt_id, change
        )
        return updated

    async def on_status(
        self,
        campaign_id: str,
        attempt_id: str,
        status: CallStatus,
        *,
        call_sid: str = "",
        answered_by: str = "",
        duration_s: int | None = None,
    ) -> Attempt | None:
        """A carrier status for the attempt, in any order, any number of times."""

        def change(attempt: Attempt) -> Attempt:
            current = (
                CallStatus(attempt.carrier_status) if attempt.carrier_status else None
            )
            merged = merge(current, status)
            attempt.carrier_status = merged.status.value
            if status is CallStatus.IN_PROGRESS:
                attempt.answered = True
            if call_sid and not attempt.call_sid:
                attempt.call_sid = call_sid
                attempt.placed = "placed"
            if answered_by:
                attempt.answered_by = answered_by
                if answered_by != "unknown":
                    attempt.answered = True
            if duration_s is not None:
                attempt.duration_s = duration_s
                if duration_s > 0 and merged.status is CallStatus.COMPLETED:
                    attempt.answered = True
            return attempt

        try:
            attempt = await self.update(campaign_id, attempt_id, change)
        except NotFound:
            log.warning(
                "status for unknown attempt %s of campaign %s", attempt_id, campaign_id
            )
            return None
        if is_final(CallStatus(attempt.carrier_status)):
            await self.maybe_settle(campaign_id, attempt_id)
        return attempt

    async def maybe_settle(
        self, campaign_id: str, attempt_id: str, *, force: bool = False
    ) -> bool:
        """Settle the attempt if everything it needs is known (or `force`)."""
        attempt = await self.get(campaign_id, attempt_id)
        if attempt is None:
            blob = await self.redis.get(CampaignKeys(campaign_id).call(attempt_id))
            if blob is not None:
                # No attempt placed it: an inbound call.
                inbound = codec.decode("call", blob, CallRecordModel)
                return await self.settle_unattempted(inbound)
            return False
        if attempt.settled_at is not None:
            return False
        if not attempt.carrier_status or not is_final(
            CallStatus(attempt.carrier_status)
        ):
            return False
        record = None
        if attempt.answered and not attempt.answered_by.startswith("machine"):
            blob = await self.redis.get(CampaignKeys(campaign_id).call(attempt_id))
            if blob is None and not force:
                return False  # the call's record settles it when it is stored
            if blob is not None:
                record = codec.decode("call", blob, CallRecordModel)
        result = result_of(attempt, record)
        callback_at = None
        if record is not None:
            callback_at = record.callback_at
        return await self.settle(
            attempt, result, callback_at=callback_at, record=record
        )

    async def settle(
        self,
        attempt: Attempt,
        result: Result,
        *,
        callback_at: float | None = None,
        record: CallRecordModel | None = None,
    ) -> bool:
        """Move the lead on after `attempt` and release it; False if already done."""
        now = self.clock()
        campaign = await self.store.campaign_by_id(attempt.campaign_id)
        lead = await self.store.lead_by_id(attempt.campaign_id, attempt.lead_id)
        window = window_for(
            campaign.schedule, lead.timezone, lead.phone, self.jurisdictions
        )
        number = attempt.number
        refund = result is Result.CANCELED
        if refund:
            # Not held against the lead: the campaign was paused while it rang.
            # The count goes down with the release, so only by the settler
            # that still holds the lease (two settlers may race here).
            number -= 1
        settled = settle(
            result,
            attempts=number,
            rules=campaign.follow_ups,
            window=window,
            now=now,
            callback_at=callback_at,
        )
        previous = lead.status
        if previous not in FINAL:
            lead.status = settled.status
        lead.attempts = number
        lead.last_outcome = result.value
        if record is not None:
            # What the store links when it saves the call, written here too:
            # the two writes may race, and this one replaces the whole lead.
            if record.id not in lead.calls:
                lead.calls.append(record.id)
            for name, value in record.extracted.items():
                if value is not None and value != "":
                    lead.fields[name] = value
        lead.next_attempt_at = None if settled.final else settled.next_attempt_at
        lead.updated_at = now
        released = await self.claims.release(
            Claim(attempt.campaign_id, attempt.lead_id, attempt.token),
            due_at_ms=None
            if lead.next_attempt_at is None or lead.status in FINAL
            else int(lead.next_attempt_at * 1000),
            attempt_id=attempt.id,
            lead_record=codec.encode("lead", lead),
            seq=lead.seq,
            status_from=previous.value,
            status_to=lead.status.value,
            refund=refund,
        )
        if not released:
            # Someone else settled it, or its lease was taken over: only
            # close the attempt's own record.
            log.info("attempt %s: lease no longer held; not settled here", attempt.id)

        def close(current: Attempt) -> Attempt:
            if current.settled_at is None:
                current.result = result.value
                current.settled_at = now
            return current

        await self.update(attempt.campaign_id, attempt.id, close)
        if result is Result.DO_NOT_CALL:
            await self.store.dnc_add(campaign.tenant, [lead.phone])
        if released:
            log.info(
                "attempt %s (%s, lead %s): %s -> %s%s",
                attempt.id,
                mask(attempt.to),
                lead.id,
                result.value,
                lead.status.value,
                "" if lead.next_attempt_at is None else " (tried again later)",
            )
        return released

    async def settle_unattempted(self, record: CallRecordModel) -> bool:
        """Move the lead after a call or conversation no attempt placed.

        Only a decision moves it (see the module docstring), and only while
        no lease is held on it; True if the lead was moved.
        """
        result = _OUTCOMES.get(record.outcome)
        if result not in _DECIDED or not record.lead_id:
            return False
        ck = CampaignKeys(record.campaign_id)
        campaign = await self.store.campaign_by_id(record.campaign_id)
        key = ck.lead(record.lead_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key, ck.lease_info)
                    if await pipe.hexists(ck.lease_info, record.lead_id):
                        return False  # an attempt is under way: its result counts
                    blob = await pipe.get(key)
                    if blob is None:
                        return False
                    lead = codec.decode("lead", blob, Lead)
                    if lead.status in FINAL:
                        return False
                    window = window_for(
                        campaign.schedule, lead.timezone, lead.phone, self.jurisdictions
                    )
                    settled = settle(
                        result,
                        attempts=lead.attempts,
                        rules=campaign.follow_ups,
                        window=window,
                        now=self.clock(),
                        callback_at=record.callback_at,
                    )
                    previous = lead.status
                    lead.status = settled.status
                    lead.last_outcome = result.value
                    lead.next_attempt_at = (
                        None if settled.final else settled.next_attempt_at
                    )
                    lead.updated_at = self.clock()
                    pipe.multi()
                    pipe.set(key, codec.encode("lead", lead))
                    if previous != lead.status:
                        pipe.zrem(ck.status(previous.value), lead.id)
                        pipe.zadd(ck.status(lead.status.value), {lead.id: lead.seq})
                    if lead.next_attempt_at is None:
                        pipe.zrem(ck.due, lead.id)
                    else:
                        due = int(lead.next_attempt_at * 1000)
                        pipe.zadd(ck.due, {lead.id: due})
                    await pipe.execute()
                    break
                except WatchError:
                    continue
        if result is Result.DO_NOT_CALL:
            await self.store.dnc_add(campaign.tenant, [lead.phone])
        log.info(
            "lead %s: %s after a %s it started -> %s",
            lead.id,
            result.value,
            "conversation" if record.channel == "whatsapp" else "call",
            lead.status.value,
        )
        return True

    async def mark_status(self, claim: Claim, lead: Lead, status: LeadStatus) -> bool:
        """Show a lead as dialing or in a call, while its lease is still held."""
        if lead.status in FINAL:
            return False
        previous = lead.status
        lead.status = status
        lead.updated_at = self.clock()
        return await self.claims.write_lead(
            claim, codec.encode("lead", lead), lead.seq, previous.value, status.value
        )
