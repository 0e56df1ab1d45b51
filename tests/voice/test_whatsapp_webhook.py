"""The media server's WhatsApp webhook: handshake, signatures, parsing, handling.

The server runs as in production (`run_harness` with a real Redis store and
the scripted LLM); webhooks are Meta-shaped bodies signed here with the app
secret, posted over real HTTP. Where a conversation is needed, the real
dialer opens it with the template, sent through the WhatsApp stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from campaign_store.models import (
    AgentInput,
    CallRecordModel,
    Campaign,
    CampaignInput,
    HourRange,
    Lead,
    LeadStatus,
    Pacing,
    Schedule,
    WhatsAppChannel,
    WhatsAppTemplate,
)
from campaign_store.store import Store, new_id
from dialer.whatsapp_standin import Contact, WhatsAppStandin
from pipelines.models import Models
from tests.conftest import Harness, dialing, run_harness, until_true
from voice.settings import Settings
from voice.whatsapp_webhook import (
    IncomingMessage,
    StatusUpdate,
    parse_webhook,
    signature_ok,
)

T = "acme"
NY = "America/New_York"
NUMBER_ID = "106540352242922"
TOKEN = "EAAG-webhook-test-token"
SECRET = "app-secret-for-webhook-tests"
VERIFY = "verify-me"
LEAD = "+12125550111"
TEMPLATE = ("visit_invite", "en_US")
SCRIPT: dict[str, Any] = {"rules": [], "default_reply": "Thanks for your message."}


# Meta-shaped webhook bodies.


def envelope(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "100200300400500",
                "changes": [
                    {
                        "field": field,
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": "15550001111",
                                "phone_number_id": NUMBER_ID,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def message_value(
    wamid: str, text: str, *, sender: str = LEAD, at: float | None = None
) -> dict[str, Any]:
    return {
        "contacts": [{"profile": {"name": "Ada"}, "wa_id": sender.lstrip("+")}],
        "messages": [
            {
                "from": sender.lstrip("+"),
                "id": wamid,
                "timestamp": str(int(time.time() if at is None else at)),
                "type": "text",
                "text": {"body": text},
            }
        ],
    }


def status_value(
    wamid: str, status: str, at: float, callback_data: str = ""
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(int(at)),
        "recipient_id": LEAD.lstrip("+"),
    }
    if callback_data:
        entry["biz_opaque_callback_data"] = callback_data
    return {"statuses": [entry]}


def raw(body: Any) -> bytes:
    """Compact JSON, non-ASCII escaped, as Meta sends it."""
    return json.dumps(body, separators=(",", ":")).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post(url: str, body: bytes, signature: str | None = None) -> tuple[int, str]:
    """POST `body` to the webhook, signed right unless `signature` is given."""
    headers = {"Content-Type": "application/json"}
    header = sign(body) if signature is None else signature
    if header:
        headers["X-Hub-Signature-256"] = header
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.text()


# The server, the stand-in and a one-lead campaign.


@pytest.fixture(scope="module")
def instant_models() -> Models:
    """No audio in a WhatsApp conversation: the instant speech stand-ins do."""
    return Models.instant(smart_turn=False)


@pytest.fixture
async def standin() -> AsyncIterator[WhatsAppStandin]:
    """The Cloud API; it posts no webhook until a test gives it the URL."""
    wa = WhatsAppStandin(
        access_token=TOKEN,
        app_secret=SECRET,
        phone_number_id=NUMBER_ID,
        templates={TEMPLATE: 1},
        contacts={LEAD: Contact(name="Ada")},  # silent: the test writes for her
        service_window_s=30.0,
        status_delay_s=0.02,
    )
    await wa.start()
    yield wa
    await wa.stop()


@pytest.fixture
def wa_settings(settings: Settings, standin: WhatsAppStandin) -> Settings:
    return replace(
        settings,
        whatsapp_api_base=standin.base_url,
        whatsapp_access_token=TOKEN,
        whatsapp_app_secret=SECRET,
        whatsapp_verify_token=VERIFY,
        whatsapp_service_window_s=30.0,
        whatsapp_sweep_s=0.1,
    )


@pytest.fixture
async def server(
    instant_models: Models, wa_settings: Settings, store: Store
) -> AsyncIterator[Harness]:
    async with run_harness(instant_models, wa_settings, SCRIPT, store=store) as h:
        assert h.services.whatsapp is not None
        yield h


def hook_url(server: Harness) -> str:
    return f"{server.url}/whatsapp/webhook"


async def one_lead_campaign(
    store: Store, *, reply_wait_minutes: float = 1.0, launch: bool = False
) -> tuple[Campaign, Lead]:
    agent = await store.create_agent(
        T,
        AgentInput(
            name="Clinic",
            system_prompt="You book visits for the clinic.",
            greeting="Hello {{name}}, the clinic would like to see you.",
        ),
    )
    campaign = await store.create_campaign(
        T,
        CampaignInput(
            name="Visits on WhatsApp",
            agent_id=agent.id,
            channel=WhatsAppChannel(
                business_account_id="100200300400500",
                phone_number_id=NUMBER_ID,
                template=WhatsAppTemplate(
                    name=TEMPLATE[0], language=TEMPLATE[1], variables=["name"]
                ),
                reply_wait_minutes=reply_wait_minutes,
            ),
            schedule=Schedule(
                days=["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                hours=[HourRange(start="00:00", end="24:00")],
                timezone=NY,
                pacing=Pacing(calls_per_minute=60, max_concurrent=1),
            ),
        ),
    )
    lead = Lead(
        id=new_id("lead"), campaign_id=campaign.id, phone=LEAD, name="Ada", timezone=NY
    )
    await store.add_leads(campaign, [lead])
    if launch:
        await store.transition(T, campaign.id, "launch")
    return campaign, lead


def sending(
    store: Store, settings: Settings, standin: WhatsAppStandin, server: Harness
) -> contextlib.AbstractAsyncContextManager[None]:
    """The dialer, sending templates through the stand-in."""
    return dialing(store, settings, standin.base_url, server.url, 5.0, whatsapp=True)


async def conversation(store: Store, lead: Lead) -> tuple[Lead, CallRecordModel]:
    """The lead as stored now, and its latest conversation.

    Found through the lead's list of calls (what the admin API reads), not
    `Lead.calls`: see `test_the_lead_links_its_open_conversation`.
    """
    current = await store.lead_by_id(lead.campaign_id, lead.id)
    records = await store.lead_calls(T, lead.campaign_id, lead.id)
    assert records, "the lead has no conversation"
    return current, records[0]


async def until_messaged(store: Store, lead: Lead) -> None:
    async def messaged() -> bool:
        current = await store.lead_by_id(lead.campaign_id, lead.id)
        records = await store.lead_calls(T, lead.campaign_id, lead.id)
        return current.status is LeadStatus.MESSAGED and any(
            m.kind == "template" for r in records for m in r.messages
        )

    await until_true(messaged, 10, "the template sent")


# The subscription handshake.


async def test_handshake_echoes_the_challenge_for_the_right_token(
    server: Harness,
) -> None:
    """GET with hub.mode=subscribe and the verify token answers hub.challenge."""
    query = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY,
        "hub.challenge": "1158201444",
    }
    async with (
        aiohttp.ClientSession() as http,
        http.get(hook_url(server), params=query) as response,
    ):
        assert response.status == 200
        assert await response.text() == "1158201444"


@pytest.mark.parametrize(
    "query",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
        {"hub.verify_token": VERIFY, "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
    ],
    ids=["wrong-token", "wrong-mode", "no-mode", "no-token"],
)
async def test_handshake_refuses_a_wrong_token_or_mode(
    server: Harness, query: dict[str, str]
) -> None:
    """A wrong or missing verify token, or another hub.mode, answers 403."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(hook_url(server), params=query) as response,
    ):
        assert response.status == 403
        assert "1" not in await response.text()


