"""The dialer's WhatsApp side under faults: at most one template per attempt.

Real Redis, the real Graph API client, the Cloud API stand-in; no media
server unless a test needs one, which is how "the media server is down"
is played.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aiohttp import ClientSession, web

from campaign_store.models import (
    Campaign,
    CampaignInput,
    CampaignStatus,
    FollowUpRule,
    Lead,
    LeadStatus,
    WhatsAppChannel,
    WhatsAppTemplate,
)
from campaign_store.store import Store, new_id
from dialer.attempts import Attempts
from dialer.whatsapp_standin import Contact, WhatsAppStandin
from pipelines.models import Models
from tests.conftest import dialing, run_harness, until_true
from tests.dialer.conftest import ALL_DAY, NOWHERE, T
from voice.settings import Settings

NUMBER_ID = "106540352242922"
TOKEN = "EAAG-dialer-token"
SECRET = "app-secret-dialer"
LEAD = "+12125550131"


def _standin(contacts: dict[str, Contact] | None = None) -> WhatsAppStandin:
    """The Cloud API with one approved template, "hello" (one variable)."""
    return WhatsAppStandin(
        access_token=TOKEN,
        app_secret=SECRET,
        phone_number_id=NUMBER_ID,
        templates={("hello", "en_US"): 1},
        contacts=contacts or {},
    )


def _settings(settings: Settings, api_base: str) -> Settings:
    return replace(
        settings,
        whatsapp_api_base=api_base,
        whatsapp_access_token=TOKEN,
        whatsapp_app_secret=SECRET,
        whatsapp_verify_token="verify",
        whatsapp_sweep_s=0.1,
    )


async def _campaign(
    store: Store,
    *,
    template: str = "hello",
    reply_wait_minutes: float = 0.02,
    follow_ups: list[FollowUpRule] | None = None,
) -> tuple[Campaign, Lead]:
    from campaign_store.models import AgentInput

    agent = await store.create_agent(
        T, AgentInput(name="Agent", system_prompt="Be brief.", greeting="Hi {{name}}")
    )
    campaign = await store.create_campaign(
        T,
        CampaignInput(
            name="wa",
            agent_id=agent.id,
            channel=WhatsAppChannel(
                business_account_id="100200300400500",
                phone_number_id=NUMBER_ID,
                template=WhatsAppTemplate(
                    name=template, language="en_US", variables=["name"]
                ),
                reply_wait_minutes=reply_wait_minutes,
            ),
            schedule=ALL_DAY,
            follow_ups=follow_ups or [],
        ),
    )
    lead = Lead(
        id=new_id("lead"),
        campaign_id=campaign.id,
        phone=LEAD,
        name="Eve",
        timezone="America/New_York",
    )
    await store.add_leads(campaign, [lead])
    await store.transition(T, campaign.id, "launch")
    return campaign, lead


async def test_an_unapproved_template_pauses_the_campaign_and_spares_the_lead(
    settings: Settings, store: Store
) -> None:
    """Every lead would fail alike: paused, the lead due again, its count kept."""
    async with _standin() as standin:
        settings = _settings(settings, standin.base_url)
        campaign, lead = await _campaign(store, template="not_approved")

        async def paused() -> bool:
            current = await store.campaign_by_id(campaign.id)
            return current.status is CampaignStatus.PAUSED

        async with dialing(store, settings, NOWHERE, NOWHERE, 5.0, whatsapp=True):
            await until_true(paused, 15, "the campaign paused")
        after = await store.lead_by_id(campaign.id, lead.id)
        assert after.status is LeadStatus.NEW and after.attempts == 0
        assert standin.sent == []
        attempts = Attempts(store)
        records = await store.lead_calls(T, campaign.id, lead.id)
        attempt = await attempts.get(campaign.id, records[0].id)
        assert attempt is not None and "template" in attempt.error


async def test_a_lost_answer_never_sends_a_second_template(
    instant_models: Models, settings: Settings, store: Store
) -> None:
    """The API took the template but its answer was lost: matched by its status."""
    contacts = {LEAD: Contact(name="Eve", replies=("Who is this?",))}
    async with _standin(contacts) as standin:
        # A front that passes every send on, then answers 502: the message
        # went out, the dialer cannot know it.
        async def lossy(request: web.Request) -> web.Response:
            async with ClientSession() as http:
                async with http.post(
                    f"{standin.base_url}/{request.match_info['number']}/messages",
                    data=await request.read(),
                    headers={
                        "Authorization": request.headers["Authorization"],
                        "Content-Type": "application/json",
                    },
                ) as response:
                    await response.read()
            return web.Response(status=502)  # fmt: skip

        app = web.Application()
        app.router.add_post("/v21.0/{number}/messages", lossy)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        try:
            settings = _settings(settings, standin.base_url)
            async with run_harness(
                instant_models, settings, {"default_reply": "It is the clinic."},
                store=store,
            ) as server:  # fmt: skip
                standin.webhook_url = f"{server.url}/whatsapp/webhook"
                campaign, lead = await _campaign(
                    store,
                    reply_wait_minutes=0.05,
                    follow_ups=[FollowUpRule(outcome="no_answer", max_attempts=3)],
                )

                async def answered() -> bool:
                    texts = [m for m in standin.sent if m.type == "text"]
                    return len(texts) == 1

                dialer_settings = replace(
                    settings, whatsapp_api_base=f"http://{host}:{port}/v21.0"
                )
                async with dialing(
                    store, dialer_settings, NOWHERE, NOWHERE, 5.0, whatsapp=True
                ):
                    await until_true(answered, 20, "the agent's answer")
                records = await store.lead_calls(T, campaign.id, lead.id)
        finally:
            await runner.cleanup()
    assert [m.type for m in standin.sent] == ["template", "text"]
    record = records[0]
    assert [m.direction for m in record.messages] == ["out", "in", "out"]
    assert record.messages[0].status in ("delivered", "read")


async def test_the_dialer_settles_a_conversation_the_media_server_never_closed(
    settings: Settings, store: Store
) -> None:
    """No media server: past the reply wait and the grace, a no answer."""
    async with _standin() as standin:
        settings = _settings(settings, standin.base_url)
        campaign, lead = await _campaign(store, reply_wait_minutes=0.01)

        async def settled() -> bool:
            current = await store.lead_by_id(campaign.id, lead.id)
            return current.status is LeadStatus.NO_ANSWER

        async with dialing(store, settings, NOWHERE, NOWHERE, 2.0, whatsapp=True):
            await until_true(settled, 30, "the dialer settling the lead")
        records = await store.lead_calls(T, campaign.id, lead.id)
    assert len(standin.sent) == 1
    after = await store.lead_by_id(campaign.id, lead.id)
    assert after.attempts == 1 and after.next_attempt_at is None
    assert len(records) == 1


async def test_a_paused_whatsapp_campaign_sends_no_template(
    settings: Settings, store: Store
) -> None:
    """Paused before the dialer runs: nothing goes out."""
    async with _standin() as standin:
        settings = _settings(settings, standin.base_url)
        campaign, lead = await _campaign(store)
        await store.transition(T, campaign.id, "pause")
        ticks: list[Any] = []

        async def a_while() -> bool:
            ticks.append(1)
            return len(ticks) > 15

        async with dialing(store, settings, NOWHERE, NOWHERE, 5.0, whatsapp=True):
            await until_true(a_while, 10, "a few ticks")
    assert standin.sent == []
    assert (await store.lead_by_id(campaign.id, lead.id)).status is LeadStatus.NEW
