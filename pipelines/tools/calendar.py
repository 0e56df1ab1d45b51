"""Meetings for the agent's `book_meeting` tool, booked in Google Calendar.

`book` asks a `Calendar` whether a slot is free and, if it is, inserts the
event. `GoogleCalendar` speaks Calendar API v3 over aiohttp; it authenticates
with `ServiceAccountCredentials` (a signed JWT assertion, optionally on behalf
of a Workspace user) or `RefreshTokenCredentials` (a user's OAuth grant).

Booking is idempotent per `request_id`: the event id is derived from it, so an
insert retried after a lost reply is answered 409 by Google and resolved by
fetching the event that the first attempt created. Transport errors and 5xx
answers are retried a few times for that reason; a timeout is not, because it
has already spent the caller's patience on a live call.

Errors, all raised with the underlying cause chained:

CalendarError (PipelineError)
├── CalendarAuthError     the credentials were refused, or the calendar is not
│                         shared with them
├── SlotUnavailable       the requested slot overlaps a busy interval
└── CalendarUnavailable   no connection, a timeout, a 5xx or a rate limit

Access tokens, private keys, client secrets and attendee addresses never
reach a log line; calendar ids are logged masked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pipelines.errors import PipelineError

__all__ = [
    "CALENDAR_SCOPE",
    "GOOGLE_TOKEN_URI",
    "Calendar",
    "CalendarAuthError",
    "CalendarError",
    "CalendarEvent",
    "CalendarUnavailable",
    "Credentials",
    "GoogleCalendar",
    "RefreshTokenCredentials",
    "ServiceAccountCredentials",
    "SlotUnavailable",
    "book",
    "event_id_for",
    "overlapping",
]

log = logging.getLogger(__name__)

CALENDAR_SCOPE = "https://www.googleapis.com/auth/calendar"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
GOOGLE_API_BASE = "https://www.googleapis.com/calendar/v3"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_ASSERTION_LIFETIME_S = 3600  # the most Google accepts
_EXPIRY_MARGIN_S = 60.0  # refresh this long before a token expires
_RETRY_BACKOFF_S = 0.2  # doubled after each failed attempt
_RATE_LIMITED = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})


class CalendarError(PipelineError):
    """Root of every error raised by the calendar tools."""


class CalendarAuthError(CalendarError):
    """The credentials were refused, or the calendar is not shared with them."""


class SlotUnavailable(CalendarError):
    """The requested slot overlaps a busy interval; `busy` lists the overlaps."""

    def __init__(
        self, message: str, busy: Iterable[tuple[datetime, datetime]] = ()
    ) -> None:
        super().__init__(message)
        self.busy = list(busy)


class CalendarUnavailable(CalendarError):
    """No usable answer: connection, timeout, 5xx or rate limit."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class CalendarEvent:
    """A booked meeting as the calendar stores it."""

    id: str
    html_link: str
    start: datetime
    end: datetime


class Calendar(Protocol):
    """What `book` needs from a calendar backend (Google today, CalDAV later)."""

    async def busy(
        self, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime]]: ...

    async def create_event(
        self,
        *,
        start: datetime,
        end: datetime,
        title: str,
        attendee_email: str | None,
        description: str = "",
        time_zone: str,
        request_id: str,
    ) -> CalendarEvent: ...

    async def find_event(self, request_id: str) -> CalendarEvent | None: ...


class Credentials(Protocol):
    """A source of OAuth access tokens for the Calendar API."""

    async def token(self) -> str: ...

    def invalidate(self) -> None: ...


# Pure helpers: no I/O, usable from any backend.


def event_id_for(request_id: str) -> str:
    """The event id for a booking request: base32hex of its SHA-256, 52 chars.

    Google accepts client-chosen ids of 5-1024 characters from a-v and 0-9.
    """
    digest = hashlib.sha256(request_id.encode()).digest()
    return base64.b32hexencode(digest).decode().rstrip("=").lower()


def overlapping(
    start: datetime, end: datetime, busy: Iterable[tuple[datetime, datetime]]
) -> list[tuple[datetime, datetime]]:
    """The busy intervals that overlap [start, end); touching ends do not."""
    return [(b0, b1) for b0, b1 in busy if b0 < end and start < b1]


def _require_aware(**values: datetime) -> None:
    for name, value in values.items():
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be timezone-aware, got {value!r}")


def _masked(calendar_id: str) -> str:
    user, at, domain = calendar_id.partition("@")
    return f"{user[:2]}***{at}{domain}"


