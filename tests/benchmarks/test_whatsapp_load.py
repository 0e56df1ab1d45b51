"""The WhatsApp load harness: every turn answered once, the report complete."""

from __future__ import annotations

from pathlib import Path

from benchmarks.whatsapp_load import WhatsAppProfile, format_report, run_whatsapp_load


async def test_a_short_run_answers_every_turn_once(tmp_path: Path) -> None:
    """Three conversations of two turns: six answers, none twice, none late."""
    profile = WhatsAppProfile(leads=3, turns=2, model_delay_s=0.05, limit_s=30.0)
    report = await run_whatsapp_load(profile, tmp_path)
    assert (report.turns_expected, report.answered) == (6, 6)
    assert report.unanswered == report.answered_twice == report.violations == 0
    assert report.baseline_p50_s is not None and report.reply_p50_s is not None
    text = format_report(report)
    assert "| answer p50 (ms) |" in text and "model alone" in text
