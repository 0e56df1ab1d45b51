"""Turn-taking decisions, driven by audio positions alone."""

from pipelines.turns import AskSmartTurn, BargeIn, EndOfTurn, TurnParams, TurnTaker


def run_silence(taker: TurnTaker, start_ms: int, until_ms: int) -> list[object]:
    actions: list[object] = []
    for ms in range(start_ms, until_ms + 1, 20):
        actions += taker.advance(ms)
    return actions


def test_turn_ends_after_silence_without_smart_turn() -> None:
    """With smart turn off, the turn ends once the silence reaches silence_ms."""
    taker = TurnTaker(TurnParams(silence_ms=700, smart_turn=False))
    taker.speech_started(1000, agent_speaking=False)
    taker.speech_stopped(2000)
    actions = run_silence(taker, 2020, 2680)
    assert actions == []
    assert taker.advance(2700) == [EndOfTurn(1000, 2000, "silence")]


def test_smart_turn_asked_once_and_can_end_turn_early() -> None:
    """Smart turn is asked once per pause, and a 'complete' verdict ends the turn."""
    taker = TurnTaker(TurnParams(silence_ms=700, smart_turn_after_ms=300))
    taker.speech_started(0, agent_speaking=False)
    taker.speech_stopped(1000)
    actions = run_silence(taker, 1020, 1400)
    asks = [a for a in actions if isinstance(a, AskSmartTurn)]
    assert len(asks) == 1
    assert taker.smart_turn_said(asks[0].generation, complete=True) == [
        EndOfTurn(0, 1000, "smart_turn")
    ]


def test_stale_smart_turn_verdict_is_ignored() -> None:
    """A verdict about a pause the caller has since spoken through changes nothing."""
    taker = TurnTaker(TurnParams())
    taker.speech_started(0, agent_speaking=False)
    taker.speech_stopped(1000)
    (ask,) = [a for a in run_silence(taker, 1020, 1300) if isinstance(a, AskSmartTurn)]
    taker.speech_started(1320, agent_speaking=False)
    assert taker.smart_turn_said(ask.generation, complete=True) == []
    taker.speech_stopped(2000)
    assert run_silence(taker, 2020, 2700)[-1] == EndOfTurn(0, 2000, "silence")


def test_incomplete_verdict_waits_for_full_silence() -> None:
    """'Incomplete' from smart turn leaves the silence rule in charge."""
    taker = TurnTaker(TurnParams(silence_ms=700))
    taker.speech_started(0, agent_speaking=False)
    taker.speech_stopped(500)
    (ask,) = [a for a in run_silence(taker, 520, 800) if isinstance(a, AskSmartTurn)]
    assert taker.smart_turn_said(ask.generation, complete=False) == []
    assert run_silence(taker, 820, 1200)[-1] == EndOfTurn(0, 500, "silence")


def test_barge_in_needs_minimum_speech_over_agent() -> None:
    """Speech over the agent barges in only once it has lasted barge_in_ms."""
    taker = TurnTaker(TurnParams(barge_in_ms=240))
    taker.speech_started(1000, agent_speaking=True)
    assert taker.advance(1200) == []
    assert taker.advance(1240) == [BargeIn(1000)]
    assert taker.advance(1260) == []


def test_backchannel_does_not_barge_in() -> None:
    """A short 'mm-hm' over the agent stops before barge_in_ms and never barges in."""
    taker = TurnTaker(TurnParams(barge_in_ms=240, smart_turn=False))
    taker.speech_started(1000, agent_speaking=True)
    taker.advance(1100)
    taker.speech_stopped(1150)
    actions = run_silence(taker, 1160, 2000)
    assert not any(isinstance(a, BargeIn) for a in actions)


def test_speech_when_agent_silent_never_barges_in() -> None:
    """Speech while the agent is quiet is an ordinary turn."""
    taker = TurnTaker(TurnParams())
    taker.speech_started(0, agent_speaking=False)
    assert not any(isinstance(a, BargeIn) for a in run_silence(taker, 20, 2000))


def test_overlong_turn_is_cut() -> None:
    """A turn that never pauses ends at max_turn_ms."""
    taker = TurnTaker(TurnParams(max_turn_ms=5000))
    taker.speech_started(0, agent_speaking=False)
    assert run_silence(taker, 20, 5000)[-1] == EndOfTurn(0, 5000, "max_length")
