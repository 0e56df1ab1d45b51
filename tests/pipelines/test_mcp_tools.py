"""The MCP toolbox against a real `mcp` server over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from campaign_store.models import McpBinding
from pipelines.tools.mcp_tools import (
    McpToolbox,
    ToolError,
    ToolFailed,
    ToolTimeout,
    ToolUnavailable,
)
from tests.pipelines.mcp_server_app import CRM_AUTH, CRM_TOKEN, McpTestServer

LEAD = {"crm_id": "C-1042", "first_name": "Dana"}
HEADERS = {"Authorization": "Bearer " + CRM_TOKEN, "X-CRM-Id": "{{crm_id}}"}
LOOKUP = json.dumps({"crm_id": "C-1042"})


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, McpTestServer]]:
    started = {kind: McpTestServer(kind) for kind in ("streamable_http", "sse")}
    for server in started.values():
        server.start()
    yield started
    for server in started.values():
        server.stop()


@pytest.fixture
def http(servers: dict[str, McpTestServer]) -> McpTestServer:
    server = servers["streamable_http"]
    server.seen.headers.clear()
    server.seen.calls.clear()
    return server


@pytest.fixture
def sse(servers: dict[str, McpTestServer]) -> McpTestServer:
    server = servers["sse"]
    server.seen.headers.clear()
    server.seen.calls.clear()
    return server


def binding(server_or_url: McpTestServer | str, **overrides: Any) -> McpBinding:
    if isinstance(server_or_url, McpTestServer):
        url, transport = server_or_url.url, server_or_url.transport
    else:
        url, transport = server_or_url, "streamable_http"
    settings: dict[str, Any] = {
        "name": "crm",
        "url": url,
        "transport": transport,
        "allowed_tools": ["lookup_customer", "account_summary", "slow", "broken"],
        "headers": dict(HEADERS),
    }
    settings.update(overrides)
    return McpBinding(**settings)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FreezingProxy:
    """A TCP relay to a real server that can stop relaying: a server that hangs."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.frozen = asyncio.Event()
        self.port = 0
        self._closing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._relays: list[asyncio.Task[Any]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._closing.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._relays, return_exceptions=True)
        for writer in self._writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _relay(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.append(task)
        self._writers.append(client_w)
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_w)
        await asyncio.gather(self._pump(client_r, up_w), self._pump(up_r, client_w))

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    await self._closing.wait()  # hold the bytes until teardown
                    break
                writer.write(data)
                await writer.drain()
        writer.close()


@pytest.fixture
async def frozen_later() -> AsyncIterator[tuple[McpTestServer, FreezingProxy]]:
    server = McpTestServer("streamable_http")
    server.start()
    async with FreezingProxy(server.port) as proxy:
        yield server, proxy
    server.stop()


def names(box: McpToolbox) -> list[str]:
    return [tool["function"]["name"] for tool in box.openai_tools()]


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_call_reaches_server_with_lead_headers(
    transport: str, http: McpTestServer, sse: McpTestServer
) -> None:
    """Both transports connect, call a tool and send the lead's rendered headers."""
    server = http if transport == "streamable_http" else sse
    async with McpToolbox.open([binding(server)], LEAD) as box:
        text = await box.call("crm__lookup_customer", LOOKUP)
    assert text == "Customer C-1042: Dana Reyes, plan Gold, renews 2025-03-01"
    seen = server.seen.headers[-1]
    assert seen["authorization"] == CRM_AUTH
    assert seen["x-crm-id"] == "C-1042"


async def test_structured_result_comes_back_as_json(http: McpTestServer) -> None:
    """A tool returning a mapping gives JSON text the model can read."""
    async with McpToolbox.open([binding(http)], LEAD) as box:
        text = await box.call("crm__account_summary", LOOKUP)
    assert json.loads(text) == {"crm_id": "C-1042", "balance": 42.5}


