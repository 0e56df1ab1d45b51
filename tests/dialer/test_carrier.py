"""The carrier layer: call statuses, and TwilioCarrier against the stand-in.

Everything runs on loopback: the stand-in is a real server speaking Twilio's
REST API, the callbacks land on a real aiohttp server here, and signatures
are checked with Twilio's own `RequestValidator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import WSMsgType, web
from twilio.request_validator import RequestValidator

from dialer.call_status import (
    CallStatus,
    format_date,
    is_final,
    merge,
    parse_callback,
    parse_date,
)
from dialer.carrier import CarrierError, DialRequest, mask_numbers_in
from dialer.carrier_standin import CarrierStandin, Faults, Scenario, Script
from dialer.twilio_carrier import TwilioCarrier
from voice.twiml import connect_stream_twiml

ACCOUNT = "AC" + "1" * 32
TOKEN = "carrier-test-token"
CALLER_ID = "+14155550100"
NUMBER = "+12125550123"
SCALE = 100.0  # scenario seconds per real second
NO_FAULTS = Faults()

S = CallStatus


def always(answer: Any, ring_s: float = 10, talk_s: float = 20) -> Script:
    return lambda to, attempt_no: Scenario(answer, ring_s, talk_s)


# The call_status core.


ONE_CALL = [S.QUEUED, S.INITIATED, S.RINGING, S.IN_PROGRESS, S.COMPLETED, S.RINGING]


def fold(statuses: list[CallStatus]) -> CallStatus | None:
    current: CallStatus | None = None
    for status in statuses:
        current = merge(current, status).status
    return current


def test_merge_is_order_independent() -> None:
    """Every order of one call's callbacks, duplicates included, merges the same."""
    for final in (S.COMPLETED, S.BUSY, S.NO_ANSWER, S.FAILED, S.CANCELED):
        sequence = [*ONE_CALL[:4], final, S.RINGING]
        results = {fold(list(p)) for p in itertools.permutations(sequence)}
        assert results == {final}
    progress = [S.INITIATED, S.RINGING, S.IN_PROGRESS, S.INITIATED]
    assert {fold(list(p)) for p in itertools.permutations(progress)} == {S.IN_PROGRESS}


def test_merge_is_idempotent() -> None:
    """Merging a status twice changes nothing the second time."""
    for current in [None, *S]:
        for new in S:
            once = merge(current, new)
            twice = merge(once.status, new)
            assert twice.status == once.status
            assert not twice.changed


def test_final_status_is_never_replaced() -> None:
    """The first final status wins; a different final one is reported as a conflict."""
    finals = [s for s in S if is_final(s)]
    for final in finals:
        for new in S:
            result = merge(final, new)
            assert result.status == final
            assert not result.changed
            assert result.conflict == (is_final(new) and new != final)
    assert merge(S.RINGING, S.INITIATED) == merge(S.RINGING, S.RINGING)
    assert merge(S.RINGING, S.BUSY).changed
    assert merge(None, S.QUEUED).changed


def test_parse_callback() -> None:
    """A status callback form is parsed; the AMD verdict reads as in-progress."""
    event = parse_callback(
        {
            "CallSid": "CA1",
            "CallStatus": "completed",
            "AnsweredBy": "machine_end_beep",
            "CallDuration": "12",
            "Timestamp": "Tue, 31 Aug 2010 20:36:28 +0000",
            "SequenceNumber": "3",
            "To": NUMBER,
            "From": CALLER_ID,
        }
    )
    assert event.status is S.COMPLETED
    assert event.duration_s == 12
    assert event.timestamp == 1283286988.0
    assert event.sequence == 3
    assert (event.to, event.from_, event.answered_by) == (
        NUMBER,
        CALLER_ID,
        "machine_end_beep",
    )
    amd = parse_callback({"CallSid": "CA1", "AnsweredBy": "human"})
    assert amd.status is S.IN_PROGRESS and amd.from_amd
    bad = parse_callback(
        {"CallSid": "CA1", "CallStatus": "ringing", "CallDuration": "x"}
    )
    assert bad.duration_s is None and bad.timestamp is None


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"CallStatus": "ringing"}, "without CallSid"),
        ({"CallSid": "CA1", "CallStatus": "exploded"}, "unknown CallStatus 'exploded'"),
        ({"CallSid": "CA1"}, "neither CallStatus nor AnsweredBy"),
    ],
)
def test_parse_callback_refuses(form: dict[str, str], message: str) -> None:
    """A form without a CallSid or a known status raises ValueError saying so."""
    with pytest.raises(ValueError, match=message):
        parse_callback(form)


