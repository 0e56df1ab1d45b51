"""Silero voice activity detection for phone audio: one model, every call.

One `SileroVAD` per process owns the ONNX session and one worker thread. Each
call opens a `VadStream` and pushes its 20 ms frames into it; pushing only
appends to a buffer, so the 20 ms path never waits on the model. The worker
stacks the complete 32 ms windows of every stream with pending audio into one
batched inference (one row per stream, each row carrying that stream's own
recurrent state), then hands the resulting events back to the event loop.

The speech state machine (`SpeechDetector`) has four states:

- QUIET: no speech. A window at or above `threshold` marks a possible onset
  and moves to ONSET.
- ONSET: speech may have begun. Windows at or above `stop_threshold` extend
  it; once it spans `start_ms` a "start" event is emitted (dated at the
  onset, not at the confirmation) and the state is SPEAKING. A window below
  `stop_threshold` first abandons the onset: back to QUIET, no event.
- SPEAKING: windows at or above `stop_threshold` keep it going. One below
  opens a possible end of speech: PAUSE.
- PAUSE: a window at or above `threshold` resumes SPEAKING; anything else
  lengthens the silence. Once the silence reaches `stop_ms` a "stop" event is
  emitted, dated at the end of the last speech window, and the state is QUIET.

Events alternate, start first; a stream never emits two starts in a row.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np
import onnxruntime as ort

from pipelines.assets import SILERO_VAD, verified_path
from pipelines.audio import PHONE_RATE, Float32Array, Int16Array, to_float
from pipelines.errors import ModelError

__all__ = [
    "WINDOW_MS",
    "DriftGuard",
    "SileroVAD",
    "SpeechDetector",
    "VadEvent",
    "VadParams",
    "VadStats",
    "VadStream",
]

log = logging.getLogger(__name__)

WINDOW_SAMPLES = 256  # Silero's window at 8 kHz
CONTEXT_SAMPLES = 32  # the tail of the previous window, fed in front of each
WINDOW_MS = WINDOW_SAMPLES * 1000 // PHONE_RATE  # 32
_STATE_SHAPE = (2, 128)


@dataclass(frozen=True)
class VadParams:
    """When a stream's audio counts as speech."""

    threshold: float = 0.6
    start_ms: int = 160  # speech must last this long to start
    stop_ms: int = 200  # silence this long ends speech
    hysteresis: float = 0.15  # speech continues above threshold - hysteresis

    @property
    def stop_threshold(self) -> float:
        return self.threshold - self.hysteresis


@dataclass(frozen=True)
class VadEvent:
    """Speech started or stopped, in ms of the stream's own audio.

    `at_ms` is the speech onset for "start" and the end of the last speech
    window for "stop"; `confirmed_ms` is how much audio had been pushed when
    the detector decided, so `confirmed_ms - at_ms` is the detection delay.
    """

    kind: Literal["start", "stop"]
    at_ms: int
    confirmed_ms: int


class _State(Enum):
    QUIET = "quiet"
    ONSET = "onset"
    SPEAKING = "speaking"
    PAUSE = "pause"


class SpeechDetector:
    """The speech state machine: window probabilities in, events out."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self._state = _State.QUIET
        self._onset_ms = 0
        self._speech_end_ms = 0

    @property
    def speaking(self) -> bool:
        """True between a "start" event and the following "stop"."""
        return self._state in (_State.SPEAKING, _State.PAUSE)

    def feed(self, probability: float, end_ms: int) -> VadEvent | None:
        """One window's speech probability; the window ends at `end_ms`."""
        p = self.params
        start_ms = end_ms - WINDOW_MS
        state = self._state
        if state is _State.QUIET:
            if probability >= p.threshold:
                self._state, self._onset_ms = _State.ONSET, start_ms
                return self._confirm_onset(end_ms)
        elif state is _State.ONSET:
            if probability < p.stop_threshold:
                self._state = _State.QUIET
            else:
                return self._confirm_onset(end_ms)
        elif state is _State.SPEAKING:
            if probability >= p.stop_threshold:
                self._speech_end_ms = end_ms
            else:
                self._state = _State.PAUSE
        elif probability >= p.threshold:  # PAUSE, and speech again
            self._state, self._speech_end_ms = _State.SPEAKING, end_ms
        elif end_ms - self._speech_end_ms >= p.stop_ms:
            self._state = _State.QUIET
            return VadEvent("stop", self._speech_end_ms, end_ms)
        return None

    def _confirm_onset(self, end_ms: int) -> VadEvent | None:
        if end_ms - self._onset_ms < self.params.start_ms:
            return None
        self._state, self._speech_end_ms = _State.SPEAKING, end_ms
        return VadEvent("start", self._onset_ms, end_ms)


