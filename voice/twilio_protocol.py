"""Twilio Media Streams (bidirectional), parsed and built without I/O.

One `StreamProtocol` per stream websocket. The asyncio layer hands it every
message it reads and sends what its builders return; this module never touches
a socket, a task or a clock.

Rules, by state:

- AWAITING_START (the socket is open): `connected` may arrive once; `start`
  moves to STREAMING; `stop` moves to STOPPED. `media`, `dtmf` and `mark` are
  bad frames here, as is a second `connected`.
- STREAMING (after a valid `start`): `media`, `dtmf` and `mark` are parsed into
  events; `stop` moves to STOPPED. `connected` or a second `start` is a bad
  frame.
- STOPPED: every further message is a bad frame.

In every state:

- Every message but `connected` carries a `sequenceNumber` (a string, though
  an integer is accepted). It must rise: one at or below the highest seen so
  far is dropped as a duplicate or out of order. A frame dropped for any other
  reason does not count as seen.
- A `streamSid` that differs from the one in `start` is a bad frame.
- A `start` whose media format is not mu-law 8 kHz mono is a bad frame, and
  the stream cannot be served: `should_close` turns true at once.

Bad input never raises: it is counted in `bad_frames` by kind, logged at
WARNING the first time each kind is seen and at DEBUG after that, and the
receive call returns None. Once more than `max_bad_frames` have been dropped,
`should_close` turns true and `close_code` says how to close.

Only three messages may go back to Twilio (`media`, `mark`, `clear`); the
builders return their JSON text and exist only once `start` has named the
stream.
"""

from __future__ import annotations

import base64
import binascii
import collections
import enum
import json
import logging
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_UNSUPPORTED_DATA",
    "Connected",
    "Dtmf",
    "Event",
    "Mark",
    "Media",
    "Start",
    "State",
    "Stop",
    "StreamProtocol",
]

# Websocket close codes (RFC 6455, section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003  # the start named a media format we cannot decode
CLOSE_POLICY_VIOLATION = 1008  # too many bad frames
CLOSE_MESSAGE_TOO_BIG = 1009  # for the socket layer, when it refuses a frame

DTMF_DIGITS = frozenset("0123456789*#ABCD")

LoggerLike: TypeAlias = "logging.Logger | logging.LoggerAdapter[Any]"


class State(enum.Enum):
    """Where a stream is in its life; see the module docstring."""

    AWAITING_START = "awaiting_start"
    STREAMING = "streaming"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Connected:
    """The first message after the upgrade."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """The stream's metadata; the call's custom parameters ride here."""

    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    tracks: tuple[str, ...]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Media:
    """One frame of caller audio, decoded from base64 to mu-law bytes."""

    payload: bytes
    timestamp_ms: int
    chunk: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the caller pressed."""

    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark we sent has played out, or was discarded by a clear."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The call is over; Twilio closes the socket next."""


Event: TypeAlias = Connected | Start | Media | Dtmf | Mark | Stop