def test_dates_round_trip_in_whole_seconds() -> None:
    """Twilio's RFC 2822 dates parse to POSIX times, without fractions."""
    assert format_date(1283286988.7) == "Tue, 31 Aug 2010 20:36:28 +0000"
    assert parse_date(format_date(1283286988.7)) == 1283286988.0
    assert parse_date("not a date") is None


def test_masking() -> None:
    """Numbers in carrier messages are cut to their last four digits; SIDs stay."""
    text = mask_numbers_in(
        "The 'To' number +12125550123 for CA1234567890ab is 5551234567"
    )
    assert text == "The 'To' number …0123 for CA1234567890ab is …4567"


# The rig: stand-in, callback receiver, client.


@dataclass
class Received:
    at: float
    path: str
    form: dict[str, str]
    valid: bool


class Receiver:
    """Voxdial's end of the callbacks: records each form and checks its signature."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[Received] = []
        self.fail_first = fail_first
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.validator = RequestValidator(TOKEN)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twilio/status", self._status)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _status(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        # The URL as requested, byte for byte: yarl's request.url would
        # decode %3A and break the signature.
        url = f"http://{request.host}{request.raw_path}"
        signature = request.headers.get("X-Twilio-Signature", "")
        valid = self.validator.validate(url, form, signature)
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.received.append(Received(time.time(), request.raw_path, form, valid))
        return web.Response(status=204)

    def callback_url(self, attempt: str) -> str:
        return f"{self.base_url}/twilio/status?{urlencode({'attempt': attempt})}"

    def forms(self, sid: str) -> list[dict[str, str]]:
        return [r.form for r in self.received if r.form.get("CallSid") == sid]

    def statuses(self, sid: str) -> list[str]:
        return [f["CallStatus"] for f in self.forms(sid) if "CallStatus" in f]

    async def wait_for(self, sid: str, status: str, limit_s: float = 5.0) -> None:
        deadline = time.monotonic() + limit_s
        while status not in self.statuses(sid):
            assert time.monotonic() < deadline, f"no {status} callback for {sid}"
            await asyncio.sleep(0.005)


@dataclass
class Rig:
    standin: CarrierStandin
    receiver: Receiver
    carrier: TwilioCarrier

    def request(
        self, to: str = NUMBER, attempt: str = "camp1:att1", **kw: Any
    ) -> DialRequest:
        return DialRequest(
            attempt_id=attempt,
            to=to,
            from_=CALLER_ID,
            answer_url=kw.pop(
                "answer_url", "http://127.0.0.1:9/twilio/voice?call_id=x"
            ),
            status_callback=self.receiver.callback_url(attempt),
            **kw,
        )

    async def dial(
        self, to: str = NUMBER, attempt: str = "camp1:att1", **kw: Any
    ) -> str:
        return await self.carrier.create_call(self.request(to, attempt, **kw))


@contextlib.asynccontextmanager
async def rig(
    script: Script | None = None,
    *,
    faults: Faults = NO_FAULTS,
    media: bool = False,
    seed: int = 1,
    fail_first: int = 0,
    timeout_s: float = 5.0,
    **carrier_kw: Any,
) -> AsyncIterator[Rig]:
    receiver = Receiver(fail_first)
    await receiver.start()
    standin = CarrierStandin(
        ACCOUNT,
        TOKEN,
        script=script or always("human"),
        seed=seed,
        time_scale=SCALE,
        faults=faults,
        media=media,
    )
    await standin.start()
    carrier = TwilioCarrier(
        ACCOUNT, TOKEN, base_url=standin.base_url, timeout_s=timeout_s, **carrier_kw
    )
    try:
        yield Rig(standin, receiver, carrier)
    finally:
        await carrier.close()
        await standin.stop()
        await receiver.stop()


# Calls and their callbacks.


async def test_answered_call_reports_each_event_in_order() -> None:
    """A human answers: initiated, ringing, in-progress, completed, all signed."""
    async with rig() as r:
        sid = await r.dial()
        await r.standin.wait_idle()

        assert all(x.valid for x in r.receiver.received)
        assert all("attempt=camp1%3Aatt1" in x.path for x in r.receiver.received)
        assert r.receiver.statuses(sid) == [
            "initiated",
            "ringing",
            "in-progress",
            "completed",
        ]
        forms = [f for f in r.receiver.forms(sid) if "CallStatus" in f]
        assert [f["SequenceNumber"] for f in forms] == ["0", "1", "2", "3"]
        final = forms[-1]
        assert final["AnsweredBy"] == "human"
        assert int(final["CallDuration"]) >= 1
        assert final["Direction"] == "outbound-api"
        assert (final["To"], final["From"], final["AccountSid"]) == (
            NUMBER,
            CALLER_ID,
            ACCOUNT,
        )
        verdicts = [f for f in r.receiver.forms(sid) if "CallStatus" not in f]
        assert [v["AnsweredBy"] for v in verdicts] == ["human"]
        events = [parse_callback(f) for f in r.receiver.forms(sid)]
        assert fold([e.status for e in events]) is S.COMPLETED

        # What went to Twilio, field by field.
        _, path, form = r.standin.requests[0]
        assert path == f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json"
        fields = dict(form)
        assert [v for k, v in form if k == "StatusCallbackEvent"] == [
            "initiated",
            "ringing",
            "answered",
            "completed",
        ]
        assert fields["MachineDetection"] == "Enable"
        assert fields["AsyncAmd"] == "true"
        assert fields["AsyncAmdStatusCallback"] == fields["StatusCallback"]
        assert (fields["Method"], fields["StatusCallbackMethod"]) == ("POST", "POST")
        assert fields["Timeout"] == "30"

        truth = r.standin.calls[sid]
        assert truth.attempt == "camp1:att1"
        assert truth.status is S.COMPLETED
        assert truth.answered_at is not None and truth.ended_at is not None
        call = await r.carrier.get_call(sid)
        assert call is not None
        assert (call.status, call.to, call.from_, call.answered_by) == (
            S.COMPLETED,
            NUMBER,
            CALLER_ID,
            "human",
        )
        assert call.duration_s == truth.duration_s
        assert call.created_at == int(truth.created_at)


@pytest.mark.parametrize(
    ("scenario", "expected", "answered_by"),
    [
        (
            Scenario("voicemail", 10, 20),
            ["initiated", "ringing", "in-progress", "completed"],
            "machine_end_beep",
        ),
        (Scenario("busy", 10), ["initiated", "ringing", "busy"], None),
        (Scenario("no-answer", 10), ["initiated", "ringing", "no-answer"], None),
        (Scenario("failed", 10), ["initiated", "failed"], None),
        (Scenario("human", 40), ["initiated", "ringing", "no-answer"], None),
    ],
    ids=["voicemail", "busy", "no-answer", "failed", "rings-past-timeout"],
)
async def test_scripted_outcomes(
    scenario: Scenario, expected: list[str], answered_by: str | None
) -> None:
    """Each scripted outcome produces Twilio's callbacks, and the carrier agrees."""
    async with rig(lambda to, n: scenario) as r:
        sid = await r.dial()
        await r.standin.wait_idle()
        assert r.receiver.statuses(sid) == expected
        final = r.receiver.forms(sid)[-1] if answered_by is None else None
        if final is not None:
            assert final["CallDuration"] == "0" and "AnsweredBy" not in final
        call = await r.carrier.get_call(sid)
        assert call is not None
        assert call.status == expected[-1]
        assert call.answered_by == answered_by
        assert (call.duration_s is None) == (answered_by is None)


