"""Speech-to-text with Whisper tiny.en (faster-whisper, int8 on the CPU).

One model per process, run in a small executor. Whisper is trained on 30 s
windows and faster-whisper pads every input to one, so a one-second "yes"
costs as much as thirty seconds of speech. We encode a shorter window
instead: the utterance plus a second of silence, and never less than
`_FLOOR_S` in all. The floor is there because shorter windows make tiny.en
loop ("yes yes yes yes ...") on short utterances.

A shortened window still loops now and then, so the decode is bounded and
checked: a decode that runs out of its token budget, or that ends by
repeating itself, is redone the standard way, on the full 30 s window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer

from pipelines.assets import WHISPER_TINY_EN, verified_path
from pipelines.audio import Float32Array, Int16Array, resample, to_float
from pipelines.errors import ModelError, STTError

__all__ = ["Transcript", "WhisperSTT"]

log = logging.getLogger(__name__)

_RATE = 16000
_HOP = 160  # samples per mel frame
_FULL_S = 30  # Whisper's window
_MARGIN_S = 1.0  # silence after the utterance, inside the window
_FLOOR_S = 10.0  # see the module docstring; benchmarks/stt_trim.py measures it
_TOKENS_PER_S = 8  # decode budget: well above fast speech (~5 tokens/s) ...
_TOKENS_EXTRA = 16  # ... plus room for numbers and punctuation
# faster-whisper's silence rule: skip when the model is sure there is no
# speech and not confident in what it decoded.
_NO_SPEECH_PROB = 0.6
_LOG_PROB_FLOOR = -1.0
_SILENCE_RMS = 16.0  # about -66 dBFS: below any line noise, let alone speech


@dataclass(frozen=True)
class Transcript:
    """The words of one utterance, and what they cost."""

    text: str
    audio_s: float
    elapsed_s: float


class WhisperSTT:
    """The process's Whisper model and the executor its transcriptions run in."""

    def __init__(
        self,
        beam_size: int = 1,
        cpu_threads: int = 2,
        workers: int = 1,
        trim: bool = True,
    ) -> None:
        model_dir = verified_path(WHISPER_TINY_EN[0]).parent
        for asset in WHISPER_TINY_EN[1:]:
            verified_path(asset)
        _quiet_library_logs()
        try:
            self._model = WhisperModel(
                str(model_dir),
                device="cpu",
                compute_type="int8",
                cpu_threads=cpu_threads,
                num_workers=workers,
                local_files_only=True,
            )
        except Exception as exc:
            raise ModelError(f"cannot load Whisper from {model_dir}: {exc}") from exc
        self.beam_size = beam_size
        self.trim = trim
        self.fallbacks = 0  # shortened decodes redone on the full window
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            self._model.model.is_multilingual,
            task="transcribe",
            language="en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="stt")
        # Warm up on faint noise: digital silence would skip the model.
        noise = np.random.default_rng(0).normal(0.0, 100.0, _RATE // 2)
        self.transcribe_sync(noise.astype(np.int16), _RATE)

    async def transcribe(self, pcm: Int16Array, sample_rate: int = 8000) -> Transcript:
        """Transcribe one utterance off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.transcribe_sync, pcm, sample_rate
        )

    def transcribe_sync(self, pcm: Int16Array, sample_rate: int = 8000) -> Transcript:
        """Transcribe in the calling thread (the executor, benchmarks)."""
        started = time.perf_counter()
        audio_s = pcm.size / sample_rate
        if pcm.size == 0 or _rms(pcm) < _SILENCE_RMS:
            # Whisper "hears" words in digital silence ("you"); nothing to do.
            return Transcript("", audio_s, time.perf_counter() - started)
        try:
            audio = to_float(resample(pcm, sample_rate, _RATE))
            if self.trim and audio_s + _MARGIN_S <= _FULL_S:
                text = self._decode_trimmed(audio)
            else:
                text = self._decode_full(audio)
        except Exception as exc:
            raise STTError(f"transcription failed: {exc}") from exc
        elapsed = time.perf_counter() - started
        log.debug("transcribed %.2f s of audio in %.3f s", audio_s, elapsed)
        return Transcript(text, audio_s, elapsed)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # The two ways to decode.

    def _decode_full(self, audio: Float32Array) -> str:
        """faster-whisper's own path: every window padded to 30 s."""
        segments, _ = self._model.transcribe(
            audio,
            language="en",
            beam_size=self.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            word_timestamps=False,
            vad_filter=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()

    def _decode_trimmed(self, audio: Float32Array) -> str:
        window_s = max(audio.size / _RATE + _MARGIN_S, _FLOOR_S)
        # A whole number of frame pairs: the encoder's second convolution has
        # stride 2, and features of n samples give n // _HOP frames.
        samples = math.ceil(window_s * _RATE / (2 * _HOP)) * 2 * _HOP
        padded = np.zeros(samples, np.float32)
        padded[: audio.size] = audio
        features = self._model.feature_extractor(padded, padding=0)
        features = np.ascontiguousarray(features[None, :, : samples // _HOP])

        # At most `plausible` tokens can be real speech. max_length leaves
        # room past that (ctranslate2 4.8 stops at about half of max_length,
        # not at max_length less the prompt), so a longer decode is a loop,
        # and a loop costs a bounded time.
        plausible = int(audio.size / _RATE * _TOKENS_PER_S) + _TOKENS_EXTRA
        max_length = min(len(self._prompt) + 2 * plausible + 4, self._model.max_length)
        encoded = self._model.model.encode(ctranslate2.StorageView.from_array(features))
        result: Any = self._model.model.generate(
            encoded,
            [self._prompt],
            beam_size=self.beam_size,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        eot = self._tokenizer.eot
        tokens: list[int] = [t for t in result.sequences_ids[0] if t < eot]
        if len(tokens) > plausible or _loops(tokens):
            self.fallbacks += 1
            log.debug("shortened decode looped; redoing it on the full window")
            return self._decode_full(audio)

        avg_log_prob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > _NO_SPEECH_PROB and avg_log_prob < _LOG_PROB_FLOOR:
            return ""
        return str(self._tokenizer.decode(tokens)).strip()


def _rms(pcm: Int16Array) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))


def _loops(tokens: Sequence[int]) -> bool:
    """Whether the decode ends by repeating itself.

    A block of three or more tokens said twice in a row at the end, or any
    block said three times, is how tiny.en's loops look. People do repeat
    themselves ("hello? hello?"), so this only buys a second opinion.
    """
    n = len(tokens)
    for size in range(1, n // 2 + 1):
        block = tokens[n - size :]
        times = 1
        while n - (times + 1) * size >= 0 and (
            tokens[n - (times + 1) * size : n - times * size] == block
        ):
            times += 1
        if times >= 3 or (times == 2 and size >= 3):
            return True
    return False


def _quiet_library_logs() -> None:
    # faster-whisper logs every transcription at INFO; one line per utterance
    # is too many for our INFO level. Respect a level someone already chose.
    library = logging.getLogger("faster_whisper")
    if library.level == logging.NOTSET:
        library.setLevel(logging.WARNING)