def _rfc3339(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return parsed


def _event_from(resource: Any) -> CalendarEvent:
    try:
        return CalendarEvent(
            id=str(resource["id"]),
            html_link=str(resource.get("htmlLink", "")),
            start=_rfc3339(resource["start"]["dateTime"]),
            end=_rfc3339(resource["end"]["dateTime"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CalendarError(f"malformed event resource: {exc!r}") from exc


def _same_slot(event: CalendarEvent, start: datetime, end: datetime) -> bool:
    # Google keeps whole seconds.
    def seconds(value: datetime) -> int:
        return int(value.timestamp())

    return (seconds(event.start), seconds(event.end)) == (seconds(start), seconds(end))


def _api_error(operation: str, status: int, payload: Any) -> CalendarError:
    """Translate an error answer in Google's JSON error shape."""
    error = payload.get("error") if isinstance(payload, dict) else None
    message, reason = "", ""
    if isinstance(error, dict):
        message = str(error.get("message", ""))
        errors = error.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            reason = str(errors[0].get("reason", ""))
    elif isinstance(error, str):  # the OAuth token endpoint's shape
        reason = error
        if isinstance(payload, dict):
            message = str(payload.get("error_description", ""))
    text = f"{operation}: HTTP {status} {reason} {message}".rstrip()
    if status == 429 or (status == 403 and reason in _RATE_LIMITED):
        return CalendarUnavailable(text)
    # The token endpoint answers 400 invalid_grant for a revoked or bad grant.
    if status in (401, 403) or (status == 400 and operation == "token"):
        return CalendarAuthError(text)
    if status >= 500:
        return CalendarUnavailable(text)
    return CalendarError(text)


async def _send(
    session: aiohttp.ClientSession,
    operation: str,
    method: str,
    url: str,
    limit: aiohttp.ClientTimeout,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One HTTP exchange; the answer's status and its JSON body (None if not JSON)."""
    try:
        async with session.request(method, url, timeout=limit, **kwargs) as reply:
            text = await reply.text()
            status = reply.status
    except TimeoutError as exc:
        raise CalendarUnavailable(
            f"{operation}: no answer within {limit.total} s", retryable=False
        ) from exc
    except aiohttp.ClientError as exc:
        raise CalendarUnavailable(f"{operation}: {type(exc).__name__}") from exc
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


# Credentials.


class _OAuthCredentials:
    """Fetch a token at `token_uri` and keep it until shortly before it expires."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_uri: str,
        timeout_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._session = session
        self._token_uri = token_uri
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._token = ""
        self._refresh_at = 0.0
        # Concurrent callers wait for one exchange instead of starting several.
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        async with self._lock:
            if self._token and self._clock() < self._refresh_at:
                return self._token
            form = self._grant(self._clock())
            status, payload = await _send(
                self._session,
                "token",
                "POST",
                self._token_uri,
                self._timeout,
                data=form,
            )
            if status != 200:
                raise _api_error("token", status, payload)
            try:
                token = str(payload["access_token"])
                lifetime = float(payload.get("expires_in", 3600))
            except (KeyError, TypeError, ValueError) as exc:
                raise CalendarError("token: the answer holds no access token") from exc
            self._token = token
            self._refresh_at = (
                self._clock() + lifetime - min(_EXPIRY_MARGIN_S, lifetime / 2)
            )
            log.debug("fetched an access token valid for %.0f s", lifetime)
            return token

    def invalidate(self) -> None:
        """Forget the cached token; the next call fetches a fresh one."""
        self._token = ""

    def _grant(self, now: float) -> dict[str, str]:
        raise NotImplementedError


class ServiceAccountCredentials(_OAuthCredentials):
    """A service account's key, exchanged for tokens with a signed RS256 JWT.

    With `subject`, the tokens act for that Workspace user (domain-wide
    delegation must be granted to the service account for it to work).
    """

    def __init__(
        self,
        *,
        client_email: str,
        private_key: str | RSAPrivateKey,
        session: aiohttp.ClientSession,
        token_uri: str = GOOGLE_TOKEN_URI,
        private_key_id: str | None = None,
        subject: str | None = None,
        scopes: Iterable[str] = (CALENDAR_SCOPE,),
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(session, token_uri, timeout_s, clock)
        if isinstance(private_key, str):
            try:
                loaded = load_pem_private_key(private_key.encode(), password=None)
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                raise CalendarAuthError("the private key is not an RSA PEM") from exc
            if not isinstance(loaded, RSAPrivateKey):
                raise CalendarAuthError("the private key is not an RSA key")
            private_key = loaded
        self._key = private_key
        self._key_id = private_key_id
        self.client_email = client_email
        self.subject = subject
        self._scope = " ".join(scopes)

    @classmethod
    def from_info(
        cls,
        info: Mapping[str, Any],
        session: aiohttp.ClientSession,
        *,
        subject: str | None = None,
        **kwargs: Any,
    ) -> ServiceAccountCredentials:
        """From the parsed JSON key file that Google's console hands out."""
        try:
            return cls(
                client_email=str(info["client_email"]),
                private_key=str(info["private_key"]),
                private_key_id=info.get("private_key_id"),
                token_uri=str(info.get("token_uri", GOOGLE_TOKEN_URI)),
                session=session,
                subject=subject,
                **kwargs,
            )
        except KeyError as exc:
            raise CalendarAuthError(f"the key file lacks {exc.args[0]}") from exc

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        session: aiohttp.ClientSession,
        *,
        subject: str | None = None,
        **kwargs: Any,
    ) -> ServiceAccountCredentials:
        """From the JSON key file at `path`."""
        info = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls.from_info(info, session, subject=subject, **kwargs)

    def __repr__(self) -> str:
        return f"ServiceAccountCredentials(client_email={self.client_email!r})"

    def _grant(self, now: float) -> dict[str, str]:
        claims: dict[str, Any] = {
            "iss": self.client_email,
            "scope": self._scope,
            "aud": self._token_uri,
            "iat": int(now),
            "exp": int(now) + _ASSERTION_LIFETIME_S,
        }
        if self.subject:
            claims["sub"] = self.subject
        headers = {"kid": self._key_id} if self._key_id else None
        assertion = jwt.encode(claims, self._key, algorithm="RS256", headers=headers)
        return {"grant_type": JWT_BEARER, "assertion": assertion}


class RefreshTokenCredentials(_OAuthCredentials):
    """A user's OAuth grant: client id and secret plus a long-lived refresh token."""

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        refresh_token: str,
        session: aiohttp.ClientSession,
        token_uri: str = GOOGLE_TOKEN_URI,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(session, token_uri, timeout_s, clock)
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token

    def __repr__(self) -> str:
        return f"RefreshTokenCredentials(client_id={self.client_id!r})"

    def _grant(self, now: float) -> dict[str, str]:
        return {
            "grant_type": "refresh_token",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
            "refresh_token": self._refresh_token,
        }


# The Calendar API.


class GoogleCalendar:
    """One Google calendar, through Calendar API v3."""

    def __init__(
        self,
        calendar_id: str,
        credentials: Credentials,
        session: aiohttp.ClientSession,
        base_url: str = GOOGLE_API_BASE,
        timeout_s: float = 5.0,
        *,
        retries: int = 2,
    ) -> None:
        self._calendar_id = calendar_id
        self._credentials = credentials
        self._session = session
        self._base = base_url.rstrip("/")
        self._events_url = (
            f"{self._base}/calendars/{quote(calendar_id, safe='')}/events"
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retries = retries

    def __repr__(self) -> str:
        return f"GoogleCalendar({_masked(self._calendar_id)!r})"

    async def busy(
        self, start: datetime, end: datetime
    ) -> list[tuple[datetime, datetime]]:
        """The busy intervals between `start` and `end`, as Google reports them."""
        _require_aware(start=start, end=end)
        body = {
            "timeMin": start.isoformat(),
            "timeMax": end.isoformat(),
            "items": [{"id": self._calendar_id}],
        }
        _, payload = await self._call(
            "freeBusy", "POST", f"{self._base}/freeBusy", json=body
        )
        try:
            entry = payload["calendars"][self._calendar_id]
        except (KeyError, TypeError) as exc:
            raise CalendarError("freeBusy: the answer omits the calendar") from exc
        if not isinstance(entry, dict):
            raise CalendarError("freeBusy: the calendar's entry is not an object")
        if errors := entry.get("errors"):
            reasons = sorted({str(e.get("reason", "?")) for e in errors})
            text = f"freeBusy on {_masked(self._calendar_id)}: {', '.join(reasons)}"
            if "notFound" in reasons:
                raise CalendarAuthError(f"{text} (not shared with these credentials?)")
            if {"internalError", "backendError"} & set(reasons):
                raise CalendarUnavailable(text)
            raise CalendarError(text)
        try:
            return [
                (_rfc3339(b["start"]), _rfc3339(b["end"]))
                for b in entry.get("busy", ())
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CalendarError(f"freeBusy: malformed busy interval: {exc!r}") from exc

    async def create_event(
        self,
        *,
        start: datetime,
        end: datetime,
        title: str,
        attendee_email: str | None,
        description: str = "",
        time_zone: str,
        request_id: str,
    ) -> CalendarEvent:
        """Insert the event, or return the one an earlier try with `request_id` made.

        Invitations go out to the attendee (`sendUpdates=all`).
        """
        _require_aware(start=start, end=end)
        if end <= start:
            raise ValueError("the event must end after it starts")
        try:
            zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {time_zone!r}") from exc
        event_id = event_id_for(request_id)
        body: dict[str, Any] = {
            "id": event_id,
            "summary": title,
            "description": description,
            "start": {
                "dateTime": start.astimezone(zone).isoformat(),
                "timeZone": time_zone,
            },
            "end": {
                "dateTime": end.astimezone(zone).isoformat(),
                "timeZone": time_zone,
            },
        }
        if attendee_email:
            body["attendees"] = [{"email": attendee_email}]

        status, payload = await self._call(
            "insert",
            "POST",
            self._events_url,
            json=body,
            params={"sendUpdates": "all"},
            expect=frozenset({409}),
        )
        if status != 409:
            event = _event_from(payload)
            log.info("booked event %s on %s", event.id, _masked(self._calendar_id))
            return event

        # The id exists: an earlier attempt got through and its reply was lost.
        existing = await self._get(event_id)
        if existing is None:
            raise CalendarError(
                f"insert: event {event_id} was booked before and since cancelled"
            )
        if not _same_slot(existing, start, end):
            raise CalendarError(
                f"insert: request id already booked a different slot ({event_id})"
            )
        log.info(
            "event %s on %s was already booked; reusing it",
            event_id,
            _masked(self._calendar_id),
        )
        return existing

    async def find_event(self, request_id: str) -> CalendarEvent | None:
        """The live event booked for `request_id`, if there is one."""
        return await self._get(event_id_for(request_id))

    async def _get(self, event_id: str) -> CalendarEvent | None:
        status, payload = await self._call(
            "get",
            "GET",
            f"{self._events_url}/{event_id}",
            expect=frozenset({404, 410}),
        )
        if status in (404, 410):
            return None
        if isinstance(payload, dict) and payload.get("status") == "cancelled":
            return None
        return _event_from(payload)

    async def _call(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        expect: frozenset[int] = frozenset(),
        **kwargs: Any,
    ) -> tuple[int, Any]:
        """Send an (idempotent) request; return a 2xx answer or one in `expect`.

        A 401 refreshes the token once; connection errors and 5xx answers are
        retried `retries` times with a doubling pause.
        """
        attempt = 0
        reauthenticated = False
        while True:
            try:
                token = await self._credentials.token()
                headers = {"Authorization": f"Bearer {token}"}
                status, payload = await _send(
                    self._session,
                    operation,
                    method,
                    url,
                    self._timeout,
                    headers=headers,
                    **kwargs,
                )
                if status == 401 and not reauthenticated:
                    # Revoked or expired early: one fresh token, then give up.
                    self._credentials.invalidate()
                    reauthenticated = True
                    continue
                if 200 <= status < 300 or status in expect:
                    return status, payload
                raise _api_error(operation, status, payload)
            except CalendarUnavailable as exc:
                if not exc.retryable or attempt >= self._retries:
                    raise
                pause = _RETRY_BACKOFF_S * 2**attempt
                attempt += 1
                log.warning(
                    "calendar %s failed (%s); retry %d in %.1f s",
                    operation,
                    exc,
                    attempt,
                    pause,
                )
                await asyncio.sleep(pause)


async def book(
    calendar: Calendar,
    *,
    start: datetime,
    duration_minutes: int,
    title: str,
    attendee_email: str | None,
    time_zone: str,
    request_id: str,
    description: str = "",
) -> CalendarEvent:
    """Book [start, start + duration) if it is free; raise SlotUnavailable if not.

    A repeated call with the same `request_id` returns the event the first
    one booked. Between the free/busy check and the insert another booking
    can still land; Google does not reject overlapping events, so that race
    is accepted rather than locked against.
    """
    _require_aware(start=start)
    if duration_minutes <= 0:
        raise ValueError("duration_minutes must be positive")
    end = start + timedelta(minutes=duration_minutes)

    if clashes := overlapping(start, end, await calendar.busy(start, end)):
        # Our own earlier booking makes the slot look busy to a retry.
        mine = await calendar.find_event(request_id)
        if mine is not None and _same_slot(mine, start, end):
            return mine
        raise SlotUnavailable(f"{start.isoformat()} is taken", clashes)

    return await calendar.create_event(
        start=start,
        end=end,
        title=title,
        attendee_email=attendee_email,
        description=description,
        time_zone=time_zone,
        request_id=request_id,
    )
