"""Call-result webhooks: signed, retried with backoff, one id per delivery."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from campaign_store.store import Store
from voice.webhooks import WebhookSender, sign, verify

SECRET = "whsec_0123456789abcdef"


@dataclass
class Receiver:
    url: str
    statuses: list[int]  # answered in order; 200 once exhausted
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    box = Receiver(url="", statuses=[])

    async def hook(request: web.Request) -> web.Response:
        box.seen.append((dict(request.headers), await request.read()))
        status = box.statuses.pop(0) if box.statuses else 200
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    box.url = f"http://{host}:{port}/hook"
    yield box
    await runner.cleanup()


async def test_failures_are_retried_with_the_same_delivery_id(
    receiver: Receiver,
) -> None:
    """Two 500s then a 200: three tries, same id and body, each signed."""
    receiver.statuses = [500, 503]
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, first_delay_s=0.01)
        delivered = await sender.deliver(receiver.url, SECRET, "call_1", b'{"a":1}')
    assert delivered and len(receiver.seen) == 3
    for headers, body in receiver.seen:
        assert body == b'{"a":1}'
        assert headers["Voxdial-Delivery"] == "call_1"
        assert headers["Voxdial-Event"] == "call.completed"
        timestamp = int(headers["Voxdial-Signature"].split(",")[0][2:])
        assert verify(SECRET, headers["Voxdial-Signature"], body, now=timestamp)


async def test_a_refusal_is_final_and_an_outage_gives_up(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A 400 is not retried; a dead receiver is tried MAX times, secret unlogged."""
    receiver.statuses = [400]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, first_delay_s=0.01, max_tries=3)
        assert not await sender.deliver(receiver.url, SECRET, "call_2", b"{}")
        assert not await sender.deliver(dead, SECRET, "call_3", b"{}")
    assert len(receiver.seen) == 1
    assert "given up after 3 tries" in caplog.text and SECRET not in caplog.text


def test_signatures_bind_the_body_and_the_time() -> None:
    """A changed body, a wrong secret or an old timestamp fails verification."""
    header = sign(SECRET, 1_800_000_000, b'{"outcome":"qualified"}')
    body = b'{"outcome":"qualified"}'
    assert verify(SECRET, header, body, now=1_800_000_010)
    assert not verify(SECRET, header, b'{"outcome":"callback"}', now=1_800_000_010)
    assert not verify("whsec_other_secret_value", header, body, now=1_800_000_010)
    assert not verify(SECRET, header, body, now=1_800_001_000)
    assert not verify(SECRET, "garbage", body, now=1_800_000_010)


async def test_send_runs_in_the_background_and_close_drops_the_rest(
    receiver: Receiver,
) -> None:
    """`send` returns at once; `close` cancels a delivery still retrying."""
    receiver.statuses = [500] * 100
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(session, first_delay_s=5.0)
        sender.send(receiver.url, SECRET, "call_4", {"event": "call.completed"})
        for _ in range(100):
            if receiver.seen:
                break
            await asyncio.sleep(0.01)
        await sender.close()
    assert len(receiver.seen) == 1


async def test_an_outbox_delivery_outlives_its_server(
    receiver: Receiver, store: Store
) -> None:
    """Pending when one sender stops, delivered by the next, same id and body."""
    receiver.statuses = [503] * 2
    async with aiohttp.ClientSession() as session:
        first = WebhookSender(session, redis=store.redis, first_delay_s=10.0)
        payload = {"event": "conversation.completed", "call": {"id": "conv_1"}}
        first.send(receiver.url, SECRET, "conv_1", payload)
        for _ in range(200):
            if receiver.seen:
                break
            await asyncio.sleep(0.01)
        await first.close()  # stopped with the delivery still due in 10 s
        assert len(receiver.seen) == 1
        assert await store.redis.zcard("vx:webhooks:due") == 1

        # The next server picks it up once it is due (made due now here).
        await store.redis.zadd("vx:webhooks:due", {
            (await store.redis.zrange("vx:webhooks:due", 0, 0))[0]: 0
        })  # fmt: skip
        second = WebhookSender(session, redis=store.redis, first_delay_s=0.01)
        await second.start()
        for _ in range(300):
            if len(receiver.seen) >= 3:
                break
            await asyncio.sleep(0.01)
        for _ in range(100):
            if not await store.redis.zcard("vx:webhooks:due"):
                break
            await asyncio.sleep(0.01)
        await second.close()
    assert len(receiver.seen) == 3  # 503, 503, then 200
    assert {h["Voxdial-Delivery"] for h, _ in receiver.seen} == {"conv_1"}
    assert {h["Voxdial-Event"] for h, _ in receiver.seen} == {"conversation.completed"}
    assert len({b for _, b in receiver.seen}) == 1
    assert await store.redis.zcard("vx:webhooks:due") == 0
    assert not await store.redis.keys("vx:webhooks:*")
