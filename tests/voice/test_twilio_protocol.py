from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from voice.twilio_protocol import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    State,
    Stop,
    StreamProtocol,
)

STREAM_SID = "MZ0123456789abcdef0123456789abcdef"
CALL_SID = "CA0123456789abcdef0123456789abcdef"
log = logging.getLogger("test.twilio_protocol")


def start_message(seq: int = 1, **changes: Any) -> str:
    body: dict[str, Any] = {
        "streamSid": STREAM_SID,
        "accountSid": "AC0123",
        "callSid": CALL_SID,
        "tracks": ["inbound"],
        "customParameters": {"call_id": "c1", "nonce": "n"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    body.update(changes)
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": str(seq),
            "start": body,
            "streamSid": STREAM_SID,
        }
    )


def media_message(seq: int, payload: bytes = b"\xff" * 160, chunk: int = 1) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str((chunk - 1) * 20),
                "payload": base64.b64encode(payload).decode(),
            },
            "streamSid": STREAM_SID,
        }
    )


def event_message(event: str, seq: int, **body: Any) -> str:
    message: dict[str, Any] = {
        "event": event,
        "sequenceNumber": str(seq),
        "streamSid": STREAM_SID,
    }
    message.update(body)
    return json.dumps(message)


@pytest.fixture
def protocol() -> StreamProtocol:
    return StreamProtocol(log, max_frame_bytes=16384, max_bad_frames=5)


@pytest.fixture
def started(protocol: StreamProtocol) -> StreamProtocol:
    protocol.receive_text(
        '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
    )
    assert isinstance(protocol.receive_text(start_message()), Start)
    return protocol


def test_a_full_stream_parses_into_events(protocol: StreamProtocol) -> None:
    """connected, start, media, dtmf, mark and stop each become their event."""
    connected = protocol.receive_text(
        '{"event": "connected", "protocol": "Call", "version": "1.0.0"}'
    )
    assert connected == Connected(protocol="Call", version="1.0.0")
    start = protocol.receive_text(start_message())
    assert start == Start(
        stream_sid=STREAM_SID,
        call_sid=CALL_SID,
        account_sid="AC0123",
        custom_parameters={"call_id": "c1", "nonce": "n"},
        tracks=("inbound",),
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
    )
    assert protocol.stream_sid == STREAM_SID
    assert protocol.state is State.STREAMING
    media = protocol.receive_text(media_message(2, b"\x01\x02\x03", chunk=7))
    assert media == Media(
        payload=b"\x01\x02\x03", timestamp_ms=120, chunk=7, sequence=2
    )
    dtmf = protocol.receive_text(event_message("dtmf", 3, dtmf={"digit": "5"}))
    assert dtmf == Dtmf(digit="5")
    mark = protocol.receive_text(event_message("mark", 4, mark={"name": "m-1"}))
    assert mark == Mark(name="m-1")
    assert protocol.receive_text(event_message("stop", 5, stop={})) == Stop()
    assert protocol.state is State.STOPPED
    assert not protocol.bad_frames


def test_stream_may_start_without_connected(protocol: StreamProtocol) -> None:
    """A start with no connected before it is accepted."""
    assert isinstance(protocol.receive_text(start_message()), Start)


def test_numbers_may_arrive_as_integers(started: StreamProtocol) -> None:
    """sequenceNumber, chunk and timestamp are accepted as JSON integers too."""
    message = json.loads(media_message(2, chunk=3))
    message["sequenceNumber"] = 2
    message["media"]["chunk"] = 3
    message["media"]["timestamp"] = 40
    media = started.receive_text(json.dumps(message))
    assert media == Media(payload=b"\xff" * 160, timestamp_ms=40, chunk=3, sequence=2)


def test_empty_and_odd_sized_payloads_are_fine(started: StreamProtocol) -> None:
    """A media payload of any length, even none, is passed through."""
    empty = started.receive_text(media_message(2, b""))
    odd = started.receive_text(media_message(3, b"\x00" * 77))
    assert isinstance(empty, Media) and empty.payload == b""
    assert isinstance(odd, Media) and len(odd.payload) == 77
    assert not started.bad_frames


BEFORE_START = [
    ("media_before_start", media_message(1)),
    ("dtmf_before_start", event_message("dtmf", 1, dtmf={"digit": "1"})),
    ("mark_before_start", event_message("mark", 1, mark={"name": "x"})),
]

