"""The admin API over real HTTP on loopback, against a real redis-server."""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from campaign_store.models import CallRecordModel
from campaign_store.store import Store
from voice import admin

AGENT = {
    "name": "Clinic assistant",
    "system_prompt": "You confirm appointments for {{company}}. Be brief.",
    "greeting": "Hello {{name}}, this is {{company}} about your visit on {{day}}.",
    "tools": ["end_call", "opt_out", "schedule_callback"],
}
CSV = (
    "\ufeffPhone;Name;Company;Day\n"
    "+1 212 555 0101;Ada Lovelace;Acme;Monday\n"
    '(415) 555-0102;"Grace, Hopper";Acme;Tuesday\n'
    "not a number;Bad Row;Acme;Monday\n"
    "+1 212 555 0101;Ada Again;Acme;Monday\n"
)
SECRET = "Bearer sk-live-1234567890abcd"


@dataclass
class Api:
    url: str
    session: aiohttp.ClientSession
    store: Store

    async def key(self, tenant: str) -> dict[str, str]:
        _, secret = await self.store.create_api_key(tenant)
        return {"Authorization": f"Bearer {secret}"}

    async def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Any = None,
        data: bytes | str | None = None,
        content_type: str = "text/csv",
    ) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": dict(headers)}
        if body is not None:
            kwargs["json"] = body
        if data is not None:
            raw = data.encode() if isinstance(data, str) else data
            kwargs["data"] = io.BytesIO(raw)
            kwargs["headers"]["Content-Type"] = content_type
        async with self.session.request(method, self.url + path, **kwargs) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return response.status, text


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    app = web.Application()
    admin.mount(app, store, max_body_bytes=64 * 1024, max_csv_bytes=8 << 20)
    runner = web.AppRunner(app, lingering_time=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession() as session:
        yield Api(f"http://{host}:{port}", session, store)
    await runner.cleanup()


async def _draft(api: Api, key: dict[str, str]) -> tuple[str, str]:
    status, agent = await api.call("POST", "/api/v1/agents", key, AGENT)
    assert status == 201, agent
    status, campaign = await api.call(
        "POST",
        "/api/v1/campaigns",
        key,
        {"name": "Confirmations", "agent_id": agent["id"]},
    )
    assert status == 201, campaign
    return agent["id"], campaign["id"]


async def test_from_nothing_to_a_launched_campaign(api: Api) -> None:
    """Create, configure, import, review, launch, pause, resume: all over HTTP."""
    key = await api.key("acme")
    _, cid = await _draft(api, key)
    base = f"/api/v1/campaigns/{cid}"

    status, review = await api.call("GET", base + "/review", key)
    assert status == 200 and not review["ready"]
    codes = {p["code"] for p in review["problems"]}
    assert {"no_leads", "no_channel", "unknown_placeholder"} <= codes
    status, refused = await api.call("POST", base + "/launch", key)
    assert status == 409 and refused["error"]["code"] == "not_ready"

    status, _ = await api.call(
        "PUT", base + "/channel", key, {"kind": "phone", "caller_id": "+14155550100"}
    )
    assert status == 200
    schedule = {
        "days": ["mon", "tue", "wed", "thu", "fri"],
        "hours": [
            {"start": "09:00", "end": "12:00"},
            {"start": "14:00", "end": "18:00"},
        ],
        "timezone": "America/Los_Angeles",
        "pacing": {"calls_per_minute": 6, "max_concurrent": 2},
    }
    status, saved = await api.call("PUT", base + "/schedule", key, schedule)
    assert status == 200 and saved["pacing"]["max_concurrent"] == 2
    fields = {"fields": [{"name": "company", "required": True}]}
    assert (await api.call("PUT", base + "/fields", key, fields))[0] == 200
    follow_ups = {
        "follow_ups": [
            {"outcome": "no_answer", "delay_minutes": 120, "max_attempts": 3}
        ]
    }
    assert (await api.call("PUT", base + "/follow-ups", key, follow_ups))[0] == 200
    binding = {
        "name": "crm",
        "url": "http://127.0.0.1:9/mcp",
        "allowed_tools": ["lookup"],
        "headers": {"Authorization": SECRET, "X-CRM-Id": "{{crm_id}}"},
    }
    status, shown = await api.call(
        "PUT", base + "/mcp-bindings", key, {"mcp_bindings": [binding]}
    )
    assert status == 200
    assert shown["mcp_bindings"][0]["headers"]["Authorization"] == {
        "set": True,
        "last4": "abcd",
    }

    status, report = await api.call(
        "POST", base + "/leads/import?default_region=US", key, data=CSV.encode()
    )
    assert status == 200, report
    assert report["accepted"] == 2 and report["rejected"] == 2
    assert report["by_reason"] == {"bad_number": 1, "duplicate": 1}
    assert report["new_fields"] == ["day"]

    status, review = await api.call("GET", base + "/review", key)
    assert review == {"ready": True, "problems": []}, review
    status, launched = await api.call("POST", base + "/launch", key)
    assert status == 200 and launched["status"] == "active"
    status, _ = await api.call("PUT", base + "/schedule", key, schedule)
    assert status == 409

    status, leads = await api.call("GET", base + "/leads?limit=1", key)
    assert status == 200 and len(leads["items"]) == 1 and leads["next_cursor"]
    status, more = await api.call(
        "GET", base + f"/leads?limit=1&cursor={leads['next_cursor']}", key
    )
    assert more["items"][0]["name"] == "Grace, Hopper"
    assert more["items"][0]["timezone"] == "America/Los_Angeles"

    assert (await api.call("POST", base + "/pause", key))[1]["status"] == "paused"
    assert (await api.call("POST", base + "/resume", key))[1]["status"] == "active"
    status, overview = await api.call("GET", base + "/overview", key)
    assert overview["leads"] == 2 and overview["leads_by_status"]["new"] == 2
    assert overview["status"] == "active" and overview["calls_per_minute"] == 6
    assert (await api.call("POST", base + "/archive", key))[1]["status"] == "archived"


async def test_secrets_are_never_returned(api: Api) -> None:
    """MCP header values are write-only: no answer contains them."""
    key = await api.key("acme")
    _, cid = await _draft(api, key)
    base = f"/api/v1/campaigns/{cid}"
    binding = {
        "name": "crm",
        "url": "https://crm.example/mcp",
        "headers": {"A": SECRET},
    }
    for method, path, body in [
        ("PUT", "/mcp-bindings", {"mcp_bindings": [binding]}),
        ("GET", "/mcp-bindings", None),
        ("GET", "", None),
        ("GET", "/overview", None),
    ]:
        status, answer = await api.call(method, base + path, key, body)
        assert status == 200
        assert "sk-live" not in json.dumps(answer)
    status, listed = await api.call("GET", "/api/v1/campaigns", key)
    assert "sk-live" not in json.dumps(listed)
    # Sent again with null, the value is kept.
    binding["headers"] = {"A": None}
    await api.call("PUT", base + "/mcp-bindings", key, {"mcp_bindings": [binding]})
    campaign = await api.store.get_campaign("acme", cid)
    assert campaign.mcp_bindings[0].headers == {"A": SECRET}


async def test_validation_names_each_bad_field(api: Api) -> None:
    """Unknown and invalid fields answer 422 naming each; bad JSON 400."""
    key = await api.key("acme")
    status, answer = await api.call(
        "POST",
        "/api/v1/campaigns",
        key,
        {"name": "", "colour": "red", "schedule": {"hours": [{"start": "25:00"}]}},
    )
    assert status == 422
    named = {d["field"] for d in answer["error"]["details"]}
    assert {"name", "colour", "schedule.hours.0.start", "schedule.hours.0.end"} <= named
    async with api.session.post(
        api.url + "/api/v1/agents",
        data=b"{not json",
        headers={**key, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]["message"]
    status, answer = await api.call("GET", "/api/v1/campaigns?limit=100000", key)
    assert status == 400 and "limit" in answer["error"]["message"]
    status, answer = await api.call(
        "PUT",
        "/api/v1/campaigns/x/schedule",
        key,
        {"timezone": "Mars/Olympus"},
    )
    assert status in (404, 422)


async def test_body_size_limits(api: Api) -> None:
    """Too large a JSON body or CSV upload answers 413."""
    key = await api.key("acme")
    _, cid = await _draft(api, key)
    big = {"name": "x", "description": "y" * 100_000}
    status, answer = await api.call("POST", "/api/v1/campaigns", key, big)
    assert status == 413 and answer["error"]["code"] == "too_large"
    huge = b"phone\n" + b"+12125550101\n" * 700_000
    status, _ = await api.call(
        "POST", f"/api/v1/campaigns/{cid}/leads/import", key, data=huge
    )
    assert status == 413


async def test_requests_without_a_valid_key_are_refused(api: Api) -> None:
    """No key, a malformed header or an unknown key: 401, nothing else."""
    for headers in [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer vxk_no"},
    ]:
        status, answer = await api.call("GET", "/api/v1/campaigns", headers)
        assert status == 401 and answer["error"]["code"] == "unauthorized"


def _fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


async def test_every_route_hides_other_tenants(api: Api, tmp_path: Path) -> None:
    """Each route with an id answers 404 to another tenant, as for a missing id."""
    owner, stranger = await api.key("acme"), await api.key("globex")
    agent_id, cid = await _draft(api, owner)
    status, lead = await api.call(
        "POST", f"/api/v1/campaigns/{cid}/leads", owner, {"phone": "+12125550101"}
    )
    assert status == 201, lead
    recording = tmp_path / "call.wav"
    recording.write_bytes(b"RIFF")
    await api.store.save_call(
        CallRecordModel(
            id="call_1",
            campaign_id=cid,
            lead_id=lead["id"],
            recording_path=str(recording),
        )
    )
    ids = {
        "agent_id": agent_id,
        "campaign_id": cid,
        "lead_id": lead["id"],
        "call_id": "call_1",
    }
    checked = 0
    for route in admin.routes():
        if "{" not in route.path:
            continue
        path = "/api/v1" + _fill(route.path, ids)
        body: Any = None
        data = None
        if route.body_media == "text/csv":
            data = b"phone\n+12125550199\n"
        elif route.body is not None:
            body = {}
        status, answer = await api.call(route.method, path, stranger, body, data)
        assert status in (404, 422), (route.method, route.path, status, answer)
        if status == 422:
            # The body was checked first; a valid one must still be refused.
            continue
        assert answer["error"]["code"] == "not_found"
        checked += 1
        # The owner reaches the same route.
        status, _ = await api.call(route.method, path, owner, body, data)
        # Optional parts not set yet answer 404 to their owner too.
        optional = ("/channel", "/calendar", "/webhook")
        assert status != 404 or route.path.endswith(optional), (route.path, status)
    assert checked >= 15
    status, listed = await api.call("GET", "/api/v1/campaigns", stranger)
    assert listed["items"] == []


async def test_openapi_lists_exactly_the_routes(api: Api) -> None:
    """/openapi.json describes every served route and nothing else."""
    async with api.session.get(api.url + "/openapi.json") as response:
        document = await response.json()
    described = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    app = web.Application()
    admin.mount(app, api.store, max_body_bytes=1, max_csv_bytes=1)
    sub = next(r for r in app.router.resources() if r.canonical == admin.API_BASE)
    served = {
        (route.method, route.resource.canonical)
        for route in sub._app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert described == served
    assert document["openapi"].startswith("3.")
    create = document["paths"]["/api/v1/campaigns"]["post"]
    assert "requestBody" in create and "422" in create["responses"]


async def test_csv_import_of_fifty_thousand_rows(api: Api) -> None:
    """50k rows stream in through HTTP; every one is stored and counted."""
    key = await api.key("acme")
    _, cid = await _draft(api, key)
    areas = ["212", "312", "415", "617", "713"]
    rows = [
        f"+1{areas[i % 5]}{200 + i // 10000 % 700}{i % 10000:04d},Lead {i}"
        for i in range(50_000)
    ]
    body = ("phone,name\n" + "\n".join(rows) + "\n").encode()
    status, report = await api.call(
        "POST", f"/api/v1/campaigns/{cid}/leads/import", key, data=body
    )
    assert status == 200, report
    assert report["rows"] == 50_000
    assert report["accepted"] + report["rejected"] == 50_000
    status, overview = await api.call("GET", f"/api/v1/campaigns/{cid}/overview", key)
    assert overview["leads"] == report["accepted"] > 49_000
