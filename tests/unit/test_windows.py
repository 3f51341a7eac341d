"""Maintenance-window maths: validation, DST examples, and properties against a reference.

The reference (`Reference`) is a brute-force walk over UTC minutes with its own tiny cron
matcher: for every minute it takes the local wall time in the zone, finds which wall
times become visible at that minute (the minute's own wall time unless it was already
seen, i.e. a second pass of a repeated hour; plus, right after a spring-forward gap, the
skipped wall times), and opens the window there when any of them matches. That is the
documented rule (skipped -> first instant after the gap; repeated -> first occurrence),
reached without cronsim, without fold and without the code under test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.domain.windows import (
    MAX_DURATION,
    SEARCH_HORIZON,
    WINDOW_KEYS,
    WindowError,
    WindowSpec,
    can_start,
    can_start_any,
    covering,
    current_window,
    format_duration,
    is_open,
    next_opening,
    next_openings,
    next_start_any,
    openings,
    parse_duration,
    parse_window,
    remaining,
    start_deadline,
)

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
ZONES = ("America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Lord_Howe", "UTC")
NY = "America/New_York"
BERLIN = "Europe/Berlin"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(zone: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
          *, fold: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone), fold=fold)


def window(cron: str, duration: Any = "1h", zone: str = NY, cutoff: Any = 0,
           **extra: Any) -> WindowSpec:
    data = {"name": "w", "cron": cron, "duration": duration, "timezone": zone,
            "cutoff": cutoff, "sites": ["ams"], **extra}
    return parse_window(data)


def wall_opens(spec: WindowSpec, start: datetime, end: datetime,
               zone: str | None = None) -> list[str]:
    """Openings in [start, end) as local wall-clock strings with the zone abbreviation."""
    tz = ZoneInfo(zone or spec.timezone)
    return [f"{a.astimezone(tz):%m-%d %H:%M %Z}" for a, _ in openings(spec, start, end, zone)
            if a >= start]


# --- the brute-force reference ----------------------------------------------------------


def cron_values(text: str, low: int, high: int) -> frozenset[int]:
    """Values of a restricted cron field: *, */N, a-b, and lists of those and numbers."""
    values: set[int] = set()
    for term in text.split(","):
        if term == "*":
            values.update(range(low, high + 1))
        elif term.startswith("*/"):
            values.update(range(low, high + 1, int(term[2:])))
        elif "-" in term:
            first, last = term.split("-")
            values.update(range(int(first), int(last) + 1))
        else:
            values.add(int(term))
    return frozenset(values)


class Matcher:
    """A 5-field cron on a naive wall time (restricted syntax, standard day rule)."""

    def __init__(self, cron: str) -> None:
        minute, hour, dom, month, dow = cron.split()
        self.minutes = cron_values(minute, 0, 59)
        self.hours = cron_values(hour, 0, 23)
        self.doms = cron_values(dom, 1, 31)
        self.months = cron_values(month, 1, 12)
        self.dows = frozenset(d % 7 for d in cron_values(dow, 0, 7))
        self.either_day = not dom.startswith("*") and not dow.startswith("*")

    def __call__(self, wall: datetime) -> bool:
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        dom_ok = wall.day in self.doms
        dow_ok = (wall.weekday() + 1) % 7 in self.dows  # cron: Sunday is 0
        return (dom_ok or dow_ok) if self.either_day else (dom_ok and dow_ok)


class Reference:
    """Openings of a window found minute by minute between two UTC instants."""

    def __init__(self, cron: str, zone: str, duration: timedelta, cutoff: timedelta) -> None:
        self.match = Matcher(cron)
        self.zone = ZoneInfo(zone)
        self.duration = duration
        self.cutoff = cutoff

    def walk(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Opening instants in [start, end), minute-aligned, in order (UTC)."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)  # no wall-clock arithmetic
        moment = start.replace(second=0, microsecond=0) - 4 * HOUR  # before any fold
        seen = moment.astimezone(self.zone).replace(tzinfo=None)
        while True:
            moment += MINUTE
            if moment >= end:
                return
            wall = moment.astimezone(self.zone).replace(tzinfo=None)
            visible: list[datetime] = []
            skipped = seen + MINUTE
            while skipped < wall:  # a spring-forward gap: these wall times never show
                visible.append(skipped)
                skipped += MINUTE
            if wall > seen:  # else a second pass of a repeated hour
                visible.append(wall)
                seen = wall
            if moment >= start and any(self.match(w) for w in visible):
                yield moment

    def state(self, now: datetime) -> tuple[bool, timedelta]:
        """(open at now, remaining) from the openings in (now - duration, now]."""
        now = now.astimezone(UTC)
        latest = None
        for opened in self.walk(now - self.duration, now + timedelta(microseconds=1)):
            latest = opened
        if latest is None or now >= latest + self.duration:
            return False, timedelta(0)
        return True, latest + self.duration - now

    def next_start(self, now: datetime, limit: timedelta) -> datetime | None:
        now = now.astimezone(UTC)
        is_open_now, left = self.state(now)
        if is_open_now and left >= self.cutoff:
            return now
        for opened in self.walk(now, now + limit):
            if opened > now:
                return opened
        return None


@cache
def transitions(zone: str) -> tuple[datetime, ...]:
    """Instants (UTC) in 2025-07 .. 2027-07 where the zone's offset changes."""
    tz = ZoneInfo(zone)
    found = []
    moment = utc(2025, 7, 1)
    offset = moment.astimezone(tz).utcoffset()
    while moment < utc(2027, 7, 1):
        step = moment + 15 * MINUTE
        if step.astimezone(tz).utcoffset() != offset:
            found.append(step)
            offset = step.astimezone(tz).utcoffset()
        moment = step
    return tuple(found)


