"""Pre-flight checks: ask every appliance of a rollout whether an install can work, without
installing anything (docs/preflight.md).

`check_appliance` asks one appliance (login, version, services, reconfigure-required,
repository, retrieve-updates followed to its result) through the engine's appliance client,
held for the check and released (logged out) after it, every call bounded by a per-request
timeout and the whole check by `check_timeout`; `domain.preflight.decide` judges the
answers. `execute_run` checks the appliances of one run under the rollout's limits
(`max_concurrency`, `per_site_concurrency`, the sites' fleet-wide `max_in_flight`: a check
takes the place an install would), all at once up to those limits, so a run lasts about as
long as its slowest checks; results are written in batches as they come, each write
renewing the run's lease. `AutoPreflight` is the engine's side: the automatic runs of the
strategy key `preflight` and the runs asked for through the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from orchestrator.appliance import (
    ApplianceClient,
    ApplianceError,
    ApplianceHttp,
    ApplianceTarget,
    CredentialsError,
)
from orchestrator.appliance.guard import TargetRefused, guarded_client
from orchestrator.domain.inventory import TargetPolicy
from orchestrator.domain.outcome import CLOCK_SKEW, same_version
from orchestrator.domain.planning import resolve_max_concurrency
from orchestrator.domain.preflight import Answers, CallError, Result, Verdict, decide
from orchestrator.domain.strategy import Strategy, StrategyError, parse_strategy
from orchestrator.logs import get_logger
from orchestrator.store import preflight as store
from orchestrator.store.db import DB_ERRORS
from orchestrator.store.preflight import PreflightRun, PreflightTarget, ResultRow

log = get_logger("orchestrator.engine.preflight")
_T = TypeVar("_T")

# seconds one appliance's whole check may take (its retrieve-updates task included)
CHECK_TIMEOUT = 60.0
# seconds one request of a check may take (at most the client's own request timeout)
REQUEST_TIMEOUT = 15.0
# results written per statement (and at least every lease / 3 seconds)
WRITE_BATCH = 500

Progress = Callable[[PreflightTarget, Verdict, int, int], None]


def _call_error(exc: Exception) -> CallError:
    if isinstance(exc, ApplianceError):
        return CallError(exc.kind, exc.detail, exc.status)
    if isinstance(exc, CredentialsError):
        return CallError("credentials_ref", str(exc))
    if isinstance(exc, TargetRefused):
        return CallError("target_refused", str(exc))
    return CallError("error", f"{type(exc).__name__}: {exc}")


# answers worth asking again at once (a GET is safe to repeat): an error status or a body
# that did not parse; how many times, and how long to wait before each
_AGAIN_KINDS = frozenset({"server_error", "service_unavailable", "malformed_response"})
_AGAIN = (0.1, 0.3, 0.6)
# bad answers in a row that end the following of the retrieve-updates task (an appliance
# that answers nothing but garbage is judged CHECK_INCOMPLETE at once, not at the deadline)
FOLLOW_ERRORS = 5


async def _again(call: Callable[[], Awaitable[_T]]) -> _T:
    """`call()`, asked again (up to len(_AGAIN) times) while it answers a 5xx or a body
    that does not parse: a storm of errors is told apart from a service that is down."""
    for pause in _AGAIN:
        try:
            return await call()
        except ApplianceError as exc:
            if exc.kind not in _AGAIN_KINDS:
                raise
        await asyncio.sleep(pause)
    return await call()


async def _ask(client: ApplianceClient, answers: Answers, per_request: float,
               stage: list[str]) -> None:
    """Fill `answers` from the appliance, one request at a time (one connection per check);
    `stage[0]` says what was being asked last."""
    timeout = per_request
    stage[0] = "login"
    try:
        await client.login(request_timeout=timeout)
    except ApplianceError as exc:
        answers.login_error = _call_error(exc)
        return
    stage[0] = "version"
    try:
        answers.version = (await _again(lambda: client.get_appliance(
            request_timeout=timeout))).appliance_version
    except ApplianceError as exc:
        answers.version_error = _call_error(exc)
        if exc.kind in ("unreachable", "timeout", "tls", "unauthorized", "forbidden"):
            return
    if answers.version is not None and same_version(answers.version, answers.target_version):
        return
    stage[0] = "checks"
    try:
        listed = await _again(lambda: client.get_services(request_timeout=timeout))
        answers.services = {s.id: bool(s.is_running) for s in listed}
    except ApplianceError as exc:
        answers.services_error = _call_error(exc)
    try:
        answers.reconfigure_required = await _again(
            lambda: client.reconfigure_required(request_timeout=timeout))
    except ApplianceError as exc:
        answers.reconfigure_error = _call_error(exc)
    try:
        answers.repository = await _again(lambda: client.get_repository(
            request_timeout=timeout))
    except ApplianceError as exc:
        answers.repository_error = _call_error(exc)
    await _retrieve(client, answers, timeout)


async def _retrieve(client: ApplianceClient, answers: Answers, per_request: float) -> None:
    """retrieve-updates, its task followed to its end (within the check's deadline)."""
    timeout = per_request
    try:
        task = await client.retrieve_updates(request_timeout=timeout)
    except ApplianceError as exc:
        answers.retrieve_error = _call_error(exc)
        return
    answers.retrieve_status = str(task.status)
    answers.retrieve_task_id = task.id
    delay = 0.05
    task_id = task.id
    errors = 0  # bad answers in a row while following the task
    while not task.status.is_terminal:
        if task_id is None:
            answers.retrieve_message = "its task has no id to follow"
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
        try:
            task = await client.get_task(task_id, request_timeout=timeout)
        except ApplianceError as exc:
            answers.retrieve_message = f"following its task: {exc.detail}"
            errors += 1
            if (exc.transient or exc.kind == "malformed_response") and errors < FOLLOW_ERRORS:
                continue  # a passing error: ask again
            return  # the check cannot conclude: CHECK_INCOMPLETE, not a wait to the deadline
        errors = 0
        answers.retrieve_status = str(task.status)
        answers.retrieve_message = None
    answers.retrieve_message = task.error_message
    answers.retrieve_result = task.result


async def check_appliance(
    http: ApplianceHttp, target: PreflightTarget, *, target_version: str,
    verify_services: tuple[str, ...], policy: TargetPolicy,
    check_timeout: float = CHECK_TIMEOUT, request_timeout: float | None = None,
) -> Verdict:
    """The verdict on one appliance. Never raises but for cancellation."""
    verdict, _ = await _check(http, target, target_version=target_version,
                              verify_services=verify_services, policy=policy,
                              check_timeout=check_timeout, request_timeout=request_timeout)
    return verdict


async def _check(
    http: ApplianceHttp, target: PreflightTarget, *, target_version: str,
    verify_services: tuple[str, ...], policy: TargetPolicy, check_timeout: float,
    request_timeout: float | None,
) -> tuple[Verdict, str | None]:
    """(the verdict, the id of the retrieve-updates task the check started)."""
    answers = Answers(target_version=target_version, verify_services=verify_services)
    try:
        client = guarded_client(http, ApplianceTarget(
            name=target.name, base_url=target.base_url,
            credentials_ref=target.credentials_ref, tls_ca_file=target.tls_ca_file,
            tls_thumbprint=target.tls_thumbprint,
        ), policy)
    except (CredentialsError, TargetRefused, ValueError) as exc:
        answers.login_error = _call_error(exc)
        return decide(answers), None
    timeout = min(request_timeout or REQUEST_TIMEOUT, http.request_timeout, check_timeout)
    stage = ["login"]
    try:
        async with http.using(client), asyncio.timeout(check_timeout):
            await _ask(client, answers, timeout, stage)
    except TimeoutError:
        answers.deadline_passed = True
        missing = CallError("deadline", f"no answer within {check_timeout:g} s")
        if stage[0] == "login" and answers.login_error is None:
            answers.login_error = missing
        elif stage[0] == "version" and answers.version is None:
            answers.version_error = answers.version_error or missing
    except Exception as exc:  # a bug's exception is one appliance's warning, not the run's end
        log.warning("preflight_check_failed", appliance=target.name, error=repr(exc))
        return Verdict(Result.WARN, "CHECK_INCOMPLETE",
                       f"the check failed: {type(exc).__name__}", answers.version), \
            answers.retrieve_task_id
    return decide(answers), answers.retrieve_task_id


def _limits(strategy: Strategy, targeted: int, sites: dict[str, int]
            ) -> tuple[int, Callable[[str], int | None]]:
    """(checks at once in all, checks at once per site): the rollout's limits."""
    overall = resolve_max_concurrency(strategy.max_concurrency, max(targeted, 1))
    per_site = strategy.per_site_concurrency

    def site_limit(site: str) -> int | None:
        limits = [n for n in (per_site, sites.get(site)) if n is not None]
        return min(limits) if limits else None

    return overall, site_limit


async def execute_run(
    pool: asyncpg.Pool, http: ApplianceHttp, run: PreflightRun, *, owner: str,
    policy: TargetPolicy, lease_seconds: float, on_progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
    check_timeout: float = CHECK_TIMEOUT, request_timeout: float | None = None,
) -> PreflightRun | None:
    """Check the appliances of `run` (owned by `owner`) and finish it; None when the run
    was taken over by another process meanwhile (its results are that one's to write)."""
    context = await store.run_context(pool, run.rollout_id)
    try:
        strategy = parse_strategy(context.strategy)
    except StrategyError:  # a stored strategy is valid; the defaults if it is not
        strategy = Strategy()
    targets = await store.targets(pool, run.rollout_id)
    if on_total is not None:
        on_total(len(targets))
    if not await store.set_total(pool, run, owner, len(targets)):
        return None
    sites = await store.site_limits(pool, sorted({t.site for t in targets}))
    overall, site_limit = _limits(strategy, context.targeted, sites)
    everyone = asyncio.Semaphore(overall)
    per_site: dict[str, asyncio.Semaphore] = {}
    for t in targets:
        limit = site_limit(t.site)
        if limit is not None and t.site not in per_site:
            per_site[t.site] = asyncio.Semaphore(limit)
    log.info("preflight_started", rollout=run.rollout_id, run=run.id, trigger=run.trigger,
             appliances=len(targets), concurrency=overall)
    counts: Counter[str] = Counter()
    pending: list[ResultRow] = []
    done = 0
    lost = asyncio.Event()
    interval = max(0.2, min(1.0, lease_seconds / 3))
    started = time.monotonic()

    async def flush() -> None:
        batch = list(pending)
        del pending[:len(batch)]
        if not await store.save_results(pool, run, owner, batch, done=done,
                                        lease_seconds=lease_seconds):
            lost.set()

    async def one(target: PreflightTarget) -> None:
        nonlocal done
        site = per_site.get(target.site)
        async with site if site is not None else contextlib.nullcontext():
            async with everyone:
                verdict, task_id = await _check(
                    http, target, target_version=context.target_version,
                    verify_services=strategy.verify_services, policy=policy,
                    check_timeout=check_timeout, request_timeout=request_timeout)
        done += 1
        counts[str(verdict.result)] += 1
        pending.append(ResultRow(target.appliance_id, str(verdict.result), verdict.code,
                                 verdict.message, verdict.current_version,
                                 datetime.now(UTC), task_id))
        if on_progress is not None:
            on_progress(target, verdict, done, len(targets))

    stop = asyncio.Event()

    async def writer() -> None:
        """Write what came every `interval` (renewing the lease), and once more at `stop`:
        never cancelled in the middle of a write, so no result taken is lost."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            await flush()
            if lost.is_set() or stop.is_set():
                return

    checks = [asyncio.create_task(one(t), name=f"preflight-{t.name}") for t in targets]
    keeper = asyncio.create_task(writer(), name=f"preflight-run-{run.id}")
    try:
        waiting: set[asyncio.Task[None]] = set(checks)
        while waiting and not lost.is_set():
            finished, waiting = await asyncio.wait(
                waiting | {keeper}, return_when=asyncio.FIRST_COMPLETED)
            waiting.discard(keeper)
            if keeper in finished:
                break  # lost, or a database error (raised below)
            if len(pending) >= WRITE_BATCH:
                await flush()
        stop.set()
        await keeper  # the last write; a database error ends the run here (raised)
    finally:
        for task in checks:
            task.cancel()
        if not keeper.done():
            keeper.cancel()  # (only when this run itself is cancelled)
        await asyncio.gather(*checks, keeper, return_exceptions=True)
    if lost.is_set():
        log.warning("preflight_lost", rollout=run.rollout_id, run=run.id)
        return None
    await flush()
    if lost.is_set():
        return None
    finished_run = await store.finish_run(pool, run, owner, counts=counts,
                                          leave_out=strategy.preflight == "required")
    if finished_run is not None:
        log.info("preflight_finished", rollout=run.rollout_id, run=run.id,
                 seconds=round(time.monotonic() - started, 3), left_out=finished_run.left_out,
                 **{r: counts.get(r, 0) for r in ("ok", "warn", "fail", "skip")})
    return finished_run


async def preflight_task_ids(pool: asyncpg.Pool, appliance_id: int) -> set[str]:
    """The retrieve-updates tasks pre-flights started on the appliance lately (within the
    runner's clock skew, twice over): a task runner weighing the evidence of a lost
    install answer leaves them out (they are never installs). Empty when the database
    cannot say (the runner then stays as careful as without them)."""
    try:
        return await store.retrieve_task_ids(pool, appliance_id,
                                             2 * CLOCK_SKEW.total_seconds())
    except DB_ERRORS as exc:
        log.warning("preflight_tasks_unread", appliance=appliance_id, error=repr(exc))
        return set()


async def release_run(pool: asyncpg.Pool, run: PreflightRun, owner: str) -> None:
    """Hand an unfinished run over at once (this process stops): best effort."""
    with contextlib.suppress(Exception):
        await store.release_run(pool, run, owner)


class AutoPreflight:
    """The engine's pre-flights: the automatic runs of the strategy key `preflight`
    (`warn`, `required`: when the rollout starts; `required`: again before the window a
    waiting rollout waits for), and the runs nobody works on (asked for through the API,
    or abandoned by a process that died). While a run of a rollout is unfinished the
    engine claims no task of it (`holds`): no install starts on an appliance that is
    being checked, and the first installs of a rollout wait for its start run."""

    def __init__(
        self, pool: asyncpg.Pool, http: ApplianceHttp, *, owner: str, policy: TargetPolicy,
        lease_seconds: float, wake: Callable[[], None],
        check_timeout: float = CHECK_TIMEOUT,
    ) -> None:
        self.pool = pool
        self.http = http
        self.owner = owner
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.wake = wake
        self.check_timeout = check_timeout
        self.running: dict[int, asyncio.Task[None]] = {}  # rollout id -> its run here
        self._runs: dict[int, PreflightRun] = {}  # rollout id -> the run this engine owns
        self._clear: set[int] = set()  # rollouts nothing holds until the next refresh
        self._openings: dict[int, datetime | None] = {}
        self._closing = False

    def refresh(self) -> None:
        """Something changed elsewhere (a NOTIFY, the poll interval): look again."""
        self._clear.clear()
        self._openings.clear()

    async def holds(
        self, conn: Any, rollout_id: int, state: str, strategy: Strategy, now: datetime,
        next_opening: Callable[[], Awaitable[datetime | None]],
    ) -> bool:
        """Whether the rollout must not claim now: a pre-flight of it runs (here or
        elsewhere), or one starts now (its start run; a `required` rollout's window run)."""
        if rollout_id in self.running:
            return True
        if rollout_id in self._clear:
            return False
        unfinished, start, last = await store.gate(conn, rollout_id)
        if unfinished is not None:
            return True
        mode = strategy.preflight
        if mode != "off" and start is None:
            self._spawn(rollout_id, "start", now, None)
            return True
        if mode == "required" and state == "WAITING_WINDOW":
            if rollout_id not in self._openings:
                self._openings[rollout_id] = await next_opening()
            opening = self._openings[rollout_id]
            if opening is None or opening <= now:
                return False  # (no opening ahead: an open window is the rollout's to use)
            due = opening - timedelta(seconds=strategy.preflight_lead_seconds)
            if now >= due and (last is None or last < due):
                self._spawn(rollout_id, "window", now, due)
                return True
            return False  # (not cached: the time to check comes)
        self._clear.add(rollout_id)
        return False

    async def pick_up(self) -> None:
        """Take the runs nobody works on (asked for through the API, or abandoned)."""
        if self._closing:
            return
        runs = await store.claim_unowned(self.pool, owner=self.owner,
                                         lease_seconds=self.lease_seconds, limit=10)
        for run in runs:
            if run.rollout_id in self.running:  # (cannot be: one unfinished run each)
                continue
            log.info("preflight_taken", rollout=run.rollout_id, run=run.id,
                     trigger=run.trigger)
            self._start(run.rollout_id, self._execute(run))

    def _spawn(self, rollout_id: int, trigger: str, as_of: datetime,
               fresh_since: datetime | None) -> None:
        if self._closing:
            return

        async def claim_and_run() -> None:
            run = await store.claim_automatic(
                self.pool, rollout_id, trigger, owner=self.owner,
                lease_seconds=self.lease_seconds, as_of=as_of, fresh_since=fresh_since)
            if run is None:
                return  # another engine runs it, or it ran
            await self._execute(run)

        self._start(rollout_id, claim_and_run())

    def _start(self, rollout_id: int, work: Awaitable[None]) -> None:
        async def wrapped() -> None:
            await work

        task = asyncio.create_task(wrapped(), name=f"preflight-{rollout_id}")
        self.running[rollout_id] = task

        def done(handle: asyncio.Task[None]) -> None:
            if self.running.get(rollout_id) is handle:
                del self.running[rollout_id]
            self._clear.discard(rollout_id)
            if not handle.cancelled() and handle.exception() is not None:
                log.error("preflight_failed", rollout=rollout_id,
                          error=repr(handle.exception()))
            self.wake()

        task.add_done_callback(done)

    async def _execute(self, run: PreflightRun) -> None:
        self._runs[run.rollout_id] = run
        try:
            await execute_run(self.pool, self.http, run, owner=self.owner,
                              policy=self.policy, lease_seconds=self.lease_seconds,
                              check_timeout=self.check_timeout)
        except asyncio.CancelledError:
            await release_run(self.pool, run, self.owner)
            raise
        except Exception:
            await release_run(self.pool, run, self.owner)
            raise
        finally:
            self._runs.pop(run.rollout_id, None)

    async def aclose(self) -> None:
        """Stop the runs of this engine; each is handed over (another engine, or this one
        when it runs again, does it again)."""
        self._closing = True
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._closing = False  # (the engine may run again)


__all__ = [
    "CHECK_TIMEOUT",
    "AutoPreflight",
    "check_appliance",
    "execute_run",
    "preflight_task_ids",
]
