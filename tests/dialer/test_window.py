"""Calling windows: the written rules, read by brute force, against the module."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

import pytest

from campaign_store.models import WEEKDAYS, HourRange, Schedule
from dialer.window import (
    DEFAULT_JURISDICTIONS,
    Jurisdictions,
    Window,
    parse_jurisdictions,
    window_for,
    zone_for,
)

NY = "America/New_York"
EVERY_DAY = list(WEEKDAYS)
START = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
STOP = int(datetime(2028, 1, 1, tzinfo=UTC).timestamp())
ODD_ZONES = [
    NY,
    "Europe/London",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/St_Johns",
]
DST_ZONES = [
    NY,
    "Europe/Berlin",
    "Australia/Sydney",
    "America/Santiago",
    "Australia/Lord_Howe",
]


def local(text: str, zone: str = NY) -> float:
    """A naive ISO wall time in `zone` (the first one, in a fold) as Unix seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def hm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


# The oracle: the module docstring's rules, read as plainly as possible.


@dataclass
class Oracle:
    schedule: Schedule
    zone: str
    legal: tuple[str, str] | None = None
    legal_zone: str | None = None

    def __post_init__(self) -> None:
        self.tz = ZoneInfo(self.zone)
        self.legal_tz = ZoneInfo(self.legal_zone or self.zone)
        self.days = set(self.schedule.days)
        self.ranges = []  # (start, end) in seconds after the start of its day
        for hours in self.schedule.hours:
            start, end = hm(hours.start), hm(hours.end)
            if end <= start:
                end += 24 * 60
            end -= self.schedule.quiet_margin_minutes
            self.ranges.append((start * 60, end * 60))

    def is_open(self, at: float) -> bool:
        wall = datetime.fromtimestamp(at, self.tz)
        second = wall.hour * 3600 + wall.minute * 60 + wall.second
        if not self._campaign(wall.date(), second):
            return False
        if self.legal is None:
            return True
        wall = datetime.fromtimestamp(at, self.legal_tz)
        second = wall.hour * 3600 + wall.minute * 60 + wall.second
        start, end = hm(self.legal[0]) * 60, hm(self.legal[1]) * 60
        if start < end:
            return start <= second < end
        return second >= start or second < end

    def _campaign(self, today: date, second: int) -> bool:
        yesterday = today - timedelta(days=1)
        for day, since_start in ((today, second), (yesterday, second + 86_400)):
            if WEEKDAYS[day.weekday()] in self.days:
                for start, end in self.ranges:
                    if start <= since_start < end:
                        return True
        return False

    def next_open(self, at: int, days: int) -> int | None:
        for minute in range(days * 24 * 60):
            if self.is_open(at + 60 * minute):
                return at + 60 * minute
        return None

    def closes_at(self, at: int, days: int) -> int | None:
        for minute in range(1, days * 24 * 60):
            if not self.is_open(at + 60 * minute):
                return at + 60 * minute
        return None


def offset(zone: ZoneInfo, at: float) -> int:
    delta = datetime.fromtimestamp(at, zone).utcoffset()
    assert delta is not None
    return int(delta.total_seconds())


def transitions(name: str) -> list[int]:
    """Offset changes of `name` in 2025-2027, by daily samples and bisection."""
    zone = ZoneInfo(name)
    found = []
    before = offset(zone, START)
    for day in range(START + 86_400, STOP, 86_400):
        now = offset(zone, day)
        if now != before:
            low, high = day - 86_400, day
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (
                    (middle, high) if offset(zone, middle) == before else (low, middle)
                )
            found.append(high)
            before = now
    return found


def minute_exact(name: str, changes: list[int]) -> bool:
    """Whether every change and offset of `name` falls on whole minutes."""
    zone = ZoneInfo(name)
    return all(t % 60 == 0 for t in changes) and all(
        offset(zone, t) % 60 == 0 for t in [START, *changes]
    )


def random_hhmm(rng: random.Random) -> str:
    hour = rng.choice([0, 1, 2, 3, 23, rng.randrange(24)])  # near DST changes
    return f"{hour:02d}:{rng.choice([0, 0, 30, rng.randrange(60)]):02d}"


def random_schedule(rng: random.Random, zone: str) -> Schedule:
    hours = []
    for _ in range(rng.randint(1, 3)):
        start = random_hhmm(rng)
        end = "24:00" if rng.random() < 0.15 else random_hhmm(rng)
        if end != start:
            hours.append(HourRange(start=start, end=end))
    hours = hours or [HourRange(start="01:00", end="03:00")]
    return Schedule(
        days=rng.sample(EVERY_DAY, rng.choice([3, 5, 6, 7, rng.randint(1, 7)])),
        hours=hours,
        quiet_margin_minutes=rng.choice([0, 0, rng.randint(0, 60)]),
        timezone=zone,
    )


