"""The chat client against the scripted stand-in, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from pipelines.errors import LLMError
from pipelines.llm import ChatClient, Done, LLMConfig, LLMEvent, TextDelta, ToolCall
from pipelines.llm_standin import Rule, Script, StandinServer

HELLO = [{"role": "user", "content": "Hello?"}]
BOOK_TOOL = {
    "type": "function",
    "function": {
        "name": "book_meeting",
        "parameters": {"type": "object", "properties": {"day": {"type": "string"}}},
    },
}

MakeClient = Callable[..., ChatClient]


@pytest.fixture
async def server() -> AsyncIterator[StandinServer]:
    async with StandinServer() as server:
        yield server


@pytest.fixture
async def make_client(server: StandinServer) -> AsyncIterator[MakeClient]:
    clients: list[ChatClient] = []

    def make(**overrides: Any) -> ChatClient:
        settings: dict[str, Any] = {
            "base_url": server.base_url,
            "api_key": "",
            "model": "test-model",
            "timeout_s": 2.0,
        }
        settings.update(overrides)
        clients.append(ChatClient(LLMConfig(**settings)))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def collect(
    client: ChatClient, messages: list[dict[str, Any]], **kwargs: Any
) -> list[LLMEvent]:
    return [event async for event in client.stream(messages, **kwargs)]


async def test_text_streams_in_pieces(server: StandinServer, make_client: MakeClient):
    """A reply arrives as several text deltas, then Done with usage."""
    server.script = Script(rules=[Rule("hello", reply="Hi there, this is Ana.")])
    events = await collect(make_client(), HELLO)

    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) > 1
    assert "".join(texts) == "Hi there, this is Ana."
    assert isinstance(events[-1], Done)
    assert events[-1].finish_reason == "stop"
    assert events[-1].usage is not None
    assert events[-1].usage["completion_tokens"] == len(texts)


async def test_tool_calls_are_assembled(server: StandinServer, make_client: MakeClient):
    """Tool-call fragments come out as whole calls, in order, before Done."""
    server.script = Script(
        rules=[
            Rule(
                "tuesday",
                reply="Booking that.",
                tool_calls=(
                    ("book_meeting", {"day": "Tuesday", "time": "3 p.m."}),
                    ("end_call", {"outcome": "booked"}),
                ),
            )
        ]
    )
    messages = [{"role": "user", "content": "Tuesday works"}]
    events = await collect(make_client(), messages, tools=[BOOK_TOOL])

    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["book_meeting", "end_call"]
    assert json.loads(calls[0].arguments) == {"day": "Tuesday", "time": "3 p.m."}
    assert json.loads(calls[1].arguments) == {"outcome": "booked"}
    assert calls[0].id != calls[1].id
    assert events[-1] == Done("tool_calls", events[-1].usage)


async def test_tool_result_is_answered_by_its_rule(
    server: StandinServer, make_client: MakeClient
):
    """After a tool result the stand-in answers with the tool:<name> rule."""
    server.script = Script(rules=[Rule("^tool:book_meeting$", reply="You're booked.")])
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "book_meeting", "arguments": "{}"},
    }
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"ok": true}'},
    ]
    events = await collect(make_client(), messages)

    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == (
        "You're booked."
    )


async def test_request_body_is_recorded(server: StandinServer, make_client: MakeClient):
    """The stand-in keeps the body the client sent, in the OpenAI shape."""
    await collect(make_client(), HELLO, tools=[BOOK_TOOL])

    body = server.requests[-1]
    assert body["model"] == "test-model"
    assert body["messages"] == HELLO
    assert body["stream"] is True
    assert body["tools"] == [BOOK_TOOL]
    assert body["stream_options"] == {"include_usage": True}


async def test_http_500_raises_with_message(
    server: StandinServer, make_client: MakeClient
):
    """An error status becomes LLMError carrying the status and server message."""
    server.script = Script(rules=[Rule("", fail="http_500")])
    with pytest.raises(LLMError, match=r"HTTP 500: the stand-in failed on purpose"):
        await collect(make_client(), HELLO)


async def test_invalid_request_message_is_passed_on(make_client: MakeClient):
    """A 400 for a missing model reports the server's explanation."""
    with pytest.raises(LLMError, match=r"HTTP 400: .*model"):
        await collect(make_client(model=""), HELLO)


