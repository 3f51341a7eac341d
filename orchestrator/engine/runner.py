"""The task runner: install -> monitor -> verify, one claimed task at a time.

A runner owns one task (it holds the lease). Every state change goes through
`store.tasks.transition`, guarded by the expected state and the lease owner; when the guard
fails, another worker owns the task now and this runner stops (TaskLost).

The outcome is proven from the appliance, not from its task: SUCCEEDED only when
`GET /appliance` reports the target version and the key services run. The install task may
vanish in the reboot (404), the appliance may be unreachable or answer 503/401 for a while:
all of that is tolerated up to the strategy's `reboot_grace`; the whole task is bounded by
`task_timeout` from its dispatch.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from orchestrator.appliance import (
    ApplianceClient,
    ApplianceError,
    ApplianceHttp,
    ApplianceInfo,
    ApplianceTarget,
    ApplianceTimeout,
    BadRequest,
    CredentialsError,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Task,
    TaskStatus,
    Unauthorized,
    Unreachable,
)
from orchestrator.domain.strategy import Strategy, missing_services
from orchestrator.engine import failpoints
from orchestrator.logs import bind_context, get_logger
from orchestrator.store import tasks as task_store
from orchestrator.store.tasks import ClaimedTask, TransitionRequest

log = get_logger("orchestrator.engine.runner")
_T = TypeVar("_T")

# Database errors worth waiting out: the connection or the server went away.
DB_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutdown, starting up, cancelled
    asyncpg.exceptions._base.InternalClientError,  # a connection left mid-protocol by a drop
    asyncio.TimeoutError,
)


class TaskLost(Exception):
    """Another worker owns the task now (or the engine is stopping): drop it."""


class DeadlinePassed(Exception):
    """The task's task_timeout ran out while waiting on the appliance."""


@dataclass
class ProgressBuffer:
    """Progress percentages waiting to be written in one batched statement."""

    pending: dict[int, int] = field(default_factory=dict)

    def record(self, task_id: int, progress: int | None) -> None:
        if progress is not None:
            self.pending[task_id] = progress

    def drain(self) -> dict[int, int]:
        out, self.pending = self.pending, {}
        return out


@dataclass
class InstallTimes:
    """Observed durations (seconds) of installs, or of restarts, for the polling cadence of
    later tasks."""

    default: float = 60.0
    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        if len(self.samples) > 200:
            del self.samples[:100]

    def expected(self) -> float:
        if not self.samples:
            return self.default
        ordered = sorted(self.samples)
        return ordered[len(ordered) // 2]

    def low(self) -> float:
        """The 10th percentile of the samples (the default without any)."""
        if not self.samples:
            return self.default
        ordered = sorted(self.samples)
        return ordered[len(ordered) // 10]

    def steady(self) -> bool:
        """Whether the samples agree closely enough (10th to 90th percentile within 10 % of
        the median) to predict the end of an install without looking at its task."""
        n = len(self.samples)
        if n < 5:
            return False
        ordered = sorted(self.samples)
        median = ordered[n // 2]
        return ordered[min(n - 1, (9 * n) // 10)] - ordered[n // 10] <= 0.1 * median


@dataclass
class ReturnOffsets:
    """How long after the end of its install an appliance answers again (seconds), as
    measured by "scout" tasks, which probe closely from before the usual return; the other
    tasks make their first probe at `expected()` (a high percentile of the recent scouts),
    so that one request usually finds the appliance back. Every `every`-th task scouts, and
    every task while fewer than three measurements exist."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    every: int = 20
    count: int = 0

    def add(self, seconds: float) -> None:
        self.window.append(max(0.0, seconds))

    def expected(self) -> float | None:
        if len(self.window) < 3:
            return None
        ordered = sorted(self.window)
        return ordered[(4 * (len(ordered) - 1)) // 5]

    def next_is_scout(self) -> bool:
        if len(self.window) < 3:
            return True
        self.count += 1
        return self.count % self.every == 0


class TransitionBatcher:
    """Writes the transitions of many runners together: the requests that arrive within
    `delay` seconds (at most `max_batch`) go to the database in ONE statement
    (`task_store.transition_many`), each still guarded by its state and lease owner. A
    busy engine then runs a few statements a second instead of several per task."""

    def __init__(self, pool: asyncpg.Pool, owner: str, *, delay: float = 0.05,
                 max_batch: int = 500) -> None:
        self.pool = pool
        self.owner = owner
        self.delay = delay
        self.max_batch = max_batch
        self.statements = 0
        self._pending: list[tuple[TransitionRequest, asyncio.Future[bool]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, request: TransitionRequest) -> bool:
        """Whether the task matched (False: another worker owns it now); raises the
        database's error when the statement failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch or self.delay <= 0:
            self._flush_now()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay, self._flush_now)
        return await future

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # not the cancelled ones; a task at most once per statement (the later waits)
        batch: list[tuple[TransitionRequest, asyncio.Future[bool]]] = []
        later: list[tuple[TransitionRequest, asyncio.Future[bool]]] = []
        ids: set[int] = set()
        for request, future in self._pending:
            if future.done():
                continue
            (later if request.task_id in ids else batch).append((request, future))
            ids.add(request.task_id)
        self._pending = later
        if later:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._flush_now)
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[TransitionRequest, asyncio.Future[bool]]]) -> None:
        self.statements += 1
        try:
            async with self.pool.acquire() as conn:
                matched = await task_store.transition_many(
                    conn, owner=self.owner, requests=[r for r, _ in batch]
                )
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for request, future in batch:
            if not future.done():
                future.set_result(request.task_id in matched)

    async def aclose(self) -> None:
        """Write what is still waiting (from runners not cancelled) and wait for it."""
        self._flush_now()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)


