"""The campaign store against a real redis-server."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from campaign_store import codec
from campaign_store.errors import Conflict, NotFound, SchemaError, ServerUnsuitable
from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    AgentInput,
    CallRecordModel,
    CampaignInput,
    CampaignStatus,
    Lead,
    LeadStatus,
    McpBindingInput,
    Schedule,
)
from campaign_store.store import Store, merge_bindings, new_id

TENANT = "acme"


def _lead(campaign_id: str, phone: str, **extra: Any) -> Lead:
    return Lead(
        id=new_id("lead"),
        campaign_id=campaign_id,
        phone=phone,
        timezone="America/New_York",
        **extra,
    )


async def test_refuses_a_server_that_evicts(store: Store) -> None:
    """A server with an eviction policy is refused, with the setting to change."""
    await store.redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(ServerUnsuitable, match="noeviction"):
            await store.check_server()
    finally:
        await store.redis.config_set("maxmemory-policy", "noeviction")
    await store.check_server()


async def test_api_keys_are_stored_hashed(store: Store) -> None:
    """The key authenticates its tenant; Redis never holds the key itself."""
    record, secret = await store.create_api_key(TENANT, "ops")
    assert await store.authenticate(secret) == TENANT
    assert await store.authenticate(secret + "x") is None
    assert await store.authenticate("nonsense") is None
    for key in await store.redis.keys("*"):
        assert secret.encode() not in key
        if await store.redis.type(key) == b"string":
            assert secret.encode() not in await store.redis.get(key)
    await store.revoke_api_key(TENANT, record.id)
    assert await store.authenticate(secret) is None


async def test_tenants_never_see_each_other(store: Store) -> None:
    """Another tenant's campaign, agent and lead are reported as missing."""
    agent = await store.create_agent(TENANT, AgentInput(name="Ada"))
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    lead = _lead(campaign.id, "+14155550123")
    await store.add_leads(campaign, [lead])
    with pytest.raises(NotFound):
        await store.get_campaign("other", campaign.id)
    with pytest.raises(NotFound):
        await store.get_agent("other", agent.id)
    with pytest.raises(NotFound):
        await store.get_lead("other", campaign.id, lead.id)
    assert (await store.list_campaigns("other")).items == []


async def test_status_transitions(store: Store) -> None:
    """draft -> active -> paused -> active -> archived; nothing else."""
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    with pytest.raises(Conflict, match="cannot pause a campaign that is draft"):
        await store.transition(TENANT, campaign.id, "pause")
    for action, status in [
        ("launch", CampaignStatus.ACTIVE),
        ("pause", CampaignStatus.PAUSED),
        ("resume", CampaignStatus.ACTIVE),
        ("archive", CampaignStatus.ARCHIVED),
    ]:
        campaign = await store.transition(TENANT, campaign.id, action)
        assert campaign.status == status
        state = await store.redis.get(CampaignKeys(campaign.id).state)
        assert state.decode() == status.value
    with pytest.raises(Conflict):
        await store.transition(TENANT, campaign.id, "resume")


async def test_edits_follow_the_status(store: Store) -> None:
    """Paused: the schedule may change, the channel not. Active: nothing may."""
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    await store.transition(TENANT, campaign.id, "launch")
    new = Schedule(days=["sat"])
    with pytest.raises(Conflict, match="draft or paused"):
        await store.edit_campaign(
            TENANT,
            campaign.id,
            "schedule",
            lambda c: c.model_copy(update={"schedule": new}),
        )
    await store.transition(TENANT, campaign.id, "pause")
    edited = await store.edit_campaign(
        TENANT,
        campaign.id,
        "schedule",
        lambda c: c.model_copy(update={"schedule": new}),
    )
    assert edited.schedule.days == ["sat"]
    with pytest.raises(Conflict, match="only while draft"):
        await store.edit_campaign(TENANT, campaign.id, "channel", lambda c: c)


