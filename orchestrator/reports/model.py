"""The report model of a rollout, built from `tasks` and `task_events` by `build_report`.

The model holds only aggregates and capped lists, so its size does not grow with the
fleet: the per-appliance rows are streamed by the CSV renderer instead. `to_dict()` is the
JSON report (docs/reports.md describes every field).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from orchestrator.store import preflight as preflight_store
from orchestrator.store import reports as report_store
from orchestrator.store.db import DB
from orchestrator.store.rollouts import RolloutNotFound

REPORT_VERSION = 1
# Names listed per failure group and per remaining outcome; the rest are counted.
NAMES_CAP = 50
# Failure groups listed (the largest first); the rest are counted.
GROUPS_CAP = 100
# At most this many buckets on the timeline (points per wave: one more, the start).
MAX_POINTS = 200
# Bucket widths the timeline picks from (seconds): the smallest that fits MAX_POINTS.
NICE_BUCKETS = (
    0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
    21600, 43200, 86400,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


@dataclass(frozen=True)
class Outcomes:
    """Task counts by outcome; `pending` and `in_flight` are the tasks not finished yet."""

    targeted: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    skipped: int = 0
    cancelled: int = 0
    pending: int = 0
    in_flight: int = 0

    @classmethod
    def from_row(cls, row: asyncpg.Record | Mapping[str, Any]) -> Outcomes:
        return cls(**{name: int(row[name] or 0) for name in cls.__dataclass_fields__})

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.timed_out + self.skipped + self.cancelled

    def by_state(self) -> dict[str, int]:
        """The counts keyed by task state (terminal states, then PENDING and in flight)."""
        return {
            "SUCCEEDED": self.succeeded, "FAILED": self.failed, "TIMED_OUT": self.timed_out,
            "SKIPPED": self.skipped, "CANCELLED": self.cancelled, "PENDING": self.pending,
            "IN_FLIGHT": self.in_flight,
        }

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Span:
    """A group's start (first dispatch), end (last outcome, once all are finished)."""

    started_at: datetime | None
    finished_at: datetime | None

    @property
    def duration_s(self) -> float | None:
        return _seconds(self.started_at, self.finished_at)

    def to_dict(self) -> dict[str, Any]:
        return {"started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "duration_s": self.duration_s}


@dataclass(frozen=True)
class VersionCount:
    version: str | None  # None: not recorded (never dispatched, or unreadable)
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "count": self.count}


@dataclass(frozen=True)
class WindowUsed:
    id: int
    name: str
    cron: str
    duration_s: int
    timezone: str
    cutoff_s: int
    sites: tuple[str, ...]
    tags: tuple[str, ...]
    appliances: int  # targeted appliances it covers

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "cron": self.cron,
                "duration_s": self.duration_s, "timezone": self.timezone,
                "cutoff_s": self.cutoff_s, "sites": list(self.sites), "tags": list(self.tags),
                "appliances": self.appliances}


@dataclass(frozen=True)
class RolloutInfo:
    id: int
    name: str
    target_version: str
    state: str
    current_wave: int | None
    created_by: str
    abort_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    selector: dict[str, Any]
    strategy: dict[str, Any]
    # when `orchestrator prune` deleted its tasks and events (None: never): its counts then
    # come from its summary rows, and what needs the tasks (per-appliance rows, versions,
    # durations, failures, what is left to retry, the timeline) is empty
    pruned_at: datetime | None = None

    @property
    def pruned_note(self) -> str | None:
        if self.pruned_at is None:
            return None
        return (f"pruned on {self.pruned_at:%Y-%m-%d}: the tasks and events of this rollout "
                "were deleted (orchestrator prune); the counts are its summary, the "
                "per-appliance rows, versions, durations, failures and timeline are gone")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "target_version": self.target_version,
            "state": self.state, "current_wave": self.current_wave,
            "created_by": self.created_by, "abort_reason": self.abort_reason,
            "created_at": _iso(self.created_at), "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at), "selector": self.selector,
            "strategy": self.strategy, "pruned_at": _iso(self.pruned_at),
            "pruned": self.pruned_note,
        }