async def test_disconnect_mid_stream_raises(
    server: StandinServer, make_client: MakeClient
):
    """A connection dropped after a few tokens raises LLMError."""
    server.script = Script(
        rules=[Rule("", reply="one two three four", fail="disconnect")]
    )
    received: list[LLMEvent] = []
    with pytest.raises(LLMError, match=r"stream broke|ended before"):
        async for event in make_client().stream(HELLO):
            received.append(event)
    assert received and all(isinstance(e, TextDelta) for e in received)


async def test_malformed_chunk_raises(server: StandinServer, make_client: MakeClient):
    """A chunk that is not JSON raises LLMError."""
    server.script = Script(rules=[Rule("", reply="one two three", fail="malformed")])
    with pytest.raises(LLMError, match="not JSON"):
        await collect(make_client(), HELLO)


async def test_stalled_stream_times_out(server: StandinServer, make_client: MakeClient):
    """A stream that stops sending raises LLMError after timeout_s."""
    server.script = Script(rules=[Rule("", reply="one two three four", fail="stall")])
    with pytest.raises(LLMError, match="stalled"):
        await collect(make_client(timeout_s=0.2), HELLO)
    await server.wait_for_disconnects(1)


async def test_late_first_token_times_out(
    server: StandinServer, make_client: MakeClient
):
    """No first token within timeout_s raises LLMError."""
    server.script = Script(first_token_delay_s=1.0)
    with pytest.raises(LLMError, match="no first token"):
        await collect(make_client(timeout_s=0.2), HELLO)


async def test_stream_ending_early_raises(
    server: StandinServer, make_client: MakeClient
):
    """A body that ends cleanly but before the finish raises LLMError."""
    server.script = Script(rules=[Rule("", reply="one two three four", fail="stall")])
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in make_client(timeout_s=5.0).stream(HELLO):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    await server.stop()  # the stalled handler returns without [DONE]
    with pytest.raises(LLMError, match="ended before it finished"):
        await task


