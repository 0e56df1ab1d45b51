"""WhatsApp's webhooks on the media server: what Meta sends, checked and read.

    GET  /whatsapp/webhook   Meta's subscription handshake (hub.verify_token)
    POST /whatsapp/webhook   messages and statuses, signed X-Hub-Signature-256

A POST whose `X-Hub-Signature-256` is not the HMAC-SHA256 of its raw body
under the app secret is refused (401) before anything is read from it; a
signed body that is not a WhatsApp webhook gets 400, whatever its shape.
What the items mean for conversations is `voice.whatsapp`'s part.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = [
    "SIGNATURE_HEADER",
    "IncomingMessage",
    "StatusUpdate",
    "parse_webhook",
    "signature_ok",
    "verify_subscription",
    "webhook",
]

SIGNATURE_HEADER = "X-Hub-Signature-256"


# The webhook's content.


@dataclass(frozen=True)
class IncomingMessage:
    phone_number_id: str
    wa_id: str  # the contact, digits only
    wamid: str
    text: str
    at: float


@dataclass(frozen=True)
class StatusUpdate:
    phone_number_id: str
    wamid: str
    status: str
    at: float
    callback_data: str
    error: str


def signature_ok(app_secret: str, body: bytes, header: str) -> bool:
    """Whether `header` is "sha256=<hex>" of `body` under `app_secret`."""
    if not app_secret or not header.startswith("sha256="):
        return False
    expected = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256=") :].strip().lower())


def _when(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return time.time()


def _obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: a body's shape is
    not trusted, even signed."""
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _message_text(message: dict[str, Any]) -> str:
    """The words of a message; other kinds are named, for the transcript."""
    kind = str(message.get("type") or "")
    if kind == "text":
        return str(_obj(message.get("text")).get("body") or "")
    if kind == "button":
        return str(_obj(message.get("button")).get("text") or "")
    if kind == "interactive":
        reply = _obj(message.get("interactive"))
        chosen = _obj(reply.get("button_reply") or reply.get("list_reply"))
        return str(chosen.get("title") or "")
    return f"[{kind or 'unknown'} message]"


def _status_error(status: dict[str, Any]) -> str:
    errors = status.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], dict):
        return ""
    first = errors[0]
    return f"{first.get('code', '')} {first.get('title', '')}".strip()[:200]


def parse_webhook(payload: Any) -> list[IncomingMessage | StatusUpdate]:
    """The messages and statuses in one webhook body; other changes are skipped.

    Raises ValueError for a body that is not a WhatsApp webhook at all.
    """
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise ValueError("not a WhatsApp webhook: no entry list")
    items: list[IncomingMessage | StatusUpdate] = []
    for entry in payload["entry"]:
        for change in _items(_obj(entry).get("changes")):
            if _obj(change).get("field") != "messages":
                continue
            value = _obj(change.get("value"))
            number_id = str(_obj(value.get("metadata")).get("phone_number_id", ""))
            for message in _items(value.get("messages")):
                if not isinstance(message, dict) or not message.get("id"):
                    continue
                items.append(
                    IncomingMessage(
                        phone_number_id=number_id,
                        wa_id=str(message.get("from", "")).lstrip("+"),
                        wamid=str(message["id"]),
                        text=_message_text(message)[:4096],
                        at=_when(message.get("timestamp")),
                    )
                )
            for status in _items(value.get("statuses")):
                if not isinstance(status, dict) or not status.get("id"):
                    continue
                items.append(
                    StatusUpdate(
                        phone_number_id=number_id,
                        wamid=str(status["id"]),
                        status=str(status.get("status", "")),
                        at=_when(status.get("timestamp")),
                        callback_data=str(status.get("biz_opaque_callback_data", "")),
                        error=_status_error(status),
                    )
                )
    return items


# The routes.


async def verify_subscription(request: web.Request) -> web.Response:
    """Meta's handshake: echo `hub.challenge` when the verify token matches."""
    from voice.server import SERVICES

    settings = request.app[SERVICES].settings
    query = request.query
    token = query.get("hub.verify_token", "")
    expected = settings.whatsapp_verify_token
    if (
        query.get("hub.mode") != "subscribe"
        or not expected
        or not hmac.compare_digest(token.encode(), expected.encode())
    ):
        raise web.HTTPForbidden(text="hub.verify_token does not match")
    return web.Response(text=query.get("hub.challenge", ""))


async def webhook(request: web.Request) -> web.Response:
    """Messages and statuses from Meta, checked against the app secret first."""
    from voice.server import SERVICES

    services = request.app[SERVICES]
    body = await request.read()
    header = request.headers.get(SIGNATURE_HEADER, "")
    if not signature_ok(services.settings.whatsapp_app_secret, body, header):
        services.metrics.errors.inc(1.0, "bad_signature")
        raise web.HTTPUnauthorized(text=f"invalid {SIGNATURE_HEADER}")
    try:
        items = parse_webhook(json.loads(body))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"not a WhatsApp webhook: {exc}") from exc
    whatsapp = services.whatsapp
    if whatsapp is None:
        raise web.HTTPServiceUnavailable(text="WhatsApp is not configured here")
    await whatsapp.handle(items)
    return web.Response(status=200)
