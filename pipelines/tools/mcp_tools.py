"""The tools of a campaign's MCP bindings, for the length of one call.

`McpToolbox` connects every binding when the call starts (streamable HTTP or
SSE, through the official `mcp` client), offers the model the tools each
binding allows as OpenAI function definitions, runs the ones it calls, and
closes everything when the call ends::

    async with McpToolbox.open(campaign.mcp_bindings, lead.fields) as box:
        tools = box.openai_tools()          # name: "<binding>__<tool>"
        text = await box.call("crm__lookup_customer", '{"crm_id": "C-1"}')

Rules that hold whatever the servers do:

- Only a binding's `allowed_tools` are offered. An empty list offers nothing:
  a new binding is inert until someone names the tools the agent may use.
  A name that was not offered is refused before anything reaches a server.
- Header values may hold `{{field}}` placeholders, filled from the lead's
  fields. A header whose placeholder has no value (or whose value would break
  the header line) is dropped, and only its name is logged.
- Header values are secrets. They never appear in a log line, an exception
  message, a tool result or a repr: text that comes back from a server or a
  library is scrubbed of them before we pass it on. A value made only of
  placeholders carries the lead's own fields, which the agent already knows,
  and is not scrubbed; nor is one shorter than 8 characters, which is no
  credential and would mangle ordinary text.
- A binding that cannot connect within `connect_timeout_s` is logged (its
  name and why) and skipped; the others still work.
- Leaving the context closes every session and its transport within
  `CLOSE_GRACE_S`, even when a server hangs.

Each binding's transport and `ClientSession` live in one `AsyncExitStack` in
a task of their own, entered and exited by that task. The `mcp` client runs
on anyio task groups, whose cancel scopes must exit in the task and order
they were entered; owning them in a dedicated task keeps that true, and keeps
a transport that dies from cancelling the call's own task.

Errors (`pipelines.errors.PipelineError` is the root of the package)::

    ToolError           a tool call did not give a result
    ├── ToolTimeout     no answer within `call_timeout_s`
    ├── ToolUnavailable the binding's server is not connected (or went away)
    └── ToolFailed      the tool reported an error or raised; the name was not
                        offered; the arguments were not a JSON object
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from campaign_store.models import FieldValue, McpBinding
from pipelines.errors import PipelineError
from pipelines.llm import render_template

__all__ = [
    "CLOSE_GRACE_S",
    "McpToolbox",
    "ToolError",
    "ToolFailed",
    "ToolTimeout",
    "ToolUnavailable",
]

logger = logging.getLogger(__name__)

Log = logging.Logger | logging.LoggerAdapter[Any]

CLOSE_GRACE_S = 0.5  # how long a closing session may wait on its server
_STREAM_READ_TIMEOUT_S = 300.0  # a server's event stream may idle this long
_MIN_SECRET = 8  # shorter header values are not scrubbed (see the module rules)
_MAX_PAGES = 20  # of a tools/list answer; a server that pages on is cut off
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")  # as render_template
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x1f\x7f]")
_CLIENT_INFO = types.Implementation(name="voxdial", version="0.1.0")


class ToolError(PipelineError):
    """Root of the errors a tool call raises; the message is safe to log."""


class ToolTimeout(ToolError):
    """The tool did not answer within the call timeout."""


class ToolUnavailable(ToolError):
    """The binding's server is not connected: it failed to connect or went away."""


class ToolFailed(ToolError):
    """The tool reported an error or raised, or the call was refused."""


@dataclass(frozen=True, slots=True)
class _Offer:
    """One tool as the model sees it, and where it really lives."""

    name: str  # "<binding>__<tool>", what the model calls
    binding: str
    tool: str  # the server's own name for it
    description: str
    parameters: dict[str, Any]


class _Scrubber:
    """Replaces secret header values in text that is about to leave us."""

    def __init__(self, secrets: Sequence[str]) -> None:
        # Longest first, so a secret that contains another goes whole.
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


