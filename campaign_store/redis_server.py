"""A private `redis-server` for a data folder: the embedded default.

When no Redis URL is configured, voxdial starts its own server: the
`redis-server` binary found on PATH, on a free loopback port, with
append-only persistence (fsync on every write) and `noeviction`, keeping its
files in the given
folder. It is stopped when the block exits, on every way out.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from campaign_store.errors import StoreError

__all__ = ["EmbeddedRedis", "embedded_redis", "find_redis_server"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedRedis:
    url: str
    port: int
    pid: int
    directory: Path


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise StoreError(
            "no Redis URL is set (VOXDIAL_REDIS_URL) and no `redis-server` is on "
            "PATH to start one: install Redis (Debian: apt install redis-server) "
            "or point VOXDIAL_REDIS_URL at a server"
        )
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def embedded_redis(
    directory: Path, start_limit_s: float = 10.0, port: int | None = None
) -> Iterator[EmbeddedRedis]:
    """A `redis-server` keeping its data in `directory`, running inside the block.

    `port` restarts a server where a previous one listened (tests that kill
    Redis and bring it back from its append-only file).
    """
    binary = find_redis_server()
    directory.mkdir(parents=True, exist_ok=True)
    port = _free_port() if port is None else port
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory.resolve()),
        "--appendonly", "yes",
        # Every write on disk before Redis answers: a dial recorded is never
        # forgotten by a Redis killed right after, so never dialed twice.
        "--appendfsync", "always",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
        "--logfile", "redis.log",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + start_limit_s
        while not _ping(port):
            if process.poll() is not None:
                raise StoreError(
                    f"redis-server exited with {process.returncode}; see "
                    f"{directory / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                raise StoreError(f"redis-server did not answer in {start_limit_s} s")
            time.sleep(0.02)
        log.info(
            "started %s on 127.0.0.1:%d (append-only, data in %s)",
            binary,
            port,
            directory,
        )
        yield EmbeddedRedis(f"redis://127.0.0.1:{port}/0", port, process.pid, directory)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
