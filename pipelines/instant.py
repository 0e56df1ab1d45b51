"""Speech services that answer at once, to measure the media server alone.

With `VOXDIAL_SPEECH=instant` the server keeps its real audio path (the
websocket, the shared Silero VAD, turn-taking, playout, barge-in) and swaps
the two models that cost seconds for stand-ins with the same interface:

- `InstantSTT` returns a fixed transcript for any utterance, at once;
- `InstantTTS` returns speech-shaped audio (voiced bursts with pauses, so
  the VAD and the playout see what they would see) of about the length the
  text would take to say, made once per text and kept.

That is how a deployment with remote STT, LLM and TTS providers behaves from
the server's side, and it shows the server's own overhead and capacity
apart from model cost. It is for benchmarks: no call is ever understood.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pipelines.audio import PHONE_RATE, Int16Array
from pipelines.stt import Transcript

__all__ = ["INSTANT_TRANSCRIPT", "InstantSTT", "InstantTTS"]

INSTANT_TRANSCRIPT = "Can you tell me about your opening hours please?"
_SECONDS_PER_CHAR = 0.065  # Piper's joe voice reads about 15 characters a second


class InstantSTT:
    """Every utterance is heard as `text`."""

    def __init__(self, text: str = INSTANT_TRANSCRIPT) -> None:
        self.text = text

    async def transcribe(self, pcm: Int16Array, sample_rate: int = 8000) -> Transcript:
        return self.transcribe_sync(pcm, sample_rate)

    def transcribe_sync(self, pcm: Int16Array, sample_rate: int = 8000) -> Transcript:
        return Transcript(text=self.text, audio_s=pcm.size / sample_rate, elapsed_s=0.0)

    def shutdown(self) -> None:
        pass


@lru_cache(maxsize=256)
def _speechlike(chars: int, rate: int) -> Int16Array:
    seconds = max(0.3, chars * _SECONDS_PER_CHAR)
    t = np.arange(int(seconds * rate)) / rate
    # A 140 Hz voice with a few harmonics, in 180 ms syllables with 60 ms gaps.
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in (1, 2, 3, 4))
    syllable = (t % 0.24) < 0.18
    audio = 6000 * voice * syllable
    return np.asarray(audio, dtype=np.int16)


class InstantTTS:
    """Speech-shaped audio for any text, as long as saying it would take."""

    sample_rate_out = PHONE_RATE

    async def synthesize(self, text: str, deadline: float | None = None) -> Int16Array:
        return self.synthesize_sync(text, self.sample_rate_out)

    def synthesize_sync(self, text: str, sample_rate: int = PHONE_RATE) -> Int16Array:
        return _speechlike(len(text.strip()), sample_rate)

    def shutdown(self) -> None:
        pass
