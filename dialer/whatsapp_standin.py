"""A local WhatsApp Cloud API: Meta's Graph API messages edge, on loopback.

`WhatsAppStandin` answers `POST {base_url}/{phone_number_id}/messages` with
the status codes and JSON bodies Meta's Cloud API uses, and calls back the
way Meta does: signed webhooks for every status and for every message a
scripted contact writes. `dialer.whatsapp.WhatsAppClient` talks to it as it
would to `https://graph.facebook.com/<version>`.

A request is checked in this order, the first failure answering:

    token (401, 190)  ->  phone number ID in the path (400, 100)
    ->  throttle (400, 130429)  ->  body: messaging_product, recipient_type,
    to, type (400, 100)  ->  the template or the text (100, 131008,
    132000, 132001)  ->  200, the message accepted

- Only the template's `body` component is counted and read; other
  components (header, buttons) are ignored rather than checked.
- A text is accepted whatever the customer-service window says, as Meta
  accepts it; it then fails (131047) if the window was shut when it was
  accepted. The window is open for `service_window_s` after the contact
  last wrote, and it opens the moment the contact writes, before that
  message's webhook is posted: an agent answering from inside the webhook
  is inside the window.
- A throttled request makes no message: it is not in `sent`.

A message's life after it is accepted, each step `status_delay_s` after the
one before, each status its own webhook:

    sent -> delivered -> read         (read only if the contact reads)
    failed (131026)                   the contact is not on WhatsApp
    failed (131047)                   a text sent outside the window

Scripted replies: a contact with replies left writes the next one
`reply_after_s` after the "delivered" of the latest agent message it has
not answered; each new delivery restarts that wait, so agent messages in
quick succession get one reply. Each reply, the first included, answers
whatever was delivered before it, template or text. A contact without
replies left stays silent.

Webhooks go to `webhook_url` as read when each is posted (none when it is
empty). The body is compact JSON with non-ASCII escaped, as Meta sends it;
`X-Hub-Signature-256` is the HMAC-SHA256 of those exact bytes under the
app secret, so a receiver that checks a re-serialised body fails here too.
A POST is tried up to 3 times, 0.1 s then 0.2 s apart, on a connection
error, a timeout or any answer outside 2xx; every try is recorded in
`deliveries`. With `duplicate_webhooks` each body is posted twice, byte for
byte, as Meta's redeliveries are.

The ground truth is `sent`, `received`, `deliveries`, `sent_to(number)` and
`violations()`. Numbers in logs are masked; the token and secret are never
logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from dialer.carrier import mask_number

__all__ = ["Contact", "ReceivedMessage", "SentMessage", "WhatsAppStandin"]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
RETRY_DELAYS_S = (0.1, 0.2)  # between the 3 tries of one webhook POST
WEBHOOK_TIMEOUT_S = 10.0
MAX_TEXT_CHARS = 4096  # Meta's limit on a text body
MAX_CALLBACK_DATA_CHARS = 512  # Meta's limit on biz_opaque_callback_data
_DIGITS = re.compile(r"[0-9]{7,15}")
_NOBODY: Mapping[str, Contact] = MappingProxyType({})  # every number: Contact()

_UNDELIVERABLE: dict[str, Any] = {
    "code": 131026,
    "title": "Message undeliverable",
    "message": "Message undeliverable",
    "error_data": {"details": "Message Undeliverable."},
}
_REENGAGEMENT: dict[str, Any] = {
    "code": 131047,
    "title": "Re-engagement message",
    "message": "Re-engagement message",
    "error_data": {
        "details": "Message failed to send because more than 24 hours have "
        "passed since the customer last replied to this number."
    },
}


@dataclass(frozen=True)
class Contact:
    """How one scripted lead on the other side behaves."""

    name: str = ""
    # replies[0] answers the first delivered message (the opening template);
    # each later one answers the next batch of agent messages.
    replies: tuple[str, ...] = ()
    # Wait after the latest delivered agent message before replying.
    reply_after_s: float = 0.2
    # False: sends are accepted (200) and then fail with 131026.
    registered: bool = True
    reads: bool = True  # a "read" status follows "delivered"


@dataclass
class SentMessage:
    """Ground truth: one send the API accepted."""

    wamid: str
    to: str  # E.164 with '+'
    type: str  # "template" or "text"
    template: str  # template name, "" for text
    language: str  # template language code, "" for text
    variables: tuple[str, ...]  # template body parameter texts in order
    text: str  # text body, "" for templates
    at: float  # time.time() when accepted
    in_window: bool  # texts: the window was open when accepted; templates: True
    callback_data: str  # biz_opaque_callback_data, "" if none
    statuses: list[str] = field(default_factory=list)  # sent for it, in order


@dataclass
class ReceivedMessage:
    """Ground truth: one message a contact sent."""

    wamid: str
    from_: str  # E.164 with '+'
    text: str
    at: float  # time.time() when written


@dataclass
class _Thread:
    """What the stand-in keeps about one contact between messages."""

    contact: Contact
    last_wrote_at: float | None = None  # time.time() of its latest message
    replies_used: int = 0
    replier: asyncio.Task[None] | None = None  # the pending reply, if any
    # category -> (conversation id, time.time() it opened)
    conversations: dict[str, tuple[str, float]] = field(default_factory=dict)


class _ApiError(Exception):
    """A refusal, as the Graph API words it."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        details: str | None,
        kind: str = "OAuthException",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.kind = kind

    def response(self) -> web.Response:
        error: dict[str, Any] = {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
        }
        if self.details is not None:
            error["error_data"] = {
                "messaging_product": "whatsapp",
                "details": self.details,
            }
        error["fbtrace_id"] = _trace_id()
        return web.json_response({"error": error}, status=self.status)


