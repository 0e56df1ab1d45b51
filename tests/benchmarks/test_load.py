"""The load harness, in a profile small enough for CI (timings are not checked)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.load import INTERRUPT, LONG_ASK, PHRASES, LoadProfile, run_load
from benchmarks.report import markdown

pytestmark = pytest.mark.models


async def test_a_tiny_profile_measures_every_figure(
    models: Any, tmp_path: Path
) -> None:
    """Two instant-speech calls against voxdial serve: turns, barge-ins, cost."""
    speech = {
        text: models.tts.synthesize_sync(text, 8000)
        for text in (*PHRASES, LONG_ASK, INTERRUPT)
    }
    profile = LoadProfile(
        "ci",
        local_steps=(),
        instant_steps=(2,),
        hold_s=8.0,
        barge_in_share=1.0,
        baseline=False,
    )
    report = await run_load(profile, tmp_path, modes=("instant",), speech=speech)
    (step,) = report.steps
    assert step.target == "voxdial" and step.calls == 2
    assert step.calls_greeted == 2 and step.turns >= 2, step
    assert step.barge_ins + step.barge_ins_missed >= 1
    assert step.frames_after_clear == 0 and step.errors == []
    assert step.cpu_s_per_call_s > 0 and step.peak_rss_mb > 0
    assert step.loop_lag_p99_s is not None
    text = markdown(report)
    assert "| voice to voice p95 (ms) |" in text and "voxdial | instant" in text
