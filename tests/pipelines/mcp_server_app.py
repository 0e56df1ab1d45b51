"""A real MCP server for the toolbox tests, served by uvicorn on loopback.

`McpTestServer` runs the `mcp` package's `MCPServer` (FastMCP in mcp 1.x) over
streamable HTTP or SSE in a thread with its own event loop, so a tool that
hangs blocks the server, never the client under test. The CRM tools check the
request's `Authorization` and `X-CRM-Id` headers as a real CRM would.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

CRM_TOKEN = "sk-crm-7f3a9c1e5b2d4680"
CRM_AUTH = "Bearer " + CRM_TOKEN

Transport = Literal["streamable_http", "sse"]


@dataclass
class Seen:
    """What the server saw, read by the tests (appends are thread-safe)."""

    headers: list[dict[str, str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


def build_server(seen: Seen) -> MCPServer:
    """The CRM the agent talks to: one checked lookup and a few misbehaving tools."""
    server = MCPServer("crm-standin")

    @server.tool()
    def lookup_customer(crm_id: str, ctx: Context) -> str:
        """Look up a customer by CRM id."""
        headers = dict(ctx.headers or {})
        seen.calls.append("lookup_customer")
        seen.headers.append(headers)
        if headers.get("authorization") != CRM_AUTH:
            raise ToolError("unauthorized")
        if headers.get("x-crm-id") != crm_id:
            raise ToolError("this token may not read that customer")
        return f"Customer {crm_id}: Dana Reyes, plan Gold, renews 2025-03-01"

    @server.tool()
    def account_summary(crm_id: str) -> dict[str, Any]:
        """A customer's balance, as structured content."""
        seen.calls.append("account_summary")
        return {"crm_id": crm_id, "balance": 42.5}

    @server.tool()
    async def slow(seconds: float) -> str:
        """Take `seconds` to answer."""
        seen.calls.append("slow")
        await asyncio.sleep(seconds)
        return "finally"

    @server.tool()
    def broken() -> str:
        """Always fails."""
        seen.calls.append("broken")
        raise ToolError("the CRM database is down")

    @server.tool(name="billing.balance")
    def billing_balance(crm_id: str) -> str:
        """A name with a dot, which OpenAI tool names may not carry."""
        seen.calls.append("billing.balance")
        return f"{crm_id} owes 42.50"

    @server.tool()
    def whoami(fail: bool, ctx: Context) -> str:
        """Echoes the Authorization header: a careless server leaking a secret."""
        seen.calls.append("whoami")
        auth = (ctx.headers or {}).get("authorization", "")
        if fail:
            raise ToolError(f"token {auth} expired")
        return f"you are {auth}"

    @server.tool()
    def delete_account(crm_id: str) -> str:
        """Never offered to the agent."""
        seen.calls.append("delete_account")
        return f"deleted {crm_id}"

    return server


class McpTestServer:
    """One `MCPServer` app served on 127.0.0.1 with a free port, in a thread."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.seen = Seen()
        mcp = build_server(self.seen)
        if transport == "sse":
            app = mcp.sse_app()
            path = "/sse"
        else:
            app = mcp.streamable_http_app()
            path = "/mcp"
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.path = path
        self.url = f"http://127.0.0.1:{self.port}{path}"
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            ws="none",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def start(self) -> None:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.01)
        raise RuntimeError("the MCP test server did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._sock.close()
