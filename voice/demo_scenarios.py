"""What `voxdial demo` plays: the clinic, its leads, its callees and its script.

Everything here is data or a pure function of the time it is given, so the
demo's orchestration (`voice.demo`) holds no story and this module holds no
I/O. Its parts:

- `SCENARIOS`: how a callee answers, one per outcome the demo shows. Leads
  take them in turn, so any eight consecutive leads cover every one.
- `plan_leads`: the lead list. Leads go into zones spread around the globe;
  the first eight (one per scenario), and two of every three after them, are
  in a zone whose calling window is open now, the others in a zone where it
  is closed, so they visibly wait. Which zones those are depends on the hour
  the demo runs, never on a fixed list.
- `CLINIC_SCRIPT` and `ClinicScript`: the scripted LLM stand-in's answers for
  this campaign, with times filled in when each request comes (tomorrow is a
  date in the lead's own zone).
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from campaign_store.models import Schedule
from dialer.window import Jurisdictions, window_for
from pipelines.llm_standin import Rule, Script

__all__ = [
    "CLINIC",
    "CLINIC_SCRIPT",
    "SCENARIOS",
    "ClinicScript",
    "DemoScenario",
    "PlannedLead",
    "appointment_slot",
    "plan_leads",
]

CLINIC = "Maple Street Clinic"
# A zone counts as open (or closed) only with this much time before it
# changes, so that no lead crosses its window's edge while the demo runs.
EDGE_MARGIN_S = 30 * 60.0

Answer = Literal["human", "voicemail", "busy", "no-answer"]


@dataclass(frozen=True)
class DemoScenario:
    """How one callee answers: who picks up, what they say, where it ends."""

    name: str
    answer: Answer
    says: tuple[str, ...] = ()  # each once the agent has gone quiet
    over_agent: str = ""  # said ~1.5 s into the agent's next reply
    expect: str = ""  # the lead status it should end in, in words


SCENARIOS: tuple[DemoScenario, ...] = (
    DemoScenario(
        "booked",
        "human",
        ("Yes, I can make it. Please book it for me. Tuesdays suit me best.",),
        expect="qualified, the visit on the calendar",
    ),
    DemoScenario(
        "callback",
        "human",
        ("I am driving right now. Can you call me back tomorrow afternoon?",),
        expect="callback, tomorrow at 15:00 local",
    ),
    DemoScenario(
        "not_interested",
        "human",
        ("No thanks, I am not interested anymore. I moved to another clinic.",),
        expect="not interested",
    ),
    DemoScenario(
        "opt_out",
        "human",
        ("Please stop calling me. Take me off your list.",),
        expect="do not call (the phrase detector, not the model)",
    ),
    DemoScenario(
        "interrupts",
        "human",
        ("What are your opening hours on Friday?",),
        over_agent="Sorry, I have to go now. Goodbye.",
        expect="completed, with a barge-in",
    ),
    DemoScenario("no_answer", "no-answer", expect="no answer, retried"),
    DemoScenario("busy", "busy", expect="no answer (busy), retried"),
    DemoScenario(
        "voicemail",
        "voicemail",
        ("Hi, you have reached my voicemail. Please leave a message after the tone.",),
        expect="voicemail, retried",
    ),
)

OPENING_HOURS = (
    "We open at eight in the morning on weekdays and close at six in the "
    "evening. On Saturdays we open at nine and close at one. We are closed on "
    "Sundays, but the phone line stays open for anything urgent, and parking "
    "is free for patients behind the building."
)

# The rules match the caller's last words (or "tool:<name>" after a tool);
# $names are filled per request by `ClinicScript`. The first rule answers the
# structured extraction after each call, whose transcript starts "Agent:".
CLINIC_SCRIPT: dict[str, Any] = {
    "rules": [
        {"pattern": r"^Agent", "reply": "$extracted"},
        {
            "pattern": "^tool:schedule_callback$",
            "reply": "I will call you back tomorrow at three. Drive safely, goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "callback"}}],
        },
        {
            "pattern": "^tool:book_meeting$",
            "reply": "You are all set, we will see you then. Goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "qualified"}}],
        },
        {
            "pattern": r"\bvoicemail\b|leave a message",
            "reply": f"Hello, this is {CLINIC} about your appointment. Please call "
            "us back to confirm it. Goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "voicemail"}}],
        },
        {
            "pattern": r"not interested",
            "reply": "I understand. Thank you for letting us know, and goodbye!",
            "tool_calls": [
                {"name": "end_call", "arguments": {"outcome": "not_interested"}}
            ],
        },
        {
            "pattern": r"\bcall (me )?back\b",
            "reply": "Of course.",
            "tool_calls": [
                {
                    "name": "schedule_callback",
                    "arguments": {"when": "${tomorrow}T15:00"},
                }
            ],
        },
        {
            "pattern": r"\bbook\b|make it|confirm",
            "reply": "Wonderful, I am putting it in the calendar now.",
            "tool_calls": [
                {
                    "name": "book_meeting",
                    "arguments": {
                        "start": "$appointment_start",
                        "duration_minutes": 30,
                        "title": f"Check-up at {CLINIC}",
                        "attendee_email": "$email",
                    },
                }
            ],
        },
        {"pattern": r"\bhours\b|\bopen", "reply": OPENING_HOURS},
        {
            "pattern": r"\b(good ?bye|bye|have to go)\b",
            "reply": "Of course. Goodbye!",
            "tool_calls": [{"name": "end_call", "arguments": {"outcome": "completed"}}],
        },
    ],
    # Deliberately deaf to opt-outs: the phrase detector must catch them.
    "default_reply": "I see. Thank you for letting me know.",
}

_ZONE = re.compile(r"where the lead is \(([^)]+)\)")
_LEAD_DATA = re.compile(r"<lead_data>\s*(\{.*?\})\s*</lead_data>", re.DOTALL)
_WEEKDAY = re.compile(
    r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?\b", re.I
)


def _extracted(transcript: str) -> str:
    """The scripted extraction: what a model would read off the caller's words."""
    said = " ".join(
        line.split(":", 1)[1]
        for line in transcript.splitlines()
        if line.startswith("Caller") and ":" in line
    )
    day = _WEEKDAY.search(said)
    attending: bool | None = None
    if re.search(r"make it|\bbook\b", said, re.I):
        attending = True
    elif re.search(r"not interested", said, re.I):
        attending = False
    values = {
        "preferred_day": day.group(1).capitalize() if day else None,
        "attending": attending,
    }
    return json.dumps(values)


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return string.Template(value).safe_substitute(values)
    if isinstance(value, dict):
        return {k: _fill(v, values) for k, v in value.items()}
    return value


