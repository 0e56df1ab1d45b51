"""The chaos benchmark's short profile: three dialer processes killed at random."""

from __future__ import annotations

from pathlib import Path

from benchmarks.dialer_chaos import ChaosProfile, run_chaos


async def test_a_short_chaos_run_has_no_violations(tmp_path: Path) -> None:
    """Dialer SIGKILLs, a Redis SIGKILL and a pause: nothing lost, repeated or late."""
    profile = ChaosProfile(
        leads=150, dialers=3, kills=4, redis_kills=1, pause=True, limit_s=90
    )
    report = await run_chaos(profile, tmp_path)
    assert report.violations == 0, report
    assert (report.kills, report.redis_kills) == (4, 1)
    assert report.calls >= report.settled_leads > 0
    assert report.settled_leads + report.waiting_leads == profile.leads
    assert not report.notes, report.notes
