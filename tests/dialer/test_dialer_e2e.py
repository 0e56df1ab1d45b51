"""A campaign dialed for real: dialer -> carrier stand-in -> voxdial -> agent.

The carrier stand-in places each call, posts signed status callbacks to the
media server, and for answered calls fetches the TwiML and opens the media
stream; the agent (real models, scripted LLM) greets the lead by name. The
attempt settles from the callbacks and the stored call record.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from campaign_store.models import (
    AgentInput,
    CampaignInput,
    FollowUpRule,
    HourRange,
    LeadStatus,
    PhoneChannel,
    Schedule,
)
from campaign_store.store import Store
from dialer.carrier_standin import CarrierStandin, Scenario
from tests.conftest import dialing, run_harness, until_true
from voice.settings import Settings

T = "acme"
SCENARIOS = {
    "+12125550101": Scenario(answer="human", ring_s=0.2, talk_s=3.0),
    "+12125550102": Scenario(answer="busy", ring_s=0.2, talk_s=0.0),
    "+12125550103": Scenario(answer="no-answer", ring_s=0.5, talk_s=0.0),
}


def _scripted(hello: Any) -> Any:
    """Each human callee answers the greeting once (a silent one is no answer)."""

    def script(to: str, attempt: int) -> Scenario:
        scenario = SCENARIOS[to] if attempt == 1 else SCENARIOS["+12125550101"]
        if scenario.answer == "human":
            scenario = replace(scenario, talk_s=12.0, lines=(hello,))
        return scenario

    return script


@pytest.mark.models
async def test_a_small_campaign_runs_to_the_end(
    models: Any, settings: Settings, store: Store
) -> None:
    """Three leads: one talks to the agent, one is busy, one first does not answer."""
    settings = replace(settings, validate_signatures=True)
    carrier = CarrierStandin(
        settings.twilio_account_sid,
        settings.twilio_auth_token,
        script=_scripted(models.tts.synthesize_sync("Yes, speaking.", 8000)),
        media=True,
    )
    await carrier.start()
    try:
        async with run_harness(
            models, settings, store=store, rest_base=carrier.base_url
        ) as server:
            agent = await store.create_agent(
                T,
                AgentInput(
                    name="A", system_prompt="Be brief.", greeting="Hello {{name}}."
                ),
            )
            campaign = await store.create_campaign(
                T,
                CampaignInput(
                    name="C",
                    agent_id=agent.id,
                    channel=PhoneChannel(caller_id="+14155550100"),
                    schedule=Schedule(
                        days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        hours=[HourRange(start="00:00", end="24:00")],
                    ),
                    follow_ups=[
                        FollowUpRule(
                            outcome="no_answer", delay_minutes=0, max_attempts=2
                        )
                    ],
                ),
            )
            from campaign_store.models import Lead
            from campaign_store.store import new_id

            leads = [
                Lead(id=new_id("lead"), campaign_id=campaign.id, phone=p, name=n,
                     timezone="America/New_York")
                for p, n in zip(SCENARIOS, ["Ada", "Bob", "Cy"], strict=True)
            ]  # fmt: skip
            await store.add_leads(campaign, leads)
            await store.transition(T, campaign.id, "launch")

            async def settled() -> bool:
                now = [await store.lead_by_id(campaign.id, lead.id) for lead in leads]
                return all(lead.status == LeadStatus.COMPLETED for lead in now)

            async with dialing(store, settings, carrier.base_url, server.url, 5.0):
                await until_true(settled, 60, "every lead settled")

            ada, bob, cy = [
                await store.lead_by_id(campaign.id, lead.id) for lead in leads
            ]
            assert ada.status == LeadStatus.COMPLETED and len(ada.calls) == 1
            call = await store.get_call(T, campaign.id, ada.calls[0])
            greeting = next(t for t in call.transcript if t.speaker == "agent")
            assert greeting.text == "Hello Ada."
            # Busy and no-answer were tried again (busy follows the no-answer rule).
            assert bob.attempts == 2 and cy.attempts == 2
            first = [c.to for c in carrier.calls.values()]
            assert sorted(first) == sorted([*SCENARIOS, leads[1].phone, leads[2].phone])
            assert carrier.overlapping_calls() == []
    finally:
        await carrier.stop()
