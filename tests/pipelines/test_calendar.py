"""Booking through the Google Calendar client, against the stand-in over loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pipelines.tools.calendar import (
    CalendarAuthError,
    CalendarError,
    CalendarUnavailable,
    GoogleCalendar,
    RefreshTokenCredentials,
    ServiceAccountCredentials,
    SlotUnavailable,
    book,
    event_id_for,
    overlapping,
)
from pipelines.tools.calendar_standin import CalendarStandin

CALENDAR = "sales@example.com"
ROBOT = "booker@voxdial-test.iam.gserviceaccount.com"
CLIENT_ID = "client-1.apps.googleusercontent.com"
CLIENT_SECRET = "client-secret-value"
REFRESH = "1//refresh-token-value"
BERLIN = ZoneInfo("Europe/Berlin")
TEN = datetime(2030, 5, 6, 10, 0, tzinfo=BERLIN)
LUNCH = (
    datetime(2030, 5, 6, 12, 0, tzinfo=BERLIN),
    datetime(2030, 5, 6, 13, 0, tzinfo=BERLIN),
)


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def standin(key: rsa.RSAPrivateKey) -> AsyncIterator[CalendarStandin]:
    async with CalendarStandin() as server:
        server.add_calendar(CALENDAR, busy=[LUNCH])
        server.add_service_account(ROBOT, key.public_key())
        server.add_refresh_token(CLIENT_ID, CLIENT_SECRET, REFRESH)
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def user_credentials(
    standin: CalendarStandin, session: aiohttp.ClientSession, **overrides: Any
) -> RefreshTokenCredentials:
    settings: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": REFRESH,
        "token_uri": standin.token_url,
        "session": session,
    }
    settings.update(overrides)
    return RefreshTokenCredentials(**settings)


def calendar(
    standin: CalendarStandin,
    session: aiohttp.ClientSession,
    credentials: Any = None,
    **kwargs: Any,
) -> GoogleCalendar:
    return GoogleCalendar(
        CALENDAR,
        credentials or user_credentials(standin, session),
        session,
        base_url=standin.base_url,
        **kwargs,
    )


async def book_ten(target: GoogleCalendar, request_id: str = "lead-7:attempt-1") -> Any:
    return await book(
        target,
        start=TEN,
        duration_minutes=30,
        title="Intro call",
        attendee_email="lead@example.org",
        time_zone="Europe/Berlin",
        request_id=request_id,
    )


def test_event_ids_are_valid_google_ids() -> None:
    """Event ids are stable, 5-1024 chars of base32hex, distinct per request."""
    first = event_id_for("lead-7:attempt-1")
    assert first == event_id_for("lead-7:attempt-1")
    assert first != event_id_for("lead-7:attempt-2")
    assert 5 <= len(first) <= 1024
    assert set(first) <= set("0123456789abcdefghijklmnopqrstuv")


def test_overlap_is_half_open() -> None:
    """A busy interval that only touches the slot's ends does not clash."""
    end = TEN + timedelta(minutes=30)
    assert overlapping(TEN, end, [(TEN - timedelta(hours=1), TEN)]) == []
    assert overlapping(TEN, end, [(end, end + timedelta(hours=1))]) == []
    clash = (TEN + timedelta(minutes=29), end + timedelta(hours=1))
    assert overlapping(TEN, end, [clash]) == [clash]


async def test_service_account_books_end_to_end(
    standin: CalendarStandin, session: aiohttp.ClientSession, key: rsa.RSAPrivateKey
) -> None:
    """A JSON key's signed assertion buys a token that books, acting for `subject`."""
    info = {
        "type": "service_account",
        "client_email": ROBOT,
        "private_key": pem(key),
        "private_key_id": "k1",
        "token_uri": standin.token_url,
    }
    credentials = ServiceAccountCredentials.from_info(
        info, session, subject="rep@example.com"
    )
    event = await book_ten(calendar(standin, session, credentials))
    assert event.start == TEN
    assert [(t.grant_type, t.principal, t.subject) for t in standin.issued] == [
        ("urn:ietf:params:oauth:grant-type:jwt-bearer", ROBOT, "rep@example.com")
    ]
    assert event.id in standin.events[CALENDAR]


