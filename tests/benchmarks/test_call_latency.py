"""The latency benchmark's arithmetic and report (its runs are benchmarks)."""

from __future__ import annotations

import numpy as np

from benchmarks.call_latency import (
    BargeInResult,
    BenchResult,
    MemoryResult,
    Profile,
    Summary,
    TurnsResult,
    format_table,
    trim_silence,
)


def test_summary_of_values_and_of_nothing() -> None:
    """p50/p95/max of a sample; an empty sample has none."""
    summary = Summary.of([0.1, 0.2, 0.3, 0.4, 1.0])
    assert summary.n == 5 and summary.p50 == 0.3 and summary.max == 1.0
    assert summary.p95 is not None and 0.4 < summary.p95 <= 1.0
    assert Summary.of([]) == Summary(0, None, None, None)


def test_trim_silence_keeps_only_the_speech() -> None:
    """Leading and trailing near-silence goes, so the first frame sent is the onset."""
    speech = (np.sin(np.arange(800) / 5) * 10_000).astype(np.int16)
    padded = np.concatenate(
        [np.zeros(400, np.int16), speech, np.full(300, 3, np.int16)]
    )
    trimmed = trim_silence(padded)
    assert 780 <= trimmed.size <= 800
    assert trim_silence(np.zeros(10, np.int16)).size == 0


def test_report_names_every_figure() -> None:
    """The table shows voice-to-voice, each stage, barge-in and memory per call."""
    s = Summary.of([0.5, 0.7])
    stages = {k: s for k in ("turn_detection", "stt", "llm", "tts", "send")}
    recorded = {
        k: s
        for k in (
            "turn_detection_s",
            "stt_s",
            "llm_first_token_s",
            "tts_first_audio_s",
            "first_audio_s",
        )
    }
    result = BenchResult(
        Profile(2, 1, 3),
        TurnsResult(2, 2, s, recorded, stages, 0, []),
        BargeInResult(1, 1, Summary.of([0.2]), 0, 0.21, 1, 1),
        MemoryResult(3, 3, 390.0, 470.0, 500.0, 15.0, True),
    )
    table = format_table(result)
    for words in (
        "voice to voice",
        "STT",
        "onset -> clear",
        "agent frames after clear: 0",
    ):
        assert words in table
    assert "15.00 MB per additional call" in table
    assert result.to_dict()["memory"]["per_call_mb"] == 15.0
