"""The WhatsApp stand-in speaks Meta's Cloud API wire format, on real sockets.

Requests go over HTTP to the stand-in; its webhooks arrive at a real aiohttp
server on loopback that keeps each body byte for byte with its headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dialer.whatsapp_standin import Contact, WhatsAppStandin

TOKEN = "EAAG-test-token"
APP_SECRET = "app-secret"
PNID = "106540352242922"
VERIFY_TOKEN = "verify-me"
LEAD = "+12125550111"
STRANGER = "+12125550199"
TEMPLATES = {("intro", "en_US"): 2, ("ping", "en_US"): 0}


@dataclass
class Hook:
    raw: bytes
    headers: dict[str, str]

    @property
    def value(self) -> dict[str, Any]:
        body = json.loads(self.raw)
        assert body["object"] == "whatsapp_business_account"
        change = body["entry"][0]["changes"][0]
        assert change["field"] == "messages"
        value: dict[str, Any] = change["value"]
        return value


class Receiver:
    """The business's webhook endpoint: records every body it accepts."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.fail_next = 0  # answer 500 to this many POSTs
        self.url = ""

    async def post(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500)
        self.hooks.append(Hook(raw, dict(request.headers)))
        return web.Response(text="EVENT_RECEIVED")

    async def get(self, request: web.Request) -> web.Response:
        query = request.query
        if (
            query.get("hub.mode") == "subscribe"
            and query.get("hub.verify_token") == VERIFY_TOKEN
        ):
            return web.Response(text=query["hub.challenge"])
        return web.Response(status=403, text="Forbidden")

    def statuses(self) -> list[dict[str, Any]]:
        return [s for h in self.hooks for s in h.value.get("statuses", [])]

    def messages(self) -> list[dict[str, Any]]:
        return [m for h in self.hooks for m in h.value.get("messages", [])]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    app = web.Application()
    app.router.add_post("/webhook", hooks.post)
    app.router.add_get("/webhook", hooks.get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hooks.url = f"http://{host}:{port}/webhook"
    yield hooks
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def standin(receiver: Receiver, **over: Any) -> WhatsAppStandin:
    options: dict[str, Any] = {
        "access_token": TOKEN,
        "app_secret": APP_SECRET,
        "phone_number_id": PNID,
        "templates": TEMPLATES,
        "contacts": {
            LEAD: Contact(
                name="Ada", replies=("Who is this?", "Ok, tell me"), reply_after_s=0.05
            )
        },
        "webhook_url": receiver.url,
        "status_delay_s": 0.01,
    }
    options.update(over)
    return WhatsAppStandin(**options)


def template_body(
    to: str = LEAD, name: str = "intro", variables: tuple[str, ...] = ("Ada", "Acme")
) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to.lstrip("+"),
        "type": "template",
        "template": {
            "name": name,
            "language": {"code": "en_US"},
            "components": [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": v} for v in variables],
                }
            ],
        },
        "biz_opaque_callback_data": "camp1:att1",
    }


def text_body(to: str = LEAD, text: str = "Hello again") -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "text",
        "text": {"preview_url": False, "body": text},
    }


