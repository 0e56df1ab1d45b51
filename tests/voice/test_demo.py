"""`voxdial demo` end to end, in this process: each scenario lands where it should.

Eight leads, one per scenario, all in zones whose calling window is open now,
and five WhatsApp leads beside them, run through the real demo: a private
Redis, dialer processes, the carrier stand-in with callees that speak, the
WhatsApp stand-in with scripted leads, the scripted LLM, the calendar
stand-in and the admin API. The test reads the demo's own result (itself read
back through the API) and then checks that nothing the demo started is still
running.
"""

from __future__ import annotations

import asyncio
import io
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from voice.demo import DemoOptions, LeadResult, run_demo
from voice.demo_scenarios import SCENARIOS
from voice.settings import Settings

pytestmark = pytest.mark.models


def _children() -> set[int]:
    """The process ids whose parent is this process."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


def _all_files(paths: list[str]) -> bool:
    return all(Path(p).is_file() for p in paths)


async def test_each_scenario_ends_in_its_lead_status(
    models: Any, tmp_path: Path
) -> None:
    """Booked, callback, not interested, opt-out, barge-in, no answer, busy, machine."""
    children, tasks = _children(), asyncio.all_tasks()
    options = DemoOptions(
        leads=len(SCENARIOS),
        fast=True,
        data_dir=tmp_path,
        # Retries are not waited for here: they show as scheduled.
        retry_horizon_s=0.0,
        time_limit_s=100.0,
    )
    out = io.StringIO()
    # An empty environment: a real model configured here must not be used.
    settings = Settings.load({}, serving=False)
    result = await run_demo(options, settings, models=models, out=out)

    assert result.ended == "done"
    assert result.scripted and "SCRIPTED" in out.getvalue()
    rows: dict[str, LeadResult] = {r.planned.scenario.name: r for r in result.leads}
    assert set(rows) == {s.name for s in SCENARIOS}
    statuses = {name: row.lead.status.value for name, row in rows.items()}
    said = {n: [t.text for c in r.calls for t in c.transcript] for n, r in rows.items()}
    assert statuses == {
        "booked": "qualified",
        "callback": "callback",
        "not_interested": "not_interested",
        "opt_out": "do_not_call",
        "interrupts": "completed",
        "no_answer": "no_answer",
        "busy": "no_answer",
        "voicemail": "voicemail",
    }, said

    booked = rows["booked"]
    assert booked.calls[0].booking is not None
    # Two visits: the booked caller's, and the booked WhatsApp lead's.
    emails = sorted(e["attendees"][0]["email"] for e in result.calendar_events)
    assert booked.planned.email in emails and len(emails) == 2
    assert booked.lead.fields["attending"] is True

    callback = rows["callback"]
    tomorrow = datetime.now(ZoneInfo(callback.lead.timezone)) + timedelta(days=1)
    assert callback.calls[0].callback_local.startswith(f"{tomorrow:%Y-%m-%d}T15:00")
    assert callback.lead.next_attempt_at == callback.calls[0].callback_at

    opted = rows["opt_out"]
    assert opted.calls[0].opted_out and opted.lead.next_attempt_at is None
    assert opted.lead.phone in result.do_not_call

    interrupted = rows["interrupts"].calls[0]
    assert interrupted.barge_ins >= 1
    assert any(t.speaker == "agent" and t.interrupted for t in interrupted.transcript)

    for name in ("no_answer", "busy"):
        lead = rows[name].lead
        assert lead.attempts == 2 or lead.next_attempt_at is not None, name
        assert rows[name].calls == []
    assert rows["voicemail"].lead.last_outcome == "voicemail"
    assert _all_files([c.recording_path for r in rows.values() for c in r.calls])

    # The WhatsApp campaign beside it: same agent, writing.
    chats = {r.chat.scenario.name: r for r in result.whatsapp}
    assert {n: r.lead.status.value for n, r in chats.items()} == {
        "booked": "qualified",
        "not_interested": "not_interested",
        "stop": "do_not_call",
        "no_reply": "no_answer",
        "not_on_whatsapp": "failed",
    }
    assert chats["booked"].conversations[0].booking is not None
    assert chats["stop"].lead.phone in result.do_not_call
    assert len(result.do_not_call) == 2
    opening = chats["booked"].conversations[0].messages[0]
    assert opening.kind == "template" and opening.text.startswith("Hello ")
    assert result.whatsapp_violations == 0
    assert "WhatsApp campaign" in out.getvalue()

    await asyncio.sleep(0)
    assert _children() == children
    left = asyncio.all_tasks() - tasks - {asyncio.current_task()}
    assert not left, left
