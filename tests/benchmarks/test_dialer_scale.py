"""The scale benchmark on a tiny profile: the report's shape, not its timings."""

from __future__ import annotations

import json
from dataclasses import asdict

from benchmarks.dialer_scale import (
    RATIO_FIGURES,
    ScaleProfile,
    format_report,
    run_scale,
)

TINY = ScaleProfile(
    name="tiny", sizes=(2000, 500), cycles=80, clients=2, ticks=12, load_batch=250
)


async def test_tiny_profile_reports_every_figure_positive() -> None:
    """Each size gets every figure, all positive, and the table shows them all."""
    report = await run_scale(TINY)

    assert [r.leads for r in report.results] == [500, 2000]
    for result in report.results:
        for name, value in asdict(result).items():
            assert value > 0, f"{result.leads} leads: {name} = {value}"
        assert result.due_now + result.due_later == result.leads
    assert set(report.ratios) == set(RATIO_FIGURES)
    assert all(value > 0 for value in report.ratios.values())
    assert json.loads(json.dumps(asdict(report)))["profile"]["sizes"] == [2000, 500]

    table = format_report(report).splitlines()
    rows = [line for line in table if line.startswith("| ")]
    assert rows[0] == "| | 500 leads | 2,000 leads | 2,000 / 500 |"
    assert all(line.count("|") == 5 for line in rows)