async def test_without_machine_detection() -> None:
    """AMD off: no AMD fields sent, no verdict callback, no AnsweredBy."""
    async with rig() as r:
        sid = await r.dial(machine_detection=False)
        await r.standin.wait_idle()
        fields = dict(r.standin.requests[0][2])
        assert "MachineDetection" not in fields and "AsyncAmd" not in fields
        forms = r.receiver.forms(sid)
        assert len(forms) == 4
        assert all("AnsweredBy" not in f for f in forms)


async def test_cancel_while_ringing() -> None:
    """A ringing call is canceled; afterwards cancel and hang-up say it is past that."""
    async with rig(always("human", ring_s=1000)) as r:
        sid = await r.dial(ring_timeout_s=600)
        await r.receiver.wait_for(sid, "ringing")
        assert await r.carrier.cancel_call(sid) is True
        await r.standin.wait_idle()
        assert r.receiver.statuses(sid) == ["initiated", "ringing", "canceled"]
        call = await r.carrier.get_call(sid)
        assert call is not None and call.status is S.CANCELED
        assert await r.carrier.cancel_call(sid) is False
        assert await r.carrier.hang_up(sid) is False
        assert r.standin.calls[sid].answered_at is None


async def test_cancel_leaves_answered_call_and_hang_up_ends_it() -> None:
    """Cancel leaves an answered call; hang-up ends it early, with a duration."""
    async with rig(always("human", ring_s=10, talk_s=100_000)) as r:
        sid = await r.dial()
        await r.receiver.wait_for(sid, "in-progress")
        assert await r.carrier.cancel_call(sid) is False
        call = await r.carrier.get_call(sid)
        assert call is not None and call.status is S.IN_PROGRESS
        assert await r.carrier.hang_up(sid) is True
        await r.standin.wait_idle()
        assert r.receiver.statuses(sid)[-1] == "completed"
        truth = r.standin.calls[sid]
        assert truth.duration_s == 1
        assert truth.ended_at is not None and truth.ended_at - truth.created_at < 5
        assert await r.carrier.hang_up(sid) is False
        assert await r.carrier.get_call("CA" + "f" * 32) is None


