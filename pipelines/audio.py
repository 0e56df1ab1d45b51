"""Telephone audio: G.711 mu-law codec and sample-rate conversion.

Everything here runs on the 20 ms path, so it is table-driven numpy with no
per-sample Python. PCM is little-endian signed 16-bit mono throughout.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

PHONE_RATE = 8000
FRAME_MS = 20
FRAME_SAMPLES = PHONE_RATE * FRAME_MS // 1000  # 160 mu-law bytes per frame

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

_BIAS = 0x84


def _build_decode_table() -> Int16Array:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _build_encode_table() -> npt.NDArray[np.uint8]:
    # One entry per 16-bit sample value, indexed by (sample + 32768). Works on
    # 14-bit magnitudes like the ITU reference, so it agrees with other codecs
    # bit for bit.
    samples = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(samples < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(samples), 8159) + 0x21
    segment_ends = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    segment = np.searchsorted(segment_ends, magnitude)
    code = (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    code = np.where(segment >= 8, 0x7F, code)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


_DECODE = _build_decode_table()
_ENCODE = _build_encode_table()


def ulaw_to_pcm(payload: bytes) -> Int16Array:
    """Decode mu-law bytes into 16-bit PCM samples at the same rate."""
    return _DECODE[np.frombuffer(payload, dtype=np.uint8)]


def pcm_to_ulaw(samples: Int16Array) -> bytes:
    """Encode 16-bit PCM samples as mu-law bytes."""
    return bytes(_ENCODE[samples.astype(np.int32) + 32768])


def to_float(samples: Int16Array) -> Float32Array:
    """16-bit PCM to float32 in [-1, 1), as the ONNX models want it."""
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


def to_int16(samples: Float32Array) -> Int16Array:
    """float32 in [-1, 1] to 16-bit PCM, clipping out-of-range values."""
    out: Int16Array = np.clip(samples * 32767.0, -32768, 32767).astype(np.int16)
    return out


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """Resample a whole buffer (an utterance or a sentence of speech)."""
    if in_rate == out_rate or samples.size == 0:
        return samples
    out = soxr.resample(samples, in_rate, out_rate, quality="HQ")
    return np.asarray(out, dtype=np.int16)
