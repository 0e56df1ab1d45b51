"""The agent's tools: times in the lead's zone, windows, bookings, opt-outs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from campaign_store.models import HourRange, Schedule
from dialer.window import Jurisdictions, window_for
from pipelines.llm import ToolCall
from pipelines.tools.agent_tools import (
    AgentTools,
    CallEffects,
    ToolContext,
    local_instant,
)
from pipelines.tools.calendar import GoogleCalendar, RefreshTokenCredentials
from pipelines.tools.calendar_standin import CalendarStandin

NY = "America/New_York"
# Monday 2026-12-07 10:00 in New York.
MONDAY_10 = datetime(2026, 12, 7, 10, 0, tzinfo=ZoneInfo(NY)).timestamp()
WEEKDAYS_9_TO_5 = Schedule(
    days=["mon", "tue", "wed", "thu", "fri"],
    hours=[HourRange(start="09:00", end="17:00")],
    timezone=NY,
)


def call(name: str, **arguments: object) -> ToolCall:
    return ToolCall(id=f"call_{name}", name=name, arguments=json.dumps(arguments))


def tools(
    enabled: tuple[str, ...] = ("end_call", "schedule_callback", "opt_out"),
    **context: object,
) -> AgentTools:
    base = ToolContext(
        timezone=NY,
        window=window_for(WEEKDAYS_9_TO_5, NY, "+12125550101", Jurisdictions({}, None)),
        clock=lambda: MONDAY_10,
    )
    for key, value in context.items():
        setattr(base, key, value)
    return AgentTools(enabled, base, CallEffects())


def local(at: float) -> str:
    return datetime.fromtimestamp(at, ZoneInfo(NY)).isoformat(timespec="minutes")


def test_a_repeated_wall_time_means_the_first_one() -> None:
    """01:30 on the night clocks fall back is the daylight-saving 01:30."""
    at = local_instant("2026-11-01T01:30", NY)
    assert at == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_a_wall_time_in_the_gap_moves_forward_by_the_gap() -> None:
    """02:30 on the night clocks spring forward becomes 03:30."""
    at = local_instant("2026-03-08T02:30", NY)
    assert at.astimezone(ZoneInfo(NY)).strftime("%H:%M") == "03:30"


def test_an_explicit_offset_is_respected_and_garbage_refused() -> None:
    """A time with an offset means that instant; a non-time is a ValueError."""
    assert local_instant("2026-12-08T15:00+00:00", NY).hour == 15
    with pytest.raises(ValueError):
        local_instant("tomorrow at three", NY)


async def test_callback_inside_the_window_is_booked_as_asked() -> None:
    """Tuesday 15:00 local is open: the callback is set there, outcome callback."""
    agent = tools()
    result = await agent.run(call("schedule_callback", when="2026-12-08T15:00"))
    assert agent.effects.outcome == "callback"
    assert agent.effects.callback_at is not None
    assert local(agent.effects.callback_at) == "2026-12-08T15:00-05:00"
    assert "Tuesday, December 8 at 3:00 PM" in result.content and result.follow_up


async def test_callback_outside_the_window_moves_to_the_next_open_moment() -> None:
    """Saturday is closed: the callback moves to Monday 09:00 and says so."""
    agent = tools()
    result = await agent.run(call("schedule_callback", when="2026-12-12T11:00"))
    assert agent.effects.callback_at is not None
    assert local(agent.effects.callback_at) == "2026-12-14T09:00-05:00"
    assert "outside calling hours" in result.content
    assert "Monday, December 14 at 9:00 AM" in result.content


async def test_callback_across_a_dst_change_keeps_the_local_hour() -> None:
    """A callback asked in November for a March afternoon is 15:00 in EDT."""
    agent = tools()
    await agent.run(call("schedule_callback", when="2027-03-16T15:00"))
    assert agent.effects.callback_at is not None
    assert local(agent.effects.callback_at) == "2027-03-16T15:00-04:00"


async def test_callback_in_the_past_or_unreadable_is_refused() -> None:
    """The model is told to ask again; nothing is booked."""
    agent = tools()
    past = await agent.run(call("schedule_callback", when="2026-12-01T10:00"))
    garbled = await agent.run(call("schedule_callback", when="next week"))
    assert "already passed" in past.content and "Could not read" in garbled.content
    assert agent.effects.callback_at is None and agent.effects.outcome == ""


async def test_opt_out_is_immediate_final_and_idempotent() -> None:
    """The list is written once, the outcome stays do_not_call whatever follows."""
    written: list[str] = []

    async def add() -> None:
        written.append("+12125550101")

    agent = tools(opt_out=add)
    result = await agent.run(call("opt_out"))
    await agent.run(call("opt_out"))
    await agent.run(call("end_call", outcome="qualified"))
    assert written == ["+12125550101"]
    assert agent.effects.outcome == "do_not_call" and agent.effects.hang_up
    assert "do-not-call" in result.content


async def test_end_call_outcomes_and_bad_calls() -> None:
    """Unknown outcomes become completed; unknown tools and bad JSON are results."""
    agent = tools()
    done = await agent.run(call("end_call", outcome="ecstatic", reason="Happy."))
    assert agent.effects.outcome == "completed" and not done.follow_up
    assert agent.effects.reason == "Happy."
    missing = await agent.run(call("launch_rocket"))
    bad = await agent.run(ToolCall(id="x", name="end_call", arguments="{nope"))
    assert "no tool" in missing.content and "JSON object" in bad.content


def test_booking_is_offered_only_with_a_calendar() -> None:
    """Without a connected calendar the model never sees book_meeting."""
    names = [
        t["function"]["name"] for t in tools(("end_call", "book_meeting")).definitions()
    ]
    assert names == ["end_call"]


@pytest.fixture
async def calendar() -> AsyncIterator[tuple[CalendarStandin, GoogleCalendar]]:
    standin = CalendarStandin()
    await standin.start()
    standin.add_calendar("clinic@example.com")
    standin.add_refresh_token("client", "secret", "refresh")
    async with aiohttp.ClientSession() as session:
        credentials = RefreshTokenCredentials(
            client_id="client",
            client_secret="secret",
            refresh_token="refresh",
            session=session,
            token_uri=standin.token_url,
        )
        client = GoogleCalendar(
            "clinic@example.com", credentials, session, base_url=standin.base_url
        )
        try:
            yield standin, client
        finally:
            await standin.stop()


async def test_book_meeting_creates_the_event_once(
    calendar: tuple[CalendarStandin, GoogleCalendar],
) -> None:
    """A free slot becomes an event with the attendee; the outcome is qualified."""
    standin, client = calendar
    agent = tools(("book_meeting",), calendar=client, call_id="c1")
    booked = call(
        "book_meeting",
        start="2026-12-09T11:00",
        duration_minutes=30,
        title="Consultation",
        attendee_email="ada@example.com",
    )
    result = await agent.run(booked)
    again = await agent.run(booked)  # the model repeats itself: still one event
    events = list(standin.events["clinic@example.com"].values())
    assert len(events) == 1, events
    assert [a["email"] for a in events[0]["attendees"]] == ["ada@example.com"]
    assert agent.effects.outcome == "qualified" and agent.effects.booking is not None
    assert "Booked" in result.content and "Booked" in again.content


async def test_a_taken_slot_or_a_dead_calendar_is_said_not_raised(
    calendar: tuple[CalendarStandin, GoogleCalendar],
) -> None:
    """Busy: offer another time. Failing: offer a callback. No booking either way."""
    standin, client = calendar
    start = datetime(2026, 12, 9, 11, 0, tzinfo=ZoneInfo(NY))
    standin.add_calendar(
        "clinic@example.com", busy=[(start, start + timedelta(hours=1))]
    )
    agent = tools(("book_meeting",), calendar=client, call_id="c2")
    taken = await agent.run(
        call("book_meeting", start="2026-12-09T11:15", duration_minutes=30)
    )
    standin.fail_next(10, status=503)
    down = await agent.run(
        call("book_meeting", start="2026-12-10T11:15", duration_minutes=30)
    )
    assert "already taken" in taken.content and "cannot be reached" in down.content
    assert agent.effects.booking is None and agent.effects.outcome == ""
