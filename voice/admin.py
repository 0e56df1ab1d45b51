"""The admin HTTP API: campaigns, agents, leads and calls, per tenant.

Mounted under `/api/v1` in the media server's process. Every request carries
a tenant's API key as `Authorization: Bearer vxk_...`; every object of another
tenant answers 404, exactly like a missing one. Errors are JSON:

    {"error": {"code": "invalid", "message": "...", "details": [...]}}

with 400 (malformed body or query), 401 (no valid key), 404, 409 (the
object's state forbids the change), 413 (body too large) and 422 (the body
does not validate: `details` names each bad field). Secrets (MCP header
values) are write-only: answers say whether one is set, never what it is.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO, cast

from aiohttp import web
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from campaign_store import operations as ops
from campaign_store.csv_import import CsvFormatError, normalize_phone
from campaign_store.errors import Conflict, NotFound, StoreError
from campaign_store.models import (
    Agent,
    AgentInput,
    AgentPatch,
    CalendarBinding,
    CalendarInput,
    CalendarView,
    CallRecordModel,
    Campaign,
    CampaignInput,
    CampaignPatch,
    CampaignStatus,
    CampaignView,
    Channel,
    FieldDef,
    FollowUpRule,
    Lead,
    LeadInput,
    LeadStatus,
    McpBindingInput,
    McpBindingView,
    Schedule,
    Strict,
    WebhookBinding,
    WebhookInput,
    WebhookView,
    binding_view,
    calendar_view,
    webhook_view,
)
from campaign_store.store import MAX_PAGE, Page, Store, check_fields_unique
from campaign_store.store import merge_bindings as merge
from voice.openapi import Query, Route, build_document

__all__ = ["API_BASE", "STORE", "admin_app", "mount", "openapi_document", "routes"]

log = logging.getLogger(__name__)

API_BASE = "/api/v1"
STORE = web.AppKey("store", Store)
LIMITS = web.AppKey("limits", dict)
TENANT = web.RequestKey("tenant", str)

# Bodies and answers that are not stored records.


class FieldsBody(Strict):
    fields: list[FieldDef] = Field(max_length=100)


class FollowUpsBody(Strict):
    follow_ups: list[FollowUpRule] = Field(max_length=20)


class McpBindingsBody(Strict):
    mcp_bindings: list[McpBindingInput] = Field(max_length=20)


class McpBindingsView(Strict):
    mcp_bindings: list[McpBindingView]


class NumbersBody(Strict):
    numbers: list[str] = Field(min_length=1, max_length=1000)
    default_region: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")


class ProblemView(Strict):
    code: str
    path: str
    message: str


class ReviewView(Strict):
    ready: bool
    problems: list[ProblemView]


class AgentList(Strict):
    items: list[Agent]
    next_cursor: str | None


class CampaignList(Strict):
    items: list[CampaignView]
    next_cursor: str | None


class LeadList(Strict):
    items: list[Lead]
    next_cursor: str | None


class LeadDetail(Strict):
    lead: Lead
    calls: list[CallRecordModel]


class CallList(Strict):
    items: list[CallRecordModel]


class NumberList(Strict):
    items: list[str]
    next_cursor: str | None


class ImportReportView(BaseModel):
    rows: int
    accepted: int
    rejected: int
    by_reason: dict[str, int]
    errors: list[dict[str, Any]]
    new_fields: list[str]
    truncated_errors: bool


class OverviewView(BaseModel):
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
    conversations: int
    replied: int
    reply_rate: float | None


class ChangedView(BaseModel):
    changed: int


# Errors.


def _error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    response = web.json_response({"error": body}, status=status)
    if status == 413:
        # The rest of the body is still on its way: drop the connection rather
        # than read it all to keep the connection alive.
        response.force_close()
    return response


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "field": ".".join(str(p) for p in error["loc"]) or "(body)",
            "message": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str = "bad_request"):
        super().__init__(message)
        self.status = status
        self.code = code


@web.middleware
async def errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status == 413:
            return _error(413, "too_large", "the request body is too large")
        if exc.status in (404, 405):
            return _error(exc.status, "no_route", exc.reason)
        raise
    except BadRequest as exc:
        return _error(exc.status, exc.code, str(exc))
    except ValidationError as exc:
        return _error(
            422, "invalid", "the body does not validate", _validation_details(exc)
        )
    except NotFound as exc:
        return _error(404, "not_found", str(exc))
    except ops.LaunchRefused as exc:
        return _error(
            409,
            "not_ready",
            str(exc),
            [
                {"code": p.code, "path": p.path, "message": p.message}
                for p in exc.problems
            ],
        )
    except Conflict as exc:
        return _error(409, "conflict", str(exc))
    except CsvFormatError as exc:
        return _error(422, "bad_csv", str(exc))
    except ValueError as exc:
        return _error(422, "invalid", str(exc))
    except StoreError:
        log.exception("store error on %s %s", request.method, request.path)
        return _error(503, "store_unavailable", "the campaign store failed")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


@web.middleware
async def authenticate(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    key = _bearer(request)
    tenant = None if key is None else await request.app[STORE].authenticate(key)
    if tenant is None:
        response = _error(401, "unauthorized", "a valid API key is required")
        response.headers["WWW-Authenticate"] = 'Bearer realm="voxdial"'
        return response
    request[TENANT] = tenant
    return await handler(request)


# Request helpers.


def _store(request: web.Request) -> Store:
    return request.app[STORE]


def _tenant(request: web.Request) -> str:
    return request[TENANT]


async def _body(request: web.Request, kind: Any) -> Any:
    if request.content_type != "application/json":
        raise BadRequest(
            "the body must be JSON (Content-Type: application/json)",
            415,
            "unsupported_media_type",
        )
    raw = await _read_limited(request, request.app[LIMITS]["body_bytes"])
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    return TypeAdapter(kind).validate_python(data)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    # Checked here rather than by the server's client_max_size: that one is
    # the root application's, sized for Twilio's webhooks.
    if request.content_length is not None and request.content_length > limit:
        raise BadRequest(f"the body is limited to {limit} bytes", 413, "too_large")
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is limited to {limit} bytes", 413, "too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _page_args(request: web.Request) -> tuple[str | None, int]:
    cursor = request.query.get("cursor") or None
    raw = request.query.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError as exc:
        raise BadRequest("limit must be an integer") from exc
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    if cursor is not None and not cursor.isdigit():
        raise BadRequest("cursor is not one this API returned")
    return cursor, limit


def _json(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(
        text=model.model_dump_json(), status=status, content_type="application/json"
    )


def _campaign_id(request: web.Request) -> str:
    return request.match_info["campaign_id"]


# Agents.


async def create_agent(request: web.Request) -> web.Response:
    data = await _body(request, AgentInput)
    return _json(await _store(request).create_agent(_tenant(request), data), 201)


async def list_agents(request: web.Request) -> web.Response:
    cursor, limit = _page_args(request)
    page = await _store(request).list_agents(_tenant(request), cursor, limit)
    return _json(AgentList(items=page.items, next_cursor=page.next_cursor))


async def get_agent(request: web.Request) -> web.Response:
    agent_id = request.match_info["agent_id"]
    return _json(await _store(request).get_agent(_tenant(request), agent_id))


async def update_agent(request: web.Request) -> web.Response:
    patch = await _body(request, AgentPatch)
    agent_id = request.match_info["agent_id"]
    return _json(await _store(request).update_agent(_tenant(request), agent_id, patch))


async def delete_agent(request: web.Request) -> web.Response:
    await _store(request).delete_agent(_tenant(request), request.match_info["agent_id"])
    return web.Response(status=204)


# Campaigns.


async def create_campaign(request: web.Request) -> web.Response:
    data = await _body(request, CampaignInput)
    campaign = await _store(request).create_campaign(_tenant(request), data)
    return _json(CampaignView.of(campaign), 201)


def _status_query(request: web.Request, kind: type[Any]) -> Any:
    raw = request.query.get("status")
    if raw is None:
        return None
    try:
        return kind(raw)
    except ValueError as exc:
        choices = ", ".join(s.value for s in kind)
        raise BadRequest(f"status must be one of {choices}") from exc


async def list_campaigns(request: web.Request) -> web.Response:
    cursor, limit = _page_args(request)
    status = _status_query(request, CampaignStatus)
    page = await _store(request).list_campaigns(
        _tenant(request), cursor, limit, status=status
    )
    views = [CampaignView.of(c) for c in page.items]
    return _json(CampaignList(items=views, next_cursor=page.next_cursor))


async def get_campaign(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    return _json(CampaignView.of(campaign))


async def update_campaign(request: web.Request) -> web.Response:
    patch: CampaignPatch = await _body(request, CampaignPatch)
    store, tenant = _store(request), _tenant(request)
    changes = patch.model_dump(exclude_unset=True)
    if changes.get("agent_id") is not None:
        await store.get_agent(tenant, changes["agent_id"])

    def change(campaign: Campaign) -> Campaign:
        return campaign.model_copy(update=changes)

    campaign = await store.edit_campaign(
        tenant, _campaign_id(request), "basics", change
    )
    return _json(CampaignView.of(campaign))


async def _edit(
    request: web.Request, part: str, change: Callable[[Campaign], Campaign]
) -> Campaign:
    return await _store(request).edit_campaign(
        _tenant(request), _campaign_id(request), part, change
    )


async def get_channel(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    if campaign.channel is None:
        raise NotFound("channel of campaign", campaign.id)
    return _json(campaign.channel)


async def put_channel(request: web.Request) -> web.Response:
    channel = await _body(request, Channel)
    campaign = await _edit(
        request, "channel", lambda c: c.model_copy(update={"channel": channel})
    )
    assert campaign.channel is not None
    return _json(campaign.channel)


async def get_schedule(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    return _json(campaign.schedule)


async def put_schedule(request: web.Request) -> web.Response:
    schedule = await _body(request, Schedule)
    campaign = await _edit(
        request, "schedule", lambda c: c.model_copy(update={"schedule": schedule})
    )
    return _json(campaign.schedule)


async def get_fields(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    return _json(FieldsBody(fields=campaign.fields))


async def put_fields(request: web.Request) -> web.Response:
    body: FieldsBody = await _body(request, FieldsBody)

    def change(campaign: Campaign) -> Campaign:
        updated = campaign.model_copy(update={"fields": body.fields})
        check_fields_unique(updated)
        return updated

    campaign = await _edit(request, "fields", change)
    return _json(FieldsBody(fields=campaign.fields))


async def get_follow_ups(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    return _json(FollowUpsBody(follow_ups=campaign.follow_ups))


async def put_follow_ups(request: web.Request) -> web.Response:
    body: FollowUpsBody = await _body(request, FollowUpsBody)
    campaign = await _edit(
        request,
        "follow_ups",
        lambda c: c.model_copy(update={"follow_ups": body.follow_ups}),
    )
    return _json(FollowUpsBody(follow_ups=campaign.follow_ups))


async def get_calendar(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    if campaign.calendar is None:
        raise NotFound("calendar of campaign", campaign.id)
    return _json(calendar_view(campaign.calendar))


def _check_credentials(text: str) -> None:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError("credentials: not JSON") from exc
    service_account = {"client_email", "private_key"}
    oauth = {"client_id", "client_secret", "refresh_token"}
    if not isinstance(data, dict) or not (
        service_account <= data.keys() or oauth <= data.keys()
    ):
        raise ValueError(
            "credentials: a service-account key (client_email, private_key) or "
            "an OAuth grant (client_id, client_secret, refresh_token)"
        )


async def put_calendar(request: web.Request) -> web.Response:
    body: CalendarInput = await _body(request, CalendarInput)
    if body.credentials is not None:
        _check_credentials(body.credentials)

    def change(campaign: Campaign) -> Campaign:
        credentials = body.credentials
        if credentials is None:
            if campaign.calendar is None:
                raise ValueError("credentials: required (none stored yet)")
            credentials = campaign.calendar.credentials
        data = body.model_dump(exclude={"credentials"})
        binding = CalendarBinding(credentials=credentials, **data)
        return campaign.model_copy(update={"calendar": binding})

    campaign = await _edit(request, "calendar", change)
    assert campaign.calendar is not None
    return _json(calendar_view(campaign.calendar))


async def get_webhook(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    if campaign.webhook is None:
        raise NotFound("webhook of campaign", campaign.id)
    return _json(webhook_view(campaign.webhook))


async def put_webhook(request: web.Request) -> web.Response:
    body: WebhookInput = await _body(request, WebhookInput)

    def change(campaign: Campaign) -> Campaign:
        secret = body.secret
        if secret is None:
            if campaign.webhook is None:
                raise ValueError("secret: required (none stored yet)")
            secret = campaign.webhook.secret
        binding = WebhookBinding(url=body.url, secret=secret)
        return campaign.model_copy(update={"webhook": binding})

    campaign = await _edit(request, "webhook", change)
    assert campaign.webhook is not None
    return _json(webhook_view(campaign.webhook))


async def get_mcp_bindings(request: web.Request) -> web.Response:
    campaign = await _store(request).get_campaign(
        _tenant(request), _campaign_id(request)
    )
    return _json(
        McpBindingsView(mcp_bindings=[binding_view(b) for b in campaign.mcp_bindings])
    )


async def put_mcp_bindings(request: web.Request) -> web.Response:
    body: McpBindingsBody = await _body(request, McpBindingsBody)

    def change(campaign: Campaign) -> Campaign:
        bindings = merge(campaign.mcp_bindings, body.mcp_bindings)
        return campaign.model_copy(update={"mcp_bindings": bindings})

    campaign = await _edit(request, "mcp_bindings", change)
    return _json(
        McpBindingsView(mcp_bindings=[binding_view(b) for b in campaign.mcp_bindings])
    )


async def review_campaign(request: web.Request) -> web.Response:
    problems = await ops.campaign_review(
        _store(request), _tenant(request), _campaign_id(request)
    )
    views = [ProblemView(code=p.code, path=p.path, message=p.message) for p in problems]
    return _json(ReviewView(ready=not problems, problems=views))


async def campaign_overview(request: web.Request) -> web.Response:
    overview = await ops.overview(
        _store(request), _tenant(request), _campaign_id(request)
    )
    return web.json_response(overview.to_dict())


async def launch_campaign(request: web.Request) -> web.Response:
    campaign = await ops.launch(
        _store(request), _tenant(request), _campaign_id(request)
    )
    log.info("campaign %s launched", campaign.id)
    return _json(CampaignView.of(campaign))


async def _transition(request: web.Request, action: str) -> web.Response:
    campaign = await _store(request).transition(
        _tenant(request), _campaign_id(request), action
    )
    log.info("campaign %s: %s", campaign.id, action)
    return _json(CampaignView.of(campaign))


async def pause_campaign(request: web.Request) -> web.Response:
    campaign = await ops.pause(_store(request), _tenant(request), _campaign_id(request))
    log.info("campaign %s: paused", campaign.id)
    return _json(CampaignView.of(campaign))


async def resume_campaign(request: web.Request) -> web.Response:
    return await _transition(request, "resume")


async def archive_campaign(request: web.Request) -> web.Response:
    return await _transition(request, "archive")


# Leads and calls.


async def import_leads(request: web.Request) -> web.Response:
    limit: int = request.app[LIMITS]["csv_bytes"]
    region = request.query.get("default_region") or None
    if region is not None and not (
        len(region) == 2 and region.isalpha() and region.isupper()
    ):
        raise BadRequest("default_region must be a two-letter country code such as US")
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "too_large", f"CSV uploads are limited to {limit} bytes")
    # Spooled: small files stay in memory, large ones go to a temporary file.
    with tempfile.SpooledTemporaryFile(max_size=1 << 20) as spool:
        size = 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                return _error(
                    413, "too_large", f"CSV uploads are limited to {limit} bytes"
                )
            spool.write(chunk)
        spool.seek(0)
        report = await ops.import_leads(
            _store(request),
            _tenant(request),
            _campaign_id(request),
            cast(BinaryIO, spool),
            default_region=region,
        )
    return web.json_response(report.to_dict())


async def create_lead(request: web.Request) -> web.Response:
    data = await _body(request, LeadInput)
    lead = await ops.add_lead(
        _store(request), _tenant(request), _campaign_id(request), data
    )
    return _json(lead, 201)


async def list_leads(request: web.Request) -> web.Response:
    cursor, limit = _page_args(request)
    status = _status_query(request, LeadStatus)
    page: Page = await _store(request).list_leads(
        _tenant(request),
        _campaign_id(request),
        status=status,
        cursor=cursor,
        limit=limit,
    )
    return _json(LeadList(items=page.items, next_cursor=page.next_cursor))


async def get_lead(request: web.Request) -> web.Response:
    store, tenant, cid = _store(request), _tenant(request), _campaign_id(request)
    lead_id = request.match_info["lead_id"]
    lead = await store.get_lead(tenant, cid, lead_id)
    calls = await store.lead_calls(tenant, cid, lead_id, limit=20)
    return _json(LeadDetail(lead=lead, calls=calls))


async def lead_calls(request: web.Request) -> web.Response:
    _, limit = _page_args(request)
    calls = await _store(request).lead_calls(
        _tenant(request), _campaign_id(request), request.match_info["lead_id"], limit
    )
    return _json(CallList(items=calls))


async def get_call(request: web.Request) -> web.Response:
    call = await _store(request).get_call(
        _tenant(request), _campaign_id(request), request.match_info["call_id"]
    )
    return _json(call)


async def call_recording(request: web.Request) -> web.StreamResponse:
    call = await _store(request).get_call(
        _tenant(request), _campaign_id(request), request.match_info["call_id"]
    )
    path = Path(call.recording_path) if call.recording_path else None
    if path is None or not path.is_file():
        raise NotFound("recording of call", call.id)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "audio/wav",
            "Content-Disposition": f'attachment; filename="{call.id}.wav"',
        },
    )


# The do-not-call list.


def _numbers(body: NumbersBody) -> list[str]:
    numbers = []
    for i, raw in enumerate(body.numbers):
        try:
            numbers.append(normalize_phone(raw, body.default_region))
        except ValueError as exc:
            raise ValueError(f"numbers.{i}: {exc}") from exc
    return numbers


async def list_dnc(request: web.Request) -> web.Response:
    cursor, limit = _page_args(request)
    page = await _store(request).dnc_page(_tenant(request), cursor, limit)
    return _json(NumberList(items=page.items, next_cursor=page.next_cursor))


async def add_dnc(request: web.Request) -> web.Response:
    body = await _body(request, NumbersBody)
    added = await _store(request).dnc_add(_tenant(request), _numbers(body))
    return _json(ChangedView(changed=added))


async def remove_dnc(request: web.Request) -> web.Response:
    body = await _body(request, NumbersBody)
    store, tenant = _store(request), _tenant(request)
    removed = 0
    for number in _numbers(body):
        removed += await store.dnc_remove(tenant, number)
    log.info("tenant %s: %d number(s) removed from do-not-call", tenant, removed)
    return _json(ChangedView(changed=removed))


# The table.

_PAGE = (
    Query("cursor", "Where the previous page ended (its next_cursor)."),
    Query(
        "limit", f"Items per page, 1-{MAX_PAGE}.", {"type": "integer", "default": 50}
    ),
)
_C = "/campaigns/{campaign_id}"


def routes() -> list[Route]:
    lead_status = {"type": "string", "enum": [s.value for s in LeadStatus]}
    campaign_status = {"type": "string", "enum": [s.value for s in CampaignStatus]}
    return [
        Route(
            "POST",
            "/agents",
            create_agent,
            "Create an agent",
            "agents",
            AgentInput,
            response=Agent,
            status=201,
        ),
        Route(
            "GET",
            "/agents",
            list_agents,
            "List agents",
            "agents",
            response=AgentList,
            query=_PAGE,
        ),
        Route(
            "GET", "/agents/{agent_id}", get_agent, "An agent", "agents", response=Agent
        ),
        Route(
            "PATCH",
            "/agents/{agent_id}",
            update_agent,
            "Edit an agent",
            "agents",
            AgentPatch,
            response=Agent,
        ),
        Route(
            "DELETE",
            "/agents/{agent_id}",
            delete_agent,
            "Delete an unused agent",
            "agents",
            status=204,
        ),
        Route(
            "POST",
            "/campaigns",
            create_campaign,
            "Create a draft campaign",
            "campaigns",
            CampaignInput,
            response=CampaignView,
            status=201,
        ),
        Route(
            "GET",
            "/campaigns",
            list_campaigns,
            "List campaigns",
            "campaigns",
            response=CampaignList,
            query=(
                *_PAGE,
                Query("status", "Only campaigns in this status.", campaign_status),
            ),
        ),
        Route(
            "GET", _C, get_campaign, "A campaign", "campaigns", response=CampaignView
        ),
        Route(
            "PATCH",
            _C,
            update_campaign,
            "Edit a draft's name, description or agent",
            "campaigns",
            CampaignPatch,
            response=CampaignView,
        ),
        Route(
            "GET",
            _C + "/overview",
            campaign_overview,
            "Status, pacing, lead counts and call figures",
            "campaigns",
            response=OverviewView,
        ),
        Route(
            "GET",
            _C + "/channel",
            get_channel,
            "The phone number or WhatsApp account",
            "campaign parts",
            response=Channel,
        ),
        Route(
            "PUT",
            _C + "/channel",
            put_channel,
            "Set the channel (draft only)",
            "campaign parts",
            Channel,
            response=Channel,
        ),
        Route(
            "GET",
            _C + "/schedule",
            get_schedule,
            "The calling schedule and pacing",
            "campaign parts",
            response=Schedule,
        ),
        Route(
            "PUT",
            _C + "/schedule",
            put_schedule,
            "Set the schedule (draft or paused)",
            "campaign parts",
            Schedule,
            response=Schedule,
        ),
        Route(
            "GET",
            _C + "/fields",
            get_fields,
            "The custom lead fields",
            "campaign parts",
            response=FieldsBody,
        ),
        Route(
            "PUT",
            _C + "/fields",
            put_fields,
            "Set the custom lead fields (draft only)",
            "campaign parts",
            FieldsBody,
            response=FieldsBody,
        ),
        Route(
            "GET",
            _C + "/follow-ups",
            get_follow_ups,
            "The follow-up rules",
            "campaign parts",
            response=FollowUpsBody,
        ),
        Route(
            "PUT",
            _C + "/follow-ups",
            put_follow_ups,
            "Set the follow-up rules (draft or paused)",
            "campaign parts",
            FollowUpsBody,
            response=FollowUpsBody,
        ),
        Route(
            "GET",
            _C + "/mcp-bindings",
            get_mcp_bindings,
            "The MCP tool servers, secrets masked",
            "campaign parts",
            response=McpBindingsView,
        ),
        Route(
            "PUT",
            _C + "/mcp-bindings",
            put_mcp_bindings,
            "Set the MCP tool servers (draft or paused)",
            "campaign parts",
            McpBindingsBody,
            response=McpBindingsView,
        ),
        Route(
            "GET",
            _C + "/calendar",
            get_calendar,
            "The connected calendar, credentials masked",
            "campaign parts",
            response=CalendarView,
        ),
        Route(
            "PUT",
            _C + "/calendar",
            put_calendar,
            "Connect a Google calendar for bookings (draft or paused)",
            "campaign parts",
            CalendarInput,
            response=CalendarView,
        ),
        Route(
            "GET",
            _C + "/webhook",
            get_webhook,
            "The call-result webhook, secret masked",
            "campaign parts",
            response=WebhookView,
        ),
        Route(
            "PUT",
            _C + "/webhook",
            put_webhook,
            "Set the signed call-result webhook",
            "campaign parts",
            WebhookInput,
            response=WebhookView,
        ),
        Route(
            "GET",
            _C + "/review",
            review_campaign,
            "Every problem that blocks launch",
            "lifecycle",
            response=ReviewView,
        ),
        Route(
            "POST",
            _C + "/launch",
            launch_campaign,
            "Launch a draft whose review is clean",
            "lifecycle",
            response=CampaignView,
        ),
        Route(
            "POST",
            _C + "/pause",
            pause_campaign,
            "Stop new attempts; calls in flight finish",
            "lifecycle",
            response=CampaignView,
        ),
        Route(
            "POST",
            _C + "/resume",
            resume_campaign,
            "Resume a paused campaign",
            "lifecycle",
            response=CampaignView,
        ),
        Route(
            "POST",
            _C + "/archive",
            archive_campaign,
            "Archive: read-only from now on",
            "lifecycle",
            response=CampaignView,
        ),
        Route(
            "POST",
            _C + "/leads/import",
            import_leads,
            "Import leads from CSV",
            "leads",
            body=str,
            body_media="text/csv",
            response=ImportReportView,
            query=(
                Query(
                    "default_region",
                    "Country of numbers written without +country code, e.g. US.",
                ),
            ),
        ),
        Route(
            "POST",
            _C + "/leads",
            create_lead,
            "Add one lead",
            "leads",
            LeadInput,
            response=Lead,
            status=201,
        ),
        Route(
            "GET",
            _C + "/leads",
            list_leads,
            "List leads",
            "leads",
            response=LeadList,
            query=(*_PAGE, Query("status", "Only leads in this status.", lead_status)),
        ),
        Route(
            "GET",
            _C + "/leads/{lead_id}",
            get_lead,
            "A lead and its recent calls",
            "leads",
            response=LeadDetail,
        ),
        Route(
            "GET",
            _C + "/leads/{lead_id}/calls",
            lead_calls,
            "A lead's calls, newest first",
            "calls",
            response=CallList,
            query=_PAGE[1:],
        ),
        Route(
            "GET",
            _C + "/calls/{call_id}",
            get_call,
            "A call: transcript, outcome, fields",
            "calls",
            response=CallRecordModel,
        ),
        Route(
            "GET",
            _C + "/calls/{call_id}/recording",
            call_recording,
            "A call's stereo WAV recording",
            "calls",
            response_media="audio/wav",
        ),
        Route(
            "GET",
            "/dnc",
            list_dnc,
            "The do-not-call list",
            "do not call",
            response=NumberList,
            query=_PAGE,
        ),
        Route(
            "POST",
            "/dnc",
            add_dnc,
            "Add numbers to the do-not-call list",
            "do not call",
            NumbersBody,
            response=ChangedView,
        ),
        Route(
            "POST",
            "/dnc/remove",
            remove_dnc,
            "Remove numbers from the do-not-call list",
            "do not call",
            NumbersBody,
            response=ChangedView,
        ),
    ]


def openapi_document() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("voxdial")
    except PackageNotFoundError:
        release = "0.0.0"
    return build_document(routes(), API_BASE, "voxdial admin API", release)


async def serve_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def admin_app(
    store: Store, *, max_body_bytes: int, max_csv_bytes: int
) -> web.Application:
    """The API as an aiohttp sub-application, to mount at `API_BASE`."""
    app = web.Application(middlewares=[errors, authenticate])
    app[STORE] = store
    app[LIMITS] = {"csv_bytes": max_csv_bytes, "body_bytes": max_body_bytes}
    for route in routes():
        app.router.add_route(route.method, route.path, route.handler)
    return app


def mount(
    app: web.Application, store: Store, *, max_body_bytes: int, max_csv_bytes: int
) -> None:
    """Serve the API under `API_BASE` and its description at /openapi.json."""
    app.router.add_get("/openapi.json", serve_openapi)
    app.add_subapp(
        API_BASE,
        admin_app(store, max_body_bytes=max_body_bytes, max_csv_bytes=max_csv_bytes),
    )