def test_reference_sees_the_2026_transitions() -> None:
    assert utc(2026, 3, 8, 7) in transitions(NY)
    assert utc(2026, 11, 1, 6) in transitions(NY)
    assert utc(2026, 3, 29, 1) in transitions(BERLIN)
    assert utc(2026, 10, 25, 1) in transitions(BERLIN)
    assert transitions("Asia/Kolkata") == () and transitions("UTC") == ()
    assert len(transitions("Australia/Lord_Howe")) == 4


def test_reference_follows_the_documented_dst_rule() -> None:
    ref = Reference("30 2 * * *", NY, HOUR, timedelta(0))
    assert list(ref.walk(utc(2026, 3, 7), utc(2026, 3, 10))) == [
        utc(2026, 3, 7, 7, 30), utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)
    ]
    ref = Reference("30 1 * * *", NY, HOUR, timedelta(0))
    assert list(ref.walk(utc(2026, 10, 31), utc(2026, 11, 3))) == [
        utc(2026, 10, 31, 5, 30), utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)
    ]


# --- strategies --------------------------------------------------------------------------


def joined(values: list[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


MINUTE_FIELDS = st.one_of(
    st.lists(st.integers(0, 59), min_size=1, max_size=3, unique=True).map(joined),
    st.sampled_from(["0", "30", "15,45", "*/5", "*/15", "*/20", "*/30", "*"]),
)
HOUR_FIELDS = st.one_of(
    # the hours where clocks change in the zones under test, and their neighbours
    st.lists(st.sampled_from([0, 1, 2, 3, 4, 22, 23]), min_size=1, max_size=3, unique=True)
    .map(joined),
    st.lists(st.integers(0, 23), min_size=1, max_size=3, unique=True).map(joined),
    st.sampled_from(["*", "*/2", "*/3", "*/6", "1-3", "0-4", "22-23"]),
)
DOM_FIELDS = st.one_of(
    st.just("*"),
    st.lists(st.integers(1, 28), min_size=1, max_size=4, unique=True).map(joined),
)
DOW_FIELDS = st.one_of(
    st.just("*"),
    st.sampled_from(["1-5", "0,6", "0", "7"]),
    st.lists(st.integers(0, 6), min_size=1, max_size=3, unique=True).map(joined),
)
CRONS = st.builds(lambda m, h, d, w: f"{m} {h} {d} * {w}", MINUTE_FIELDS, HOUR_FIELDS,
                  DOM_FIELDS, DOW_FIELDS)


@st.composite
def durations_and_cutoffs(draw: st.DrawFn) -> tuple[timedelta, timedelta]:
    minutes = draw(st.one_of(st.integers(1, 6 * 60), st.integers(1, 3 * 24 * 60),
                             st.sampled_from([30, 60, 90, 240, 24 * 60, 7 * 24 * 60])))
    seconds = minutes * 60 - draw(st.sampled_from([0, 0, 0, 1, 17]))
    cutoff = draw(st.one_of(st.just(0), st.integers(0, seconds - 1)))
    return timedelta(seconds=seconds), timedelta(seconds=cutoff)


@st.composite
def instants(draw: st.DrawFn, zone: str) -> datetime:
    """A moment in 2026, often within a few hours of a clock change of `zone`."""
    near = transitions(zone)
    close_to_a_change: bool = draw(st.booleans())
    if near and close_to_a_change:
        base = draw(st.sampled_from(near))
        spread = draw(st.sampled_from([3 * 3600, 26 * 3600, 8 * 86400]))
        moment = base + timedelta(seconds=draw(st.integers(-spread, spread)))
    else:
        moment = utc(2026, 1, 1) + timedelta(seconds=draw(st.integers(0, 365 * 86400)))
    if draw(st.booleans()):
        moment = moment.replace(second=0)
    return moment + timedelta(microseconds=draw(st.sampled_from([0, 0, 1, 999_999])))


@st.composite
def cases(draw: st.DrawFn) -> tuple[WindowSpec, str | None, str, datetime]:
    """(spec, tz override or None, the zone in force, now)."""
    cron = draw(CRONS)
    duration, cutoff = draw(durations_and_cutoffs())
    zone = draw(st.sampled_from(ZONES))
    override = draw(st.booleans())
    spec = WindowSpec(
        name="w", cron=cron, duration=duration,
        timezone=draw(st.sampled_from(ZONES)) if override else zone,
        cutoff=cutoff, sites=("s",),
    )
    now = draw(instants(zone))
    if draw(st.booleans()):
        now = now.astimezone(ZoneInfo(zone))  # any aware datetime will do
    return spec, zone if override else None, zone, now


PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- properties against the reference ----------------------------------------------------


@PROPERTY
@given(cases())
def test_state_at_now_agrees_with_the_reference(
    case: tuple[WindowSpec, str | None, str, datetime],
) -> None:
    spec, tz, zone, now = case
    ref = Reference(spec.cron, zone, spec.duration, spec.cutoff)
    expected_open, expected_left = ref.state(now)
    assert is_open(spec, now, tz) == expected_open
    assert remaining(spec, now, tz) == expected_left
    allowed = expected_open and expected_left >= spec.cutoff
    assert can_start(spec, now, tz) == allowed
    window_now = current_window(spec, now, tz)
    assert (window_now is not None) == expected_open
    if window_now is not None:
        assert window_now[1] - window_now[0] == spec.duration
        assert window_now[0] <= now < window_now[1]
        assert window_now[1] - now == expected_left
    deadline = start_deadline(spec, now, tz)
    assert (deadline is not None) == allowed
    if deadline is not None:
        assert can_start(spec, deadline, tz)


@PROPERTY
@given(cases())
def test_next_opening_agrees_with_the_reference(
    case: tuple[WindowSpec, str | None, str, datetime],
) -> None:
    spec, tz, zone, now = case
    ref = Reference(spec.cron, zone, spec.duration, spec.cutoff)
    # every generated cron fires at least monthly: 40 days of reference suffice
    expected = ref.next_start(now, timedelta(days=40))
    assert expected is not None
    found = next_opening(spec, now, tz)
    assert found == expected
    assert found.tzinfo is UTC
    assert can_start(spec, found, tz)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), st.integers(1, 3 * 86400))
