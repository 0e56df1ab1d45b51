"""What calls leave behind, end to end: dialer, carrier, agent tools, admin API.

Four leads are dialed by the real dialer through the carrier stand-in, whose
callees speak (synthesized speech on the phone line) once the agent has
greeted them. The scripted LLM calls the tools; the calendar is the Google
Calendar stand-in. Each lead must end in the right status with the right next
attempt, as the admin API shows it:

- Ada books a meeting: qualified, an event on the calendar, never called again;
- Bob asks for a callback: callback, due at the time he asked for;
- Cy says "stop calling me" and the model ignores it: do not call, on the list;
- Di is not interested: not interested, final.

Each call's extracted fields land on the call and the lead (a value of the
wrong type is flagged, not kept), and each result reaches the campaign's
webhook, signed.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from campaign_store.models import (
    AgentInput,
    AgentTool,
    CalendarBinding,
    CampaignInput,
    FieldDef,
    HourRange,
    Lead,
    LeadStatus,
    Pacing,
    PhoneChannel,
    Schedule,
    WebhookBinding,
)
from campaign_store.store import Store, new_id
from dialer.carrier_standin import CarrierStandin, Scenario
from pipelines.tools.calendar_standin import CalendarStandin
from tests.conftest import Receiver, dialing, run_harness, until_true
from voice.settings import Settings
from voice.webhooks import verify

WEBHOOK_SECRET = "whsec_outcomes_test_secret"

T = "acme"
NY = "America/New_York"
MEETING = "2030-01-16T11:00"
CALLBACK = "2030-01-15T15:00"

SCRIPT = {
    "rules": [
        {
            # The structured extraction after each call reads the transcript.
            "pattern": r"^Agent:",
            "reply": json.dumps({"visit_reason": "a checkup", "budget": "plenty"}),
        },
        {
            "pattern": r"\bmeeting\b",
            "reply": "Let me book that.",
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
            "reply": "You are booked. Goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "qualified"}}],
        },
        {
            "pattern": r"call me back|callback",
            "reply": "",
            "tool_calls": [
                {"name": "schedule_callback", "arguments": {"when": CALLBACK}}
            ],
        },
        {
            "pattern": "tool:schedule_callback",
            "reply": "Great, I will call you then. Goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "callback"}}],
        },
        {
            "pattern": r"not interested",
            "reply": "I understand. Have a nice day!",
            "tool_calls": [
                {"name": "end_call", "arguments": {"outcome": "not_interested"}}
            ],
        },
    ],
    # The model ignores opt-outs here: the phrase detector must catch them.
    "default_reply": "I see. Thank you.",
}
LINES = {
    "+12125550111": "I would like to book a meeting please.",
    "+12125550112": "I am busy now. Can you call me back tomorrow?",
    "+12125550113": "Please stop calling me. Take me off your list.",
    "+12125550114": "No thanks, I am not interested.",
}


@pytest.mark.models
async def test_each_call_leaves_its_lead_in_the_right_state(
    models: Any, settings: Settings, store: Store, results_hook: Receiver
) -> None:
    """Booked, callback, opted out, not interested: statuses and next attempts."""
    speech = {to: models.tts.synthesize_sync(text, 8000) for to, text in LINES.items()}
    calendar = CalendarStandin()
    await calendar.start()
    calendar.add_calendar("clinic@example.com")
    calendar.add_refresh_token("client", "secret", "refresh")
    settings = replace(
        settings,
        validate_signatures=True,
        google_calendar_api_base=calendar.base_url,
    )
    carrier = CarrierStandin(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        script=lambda to, attempt: Scenario(
            answer="human", ring_s=0.2, talk_s=25.0, lines=(speech[to],)
        ),
        media=True,
    )
    await carrier.start()
    hook_url, received = results_hook.url, results_hook.received
    try:
        async with run_harness(
            models, settings, SCRIPT, store=store, rest_base=carrier.base_url
        ) as server:
            agent = await store.create_agent(
                T,
                AgentInput(
                    name="Clinic",
                    system_prompt="You book visits for the clinic.",
                    greeting="Hello {{name}}, this is the clinic.",
                    tools=list(AgentTool),
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
            campaign = await store.create_campaign(
                T,
                CampaignInput(
                    name="Visits",
                    agent_id=agent.id,
                    channel=PhoneChannel(caller_id="+14155550100"),
                    schedule=Schedule(
                        days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        hours=[HourRange(start="00:00", end="24:00")],
                        timezone=NY,
                        pacing=Pacing(calls_per_minute=60, max_concurrent=4),
                    ),
                    fields=[
                        FieldDef(name="visit_reason", extract=True),
                        FieldDef(name="budget", type="integer", extract=True),
                    ],
                ),
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
                        "webhook": WebhookBinding(url=hook_url, secret=WEBHOOK_SECRET),
                    }
                ),
            )
            names = ["Ada", "Bob", "Cy", "Di"]
            leads = [
                Lead(id=new_id("lead"), campaign_id=campaign.id, phone=p, name=n,
                     timezone=NY)
                for p, n in zip(LINES, names, strict=True)
            ]  # fmt: skip
            await store.add_leads(campaign, leads)
            await store.transition(T, campaign.id, "launch")

            async def settled() -> bool:
                now = [await store.lead_by_id(campaign.id, x.id) for x in leads]
                waiting = (LeadStatus.NEW, LeadStatus.DIALING, LeadStatus.IN_CALL)
                return all(lead.status not in waiting for lead in now)

            async def hooked() -> bool:
                return len(received) >= len(leads)

            async with dialing(store, settings, carrier.base_url, server.url, 30.0):
                await until_true(settled, 120, "every lead settled")
                await until_true(hooked, 10, "a webhook per call")

            # Everything below is read the way an operator reads it.
            _, key = await store.create_api_key(T)
            headers = {"Authorization": f"Bearer {key}"}
            base = f"{server.url}/api/v1/campaigns/{campaign.id}/leads"
            async with aiohttp.ClientSession(headers=headers) as http:
                details = {}
                for lead in leads:
                    async with http.get(f"{base}/{lead.id}") as response:
                        assert response.status == 200
                        details[lead.name] = await response.json()

        ada, bob, cy, di = (details[n] for n in names)
        statuses = {n: details[n]["lead"]["status"] for n in names}
        assert statuses == {
            "Ada": "qualified",
            "Bob": "callback",
            "Cy": "do_not_call",
            "Di": "not_interested",
        }, "\n".join(
            f"{n}: "
            + " | ".join(
                f"{t['speaker']}: {t['text']}"
                for t in details[n]["calls"][0]["transcript"]
            )
            for n in names
        )

        booking = ada["calls"][0]["booking"]
        assert booking["attendee_email"] == "ada@example.com"
        events = list(calendar.events["clinic@example.com"].values())
        assert [e["summary"] for e in events] == ["Consultation"]
        assert ada["lead"]["next_attempt_at"] is None

        wanted = datetime.fromisoformat(CALLBACK).replace(tzinfo=ZoneInfo(NY))
        assert bob["lead"]["next_attempt_at"] == wanted.timestamp()
        assert bob["calls"][0]["callback_local"].startswith(CALLBACK)

        assert cy["calls"][0]["opted_out"] and cy["lead"]["next_attempt_at"] is None
        assert await store.dnc_contains(T, ["+12125550113"]) == [True]
        assert di["lead"]["next_attempt_at"] is None
        for detail in details.values():
            assert detail["calls"][0]["transcript"][0]["speaker"] == "agent"
            call = detail["calls"][0]
            assert call["extracted"] == {"visit_reason": "a checkup"}
            assert set(call["extraction_flags"]) == {"budget"}
            assert detail["lead"]["fields"]["visit_reason"] == "a checkup"
        assert carrier.overlapping_calls() == []

        outcomes = {}
        for headers, body in received:
            timestamp = int(headers["Voxdial-Signature"].split(",")[0][2:])
            assert verify(
                WEBHOOK_SECRET, headers["Voxdial-Signature"], body, now=timestamp
            )
            result = json.loads(body)["call"]
            assert headers["Voxdial-Delivery"] == result["id"]
            outcomes[result["lead_id"]] = result["outcome"]
        assert sorted(outcomes.values()) == sorted(
            ["qualified", "callback", "do_not_call", "not_interested"]
        )
    finally:
        await carrier.stop()
        await calendar.stop()