class _ScrubSdkLogs(logging.Filter):
    """Scrubs every open toolbox's secrets from the `mcp` client's log records.

    The SDK logs whole messages at DEBUG, and a careless server may echo a
    header back in a result or an error. Only records that carry a secret are
    rewritten; the filter sits on the client-side loggers the SDK creates at
    import (a logger filter does not reach its children, so each gets one).
    """

    def __init__(self) -> None:
        super().__init__()
        self._scrubbers: tuple[_Scrubber, ...] = ()  # replaced whole: thread-safe

    def add(self, scrub: _Scrubber) -> None:
        self._scrubbers = (*self._scrubbers, scrub)

    def remove(self, scrub: _Scrubber) -> None:
        self._scrubbers = tuple(s for s in self._scrubbers if s is not scrub)

    def filter(self, record: logging.LogRecord) -> bool:
        scrubbers = self._scrubbers
        if not scrubbers:
            return True
        message = clean = record.getMessage()
        for scrub in scrubbers:
            clean = scrub(clean)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            for scrub in scrubbers:
                text = scrub(text)
            record.exc_text = text
        return True


_SDK_LOGS = _ScrubSdkLogs()
for _name, _logger in list(logging.root.manager.loggerDict.items()):
    if isinstance(_logger, logging.Logger) and _name.startswith(
        ("mcp.client", "mcp.shared", "httpx2", "httpcore2")
    ):
        _logger.addFilter(_SDK_LOGS)


def _render_headers(
    binding: McpBinding, fields: Mapping[str, str], log: Log
) -> tuple[dict[str, str], list[str]]:
    """The binding's headers for this lead, and which of their values are secret."""
    headers: dict[str, str] = {}
    secrets: list[str] = []
    for name, template in binding.headers.items():
        placeholders = _PLACEHOLDER.findall(template)
        if any(not fields.get(p) for p in placeholders):
            log.warning(
                "MCP binding %s: header %s dropped, the lead has no value for it",
                binding.name,
                name,
            )
            continue
        value = render_template(template, fields)
        if _BAD_HEADER_VALUE.search(value):
            log.warning(
                "MCP binding %s: header %s dropped, its value has control characters",
                binding.name,
                name,
            )
            continue
        headers[name] = value
        if _PLACEHOLDER.sub("", template).strip() and len(value) >= _MIN_SECRET:
            secrets.append(value)
    return headers, secrets


def _tool_name(binding: str, tool: str) -> str:
    return _NOT_IN_NAME.sub("_", f"{binding}__{tool}")[:64]