def _required(name: str) -> _ApiError:
    message = f"(#100) The parameter {name} is required."
    return _ApiError(400, 100, message, message[7:])


def _invalid(details: str) -> _ApiError:
    return _ApiError(400, 100, "(#100) Invalid parameter", details)


class WhatsAppStandin:
    """Meta's Cloud API for one business phone number, on a loopback socket."""

    def __init__(
        self,
        *,
        access_token: str,
        app_secret: str,
        phone_number_id: str,
        business_account_id: str = "100200300400500",
        display_phone_number: str = "15550001111",
        templates: Mapping[tuple[str, str], int] = {},
        contacts: Mapping[str, Contact] | Callable[[str], Contact] = _NOBODY,
        webhook_url: str = "",
        service_window_s: float = 86_400.0,
        duplicate_webhooks: bool = False,
        status_delay_s: float = 0.05,
        version: str = "v21.0",
    ) -> None:
        self.webhook_url = webhook_url
        self.sent: list[SentMessage] = []
        self.received: list[ReceivedMessage] = []
        # (kind, HTTP status or None) per webhook POST try.
        self.deliveries: list[tuple[str, int | None]] = []
        self._access_token = access_token
        self._app_secret = app_secret.encode()
        self._phone_number_id = phone_number_id
        self._business_account_id = business_account_id
        self._display_phone_number = display_phone_number
        self._templates = dict(templates)
        self._contacts = contacts
        self._service_window_s = service_window_s
        self._duplicate_webhooks = duplicate_webhooks
        self._status_delay_s = status_delay_s
        self._version = version
        self._threads: dict[str, _Thread] = {}
        self._throttled = 0
        self._base_url = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # Lifecycle.

    async def __aenter__(self) -> WhatsAppStandin:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(
            f"/{self._version}/{{phone_number_id}}/messages", self._messages
        )
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}/{self._version}"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop serving, cancel every pending status, reply and webhook."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A status sequence cancelled mid-way may still have spawned a reply.
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>/<version>`, once started."""
        return self._base_url

    async def wait_idle(self, limit_s: float = 10.0) -> None:
        """Wait until no status, reply or webhook is pending."""
        deadline = time.monotonic() + limit_s
        while self._tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"WhatsApp stand-in still busy after {limit_s} s")
            await asyncio.sleep(0.01)

    # The ground truth, and the test's levers.

    def sent_to(self, number: str) -> list[SentMessage]:
        """Every accepted send to `number` (with or without '+'), oldest first."""
        wanted = "+" + number.lstrip("+")
        return [m for m in self.sent if m.to == wanted]

    def violations(self) -> list[SentMessage]:
        """Texts accepted while the contact's service window was shut."""
        return [m for m in self.sent if m.type == "text" and not m.in_window]

    def throttle_next(self, n: int) -> None:
        """Refuse the next `n` send requests with 130429 (replaces any left)."""
        self._throttled = max(0, n)

    async def send_from_contact(self, number: str, text: str) -> str:
        """The contact writes `text` now; returns its wamid once posted."""
        number = "+" + number.lstrip("+")
        thread = self._thread(number)
        if not thread.contact.registered:
            raise ValueError("an unregistered contact has no WhatsApp to write from")
        return await self._contact_writes(number, thread, text)

    async def verify_webhook(
        self, url: str, verify_token: str, challenge: str = "1158201444"
    ) -> tuple[int, str]:
        """Meta's subscription handshake against `url`: (HTTP status, body)."""
        query = {
            "hub.mode": "subscribe",
            "hub.verify_token": verify_token,
            "hub.challenge": challenge,
        }
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        # Its own session: the handshake is done before or without start().
        async with (
            aiohttp.ClientSession() as session,
            session.get(URL(url).update_query(query), timeout=timeout) as response,
        ):
            return response.status, await response.text()

    # REST: the messages edge.

    async def _messages(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self._accept(request))
        except _ApiError as error:
            log.debug("send refused: HTTP %s, code %s", error.status, error.code)
            return error.response()

    async def _accept(self, request: web.Request) -> dict[str, Any]:
        self._authorize(request)
        path_id = request.match_info["phone_number_id"]
        if path_id != self._phone_number_id:
            unknown = (
                f"Unsupported post request. Object with ID '{path_id}' does not exist"
            )
            raise _ApiError(400, 100, unknown, unknown, "GraphMethodException")
        if self._throttled > 0:
            self._throttled -= 1
            raise _ApiError(
                400,
                130429,
                "(#130429) Rate limit hit",
                "Cloud API message throughput has been reached.",
            )
        try:
            body = await request.json()
        except ValueError:
            raise _invalid("The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _invalid("The request body must be a JSON object")
        if body.get("messaging_product") != "whatsapp":
            raise _required("messaging_product")
        if body.get("recipient_type", "individual") != "individual":
            raise _invalid("recipient_type must be individual")
        given = body.get("to")
        digits = given[1:] if isinstance(given, str) and given[:1] == "+" else given
        if not isinstance(digits, str) or not _DIGITS.fullmatch(digits):
            raise _invalid("Invalid phone number")
        kind = body.get("type")
        template, language, text = "", "", ""
        variables: tuple[str, ...] = ()
        if kind == "template":
            template, language, variables = self._template(body.get("template"))
        elif kind == "text":
            text = _text(body.get("text"))
        else:
            raise _invalid(f"Param type must be one of template, text - got {kind!r}")
        callback_data = body.get("biz_opaque_callback_data", "")
        if not isinstance(callback_data, str):
            raise _invalid("biz_opaque_callback_data must be a string")
        if len(callback_data) > MAX_CALLBACK_DATA_CHARS:
            raise _invalid("biz_opaque_callback_data is longer than 512 characters")

        number = "+" + digits
        thread = self._thread(number)
        now = time.time()
        message = SentMessage(
            wamid=_wamid(digits),
            to=number,
            type=kind,
            template=template,
            language=language,
            variables=variables,
            text=text,
            at=now,
            in_window=kind == "template" or self._window_open(thread, now),
            callback_data=callback_data,
        )
        self.sent.append(message)
        log.debug("%s %s to %s accepted", kind, message.wamid, mask_number(number))
        self._spawn(self._progress(message, thread))
        accepted: dict[str, Any] = {"id": message.wamid}
        if kind == "template":
            accepted["message_status"] = "accepted"
        return {
            "messaging_product": "whatsapp",
            "contacts": [{"input": given, "wa_id": digits}],
            "messages": [accepted],
        }

    def _authorize(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            # Graph also takes the token as a query parameter.
            token = request.query.get("access_token", "")
        if not hmac.compare_digest(token.strip(), self._access_token):
            raise _ApiError(
                401,
                190,
                "Invalid OAuth access token - Cannot parse access token",
                None,
            )

    def _template(self, template: Any) -> tuple[str, str, tuple[str, ...]]:
        """The template's name, language and body variables, or the refusal."""
        if not isinstance(template, dict):
            raise _required("template")
        name = template.get("name")
        if not isinstance(name, str) or not name:
            raise _required("template['name']")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(code, str) or not code:
            raise _required("template['language']")
        if (name, code) not in self._templates:
            raise _ApiError(
                400,
                132001,
                "(#132001) Template name does not exist in the translation",
                f"template name ({name}) does not exist in {code}",
            )
        components = template.get("components", [])
        if not isinstance(components, list):
            raise _invalid("components must be a list")
        variables: list[str] = []
        for component in components:
            if not isinstance(component, dict):
                raise _invalid("each component must be an object")
            if str(component.get("type", "")).lower() != "body":
                continue
            parameters = component.get("parameters", [])
            if not isinstance(parameters, list):
                raise _invalid("parameters must be a list")
            for parameter in parameters:
                value = parameter.get("text") if isinstance(parameter, dict) else None
                # An empty variable is refused as missing, as Meta does: a
                # lead without a first name must not go out as "Hi ,".
                if not isinstance(value, str) or not value.strip():
                    raise _ApiError(
                        400,
                        131008,
                        "(#131008) Required parameter is missing",
                        "Parameter of type text is missing text value",
                    )
                variables.append(value)
        expected = self._templates[(name, code)]
        if len(variables) != expected:
            raise _ApiError(
                400,
                132000,
                "(#132000) Number of parameters does not match the expected "
                "number of params",
                f"body: number of localizable_params ({len(variables)}) does "
                f"not match the expected number of params ({expected})",
            )
        return name, code, tuple(variables)

    # Contacts.

    def _thread(self, number: str) -> _Thread:
        thread = self._threads.get(number)
        if thread is None:
            # A callable script is asked once per number, so a contact
            # behaves the same way for the whole run.
            if isinstance(self._contacts, Mapping):
                contact = self._contacts.get(number, Contact())
            else:
                contact = self._contacts(number)
            thread = self._threads[number] = _Thread(contact)
        return thread

    def _window_open(self, thread: _Thread, now: float) -> bool:
        wrote = thread.last_wrote_at
        return wrote is not None and now - wrote < self._service_window_s

    async def _contact_writes(self, number: str, thread: _Thread, text: str) -> str:
        now = time.time()
        wamid = _wamid(number[1:])
        # Recorded before the webhook goes: the window is open by the time
        # the agent can answer.
        thread.last_wrote_at = now
        self.received.append(ReceivedMessage(wamid, number, text, now))
        log.debug("%s writes %s", mask_number(number), wamid)
        value = {
            "contacts": [
                {"profile": {"name": thread.contact.name}, "wa_id": number[1:]}
            ],
            "messages": [
                {
                    "from": number[1:],
                    "id": wamid,
                    "timestamp": str(int(now)),
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
        await self._webhook("messages", value)
        return wamid

    def _delivered(self, number: str, thread: _Thread) -> None:
        """Restart the contact's reply wait, if it has anything left to say."""
        if thread.replies_used >= len(thread.contact.replies):
            return
        # A reply still waiting is only asleep (nothing posted or consumed
        # yet), so it is safe to cancel and wait afresh from this delivery.
        if thread.replier is not None:
            thread.replier.cancel()
        thread.replier = self._spawn(self._reply(number, thread))

    async def _reply(self, number: str, thread: _Thread) -> None:
        await asyncio.sleep(thread.contact.reply_after_s)
        # From here the reply is committed: no later delivery cancels it, and
        # one arriving meanwhile waits for the next reply.
        thread.replier = None
        if thread.replies_used >= len(thread.contact.replies):
            return
        text = thread.contact.replies[thread.replies_used]
        thread.replies_used += 1
        await self._contact_writes(number, thread, text)

    # Statuses.

    async def _progress(self, message: SentMessage, thread: _Thread) -> None:
        if not thread.contact.registered:
            failure: dict[str, Any] | None = _UNDELIVERABLE
        elif not message.in_window:
            failure = _REENGAGEMENT
        else:
            failure = None
        await asyncio.sleep(self._status_delay_s)
        if failure is not None:
            await self._status(message, "failed", failure)
            return
        await self._status(message, "sent")
        await asyncio.sleep(self._status_delay_s)
        await self._status(message, "delivered")
        self._delivered(message.to, thread)
        if thread.contact.reads:
            await asyncio.sleep(self._status_delay_s)
            await self._status(message, "read")

    async def _status(
        self, message: SentMessage, status: str, error: dict[str, Any] | None = None
    ) -> None:
        now = time.time()
        entry: dict[str, Any] = {
            "id": message.wamid,
            "status": status,
            "timestamp": str(int(now)),
            "recipient_id": message.to[1:],
        }
        if message.callback_data:
            entry["biz_opaque_callback_data"] = message.callback_data
        if status in ("sent", "delivered"):
            category = "marketing" if message.type == "template" else "service"
            entry["conversation"] = {
                "id": self._conversation(message.to, category, now),
                "origin": {"type": category},
            }
            entry["pricing"] = {
                "billable": True,
                "pricing_model": "CBP",
                "category": category,
            }
        if error is not None:
            entry["errors"] = [error]
        message.statuses.append(status)
        log.debug("%s %s", message.wamid, status)
        await self._webhook("statuses", {"statuses": [entry]})

    def _conversation(self, number: str, category: str, now: float) -> str:
        # One conversation per contact and category until it expires; its
        # length follows the window so shortened runs stay consistent.
        conversations = self._thread(number).conversations
        current = conversations.get(category)
        if current is None or now - current[1] >= self._service_window_s:
            current = conversations[category] = (secrets.token_hex(16), now)
        return current[0]

    # Webhooks.

    async def _webhook(self, kind: str, value: dict[str, Any]) -> None:
        url = self.webhook_url
        if not url:
            log.debug("no webhook URL: %s webhook not sent", kind)
            return
        envelope = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": self._business_account_id,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": self._display_phone_number,
                                    "phone_number_id": self._phone_number_id,
                                },
                                **value,
                            },
                        }
                    ],
                }
            ],
        }
        raw = json.dumps(envelope, separators=(",", ":")).encode()
        digest = hmac.new(self._app_secret, raw, hashlib.sha256).hexdigest()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: f"sha256={digest}",
            "User-Agent": "facebookexternalua",
        }
        for _ in range(2 if self._duplicate_webhooks else 1):
            await self._post(url, kind, raw, headers)

    async def _post(
        self, url: str, kind: str, raw: bytes, headers: dict[str, str]
    ) -> None:
        if self._session is None:
            raise RuntimeError("the WhatsApp stand-in is not started")
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            if attempt:
                await asyncio.sleep(RETRY_DELAYS_S[attempt - 1])
            status: int | None = None
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._session.post(
                    url, data=raw, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    status = response.status
            self.deliveries.append((kind, status))
            if status is not None and 200 <= status < 300:
                return
        log.debug("%s webhook given up after %s tries", kind, attempt + 1)

    # Tasks.

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("WhatsApp stand-in task failed", exc_info=task.exception())


def _text(text: Any) -> str:
    """The text message's body, or the refusal."""
    body = text.get("body") if isinstance(text, dict) else None
    if not isinstance(body, str) or not body:
        raise _required("text['body']")
    if len(body) > MAX_TEXT_CHARS:
        limit = f"Param text['body'] must be at most {MAX_TEXT_CHARS} characters long."
        raise _ApiError(400, 100, f"(#100) {limit}", limit)
    return body


def _wamid(digits: str) -> str:
    # Shaped like Meta's (base64 of a small record holding the number, hence
    # "HBgL..." for 11 digits): long, with '+', '/' and '=' possible, so a
    # client that assumes a short or URL-safe ID is caught here.
    record = b"\x1c\x18" + bytes([len(digits)]) + digits.encode()
    return "wamid." + base64.b64encode(record + secrets.token_bytes(20)).decode()


def _trace_id() -> str:
    return "A" + secrets.token_urlsafe(16)[:22]
