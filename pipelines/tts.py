"""Text-to-speech with Piper and the joe voice, delivered as 8 kHz PCM.

One voice per process (~330 MB), run in a small executor. A call asks for
one sentence at a time, so its first audio waits for one sentence only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import unicodedata

import numpy as np
import onnxruntime as ort
from piper import PiperVoice
from piper.config import PiperConfig, SynthesisConfig

from pipelines.assets import PIPER_JOE, verified_path
from pipelines.audio import PHONE_RATE, Int16Array, resample, to_int16
from pipelines.errors import ModelError, TTSError
from pipelines.scheduling import DeadlineWorkers

__all__ = ["PiperTTS", "speakable"]

log = logging.getLogger(__name__)

# Piper reads "[[ ... ]]" as raw phonemes, and espeak spells out markup and
# symbols; an LLM's reply may hold any of them.
_RAW_PHONEMES = re.compile(r"\[\[|\]\]")
_MARKUP = re.compile(r"[*_`#~<>|\\{}\[\]^]")
_SPACES = re.compile(r"\s+")


def _unspeakable(char: str) -> bool:
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("So", "Sk")


def speakable(text: str) -> str:
    """`text` with what Piper should not read removed; "" if nothing is left."""
    text = unicodedata.normalize("NFKC", text)
    text = _RAW_PHONEMES.sub(" ", text)
    text = _MARKUP.sub(" ", text)
    # Control and format characters, emoji and other pictographs: espeak
    # names or mangles them. Currency and math signs are read as words: kept.
    text = "".join(" " if _unspeakable(c) else c for c in text)
    text = _SPACES.sub(" ", text).strip()
    if not any(c.isalnum() for c in text):
        return ""
    return text


class PiperTTS:
    """The process's Piper voice and the executor its sentences run in."""

    sample_rate_out = PHONE_RATE

    def __init__(self, workers: int = 1, speed: float = 1.0, threads: int = 2) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, not {speed}")
        onnx_path = verified_path(PIPER_JOE[0])
        config_path = verified_path(PIPER_JOE[1])
        # PiperVoice.load would give the session every core and spinning pool
        # threads; we build the same voice around a session sized for sharing.
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            with config_path.open(encoding="utf-8") as f:
                config = PiperConfig.from_dict(json.load(f))
            session = ort.InferenceSession(
                str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"cannot load Piper voice {onnx_path}: {exc}") from exc
        self._voice = PiperVoice(session=session, config=config)
        self.voice_rate: int = config.sample_rate
        self._syn_config = SynthesisConfig(length_scale=config.length_scale / speed)
        self._workers = DeadlineWorkers(workers, "tts")
        self.synthesize_sync("Hello.")  # warm up (espeak and the session)

    async def synthesize(self, text: str, deadline: float | None = None) -> Int16Array:
        """One sentence of speech as 8 kHz PCM, synthesized off the event loop.

        `deadline` is the monotonic time the audio is needed (default: now);
        of the sentences waiting, the one needed soonest goes first.
        """
        when = time.monotonic() if deadline is None else deadline
        job = self._workers.submit(
            when, lambda: self.synthesize_sync(text, self.sample_rate_out)
        )
        return await asyncio.wrap_future(job)

    def synthesize_sync(self, text: str, sample_rate: int = PHONE_RATE) -> Int16Array:
        """Synthesize in the calling thread (the executor, tests, fixtures)."""
        started = time.perf_counter()
        clean = speakable(text)
        if not clean:
            return np.zeros(0, np.int16)
        try:
            chunks = [
                chunk.audio_float_array
                for chunk in self._voice.synthesize(clean, self._syn_config)
            ]
        except Exception as exc:
            raise TTSError(f"synthesis failed for {clean!r}: {exc}") from exc
        if not chunks:
            return np.zeros(0, np.int16)
        audio = resample(to_int16(np.concatenate(chunks)), self.voice_rate, sample_rate)
        log.debug(
            "synthesized %d chars, %.2f s of audio in %.3f s",
            len(clean),
            audio.size / sample_rate,
            time.perf_counter() - started,
        )
        return audio

    def shutdown(self) -> None:
        self._workers.shutdown()
