"""Maintenance windows: when an appliance may start an install (docs/windows.md).

A window is a 5-field cron expression, a duration, an IANA time zone and a cutoff; it
covers sites and/or tags. `parse_window` validates the object stored in
`maintenance_windows` (and sent to the API / CLI) into a `WindowSpec`;
`WindowSpec.to_dict` gives it back (durations as whole seconds), so that
`parse_window(w.to_dict()) == w`. Errors are `WindowError`s that name the field
(`window.cron`) and the bad value.

Every function takes the clock as an argument (`now`, an aware datetime) and returns
aware datetimes in UTC. The zone is the appliance's own `timezone` when the caller
passes one (`tz`), else the window's.

Semantics (docs/windows.md has the examples):

- Matching. The cron expression is matched against the local wall clock of the zone,
  with standard cron rules as cronsim implements them: minute hour day-of-month month
  day-of-week; names (MON, JAN); ranges, lists and */N steps; `L`, `LW`, `5L`, `MON#2`;
  when both day-of-month and day-of-week are restricted (neither starts with `*`) a day
  matches if EITHER matches, otherwise both must.
- Each matching wall-clock time opens the window ONCE, at one instant:
  * a wall time that exists once: that instant;
  * a repeated wall time (the hour repeated when clocks fall back): the FIRST occurrence
    only (fold=0, still on summer time) - the window is not doubled;
  * a skipped wall time (inside the hour skipped when clocks spring forward): the first
    valid instant after the gap, i.e. the transition itself, when the wall clock shows
    the end of the gap (02:30 on 2026-03-08 in America/New_York opens at 03:00 EDT) -
    the window is not lost. Several skipped wall times, and the end of the gap itself,
    that all land on that instant give a single opening.
  This rule applies to every expression alike. (cronsim's own aware-datetime mode does
  the same for expressions with a fixed minute and hour, but follows elapsed time for
  those whose minute or hour field starts with `*`; we iterate cronsim on naive wall
  times and map them to instants ourselves, so that hourly windows obey the same rule.)
- Duration is elapsed (absolute) time: a window opened at instant T closes at
  T + duration, whatever the clocks do in between. The interval is half-open:
  open at T, closed at T + duration.
- Windows do not chain: when openings come more often than the duration, the intervals
  overlap; the window is open while any interval is, and `remaining` counts to the close
  of the latest opening so far (a later opening does not extend an earlier one until it
  begins).
- Cutoff: an install may start (`can_start`) while the window is open and at least
  `cutoff` remains before it closes (remaining >= cutoff).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from orchestrator.domain.errors import OrchestratorError

MAX_DURATION: Final = timedelta(days=7)
SEARCH_HORIZON: Final = timedelta(days=400)
"""How far ahead `next_opening` and `next_openings` look for an opening."""

WINDOW_KEYS: Final = ("name", "cron", "duration", "timezone", "cutoff", "sites", "tags")
_REQUIRED: Final = ("name", "cron", "duration", "timezone")

_CRON_FIELDS: Final = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_RANGES: Final = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_SECOND: Final = timedelta(seconds=1)
_ZERO: Final = timedelta(0)

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")
_LONGEST_SECONDS: Final = 1000 * 366 * 86400
_DURATION_FORMS = "seconds, or like '4h', '90m', '1h30m', '3600s', '1d'"


class WindowError(OrchestratorError, ValueError):
    """A bad window: `field` names where (e.g. "window.cron"), `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class WindowSpec:
    """A maintenance window (docs/windows.md). Build it with `parse_window`.

    name: unique name of the window.
    cron: 5-field cron expression matched on the local wall clock (see the module doc).
    duration: how long each opening lasts, in elapsed time; > 0 and <= 7 days.
    timezone: IANA zone of the cron expression (an appliance's own zone overrides it).
    cutoff: no install starts when less than this remains; 0 <= cutoff < duration.
    sites, tags: what it covers; an appliance is covered when its site is in `sites` or
        any of its tags is in `tags`. At least one of them is non-empty.
    """

    name: str
    cron: str
    duration: timedelta
    timezone: str
    cutoff: timedelta = _ZERO
    sites: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The normalised JSON object, every key present; durations in whole seconds."""
        return {
            "name": self.name,
            "cron": self.cron,
            "duration": int(self.duration.total_seconds()),
            "timezone": self.timezone,
            "cutoff": int(self.cutoff.total_seconds()),
            "sites": list(self.sites),
            "tags": list(self.tags),
        }


# --- parsing ----------------------------------------------------------------------------


def parse_duration(value: object) -> timedelta:
    """A duration of whole seconds, >= 0: a number of seconds (int, or a float or a digit
    string without a fraction), a string like "4h", "90m", "1h30m", "3600s", "1d2h" (units
    d, h, m, s in that order, each at most once), or a timedelta.

    Raises ValueError naming the bad value.
    """
    problem = f"{value!r} is not a duration ({_DURATION_FORMS})"
    seconds: float
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise ValueError(problem)
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        match = _DURATION.match(text)
        if _SECONDS.match(text):
            seconds = float(text)
        elif text and match is not None:
            days, hours, minutes, secs = (int(part or 0) for part in match.groups())
            seconds = float(((days * 24 + hours) * 60 + minutes) * 60 + secs)
        else:
            raise ValueError(problem)
    else:
        raise ValueError(problem)
    if not (0 <= seconds < float("inf")):
        raise ValueError(problem)
    if seconds > _LONGEST_SECONDS:
        raise ValueError(f"{value!r} is too long a duration")
    if seconds != int(seconds):
        raise ValueError(f"{value!r} is not a whole number of seconds")
    return timedelta(seconds=int(seconds))


def format_duration(value: timedelta) -> str:
    """The compact form parse_duration reads back: 5400 s -> "1h30m", 0 -> "0s"."""
    total = int(value.total_seconds())
    if total == 0:
        return "0s"
    sign, total = ("-", -total) if total < 0 else ("", total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + "".join(parts)


def _cron_problem(fields: Sequence[str]) -> str:
    """Why cronsim refuses these 5 fields, as precisely as can be said."""
    for index, (field, name) in enumerate(zip(fields, _CRON_FIELDS, strict=True)):
        alone = ["*"] * 5
        alone[index] = field
        try:
            CronSim(" ".join(alone), datetime(2000, 1, 1))
        except CronSimError:
            low, high = _CRON_RANGES[index]
            for number in _field_numbers(field, index):
                if not low <= number <= high:
                    return f"{name} {number} out of range {low}-{high}"
            return f"bad {name} field {field!r}"
    return f"day-of-month {fields[2]!r} never occurs in month {fields[3]!r}"


def _field_numbers(field: str, index: int) -> list[int]:
    """The plain numbers a cron field names as values (not steps, not #nth)."""
    numbers = []
    for term in field.split(","):
        base = term.split("/", 1)[0].split("#", 1)[0]
        if index == 4 and base.upper().endswith("L"):
            base = base[:-1]
        for part in base.split("-", 1):
            if part.isdigit():
                numbers.append(int(part))
    return numbers


def parse_cron(value: object) -> str:
    """A valid 5-field cron expression, with whitespace normalised to single blanks.

    Raises ValueError naming the expression and, where it can, the bad field.
    """
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a cron expression (a string of 5 fields)")
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            f"{value!r} is not a valid cron expression (5 fields expected: minute hour "
            f"day-of-month month day-of-week; got {len(fields)})"
        )
    expression = " ".join(fields)
    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError:
        raise ValueError(
            f"{value!r} is not a valid cron expression ({_cron_problem(fields)})"
        ) from None
    return expression


def check_zone(value: object) -> str:
    """A known IANA time zone name, else ValueError naming the value."""
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"{value!r} is not a known IANA time zone")
    try:
        _zone(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"{value!r} is not a known IANA time zone") from None
    return value


def _names(field: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise WindowError(f"window.{field}", f"{value!r} is not a list of {field}")
    names: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item or item != item.strip():
            raise WindowError(
                f"window.{field}[{index}]", f"{item!r} is not a non-empty name without blanks"
            )
        if item not in names:
            names.append(item)
    return tuple(names)


def _duration_field(field: str, value: object) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise WindowError(f"window.{field}", str(exc)) from None


def parse_window(data: Mapping[str, Any], *, now: datetime | None = None) -> WindowSpec:
    """Validate a window object into a WindowSpec.

    Keys: name, cron, duration, timezone (required); cutoff (default 0), sites, tags
    (default empty; at least one of them non-empty). Durations as parse_duration reads
    them. Unknown keys are refused by name. Raises WindowError on the first problem.

    With `now` (when a window is created or changed), a window that does not open within
    SEARCH_HORIZON of `now` in its own zone is refused too, on `window.cron` (e.g.
    `0 0 * 2 MON#5`, a fifth Monday in February); without it (a stored window being read
    back) it is not checked.
    """
    if not isinstance(data, Mapping):
        raise WindowError("window", f"{data!r} is not an object")
    unknown = sorted(str(key) for key in data if key not in WINDOW_KEYS)
    if unknown:
        others = ", ".join(repr(key) for key in unknown[1:])
        also = f"; also unknown: {others}" if others else ""
        raise WindowError(
            f"window.{unknown[0]}", f"unknown key{also} (known keys: {', '.join(WINDOW_KEYS)})"
        )
    for key in _REQUIRED:
        if key not in data:
            raise WindowError(f"window.{key}", "is required")
    name = data["name"]
    if not isinstance(name, str) or not name or name != name.strip():
        raise WindowError("window.name", f"{name!r} is not a non-empty name without blanks")
    try:
        cron = parse_cron(data["cron"])
    except ValueError as exc:
        raise WindowError("window.cron", str(exc)) from None
    duration = _duration_field("duration", data["duration"])
    if duration <= _ZERO:
        raise WindowError("window.duration", f"{data['duration']!r} is not longer than 0")
    if duration > MAX_DURATION:
        raise WindowError(
            "window.duration", f"{data['duration']!r} is longer than 7 days (the maximum)"
        )
    try:
        zone = check_zone(data["timezone"])
    except ValueError as exc:
        raise WindowError("window.timezone", str(exc)) from None
    cutoff = _duration_field("cutoff", data.get("cutoff", 0))
    if cutoff >= duration:
        raise WindowError(
            "window.cutoff",
            f"{data.get('cutoff')!r} is not shorter than the duration "
            f"{format_duration(duration)}",
        )
    sites = _names("sites", data.get("sites", ()))
    tags = _names("tags", data.get("tags", ()))
    if not sites and not tags:
        raise WindowError(
            "window.sites", "[] and tags [] are both empty: a window covers at least one "
            "site or tag"
        )
    spec = WindowSpec(
        name=name, cron=cron, duration=duration, timezone=zone, cutoff=cutoff,
        sites=sites, tags=tags,
    )
    if now is not None:
        check_opens(spec, now)
    return spec


def check_opens(spec: WindowSpec, now: datetime) -> None:
    """Raise WindowError on `window.cron`, naming the expression, when the window does not
    open within SEARCH_HORIZON (400 days) after `now` in its own zone."""
    at = _utc(now)
    if _next_opening_after(spec.cron, spec.timezone, at) is None:
        raise WindowError(
            "window.cron",
            f"{spec.cron!r} never opens in the {SEARCH_HORIZON.days} days after "
            f"{at:%Y-%m-%d} ({spec.timezone}): a window must open at least once in "
            f"{SEARCH_HORIZON.days} days",
        )


# --- from wall-clock times to instants ------------------------------------------------


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _zone_of(spec: WindowSpec, tz: str | None) -> str:
    if not tz:
        return spec.timezone
    try:
        return check_zone(tz)
    except ValueError as exc:
        raise WindowError("appliance.timezone", str(exc)) from None


def _utc(now: datetime, name: str = "now") -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime, got {now!r}")
    return now.astimezone(UTC)


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive local wall-clock time of an instant."""
    return moment.astimezone(zone).replace(tzinfo=None)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (UTC) at which wall-clock time `wall` opens a window (module doc).

    Existing once: that instant. Repeated: the first occurrence (fold=0). Skipped: the
    first instant after the gap, i.e. the transition.
    """
    after = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0
    if _wall(after, zone) == wall:
        return after
    # In a gap, fold=0 maps with the offset before the transition (an instant after it)
    # and fold=1 with the offset after it (an instant before it): bisect between them.
    low = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = int(after.timestamp())
    offset_after = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset_after:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _walls_from(cron: str, start: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching `cron`, from naive `start` (inclusive) onward."""
    iterator = CronSim(cron, start.replace(microsecond=0) - _SECOND)
    while True:
        try:
            yield next(iterator)
        except StopIteration:  # cronsim gives up after 50 years without a match
            return


