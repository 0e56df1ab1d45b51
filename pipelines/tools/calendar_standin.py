"""A local stand-in for Google's OAuth token endpoint and Calendar API v3.

It answers the slice of the API that `pipelines.tools.calendar` uses, in
Google's shapes, on a real socket:

    POST /token                                     both grant types
    POST /calendar/v3/freeBusy                      seeded busy plus events
    POST /calendar/v3/calendars/{id}/events         409 on a duplicate id
    GET  /calendar/v3/calendars/{id}/events/{eid}

A jwt-bearer assertion must be signed (RS256) by a key given to
`add_service_account`, name the calendar scope, be addressed to `token_url`
and be unexpired; a refresh-token grant must match `add_refresh_token`. The
API wants `Authorization: Bearer <a token this stand-in issued>`.

Failures on purpose, for the next N API requests (the token endpoint is
never affected): `fail_next` answers an error status, `delay_next` holds the
answer back (for timeouts), `drop_next` does the work and then closes the
connection without answering (a lost reply).
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from pipelines.tools.calendar import CALENDAR_SCOPE, JWT_BEARER

__all__ = ["CalendarStandin", "IssuedToken"]

_EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_REASONS = {400: "invalid", 401: "authError", 404: "notFound", 409: "duplicate"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class IssuedToken:
    """One access token the token endpoint handed out, and to whom."""

    token: str
    grant_type: str
    principal: str  # the service account's email, or the OAuth client id
    subject: str | None
    expires_at: float


def _google_error(status: int, message: str, reason: str = "") -> web.Response:
    body = {
        "error": {
            "code": status,
            "message": message,
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
            "errors": [
                {
                    "domain": "global",
                    "reason": reason or _REASONS.get(status, "backendError"),
                    "message": message,
                }
            ],
        }
    }
    return web.json_response(body, status=status)


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    body = {"error": error, "error_description": description}
    return web.json_response(body, status=status)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _merged(
    intervals: Iterable[tuple[datetime, datetime]],
) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class CalendarStandin:
    """Google's token endpoint and Calendar API, in memory, on a real socket.

    `events` maps calendar id to event id to the stored event resource;
    `issued` lists every token handed out; `requests` records the method,
    path and query of every API request.
    """

    def __init__(
        self,
        *,
        token_lifetime_s: int = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.token_lifetime_s = token_lifetime_s
        self.events: dict[str, dict[str, dict[str, Any]]] = {}
        self.issued: list[IssuedToken] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._clock = clock
        self._busy: dict[str, list[tuple[datetime, datetime]]] = {}
        self._service_accounts: dict[str, RSAPublicKey] = {}
        self._clients: dict[str, tuple[str, str]] = {}
        self._valid: dict[str, IssuedToken] = {}
        self._faults: deque[tuple[str, float]] = deque()
        self._runner: web.AppRunner | None = None
        self._origin = ""

    # Setup.

    def add_calendar(
        self, calendar_id: str, busy: Iterable[tuple[datetime, datetime]] = ()
    ) -> None:
        """Create a calendar, optionally with busy intervals not tied to events."""
        self.events.setdefault(calendar_id, {})
        self._busy.setdefault(calendar_id, []).extend(busy)

    def add_service_account(self, client_email: str, public_key: RSAPublicKey) -> None:
        """Trust assertions from `client_email` signed by `public_key`'s pair."""
        self._service_accounts[client_email] = public_key

    def add_refresh_token(
        self, client_id: str, client_secret: str, refresh_token: str
    ) -> None:
        """Accept this refresh token from this OAuth client."""
        self._clients[client_id] = (client_secret, refresh_token)

    def revoke_tokens(self) -> None:
        """Invalidate every access token issued so far."""
        self._valid.clear()

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """Answer the next `count` API requests with `status`."""
        self._faults.extend([("fail", float(status))] * count)

    def delay_next(self, count: int = 1, seconds: float = 1.0) -> None:
        """Hold back the answers to the next `count` API requests."""
        self._faults.extend([("delay", seconds)] * count)

    def drop_next(self, count: int = 1) -> None:
        """Serve the next `count` API requests, then close without answering."""
        self._faults.extend([("drop", 0.0)] * count)

    # Lifecycle.

    @property
    def base_url(self) -> str:
        """The Calendar API base, as `GoogleCalendar(base_url=...)` wants it."""
        return f"{self._started()}/calendar/v3"

    @property
    def token_url(self) -> str:
        return f"{self._started()}/token"

    def _started(self) -> str:
        if not self._origin:
            raise RuntimeError("the stand-in is not started")
        return self._origin

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._api_middleware])
        app.router.add_post("/token", self._token)
        app.router.add_post("/calendar/v3/freeBusy", self._free_busy)
        app.router.add_post("/calendar/v3/calendars/{calendar}/events", self._insert)
        app.router.add_get(
            "/calendar/v3/calendars/{calendar}/events/{event}", self._get
        )
        # Cancelled handlers let a delayed answer die with its client.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._origin = f"http://{bound_host}:{bound_port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> CalendarStandin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # The token endpoint.

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        if grant_type == JWT_BEARER:
            principal, subject, problem = self._check_assertion(
                str(form.get("assertion", ""))
            )
            if problem:
                return _oauth_error(400, "invalid_grant", problem)
        elif grant_type == "refresh_token":
            principal, subject = str(form.get("client_id", "")), None
            secret, refresh = self._clients.get(principal, (None, None))
            if secret is None or form.get("client_secret") != secret:
                return _oauth_error(401, "invalid_client", "Unauthorized")
            if form.get("refresh_token") != refresh:
                return _oauth_error(400, "invalid_grant", "Bad Request")
        else:
            return _oauth_error(400, "unsupported_grant_type", "Invalid grant_type")

        issued = IssuedToken(
            token=secrets.token_urlsafe(24),
            grant_type=grant_type,
            principal=principal,
            subject=subject,
            expires_at=self._clock() + self.token_lifetime_s,
        )
        self.issued.append(issued)
        self._valid[issued.token] = issued
        return web.json_response(
            {
                "access_token": issued.token,
                "expires_in": self.token_lifetime_s,
                "token_type": "Bearer",
            }
        )

    def _check_assertion(self, assertion: str) -> tuple[str, str | None, str]:
        """(issuer, subject, problem); an empty problem means it is valid."""
        try:
            claims = jwt.decode(assertion, options={"verify_signature": False})
            key = self._service_accounts.get(str(claims.get("iss")))
            if key is None:
                return "", None, "Invalid issuer"
            # Expiry is checked below against our own (injectable) clock.
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256"],
                audience=self.token_url,
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "require": ["iss", "aud", "iat", "exp", "scope"],
                },
            )
        except jwt.InvalidAudienceError:
            return "", None, "Invalid JWT: audience"
        except jwt.PyJWTError:
            return "", None, "Invalid JWT Signature."
        now = self._clock()
        iat, exp = float(claims["iat"]), float(claims["exp"])
        if not iat - 60 <= now < exp or exp - iat > 3600:
            return "", None, "Invalid JWT: Token must be a short-lived token"
        if CALENDAR_SCOPE not in str(claims["scope"]).split():
            return "", None, "Invalid scope"
        return str(claims["iss"]), claims.get("sub"), ""

    # The Calendar API.

    @web.middleware
    async def _api_middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if not request.path.startswith("/calendar/"):
            return await handler(request)
        self.requests.append((request.method, request.path, dict(request.query)))
        kind, value = self._faults.popleft() if self._faults else ("", 0.0)
        if kind == "fail":
            return _google_error(int(value), "Injected failure", "backendError")
        if kind == "delay":
            await asyncio.sleep(value)

        authorization = request.headers.get("Authorization", "")
        issued = self._valid.get(authorization.removeprefix("Bearer "))
        if issued is None or issued.expires_at <= self._clock():
            return _google_error(401, "Request had invalid authentication credentials.")
        response = await handler(request)
        if kind == "drop" and request.transport is not None:
            request.transport.close()
        return response

    async def _free_busy(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            time_min = datetime.fromisoformat(body["timeMin"])
            time_max = datetime.fromisoformat(body["timeMax"])
            ids = [str(item["id"]) for item in body["items"]]
        except (KeyError, TypeError, ValueError):
            return _google_error(400, "Bad Request")
        calendars: dict[str, Any] = {}
        for calendar_id in ids:
            if calendar_id not in self.events:
                calendars[calendar_id] = {
                    "errors": [{"domain": "global", "reason": "notFound"}],
                    "busy": [],
                }
                continue
            busy = [
                (max(start, time_min), min(end, time_max))
                for start, end in self._intervals(calendar_id)
                if start < time_max and time_min < end
            ]
            calendars[calendar_id] = {
                "busy": [
                    {"start": _rfc3339(start), "end": _rfc3339(end)}
                    for start, end in _merged(busy)
                ]
            }
        return web.json_response(
            {
                "kind": "calendar#freeBusy",
                "timeMin": _rfc3339(time_min),
                "timeMax": _rfc3339(time_max),
                "calendars": calendars,
            }
        )

    def _intervals(self, calendar_id: str) -> list[tuple[datetime, datetime]]:
        intervals = list(self._busy.get(calendar_id, ()))
        for event in self.events[calendar_id].values():
            if event["status"] != "cancelled" and event["transparency"] == "opaque":
                intervals.append(
                    (
                        datetime.fromisoformat(event["start"]["dateTime"]),
                        datetime.fromisoformat(event["end"]["dateTime"]),
                    )
                )
        return intervals

    async def _insert(self, request: web.Request) -> web.Response:
        calendar_id = request.match_info["calendar"]
        events = self.events.get(calendar_id)
        if events is None:
            return _google_error(404, "Not Found")
        body = await request.json()
        event_id = str(body.get("id") or base64.b32hexencode(secrets.token_bytes(10)))
        event_id = event_id.lower().rstrip("=")
        if not _EVENT_ID.fullmatch(event_id):
            return _google_error(400, "Invalid resource id value.")
        if event_id in events:
            return _google_error(409, "The requested identifier already exists.")
        try:
            start = datetime.fromisoformat(body["start"]["dateTime"])
            end = datetime.fromisoformat(body["end"]["dateTime"])
        except (KeyError, TypeError, ValueError):
            return _google_error(400, "Missing or invalid start or end time.")
        if start.tzinfo is None or end <= start:
            return _google_error(400, "The specified time range is empty.")

        eid = base64.urlsafe_b64encode(f"{event_id} {calendar_id}".encode()).decode()
        now = _rfc3339(datetime.fromtimestamp(self._clock(), UTC))
        event = {
            "kind": "calendar#event",
            "id": event_id,
            "status": "confirmed",
            "htmlLink": f"{self._origin}/calendar/event?eid={eid.rstrip('=')}",
            "created": now,
            "updated": now,
            "summary": body.get("summary", ""),
            "description": body.get("description", ""),
            "organizer": {"email": calendar_id, "self": True},
            "start": body["start"],
            "end": body["end"],
            "attendees": [
                {"email": a["email"], "responseStatus": "needsAction"}
                for a in body.get("attendees", ())
            ],
            "transparency": body.get("transparency", "opaque"),
            "iCalUID": f"{event_id}@google.com",
        }
        events[event_id] = event
        return web.json_response(event)

    async def _get(self, request: web.Request) -> web.Response:
        events = self.events.get(request.match_info["calendar"], {})
        event = events.get(request.match_info["event"])
        if event is None:
            return _google_error(404, "Not Found")
        return web.json_response(event)
