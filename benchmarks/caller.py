"""A simulated caller: Twilio's side of one bidirectional Media Stream.

`SimulatedCaller` opens the stream websocket, sends `connected` and `start`,
then streams one `media` frame every 20 ms (divided by `speed`) for as long as
the stream lives, silence when the script has nothing to say, as Twilio does.

The agent's audio is played out the way Twilio plays it: received `media`
goes into a playout buffer that drains at 8000 samples per second (times
`speed`). A `mark` is echoed once the playhead passes the point where it
arrived, and at once when nothing is buffered; a `clear` drops the unplayed
audio and echoes every pending mark.

What it records, all on the `time.monotonic()` clock:

- `events`: every message received, as (time, event name, message).
- `media_times`, `clear_times`, `marks_echoed`: when agent frames and clears
  arrived, and when each mark went back.
- `speech_start_times`, `speech_end_times`: when the first and last frame of
  each utterance passed to `say` were sent.
- `heard`: the agent audio that actually played, concatenated.
- `gaps`: underruns. A gap is counted when agent media arrives after the
  playout buffer ran dry, less than `GAP_WINDOW_S` of playout time after it
  did (and not after a `clear`): the caller heard a hole in the middle of the
  agent's speech rather than the end of it. `gap_durations` holds each hole's
  length in playout seconds.
- `violations`: anything the server sent that Twilio would refuse: a message
  other than `media`, `mark` or `clear`, a binary or malformed frame, a wrong
  `streamSid`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import collections
import contextlib
import json
import logging
import secrets
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pipelines.audio import (
    FRAME_MS,
    FRAME_SAMPLES,
    PHONE_RATE,
    Int16Array,
    pcm_to_ulaw,
    resample,
    ulaw_to_pcm,
)

__all__ = ["GAP_WINDOW_S", "CallerClosedError", "SimulatedCaller", "load_wav_8k"]

logger = logging.getLogger(__name__)

GAP_WINDOW_S = 0.2
_SILENCE = b"\xff" * FRAME_SAMPLES  # mu-law for zero


class CallerClosedError(ConnectionError):
    """The stream ended before the caller finished what it was asked to do."""


def load_wav_8k(path: str | Path) -> Int16Array:
    """A 16-bit WAV file, mixed down to mono and resampled to 8 kHz."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    samples = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        frames = samples.reshape(-1, channels).astype(np.int32)
        samples = (frames.sum(axis=1) // channels).astype(np.int16)
    return resample(samples.astype(np.int16), rate, PHONE_RATE)


@dataclass(eq=False)
class _Utterance:
    """Audio queued for the send loop; `done` resolves after its last frame."""

    ulaw: bytes
    speech: bool
    done: asyncio.Future[None]
    sent: int = 0


@dataclass
class _Playout:
    """The playout buffer, evaluated lazily from the time of each question.

    Positions count samples of audio received and not cleared. The playhead
    moves at `rate` from (`anchor_time`, `anchor_pos`) and stops at the end of
    what was received; it is re-anchored whenever audio lands in an empty
    buffer.
    """

    rate: float
    audio: bytearray = field(default_factory=bytearray)
    anchor_time: float = 0.0
    anchor_pos: int = 0
    after_clear: bool = False
    marks: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)

    def position(self, now: float) -> int:
        moved = int((now - self.anchor_time) * self.rate)
        return min(len(self.audio), self.anchor_pos + max(moved, 0))

    def emptied_at(self) -> float:
        return self.anchor_time + (len(self.audio) - self.anchor_pos) / self.rate

    def due_at(self, pos: int) -> float:
        return self.anchor_time + (pos - self.anchor_pos) / self.rate


