"""The stock pipecat baseline, run as the load harness runs it.

The baseline is a real subprocess on a free loopback port, its LLM the
scripted stand-in served from this test, and the caller the project's
simulated Twilio caller speaking real synthesized speech.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from benchmarks.caller import SimulatedCaller
from pipelines.llm_standin import Script, StandinServer

pytestmark = pytest.mark.models

REPO = Path(__file__).resolve().parents[2]
REPLY = "Sure, I can help with that."
STARTUP_LIMIT_S = 30.0


@dataclass
class Baseline:
    process: subprocess.Popen[bytes]
    url: str
    ws_url: str
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def llm() -> AsyncIterator[StandinServer]:
    async with StandinServer(Script.from_dict({"default_reply": REPLY})) as server:
        yield server


@pytest.fixture
def baseline_process(llm: StandinServer, tmp_path: Path) -> Iterator[Baseline]:
    """The baseline server as a subprocess; its stderr goes to a log file."""
    port = _free_port()
    log = tmp_path / "baseline.log"
    command = [
        sys.executable,
        "-m",
        "benchmarks.baseline_pipecat",
        "--port",
        str(port),
        "--llm-base-url",
        llm.base_url,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        yield Baseline(process, url, f"ws://127.0.0.1:{port}/ws", log)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
async def baseline(baseline_process: Baseline) -> Baseline:
    """The baseline once `/healthz` answers 200."""
    deadline = time.monotonic() + STARTUP_LIMIT_S
    async with aiohttp.ClientSession() as session:
        while True:
            if baseline_process.process.poll() is not None:
                log = baseline_process.log.read_text(errors="replace")
                pytest.fail(f"the baseline exited early:\n{log}")
            try:
                async with session.get(f"{baseline_process.url}/healthz") as resp:
                    if resp.status == 200:
                        return baseline_process
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the baseline did not answer /healthz in time")
            await asyncio.sleep(0.2)


def _user_texts(request: dict[str, Any]) -> list[str]:
    return [
        str(message.get("content"))
        for message in request.get("messages", [])
        if message.get("role") == "user"
    ]


async def test_greets_then_answers_the_caller(
    baseline: Baseline, llm: StandinServer, phrases: dict[str, np.ndarray]
) -> None:
    """The bot greets when the stream starts, then answers what the caller says."""
    caller = SimulatedCaller(baseline.ws_url, custom_parameters={})
    async with caller:
        # The greeting: spoken first, without the caller saying anything.
        assert await caller.wait_agent_done(after=0.0, quiet_s=0.7, limit_s=20.0)
        assert caller.heard.size > 8000  # more than a second of speech
        greeting_frames = len(caller.media_times)

        # One turn: the caller's sentence reaches the LLM and a reply plays.
        await caller.say(phrases["appointment"])
        spoken = caller.speech_end_times[-1]
        assert await caller.wait_agent_done(after=spoken, quiet_s=0.7, limit_s=20.0)
        assert caller.first_audio_after(spoken) is not None
        assert len(caller.media_times) > greeting_frames

    assert caller.violations == []
    said = " ".join(text for r in llm.requests for text in _user_texts(r)).lower()
    assert "appointment" in said
