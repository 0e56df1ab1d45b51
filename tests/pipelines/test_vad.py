"""Voice activity: the speech state machine, the drift guard, the shared model."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from pipelines.audio import (
    FRAME_SAMPLES,
    PHONE_RATE,
    Int16Array,
    pcm_to_ulaw,
    ulaw_to_pcm,
)
from pipelines.vad import (
    WINDOW_MS,
    DriftGuard,
    SpeechDetector,
    VadEvent,
    VadParams,
    VadStream,
)

SENTENCE = "I would like to book an appointment for Tuesday morning."


def run(detector: SpeechDetector, probabilities: list[float]) -> list[VadEvent]:
    events = []
    for i, p in enumerate(probabilities):
        event = detector.feed(p, (i + 1) * WINDOW_MS)
        if event is not None:
            events.append(event)
    return events


# The state machine, without the model.


def test_start_is_dated_at_the_onset_and_confirmed_after_start_ms() -> None:
    """Speech starts at its first window and is confirmed start_ms later."""
    detector = SpeechDetector(VadParams(start_ms=160))
    events = run(detector, [0.0] * 3 + [0.9] * 10)
    assert events == [VadEvent("start", 3 * WINDOW_MS, 3 * WINDOW_MS + 160)]
    assert detector.speaking


def test_a_blip_shorter_than_start_ms_is_not_speech() -> None:
    """A sound shorter than start_ms followed by silence emits nothing."""
    detector = SpeechDetector(VadParams(start_ms=160))
    assert run(detector, [0.0, 0.9, 0.9, 0.9, 0.0, 0.0] * 3) == []
    assert not detector.speaking


def test_stop_is_dated_at_the_last_speech_window() -> None:
    """Stop comes after stop_ms of silence, dated where speech ended."""
    detector = SpeechDetector(VadParams(start_ms=64, stop_ms=200))
    events = run(detector, [0.9] * 5 + [0.0] * 10)
    speech_end = 5 * WINDOW_MS
    assert events[1] == VadEvent("stop", speech_end, speech_end + 7 * WINDOW_MS)
    assert not detector.speaking


def test_a_pause_shorter_than_stop_ms_does_not_stop() -> None:
    """A short gap inside speech keeps the speaker speaking."""
    detector = SpeechDetector(VadParams(start_ms=64, stop_ms=200))
    events = run(detector, [0.9] * 5 + [0.0] * 5 + [0.9] * 5)
    assert [e.kind for e in events] == ["start"]
    assert detector.speaking


def test_hysteresis_keeps_speech_going_between_the_thresholds() -> None:
    """Once speaking, probabilities above threshold - 0.15 still count."""
    params = VadParams(threshold=0.6, start_ms=64, stop_ms=96)
    assert params.stop_threshold == pytest.approx(0.45)
    detector = SpeechDetector(params)
    events = run(detector, [0.9] * 3 + [0.5] * 20)
    assert [e.kind for e in events] == ["start"]
    # Below threshold it cannot start in the first place.
    assert run(SpeechDetector(params), [0.5] * 20) == []


def test_drift_guard_resets_only_in_clear_silence_after_its_period() -> None:
    """Resets come every period_ms of quiet audio, never while speaking."""
    guard = DriftGuard(period_ms=2000, quiet_windows=4, quiet_below=0.1)
    windows = 2000 // WINDOW_MS + 1
    assert [guard.feed(0.0, False) for _ in range(windows)].count(True) == 1
    assert not any(guard.feed(0.0, True) for _ in range(3 * windows))
    assert not any(guard.feed(0.3, False) for _ in range(3 * windows))
    resets = [guard.feed(0.0, False) for _ in range(3 * windows)]
    assert resets.index(True) == 3  # the fourth quiet window: period long past


# The shared model.


def phone(pcm: Int16Array) -> Int16Array:
    return ulaw_to_pcm(pcm_to_ulaw(pcm))


def silence(seconds: float) -> Int16Array:
    return np.zeros(int(seconds * PHONE_RATE), np.int16)


@pytest.fixture(scope="session")
def speech(models: Any) -> Int16Array:
    """The sentence as a caller's phone delivers it: 8 kHz through mu-law."""
    pcm: Int16Array = phone(models.tts.synthesize_sync(SENTENCE, PHONE_RATE))
    return pcm


