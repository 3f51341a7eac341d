"""The forecast of a rollout's completion (ETA), from what the database knows now.

The plan that is left (never-started tasks per wave, in plan order, but for the appliances
whose latest pre-flight result is `fail` or `skip`: they will fail or be skipped, and take
no slot worth counting; docs/preflight.md), the installs in
flight, the time a task holds a slot in this rollout, the concurrency limits and the
maintenance windows go into `domain.eta.forecast_completion`. The slot time is the median
time from dispatch to outcome of the finished tasks, or, once 20 have finished and when it
is larger, concurrency x the time the rollout could dispatch / tasks finished (which counts
the gaps between one task and the next); `estimate_seconds` before any task finished.
Recomputed on every call, so it follows the rollout as it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator.domain.eta import ApplianceSlot, InFlight, forecast_completion
from orchestrator.domain.planning import resolve_max_concurrency
from orchestrator.domain.strategy import parse_strategy
from orchestrator.domain.windows import WindowError, WindowSpec, covering, openings
from orchestrator.store import windows as window_store
from orchestrator.store.db import DB
from orchestrator.store.engines import EngineStatus, blocked_reason

TERMINAL_ROLLOUT = ("SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Forecast:
    eta: datetime | None
    task_seconds: float
    observed: int
    basis: str
    # why the rollout cannot progress now (no engine is live; `eta` is then what it would be
    # if one started now), or None
    blocked: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"eta": self.eta.isoformat() if self.eta else None,
                "task_seconds": round(self.task_seconds, 1), "observed_tasks": self.observed,
                "basis": self.basis, "blocked": self.blocked}


async def rollout_forecast(
    conn: DB, rollout_id: int, now: datetime, estimate_seconds: float, *,
    engine: EngineStatus | None = None,
) -> Forecast:
    """`blocked` says so when the rollout needs an engine and none is live (`engine`: an
    `engines.engine_status` already read, else it is read here)."""
    r = await conn.fetchrow(
        """SELECT state, strategy, current_wave, started_at, finished_at
           FROM rollouts WHERE id = $1""",
        rollout_id,
    )
    if r is None:
        return Forecast(None, estimate_seconds, 0, "no such rollout")
    if r["state"] in TERMINAL_ROLLOUT:
        return Forecast(r["finished_at"], estimate_seconds, 0, f"rollout {r['state']}")
    strategy = parse_strategy(r["strategy"])
    blocked = await blocked_reason(conn, r["state"], engine)
    stats = await conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (
                      ORDER BY extract(epoch FROM finished_at - dispatched_at)) AS median,
                  count(*) AS n
           FROM tasks WHERE rollout_id = $1 AND state = 'SUCCEEDED'
             AND dispatched_at IS NOT NULL""",
        rollout_id,
    )
    observed = int(stats["n"]) if stats else 0
    median = stats["median"] if stats else None
    seconds = float(median) if observed and median is not None else estimate_seconds
    rows = await conn.fetch(
        """SELECT t.wave, t.state, t.site, t.dispatched_at, a.tags, a.timezone
           FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.rollout_id = $1
             AND t.state IN ('PENDING', 'DISPATCHING', 'INSTALLING', 'VERIFYING')
             -- a pre-flight found that it will fail or be skipped: it takes no slot
             AND NOT (t.state = 'PENDING' AND EXISTS (
                 SELECT 1 FROM preflight_results p WHERE p.rollout_id = t.rollout_id
                   AND p.appliance_id = t.appliance_id AND p.result IN ('fail', 'skip')))
           ORDER BY t.wave, t.position""",
        rollout_id,
    )
    if not rows:
        return Forecast(now, seconds, observed, "nothing left to run", blocked)
    targeted = int(await conn.fetchval(
        "SELECT count(*) FROM tasks WHERE rollout_id = $1", rollout_id))
    waves: dict[int, list[ApplianceSlot]] = {}
    in_flight: list[InFlight] = []
    for row in rows:
        if row["state"] == "PENDING":
            waves.setdefault(row["wave"], []).append(
                ApplianceSlot(row["site"], tuple(row["tags"]), row["timezone"]))
        else:
            started = row["dispatched_at"] or now
            in_flight.append(InFlight(row["site"], started + timedelta(seconds=seconds)))
    specs: list[WindowSpec] = []
    if strategy.windows != "ignore":
        specs = await window_store.all_specs(conn)

    def windows_for(slot: ApplianceSlot) -> tuple[list[WindowSpec], str | None]:
        return covering(specs, slot.site, slot.tags), slot.timezone

    concurrency = resolve_max_concurrency(strategy.max_concurrency, targeted)
    slot_seconds = await _observed_slot_seconds(
        conn, rollout_id, r["started_at"], now, concurrency, specs, observed
    )
    if slot_seconds is not None and slot_seconds > seconds:
        seconds = slot_seconds
    try:
        eta = forecast_completion(
            now, [waves[w] for w in sorted(waves)] or [[]], seconds,
            concurrency, strategy.per_site_concurrency, in_flight, windows_for if specs else None,
        )
    except WindowError as exc:
        return Forecast(None, seconds, observed, f"no forecast: {exc}", blocked)
    basis = (f"{seconds:.1f} s per task from {observed} finished task(s)" if observed
             else "the configured estimate (no task finished yet)")
    return Forecast(eta, seconds, observed, basis, blocked)


async def _observed_slot_seconds(
    conn: DB, rollout_id: int, started_at: datetime | None, now: datetime, concurrency: int,
    specs: list[WindowSpec], observed: int,
) -> float | None:
    """How long a slot stayed taken per finished task, gaps between tasks included:
    concurrency x the time the rollout could dispatch (its windows open) / tasks finished.
    None until enough tasks finished for it to mean something."""
    if started_at is None or observed < 20:
        return None
    if specs:
        intervals = sorted(
            (max(opens, started_at), min(closes, now))
            for spec in specs for opens, closes in openings(spec, started_at, now)
        )
        active = 0.0
        end = started_at
        for opens, closes in intervals:
            opens = max(opens, end)
            if closes > opens:
                active += (closes - opens).total_seconds()
                end = closes
    else:
        active = (now - started_at).total_seconds()
    finished = await conn.fetchval(
        """SELECT count(*) FROM tasks WHERE rollout_id = $1
           AND state IN ('SUCCEEDED', 'FAILED', 'TIMED_OUT')""", rollout_id)
    if not finished or active <= 0:
        return None
    return concurrency * active / int(finished)