async def test_untrusted_key_is_refused(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """An assertion signed by a key the token endpoint does not know is refused."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    credentials = ServiceAccountCredentials(
        client_email=ROBOT,
        private_key=stranger,
        token_uri=standin.token_url,
        session=session,
    )
    with pytest.raises(CalendarAuthError, match="invalid_grant"):
        await calendar(standin, session, credentials).busy(
            TEN, TEN + timedelta(hours=1)
        )


async def test_refresh_token_reads_busy(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """A refresh-token grant buys a token; freeBusy returns the seeded interval."""
    busy = await calendar(standin, session).busy(TEN, TEN + timedelta(hours=4))
    assert busy == [LUNCH]
    assert [t.principal for t in standin.issued] == [CLIENT_ID]


async def test_token_is_fetched_once_for_many_calls(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """Sequential and concurrent calls share one cached access token."""
    target = calendar(standin, session)
    window = (TEN, TEN + timedelta(hours=4))
    await target.busy(*window)
    await asyncio.gather(*(target.busy(*window) for _ in range(5)))
    assert len(standin.issued) == 1
    assert len(standin.requests) == 6


async def test_token_is_refreshed_near_expiry(
    session: aiohttp.ClientSession, key: rsa.RSAPrivateKey
) -> None:
    """Once the cached token is within a minute of expiring, a new one is fetched."""
    now = [1_900_000_000.0]
    async with CalendarStandin(clock=lambda: now[0]) as standin:
        standin.add_calendar(CALENDAR)
        standin.add_service_account(ROBOT, key.public_key())
        credentials = ServiceAccountCredentials(
            client_email=ROBOT,
            private_key=key,
            token_uri=standin.token_url,
            session=session,
            clock=lambda: now[0],
        )
        target = calendar(standin, session, credentials)
        await target.busy(TEN, TEN + timedelta(hours=1))
        now[0] += 3500
        await target.busy(TEN, TEN + timedelta(hours=1))
        assert len(standin.issued) == 1
        now[0] += 50
        await target.busy(TEN, TEN + timedelta(hours=1))
        assert len(standin.issued) == 2


async def test_revoked_token_is_replaced_once(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """A 401 on a cached token fetches a fresh one and repeats the request."""
    target = calendar(standin, session)
    await target.busy(TEN, TEN + timedelta(hours=1))
    standin.revoke_tokens()
    await target.busy(TEN, TEN + timedelta(hours=1))
    assert len(standin.issued) == 2


async def test_free_slot_creates_the_event(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """Booking a free slot inserts one event with the attendee and invites them."""
    event = await book_ten(calendar(standin, session))
    stored = standin.events[CALENDAR][event.id]
    assert stored["summary"] == "Intro call"
    assert stored["attendees"] == [
        {"email": "lead@example.org", "responseStatus": "needsAction"}
    ]
    assert stored["start"]["timeZone"] == "Europe/Berlin"
    assert (event.start, event.end) == (TEN, TEN + timedelta(minutes=30))
    assert event.html_link.startswith("http://127.0.0.1:")
    assert (
        "POST",
        f"/calendar/v3/calendars/{CALENDAR}/events",
        {"sendUpdates": "all"},
    ) in standin.requests


async def test_slot_next_to_busy_is_free(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """A slot that ends exactly when a busy interval starts can be booked."""
    await book(
        calendar(standin, session),
        start=LUNCH[0] - timedelta(minutes=30),
        duration_minutes=30,
        title="Before lunch",
        attendee_email=None,
        time_zone="Europe/Berlin",
        request_id="lead-8",
    )
    assert len(standin.events[CALENDAR]) == 1


async def test_busy_slot_is_refused(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """A slot overlapping a busy interval raises SlotUnavailable and books nothing."""
    start = LUNCH[0] + timedelta(minutes=15)
    with pytest.raises(SlotUnavailable) as caught:
        await book(
            calendar(standin, session),
            start=start,
            duration_minutes=30,
            title="Clash",
            attendee_email="lead@example.org",
            time_zone="Europe/Berlin",
            request_id="lead-9",
        )
    # freeBusy clips busy intervals to the window asked about.
    assert caught.value.busy == [(start, start + timedelta(minutes=30))]
    assert standin.events[CALENDAR] == {}


async def test_lost_insert_reply_books_once(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """An insert whose reply was lost is retried, gets 409 and resolves to one event."""
    target = calendar(standin, session)
    await target.busy(TEN, TEN + timedelta(minutes=30))  # warm the token
    standin.drop_next(1)
    event = await target.create_event(
        start=TEN,
        end=TEN + timedelta(minutes=30),
        title="Intro call",
        attendee_email="lead@example.org",
        time_zone="Europe/Berlin",
        request_id="lead-7:attempt-1",
    )
    assert list(standin.events[CALENDAR]) == [event.id]
    methods = [method for method, _, _ in standin.requests]
    assert methods == ["POST", "POST", "POST", "GET"]


async def test_repeated_booking_returns_the_first_event(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """Calling book again with the same request id returns the event already made."""
    target = calendar(standin, session)
    first = await book_ten(target)
    again = await book_ten(target)
    assert again == first
    assert len(standin.events[CALENDAR]) == 1
    with pytest.raises(SlotUnavailable):
        await book_ten(target, request_id="another-lead")


async def test_request_id_reused_for_another_slot_is_an_error(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """The same request id cannot book a second, different slot."""
    target = calendar(standin, session)
    await book_ten(target)
    with pytest.raises(CalendarError, match="different slot"):
        await target.create_event(
            start=TEN + timedelta(hours=3),
            end=TEN + timedelta(hours=4),
            title="Other",
            attendee_email=None,
            time_zone="Europe/Berlin",
            request_id="lead-7:attempt-1",
        )


async def test_bad_client_secret_is_an_auth_error(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """The token endpoint's 401 for a wrong client secret raises CalendarAuthError."""
    credentials = user_credentials(standin, session, client_secret="wrong")
    with pytest.raises(CalendarAuthError, match="401 invalid_client"):
        await book_ten(calendar(standin, session, credentials))


async def test_api_401_and_403_are_auth_errors(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """A 401 that persists after a fresh token, or a 403, raises CalendarAuthError."""
    target = calendar(standin, session)
    standin.fail_next(2, status=401)
    with pytest.raises(CalendarAuthError, match="401"):
        await target.busy(TEN, TEN + timedelta(hours=1))
    standin.fail_next(1, status=403)
    with pytest.raises(CalendarAuthError, match="403"):
        await book_ten(target)
    assert standin.events[CALENDAR] == {}


async def test_unshared_calendar_is_an_auth_error(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """freeBusy's notFound error for the calendar raises CalendarAuthError."""
    target = GoogleCalendar(
        "nobody@example.com",
        user_credentials(standin, session),
        session,
        base_url=standin.base_url,
    )
    with pytest.raises(CalendarAuthError, match="notFound"):
        await target.busy(TEN, TEN + timedelta(hours=1))


async def test_one_500_is_retried(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """A single 500 is retried and the booking goes through."""
    standin.fail_next(1, status=500)
    await book_ten(calendar(standin, session))
    assert len(standin.events[CALENDAR]) == 1


async def test_persistent_500_is_unavailable(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """500 on every attempt raises CalendarUnavailable after the retries."""
    standin.fail_next(10, status=500)
    with pytest.raises(CalendarUnavailable, match="500"):
        await book_ten(calendar(standin, session, retries=1))
    assert len(standin.requests) == 2


async def test_timeout_is_unavailable(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """An answer slower than timeout_s raises CalendarUnavailable, not retried."""
    standin.delay_next(1, seconds=2.0)
    with pytest.raises(CalendarUnavailable, match="no answer") as caught:
        await book_ten(calendar(standin, session, timeout_s=0.2))
    assert isinstance(caught.value.__cause__, TimeoutError)
    assert len(standin.requests) == 1


async def test_no_server_is_unavailable(session: aiohttp.ClientSession) -> None:
    """A refused connection raises CalendarUnavailable with the cause chained."""
    standin = CalendarStandin()
    await standin.start()
    token_url = standin.token_url
    await standin.stop()
    credentials = RefreshTokenCredentials(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        refresh_token=REFRESH,
        token_uri=token_url,
        session=session,
    )
    with pytest.raises(CalendarUnavailable) as caught:
        await credentials.token()
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_naive_datetimes_are_refused(
    standin: CalendarStandin, session: aiohttp.ClientSession
) -> None:
    """Naive datetimes raise ValueError before anything is sent."""
    target = calendar(standin, session)
    naive = datetime(2030, 5, 6, 10, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        await book(
            target,
            start=naive,
            duration_minutes=30,
            title="x",
            attendee_email=None,
            time_zone="UTC",
            request_id="r",
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        await target.busy(TEN, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        await target.create_event(
            start=naive.replace(tzinfo=UTC),
            end=naive + timedelta(hours=1),
            title="x",
            attendee_email=None,
            time_zone="UTC",
            request_id="r",
        )
    assert standin.requests == []


async def test_secrets_stay_out_of_logs_and_reprs(
    standin: CalendarStandin,
    session: aiohttp.ClientSession,
    key: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No token, secret, key, attendee or full calendar id appears in logs or reprs."""
    caplog.set_level(logging.DEBUG, logger="pipelines.tools.calendar")
    standin.fail_next(1, status=500)
    users = user_credentials(standin, session)
    robot = ServiceAccountCredentials(
        client_email=ROBOT,
        private_key=pem(key),
        token_uri=standin.token_url,
        session=session,
    )
    target = calendar(standin, session, users)
    await book_ten(target)
    await calendar(standin, session, robot).busy(TEN, TEN + timedelta(hours=1))
    assert caplog.records
    text = caplog.text + repr(users) + repr(robot) + repr(target)
    secrets = [CLIENT_SECRET, REFRESH, "lead@example.org", CALENDAR, "PRIVATE KEY"]
    secrets += [issued.token for issued in standin.issued]
    assert [s for s in secrets if s in text] == []