# Signatures and bodies.


async def test_unsigned_or_missigned_posts_are_refused_and_change_nothing(
    server: Harness, store: Store
) -> None:
    """A POST without the app secret's signature is 401 and its STOP is ignored."""
    await one_lead_campaign(store)
    body = raw(envelope(message_value("wamid.stop-1", "STOP")))
    pretty = json.dumps(json.loads(body), indent=2).encode()
    tampered = body.replace(b"STOP", b"Stop")
    digest = sign(body).removeprefix("sha256=")
    attempts = [
        (body, ""),  # no header at all
        (body, "sha256="),
        (body, sign(body, "another-secret")),
        (body, digest),  # no "sha256=" prefix
        (body, f"sha1={digest}"),
        (body, sign(pretty)),  # a re-serialised body's signature
        (tampered, sign(body)),  # the body changed after signing
    ]
    before = server.services.metrics.errors.value("bad_signature")
    for sent, header in attempts:
        status, _ = await post(hook_url(server), sent, header)
        assert status == 401, header
    assert server.services.metrics.errors.value("bad_signature") == before + len(
        attempts
    )
    assert await store.dnc_contains(T, [LEAD]) == [False]

    # The same body, signed right, is honoured: nothing above marked it seen.
    assert (await post(hook_url(server), body))[0] == 200
    assert await store.dnc_contains(T, [LEAD]) == [True]


