"""Outbound pacing and the heard-only accounting of agent speech."""

from pipelines.playout import Mark, Media, Playout

FRAME = 0.02


def speech(frames: int) -> bytes:
    return b"\x10" * (160 * frames)


def test_sends_only_the_lead_ahead_of_playback() -> None:
    """A fresh run sends lead_s worth of frames at once, then one per 20 ms."""
    playout = Playout(lead_s=0.16, mark_every=100)
    playout.enqueue("hello there", speech(50))
    first = [o for o in playout.due(0.0) if isinstance(o, Media)]
    assert len(first) == 8
    assert playout.due(0.0) == []
    later = [o for o in playout.due(0.1) if isinstance(o, Media)]
    assert len(later) == 5


def test_marks_follow_every_n_frames_and_segment_end() -> None:
    """A mark follows every mark_every frames and the last frame of a segment."""
    playout = Playout(lead_s=10.0, mark_every=4)
    playout.enqueue("one two", speech(6))
    out = playout.due(0.0)
    marks = [o.name for o in out if isinstance(o, Mark)]
    assert len(marks) == 2
    assert out[-1] == Mark(marks[-1])


def test_clear_reports_heard_words_only() -> None:
    """After a clear, only words the echoed marks cover count as heard."""
    playout = Playout(lead_s=10.0, mark_every=5)
    playout.enqueue("first sentence.", speech(10))
    playout.enqueue("alpha beta gamma delta", speech(20))
    out = playout.due(0.0)
    marks = [o.name for o in out if isinstance(o, Mark)]
    # Echoes: all of the first segment, half of the second.
    for name in marks[:4]:
        assert playout.on_mark(name, 0.5)
    heard = playout.clear(0.5)
    assert heard.interrupted
    assert heard.text == "first sentence. alpha beta"


def test_echoes_after_clear_are_ignored() -> None:
    """Marks Twilio returns because of a clear do not count as played."""
    playout = Playout(lead_s=10.0, mark_every=5)
    playout.enqueue("a b c d", speech(10))
    marks = [o.name for o in playout.due(0.0) if isinstance(o, Mark)]
    playout.clear(0.05)
    assert not playout.on_mark(marks[-1], 0.06)


def test_no_frames_after_clear() -> None:
    """A clear drops every unsent frame."""
    playout = Playout(lead_s=0.1)
    playout.enqueue("long", speech(100))
    playout.due(0.0)
    playout.clear(0.05)
    assert playout.due(1.0) == []
    assert not playout.active(1.0)


def test_late_frame_counted_when_playback_ran_dry_mid_segment() -> None:
    """A frame sent after the caller's buffer emptied mid-sentence is late."""
    playout = Playout(lead_s=0.04)
    playout.enqueue("x", speech(20))
    playout.due(0.0)
    playout.due(0.5)
    assert playout.late_frames == 1


def test_heard_all_after_full_playback() -> None:
    """A turn played to its end reports all of its text."""
    playout = Playout(lead_s=10.0)
    playout.enqueue("Hello.", speech(3))
    playout.enqueue("How are you?", speech(3))
    playout.due(0.0)
    assert playout.heard_all() == "Hello. How are you?"
    assert playout.active(0.05)
    assert not playout.active(0.2)