class DriftGuard:
    """Says when to reset a stream's recurrent state.

    At 8 kHz Silero's state drifts over long non-speech and it then
    under-reports the next speech. Resetting it every `period_ms` of audio
    fixes that, but a reset in the middle of speech would itself lose speech,
    so one happens only after `quiet_windows` consecutive windows below
    `quiet_below`, while the detector is not speaking.
    """

    def __init__(
        self, period_ms: int = 2000, quiet_windows: int = 4, quiet_below: float = 0.1
    ) -> None:
        self.period_ms = period_ms
        self.quiet_windows = quiet_windows
        self.quiet_below = quiet_below
        self._since_reset_ms = 0
        self._quiet_run = 0

    def feed(self, probability: float, speaking: bool) -> bool:
        """One window; True means reset the state now (before the next window)."""
        self._since_reset_ms += WINDOW_MS
        if probability < self.quiet_below and not speaking:
            self._quiet_run += 1
        else:
            self._quiet_run = 0
        if (
            self._since_reset_ms >= self.period_ms
            and self._quiet_run >= self.quiet_windows
        ):
            self._since_reset_ms = 0
            self._quiet_run = 0
            return True
        return False


@dataclass
class VadStats:
    """What the shared worker has done so far (read for monitoring)."""

    batches: int = 0  # inference runs
    windows: int = 0  # windows scored, over all streams
    max_batch: int = 0  # most streams in one run
    busy_s: float = 0.0  # time spent in inference
    resets: int = 0  # drift resets


