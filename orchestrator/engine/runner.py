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
import random
import time
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
from orchestrator.store.tasks import ClaimedTask

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
    min_poll: float = 0.5
    max_poll: float = 15.0
    db_retry_deadline: float = 600.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    on_event: Callable[[str, dict[str, Any]], None] | None = None


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
        self.accepted_mono: float | None = None
        self.saw_outage = False
        self.session_reset = False
        self.outage_mono: float | None = None
        self.client: ApplianceClient | None = None

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

    async def _to(self, to_state: str, detail: dict[str, Any] | None = None, **fields: Any) -> None:
        """One guarded transition; waits out a database outage (state is kept in memory)."""
        ok = await self._db(to_state, lambda conn: task_store.transition(
            conn, task_id=self.task.id, owner=self.ctx.owner,
            from_state=self.state, to_state=to_state, detail=detail, **fields,
        ))
        if not ok:
            raise TaskLost()
        log.info("task_transition", from_state=self.state, to_state=to_state,
                 **{k: v for k, v in (detail or {}).items() if k != "message"})
        self.state = to_state
        if self.ctx.on_event:
            self.ctx.on_event(to_state, {"task": self.task.id, "rollout": self.task.rollout_id})

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
        return (self.deadline - _now()).total_seconds()

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
    async def _dispatch(self) -> None:
        client = self._client()
        try:
            info = await client.get_appliance()
        except (Unauthorized, Forbidden) as exc:
            await self._permanent(exc, "cannot read the appliance's version")
            return
        except ApplianceError as exc:
            await self._retry_later(f"appliance not ready for the install: {exc}", exc)
            return
        self.from_version = info.appliance_version
        if info.appliance_version == self.version:
            await self._finish(
                "SKIPPED", None, None, from_version=self.from_version,
                final_version=self.from_version,
            )
            return
        await self._record_from_version()
        await self._install(client)

    async def _record_from_version(self) -> None:
        """Write the version seen before the install, before sending it: reconciliation
        after a crash tells "we installed it" from "it was there already" by it."""
        await self._db("from_version", lambda conn: task_store.set_from_version(
            conn, task_id=self.task.id, owner=self.ctx.owner, version=self.from_version
        ))

    async def _install(self, client: ApplianceClient) -> None:
        self.critical = True
        try:
            try:
                remote = await client.install(self.version)
            except (Forbidden, NotFound, Unauthorized) as exc:
                await self._permanent(exc, f"install of {self.version} refused")
                return
            except BadRequest as exc:
                # perhaps our own earlier install (whose answer was lost) is still running
                adopted = await self._find_accepted_install(client)
                if adopted is None:
                    await self._permanent(exc, f"install of {self.version} refused")
                    return
                remote = adopted
            except ApplianceError as exc:
                if not exc.request_sent:
                    await self._retry_later(f"install not sent: {exc}", exc)
                    return
                # the answer was lost: the appliance may or may not have accepted it
                adopted = await self._find_accepted_install(client)
                if adopted is None:
                    await self._retry_later(f"install answer lost, none accepted: {exc}", exc)
                    return
                remote = adopted
            self.remote_id = remote.id
            self.accepted_mono = time.monotonic()
            failpoints.hit("after_install_sent")
            await self._to(
                "INSTALLING", {"remote_task_id": remote.id},
                remote_task_id=remote.id, from_version=self.from_version, accepted_at=_now(),
            )
        finally:
            self.critical = False
        await self._monitor()

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
            await self._install(client)
            return
        # INSTALLING without an id and nothing running: it went through or it did not
        await self._to("VERIFYING", {"reason": "reconcile: no install task found"})
        await self._verify()

    # ------------------------------------------------------------------ monitor
    def _poll_interval(self, progress: int | None) -> float:
        """When to look at the install task again: just after it is expected to end, so
        that a long install costs a few polls and its end is seen promptly. The expected
        end comes from the task's own progress when it reports some, else from the median
        install time observed so far; the first look comes early (within 2 s) to learn the
        task's pace."""
        elapsed = time.monotonic() - (self.accepted_mono or time.monotonic())
        if progress and 0 < progress < 100 and elapsed > 0:
            remaining = elapsed * (100 - progress) / progress
        elif elapsed < 0.1:
            if self.ctx.install_times.samples:  # the pace is known: look near the end
                return max(self.ctx.min_poll,
                           min(self.ctx.max_poll, 0.9 * self.ctx.install_times.expected()))
            return max(self.ctx.min_poll, min(2.0, self.ctx.install_times.expected() / 4))
        else:
            remaining = max(self.ctx.install_times.expected() - elapsed, 0.0)
        return max(self.ctx.min_poll, min(self.ctx.max_poll, remaining + 0.25))

    async def _monitor(self) -> None:
        client = self._client()
        outage_since: float | None = None
        if self.accepted_mono is None:
            self.accepted_mono = time.monotonic()
        await self._pause(self._poll_interval(None))
        while True:
            await self._check_timeout("installing")
            if self.state == "TIMED_OUT":
                return
            if not self.remote_id:
                break  # nothing to poll: prove the outcome from the version
            try:
                remote = await self._bounded(client.get_task(self.remote_id, retries=0))
            except NotFound:
                self.saw_outage = True  # tasks live in memory: the appliance restarted
                await self._to("VERIFYING", {"reason": "install task gone (404): restarted"})
                break
            except ApplianceError as exc:
                now = time.monotonic()
                outage_since = outage_since or now
                if _signals_restart(exc) and not isinstance(exc, Unauthorized):
                    first = not self.saw_outage
                    self.saw_outage = True
                    client.forget_session()  # the restart ends the session: log in anew
                    if first and self.ctx.reboot_times.samples:
                        # restarting: look again when restarts usually end
                        self.outage_mono = now
                        await self._pause(0.8 * self.ctx.reboot_times.expected())
                        if await self._back_on_target(client):
                            return
                        continue
                if now - outage_since > self.strategy.reboot_grace:
                    await self._finish(
                        "TIMED_OUT", "UNREACHABLE",
                        f"appliance unreachable for more than reboot_grace "
                        f"{self.strategy.reboot_grace:g} s during the install ({exc.kind})",
                    )
                    return
                await self._pause(self._outage_poll(now - outage_since))
                continue
            outage_since = None
            if remote.status in (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.UNKNOWN):
                self.ctx.progress.record(self.task.id, remote.progress)
                await self._pause(self._poll_interval(remote.progress))
                continue
            if remote.status == TaskStatus.SUCCESS:
                if remote.start_time and remote.complete_time:
                    # the appliance's own clock: exact, unlike when we happened to look
                    took = (remote.complete_time - remote.start_time).total_seconds()
                    if took > 0:
                        self.ctx.install_times.add(took)
                await self._to("VERIFYING", {"reason": "install task SUCCESS"}, progress=100)
                break
            message = remote.error_message or f"install task ended {remote.status}"
            if self.task.attempt <= self.strategy.install_retries:
                delay = 5.0 * random.uniform(0.5, 1.0)
                await self._to(
                    "PENDING",
                    {"reason": "install task ended in error; retrying (install_retries)",
                     "error_code": "INSTALL_ERROR", "message": message},
                    not_before=_now() + timedelta(seconds=delay),
                )
                return
            await self._finish("FAILED", "INSTALL_ERROR", message)
            return
        if self.state == "INSTALLING":
            await self._to("VERIFYING", {"reason": "no install task id to follow"})
        await self._verify()

    async def _back_on_target(self, client: ApplianceClient) -> bool:
        """After a restart: when the appliance answers on the target version, go straight to
        verification (the install task is gone with the restart anyway)."""
        try:
            info = await self._bounded(client.get_appliance(retries=0))
        except ApplianceError:
            return False
        if info.appliance_version != self.version:
            return False  # still installing (a service restart), or a silent failure
        if self.outage_mono is not None:
            self.ctx.reboot_times.add(time.monotonic() - self.outage_mono)
        self.session_reset = True
        await self._to("VERIFYING", {"reason": "back up on the target version"}, progress=100)
        await self._verify(known=info)
        return True

    def _outage_poll(self, outage_for: float) -> float:
        """Between looks at a restarting appliance: an eighth of the usual restart time
        observed so far, growing with the outage, at most 5 s."""
        base = self.ctx.reboot_times.expected() / 8
        return max(self.ctx.min_poll, min(5.0, base + outage_for / 20))

    # ------------------------------------------------------------------ verify
    async def _verify(self, known: ApplianceInfo | None = None) -> None:
        """Prove the outcome from the version the appliance reports."""
        client = self._client()
        if known is not None:
            # the version was just read: only the services and reconfigure remain
            try:
                running = await self._bounded(self._services(client))
                if not missing_services(self.strategy.verify_services, running):
                    await self._succeed(client, known)
                    return
            except ApplianceError:
                pass
        outage_since: float | None = None
        old_since: float | None = None
        target_since: float | None = None
        verify_started = time.monotonic()
        if self.saw_outage and self.ctx.reboot_times.samples:
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

    async def _succeed(self, client: ApplianceClient, info: ApplianceInfo) -> None:
        reconfigure: bool | None
        try:
            reconfigure = await self._bounded(client.reconfigure_required())
        except (ApplianceError, DeadlinePassed):
            reconfigure = None
        await self._finish(
            "SUCCEEDED", None, None, final_version=info.appliance_version,
            reconfigure_required=reconfigure, from_version=self.from_version, progress=100,
        )
