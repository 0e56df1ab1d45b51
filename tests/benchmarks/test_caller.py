"""The simulated caller against a small media server on loopback.

The server here is the fake: a real aiohttp websocket that the test drives by
hand, sending agent audio, marks and clears and reading what the caller sent
through voxdial's own `StreamProtocol`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web

from benchmarks.caller import CallerClosedError, SimulatedCaller, load_wav_8k
from pipelines.audio import FRAME_SAMPLES, pcm_to_ulaw
from voice.twilio_protocol import Connected, Media, Start, StreamProtocol

SPEED = 4.0
RATE = 8000


class ServerSide:
    """The server's end of one stream, driven by the test."""

    def __init__(self, ws: web.WebSocketResponse, headers: dict[str, str]) -> None:
        self.ws = ws
        self.headers = headers
        self.protocol = StreamProtocol(logging.getLogger("test.caller.server"))
        self.events: list[Any] = []  # every parsed event, in order
        self.raw: list[str | bytes] = []
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # non-media
        self.closed = asyncio.Event()

    def receive(self, data: str | bytes) -> None:
        self.raw.append(data)
        if isinstance(data, bytes):
            self.protocol.receive_bytes(data)
            return
        event = self.protocol.receive_text(data)
        if event is not None:
            self.events.append(event)
        message = json.loads(data)
        if message.get("event") != "media":
            self.inbox.put_nowait(message)

    async def next_message(self, event: str, wait_s: float = 2.0) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            while True:
                message = await self.inbox.get()
                if message.get("event") == event:
                    return message

    @property
    def media(self) -> list[Media]:
        return [e for e in self.events if isinstance(e, Media)]

    async def send_audio(self, seconds: float, *, frames: bool = True) -> None:
        """Send `seconds` of agent audio at once, as a server running ahead does.

        In 20 ms frames, or else as one message (which arrives in one piece).
        """
        audio = pcm_to_ulaw(np.full(int(seconds * RATE), 1000, dtype=np.int16))
        size = FRAME_SAMPLES if frames else len(audio)
        for i in range(0, len(audio), size):
            await self.ws.send_str(self.protocol.media(audio[i : i + size]))

    async def send_mark(self, name: str) -> None:
        await self.ws.send_str(self.protocol.mark(name))

    async def send_clear(self) -> None:
        await self.ws.send_str(self.protocol.clear())