async def test_hang_up_of_a_ringing_call_cancels_it() -> None:
    """Status=completed on an unanswered call ends it as canceled."""
    async with rig(always("human", ring_s=1000)) as r:
        sid = await r.dial(ring_timeout_s=600)
        await r.receiver.wait_for(sid, "ringing")
        assert await r.carrier.hang_up(sid) is True
        await r.standin.wait_idle()
        assert r.standin.calls[sid].status is S.CANCELED


async def test_find_calls_filters_and_follows_pages() -> None:
    """find_calls returns the calls to a number since a time, over several pages."""
    async with rig(always("failed"), page_size=1) as r:
        since = time.time()
        first = await r.dial(NUMBER, "c:1")
        await r.dial("+12125550999", "c:2")
        second = await r.dial(NUMBER, "c:3")
        await r.standin.wait_idle()

        found = await r.carrier.find_calls(NUMBER, CALLER_ID, since)
        assert [c.sid for c in found] == [second, first]
        assert all(c.status is S.FAILED for c in found)
        lists = [p for m, p, _ in r.standin.requests if m == "GET"]
        assert "StartTime%3E=" in lists[0] and "PageSize=1" in lists[0]
        assert any("Page=1" in p for p in lists)

        assert await r.carrier.find_calls(NUMBER, "+14155550111", since) == []
        assert await r.carrier.find_calls(NUMBER, CALLER_ID, time.time() + 5) == []
        r.carrier.max_pages = 1
        assert len(await r.carrier.find_calls(NUMBER, CALLER_ID, since)) == 1


