"""Speech-to-text: phone audio in, words out, on the shortened window."""

from __future__ import annotations

import asyncio
import difflib
import re
from typing import Any

import numpy as np
import pytest

from pipelines.audio import PHONE_RATE, Int16Array, pcm_to_ulaw, ulaw_to_pcm
from pipelines.stt import Transcript, _loops

SENTENCES = [
    "I would like to book an appointment for Tuesday morning.",
    "We already have a provider for that, but thanks for calling.",
    "Who is this?",
]


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions, insertions and deletions, roughly (difflib alignment)."""
    ref, hyp = words(reference), words(hypothesis)
    matcher = difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks())
    return max(len(ref), len(hyp)) - matched


@pytest.fixture(scope="session")
def phone_speech(models: Any) -> dict[str, Int16Array]:
    """Each sentence spoken, then carried as 8 kHz mu-law like a call."""
    return {
        s: ulaw_to_pcm(pcm_to_ulaw(models.tts.synthesize_sync(s, PHONE_RATE)))
        for s in SENTENCES
    }


def test_loop_detector_flags_repeats_and_lets_speech_through() -> None:
    """Repeated blocks at the end are loops; one repetition of a pair is not."""
    assert _loops([1, 2, 3, 1, 2, 3])  # a three-token block twice
    assert _loops([9, 4, 4, 4])  # one token three times
    assert _loops([7, 1, 2, 1, 2, 1, 2])
    assert not _loops([5, 6, 5, 6])  # "hello? hello?"
    assert not _loops([1, 2, 3, 4, 5, 6])
    assert not _loops([])


@pytest.mark.models
async def test_phone_speech_is_transcribed_with_few_errors(
    models: Any, phone_speech: dict[str, Int16Array]
) -> None:
    """8 kHz mu-law speech comes back as the words that were said."""
    for sentence, pcm in phone_speech.items():
        result = await models.stt.transcribe(pcm, PHONE_RATE)
        assert isinstance(result, Transcript)
        assert word_errors(sentence, result.text) <= 2, result.text
        assert result.audio_s == pytest.approx(pcm.size / PHONE_RATE)
        assert result.elapsed_s > 0


@pytest.mark.models
async def test_shortened_window_matches_the_full_window(
    models: Any, phone_speech: dict[str, Int16Array]
) -> None:
    """Encoding the utterance plus a margin reads the same words as 30 s."""
    stt = models.stt
    pcm = phone_speech[SENTENCES[0]]
    assert stt.trim
    trimmed = stt.transcribe_sync(pcm, PHONE_RATE)
    stt.trim = False
    try:
        full = stt.transcribe_sync(pcm, PHONE_RATE)
    finally:
        stt.trim = True
    assert word_errors(full.text, trimmed.text) <= 1, (full.text, trimmed.text)


@pytest.mark.models
async def test_silence_and_empty_audio_give_no_words(models: Any) -> None:
    """No speech, no text: Whisper is not asked to imagine any."""
    empty = await models.stt.transcribe(np.zeros(0, np.int16), PHONE_RATE)
    assert empty.text == "" and empty.audio_s == 0
    quiet = await models.stt.transcribe(np.zeros(PHONE_RATE, np.int16), PHONE_RATE)
    assert quiet.text == "" and quiet.audio_s == pytest.approx(1.0)
    hiss = np.random.default_rng(2).normal(0, 200, PHONE_RATE).astype(np.int16)
    assert (await models.stt.transcribe(hiss, PHONE_RATE)).text == ""


@pytest.mark.models
async def test_concurrent_utterances_each_get_their_own_words(
    models: Any, phone_speech: dict[str, Int16Array]
) -> None:
    """Calls transcribing at once queue on the executor and all succeed."""
    results = await asyncio.gather(
        *(models.stt.transcribe(pcm, PHONE_RATE) for pcm in phone_speech.values())
    )
    for sentence, result in zip(phone_speech, results, strict=True):
        assert word_errors(sentence, result.text) <= 2, result.text