class _BadFrame(Exception):
    """Internal: a frame to drop, with the kind it is counted under."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


def _as_int(value: object, kind: str, name: str) -> int:
    # Twilio sends numbers as strings; accept real integers too, never bools.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    # The length cap keeps int() clear of its digit limit on hostile input.
    if isinstance(value, str) and 0 < len(value) <= 18 and value.isdigit():
        if value.isascii():
            return int(value)
    raise _BadFrame(kind, f"{name} is not an integer: {value!r}"[:80])


def _as_object(value: object, kind: str, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _BadFrame(kind, f"{name} is not an object")
    return value


def _as_str(value: object, kind: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise _BadFrame(kind, f"{name} is missing or not a string")
    return value


class StreamProtocol:
    """The Twilio side of one stream websocket: messages in, events out."""

    def __init__(
        self,
        logger: LoggerLike,
        *,
        max_frame_bytes: int = 8192,
        max_bad_frames: int = 50,
    ) -> None:
        self.logger = logger
        self.max_frame_bytes = max_frame_bytes
        self.max_bad_frames = max_bad_frames
        self.bad_frames: collections.Counter[str] = collections.Counter()
        self._bad_total = 0
        self._state = State.AWAITING_START
        self._connected = False
        self._start: Start | None = None
        self._highest_sequence = 0
        self._unsupported_format = False
        self._close_logged = False
        # Filled in at start so each outbound frame costs one concatenation.
        self._media_prefix = ""
        self._media_suffix = '"}}'
        self._clear_text = ""

    # Inspection.

    @property
    def state(self) -> State:
        return self._state

    @property
    def start(self) -> Start | None:
        """The `start` event, once it has arrived."""
        return self._start

    @property
    def stream_sid(self) -> str | None:
        return None if self._start is None else self._start.stream_sid

    @property
    def should_close(self) -> bool:
        """True once the stream is beyond saving; close with `close_code`."""
        return self._unsupported_format or self._bad_total > self.max_bad_frames

    @property
    def close_code(self) -> int | None:
        """The websocket close code to use when `should_close`, else None."""
        if self._unsupported_format:
            return CLOSE_UNSUPPORTED_DATA
        if self._bad_total > self.max_bad_frames:
            return CLOSE_POLICY_VIOLATION
        return None

    # Receiving.

    def receive_bytes(self, data: bytes) -> None:
        """Twilio only sends text frames: a binary one is always dropped."""
        self._drop("binary_frame", f"{len(data)} bytes")

    def receive_text(self, text: str) -> Event | None:
        """Parse one text frame; None when it carries nothing to act on."""
        try:
            return self._receive(text)
        except _BadFrame as bad:
            self._drop(bad.kind, bad.detail)
            return None

    def _receive(self, text: str) -> Event | None:
        # Characters never outnumber UTF-8 bytes, so the cheap test usually
        # settles it; encode only non-ASCII text that might be over.
        limit = self.max_frame_bytes
        if len(text) > limit or (
            not text.isascii() and len(text.encode("utf-8", "surrogatepass")) > limit
        ):
            raise _BadFrame("oversized", f"over {limit} bytes")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as exc:
            # RecursionError: nesting deeper than the decoder will follow.
            raise _BadFrame("malformed_json", str(exc)[:80]) from None
        if not isinstance(message, dict):
            raise _BadFrame("not_an_object", type(message).__name__)
        event = message.get("event")
        if not isinstance(event, str):
            raise _BadFrame("missing_event", "no event name")

        if self._state is State.STOPPED:
            raise _BadFrame("after_stop", repr(event[:40]))
        if event == "media":
            return self._media(message)
        if event == "connected":
            return self._connected_event(message)
        if event == "start":
            return self._start_event(message)
        if event == "dtmf":
            return self._dtmf(message)
        if event == "mark":
            return self._mark(message)
        if event == "stop":
            return self._stop(message)
        raise _BadFrame("unknown_event", repr(event[:40]))

    def _connected_event(self, message: dict[str, Any]) -> Connected:
        if self._connected or self._state is not State.AWAITING_START:
            raise _BadFrame("unexpected_connected", str(self._state.value))
        protocol = message.get("protocol")
        version = message.get("version")
        self._connected = True
        return Connected(
            protocol=protocol if isinstance(protocol, str) else "",
            version=version if isinstance(version, str) else "",
        )

    def _start_event(self, message: dict[str, Any]) -> Start | None:
        if self._state is not State.AWAITING_START:
            raise _BadFrame("duplicate_start", "start after start")
        sequence = self._sequence(message)
        body = _as_object(message.get("start"), "bad_start", "start")
        stream_sid = body.get("streamSid", message.get("streamSid"))
        stream_sid = _as_str(stream_sid, "bad_start", "streamSid")
        call_sid = _as_str(body.get("callSid"), "bad_start", "callSid")
        account_sid = body.get("accountSid")
        params = _as_object(
            body.get("customParameters", {}), "bad_start", "customParameters"
        )
        if not all(isinstance(v, str) for v in params.values()):
            raise _BadFrame("bad_start", "customParameters values must be strings")
        tracks = body.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise _BadFrame("bad_start", "tracks is not a list of strings")
        media_format = _as_object(body.get("mediaFormat"), "bad_start", "mediaFormat")
        encoding = media_format.get("encoding")
        rate = _as_int(media_format.get("sampleRate"), "bad_start", "sampleRate")
        channels = _as_int(media_format.get("channels"), "bad_start", "channels")
        if encoding != "audio/x-mulaw" or rate != 8000 or channels != 1:
            self._unsupported_format = True
            raise _BadFrame("unsupported_format", f"{encoding!r} {rate} Hz x{channels}")

        self._commit_sequence(sequence)
        start = Start(
            stream_sid=stream_sid,
            call_sid=call_sid,
            account_sid=account_sid if isinstance(account_sid, str) else "",
            custom_parameters=dict(params),
            tracks=tuple(tracks),
            encoding=encoding,
            sample_rate=rate,
            channels=channels,
        )
        self._start = start
        self._state = State.STREAMING
        sid = json.dumps(stream_sid)
        self._media_prefix = (
            '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        )
        self._clear_text = '{"event":"clear","streamSid":' + sid + "}"
        return start

    def _media(self, message: dict[str, Any]) -> Media:
        # The hot path: 50 times a second per call.
        self._require_streaming("media")
        sequence = self._sequence(message)
        body = _as_object(message.get("media"), "bad_media", "media")
        track = body.get("track", "inbound")
        if track != "inbound":
            raise _BadFrame("wrong_track", repr(track)[:40])
        payload = body.get("payload")
        if not isinstance(payload, str):
            raise _BadFrame("bad_media", "payload is not a string")
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _BadFrame("bad_base64", f"{len(payload)} characters") from None
        chunk = _as_int(body.get("chunk"), "bad_media", "chunk")
        timestamp = _as_int(body.get("timestamp"), "bad_media", "timestamp")
        self._commit_sequence(sequence)
        return Media(
            payload=audio, timestamp_ms=timestamp, chunk=chunk, sequence=sequence
        )

    def _dtmf(self, message: dict[str, Any]) -> Dtmf:
        self._require_streaming("dtmf")
        sequence = self._sequence(message)
        body = _as_object(message.get("dtmf"), "bad_dtmf", "dtmf")
        digit = body.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            raise _BadFrame("bad_dtmf", f"digit {digit!r}"[:60])
        self._commit_sequence(sequence)
        return Dtmf(digit=digit)

    def _mark(self, message: dict[str, Any]) -> Mark:
        self._require_streaming("mark")
        sequence = self._sequence(message)
        body = _as_object(message.get("mark"), "bad_mark", "mark")
        name = _as_str(body.get("name"), "bad_mark", "name")
        self._commit_sequence(sequence)
        return Mark(name=name)

    def _stop(self, message: dict[str, Any]) -> Stop:
        # A stop before start is honoured: the call is over either way.
        sequence = self._sequence(message)
        self._commit_sequence(sequence)
        self._state = State.STOPPED
        return Stop()

    def _require_streaming(self, event: str) -> None:
        if self._state is State.AWAITING_START:
            raise _BadFrame(event + "_before_start", "no start yet")

    def _sequence(self, message: dict[str, Any]) -> int:
        """Check a frame's stream id and sequence number; commit it later."""
        sid = message.get("streamSid")
        if sid is not None and self._start is not None:
            if sid != self._start.stream_sid:
                raise _BadFrame("wrong_stream", repr(sid)[:40])
        sequence = _as_int(
            message.get("sequenceNumber"), "bad_sequence", "sequenceNumber"
        )
        if sequence <= self._highest_sequence:
            kind = (
                "duplicate_sequence"
                if sequence == self._highest_sequence
                else "out_of_order"
            )
            raise _BadFrame(kind, f"{sequence} after {self._highest_sequence}")
        return sequence

    def _commit_sequence(self, sequence: int) -> None:
        self._highest_sequence = sequence

    def _drop(self, kind: str, detail: str) -> None:
        self.bad_frames[kind] += 1
        self._bad_total += 1
        if self.bad_frames[kind] == 1:
            self.logger.warning(
                "dropped a bad stream frame (%s): %s; more of this kind log at DEBUG",
                kind,
                detail,
            )
        else:
            self.logger.debug("dropped a bad stream frame (%s): %s", kind, detail)
        if self.should_close and not self._close_logged:
            self._close_logged = True
            self.logger.warning(
                "stream should close (code %s) after %d bad frames: %s",
                self.close_code,
                self._bad_total,
                dict(self.bad_frames),
            )

    # Building: the only three messages Twilio accepts from us.

    def media(self, payload: bytes) -> str:
        """A `media` message carrying mu-law 8 kHz mono bytes."""
        self._require_started()
        encoded = base64.b64encode(payload).decode("ascii")
        return self._media_prefix + encoded + self._media_suffix

    def mark(self, name: str) -> str:
        """A `mark` message; Twilio echoes it once the audio before it played."""
        sid = self._require_started()
        return json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": name}})

    def clear(self) -> str:
        """A `clear` message: drop buffered audio, return pending marks."""
        self._require_started()
        return self._clear_text

    def _require_started(self) -> str:
        if self._start is None:
            # A bug in the caller, not bad input: there is no stream to name.
            raise RuntimeError("no stream to address: start has not arrived")
        return self._start.stream_sid