async def test_unreachable_server_raises(make_client: MakeClient):
    """A refused connection raises LLMError naming the URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(LLMError, match=f"cannot reach the LLM at .*:{port}"):
        await collect(client, HELLO)


async def test_closing_the_stream_closes_the_response(
    server: StandinServer, make_client: MakeClient
):
    """Stopping iteration early drops the connection, which the server sees."""
    server.script = Script(default_reply="word " * 100, token_delay_s=0.02)
    async with contextlib.aclosing(make_client().stream(HELLO)) as events:
        async for event in events:
            assert isinstance(event, TextDelta)
            break
    await server.wait_for_disconnects(1)


async def test_cancelling_the_task_closes_the_response(
    server: StandinServer, make_client: MakeClient
):
    """Cancelling the consuming task (barge-in) drops the connection."""
    server.script = Script(default_reply="word " * 100, token_delay_s=0.02)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in make_client().stream(HELLO):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await server.wait_for_disconnects(1)


async def test_connection_is_reused_after_a_full_reply(make_client: MakeClient):
    """Two complete replies in a row both succeed on the shared client."""
    client = make_client()
    for _ in range(2):
        events = await collect(client, HELLO)
        assert isinstance(events[-1], Done)


async def test_api_key_is_sent(make_client: MakeClient):
    """With the right key the keyed stand-in answers."""
    async with StandinServer(api_key="sk-right") as keyed:
        client = make_client(base_url=keyed.base_url, api_key="sk-right")
        events = await collect(client, HELLO)
    assert isinstance(events[-1], Done)


async def test_wrong_api_key_is_rejected_without_leaking(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
):
    """A wrong key gives 401, and the key appears in no message or log line."""
    caplog.set_level(logging.DEBUG)
    async with StandinServer(api_key="sk-right") as keyed:
        client = make_client(base_url=keyed.base_url, api_key="sk-wrong-secret")
        with pytest.raises(LLMError, match="HTTP 401") as caught:
            await collect(client, HELLO)
    assert "sk-wrong-secret" not in str(caught.value)
    assert "sk-wrong-secret" not in caplog.text
    assert "sk-wrong-secret" not in repr(client.config)


async def test_empty_api_key_sends_no_header(make_client: MakeClient):
    """An empty key sends no Authorization header at all."""
    async with StandinServer(api_key="sk-right") as keyed:
        client = make_client(base_url=keyed.base_url, api_key="")
        with pytest.raises(LLMError, match="HTTP 401: You didn't provide an API key"):
            await collect(client, HELLO)


async def test_complete_returns_the_whole_reply(
    server: StandinServer, make_client: MakeClient
):
    """complete() returns the chat.completion body, tool calls included."""
    server.script = Script(
        rules=[
            Rule("outcome", reply='{"outcome": "booked"}'),
            Rule("bye", tool_calls=(("end_call", {}),)),
        ]
    )
    client = make_client()
    fmt = {"type": "json_object"}
    body = await client.complete(
        [{"role": "user", "content": "outcome?"}], response_format=fmt
    )
    assert body["object"] == "chat.completion"
    assert json.loads(body["choices"][0]["message"]["content"]) == {"outcome": "booked"}
    assert server.requests[-1]["response_format"] == fmt
    assert server.requests[-1]["stream"] is False

    body = await client.complete([{"role": "user", "content": "bye"}])
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "end_call"


async def test_complete_error_raises(server: StandinServer, make_client: MakeClient):
    """complete() turns an error status into LLMError."""
    server.script = Script(rules=[Rule("", fail="http_500")])
    with pytest.raises(LLMError, match="HTTP 500"):
        await make_client().complete(HELLO)


async def test_standin_rejects_missing_messages(server: StandinServer):
    """A body without messages gets a 400 with an OpenAI-style error."""
    async with aiohttp.ClientSession() as session:
        url = server.base_url + "/chat/completions"
        async with session.post(url, json={"model": "m"}) as response:
            assert response.status == 400
            error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert "messages" in error["message"]


async def test_standin_lists_its_model(server: StandinServer):
    """GET /v1/models lists the stand-in's model."""
    async with aiohttp.ClientSession() as session:
        async with session.get(server.base_url + "/models") as response:
            listing = await response.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["standin"]


def test_script_from_dict():
    """A script read from JSON answers like one built in code."""
    script = Script.from_dict(
        {
            "default_reply": "Pardon?",
            "token_delay_s": 0.01,
            "rules": [
                {"pattern": "price", "reply": "It is 40 dollars."},
                {"pattern": "bye", "tool_calls": [["end_call", {"outcome": "done"}]]},
                {"pattern": "book", "tool_calls": [{"name": "book", "arguments": {}}]},
            ],
        }
    )
    assert script.token_delay_s == 0.01
    assert script.answer([{"role": "user", "content": "What's the PRICE?"}]).reply == (
        "It is 40 dollars."
    )
    assert script.answer([{"role": "user", "content": "bye"}]).tool_calls == (
        ("end_call", {"outcome": "done"}),
    )
    assert script.answer([{"role": "user", "content": "book it"}]).tool_calls[0][0] == (
        "book"
    )
    assert script.answer([{"role": "user", "content": "hmm"}]).reply == "Pardon?"


def test_unknown_failure_is_refused():
    """A rule naming an unknown failure mode is refused at construction."""
    with pytest.raises(ValueError, match="unknown failure"):
        Rule("x", fail="explode")
