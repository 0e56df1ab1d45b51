"""Smart Turn v3: has the caller finished their turn, judging by how it sounds?

One ONNX session per process, run in a small executor of its own. The model
hears the last 8 s of the turn at 16 kHz (left-padded with silence when the
turn is shorter) as Whisper log-mel features, and answers the probability
that the speaker has finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
from pipecat.audio.turn.smart_turn._whisper_features import (
    compute_whisper_log_mel_features,
)

from pipelines.assets import SMART_TURN_V3, verified_path
from pipelines.audio import Int16Array, resample, to_float
from pipelines.errors import ModelError, PipelineError

__all__ = ["SmartTurn", "SmartTurnError"]

log = logging.getLogger(__name__)

_MODEL_RATE = 16000
_WINDOW_S = 8
_WINDOW_SAMPLES = _MODEL_RATE * _WINDOW_S


class SmartTurnError(PipelineError):
    """The end-of-turn model failed on one turn."""


class SmartTurn:
    """The process's Smart Turn v3 session and its executor."""

    def __init__(self, workers: int = 1, threads: int = 1) -> None:
        path = verified_path(SMART_TURN_V3)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads must not spin on the cores the calls need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"cannot load Smart Turn from {path}: {exc}") from exc
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="smart-turn")
        self._predict(np.zeros(_MODEL_RATE, np.int16), _MODEL_RATE)  # warm up

    async def probability(self, audio: Int16Array, sample_rate: int) -> float:
        """The probability that the speaker finished, from the turn's audio."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, self._predict, audio, sample_rate
            )
        except Exception as exc:
            raise SmartTurnError(f"smart turn failed: {exc}") from exc

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _predict(self, audio: Int16Array, sample_rate: int) -> float:
        started = time.perf_counter()
        # Cut before resampling so a long turn costs no more than 8 s of audio.
        audio = audio[-_WINDOW_S * sample_rate :]
        samples = to_float(resample(audio, sample_rate, _MODEL_RATE))
        samples = samples[-_WINDOW_SAMPLES:]
        samples = np.pad(samples, (_WINDOW_SAMPLES - samples.size, 0))
        features = compute_whisper_log_mel_features(samples, do_normalize=True)
        (output,) = self._session.run(None, {"input_features": features[None]})
        probability = float(np.asarray(output).reshape(-1)[0])
        log.debug(
            "smart turn %.2f on %.2f s of audio in %.0f ms",
            probability,
            audio.size / sample_rate,
            (time.perf_counter() - started) * 1000,
        )
        return probability
