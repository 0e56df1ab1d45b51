"""A WhatsApp agent's MCP tools, and its answers' timing against the webhook.

An answer that comes too late for the service window is not sent; messages
that come while the agent is writing are taken at once and answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from campaign_store.models import (
    AgentInput,
    AgentTool,
    CampaignInput,
    FieldDef,
    HourRange,
    Lead,
    LeadStatus,
    McpBindingInput,
    Schedule,
    WhatsAppChannel,
    WhatsAppTemplate,
)
from campaign_store.store import Store, new_id
from dialer.whatsapp_standin import Contact, WhatsAppStandin
from pipelines.models import Models
from tests.conftest import dialing, run_harness, until_true
from tests.pipelines.mcp_server_app import CRM_AUTH, McpTestServer
from voice.settings import Settings

T = "acme"
NUMBER_ID = "106540352242922"
TOKEN = "EAAG-tools-token"
SECRET = "app-secret-tools"
LEAD = "+12125550171"


@pytest.fixture(scope="module")
def instant_models() -> Models:
    return Models.instant(smart_turn=False)


@pytest.fixture(scope="module")
def crm() -> Iterator[McpTestServer]:
    server = McpTestServer("streamable_http")
    server.start()
    yield server
    server.stop()


def _standin(contact: Contact, service_window_s: float = 86_400.0) -> WhatsAppStandin:
    """The Cloud API with the "hello" template, and the one lead on it."""
    return WhatsAppStandin(
        access_token=TOKEN,
        app_secret=SECRET,
        phone_number_id=NUMBER_ID,
        templates={("hello", "en_US"): 1},
        contacts={LEAD: contact},
        service_window_s=service_window_s,
    )


def _settings(
    settings: Settings, standin: WhatsAppStandin, window_s: float
) -> Settings:
    return replace(
        settings,
        whatsapp_api_base=standin.base_url,
        whatsapp_access_token=TOKEN,
        whatsapp_app_secret=SECRET,
        whatsapp_service_window_s=window_s,
        whatsapp_sweep_s=0.1,
    )


async def _launch(
    store: Store, bindings: list[McpBindingInput] | None = None
) -> tuple[str, Lead]:
    agent = await store.create_agent(
        T,
        AgentInput(
            name="Support",
            system_prompt="You help customers of the CRM.",
            greeting="Hello {{name}}.",
            tools=[AgentTool.END_CALL],
        ),
    )
    campaign = await store.create_campaign(
        T,
        CampaignInput(
            name="tools",
            agent_id=agent.id,
            channel=WhatsAppChannel(
                business_account_id="100200300400500",
                phone_number_id=NUMBER_ID,
                template=WhatsAppTemplate(
                    name="hello", language="en_US", variables=["name"]
                ),
            ),
            schedule=Schedule(
                days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                hours=[HourRange(start="00:00", end="24:00")],
            ),
            fields=[FieldDef(name="crm_id")],
            mcp_bindings=bindings or [],
        ),
    )
    lead = Lead(
        id=new_id("lead"),
        campaign_id=campaign.id,
        phone=LEAD,
        name="Dana",
        timezone="America/New_York",
        fields={"crm_id": "C-1001"},
    )
    await store.add_leads(campaign, [lead])
    await store.transition(T, campaign.id, "launch")
    return campaign.id, lead


async def test_an_mcp_tool_answers_in_writing(
    instant_models: Models, settings: Settings, store: Store, crm: McpTestServer
) -> None:
    """The lead's question goes to the CRM over MCP; the answer is written back."""
    script: dict[str, Any] = {
        "rules": [
            {
                "pattern": r"\bplan\b",
                "tool_calls": [
                    {"name": "crm__lookup_customer", "arguments": {"crm_id": "C-1001"}}
                ],
            },
            {"pattern": "tool:crm__lookup_customer", "reply": "Here: {tool_result}"},
        ],
        "default_reply": "Thanks.",
    }
    binding = McpBindingInput(
        name="crm",
        url=crm.url,
        allowed_tools=["lookup_customer"],
        headers={"Authorization": CRM_AUTH, "X-CRM-Id": "{{crm_id}}"},
    )
    contact = Contact(name="Dana", replies=("Which plan am I on?",))
    async with _standin(contact) as standin:
        settings = _settings(settings, standin, 60.0)
        async with run_harness(instant_models, settings, script, store=store) as h:
            standin.webhook_url = f"{h.url}/whatsapp/webhook"
            await _launch(store, [binding])

            async def answered() -> bool:
                return any(m.type == "text" for m in standin.sent_to(LEAD))

            async with dialing(store, settings, "", h.url, 5.0, whatsapp=True):
                await until_true(answered, 20, "the agent's written answer")
            requests = h.llm.requests
    [text] = [m.text for m in standin.sent_to(LEAD) if m.type == "text"]
    assert "Dana Reyes, plan Gold" in text
    assert crm.seen.headers[-1]["x-crm-id"] == "C-1001"
    assert CRM_AUTH not in str(requests)


