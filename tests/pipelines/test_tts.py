"""Text-to-speech: a sentence in, 8 kHz PCM of a plausible length out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.audio import PHONE_RATE
from pipelines.tts import speakable

SENTENCE = "I would like to book an appointment for Tuesday morning."


def test_speakable_removes_what_piper_should_not_read() -> None:
    """Markup, raw-phoneme brackets, emoji and control characters go."""
    assert (
        speakable("  **Sure!**  See you\non Tuesday 🙂 ") == "Sure! See you on Tuesday"
    )
    assert speakable("[[ h ə l oʊ ]] there") == "h ə l oʊ there"
    assert speakable("It costs $20 + tax.") == "It costs $20 + tax."
    for nothing in ("", "   ", "...", "?!", " - ", "🙂", "**"):
        assert speakable(nothing) == ""


@pytest.mark.models
async def test_a_sentence_becomes_8_khz_speech_of_plausible_length(
    models: Any,
) -> None:
    """Ten words take two to five seconds of int16 audio at 8 kHz."""
    tts = models.tts
    assert tts.sample_rate_out == PHONE_RATE
    audio = await tts.synthesize(SENTENCE)
    assert audio.dtype == np.int16 and audio.ndim == 1
    assert 2.0 <= audio.size / PHONE_RATE <= 5.0
    assert np.abs(audio.astype(np.int32)).max() > 8000  # speech, not a whisper


@pytest.mark.models
async def test_text_with_nothing_to_say_gives_no_audio(models: Any) -> None:
    """Empty or punctuation-only text returns an empty array, not an error."""
    for text in ("", "  ", "...", "?!", "**"):
        audio = await models.tts.synthesize(text)
        assert audio.dtype == np.int16 and audio.size == 0


@pytest.mark.models
def test_sync_synthesis_honours_the_sample_rate(models: Any) -> None:
    """Fixtures can ask for speech at another rate; its length stays the same."""
    audio = models.tts.synthesize_sync("Hello there.", 16000)
    assert audio.dtype == np.int16
    assert 0.4 <= audio.size / 16000 <= 2.0


@pytest.mark.models
def test_several_sentences_come_back_as_one_buffer(models: Any) -> None:
    """Text Piper splits into sentences is returned joined, in order."""
    one = models.tts.synthesize_sync("Yes.")
    two = models.tts.synthesize_sync("Yes. That works for me, thank you.")
    assert two.size > 2 * one.size