def test_openings_agree_with_the_reference(
    case: tuple[WindowSpec, str | None, str, datetime], span_seconds: int,
) -> None:
    spec, tz, zone, start = case
    start = start.astimezone(UTC)
    end = start + timedelta(seconds=span_seconds)
    ref = Reference(spec.cron, zone, spec.duration, spec.cutoff)
    expected = [(o, o + spec.duration) for o in ref.walk(start - spec.duration, end)
                if o + spec.duration > start]
    found = list(openings(spec, start, end, tz))
    assert found == expected
    upcoming = next_openings(spec, start, 3, tz)
    assert upcoming == list(openings(spec, start, start + SEARCH_HORIZON, tz))[:3]
    assert all(a.tzinfo is UTC and b.tzinfo is UTC for a, b in found)


FIXED_TIME_CRONS = st.builds(
    lambda m, h, d, w: f"{m} {h} {d} * {w}",
    st.lists(st.integers(0, 59), min_size=1, max_size=2, unique=True).map(joined),
    st.lists(st.sampled_from([0, 1, 2, 3, 12, 23]), min_size=1, max_size=2, unique=True)
    .map(joined),
    DOM_FIELDS, DOW_FIELDS,
)


@settings(max_examples=60, deadline=None)
@given(FIXED_TIME_CRONS, st.sampled_from(ZONES), st.sampled_from([(2026, 3), (2026, 10)]))
def test_fixed_time_expressions_open_when_cronsim_says(
    cron: str, zone: str, month: tuple[int, int],
) -> None:
    """For a fixed minute and hour, cronsim's own DST handling is the documented rule."""
    tz = ZoneInfo(zone)
    start = datetime(*month, 1, tzinfo=tz)
    end = start + timedelta(days=40)
    iterator = CronSim(cron, start - timedelta(seconds=1))
    expected = []
    for moment in iterator:
        if moment >= end:
            break
        expected.append(moment.astimezone(UTC))
    spec = window(cron, "1m", zone)
    found = [a for a, _ in openings(spec, start, end) if a >= start]
    assert found == expected


