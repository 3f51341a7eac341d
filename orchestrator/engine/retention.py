"""The engine's daily prune (setting `prune_older_than`, every `prune_interval` seconds).

Every engine process runs it (there is no leader); two at once share the work rollout by
rollout and chunk by chunk (`store.prune`), so replicas need no coordination. The first
prune runs `first_delay` seconds after the engine starts (not at once: a fleet of engines
restarted together does not all prune in its first second), then every `interval`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from orchestrator.logs import get_logger
from orchestrator.store import prune as prune_store
from orchestrator.store.audit import Actor

log = get_logger("orchestrator.engine.retention")


async def prune_once(
    pool: asyncpg.Pool, older_than: timedelta, *, actor: Actor,
    clock: Callable[[], datetime] | None = None, chunk: int = prune_store.DEFAULT_CHUNK,
) -> prune_store.PruneResult:
    """One prune of the rollouts that ended more than `older_than` ago; logged."""
    now = (clock or (lambda: datetime.now(UTC)))()
    result = await prune_store.prune(pool, now - older_than, actor=actor, chunk=chunk)
    if result.rollouts:
        log.info("prune_done", cutoff=result.cutoff.isoformat(),
                 rollouts=len(result.pruned), tasks=result.tasks, events=result.events,
                 skipped=[(r.id, r.skipped) for r in result.rollouts if r.skipped])
    return result


async def retention_loop(
    pool: asyncpg.Pool,
    older_than: timedelta,
    *,
    owner: str,
    interval: float = 86_400.0,
    first_delay: float | None = None,
    stop_event: asyncio.Event | None = None,
    clock: Callable[[], datetime] | None = None,
    chunk: int = prune_store.DEFAULT_CHUNK,
    on_prune: Callable[[prune_store.PruneResult], None] | None = None,
) -> None:
    """Prune every `interval` seconds until cancelled (or `stop_event` is set). A failed
    prune (database down, a statement timeout) is logged and tried again at the next
    interval; what it removed before failing stays removed, and the next prune finishes
    a rollout it left half-way. `first_delay`: seconds before the first prune (None: a
    random time within the first minute)."""
    actor = Actor(name=f"engine:{owner}", via="engine")
    delay = random.uniform(1.0, 60.0) if first_delay is None else first_delay
    stop = stop_event or asyncio.Event()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=delay)
            return  # stop_event set
        except TimeoutError:
            pass
        delay = interval
        try:
            result = await prune_once(pool, older_than, actor=actor, clock=clock, chunk=chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("prune_failed", error=repr(exc))
            continue
        if on_prune is not None:
            on_prune(result)
