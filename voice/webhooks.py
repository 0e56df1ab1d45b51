"""Call results to the campaign's webhook: signed, retried, idempotent.

Each finished call (or WhatsApp conversation) of a campaign with a webhook is
POSTed as JSON:

    POST <url>
    Content-Type: application/json
    Voxdial-Event: call.completed        or conversation.completed
    Voxdial-Delivery: <call id>          the same on every retry
    Voxdial-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

The receiver checks the signature over the timestamp and the raw body (and
may refuse old timestamps), and deduplicates by `Voxdial-Delivery`: a retry
after a lost answer carries the same id. A 2xx ends the delivery; a 4xx other
than 408 and 429 means the receiver refuses this payload and is not retried;
anything else (5xx, timeouts, refused connections) is retried with
exponential backoff and jitter, `MAX_TRIES` times in all.

With Redis (a campaign server), deliveries wait in an outbox there, not in
the process: each is written before `send` returns control to the event
loop's next turn, taken by one server at a time for one try (a lease, so a
server that dies mid-try leaves it to the others), and a delivery pending
when a server stops is made by whichever runs next. Without Redis (tests,
ad hoc use) they live in the process, and one still being retried at
shutdown is dropped and logged.

    vx:webhooks:due       zset delivery key -> when its next try is due (ms)
    vx:webhooks:<key>     hash url, secret, event, delivery id, body, tries
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
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
DUE = "vx:webhooks:due"
POLL_S = 0.2
_TAKE = """
-- KEYS: due   ARGV: now_ms lease_ms limit
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, key in ipairs(keys) do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), key)
end
return keys
"""


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
    """Delivers in the background; see the module docstring for where from."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        redis: Any | None = None,
        first_delay_s: float = FIRST_DELAY_S,
        max_tries: int = MAX_TRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._redis = redis
        self._take = None if redis is None else redis.register_script(_TAKE)
        self._first_delay_s = first_delay_s
        self._max_tries = max_tries
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writes: set[asyncio.Task[Any]] = set()
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """With Redis: start taking due deliveries, a previous run's included."""
        if self._redis is not None and self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="webhooks")

    def send(self, url: str, secret: str, delivery_id: str, payload: Any) -> None:
        """Start delivering `payload`; never raises, never blocks the caller."""
        body = json.dumps(payload, separators=(",", ":"), default=str).encode()
        event = _event(payload)
        if self._redis is not None:
            task = asyncio.create_task(
                self._enqueue(url, secret, delivery_id, event, body), name="outbox"
            )
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
            return
        delivering = asyncio.create_task(
            self.deliver(url, secret, delivery_id, body, event=event), name="webhook"
        )
        self._tasks.add(delivering)
        delivering.add_done_callback(self._tasks.discard)

    async def deliver(
        self,
        url: str,
        secret: str,
        delivery_id: str,
        body: bytes,
        *,
        event: str = "call.completed",
    ) -> bool:
        """POST until a 2xx, a final refusal, or the last try. True if delivered."""
        for attempt in range(1, self._max_tries + 1):
            verdict = await self._try(url, secret, delivery_id, event, body, attempt)
            if verdict != "retry":
                return verdict == "delivered"
            if attempt == self._max_tries:
                break
            await asyncio.sleep(self._delay(attempt))
        log.warning("webhook %s given up after %d tries", delivery_id, self._max_tries)
        return False

    def _delay(self, attempt: int) -> float:
        delay: float = min(self._first_delay_s * 2.0 ** (attempt - 1), MAX_DELAY_S)
        return delay * random.uniform(0.8, 1.2)

    async def _try(
        self,
        url: str,
        secret: str,
        delivery_id: str,
        event: str,
        body: bytes,
        attempt: int,
    ) -> str:
        """One POST: "delivered", "refused" (final) or "retry"."""
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "Voxdial-Event": event,
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
            return "delivered"
        if 400 <= status < 500 and status not in (408, 429):
            log.warning("webhook %s refused by the receiver: %s", delivery_id, reason)
            return "refused"
        log.info("webhook %s: %s (try %d)", delivery_id, reason, attempt)
        return "retry"

    # The outbox, with Redis.

    async def _enqueue(
        self, url: str, secret: str, delivery_id: str, event: str, body: bytes
    ) -> None:
        assert self._redis is not None
        key = f"vx:webhooks:{secrets.token_hex(8)}"
        fields = {
            "url": url,
            "secret": secret,
            "event": event,
            "delivery": delivery_id,
            "body": body,
            "tries": 0,
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.zadd(DUE, {key: int(self._clock() * 1000)})
            await pipe.execute()
        await self.start()

    async def _work(self) -> None:
        assert self._take is not None
        lease_ms = int(TIMEOUT_S * 2 * 1000)
        while True:
            try:
                now_ms = int(self._clock() * 1000)
                keys = await self._take(keys=[DUE], args=[now_ms, lease_ms, 20])
                for raw in keys:
                    key = raw.decode() if isinstance(raw, bytes) else str(raw)
                    task = asyncio.create_task(self._attempt(key), name="webhook")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            except (OSError, ConnectionError) as exc:
                log.warning("webhook outbox unreachable (%s); retrying", exc)
            except Exception as exc:  # a Redis error: try again next round
                log.warning("webhook outbox: %s", type(exc).__name__)
            await asyncio.sleep(POLL_S)

    async def _attempt(self, key: str) -> None:
        """One try of one delivery taken from the outbox."""
        assert self._redis is not None
        raw = await self._redis.hgetall(key)
        if not raw:
            await self._redis.zrem(DUE, key)
            return
        item = {k.decode(): v for k, v in raw.items()}
        tries = int(item["tries"]) + 1
        delivery_id = item["delivery"].decode()
        verdict = await self._try(
            item["url"].decode(),
            item["secret"].decode(),
            delivery_id,
            item["event"].decode(),
            item["body"],
            tries,
        )
        if verdict == "retry" and tries < self._max_tries:
            due = int((self._clock() + self._delay(tries)) * 1000)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, "tries", tries)
                pipe.zadd(DUE, {key: due})
                await pipe.execute()
            return
        if verdict == "retry":
            log.warning("webhook %s given up after %d tries", delivery_id, tries)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.zrem(DUE, key)
            await pipe.execute()

    async def close(self) -> None:
        # Writes to the outbox finish: they are what keeps a delivery alive.
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        pending = list(self._tasks)
        if self._worker is not None:
            pending.append(self._worker)
            self._worker = None
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending and self._redis is None:
            log.warning("%d webhook deliveries dropped at shutdown", len(pending))


def _event(payload: Any) -> str:
    event = payload.get("event") if isinstance(payload, dict) else None
    return event if isinstance(event, str) and event else "call.completed"
