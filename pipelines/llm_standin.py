"""A scripted stand-in for an OpenAI-compatible chat-completions server.

No model is reachable offline, so tests and the offline default talk to this
instead. It speaks the same wire format as the real API (streamed
`chat.completion.chunk` events, tool calls in fragments, `[DONE]`, OpenAI-style
error bodies) and answers from a `Script`: the first `Rule` whose pattern
matches the last user message decides the reply. When the last message is a
tool result, rules are matched against "tool:<name>" instead, and a reply
may quote the result as `{tool_result}`.

A rule can also fail on purpose, the way real servers do:

    http_500    answer 500 with an error body
    disconnect  drop the connection after a few chunks
    stall       send a few chunks, then nothing until the client leaves
    malformed   send a few chunks, then one that is not JSON
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["FAILURES", "Rule", "Script", "StandinServer"]

FAILURES = frozenset({"http_500", "disconnect", "stall", "malformed"})
_FAIL_AFTER = 3  # chunks sent before a mid-stream failure
_ARGUMENT_PIECE = 8  # characters of tool-call arguments per chunk


@dataclass(frozen=True)
class Rule:
    """One scripted answer: `pattern` is a case-insensitive regex."""

    pattern: str
    reply: str = ""
    tool_calls: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    fail: str | None = None
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.fail is not None and self.fail not in FAILURES:
            raise ValueError(f"unknown failure {self.fail!r}; use one of {FAILURES}")
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        object.__setattr__(self, "_regex", re.compile(self.pattern, re.IGNORECASE))

    def matches(self, text: str) -> bool:
        return self._regex.search(text) is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        """Read `{"pattern", "reply"?, "tool_calls"?, "fail"?}`.

        Each tool call is `{"name": ..., "arguments": {...}}` or a
        `[name, arguments]` pair.
        """
        calls: list[tuple[str, Mapping[str, Any]]] = []
        for call in data.get("tool_calls", ()):
            if isinstance(call, Mapping):
                calls.append((str(call["name"]), dict(call.get("arguments", {}))))
            else:
                name, arguments = call
                calls.append((str(name), dict(arguments)))
        return cls(
            pattern=str(data["pattern"]),
            reply=str(data.get("reply", "")),
            tool_calls=tuple(calls),
            fail=data.get("fail"),
        )


@dataclass
class Script:
    """What the stand-in says, and how fast."""

    rules: list[Rule] = field(default_factory=list)
    default_reply: str = "I see. Could you tell me more?"
    tool_reply: str = "Done."
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Script:
        """Read a script from parsed JSON; keys are this class's field names."""
        defaults = cls()
        return cls(
            rules=[Rule.from_dict(rule) for rule in data.get("rules", ())],
            default_reply=str(data.get("default_reply", defaults.default_reply)),
            tool_reply=str(data.get("tool_reply", defaults.tool_reply)),
            first_token_delay_s=float(data.get("first_token_delay_s", 0.0)),
            token_delay_s=float(data.get("token_delay_s", 0.0)),
        )

    def answer(self, messages: Sequence[Mapping[str, Any]]) -> Rule:
        """The rule that answers this conversation."""
        last = messages[-1] if messages else {}
        if last.get("role") in ("tool", "function"):
            subject = f"tool:{_tool_name(messages, last)}"
            fallback = self.tool_reply
        else:
            subject = _last_user_text(messages)
            fallback = self.default_reply
        for rule in self.rules:
            if rule.matches(subject):
                return _quoting(rule, last)
        return _quoting(Rule(pattern="", reply=fallback), last)


def _quoting(rule: Rule, last: Mapping[str, Any]) -> Rule:
    if "{tool_result}" not in rule.reply:
        return rule
    result = _text_of(last.get("content")) if last.get("role") == "tool" else ""
    return replace(rule, reply=rule.reply.replace("{tool_result}", result))


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", ...}]
        return " ".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        )
    return ""


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _tool_name(messages: Sequence[Mapping[str, Any]], result: Mapping[str, Any]) -> str:
    call_id = result.get("tool_call_id")
    for message in reversed(messages):
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and call.get("id") == call_id:
                return str((call.get("function") or {}).get("name", ""))
    return str(result.get("name", ""))


def _error(
    status: int, message: str, kind: str, code: str | None = None
) -> web.Response:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return web.json_response({"error": error}, status=status)