async def send(
    http: aiohttp.ClientSession,
    wa: WhatsAppStandin,
    body: dict[str, Any],
    *,
    token: str = TOKEN,
    pnid: str = PNID,
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        f"{wa.base_url}/{pnid}/messages",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        payload: dict[str, Any] = await response.json()
        return response.status, payload


def signed(hook: Hook) -> bool:
    digest = hmac.new(APP_SECRET.encode(), hook.raw, hashlib.sha256).hexdigest()
    return hook.headers.get("X-Hub-Signature-256") == f"sha256={digest}"


async def test_template_gets_signed_statuses_then_the_reply(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """An accepted template is sent, delivered and read, then the lead replies."""
    async with standin(receiver) as wa:
        status, payload = await send(http, wa, template_body())
        await wa.wait_idle()

    assert status == 200
    assert payload["messaging_product"] == "whatsapp"
    assert payload["contacts"] == [{"input": "12125550111", "wa_id": "12125550111"}]
    wamid = payload["messages"][0]["id"]
    assert wamid.startswith("wamid.")
    assert payload["messages"][0]["message_status"] == "accepted"

    assert receiver.hooks and all(signed(h) for h in receiver.hooks)
    assert all(h.headers["Content-Type"] == "application/json" for h in receiver.hooks)
    statuses = receiver.statuses()
    assert [s["status"] for s in statuses] == ["sent", "delivered", "read"]
    for entry in statuses:
        assert entry["id"] == wamid
        assert entry["recipient_id"] == "12125550111"
        assert entry["biz_opaque_callback_data"] == "camp1:att1"
        assert entry["timestamp"].isdigit()
    assert statuses[0]["conversation"]["origin"] == {"type": "marketing"}
    assert statuses[1]["pricing"]["category"] == "marketing"
    assert "conversation" not in statuses[2] and "pricing" not in statuses[2]

    # The reply comes last, after the delivery it answers.
    last = receiver.hooks[-1].value
    assert last["metadata"] == {
        "display_phone_number": "15550001111",
        "phone_number_id": PNID,
    }
    assert last["contacts"] == [{"profile": {"name": "Ada"}, "wa_id": "12125550111"}]
    [reply] = last["messages"]
    assert reply["from"] == "12125550111"
    assert reply["type"] == "text" and reply["text"] == {"body": "Who is this?"}
    assert reply["id"].startswith("wamid.") and reply["id"] != wamid

    [message] = wa.sent_to(LEAD)
    assert (message.type, message.template, message.language) == (
        "template",
        "intro",
        "en_US",
    )
    assert message.variables == ("Ada", "Acme") and message.in_window
    assert message.callback_data == "camp1:att1"
    assert message.statuses == ["sent", "delivered", "read"]
    assert [(r.from_, r.text) for r in wa.received] == [(LEAD, "Who is this?")]
    assert wa.violations() == []
    assert {kind for kind, _ in wa.deliveries} == {"statuses", "messages"}
    assert all(code == 200 for _, code in wa.deliveries)


@pytest.mark.parametrize(
    ("body", "code", "details"),
    [
        (
            template_body(name="nope"),
            132001,
            "template name (nope) does not exist in en_US",
        ),
        (
            template_body(variables=("Ada",)),
            132000,
            "body: number of localizable_params (1) does not match the expected "
            "number of params (2)",
        ),
        (template_body(variables=("Ada", " ")), 131008, None),
        (template_body(to="12345"), 100, "Invalid phone number"),
        (template_body(to="+1212555O111"), 100, "Invalid phone number"),
        ({**template_body(), "messaging_product": "sms"}, 100, None),
        ({**template_body(), "type": "image"}, 100, None),
        ({**text_body(), "text": {"body": ""}}, 100, None),
    ],
    ids=[
        "unknown-template",
        "param-count",
        "blank-param",
        "short-number",
        "letter-in-number",
        "messaging-product",
        "type",
        "empty-text",
    ],
)
async def test_bad_send_is_refused_with_graph_error(
    receiver: Receiver,
    http: aiohttp.ClientSession,
    body: dict[str, Any],
    code: int,
    details: str | None,
) -> None:
    """A malformed send answers 400 with Meta's error code and makes no message."""
    async with standin(receiver) as wa:
        status, payload = await send(http, wa, body)
        await wa.wait_idle()
    assert status == 400
    error = payload["error"]
    assert error["code"] == code
    assert error["message"].startswith(f"(#{code}) ")
    assert error["error_data"]["messaging_product"] == "whatsapp"
    if details is not None:
        assert error["error_data"]["details"] == details
    assert error["fbtrace_id"]
    assert wa.sent == [] and receiver.hooks == []


async def test_bad_token_and_unknown_phone_number_id(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A wrong token answers 401 (190); a wrong phone number ID 400 (100)."""
    async with standin(receiver) as wa:
        status, payload = await send(http, wa, template_body(), token="wrong")
        assert status == 401
        assert payload["error"]["code"] == 190
        assert payload["error"]["type"] == "OAuthException"
        assert payload["error"]["message"] == (
            "Invalid OAuth access token - Cannot parse access token"
        )
        status, payload = await send(http, wa, template_body(), pnid="999")
        assert status == 400
        assert payload["error"]["code"] == 100
        assert payload["error"]["type"] == "GraphMethodException"
        assert payload["error"]["message"] == (
            "Unsupported post request. Object with ID '999' does not exist"
        )
        assert wa.sent == []


async def test_throttle_refuses_the_next_n_sends(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """`throttle_next(2)` refuses two sends with 130429, then sends go through."""
    async with standin(receiver) as wa:
        wa.throttle_next(2)
        answers = [await send(http, wa, template_body()) for _ in range(3)]
        await wa.wait_idle()
    for status, payload in answers[:2]:
        assert status == 400
        assert payload["error"]["code"] == 130429
        assert payload["error"]["message"] == "(#130429) Rate limit hit"
        assert payload["error"]["error_data"]["details"] == (
            "Cloud API message throughput has been reached."
        )
    assert answers[2][0] == 200
    assert [m.wamid for m in wa.sent] == [answers[2][1]["messages"][0]["id"]]


async def test_unregistered_contact_gets_failed_131026(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A number not on WhatsApp is accepted, then fails with 131026 and no reply."""
    contacts = {STRANGER: Contact(replies=("hi",), registered=False)}
    async with standin(receiver, contacts=contacts) as wa:
        status, payload = await send(http, wa, template_body(to=STRANGER))
        await wa.wait_idle()
    assert status == 200
    [failed] = receiver.statuses()
    assert failed["id"] == payload["messages"][0]["id"]
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == 131026
    assert failed["errors"][0]["title"] == "Message undeliverable"
    assert "conversation" not in failed and "pricing" not in failed
    assert receiver.messages() == [] and wa.received == []
    assert wa.sent[0].statuses == ["failed"]


async def test_text_outside_window_fails_131047_and_is_a_violation(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A text to a lead that never wrote is accepted, fails 131047, and is listed."""
    async with standin(receiver) as wa:
        status, payload = await send(http, wa, text_body())
        await wa.wait_idle()
    assert status == 200
    assert "message_status" not in payload["messages"][0]
    [failed] = receiver.statuses()
    assert failed["status"] == "failed"
    assert failed["errors"][0]["code"] == 131047
    assert "24 hours" in failed["errors"][0]["error_data"]["details"]
    assert [m.wamid for m in wa.violations()] == [payload["messages"][0]["id"]]
    assert wa.received == []  # an undelivered text gets no reply


async def test_window_closes_after_service_window_s(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """Once `service_window_s` has passed since the lead wrote, a text fails."""
    silent = {LEAD: Contact()}  # a reply would open the window again
    async with standin(receiver, contacts=silent, service_window_s=0.2) as wa:
        await wa.send_from_contact(LEAD, "hi")
        inside = await send(http, wa, text_body(text="one"))
        await asyncio.sleep(0.25)
        outside = await send(http, wa, text_body(text="two"))
        await wa.wait_idle()
    assert inside[0] == outside[0] == 200
    assert [m.text for m in wa.violations()] == ["two"]
    assert wa.sent[0].statuses == ["sent", "delivered", "read"]
    assert wa.sent[1].statuses == ["failed"]


async def test_text_inside_window_is_delivered_and_answered_once_per_batch(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """After the lead wrote, texts are delivered; two in a row get one reply."""
    replies = ("Who is this?", "Ok, tell me", "Bye")
    lead = Contact(name="Ada", replies=replies, reply_after_s=0.15)
    async with standin(receiver, contacts={LEAD: lead}) as wa:
        await send(http, wa, template_body())
        await wa.wait_idle()
        assert [r.text for r in wa.received] == ["Who is this?"]

        first = await send(http, wa, text_body(text="It's Acme."))
        second = await send(http, wa, text_body(text="About your order."))
        await wa.wait_idle()
        assert [r.text for r in wa.received] == list(replies[:2])
        await send(http, wa, text_body(text="Still there?"))
        await wa.wait_idle()
        # No replies left: a fourth text stays unanswered.
        await send(http, wa, text_body(text="Hello?"))
        await wa.wait_idle()

    assert first[0] == second[0] == 200
    assert wa.violations() == []
    texts = wa.sent_to(LEAD)[1:]
    assert all(m.in_window and m.type == "text" for m in texts)
    assert all(m.statuses == ["sent", "delivered", "read"] for m in texts)
    assert [r.text for r in wa.received] == list(replies)
    service = [s for s in receiver.statuses() if s["status"] == "sent"][1:]
    assert all(s["conversation"]["origin"]["type"] == "service" for s in service)
    # The reply came after both texts were delivered.
    events: list[tuple[str, str]] = []
    for hook in receiver.hooks:
        value = hook.value
        if "messages" in value:
            events.append(("reply", value["messages"][0]["text"]["body"]))
        else:
            events.extend((s["id"], s["status"]) for s in value["statuses"])
    reply_at = events.index(("reply", "Ok, tell me"))
    for answer in (first, second):
        wamid = answer[1]["messages"][0]["id"]
        assert events.index((wamid, "delivered")) < reply_at


async def test_send_from_contact_opens_the_window(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A contact writing posts a signed messages webhook and opens its window."""
    async with standin(receiver) as wa:
        wamid = await wa.send_from_contact("12125550111", "Hi, is this Acme?")
        [hook] = receiver.hooks
        assert signed(hook)
        assert hook.value["messages"][0]["id"] == wamid
        assert hook.value["messages"][0]["text"] == {"body": "Hi, is this Acme?"}
        status, _ = await send(http, wa, text_body(to="+12125550111"))
        await wa.wait_idle()
    assert status == 200 and wa.violations() == []
    assert wa.received[0].from_ == LEAD


async def test_duplicate_webhooks_post_every_body_twice(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """With `duplicate_webhooks`, each webhook arrives twice, byte for byte."""
    async with standin(receiver, duplicate_webhooks=True) as wa:
        await send(http, wa, template_body(name="ping", variables=()))
        await wa.wait_idle()
    raws = [h.raw for h in receiver.hooks]
    assert len(raws) == 8  # sent, delivered, read, reply: each twice
    assert raws[0::2] == raws[1::2]
    assert len(set(raws)) == 4
    assert all(signed(h) for h in receiver.hooks)


async def test_failed_webhook_post_is_retried(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A 5xx is retried; a refused connection is tried 3 times and given up."""
    receiver.fail_next = 1
    contacts = {LEAD: Contact(reads=False)}
    async with standin(receiver, contacts=contacts) as wa:
        await send(http, wa, template_body())
        await wa.wait_idle()
        # "sent" failed once, then went; "delivered" went at the first try.
        assert wa.deliveries == [("statuses", 500)] + [("statuses", 200)] * 2
        wa.webhook_url = "http://127.0.0.1:9/webhook"
        wa.deliveries.clear()
        await wa.send_from_contact(LEAD, "hello?")
    assert wa.deliveries == [("messages", None)] * 3


async def test_verify_webhook_does_the_subscribe_handshake(receiver: Receiver) -> None:
    """`verify_webhook` sends Meta's GET; the right token gets the challenge back."""
    async with standin(receiver) as wa:
        assert await wa.verify_webhook(receiver.url, VERIFY_TOKEN, "424242") == (
            200,
            "424242",
        )
        status, _ = await wa.verify_webhook(receiver.url, "wrong")
    assert status == 403


async def test_callable_contacts_are_asked_once_per_number(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    """A contact script is called once per number and its answer kept."""
    asked: list[str] = []

    def script(number: str) -> Contact:
        asked.append(number)
        return Contact(replies=(f"hi from {number[-4:]}",), reply_after_s=0.01)

    async with standin(receiver, contacts=script) as wa:
        for _ in range(2):
            await send(http, wa, template_body())
        await wa.wait_idle()
    assert asked == [LEAD]
    assert [r.text for r in wa.received] == ["hi from 0111"]
