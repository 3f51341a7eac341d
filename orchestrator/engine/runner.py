"""The task runner: install -> monitor -> verify, one claimed task at a time.

A runner owns one task (it holds the lease). Every state change goes through
`store.tasks.transition_many`, guarded by the expected state and the lease owner; when the
guard fails, another worker owns the task now and this runner stops (TaskLost).

The outcome is proven from the appliance, not from its task: SUCCEEDED only when
`GET /appliance` reports the target version and the key services run. The install task may
vanish in the reboot (404), the appliance may be unreachable or answer 503/401 for a while:
all of that is tolerated up to the strategy's `reboot_grace`; the whole task is bounded by
`task_timeout` from its dispatch. docs/architecture.md follows a task through the engine.

Health gates (`domain/gates.py`), when the strategy names any: once the version is proven,
the task stays VERIFYING while its required services, its HTTP probe and its soak are
checked, and is SUCCEEDED only when they pass (FAILED with the gate's code otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from orchestrator.appliance import (
    ApplianceClient,
    ApplianceError,
    ApplianceHttp,
    ApplianceInfo,
    ApplianceTarget,
    CredentialsError,
    Forbidden,
    NotFound,
    ServiceUnavailable,
    Task,
    TaskStatus,
    Unauthorized,
)
from orchestrator.appliance.guard import TargetRefused, guarded_client
from orchestrator.appliance.probe import http_probe
from orchestrator.domain import gates, outcome
from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import TargetPolicy, url_host
from orchestrator.domain.outcome import (
    Answer,
    Listing,
    LostAction,
    Outcome,
    PostAction,
    after_install_post,
    after_lost_answer,
    listing_of,
    same_version,
)
from orchestrator.domain.strategy import Strategy, missing_services
from orchestrator.engine import failpoints
from orchestrator.engine.answers import answer_of, signals_restart
from orchestrator.engine.batching import GuardBatcher, TransitionBatcher
from orchestrator.engine.pacing import InstallTimes, ProgressBuffer, ReturnOffsets
from orchestrator.engine.preflight import preflight_task_ids
from orchestrator.logs import bind_context, get_logger
from orchestrator.store import tasks as task_store
from orchestrator.store.db import DB_TRANSIENT
from orchestrator.store.tasks import ClaimedTask, GuardRequest, SendVerdict, TransitionRequest

log = get_logger("orchestrator.engine.runner")
_T = TypeVar("_T")
# seconds: the runners' wake-ups are rounded up to multiples of this (see TaskRunner._pause)
WAKE_GRID = 0.02

class TaskLost(OrchestratorError):
    """Another worker owns the task now (or the engine is stopping): drop it.

    A signal within the runner rather than a failure, but one the orchestrator raises on
    purpose: it derives from `OrchestratorError` like the others (it was an `Exception`
    already, so no handler catches it that did not before)."""


class DeadlinePassed(OrchestratorError):
    """The task's task_timeout ran out while waiting on the appliance (a runner signal,
    raised on purpose: an `OrchestratorError`, as `TaskLost`)."""


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
    # None: every guarded install send is its own statement
    guards: GuardBatcher | None = None
    # at most this many runners in a phase of several requests at once (the dispatch, the
    # look at the appliance after its install): first come, first served, so that the
    # tasks claimed together are dispatched one after the other rather than all
    # progressing together and finishing together at the end of the burst
    gate: asyncio.Semaphore | None = None
    # the wall clock of maintenance windows (the engine's; tests inject one)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # task id -> monotonic time its lease runs out, as last renewed by this process
    lease_until: dict[int, float] = field(default_factory=dict)
    # where credentials may be read and sent (the settings'; strict unless told)
    target_policy: TargetPolicy = field(default_factory=TargetPolicy)


def _now() -> datetime:
    return datetime.now(UTC)


class TaskRunner:
    """Drives one claimed task to a terminal state (or until it is lost / stopped)."""

    def __init__(
        self, ctx: RunnerContext, task: ClaimedTask, strategy: Strategy,
        *, start_by: datetime | None = None,
    ) -> None:
        self.ctx = ctx
        self.task = task
        self.strategy = strategy
        self.state = task.state
        self.version = task.target_version
        self.from_version = task.from_version
        self.remote_id = task.remote_task_id
        # the last instant the maintenance window lets this install start (None: no window)
        self.start_by = start_by
        # an earlier POST of this task may have started an install
        self.sent_before = task.install_sent_at is not None or task.installs_sent > 0
        self.sent_wall: datetime | None = task.install_sent_at
        self.logins_at_send: int | None = None  # the client's logins when the POST left
        self.accepted = task.accepted_at is not None
        self.watch: outcome.Watch | None = None
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
        self.gates = gates.GateSpec.of(strategy)  # the health gates after the proof

    # ------------------------------------------------------------------ entry point
    async def run(self) -> str:
        """Run to the end; return the final state (or the state when lost).

        However the run ends (a terminal state, the task lost, the deadline, a crash), its
        appliance client is released after the task's last write (`ApplianceHttp.using`):
        it leaves the cache and its session is logged out, unless another user in this
        process holds it. The logout is queued (`ApplianceHttp.release_queued`) rather
        than awaited: in a burst of task ends the next installs go first; a cancelled run
        (the engine stopping, the lease lost) logs out in the background."""
        with bind_context(rollout=self.task.rollout_id, wave=self.task.wave,
                          task=self.task.id, appliance=self.task.appliance):
            try:
                self.client = guarded_client(self.ctx.http, ApplianceTarget(
                    name=self.task.appliance, base_url=self.task.base_url,
                    credentials_ref=self.task.credentials_ref,
                    tls_ca_file=self.task.tls_ca_file, tls_thumbprint=self.task.tls_thumbprint,
                ), self.ctx.target_policy)
            except TargetRefused as exc:
                await self._finish("FAILED", "TARGET_REFUSED", str(exc))
                return self.state
            except (CredentialsError, ValueError) as exc:
                await self._finish("FAILED", "CREDENTIALS", str(exc))
                return self.state
            if self.gates.probe_url and self.state == "DISPATCHING" and \
                    self.task.install_sent_at is None:
                try:
                    self._probe_url()  # refused before anything is sent, like a base_url
                except ValueError as exc:
                    await self._finish("FAILED", "TARGET_REFUSED",
                                       f"appliance {self.task.appliance!r}: {exc}")
                    return self.state
            async with self.ctx.http.using(self.client, queue_logout=True):
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
                        f"no verified outcome within task_timeout "
                        f"{self.strategy.task_timeout:g} s (last state {self.state})",
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
        return await self._submit(request.to_state, lambda: batcher.submit(request))

    async def _submit(self, what: str, submit: Callable[[], Awaitable[_T]]) -> _T:
        """`submit()` to a batcher, waiting out a database outage (as `_db`)."""
        delay = 0.2
        started = time.monotonic()
        while True:
            try:
                return await submit()
            except DB_TRANSIENT as exc:
                if time.monotonic() - started > self.ctx.db_retry_deadline:
                    raise TaskLost() from exc
                log.warning("database_unavailable", retry_in=round(delay, 2),
                            error=type(exc).__name__, pending=what)
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
            via=via, via_detail=via_detail, fields=fields, token=self.task.lease_token,
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
        """Sleep before the next look at the appliance, never past the deadline. The wake-up
        is rounded up to a multiple of `WAKE_GRID` on the monotonic clock (the event
        loop's): runners due within the same few milliseconds wake in one pass of the
        event loop, and send their requests together, instead of each in a pass of its
        own (a pass costs an epoll call and the loop's bookkeeping)."""
        remaining = self._remaining()
        if seconds >= remaining:
            await self.ctx.sleep(max(0.0, remaining))
            return
        if seconds > 0:
            now = time.monotonic()
            seconds = math.ceil((now + seconds) / WAKE_GRID) * WAKE_GRID - now
        await self.ctx.sleep(max(0.0, seconds))

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
        if same_version(info.appliance_version, self.version):
            await self._at_target_before_send(info.appliance_version)
            return False
        if not await self._guard_send():
            return False
        return await self._install(client)

    async def _at_target_before_send(self, version: str) -> None:
        """The appliance reports the target before this attempt sent anything: SKIPPED, or
        SUCCEEDED when an earlier attempt of this task sent an install (retry-failed after
        a timeout, say) that has since applied (after the health gates, when set)."""
        if self.task.installs_sent > 0:
            if self.gates.active:
                self.from_version = self.task.from_version
                await self._health_gates(version, None)
                return
            await self._finish(
                "SUCCEEDED", None, None, final_version=version, progress=100,
                from_version=self.task.from_version,
            )
            return
        await self._finish("SKIPPED", None, None, from_version=version, final_version=version)

    async def _guard_send(self) -> bool:
        """The guarded write right before the install POST (`task_store.guard_install_sends`):
        True when the install may be sent now (recorded as sent). Otherwise the task goes
        back to PENDING without a POST (paused, window closing, lease running out), is
        CANCELLED (rollout cancelled or tripped), or is dropped (no longer ours)."""
        margin = self.ctx.lease_seconds / 3
        if self._lease_left() <= margin:
            # this process's renewals are late: the database may hand the task over soon
            verdict, why = SendVerdict.HOLD, "the lease would expire during the install call"
        elif self.start_by is not None and self.ctx.clock() > self.start_by:
            verdict, why = SendVerdict.HOLD, "the maintenance window no longer lets it start"
        else:
            # from the guarded write until the install is sent and recorded, a draining
            # engine waits for this runner: stopped in between (the write is made by the
            # batcher's statement, whoever waits for it), the task would stay recorded as
            # sent though it never was, and its next owner could only call it a lost answer
            self.critical = True
            sending = False
            try:
                verdict, why = await self._guard_write(margin)
                sending = verdict == SendVerdict.SEND
            finally:
                self.critical = sending
        if verdict == SendVerdict.SEND:
            return True
        if verdict == SendVerdict.LOST:
            raise TaskLost()
        if verdict == SendVerdict.CANCEL:
            await self._to("CANCELLED", {"reason": f"never sent: {why}"},
                           from_version=self.from_version)
            return False
        # not sent: this attempt does not count against dispatch_retries
        await self._to("PENDING", {"reason": f"install not sent: {why}"},
                       attempt=max(0, self.task.attempt - 1),
                       not_before=_now() + timedelta(seconds=1))
        return False

    async def _guard_write(self, margin: float) -> tuple[str, str]:
        """`task_store.guard_install_sends` for this task (through the engine's
        `GuardBatcher` when there is one: one statement for the sends of a burst)."""
        request = GuardRequest(self.task.id, self.task.lease_token, self.from_version, margin)
        guards = self.ctx.guards
        if guards is not None:
            return await self._submit("guard", lambda: guards.submit(request))
        verdicts = await self._db("guard", lambda conn: task_store.guard_install_sends(
            conn, owner=self.ctx.owner, requests=[request]))
        return verdicts.get(self.task.id, (SendVerdict.LOST, ""))

    def _lease_left(self) -> float:
        until = self.ctx.lease_until.get(self.task.id)
        return float("inf") if until is None else until - time.monotonic()

    async def _install(self, client: ApplianceClient) -> bool:
        """Send the install and act on its answer (`outcome.after_install_post`); True
        once an install is known or believed to run and INSTALLING is recorded."""
        self.critical = True
        try:
            sent = time.monotonic()
            self.sent_wall = _now()
            self.logins_at_send = client.logins
            remote: Task | None = None
            error: ApplianceError | None = None
            try:
                remote = await client.install(self.version)
                answer = Answer.OK
            except ApplianceError as exc:
                error = exc
                answer = answer_of(exc)
            action = after_install_post(answer, sent_before=self.sent_before)
            self.sent_before = self.sent_before or answer is not Answer.NOT_SENT
            if action == PostAction.RETRY_LATER:
                await self._retry_later(f"install not started: {error}", error)
                return False
            if action == PostAction.FAIL:
                assert error is not None
                await self._permanent(error, f"install of {self.version} refused")
                return False
            if action == PostAction.INVESTIGATE:
                log.info("install_answer_unknown", answer=str(answer), error=str(error))
                self._release_gate()
                return await self._investigate()
            # accepted (any 2xx), or our install runs ("update in progress")
            self.remote_id = remote.id if remote is not None else None
            self.accepted = True
            # the requests of the dispatch are done: recording it needs no gate
            self._release_gate()
            # when the install was sent: the appliance's timeline starts there, whatever
            # delayed this process in reading the answer
            self.accepted_mono = sent
            failpoints.hit("after_install_sent")
            await self._to(
                "INSTALLING",
                {"remote_task_id": self.remote_id, "answer": str(answer)},
                remote_task_id=self.remote_id, from_version=self.from_version,
                accepted_at=_now(),
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
        # 401, 403 and 404 keep the orchestrator's own code whatever the appliance calls
        # them (failures group by code across appliance models); the appliance's code is
        # kept in the message. Other refusals carry the appliance's own code.
        default_code, human = reasons.get(exc.kind, (exc.kind.upper(), what))
        message = getattr(exc, "message", None)
        said = " ".join(part for part in (f"[{code}]" if code else "", message or "") if part)
        text = f"{what}: {human}" + (f" - appliance says: {said}" if said else "")
        await self._finish("FAILED", default_code if exc.kind in reasons else code or default_code,
                           text, from_version=self.from_version)

    # ------------------------------------------------------------------ a lost answer
    async def _investigate(self) -> bool:
        """The install may have started (its answer was lost, or this process died after
        sending it): gather evidence and ask `outcome.after_lost_answer`. The install is
        sent again only on positive evidence that none started; True once INSTALLING is
        recorded (an install is followed), False when the task was settled or sent back."""
        client = self._client()
        started = time.monotonic()
        while True:
            await self._check_timeout("looking for the install whose answer was lost")
            if self.state == "TIMED_OUT":
                return False
            failed = False
            version: str | None = None
            listing: Listing | None = None
            try:
                info = await self._bounded(client.get_appliance(retries=0))
                version = info.appliance_version
            except ApplianceError:
                failed = True
            try:
                listed = await self._bounded(client.list_tasks(
                    sort_by="start_time", order_by="desc", limit=50, retries=0))
                # a pre-flight's retrieve-updates task is never our install
                checks = await preflight_task_ids(self.ctx.pool, self.task.appliance_id)
                listing = listing_of(
                    [(t.id, t.raw_status or str(t.status), t.start_time) for t in listed
                     if t.id not in checks],
                    self.sent_wall or _now(),
                )
            except ApplianceError:
                failed = True
            answered = (not failed and self.logins_at_send is not None
                        and client.logins == self.logins_at_send)
            verdict = after_lost_answer(
                target=self.version, from_version=self.from_version, version=version,
                listing=listing, answered_throughout=answered,
            )
            log.info("install_evidence", action=str(verdict.action), reason=verdict.reason,
                     remote_task_id=verdict.task_id)
            if verdict.action == LostAction.RESEND:
                await self._retry_later(f"install answer lost; {verdict.reason}: sent again")
                return False
            if verdict.action == LostAction.LOOK_AGAIN and \
                    time.monotonic() - started < self.strategy.reboot_grace:
                await self._pause(self._outage_poll(time.monotonic() - started))
                continue
            # ADOPT, FOLLOW, or no evidence for a whole reboot_grace: follow the install
            self.remote_id = verdict.task_id
            self.accepted = verdict.action == LostAction.ADOPT
            self.accepted_mono = self.accepted_mono or time.monotonic()
            if self.state == "DISPATCHING":
                # accepted_at only when the appliance acknowledged it (a running task found):
                # a later verdict tells "did not apply" from "may never have started" by it
                acknowledged: dict[str, Any] = {"accepted_at": _now()} if self.accepted else {}
                await self._to(
                    "INSTALLING",
                    {"remote_task_id": self.remote_id, "evidence": verdict.reason},
                    remote_task_id=self.remote_id, from_version=self.from_version,
                    **acknowledged,
                )
            return True

    # ------------------------------------------------------------------ reconcile
    async def _reconcile(self) -> None:
        """A reclaimed task: ask the appliance before doing anything (docs/outcomes.md)."""
        log.info("task_reconcile", state=self.state, remote_task_id=self.remote_id,
                 install_sent=self.task.install_sent_at is not None)
        if self.state == "INSTALLING" and self.remote_id:
            await self._monitor()
            return
        if self.state == "VERIFYING":
            await self._verify()
            return
        if self.state == "DISPATCHING" and self.task.install_sent_at is None:
            # the guard before the POST never passed for this claim: nothing was sent
            await self._dispatch()
            return
        # an install may have been sent (DISPATCHING after the guard, or INSTALLING with
        # no task id): the lost-answer rules decide; the previous owner's session history
        # is unknown, so the evidence can never be "answered throughout": never resent
        self.from_version = self.from_version or self.task.from_version
        self.sent_wall = self.task.install_sent_at
        self.logins_at_send = None
        if await self._investigate():
            await self._monitor()

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

    def _version_seen(self, client: ApplianceClient, version: str) -> None:
        """The appliance reports `version` after the install: another version than before
        it proves that it restarted, which ended the sessions forgotten on the way
        (`ApplianceClient.restart_proven`); otherwise they are logged out at the end."""
        before = self.from_version or self.task.from_version
        if before is not None and not same_version(version, before):
            client.restart_proven()

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
                if signals_restart(exc) and not isinstance(exc, Unauthorized):
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
        end = self.install_end if self.install_end is not None else time.monotonic()
        first, step, scout = self._probe_plan()
        # the restart ends the session: log in at the first probe instead of meeting a 401
        # (once: the session of a probe that found the install still running is kept, and
        # a later restart shows as its 401)
        if not self.session_reset:
            client.forget_session()
            self.session_reset = True
        await self._pause(end + first - time.monotonic())
        down_since: float | None = None
        while True:
            await self._check_timeout("waiting for the appliance to answer after the install")
            if self.state == "TIMED_OUT":
                return True
            back, problem = await self._probe(client, end, scout)
            if back:
                return True
            if problem is not None:
                now = time.monotonic()
                down_since = down_since or now
                if await self._down_past_grace(problem, end, down_since, now):
                    return True
                await self._pause(step if scout else
                                  max(step, self._outage_poll(now - down_since)))
                continue
            settled = await self._install_after_return(client)
            if settled is not None:
                return settled
            down_since = down_since or time.monotonic()  # going down right now: keep probing
            await self._pause(step)

    def _probe_plan(self) -> tuple[float, float, bool]:
        """(first probe after the install's end, step between probes, whether to measure
        when the appliance answers again), from the returns observed so far."""
        ctx = self.ctx
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
        return first, step, scout

    async def _probe(
        self, client: ApplianceClient, end: float, scout: bool
    ) -> tuple[bool, ApplianceError | None]:
        """One probe (`GET /appliance`): (back on the target version, the task settled here
        or handed to verification; the error when the appliance did not answer)."""
        ctx = self.ctx
        sent = time.monotonic()  # what happened on the appliance, not when we read it
        error: ApplianceError | None = None
        info: ApplianceInfo | None = None
        confirmed, reconfigure = False, None
        async with self._gate():
            try:
                info = await self._bounded(client.get_appliance(retries=0))
            except ApplianceError as failed:
                error = failed
            else:
                self._version_seen(client, info.appliance_version)
            if info is not None and same_version(info.appliance_version, self.version):
                if scout:
                    ctx.returns.add(sent - end)
                if self.saw_outage:
                    ctx.reboot_times.add(sent - (self.outage_mono or end))
                confirmed, reconfigure = await self._confirm()
        if confirmed:  # recorded outside the gate: no appliance request in it
            assert info is not None
            await self._succeeded(info.appliance_version, reconfigure)
        if info is not None and same_version(info.appliance_version, self.version):
            if not confirmed:  # services still starting: the verification loop decides
                if self.state == "INSTALLING":
                    await self._to("VERIFYING", {"reason": "back up on the target version"},
                                   progress=100)
                await self._verify(settle=False)
            return True, None
        if error is not None or info is None:
            return False, error or ApplianceError(self.task.appliance, "no answer")
        return False, None

    async def _down_past_grace(
        self, problem: ApplianceError, end: float, down_since: float, now: float
    ) -> bool:
        """The appliance did not answer a probe: note a restart if the error says so; True
        once it stayed unanswerable past reboot_grace (the task ended TIMED_OUT)."""
        if signals_restart(problem):
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
        return False

    async def _install_after_return(self, client: ApplianceClient) -> bool | None:
        """Up on another version: the install still runs, failed, or restarts later; ask
        the install task. True: settled (or handed to verification); False: still running,
        follow it again; None: no answer (going down right now: keep probing)."""
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
            return None
        self.looked = True  # from now on its end comes from the task, not the usual time
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
        """Prove the outcome from what the appliance reports (`outcome.judge` over a
        `Watch`): the target version with the key services up is success; the old version
        is a failure only once it stayed stable, services up and no install running, for
        the confirmation period; a third version fails on its own code. `settle`: the
        appliance may be restarting right now, so the first look waits for the usual
        restart time."""
        client = self._client()
        watch = self._watch()
        verify_started = time.monotonic()
        outage_since: float | None = None
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
                sign = signals_restart(exc)
                self.saw_outage = self.saw_outage or sign
                # for the stability of the old version, a restart shows as connections
                # refused or reset, or a forgotten session; a lone 503 between good answers
                # is a flaky service (a reboot in 503 mode ends on a version anyway)
                sign = sign and not isinstance(exc, ServiceUnavailable)
                outage_since = outage_since or now
                watch = outcome.saw_no_answer(watch, now, restart_sign=sign)
            else:
                if outage_since is not None and self.saw_outage:
                    self.ctx.reboot_times.add(now - (self.outage_mono or verify_started))
                outage_since = None
                self._version_seen(client, info.appliance_version)
                up = not missing_services(self.strategy.verify_services, running)
                watch = outcome.saw_version(watch, now, info.appliance_version, up)
                if not same_version(info.appliance_version, self.version) and up:
                    watch = await self._look_for_running_install(watch, now)
            self.watch = watch
            verdict = outcome.judge(watch, time.monotonic())
            if verdict.outcome == Outcome.SUCCEEDED:
                await self._succeeded_version(client, verdict.final_version or self.version)
                return
            if verdict.outcome == Outcome.WAIT:
                await self._pause(self._outage_poll(0 if outage_since is None
                                                    else now - outage_since))
                continue
            if verdict.error_code == "INSTALL_ERROR" and \
                    self.task.attempt <= self.strategy.install_retries:
                await self._retry_after_install_error(verdict.message or "install failed")
                return
            state = "TIMED_OUT" if verdict.outcome == Outcome.TIMED_OUT else "FAILED"
            fields: dict[str, Any] = {"from_version": self.from_version}
            if verdict.final_version is not None:
                fields["final_version"] = verdict.final_version
            await self._finish(state, verdict.error_code, verdict.message, **fields)
            return

    def _watch(self) -> outcome.Watch:
        """The evidence gathered so far about this install (created at the first look)."""
        if self.watch is None:
            observed = self.ctx.reboot_times.expected() if self.ctx.reboot_times.samples \
                else None
            self.watch = outcome.start_watch(
                target=self.version, from_version=self.from_version,
                accepted=self.accepted or bool(self.remote_id),
                reboot_grace=self.strategy.reboot_grace,
                confirm=outcome.confirmation_period(self.strategy.reboot_grace, observed),
                outage_seen=self.saw_outage,
            )
        return self.watch

    async def _look_for_running_install(self, watch: outcome.Watch, now: float) -> outcome.Watch:
        """Up, not on the target: is an install still running? The followed task when it
        is known (ERROR there is the install's failure), else the task list. A list that
        cannot be read tells nothing (never "no install")."""
        client = self._client()
        if self.remote_id:
            try:
                remote = await self._bounded(client.get_task(self.remote_id, retries=0))
            except ApplianceError:
                pass  # forgotten (404 after a restart) or unreadable: the list tells
            else:
                if remote.status == TaskStatus.ERROR:
                    return outcome.saw_task_error(
                        watch, remote.error_message or "install task ended ERROR")
                if remote.status in (TaskStatus.QUEUED, TaskStatus.RUNNING,
                                     TaskStatus.UNKNOWN):
                    return outcome.saw_tasks(watch, now, running=True)
        try:
            listed = await self._bounded(client.list_tasks(
                sort_by="start_time", order_by="desc", limit=50, retries=0))
        except ApplianceError:
            return watch
        running = any(t.status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.UNKNOWN)
                      for t in listed)
        return outcome.saw_tasks(watch, now, running=running)

    async def _retry_after_install_error(self, message: str) -> None:
        """The install ended in ERROR and the strategy's install_retries allow another."""
        delay = 5.0 * random.uniform(0.5, 1.0)
        if self.state == "VERIFYING":
            await self._finish("FAILED", "INSTALL_ERROR", message,
                               from_version=self.from_version)
            return
        await self._to(
            "PENDING",
            {"reason": "install task ended in error; retrying (install_retries)",
             "error_code": "INSTALL_ERROR", "message": message},
            not_before=_now() + timedelta(seconds=delay),
        )

    async def _services(self, client: ApplianceClient) -> dict[str, bool]:
        services = await client.get_services(retries=0)
        return {s.id: bool(s.is_running) for s in services}

    async def _reconfigure_required(self, client: ApplianceClient) -> bool | None:
        try:
            return await self._bounded(client.reconfigure_required())
        except (ApplianceError, DeadlinePassed):
            return None

    async def _succeeded_version(self, client: ApplianceClient, version: str) -> None:
        await self._succeeded(version, await self._reconfigure_required(client))

    async def _succeeded(self, version: str, reconfigure: bool | None) -> None:
        if self.gates.active:
            await self._health_gates(version, reconfigure)
            return
        fields: dict[str, Any] = {
            "final_version": version, "reconfigure_required": reconfigure,
            "from_version": self.from_version, "progress": 100,
        }
        if self.state == "INSTALLING":  # found back at the first look: both steps at once
            await self._to("SUCCEEDED", {}, via="VERIFYING",
                           via_detail={"reason": "back up on the target version"}, **fields)
            return
        await self._finish("SUCCEEDED", None, None, **fields)

    # ------------------------------------------------------------------ health gates
    def _probe_url(self) -> str:
        """The strategy's probe URL for this appliance, once it passes the target policy
        (ValueError naming the problem; the query is never shown)."""
        assert self.gates.probe_url is not None
        host = url_host(self.task.base_url)
        url = gates.expand_probe_url(self.gates.probe_url, name=self.task.appliance, host=host)
        return gates.check_probe_url(url, self.ctx.target_policy)

    async def _health_gates(self, version: str, reconfigure: bool | None) -> None:
        """The version is proven: check the strategy's health gates (`gates.judge_gates`)
        until they pass (SUCCEEDED) or one fails (FAILED with its code; TIMED_OUT when the
        appliance stops answering before the soak, or task_timeout ends). The task is
        VERIFYING meanwhile (DISPATCHING for an earlier attempt's install found applied)."""
        spec = self.gates
        self._release_gate()
        url: str | None = None
        refused: str | None = None
        if spec.probe_url:
            try:
                url = self._probe_url()
            except ValueError as exc:
                refused = str(exc)
            else:
                spec = replace(spec, probe_url=url)  # this appliance's
        if self.state == "INSTALLING":
            await self._to("VERIFYING", {"reason": "back up on the target version; health "
                                                   "gates", "gates": spec.describe()},
                           progress=100)
        else:
            log.info("health_gates", state=self.state, gates=spec.describe())
        client = self._client()
        watch = gates.start_gates(self.version, time.monotonic())
        while True:
            await self._check_timeout("health gates")
            if self.state == "TIMED_OUT":
                return
            look = await self._gate_look(client, url, refused)
            watch, verdict = gates.judge_gates(spec, watch, look)
            if verdict.outcome != gates.GateOutcome.WAIT:
                break
            await self._pause(verdict.wait)
        fields: dict[str, Any] = {
            "final_version": verdict.final_version or version,
            "from_version": self.from_version, "progress": 100,
        }
        log.info("health_gates_done", outcome=str(verdict.outcome),
                 error_code=verdict.error_code, seen=watch.seen())
        if verdict.outcome == gates.GateOutcome.PASSED:
            if spec.soak > 0:  # the soak took a while: what does the appliance say now
                reconfigure = await self._reconfigure_required(client)
            await self._to("SUCCEEDED", {"gates": watch.seen()},
                           reconfigure_required=reconfigure, **fields)
            return
        state = "TIMED_OUT" if verdict.outcome == gates.GateOutcome.TIMED_OUT else "FAILED"
        await self._to(
            state, {"error_code": verdict.error_code, "message": verdict.message,
                    "gates": watch.seen()},
            error_code=verdict.error_code, error_message=verdict.message, **fields)

    async def _gate_look(
        self, client: ApplianceClient, url: str | None, refused: str | None
    ) -> gates.Look:
        """One look for the health gates: the version and the services (the client's usual
        retries), then one try of the probe."""
        at = time.monotonic()
        try:
            info = await self._bounded(client.get_appliance())
            services = await self._bounded(client.get_services())
        except ApplianceError as exc:
            return gates.Look(at=at, version=None, error=str(exc))
        running = {s.id: bool(s.is_running) for s in services}
        probe: gates.ProbeResult | None = None
        if refused is not None:
            probe = gates.ProbeResult(None, error=refused)
        elif url is not None:
            probe = await self._bounded(http_probe(
                self.ctx.http, client.target, url, seconds=self.gates.probe_timeout))
        return gates.Look(at=at, version=info.appliance_version, running=running, probe=probe)