MALFORMED = [
    ("malformed_json", '{"event": "media",'),
    ("malformed_json", "[" * 5000 + "]" * 5000),
    ("not_an_object", '["event", "media"]'),
    ("not_an_object", "42"),
    ("missing_event", '{"streamSid": "x"}'),
    ("missing_event", '{"event": 7}'),
    ("unknown_event", event_message("hello", 2)),
    ("bad_base64", json.loads(media_message(2)) | {"media": {"payload": "@@@"}}),
    ("bad_media", event_message("media", 2)),
    ("bad_media", event_message("media", 2, media={"payload": 5})),
    ("bad_media", event_message("media", 2, media={"payload": "", "chunk": "x"})),
    ("wrong_track", event_message("media", 2, media={"track": "outbound"})),
    ("bad_dtmf", event_message("dtmf", 2, dtmf={"digit": "55"})),
    ("bad_dtmf", event_message("dtmf", 2)),
    ("bad_mark", event_message("mark", 2, mark={})),
    ("bad_sequence", event_message("mark", -1, mark={"name": "x"})),
    ("bad_sequence", event_message("mark", "9" * 5000, mark={"name": "x"})),
    ("unexpected_connected", '{"event": "connected"}'),
    ("duplicate_start", start_message(2)),
    ("wrong_stream", json.loads(media_message(2)) | {"streamSid": "MZother"}),
]


@pytest.mark.parametrize(("kind", "text"), BEFORE_START)
def test_events_before_start_are_dropped(
    protocol: StreamProtocol, kind: str, text: str
) -> None:
    """media, dtmf and mark before start are bad frames."""
    assert protocol.receive_text(text) is None
    assert protocol.bad_frames == {kind: 1}


@pytest.mark.parametrize(("kind", "text"), MALFORMED)
def test_malformed_frames_are_dropped(
    started: StreamProtocol, kind: str, text: str | dict[str, Any]
) -> None:
    """Each kind of malformed frame returns None and is counted under its kind."""
    raw = text if isinstance(text, str) else json.dumps(text)
    assert started.receive_text(raw) is None
    assert started.bad_frames == {kind: 1}
    # The stream goes on: the next good frame still parses.
    assert isinstance(started.receive_text(media_message(2)), Media)


def test_binary_frames_are_dropped(started: StreamProtocol) -> None:
    """Twilio sends text only: binary frames are bad frames."""
    started.receive_bytes(b"\xff" * 160)
    assert started.bad_frames == {"binary_frame": 1}


def test_oversized_frames_are_dropped(started: StreamProtocol) -> None:
    """A frame above max_frame_bytes is dropped without being parsed."""
    big = media_message(2, b"\xff" * 13000)
    assert started.receive_text(big) is None
    # Non-ASCII text is measured in UTF-8 bytes, not characters.
    name = "\u00e9" * 8200
    wide = f'{{"event": "mark", "sequenceNumber": "2", "mark": {{"name": "{name}"}}}}'
    assert len(wide) < 16384 < len(wide.encode())
    assert started.receive_text(wide) is None
    assert started.bad_frames == {"oversized": 2}


def test_start_is_validated(protocol: StreamProtocol) -> None:
    """A start missing its ids or with non-string parameters is a bad frame."""
    assert protocol.receive_text(start_message(callSid="")) is None
    assert protocol.receive_text(start_message(customParameters={"a": 1})) is None
    assert protocol.receive_text(start_message(mediaFormat=None)) is None
    assert protocol.bad_frames == {"bad_start": 3}
    assert protocol.state is State.AWAITING_START
    assert isinstance(protocol.receive_text(start_message()), Start)


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/l16", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
    ],
)
def test_unsupported_format_closes_the_stream(
    protocol: StreamProtocol, media_format: dict[str, Any]
) -> None:
    """A start with any format but mu-law 8 kHz mono asks for close 1003."""
    assert protocol.receive_text(start_message(mediaFormat=media_format)) is None
    assert protocol.bad_frames == {"unsupported_format": 1}
    assert protocol.should_close
    assert protocol.close_code == CLOSE_UNSUPPORTED_DATA
    assert protocol.receive_text(media_message(2)) is None


def test_duplicate_sequence_is_dropped(started: StreamProtocol) -> None:
    """A frame repeating the highest sequence number is a duplicate."""
    assert isinstance(started.receive_text(media_message(2)), Media)
    assert started.receive_text(media_message(2)) is None
    assert started.bad_frames == {"duplicate_sequence": 1}