def _joined(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The messages with the caller's trailing turns made one."""
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "user":
        start -= 1
    if len(messages) - start < 2:
        return list(messages)
    text = " ".join(str(m.get("content", "")) for m in messages[start:])
    return [*messages[:start], {"role": "user", "content": text}]


class ClinicScript(Script):
    """`CLINIC_SCRIPT` with its $names filled from the request and the clock.

    `$tomorrow` is tomorrow's date in the zone the system prompt names,
    `$<field>` a value of the lead's data, `$extracted` the extraction's JSON.
    """

    def answer(self, messages: Sequence[Mapping[str, Any]]) -> Rule:
        # A callee's line may reach the agent as two turns (a pause between
        # sentences ends a turn); a model reads both, so the rules do too.
        rule = super().answer(_joined(messages))
        system = next(
            (str(m.get("content")) for m in messages if m.get("role") == "system"),
            "",
        )
        values: dict[str, str] = {}
        if (data := _LEAD_DATA.search(system)) is not None:
            values.update({str(k): str(v) for k, v in json.loads(data[1]).items()})
        if (zone := _ZONE.search(system)) is not None:
            tomorrow = datetime.now(ZoneInfo(zone[1])) + timedelta(days=1)
            values["tomorrow"] = tomorrow.date().isoformat()
        if "$extracted" in rule.reply:
            last = str(messages[-1].get("content", "")) if messages else ""
            values["extracted"] = _extracted(last)
        calls = tuple(
            (name, _fill(dict(args), values)) for name, args in rule.tool_calls
        )
        return replace(rule, reply=_fill(rule.reply, values), tool_calls=calls)


# Leads: where they live, who they are, when their visit is.


@dataclass(frozen=True)
class Place:
    zone: str
    number: str  # an example number there; leads vary its last three digits


PLACES: tuple[Place, ...] = (
    Place("Pacific/Honolulu", "+18085550100"),
    Place("America/Los_Angeles", "+14155550100"),
    Place("America/Chicago", "+13125550100"),
    Place("America/New_York", "+12125550100"),
    Place("America/Sao_Paulo", "+5511961234000"),
    Place("Europe/London", "+447400123000"),
    Place("Europe/Berlin", "+4915123456000"),
    Place("Africa/Nairobi", "+254712123000"),
    Place("Asia/Kolkata", "+918123456000"),
    Place("Asia/Singapore", "+6581234000"),
    Place("Asia/Tokyo", "+819012345000"),
    Place("Australia/Sydney", "+61412345000"),
    Place("Pacific/Auckland", "+64211234000"),
)

FIRST_NAMES = (
    "Ada Grace Alan Edsger Barbara Donald Margaret Ken Frances John Radia Tim "
    "Hedy Dennis Katherine Linus Sophie Niklaus Annie Guido Lynn Bjarne Joan Vint"
).split()
LAST_NAMES = (
    "Lovelace Hopper Turing Dijkstra Liskov Knuth Hamilton Thompson Allen Backus "
    "Perlman Berners-Lee Lamarr Ritchie Johnson Torvalds Wilson Wirth Easley "
    "Rossum Conway Stroustrup Clarke Cerf"
).split()


@dataclass(frozen=True)
class PlannedLead:
    """One row of the demo's lead list, and the scenario its callee plays."""

    name: str
    phone: str
    zone: str
    scenario: DemoScenario
    callable_now: bool
    appointment_start: str  # local, YYYY-MM-DDTHH:MM
    appointment_time: str  # the same, as the agent says it

    @property
    def email(self) -> str:
        return self.name.lower().replace(" ", ".") + "@example.com"

    def row(self) -> dict[str, str]:
        """The lead as a CSV row (the columns `CSV_COLUMNS` names)."""
        return {
            "name": self.name,
            "phone": self.phone,
            "timezone": self.zone,
            "clinic": CLINIC,
            "appointment_time": self.appointment_time,
            "appointment_start": self.appointment_start,
            "email": self.email,
        }


CSV_COLUMNS = (
    "name",
    "phone",
    "timezone",
    "clinic",
    "appointment_time",
    "appointment_start",
    "email",
)


def _zones_by_state(
    now: float, schedule: Schedule, jurisdictions: Jurisdictions
) -> tuple[list[Place], list[Place]]:
    """(open, closed): places whose window stays so for `EDGE_MARGIN_S` at least."""
    opened, closed = [], []
    for place in PLACES:
        window = window_for(schedule, place.zone, place.number, jurisdictions)
        closes = window.closes_at(now)
        if closes is not None:
            if closes - now >= EDGE_MARGIN_S:
                opened.append(place)
            continue
        opens = window.next_open(now, horizon_days=8)
        if opens is None or opens - now >= EDGE_MARGIN_S:
            closed.append(place)
    return opened, closed


def appointment_slot(zone: str, now: float, index: int, taken: list[float]) -> datetime:
    """A half-hour visit tomorrow morning, local, clashing with no other."""
    local = datetime.fromtimestamp(now, ZoneInfo(zone)) + timedelta(days=1)
    start = local.replace(hour=9, minute=0, second=0, microsecond=0)
    start += timedelta(minutes=30 * (index % 16))
    while any(abs(start.timestamp() - t) < 30 * 60 for t in taken):
        start += timedelta(minutes=30)
    taken.append(start.timestamp())
    return start


def plan_leads(
    count: int, now: float, schedule: Schedule, jurisdictions: Jurisdictions
) -> list[PlannedLead]:
    """`count` leads: every scenario in an open zone first, then a mix."""
    opened, closed = _zones_by_state(now, schedule, jurisdictions)
    if not opened or not closed:
        raise ValueError("the schedule leaves no zone open, or none closed, now")
    leads: list[PlannedLead] = []
    taken: list[float] = []
    open_turn = closed_turn = 0
    for i in range(count):
        callable_now = i < len(SCENARIOS) or (i - len(SCENARIOS)) % 3 != 0
        if callable_now:
            place = opened[open_turn % len(opened)]
            open_turn += 1
        else:
            place = closed[closed_turn % len(closed)]
            closed_turn += 1
        first = FIRST_NAMES[i % len(FIRST_NAMES)]
        last = LAST_NAMES[(i + i // len(LAST_NAMES)) % len(LAST_NAMES)]
        at = appointment_slot(place.zone, now, i, taken)
        hour = at.strftime("%I:%M %p").lstrip("0")
        leads.append(
            PlannedLead(
                name=f"{first} {last}",
                phone=f"{place.number[:-3]}{i % 1000:03d}",
                zone=place.zone,
                scenario=SCENARIOS[i % len(SCENARIOS)],
                callable_now=callable_now,
                appointment_start=at.strftime("%Y-%m-%dT%H:%M"),
                appointment_time=f"{at:%A, %B} {at.day} at {hour}",
            )
        )
    return leads
