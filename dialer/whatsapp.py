"""Sending WhatsApp messages through Meta's Cloud API (the Graph API).

One request, two kinds of message, for one business phone number:

    POST {base}/{phone_number_id}/messages       Authorization: Bearer <token>
        template  the campaign's approved opening, variables from lead fields
        text      the agent's answer, only inside the customer-service window

Every message carries `biz_opaque_callback_data` (the attempt's
"campaign:attempt"), which Meta repeats on each status webhook: a send whose
answer was lost is still matched to its attempt when its statuses arrive.

Errors, one class, `MessageError`, with a `kind` the dialer acts on:

    bad_number      the number is not a valid WhatsApp recipient
    template        the template is missing, not approved, paused or its
                    variables do not match: every lead would fail alike
    unauthorized    the access token was refused: the same for every lead
    rate_limited    Meta's throughput limits; retried here with backoff first
    rejected        any other refusal of this one message
    unknown         no answer (timeout, connection lost, 5xx): the message
                    may have gone out, so it is never sent again blindly

`placed` says whether a message may exist: False for every refusal, None for
`unknown`. Numbers appear in logs masked; the token appears nowhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from dialer.carrier import mask_number, mask_numbers_in

__all__ = [
    "GRAPH_API_BASE",
    "MessageError",
    "SentMessage",
    "WhatsAppAccount",
    "WhatsAppClient",
]

log = logging.getLogger(__name__)

GRAPH_API_BASE = "https://graph.facebook.com/v21.0"

# Graph API error codes, by what they mean for the attempt.
_RATE_LIMITED = frozenset({4, 80007, 130429, 131048, 131056})
_BAD_NUMBER = frozenset({131009, 131026, 131030, 133010})
_TEMPLATE = frozenset({132000, 132001, 132005, 132007, 132012, 132015, 132016})
_UNAUTHORIZED = frozenset({0, 190, 10, 200})
_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")


@dataclass(frozen=True)
class SentMessage:
    """The API's answer to an accepted message."""

    wamid: str
    wa_id: str  # the recipient as WhatsApp knows it (digits)


class MessageError(Exception):
    """A message was not accepted; see the module docstring for `kind`."""

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        placed: bool | None,
        status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.placed = placed
        self.status = status
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.kind == "rate_limited"


def _digits(number: str) -> str:
    return number.lstrip("+")


def _kind(status: int, code: int | None, details: str) -> str:
    if code in _RATE_LIMITED or status == 429:
        return "rate_limited"
    if code in _TEMPLATE:
        return "template"
    if status == 401 or code in _UNAUTHORIZED:
        return "unauthorized"
    if code in _BAD_NUMBER or (code == 100 and "phone number" in details.lower()):
        return "bad_number"
    return "rejected"


class WhatsAppClient:
    """Messages from one business phone number, with that account's token."""

    def __init__(
        self,
        access_token: str,
        phone_number_id: str,
        *,
        base_url: str = GRAPH_API_BASE,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.phone_number_id = phone_number_id
        self._url = f"{base_url.rstrip('/')}/{phone_number_id}/messages"
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "Content-Type": "application/json",
        }
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries = retries
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"WhatsAppClient({self.phone_number_id!r})"

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def send_template(
        self,
        to: str,
        name: str,
        language: str,
        variables: Sequence[str],
        *,
        callback_data: str = "",
    ) -> SentMessage:
        template: dict[str, Any] = {"name": name, "language": {"code": language}}
        if variables:
            template["components"] = [
                {
                    "type": "body",
                    "parameters": [{"type": "text", "text": v} for v in variables],
                }
            ]
        body = self._body(to, "template", callback_data)
        body["template"] = template
        return await self._send(body, f"template {name} to {mask_number(to)}")

    async def send_text(
        self, to: str, text: str, *, callback_data: str = ""
    ) -> SentMessage:
        body = self._body(to, "text", callback_data)
        body["text"] = {"preview_url": False, "body": text}
        return await self._send(body, f"text to {mask_number(to)}")

    @staticmethod
    def _body(to: str, kind: str, callback_data: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": _digits(to),
            "type": kind,
        }
        if callback_data:
            body["biz_opaque_callback_data"] = callback_data[:512]
        return body

    async def _send(self, body: dict[str, Any], what: str) -> SentMessage:
        # Only a refusal that certainly created no message is retried: a rate
        # limit. Anything without an answer may have been sent.
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return await self._post(body, what)
            except MessageError as exc:
                if not exc.retryable or attempt == self.retries:
                    raise
                log.info("%s: rate limited; trying again in %.1f s", what, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _post(self, body: dict[str, Any], what: str) -> SentMessage:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url, json=body, headers=self._headers, timeout=self._timeout
            ) as response:
                status = response.status
                raw = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise MessageError(
                f"{what}: no answer ({type(exc).__name__})", kind="unknown", placed=None
            ) from exc
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {}
        if status >= 500:
            raise MessageError(
                f"{what}: HTTP {status}", kind="unknown", placed=None, status=status
            )
        if status >= 300:
            raise _error(what, status, payload)
        messages = payload.get("messages") if isinstance(payload, dict) else None
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if not isinstance(wamid, str) or not wamid:
            raise MessageError(
                f"{what}: HTTP {status} without a message id",
                kind="unknown",
                placed=None,
                status=status,
            )
        contacts = payload.get("contacts") or [{}]
        wa_id = contacts[0].get("wa_id", "") if isinstance(contacts[0], dict) else ""
        log.debug("%s: accepted as %s", what, wamid)
        return SentMessage(wamid=wamid, wa_id=str(wa_id))


def _error(what: str, status: int, payload: Any) -> MessageError:
    error = payload.get("error") if isinstance(payload, dict) else None
    error = error if isinstance(error, dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    data = error.get("error_data")
    details = str(data.get("details", "")) if isinstance(data, dict) else ""
    # "(#132001) Template name ...": the code is kept apart, the rest masked.
    message = _CODE_PREFIX.sub("", str(error.get("message") or f"HTTP {status}"))
    text = mask_numbers_in(message)[:300]
    if details:
        text = f"{text} ({mask_numbers_in(details)[:200]})"
    kind = _kind(status, code, details)
    return MessageError(
        f"{what}: {kind} (code {code}): {text}",
        kind=kind,
        placed=False,
        status=status,
        code=code,
    )


class WhatsAppAccount:
    """One Meta app's token, and a client per business phone number."""

    def __init__(
        self,
        access_token: str,
        *,
        base_url: str = GRAPH_API_BASE,
        session: aiohttp.ClientSession | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self._token = access_token
        self.base_url = base_url
        self._session = session
        self._owns_session = session is None
        self._retries = retries
        self._backoff_s = backoff_s
        self._clients: dict[str, WhatsAppClient] = {}

    def __repr__(self) -> str:
        return f"WhatsAppAccount(base_url={self.base_url!r})"

    @property
    def configured(self) -> bool:
        return bool(self._token)

    def client(self, phone_number_id: str) -> WhatsAppClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        client = self._clients.get(phone_number_id)
        if client is None:
            client = WhatsAppClient(
                self._token,
                phone_number_id,
                base_url=self.base_url,
                session=self._session,
                retries=self._retries,
                backoff_s=self._backoff_s,
            )
            self._clients[phone_number_id] = client
        return client

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._clients.clear()
