"""A WhatsApp campaign end to end: dialer, Cloud API stand-in, agent, admin API.

Four leads get the campaign's template from the real dialer, through the
real Graph API client, on the WhatsApp stand-in, which posts signed
webhooks (each one twice, as Meta's retries do) to the media server:

- Ada answers that she wants a meeting: the agent books it on the calendar
  stand-in and closes the conversation: qualified, never messaged again;
- Bob answers "STOP": on the do-not-call list, the agent confirms once;
- Cy never answers: after the reply wait the no-answer rule sends the
  template again, and after the second wait he is left alone;
- Di's number is not on WhatsApp: the template fails, a failed attempt.

Everything is read back through the admin API, as an operator would.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from campaign_store.models import (
    AgentInput,
    AgentTool,
    CalendarBinding,
    CampaignInput,
    FieldDef,
    FollowUpRule,
    HourRange,
    Lead,
    LeadStatus,
    Pacing,
    Schedule,
    WebhookBinding,
    WhatsAppChannel,
    WhatsAppTemplate,
)
from campaign_store.store import Store, new_id
from dialer.whatsapp_standin import Contact, WhatsAppStandin
from pipelines.models import Models
from pipelines.tools.calendar_standin import CalendarStandin
from tests.conftest import Receiver, dialing, run_harness, until_true
from voice.settings import Settings
from voice.webhooks import verify

T = "acme"
SECRET = "whsec_whatsapp_results_secret"
NY = "America/New_York"
MEETING = "2030-01-16T11:00"
NUMBER_ID = "106540352242922"
TEMPLATE = ("visit_invite", "en_US")
ADA, BOB, CY, DI = "+12125550111", "+12125550112", "+12125550113", "+12125550114"

SCRIPT = {
    "rules": [
        {
            "pattern": r"^Agent:",
            "reply": json.dumps({"visit_reason": "a checkup"}),
        },
        {
            "pattern": r"\bmeeting\b",
            "reply": "",
            "tool_calls": [
                {
                    "name": "book_meeting",
                    "arguments": {
                        "start": MEETING,
                        "duration_minutes": 30,
                        "title": "Consultation",
                        "attendee_email": "ada@example.com",
                    },
                }
            ],
        },
        {
            "pattern": "tool:book_meeting",
            "reply": "You are booked for January 16 at 11:00. See you then!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "qualified"}}],
        },
    ],
    "default_reply": "Thanks for your message.",
}


@pytest.fixture(scope="module")
def instant_models() -> Models:
    """No audio in a WhatsApp conversation: the instant speech stand-ins do."""
    return Models.instant(smart_turn=False)


async def test_a_whatsapp_campaign_runs_end_to_end(
    instant_models: Models, settings: Settings, store: Store, results_hook: Receiver
) -> None:
    """Booked, opted out, followed up by template, failed: all through the API."""
    calendar = CalendarStandin()
    await calendar.start()
    calendar.add_calendar("clinic@example.com")
    calendar.add_refresh_token("client", "secret", "refresh")
    contacts = {
        ADA: Contact(name="Ada", replies=("Yes please, I would like a meeting.",)),
        BOB: Contact(name="Bob", replies=("STOP",)),
        CY: Contact(name="Cy"),
        DI: Contact(name="Di", registered=False),
    }
    standin = WhatsAppStandin(
        access_token="EAAG-test-token",
        app_secret="app-secret-for-tests",
        phone_number_id=NUMBER_ID,
        templates={TEMPLATE: 1},
        contacts=contacts,
        service_window_s=30.0,
        duplicate_webhooks=True,
    )
    await standin.start()
    results_url, received = results_hook.url, results_hook.received
    settings = replace(
        settings,
        google_calendar_api_base=calendar.base_url,
        whatsapp_api_base=standin.base_url,
        whatsapp_access_token="EAAG-test-token",
        whatsapp_app_secret="app-secret-for-tests",
        whatsapp_verify_token="verify-me",
        whatsapp_service_window_s=30.0,
        whatsapp_sweep_s=0.1,
    )
    try:
        async with run_harness(instant_models, settings, SCRIPT, store=store) as server:
            hook = f"{server.url}/whatsapp/webhook"
            assert await standin.verify_webhook(hook, "verify-me", "42") == (200, "42")
            status, _ = await standin.verify_webhook(hook, "wrong", "42")
            assert status == 403
            standin.webhook_url = hook

            agent = await store.create_agent(
                T,
                AgentInput(
                    name="Clinic",
                    system_prompt="You book visits for the clinic.",
                    greeting="Hello {{name}}, the clinic would like to see you.",
                    tools=list(AgentTool),
                ),
            )
            campaign = await store.create_campaign(
                T,
                CampaignInput(
                    name="Visits on WhatsApp",
                    agent_id=agent.id,
                    channel=WhatsAppChannel(
                        business_account_id="100200300400500",
                        phone_number_id=NUMBER_ID,
                        template=WhatsAppTemplate(
                            name=TEMPLATE[0], language=TEMPLATE[1], variables=["name"]
                        ),
                        reply_wait_minutes=0.05,  # 3 s
                    ),
                    schedule=Schedule(
                        days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        hours=[HourRange(start="00:00", end="24:00")],
                        timezone=NY,
                        pacing=Pacing(calls_per_minute=60, max_concurrent=1),
                    ),
                    fields=[FieldDef(name="visit_reason", extract=True)],
                    follow_ups=[
                        FollowUpRule(
                            outcome="no_answer", delay_minutes=0, max_attempts=2
                        )
                    ],
                ),
            )
            credentials = json.dumps(
                {
                    "client_id": "client",
                    "client_secret": "secret",
                    "refresh_token": "refresh",
                    "token_uri": calendar.token_url,
                }
            )
            campaign = await store.edit_campaign(
                T,
                campaign.id,
                "calendar",
                lambda c: c.model_copy(
                    update={
                        "calendar": CalendarBinding(
                            calendar_id="clinic@example.com", credentials=credentials
                        ),
                        "webhook": WebhookBinding(url=results_url, secret=SECRET),
                    }
                ),
            )
            leads = [
                Lead(id=new_id("lead"), campaign_id=campaign.id, phone=p,
                     name=contacts[p].name, timezone=NY)
                for p in (ADA, BOB, CY, DI)
            ]  # fmt: skip
            await store.add_leads(campaign, leads)
            await store.transition(T, campaign.id, "launch")

            async def settled() -> bool:
                now = [await store.lead_by_id(campaign.id, x.id) for x in leads]
                waiting = (
                    LeadStatus.NEW,
                    LeadStatus.MESSAGED,
                    LeadStatus.IN_CONVERSATION,
                )
                return all(
                    lead.status not in waiting and lead.next_attempt_at is None
                    for lead in now
                )

            async with dialing(
                store, settings, standin.base_url, server.url, 5.0, whatsapp=True
            ):
                await until_true(settled, 60, "every lead settled")
            assert server.services.whatsapp is not None
            await server.services.whatsapp.idle()
            await standin.wait_idle()

            async def delivered() -> bool:
                return len(received) >= 5

            await until_true(delivered, 10, "a result per conversation")

            _, key = await store.create_api_key(T)
            headers = {"Authorization": f"Bearer {key}"}
            base = f"{server.url}/api/v1/campaigns/{campaign.id}/leads"
            async with aiohttp.ClientSession(headers=headers) as http:
                details: dict[str, Any] = {}
                for lead in leads:
                    async with http.get(f"{base}/{lead.id}") as response:
                        assert response.status == 200
                        details[lead.name] = await response.json()
                async with http.get(base.replace("/leads", "/overview")) as response:
                    overview = await response.json()
    finally:
        await standin.stop()
        await calendar.stop()

    statuses = {n: d["lead"]["status"] for n, d in details.items()}
    assert statuses == {
        "Ada": "qualified",
        "Bob": "do_not_call",
        "Cy": "no_answer",
        "Di": "failed",
    }, json.dumps(details, indent=1)[:4000]

    # Ada: template, her answer, the agent's confirmation; one event booked.
    ada = details["Ada"]["calls"][0]
    assert ada["channel"] == "whatsapp" and ada["outcome"] == "qualified"
    kinds = [(m["direction"], m["kind"]) for m in ada["messages"]]
    assert kinds == [("out", "template"), ("in", "text"), ("out", "text")]
    assert ada["messages"][0]["text"] == "Hello Ada, the clinic would like to see you."
    assert ada["messages"][0]["status"] == "read"
    assert "booked" in ada["messages"][2]["text"]
    assert ada["booking"]["attendee_email"] == "ada@example.com"
    assert [e["summary"] for e in calendar.events["clinic@example.com"].values()] == [
        "Consultation"
    ]
    assert ada["extracted"] == {"visit_reason": "a checkup"}
    assert details["Ada"]["lead"]["fields"]["visit_reason"] == "a checkup"
    assert [m.type for m in standin.sent_to(ADA)] == ["template", "text"]
    assert standin.sent_to(ADA)[0].variables == ("Ada",)

    # Bob: STOP puts him on the list; one confirmation, then nothing.
    bob = details["Bob"]["calls"][0]
    assert bob["opted_out"] and bob["outcome"] == "do_not_call"
    assert await store.dnc_contains(T, [BOB]) == [True]
    assert [m.type for m in standin.sent_to(BOB)] == ["template", "text"]

    # Cy: two templates, the second only after the first one's reply wait.
    cy_sent = standin.sent_to(CY)
    assert [m.type for m in cy_sent] == ["template", "template"]
    assert cy_sent[1].at - cy_sent[0].at >= 3.0
    assert details["Cy"]["lead"]["attempts"] == 2
    assert [c["outcome"] for c in details["Cy"]["calls"]] == ["no_answer", "no_answer"]

    # Di: the failed delivery receipt is on the message and the attempt.
    di = details["Di"]["calls"][0]
    assert di["messages"][0]["status"] == "failed"
    assert di["messages"][0]["error"].startswith("131026")
    assert di["outcome"] == "failed"

    # Each conversation's result reached the campaign's webhook, signed.
    events = []
    for headers, body in received:
        stamp = int(headers["Voxdial-Signature"].split(",")[0][2:])
        assert verify(SECRET, headers["Voxdial-Signature"], body, now=stamp)
        events.append(json.loads(body))
    assert {e["event"] for e in events} == {"conversation.completed"}
    assert sorted(e["call"]["outcome"] for e in events) == [
        "do_not_call", "failed", "no_answer", "no_answer", "qualified"
    ]  # fmt: skip

    # The campaign's figures: five templates accepted, two answered.
    assert (overview["conversations"], overview["replied"]) == (5, 2)
    assert overview["leads_by_status"]["qualified"] == 1

    # No free text ever went out of a service window; each reply answered once.
    assert standin.violations() == []
    assert len(standin.sent) == 7
