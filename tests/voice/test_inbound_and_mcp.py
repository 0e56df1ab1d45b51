"""Leads calling back, and a campaign's MCP tools used during a live call."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from benchmarks.caller import SimulatedCaller
from campaign_store.models import (
    AgentInput,
    Campaign,
    CampaignInput,
    Lead,
    McpBindingInput,
    PhoneChannel,
)
from campaign_store.store import Store, new_id
from tests.conftest import Harness, run_harness
from tests.pipelines.mcp_server_app import CRM_AUTH, McpTestServer
from voice.settings import Settings

pytestmark = pytest.mark.models

T = "acme"
OUR_NUMBER = "+14155550100"
ADA = "+12125550101"

SCRIPT = {
    "rules": [
        {
            "pattern": r"appointment",
            "reply": "Let me check the calendar system.",
            "tool_calls": [{"name": "crm__slow", "arguments": {"seconds": 2.5}}],
        },
        {
            "pattern": "tool:crm__slow",
            "reply": "Thanks for waiting. Tuesday works.",
            "tool_calls": [{"name": "crm__broken", "arguments": {}}],
        },
        {"pattern": "tool:crm__broken", "reply": "Anything else?"},
    ],
    "default_reply": "I see.",
}


async def _campaign(
    store: Store, bindings: list[McpBindingInput] | None = None
) -> Campaign:
    agent = await store.create_agent(
        T,
        AgentInput(
            name="Clinic",
            system_prompt="You help patients of the clinic.",
            greeting="Hello {{name}}, this is the clinic.",
        ),
    )
    campaign = await store.create_campaign(
        T,
        CampaignInput(
            name="Visits",
            agent_id=agent.id,
            channel=PhoneChannel(caller_id=OUR_NUMBER),
            mcp_bindings=bindings or [],
        ),
    )
    lead = Lead(
        id=new_id("lead"),
        campaign_id=campaign.id,
        phone=ADA,
        name="Ada",
        timezone="America/New_York",
        attempts=2,
        last_outcome="no_answer",
    )
    await store.add_leads(campaign, [lead])
    return campaign


async def _answer_inbound(h: Harness, caller_number: str) -> dict[str, str]:
    form = {
        "CallSid": "CA" + "7" * 32,
        "AccountSid": "AC" + "0" * 32,
        "From": caller_number,
        "To": OUR_NUMBER,
        "Direction": "inbound",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(h.url + "/twilio/voice", data=form) as response,
    ):
        assert response.status == 200
        root = ET.fromstring(await response.text())
    stream = root.find("./Connect/Stream")
    assert stream is not None
    return {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


async def _until(check: Any, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_a_lead_calling_back_gets_its_campaigns_agent(
    models: Any, settings: Settings, store: Store, phrases: dict[str, Any]
) -> None:
    """Matched by number: the lead's fields and history, the call on the lead."""
    campaign = await _campaign(store)
    async with run_harness(models, settings, SCRIPT, store=store) as h:
        params = await _answer_inbound(h, ADA)
        assert params["campaign_id"] == campaign.id and params["lead_id"]
        async with SimulatedCaller(h.ws_url, custom_parameters=params) as caller:
            await caller.wait_agent_done(limit_s=15)
            await caller.say(phrases["story"])
            await caller.wait_agent_done(time.monotonic(), limit_s=15)
        system = h.llm.requests[0]["messages"][0]["content"]
        assert "inbound" in system and "Earlier calls to this lead: 2" in system
        assert '"name": "Ada"' in system

        lead = await store.lead_for_number(campaign.id, ADA)
        assert lead is not None

        async def stored() -> bool:
            return bool(await store.lead_calls(T, campaign.id, lead.id, limit=5))

        deadline = time.monotonic() + 5
        while not await stored():
            assert time.monotonic() < deadline, "the call was not stored on the lead"
            await asyncio.sleep(0.05)
        (call,) = await store.lead_calls(T, campaign.id, lead.id, limit=5)
        assert call.transcript[0].text == "Hello Ada, this is the clinic."


async def test_an_unknown_caller_gets_the_agent_without_lead_fields(
    models: Any, settings: Settings, store: Store
) -> None:
    """A number no lead has: the campaign's agent, greeting without a name."""
    campaign = await _campaign(store)
    async with run_harness(models, settings, SCRIPT, store=store) as h:
        params = await _answer_inbound(h, "+12125550199")
        assert params["campaign_id"] == campaign.id and params["lead_id"] == ""
        async with SimulatedCaller(h.ws_url, custom_parameters=params) as caller:
            await caller.wait_agent_done(limit_s=15)
        record = await h.wait_record(params["call_id"])
        assert record["transcript"][0]["text"] == "Hello, this is the clinic."


@pytest.fixture(scope="module")
def crm() -> Iterator[McpTestServer]:
    server = McpTestServer("streamable_http")
    server.start()
    yield server
    server.stop()


async def test_a_slow_then_failing_mcp_tool_never_leaves_dead_air(
    models: Any,
    settings: Settings,
    store: Store,
    phrases: dict[str, Any],
    crm: McpTestServer,
) -> None:
    """The slow tool gets a holding line, the broken one an answer; headers hidden."""
    binding = McpBindingInput(
        name="crm",
        url=crm.url,
        transport="streamable_http",
        allowed_tools=["slow", "broken"],
        headers={"Authorization": CRM_AUTH},
    )
    campaign = await _campaign(store, [binding])
    lead = await store.lead_for_number(campaign.id, ADA)
    assert lead is not None
    params = {"campaign_id": campaign.id, "lead_id": lead.id, "call_id": "c-mcp"}
    async with run_harness(models, settings, SCRIPT, store=store) as h:
        async with SimulatedCaller(h.ws_url, custom_parameters=params) as caller:
            await caller.wait_agent_done(limit_s=15)
            await caller.say(phrases["appointment"])
            said = time.monotonic()
            await _until(lambda: "broken" in crm.seen.calls, 20, "the broken tool")
            await caller.wait_agent_done(said + 4.0, limit_s=20)
        requests = h.llm.requests
        offered = {t["function"]["name"] for t in requests[-1]["tools"]}
        assert {"crm__slow", "crm__broken", "end_call"} <= offered
        tool_results = [m for m in requests[-1]["messages"] if m["role"] == "tool"]
        assert "did not answer" in tool_results[-1]["content"]
        assert CRM_AUTH not in str(requests)
    (call,) = await store.lead_calls(T, campaign.id, lead.id, limit=5)
    agent_said = " ".join(t.text for t in call.transcript if t.speaker == "agent")
    assert "One moment" in agent_said and "Tuesday works" in agent_said
    assert "Anything else" in agent_said