def _walls_back_from(cron: str, start: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching `cron`, from naive `start` (inclusive) backward."""
    iterator = CronSim(cron, start.replace(microsecond=0) + _SECOND, reverse=True)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return


def _opening_instants(cron: str, zone_name: str, after: datetime) -> Iterator[datetime]:
    """Opening instants strictly after the UTC instant `after`, in order, without repeats.

    Naive wall times map to instants monotonically (non-decreasing), and no wall time
    before wall(after) maps to an instant after `after`; wall times in the repeated hour
    that map before `after` are skipped by the filter.
    """
    zone = _zone(zone_name)
    last: datetime | None = None
    for wall in _walls_from(cron, _wall(after, zone)):
        moment = _instant(wall, zone)
        if moment > after and moment != last:
            last = moment
            yield moment


@lru_cache(maxsize=16384)
def _latest_opening(cron: str, zone_name: str, at: datetime) -> datetime | None:
    """The latest opening instant <= `at` (UTC), None when there is none in 50 years."""
    zone = _zone(zone_name)
    local = at.astimezone(zone)
    start = local.replace(tzinfo=None)
    if local.fold:
        # `at` is the second pass of a repeated hour: wall times up to the same wall time
        # plus the shift opened (at their first pass) before `at`.
        before = local.replace(fold=0).utcoffset()
        now_offset = local.utcoffset()
        assert before is not None and now_offset is not None
        start += max(before - now_offset, _ZERO)
    for wall in _walls_back_from(cron, start):
        moment = _instant(wall, zone)
        if moment <= at:
            return moment
    return None


@lru_cache(maxsize=16384)
def _next_opening_after(cron: str, zone_name: str, after: datetime) -> datetime | None:
    """The first opening instant > `after` within SEARCH_HORIZON, else None."""
    limit = after + SEARCH_HORIZON
    for moment in _opening_instants(cron, zone_name, after):
        return moment if moment <= limit else None
    return None


# --- one window -------------------------------------------------------------------------


def openings(
    spec: WindowSpec, start: datetime, end: datetime, tz: str | None = None
) -> Iterator[tuple[datetime, datetime]]:
    """Every interval (open_at, close_at), in UTC, that overlaps [start, end), in order.

    An interval opened before `start` and still open at `start` is included. Intervals
    of the same window may overlap when the cron fires more often than the duration.
    `tz` (an appliance's zone) overrides the window's zone.
    """
    zone_name = _zone_of(spec, tz)
    first, stop = _utc(start, "start"), _utc(end, "end")
    for moment in _opening_instants(spec.cron, zone_name, first - spec.duration):
        if moment >= stop:
            return
        yield moment, moment + spec.duration


def current_window(
    spec: WindowSpec, now: datetime, tz: str | None = None
) -> tuple[datetime, datetime] | None:
    """The interval (open_at, close_at) in UTC of the latest opening that is open at `now`
    (open_at <= now < close_at), or None when the window is closed."""
    at = _utc(now)
    opened = _latest_opening(spec.cron, _zone_of(spec, tz), at)
    if opened is None or at >= opened + spec.duration:
        return None
    return opened, opened + spec.duration


def is_open(spec: WindowSpec, now: datetime, tz: str | None = None) -> bool:
    """Whether the window is open at `now`."""
    return current_window(spec, now, tz) is not None


def remaining(spec: WindowSpec, now: datetime, tz: str | None = None) -> timedelta:
    """Time from `now` until the open window closes; zero when it is closed."""
    window = current_window(spec, now, tz)
    return _ZERO if window is None else window[1] - _utc(now)


def can_start(spec: WindowSpec, now: datetime, tz: str | None = None) -> bool:
    """Whether an install may start at `now`: the window is open and at least its cutoff
    remains (remaining >= cutoff)."""
    return start_deadline(spec, now, tz) is not None


def start_deadline(spec: WindowSpec, now: datetime, tz: str | None = None) -> datetime | None:
    """The last instant (UTC) an install may start in the window open at `now`
    (close_at - cutoff; with no cutoff, the last microsecond before close_at), or None
    when `can_start` is false at `now`.

    `can_start` stays true from `now` up to and including this instant (a later,
    overlapping opening may extend it further).
    """
    window = current_window(spec, now, tz)
    if window is None:
        return None
    deadline = window[1] - spec.cutoff
    if spec.cutoff == _ZERO:
        deadline = window[1] - timedelta(microseconds=1)
    return deadline if _utc(now) <= deadline else None


def next_opening(spec: WindowSpec, now: datetime, tz: str | None = None) -> datetime:
    """The first instant >= `now` (UTC) at which `can_start` is true: `now` itself when it
    already is, else the next opening (cutoff < duration, so an opening always can).

    Looks SEARCH_HORIZON (400 days) ahead; raises WindowError("window.cron", ...) when the
    window does not open within it.
    """
    at = _utc(now)
    zone_name = _zone_of(spec, tz)
    if can_start(spec, at, tz):
        return at
    moment = _next_opening_after(spec.cron, zone_name, at)
    if moment is None:
        raise WindowError(
            "window.cron",
            f"{spec.cron!r} never opens in the {SEARCH_HORIZON.days} days after "
            f"{at.isoformat()} (window {spec.name!r}, time zone {zone_name})",
        )
    return moment


def next_openings(
    spec: WindowSpec, now: datetime, count: int, tz: str | None = None
) -> list[tuple[datetime, datetime]]:
    """Up to `count` intervals (open_at, close_at) in UTC, in order: the one open at
    `now` if any, then the following ones, opening within SEARCH_HORIZON of `now`.

    Fewer (possibly none) when the window opens less often within the horizon.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be an integer >= 0, got {count!r}")
    at = _utc(now)
    result: list[tuple[datetime, datetime]] = []
    if count == 0:
        return result
    for interval in openings(spec, at, at + SEARCH_HORIZON, tz):
        result.append(interval)
        if len(result) >= count:
            break
    return result


# --- the windows covering one appliance -------------------------------------------------


WindowGroup = tuple[str, tuple[str, ...], str | None]
"""Appliances that share a site, tags and a time zone: the same windows cover them and open
for them at the same moments, so one decision serves the whole group."""


def covering(
    specs: Iterable[WindowSpec], site: str | None, tags: Iterable[str]
) -> list[WindowSpec]:
    """The windows that apply to an appliance: its site is in spec.sites, or any of its
    tags is in spec.tags. In the order given."""
    mine = frozenset(tags)
    return [
        spec for spec in specs
        if (site is not None and site in spec.sites) or not mine.isdisjoint(spec.tags)
    ]


def can_start_any(specs: Iterable[WindowSpec], now: datetime, tz: str | None = None) -> bool:
    """Whether an install may start at `now` in any of `specs` (False when there are none:
    callers treat an appliance no window covers as unrestricted themselves)."""
    return any(can_start(spec, now, tz) for spec in specs)


def next_start_any(
    specs: Iterable[WindowSpec], now: datetime, tz: str | None = None
) -> datetime:
    """The first instant >= `now` at which `can_start_any` is true: the earliest
    `next_opening` over `specs`, ignoring windows that never open within the horizon.

    Raises ValueError when `specs` is empty, WindowError when none of them opens within
    SEARCH_HORIZON.
    """
    best: datetime | None = None
    problem: WindowError | None = None
    for spec in specs:
        try:
            moment = next_opening(spec, now, tz)
        except WindowError as exc:
            if exc.field != "window.cron":
                raise
            problem = exc
            continue
        if best is None or moment < best:
            best = moment
    if best is not None:
        return best
    if problem is not None:
        raise problem
    raise ValueError("next_start_any needs at least one window")