# Faults.


async def test_duplicated_callbacks_change_nothing() -> None:
    """Every callback sent twice: same sequence numbers, same merged status."""
    async with rig(faults=Faults(duplicate=1.0)) as r:
        sid = await r.dial(machine_detection=False)
        await r.standin.wait_idle()
        forms = r.receiver.forms(sid)
        assert len(forms) == 8
        assert sorted(f["SequenceNumber"] for f in forms) == [
            "0",
            "0",
            "1",
            "1",
            "2",
            "2",
            "3",
            "3",
        ]
        assert fold([CallStatus(f["CallStatus"]) for f in forms]) is S.COMPLETED


async def test_late_callbacks_arrive_out_of_order() -> None:
    """Late callbacks arrive after later ones; the merge still ends in the truth."""
    async with rig(faults=Faults(late=0.5), seed=3) as r:
        sids = [await r.dial(f"+1212555{i:04d}", f"c:{i}") for i in range(6)]
        await r.standin.wait_idle()
        reordered = 0
        for sid in sids:
            sequence = [
                int(f["SequenceNumber"])
                for f in r.receiver.forms(sid)
                if "CallStatus" in f
            ]
            reordered += sequence != sorted(sequence)
            statuses = [CallStatus(s) for s in r.receiver.statuses(sid)]
            assert fold(statuses) is r.standin.calls[sid].status is S.COMPLETED
        assert reordered > 0
        assert any(cb.late for sid in sids for cb in r.standin.calls[sid].callbacks)


async def test_dropped_callbacks_are_reconciled_through_the_api() -> None:
    """No callback at all: get_call and find_calls still give the final status."""
    async with rig(always("busy"), faults=Faults(drop=1.0)) as r:
        since = time.time()
        sid = await r.dial()
        await r.standin.wait_idle()
        assert r.receiver.received == []
        call = await r.carrier.get_call(sid)
        assert call is not None and call.status is S.BUSY
        assert [
            c.sid for c in await r.carrier.find_calls(NUMBER, CALLER_ID, since)
        ] == [sid]


async def test_faults_mixed_still_settle_every_call() -> None:
    """Dropped, late and doubled callbacks at once: callbacks or lookups tell."""
    faults = Faults(drop=0.3, late=0.3, duplicate=0.3)
    async with rig(None, faults=faults, seed=5) as r:
        r.standin.script = lambda to, n: Scenario(
            ("human", "busy", "no-answer", "voicemail", "failed")[int(to[-2:]) % 5],
            5,
            10,
        )
        sids = [await r.dial(f"+1212555{i:04d}", f"c:{i}") for i in range(15)]
        await r.standin.wait_idle()
        callbacks = [cb for sid in sids for cb in r.standin.calls[sid].callbacks]
        assert any(cb.dropped for cb in callbacks)
        assert any(cb.late for cb in callbacks)
        assert any(cb.copies == 2 for cb in callbacks)
        for sid in sids:
            truth = r.standin.calls[sid].status
            merged = fold([CallStatus(s) for s in r.receiver.statuses(sid)])
            if merged is None or not is_final(merged):
                call = await r.carrier.get_call(sid)
                assert call is not None
                merged = merge(merged, call.status).status
            assert merged is truth


async def test_callback_delivery_is_retried_then_given_up() -> None:
    """A 5xx is retried until accepted; an unreachable callback URL is given up."""
    async with rig(always("failed"), fail_first=2) as r:
        sid = await r.dial()
        await r.standin.wait_idle()
        assert r.receiver.statuses(sid) == ["initiated", "failed"]
        assert r.standin.calls[sid].callbacks[0].responses == [204]

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{s.getsockname()[1]}/status?attempt=c:9"
        request = r.request()
        request = DialRequest(**{**request.__dict__, "status_callback": closed})
        sid = await r.carrier.create_call(request)
        await r.standin.wait_idle()
        assert all(cb.given_up for cb in r.standin.calls[sid].callbacks)


