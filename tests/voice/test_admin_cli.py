"""The operator's commands, run as a user runs them: `voxdial ...` in a shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def voxdial(
    redis_url: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXDIAL_")}
    env.update(VOXDIAL_REDIS_URL=redis_url, VOXDIAL_DATA_DIR=str(tmp_path))
    return subprocess.run(
        [sys.executable, "-c", "from voice.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_ok(redis_url: str, tmp_path: Path, *args: str) -> Any:
    done = voxdial(redis_url, tmp_path, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.usefixtures("store")
def test_key_import_review_launch(redis_url: str, tmp_path: Path) -> None:
    """A key from the CLI works on the store; leads import; launch waits for review."""
    from campaign_store.models import AgentInput, CampaignInput, PhoneChannel
    from campaign_store.store import Store

    created = run_ok(redis_url, tmp_path, "apikey", "create", "--tenant", "acme")
    assert created["key"].startswith("vxk_")

    async def make() -> str:
        store = await Store.connect(redis_url)
        try:
            assert await store.authenticate(created["key"]) == "acme"
            agent = await store.create_agent(
                "acme", AgentInput(name="A", system_prompt="Hi {{name}}")
            )
            campaign = await store.create_campaign(
                "acme",
                CampaignInput(
                    name="C",
                    agent_id=agent.id,
                    channel=PhoneChannel(caller_id="+14155550100"),
                ),
            )
            return campaign.id
        finally:
            await store.close()

    import asyncio

    cid = asyncio.run(make())
    done = voxdial(redis_url, tmp_path, "campaign", "launch", cid, "--tenant", "acme")
    assert done.returncode == 1 and "no leads" in done.stderr

    leads = tmp_path / "leads.csv"
    leads.write_text("phone,name\n(212) 555-0101,Ada\n+44 20 7946 0958,Alan\n")
    report = run_ok(
        redis_url, tmp_path, "leads", "import", cid, str(leads), "--tenant", "acme",
        "--region", "US",
    )  # fmt: skip
    assert report["accepted"] == 2
    review = run_ok(redis_url, tmp_path, "campaign", "review", cid, "--tenant", "acme")
    assert review == {"ready": True, "problems": []}
    launched = run_ok(
        redis_url, tmp_path, "campaign", "launch", cid, "--tenant", "acme"
    )
    assert launched["status"] == "active"
    paused = run_ok(redis_url, tmp_path, "campaign", "pause", cid, "--tenant", "acme")
    assert paused["status"] == "paused"
    overview = run_ok(
        redis_url, tmp_path, "campaign", "overview", cid, "--tenant", "acme"
    )
    assert overview["leads"] == 2

    done = voxdial(redis_url, tmp_path, "campaign", "pause", cid, "--tenant", "globex")
    assert done.returncode == 1 and "not found" in done.stderr
