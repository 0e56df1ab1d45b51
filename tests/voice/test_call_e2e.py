"""A whole call over loopback: real models, real sockets, a simulated caller."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from benchmarks.caller import SimulatedCaller
from tests.conftest import LONG_REPLY, Harness

pytestmark = pytest.mark.models

PARAMS = {"call_id": "", "name": "Ada", "company": "Acme Clinic"}


async def until(condition: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def agent_done(
    caller: SimulatedCaller, after: float = 0.0, quiet: float = 0.6
) -> None:
    """Wait until the agent spoke (after `after`) and then fell quiet."""
    await until(lambda: caller.first_audio_after(after) is not None, 15, "agent audio")
    await until(
        lambda: time.monotonic() - caller.media_times[-1] > quiet, 30, "agent to finish"
    )


def new_caller(h: Harness, call_id: str, **kw: Any) -> SimulatedCaller:
    return SimulatedCaller(
        h.ws_url, custom_parameters={**PARAMS, "call_id": call_id}, **kw
    )


async def test_greeting_then_reply_to_speech(
    harness: Harness, phrases: dict[str, Any]
) -> None:
    """The agent greets with the lead's fields, hears the caller and answers."""
    async with new_caller(harness, "c-basic") as caller:
        await agent_done(caller)
        await caller.say(phrases["appointment"])
        spoke = caller.speech_end_times[-1]
        await agent_done(caller, after=spoke)
        assert caller.violations == []
        assert caller.gaps == 0
    record = await harness.wait_record("c-basic")
    turns = [(t["speaker"], t["text"]) for t in record["transcript"]]
    assert turns[0] == ("agent", "Hello Ada, this is Acme Clinic.")
    assert turns[1][0] == "caller" and "appointment" in turns[1][1].lower()
    assert turns[2] == ("agent", "Sure. Which day would suit you best?")
    latency = record["transcript"][2]["latency"]
    assert all(
        latency[k] is not None for k in ("stt_s", "llm_first_token_s", "first_audio_s")
    )
    first_request = harness.llm.requests[0]["messages"]
    assert "Acme Clinic" in first_request[0]["content"]
    assert record["end_reason"] == "caller_hung_up"
    recording = harness.services.settings.data_dir / "recordings" / "c-basic.wav"
    assert recording.stat().st_size > 44


async def test_barge_in_clears_and_keeps_only_heard_words(
    harness: Harness, phrases: dict[str, Any]
) -> None:
    """Talking over the agent gets `clear`, no audio after it, heard-only context."""
    async with new_caller(harness, "c-barge") as caller:
        await agent_done(caller)
        await caller.say(phrases["story"])
        await until(
            lambda: caller.first_audio_after(caller.speech_end_times[-1]) is not None,
            15,
            "the long reply",
        )
        await asyncio.sleep(2.0)  # let a couple of sentences play
        await caller.say(phrases["interrupt"])
        await until(lambda: bool(caller.clear_times), 5, "clear")
        cleared = caller.clear_times[0]
        onset = caller.speech_start_times[-1]
        assert cleared - onset < 1.0
        await agent_done(caller, after=caller.speech_end_times[-1])
        # Nothing of the interrupted reply after the clear: the next audio is
        # the answer to the interruption, after the caller stopped speaking.
        after_clear = [t for t in caller.media_times if t > cleared]
        assert after_clear and min(after_clear) > caller.speech_end_times[-1]
    record = await harness.wait_record("c-barge")
    agent_turns = [t for t in record["transcript"] if t["speaker"] == "agent"]
    cut = next(t for t in agent_turns if t["interrupted"])
    assert cut["text"] and LONG_REPLY.startswith(cut["text"].split(" ")[0])
    assert len(cut["text"]) < len(LONG_REPLY) * 0.8
    assert record["barge_ins"] == 1
    # The LLM saw only what was played of the interrupted turn.
    last_messages = harness.llm.requests[-1]["messages"]
    assistant = [m["content"] for m in last_messages if m["role"] == "assistant"]
    assert cut["text"] in assistant
    assert LONG_REPLY not in assistant


async def test_agent_hangs_up_through_rest_api(
    harness: Harness, phrases: dict[str, Any]
) -> None:
    """end_call from the LLM says goodbye, then hangs up through Twilio's REST API."""
    caller = new_caller(harness, "c-bye", call_sid="CA" + "1" * 32)
    harness.twilio.add_call(caller.call_sid)
    async with caller:
        await agent_done(caller)
        await caller.say(phrases["goodbye"])
        await caller.wait_closed()
    record = await harness.wait_record("c-bye")
    assert record["end_reason"] == "agent_hung_up"
    assert record["outcome"] == "not_interested"
    assert harness.twilio.calls[caller.call_sid].status == "completed"


