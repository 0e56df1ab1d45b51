"""Outbound agent audio: pacing it, and knowing what the caller has heard.

No I/O here: the call feeds in speech, marks echoed by Twilio and the time;
it gets back the messages to send. The rules:

- Agent speech arrives as *segments* (one synthesized sentence each, with its
  text) and leaves as 20 ms frames, in order, never reordered or repeated.
- Frames are sent ahead of the caller's playback by at most `lead_ms`. Twilio
  buffers what we send and plays it in real time, so the lead absorbs short
  stalls of our event loop without an audible gap, while a `clear` throws the
  lead away at once on barge-in.
- A mark follows every `mark_every` frames and the last frame of a segment. A
  mark's echo means the caller has heard everything sent before it.
- `clear()` drops every unsent frame and reports what was heard: segments
  whose last mark came back, plus the leading part of the segment in progress
  (its echoed marks, plus the time played since the last echo), cut at a word
  boundary. Twilio echoes every pending mark after a clear, so echoes of marks
  sent before the clear are ignored: they say nothing about playback.
- Playback is estimated from the clock: a *run* starts when the first frame is
  sent to an idle line and plays at 8000 samples a second. A frame sent after
  the estimated playback ran dry mid-segment is *late*: the caller heard a gap.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pipelines.audio import FRAME_SAMPLES, PHONE_RATE

_FRAME_S = FRAME_SAMPLES / PHONE_RATE
_SILENCE = b"\xff"


@dataclass
class Segment:
    """One sentence of agent speech."""

    number: int
    text: str
    frames: list[bytes]
    sent: int = 0
    heard: int = 0


@dataclass(frozen=True)
class Media:
    payload: bytes


@dataclass(frozen=True)
class Mark:
    name: str


Outbound = Media | Mark


@dataclass(frozen=True)
class Heard:
    """What the caller heard of the speech that a `clear` cut short."""

    text: str
    interrupted: bool


@dataclass
class Playout:
    lead_s: float = 0.16
    mark_every: int = 10
    late_frames: int = 0
    _queue: deque[Segment] = field(default_factory=deque)
    _sent: list[Segment] = field(default_factory=list)
    _epoch: int = 0
    _segments: int = 0
    _run_start: float = 0.0
    _run_frames: int = 0
    _last_echo_at: float | None = None

    # Feeding speech in.

    def enqueue(self, text: str, ulaw: bytes) -> None:
        """Queue a sentence of mu-law speech (any length) for sending."""
        if not ulaw:
            return
        step = FRAME_SAMPLES
        frames = [ulaw[i : i + step] for i in range(0, len(ulaw), step)]
        if len(frames[-1]) < step:
            frames[-1] = frames[-1] + _SILENCE * (step - len(frames[-1]))
        self._segments += 1
        self._queue.append(Segment(self._segments, text, frames))

    @property
    def pending(self) -> bool:
        """True while frames wait to be sent."""
        return bool(self._queue)

    def playing(self, now: float) -> bool:
        """True while sent audio is still (by the clock) in the caller's ear."""
        return self._run_frames > 0 and now < self.playback_end()

    def active(self, now: float) -> bool:
        """The agent is speaking: audio queued, or sent and not yet played."""
        return self.pending or self.playing(now)

    def playback_end(self) -> float:
        return self._run_start + self._run_frames * _FRAME_S

    def next_due(self, now: float) -> float | None:
        """When `due()` will next have a frame to send (None: nothing queued)."""
        if not self._queue:
            return None
        if self._run_frames == 0:
            return now
        return max(now, self.playback_end() - self.lead_s)

    # Sending.

    def due(self, now: float) -> list[Outbound]:
        """Frames and marks to send now to keep the lead over playback full."""
        out: list[Outbound] = []
        if not self._queue:
            return out
        end = self.playback_end()
        if self._run_frames == 0 or now >= end:
            if self._run_frames and now - end > _FRAME_S and self._mid_segment():
                self.late_frames += 1
            self._run_start = now
            self._run_frames = 0
        while self._queue and self.playback_end() - now < self.lead_s:
            segment = self._queue[0]
            out.append(Media(segment.frames[segment.sent]))
            segment.sent += 1
            self._run_frames += 1
            last = segment.sent == len(segment.frames)
            if last or segment.sent % self.mark_every == 0:
                out.append(Mark(f"{self._epoch}.{segment.number}.{segment.sent}"))
            if last:
                self._sent.append(self._queue.popleft())
        return out

    def _mid_segment(self) -> bool:
        return bool(self._queue) and self._queue[0].sent > 0

    # What came back.

    def on_mark(self, name: str, now: float) -> bool:
        """Record an echoed mark. Returns True when it reports real playback."""
        try:
            epoch, number, frames = (int(p) for p in name.split("."))
        except ValueError:
            return False
        if epoch != self._epoch:
            return False
        for segment in self._sent_and_sending():
            if segment.number == number:
                segment.heard = max(segment.heard, frames)
                self._last_echo_at = now
                return True
        return False

    def _sent_and_sending(self) -> list[Segment]:
        return [*self._sent, *(s for s in self._queue if s.sent)]

    def heard_all(self) -> str:
        """Text of everything sent so far, for a turn that played to its end."""
        return " ".join(s.text for s in self._sent_and_sending() if s.text)

    def clear(self, now: float) -> Heard:
        """Drop all unsent speech; report what the caller heard of it."""
        played_since_echo = 0
        if self._last_echo_at is not None:
            played_since_echo = int((now - self._last_echo_at) / _FRAME_S)
        parts: list[str] = []
        interrupted = bool(self._queue)
        for segment in self._sent_and_sending():
            total = len(segment.frames)
            heard = segment.heard
            if heard < segment.sent:
                heard = min(segment.sent, heard + played_since_echo)
            if heard >= total:
                parts.append(segment.text)
                continue
            interrupted = True
            if heard > 0:
                parts.append(_leading_words(segment.text, heard / total))
            break
        self._epoch += 1
        self._run_frames = 0
        self.start_turn()
        return Heard(text=" ".join(p for p in parts if p), interrupted=interrupted)

    def start_turn(self) -> None:
        """Forget the previous turn's speech; the playback clock runs on."""
        self._queue.clear()
        self._sent.clear()
        self._last_echo_at = None


def _leading_words(text: str, fraction: float) -> str:
    """The words of `text` that fit in its first `fraction`, by character count."""
    limit = len(text) * fraction
    words: list[str] = []
    position = 0
    for word in text.split():
        start = text.index(word, position)
        position = start + len(word)
        if position > limit:
            break
        words.append(word)
    return " ".join(words)
