"""Calls the server expects: one-time nonces handed out in TwiML.

The TwiML webhook registers each answered call here and puts the returned
nonce in the stream's `<Parameter>`s; the stream's `start` must present it,
once, within `ttl_s`. That ties a media stream to a webhook Twilio signed,
so a stranger who reaches the websocket cannot start an agent on our dime.

With a campaign store the nonces live in its Redis (`vx:nonce:<nonce>`,
expiring, taken with GETDEL so that only one stream ever gets one), so the
stream may land on any server behind a balancer, not only the one that
answered its webhook. Without one (tests, ad hoc streams), in process memory.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CallDirectory", "ExpectedCall"]

PREFIX = "vx:nonce:"


@dataclass(frozen=True)
class ExpectedCall:
    """What the webhook knew about a call when it answered it."""

    call_id: str
    call_sid: str
    lead_id: str = ""
    campaign_id: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    caller: str = ""  # the caller's number, for calls the lead placed to us
    inbound: bool = False


class CallDirectory:
    """Nonce -> expected call, each nonce good for one stream."""

    def __init__(self, redis: Any | None = None, ttl_s: float = 120.0) -> None:
        self.ttl_s = ttl_s
        self._redis = redis
        self._expected: dict[str, tuple[float, ExpectedCall]] = {}

    async def register(self, call: ExpectedCall) -> str:
        nonce = secrets.token_urlsafe(18)
        if self._redis is not None:
            blob = json.dumps(dataclasses.asdict(call))
            await self._redis.set(PREFIX + nonce, blob, px=int(self.ttl_s * 1000))
            return nonce
        self._expire()
        self._expected[nonce] = (time.monotonic() + self.ttl_s, call)
        return nonce

    async def claim(self, nonce: str) -> ExpectedCall | None:
        """The call for `nonce`, removing it; None when unknown or expired."""
        if not nonce:
            return None
        if self._redis is not None:
            blob = await self._redis.getdel(PREFIX + nonce)
            return None if blob is None else ExpectedCall(**json.loads(blob))
        self._expire()
        entry = self._expected.pop(nonce, None)
        return entry[1] if entry else None

    def _expire(self) -> None:
        now = time.monotonic()
        for nonce in [
            n for n, (deadline, _) in self._expected.items() if deadline < now
        ]:
            del self._expected[nonce]