@dataclass
class RunnerContext:
    """What every runner of one engine process shares."""

    pool: asyncpg.Pool
    http: ApplianceHttp
    owner: str
    progress: ProgressBuffer
    install_times: InstallTimes
    lease_seconds: float
    reboot_times: InstallTimes = field(default_factory=lambda: InstallTimes(default=10.0))
    returns: ReturnOffsets = field(default_factory=ReturnOffsets)
    min_poll: float = 0.5
    max_poll: float = 15.0
    db_retry_deadline: float = 600.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    # None: every transition is its own statement
    batcher: TransitionBatcher | None = None
    # at most this many runners in a phase of several requests at once (the dispatch, the
    # look at the appliance after its install): first come, first served, so that the
    # tasks claimed together are dispatched one after the other rather than all
    # progressing together and finishing together at the end of the burst
    gate: asyncio.Semaphore | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def _signals_restart(exc: ApplianceError) -> bool:
    """Whether an error looks like the appliance restarting (not a passing 5xx or a slow
    answer): refused or reset connections, connect timeouts, 503, a session it forgot."""
    return isinstance(exc, Unreachable | ApplianceTimeout | ServiceUnavailable | Unauthorized)


def _install_task_matches(task: Task, version: str) -> bool:
    """Whether a task listed by `GET /tasks` looks like the install of `version`."""
    text = " ".join(str(x) for x in (task.description, task.type) if x).lower()
    return version.lower() in text or (
        "install" in text and task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)
    )


