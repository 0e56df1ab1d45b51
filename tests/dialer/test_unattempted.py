"""Calls and conversations no attempt placed: what they may decide for a lead."""

from __future__ import annotations

import time

from campaign_store.keys import CampaignKeys
from campaign_store.models import CallRecordModel, LeadStatus
from campaign_store.store import Store, new_id
from dialer.attempts import Attempts
from tests.dialer.conftest import ANYTIME, seed


def _inbound(campaign_id: str, lead_id: str, outcome: str) -> CallRecordModel:
    now = time.time()
    return CallRecordModel(
        id=new_id("call"),
        campaign_id=campaign_id,
        lead_id=lead_id,
        answered_at=now - 30,
        ended_at=now,
        outcome=outcome,
    )


async def test_a_decisive_inbound_call_moves_its_lead(store: Store) -> None:
    """Booked on a call-back: qualified, and out of the dialer's queue."""
    campaign, [lead] = await seed(store, [("+12125550161", "America/New_York")])
    attempts = Attempts(store, jurisdictions=ANYTIME)
    record = _inbound(campaign.id, lead.id, "qualified")
    await store.save_call(record)
    assert await attempts.maybe_settle(campaign.id, record.id)
    after = await store.lead_by_id(campaign.id, lead.id)
    assert after.status is LeadStatus.QUALIFIED and after.next_attempt_at is None
    ck = CampaignKeys(campaign.id)
    assert await store.redis.zscore(ck.due, lead.id) is None
    assert await store.lead_counts(campaign.id) == {
        **{s.value: 0 for s in LeadStatus},
        "qualified": 1,
    }


async def test_an_undecided_or_leased_lead_is_left_to_the_dialer(
    store: Store,
) -> None:
    """A plain chat changes nothing; nor does anything while an attempt is held."""
    campaign, [chatty, held] = await seed(
        store,
        [("+12125550162", "America/New_York"), ("+12125550163", "America/New_York")],
    )
    attempts = Attempts(store, jurisdictions=ANYTIME)
    record = _inbound(campaign.id, chatty.id, "completed")
    await store.save_call(record)
    assert not await attempts.maybe_settle(campaign.id, record.id)
    assert (await store.lead_by_id(campaign.id, chatty.id)).status is LeadStatus.NEW

    now_ms = int(time.time() * 1000)
    claim = await attempts.claims.claim(
        campaign.id,
        held.id,
        held.phone,
        now_ms=now_ms,
        lease_ms=30_000,
        window_end_ms=now_ms + 3_600_000,
        max_concurrent=10,
        per_minute=60,
        max_attempts=3,
        owner="test",
    )
    assert not isinstance(claim, str)
    record = _inbound(campaign.id, held.id, "not_interested")
    await store.save_call(record)
    assert not await attempts.maybe_settle(campaign.id, record.id)
    assert (await store.lead_by_id(campaign.id, held.id)).status is LeadStatus.NEW