def speech_span_ms(pcm: Int16Array) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 1000)
    return loud[0] * 1000 / PHONE_RATE, loud[-1] * 1000 / PHONE_RATE


def open_stream(models: Any, events: list[VadEvent]) -> VadStream:
    stream: VadStream = models.vad.open_stream(VadParams(), events.append)
    return stream


async def scored(stream: VadStream, samples: int) -> None:
    """Wait until the stream has scored every whole window of `samples`."""
    async with asyncio.timeout(10):
        # The worker signals nothing per window (that would cost every call
        # a loop wake-up per window), so the test polls.
        while stream.scored_ms < samples // 256 * WINDOW_MS:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.sleep(0)  # let the last event's callback run


async def feed(stream: VadStream, pcm: Int16Array) -> None:
    """Push `pcm` frame by frame, as a call does, and wait for the scores."""
    for i in range(0, pcm.size, FRAME_SAMPLES):
        stream.push(pcm[i : i + FRAME_SAMPLES])
    await scored(stream, pcm.size)


@pytest.mark.models
async def test_speech_starts_near_its_onset_and_stops_after_it_ends(
    models: Any, speech: Int16Array
) -> None:
    """One utterance between seconds of silence gives one start and one stop."""
    events: list[VadEvent] = []
    stream = open_stream(models, events)
    await feed(stream, np.concatenate([silence(1), speech, silence(1)]))
    stream.close()

    onset, end = speech_span_ms(speech)
    start, stop = events
    assert start.kind == "start" and stop.kind == "stop"
    assert abs(start.at_ms - (1000 + onset)) <= 100
    assert start.confirmed_ms - start.at_ms >= 160
    assert 1000 + end - 100 <= stop.at_ms <= 1000 + end + 250
    assert stop.confirmed_ms - stop.at_ms >= 200
    assert not stream.speaking


@pytest.mark.models
async def test_streams_share_the_model_and_keep_their_own_state(
    models: Any, speech: Int16Array
) -> None:
    """A speaking call and a silent call on one VAD: only the speaker speaks."""
    talker_events: list[VadEvent] = []
    quiet_events: list[VadEvent] = []
    talker = open_stream(models, talker_events)
    quiet = open_stream(models, quiet_events)
    audio = np.concatenate([silence(0.5), speech])
    hush = np.random.default_rng(1).normal(0, 30, audio.size).astype(np.int16)
    for i in range(0, audio.size, FRAME_SAMPLES):
        talker.push(audio[i : i + FRAME_SAMPLES])
        quiet.push(hush[i : i + FRAME_SAMPLES])
    await scored(talker, audio.size)
    await scored(quiet, audio.size)

    assert [e.kind for e in talker_events] == ["start"]
    assert talker.speaking
    assert quiet_events == [] and not quiet.speaking
    assert quiet.confidence < 0.1
    talker.close()
    quiet.close()


@pytest.mark.models
async def test_speech_after_a_long_silence_is_still_heard(
    models: Any, speech: Int16Array
) -> None:
    """Eight seconds of silence first (state resets) do not hide the speech."""
    events: list[VadEvent] = []
    stream = open_stream(models, events)
    resets = models.vad.stats.resets
    await feed(stream, np.concatenate([silence(8), speech, silence(0.5)]))
    stream.close()

    assert models.vad.stats.resets >= resets + 3
    assert [e.kind for e in events] == ["start", "stop"]
    assert abs(events[0].at_ms - (8000 + speech_span_ms(speech)[0])) <= 100


@pytest.mark.models
async def test_a_closed_stream_delivers_nothing(
    models: Any, speech: Int16Array
) -> None:
    """After close(), pushed audio is ignored and no event arrives."""
    events: list[VadEvent] = []
    stream = open_stream(models, events)
    stream.close()
    stream.push(speech)
    await asyncio.sleep(0.2)
    assert events == [] and stream.scored_ms == 0
