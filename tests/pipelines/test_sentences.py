"""Cutting a streamed reply into speakable chunks, and filling prompt templates."""

from __future__ import annotations

import re

import pytest

from pipelines.llm import SentenceSplitter, render_template


def split(text: str, splitter: SentenceSplitter | None = None) -> list[str]:
    """Feed `text` token by token, as an LLM would, then flush."""
    splitter = splitter or SentenceSplitter()
    chunks: list[str] = []
    for token in re.findall(r"\s*\S+", text):
        chunks += splitter.push(token)
    if rest := splitter.flush():
        chunks.append(rest)
    return chunks


def split_by_char(text: str) -> list[str]:
    splitter = SentenceSplitter()
    chunks = [chunk for ch in text for chunk in splitter.push(ch)]
    if rest := splitter.flush():
        chunks.append(rest)
    return chunks


def test_splits_at_sentence_ends():
    """Each sentence ending in . ! or ? becomes its own chunk."""
    text = "Hello there. How are you? I'm great!"
    assert split(text) == ["Hello there.", "How are you?", "I'm great!"]


def test_chunk_is_returned_as_soon_as_it_ends():
    """A finished sentence comes back from the push that completes it."""
    splitter = SentenceSplitter()
    assert splitter.push("Thanks for calling") == []
    assert splitter.push(". ") == ["Thanks for calling."]


def test_character_feeding_matches_token_feeding():
    """How the text is cut into deltas does not change the chunks."""
    text = "It is 3.5 miles, e.g. near Dr. Lee's office. See you at 3 p.m. Bye!"
    assert split_by_char(text) == split(text)


def test_decimals_do_not_split():
    """The point in 3.5 is not a sentence end, even when it ends a delta."""
    splitter = SentenceSplitter()
    assert splitter.push("It costs 3.") == []
    assert splitter.push("50 a month. Okay") == ["It costs 3.50 a month."]
    assert splitter.flush() == "Okay"


@pytest.mark.parametrize(
    ("text", "chunks"),
    [
        ("Dr. Smith will call. Thanks", ["Dr. Smith will call.", "Thanks"]),
        ("Ask Mrs. Jones. She knows", ["Ask Mrs. Jones.", "She knows"]),
        ("Bring ID, e.g. a passport. Done", ["Bring ID, e.g. a passport.", "Done"]),
        ("This is John F. Kennedy. Hi", ["This is John F. Kennedy.", "Hi"]),
        ("Call ext. 42 today. Bye", ["Call ext. 42 today.", "Bye"]),
    ],
)
def test_abbreviations_do_not_split(text: str, chunks: list[str]):
    """Titles, initials and abbreviations inside a sentence do not end it."""
    assert split(text, SentenceSplitter(first_clause_words=0)) == chunks


def test_time_followed_by_lowercase_does_not_split():
    """ "3 p.m. tomorrow" continues the sentence."""
    assert split("See you at 3 p.m. tomorrow. Bye.") == [
        "See you at 3 p.m. tomorrow.",
        "Bye.",
    ]


def test_time_followed_by_capital_splits():
    """ "3 p.m. Then" starts a new sentence."""
    assert split("See you at 3 p.m. Then we talk.") == [
        "See you at 3 p.m.",
        "Then we talk.",
    ]


def test_abbreviation_waits_for_the_next_word():
    """After "p.m." nothing is emitted until the next word decides."""
    splitter = SentenceSplitter(first_clause_words=0)
    assert splitter.push("Come at 4 p.m. ") == []
    assert splitter.push("Great") == ["Come at 4 p.m."]


def test_first_chunk_splits_early_at_a_clause():
    """The first chunk ends at a comma once it holds four words; later ones not."""
    text = "Sure thing, I can help with that, let me check, one moment. Okay."
    assert split(text) == [
        "Sure thing, I can help with that,",
        "let me check, one moment.",
        "Okay.",
    ]


def test_short_first_clause_waits():
    """A first clause under four words does not split early."""
    assert split("Yes, of course. Bye.") == ["Yes, of course.", "Bye."]


@pytest.mark.parametrize("mark", [";", ":", " \u2014", " -"])
def test_first_chunk_splits_at_other_clause_marks(mark: str):
    """Semicolons, colons and dashes also end an early first chunk."""
    text = f"I can do that for you{mark} the slot is open."
    assert split(text) == [f"I can do that for you{mark}", "the slot is open."]


def test_thousands_separator_is_not_a_clause():
    """The comma in 1,000 is not a clause boundary."""
    assert split("We have 1,000 seats left in total.") == [
        "We have 1,000 seats left in total."
    ]


def test_newlines_split_and_markdown_is_stripped():
    """Newlines end chunks; *, # and backticks never reach TTS."""
    text = "## Options\n**Great!** Here they are:\n- Monday\n- `Tuesday`"
    assert split(text) == ["Options", "Great!", "Here they are:", "Monday", "Tuesday"]


def test_flush_returns_the_rest_then_none():
    """flush gives the unfinished tail once, then None."""
    splitter = SentenceSplitter()
    assert splitter.push("one more thing") == []
    assert splitter.flush() == "one more thing"
    assert splitter.flush() is None


def test_flush_drops_unspeakable_rest():
    """A tail of only punctuation or markdown is not returned."""
    splitter = SentenceSplitter()
    splitter.push("All set. **")
    assert splitter.flush() is None


def test_flush_readies_the_next_reply():
    """After flush, the next reply's first chunk splits early again."""
    splitter = SentenceSplitter()
    split("First reply here, with a clause, and more.", splitter)
    assert split("Second reply goes here, and continues.", splitter) == [
        "Second reply goes here,",
        "and continues.",
    ]


def test_render_fills_placeholders():
    """{{name}} placeholders take the field values, spaces inside tolerated."""
    text = "Hi {{first_name}}, this is {{ agent }} from {{company}}."
    fields = {"first_name": "Ana", "agent": "Sam", "company": "Acme"}
    assert render_template(text, fields) == "Hi Ana, this is Sam from Acme."


def test_render_unknown_placeholder_is_empty():
    """An unknown placeholder becomes the empty string."""
    assert render_template("Hello {{nickname}}!", {}) == "Hello !"


def test_render_leaves_other_braces_alone():
    """Single braces and JSON-like text are not placeholders."""
    text = 'Reply as {"outcome": "..."} for {{name}}.'
    assert render_template(text, {"name": "Bo"}) == (
        'Reply as {"outcome": "..."} for Bo.'
    )