@pytest.mark.parametrize(
    "body",
    [
        b"STOP",
        b"",
        b"\xff\xfe{}",
        b"[]",
        b'"entry"',
        b'{"object":"whatsapp_business_account"}',
        b'{"object":"whatsapp_business_account","entry":{}}',
    ],
    ids=["text", "empty", "not-utf8", "list", "string", "no-entry", "entry-object"],
)
async def test_signed_body_that_is_not_a_webhook_is_400(
    server: Harness, body: bytes
) -> None:
    """A signed body that is not JSON, or has no entry list, answers 400."""
    status, _ = await post(hook_url(server), body)
    assert status == 400


async def test_signed_webhook_without_messages_is_accepted(server: Harness) -> None:
    """Other change fields, and entries without changes, answer 200 and do nothing."""
    other = envelope({"event": "VERIFIED_ACCOUNT"}, field="account_update")
    bodies: list[dict[str, Any]] = [other, {"entry": []}, {"entry": [{"id": "1"}]}]
    for body in bodies:
        assert (await post(hook_url(server), raw(body)))[0] == 200


# Message handling, with the dialer's template opening a conversation.


async def test_a_redelivered_message_is_stored_and_answered_once(
    server: Harness, store: Store, standin: WhatsAppStandin, wa_settings: Settings
) -> None:
    """The same signed message posted twice is stored once and answered once."""
    assert server.services.whatsapp is not None
    url = hook_url(server)
    standin.webhook_url = url
    _campaign, lead = await one_lead_campaign(store, launch=True)
    async with sending(store, wa_settings, standin, server):
        await until_messaged(store, lead)
        await standin.wait_idle()
        # Ada writes; the stand-in keeps it (her window opens) but this test
        # posts the webhook itself, twice at once, as Meta may redeliver.
        standin.webhook_url = ""
        wamid = await standin.send_from_contact(LEAD, "Hello, who is this?")
        standin.webhook_url = url
        body = raw(envelope(message_value(wamid, "Hello, who is this?")))
        answers = await asyncio.gather(post(url, body), post(url, body))
        assert [status for status, _ in answers] == [200, 200]
        await server.services.whatsapp.idle()
        await standin.wait_idle()
        # A later redelivery, once everything settled, changes nothing either.
        assert (await post(url, body))[0] == 200
        await server.services.whatsapp.idle()
        await standin.wait_idle()
        current, record = await conversation(store, lead)

    incoming = [m for m in record.messages if m.direction == "in"]
    assert [(m.id, m.text) for m in incoming] == [(wamid, "Hello, who is this?")]
    assert [(t.speaker, t.text) for t in record.transcript] == [
        ("lead", "Hello, who is this?"),
        ("agent", "Thanks for your message."),
    ]
    assert [m.type for m in standin.sent_to(LEAD)] == ["template", "text"]
    assert standin.sent_to(LEAD)[1].text == "Thanks for your message."
    assert standin.violations() == []
    assert current.status is LeadStatus.IN_CONVERSATION
    assert record.ended_at is None


