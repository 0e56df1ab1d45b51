"""When a lead may be called: its calling window, without I/O or a clock.

Time always comes in as an argument (Unix seconds, UTC, a float). The rules:

- A lead's zone (`zone_for`): with the "lead" policy, the lead's own IANA zone
  when it has one, else the campaign's; with "campaign", always the campaign's.
- Local wall-clock time is computed from the instant and the zone's rules
  (`zoneinfo`) each time a decision is made; no UTC offset is ever stored.
- An hour range [start, end) belongs to the weekday on which it starts. One
  whose end is not after its start crosses midnight: 22:00-02:00 on "fri"
  covers Friday 22:00 to Saturday 02:00, whether or not Saturday is a calling
  day. "24:00" as an end is the midnight that ends the range's day.
- The quiet margin: no call starts in the last `quiet_margin_minutes` of a
  range, so a range is open over [start, end - margin); a margin as long as
  the range or longer leaves it empty.
- Jurisdiction hours: the called party's country (from the number) may allow
  only some local hours, on every day, in the lead's zone. The window is open
  where a campaign range and the jurisdiction's hours are both open. The
  quiet margin applies to the campaign's ranges, not to the law's hours.
  Countries missing from the table get the table's fallback hours.
- A range is open whenever the clock on the wall shows a time inside it.
  When clocks spring forward (02:00 -> 03:00), 02:00-02:59 is never shown:
  a range starting at 02:30 that day opens at 03:00. When they fall back,
  01:00-01:59 is shown twice and a range covering 01:30 is open both times,
  so 01:00-02:00 on that night is open for two real hours.

`next_open` and `closes_at` are exact to the second: between two changes of
a zone's UTC offset, wall time is UTC shifted by a constant, so the answer in
that stretch is a range boundary shifted back; failing that, the search goes
on from the next change of offset. Offset changes are found by sampling each
zone's offset hourly and bisecting to the second (cached per zone and month),
so two changes less than an hour apart would be missed: tzdata has none.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo

import phonenumbers

from campaign_store.models import WEEKDAYS, Schedule

__all__ = [
    "DEFAULT_FALLBACK",
    "DEFAULT_JURISDICTIONS",
    "DEFAULT_RULES",
    "Jurisdictions",
    "Window",
    "parse_jurisdictions",
    "window_for",
    "zone_for",
]

DAY = 86_400
_HHMM = re.compile(r"^(?:([01]\d|2[0-3]):([0-5]\d)|(24):(00))$")
_CHUNK = 30 * DAY  # offset changes are cached per zone and 30 days of UTC
_WEEK = 7

# Open seconds of a day, sorted, disjoint and never touching: ((start, end), ...).
Day = tuple[tuple[int, int], ...]
# The open seconds of each weekday, Monday first.
Week = tuple[Day, ...]

DEFAULT_RULES: Mapping[str, tuple[str, str]] = MappingProxyType(
    {"US": ("08:00", "21:00"), "CA": ("08:00", "21:00")}
)
# Unknown countries get the strictest hours we know of, not none.
DEFAULT_FALLBACK: tuple[str, str] | None = ("08:00", "21:00")


def _minutes(hhmm: str) -> int:
    match = _HHMM.match(hhmm)
    if match is None:
        raise ValueError(f"not an HH:MM time: {hhmm!r}")
    hours, minutes = (match[1], match[2]) if match[1] else (match[3], match[4])
    return int(hours) * 60 + int(minutes)


def _check_hours(hours: tuple[str, str]) -> tuple[str, str]:
    if _minutes(hours[0]) == _minutes(hours[1]):
        raise ValueError(f"empty hours {hours[0]}-{hours[1]}")
    return hours


@dataclass(frozen=True)
class Jurisdictions:
    """Local hours allowed by country (ISO region code), and for all others."""

    rules: Mapping[str, tuple[str, str]]
    fallback: tuple[str, str] | None = DEFAULT_FALLBACK

    def __post_init__(self) -> None:
        rules = {region: _check_hours(h) for region, h in self.rules.items()}
        object.__setattr__(self, "rules", MappingProxyType(rules))
        if self.fallback is not None:
            _check_hours(self.fallback)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.rules.items())), self.fallback))

    def hours_for(self, e164: str) -> tuple[str, str] | None:
        """The hours allowed for calls to `e164`; None: no limit."""
        region = _region(e164)
        if region is not None and region in self.rules:
            return self.rules[region]
        return self.fallback


DEFAULT_JURISDICTIONS = Jurisdictions(DEFAULT_RULES, DEFAULT_FALLBACK)


def parse_jurisdictions(text: str) -> Jurisdictions:
    """The table from its setting: `US=08:00-21:00,GB=09:00-20:00,*=08:00-21:00`.

    `*` sets the hours of every country not named; without it, those have
    no limit. `none` is no table at all (for tests and private lines only).
    Raises ValueError saying which entry is wrong.
    """
    text = text.strip()
    if text.lower() == "none":
        return Jurisdictions({}, fallback=None)
    rules: dict[str, tuple[str, str]] = {}
    fallback: tuple[str, str] | None = None
    for entry in filter(None, (e.strip() for e in text.split(","))):
        region, sep, hours = entry.partition("=")
        start, dash, end = hours.strip().partition("-")
        region = region.strip().upper()
        if not sep or not dash or not (region == "*" or region.isalpha()):
            raise ValueError(f"{entry!r} is not REGION=HH:MM-HH:MM")
        pair = (start.strip(), end.strip())
        _check_hours(pair)
        if region == "*":
            fallback = pair
        else:
            rules[region] = pair
    if not rules and fallback is None:
        raise ValueError("no entries (write `none` for no limits)")
    return Jurisdictions(rules, fallback)


def _region(e164: str) -> str | None:
    # Most calling codes belong to one region: no need to parse the number.
    digits = e164[1:8] if e164.startswith("+") else ""
    for size in (1, 2, 3):
        if not digits[:size].isdigit():
            break
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:size]))
        if regions is not None:
            return regions[0] if len(regions) == 1 else _parsed_region(e164)
    return _parsed_region(e164)


@lru_cache(maxsize=65_536)
def _parsed_region(e164: str) -> str | None:
    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return None
    region: str | None = phonenumbers.region_code_for_number(number)
    return region


# Patterns: which wall-clock seconds are open.


def _merge(spans: list[tuple[int, int]]) -> Day:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[0] < s[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


@lru_cache(maxsize=1024)
def _campaign_week(
    days: tuple[str, ...], hours: tuple[tuple[str, str], ...], margin: int
) -> Week:
    spans: list[list[tuple[int, int]]] = [[] for _ in range(_WEEK)]
    for name in days:
        weekday = WEEKDAYS.index(name)
        for start_hhmm, end_hhmm in hours:
            start, end = _minutes(start_hhmm), _minutes(end_hhmm)
            if end <= start:
                end += 24 * 60
            start, end = start * 60, (end - margin) * 60
            if end <= start:
                continue
            spans[weekday].append((start, min(end, DAY)))
            if end > DAY:
                after = (weekday + 1) % _WEEK
                spans[after].append((max(start - DAY, 0), end - DAY))
    return tuple(_merge(s) for s in spans)


@lru_cache(maxsize=256)
def _daily(hours: tuple[str, str]) -> Day:
    start, end = _minutes(hours[0]) * 60, _minutes(hours[1]) * 60
    if start == end:
        raise ValueError(f"empty hours {hours[0]}-{hours[1]}")
    if start < end:
        return _merge([(start, end)])
    return _merge([(start, DAY), (0, end)])


@lru_cache(maxsize=1024)
def _narrowed(week: Week, legal: Day) -> Week:
    return tuple(_intersect(day, legal) for day in week)


def _intersect(a: Day, b: Day) -> Day:
    out = []
    for a_start, a_end in a:
        for b_start, b_end in b:
            start, end = max(a_start, b_start), min(a_end, b_end)
            if start < end:
                out.append((start, end))
    return _merge(out)


def _inside(day: Day, second: int) -> bool:
    for start, end in day:
        if second < end:
            return start <= second
    return False


def _first_open(week: Week, wall: float) -> float | None:
    """The first wall time >= `wall` (naive, as Unix seconds) that is open."""
    day = math.floor(wall / DAY)
    second = wall - day * DAY
    for ahead in range(_WEEK + 1):
        for start, end in week[(day + ahead + 3) % _WEEK]:  # 1970-01-01: Thursday
            if ahead == 0 and second >= end:
                continue
            if ahead == 0 and second >= start:
                return wall
            return float((day + ahead) * DAY + start)
    return None


def _first_closed(week: Week, wall: float) -> float | None:
    """The first wall time >= `wall` that is not open; None: always open."""
    day = math.floor(wall / DAY)
    second = wall - day * DAY
    for ahead in range(_WEEK + 1):
        closing = None  # the end of the open span holding `second`
        for start, end in week[(day + ahead + 3) % _WEEK]:
            if second < end:
                closing = end if start <= second else None
                break
        if closing is None:
            return wall if ahead == 0 else float((day + ahead) * DAY)
        if closing < DAY:
            return float((day + ahead) * DAY + closing)
        second = 0.0  # open until midnight: go on into the next day
    return None


# Zones.


@lru_cache(maxsize=1024)  # about 600 zones exist
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _offset(tz: ZoneInfo, at: float) -> int:
    delta = datetime.fromtimestamp(at, tz).utcoffset()
    return 0 if delta is None else int(delta.total_seconds())


@lru_cache(maxsize=8192)
def _changes(name: str, chunk: int) -> tuple[int, ...]:
    """The instants in (chunk start, chunk end] at which the offset changes."""
    tz = _zone(name)
    found = []
    before = chunk * _CHUNK
    offset = _offset(tz, before)
    for sample in range(before + 3600, before + _CHUNK + 1, 3600):
        now = _offset(tz, sample)
        if now != offset:
            low, high = sample - 3600, sample
            while high - low > 1:
                middle = (low + high) // 2
                if _offset(tz, middle) == offset:
                    low = middle
                else:
                    high = middle
            found.append(high)
            offset = now
    return tuple(found)


def _zone_change(name: str, after: float, until: float) -> float | None:
    """The first offset change in (after, until], or None."""
    chunk = math.floor(after / _CHUNK)
    while chunk * _CHUNK < until:
        changes = _changes(name, chunk)
        i = bisect_right(changes, after)
        if i < len(changes):
            return changes[i] if changes[i] <= until else None
        chunk += 1
    return None


@dataclass(frozen=True)
class Window:
    """One lead's calling window: campaign hours in `zone`, the law's in its own.

    `week` holds the open seconds of each local weekday (Monday first). When
    the jurisdiction's zone is `zone`, its hours are already folded into
    `week`; otherwise `legal_hours` apply in `legal_zone`.
    """

    zone: str
    week: Week
    legal_zone: str | None = None
    legal_hours: Day = ()
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)
    _legal_tz: ZoneInfo | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tz", _zone(self.zone))
        legal = None if self.legal_zone is None else _zone(self.legal_zone)
        object.__setattr__(self, "_legal_tz", legal)

    @classmethod
    def build(
        cls,
        schedule: Schedule,
        zone: str,
        jurisdiction: tuple[str, str] | None = None,
        *,
        jurisdiction_zone: str | None = None,
    ) -> Window:
        """`schedule` in `zone`, limited to `jurisdiction`'s hours.

        Those hours are the called party's local time: `jurisdiction_zone`,
        `zone` when not given.
        """
        week = _campaign_week(
            tuple(schedule.days),
            tuple((h.start, h.end) for h in schedule.hours),
            schedule.quiet_margin_minutes,
        )
        if jurisdiction is None:
            return cls(zone, week)
        legal = _daily(jurisdiction)
        if jurisdiction_zone is None or jurisdiction_zone == zone:
            return cls(zone, _narrowed(week, legal))
        return cls(zone, week, jurisdiction_zone, legal)

    def is_open(self, at: float) -> bool:
        """Whether a call may start at `at`."""
        local = datetime.fromtimestamp(at, self._tz)
        second = local.hour * 3600 + local.minute * 60 + local.second
        if not _inside(self.week[local.weekday()], second):
            return False
        if self._legal_tz is None:
            return True
        local = datetime.fromtimestamp(at, self._legal_tz)
        return _inside(
            self.legal_hours, local.hour * 3600 + local.minute * 60 + local.second
        )

    def next_open(self, at: float, horizon_days: int = 8) -> float | None:
        """The first instant >= `at` when open, if before `at` + horizon_days."""
        if not any(self.week) or (self.legal_zone is not None and not self.legal_hours):
            return None
        limit = at + horizon_days * DAY
        start = at
        while start < limit:
            found = self._open_from(start)
            until = limit if found is None else min(found, limit)
            change = self._next_change(start, until)
            if change is None:
                return found if found is not None and found < limit else None
            start = change
        return None

    def closes_at(self, at: float) -> float | None:
        """When the window open at `at` closes (first closed instant after it).

        None when closed at `at`; math.inf when it is open at every hour of
        every day and so never closes.
        """
        if not self.is_open(at):
            return None
        start = at
        while True:
            found = self._closed_from(start)
            if found is None:
                return math.inf
            change = self._next_change(start, found)
            if change is None:
                return found
            start = change

    # Between two offset changes, wall time is UTC plus a constant.

    def _next_change(self, after: float, until: float) -> float | None:
        change = _zone_change(self.zone, after, until)
        if self.legal_zone is not None:
            legal = _zone_change(
                self.legal_zone, after, until if change is None else change
            )
            if legal is not None:
                change = legal
        return change

    def _open_from(self, at: float) -> float | None:
        """The first open instant >= `at` if offsets stayed as they are at `at`."""
        offset = _offset(self._tz, at)
        if self._legal_tz is None:
            wall = _first_open(self.week, at + offset)
            return None if wall is None else _unshift(at, offset, wall)
        legal_offset = _offset(self._legal_tz, at)
        legal_week = (self.legal_hours,) * _WEEK
        candidate = at
        while candidate < at + (_WEEK + 1) * DAY:
            wall = _first_open(self.week, candidate + offset)
            if wall is None:
                return None
            found = _unshift(candidate, offset, wall)
            wall = _first_open(legal_week, found + legal_offset)
            if wall is None:
                return None
            candidate = _unshift(found, legal_offset, wall)
            if candidate == found:
                return found
        return None  # the two never overlap at these offsets

    def _closed_from(self, at: float) -> float | None:
        """The first closed instant >= `at` if offsets stayed as they are."""
        offset = _offset(self._tz, at)
        wall = _first_closed(self.week, at + offset)
        found = None if wall is None else _unshift(at, offset, wall)
        if self._legal_tz is not None:
            legal_offset = _offset(self._legal_tz, at)
            wall = _first_closed((self.legal_hours,) * _WEEK, at + legal_offset)
            if wall is not None:
                legal = _unshift(at, legal_offset, wall)
                found = legal if found is None else min(found, legal)
        return found


def _unshift(at: float, offset: int, wall: float) -> float:
    # `at` itself when the wall time found is at's own: no rounding.
    return at if wall == at + offset else wall - offset


def zone_for(schedule: Schedule, lead_timezone: str | None) -> str:
    """The zone whose wall clock a lead's calling hours are read on."""
    if schedule.timezone_policy == "lead" and lead_timezone:
        return lead_timezone
    return schedule.timezone


def window_for(
    schedule: Schedule,
    lead_timezone: str | None,
    phone: str,
    jurisdictions: Jurisdictions = DEFAULT_JURISDICTIONS,
) -> Window:
    """The calling window of the lead at `phone` in `lead_timezone`."""
    return Window.build(
        schedule,
        zone_for(schedule, lead_timezone),
        jurisdictions.hours_for(phone),
        jurisdiction_zone=lead_timezone or schedule.timezone,
    )
