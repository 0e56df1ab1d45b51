"""Written opt-outs: the wordings a WhatsApp message may use to stop messages."""

from __future__ import annotations

import pytest

from pipelines.tools.optout import asks_to_opt_out, asks_to_stop_messages


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "stop",
        "Stop.",
        "UNSUBSCRIBE",
        "please stop messaging me",
        "don't text me again",
        "Don't message me",
        "Don\u2019t message me",
    ],
)
def test_stop_wordings_opt_out(text: str) -> None:
    """A keyword alone, or a request not to be messaged, asks to stop messages."""
    assert asks_to_stop_messages(text)


@pytest.mark.parametrize(
    "text",
    [
        "stop by tomorrow at 3",
        "I can't stop smiling",
        "yes",
        "when does it end?",
    ],
)
def test_ordinary_words_do_not_opt_out(text: str) -> None:
    """A keyword inside an ordinary sentence is not a request to stop messages."""
    assert not asks_to_stop_messages(text)


@pytest.mark.parametrize(
    "text",
    ["please stop messaging me", "don't text me again", "Don't message me"],
)
def test_written_requests_are_spoken_opt_outs_too(text: str) -> None:
    """A request in words opts out on a call as well as in a message."""
    assert asks_to_opt_out(text)


@pytest.mark.parametrize("text", ["STOP", "Stop.", "stop by tomorrow at 3", "yes"])
def test_bare_keywords_are_for_messages_only(text: str) -> None:
    """A lone "stop" said on a call is not an opt-out; only a message's is."""
    assert not asks_to_opt_out(text)