class VadStream:
    """One call's view of the shared VAD. Create with `SileroVAD.open_stream`."""

    def __init__(
        self,
        vad: SileroVAD,
        params: VadParams,
        on_event: Callable[[VadEvent], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._vad = vad
        self._on_event = on_event
        self._loop = loop
        self._detector = SpeechDetector(params)
        self._guard = DriftGuard()
        self._closed = False
        # Written by the caller's thread under the VAD's lock.
        self._incoming: list[Int16Array] = []
        # Owned by the worker thread.
        self._tail: Float32Array = np.zeros(0, np.float32)
        self._state: Float32Array = np.zeros(_STATE_SHAPE, np.float32)
        self._context: Float32Array = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._windows_done = 0
        self.confidence = 0.0  # the last window's speech probability

    @property
    def speaking(self) -> bool:
        """True from a "start" event to the next "stop"."""
        return self._detector.speaking

    @property
    def scored_ms(self) -> int:
        """How much of the pushed audio has been scored so far."""
        return self._windows_done * WINDOW_MS

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, pcm: Int16Array) -> None:
        """Queue 8 kHz PCM for scoring. Never blocks on the model."""
        if self._closed or pcm.size == 0:
            return
        self._vad._submit(self, pcm)

    def close(self) -> None:
        """Stop scoring; no event is delivered after this returns."""
        self._closed = True
        self._vad._discard(self)

    # Worker-thread side.

    def _take(self, incoming: list[Int16Array]) -> int:
        """Append newly pushed audio; return how many windows are ready."""
        chunks = [self._tail, *(to_float(c) for c in incoming)]
        self._tail = np.concatenate(chunks)
        return self._tail.size // WINDOW_SAMPLES

    def _row(self, i: int) -> Float32Array:
        window = self._tail[i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
        return np.concatenate((self._context, window))

    def _scored(self, i: int, probability: float, state: Float32Array) -> None:
        end = (i + 1) * WINDOW_SAMPLES
        self.confidence = probability
        end_ms = (self._windows_done + 1) * WINDOW_MS
        event = self._detector.feed(probability, end_ms)
        if self._guard.feed(probability, self._detector.speaking):
            self._state = np.zeros(_STATE_SHAPE, np.float32)
            self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
            self._vad.stats.resets += 1
        else:
            self._state = state
            self._context = self._tail[end - CONTEXT_SAMPLES : end].copy()
        if event is not None:
            self._deliver(event)
        # Counted after delivery: once `scored_ms` covers a window, its event
        # is already queued on the loop.
        self._windows_done += 1

    def _consumed(self, windows: int) -> None:
        self._tail = self._tail[windows * WINDOW_SAMPLES :].copy()

    def _deliver(self, event: VadEvent) -> None:
        try:
            self._loop.call_soon_threadsafe(self._dispatch, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._closed = True

    def _dispatch(self, event: VadEvent) -> None:
        if not self._closed:
            self._on_event(event)


class SileroVAD:
    """The process's one Silero session and the worker thread that runs it."""

    def __init__(self) -> None:
        path = verified_path(SILERO_VAD)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"cannot load Silero VAD from {path}: {exc}") from exc
        self._sr = np.array(PHONE_RATE, dtype=np.int64)
        self.stats = VadStats()
        self._cond = threading.Condition()
        self._ready: dict[VadStream, None] = {}  # insertion-ordered set
        self._stopping = False
        self._debug = log.isEnabledFor(logging.DEBUG)
        self._thread = threading.Thread(target=self._work, name="vad", daemon=True)
        self._thread.start()

    def open_stream(
        self,
        params: VadParams,
        on_event: Callable[[VadEvent], None],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> VadStream:
        """A stream whose events are delivered on `loop` (default: the running one)."""
        if self._stopping:
            raise ModelError("the VAD has been shut down")
        return VadStream(self, params, on_event, loop or asyncio.get_running_loop())

    def shutdown(self) -> None:
        """Stop the worker; pending audio is dropped."""
        with self._cond:
            self._stopping = True
            self._ready.clear()
            self._cond.notify()
        self._thread.join()

    # Called from the streams.

    def _submit(self, stream: VadStream, pcm: Int16Array) -> None:
        with self._cond:
            if self._stopping:
                return
            stream._incoming.append(pcm)
            if stream not in self._ready:
                self._ready[stream] = None
                self._cond.notify()

    def _discard(self, stream: VadStream) -> None:
        with self._cond:
            self._ready.pop(stream, None)
            stream._incoming = []

    # The worker thread.

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                batch = [(s, s._incoming) for s in self._ready]
                for stream, _ in batch:
                    stream._incoming = []
                self._ready.clear()
            try:
                self._score([(s, s._take(chunks)) for s, chunks in batch])
            except Exception:
                # One bad run must not end detection for every call.
                log.exception("VAD inference failed; dropping this batch")

    def _score(self, work: list[tuple[VadStream, int]]) -> None:
        """Score every ready window, one batched run per round."""
        work = [(s, n) for s, n in work if n and not s.closed]
        try:
            for i in range(max((n for _, n in work), default=0)):
                streams = [s for s, n in work if n > i and not s.closed]
                if not streams:
                    break
                rows = np.stack([s._row(i) for s in streams])
                state = np.stack([s._state for s in streams], axis=1)
                started = time.perf_counter()
                out, state_n = self._session.run(
                    None, {"input": rows, "state": state, "sr": self._sr}
                )
                self._count(len(streams), time.perf_counter() - started)
                for j, stream in enumerate(streams):
                    stream._scored(i, float(out[j, 0]), state_n[:, j, :].copy())
        finally:
            # Even after a failed run: never score the same audio twice.
            for stream, n in work:
                stream._consumed(n)

    def _count(self, rows: int, elapsed: float) -> None:
        stats = self.stats
        stats.batches += 1
        stats.windows += rows
        stats.max_batch = max(stats.max_batch, rows)
        stats.busy_s += elapsed
        if self._debug:
            log.debug("VAD batch of %d streams in %.2f ms", rows, elapsed * 1000)