@dataclass(frozen=True)
class Summary:
    outcomes: Outcomes
    span: Span  # the rollout's own start and end
    versions_before: tuple[VersionCount, ...]
    versions_after: tuple[VersionCount, ...]
    windows_mode: str  # the strategy's `windows`: "required", "ignore" or "auto" (unset)
    windows: tuple[WindowUsed, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.outcomes.to_dict(),
            **self.span.to_dict(),
            "versions_before": [v.to_dict() for v in self.versions_before],
            "versions_after": [v.to_dict() for v in self.versions_after],
            "windows_mode": self.windows_mode,
            "windows": [w.to_dict() for w in self.windows],
        }


@dataclass(frozen=True)
class WaveRow:
    number: int
    planned_size: int
    state: str
    requires_approval: bool
    approved_by: str | None
    outcomes: Outcomes
    span: Span

    def to_dict(self) -> dict[str, Any]:
        return {"number": self.number, "planned_size": self.planned_size, "state": self.state,
                "requires_approval": self.requires_approval, "approved_by": self.approved_by,
                **self.outcomes.to_dict(), **self.span.to_dict()}


@dataclass(frozen=True)
class SiteRow:
    site: str
    outcomes: Outcomes
    span: Span

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, **self.outcomes.to_dict(), **self.span.to_dict()}


@dataclass(frozen=True)
class DurationStats:
    """Seconds: how many samples, the median, the 95th percentile (linear interpolation,
    as `percentile_cont`), the longest. None without samples."""

    count: int = 0
    p50_s: float | None = None
    p95_s: float | None = None
    max_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "p50_s": self.p50_s, "p95_s": self.p95_s,
                "max_s": self.max_s}


@dataclass(frozen=True)
class Durations:
    install: DurationStats  # INSTALLING -> VERIFYING
    reboot: DurationStats  # VERIFYING -> outcome (reboot and verification)
    task: DurationStats  # dispatch -> outcome of the executed tasks

    def to_dict(self) -> dict[str, Any]:
        return {"install": self.install.to_dict(), "reboot": self.reboot.to_dict(),
                "task": self.task.to_dict()}


@dataclass(frozen=True)
class FailureGroup:
    """Failed or timed-out tasks with one error code and message; in the message, each
    appliance's own name reads `{appliance}` (store.reports.APPLIANCE_PLACEHOLDER)."""

    error_code: str | None
    message: str | None
    outcomes: tuple[str, ...]  # FAILED and/or TIMED_OUT
    count: int
    appliances: tuple[str, ...]  # the first NAMES_CAP names, sorted

    @property
    def not_listed(self) -> int:
        return self.count - len(self.appliances)

    def to_dict(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message,
                "outcomes": list(self.outcomes), "count": self.count,
                "appliances": list(self.appliances), "appliances_not_listed": self.not_listed}


@dataclass(frozen=True)
class NotListed:
    """The failure groups beyond GROUPS_CAP: how many groups, how many appliances."""

    groups: int = 0
    appliances: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"groups": self.groups, "appliances": self.appliances}


@dataclass(frozen=True)
class RemainingGroup:
    outcome: str
    count: int
    appliances: tuple[str, ...]

    @property
    def not_listed(self) -> int:
        return self.count - len(self.appliances)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "count": self.count,
                "appliances": list(self.appliances), "appliances_not_listed": self.not_listed}


@dataclass(frozen=True)
class Remaining:
    """What is left to do: failed, timed-out and cancelled tasks (what `orchestrator
    rollout retry-failed` puts back to PENDING), and the tasks not finished yet."""

    groups: tuple[RemainingGroup, ...]
    not_finished: int
    command: str | None  # the retry command, when there is something to retry

    @property
    def retryable(self) -> int:
        return sum(g.count for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"retryable": self.retryable, "not_finished": self.not_finished,
                "command": self.command, "by_outcome": [g.to_dict() for g in self.groups]}


