"""The engine: scheduler loop, claims under the limits, leases, reconciliation, shutdown.

Every orchestrator process runs the same engine; there is no leader. A tick, per active
rollout and inside one transaction holding the rollout's advisory lock: start it when its
schedule is due, judge the failure policy, move the wave gate, and claim as many PENDING
tasks as `max_concurrency`, `per_site_concurrency` and `max_starts_per_minute` allow. Each
claimed task gets a `TaskRunner`. Ticks run when a task of this process ends, when a
`NOTIFY orchestrator` arrives (another process, the CLI, the API) and at least every
`engine_poll_interval` seconds.

Leases of all running tasks are renewed in one statement; tasks whose lease expired (their
owner died) are reclaimed by any process and reconciled with the appliance first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.appliance import ApplianceHttp
from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import TargetPolicy
from orchestrator.domain.planning import resolve_max_concurrency
from orchestrator.domain.policy import (
    Gate,
    GateDecision,
    Outcomes,
    PolicyVerdict,
    count_outcomes,
    evaluate_canary,
    evaluate_policy,
    final_rollout_state,
    gate_next_wave,
)
from orchestrator.domain.states import ACTIVE_ROLLOUT_STATES, IN_FLIGHT_TASK_STATES, TaskState
from orchestrator.domain.strategy import Strategy, parse_strategy
from orchestrator.domain.windows import (
    WindowError,
    WindowGroup,
    can_start_any,
    covering,
    next_start_any,
    start_deadline,
)
from orchestrator.engine import failpoints, held, retention
from orchestrator.engine.batching import GuardBatcher, TransitionBatcher
from orchestrator.engine.notifier import Notifier, NotifierConfig
from orchestrator.engine.pace import AdaptivePace
from orchestrator.engine.pacing import InstallTimes, ProgressBuffer
from orchestrator.engine.preflight import AutoPreflight
from orchestrator.engine.runner import RunnerContext, TaskRunner
from orchestrator.inventory import target_policy
from orchestrator.logs import get_logger
from orchestrator.settings import setting_default
from orchestrator.store import engines as engine_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store import webhooks
from orchestrator.store import windows as window_store
from orchestrator.store.db import DB_TRANSIENT
from orchestrator.store.rollouts import NOTIFY_CHANNEL
from orchestrator.store.tasks import ClaimedTask

if TYPE_CHECKING:
    from orchestrator.settings import Settings

log = get_logger("orchestrator.engine")

# the young generation of the garbage collector is collected every this many allocations
# (CPython's default: 700)
GC_YOUNG_THRESHOLD = 20_000


def tune_gc_for_engine() -> None:
    """For a process that runs the engine: every appliance request allocates a few hundred
    short-lived objects (aiohttp's request, response, headers, timers, futures), so with
    CPython's default thresholds the collector runs every few requests, each time going
    over the runners' and clients' long-lived objects again. Collect the young generation
    every `GC_YOUNG_THRESHOLD` allocations instead, and keep what exists at start-up out of
    the collector's passes for good. In bench/rollout.py this is most of the drop from
    3.0 to 2.1 ms of CPU per appliance (docs/benchmarks.md), with the same peak memory
    (reference counting frees a request's garbage; the collector only finds cycles)."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 50)


# seconds: an event loop that wakes a 100 ms sleeper later than this is busy (a burst of
# task ends and starts); the appliance logouts of ended tasks wait for it to pass
BUSY_LOOP_LAG = 0.02

ACTIVE_STATES = tuple(sorted(str(s) for s in ACTIVE_ROLLOUT_STATES))


def make_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class EngineFailure(OrchestratorError, RuntimeError):
    """A background loop of the engine (lease renewal, heartbeat, ...) ended while the engine
    ran: the engine drained its runners, handed their tasks over and stopped."""

    def __init__(self, task: str, error: str) -> None:
        super().__init__(f"engine stopped: background task {task} failed: {error}")
        self.task = task
        self.error = error



@dataclass
class EngineConfig:
    """How one engine runs. `from_settings` builds it from the settings (`engine_*`); the
    fields that are settings default to the settings' defaults (one definition)."""

    lease_seconds: float = setting_default("engine_lease_seconds")
    poll_interval: float = setting_default("engine_poll_interval")
    shutdown_deadline: float = setting_default("engine_shutdown_deadline")
    max_tasks: int = setting_default("engine_max_tasks")
    progress_interval: float = 2.0
    batch_delay: float = 0.05
    install_estimate: float = 60.0
    reboot_estimate: float = 10.0
    min_poll: float = 0.5
    max_poll: float = 15.0
    # at least this long between two scheduler ticks (None: a tenth of poll_interval, at
    # least batch_delay, at most 0.2 s): the task ends of a busy rollout are batched into
    # a few claims per second instead of one transaction each
    tick_spacing: float | None = None
    # transitions of the runners arriving within this many seconds share one statement
    # (0: each its own statement)
    write_batch_delay: float = 0.025
    # the guarded install sends (the write right before each install POST) arriving within
    # this many seconds share one statement (0: each its own statement); shorter than
    # write_batch_delay: the send waits for it
    guard_batch_delay: float = 0.01
    # runners in a phase of several appliance requests at once (RunnerContext.gate); the
    # database writes that end such a phase are made outside it
    active_runners: int = 200
    # at most this many tasks per claim statement: a rollout with more free slots is claimed
    # for again at once, in a new transaction, so that no claim holds the fleet-wide claim
    # lock (and every other rollout's claim) for long, however many slots free at once.
    # 50 halves the slowest claims of a 100,000-task rollout (30 ms against 56-66 ms) but
    # refills a burst of free slots slower (efficiency 0.919 against 0.93): see
    # docs/benchmarks.md
    claim_batch: int = 100
    # how often each slot held by a timed-out install is looked at (engine/held.py)
    held_slot_interval: float = setting_default("engine_held_slot_interval")
    # retention (engine/retention.py): every prune_interval seconds, delete the tasks and
    # events of the rollouts that ended longer ago than prune_older_than (None: never)
    prune_older_than: timedelta | None = None
    prune_interval: float = setting_default("prune_interval")
    # seconds before the first prune (None: a random moment within the first minute)
    prune_first_delay: float | None = None
    # where credentials may be read and sent: checked again before every client is built
    # (strict by default; `orchestrator.inventory.target_policy(settings)`)
    target_policy: TargetPolicy = field(default_factory=TargetPolicy)
    # webhook deliveries (engine/notifier.py): settings webhook_*; None: this engine
    # delivers none (another replica, or a later run, does)
    notifier: NotifierConfig | None = field(default_factory=NotifierConfig)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EngineConfig:
        """The engine's configuration from the settings (`engine_*`, and the target policy
        of `orchestrator.inventory.target_policy`); `overrides`: other fields to set."""
        values: dict[str, Any] = {
            "lease_seconds": settings.engine_lease_seconds,
            "poll_interval": settings.engine_poll_interval,
            "shutdown_deadline": settings.engine_shutdown_deadline,
            "max_tasks": settings.engine_max_tasks,
            "held_slot_interval": settings.engine_held_slot_interval,
            "prune_older_than": settings.prune_age,
            "prune_interval": settings.prune_interval,
            "target_policy": target_policy(settings),
            "notifier": NotifierConfig.from_settings(settings),
        }
        values.update(overrides)
        return cls(**values)


@dataclass(slots=True)
class _Tally:
    """A rollout's tasks as one tick sees them, from `task_counts_by_wave`'s rows
    (wave, state, n, last finish): the waves up to `current` are the gated ones. Counts,
    never lists of tasks: a tick's cost does not grow with the rollout."""

    rows: list[Any]
    targeted: int
    in_flight: int
    all_states: Counter[TaskState]
    gated: Counter[TaskState]
    canary: Counter[TaskState]
    pending: Counter[int]  # PENDING tasks per wave
    last_finished: datetime | None

    @classmethod
    def of(cls, rows: list[Any], current: int) -> _Tally:
        all_states: Counter[TaskState] = Counter()
        gated: Counter[TaskState] = Counter()
        canary: Counter[TaskState] = Counter()
        pending: Counter[int] = Counter()
        last_finished = None
        for x in rows:
            state = TaskState(x["state"])
            all_states[state] += x["n"]
            if state == TaskState.PENDING:
                pending[x["wave"]] += x["n"]
            if x["wave"] == 0:
                canary[state] += x["n"]
            if x["wave"] <= current:
                gated[state] += x["n"]
                if x["last"] and (last_finished is None or x["last"] > last_finished):
                    last_finished = x["last"]
        in_flight = sum(n for state, n in all_states.items() if state in IN_FLIGHT_TASK_STATES)
        return cls(rows, all_states.total(), in_flight, all_states, gated, canary,
                   pending, last_finished)

    def startable(self, current: int) -> int:
        """PENDING tasks in the waves up to `current`."""
        return sum(n for wave, n in self.pending.items() if wave <= current)


def _with_canary(
    verdict: PolicyVerdict, strategy: Strategy, tally: _Tally, last_wave: int
) -> PolicyVerdict:
    """The policy's verdict during the canary wave (wave 0): the canary's own rule may trip
    it sooner."""
    canary_verdict = evaluate_canary(strategy.canary_max_failures,
                                     count_outcomes(tally.canary), more_waves=last_wave > 0)
    return canary_verdict if canary_verdict.tripped else verdict


class Engine:
    """Run rollouts until `stop()`; see the module docstring."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        http: ApplianceHttp,
        config: EngineConfig | None = None,
        *,
        owner: str | None = None,
        database_url: str | None = None,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.pool = pool
        self.http = http
        self.config = config or EngineConfig()
        self.owner = owner or make_owner_id()
        self.database_url = database_url
        # the wall clock of schedules, soak times and maintenance windows (tests inject one)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.runners: dict[int, TaskRunner] = {}
        self._tasks: dict[int, asyncio.Task[str]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # the first background loop that ended while the engine ran: (its name, the error)
        self._failure: tuple[str, str] | None = None
        self._closing = False  # run() is cancelling its background loops itself
        self._strategies: dict[int, Strategy] = {}
        self._notifier: Notifier | None = None  # while run() runs with one
        self.ticks = 0
        self.max_loop_lag = 0.0
        self.loop_lag = 0.0  # the last measurement (`_loop_lag_monitor`)
        self.loop_lag_observers: list[Callable[[float], None]] = []
        self.claimed = 0
        self._served: dict[int, int] = {}  # rollout id -> the last tick it claimed in
        self.reclaimed = 0
        # what the ticks cache between refreshes (every poll_interval, or on NOTIFY)
        self._active: list[int] | None = None
        self._refreshes = 0  # how many times refresh() forgot the list (see tick)
        self._refresh_at = 0.0
        self._next_reclaim = 0.0
        self._waves: dict[tuple[int, int], tuple[asyncpg.Record | None, int]] = {}
        self._windows_exist: bool | None = None
        # window groups with PENDING tasks per (rollout, wave), cached until the next refresh
        self._groups: dict[tuple[int, int], list[WindowGroup]] = {}
        # the last window decision's deadlines per group: when an install must have started
        self._group_deadlines: dict[WindowGroup, datetime | None] = {}
        self._pace = AdaptivePace(self.owner)  # strategy pace "adaptive": engine/pace.py
        # pre-flights (strategy key `preflight`; runs asked for through the API)
        self.preflight = AutoPreflight(pool, http, owner=self.owner,
                                       policy=self.config.target_policy,
                                       lease_seconds=self.config.lease_seconds, wake=self.wake)
        self._on_event = on_event
        # runners whose task has left the in-flight states (an outcome, or back to PENDING)
        # and that only finish up (log out) before they end: they do not count against
        # max_tasks (`_busy_runners`)
        self._settled: set[int] = set()
        self.ctx = RunnerContext(
            clock=self.clock, pool=pool, http=http, owner=self.owner, progress=ProgressBuffer(),
            install_times=InstallTimes(default=self.config.install_estimate),
            reboot_times=InstallTimes(default=self.config.reboot_estimate),
            lease_seconds=self.config.lease_seconds, min_poll=self.config.min_poll,
            max_poll=self.config.max_poll, on_event=self._runner_event,
            batcher=TransitionBatcher(pool, self.owner, delay=self.config.write_batch_delay),
            guards=GuardBatcher(pool, self.owner, delay=self.config.guard_batch_delay),
            gate=asyncio.Semaphore(self.config.active_runners),
            target_policy=self.config.target_policy,
        )

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Stop claiming; `run` then drains and returns."""
        self._stopping.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def refresh(self) -> None:
        """Forget what the ticks cache (active rollouts, wave rows, whether maintenance
        windows exist) and tick now: something changed outside this process."""
        self._active = None
        self._refreshes += 1
        self._waves.clear()
        self._groups.clear()
        self._windows_exist = None
        self.preflight.refresh()
        self._wake.set()

    def _on_notify(self, *args: Any) -> None:
        payload = args[3] if len(args) > 3 else ""
        if self._notifier is not None:
            self._notifier.wake()  # a change may have written events: send them now
        if isinstance(payload, str) and payload.startswith("task:"):
            self._wake.set()  # a task ended somewhere: capacity may have freed
        else:
            self.refresh()

    async def run(self, *, until_idle: bool = False) -> None:
        """The engine's life: returns after `stop()` (or, with until_idle, once idle).

        Idle: no rollout is SCHEDULED, RUNNING or WAITING_WINDOW (the ones this engine could
        still work on) and no task runs here. A rollout scheduled for later or waiting for
        its maintenance window keeps the engine running (it ticks every poll_interval, and
        on NOTIFY, until the rollout ends), as does one whose wave soaks or awaits approval
        (it is RUNNING). A PAUSED rollout waits for an operator, not for the engine: it
        does not keep the engine running (its tasks running here do, until they end).

        The background loops (heartbeat, leases, progress, listen, loop-lag, held-slots)
        belong to one TaskGroup and run as long as the engine: each tolerates the errors
        it expects (the database down, ...). One that ends before the engine stops (an
        unexpected exception, or a return) is logged (`engine_background_failed`) and
        stops the engine as `stop()` does (the runners drain and hand their tasks over);
        `run` then raises `EngineFailure` naming it."""
        log.info("engine_started", owner=self.owner, max_tasks=self.config.max_tasks)
        self._failure = None
        self._closing = False
        with contextlib.suppress(Exception):  # the heartbeat loop registers it later
            async with self.pool.acquire() as conn:
                await engine_store.register(conn, self.owner)
        loops: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "heartbeat": self._heartbeat_loop,
            "leases": self._lease_loop,
            "progress": self._progress_loop,
        }
        if self.database_url:  # without a URL there is nothing to LISTEN on
            loops["listen"] = self._listen_loop
        loops["loop-lag"] = self._loop_lag_monitor
        loops["held-slots"] = self._held_loop
        notifier: Notifier | None = None
        if self.config.notifier is not None:
            notifier = Notifier(self.pool, owner=self.owner, config=self.config.notifier)
            loops["notifier"] = notifier.run
        self._notifier = notifier
        if self.config.prune_older_than is not None:
            loops["retention"] = functools.partial(
                retention.retention_loop, self.pool, self.config.prune_older_than,
                owner=self.owner, interval=self.config.prune_interval,
                first_delay=self.config.prune_first_delay, clock=self.clock)
        error: Exception | None = None
        # the appliance logouts of ended tasks wait while the event loop runs late (a burst
        # of task ends and starts), at most LOGOUT_DEFER_MAX s: the loop's time goes to the
        # requests that prove outcomes and send the next installs first
        self.http.busy = self._loop_busy
        try:
            async with asyncio.TaskGroup() as group:
                background = [group.create_task(self._supervise(name, loop), name=name)
                              for name, loop in loops.items()]
                try:
                    await self._run_ticks(background, until_idle=until_idle)
                except Exception as exc:  # raised as it is, not in an ExceptionGroup
                    error = exc
        finally:
            self._notifier = None
            if self.http.busy == self._loop_busy:
                self.http.busy = None
            if notifier is not None:
                await notifier.aclose()
        if error is not None:
            raise error
        if self._failure is not None:
            raise EngineFailure(*self._failure)

    async def _supervise(self, name: str,
                         loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run background loop `name` until run() cancels it; its end before that (an
        exception, a return, a cancellation from elsewhere) stops the engine."""
        try:
            await loop()
        except asyncio.CancelledError:
            if self._closing:
                raise
            error = "cancelled"
        except Exception as exc:
            error = repr(exc)
        else:
            error = "returned"
        if self._closing or self._failure is not None:
            return
        self._failure = (name, error)
        log.error("engine_background_failed", owner=self.owner, task=name, error=error)
        self.stop()

    async def _run_ticks(self, background: list[asyncio.Task[None]], *,
                         until_idle: bool) -> None:
        """The scheduler loop of `run`, then the drain and the end of `background`."""
        spacing = self.config.tick_spacing
        if spacing is None:
            spacing = max(self.config.batch_delay, min(0.2, self.config.poll_interval / 10))
        last_tick = 0.0
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                last_tick = time.monotonic()
                try:
                    active = await self.tick()
                except DB_TRANSIENT as exc:
                    log.warning("database_unavailable", error=type(exc).__name__,
                                retry_in=self.config.poll_interval)
                    active = True
                except Exception as exc:  # the engine outlives any one bad tick
                    log.error("tick_failed", error=repr(exc), retry_in=self.config.poll_interval)
                    active = True
                if until_idle and not active and not self._tasks:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_interval)
                if not self._stopping.is_set():
                    # batch nearby wake-ups
                    await asyncio.sleep(max(self.config.batch_delay,
                                            last_tick + spacing - time.monotonic()))
        finally:
            await self._drain()
            self._closing = True
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._flush_progress()
            # the appliance sessions of the tasks that ended here (queued logouts)
            await self.http.drain_logouts()
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await engine_store.stopped(conn, self.owner)
            log.info("engine_stopped", owner=self.owner, claimed=self.claimed,
                        reclaimed=self.reclaimed,
                        max_loop_lag_ms=round(self.max_loop_lag * 1000, 1))

    async def _drain(self) -> None:
        """Let runners reach a safe point (not between install and its record), then stop
        them and hand their tasks over at once by expiring their leases."""
        deadline = time.monotonic() + self.config.shutdown_deadline
        while any(r.critical for r in self.runners.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.preflight.aclose()  # its runs are handed over
        runners = dict(self.runners)  # the done-callbacks empty self.runners as tasks end
        handles = list(self._tasks.values())
        for task in handles:
            task.cancel()
        if handles:
            await asyncio.gather(*handles, return_exceptions=True)
        if self.ctx.guards is not None:
            await self.ctx.guards.aclose()
        if self.ctx.batcher is not None:
            await self.ctx.batcher.aclose()
        left = {tid: r.task.lease_token for tid, r in runners.items()
                if r.state in IN_FLIGHT_TASK_STATES}
        if left:
            try:
                async with self.pool.acquire() as conn:
                    n = await task_store.release_leases(conn, owner=self.owner, leases=left)
                log.info("leases_released", tasks=n)
            except Exception as exc:  # their leases then simply run out
                log.warning("lease_release_failed", error=repr(exc), tasks=len(left))
        self.runners.clear()
        self._settled.clear()
        self._tasks.clear()

    # ------------------------------------------------------------------ ticks
    async def tick(self) -> bool:
        """One pass over the active rollouts; returns whether any rollout is active
        (SCHEDULED, RUNNING or WAITING_WINDOW: one this engine may still work on), or may
        be: a refresh during the tick (a NOTIFY, as the tick's own state changes send)
        forgets the list, and the next tick, which it wakes, reads it again."""
        self.ticks += 1
        capacity = self.config.max_tasks - self._busy_runners()
        now = time.monotonic()
        if capacity > 0 and now >= self._next_reclaim:
            # leases last lease_seconds and are renewed every third of it: looking more
            # often for expired ones finds nothing new
            self._next_reclaim = now + self.config.lease_seconds / 3
            async with self.pool.acquire() as conn:
                stale = await task_store.reclaim_expired(
                    conn, owner=self.owner, lease_seconds=self.config.lease_seconds,
                    limit=capacity, running=list(self.runners),
                )
            stale = [t for t in stale if t.id not in self.runners]  # never run a task twice
            if stale:
                self.reclaimed += len(stale)
                log.info("tasks_reclaimed", count=len(stale))
                self._spawn(stale)
        active = self._active
        if active is None or now >= self._refresh_at:
            refreshes = self._refreshes
            active = await rollout_store.active_rollout_ids(self.pool, ACTIVE_STATES)
            self._waves.clear()
            self._groups.clear()
            self._windows_exist = None
            self.preflight.refresh()
            await self.preflight.pick_up()  # runs asked for through the API, or abandoned
            # a refresh (a NOTIFY) while this read ran: this tick works on what it read,
            # the next one (the refresh woke it) reads the list again
            if self._refreshes == refreshes:
                self._active = active
                self._refresh_at = now + self.config.poll_interval
        # the rollout this engine served longest ago claims first: rollouts that share a
        # site with a fleet-wide capacity take turns at its free slots, instead of the
        # lowest id taking every slot that frees and the others finishing on a long tail
        for rollout_id in sorted(active, key=lambda r: (self._served.get(r, 0), r)):
            if self._stopping.is_set():
                break
            while True:
                self._group_deadlines = {}
                claimed = await self._advance(rollout_id)
                if claimed:
                    self._served[rollout_id] = self.ticks
                    failpoints.hit("after_claim")
                self._spawn(claimed, self._start_by(claimed))
                if not claimed or len(claimed) < self.config.claim_batch \
                        or self._stopping.is_set():
                    break  # a full batch: the rollout may have more free slots
        return self._active is None or bool(self._active)

    def _inactive(self, rollout_id: int) -> list[ClaimedTask]:
        """The rollout is no longer active: leave it out of the next ticks."""
        if self._active is not None and rollout_id in self._active:
            self._active.remove(rollout_id)
        self._served.pop(rollout_id, None)
        self._pace.forget(rollout_id)
        return []

    def _strategy(self, rollout_id: int, raw: dict[str, Any]) -> Strategy:
        strategy = self._strategies.get(rollout_id)
        if strategy is None:
            strategy = self._strategies[rollout_id] = parse_strategy(raw)
        return strategy

    async def _advance(self, rollout_id: int) -> list[ClaimedTask]:
        """One tick of one rollout, in one transaction under the rollout's lock (skipped,
        without waiting, while another engine holds it).

        The steps, in this order: start it when its schedule is due; wind it down when an
        operator aborted it; judge the failure policy and move the wave gate; honour the
        maintenance windows; claim what the limits allow.
        """
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            if not await task_store.try_lock_rollout(conn, rollout_id):
                # another engine is ticking it right now: its own tick does the work, and
                # this engine looks again on its next tick (a NOTIFY wakes it sooner)
                return []
            r = await rollout_store.lock_for_tick(conn, rollout_id)
            if r is None:
                return self._inactive(rollout_id)
            strategy = self._strategy(rollout_id, r["strategy"])
            begun = await self._start_when_due(conn, rollout_id, r, now)
            if begun is None:
                return []
            state, current = begun
            if state not in ("RUNNING", "WAITING_WINDOW"):
                return self._inactive(rollout_id)
            tally = _Tally.of(await rollout_store.task_counts_by_wave(conn, rollout_id), current)
            if r["abort_reason"]:
                if tally.in_flight == 0:
                    await self._finish_rollout(conn, rollout_id, "FAILED")
                    return self._inactive(rollout_id)
                return []
            outcomes = count_outcomes(tally.all_states)
            verdict = evaluate_policy(strategy.max_failures, strategy.min_executed,
                                      outcomes.executed, outcomes.failed)
            wave, last_wave = await self._wave_row(conn, rollout_id, current)
            if not verdict.tripped and current == 0:
                verdict = _with_canary(verdict, strategy, tally, last_wave)
            gate = gate_next_wave(
                tally.gated, verdict=verdict, is_last_wave=current >= last_wave,
                finished_at=tally.last_finished, soak_seconds=strategy.soak_seconds,
                requires_approval=bool(wave and wave["requires_approval"]),
                approved=bool(wave and wave["approved_at"]), now=now,
            )
            wave_now = await self._follow_gate(conn, rollout_id, current, wave, gate,
                                               outcomes, tally.in_flight)
            if wave_now is None:
                return []
            current = wave_now
            if await self.preflight.holds(conn, rollout_id, state, strategy, now,
                                          lambda: self._next_opening(conn, rollout_id, now)):
                return []  # a pre-flight of the rollout runs: nothing starts meanwhile
            allowed, waiting = await self._window_filter(conn, rollout_id, current, strategy, now)
            if waiting:
                await self._wait_for_window(conn, rollout_id, state, strategy,
                                            outcomes.executed, tally.in_flight)
                return []
            if state == "WAITING_WINDOW":
                await self._set_rollout_state(conn, rollout_id, "RUNNING")
            if strategy.pace != "adaptive":
                return await self._claim(conn, rollout_id, current, strategy, tally, allowed)
            pace = await self._pace.limit(
                conn, rollout_id, r, strategy, targeted=tally.targeted, current_wave=current,
                last_wave=last_wave, executed=outcomes.executed, failed=outcomes.failed,
                canary_failed=count_outcomes(tally.canary).failed)
            claimed = await self._claim(conn, rollout_id, current, strategy, tally, allowed,
                                        pace)
            self._pace.note(rollout_id, pace, tally.in_flight + len(claimed),
                            tally.startable(current) - len(claimed))
            return claimed

    async def _start_when_due(
        self, conn: Any, rollout_id: int, r: Any, now: datetime
    ) -> tuple[str, int] | None:
        """(the rollout's state, its current wave), or None while its schedule is ahead.

        A SCHEDULED rollout whose time has come starts RUNNING at wave 0 here.
        """
        if r["state"] != "SCHEDULED":
            return r["state"], int(r["current_wave"] or 0)
        if r["schedule_at"] is not None and r["schedule_at"] > now:
            return None
        await rollout_store.begin_running(conn, rollout_id, reason="schedule reached")
        log.info("rollout_started", rollout=rollout_id, reason="schedule reached")
        return "RUNNING", 0

    async def _wave_row(self, conn: Any, rollout_id: int, current: int) -> tuple[Any, int]:
        """(the current wave's gate row, the number of the last wave), cached until the
        wave's state is written (`_set_wave`) or the list of active rollouts is refreshed."""
        cached = self._waves.get((rollout_id, current))
        if cached is None:
            wave = await rollout_store.wave_gate(conn, rollout_id, current)
            last_wave = int(wave["last_wave"]) if wave and wave["last_wave"] is not None \
                else current
            self._waves[(rollout_id, current)] = cached = (wave, last_wave)
        return cached

    async def _follow_gate(
        self, conn: Any, rollout_id: int, current: int, wave: Any, gate: Gate,
        outcomes: Outcomes, in_flight: int,
    ) -> int | None:
        """Act on the wave gate: the wave to claim in, or None when nothing starts this tick
        (the policy tripped, the rollout ended, or the wave soaks or awaits approval)."""
        decision = gate.decision
        if decision == GateDecision.TRIPPED:
            await self._trip(conn, rollout_id, current, gate.reason, in_flight)
            return None
        if decision == GateDecision.DONE:
            final, why = final_rollout_state(outcomes)
            if final == "FAILED":
                await self._set_wave(conn, rollout_id, current, "FAILED")
                await rollout_store.set_failure_reason(conn, rollout_id, why)
            else:
                await self._set_wave(conn, rollout_id, current, "SUCCEEDED")
            await self._finish_rollout(conn, rollout_id, str(final))
            log.info("rollout_outcome", rollout=rollout_id, state=str(final), reason=why)
            self._inactive(rollout_id)
            return None
        if decision in (GateDecision.WAIT_SOAK, GateDecision.WAIT_APPROVAL):
            wanted = "SOAKING" if decision == GateDecision.WAIT_SOAK else "AWAITING_APPROVAL"
            if wave and wave["state"] != wanted:
                await self._set_wave(conn, rollout_id, current, wanted)
                log.info("wave_gate", rollout=rollout_id, wave=current, gate=str(decision),
                         reason=gate.reason)
                if wanted == "AWAITING_APPROVAL":
                    await webhooks.emit(conn, "approval.required", rollout_id, {
                        "wave": current, "next_wave": current + 1, "reason": gate.reason,
                        "counts": await rollout_store.outcome_counts(conn, rollout_id),
                        "approve": f"orchestrator rollout approve {rollout_id}"})
            return None
        if decision == GateDecision.OPEN:
            await self._set_wave(conn, rollout_id, current, "SUCCEEDED")
            current += 1
            await rollout_store.open_wave(conn, rollout_id, current)
            log.info("wave_started", rollout=rollout_id, wave=current, reason=gate.reason)
        return current

    async def _wait_for_window(
        self, conn: Any, rollout_id: int, state: str, strategy: Strategy,
        executed: int, in_flight: int,
    ) -> None:
        """No targeted appliance may start now: wait for the next opening, or with
        at_window_end=cancel-pending give up on the never-started tasks."""
        started = executed + in_flight > 0
        if strategy.at_window_end == "cancel-pending" and started:
            n = await rollout_store.cancel_pending_tasks(
                conn, rollout_id, "the maintenance window ended (cancel-pending)"
            )
            log.info("window_ended_pending_cancelled", rollout=rollout_id, tasks=n)
            await self._window_closed(conn, rollout_id, started, cancelled=n)
            self.wake()
            return
        if state != "WAITING_WINDOW" and in_flight == 0:
            await self._set_rollout_state(conn, rollout_id, "WAITING_WINDOW")
            await self._window_closed(conn, rollout_id, started, cancelled=0)

    async def _next_opening(self, conn: Any, rollout_id: int,
                            now: datetime | None = None) -> datetime | None:
        """The earliest moment (at or after `now`, default the clock's) one of the
        rollout's window groups with PENDING tasks may start again (None: none known)."""
        specs = await window_store.all_specs(conn)
        groups = await task_store.pending_window_groups(conn, rollout_id, 2_147_483_647)
        now = self.clock() if now is None else now
        best: datetime | None = None
        for site, tags, tz in groups:
            mine = covering(specs, site, tags)
            if not mine:
                continue
            try:
                moment = next_start_any(mine, now, tz)
            except (WindowError, ValueError):
                continue
            best = moment if best is None or moment < best else best
        return best

    async def _window_closed(self, conn: Any, rollout_id: int, started: bool,
                             cancelled: int) -> None:
        """The window.closed notification: what is left, and the next opening."""
        if not await webhooks.wanted(conn):
            return
        counts = await rollout_store.outcome_counts(conn, rollout_id)
        opening = await self._next_opening(conn, rollout_id)
        await webhooks.emit(conn, "window.closed", rollout_id, {
            "started": started, "pending": counts.get("PENDING", 0), "cancelled": cancelled,
            "counts": counts,
            "next_opening": opening.isoformat() if opening is not None else None})

    async def _claim(
        self, conn: Any, rollout_id: int, current: int, strategy: Strategy, tally: _Tally,
        allowed: list[WindowGroup] | None, pace: int | None = None,
    ) -> list[ClaimedTask]:
        """Claim the PENDING tasks up to wave `current` that the limits let start now
        (`pace`: the adaptive pace's limit, in place of max_concurrency)."""
        capacity = self.config.max_tasks - self._busy_runners()
        if capacity <= 0 or self._stopping.is_set():
            return []
        max_in_flight = pace if pace is not None else resolve_max_concurrency(
            strategy.max_concurrency, tally.targeted)
        if tally.in_flight >= max_in_flight or not tally.startable(current):
            return []  # nothing may start: spare the claim statement
        claimed = await task_store.claim_tasks(
            conn, after_overlapping=strategy.after_overlapping,
            rollout_id=rollout_id, current_wave=current, owner=self.owner,
            lease_seconds=self.config.lease_seconds,
            max_in_flight=max_in_flight,
            per_site=strategy.per_site_concurrency,
            starts_per_minute=strategy.max_starts_per_minute,
            limit=min(capacity, self.config.claim_batch),
            allowed_groups=allowed,
        )
        self.claimed += len(claimed)
        return claimed

    async def _window_filter(
        self, conn: Any, rollout_id: int, current: int, strategy: Strategy, now: datetime
    ) -> tuple[list[WindowGroup] | None, bool]:
        """(groups of appliances that may start now, or None for all; whether the rollout
        must wait).

        With windows in force, an appliance starts only while one of the windows covering
        its site or tags is open with at least the window's cutoff left, in its own time
        zone when the inventory gives one. Appliances no window covers are unrestricted.
        The decision is made once per group of appliances sharing site, tags and time zone
        (`WindowGroup`); the groups with PENDING tasks are read once per refresh, not per
        tick. A group read earlier that has nothing PENDING left filters nothing; an
        appliance whose site, tags or time zone changed since is outside every group read
        and waits for the next refresh: never started outside its window.
        """
        self._group_deadlines = {}
        if strategy.windows == "ignore":
            return None, False
        if self._windows_exist is None:  # cached until the next refresh
            self._windows_exist = await window_store.any_window(conn)
        if not self._windows_exist:
            return None, False
        specs = await window_store.all_specs(conn)
        if not specs:
            return None, False
        groups = self._groups.get((rollout_id, current))
        if groups is None:
            groups = await task_store.pending_window_groups(conn, rollout_id, current)
            self._groups[(rollout_id, current)] = groups
        if not groups:
            return None, False
        allowed: list[WindowGroup] = []
        covered = False
        for group in groups:
            site, tags, tz = group
            mine = covering(specs, site, tags)
            if not mine:
                allowed.append(group)
                self._group_deadlines[group] = None
                continue
            covered = True
            if can_start_any(mine, now, tz):
                allowed.append(group)
                ends = [d for d in (start_deadline(spec, now, tz) for spec in mine)
                        if d is not None]
                self._group_deadlines[group] = max(ends) if ends else None
        if not covered:
            return None, False  # no window covers what is left of this rollout
        return allowed, not allowed

    def _start_by(self, claimed: list[ClaimedTask]) -> dict[int, datetime | None]:
        """Appliance id -> when its install must have started (its window's cutoff), for the
        tasks just claimed under maintenance windows."""
        if not self._group_deadlines:
            return {}
        return {t.appliance_id: self._group_deadlines.get(
                    (t.window_group[0], tuple(t.window_group[1]), t.window_group[2]))
                for t in claimed}

    async def _set_rollout_state(self, conn: Any, rollout_id: int, state: str) -> None:
        await rollout_store.set_rollout_state(conn, rollout_id, state)
        log.info("rollout_state", rollout=rollout_id, state=state)

    async def _set_wave(self, conn: Any, rollout_id: int, number: int, state: str) -> None:
        self._waves.pop((rollout_id, number), None)
        await rollout_store.set_wave_state(conn, rollout_id, number, state)

    async def _trip(
        self, conn: Any, rollout_id: int, wave: int, reason: str, in_flight: int
    ) -> None:
        cancelled = await rollout_store.cancel_pending_tasks(
            conn, rollout_id, f"failure policy tripped: {reason}"
        )
        await rollout_store.record_trip(conn, rollout_id, f"failure policy tripped: {reason}")
        if await webhooks.wanted(conn):
            await webhooks.emit(conn, "policy.tripped", rollout_id, {
                "wave": wave, "reason": reason, "cancelled": cancelled, "in_flight": in_flight,
                "counts": await rollout_store.outcome_counts(conn, rollout_id),
                "failed": await task_store.failed_appliances(conn, rollout_id, limit=100)})
        await self._set_wave(conn, rollout_id, wave, "FAILED")
        log.warning("failure_policy_tripped", rollout=rollout_id, wave=wave, reason=reason,
                    cancelled=cancelled, in_flight=in_flight)
        if in_flight == 0:
            await self._finish_rollout(conn, rollout_id, "FAILED")

    async def _finish_rollout(self, conn: Any, rollout_id: int, state: str) -> None:
        await rollout_store.finish_rollout(conn, rollout_id, state)
        self._strategies.pop(rollout_id, None)
        self._pace.forget(rollout_id)
        log.info("rollout_finished", rollout=rollout_id, state=state)

    # ------------------------------------------------------------------ runners
    def _spawn(
        self, claimed: list[ClaimedTask], start_by: dict[int, datetime | None] | None = None
    ) -> None:
        for task in claimed:
            if task.id in self.runners:
                continue  # a task id already running here is never run twice
            strategy = self._strategy(task.rollout_id, task.strategy)
            self.ctx.lease_until[task.id] = time.monotonic() + self.config.lease_seconds
            runner = TaskRunner(self.ctx, task, strategy,
                                start_by=(start_by or {}).get(task.appliance_id))
            self.runners[task.id] = runner
            handle = asyncio.create_task(runner.run(), name=f"task-{task.id}")
            self._tasks[task.id] = handle
            handle.add_done_callback(functools.partial(self._runner_done, task.id))

    def _busy_runners(self) -> int:
        """The runners that count against max_tasks: those whose task is still in flight.
        A runner whose task has its outcome only logs out of its appliance before it ends:
        its slot is free for the next claim meanwhile (else a burst of task ends would wait
        for as many logouts before a slot could be claimed again)."""
        return len(self.runners) - len(self._settled)

    def _runner_event(self, state: str, info: dict[str, Any]) -> None:
        """Each transition a runner wrote (`RunnerContext.on_event`): note the runners
        whose task left the in-flight states, then tell the engine's own listener."""
        if state not in IN_FLIGHT_TASK_STATES and info["task"] in self.runners:
            self._settled.add(info["task"])
        if self._on_event is not None:
            self._on_event(state, info)

    def _runner_done(self, task_id: int, handle: asyncio.Task[str]) -> None:
        self._tasks.pop(task_id, None)
        self.runners.pop(task_id, None)
        self._settled.discard(task_id)
        self.ctx.lease_until.pop(task_id, None)
        if not handle.cancelled() and handle.exception() is not None:
            log.error("runner_crashed", task=task_id, error=repr(handle.exception()))
        self._wake.set()

    # ------------------------------------------------------------------ background
    async def _lease_loop(self) -> None:
        """Renew the leases of every task running here, in one statement every third of the
        lease; a runner whose lease was taken over is stopped. Survives any error."""
        interval = self.config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            failpoints.fault("lease_loop_crash")
            try:
                await self._renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease_renewal_failed", error=repr(exc), tasks=len(self.runners))

    async def _renew_leases(self) -> None:
        leases = {tid: r.task.lease_token for tid, r in self.runners.items()}
        if not leases:
            return
        sent = time.monotonic()
        async with self.pool.acquire() as conn:
            kept = await task_store.renew_leases(
                conn, owner=self.owner, leases=leases, lease_seconds=self.config.lease_seconds,
            )
        for tid in leases:
            runner = self.runners.get(tid)
            if tid in kept:
                # counted from when the statement was sent: never longer than the database's
                self.ctx.lease_until[tid] = sent + self.config.lease_seconds
            elif runner and runner.state in IN_FLIGHT_TASK_STATES:
                handle = self._tasks.get(tid)
                if handle:
                    log.warning("lease_lost", task=tid)
                    handle.cancel()

    async def _held_loop(self) -> None:
        """Free the slots held by timed-out installs whose appliances are idle again
        (engine/held.py). Survives any error."""
        interval = self.config.held_slot_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await held.release_idle(self.pool, self.http, every=interval,
                                        policy=self.config.target_policy)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("held_slot_check_failed", error=repr(exc))

    async def _heartbeat_loop(self) -> None:
        """Tell the database that this engine is alive (see `store.engines`)."""
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await engine_store.heartbeat(conn, self.owner)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("heartbeat_failed", error=repr(exc))
            await asyncio.sleep(engine_store.HEARTBEAT_INTERVAL)

    async def _flush_progress(self) -> None:
        batch = self.ctx.progress.drain()
        if not batch:
            return
        try:
            async with self.pool.acquire() as conn:
                await task_store.write_progress(conn, owner=self.owner, progress=batch)
        except DB_TRANSIENT:
            for tid, value in batch.items():  # keep it for the next flush
                self.ctx.progress.pending.setdefault(tid, value)
        except Exception as exc:  # percentages only: dropped, never the loop
            log.warning("progress_write_failed", error=repr(exc), tasks=len(batch))

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval)
            await self._flush_progress()

    def _loop_busy(self) -> bool:
        """Whether the event loop ran late at its last measurement (`BUSY_LOOP_LAG`)."""
        return self.loop_lag > BUSY_LOOP_LAG

    async def _loop_lag_monitor(self, interval: float = 0.1) -> None:
        """How late the event loop wakes a 100 ms sleeper: a stalled loop delays every
        appliance poll and lease renewal of this process."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - before - interval)
            self.loop_lag = lag
            self.max_loop_lag = max(self.max_loop_lag, lag)
            for observe in self.loop_lag_observers:
                observe(lag)

    async def _listen_loop(self) -> None:
        """LISTEN on a dedicated connection; the poll interval covers any gap."""
        if not self.database_url:
            return
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.database_url)
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                while not conn.is_closed():
                    await asyncio.sleep(self.config.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the poll interval covers the gap
                log.debug("listen_connection_lost", error=repr(exc))
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(self.config.poll_interval)
