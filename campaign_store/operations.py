"""The operator's moves, shared by the admin API and the `voxdial` CLI.

Each function takes the store and a tenant and does one whole thing (import
a CSV file, launch after review, compute an overview), so that the HTTP
handlers and the command line cannot drift apart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from campaign_store.csv_import import (
    ImportOptions,
    ImportReport,
    LeadCsvReader,
    ParsedLead,
    coerce_value,
    infer_timezone,
    normalize_phone,
)
from campaign_store.errors import Conflict, NotFound
from campaign_store.keys import CampaignKeys
from campaign_store.models import (
    Agent,
    Campaign,
    CampaignStatus,
    FieldDef,
    Lead,
    LeadInput,
    LeadStatus,
    TimezoneSource,
    check_zone,
)
from campaign_store.review import Problem, review
from campaign_store.store import EDITABLE, Store, new_id

__all__ = [
    "BATCH",
    "LaunchRefused",
    "add_lead",
    "campaign_review",
    "import_leads",
    "launch",
    "overview",
]

log = logging.getLogger(__name__)

BATCH = 1000


class LaunchRefused(Conflict):
    """The review found problems; they are listed on the exception."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__(f"the campaign has {len(problems)} problem(s) to fix first")
        self.problems = list(problems)


def _check_leads_allowed(campaign: Campaign) -> None:
    if campaign.status not in EDITABLE["leads"]:
        raise Conflict(
            f"the campaign is {campaign.status.value}: it takes no more leads"
        )


def _lead(campaign: Campaign, parsed: ParsedLead) -> Lead:
    return Lead(
        id=new_id("lead"),
        campaign_id=campaign.id,
        phone=parsed.phone,
        name=parsed.name,
        timezone=parsed.timezone,
        timezone_source=parsed.timezone_source,
        timezone_note=parsed.timezone_note,
        fields=parsed.fields,
    )


async def _store_leads(
    store: Store, campaign: Campaign, leads: Sequence[Lead]
) -> list[tuple[int, str]]:
    """Store a batch of leads; the (position, existing lead id) of duplicates.

    A number on the tenant's do-not-call list is kept, as do-not-call, so that
    the operator sees it was in the list and why it will not be dialed.
    """
    blocked = await store.dnc_contains(campaign.tenant, [lead.phone for lead in leads])
    for lead, is_blocked in zip(leads, blocked, strict=True):
        if is_blocked:
            lead.status = LeadStatus.DO_NOT_CALL
    refused = await store.add_leads(campaign, leads)
    result = []
    for item in refused:
        index, existing = item.split(":", 1)
        result.append((int(index), existing))
    return result


async def import_leads(
    store: Store,
    tenant: str,
    campaign_id: str,
    stream: BinaryIO,
    *,
    default_region: str | None = None,
) -> ImportReport:
    """Import a CSV lead list from `stream` (a file open for reading, at 0).

    Parsing and number validation run in a worker thread, a batch at a time,
    so that a large upload never holds up the event loop (and its calls).
    Columns the campaign does not define become custom string fields.
    """
    campaign = await store.get_campaign(tenant, campaign_id)
    _check_leads_allowed(campaign)
    options = ImportOptions(
        campaign_timezone=campaign.schedule.timezone,
        fields=tuple(campaign.fields),
        default_region=default_region,
    )
    reader = await asyncio.to_thread(LeadCsvReader, stream, options)
    if reader.new_fields:
        campaign = await _add_fields(store, tenant, campaign_id, reader.new_fields)
    while True:
        batch = await asyncio.to_thread(reader.next_batch, BATCH)
        if batch is None:
            break
        parsed, _errors = batch
        leads = [_lead(campaign, p) for p in parsed]
        for index, existing in await _store_leads(store, campaign, leads):
            reader.reject(
                parsed[index].row,
                "duplicate",
                f"the campaign already has this number (lead {existing})",
            )
    report = reader.report
    log.info(
        "campaign %s: imported %d leads, %d rows rejected",
        campaign_id,
        report.accepted,
        report.rejected,
    )
    return report


async def _add_fields(
    store: Store, tenant: str, campaign_id: str, names: Sequence[str]
) -> Campaign:
    def add(campaign: Campaign) -> Campaign:
        have = {f.name for f in campaign.fields}
        campaign.fields += [FieldDef(name=n) for n in names if n not in have]
        return campaign

    return await store.edit_campaign(tenant, campaign_id, "leads", add)