# --- explicit DST examples -----------------------------------------------------------------


def test_new_york_spring_forward_window_at_0230_opens_once_at_0300() -> None:
    spec = window("30 2 * * *", "4h", NY)
    assert wall_opens(spec, utc(2026, 3, 7), utc(2026, 3, 10)) == [
        "03-07 02:30 EST", "03-08 03:00 EDT", "03-09 02:30 EDT",
    ]
    opened, closed = current_window(spec, utc(2026, 3, 8, 7)) or (None, None)
    assert opened == utc(2026, 3, 8, 7)  # 03:00 EDT, the end of the gap
    assert closed == utc(2026, 3, 8, 11)  # 4 real hours later: 07:00 EDT
    assert not is_open(spec, utc(2026, 3, 8, 6, 59, 59))
    assert next_opening(spec, local(NY, 2026, 3, 8, 1, 59)) == utc(2026, 3, 8, 7)


def test_new_york_fall_back_window_at_0130_opens_once_at_the_first_pass() -> None:
    spec = window("30 1 * * *", "30m", NY)
    assert wall_opens(spec, utc(2026, 10, 31), utc(2026, 11, 3)) == [
        "10-31 01:30 EDT", "11-01 01:30 EDT", "11-02 01:30 EST",
    ]
    first, second = local(NY, 2026, 11, 1, 1, 30), local(NY, 2026, 11, 1, 1, 30, fold=1)
    assert first.astimezone(UTC) == utc(2026, 11, 1, 5, 30)
    assert second.astimezone(UTC) == utc(2026, 11, 1, 6, 30)
    assert is_open(spec, first)
    assert not is_open(spec, second)  # the repeated 01:30 does not open it again
    assert current_window(spec, first) == (utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6))
    assert next_opening(spec, second) == utc(2026, 11, 2, 6, 30)


def test_berlin_spring_forward_window_at_0230_opens_once_at_0300() -> None:
    spec = window("30 2 * * *", "2h", BERLIN)
    assert wall_opens(spec, utc(2026, 3, 28), utc(2026, 3, 31)) == [
        "03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST",
    ]
    assert current_window(spec, utc(2026, 3, 29, 1)) == (utc(2026, 3, 29, 1),
                                                         utc(2026, 3, 29, 3))


def test_berlin_fall_back_window_at_0230_opens_once_at_the_first_pass() -> None:
    spec = window("30 2 * * *", "20m", BERLIN)
    assert wall_opens(spec, utc(2026, 10, 24), utc(2026, 10, 27)) == [
        "10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET",
    ]
    assert is_open(spec, local(BERLIN, 2026, 10, 25, 2, 35))
    assert not is_open(spec, local(BERLIN, 2026, 10, 25, 2, 35, fold=1))
    assert remaining(spec, local(BERLIN, 2026, 10, 25, 2, 35)) == timedelta(minutes=15)


def test_duration_is_elapsed_time_across_fall_back() -> None:
    spec = window("0 1 * * *", "4h", NY)
    opened, closed = next_openings(spec, utc(2026, 11, 1), 1)[0]
    # (compare in UTC: Python's == between zones is False for an ambiguous wall time)
    assert opened == local(NY, 2026, 11, 1, 1).astimezone(UTC) == utc(2026, 11, 1, 5)
    assert closed - opened == timedelta(hours=4)
    assert f"{closed.astimezone(ZoneInfo(NY)):%H:%M %Z}" == "04:00 EST"  # 3 wall hours


