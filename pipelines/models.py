"""The local models, loaded once per process and shared by every call."""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pipelines.audio import Int16Array
from pipelines.stt import Transcript
from pipelines.turn import SmartTurn
from pipelines.vad import SileroVAD

__all__ = ["Models", "SpeechToText", "TextToSpeech", "shared_models"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class SpeechToText(Protocol):
    """What a call needs of STT (`pipelines.stt.WhisperSTT`)."""

    async def transcribe(
        self, pcm: Int16Array, sample_rate: int = 8000
    ) -> Transcript: ...
    def transcribe_sync(
        self, pcm: Int16Array, sample_rate: int = 8000
    ) -> Transcript: ...
    def shutdown(self) -> None: ...


class TextToSpeech(Protocol):
    """What a call needs of TTS (`pipelines.tts.PiperTTS`)."""

    async def synthesize(
        self, text: str, deadline: float | None = None
    ) -> Int16Array: ...
    def synthesize_sync(self, text: str, sample_rate: int = ...) -> Int16Array: ...
    def shutdown(self) -> None: ...


@dataclass
class Models:
    """Every model a call uses. Build with `Models.load` or `shared_models`."""

    vad: SileroVAD
    smart_turn: SmartTurn | None
    stt: SpeechToText
    tts: TextToSpeech

    @classmethod
    def load(
        cls,
        *,
        stt_beam_size: int = 1,
        stt_threads: int = 2,
        stt_workers: int = 1,
        tts_workers: int = 1,
        tts_speed: float = 1.0,
        smart_turn: bool = True,
    ) -> Models:
        """Load (and warm up) each model; blocks for a few seconds."""
        # Imported here: the `local` extra is needed only for real speech.
        from pipelines.stt import WhisperSTT
        from pipelines.tts import PiperTTS

        started = time.perf_counter()
        vad = _timed("Silero VAD", SileroVAD)
        turn = _timed("Smart Turn v3", SmartTurn) if smart_turn else None
        stt = _timed(
            "Whisper tiny.en",
            lambda: WhisperSTT(
                beam_size=stt_beam_size, cpu_threads=stt_threads, workers=stt_workers
            ),
        )
        tts = _timed(
            "Piper joe", lambda: PiperTTS(workers=tts_workers, speed=tts_speed)
        )
        log.info("models loaded in %.2f s", time.perf_counter() - started)
        return cls(vad=vad, smart_turn=turn, stt=stt, tts=tts)

    @classmethod
    def instant(cls, smart_turn: bool = True) -> Models:
        """The real VAD and turn model; STT and TTS that answer at once.

        For benchmarks of the server's own cost: turn detection is the
        server's job whoever transcribes, so Smart Turn stays real.
        """
        from pipelines.instant import InstantSTT, InstantTTS

        vad = _timed("Silero VAD", SileroVAD)
        turn = _timed("Smart Turn v3", SmartTurn) if smart_turn else None
        return cls(vad=vad, smart_turn=turn, stt=InstantSTT(), tts=InstantTTS())

    def shutdown(self) -> None:
        """Stop every worker thread; the models cannot be used afterwards."""
        self.vad.shutdown()
        if self.smart_turn is not None:
            self.smart_turn.shutdown()
        self.stt.shutdown()
        self.tts.shutdown()


def _timed(name: str, load: Callable[[], _T]) -> _T:
    started = time.perf_counter()
    model = load()
    log.info("loaded %s in %.2f s", name, time.perf_counter() - started)
    return model


_lock = threading.Lock()
_shared: tuple[dict[str, Any], Models] | None = None


def shared_models(**options: Any) -> Models:
    """The process's models, loaded by the first call with these `options`.

    Later calls get the same instance; asking for different options is a bug
    (two configurations would mean two copies of every model), so it raises.
    """
    global _shared
    bound = inspect.signature(Models.load).bind(**options)
    bound.apply_defaults()
    options = dict(bound.arguments)
    with _lock:
        if _shared is None:
            _shared = (options, Models.load(**options))
        elif _shared[0] != options:
            raise ValueError(f"models already loaded with {_shared[0]}, not {options}")
        return _shared[1]