def _reason(exc: BaseException) -> str:
    """A short account of a failure: the innermost errors of a group, by type."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_reason(inner) for inner in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Connection:
    """One binding's transport and session, owned by a task of its own.

    `run` enters both, lists the tools, sets `ready`, and holds them until
    `stop` is set; then it leaves them within `CLOSE_GRACE_S`. Every path
    out sets `ready` and clears `session`.
    """

    def __init__(
        self,
        binding: McpBinding,
        headers: dict[str, str],
        connect_timeout_s: float,
        scrub: _Scrubber,
        log: Log,
    ) -> None:
        self.name = binding.name
        self.session: ClientSession | None = None
        self.tools: list[types.Tool] = []
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._url = binding.url
        self._transport = binding.transport
        self._headers = headers
        self._connect_timeout_s = connect_timeout_s
        self._scrub = scrub
        self._log = log

    def __repr__(self) -> str:
        return f"<_Connection {self.name} connected={self.session is not None}>"

    def stop(self) -> None:
        self._stop.set()

    async def _enter_transport(self, stack: AsyncExitStack) -> tuple[Any, Any]:
        """Open the transport on `stack`; its read and write streams."""
        # Connecting and each POST are bounded by the connect timeout; the
        # read timeout is the long one, for the server's event stream.
        if self._transport == "sse":
            transport = sse_client(
                self._url,
                headers=self._headers,
                timeout=self._connect_timeout_s,
                sse_read_timeout=_STREAM_READ_TIMEOUT_S,
            )
        else:
            timeout = httpx2.Timeout(
                self._connect_timeout_s, read=_STREAM_READ_TIMEOUT_S
            )
            # The transport leaves a client it is given open: the stack owns it.
            client = await stack.enter_async_context(
                httpx2.AsyncClient(headers=self._headers, timeout=timeout)
            )
            transport = streamable_http_client(self._url, http_client=client)
        streams = await stack.enter_async_context(transport)
        return streams[0], streams[1]

    async def run(self) -> None:
        connected = False
        try:
            deadline = anyio.current_time() + self._connect_timeout_s
            with anyio.CancelScope(deadline=deadline) as scope:
                async with AsyncExitStack() as stack:
                    # Connect: transport, handshake, the tool list.
                    read, write = await self._enter_transport(stack)
                    session = await stack.enter_async_context(
                        ClientSession(read, write, client_info=_CLIENT_INFO)
                    )
                    await session.initialize()
                    self.tools = await _list_tools(session)

                    # Serve: calls come from the call's task through `session`.
                    scope.deadline = math.inf
                    connected = True
                    self.session = session
                    self.ready.set()
                    await self._stop.wait()

                    # Close: the stack unwinds under a short deadline.
                    self.session = None
                    scope.deadline = anyio.current_time() + CLOSE_GRACE_S
            if scope.cancelled_caught and not connected:
                self._log.warning(
                    "MCP binding %s skipped: no answer within %.1f s",
                    self.name,
                    self._connect_timeout_s,
                )
            elif scope.cancelled_caught:
                self._log.debug("MCP binding %s: closing cut short", self.name)
        except Exception as exc:
            what = "lost" if connected else "skipped"
            self._log.warning(
                "MCP binding %s %s: %s", self.name, what, self._scrub(_reason(exc))
            )
        finally:
            self.session = None
            self.ready.set()


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    params: types.PaginatedRequestParams | None = None
    for _ in range(_MAX_PAGES):
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        if page.next_cursor is None:
            break
        params = types.PaginatedRequestParams(cursor=page.next_cursor)
    return tools


def _result_text(result: types.CallToolResult) -> str:
    """Text blocks joined; failing those, the structured content as JSON."""
    texts = [b.text for b in result.content if isinstance(b, types.TextContent)]
    if texts or result.structured_content is None:
        return "\n".join(texts)
    return json.dumps(result.structured_content, ensure_ascii=False)


class McpToolbox:
    """The tools of a campaign's MCP bindings, connected for one call.

    Build it with `open` and enter it; entering connects every binding at
    once (bounded by `connect_timeout_s`), leaving closes them all.
    """

    def __init__(
        self,
        bindings: Sequence[McpBinding],
        fields: Mapping[str, FieldValue],
        connect_timeout_s: float,
        call_timeout_s: float,
        log: Log,
    ) -> None:
        self._bindings = list(bindings)
        self._fields = {k: "" if v is None else str(v) for k, v in fields.items()}
        self._connect_timeout_s = connect_timeout_s
        self._call_timeout_s = call_timeout_s
        self._log = log
        self._connections: dict[str, _Connection] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._offers: dict[str, _Offer] = {}
        self._scrub = _Scrubber([])

    @classmethod
    def open(
        cls,
        bindings: Sequence[McpBinding],
        fields: Mapping[str, FieldValue],
        *,
        connect_timeout_s: float = 5.0,
        call_timeout_s: float = 8.0,
        log: Log | None = None,
    ) -> McpToolbox:
        """A toolbox for these bindings and this lead; enter it to connect."""
        return cls(bindings, fields, connect_timeout_s, call_timeout_s, log or logger)

    def __repr__(self) -> str:
        connected = sorted(n for n, c in self._connections.items() if c.session)
        return f"<McpToolbox connected={connected} tools={len(self._offers)}>"

    async def __aenter__(self) -> Self:
        try:
            await self._connect()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _connect(self) -> None:
        # Render every binding's headers first: each scrubs all the secrets.
        rendered: list[tuple[McpBinding, dict[str, str]]] = []
        secrets: list[str] = []
        for binding in self._bindings:
            if any(binding.name == seen.name for seen, _ in rendered):
                self._log.warning("MCP binding %s listed twice", binding.name)
                continue
            headers, binding_secrets = _render_headers(binding, self._fields, self._log)
            rendered.append((binding, headers))
            secrets += binding_secrets
        self._scrub = _Scrubber(secrets)
        if secrets:
            _SDK_LOGS.add(self._scrub)

        # Connect them all at once, each in a task of its own. Each gives up
        # by itself at the deadline; the margin covers its unwinding.
        for binding, headers in rendered:
            connection = _Connection(
                binding, headers, self._connect_timeout_s, self._scrub, self._log
            )
            self._connections[binding.name] = connection
            self._tasks.append(
                asyncio.create_task(connection.run(), name=f"mcp-{binding.name}")
            )
        waiters = [
            asyncio.create_task(c.ready.wait()) for c in self._connections.values()
        ]
        try:
            if waiters:
                await asyncio.wait(
                    waiters, timeout=self._connect_timeout_s + CLOSE_GRACE_S
                )
        finally:
            for waiter in waiters:
                waiter.cancel()

        # Offer what each connected binding allows and its server has.
        for binding, _ in rendered:
            connection = self._connections[binding.name]
            if connection.session is not None:
                self._offer(binding, connection.tools)
        self._log.info(
            "MCP tools ready: %d from %d of %d bindings",
            len(self._offers),
            sum(1 for c in self._connections.values() if c.session is not None),
            len(self._connections),
        )

    def _offer(self, binding: McpBinding, tools: Sequence[types.Tool]) -> None:
        listed = {tool.name: tool for tool in tools}
        for tool_name in binding.allowed_tools:
            tool = listed.get(tool_name)
            if tool is None:
                self._log.warning(
                    "MCP binding %s: allowed tool %s is not on the server",
                    binding.name,
                    tool_name,
                )
                continue
            name = _tool_name(binding.name, tool.name)
            if name in self._offers:
                self._log.warning(
                    "MCP binding %s: tool %s left out, its name %s is taken",
                    binding.name,
                    tool.name,
                    name,
                )
                continue
            self._offers[name] = _Offer(
                name=name,
                binding=binding.name,
                tool=tool.name,
                description=tool.description or tool.title or tool.name,
                parameters=tool.input_schema,
            )

    async def _close(self) -> None:
        for connection in self._connections.values():
            connection.stop()
        if self._tasks:
            # Each task leaves within the grace; one that does not is cancelled.
            _, late = await asyncio.wait(self._tasks, timeout=CLOSE_GRACE_S + 0.2)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=0.2)
            self._tasks.clear()
        _SDK_LOGS.remove(self._scrub)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The offered tools as OpenAI chat-completions tool definitions."""
        return [
            {
                "type": "function",
                "function": {
                    "name": offer.name,
                    "description": offer.description,
                    "parameters": offer.parameters,
                },
            }
            for offer in self._offers.values()
        ]

    def owns(self, name: str) -> bool:
        """Whether `name` is one of the tools this toolbox offered."""
        return name in self._offers

    async def call(self, name: str, arguments_json: str) -> str:
        """Run an offered tool with the model's JSON arguments; its text result."""
        offer = self._offers.get(name)
        if offer is None:
            raise ToolFailed(f"no tool {name[:64]!r} was offered")
        try:
            arguments = json.loads(arguments_json) if arguments_json.strip() else {}
        except json.JSONDecodeError as exc:
            raise ToolFailed(f"{name}: the arguments are not JSON") from exc
        if not isinstance(arguments, dict):
            raise ToolFailed(f"{name}: the arguments are not a JSON object")
        session = self._connections[offer.binding].session
        if session is None:
            raise ToolUnavailable(f"{name}: MCP binding {offer.binding} is gone")

        self._log.debug("MCP tool %s called", name)
        try:
            # The SDK's clock starts once the request is written; ours bounds
            # the write too, which waits when the transport is stuck.
            async with asyncio.timeout(self._call_timeout_s):
                result = await session.call_tool(
                    offer.tool, arguments, read_timeout_seconds=self._call_timeout_s
                )
        except TimeoutError as exc:
            raise ToolTimeout(f"{name}: no answer in {self._call_timeout_s} s") from exc
        except MCPError as exc:
            # The server's words, scrubbed; the original is not chained
            # because it carries them unscrubbed.
            if exc.code == types.REQUEST_TIMEOUT:
                raise ToolTimeout(
                    f"{name}: no answer in {self._call_timeout_s} s"
                ) from None
            if exc.code == types.CONNECTION_CLOSED:
                raise ToolUnavailable(
                    f"{name}: MCP binding {offer.binding} closed"
                ) from None
            raise ToolFailed(f"{name}: {self._scrub(exc.message)[:300]}") from None
        except Exception as exc:
            # A result the SDK could not make sense of; its message may quote
            # the server, so only the type is kept.
            raise ToolFailed(f"{name}: {type(exc).__name__}") from None
        text = self._scrub(_result_text(result))
        if result.is_error:
            raise ToolFailed(f"{name}: {text[:300]}")
        return text