@pytest.mark.parametrize(
    ("zone", "cron", "start", "spanning_close"),
    [
        # 23:00 + 4 elapsed hours spans each 2026 transition: 5 or 3 wall-clock hours
        (NY, "0 23 * * *", utc(2026, 3, 7, 12), "03-08 04:00 EDT"),
        (NY, "0 23 * * *", utc(2026, 10, 31, 12), "11-01 02:00 EST"),
        (BERLIN, "0 23 * * *", utc(2026, 3, 28, 12), "03-29 04:00 CEST"),
        (BERLIN, "0 23 * * *", utc(2026, 10, 24, 12), "10-25 02:00 CET"),
    ],
)
def test_a_daily_window_spanning_a_transition_keeps_its_wall_clock_start(
    zone: str, cron: str, start: datetime, spanning_close: str,
) -> None:
    spec = window(cron, "4h", zone)
    tz = ZoneInfo(zone)
    found = next_openings(spec, start, 5)
    hour = int(cron.split()[1])
    assert [a.astimezone(tz).hour for a, _ in found] == [hour] * 5
    assert [a.astimezone(tz).minute for a, _ in found] == [0] * 5
    assert all(b - a == timedelta(hours=4) for a, b in found)
    assert all(b2 - b1 >= timedelta(hours=23) for (_, b1), (_, b2) in pairwise(found))
    assert f"{found[0][1].astimezone(tz):%m-%d %H:%M %Z}" == spanning_close


def test_hourly_windows_follow_the_same_rule() -> None:
    spec = window("30 * * * *", "10m", NY)
    assert wall_opens(spec, local(NY, 2026, 3, 8, 1), local(NY, 2026, 3, 8, 4)) == [
        "03-08 01:30 EST", "03-08 03:00 EDT", "03-08 03:30 EDT",
    ]
    assert wall_opens(spec, local(NY, 2026, 11, 1, 0, 15), local(NY, 2026, 11, 1, 3)) == [
        "11-01 00:30 EDT", "11-01 01:30 EDT", "11-01 02:30 EST",
    ]
    # a whole skipped hour of */15 collapses into one opening at 03:00 EDT
    spec = window("*/15 2,3 8 3 *", "5m", NY)
    assert wall_opens(spec, utc(2026, 3, 8), utc(2026, 3, 9)) == [
        "03-08 03:00 EDT", "03-08 03:15 EDT", "03-08 03:30 EDT", "03-08 03:45 EDT",
    ]


def test_lord_howe_half_hour_shifts() -> None:
    zone = "Australia/Lord_Howe"
    spec = window("15 2 * * *", "1h", zone)
    assert wall_opens(spec, utc(2026, 10, 2), utc(2026, 10, 5)) == [
        "10-03 02:15 +1030", "10-04 02:30 +11", "10-05 02:15 +11",
    ]
    spec = window("45 1 * * *", "1h", zone)
    assert wall_opens(spec, utc(2026, 4, 3), utc(2026, 4, 6)) == [
        "04-04 01:45 +11", "04-05 01:45 +11", "04-06 01:45 +1030",
    ]


def test_the_appliance_zone_overrides_the_window_zone() -> None:
    spec = window("0 22 * * *", "4h", BERLIN)
    now = utc(2026, 6, 1, 12)
    assert next_opening(spec, now) == utc(2026, 6, 1, 20)  # 22:00 CEST
    assert next_opening(spec, now, "Asia/Kolkata") == utc(2026, 6, 1, 16, 30)  # 22:00 IST
    assert next_opening(spec, now, NY) == utc(2026, 6, 2, 2)  # 22:00 EDT
    assert next_opening(spec, now, "") == utc(2026, 6, 1, 20)  # no override
    with pytest.raises(WindowError, match=r"appliance\.timezone: 'Mars/Olympus'"):
        is_open(spec, now, "Mars/Olympus")


# --- one window: behaviour -----------------------------------------------------------------