async def test_wrong_token_is_refused_by_server(http: McpTestServer) -> None:
    """A header the server rejects surfaces as ToolFailed with the server's reason."""
    bad = binding(
        http,
        headers={"Authorization": "Bearer wrong-token-123", "X-CRM-Id": "{{crm_id}}"},
    )
    async with McpToolbox.open([bad], LEAD) as box:
        with pytest.raises(ToolFailed, match="unauthorized"):
            await box.call("crm__lookup_customer", LOOKUP)
    assert http.seen.calls == ["lookup_customer"]


async def test_header_without_lead_value_is_dropped(
    http: McpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A placeholder with no value drops its header; only its name is logged."""
    caplog.set_level(logging.WARNING, logger="pipelines.tools.mcp_tools")
    async with McpToolbox.open([binding(http)], {"first_name": "Dana"}) as box:
        with pytest.raises(ToolFailed, match="may not read"):
            await box.call("crm__lookup_customer", LOOKUP)
    assert "x-crm-id" not in http.seen.headers[-1]
    assert http.seen.headers[-1]["authorization"] == CRM_AUTH
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped == [
        "MCP binding crm: header X-CRM-Id dropped, the lead has no value for it"
    ]


async def test_only_allowed_tools_are_offered(http: McpTestServer) -> None:
    """The allowed list is offered as OpenAI functions with the server's schemas."""
    allowed = binding(http, allowed_tools=["lookup_customer", "not_on_server"])
    async with McpToolbox.open([allowed], LEAD) as box:
        tools = box.openai_tools()
        assert box.owns("crm__lookup_customer")
        assert not box.owns("crm__delete_account")
    assert len(tools) == 1
    assert tools[0]["type"] == "function"
    function = tools[0]["function"]
    assert function["name"] == "crm__lookup_customer"
    assert function["description"] == "Look up a customer by CRM id."
    assert function["parameters"]["type"] == "object"
    assert function["parameters"]["required"] == ["crm_id"]


async def test_tool_names_are_made_safe_for_openai(http: McpTestServer) -> None:
    """A tool name with a dot is offered under a safe name and still reached."""
    dotted = binding(http, allowed_tools=["billing.balance"])
    async with McpToolbox.open([dotted], LEAD) as box:
        assert names(box) == ["crm__billing_balance"]
        assert await box.call("crm__billing_balance", LOOKUP) == "C-1042 owes 42.50"
    assert http.seen.calls == ["billing.balance"]


async def test_tool_not_offered_never_reaches_server(http: McpTestServer) -> None:
    """A tool outside the allowed list is refused before any request goes out."""
    async with McpToolbox.open([binding(http)], LEAD) as box:
        for name in ("crm__delete_account", "delete_account", "other__lookup_customer"):
            with pytest.raises(ToolFailed, match="offered"):
                await box.call(name, LOOKUP)
    assert "delete_account" not in http.seen.calls


async def test_empty_allowed_list_offers_nothing(http: McpTestServer) -> None:
    """A binding that names no tools offers none."""
    async with McpToolbox.open([binding(http, allowed_tools=[])], LEAD) as box:
        assert box.openai_tools() == []
        with pytest.raises(ToolFailed):
            await box.call("crm__lookup_customer", LOOKUP)


async def test_arguments_must_be_a_json_object(http: McpTestServer) -> None:
    """Arguments that are not JSON, or not an object, are refused without a request."""
    async with McpToolbox.open([binding(http)], LEAD) as box:
        for arguments in ("{crm_id", '["C-1042"]', '"C-1042"'):
            with pytest.raises(ToolFailed, match="arguments"):
                await box.call("crm__lookup_customer", arguments)
    assert http.seen.calls == []


@pytest.mark.parametrize("transport", ["streamable_http", "sse"])
async def test_slow_tool_times_out_and_box_stays_usable(
    transport: str, http: McpTestServer, sse: McpTestServer
) -> None:
    """A tool slower than the timeout raises ToolTimeout; the next call works."""
    server = http if transport == "streamable_http" else sse
    async with McpToolbox.open([binding(server)], LEAD, call_timeout_s=0.3) as box:
        with pytest.raises(ToolTimeout):
            await box.call("crm__slow", '{"seconds": 5}')
        assert await box.call("crm__slow", '{"seconds": 0}') == "finally"


async def test_failing_tool_raises_tool_failed(http: McpTestServer) -> None:
    """A tool that reports an error raises ToolFailed carrying its message."""
    async with McpToolbox.open([binding(http)], LEAD) as box:
        with pytest.raises(ToolFailed, match="database is down"):
            await box.call("crm__broken", "{}")


async def test_unreachable_bindings_are_skipped(
    http: McpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused and a silent server are skipped and logged; the other still serves."""
    caplog.set_level(logging.WARNING, logger="pipelines.tools.mcp_tools")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    with silent:
        port = silent.getsockname()[1]
        bindings = [
            binding(f"http://127.0.0.1:{free_port()}/mcp", name="refused"),
            binding(f"http://127.0.0.1:{port}/sse", name="silent", transport="sse"),
            binding(http),
        ]
        async with McpToolbox.open(bindings, LEAD, connect_timeout_s=0.5) as box:
            assert all(name.startswith("crm__") for name in names(box))
            assert await box.call("crm__lookup_customer", LOOKUP)
    messages = [r.getMessage() for r in caplog.records]
    skipped = sorted(m.split()[2] for m in messages if " skipped" in m)
    assert skipped == ["refused", "silent"]


async def test_secret_never_leaks(
    http: McpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The header secret stays out of logs, exception messages, results and reprs."""
    caplog.set_level(logging.DEBUG)
    leaky = binding(http, allowed_tools=["whoami", "slow", "broken"])
    dead = binding(
        f"http://127.0.0.1:{free_port()}/mcp",
        name="dead",
        headers={"Authorization": CRM_AUTH},
    )
    errors: list[ToolError] = []
    async with McpToolbox.open([leaky, dead], LEAD, call_timeout_s=0.3) as box:
        text = await box.call("crm__whoami", '{"fail": false}')
        assert text.startswith("you are ") and text.endswith("[redacted]")
        for name, arguments in [
            ("crm__whoami", '{"fail": true}'),
            ("crm__slow", '{"seconds": 5}'),
            ("crm__broken", "{}"),
            ("dead__whoami", "{}"),
        ]:
            with pytest.raises(ToolError) as caught:
                await box.call(name, arguments)
            errors.append(caught.value)
        assert CRM_TOKEN not in repr(box)
    assert "[redacted] expired" in str(errors[0])
    assert all(CRM_TOKEN not in str(error) for error in errors)
    # The test server logs what it sends, secret and all: that is its business.
    server_side = ("mcp.server", "sse_starlette", "uvicorn")
    ours = [r for r in caplog.records if not r.name.startswith(server_side)]
    assert any(r.name.startswith("mcp.client") for r in ours)
    assert all(CRM_TOKEN not in r.getMessage() for r in ours)
    assert all(CRM_TOKEN not in (r.exc_text or "") for r in ours)


async def test_closing_is_prompt_with_a_call_in_flight(sse: McpTestServer) -> None:
    """Leaving ends a pending call as unavailable, in well under a second."""
    async with McpToolbox.open([binding(sse)], LEAD, call_timeout_s=30) as box:
        pending = asyncio.create_task(box.call("crm__slow", '{"seconds": 20}'))
        await asyncio.sleep(0.1)
        started = time.monotonic()
    closed_in = time.monotonic() - started
    with pytest.raises(ToolUnavailable):
        await pending
    assert closed_in < 1.0


async def test_server_that_hangs_times_out_and_closes_promptly(
    frozen_later: tuple[McpTestServer, FreezingProxy],
) -> None:
    """A server that stops answering times the call out; closing takes under 1 s."""
    server, proxy = frozen_later
    url = f"http://127.0.0.1:{proxy.port}{server.path}"
    async with McpToolbox.open([binding(url)], LEAD, call_timeout_s=0.3) as box:
        assert await box.call("crm__lookup_customer", LOOKUP)
        proxy.frozen.set()
        with pytest.raises(ToolTimeout):
            await box.call("crm__lookup_customer", LOOKUP)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
