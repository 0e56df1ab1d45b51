"""Who the agent is on a campaign's call: its agent, and the lead's fields.

A stream whose parameters name a campaign and a lead gets that campaign's
agent (prompt, greeting) and that lead's fields for the `{{placeholders}}`.
Anything else (an ad hoc call, a lead that is gone) keeps the server's
default agent and the fields the webhook passed along.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from campaign_store.errors import NotFound, StoreError
from campaign_store.store import Store

__all__ = ["Persona", "persona_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Persona:
    system_prompt: str
    greeting: str
    fields: dict[str, str]


async def persona_for(store: Store, campaign_id: str, lead_id: str) -> Persona | None:
    try:
        campaign = await store.campaign_by_id(campaign_id)
        lead = await store.lead_by_id(campaign_id, lead_id)
        if campaign.agent_id is None:
            return None
        agent = await store.get_agent(campaign.tenant, campaign.agent_id)
    except NotFound:
        return None
    except (StoreError, OSError) as exc:
        log.warning(
            "campaign %s: persona unavailable (%s); default agent", campaign_id, exc
        )
        return None
    fields = {k: "" if v is None else str(v) for k, v in lead.fields.items()}
    fields["name"] = lead.name
    fields["first_name"] = lead.name.split(" ", 1)[0] if lead.name else ""
    return Persona(agent.system_prompt, agent.greeting, fields)
