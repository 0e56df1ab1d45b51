"""The Graph API client against the WhatsApp stand-in, on real loopback sockets.

Every answer comes from a real HTTP server: the Cloud API stand-in for what
Meta says, a closed port for no answer at all, and a tiny aiohttp app for a
server error.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from dialer.whatsapp import MessageError, WhatsAppClient
from dialer.whatsapp_standin import WhatsAppStandin

TOKEN = "EAAG-client-test-token"
APP_SECRET = "app-secret"
PNID = "106540352242922"
LEAD = "+12125550111"
TEMPLATES = {("intro", "en_US"): 2, ("ping", "en_US"): 0}


@pytest.fixture
async def standin() -> AsyncIterator[WhatsAppStandin]:
    """The Cloud API stand-in, without a webhook URL: no status is posted."""
    async with WhatsAppStandin(
        access_token=TOKEN,
        app_secret=APP_SECRET,
        phone_number_id=PNID,
        templates=TEMPLATES,
        status_delay_s=0.01,
    ) as wa:
        yield wa


@pytest.fixture
async def client(standin: WhatsAppStandin) -> AsyncIterator[WhatsAppClient]:
    wa = WhatsAppClient(TOKEN, PNID, base_url=standin.base_url, backoff_s=0.01)
    yield wa
    await wa.close()


async def refused(
    client: WhatsAppClient,
    *,
    to: str = LEAD,
    name: str = "intro",
    variables: tuple[str, ...] = ("Ada", "Acme"),
) -> MessageError:
    """The error a template send raises."""
    with pytest.raises(MessageError) as caught:
        await client.send_template(to, name, "en_US", variables)
    return caught.value


def assert_masked(exc: MessageError, *secrets: str) -> None:
    text = str(exc)
    assert "12125550111" not in text and "2125550111" not in text, text
    for secret in (TOKEN, *secrets):
        assert secret not in text and secret not in repr(exc.args), text


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_template_is_accepted_with_its_name_language_variables(
    client: WhatsAppClient, standin: WhatsAppStandin
) -> None:
    """A template goes out with its exact name, language, variables and callback."""
    sent = await client.send_template(
        LEAD, "intro", "en_US", ["Ada", "Acme"], callback_data="camp1:att1"
    )
    assert sent.wamid.startswith("wamid.")
    assert sent.wa_id == "12125550111"
    [message] = standin.sent
    assert message.wamid == sent.wamid
    assert message.to == LEAD and message.type == "template"
    assert (message.template, message.language) == ("intro", "en_US")
    assert message.variables == ("Ada", "Acme")
    assert message.callback_data == "camp1:att1"


async def test_template_without_variables_has_no_body_parameters(
    client: WhatsAppClient, standin: WhatsAppStandin
) -> None:
    """A template with no variables is accepted with none and no callback data."""
    sent = await client.send_template(LEAD, "ping", "en_US", [])
    [message] = standin.sent
    assert message.wamid == sent.wamid
    assert message.variables == () and message.callback_data == ""


async def test_text_is_accepted_with_its_body_and_callback(
    client: WhatsAppClient, standin: WhatsAppStandin
) -> None:
    """A text goes out with its exact body and callback data."""
    sent = await client.send_text(
        LEAD, "It's Acme, about your order.", callback_data="camp1:att1"
    )
    assert sent.wamid.startswith("wamid.")
    [message] = standin.sent_to(LEAD)
    assert message.wamid == sent.wamid and message.type == "text"
    assert message.text == "It's Acme, about your order."
    assert (message.template, message.variables) == ("", ())
    assert message.callback_data == "camp1:att1"


async def test_unknown_template_is_a_template_error(
    client: WhatsAppClient, standin: WhatsAppStandin
) -> None:
    """An unknown template is kind "template", code 132001, nothing placed."""
    exc = await refused(client, name="nope")
    assert exc.kind == "template" and exc.code == 132001
    assert exc.placed is False and exc.status == 400 and not exc.retryable
    assert "nope" in str(exc)
    assert_masked(exc)
    assert standin.sent == []


async def test_wrong_variable_count_is_a_template_error(
    client: WhatsAppClient, standin: WhatsAppStandin
) -> None:
    """A variable count the template does not expect is kind "template"."""
    exc = await refused(client, variables=("Ada",))
    assert exc.kind == "template" and exc.code == 132000
    assert exc.placed is False
    assert_masked(exc)
    assert standin.sent == []


async def test_bad_number_is_bad_number(
    client: WhatsAppClient, standin: WhatsAppStandin
) -> None:
    """A number WhatsApp cannot parse is kind "bad_number", nothing placed."""
    exc = await refused(client, to="+12345")
    assert exc.kind == "bad_number" and exc.code == 100
    assert exc.placed is False
    assert_masked(exc)
    assert standin.sent == []


async def test_wrong_token_is_unauthorized_and_never_shown(
    standin: WhatsAppStandin,
) -> None:
    """A refused token is kind "unauthorized"; neither token is in the error."""
    wrong = "EAAG-wrong-token-123"
    client = WhatsAppClient(wrong, PNID, base_url=standin.base_url, backoff_s=0.01)
    try:
        exc = await refused(client)
        with pytest.raises(MessageError) as text_caught:
            await client.send_text(LEAD, "hello")
    finally:
        await client.close()
    for error in (exc, text_caught.value):
        assert error.kind == "unauthorized" and error.code == 190
        assert error.placed is False and error.status == 401
        assert_masked(error, wrong)
    assert "wrong" not in repr(client)
    assert standin.sent == []


async def test_brief_throttling_is_retried_until_sent(
    standin: WhatsAppStandin,
) -> None:
    """Two rate-limit refusals are retried with backoff; the third try is sent."""
    client = WhatsAppClient(
        TOKEN, PNID, base_url=standin.base_url, retries=3, backoff_s=0.01
    )
    standin.throttle_next(2)
    try:
        sent = await client.send_template(LEAD, "intro", "en_US", ["Ada", "Acme"])
    finally:
        await client.close()
    assert [m.wamid for m in standin.sent] == [sent.wamid]


async def test_lasting_throttling_is_rate_limited_and_sends_nothing(
    standin: WhatsAppStandin,
) -> None:
    """Past its retries the client gives up: "rate_limited", retryable, unplaced."""
    client = WhatsAppClient(
        TOKEN, PNID, base_url=standin.base_url, retries=2, backoff_s=0.01
    )
    standin.throttle_next(10)
    try:
        exc = await refused(client)
    finally:
        await client.close()
    assert exc.kind == "rate_limited" and exc.code == 130429
    assert exc.retryable is True and exc.placed is False
    assert_masked(exc)
    assert standin.sent == []


async def test_no_listener_is_unknown_and_maybe_placed() -> None:
    """A closed port gives no answer: kind "unknown", placed None."""
    base = f"http://127.0.0.1:{closed_port()}/v21.0"
    client = WhatsAppClient(TOKEN, PNID, base_url=base, timeout_s=2.0, backoff_s=0.01)
    try:
        exc = await refused(client)
    finally:
        await client.close()
    assert exc.kind == "unknown" and exc.placed is None
    assert not exc.retryable and exc.code is None
    assert_masked(exc)


@contextlib.asynccontextmanager
async def answering(
    status: int, payload: dict[str, Any]
) -> AsyncIterator[tuple[WhatsAppClient, list[bytes]]]:
    """A client on a tiny Graph-shaped server that always answers `status`."""
    seen: list[bytes] = []

    async def messages(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response(payload, status=status)

    app = web.Application()
    app.router.add_post(f"/v21.0/{PNID}/messages", messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    client = WhatsAppClient(
        TOKEN, PNID, base_url=f"http://{host}:{port}/v21.0", backoff_s=0.01
    )
    try:
        yield client, seen
    finally:
        await client.close()
        await runner.cleanup()


async def test_server_error_is_unknown() -> None:
    """An HTTP 500 may hide a sent message: kind "unknown", placed None."""
    error = {"error": {"message": f"(#1) boom for {LEAD}", "code": 1}}
    async with answering(500, error) as (client, seen):
        exc = await refused(client)
    assert exc.kind == "unknown" and exc.placed is None and exc.status == 500
    assert_masked(exc)
    assert len(seen) == 1  # never sent again blindly


async def test_refusal_quoting_the_number_is_masked() -> None:
    """Graph's message and details are masked before they reach the error."""
    error = {
        "error": {
            "message": "(#131026) Message undeliverable to 12125550111",
            "code": 131026,
            "error_data": {"details": f"Recipient {LEAD} is not on WhatsApp"},
        }
    }
    async with answering(400, error) as (client, seen):
        exc = await refused(client)
    assert exc.kind == "bad_number" and exc.code == 131026 and exc.placed is False
    assert str(exc).count("…0111") == 3  # the masked form is kept, for the logs
    assert_masked(exc)
    assert len(seen) == 1


async def test_rate_limit_is_tried_once_plus_its_retries() -> None:
    """With retries=2 a lasting rate limit (130429) is tried three times."""
    error = {"error": {"message": "(#130429) Rate limit hit", "code": 130429}}
    async with answering(400, error) as (client, seen):
        client.retries = 2
        exc = await refused(client)
    assert exc.kind == "rate_limited" and exc.placed is False
    assert len(seen) == 3