class SimulatedCaller:
    """One call's stream, driven from Twilio's end. See the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: dict[str, str],
        headers: dict[str, str] | None = None,
        call_sid: str | None = None,
        stream_sid: str | None = None,
        account_sid: str | None = None,
        speed: float = 1.0,
        send_start: bool = True,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be greater than 0")
        self.url = url
        self.custom_parameters = dict(custom_parameters)
        self.headers = dict(headers or {})
        self.call_sid = call_sid or "CA" + secrets.token_hex(16)
        self.stream_sid = stream_sid or "MZ" + secrets.token_hex(16)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.speed = speed
        # With send_start=False the caller sends nothing by itself: tests of
        # malformed streams drive it with send_raw alone.
        self.send_start = send_start

        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.media_times: list[float] = []
        self.clear_times: list[float] = []
        self.marks_echoed: list[tuple[float, str]] = []
        self.speech_start_times: list[float] = []
        self.speech_end_times: list[float] = []
        self.violations: list[str] = []
        self.gaps = 0
        self.gap_durations: list[float] = []
        self.frames_sent = 0
        self.max_send_lag = 0.0  # how late the send loop ran; large = overloaded

        self._ws: ClientConnection | None = None
        # The receive loop, then the two that send (frames, and mark echoes).
        self._tasks: list[asyncio.Task[None]] = []
        self._send_lock = asyncio.Lock()
        self._sequence = 0
        self._streaming = False
        self._script: collections.deque[_Utterance] = collections.deque()
        # Numbered when sent, so the sequence stays in sending order.
        self._outbox: collections.deque[str | bytes | dict[str, Any]] = (
            collections.deque()
        )
        self._playout = _Playout(rate=PHONE_RATE * speed)
        self._wake_playout = asyncio.Event()
        self._closed = asyncio.Event()
        self._error: BaseException | None = None

    # Lifecycle.

    async def __aenter__(self) -> SimulatedCaller:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.hangup()

    async def connect(self) -> None:
        """Open the stream and, unless told not to, send connected and start."""
        # No compression and no proxy: Twilio offers neither, and a proxy
        # from the environment must not capture a loopback test.
        self._ws = await connect(
            self.url,
            additional_headers=self.headers,
            compression=None,
            proxy=None,
            close_timeout=2,
            max_size=2**20,
        )
        if self.send_start:
            await self._send_text(
                json.dumps(
                    {"event": "connected", "protocol": "Call", "version": "1.0.0"}
                )
            )
            await self._send_json({"event": "start", "start": self._start_body()})
            self._streaming = True
        self._tasks = [
            asyncio.create_task(self._receive_loop(), name="caller-receive"),
            asyncio.create_task(self._send_loop(), name="caller-send"),
            asyncio.create_task(self._playout_loop(), name="caller-playout"),
        ]

    def _start_body(self) -> dict[str, Any]:
        return {
            "streamSid": self.stream_sid,
            "accountSid": self.account_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": self.custom_parameters,
            "mediaFormat": {
                "encoding": "audio/x-mulaw",
                "sampleRate": PHONE_RATE,
                "channels": 1,
            },
        }

    async def hangup(self) -> None:
        """End the call as Twilio does: `stop`, then close the socket."""
        if self._ws is not None and not self._closed.is_set():
            # Nothing may follow the stop, so the sending loops end first.
            self._streaming = False
            senders = self._tasks[1:]
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            with contextlib.suppress(ConnectionClosed):
                await self._send_json(
                    {
                        "event": "stop",
                        "stop": {
                            "accountSid": self.account_sid,
                            "callSid": self.call_sid,
                        },
                    }
                )
        await self.close()

    async def close(self) -> None:
        """Stop the loops and close the socket without a `stop` (a dropped stream).

        Re-raises the first unexpected error any loop met.
        """
        self._streaming = False
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._ws is not None:
            await self._ws.close()
        self._fail_script()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    async def wait_closed(self) -> None:
        """Wait until the stream has ended, from either side."""
        await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def close_code(self) -> int | None:
        """The close code the server sent, once the socket is closed."""
        return None if self._ws is None else self._ws.close_code

    # The script.

    async def say(self, pcm8k: Int16Array) -> None:
        """Speak 8 kHz PCM; returns once its last frame has been sent."""
        await self._queue(pcm_to_ulaw(pcm8k), speech=True)

    async def wait_agent_done(
        self, after: float = 0.0, quiet_s: float = 0.7, limit_s: float = 30.0
    ) -> bool:
        """Wait until the agent has spoken since `after` and then gone quiet.

        Quiet is as the caller hears it: `quiet_s` past the end of playback
        of everything received. False if `limit_s` passes or the stream ends.
        """
        deadline = time.monotonic() + limit_s
        while not self._closed.is_set():
            now = time.monotonic()
            if now > deadline:
                return False
            spoke = bool(self.media_times) and self.media_times[-1] > after
            if spoke and now - self._playout.emptied_at() >= quiet_s:
                return True
            await asyncio.sleep(0.05)
        return False

    async def pause(self, seconds: float) -> None:
        """Stay silent for `seconds` of stream time."""
        await self._queue(_SILENCE[:1] * int(seconds * PHONE_RATE), speech=False)

    def send_dtmf(self, digit: str) -> None:
        """Press a key; the `dtmf` message goes out before the next frame."""
        self._outbox.append(
            {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}}
        )

    def send_raw(self, message: str | bytes) -> None:
        """Send a frame exactly as given, unnumbered, before the next media frame."""
        self._outbox.append(message)

    async def _queue(self, ulaw: bytes, *, speech: bool) -> None:
        if self._closed.is_set() or not self._streaming:
            raise CallerClosedError("the stream is not running")
        if not ulaw:
            return
        done = asyncio.get_running_loop().create_future()
        self._script.append(_Utterance(ulaw, speech, done))
        await done

    def _fail_script(self) -> None:
        while self._script:
            done = self._script.popleft().done
            if not done.done():
                done.set_exception(CallerClosedError("the stream ended mid-utterance"))
                done.exception()  # retrieved here so no one has to

    # Sending.

    def _json(self, message: dict[str, Any]) -> str:
        """Number a message; call only when it is the next one to go out."""
        self._sequence += 1
        message["streamSid"] = self.stream_sid
        message["sequenceNumber"] = str(self._sequence)
        return json.dumps(message)

    async def _send_json(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            assert self._ws is not None
            await self._ws.send(self._json(message))

    async def _send_text(self, message: str | bytes) -> None:
        async with self._send_lock:
            assert self._ws is not None
            await self._ws.send(message)

    async def _send_loop(self) -> None:
        # Each frame has a deadline on the monotonic clock, so pacing never
        # drifts; after a stall the late frames go out back to back. When the
        # socket closes this loop just stops: the receive loop, which sees the
        # server's last messages, declares the stream ended.
        period = FRAME_MS / 1000 / self.speed
        deadline = time.monotonic()
        try:
            while True:
                while self._outbox:
                    item = self._outbox.popleft()
                    if isinstance(item, dict):
                        await self._send_json(item)
                    else:
                        await self._send_text(item)
                if self._streaming:
                    await self._send_frame()
                deadline += period
                now = time.monotonic()
                if now < deadline:
                    await asyncio.sleep(deadline - now)
                else:
                    self.max_send_lag = max(self.max_send_lag, now - deadline)
        except ConnectionClosed:
            return
        except Exception as exc:
            self._crashed(exc)

    async def _send_frame(self) -> None:
        utterance = self._script[0] if self._script else None
        if utterance is None:
            payload = _SILENCE
        else:
            start = utterance.sent
            payload = utterance.ulaw[start : start + FRAME_SAMPLES]
            payload += _SILENCE[len(payload) :]
        self.frames_sent += 1
        chunk = self.frames_sent
        media = {
            "track": "inbound",
            "chunk": str(chunk),
            "timestamp": str((chunk - 1) * FRAME_MS),
            "payload": base64.b64encode(payload).decode("ascii"),
        }
        await self._send_json({"event": "media", "media": media})
        if utterance is None:
            return

        now = time.monotonic()
        if utterance.speech and utterance.sent == 0:
            self.speech_start_times.append(now)
        utterance.sent += FRAME_SAMPLES
        if utterance.sent >= len(utterance.ulaw):
            self._script.popleft()
            if utterance.speech:
                self.speech_end_times.append(now)
            if not utterance.done.done():
                utterance.done.set_result(None)

    # Receiving and playout.

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                self._receive(message, time.monotonic())
        except ConnectionClosed:
            pass
        except Exception as exc:
            self._crashed(exc)
            return
        self._stream_ended()

    def _receive(self, raw: str | bytes, now: float) -> None:
        if isinstance(raw, bytes):
            self.violations.append(f"binary frame of {len(raw)} bytes")
            return
        try:
            message = json.loads(raw)
        except ValueError:
            self.violations.append(f"malformed JSON: {raw[:80]!r}")
            return
        if not isinstance(message, dict):
            self.violations.append(f"not a JSON object: {raw[:80]!r}")
            return
        event = message.get("event")
        self.events.append((now, str(event), message))
        if event not in ("media", "mark", "clear"):
            self.violations.append(f"unexpected event {event!r}")
            return
        if message.get("streamSid") != self.stream_sid:
            self.violations.append(f"{event} for stream {message.get('streamSid')!r}")
            return
        if event == "media":
            self._receive_media(message, now)
        elif event == "mark":
            self._receive_mark(message, now)
        else:
            self._receive_clear(now)

    def _receive_media(self, message: dict[str, Any], now: float) -> None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self.violations.append("media without a payload")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self.violations.append("media payload is not base64")
            return
        self.media_times.append(now)

        playout = self._playout
        pos = playout.position(now)
        if pos >= len(playout.audio):
            # Audio is landing in an empty buffer: was that a hole?
            if pos > 0 and not playout.after_clear:
                idle = (now - playout.emptied_at()) * self.speed
                if 0 < idle < GAP_WINDOW_S:
                    self.gaps += 1
                    self.gap_durations.append(idle)
            playout.anchor_time, playout.anchor_pos = now, pos
        playout.audio += audio
        playout.after_clear = False

    def _receive_mark(self, message: dict[str, Any], now: float) -> None:
        mark = message.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str):
            self.violations.append("mark without a name")
            return
        self._playout.marks.append((len(self._playout.audio), name))
        self._wake_playout.set()

    def _receive_clear(self, now: float) -> None:
        self.clear_times.append(now)
        playout = self._playout
        pos = playout.position(now)
        del playout.audio[pos:]
        playout.after_clear = True
        # Every pending mark now sits at the playhead, so all are due.
        playout.marks = collections.deque((pos, name) for _, name in playout.marks)
        self._wake_playout.set()

    async def _playout_loop(self) -> None:
        playout = self._playout
        try:
            while True:
                now = time.monotonic()
                pos = playout.position(now)
                while playout.marks and playout.marks[0][0] <= pos:
                    _, name = playout.marks.popleft()
                    await self._send_json({"event": "mark", "mark": {"name": name}})
                    self.marks_echoed.append((time.monotonic(), name))

                timeout = None
                if playout.marks:
                    # One sample late, so the playhead has surely passed it.
                    due = playout.due_at(playout.marks[0][0]) + 1 / playout.rate
                    timeout = max(due - time.monotonic(), 0.0)
                self._wake_playout.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake_playout.wait(), timeout)
        except ConnectionClosed:
            return
        except Exception as exc:
            self._crashed(exc)

    # Results and endings.

    @property
    def heard(self) -> Int16Array:
        """The agent audio played so far, as 8 kHz PCM."""
        playout = self._playout
        return ulaw_to_pcm(bytes(playout.audio[: playout.position(time.monotonic())]))

    def first_audio_after(self, t: float) -> float | None:
        """When the first agent media frame arrived after `t`, if one has."""
        i = bisect.bisect_right(self.media_times, t)
        return self.media_times[i] if i < len(self.media_times) else None

    def _stream_ended(self) -> None:
        self._streaming = False
        self._closed.set()
        self._fail_script()
        # The other loops have nothing left to do; close() reaps them.
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    def _crashed(self, exc: Exception) -> None:
        logger.error("simulated caller %s failed: %r", self.call_sid, exc)
        if self._error is None:
            self._error = exc
        self._stream_ended()