# Errors.


async def test_error_after_create_is_placed_unknown() -> None:
    """A 500 after the call was made: placed unknown, retryable, and the call exists."""
    async with rig(always("failed"), faults=Faults(error_after_create=1.0)) as r:
        since = time.time()
        with pytest.raises(CarrierError) as caught:
            await r.dial()
        assert (caught.value.placed, caught.value.retryable, caught.value.status) == (
            None,
            True,
            500,
        )
        assert len(r.standin.calls) == 1
        await r.standin.wait_idle()
        assert len(await r.carrier.find_calls(NUMBER, CALLER_ID, since)) == 1


async def test_timeout_after_create_is_placed_unknown() -> None:
    """No answer within the client's timeout: placed unknown, and the call exists."""
    faults = Faults(timeout_after_create=1.0, hold_s=30)
    async with rig(always("failed"), faults=faults, timeout_s=0.3) as r:
        with pytest.raises(CarrierError) as caught:
            await r.dial()
        assert (caught.value.placed, caught.value.retryable) == (None, True)
        assert "no answer within 0.3 s" in str(caught.value)
        assert len(r.standin.calls) == 1


async def test_rate_limited_dial_is_not_placed_and_retryable() -> None:
    """429: nothing was made, and trying later may work."""
    async with rig(faults=Faults(rate_limit=1.0)) as r:
        with pytest.raises(CarrierError) as caught:
            await r.dial()
        error = caught.value
        assert (error.placed, error.retryable, error.status, error.code) == (
            False,
            True,
            429,
            20429,
        )
        assert r.standin.calls == {}


async def test_invalid_number_is_refused_and_masked() -> None:
    """A To that is not E.164: 400, not placed, not retryable; the number masked."""
    async with rig() as r:
        with pytest.raises(CarrierError) as caught:
            await r.dial("5551234567")
        error = caught.value
        assert (error.placed, error.retryable, error.status, error.code) == (
            False,
            False,
            400,
            21211,
        )
        assert "5551234567" not in str(error) and "…4567" in str(error)
        assert r.standin.calls == {}


async def test_bad_credentials_and_no_server() -> None:
    """Wrong token: 401, not placed. Nobody listening: not placed, retryable."""
    async with rig() as r:
        wrong = TwilioCarrier(ACCOUNT, "wrong", base_url=r.standin.base_url)
        try:
            with pytest.raises(CarrierError) as caught:
                await wrong.create_call(r.request())
            assert (caught.value.status, caught.value.placed) == (401, False)
        finally:
            await wrong.close()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{s.getsockname()[1]}"
    carrier = TwilioCarrier(ACCOUNT, TOKEN, base_url=nowhere)
    request = DialRequest(
        "a", NUMBER, CALLER_ID, "http://x/voice", "http://x/status?attempt=a"
    )
    try:
        with pytest.raises(CarrierError) as caught:
            await carrier.create_call(request)
        assert (caught.value.placed, caught.value.retryable) == (False, True)
        with pytest.raises(CarrierError) as caught:
            await carrier.get_call("CA1")
        assert caught.value.placed is None
    finally:
        await carrier.close()


# Media.


class VoiceApp:
    """The TwiML webhook and media stream as voxdial serves them, minus the agent."""

    def __init__(self) -> None:
        self.webhooks: list[tuple[dict[str, str], bool]] = []
        self.messages: list[dict[str, Any]] = []
        self.upgrade_valid: list[bool] = []
        self.started = asyncio.Event()
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self.validator = RequestValidator(TOKEN)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/twilio/voice", self._voice)
        app.router.add_get("/stream", self._stream)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/stream"

    async def _voice(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = f"http://{request.host}{request.raw_path}"
        valid = self.validator.validate(
            url, form, request.headers.get("X-Twilio-Signature", "")
        )
        self.webhooks.append((form, valid))
        twiml = connect_stream_twiml(
            self.stream_url, {"call_id": "c1", "lead_id": "l1"}
        )
        return web.Response(text=twiml, content_type="text/xml")

    async def _stream(self, request: web.Request) -> web.WebSocketResponse:
        signature = request.headers.get("X-Twilio-Signature", "")
        self.upgrade_valid.append(
            self.validator.validate(self.stream_url, {}, signature)
        )
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                self.messages.append(json.loads(message.data))
                if self.messages[-1]["event"] == "start":
                    self.started.set()
        return ws

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages if m["event"] != "media"]