async def test_statuses_out_of_order_never_go_backwards(
    server: Harness, store: Store, standin: WhatsAppStandin, wa_settings: Settings
) -> None:
    """A "read" then a late "delivered" or "sent" leaves the message read."""
    url = hook_url(server)
    # The stand-in posts nothing here: the test does.
    _, lead = await one_lead_campaign(store, launch=True)
    async with sending(store, wa_settings, standin, server):
        await until_messaged(store, lead)
        [template] = standin.sent
        t0 = time.time()

        async def after(status: str, at: float) -> tuple[str, float | None]:
            value = status_value(template.wamid, status, at, template.callback_data)
            assert (await post(url, raw(envelope(value))))[0] == 200
            _, record = await conversation(store, lead)
            [message] = [m for m in record.messages if m.id == template.wamid]
            return message.status, message.status_at

        assert await after("sent", t0) == ("sent", float(int(t0)))
        assert await after("read", t0 + 2) == ("read", float(int(t0 + 2)))
        assert await after("delivered", t0 + 1) == ("read", float(int(t0 + 2)))
        assert await after("sent", t0 + 3) == ("read", float(int(t0 + 2)))
        assert await after("accepted", t0 + 4) == ("read", float(int(t0 + 2)))
        current, record = await conversation(store, lead)

    assert current.status is LeadStatus.MESSAGED
    assert record.ended_at is None
    assert [m.id for m in record.messages] == [template.wamid]


async def test_stop_after_the_conversation_closed_still_opts_out(
    server: Harness, store: Store, standin: WhatsAppStandin, wa_settings: Settings
) -> None:
    """A STOP with no open conversation puts the number on the do-not-call list."""
    assert server.services.whatsapp is not None
    url = hook_url(server)
    standin.webhook_url = url
    campaign, lead = await one_lead_campaign(
        store, reply_wait_minutes=0.01, launch=True
    )

    async def lapsed() -> bool:
        current = await store.lead_by_id(campaign.id, lead.id)
        return current.status is LeadStatus.NO_ANSWER

    async with sending(store, wa_settings, standin, server):
        await until_true(lapsed, 10, "the conversation lapsed")
        _, closed = await conversation(store, lead)
        assert closed.ended_at is not None and closed.end_reason == "lapsed"
        await standin.wait_idle()
        assert await store.dnc_contains(T, [LEAD]) == [False]

        body = raw(envelope(message_value("wamid.late-stop", "STOP")))
        assert (await post(url, body))[0] == 200
        assert await store.dnc_contains(T, [LEAD]) == [True]
        await server.services.whatsapp.idle()
        await standin.wait_idle()
        current, record = await conversation(store, lead)

    [late] = [m for m in record.messages if m.direction == "in"]
    assert (late.id, late.text) == ("wamid.late-stop", "STOP")
    assert "not answered" in late.error
    assert [m.type for m in standin.sent_to(LEAD)] == ["template"]  # no answer
    assert current.calls == [record.id]  # no new conversation opened


LATE_SCRIPT: dict[str, Any] = {
    "rules": [
        {
            "pattern": "not interested",
            "reply": "Understood, thank you. Goodbye!",
            "tool_calls": [
                {"name": "end_call", "arguments": {"outcome": "not_interested"}}
            ],
        }
    ],
    "default_reply": "Thanks for your message.",
}


async def test_a_late_reply_is_answered_and_decides_for_its_lead(
    instant_models: Models,
    wa_settings: Settings,
    store: Store,
    standin: WhatsAppStandin,
) -> None:
    """After the reply wait: a conversation of the lead's own, answered in time."""
    async with run_harness(
        instant_models, wa_settings, LATE_SCRIPT, store=store
    ) as server:
        assert server.services.whatsapp is not None
        standin.webhook_url = hook_url(server)
        campaign, lead = await one_lead_campaign(
            store, reply_wait_minutes=0.01, launch=True
        )

        async def lapsed() -> bool:
            current = await store.lead_by_id(campaign.id, lead.id)
            return current.status is LeadStatus.NO_ANSWER

        async with sending(store, wa_settings, standin, server):
            await until_true(lapsed, 10, "the conversation lapsed")
            await standin.wait_idle()
            await standin.send_from_contact(LEAD, "Sorry, I'm not interested.")

            async def decided() -> bool:
                current = await store.lead_by_id(campaign.id, lead.id)
                return current.status is LeadStatus.NOT_INTERESTED

            await until_true(decided, 10, "the late conversation's outcome")
            await server.services.whatsapp.idle()
            await standin.wait_idle()
            current, record = await conversation(store, lead)

    assert record.id.startswith("conv_") and record.outcome == "not_interested"
    assert [m.direction for m in record.messages] == ["in", "out"]
    assert [m.type for m in standin.sent_to(LEAD)] == ["template", "text"]
    assert standin.violations() == []
    assert current.next_attempt_at is None and current.attempts == 1
    assert len(current.calls) == 2


