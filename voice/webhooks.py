"""Call results to the campaign's webhook: signed, retried, idempotent.

Each finished call of a campaign with a webhook is POSTed as JSON:

    POST <url>
    Content-Type: application/json
    Voxdial-Event: call.completed
    Voxdial-Delivery: <call id>          the same on every retry
    Voxdial-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

The receiver checks the signature over the timestamp and the raw body (and
may refuse old timestamps), and deduplicates by `Voxdial-Delivery`: a retry
after a lost answer carries the same id. A 2xx ends the delivery; a 4xx other
than 408 and 429 means the receiver refuses this payload and is not retried;
anything else (5xx, timeouts, refused connections) is retried with
exponential backoff and jitter, `MAX_TRIES` times in all. Deliveries live in
the process: one still being retried when the server stops is dropped and
logged, and the call itself is in the store regardless.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

__all__ = ["MAX_TRIES", "WebhookSender", "sign", "verify"]

log = logging.getLogger(__name__)

MAX_TRIES = 6
FIRST_DELAY_S = 1.0
MAX_DELAY_S = 60.0
TIMEOUT_S = 10.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Voxdial-Signature` header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver does: the signature matches and is recent enough."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class WebhookSender:
    """Delivers in the background; `close` drops what is still pending."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        first_delay_s: float = FIRST_DELAY_S,
        max_tries: int = MAX_TRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._first_delay_s = first_delay_s
        self._max_tries = max_tries
        self._clock = clock
        self._tasks: set[asyncio.Task[bool]] = set()

    def send(self, url: str, secret: str, delivery_id: str, payload: Any) -> None:
        """Start delivering `payload`; never raises, never blocks the caller."""
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        task = asyncio.create_task(
            self.deliver(url, secret, delivery_id, body), name="webhook"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(
        self, url: str, secret: str, delivery_id: str, body: bytes
    ) -> bool:
        """POST until a 2xx, a final refusal, or the last try. True if delivered."""
        for attempt in range(1, self._max_tries + 1):
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "Voxdial-Event": "call.completed",
                "Voxdial-Delivery": delivery_id,
                "Voxdial-Signature": sign(secret, timestamp, body),
            }
            try:
                async with self._session.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
                    allow_redirects=False,
                ) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, reason = 0, type(exc).__name__
            else:
                reason = f"HTTP {status}"
            if 200 <= status < 300:
                log.info("webhook delivered: %s (try %d)", delivery_id, attempt)
                return True
            if 400 <= status < 500 and status not in (408, 429):
                log.warning(
                    "webhook %s refused by the receiver: %s", delivery_id, reason
                )
                return False
            if attempt == self._max_tries:
                break
            delay = min(self._first_delay_s * 2 ** (attempt - 1), MAX_DELAY_S)
            log.info("webhook %s: %s; retrying in %.1f s", delivery_id, reason, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        log.warning("webhook %s given up after %d tries", delivery_id, self._max_tries)
        return False

    async def close(self) -> None:
        pending = list(self._tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("%d webhook deliveries dropped at shutdown", len(pending))