async def test_one_lead_per_number(store: Store) -> None:
    """A number the campaign already has is refused, naming the lead that has it."""
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    first = _lead(campaign.id, "+14155550123")
    assert await store.add_leads(campaign, [first]) == []
    again = [_lead(campaign.id, "+14155550124"), _lead(campaign.id, "+14155550123")]
    assert await store.add_leads(campaign, again) == [f"1:{first.id}"]
    counts = await store.lead_counts(campaign.id)
    assert counts["new"] == 2


async def test_lead_pages_and_status_filter(store: Store) -> None:
    """Cursor pages cover every lead once, in order; a status filter uses its index."""
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    leads = [_lead(campaign.id, f"+1415555{i:04d}") for i in range(25)]
    leads[3].status = LeadStatus.DO_NOT_CALL
    await store.add_leads(campaign, leads)
    seen: list[str] = []
    cursor = None
    while True:
        page = await store.list_leads(TENANT, campaign.id, cursor=cursor, limit=10)
        seen += [lead.id for lead in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [lead.id for lead in leads]
    blocked = await store.list_leads(TENANT, campaign.id, status=LeadStatus.DO_NOT_CALL)
    assert [lead.id for lead in blocked.items] == [leads[3].id]
    counts = await store.lead_counts(campaign.id)
    assert counts["new"] == 24 and counts["do_not_call"] == 1


async def test_calls_are_linked_from_their_lead(store: Store) -> None:
    """A saved call is listed on its lead and counted in the campaign's figures."""
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    lead = _lead(campaign.id, "+14155550123")
    await store.add_leads(campaign, [lead])
    call = CallRecordModel(
        id="call-1",
        campaign_id=campaign.id,
        lead_id=lead.id,
        answered_at=100.0,
        ended_at=130.0,
        outcome="qualified",
    )
    await store.save_call(call)
    stored = await store.get_lead(TENANT, campaign.id, lead.id)
    assert stored.calls == ["call-1"]
    calls = await store.lead_calls(TENANT, campaign.id, lead.id)
    assert [c.id for c in calls] == ["call-1"]
    stats = await store.stats(campaign.id)
    assert stats == {"calls": 1.0, "answered": 1.0, "talk_seconds": 30.0}


async def test_old_lead_records_still_read(store: Store) -> None:
    """A lead written with schema version 1 reads, with the fields version 2 added."""
    campaign = await store.create_campaign(TENANT, CampaignInput(name="Spring"))
    old = {
        "k": "lead",
        "v": 1,
        "d": {
            "id": "lead_old",
            "campaign_id": campaign.id,
            "phone": "+14155550123",
            "timezone": "America/Chicago",
        },
    }
    key = CampaignKeys(campaign.id).lead("lead_old")
    await store.redis.set(key, msgpack.packb(old))
    lead = await store.get_lead(TENANT, campaign.id, "lead_old")
    assert lead.timezone == "America/Chicago"
    assert lead.timezone_source == "given"


def test_newer_and_foreign_records_are_refused() -> None:
    """A record from a newer schema or of another kind is an error, not a guess."""
    newer = msgpack.packb({"k": "lead", "v": 99, "d": {}})
    with pytest.raises(SchemaError, match="upgrade"):
        codec.decode("lead", newer, Lead)
    agent = msgpack.packb({"k": "agent", "v": 1, "d": {}})
    with pytest.raises(SchemaError, match="not a lead"):
        codec.decode("lead", agent, Lead)
    with pytest.raises(SchemaError):
        codec.decode("lead", b"\xc1garbage", Lead)


def test_null_header_keeps_the_secret() -> None:
    """Re-sending a binding with a header as null keeps the value already stored."""
    first = merge_bindings(
        [],
        [
            McpBindingInput(
                name="crm", url="https://crm.example/mcp", headers={"X-Key": "s3cret-v"}
            )
        ],
    )
    again = merge_bindings(
        first,
        [
            McpBindingInput(
                name="crm", url="https://crm.example/mcp2", headers={"X-Key": None}
            )
        ],
    )
    assert again[0].headers == {"X-Key": "s3cret-v"}
    assert again[0].url == "https://crm.example/mcp2"
    with pytest.raises(ValueError, match="no value to keep"):
        merge_bindings(
            [],
            [McpBindingInput(name="crm", url="https://x.example", headers={"A": None})],
        )