@dataclass(frozen=True)
class WaveSeries:
    wave: int
    size: int  # tasks in the wave
    finished: tuple[int, ...]  # cumulative finished tasks at each point of the timeline

    def to_dict(self) -> dict[str, Any]:
        return {"wave": self.wave, "size": self.size, "finished": list(self.finished)}


@dataclass(frozen=True)
class Timeline:
    """Cumulative finished tasks per wave. Point 0 is `start`; point i (i >= 1) is the end
    of bucket i - 1, i.e. `start + i * bucket_seconds` (the last one may lie past `end`)."""

    start: datetime | None
    end: datetime | None
    bucket_seconds: float
    series: tuple[WaveSeries, ...] = field(default_factory=tuple)

    @property
    def points(self) -> int:
        return len(self.series[0].finished) if self.series else 0

    def times(self) -> list[datetime]:
        if self.start is None:
            return []
        return [self.start + timedelta(seconds=i * self.bucket_seconds)
                for i in range(self.points)]

    def to_dict(self) -> dict[str, Any]:
        return {"start": _iso(self.start), "end": _iso(self.end),
                "bucket_seconds": self.bucket_seconds,
                "times": [t.isoformat() for t in self.times()],
                "waves": [s.to_dict() for s in self.series]}


@dataclass(frozen=True)
class PreflightGroup:
    """The appliances whose latest pre-flight gave one result and reason code."""

    result: str  # fail, warn, skip
    code: str
    count: int
    appliances: tuple[str, ...]  # the first NAMES_CAP names, sorted

    @property
    def not_listed(self) -> int:
        return self.count - len(self.appliances)

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "code": self.code, "count": self.count,
                "appliances": list(self.appliances), "appliances_not_listed": self.not_listed}


@dataclass(frozen=True)
class Preflight:
    """The latest pre-flight result of each checked appliance (docs/preflight.md): counts
    per result, the problems by code (worst first), the latest run."""

    counts: dict[str, int]
    checked_at: datetime | None
    run: dict[str, Any] | None
    groups: tuple[PreflightGroup, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"counts": {r: self.counts.get(r, 0) for r in ("ok", "warn", "fail", "skip")},
                "checked_at": _iso(self.checked_at), "run": self.run,
                "problems": [g.to_dict() for g in self.groups]}


@dataclass(frozen=True)
class RolloutReport:
    generated_at: datetime
    rollout: RolloutInfo
    summary: Summary
    waves: tuple[WaveRow, ...]
    sites: tuple[SiteRow, ...]
    durations: Durations
    failures: tuple[FailureGroup, ...]
    remaining: Remaining
    timeline: Timeline
    eta: datetime | None = None  # the forecast completion of a running rollout (optional)
    failures_not_listed: NotListed = field(default_factory=NotListed)
    preflight: Preflight | None = None  # None: never checked

    def to_dict(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "generated_at": self.generated_at.isoformat(),
            "rollout": self.rollout.to_dict(),
            "summary": self.summary.to_dict(),
            "eta": _iso(self.eta),
            "waves": [w.to_dict() for w in self.waves],
            "sites": [s.to_dict() for s in self.sites],
            "durations": self.durations.to_dict(),
            "failures": [f.to_dict() for f in self.failures],
            "failures_not_listed": self.failures_not_listed.to_dict(),
            "remaining": self.remaining.to_dict(),
            "timeline": self.timeline.to_dict(),
            "preflight": self.preflight.to_dict() if self.preflight is not None else None,
        }


