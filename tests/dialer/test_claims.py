"""The claim and record scripts against a real redis-server."""

from __future__ import annotations

from typing import Any

from campaign_store import codec
from campaign_store.keys import CampaignKeys
from campaign_store.models import Attempt, CampaignInput, Lead
from campaign_store.store import Store, new_id
from dialer.claims import Claim, Claims

T = "acme"
NOW = 1_800_000_000_000  # ms


async def _campaign(store: Store, leads: int = 3) -> tuple[str, list[Lead]]:
    campaign = await store.create_campaign(T, CampaignInput(name="C"))
    rows = [
        Lead(
            id=new_id("lead"),
            campaign_id=campaign.id,
            phone=f"+1212555{i:04d}",
            timezone="America/New_York",
        )
        for i in range(leads)
    ]
    await store.add_leads(campaign, rows)
    await store.transition(T, campaign.id, "launch")
    return campaign.id, rows


def _args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "now_ms": NOW,
        "lease_ms": 30_000,
        "window_end_ms": NOW + 3_600_000,
        "max_concurrent": 5,
        "per_minute": 100,
        "max_attempts": 3,
        "owner": "d1",
    }
    args.update(over)
    return args


def _attempt(claim: Claim) -> tuple[str, bytes]:
    attempt_id = new_id("att")
    record = Attempt(
        id=attempt_id,
        campaign_id=claim.campaign_id,
        lead_id=claim.lead_id,
        token=claim.token,
        owner="d1",
        number=0,
        to="+12125550000",
        from_="+14155550100",
        created_at=NOW / 1000,
    )
    return attempt_id, codec.encode("attempt", record)


async def test_one_claim_per_lead(store: Store) -> None:
    """A claimed lead is not claimable again until released; tokens increase."""
    cid, leads = await _campaign(store)
    claims = Claims(store.redis)
    first = await claims.claim(cid, leads[0].id, leads[0].phone, **_args())
    assert isinstance(first, Claim)
    again = await claims.claim(cid, leads[0].id, leads[0].phone, **_args(owner="d2"))
    assert again in ("leased", "not_due")
    second = await claims.claim(cid, leads[1].id, leads[1].phone, **_args())
    assert isinstance(second, Claim) and int(second.token) > int(first.token)


async def test_claim_checks_every_rule(store: Store) -> None:
    """Paused, window closed, concurrency, pace, do-not-call, attempt limit."""
    cid, leads = await _campaign(store, leads=5)
    claims = Claims(store.redis)
    lead = leads[0]
    assert (
        await claims.claim(cid, lead.id, lead.phone, **_args(window_end_ms=NOW))
        == "window_closed"
    )
    assert (
        await claims.claim(cid, lead.id, lead.phone, **_args(max_concurrent=0))
        == "concurrency"
    )
    assert await claims.claim(cid, lead.id, lead.phone, **_args(per_minute=0)) == "pace"
    await store.redis.hset(CampaignKeys(cid).attempts, lead.id, 3)
    assert await claims.claim(cid, lead.id, lead.phone, **_args()) == "attempt_limit"
    await store.dnc_add(T, [leads[1].phone])
    assert (
        await claims.claim(cid, leads[1].id, leads[1].phone, **_args()) == "do_not_call"
    )
    await store.transition(T, cid, "pause")
    assert (
        await claims.claim(cid, leads[2].id, leads[2].phone, **_args()) == "not_active"
    )


async def test_a_lost_lease_cannot_record(store: Store) -> None:
    """After its lease expires and another dialer claims, the first is fenced off."""
    cid, leads = await _campaign(store)
    claims = Claims(store.redis)
    lead = leads[0]
    stale = await claims.claim(cid, lead.id, lead.phone, **_args(lease_ms=1000))
    assert isinstance(stale, Claim)
    # The lease runs out; a reaper gives the lead back; another dialer claims.
    assert await claims.release(stale, due_at_ms=NOW)
    fresh = await claims.claim(
        cid, lead.id, lead.phone, **_args(now_ms=NOW + 2000, owner="d2")
    )
    assert isinstance(fresh, Claim)
    attempt_id, record = _attempt(stale)
    refused = await claims.record(
        stale, attempt_id, record, now_ms=NOW + 2500, lease_ms=30_000
    )
    assert refused == "fenced"
    attempt_id, record = _attempt(fresh)
    assert (
        await claims.record(
            fresh, attempt_id, record, now_ms=NOW + 2500, lease_ms=30_000
        )
        == 1
    )


async def test_expired_lease_cannot_record(store: Store) -> None:
    """A holder past its lease (paused process) is refused even if nobody took over."""
    cid, leads = await _campaign(store)
    claims = Claims(store.redis)
    claim = await claims.claim(cid, leads[0].id, leads[0].phone, **_args(lease_ms=1000))
    assert isinstance(claim, Claim)
    attempt_id, record = _attempt(claim)
    late = await claims.record(
        claim, attempt_id, record, now_ms=NOW + 5000, lease_ms=30_000
    )
    assert late == "lease_expired"


async def test_no_attempt_is_recorded_after_a_pause(store: Store) -> None:
    """A claim made before the pause cannot start its dial after it."""
    cid, leads = await _campaign(store)
    claims = Claims(store.redis)
    claim = await claims.claim(cid, leads[0].id, leads[0].phone, **_args())
    assert isinstance(claim, Claim)
    await store.transition(T, cid, "pause")
    attempt_id, record = _attempt(claim)
    assert (
        await claims.record(claim, attempt_id, record, now_ms=NOW, lease_ms=30_000)
        == "not_active"
    )


async def test_release_is_for_the_token_holder_only(store: Store) -> None:
    """A stale token cannot release or renew; the holder's release re-queues."""
    cid, leads = await _campaign(store)
    claims = Claims(store.redis)
    claim = await claims.claim(cid, leads[0].id, leads[0].phone, **_args())
    assert isinstance(claim, Claim)
    forged = Claim(cid, leads[0].id, str(int(claim.token) + 100))
    assert not await claims.release(forged, due_at_ms=NOW)
    assert not await claims.renew(forged, NOW + 99_000)
    assert await claims.renew(claim, NOW + 99_000)
    assert await claims.release(claim, due_at_ms=NOW + 5000)
    due = await store.redis.zscore(CampaignKeys(cid).due, leads[0].id)
    assert due == NOW + 5000