def test_cutoff_and_boundaries() -> None:
    spec = window("0 22 * * *", "4h", "UTC", cutoff="30m")
    opens, closes = utc(2026, 5, 4, 22), utc(2026, 5, 5, 2)
    assert not is_open(spec, opens - timedelta(microseconds=1))
    assert is_open(spec, opens) and can_start(spec, opens)
    assert remaining(spec, opens) == timedelta(hours=4)
    assert can_start(spec, closes - timedelta(minutes=30))  # exactly the cutoff left
    assert not can_start(spec, closes - timedelta(minutes=30) + timedelta(microseconds=1))
    assert is_open(spec, closes - timedelta(microseconds=1))
    assert not is_open(spec, closes) and remaining(spec, closes) == timedelta(0)
    assert start_deadline(spec, opens) == closes - timedelta(minutes=30)
    assert next_opening(spec, opens + HOUR) == opens + HOUR  # already can start
    assert next_opening(spec, closes - timedelta(minutes=10)) == opens + timedelta(days=1)
    no_cutoff = window("0 22 * * *", "4h", "UTC")
    assert can_start(no_cutoff, closes - timedelta(microseconds=1))
    assert not can_start(no_cutoff, closes)


def test_openings_include_the_window_open_at_start_and_stop_before_end() -> None:
    spec = window("0 22 * * 1-5", "4h", "UTC")
    found = list(openings(spec, utc(2026, 5, 5, 1), utc(2026, 5, 7, 22)))
    assert found == [
        (utc(2026, 5, 4, 22), utc(2026, 5, 5, 2)),
        (utc(2026, 5, 5, 22), utc(2026, 5, 6, 2)),
        (utc(2026, 5, 6, 22), utc(2026, 5, 7, 2)),
    ]
    assert list(openings(spec, utc(2026, 5, 5, 2), utc(2026, 5, 5, 22))) == []


def test_overlapping_openings_do_not_chain() -> None:
    spec = window("0 * * * *", "90m", "UTC", cutoff="45m")
    now = utc(2026, 5, 4, 10, 50)  # in the 10:00 opening, 40m left
    assert current_window(spec, now) == (utc(2026, 5, 4, 10), utc(2026, 5, 4, 11, 30))
    assert remaining(spec, now) == timedelta(minutes=40)
    assert not can_start(spec, now)
    assert next_opening(spec, now) == utc(2026, 5, 4, 11)
    earlier = utc(2026, 5, 4, 10, 20)  # in the 09:00 and the 10:00 openings
    assert [a for a, _ in openings(spec, earlier, earlier + MINUTE)] == [
        utc(2026, 5, 4, 9), utc(2026, 5, 4, 10),
    ]
    assert current_window(spec, earlier) == (utc(2026, 5, 4, 10), utc(2026, 5, 4, 11, 30))


def test_next_openings_lists_the_open_window_first() -> None:
    spec = window("0 22 * * *", "4h", "Europe/Amsterdam", cutoff="30m")
    found = next_openings(spec, utc(2026, 1, 5, 23), 3)
    assert found == [
        (utc(2026, 1, 5, 21), utc(2026, 1, 6, 1)),
        (utc(2026, 1, 6, 21), utc(2026, 1, 7, 1)),
        (utc(2026, 1, 7, 21), utc(2026, 1, 8, 1)),
    ]
    assert next_openings(spec, utc(2026, 1, 5, 23), 0) == []
    with pytest.raises(ValueError, match="count"):
        next_openings(spec, utc(2026, 1, 5, 23), -1)


def test_rare_and_never_opening_windows() -> None:
    leap = window("0 0 29 2 *", "1h", "UTC")
    assert next_opening(leap, utc(2027, 3, 1)) == utc(2028, 2, 29)
    assert is_open(leap, utc(2028, 2, 29, 0, 30))
    assert not is_open(leap, utc(2028, 3, 1))
    rare = window("0 0 * 2 MON#5", "1h", "UTC")  # next: 2044-02-29
    with pytest.raises(WindowError) as info:
        next_opening(rare, utc(2026, 1, 1))
    assert info.value.field == "window.cron"
    assert "never opens in the 400 days after 2026-01-01T00:00:00+00:00" in str(info.value)
    assert next_openings(rare, utc(2026, 1, 1), 3) == []
    assert next_opening(rare, utc(2043, 6, 1)) == utc(2044, 2, 29)
    assert not is_open(rare, utc(2026, 1, 1))


