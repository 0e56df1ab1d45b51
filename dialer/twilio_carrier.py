"""The carrier over Twilio's REST API (the Calls resource of one account).

Requests, all under `/2010-04-01/Accounts/{AccountSid}` with Basic auth:

- dial: `POST Calls.json`, form-encoded, `StatusCallbackEvent` repeated once
  per event, asynchronous machine detection reporting to the status callback;
- cancel and hang up: `POST Calls/{CallSid}.json` with `Status=canceled` or
  `Status=completed`. Twilio leaves an answered call alone on `canceled` (the
  answer still shows `in-progress`) and refuses either on an ended call (404
  with code 20404, or 400 with 21220, "invalid call state");
- look up: `GET Calls/{CallSid}.json`, and `GET Calls.json` filtered by `To`,
  `From` and `StartTime>=YYYY-MM-DD`, following `next_page_uri` for a few
  pages. The key on the wire is `StartTime>` and the value the date: read
  back, `StartTime%3E=2024-05-01` is `StartTime>=2024-05-01`.

Twilio's dates have whole seconds, and its filter whole days, so the exact
cut-off is applied here. Twilio reports no answer time: `answered_at` is the
end time less the duration.

No request is retried here: a dial is not idempotent, and the dialer decides
what to do with a `CarrierError` (see `dialer.carrier`).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import math
from typing import Any

import aiohttp

from dialer.call_status import CallStatus, parse_date
from dialer.carrier import (
    CarrierCall,
    CarrierError,
    DialRequest,
    mask_number,
    mask_numbers_in,
)

__all__ = ["TwilioCarrier"]

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
_EVENTS = ("initiated", "ringing", "answered", "completed")
# Twilio's answers to an update of a call that is past it: "no such call"
# (an ended call is gone for updates), and "invalid call state".
_NOT_FOUND = 20404
_INVALID_STATE = 21220


class TwilioCarrier:
    """`dialer.carrier.Carrier` for one Twilio account."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        base_url: str = "https://api.twilio.com",
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
        *,
        page_size: int = 100,
        max_pages: int = 5,
    ) -> None:
        self.account_sid = account_sid
        credentials = f"{account_sid}:{auth_token}".encode()
        self._headers = {
            "Authorization": "Basic " + base64.b64encode(credentials).decode(),
            "Accept": "application/json",
        }
        self._base = base_url.rstrip("/")
        self._calls = f"{self._base}/{API_VERSION}/Accounts/{account_sid}/Calls"
        self._session = session
        self._owns_session = session is None
        self.timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.page_size = page_size
        self.max_pages = max_pages

    def __repr__(self) -> str:
        return f"TwilioCarrier({self.account_sid!r}, base_url={self._base!r})"

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    # Calls.

    async def create_call(self, request: DialRequest) -> str:
        form: list[tuple[str, str]] = [
            ("To", request.to),
            ("From", request.from_),
            ("Url", request.answer_url),
            ("Method", "POST"),
            ("StatusCallback", request.status_callback),
            ("StatusCallbackMethod", "POST"),
            *(("StatusCallbackEvent", event) for event in _EVENTS),
            ("Timeout", str(request.ring_timeout_s)),
        ]
        if request.machine_detection:
            form += [
                ("MachineDetection", "Enable"),
                ("AsyncAmd", "true"),
                ("AsyncAmdStatusCallback", request.status_callback),
                ("AsyncAmdStatusCallbackMethod", "POST"),
            ]
        what = f"dial of {mask_number(request.to)} (attempt {request.attempt_id})"
        status, body = await self._request(
            "POST", f"{self._calls}.json", what, data=form, creating=True
        )
        if status >= 300:
            raise _error(what, status, body, creating=True)
        sid = body.get("sid") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid:
            raise CarrierError(
                f"{what}: HTTP {status} without a call SID",
                retryable=False,
                placed=None,
                status=status,
            )
        log.debug("%s: call %s created", what, sid)
        return sid

    async def cancel_call(self, sid: str) -> bool:
        body = await self._update(sid, "canceled", f"cancel of {sid}")
        return body is not None and body.get("status") == CallStatus.CANCELED

    async def hang_up(self, sid: str) -> bool:
        return await self._update(sid, "completed", f"hang-up of {sid}") is not None

    async def _update(self, sid: str, new: str, what: str) -> dict[str, Any] | None:
        """The call after the update, or None if it was past being updated."""
        status, body = await self._request(
            "POST", f"{self._calls}/{sid}.json", what, data=[("Status", new)]
        )
        code = body.get("code") if isinstance(body, dict) else None
        if status in (400, 404) and code in (_NOT_FOUND, _INVALID_STATE):
            log.debug("%s: the call is past it (code %s)", what, code)
            return None
        if status >= 300:
            raise _error(what, status, body, creating=False)
        return body if isinstance(body, dict) else {}

    async def get_call(self, sid: str) -> CarrierCall | None:
        what = f"lookup of {sid}"
        status, body = await self._request("GET", f"{self._calls}/{sid}.json", what)
        code = body.get("code") if isinstance(body, dict) else None
        if status == 404 and code == _NOT_FOUND:
            return None  # 20404 is also Twilio's "no such resource"
        if status >= 300:
            raise _error(what, status, body, creating=False)
        return _call(body, what)

    async def find_calls(self, to: str, from_: str, since: float) -> list[CarrierCall]:
        what = f"search for calls to {mask_number(to)}"
        # Twilio's dates have whole seconds: a call made in the same second
        # as `since` shows as created before it.
        cutoff = math.floor(since)
        day = dt.datetime.fromtimestamp(since, dt.UTC).date().isoformat()
        params: list[tuple[str, str]] | None = [
            ("To", to),
            ("From", from_),
            ("StartTime>", day),
            ("PageSize", str(self.page_size)),
        ]
        url = f"{self._calls}.json"
        found: list[CarrierCall] = []
        for _ in range(self.max_pages):
            status, body = await self._request("GET", url, what, params=params)
            if status >= 300:
                raise _error(what, status, body, creating=False)
            if not isinstance(body, dict) or not isinstance(body.get("calls"), list):
                raise CarrierError(
                    f"{what}: HTTP {status} without a list of calls",
                    retryable=False,
                    placed=None,
                    status=status,
                )
            page = [_call(item, what) for item in body["calls"]]
            found += [c for c in page if c.created_at is None or c.created_at >= cutoff]
            next_uri = body.get("next_page_uri")
            # Twilio lists the newest first: once a page reaches past the
            # cut-off, later pages hold only older calls.
            older = any(
                c.created_at is not None and c.created_at < cutoff for c in page
            )
            if not next_uri or not isinstance(next_uri, str) or older:
                break
            url, params = self._base + next_uri, None
        else:
            log.warning("%s: more than %d pages; the rest unread", what, self.max_pages)
        return found

    # Transport.

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def _request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: list[tuple[str, str]] | None = None,
        params: list[tuple[str, str]] | None = None,
        creating: bool = False,
    ) -> tuple[int, Any]:
        """The HTTP status and the JSON body (None if not JSON) of one request."""
        try:
            async with self._client().request(
                method,
                url,
                data=data,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
            ) as response:
                text = await response.text()
                status = response.status
        except TimeoutError as exc:
            raise CarrierError(
                f"{what}: no answer within {self.timeout_s} s",
                retryable=True,
                placed=None,
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # Refused before a byte of the request went out: nothing was made.
            raise CarrierError(
                f"{what}: cannot connect: {exc.os_error!r}",
                retryable=True,
                placed=False if creating else None,
            ) from exc
        except aiohttp.ClientError as exc:
            raise CarrierError(
                f"{what}: {type(exc).__name__}: {exc}", retryable=True, placed=None
            ) from exc
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        return status, body


def _error(what: str, status: int, body: Any, *, creating: bool) -> CarrierError:
    """The CarrierError for an HTTP error answer."""
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    detail = f"HTTP {status}"
    if isinstance(code, int):
        detail += f", code {code}"
    if isinstance(message, str) and message:
        detail += f": {mask_numbers_in(message)[:200]}"
    if status == 429:
        retryable, placed = True, False
    elif 400 <= status < 500:
        retryable, placed = False, False
    elif status >= 500:
        retryable, placed = True, None
    else:
        retryable, placed = False, None
    return CarrierError(
        f"{what}: {detail}",
        retryable=retryable,
        placed=placed if creating else None,
        status=status,
        code=code if isinstance(code, int) else None,
    )


def _call(body: Any, what: str) -> CarrierCall:
    """A Call resource, as Twilio's JSON has it."""
    if not isinstance(body, dict) or not isinstance(body.get("sid"), str):
        raise CarrierError(f"{what}: not a call resource", retryable=False, placed=None)
    try:
        status = CallStatus(str(body.get("status")))
    except ValueError:
        raise CarrierError(
            f"{what}: call {body['sid']} has unknown status {body.get('status')!r}",
            retryable=False,
            placed=None,
        ) from None
    created = parse_date(body.get("date_created"))
    ended = parse_date(body.get("end_time"))
    duration = _int(body.get("duration"))
    answered = None
    if ended is not None and duration:
        answered = ended - duration
        if created is not None:
            answered = max(answered, created)
    return CarrierCall(
        sid=body["sid"],
        to=str(body.get("to") or ""),
        from_=str(body.get("from") or ""),
        status=status,
        created_at=created,
        answered_at=answered,
        ended_at=ended,
        duration_s=duration,
        answered_by=body.get("answered_by") or None,
    )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