async def test_an_answer_past_the_service_window_is_not_sent(
    instant_models: Models, settings: Settings, store: Store
) -> None:
    """The model took longer than the window had left: no free text goes out."""
    script = {"default_reply": "Too late, sadly.", "first_token_delay_s": 1.5}
    contact = Contact(name="Dana", replies=("Hello?",))
    async with _standin(contact, service_window_s=1.0) as standin:
        settings = _settings(settings, standin, 1.0)
        async with run_harness(instant_models, settings, script, store=store) as h:
            standin.webhook_url = f"{h.url}/whatsapp/webhook"
            campaign_id, lead = await _launch(store)

            async def lapsed() -> bool:
                current = await store.lead_by_id(campaign_id, lead.id)
                return current.status is LeadStatus.NO_ANSWER

            async with dialing(store, settings, "", h.url, 5.0, whatsapp=True):
                await until_true(lapsed, 20, "the conversation lapsed")
            assert h.services.whatsapp is not None
            await h.services.whatsapp.idle()
    assert [m.type for m in standin.sent_to(LEAD)] == ["template"]
    assert standin.violations() == []


async def test_messages_during_an_answer_are_taken_at_once_and_answered(
    instant_models: Models, settings: Settings, store: Store
) -> None:
    """Meta's webhook never waits for the model; each message gets its answer."""
    script = {"default_reply": "Noted.", "first_token_delay_s": 0.8}
    async with _standin(Contact(name="Dana")) as standin:
        settings = _settings(settings, standin, 60.0)
        async with run_harness(instant_models, settings, script, store=store) as h:
            standin.webhook_url = f"{h.url}/whatsapp/webhook"
            campaign_id, lead = await _launch(store)

            async def messaged() -> bool:
                current = await store.lead_by_id(campaign_id, lead.id)
                return current.status is LeadStatus.MESSAGED

            async with dialing(store, settings, "", h.url, 5.0, whatsapp=True):
                await until_true(messaged, 10, "the template sent")
                await standin.wait_idle()
                started = time.monotonic()
                await standin.send_from_contact(LEAD, "Hi.")
                await asyncio.sleep(0.2)  # the agent is writing its answer
                await standin.send_from_contact(LEAD, "One more thing.")
                taken_s = time.monotonic() - started

                async def both() -> bool:
                    texts = [m for m in standin.sent_to(LEAD) if m.type == "text"]
                    return len(texts) == 2

                await until_true(both, 10, "two answers")
                assert h.services.whatsapp is not None
                await h.services.whatsapp.idle()
            [record] = await store.lead_calls(T, campaign_id, lead.id)
    # Both webhooks were answered well before one answer could be written.
    assert taken_s < 0.8
    assert [t.speaker for t in record.transcript] == ["lead", "lead", "agent", "agent"]
    assert record.lead_messages_answered == 2
