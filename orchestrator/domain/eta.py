"""The forecast of a rollout's completion: a discrete-event simulation of its plan.

`forecast_completion` replays what the engine would do with what is left of a rollout:
waves run in order, the next one starting when every task of the previous one would be
done (in-flight installs count towards the wave they run in, the first one given);
inside a wave, installs start in plan order as a sliding window bounded by
`max_concurrency` and `per_site_concurrency`, each taking `install_seconds`; an
appliance covered by maintenance windows starts only while one of them `can_start`
(windows.py), and waits for `next_start_any` otherwise. An install that has started runs
to its end even when its window closes. Not modelled: soak times, approvals,
`max_starts_per_minute`, failures and retries.

The simulation is event-driven, never minute by minute: a heap of the times installs
end, a heap of the times closed windows open again, and, per (site, windows, zone)
class of appliances, a queue in plan order. Window verdicts are cached per class as
intervals of time (open until the current window's deadline, closed until the next
opening), so 10,000 appliances over several windows take a few tens of milliseconds.
Times are kept as integer microseconds, so the verdicts and the events agree exactly.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orchestrator.domain.windows import WindowSpec, next_start_any, start_deadline

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class ApplianceSlot:
    """An appliance left to install: where it is and what windows may cover it."""

    site: str
    tags: tuple[str, ...] = ()
    timezone: str | None = None


@dataclass(frozen=True)
class InFlight:
    """An install already running, expected to end at `expected_done_at` (aware)."""

    site: str
    expected_done_at: datetime


WindowsFor = Callable[[ApplianceSlot], tuple[list[WindowSpec], str | None]]
"""The windows covering an appliance and the zone to read them in (None: each window's)."""


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {moment!r}")
    return (moment - _EPOCH) // _MICROSECOND


def _moment(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class _Gate:
    """`can_start_any(specs, t, tz)` for one set of windows, cached as intervals of time."""

    def __init__(self, specs: tuple[WindowSpec, ...], tz: str | None) -> None:
        self.specs = specs
        self.tz = tz
        self.open_from = self.open_until = -1  # can start on [open_from, open_until]
        self.closed_from = self.closed_until = -1  # cannot on [closed_from, closed_until)

    def first_start(self, t: int) -> int:
        """`t` when an install may start at `t`, else the next time one may (> t)."""
        if self.open_from <= t <= self.open_until:
            return t
        if self.closed_from <= t < self.closed_until:
            return self.closed_until
        moment = _moment(t)
        deadlines = [start_deadline(spec, moment, self.tz) for spec in self.specs]
        live = [_micros(deadline) for deadline in deadlines if deadline is not None]
        if live:
            self.open_from, self.open_until = t, max(live)
            return t
        opens = _micros(next_start_any(self.specs, moment, self.tz))
        if opens <= t:  # cannot happen when windows.py is consistent; never loop on it
            opens = t + 1
        self.closed_from, self.closed_until = t, opens
        return opens


@dataclass
class _Class:
    """Appliances of one wave sharing a site and a gate, in plan order."""

    site: str
    gate: _Gate | None
    queue: deque[int]


def forecast_completion(
    now: datetime,
    remaining_by_wave: Sequence[Sequence[ApplianceSlot]],
    install_seconds: float,
    max_concurrency: int,
    per_site_concurrency: int | None,
    in_flight: Sequence[InFlight],
    windows_for: WindowsFor | None,
) -> datetime:
    """When the last install of the rollout would end (UTC), from `now`.

    remaining_by_wave: the never-started appliances of each wave left, in plan order;
        the first entry is the current wave.
    install_seconds: the duration of one install (the median observed so far, or the
        configured estimate before the first one finished); >= 0.
    max_concurrency: installs at once (>= 1); per_site_concurrency: per site, or None.
    in_flight: installs running now, part of the current wave; one whose expected end has
        passed is taken to end `now`.
    windows_for: the windows covering an appliance and the zone to read them in; an
        appliance with no window (or windows_for None) starts whenever a slot is free.

    Returns `now` when nothing is left. Raises ValueError on a bad limit or duration, and
    WindowError when an appliance's windows never open within windows.SEARCH_HORIZON.
    """
    clock = _micros(now)
    _check_limits(install_seconds, max_concurrency, per_site_concurrency)
    run = _Forecast(clock, round(install_seconds * 1_000_000), max_concurrency,
                    per_site_concurrency or 0, windows_for)
    run.add_in_flight(in_flight)
    for wave in remaining_by_wave:
        run.run_wave(wave)
    return _moment(max(run.finish, run.clock))


def _check_limits(
    install_seconds: float, max_concurrency: int, per_site_concurrency: int | None
) -> None:
    if not (isinstance(install_seconds, int | float) and math.isfinite(install_seconds)
            and install_seconds >= 0):
        raise ValueError(f"install_seconds must be a number >= 0, got {install_seconds!r}")
    if isinstance(max_concurrency, bool) or max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency!r}")
    if per_site_concurrency is not None and per_site_concurrency < 1:
        raise ValueError(
            f"per_site_concurrency must be >= 1 or None, got {per_site_concurrency!r}"
        )


class _Forecast:
    """The simulation's state across waves (times in microseconds): the clock, the
    installs running (a heap of (ends at, site)), how many run per site, when the last
    one ends, and the gates of the appliances (one per set of windows and zone)."""

    def __init__(self, clock: int, install: int, max_concurrency: int, per_site: int,
                 windows_for: WindowsFor | None) -> None:
        self.clock = clock
        self.install = install  # the duration of one install
        self.max_concurrency = max_concurrency
        self.per_site = per_site  # 0: no limit per site
        self.windows_for = windows_for
        self.running: list[tuple[int, str]] = []  # heap of (ends at, site)
        self.busy: dict[str, int] = {}
        self.finish = clock
        self.gates: dict[tuple[tuple[WindowSpec, ...], str | None], _Gate] = {}
        self.gate_of: dict[ApplianceSlot, _Gate | None] = {}

    def add_in_flight(self, in_flight: Sequence[InFlight]) -> None:
        """The installs running now; one whose expected end has passed ends now."""
        clock = self.clock
        for task in in_flight:
            ends = max(_micros(task.expected_done_at), clock)
            heapq.heappush(self.running, (ends, task.site))
            self.busy[task.site] = self.busy.get(task.site, 0) + 1
            self.finish = max(self.finish, ends)

    def gate_for(self, slot: ApplianceSlot) -> _Gate | None:
        """The gate of this appliance's windows (None: it may start any time)."""
        gate_of = self.gate_of
        if slot not in gate_of:
            gate = None
            if self.windows_for is not None:
                specs, tz = self.windows_for(slot)
                if specs:
                    key = (tuple(specs), tz)
                    gate = self.gates.get(key)
                    if gate is None:
                        gate = self.gates[key] = _Gate(key[0], tz)
            gate_of[slot] = gate
        return gate_of[slot]

    def classes_of(self, wave: Sequence[ApplianceSlot]) -> list[_Class]:
        """The wave's appliances grouped by (site, gate), each class in plan order."""
        classes: list[_Class] = []
        index_of: dict[tuple[str, int], int] = {}
        for position, slot in enumerate(wave):
            gate = self.gate_for(slot)
            key = (slot.site, id(gate))
            if key not in index_of:
                index_of[key] = len(classes)
                classes.append(_Class(slot.site, gate, deque()))
            classes[index_of[key]].queue.append(position)
        return classes

    def run_wave(self, wave: Sequence[ApplianceSlot]) -> None:
        """Start every install of the wave as slots free and windows open, then move the
        clock to the end of its last install (the next wave starts then)."""
        classes = self.classes_of(wave)
        running, busy = self.running, self.busy
        max_concurrency, per_site, install = self.max_concurrency, self.per_site, self.install
        clock, finish = self.clock, self.finish
        pending = len(wave)
        ready = [(cls.queue[0], number) for number, cls in enumerate(classes)]
        heapq.heapify(ready)
        blocked_by_site: dict[str, list[int]] = {}
        blocked_by_gate: dict[int, list[int]] = {}  # id(gate) -> classes
        wakes: list[tuple[int, int]] = []  # heap of (opens at, id(gate))
        waking: dict[int, int] = {}  # id(gate) -> the wake scheduled for it

        while pending:
            # start what may start now, in plan order
            while ready and len(running) < max_concurrency:
                _, number = heapq.heappop(ready)
                cls = classes[number]
                if per_site and busy.get(cls.site, 0) >= per_site:
                    blocked_by_site.setdefault(cls.site, []).append(number)
                    continue
                if cls.gate is not None:
                    opens = cls.gate.first_start(clock)
                    if opens > clock:
                        tag = id(cls.gate)
                        blocked_by_gate.setdefault(tag, []).append(number)
                        if tag not in waking:
                            waking[tag] = opens
                            heapq.heappush(wakes, (opens, tag))
                        continue
                cls.queue.popleft()
                pending -= 1
                ends = clock + install
                heapq.heappush(running, (ends, cls.site))
                busy[cls.site] = busy.get(cls.site, 0) + 1
                finish = max(finish, ends)
                if cls.queue:
                    heapq.heappush(ready, (cls.queue[0], number))
            if not pending:
                break
            # then wait for the next event: an install ends, or a window opens
            upcoming = [heap[0][0] for heap in (running, wakes) if heap]
            if not upcoming:  # every class waits on a slot that nothing will free
                raise RuntimeError("forecast stalled: no install running and no window to wait for")
            clock = max(clock, min(upcoming))
            while running and running[0][0] <= clock:
                _, site = heapq.heappop(running)
                busy[site] -= 1
                for number in blocked_by_site.pop(site, ()):
                    heapq.heappush(ready, (classes[number].queue[0], number))
            while wakes and wakes[0][0] <= clock:
                _, tag = heapq.heappop(wakes)
                del waking[tag]
                for number in blocked_by_gate.pop(tag, ()):
                    heapq.heappush(ready, (classes[number].queue[0], number))

        # The wave ends when its last install does; the next one starts then.
        if running:
            clock = max(clock, max(ends for ends, _ in running))
            running.clear()
            busy.clear()
        self.clock, self.finish = clock, finish
