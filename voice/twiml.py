"""The TwiML documents voxdial answers calls with.

A call is connected to its stream with `<Connect><Stream>`. Twilio reads the
TwiML after `</Connect>` only once the stream ends, so the apology and hang-up
that follow it are heard only when the media server closes the socket
without ending the call itself (a crash, a refused stream).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = ["DEFAULT_APOLOGY", "connect_stream_twiml", "hangup_twiml"]

DEFAULT_APOLOGY = "Sorry, we are having trouble connecting this call. Goodbye."

_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
# Characters XML 1.0 cannot carry at all, escaped or not.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _checked(value: str, what: str) -> str:
    if _NOT_XML.search(value):
        raise ValueError(f"{what} holds a character XML cannot carry: {value!r}")
    return value


def _document(response: ET.Element) -> str:
    return _DECLARATION + ET.tostring(response, encoding="unicode")


def connect_stream_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    apology: str = DEFAULT_APOLOGY,
) -> str:
    """Connect the call to `stream_url`, passing `parameters` to its start.

    The URL must be `ws://` or `wss://` (Twilio itself requires `wss://`) and
    carry no query string: per-call values travel as parameters instead.
    Raises ValueError for such a URL or for text XML cannot carry.
    """
    parts = urlsplit(stream_url)
    if parts.scheme not in {"ws", "wss"} or not parts.netloc:
        raise ValueError(f"stream URL must be ws:// or wss://: {stream_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"stream URL must carry no query string: {stream_url!r}")

    response = ET.Element("Response")
    connect = ET.SubElement(response, "Connect")
    stream = ET.SubElement(connect, "Stream", url=_checked(stream_url, "stream URL"))
    for name, value in parameters.items():
        ET.SubElement(
            stream,
            "Parameter",
            name=_checked(name, "parameter name"),
            value=_checked(value, "parameter value"),
        )
    ET.SubElement(response, "Say").text = _checked(apology, "apology")
    ET.SubElement(response, "Hangup")
    return _document(response)


def hangup_twiml() -> str:
    """End the call at once."""
    response = ET.Element("Response")
    ET.SubElement(response, "Hangup")
    return _document(response)