def random_window(rng: random.Random, zone: str) -> tuple[Window, Oracle]:
    schedule = random_schedule(rng, zone)
    draw = rng.random()
    if draw < 0.4:
        return Window.build(schedule, zone), Oracle(schedule, zone)
    legal = (random_hhmm(rng), random_hhmm(rng))
    if legal[0] == legal[1]:
        legal = ("08:00", "21:00")
    other = zone if draw < 0.8 else rng.choice(DST_ZONES)
    window = Window.build(schedule, zone, legal, jurisdiction_zone=other)
    return window, Oracle(schedule, zone, legal, other)


def compare(
    window: Window, oracle: Oracle, at: int, scan_days: int, failures: list[str]
) -> None:
    """Record where the window and the oracle disagree at `at`."""
    where = f"{oracle.zone} {oracle.schedule} legal={oracle.legal} at={at}"
    expected = oracle.is_open(at)
    if window.is_open(at) != expected:
        failures.append(f"is_open {where}: expected {expected}")
    if expected:
        closes = window.closes_at(at)
        wanted = oracle.closes_at(at, scan_days)
        if wanted is None:
            wanted_ok = closes is not None and closes >= at + scan_days * 86_400 - 60
        else:
            wanted_ok = closes == wanted
        if not wanted_ok:
            failures.append(f"closes_at {where}: {closes} != {wanted}")
    else:
        opens = window.next_open(at, horizon_days=scan_days)
        wanted = oracle.next_open(at, scan_days)
        if opens != wanted:
            failures.append(f"next_open {where}: {opens} != {wanted}")