def test_older_sequence_is_out_of_order(started: StreamProtocol) -> None:
    """A frame below the highest sequence number is out of order."""
    assert isinstance(started.receive_text(media_message(5)), Media)
    assert started.receive_text(media_message(3)) is None
    assert started.receive_text(event_message("dtmf", 4, dtmf={"digit": "1"})) is None
    assert started.bad_frames == {"out_of_order": 2}


def test_gaps_in_sequence_are_accepted(started: StreamProtocol) -> None:
    """Skipped sequence numbers are not an error; rising is all that counts."""
    assert isinstance(started.receive_text(media_message(10)), Media)
    assert isinstance(started.receive_text(media_message(11)), Media)


def test_dropped_frames_do_not_advance_the_sequence(started: StreamProtocol) -> None:
    """A frame dropped for bad content does not mark its sequence number seen."""
    bad = json.loads(media_message(2)) | {"media": {"payload": "!!"}}
    assert started.receive_text(json.dumps(bad)) is None
    assert isinstance(started.receive_text(media_message(2)), Media)


def test_everything_after_stop_is_dropped(started: StreamProtocol) -> None:
    """Once stopped, every frame is a bad frame."""
    assert started.receive_text(event_message("stop", 2)) == Stop()
    assert started.receive_text(media_message(3)) is None
    assert started.receive_text(event_message("stop", 4)) is None
    assert started.bad_frames == {"after_stop": 2}


def test_stop_before_start_ends_the_stream(protocol: StreamProtocol) -> None:
    """A stop is honoured even when no start came."""
    assert protocol.receive_text(event_message("stop", 1)) == Stop()
    assert protocol.state is State.STOPPED


def test_too_many_bad_frames_closes_with_policy_violation(
    started: StreamProtocol,
) -> None:
    """more than max_bad_frames bad frames set should_close with code 1008."""
    for _ in range(5):
        started.receive_text("nonsense")
    assert not started.should_close
    assert started.close_code is None
    started.receive_bytes(b"")
    assert started.should_close
    assert started.close_code == CLOSE_POLICY_VIOLATION


def test_each_kind_warns_once(
    started: StreamProtocol, caplog: pytest.LogCaptureFixture
) -> None:
    """The first bad frame of a kind logs at WARNING, repeats at DEBUG."""
    caplog.set_level(logging.DEBUG, logger=log.name)
    for _ in range(3):
        started.receive_text("nonsense")
    started.receive_bytes(b"x")
    levels = [(r.levelno, r.args[0]) for r in caplog.records if r.args]
    assert levels == [
        (logging.WARNING, "malformed_json"),
        (logging.DEBUG, "malformed_json"),
        (logging.DEBUG, "malformed_json"),
        (logging.WARNING, "binary_frame"),
    ]


def test_accepts_a_logger_adapter() -> None:
    """A LoggerAdapter carrying the call id works as the logger."""
    adapter = logging.LoggerAdapter(log, {"call_id": "c1"})
    protocol = StreamProtocol(adapter)
    protocol.receive_bytes(b"x")
    assert protocol.bad_frames == {"binary_frame": 1}


def test_builders_make_only_the_three_allowed_messages(
    started: StreamProtocol,
) -> None:
    """media, mark and clear come out in exactly Twilio's shapes."""
    media = json.loads(started.media(b"\x00\x7f\xff"))
    assert media == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": base64.b64encode(b"\x00\x7f\xff").decode()},
    }
    mark = json.loads(started.mark('say "hi" \\ \u00e9'))
    assert mark == {
        "event": "mark",
        "streamSid": STREAM_SID,
        "mark": {"name": 'say "hi" \\ \u00e9'},
    }
    assert json.loads(started.clear()) == {"event": "clear", "streamSid": STREAM_SID}


def test_built_messages_parse_back(started: StreamProtocol) -> None:
    """What the builders make is valid JSON even for an awkward stream id."""
    odd = StreamProtocol(log)
    odd.receive_text(start_message(streamSid='MZ"\\'))
    assert json.loads(odd.media(b""))["streamSid"] == 'MZ"\\'
    assert json.loads(odd.clear())["streamSid"] == 'MZ"\\'


def test_builders_need_a_stream(protocol: StreamProtocol) -> None:
    """Before start there is no streamSid to send to."""
    with pytest.raises(RuntimeError):
        protocol.media(b"\xff")
    with pytest.raises(RuntimeError):
        protocol.clear()
