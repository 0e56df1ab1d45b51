"""Turn-taking: when the caller's turn ends, and when they barge in.

No I/O and no clock of its own: time is the position in the caller's audio,
in milliseconds, which Twilio advances by 20 ms a frame (silence included), so
the same audio always gives the same decisions. Voice activity comes from the
VAD, already debounced into speech start and stop.

States and transitions:

    IDLE ──speech start──▶ SPEAKING ──speech stop──▶ PAUSING
                              ▲                         │
                              └─────speech start────────┤
    IDLE ◀──end of turn (silence, smart turn, length)───┘

- A turn ends after `silence_ms` of silence; sooner when the smart-turn model,
  asked once the silence reaches `smart_turn_after_ms`, says the caller is
  done. An answer about an older pause (speech resumed since) is ignored.
- A turn that runs past `max_turn_ms` ends at once, so that a caller who
  never pauses (or a noisy line) still gets an answer.
- Barge-in: speech that starts while the agent is speaking and lasts
  `barge_in_ms` stops the agent, once per turn. Shorter speech (a
  backchannel, a cough) never does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    IDLE = "idle"
    SPEAKING = "speaking"
    PAUSING = "pausing"


@dataclass(frozen=True)
class TurnParams:
    silence_ms: int = 700
    smart_turn: bool = True
    smart_turn_after_ms: int = 300
    barge_in_ms: int = 200
    max_turn_ms: int = 30_000


@dataclass(frozen=True)
class BargeIn:
    onset_ms: int


@dataclass(frozen=True)
class AskSmartTurn:
    generation: int
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class EndOfTurn:
    start_ms: int
    end_ms: int
    reason: str  # "silence", "smart_turn" or "max_length"


Action = BargeIn | AskSmartTurn | EndOfTurn


class TurnTaker:
    """Decides turn ends and barge-ins for one call."""

    def __init__(self, params: TurnParams) -> None:
        self.params = params
        self.state = State.IDLE
        self.start_ms = 0
        self.end_ms = 0
        self._generation = 0
        self._asked = False
        self._barge_onset: int | None = None
        self._barged = False

    def speech_started(self, at_ms: int, agent_speaking: bool) -> list[Action]:
        if self.state is State.IDLE:
            self.start_ms = at_ms
            self._barged = False
        self.state = State.SPEAKING
        self._generation += 1
        self._asked = False
        if agent_speaking and not self._barged:
            self._barge_onset = at_ms
        return []

    def speech_stopped(self, at_ms: int) -> list[Action]:
        if self.state is not State.SPEAKING:
            return []
        self.state = State.PAUSING
        self.end_ms = at_ms
        self._barge_onset = None
        return []

    def advance(self, audio_ms: int) -> list[Action]:
        """Called for every caller frame with the audio position after it."""
        p = self.params
        if self.state is State.SPEAKING:
            onset = self._barge_onset
            if onset is not None and audio_ms - onset >= p.barge_in_ms:
                self._barge_onset = None
                self._barged = True
                return [BargeIn(onset)]
            if audio_ms - self.start_ms >= p.max_turn_ms:
                return self._end(audio_ms, "max_length")
            return []
        if self.state is State.PAUSING:
            silence = audio_ms - self.end_ms
            if silence >= p.silence_ms:
                return self._end(self.end_ms, "silence")
            if p.smart_turn and not self._asked and silence >= p.smart_turn_after_ms:
                self._asked = True
                return [AskSmartTurn(self._generation, self.start_ms, self.end_ms)]
        return []

    def smart_turn_said(self, generation: int, complete: bool) -> list[Action]:
        """The smart-turn model's verdict on the pause it was asked about."""
        if not complete or generation != self._generation:
            return []
        if self.state is not State.PAUSING:
            return []
        return self._end(self.end_ms, "smart_turn")

    def agent_stopped(self) -> None:
        """The agent fell silent: speech in progress can no longer barge in."""
        self._barge_onset = None

    def _end(self, end_ms: int, reason: str) -> list[Action]:
        self.state = State.IDLE
        self._generation += 1
        self._barge_onset = None
        return [EndOfTurn(self.start_ms, end_ms, reason)]