# ------------------------------------------------------------------ building
def bucket_seconds_for(span_seconds: float, max_points: int = MAX_POINTS) -> float:
    """The smallest "nice" bucket width that covers `span_seconds` in at most `max_points`
    buckets (floor(span / width) + 1 buckets: the last instant opens its own bucket)."""
    for width in NICE_BUCKETS:
        if math.floor(span_seconds / width) + 1 <= max_points:
            return float(width)
    days = math.floor(span_seconds / (86400 * (max_points - 1))) + 1
    return float(86400 * days)


async def _summary(
    conn: DB, rollout_id: int, r: asyncpg.Record, strategy: Mapping[str, Any]
) -> Summary:
    """The summary section: outcomes, span, versions before and after, windows used."""
    pruned = r["pruned_at"] is not None
    counts = Outcomes.from_row(await report_store.summary_counts(conn, rollout_id,
                                                                 pruned=pruned))
    version_rows = await report_store.version_rows(conn, rollout_id)
    windows: tuple[WindowUsed, ...] = ()
    if _windows_mode(strategy) != "ignore":
        windows = tuple(
            WindowUsed(w["id"], w["name"], w["cron"], w["duration_s"], w["timezone"],
                       w["cutoff_s"], tuple(w["sites"]), tuple(w["tags"]),
                       int(w["appliances"]))
            for w in await report_store.window_rows(conn, rollout_id)
        )
    return Summary(
        outcomes=counts, span=Span(r["started_at"], r["finished_at"]),
        versions_before=_versions(version_rows, "before"),
        versions_after=_versions(version_rows, "after"),
        windows_mode=_windows_mode(strategy), windows=windows,
    )


async def _failures(
    conn: DB, rollout_id: int, names_cap: int, groups_cap: int
) -> tuple[tuple[FailureGroup, ...], NotListed]:
    """The failure groups (at most `groups_cap`, `names_cap` names each) and what they
    leave out."""
    failure_rows = await report_store.failure_rows(conn, rollout_id, names_cap, groups_cap)
    failures = tuple(
        FailureGroup(f["error_code"], f["message"], tuple(f["outcomes"]), int(f["n"]),
                     tuple(f["appliances"] or ()))
        for f in failure_rows
    )
    not_listed = NotListed()
    if failure_rows:
        first = failure_rows[0]
        not_listed = NotListed(
            int(first["groups_total"]) - len(failures),
            int(first["tasks_total"]) - sum(f.count for f in failures),
        )
    return failures, not_listed


def _versions(rows: Sequence[asyncpg.Record], side: str) -> tuple[VersionCount, ...]:
    return tuple(VersionCount(r["version"], int(r["n"])) for r in rows if r["side"] == side)


def _stats(rows: Sequence[asyncpg.Record], kind: str) -> DurationStats:
    for r in rows:
        if r["kind"] == kind:
            return DurationStats(int(r["n"]), _round(r["p50"]), _round(r["p95"]),
                                 _round(r["max"]))
    return DurationStats()


async def _timeline(conn: DB, rollout_id: int, wave_sizes: Mapping[int, int]) -> Timeline:
    start, end = await report_store.timeline_span(conn, rollout_id)
    if start is None or end is None or end < start:
        return Timeline(start, end, 1.0, ())
    width = bucket_seconds_for((end - start).total_seconds())
    buckets = math.floor((end - start).total_seconds() / width) + 1
    deltas: dict[int, list[int]] = {w: [0] * buckets for w in wave_sizes}
    for r in await report_store.timeline_rows(conn, rollout_id, start, width, buckets):
        deltas.setdefault(int(r["wave"]), [0] * buckets)[int(r["bucket"])] += int(r["delta"])
    series = []
    for wave in sorted(deltas):
        total, points = 0, [0]
        for d in deltas[wave]:
            total += d
            points.append(total)
        series.append(WaveSeries(wave, wave_sizes.get(wave, 0), tuple(points)))
    return Timeline(start, end, width, tuple(series))


def _object(value: Any) -> dict[str, Any]:
    """A jsonb object column (decoded by the pool's codec, or still text without it)."""
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else {}


