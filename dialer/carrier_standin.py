"""A local carrier: Twilio's Calls resource as voxdial sees it, on loopback.

`CarrierStandin` speaks the REST paths, Basic auth, form bodies and JSON
shapes that `dialer.twilio_carrier.TwilioCarrier` (and the media server's
`voice.twilio_rest.TwilioRest`) use against Twilio, and it calls back the way
Twilio does: signed status callbacks, the machine detection verdict, and,
with `media=True`, the TwiML webhook and the media stream.

A call's life, times in scenario seconds (divided by `time_scale`):

    queued --0.2--> initiated --0.2--> ringing --ring_s--> in-progress
           --talk_s--> completed
                              \\--> failed    (scenario "failed")
                                           ringing --ring_s--> busy
                                           ringing --Timeout--> no-answer

- The script (`script(to, attempt_no) -> Scenario`) decides each call when it
  is created; `attempt_no` counts calls to that number, from 1.
- With media, the callee says a scenario's `lines` each once the agent has
  gone quiet, then its `barge_in_line` over the agent's next reply.
- A scenario that would ring for the request's `Timeout` or longer ends as
  `no-answer` at the `Timeout`; a `no-answer` scenario always rings that long.
- `voicemail` is answered like `human`, with `AnsweredBy=machine_end_beep`.
- `Status=canceled` ends a queued or ringing call as `canceled`, and leaves
  an answered one alone (Twilio: "will not affect calls already in
  progress"); the answer shows it still `in-progress`.
- `Status=completed` ends an answered call as `completed` and an unanswered
  one as `canceled` (unconfirmed: what Twilio reports for a ringing call
  hung up this way).
- Either update on an ended call is refused with 404 and code 20404, as the
  media server's hang-up expects (`voice.twilio_standin` does the same).
  Real Twilio may answer 400 with 21220 ("invalid call state"); the client
  takes both to mean "past it".
- A final status is never followed by another.

Callbacks:

- Status callbacks go to `StatusCallback` for the events asked for in
  `StatusCallbackEvent` (`completed` alone when none are), with Twilio's
  form fields; `SequenceNumber` counts from 0. `AnsweredBy` rides on the
  final callback of an answered call when machine detection is on, and the
  verdict also goes to `AsyncAmdStatusCallback` (no `CallStatus` there).
- Every callback and webhook is signed (`X-Twilio-Signature`) over the URL
  exactly as given, query string and all, and sent to that exact URL.
- Delivery is retried `callback_retries` times on a refused connection, a
  timeout or a 5xx, then given up; a 4xx is an answer and is not retried.
- Faults, drawn per callback from the seed: dropped (never sent), late (held
  until the call has ended, then `late_s` more, so it arrives after every
  later callback), duplicated (sent twice). On the REST side, per dial: 429
  (no call made), 500 after making the call, or no answer within `hold_s`
  after making it (the client times out). All default to 0.

The ground truth is `calls` (every call made, with real `time.time()`
times), `calls_to(number)` and `overlapping_calls()`.

Dates on the wire have whole seconds, as Twilio's do; durations are real
elapsed seconds, rounded up. The `StartTime` list filter reads the call's
start (its `initiated`) or, for a call not yet started, its creation
(unconfirmed: Twilio may leave unstarted calls out).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import random
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
from aiohttp import web
from multidict import MultiDict
from yarl import URL

from dialer.call_status import CallStatus, format_date, is_final
from dialer.carrier import mask_number
from voice.signature import SIGNATURE_HEADER, compute_signature

__all__ = [
    "Callback",
    "CarrierStandin",
    "Faults",
    "Scenario",
    "Script",
    "StandinCall",
    "random_script",
]

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
DIAL_STEP_S = 0.2  # queued -> initiated -> ringing, in scenario seconds
AMD_S = 2.0  # how long machine detection takes, at most half the talk
RETRY_S = 1.0  # between callback delivery attempts, in scenario seconds
WEBHOOK_TIMEOUT_S = 15.0  # real seconds, as Twilio waits for a webhook
_EVENTS = frozenset({"initiated", "ringing", "answered", "completed"})
_E164 = re.compile(r"\+[1-9]\d{1,14}")
_UNANSWERED = (CallStatus.QUEUED, CallStatus.INITIATED, CallStatus.RINGING)

Answer = Literal["human", "voicemail", "busy", "no-answer", "failed"]


@dataclass(frozen=True)
class Scenario:
    """What happens to one call: who answers, after how long, for how long."""

    answer: Answer
    ring_s: float = 1.0
    talk_s: float = 5.0
    # What the callee says (8 kHz PCM), each once the agent has finished
    # speaking; the call still ends after `talk_s` at the latest.
    lines: tuple[Any, ...] = ()
    # Said over the agent once `lines` are done: it starts `barge_in_after_s`
    # (real seconds: speech is never scaled) after the agent's next reply
    # begins to arrive, whether or not that reply has finished.
    barge_in_line: Any = None
    barge_in_after_s: float = 1.5


Script = Callable[[str, int], Scenario]


def random_script(seed: int = 0) -> Script:
    """55% human, 15% no-answer, 10% each busy, voicemail, failed."""
    rng = random.Random(seed)

    def choose(to: str, attempt_no: int) -> Scenario:
        roll = rng.random()
        answer: Answer
        if roll < 0.55:
            answer = "human"
        elif roll < 0.70:
            answer = "no-answer"
        elif roll < 0.80:
            answer = "busy"
        elif roll < 0.90:
            answer = "voicemail"
        else:
            answer = "failed"
        return Scenario(answer, rng.uniform(0.5, 3.0), rng.uniform(2.0, 10.0))

    return choose


@dataclass(frozen=True)
class Faults:
    """Probabilities of each fault (0 to 1), and how the slow ones are slow."""

    drop: float = 0.0  # a callback is never sent
    late: float = 0.0  # a callback is held until the call has ended
    duplicate: float = 0.0  # a callback is sent twice
    late_s: float = 2.0  # scenario seconds a late callback trails the end
    rate_limit: float = 0.0  # a dial is refused with 429
    error_after_create: float = 0.0  # a dial makes the call, then answers 500
    timeout_after_create: float = 0.0  # a dial makes the call, then stalls
    hold_s: float = 15.0  # real seconds a stalled answer is held


@dataclass(eq=False)
class Callback:
    """One callback or webhook the stand-in fired, and what became of it."""

    url: str
    form: dict[str, str]
    dropped: bool = False
    late: bool = False
    copies: int = 1
    responses: list[int] = field(default_factory=list)  # HTTP status per copy
    given_up: bool = False  # undeliverable after the retries


@dataclass(eq=False)
class StandinCall:
    """The ground truth about one call. Times are `time.time()`."""

    sid: str
    to: str
    from_: str
    attempt: str  # the `attempt` query parameter of its StatusCallback
    attempt_no: int
    scenario: Scenario
    url: str
    status_callback: str
    amd_callback: str
    events: frozenset[str]
    ring_timeout_s: float
    created_at: float
    status: CallStatus = CallStatus.QUEUED
    started_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    updated_at: float = 0.0
    answered_by: str | None = None
    duration_s: int | None = None
    callbacks: list[Callback] = field(default_factory=list)
    stream_parameters: dict[str, str] | None = None  # what the stream was sent
    media_error: str | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)
    sequence: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def final_status(self) -> CallStatus | None:
        return self.status if is_final(self.status) else None

    def overlaps(self, other: StandinCall) -> bool:
        """Whether the two were live at once: [created, ended) intersect."""
        end_a = math.inf if self.ended_at is None else self.ended_at
        end_b = math.inf if other.ended_at is None else other.ended_at
        return self.created_at < end_b and other.created_at < end_a


class CarrierStandin:
    """Twilio's Calls resource for one account, on a real loopback socket."""

    def __init__(
        self,
        account_sid: str = "AC" + "0" * 32,
        auth_token: str = "token",
        *,
        script: Script | None = None,
        seed: int = 0,
        time_scale: float = 1.0,
        faults: Faults = Faults(),
        media: bool = False,
        callback_retries: int = 2,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be greater than 0")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.script = script or random_script(seed)
        self.seed = seed
        self.time_scale = time_scale
        self.faults = faults
        self.media = media
        self.callback_retries = callback_retries
        self.host = host
        self.port = port
        self.base_url = ""
        self.calls: dict[str, StandinCall] = {}
        # Every REST request: method, path, form fields in order.
        self.requests: list[tuple[str, str, list[tuple[str, str]]]] = []
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        credentials = f"{account_sid}:{auth_token}".encode()
        self._authorization = "Basic " + base64.b64encode(credentials).decode()

    # Lifecycle.

    async def __aenter__(self) -> CarrierStandin:
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
        self._stopping = asyncio.Event()
        app = web.Application()
        calls = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        app.router.add_post(calls + ".json", self._create)
        app.router.add_get(calls + ".json", self._list)
        app.router.add_get(calls + "/{sid}.json", self._fetch)
        app.router.add_post(calls + "/{sid}.json", self._update)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop serving, end every timer and delivery, close every socket."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        # A cancelled call may still spawn a delivery on its way out.
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wait_idle(self, limit_s: float = 10.0) -> None:
        """Wait until every call has ended and every callback is out or given up."""
        deadline = time.monotonic() + limit_s
        while self._tasks or any(not c.ended.is_set() for c in self.calls.values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"carrier stand-in still busy after {limit_s} s")
            await asyncio.sleep(0.01)

    # The ground truth.

    def calls_to(self, number: str) -> list[StandinCall]:
        """Every call made to `number`, oldest first."""
        found = [c for c in self.calls.values() if c.to == number]
        return sorted(found, key=lambda c: c.created_at)

    def overlapping_calls(self) -> list[tuple[str, str]]:
        """Pairs of SIDs of calls to one number that were live at the same time."""
        by_number: dict[str, list[StandinCall]] = {}
        for call in self.calls.values():
            by_number.setdefault(call.to, []).append(call)
        pairs: list[tuple[str, str]] = []
        for calls in by_number.values():
            calls.sort(key=lambda c: c.created_at)
            for i, first in enumerate(calls):
                for second in calls[i + 1 :]:
                    if first.overlaps(second):
                        pairs.append((first.sid, second.sid))
        return pairs

    # REST: the Calls resource.

    async def _create(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        refused = self._refuse(request)
        if refused is not None:
            return refused

        # Validation, with Twilio's codes.
        def get(name: str) -> str:
            return form.get(name, "").strip()

        to, from_, url = get("To"), get("From"), get("Url")
        if not to:
            return _error(400, 21201, "No 'To' number is specified")
        if not _E164.fullmatch(to):
            return _error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not from_:
            return _error(400, 21213, "No 'From' number is specified")
        if not _E164.fullmatch(from_):
            return _error(400, 21212, f"Invalid 'From' Phone Number: {from_}")
        if urlsplit(url).scheme not in ("http", "https"):
            return _error(400, 21205, f"Url is not a valid URL: {url}")
        events = {e for v in form.getall("StatusCallbackEvent", []) for e in v.split()}
        if not events <= _EVENTS:
            return _error(400, 21626, "Invalid 'StatusCallbackEvent'")
        try:
            timeout = int(get("Timeout") or 60)
        except ValueError:
            return _error(400, 21216, f"Invalid Timeout: {get('Timeout')}")

        # Faults are drawn on every dial, so a seed gives the same run.
        rolls = [self._rng.random() for _ in range(3)]
        if rolls[0] < self.faults.rate_limit:
            return _error(429, 20429, "Too Many Requests")
        status_callback = get("StatusCallback")
        amd = get("MachineDetection") in ("Enable", "DetectMessageEnd")
        call = self._new_call(
            to,
            from_,
            url,
            status_callback,
            amd_callback=get("AsyncAmdStatusCallback") if amd else "",
            events=frozenset(events or {"completed"}),
            ring_timeout_s=max(1, min(timeout, 600)),
            amd=amd,
        )
        if rolls[1] < self.faults.error_after_create:
            return _error(500, 20500, "Internal Server Error")
        if rolls[2] < self.faults.timeout_after_create:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.faults.hold_s)
        return web.json_response(self._resource(call), status=201)

    def _new_call(
        self,
        to: str,
        from_: str,
        url: str,
        status_callback: str,
        *,
        amd_callback: str,
        events: frozenset[str],
        ring_timeout_s: int,
        amd: bool,
    ) -> StandinCall:
        index = len(self.calls)
        attempt_no = 1 + sum(1 for c in self.calls.values() if c.to == to)
        query = parse_qs(urlsplit(status_callback).query)
        now = time.time()
        call = StandinCall(
            sid=f"CA{self._rng.getrandbits(128):032x}",
            to=to,
            from_=from_,
            attempt=query.get("attempt", [""])[0],
            attempt_no=attempt_no,
            scenario=self.script(to, attempt_no),
            url=url,
            status_callback=status_callback,
            amd_callback=amd_callback,
            events=events,
            ring_timeout_s=ring_timeout_s,
            created_at=now,
            updated_at=now,
            rng=random.Random(f"{self.seed}/{index}"),
        )
        if amd:
            human = call.scenario.answer == "human"
            call.answered_by = "human" if human else "machine_end_beep"
        self.calls[call.sid] = call
        log.debug("call %s to %s: %s", call.sid, mask_number(to), call.scenario)
        self._spawn(self._live(call))
        return call

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path_qs, []))
        refused = self._refuse(request)
        if refused is not None:
            return refused
        query = request.query
        filters = [
            (k, query[k])
            for k in ("To", "From", "Status", "StartTime", "StartTime>", "StartTime<")
            if k in query
        ]
        try:
            page_size = max(1, min(int(query.get("PageSize", "50")), 1000))
            page = max(0, int(query.get("Page", "0")))
        except ValueError:
            return _error(400, 20001, "Invalid paging parameter")
        matches = [c for c in self.calls.values() if _matches(c, dict(filters))]
        matches.sort(key=lambda c: (c.created_at, c.sid), reverse=True)
        start = page * page_size
        chunk = matches[start : start + page_size]

        def page_uri(number: int) -> str:
            paging = [("PageSize", str(page_size)), ("Page", str(number))]
            if number:
                paging.append(("PageToken", f"PA{number * page_size}"))
            return f"{request.path}?{urlencode(filters + paging)}"

        more = start + page_size < len(matches)
        body = {
            "calls": [self._resource(c) for c in chunk],
            "page": page,
            "page_size": page_size,
            "start": start,
            "end": start + max(len(chunk) - 1, 0),
            "uri": page_uri(page),
            "first_page_uri": page_uri(0),
            "next_page_uri": page_uri(page + 1) if more else None,
            "previous_page_uri": page_uri(page - 1) if page else None,
        }
        return web.json_response(body)

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(("GET", request.path_qs, []))
        refused = self._refuse(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return _not_found(request.path)
        return web.json_response(self._resource(call))

    async def _update(self, request: web.Request) -> web.StreamResponse:
        form = await self._form(request)
        refused = self._refuse(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.match_info["sid"])
        if call is None or is_final(call.status):
            return _not_found(request.path)
        new = form.get("Status", "")
        if new == "canceled":
            if call.status in _UNANSWERED:
                self._end(call, CallStatus.CANCELED)
        elif new == "completed":
            answered = call.status is CallStatus.IN_PROGRESS
            self._end(call, CallStatus.COMPLETED if answered else CallStatus.CANCELED)
        elif new:
            return _error(400, 20001, f"Invalid Status: {new}")
        return web.json_response(self._resource(call))

    async def _form(self, request: web.Request) -> MultiDict[str]:
        pairs = [(k, str(v)) for k, v in (await request.post()).items()]
        self.requests.append((request.method, request.path, pairs))
        return MultiDict(pairs)

    def _refuse(self, request: web.Request) -> web.Response | None:
        if (
            request.headers.get("Authorization") != self._authorization
            or request.match_info["account"] != self.account_sid
        ):
            return _error(401, 20003, "Authenticate")
        return None

    def _resource(self, call: StandinCall) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json"
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "parent_call_sid": None,
            "to": call.to,
            "to_formatted": call.to,
            "from": call.from_,
            "from_formatted": call.from_,
            "status": call.status.value,
            "direction": "outbound-api",
            "api_version": API_VERSION,
            "date_created": format_date(call.created_at),
            "date_updated": format_date(call.updated_at),
            "start_time": _date_or_none(call.started_at),
            "end_time": _date_or_none(call.ended_at),
            "duration": None if call.duration_s is None else str(call.duration_s),
            "answered_by": call.answered_by if call.answered_at else None,
            "price": None,
            "price_unit": "USD",
            "uri": uri,
        }

    # The life of a call.

    async def _live(self, call: StandinCall) -> None:
        scenario = call.scenario
        if await self._pause(call, DIAL_STEP_S):
            return
        call.started_at = time.time()
        self._advance(call, CallStatus.INITIATED)
        if await self._pause(call, DIAL_STEP_S):
            return
        if scenario.answer == "failed":
            self._end(call, CallStatus.FAILED)
            return
        self._advance(call, CallStatus.RINGING)

        timeout = call.ring_timeout_s
        if scenario.answer == "no-answer" or scenario.ring_s >= timeout:
            if not await self._pause(call, timeout):
                self._end(call, CallStatus.NO_ANSWER)
            return
        if await self._pause(call, scenario.ring_s):
            return
        if scenario.answer == "busy":
            self._end(call, CallStatus.BUSY)
            return

        call.answered_at = time.time()
        self._advance(call, CallStatus.IN_PROGRESS)
        if call.answered_by is not None and call.amd_callback:
            verdict = {
                "AccountSid": self.account_sid,
                "CallSid": call.sid,
                "AnsweredBy": call.answered_by,
                "MachineDetectionDuration": str(int(AMD_S * 1000)),
            }
            delay = min(AMD_S, scenario.talk_s / 2)
            self._send(call, call.amd_callback, verdict, delay_s=delay)
        if self.media:
            await self._converse(call)
        else:
            await self._pause(call, scenario.talk_s)
        self._end(call, CallStatus.COMPLETED)

    async def _pause(self, call: StandinCall, scenario_s: float) -> bool:
        """Wait `scenario_s`; True if the call was ended meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(call.ended.wait(), scenario_s / self.time_scale)
        return call.ended.is_set()

    def _advance(self, call: StandinCall, status: CallStatus) -> None:
        call.status = status
        call.updated_at = time.time()
        self._emit(call)

    def _end(self, call: StandinCall, status: CallStatus) -> None:
        if is_final(call.status):
            return
        now = time.time()
        call.ended_at = now
        if call.answered_at is not None:
            call.duration_s = max(1, math.ceil(now - call.answered_at))
        call.status = status
        call.updated_at = now
        self._emit(call)
        call.ended.set()
        log.debug("call %s to %s: %s", call.sid, mask_number(call.to), status.value)

    # Callbacks.

    def _emit(self, call: StandinCall) -> None:
        """The status callback for the call's new status, if it asked for one."""
        status = call.status
        event = {
            CallStatus.INITIATED: "initiated",
            CallStatus.RINGING: "ringing",
            CallStatus.IN_PROGRESS: "answered",
        }.get(status, "completed")
        if event not in call.events or not call.status_callback:
            return
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status.value,
            "CallbackSource": "call-progress-events",
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
            "Timestamp": format_date(time.time()),
            "SequenceNumber": str(call.sequence),
        }
        call.sequence += 1
        if is_final(status):
            form["CallDuration"] = str(call.duration_s or 0)
            if call.answered_by is not None and call.answered_at is not None:
                form["AnsweredBy"] = call.answered_by
        self._send(call, call.status_callback, form)

    def _send(
        self, call: StandinCall, url: str, form: dict[str, str], delay_s: float = 0.0
    ) -> None:
        drop, late, duplicate = (call.rng.random() for _ in range(3))
        callback = Callback(url, form)
        call.callbacks.append(callback)
        if drop < self.faults.drop:
            callback.dropped = True
            return
        callback.late = late < self.faults.late
        callback.copies = 2 if duplicate < self.faults.duplicate else 1
        self._spawn(self._deliver(call, callback, delay_s))

    async def _deliver(
        self, call: StandinCall, callback: Callback, delay_s: float
    ) -> None:
        if delay_s:
            await asyncio.sleep(delay_s / self.time_scale)
        if callback.late:
            await call.ended.wait()
            await asyncio.sleep(self.faults.late_s / self.time_scale)
        for _ in range(callback.copies):
            status = await self._post(callback.url, callback.form)
            if status is None:
                callback.given_up = True
                log.debug("callback for %s to %s given up", call.sid, callback.url)
                return
            callback.responses.append(status)

    async def _post(self, url: str, form: dict[str, str]) -> int | None:
        """POST a signed form, retrying like Twilio; the final HTTP status or None."""
        assert self._session is not None
        headers = {SIGNATURE_HEADER: compute_signature(self.auth_token, url, form)}
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        status: int | None = None
        for attempt in range(1 + self.callback_retries):
            if attempt:
                await asyncio.sleep(RETRY_S * attempt / self.time_scale)
            try:
                # encoded=True: sent byte for byte as given, as it was signed.
                async with self._session.post(
                    URL(url, encoded=True), data=form, headers=headers, timeout=timeout
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                continue
            if status < 500:
                return status
        return None

    # The media of an answered call.

    async def _converse(self, call: StandinCall) -> None:
        """Fetch the TwiML, run its stream for the talk time, then hang up."""
        twiml = await self._fetch_twiml(call)
        if twiml is None:
            return  # Twilio says "an application error has occurred" and ends it
        stream = _stream_of(twiml)
        if stream is None:
            await self._pause(call, call.scenario.talk_s)
            return

        # Imported here: the stream client needs numpy and websockets, which
        # a stand-in without media never uses.
        from websockets.exceptions import WebSocketException

        from benchmarks.caller import SimulatedCaller

        url, parameters = stream
        call.stream_parameters = parameters
        caller = SimulatedCaller(
            url,
            custom_parameters=parameters,
            headers={SIGNATURE_HEADER: compute_signature(self.auth_token, url, None)},
            call_sid=call.sid,
            account_sid=self.account_sid,
        )
        try:
            await caller.connect()
        except (OSError, TimeoutError, WebSocketException) as exc:
            call.media_error = f"stream refused: {exc!r}"
            await caller.close()
            return
        waits = [
            asyncio.ensure_future(call.ended.wait()),
            asyncio.ensure_future(caller.wait_closed()),
        ]
        talking = asyncio.ensure_future(self._speak(caller, call.scenario))
        try:
            await asyncio.wait(
                waits,
                timeout=call.scenario.talk_s / self.time_scale,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiting in [*waits, talking]:
                waiting.cancel()
            await asyncio.gather(*waits, talking, return_exceptions=True)
            try:
                await caller.hangup()
            except Exception as exc:  # the caller re-raises what broke its loops
                call.media_error = f"stream failed: {exc!r}"

    @staticmethod
    async def _speak(caller: Any, scenario: Scenario) -> None:
        """The callee's part: each line after the agent's turn has played."""
        after = 0.0
        for pcm in scenario.lines:
            if not await caller.wait_agent_done(after):
                return
            await caller.say(pcm)
            after = time.monotonic()
        if scenario.barge_in_line is None:
            return
        # Over the agent: wait for its next reply to start, then cut in.
        while (started := caller.first_audio_after(after)) is None:
            if caller.closed:
                return
            await asyncio.sleep(0.02)
        await asyncio.sleep(
            max(0.0, started + scenario.barge_in_after_s - time.monotonic())
        )
        if not caller.closed:
            await caller.say(scenario.barge_in_line)

    async def _fetch_twiml(self, call: StandinCall) -> str | None:
        assert self._session is not None
        form = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": CallStatus.IN_PROGRESS.value,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }
        headers = {SIGNATURE_HEADER: compute_signature(self.auth_token, call.url, form)}
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        try:
            async with self._session.post(
                URL(call.url, encoded=True), data=form, headers=headers, timeout=timeout
            ) as response:
                text = await response.text()
                if response.status != 200:
                    call.media_error = f"TwiML webhook: HTTP {response.status}"
                    return None
                return text
        except (aiohttp.ClientError, TimeoutError) as exc:
            call.media_error = f"TwiML webhook: {exc!r}"
            return None

    # Tasks.

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("carrier stand-in task failed", exc_info=task.exception())


def _stream_of(twiml: str) -> tuple[str, dict[str, str]] | None:
    """The URL and parameters of the TwiML's `<Connect><Stream>`, if it has one."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None
    stream = root.find("./Connect/Stream")
    if stream is None or not stream.get("url"):
        return None
    parameters = {
        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")
    }
    return stream.get("url", ""), parameters


def _matches(call: StandinCall, filters: dict[str, str]) -> bool:
    if "To" in filters and call.to != filters["To"]:
        return False
    if "From" in filters and call.from_ != filters["From"]:
        return False
    if "Status" in filters and call.status.value != filters["Status"]:
        return False
    started = call.started_at if call.started_at is not None else call.created_at
    day = time.strftime("%Y-%m-%d", time.gmtime(started))
    # Dates as YYYY-MM-DD compare as strings; a datetime is cut to its date.
    if "StartTime" in filters and day != filters["StartTime"][:10]:
        return False
    if "StartTime>" in filters and day < filters["StartTime>"][:10]:
        return False
    return not ("StartTime<" in filters and day > filters["StartTime<"][:10])


def _date_or_none(t: float | None) -> str | None:
    return None if t is None else format_date(t)


def _error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


def _not_found(path: str) -> web.Response:
    return _error(404, 20404, f"The requested resource {path} was not found")