async def add_lead(
    store: Store, tenant: str, campaign_id: str, data: LeadInput
) -> Lead:
    """One lead, validated like a CSV row. ValueError says what is wrong."""
    campaign = await store.get_campaign(tenant, campaign_id)
    _check_leads_allowed(campaign)
    phone = normalize_phone(data.phone, data.default_region)
    if data.timezone:
        zone = check_zone(data.timezone)
        source, note = TimezoneSource.GIVEN, ""
    else:
        zone, source, note = infer_timezone(phone, campaign.schedule.timezone)
    fields = _check_fields(campaign, data.fields)
    lead = Lead(
        id=new_id("lead"),
        campaign_id=campaign_id,
        phone=phone,
        name=data.name,
        timezone=zone,
        timezone_source=source,
        timezone_note=note,
        fields=fields,
    )
    refused = await _store_leads(store, campaign, [lead])
    if refused:
        raise Conflict(f"the campaign already has this number (lead {refused[0][1]})")
    return lead


def _check_fields(campaign: Campaign, values: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in values.items():
        definition = campaign.field(name)
        if definition is None:
            raise ValueError(f"fields.{name}: the campaign has no such field")
        if value is None:
            continue
        try:
            result[name] = coerce_value(definition, str(value))
        except ValueError as exc:
            raise ValueError(f"fields.{name}: {exc}") from exc
    for definition in campaign.fields:
        if definition.name in result:
            continue
        if definition.default is not None:
            result[definition.name] = definition.default
        elif definition.required:
            raise ValueError(f"fields.{definition.name}: required")
    return result


async def _agent_of(store: Store, campaign: Campaign) -> Agent | None:
    if campaign.agent_id is None:
        return None
    try:
        return await store.get_agent(campaign.tenant, campaign.agent_id)
    except NotFound:
        return None


async def campaign_review(store: Store, tenant: str, campaign_id: str) -> list[Problem]:
    campaign = await store.get_campaign(tenant, campaign_id)
    counts = await store.lead_counts(campaign_id)
    dialable = sum(counts.values()) - counts[LeadStatus.DO_NOT_CALL.value]
    return review(campaign, await _agent_of(store, campaign), dialable)


async def launch(store: Store, tenant: str, campaign_id: str) -> Campaign:
    """Launch a draft campaign if its review is clean; LaunchRefused if not."""
    campaign = await store.get_campaign(tenant, campaign_id)
    if campaign.status != CampaignStatus.DRAFT:
        raise Conflict(f"cannot launch a campaign that is {campaign.status.value}")
    problems = await campaign_review(store, tenant, campaign_id)
    if problems:
        raise LaunchRefused(problems)
    return await store.transition(tenant, campaign_id, "launch")


async def pause(
    store: Store, tenant: str, campaign_id: str, settle_s: float = 15.0
) -> Campaign:
    """Pause, and return once no dial request of the campaign is still in flight.

    From the moment the state changes, no dialer records a new attempt; the
    wait covers dial requests already on their way to the carrier, so that
    when this returns (the pause is acknowledged) no call is created any more.
    Those that were created are canceled by their dialer if still ringing.
    """
    campaign = await store.transition(tenant, campaign_id, "pause")
    placing = CampaignKeys(campaign_id).placing
    deadline = time.monotonic() + settle_s
    # Polled: the requests in flight belong to other processes.
    while await store.redis.zcard(placing):
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.02)
    return campaign


@dataclass(frozen=True)
class Overview:
    campaign_id: str
    name: str
    status: str
    calls_per_minute: int
    max_concurrent: int
    leads: int
    leads_by_status: dict[str, int]
    calls: int
    answered: int
    answer_rate: float | None
    average_call_s: float | None
    conversations: int = 0  # WhatsApp: templates accepted
    replied: int = 0  # WhatsApp: conversations the lead answered
    reply_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def overview(store: Store, tenant: str, campaign_id: str) -> Overview:
    campaign = await store.get_campaign(tenant, campaign_id)
    counts = await store.lead_counts(campaign_id)
    stats = await store.stats(campaign_id)
    calls = int(stats.get("calls", 0))
    answered = int(stats.get("answered", 0))
    talk = stats.get("talk_seconds", 0.0)
    conversations = int(stats.get("conversations", 0))
    replied = int(stats.get("replied", 0))
    return Overview(
        campaign_id=campaign.id,
        name=campaign.name,
        status=campaign.status.value,
        calls_per_minute=campaign.schedule.pacing.calls_per_minute,
        max_concurrent=campaign.schedule.pacing.max_concurrent,
        leads=sum(counts.values()),
        leads_by_status=counts,
        calls=calls,
        answered=answered,
        answer_rate=answered / calls if calls else None,
        average_call_s=talk / answered if answered else None,
        conversations=conversations,
        replied=replied,
        reply_rate=replied / conversations if conversations else None,
    )