def test_now_must_be_aware() -> None:
    spec = window("0 22 * * *")
    with pytest.raises(ValueError, match="aware"):
        is_open(spec, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        list(openings(spec, utc(2026, 1, 1), datetime(2026, 1, 2)))


# --- several windows -------------------------------------------------------------------------


def test_covering_by_site_or_tag() -> None:
    ams = window("0 22 * * *", name="ams", sites=["ams"])
    gold = window("0 1 * * *", name="gold", sites=[], tags=["gold", "prod"])
    both = window("0 3 * * *", name="both", sites=["nyc"], tags=["lab"])
    specs = [ams, gold, both]
    assert covering(specs, "ams", ()) == [ams]
    assert covering(specs, "ams", ("prod",)) == [ams, gold]
    assert covering(specs, "sfo", ("lab", "gold")) == [gold, both]
    assert covering(specs, "sfo", ()) == []
    assert covering(specs, None, ["lab"]) == [both]


def test_any_of_several_windows() -> None:
    evening = window("0 22 * * *", "2h", "UTC", cutoff="1h", name="evening")
    night = window("0 3 * * *", "1h", "UTC", name="night")
    specs = [evening, night]
    assert can_start_any(specs, utc(2026, 5, 4, 22, 30), None)
    assert not can_start_any(specs, utc(2026, 5, 4, 23, 30), None)  # cutoff
    assert next_start_any(specs, utc(2026, 5, 4, 23, 30), None) == utc(2026, 5, 5, 3)
    assert next_start_any(specs, utc(2026, 5, 5, 3, 30), None) == utc(2026, 5, 5, 3, 30)
    assert next_start_any(specs, utc(2026, 5, 5, 12), "Asia/Kolkata") == utc(2026, 5, 5, 16, 30)
    assert not can_start_any([], utc(2026, 5, 5, 12))
    rare = window("0 0 * 2 MON#5", name="rare")
    assert next_start_any([rare, night], utc(2026, 5, 5, 12)) == utc(2026, 5, 6, 3)
    with pytest.raises(WindowError, match="never opens"):
        next_start_any([rare], utc(2026, 5, 5, 12))
    with pytest.raises(ValueError, match="at least one window"):
        next_start_any([], utc(2026, 5, 5, 12))


# --- parsing and validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600), (90.0, 90), ("4h", 14400), ("90m", 5400), ("1h30m", 5400),
     ("3600s", 3600), ("3600", 3600), (" 2H ", 7200), ("1d", 86400), ("1d2h3m4s", 93784),
     ("0", 0), (timedelta(minutes=5), 300)],
)
def test_parse_duration(value: Any, seconds: int) -> None:
    assert parse_duration(value) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "value", ["", "h", "4x", "30m1h", "-5", "1.5h", -1, True, None, [], float("nan"),
              float("inf"), 1.5, "10000000000000000d"],
)
def test_parse_duration_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match=r"duration|whole number"):
        parse_duration(value)


def test_format_duration_reads_back() -> None:
    for seconds in (0, 1, 59, 60, 5400, 86400, 93784, 7 * 86400):
        text = format_duration(timedelta(seconds=seconds))
        assert parse_duration(text) == timedelta(seconds=seconds)
    assert format_duration(timedelta(minutes=90)) == "1h30m"


def test_parse_window_normalises_and_round_trips() -> None:
    spec = parse_window({
        "name": "nightly-ams", "cron": " 0  22 * *   1-5", "duration": "4h",
        "timezone": "Europe/Amsterdam", "cutoff": "30m", "sites": ["ams", "ams", "rtm"],
    })
    assert spec == WindowSpec(
        name="nightly-ams", cron="0 22 * * 1-5", duration=timedelta(hours=4),
        timezone="Europe/Amsterdam", cutoff=timedelta(minutes=30), sites=("ams", "rtm"),
        tags=(),
    )
    assert spec.to_dict() == {
        "name": "nightly-ams", "cron": "0 22 * * 1-5", "duration": 14400,
        "timezone": "Europe/Amsterdam", "cutoff": 1800, "sites": ["ams", "rtm"], "tags": [],
    }
    assert parse_window(spec.to_dict()) == spec
    assert tuple(spec.to_dict()) == WINDOW_KEYS
    minimal = parse_window({"name": "t", "cron": "0 1 * * *", "duration": 60,
                            "timezone": "UTC", "tags": ["gold"]})
    assert minimal.cutoff == timedelta(0) and minimal.sites == ()