def check_zone(name: str, schedules: int, per_change: int, failures: list[str]) -> bool:
    """Compare at random instants, `per_change` of them near each of two changes."""
    changes = transitions(name)
    if not minute_exact(name, changes):
        return False
    rng = random.Random(name)
    for _ in range(schedules):
        window, oracle = random_window(rng, name)
        if oracle.legal_zone and not minute_exact(
            oracle.legal_zone, transitions(oracle.legal_zone)
        ):
            continue
        instants = [
            START + 60 * rng.randrange((STOP - START) // 60) for _ in range(per_change)
        ]
        for change in rng.sample(changes, min(len(changes), 2)):
            instants += [
                change + 60 * rng.randint(-180, 180) for _ in range(per_change)
            ]
        for at in instants:
            compare(window, oracle, at, 1, failures)
    return True


# The oracle, over every zone there is.


def test_every_zone_agrees_with_the_oracle_around_its_dst_changes() -> None:
    """Every IANA zone: is_open, next_open and closes_at match a minute scan."""
    failures: list[str] = []
    skipped = [
        name
        for name in sorted(available_timezones())
        if not check_zone(name, schedules=2, per_change=1, failures=failures)
    ]
    assert not failures, f"{len(failures)} disagreements, first: {failures[:5]}"
    assert len(skipped) <= 5, skipped  # zones not on whole minutes: none today


@pytest.mark.parametrize("name", ODD_ZONES)
def test_odd_zones_agree_with_the_oracle(name: str) -> None:
    """Half-hour DST, +05:45, +12:45 and -03:30 zones match the oracle closely."""
    failures: list[str] = []
    assert check_zone(name, schedules=12, per_change=4, failures=failures)
    assert not failures, f"{len(failures)} disagreements, first: {failures[:5]}"


def test_answers_are_exact_for_instants_off_the_minute() -> None:
    """For any instant: next_open is open and the second before it is not."""
    rng = random.Random(7)
    names = sorted(available_timezones())
    for _ in range(3000):
        name = rng.choice(names)
        window, _ = random_window(rng, name)
        at = rng.uniform(START, STOP)
        opens = window.next_open(at, horizon_days=3)
        if opens is not None:
            assert window.is_open(opens), (name, window, at)
            assert opens == at or not window.is_open(max(at, opens - 1)), (name, at)
        if window.is_open(at):
            assert opens == at
            closes = window.closes_at(at)
            assert closes is not None and closes > at, (name, window, at)
            if closes != math.inf:
                assert window.is_open(closes - 1), (name, window, at, closes)
                assert not window.is_open(closes), (name, window, at, closes)
        else:
            assert window.closes_at(at) is None


# The rules, one at a time.


def test_a_range_crossing_midnight_runs_into_a_day_off() -> None:
    """Friday 22:00-02:00 is open at 01:00 on Saturday, not a calling day."""
    window = Window.build(
        Schedule(days=["fri"], hours=[HourRange(start="22:00", end="02:00")]), NY
    )
    assert not window.is_open(local("2026-05-15T21:59:59"))  # a Friday
    assert window.is_open(local("2026-05-15T22:00"))
    assert window.is_open(local("2026-05-16T01:00"))
    assert window.closes_at(local("2026-05-16T01:00")) == local("2026-05-16T02:00")
    assert not window.is_open(local("2026-05-16T22:30"))  # Saturday's own night
    assert window.next_open(local("2026-05-16T03:00")) == local("2026-05-22T22:00")


def test_a_range_ending_at_24_00_closes_at_midnight() -> None:
    """22:00-24:00 on Monday does not run into Tuesday."""
    window = Window.build(
        Schedule(days=["mon"], hours=[HourRange(start="22:00", end="24:00")]), NY
    )
    assert window.closes_at(local("2026-05-11T23:00")) == local("2026-05-12T00:00")
    assert not window.is_open(local("2026-05-12T00:00"))


def test_no_call_starts_in_the_quiet_margin() -> None:
    """09:00-17:00 with a 30-minute margin takes its last call at 16:29:59."""
    schedule = Schedule(
        hours=[HourRange(start="09:00", end="17:00")], quiet_margin_minutes=30
    )
    window = Window.build(schedule, NY)
    assert window.is_open(local("2026-05-12T16:29:59"))
    assert not window.is_open(local("2026-05-12T16:30"))
    assert window.closes_at(local("2026-05-12T10:00")) == local("2026-05-12T16:30")


@pytest.mark.parametrize("margin", [60, 90])
def test_a_margin_as_long_as_the_range_closes_it(margin: int) -> None:
    """09:00-10:00 with a margin of an hour or more is never open."""
    schedule = Schedule(
        days=EVERY_DAY,
        hours=[HourRange(start="09:00", end="10:00")],
        quiet_margin_minutes=margin,
    )
    window = Window.build(schedule, NY)
    assert not window.is_open(local("2026-05-12T09:00"))
    assert window.next_open(local("2026-05-12T00:00"), horizon_days=31) is None


def test_no_calling_days_never_open() -> None:
    """A schedule with no days has no next opening."""
    window = Window.build(Schedule(days=[]), NY)
    assert window.next_open(local("2026-05-12T00:00"), horizon_days=31) is None
    assert window.closes_at(local("2026-05-12T10:00")) is None


def test_next_open_stops_at_the_horizon() -> None:
    """A Monday-only window seen from Tuesday is beyond a 3-day horizon."""
    window = Window.build(Schedule(days=["mon"]), NY)
    assert window.next_open(local("2026-05-12T10:00"), horizon_days=3) is None
    assert window.next_open(local("2026-05-12T10:00")) == local("2026-05-18T09:00")


def test_a_window_open_around_the_clock_never_closes() -> None:
    """Every day 00:00-24:00 with no jurisdiction: closes_at is infinity."""
    schedule = Schedule(days=EVERY_DAY, hours=[HourRange(start="00:00", end="24:00")])
    window = Window.build(schedule, NY)
    assert window.closes_at(local("2026-11-01T01:30")) == math.inf


def test_us_hours_narrow_the_campaign_hours() -> None:
    """Campaign 07:00-23:00 to a +1 212 number: 08:00-21:00 New York time."""
    schedule = Schedule(days=EVERY_DAY, hours=[HourRange(start="07:00", end="23:00")])
    window = window_for(schedule, NY, "+12125550123")
    assert not window.is_open(local("2026-05-12T07:30"))
    assert window.next_open(local("2026-05-12T07:00")) == local("2026-05-12T08:00")
    assert window.closes_at(local("2026-05-12T12:00")) == local("2026-05-12T21:00")


def test_the_law_reads_the_called_party_clock() -> None:
    """A campaign-zone window in Los Angeles still stops at 21:00 in New York."""
    schedule = Schedule(
        days=EVERY_DAY,
        hours=[HourRange(start="06:00", end="20:00")],
        timezone_policy="campaign",
        timezone="America/Los_Angeles",
    )
    window = window_for(schedule, NY, "+12125550123")
    la = "America/Los_Angeles"
    assert window.zone == la
    assert window.closes_at(local("2026-05-12T12:00", la)) == local(
        "2026-05-12T18:00", la
    )
    assert window.next_open(local("2026-05-12T05:00", la)) == local(
        "2026-05-12T06:00", la
    )


def test_jurisdiction_hours_by_country_and_fallback() -> None:
    """US and Canada from the table; any other country gets the fallback."""
    assert DEFAULT_JURISDICTIONS.hours_for("+12125550123") == ("08:00", "21:00")
    assert DEFAULT_JURISDICTIONS.hours_for("+14165550123") == ("08:00", "21:00")
    custom = Jurisdictions({"CA": ("09:00", "20:00")}, fallback=("10:00", "18:00"))
    assert custom.hours_for("+14165550123") == ("09:00", "20:00")  # Toronto
    assert custom.hours_for("+12125550123") == ("10:00", "18:00")
    assert custom.hours_for("+442079460000") == ("10:00", "18:00")
    assert custom.hours_for("not a number") == ("10:00", "18:00")
    assert Jurisdictions({}, fallback=None).hours_for("+442079460000") is None
    with pytest.raises(ValueError):
        Jurisdictions({"US": ("08:00", "08:00")})


def test_the_table_is_read_from_its_setting() -> None:
    """`VOXDIAL_CALLING_HOURS` spells the table; `none` lifts every limit."""
    table = parse_jurisdictions("us=08:00-21:00, GB=09:00-20:00, *=10:00-18:00")
    assert table.hours_for("+12125550123") == ("08:00", "21:00")
    assert table.hours_for("+442079460000") == ("09:00", "20:00")
    assert table.hours_for("+33142000000") == ("10:00", "18:00")
    assert parse_jurisdictions("US=08:00-21:00").hours_for("+33142000000") is None
    assert parse_jurisdictions("none").hours_for("+12125550123") is None
    for bad in ("", "US", "US=8-21", "US=08:00-08:00", "1=08:00-21:00"):
        with pytest.raises(ValueError):
            parse_jurisdictions(bad)


def test_unknown_country_numbers_get_the_fallback_hours() -> None:
    """A UK number under the default table is called 08:00-21:00 only."""
    schedule = Schedule(
        days=EVERY_DAY,
        hours=[HourRange(start="00:00", end="24:00")],
        timezone="Europe/London",
    )
    window = window_for(schedule, None, "+442079460000")
    london = "Europe/London"
    assert not window.is_open(local("2026-05-12T07:59", london))
    assert window.is_open(local("2026-05-12T08:00", london))
    unlimited = window_for(schedule, None, "+442079460000", Jurisdictions({}, None))
    assert unlimited.is_open(local("2026-05-12T03:00", london))


def test_zone_for_follows_the_policy() -> None:
    """'lead' uses the lead's zone when known; 'campaign' always the campaign's."""
    by_lead = Schedule(timezone="Europe/Paris")
    by_campaign = Schedule(timezone="Europe/Paris", timezone_policy="campaign")
    assert zone_for(by_lead, "Asia/Tokyo") == "Asia/Tokyo"
    assert zone_for(by_lead, None) == "Europe/Paris"
    assert zone_for(by_campaign, "Asia/Tokyo") == "Europe/Paris"


def test_a_range_starting_in_the_spring_gap_opens_at_its_end() -> None:
    """02:30-04:00 on spring-forward Sunday opens at 03:00 EDT, not a week on."""
    window = Window.build(
        Schedule(days=["sun"], hours=[HourRange(start="02:30", end="04:00")]), NY
    )
    opens = window.next_open(local("2026-03-07T12:00"))
    assert opens == local("2026-03-08T03:00")
    assert not window.is_open(local("2026-03-08T01:59:59"))
    assert window.closes_at(local("2026-03-08T03:00")) == local("2026-03-08T04:00")


def test_the_fall_back_hour_is_open_twice() -> None:
    """01:00-02:00 on fall-back night is open for two real hours."""
    window = Window.build(
        Schedule(days=["sun"], hours=[HourRange(start="01:00", end="02:00")]), NY
    )
    opens = window.next_open(local("2026-10-31T12:00"))
    assert opens == datetime(2026, 11, 1, 5, tzinfo=UTC).timestamp()  # 01:00 EDT
    closes = window.closes_at(opens)
    assert closes == datetime(2026, 11, 1, 7, tzinfo=UTC).timestamp()  # 02:00 EST
    assert window.is_open(datetime(2026, 11, 1, 6, 30, tzinfo=UTC).timestamp())