class FakeServer:
    def __init__(self) -> None:
        self.url = ""
        self.accepted: asyncio.Queue[ServerSide] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        side = ServerSide(ws, dict(request.headers))
        self.accepted.put_nowait(side)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                side.receive(message.data)
            elif message.type is WSMsgType.BINARY:
                side.receive(message.data)
        side.closed.set()
        return ws

    async def accept(self) -> ServerSide:
        async with asyncio.timeout(2):
            side = await self.accepted.get()
        # Let connected and start arrive so the builders know the stream.
        await side.next_message("start")
        return side


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    app = web.Application()
    app.router.add_get("/stream", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"ws://{host}:{port}/stream"
    yield fake
    await runner.cleanup()


def caller_for(server: FakeServer, **kwargs: Any) -> SimulatedCaller:
    options: dict[str, Any] = {"custom_parameters": {"call_id": "c1"}, "speed": SPEED}
    options.update(kwargs)
    return SimulatedCaller(server.url, **options)


async def test_connected_and_start_come_first(server: FakeServer) -> None:
    """The caller opens with connected then start, and numbers every message."""
    caller = caller_for(
        server,
        headers={"X-Twilio-Signature": "sig"},
        custom_parameters={"call_id": "c1", "nonce": "n1"},
    )
    async with caller:
        side = await server.accept()
        await asyncio.sleep(0.1)
    await asyncio.wait_for(side.closed.wait(), 2)

    assert side.headers["X-Twilio-Signature"] == "sig"
    assert isinstance(side.events[0], Connected)
    start = side.events[1]
    assert isinstance(start, Start)
    assert start.custom_parameters == {"call_id": "c1", "nonce": "n1"}
    assert start.call_sid == caller.call_sid
    assert start.stream_sid == caller.stream_sid
    assert (start.encoding, start.sample_rate, start.channels) == (
        "audio/x-mulaw",
        8000,
        1,
    )
    assert json.loads(side.raw[1])["sequenceNumber"] == "1"
    # Every frame the caller sent, stop included, is valid for the protocol.
    assert not side.protocol.bad_frames
    assert side.media, "silence is streamed while the caller has nothing to say"
    assert json.loads(side.raw[-1])["event"] == "stop"


async def test_send_pacing_follows_the_clock(server: FakeServer) -> None:
    """Frames go out every 20 ms / speed, without drifting."""
    async with caller_for(server) as caller:
        await server.accept()
        begin, sent = time.monotonic(), caller.frames_sent
        await asyncio.sleep(0.5)
        elapsed, frames = time.monotonic() - begin, caller.frames_sent - sent
    expected = elapsed / (0.020 / SPEED)
    assert 0.8 * expected <= frames <= 1.1 * expected


async def test_say_sends_the_speech_then_silence(server: FakeServer) -> None:
    """say() streams the utterance frame by frame and returns after its last one."""
    tone = (np.sin(np.arange(3000) * 0.1) * 8000).astype(np.int16)
    async with caller_for(server) as caller:
        side = await server.accept()
        await caller.say(tone)
        await caller.pause(0.1)

    assert len(caller.speech_start_times) == len(caller.speech_end_times) == 1
    duration = caller.speech_end_times[0] - caller.speech_start_times[0]
    assert duration == pytest.approx((19 - 1) * 0.020 / SPEED, abs=0.03)
    sent = b"".join(m.payload for m in side.media)
    expected = pcm_to_ulaw(tone)
    offset = sent.index(expected)
    padding = 19 * FRAME_SAMPLES - len(expected)
    assert sent[offset + len(expected) : offset + len(expected) + padding] == (
        b"\xff" * padding
    )
    assert all(len(m.payload) == FRAME_SAMPLES for m in side.media)
    chunks = [m.chunk for m in side.media]
    assert chunks == list(range(1, len(chunks) + 1))


async def test_dtmf_goes_out_in_sequence(server: FakeServer) -> None:
    """send_dtmf() sends a dtmf message numbered in order with the media."""
    async with caller_for(server) as caller:
        side = await server.accept()
        caller.send_dtmf("7")
        message = await side.next_message("dtmf")
    assert message["dtmf"]["digit"] == "7"
    assert not side.protocol.bad_frames


async def test_mark_is_echoed_once_playback_passes_it(server: FakeServer) -> None:
    """A mark comes back after the audio before it has played, in real time."""
    async with caller_for(server) as caller:
        side = await server.accept()
        sent_at = time.monotonic()
        await side.send_audio(0.4)
        await side.send_mark("first")
        echo = await side.next_message("mark")
        echoed_at = time.monotonic()
        # Nothing buffered: the next mark comes straight back.
        await side.send_mark("second")
        await side.next_message("mark")
        second_at = time.monotonic()

    assert echo["mark"] == {"name": "first"}
    assert echo["streamSid"] == caller.stream_sid
    assert echoed_at - sent_at >= 0.4 / SPEED - 0.01
    assert second_at - echoed_at < 0.05
    assert [name for _, name in caller.marks_echoed] == ["first", "second"]
    assert len(caller.heard) == 0.4 * RATE
    assert not side.protocol.bad_frames


async def test_clear_drops_buffered_audio_and_returns_marks(server: FakeServer) -> None:
    """A clear stops playback at once and every pending mark is echoed."""
    async with caller_for(server) as caller:
        side = await server.accept()
        await side.send_audio(2.0)
        await side.send_mark("a")
        await side.send_audio(1.0)
        await side.send_mark("b")
        await asyncio.sleep(0.1)
        await side.send_clear()
        cleared_at = time.monotonic()
        first = await side.next_message("mark")
        second = await side.next_message("mark")
        returned_at = time.monotonic()
        heard_at_clear = len(caller.heard)
        await asyncio.sleep(0.05)
        assert len(caller.heard) == heard_at_clear, "nothing plays after a clear"

        # Audio sent after the clear plays again, and is no underrun.
        await side.send_audio(0.2, frames=False)
        await side.send_mark("c")
        await side.next_message("mark")

    assert [first["mark"]["name"], second["mark"]["name"]] == ["a", "b"]
    assert returned_at - cleared_at < 0.1
    played_before_clear = heard_at_clear / RATE / SPEED
    assert 0.08 <= played_before_clear <= 0.2
    assert len(caller.heard) == heard_at_clear + 0.2 * RATE
    assert len(caller.clear_times) == 1
    after_clear = [t for t in caller.media_times if t > caller.clear_times[0]]
    assert len(after_clear) == 1
    assert caller.first_audio_after(caller.clear_times[0]) == after_clear[0]
    assert caller.gaps == 0
    assert not caller.violations


async def test_underruns_are_counted_as_gaps(server: FakeServer) -> None:
    """Audio landing soon after the buffer ran dry is a gap; later audio is not."""
    async with caller_for(server, speed=1.0) as caller:
        side = await server.accept()
        await side.send_audio(0.1, frames=False)
        await asyncio.sleep(0.13)  # the buffer runs dry at 0.1 s
        await side.send_audio(0.1, frames=False)
        await asyncio.sleep(0.5)  # well past the gap window: a new utterance
        await side.send_audio(0.1, frames=False)
        await asyncio.sleep(0.02)
    assert caller.gaps == 1
    assert 0.0 < caller.gap_durations[0] < 0.2


async def test_unexpected_messages_are_violations(server: FakeServer) -> None:
    """Anything but media, mark or clear for this stream is recorded as a violation."""
    async with caller_for(server) as caller:
        side = await server.accept()
        await side.ws.send_str(json.dumps({"event": "hello"}))
        await side.ws.send_bytes(b"\x00\x01")
        await side.ws.send_str("{not json")
        await side.ws.send_str(json.dumps({"event": "clear", "streamSid": "MZother"}))
        await side.send_mark("sync")
        await side.next_message("mark")
    assert len(caller.violations) == 4
    assert caller.clear_times == []


async def test_server_close_ends_the_caller_cleanly(server: FakeServer) -> None:
    """When the server closes the stream the caller's loops end without errors."""
    caller = caller_for(server)
    await caller.connect()
    side = await server.accept()
    speaking = asyncio.create_task(caller.say(np.zeros(RATE * 10, dtype=np.int16)))
    await asyncio.sleep(0.05)
    await side.ws.close(code=1008, message=b"policy")
    await asyncio.wait_for(caller.wait_closed(), 2)
    assert caller.closed
    assert caller.close_code == 1008
    with pytest.raises(CallerClosedError):
        await speaking
    with pytest.raises(CallerClosedError):
        await caller.say(np.zeros(160, dtype=np.int16))
    await caller.close()
    await caller.hangup()  # idempotent


async def test_hangup_sends_stop_and_closes(server: FakeServer) -> None:
    """hangup() sends stop, then the socket closes."""
    caller = caller_for(server)
    await caller.connect()
    side = await server.accept()
    await caller.hangup()
    stop = await side.next_message("stop")
    await asyncio.wait_for(side.closed.wait(), 2)
    assert stop["stop"]["callSid"] == caller.call_sid
    assert caller.closed


async def test_send_raw_without_start(server: FakeServer) -> None:
    """With send_start=False only the raw frames given go out."""
    caller = caller_for(server, send_start=False)
    await caller.connect()
    async with asyncio.timeout(2):
        side = await server.accepted.get()
    caller.send_raw('{"event": "media"}')
    caller.send_raw(b"\x01\x02")
    await asyncio.sleep(0.05)
    await caller.close()
    await asyncio.wait_for(side.closed.wait(), 2)
    assert side.raw == ['{"event": "media"}', b"\x01\x02"]
    assert side.protocol.bad_frames == {"media_before_start": 1, "binary_frame": 1}


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


def test_load_wav_8k_mixes_and_resamples(tmp_path: Path) -> None:
    """A 16 kHz stereo WAV comes back as 8 kHz mono int16."""
    left = np.full(16000, 1000, dtype=np.int16)
    right = np.full(16000, 3000, dtype=np.int16)
    path = tmp_path / "stereo.wav"
    write_wav(path, np.stack([left, right], axis=1).reshape(-1), 16000, 2)
    pcm = load_wav_8k(path)
    assert pcm.dtype == np.int16
    assert len(pcm) == 8000
    assert abs(int(np.median(pcm)) - 2000) <= 2


def test_load_wav_8k_passes_8k_mono_through(tmp_path: Path) -> None:
    """An 8 kHz mono WAV is returned sample for sample."""
    samples = (np.arange(800) * 40 - 16000).astype(np.int16)
    path = tmp_path / "mono.wav"
    write_wav(path, samples, 8000, 1)
    assert np.array_equal(load_wav_8k(path), samples)