# parse_webhook, on Meta-shaped payloads.


def incoming(message: dict[str, Any]) -> IncomingMessage:
    [item] = parse_webhook(envelope({"messages": [message]}))
    assert isinstance(item, IncomingMessage)
    return item


def test_parse_a_text_message() -> None:
    """A text message gives its sender's digits, wamid, body and timestamp."""
    [item] = parse_webhook(envelope(message_value("wamid.A1", "Hi!", at=1700000000)))
    assert item == IncomingMessage(
        phone_number_id=NUMBER_ID,
        wa_id="12125550111",
        wamid="wamid.A1",
        text="Hi!",
        at=1700000000.0,
    )


def test_parse_a_quick_reply_button() -> None:
    """A template's quick-reply button gives the button's text."""
    item = incoming(
        {
            "from": "12125550111",
            "id": "wamid.B1",
            "timestamp": "1700000001",
            "type": "button",
            "button": {"payload": "YES_PAYLOAD", "text": "Yes, book me"},
            "context": {"from": "15550001111", "id": "wamid.T0"},
        }
    )
    assert (item.wamid, item.text) == ("wamid.B1", "Yes, book me")


@pytest.mark.parametrize(
    ("reply", "title"),
    [
        ({"type": "button_reply", "button_reply": {"id": "b1", "title": "Monday"}},
         "Monday"),
        ({"type": "list_reply",
          "list_reply": {"id": "r2", "title": "Tuesday", "description": "10:00"}},
         "Tuesday"),
    ],
    ids=["button", "list"],
)  # fmt: skip
def test_parse_an_interactive_reply(reply: dict[str, Any], title: str) -> None:
    """An interactive button or list reply gives the chosen title."""
    item = incoming(
        {
            "from": "12125550111",
            "id": "wamid.I1",
            "timestamp": "1700000002",
            "type": "interactive",
            "interactive": reply,
        }
    )
    assert item.text == title


def test_parse_media_and_unknown_kinds_are_named() -> None:
    """An image (or any other kind) is named in brackets for the transcript."""
    image = incoming(
        {
            "from": "12125550111",
            "id": "wamid.M1",
            "timestamp": "1700000003",
            "type": "image",
            "image": {"mime_type": "image/jpeg", "sha256": "abc", "id": "123"},
        }
    )
    assert image.text == "[image message]"
    untyped = incoming({"from": "12125550111", "id": "wamid.U1"})
    assert untyped.text == "[unknown message]"
    assert 0 < time.time() - untyped.at < 60  # no timestamp: now


def test_parse_statuses_with_errors_and_callback_data() -> None:
    """Statuses give their wamid, status, time, callback data and first error."""
    statuses = {
        "statuses": [
            {
                "id": "wamid.S1",
                "status": "delivered",
                "timestamp": "1700000010",
                "recipient_id": "12125550111",
                "biz_opaque_callback_data": "cmp_1:att_1",
                "conversation": {"id": "c1", "origin": {"type": "marketing"}},
                "pricing": {"billable": True, "category": "marketing"},
            },
            {
                "id": "wamid.S2",
                "status": "failed",
                "timestamp": "1700000011",
                "recipient_id": "12125550111",
                "errors": [
                    {
                        "code": 131026,
                        "title": "Message undeliverable",
                        "message": "Message undeliverable",
                        "error_data": {"details": "Message Undeliverable."},
                    }
                ],
            },
        ]
    }
    delivered, failed = parse_webhook(envelope(statuses))
    assert delivered == StatusUpdate(
        phone_number_id=NUMBER_ID,
        wamid="wamid.S1",
        status="delivered",
        at=1700000010.0,
        callback_data="cmp_1:att_1",
        error="",
    )
    assert isinstance(failed, StatusUpdate)
    assert (failed.status, failed.callback_data) == ("failed", "")
    assert failed.error == "131026 Message undeliverable"


