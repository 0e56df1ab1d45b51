"""What a call leaves behind: its transcript, per-turn latencies and recording.

`CallRecord` is the data; `CallSink` is the small interface that stores it
(`FileCallSink` writes JSON files until the Redis-backed campaign store
implements the same interface); `StereoRecorder` writes the audio to disk as
the call runs, caller on the left channel and agent on the right.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipelines.audio import FRAME_SAMPLES, PHONE_RATE, Int16Array

log = logging.getLogger(__name__)


@dataclass
class TurnLatency:
    """One turn's timing, in seconds from the end of the caller's speech."""

    turn_detection_s: float | None = None
    stt_s: float | None = None
    llm_first_token_s: float | None = None
    tts_first_audio_s: float | None = None
    first_audio_s: float | None = None


@dataclass
class Turn:
    """One entry of the transcript."""

    speaker: str  # "caller" or "agent"
    text: str
    started_at: float
    ended_at: float
    interrupted: bool = False
    source: str = "speech"  # "speech", "dtmf" or "greeting"
    latency: TurnLatency | None = None


@dataclass
class CallRecord:
    """Everything known about one call once its stream has ended."""

    call_id: str
    call_sid: str = ""
    stream_sid: str = ""
    lead_id: str = ""
    campaign_id: str = ""
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    end_reason: str = ""
    outcome: str = ""
    transcript: list[Turn] = field(default_factory=list)
    recording_path: str = ""
    errors: list[str] = field(default_factory=list)
    bad_frames: dict[str, int] = field(default_factory=dict)
    barge_ins: int = 0
    # What the agent's tools did (see pipelines.tools.agent_tools).
    callback_at: float | None = None
    callback_local: str = ""
    booking: dict[str, str] | None = None
    opted_out: bool = False
    outcome_source: str = ""
    outcome_reason: str = ""  # the agent's own words, from end_call
    extracted: dict[str, Any] = field(default_factory=dict)
    extraction_flags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CallSink(Protocol):
    """Where finished calls go. The campaign store implements this too."""

    async def save(self, record: CallRecord) -> None: ...


class FileCallSink:
    """Writes each call record as `<dir>/<call_id>.json`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def save(self, record: CallRecord) -> None:
        path = self.directory / f"{record.call_id}.json"
        data = json.dumps(record.to_dict(), indent=2)
        await asyncio.to_thread(_write, path, data)

    def load(self, call_id: str) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(
            (self.directory / f"{call_id}.json").read_text()
        )
        return result


def _write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data)
    tmp.replace(path)


class StereoRecorder:
    """A stereo 8 kHz WAV written frame by frame, never held whole in memory.

    The caller's frames drive the timeline (Twilio sends one every 20 ms,
    silence included); the agent channel carries what the caller was hearing
    at that moment: sent agent audio is queued and played out one frame per
    caller frame, and a `clear` drops what had not played yet.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._wav = wave.open(str(path), "wb")
        self._wav.setnchannels(2)
        self._wav.setsampwidth(2)
        self._wav.setframerate(PHONE_RATE)
        self._agent: list[Int16Array] = []
        self._agent_offset = 0
        self._stereo = np.zeros(FRAME_SAMPLES * 2, dtype=np.int16)
        self._closed = False

    def agent(self, samples: Int16Array) -> None:
        self._agent.append(samples)

    def clear_agent(self) -> None:
        self._agent.clear()
        self._agent_offset = 0

    def caller(self, samples: Int16Array) -> None:
        if self._closed:
            return
        n = samples.size
        stereo = self._stereo if n == FRAME_SAMPLES else np.zeros(n * 2, np.int16)
        stereo[0::2] = samples
        stereo[1::2] = self._take_agent(n)
        self._wav.writeframesraw(stereo.tobytes())

    def _take_agent(self, n: int) -> Int16Array:
        out = np.zeros(n, dtype=np.int16)
        filled = 0
        while filled < n and self._agent:
            chunk = self._agent[0]
            take = min(n - filled, chunk.size - self._agent_offset)
            out[filled : filled + take] = chunk[
                self._agent_offset : self._agent_offset + take
            ]
            filled += take
            self._agent_offset += take
            if self._agent_offset == chunk.size:
                self._agent.pop(0)
                self._agent_offset = 0
        return out

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wav.close()