VALID: dict[str, Any] = {
    "name": "w", "cron": "0 22 * * *", "duration": "4h", "timezone": "UTC",
    "cutoff": "30m", "sites": ["ams"], "tags": [],
}


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"cron": "61 * * * *"}, "window.cron",
         "'61 * * * *' is not a valid cron expression (minute 61 out of range 0-59)"),
        ({"cron": "0 24 * * *"}, "window.cron", "hour 24 out of range 0-23"),
        ({"cron": "0 0 0 * *"}, "window.cron", "day-of-month 0 out of range 1-31"),
        ({"cron": "0 0 * 13 *"}, "window.cron", "month 13 out of range 1-12"),
        ({"cron": "0 0 * * 8"}, "window.cron", "day-of-week 8 out of range 0-7"),
        ({"cron": "0 0 * * FOO"}, "window.cron", "bad day-of-week field 'FOO'"),
        ({"cron": "0 0 30 2 *"}, "window.cron", "never occurs in month '2'"),
        ({"cron": "0 0 * *"}, "window.cron", "5 fields expected"),
        ({"cron": "0 0 0 * * *"}, "window.cron", "got 6"),
        ({"cron": 5}, "window.cron", "5 is not a cron expression"),
        ({"timezone": "Mars/Olympus"}, "window.timezone",
         "'Mars/Olympus' is not a known IANA time zone"),
        ({"timezone": "America"}, "window.timezone", "'America' is not a known"),
        ({"timezone": "../etc/passwd"}, "window.timezone", "is not a known"),
        ({"duration": 0}, "window.duration", "0 is not longer than 0"),
        ({"duration": "8d"}, "window.duration", "'8d' is longer than 7 days"),
        ({"duration": "soon"}, "window.duration", "'soon' is not a duration"),
        ({"duration": 1.5}, "window.duration", "1.5 is not a whole number of seconds"),
        ({"cutoff": "4h"}, "window.cutoff", "'4h' is not shorter than the duration 4h"),
        ({"cutoff": "-1"}, "window.cutoff", "'-1' is not a duration"),
        ({"sites": [], "tags": []}, "window.sites", "a window covers at least one site or tag"),
        ({"sites": "ams"}, "window.sites", "'ams' is not a list of sites"),
        ({"sites": ["ams", ""]}, "window.sites[1]", "'' is not a non-empty name"),
        ({"tags": [3]}, "window.tags[0]", "3 is not a non-empty name"),
        ({"name": ""}, "window.name", "'' is not a non-empty name"),
        ({"name": " w"}, "window.name", "' w' is not a non-empty name"),
        ({"color": "red"}, "window.color", "unknown key (known keys: name, cron"),
        ({"color": "red", "b": 1}, "window.b", "also unknown: 'color'"),
    ],
)
def test_parse_window_errors_name_the_field_and_value(
    changes: dict[str, Any], field: str, text: str,
) -> None:
    with pytest.raises(WindowError) as info:
        parse_window({**VALID, **changes})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert text in str(info.value)


@pytest.mark.parametrize("key", ["name", "cron", "duration", "timezone"])
def test_parse_window_requires_keys(key: str) -> None:
    data = {k: v for k, v in VALID.items() if k != key}
    with pytest.raises(WindowError, match=rf"^window\.{key}: is required"):
        parse_window(data)


def test_parse_window_refuses_a_non_object() -> None:
    with pytest.raises(WindowError, match=r"^window: \[\] is not an object"):
        parse_window([])  # type: ignore[arg-type]


def test_the_longest_duration_is_accepted() -> None:
    spec = parse_window({**VALID, "duration": MAX_DURATION.total_seconds(), "cutoff": "1h"})
    assert spec.duration == MAX_DURATION
    assert parse_window({**VALID, "duration": "1s", "cutoff": 0}).duration == timedelta(seconds=1)


@settings(max_examples=100, deadline=None)
@given(
    cron=CRONS, zone=st.sampled_from(ZONES), data=st.data(),
    sites=st.lists(st.sampled_from(["ams", "nyc", "blr"]), max_size=3),
    tags=st.lists(st.sampled_from(["gold", "lab"]), max_size=2),
)
def test_to_dict_round_trips(cron: str, zone: str, data: st.DataObject, sites: list[str],
                             tags: list[str]) -> None:
    duration, cutoff = data.draw(durations_and_cutoffs())
    if not sites and not tags:
        sites = ["ams"]
    spec = parse_window({"name": "w", "cron": cron, "duration": format_duration(duration),
                         "timezone": zone, "cutoff": int(cutoff.total_seconds()),
                         "sites": sites, "tags": tags})
    assert spec.duration == duration and spec.cutoff == cutoff
    assert parse_window(spec.to_dict()) == spec