class _Reply:
    """One generated answer, as the chunks or the body the real API sends."""

    def __init__(self, rule: Rule, body: Mapping[str, Any]) -> None:
        self.rule = rule
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = str(body["model"])
        self.pieces = re.findall(r"\s*\S+", rule.reply)
        self.calls = [
            (f"call_{uuid.uuid4().hex[:24]}", name, json.dumps(arguments))
            for name, arguments in rule.tool_calls
        ]
        self.finish_reason = "tool_calls" if self.calls else "stop"
        prompt = sum(len(_text_of(m.get("content")).split()) for m in body["messages"])
        completion = len(self.pieces) + sum(len(a) for _, _, a in self.calls) // 4
        self.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        deltas: list[tuple[dict[str, Any], str | None]] = [
            ({"role": "assistant", "content": "", "refusal": None}, None)
        ]
        deltas += [({"content": piece}, None) for piece in self.pieces]
        for index, (call_id, name, arguments) in enumerate(self.calls):
            function = {"name": name, "arguments": ""}
            head = {
                "index": index,
                "id": call_id,
                "type": "function",
                "function": function,
            }
            deltas.append(({"tool_calls": [head]}, None))
            for start in range(0, len(arguments), _ARGUMENT_PIECE):
                piece = arguments[start : start + _ARGUMENT_PIECE]
                part = {"index": index, "function": {"arguments": piece}}
                deltas.append(({"tool_calls": [part]}, None))
        deltas.append(({}, self.finish_reason))

        chunks = []
        for delta, finish_reason in deltas:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            chunks.append(self._envelope("chat.completion.chunk", [choice]))
            if include_usage:
                chunks[-1]["usage"] = None
        if include_usage:
            chunks.append(
                {**self._envelope("chat.completion.chunk", []), "usage": self.usage}
            )
        return chunks

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.rule.reply or None,
            "refusal": None,
        }
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for call_id, name, arguments in self.calls
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return {**self._envelope("chat.completion", [choice]), "usage": self.usage}

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


class StandinServer:
    """The stand-in on a real socket.

    `requests` holds every parsed request body in order, so tests can check
    what the agent sent; `disconnects` counts streams the client closed
    before they ended.
    """

    def __init__(
        self, script: Script | None = None, *, api_key: str = "", model: str = "standin"
    ) -> None:
        self.script = script or Script()
        self.api_key = api_key
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self._disconnected = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    async def __aenter__(self) -> StandinServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("the stand-in is not started")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # Cancelling the handler when the client goes is how a stream learns
        # that nobody is listening any more.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._base_url = f"http://{bound_host}:{bound_port}/v1"

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_disconnects(
        self, count: int = 1, timeout_s: float = 2.0
    ) -> None:
        """Wait until `count` streams were closed early by their client."""
        async with asyncio.timeout(timeout_s), self._disconnected:
            await self._disconnected.wait_for(lambda: self.disconnects >= count)

    async def _models(self, request: web.Request) -> web.Response:
        if (denied := self._check_key(request)) is not None:
            return denied
        model = {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "voxdial",
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._check_key(request)) is not None:
            return denied
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body is not valid JSON", "invalid_request_error")
        if not isinstance(body, dict):
            return _error(
                400, "the body must be a JSON object", "invalid_request_error"
            )
        self.requests.append(body)
        if not isinstance(body.get("model"), str) or not body["model"]:
            return _error(
                400, "you must provide a model parameter", "invalid_request_error"
            )
        messages = body.get("messages")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and "role" in m for m in messages)
        ):
            return _error(
                400,
                "'messages' must be a non-empty array of messages with a role",
                "invalid_request_error",
            )

        reply = _Reply(self.script.answer(messages), body)
        if reply.rule.fail == "http_500":
            return _error(500, "the stand-in failed on purpose", "server_error")
        if body.get("stream"):
            return await self._stream(request, body, reply)
        await asyncio.sleep(self.script.first_token_delay_s)
        if reply.rule.fail in ("stall", "disconnect", "malformed"):
            await self._fail_here(request, reply.rule.fail)
        return web.json_response(reply.completion())

    async def _stream(
        self, request: web.Request, body: Mapping[str, Any], reply: _Reply
    ) -> web.StreamResponse:
        options = body.get("stream_options") or {}
        chunks = reply.chunks(include_usage=bool(options.get("include_usage")))
        fail_at = min(_FAIL_AFTER, len(chunks) - 1) if reply.rule.fail else -1
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await asyncio.sleep(self.script.first_token_delay_s)
            for index, chunk in enumerate(chunks):
                if index == fail_at and reply.rule.fail is not None:
                    if reply.rule.fail == "malformed":
                        await response.write(_sse('{"choices": [{"delta": {"cont'))
                    await self._fail_here(request, reply.rule.fail)
                    return response
                if index > 1:
                    await asyncio.sleep(self.script.token_delay_s)
                await response.write(_sse(chunk))
            await response.write(_sse("[DONE]"))
        except (asyncio.CancelledError, ConnectionResetError):
            # The client went away mid-stream: barge-in, a timeout, an error.
            async with self._disconnected:
                self.disconnects += 1
                self._disconnected.notify_all()
            raise
        return response

    async def _fail_here(self, request: web.Request, fail: str) -> None:
        if fail == "stall":
            await self._stopping.wait()
        elif fail == "disconnect" and request.transport is not None:
            request.transport.abort()

    def _check_key(self, request: web.Request) -> web.Response | None:
        if not self.api_key:
            return None
        given = request.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            return _error(
                401,
                "You didn't provide an API key in the Authorization header.",
                "invalid_request_error",
            )
        if given.removeprefix("Bearer ") != self.api_key:
            # Echo the key as some servers do; the client must not repeat it.
            return _error(
                401,
                f"Incorrect API key provided: {given.removeprefix('Bearer ')}",
                "invalid_request_error",
                "invalid_api_key",
            )
        return None
