"""A whole voxdial server on loopback for benchmarks: in this process, or not.

`running_server` starts the scripted LLM stand-in, the Twilio REST stand-in
and the media server in this process with the given models and settings,
wired as `voxdial serve` wires them, and stops all three on exit:

    async with running_server(models, settings, script) as server:
        caller = SimulatedCaller(server.ws_url, custom_parameters={...})

`serve_subprocess` runs `voxdial serve` itself as a child process, so that
what it costs (its resident memory) is measured without the benchmark's own
mixed in. The child is stopped with SIGTERM on every way out of the block,
and killed if it does not exit in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from pipelines.llm import ChatClient, LLMConfig
from pipelines.llm_standin import Script, StandinServer
from pipelines.models import Models
from pipelines.record import FileCallSink
from voice.calls import CallDirectory
from voice.metrics import Metrics
from voice.server import Services, call_config, create_app
from voice.settings import Settings
from voice.twilio_rest import TwilioRest
from voice.twilio_standin import TwilioStandin

__all__ = [
    "BenchServer",
    "Served",
    "cpu_seconds",
    "rss_mb",
    "running_server",
    "serve_subprocess",
]

log = logging.getLogger(__name__)

_STOP_LIMIT_S = 15.0


@dataclass
class BenchServer:
    """A running server: where to reach it, and what it shares."""

    services: Services
    llm: StandinServer
    twilio: TwilioStandin
    url: str
    ws_url: str
    sink: FileCallSink

    async def wait_record(self, call_id: str, limit_s: float = 5.0) -> dict[str, Any]:
        """The stored record of a call, once its stream has ended."""
        path = self.sink.directory / f"{call_id}.json"
        deadline = time.monotonic() + limit_s
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no call record for {call_id} in {limit_s} s")
            await asyncio.sleep(0.05)
        return self.sink.load(call_id)


@contextlib.asynccontextmanager
async def running_server(
    models: Models, settings: Settings, script: Mapping[str, Any]
) -> AsyncIterator[BenchServer]:
    """The stand-ins and the media server, started; all stopped on exit."""
    async with contextlib.AsyncExitStack() as stack:
        llm = StandinServer(Script.from_dict(script))
        await llm.start()
        stack.push_async_callback(llm.stop)
        twilio = TwilioStandin(settings.twilio_account_sid, settings.twilio_auth_token)
        await twilio.start()
        stack.push_async_callback(twilio.stop)
        settings = replace(settings, twilio_api_base=twilio.base_url)
        session = aiohttp.ClientSession()
        stack.push_async_callback(session.close)

        sink = FileCallSink(settings.data_dir / "calls")
        services = Services(
            settings=settings,
            models=models,
            llm=ChatClient(
                LLMConfig(
                    base_url=llm.base_url,
                    api_key="",
                    model="standin",
                    timeout_s=settings.llm_timeout_s,
                    temperature=0.0,
                    max_tokens=settings.llm_max_tokens,
                ),
                session=session,
            ),
            rest=TwilioRest(
                settings.twilio_account_sid,
                settings.twilio_auth_token,
                base_url=twilio.base_url,
                session=session,
            ),
            sink=sink,
            metrics=Metrics(),
            directory=CallDirectory(),
            call_config=call_config(settings),
        )
        runner = web.AppRunner(create_app(services), handle_signals=False)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield BenchServer(
            services=services,
            llm=llm,
            twilio=twilio,
            url=f"http://{host}:{port}",
            ws_url=f"ws://{host}:{port}/twilio/stream",
            sink=sink,
        )


@dataclass
class Served:
    """A `voxdial serve` child process; `returncode` is set once it has exited."""

    pid: int
    url: str
    ws_url: str
    log_path: Path
    returncode: int | None = None


def rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _serve_command() -> list[str]:
    script = Path(sys.executable).with_name("voxdial")
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from voice.cli import main; main()", "serve"]


def _spawn(
    workdir: Path, port: int, llm_base_url: str, extra_env: Mapping[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXDIAL_")}
    env.update(
        VOXDIAL_HOST="127.0.0.1",
        VOXDIAL_PORT=str(port),
        VOXDIAL_VALIDATE_SIGNATURES="false",
        VOXDIAL_DATA_DIR=str(workdir),
        VOXDIAL_LLM_BASE_URL=llm_base_url,
        VOXDIAL_LOG_LEVEL="WARNING",
    )
    env.update(extra_env)
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            _serve_command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return process, log_path


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def serve_subprocess(
    workdir: Path,
    llm_base_url: str,
    limit_s: float = 120.0,
    extra_env: Mapping[str, str] | None = None,
) -> AsyncIterator[Served]:
    """`voxdial serve` on a free loopback port, healthy; stopped on exit.

    Its settings come only from what is set here (no inherited `VOXDIAL_*`);
    its log goes to `workdir/serve.log`.
    """
    port = _free_port()
    process, log_path = _spawn(workdir, port, llm_base_url, extra_env or {})
    url = f"http://127.0.0.1:{port}"
    served = Served(process.pid, url, f"ws://127.0.0.1:{port}/twilio/stream", log_path)
    try:
        await _wait_healthy(process, served, limit_s)
        yield served
    finally:
        # Blocking on purpose: nothing here may be cancelled half-way, and the
        # child must be gone before the benchmark moves on or exits.
        served.returncode = _stop(process)


async def _wait_healthy(
    process: subprocess.Popen[bytes], served: Served, limit_s: float
) -> None:
    deadline = time.monotonic() + limit_s
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"voxdial serve exited with {process.returncode}:\n"
                    + _log_tail(served.log_path)
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{served.url}/healthz") as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"voxdial serve not healthy after {limit_s} s")
            await asyncio.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(_STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            log.warning(
                "voxdial serve ignored SIGTERM for %.0f s: killed", _STOP_LIMIT_S
            )
            process.kill()
            process.wait()
    return process.returncode
