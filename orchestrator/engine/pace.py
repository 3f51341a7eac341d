"""The engine's side of the adaptive pace (strategy `pace`: "adaptive"; the rules are in
orchestrator/domain/pace.py, the rows in orchestrator/store/pace.py).

Within a tick's transaction, which holds the rollout's lock, `AdaptivePace.limit` gives the
installs in flight the claim allows, in place of `max_concurrency`: the rollout's stored
pace, decided again when `pace_interval_seconds` have passed since the last decision (by
whichever engine ticks the rollout first then; the database's clock). After the claim,
`note` records whether the limit was full with tasks still waiting: only such an interval
may grow the pace (raising a limit that holds nothing back would prove nothing).
"""

from __future__ import annotations

from typing import Any

from orchestrator.domain.pace import Change, Interval, decide, failures_left, params_of
from orchestrator.domain.planning import resolve_max_concurrency
from orchestrator.domain.strategy import Strategy
from orchestrator.logs import get_logger
from orchestrator.store import pace as pace_store
from orchestrator.store.db import DB

log = get_logger("orchestrator.engine.pace")


class AdaptivePace:
    """What one engine remembers of the paces it decides: whether each rollout's limit was
    full with tasks waiting since its last decision, and each canary's median install once
    the canary wave is over. Everything else is in the rollout's row, so another replica or
    a restarted engine goes on from there (a restart forgets only the interval's
    "saturated", which then holds the pace one interval)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._saturated: dict[int, bool] = {}
        self._canary: dict[int, float] = {}

    def forget(self, rollout_id: int) -> None:
        self._saturated.pop(rollout_id, None)
        self._canary.pop(rollout_id, None)

    def note(self, rollout_id: int, limit: int, in_flight: int, waiting: int) -> None:
        """After a claim: `in_flight` installs now run under `limit`, `waiting` startable
        tasks are left."""
        if in_flight >= limit and waiting > 0:
            self._saturated[rollout_id] = True

    async def limit(
        self, conn: DB, rollout_id: int, row: Any, strategy: Strategy, *, targeted: int,
        current_wave: int, last_wave: int, executed: int, failed: int, canary_failed: int,
    ) -> int:
        """The rollout's pace now (deciding it again when its interval has passed).

        row: the rollout's row from `lock_for_tick` (pace_concurrency, pace_age);
        executed, failed: the rollout's executed and failed tasks (policy.count_outcomes);
        canary_failed: the failed tasks of wave 0, whose own rule (canary_max_failures)
        applies while it runs and more waves follow."""
        start = resolve_max_concurrency(strategy.max_concurrency, targeted)
        params = params_of(strategy, start, targeted)
        concurrency = row["pace_concurrency"]
        if concurrency is None:
            reason = (f"adaptive pace starts at max_concurrency {start} (between "
                      f"{params.minimum} and {params.maximum})")
            await pace_store.start_pace(conn, rollout_id, start, reason)
            log.info("pace_started", rollout=rollout_id, concurrency=start,
                     minimum=params.minimum, maximum=params.maximum)
            return start
        age = row["pace_age"]
        if age is not None and age < params.interval_seconds:
            return params.clamp(int(concurrency))
        seen = await pace_store.interval_outcomes(conn, rollout_id)
        left = failures_left(strategy.max_failures, executed, failed)
        if current_wave == 0 and last_wave > 0:
            canary_left = max(0, strategy.canary_max_failures - canary_failed)
            left = canary_left if left is None else min(left, canary_left)
        canary = await self._canary_seconds(conn, rollout_id, current_wave)
        interval = Interval(seen.succeeded, seen.failed, seen.median_seconds,
                            saturated=self._saturated.pop(rollout_id, False))
        decision = decide(int(concurrency), interval, params, canary_seconds=canary,
                          failures_left=left)
        if decision.change == Change.HOLD or seen.last_task_id is None:
            await pace_store.pace_held(conn, rollout_id)
            log.debug("pace_held", rollout=rollout_id, concurrency=decision.previous,
                      reason=decision.reason)
            return decision.previous
        assert seen.last_task_state is not None
        detail = {"succeeded": seen.succeeded, "failed": seen.failed,
                  "median_seconds": _rounded(seen.median_seconds),
                  "canary_seconds": _rounded(canary), "failures_left": left,
                  "minimum": params.minimum, "maximum": params.maximum}
        await pace_store.record_pace_change(
            conn, rollout_id, previous=decision.previous, concurrency=decision.concurrency,
            reason=decision.reason, task_id=seen.last_task_id,
            task_state=seen.last_task_state, detail=detail, owner=self.owner)
        log.info("pace_changed", rollout=rollout_id, previous=decision.previous,
                 concurrency=decision.concurrency, reason=decision.reason)
        return decision.concurrency

    async def _canary_seconds(self, conn: DB, rollout_id: int, current_wave: int) -> float | None:
        """The canary's median install: read again while wave 0 runs, kept once it is over."""
        cached = self._canary.get(rollout_id)
        if cached is not None:
            return cached
        seconds = await pace_store.canary_seconds(conn, rollout_id)
        if seconds is not None and current_wave > 0:
            self._canary[rollout_id] = seconds
        return seconds


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
