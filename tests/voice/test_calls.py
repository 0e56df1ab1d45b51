"""One-time stream nonces, in memory and in Redis (shared by servers)."""

from __future__ import annotations

import asyncio

import pytest

from campaign_store.store import Store
from voice.calls import CallDirectory, ExpectedCall

CALL = ExpectedCall(
    call_id="c1",
    call_sid="CA" + "1" * 32,
    lead_id="lead_1",
    campaign_id="cmp_1",
    fields={"company": "Acme"},
    caller="+12125550199",
    inbound=True,
)


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_nonce_is_good_for_one_stream(backend: str, store: Store) -> None:
    """Claimed once it gives the call back whole; a second claim gets nothing."""
    directory = CallDirectory(store.redis if backend == "redis" else None)
    nonce = await directory.register(CALL)
    assert await directory.claim(nonce) == CALL
    assert await directory.claim(nonce) is None
    assert await directory.claim("") is None
    assert await directory.claim("made-up") is None


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_nonce_expires(backend: str, store: Store) -> None:
    """Past its time to live, a nonce starts nothing."""
    directory = CallDirectory(store.redis if backend == "redis" else None, ttl_s=0.05)
    nonce = await directory.register(CALL)
    await asyncio.sleep(0.15)
    assert await directory.claim(nonce) is None


async def test_any_server_may_take_the_stream(store: Store) -> None:
    """With Redis, the server that answered the webhook need not get the stream."""
    answering, streaming = CallDirectory(store.redis), CallDirectory(store.redis)
    nonce = await answering.register(CALL)
    taken = await asyncio.gather(streaming.claim(nonce), answering.claim(nonce))
    assert sorted(t is None for t in taken) == [False, True]