@contextlib.asynccontextmanager
async def voice_app() -> AsyncIterator[VoiceApp]:
    app = VoiceApp()
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def test_answered_call_opens_the_media_stream() -> None:
    """media=True: a signed TwiML webhook, and a stream started with its parameters."""
    async with voice_app() as app, rig(always("human", 10, 30), media=True) as r:
        sid = await r.dial(answer_url=f"{app.base_url}/twilio/voice?call_id=c1")
        await r.standin.wait_idle()
        form, valid = app.webhooks[0]
        assert valid and form["CallSid"] == sid and form["CallStatus"] == "in-progress"
        assert app.upgrade_valid == [True]
        assert app.events() == ["connected", "start", "stop"]
        start = app.messages[1]["start"]
        assert start["customParameters"] == {"call_id": "c1", "lead_id": "l1"}
        assert (start["callSid"], start["accountSid"]) == (sid, ACCOUNT)
        assert any(m["event"] == "media" for m in app.messages)
        truth = r.standin.calls[sid]
        assert truth.stream_parameters == {"call_id": "c1", "lead_id": "l1"}
        assert truth.media_error is None and truth.status is S.COMPLETED


async def test_hang_up_ends_the_media_stream() -> None:
    """A hang-up during the stream stops it and completes the call."""
    async with voice_app() as app, rig(always("human", 10, 100_000), media=True) as r:
        sid = await r.dial(answer_url=f"{app.base_url}/twilio/voice")
        await asyncio.wait_for(app.started.wait(), 5)
        assert await r.carrier.hang_up(sid) is True
        await r.standin.wait_idle()
        assert app.events()[-1] == "stop"
        assert r.standin.calls[sid].status is S.COMPLETED


async def test_unreachable_webhook_ends_the_call() -> None:
    """No TwiML: the answered call ends at once, and the error is recorded."""
    async with rig(always("human", 10, 100_000), media=True) as r:
        sid = await r.dial()
        await r.standin.wait_idle(limit_s=5)
        truth = r.standin.calls[sid]
        assert truth.status is S.COMPLETED
        assert truth.media_error is not None and "TwiML webhook" in truth.media_error


# The ground truth.


async def test_overlapping_calls_to_one_number() -> None:
    """Two live calls to one number overlap; calls one after the other do not."""
    async with rig(always("human", 10, 20)) as r:
        first = await r.dial(NUMBER, "c:1")
        second = await r.dial(NUMBER, "c:2")
        other = "+12125550999"
        third = await r.dial(other, "c:3")
        await r.standin.wait_idle()
        fourth = await r.dial(other, "c:4")
        await r.standin.wait_idle()
        assert r.standin.overlapping_calls() == [(first, second)]
        assert [c.sid for c in r.standin.calls_to(other)] == [third, fourth]
        assert [c.attempt_no for c in r.standin.calls_to(other)] == [1, 2]
        assert [c.attempt for c in r.standin.calls_to(NUMBER)] == ["c:1", "c:2"]


async def test_stop_leaves_no_task_behind() -> None:
    """Stopping with calls still ringing ends every timer and socket."""
    async with rig(always("human", ring_s=1000)) as r:
        for i in range(3):
            await r.dial(f"+1212555{i:04d}", f"c:{i}", ring_timeout_s=600)
    assert asyncio.all_tasks() == {asyncio.current_task()}