def _windows_mode(strategy: Mapping[str, Any]) -> str:
    mode = strategy.get("windows")
    return str(mode) if mode else "auto"


async def build_report(
    conn: DB, rollout_id: int, *, eta: datetime | None = None, names_cap: int = NAMES_CAP,
    groups_cap: int = GROUPS_CAP,
) -> RolloutReport:
    """The report of a rollout, as the database knows it now. Raises RolloutNotFound.

    `eta`: the forecast completion to show (e.g. `store.forecast.rollout_forecast(...).eta`
    for a running rollout); None leaves it out.
    """
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as held:
            return await build_report(held, rollout_id, eta=eta, names_cap=names_cap,
                                      groups_cap=groups_cap)
    if not conn.is_in_transaction():
        # one snapshot for every query: the figures agree even while the rollout runs
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await build_report(conn, rollout_id, eta=eta, names_cap=names_cap,
                                      groups_cap=groups_cap)
    r = await report_store.rollout_row(conn, rollout_id)
    if r is None:
        raise RolloutNotFound(f"no rollout {rollout_id}")
    strategy = _object(r["strategy"])
    info = RolloutInfo(
        id=r["id"], name=r["name"], target_version=r["target_version"], state=r["state"],
        current_wave=r["current_wave"], created_by=r["created_by"],
        abort_reason=r["abort_reason"], created_at=r["created_at"],
        started_at=r["started_at"], finished_at=r["finished_at"],
        selector=_object(r["selector"]), strategy=strategy, pruned_at=r["pruned_at"],
    )
    pruned = r["pruned_at"] is not None
    summary = await _summary(conn, rollout_id, r, strategy)
    waves = tuple(
        WaveRow(w["number"], w["planned_size"], w["state"], w["requires_approval"],
                w["approved_by"], Outcomes.from_row(w), Span(w["started_at"], w["finished_at"]))
        for w in await report_store.wave_rows(conn, rollout_id, pruned=pruned)
    )
    sites = tuple(
        SiteRow(s["site"], Outcomes.from_row(s), Span(s["started_at"], s["finished_at"]))
        for s in await report_store.site_rows(conn, rollout_id, pruned=pruned)
    )
    duration_rows = await report_store.duration_rows(conn, rollout_id)
    durations = Durations(_stats(duration_rows, "install"), _stats(duration_rows, "reboot"),
                          _stats(duration_rows, "task"))
    failures, not_listed = await _failures(conn, rollout_id, names_cap, groups_cap)
    groups = tuple(
        RemainingGroup(g["state"], int(g["n"]), tuple(g["appliances"] or ()))
        for g in await report_store.remaining_rows(conn, rollout_id, names_cap)
    )
    remaining = Remaining(
        groups=groups, not_finished=summary.outcomes.pending + summary.outcomes.in_flight,
        command=f"orchestrator rollout retry-failed {rollout_id}" if groups else None,
    )
    timeline = await _timeline(conn, rollout_id,
                               {w.number: w.outcomes.targeted for w in waves})
    return RolloutReport(
        generated_at=r["now"], rollout=info, summary=summary, waves=waves, sites=sites,
        durations=durations, failures=failures, remaining=remaining, timeline=timeline,
        eta=eta, failures_not_listed=not_listed,
        preflight=await _preflight(conn, rollout_id, names_cap),
    )


async def _preflight(conn: DB, rollout_id: int, names_cap: int) -> Preflight | None:
    checked = await preflight_store.summary(conn, rollout_id)
    if checked is None:
        return None
    groups = tuple(PreflightGroup(result, code, n, tuple(names))
                   for result, code, n, names in await preflight_store.code_groups(
                       conn, rollout_id, names_cap))
    return Preflight(dict(checked.counts), checked.checked_at,
                     checked.run.to_dict() if checked.run is not None else None, groups)