def test_parse_keeps_order_and_skips_what_is_not_a_message() -> None:
    """Items come in order across entries; other fields and id-less items go."""
    payload = envelope(
        {
            "messages": [
                {"from": "12125550111", "type": "text", "text": {"body": "no id"}},
                {"from": "+12125550111", "id": "wamid.1", "type": "text",
                 "text": {"body": "one"}, "timestamp": "1700000000"},
            ],
            "statuses": [{"status": "read"}],
        }
    )  # fmt: skip
    payload["entry"].append(
        envelope({"event": "x"}, field="account_update")["entry"][0]
    )
    payload["entry"].append(envelope(status_value("wamid.0", "read", 1))["entry"][0])
    items = parse_webhook(payload)
    assert [type(i).__name__ for i in items] == ["IncomingMessage", "StatusUpdate"]
    assert isinstance(items[0], IncomingMessage) and items[0].wa_id == "12125550111"
    assert parse_webhook({"object": "whatsapp_business_account", "entry": []}) == []


@pytest.mark.parametrize(
    "payload", [None, [], "entry", {}, {"entry": None}, {"entry": {"changes": []}}]
)
def test_parse_refuses_what_is_not_a_webhook(payload: Any) -> None:
    """Anything without an entry list is a ValueError."""
    with pytest.raises(ValueError, match="no entry list"):
        parse_webhook(payload)


# signature_ok.


def test_signature_ok_accepts_the_app_secrets_hmac_only() -> None:
    """Only "sha256=" + HMAC-SHA256(app secret, exact body) is accepted."""
    body = raw(envelope(message_value("wamid.A1", "Hi!")))
    good = sign(body)
    assert signature_ok(SECRET, body, good)
    assert signature_ok(SECRET, body, "sha256=" + good[7:].upper())
    assert not signature_ok(SECRET, body + b" ", good)
    assert not signature_ok(SECRET, body, sign(body, "other"))
    assert not signature_ok(SECRET, body, good[7:])
    assert not signature_ok(SECRET, body, "sha1=" + good[7:])
    assert not signature_ok(SECRET, body, "")
    assert not signature_ok(SECRET, body, "sha256=")


def test_signature_ok_refuses_everything_without_a_secret() -> None:
    """With no app secret configured, no signature (not even an empty key's) holds."""
    body = b'{"entry":[]}'
    assert not signature_ok("", body, sign(body, ""))


# Races: a STOP during a close, the lead's link while a conversation is open.

SLOW_GOODBYE: dict[str, Any] = {
    "first_token_delay_s": 1.0,
    "rules": [
        {
            "pattern": "not interested",
            "reply": "Understood, goodbye.",
            "tool_calls": [
                {"name": "end_call", "arguments": {"outcome": "not_interested"}}
            ],
        }
    ],
    "default_reply": "Thanks for your message.",
}


async def test_stop_while_the_agent_closes_still_opts_out(
    instant_models: Models,
    wa_settings: Settings,
    store: Store,
    standin: WhatsAppStandin,
) -> None:
    """A STOP that arrives while the agent is ending the conversation still counts."""
    async with run_harness(
        instant_models, wa_settings, SLOW_GOODBYE, store=store
    ) as server:
        assert server.services.whatsapp is not None
        url = hook_url(server)
        standin.webhook_url = url
        _campaign, lead = await one_lead_campaign(store, launch=True)
        async with sending(store, wa_settings, standin, server):
            await until_messaged(store, lead)
            await standin.wait_idle()
            standin.webhook_url = ""
            first = await standin.send_from_contact(LEAD, "I'm not interested")
            stop = await standin.send_from_contact(LEAD, "STOP")
            standin.webhook_url = url
            body = raw(envelope(message_value(first, "I'm not interested")))
            assert (await post(url, body))[0] == 200
            await asyncio.sleep(0.3)  # the agent is writing its goodbye
            # Found open, this STOP waits for the agent, which ends the talk.
            body = raw(envelope(message_value(stop, "STOP")))
            assert (await post(url, body))[0] == 200
            await server.services.whatsapp.idle()
            await standin.wait_idle()
            _, record = await conversation(store, lead)
    assert record.end_reason == "agent_closed"
    assert [m.text for m in record.messages if m.direction == "in"][-1] == "STOP"
    assert await store.dnc_contains(T, [LEAD]) == [True]


async def test_the_lead_links_its_open_conversation(
    server: Harness, store: Store, standin: WhatsAppStandin, wa_settings: Settings
) -> None:
    """While its conversation is open, the lead's `calls` names it."""
    _campaign, lead = await one_lead_campaign(store, launch=True)
    async with sending(store, wa_settings, standin, server):
        await until_messaged(store, lead)
        current, record = await conversation(store, lead)
    assert current.calls == [record.id]
