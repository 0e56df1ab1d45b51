from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from voice.twiml import DEFAULT_APOLOGY, connect_stream_twiml, hangup_twiml

STREAM_URL = "wss://calls.example.com/twilio/stream"


def test_connect_stream_shape() -> None:
    """Response holds Connect/Stream with its URL and Parameters, then Say, Hangup."""
    text = connect_stream_twiml(STREAM_URL, {"call_id": "c1", "nonce": "abc"})
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?><Response>')
    root = ET.fromstring(text)
    assert root.tag == "Response"
    assert [child.tag for child in root] == ["Connect", "Say", "Hangup"]
    stream = root.find("Connect/Stream")
    assert stream is not None
    assert stream.get("url") == STREAM_URL
    params = [(p.get("name"), p.get("value")) for p in stream.findall("Parameter")]
    assert params == [("call_id", "c1"), ("nonce", "abc")]
    assert root.findtext("Say") == DEFAULT_APOLOGY


def test_values_are_escaped() -> None:
    """Quotes, ampersands, angle brackets and newlines survive the round trip."""
    awkward = {'a"b': "Tom & Jerry's <pub>", "line": "one\ntwo\tthree"}
    apology = "Sorry <really> & truly"
    root = ET.fromstring(connect_stream_twiml(STREAM_URL, awkward, apology))
    stream = root.find("Connect/Stream")
    assert stream is not None
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == awkward
    assert root.findtext("Say") == apology


def test_no_parameters() -> None:
    """A stream with no parameters has no Parameter elements."""
    root = ET.fromstring(connect_stream_twiml(STREAM_URL, {}))
    assert root.findall("Connect/Stream/Parameter") == []


@pytest.mark.parametrize(
    "url",
    [
        "https://calls.example.com/stream",
        "wss://calls.example.com/stream?call_id=1",
        "calls.example.com/stream",
    ],
)
def test_bad_stream_urls_are_refused(url: str) -> None:
    """Only ws:// or wss:// URLs without a query string are accepted."""
    with pytest.raises(ValueError):
        connect_stream_twiml(url, {})


def test_characters_xml_cannot_carry_are_refused() -> None:
    """A control character in a parameter raises rather than producing bad XML."""
    with pytest.raises(ValueError):
        connect_stream_twiml(STREAM_URL, {"name": "a\x00b"})


def test_hangup() -> None:
    """hangup_twiml is a Response holding only Hangup."""
    root = ET.fromstring(hangup_twiml())
    assert root.tag == "Response"
    assert [child.tag for child in root] == ["Hangup"]