async def test_llm_failure_speaks_fallback(
    harness: Harness, phrases: dict[str, Any]
) -> None:
    """A failing LLM request gets a spoken fallback line, never silence."""
    async with new_caller(harness, "c-fail") as caller:
        await agent_done(caller)
        await caller.say(phrases["fail"])
        await agent_done(caller, after=caller.speech_end_times[-1])
    record = await harness.wait_record("c-fail")
    assert any("LLMError" in e for e in record["errors"])
    assert "trouble" in record["transcript"][-1]["text"]


async def test_dtmf_reaches_the_agent(harness: Harness) -> None:
    """Keypad digits become caller input that the agent answers."""
    async with new_caller(harness, "c-dtmf") as caller:
        await agent_done(caller)
        for digit in "12#":
            caller.send_dtmf(digit)
        await agent_done(caller, after=time.monotonic())
    record = await harness.wait_record("c-dtmf")
    assert ("caller", "12#") in [
        (t["speaker"], t["text"]) for t in record["transcript"]
    ]
    assert record["transcript"][-1]["text"] == "Thanks, I got your digits."


MALFORMED: list[str | bytes] = [
    "{not json",
    "[1, 2, 3]",
    '{"event": "bogus", "sequenceNumber": "900"}',
    '{"event": "media", "sequenceNumber": "901", '
    '"media": {"payload": "!!!not base64"}}',
    b"\x00\x01binary",
    '{"event": "media", "sequenceNumber": "2", "media": {"payload": "AAAA"}}',
    '{"event": "media", "streamSid": "x", "sequenceNumber": "950", '
    '"media": {"payload": "' + "A" * 9000 + '"}}',
]


async def test_malformed_frames_are_counted_and_the_call_goes_on(
    harness: Harness, phrases: dict[str, Any]
) -> None:
    """Bad frames are dropped and counted; the agent still answers afterwards."""
    async with new_caller(harness, "c-bad") as caller:
        await agent_done(caller)
        for message in MALFORMED:
            caller.send_raw(message)
        await caller.say(phrases["appointment"])
        await agent_done(caller, after=caller.speech_end_times[-1])
    record = await harness.wait_record("c-bad")
    assert record["transcript"][-1]["text"] == "Sure. Which day would suit you best?"
    assert sum(record["bad_frames"].values()) >= len(MALFORMED)
    metrics = harness.services.metrics.render()
    assert "voxdial_bad_frames_total" in metrics


async def test_too_many_bad_frames_close_the_stream(harness: Harness) -> None:
    """Past the limit of bad frames the stream is closed with 1008."""
    async with new_caller(harness, "c-flood") as caller:
        for _ in range(harness.services.settings.max_bad_frames + 5):
            caller.send_raw("{garbage")
        await caller.wait_closed()
        assert caller.close_code == 1008
    record = await harness.wait_record("c-flood")
    assert record["end_reason"] == "bad_frames"


async def test_media_before_start_is_ignored(harness: Harness) -> None:
    """Media before `start` is dropped without starting a call."""
    caller = SimulatedCaller(harness.ws_url, custom_parameters={}, send_start=False)
    await caller.connect()
    caller.send_raw(
        '{"event": "media", "sequenceNumber": "1", "media": {"payload": "AAAA"}}'
    )
    await asyncio.sleep(0.3)
    assert not caller.closed
    await caller.close()
    assert harness.services.metrics.active_calls.value() == 0


async def test_silent_stream_is_torn_down(harness: Harness) -> None:
    """A stream that stops sending (half-open TCP) is closed after the timeout."""
    caller = SimulatedCaller(
        harness.ws_url, custom_parameters={"call_id": "c-quiet"}, send_start=False
    )
    await caller.connect()
    caller.send_raw('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
    await caller.wait_closed()
    assert caller.close_code == 1001


async def test_abrupt_close_frees_the_call(harness: Harness) -> None:
    """Dropping the socket mid-call ends the call and releases it within a second."""
    before = asyncio.all_tasks()
    caller = new_caller(harness, "c-drop")
    await caller.connect()
    await until(lambda: bool(caller.media_times), 10, "greeting audio")
    during = asyncio.all_tasks() - before
    assert any(t.get_name() == "reply-runner" for t in during)  # the pipecat side
    await caller.close()  # no `stop`: the TCP connection just goes away
    started = time.monotonic()
    record = await harness.wait_record("c-drop", limit_s=2.0)
    assert time.monotonic() - started < 1.0
    assert record["end_reason"] in ("stream_closed", "caller_hung_up")
    assert harness.services.metrics.active_calls.value() == 0
    # Every task the call started (the pacer, its reply, the pipecat worker
    # and processors, the watchdog) is gone.
    await asyncio.sleep(0.05)
    left = [t for t in during if not t.done()]
    assert left == []


def test_caller_phrases_are_speech(phrases: dict[str, Any]) -> None:
    """The synthesized caller phrases are non-trivial 8 kHz speech."""
    for pcm in phrases.values():
        assert pcm.dtype == np.int16 and pcm.size > 8000
