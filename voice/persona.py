"""Who the agent is on a campaign's call, and what it may do there.

A stream whose parameters name a campaign and a lead gets that campaign's
agent (prompt, greeting, tools), that lead's fields for the prompt, and the
tool context: the lead's zone and calling window, the campaign's calendar,
the do-not-call list of the tenant, the campaign's MCP bindings. Anything
else (an ad hoc call, a lead that is gone) keeps the server's default agent,
the fields the webhook passed along, and only the `end_call` tool.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from campaign_store.errors import NotFound, StoreError
from campaign_store.models import Agent, CalendarBinding, Campaign, Lead
from campaign_store.store import Store
from dialer.window import parse_jurisdictions, window_for
from pipelines.tools.agent_tools import ToolContext
from pipelines.tools.calendar import (
    GoogleCalendar,
    RefreshTokenCredentials,
    ServiceAccountCredentials,
)

if TYPE_CHECKING:
    from voice.settings import Settings

__all__ = ["Persona", "calendar_for", "persona_for", "tool_context"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Persona:
    system_prompt: str
    greeting: str
    fields: dict[str, str]
    tools: tuple[str, ...] = ("end_call",)
    campaign: Campaign | None = None
    lead: Lead | None = None
    agent: Agent | None = field(default=None, repr=False)


INBOUND_NOTE = (
    "This call is inbound: the person called this number back, so they may "
    "be returning a missed call or a voicemail."
)


def _history(lead: Lead) -> str:
    if not lead.attempts:
        return ""
    last = f", the last ended as {lead.last_outcome}" if lead.last_outcome else ""
    return f"Earlier calls to this lead: {lead.attempts}{last}."


async def persona_for(
    store: Store, campaign_id: str, lead_id: str, *, inbound: bool = False
) -> Persona | None:
    """The campaign's agent for a call with this lead ("" : an unknown caller)."""
    lead: Lead | None = None
    try:
        campaign = await store.campaign_by_id(campaign_id)
        if lead_id:
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
    prompt = agent.system_prompt
    if inbound:
        notes = [INBOUND_NOTE, _history(lead) if lead is not None else ""]
        prompt = "\n\n".join(p for p in (prompt, *notes) if p)
    return Persona(
        prompt,
        agent.greeting,
        lead.placeholder_values() if lead is not None else {},
        tools=tuple(str(t) for t in agent.tools),
        campaign=campaign,
        lead=lead,
        agent=agent,
    )


def calendar_for(
    binding: CalendarBinding, session: aiohttp.ClientSession, api_base: str
) -> GoogleCalendar | None:
    """The campaign's Google calendar client, or None if its key is unusable."""
    try:
        info = json.loads(binding.credentials)
        if "private_key" in info:
            credentials: ServiceAccountCredentials | RefreshTokenCredentials = (
                ServiceAccountCredentials.from_info(
                    info, session, subject=binding.subject or None
                )
            )
        else:
            credentials = RefreshTokenCredentials(
                client_id=info["client_id"],
                client_secret=info["client_secret"],
                refresh_token=info["refresh_token"],
                session=session,
                **({"token_uri": info["token_uri"]} if "token_uri" in info else {}),
            )
    except (ValueError, KeyError, TypeError) as exc:
        # Never the credentials themselves: only what kind of problem it is.
        log.warning("calendar credentials unusable (%s)", type(exc).__name__)
        return None
    return GoogleCalendar(binding.calendar_id, credentials, session, base_url=api_base)


def tool_context(
    campaign: Campaign,
    lead: Lead | None,
    phone: str,
    call_id: str,
    *,
    store: Store,
    session: aiohttp.ClientSession,
    settings: Settings,
) -> ToolContext:
    """What the agent's tools work from on a campaign's call or conversation.

    The lead's zone and calling window, the tenant's do-not-call list, the
    campaign's calendar. MCP sessions are opened by whoever owns their
    lifetime (a call holds them open; a conversation opens them per reply).
    """
    tenant = campaign.tenant
    zone = lead.timezone if lead is not None else None
    context = ToolContext(call_id=call_id)
    context.timezone = zone or campaign.schedule.timezone
    context.window = window_for(
        campaign.schedule, zone, phone, parse_jurisdictions(settings.calling_hours)
    )

    async def opt_out() -> None:
        await store.dnc_add(tenant, [phone])

    context.opt_out = opt_out
    if campaign.calendar is not None:
        context.calendar = calendar_for(
            campaign.calendar, session, settings.google_calendar_api_base
        )
        context.meeting_title = campaign.calendar.meeting_title
    return context