class TaskRunner:
    """Drives one claimed task to a terminal state (or until it is lost / stopped)."""

    def __init__(self, ctx: RunnerContext, task: ClaimedTask, strategy: Strategy) -> None:
        self.ctx = ctx
        self.task = task
        self.strategy = strategy
        self.state = task.state
        self.version = task.target_version
        self.from_version = task.from_version
        self.remote_id = task.remote_task_id
        # True between sending the install and recording INSTALLING: not a safe point
        self.critical = False
        dispatched = task.dispatched_at or _now()
        self.deadline = dispatched + timedelta(seconds=strategy.task_timeout)
        # the same deadline on the monotonic clock (cheap to read, many times per task)
        self._deadline_mono = time.monotonic() + (self.deadline - _now()).total_seconds()
        self.accepted_mono: float | None = None
        self.saw_outage = False
        self.session_reset = False
        self.outage_mono: float | None = None
        # monotonic time the install is expected to end (or was seen to end)
        self.install_end: float | None = None
        self.looked = False  # whether the install task was looked at
        self.last_progress: int | None = None
        self.scout = False  # whether this task measures when appliances answer again
        self.client: ApplianceClient | None = None
        self._gate_held: asyncio.Semaphore | None = None  # held during the dispatch

    # ------------------------------------------------------------------ entry point
    async def run(self) -> str:
        """Run to the end; return the final state (or the state when lost)."""
        with bind_context(rollout=self.task.rollout_id, wave=self.task.wave,
                          task=self.task.id, appliance=self.task.appliance):
            try:
                self.client = self.ctx.http.client(ApplianceTarget(
                    name=self.task.appliance, base_url=self.task.base_url,
                    credentials_ref=self.task.credentials_ref,
                    tls_ca_file=self.task.tls_ca_file, tls_thumbprint=self.task.tls_thumbprint,
                ))
            except (CredentialsError, ValueError) as exc:
                await self._finish("FAILED", "CREDENTIALS", str(exc))
                return self.state
            try:
                if self.task.reclaimed:
                    await self._reconcile()
                elif self.state == "DISPATCHING":
                    await self._dispatch()
                elif self.state == "INSTALLING":
                    await self._monitor()
                elif self.state == "VERIFYING":
                    await self._verify()
            except DeadlinePassed:
                await self._finish(
                    "TIMED_OUT", "TASK_TIMEOUT",
                    f"no verified outcome within task_timeout {self.strategy.task_timeout:g} s "
                    f"(last state {self.state})",
                )
            except TaskLost:
                log.info("task_dropped", reason="owned by another worker now")
            return self.state

    # ------------------------------------------------------------------ transitions
    async def _db(self, what: str, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """Run `call(conn)`, waiting out a database outage (state is kept in memory)."""
        delay = 0.2
        started = time.monotonic()
        while True:
            try:
                async with self.ctx.pool.acquire() as conn:
                    return await call(conn)
            except DB_TRANSIENT as exc:
                if time.monotonic() - started > self.ctx.db_retry_deadline:
                    raise TaskLost() from exc
                log.warning("database_unavailable", retry_in=round(delay, 2),
                            error=type(exc).__name__, pending=what)
                await self.ctx.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, request: TransitionRequest) -> bool:
        """A guarded write (through the batcher when there is one); waits out a database
        outage. Whether the task matched."""
        batcher = self.ctx.batcher
        if batcher is None:
            return await self._db(request.to_state, lambda conn: self._write_one(conn, request))
        delay = 0.2
        started = time.monotonic()
        while True:
            try:
                return await batcher.submit(request)
            except DB_TRANSIENT as exc:
                if time.monotonic() - started > self.ctx.db_retry_deadline:
                    raise TaskLost() from exc
                log.warning("database_unavailable", retry_in=round(delay, 2),
                            error=type(exc).__name__, pending=request.to_state)
                await self.ctx.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write_one(self, conn: Any, request: TransitionRequest) -> bool:
        matched = await task_store.transition_many(conn, owner=self.ctx.owner,
                                                   requests=[request])
        return request.task_id in matched

    async def _to(
        self, to_state: str, detail: dict[str, Any] | None = None, *,
        via: str | None = None, via_detail: dict[str, Any] | None = None, **fields: Any,
    ) -> None:
        """One guarded transition (through `via` first, in the same statement, when given);
        waits out a database outage (state is kept in memory)."""
        ok = await self._write(TransitionRequest(
            task_id=self.task.id, from_state=self.state, to_state=to_state, detail=detail,
            via=via, via_detail=via_detail, fields=fields,
        ))
        if not ok:
            raise TaskLost()
        steps = [(via, via_detail), (to_state, detail)] if via else [(to_state, detail)]
        for state, info in steps:
            assert state is not None
            log.info("task_transition", from_state=self.state, to_state=state,
                     **{k: v for k, v in (info or {}).items() if k != "message"})
            self.state = state
            if self.ctx.on_event:
                self.ctx.on_event(state, {"task": self.task.id, "rollout": self.task.rollout_id})

    async def _finish(
        self, state: str, error_code: str | None = None, message: str | None = None,
        **fields: Any,
    ) -> None:
        detail: dict[str, Any] = {}
        if error_code:
            detail = {"error_code": error_code, "message": message}
            fields.setdefault("error_code", error_code)
            fields.setdefault("error_message", message)
        await self._to(state, detail, **fields)

    async def _retry_later(self, reason: str, exc: ApplianceError | None = None) -> None:
        """A transient failure before any install was accepted: back to PENDING, or FAILED
        once the strategy's dispatch_retries are used up."""
        if self.task.attempt > self.strategy.dispatch_retries:
            await self._finish(
                "FAILED", "DISPATCH_FAILED",
                f"{reason} (gave up after {self.task.attempt} attempt(s))",
            )
            return
        delay = min(60.0, 2.0 * 2 ** (self.task.attempt - 1)) * random.uniform(0.5, 1.0)
        await self._to(
            "PENDING",
            {"reason": reason, "retry_in_s": round(delay, 1),
             "error_kind": exc.kind if exc else None},
            not_before=_now() + timedelta(seconds=delay),
        )

    def _remaining(self) -> float:
        return self._deadline_mono - time.monotonic()

    async def _bounded(self, awaitable: Awaitable[_T]) -> _T:
        """Await an appliance call, but never past the task's deadline."""
        remaining = self._remaining()
        if remaining <= 0:
            raise DeadlinePassed()
        try:
            async with asyncio.timeout(remaining):
                return await awaitable
        except TimeoutError:
            raise DeadlinePassed() from None

    async def _pause(self, seconds: float) -> None:
        """Sleep before the next look at the appliance, never past the deadline."""
        await self.ctx.sleep(max(0.0, min(seconds, self._remaining())))

    async def _check_timeout(self, what: str) -> None:
        if self._remaining() <= 0:
            await self._finish(
                "TIMED_OUT", "TASK_TIMEOUT",
                f"no verified outcome within task_timeout {self.strategy.task_timeout:g} s "
                f"({what})",
            )

    def _client(self) -> ApplianceClient:
        assert self.client is not None
        return self.client

    # ------------------------------------------------------------------ dispatch
    def _gate(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Limits how many runners of this process talk to appliances at once (see
        `RunnerContext.gate`)."""
        gate = self.ctx.gate
        return gate if gate is not None else contextlib.nullcontext()

    async def _dispatch(self) -> None:
        gate = self.ctx.gate
        if gate is not None:
            await gate.acquire()
            self._gate_held = gate
        try:
            installed = await self._dispatch_install()
        finally:
            self._release_gate()
        if installed:
            await self._monitor()

    def _release_gate(self) -> None:
        """Leave the dispatch gate: once the install is sent, or the dispatch ended."""
        gate, self._gate_held = self._gate_held, None
        if gate is not None:
            gate.release()

    async def _dispatch_install(self) -> bool:
        client = self._client()
        try:
            info = await client.get_appliance()
        except (Unauthorized, Forbidden) as exc:
            await self._permanent(exc, "cannot read the appliance's version")
            return False
        except ApplianceError as exc:
            await self._retry_later(f"appliance not ready for the install: {exc}", exc)
            return False
        self.from_version = info.appliance_version
        if info.appliance_version == self.version:
            await self._finish(
                "SKIPPED", None, None, from_version=self.from_version,
                final_version=self.from_version,
            )
            return False
        await self._record_from_version()
        return await self._install(client)

    async def _record_from_version(self) -> None:
        """Write the version seen before the install, before sending it: reconciliation
        after a crash tells "we installed it" from "it was there already" by it."""
        await self._write(TransitionRequest(
            task_id=self.task.id, from_state=self.state, to_state=self.state,
            fields={"from_version": self.from_version}, event=False,
        ))

    async def _install_and_monitor(self, client: ApplianceClient) -> None:
        if await self._install(client):
            await self._monitor()

    async def _install(self, client: ApplianceClient) -> bool:
        """Send the install; True once it was accepted and INSTALLING is recorded."""
        self.critical = True
        try:
            sent = time.monotonic()
            try:
                remote = await client.install(self.version)
            except (Forbidden, NotFound, Unauthorized) as exc:
                await self._permanent(exc, f"install of {self.version} refused")
                return False
            except BadRequest as exc:
                # perhaps our own earlier install (whose answer was lost) is still running
                adopted = await self._find_accepted_install(client)
                if adopted is None:
                    await self._permanent(exc, f"install of {self.version} refused")
                    return False
                remote = adopted
            except ApplianceError as exc:
                if not exc.request_sent:
                    await self._retry_later(f"install not sent: {exc}", exc)
                    return False
                # the answer was lost: the appliance may or may not have accepted it
                adopted = await self._find_accepted_install(client)
                if adopted is None:
                    await self._retry_later(f"install answer lost, none accepted: {exc}", exc)
                    return False
                remote = adopted
            self.remote_id = remote.id
            # the requests of the dispatch are done: recording it needs no gate
            self._release_gate()
            # when the install was sent: the appliance's timeline starts there, whatever
            # delayed this process in reading the answer
            self.accepted_mono = sent
            failpoints.hit("after_install_sent")
            await self._to(
                "INSTALLING", {"remote_task_id": remote.id},
                remote_task_id=remote.id, from_version=self.from_version, accepted_at=_now(),
            )
        finally:
            self.critical = False
        return True

    async def _permanent(self, exc: ApplianceError, what: str) -> None:
        code = getattr(exc, "error_code", None)
        reasons = {
            "unauthorized": ("UNAUTHORIZED", "the appliance rejected the credentials "
                             f"({self.task.credentials_ref or 'no credentials_ref'})"),
            "forbidden": ("FORBIDDEN", "the appliance user lacks the rights to install "
                          "updates"),
            "not_found": ("VERSION_NOT_OFFERED", f"version {self.version} is not offered by "
                          "the appliance (404); check the update repository"),
        }
        default_code, human = reasons.get(exc.kind, (exc.kind.upper(), what))
        message = getattr(exc, "message", None)
        text = f"{what}: {human}" + (f" - appliance says: {message}" if message else "")
        await self._finish("FAILED", code or default_code, text,
                           from_version=self.from_version)

    async def _find_accepted_install(self, client: ApplianceClient) -> Task | None:
        """Did the appliance accept an install of our version? Look at its task list."""
        try:
            listed = await client.list_tasks(sort_by="start_time", order_by="desc", limit=20)
        except ApplianceError:
            return None
        for candidate in listed:
            if candidate.id and candidate.status in (
                TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.SUCCESS
            ) and _install_task_matches(candidate, self.version):
                log.info("install_adopted", remote_task_id=candidate.id,
                         status=str(candidate.status))
                return candidate
        return None

    # ------------------------------------------------------------------ reconcile
    async def _reconcile(self) -> None:
        """A reclaimed task: ask the appliance before doing anything (DESIGN.md section 7)."""
        client = self._client()
        log.info("task_reconcile", state=self.state, remote_task_id=self.remote_id)
        if self.state == "INSTALLING" and self.remote_id:
            await self._monitor()
            return
        if self.state == "VERIFYING":
            await self._verify()
            return
        # DISPATCHING, or INSTALLING without a remote id: was an install accepted?
        try:
            info = await client.get_appliance()
        except (Unauthorized, Forbidden) as exc:
            await self._permanent(exc, "cannot read the appliance's version")
            return
        except ApplianceError:
            # unreachable: perhaps rebooting into our install; follow it as an outage
            self.saw_outage = True
            if self.state == "DISPATCHING":
                await self._to("INSTALLING", {"reason": "reconcile: appliance unreachable"})
            await self._to("VERIFYING", {"reason": "reconcile: appliance unreachable"})
            await self._verify()
            return
        if info.appliance_version == self.version:
            if self.state == "DISPATCHING" and self.from_version in (None, self.version):
                # from_version is written before any install is sent: without it, no install
                # left this orchestrator, so the appliance was at the target already
                await self._finish("SKIPPED", None, None, from_version=self.version,
                                   final_version=self.version)
                return
            if self.state == "DISPATCHING":
                await self._to("INSTALLING", {"reason": "reconcile: already at target"})
            await self._to("VERIFYING", {"reason": "reconcile: already at target"})
            await self._verify()
            return
        self.from_version = self.from_version or info.appliance_version
        adopted = await self._find_accepted_install(client)
        if adopted is not None:
            self.remote_id = adopted.id
            self.accepted_mono = time.monotonic()
            if self.state == "DISPATCHING":
                await self._to("INSTALLING", {"remote_task_id": adopted.id, "reconciled": True},
                               remote_task_id=adopted.id, from_version=self.from_version,
                               accepted_at=_now())
            await self._monitor()
            return
        if self.state == "DISPATCHING":
            await self._record_from_version()
            await self._install_and_monitor(client)
            return
        # INSTALLING without an id and nothing running: it went through or it did not
        await self._to("VERIFYING", {"reason": "reconcile: no install task found"})
        await self._verify()

    # ------------------------------------------------------------------ monitor
    def _poll_interval(self, progress: int | None) -> float:
        """When to look at the install task again while its progress tells little (below
        50 %): shortly before it is expected to end, from the progress when there is some,
        else just after the median install time observed so far."""
        elapsed = time.monotonic() - (self.accepted_mono or time.monotonic())
        if progress and 0 < progress < 100 and elapsed > 0:
            remaining = 0.9 * elapsed * (100 - progress) / progress
        else:
            remaining = max(self.ctx.install_times.expected() - elapsed, 0.0) + 0.25
        return max(self.ctx.min_poll, min(self.ctx.max_poll, remaining))

    def _accepted_at_mono(self) -> float:
        """The monotonic time the install was accepted: now, or for a reclaimed task, when
        the database says it was."""
        now = time.monotonic()
        accepted = self.task.accepted_at
        if accepted is None:
            return now
        return now - max(0.0, (_now() - accepted).total_seconds())

    def _restart_seen(self) -> None:
        """A first sign that the appliance restarts: note when (outage start, end of the
        install) and forget the session (a restart ends it: log in anew, skip the 401)."""
        now = time.monotonic()
        self.saw_outage = True
        if self.outage_mono is None:
            self.outage_mono = now
        if self.install_end is None or self.install_end > now:
            self.install_end = now
        self._client().forget_session()

    async def _monitor(self) -> None:
        """Follow an accepted install until the appliance answers again after it.

        The install task is looked at only as often as needed to know when the install
        ends (not at all once the install times observed so far agree closely); the
        appliance is then expected to restart, and is probed when appliances usually
        answer again (see `ReturnOffsets`): a probe is a login and `GET /appliance`, whose
        version proves the outcome, so a task usually costs a handful of requests."""
        if self.accepted_mono is None:
            self.accepted_mono = self._accepted_at_mono()
        if not self.remote_id:
            if self.state == "INSTALLING":
                await self._to("VERIFYING", {"reason": "no install task id to follow"})
            await self._verify()
            return
        self.scout = self.ctx.returns.next_is_scout()
        while True:
            if not await self._follow_install():
                return
            if await self._await_return():
                return

    async def _follow_install(self) -> bool:
        """Until the install should be over (True; `install_end` is set), or the task was
        settled here (False)."""
        client = self._client()
        ctx = self.ctx
        accepted = self.accepted_mono or time.monotonic()
        times = ctx.install_times
        if (self.install_end is None and not self.looked and not self.scout
                and times.samples and times.steady()):
            self.install_end = accepted + times.expected()  # known and steady: no polling
        next_look: float | None = None
        trouble_since: float | None = None
        while True:
            await self._check_timeout("installing")
            if self.state == "TIMED_OUT":
                return False
            now = time.monotonic()
            if self.install_end is not None:
                if now >= self.install_end:
                    return True
                await self._pause(self.install_end - now)
                continue
            if next_look is None:
                if self.looked:
                    next_look = now + self._poll_interval(self.last_progress)
                elif times.samples:  # look shortly before the fastest installs end
                    next_look = accepted + 0.85 * times.low()
                else:  # nothing known yet: look early to learn the pace
                    next_look = accepted + max(ctx.min_poll, min(2.0, times.expected() / 4))
            if next_look > now:
                await self._pause(next_look - now)
                continue
            next_look = None
            self.looked = True
            sent = time.monotonic()
            try:
                remote = await self._bounded(client.get_task(self.remote_id or "", retries=0))
            except NotFound:
                self._restart_seen()  # tasks live in memory: the appliance restarted
                return True
            except ApplianceError as exc:
                now = time.monotonic()
                if _signals_restart(exc) and not isinstance(exc, Unauthorized):
                    self._restart_seen()
                    return True
                trouble_since = trouble_since or now
                if now - trouble_since > self.strategy.reboot_grace:
                    await self._finish(
                        "TIMED_OUT", "UNREACHABLE",
                        f"appliance unanswerable for more than reboot_grace "
                        f"{self.strategy.reboot_grace:g} s during the install ({exc.kind})",
                    )
                    return False
                next_look = now + self._outage_poll(now - trouble_since)
                continue
            trouble_since = None
            if not await self._task_seen(remote, sent):
                return False

    async def _task_seen(self, remote: Task, sent: float) -> bool:
        """Act on a look at the install task: True while it runs (`install_end` set when its
        progress tells when it ends), False once the task was settled or handed over."""
        if remote.status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.UNKNOWN):
            self.ctx.progress.record(self.task.id, remote.progress)
            progress = self.last_progress = remote.progress
            elapsed = sent - (self.accepted_mono or sent)
            if progress and 50 <= progress < 100 and elapsed > 0:
                took = elapsed * 100 / progress
                self.ctx.install_times.add(took)
                self.install_end = (self.accepted_mono or 0.0) + took
            return True
        if remote.status == TaskStatus.SUCCESS:
            if remote.start_time and remote.complete_time:
                # the appliance's own clock: exact, unlike when we happened to look
                took = (remote.complete_time - remote.start_time).total_seconds()
                if took > 0:
                    self.ctx.install_times.add(took)
            await self._to("VERIFYING", {"reason": "install task SUCCESS"}, progress=100)
            await self._verify(settle=False)
            return False
        message = remote.error_message or f"install task ended {remote.status}"
        if self.task.attempt <= self.strategy.install_retries:
            delay = 5.0 * random.uniform(0.5, 1.0)
            await self._to(
                "PENDING",
                {"reason": "install task ended in error; retrying (install_retries)",
                 "error_code": "INSTALL_ERROR", "message": message},
                not_before=_now() + timedelta(seconds=delay),
            )
            return False
        await self._finish("FAILED", "INSTALL_ERROR", message)
        return False

    async def _await_return(self) -> bool:
        """The install should be over: probe until the appliance answers again. True when
        the task was settled (or handed to verification); False when the install turned out
        to be still running (back to following it)."""
        client = self._client()
        ctx = self.ctx
        end = self.install_end if self.install_end is not None else time.monotonic()
        offset = ctx.returns.expected()
        scout = self.scout or offset is None
        if offset is None:  # nothing measured yet: probe from the start, closely
            first = ctx.min_poll
            step = max(0.5 * ctx.min_poll, min(1.0, ctx.reboot_times.expected() / 20))
        elif scout:  # measure: probe closely from before the usual return
            first = 0.8 * offset
            step = max(0.2 * ctx.min_poll, min(1.0, offset / 40))
        else:  # one probe, when appliances usually answer again
            first = offset
            step = max(ctx.min_poll, min(5.0, offset / 10))
        # the restart ends the session: log in at the first probe instead of meeting a 401
        client.forget_session()
        self.session_reset = True
        await self._pause(end + first - time.monotonic())
        down_since: float | None = None
        while True:
            await self._check_timeout("waiting for the appliance to answer after the install")
            if self.state == "TIMED_OUT":
                return True
            sent = time.monotonic()  # what happened on the appliance, not when we read it
            error: ApplianceError | None = None
            info: ApplianceInfo | None = None
            confirmed, reconfigure = False, None
            async with self._gate():
                try:
                    info = await self._bounded(client.get_appliance(retries=0))
                except ApplianceError as failed:
                    error = failed
                if info is not None and info.appliance_version == self.version:
                    if scout:
                        ctx.returns.add(sent - end)
                    if self.saw_outage:
                        ctx.reboot_times.add(sent - (self.outage_mono or end))
                    confirmed, reconfigure = await self._confirm()
            if confirmed:  # recorded outside the gate: no appliance request in it
                assert info is not None
                await self._succeeded(info, reconfigure)
            if info is not None and info.appliance_version == self.version:
                if not confirmed:  # services still starting: the verification loop decides
                    if self.state == "INSTALLING":
                        await self._to("VERIFYING", {"reason": "back up on the target version"},
                                       progress=100)
                    await self._verify(settle=False)
                return True
            if error is not None or info is None:
                problem = error or ApplianceError(self.task.appliance, "no answer")
                now = time.monotonic()
                down_since = down_since or now
                if _signals_restart(problem):
                    self.saw_outage = True
                    if self.outage_mono is None:
                        self.outage_mono = min(now, end)
                if now - down_since > self.strategy.reboot_grace:
                    await self._finish(
                        "TIMED_OUT", "UNREACHABLE",
                        f"appliance did not come back within reboot_grace "
                        f"{self.strategy.reboot_grace:g} s ({problem})",
                    )
                    return True
                await self._pause(step if scout else
                                  max(step, self._outage_poll(now - down_since)))
                continue
            # up on another version: the install still runs, failed, or restarts later
            sent = time.monotonic()
            try:
                remote = await self._bounded(client.get_task(self.remote_id or "", retries=0))
            except NotFound:
                # the task is gone: the appliance restarted and came back on the old version
                self.saw_outage = True
                await self._to("VERIFYING", {"reason": "install task gone (404): restarted"})
                await self._verify(settle=False)
                return True
            except ApplianceError:
                now = time.monotonic()
                down_since = down_since or now  # going down right now: keep probing
                await self._pause(step)
                continue
            if remote.status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.UNKNOWN):
                self.install_end = None  # slower than expected: follow the task again
                if not await self._task_seen(remote, sent):
                    return True
                return False
            await self._task_seen(remote, sent)
            return True

    async def _confirm(self) -> tuple[bool, bool | None]:
        """Back up on the target version: (whether the key services run, and then whether
        a reconfigure is required); not running: the verification loop decides."""
        client = self._client()
        try:
            running = await self._bounded(self._services(client))
        except ApplianceError:
            return False, None
        if missing_services(self.strategy.verify_services, running):
            return False, None
        return True, await self._reconfigure_required(client)

    def _outage_poll(self, outage_for: float) -> float:
        """Between looks at a restarting appliance: an eighth of the usual restart time
        observed so far, growing with the outage, at most 5 s."""
        base = self.ctx.reboot_times.expected() / 8
        return max(self.ctx.min_poll, min(5.0, base + outage_for / 20))

    # ------------------------------------------------------------------ verify
    async def _verify(self, *, settle: bool = True) -> None:
        """Prove the outcome from the version the appliance reports. `settle`: the appliance
        may be restarting right now, so the first look waits for the usual restart time."""
        client = self._client()
        outage_since: float | None = None
        old_since: float | None = None
        target_since: float | None = None
        verify_started = time.monotonic()
        if settle and self.saw_outage and self.ctx.reboot_times.samples:
            # it is restarting: look again when restarts usually end, not before
            await self._pause(0.7 * self.ctx.reboot_times.expected())
        while True:
            await self._check_timeout("verifying")
            if self.state == "TIMED_OUT":
                return
            now = time.monotonic()
            if self.saw_outage and not self.session_reset:
                client.forget_session()  # a restart ends sessions: log in, skip the 401
                self.session_reset = True
            try:
                info = await self._bounded(client.get_appliance(retries=0))
                running = await self._bounded(self._services(client))
            except ApplianceError as exc:
                outage_since = outage_since or now
                self.saw_outage = self.saw_outage or _signals_restart(exc)
                if now - outage_since > self.strategy.reboot_grace:
                    await self._finish(
                        "TIMED_OUT", "UNREACHABLE",
                        f"appliance did not come back within reboot_grace "
                        f"{self.strategy.reboot_grace:g} s ({exc})",
                    )
                    return
                await self._pause(self._outage_poll(now - outage_since))
                continue
            if outage_since is not None and self.saw_outage:
                self.ctx.reboot_times.add(now - (self.outage_mono or verify_started))
            outage_since = None
            missing = missing_services(self.strategy.verify_services, running)
            if info.appliance_version == self.version:
                target_since = target_since or now
                if not missing:
                    await self._succeed(client, info)
                    return
                if now - target_since > self.strategy.reboot_grace:
                    await self._finish(
                        "FAILED", "SERVICES_DOWN",
                        f"{self.version} is installed but key services are not running: "
                        f"{', '.join(missing)}", final_version=info.appliance_version,
                    )
                    return
            elif not missing:
                # fully up on another version: a silent failure once it restarted, or
                # an install that said SUCCESS but never restarted within the grace
                old_since = old_since or now
                if self.saw_outage or now - old_since > self.strategy.reboot_grace:
                    await self._finish(
                        "FAILED", "VERSION_MISMATCH",
                        f"the appliance came back on {info.appliance_version}, not "
                        f"{self.version}" if self.saw_outage else
                        f"the install reported success but the appliance still runs "
                        f"{info.appliance_version} after {self.strategy.reboot_grace:g} s",
                        final_version=info.appliance_version,
                    )
                    return
            await self._pause(self._outage_poll(0))

    async def _services(self, client: ApplianceClient) -> dict[str, bool]:
        services = await client.get_services(retries=0)
        return {s.id: bool(s.is_running) for s in services}

    async def _reconfigure_required(self, client: ApplianceClient) -> bool | None:
        try:
            return await self._bounded(client.reconfigure_required())
        except (ApplianceError, DeadlinePassed):
            return None

    async def _succeed(self, client: ApplianceClient, info: ApplianceInfo) -> None:
        await self._succeeded(info, await self._reconfigure_required(client))

    async def _succeeded(self, info: ApplianceInfo, reconfigure: bool | None) -> None:
        fields: dict[str, Any] = {
            "final_version": info.appliance_version, "reconfigure_required": reconfigure,
            "from_version": self.from_version, "progress": 100,
        }
        if self.state == "INSTALLING":  # found back at the first look: both steps at once
            await self._to("SUCCEEDED", {}, via="VERIFYING",
                           via_detail={"reason": "back up on the target version"}, **fields)
            return
        await self._finish("SUCCEEDED", None, None, **fields)
