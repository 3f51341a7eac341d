"""Prometheus metrics of one orchestrator process (`GET /metrics`).

From the database, at each scrape (every engine's work, so any replica answers alike):
tasks of unfinished rollouts by state, installs in flight, rollouts by state.
From this process: API requests and their latency, SSE clients, event-loop lag, and, when
the engine runs in this process, its counters (tasks claimed and reclaimed, ticks, tasks
running), task transitions, install and reboot durations, the time of a scheduling pass
(claim latency) and the appliance API's requests, retries and errors by kind.

The database figures are read at most once per `api_metrics_cache_seconds` (default 5 s):
scrapes within that time, and scrapes that arrive while a reading runs, share one reading,
so a flood of unauthenticated scrapes costs the database nothing more. With
`api_metrics_token` set, /metrics requires `Authorization: Bearer <that token>` (401
otherwise); the token is compared in constant time and never logged.

The engine is observed through what it already exposes (`loop_lag_observers`, the
`on_event` callback of its runner context, its `InstallTimes` recorders, its counters);
this module never imports the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, Final, Protocol

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.api.problems import FieldError, Problem
from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.states import RolloutState, TaskState
from orchestrator.logs import get_logger
from orchestrator.store import engines as engine_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.db import DB_ERRORS

log = get_logger("orchestrator.api.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TASK_STATES: Final = tuple(str(s) for s in TaskState)
ROLLOUT_STATES: Final = tuple(str(s) for s in RolloutState)
DURATION_BUCKETS: Final = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, float("inf"))
FAST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                       5.0, float("inf"))
METRICS_REALM: Final = 'Bearer realm="orchestrator-metrics"'
TOKEN_REREAD: Final = 60.0  # seconds an env:/file: metrics token is used before re-reading


class MetricsTokenError(OrchestratorError):
    """The metrics token reference cannot be resolved; the message never holds a secret."""


def resolve_metrics_token(reference: str, environ: Mapping[str, str] | None = None) -> str:
    """`env:NAME` (the variable's value), `file:PATH` (the file's first line), or the token
    itself."""
    scheme, sep, rest = reference.partition(":")
    if sep and scheme == "env":
        value = (os.environ if environ is None else environ).get(rest, "").strip()
        if not value:
            raise MetricsTokenError(f"api_metrics_token {reference}: the environment "
                                    f"variable {rest} is not set or empty")
        return value
    if sep and scheme == "file":
        try:
            with open(os.path.expanduser(rest), encoding="utf-8") as fh:
                value = fh.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise MetricsTokenError(f"api_metrics_token {reference}: cannot be read "
                                    f"({type(exc).__name__})") from None
        if not value:
            raise MetricsTokenError(f"api_metrics_token {reference}: the first line is empty")
        return value
    return reference


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class HttpView(Protocol):
    """What metrics read from an ApplianceHttp."""

    @property
    def requests(self) -> int: ...

    @property
    def retried(self) -> int: ...

    @property
    def errors_by_kind(self) -> Mapping[str, int]: ...

    @property
    def cached_clients(self) -> int: ...

    @property
    def queued_logouts(self) -> int: ...


class _EngineCollector(Collector):
    """Counters read from the in-process engine and its appliance client at scrape time."""

    def __init__(self) -> None:
        self.engine: Any = None
        self.http: HttpView | None = None

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        if engine is not None:
            for name, attr, text in (
                ("orchestrator_engine_claimed", "claimed", "Tasks this engine claimed."),
                ("orchestrator_engine_reclaimed", "reclaimed",
                 "Tasks this engine reclaimed after their lease expired."),
                ("orchestrator_engine_ticks", "ticks", "Scheduling passes of this engine."),
            ):
                yield CounterMetricFamily(name, text, value=float(getattr(engine, attr, 0)))
            yield GaugeMetricFamily("orchestrator_engine_tasks_running",
                                    "Tasks this engine process drives now.",
                                    value=float(len(getattr(engine, "runners", {}))))
            yield GaugeMetricFamily("orchestrator_engine_max_loop_lag_seconds",
                                    "Largest event-loop lag the engine has seen.",
                                    value=float(getattr(engine, "max_loop_lag", 0.0)))
        http = self.http
        if http is not None:
            yield CounterMetricFamily("orchestrator_appliance_api_requests",
                                      "Requests sent to appliances.", value=float(http.requests))
            yield GaugeMetricFamily("orchestrator_appliance_clients_cached",
                                    "Appliance clients (and their sessions) this process "
                                    "keeps now: one per appliance being worked on.",
                                    value=float(http.cached_clients))
            yield GaugeMetricFamily("orchestrator_appliance_logouts_queued",
                                    "Logouts of finished tasks' appliance sessions queued "
                                    "and not sent yet.",
                                    value=float(http.queued_logouts))
            yield CounterMetricFamily("orchestrator_appliance_api_retries",
                                      "Appliance requests retried after a transient error.",
                                      value=float(http.retried))
            errors = CounterMetricFamily("orchestrator_appliance_api_errors",
                                         "Failed appliance API calls by kind of error.",
                                         labels=["kind"])
            for kind, count in sorted(dict(http.errors_by_kind).items()):  # another thread's
                errors.add_metric([kind], float(count))
            yield errors


class ApiMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("orchestrator_api_requests", "API requests answered.",
                                ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram("orchestrator_api_request_duration_seconds",
                                         "Time to answer an API request (SSE: to its start).",
                                         ["route"], buckets=FAST_BUCKETS, registry=r)
        self.sse_clients = Gauge("orchestrator_api_sse_clients",
                                 "Open server-sent-event streams.", registry=r)
        self.tasks = Gauge("orchestrator_tasks",
                           "Tasks of rollouts that have not finished, by state.",
                           ["state"], registry=r)
        self.in_flight = Gauge("orchestrator_installs_in_flight",
                               "Tasks in DISPATCHING, INSTALLING or VERIFYING (all engines).",
                               registry=r)
        self.held_slots = Gauge(
            "orchestrator_held_slots",
            "Timed-out installs that still count as in flight until their appliance is seen "
            "idle (orchestrator sites held).", registry=r)
        self.rollouts = Gauge("orchestrator_rollouts", "Rollouts by state.", ["state"],
                              registry=r)
        self.database_up = Gauge("orchestrator_database_up",
                                 "1 when the last scrape could read the database.", registry=r)
        self.engines_live = Gauge(
            "orchestrator_engines_live",
            "Engines (every replica) that sent a heartbeat within their period, as /readyz "
            "and `rollout show` count them.", registry=r)
        self.webhook_deliveries = Gauge(
            "orchestrator_webhook_deliveries",
            "Webhook deliveries waiting to be delivered (pending) and given up (failed; "
            "`orchestrator webhooks redeliver`).", ["state"], registry=r)
        self.transitions = Counter("orchestrator_task_transitions",
                                   "Task transitions made by this process's engine.",
                                   ["to_state"], registry=r)
        self.install_seconds = Histogram(
            "orchestrator_install_duration_seconds",
            "Install task durations (the appliance's own start and completion times).",
            buckets=DURATION_BUCKETS, registry=r)
        self.reboot_seconds = Histogram(
            "orchestrator_reboot_duration_seconds",
            "Time appliances stayed unreachable or restarting during an install.",
            buckets=DURATION_BUCKETS, registry=r)
        self.claim_seconds = Histogram(
            "orchestrator_claim_latency_seconds",
            "Duration of one engine scheduling pass: lease reclaim, then per active rollout "
            "the gate and the claim under the limits.", buckets=FAST_BUCKETS, registry=r)
        self.loop_lag = Histogram("orchestrator_event_loop_lag_seconds",
                                  "How late the event loop wakes a 100 ms sleeper.",
                                  buckets=FAST_BUCKETS, registry=r)
        self._engine = _EngineCollector()
        r.register(self._engine)
        self._lag_task: asyncio.Task[None] | None = None
        self.database_reads = 0  # readings of the database figures (one is 4 queries)
        self._read_at: float | None = None  # loop time of the last reading
        self._reading: asyncio.Future[None] | None = None  # the reading under way
        self._token: tuple[str, float, bytes] | None = None  # (reference, read at, digest)

    # ------------------------------------------------------------------ engine hooks
    def attach(self, engine: Any = None, http: HttpView | None = None) -> None:
        """Observe an engine (and its appliance client) running in this process."""
        self._engine.http = http
        if engine is None:
            return
        self._engine.engine = engine
        if self._engine.http is None:
            self._engine.http = getattr(engine, "http", None)
        engine.loop_lag_observers.append(self.loop_lag.observe)
        ctx = engine.ctx
        previous = ctx.on_event

        def on_event(to_state: str, detail: dict[str, Any]) -> None:
            self.transitions.labels(to_state).inc()
            if previous is not None:
                previous(to_state, detail)

        ctx.on_event = on_event
        _observe_adds(ctx.install_times, self.install_seconds.observe)
        _observe_adds(ctx.reboot_times, self.reboot_seconds.observe)
        tick: Callable[[], Awaitable[bool]] = engine.tick
        histogram = self.claim_seconds

        async def timed_tick() -> bool:
            started = time.perf_counter()
            try:
                return await tick()
            finally:
                histogram.observe(time.perf_counter() - started)

        engine.tick = timed_tick

    def start_loop_monitor(self) -> None:
        """Without an engine in the process, measure the event-loop lag here."""
        if self._engine.engine is None and self._lag_task is None:
            self._lag_task = asyncio.create_task(self._loop_lag_monitor(), name="loop-lag")

    @property
    def loop_monitor(self) -> asyncio.Task[None] | None:
        """The loop-lag monitor's task while it runs (`orchestrator serve` supervises it:
        it runs until `stop()`, and its end before that stops the process)."""
        return self._lag_task

    async def stop(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            # its failure, if it failed, is its supervisor's to report: not the shutdown's
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None

    async def _loop_lag_monitor(self, interval: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - before - interval))

    # ------------------------------------------------------------------ scrape
    def authorize(self, request: web.Request, reference: str | None) -> None:
        """Raise 401 unless `request` carries the metrics token (no-op when there is none);
        503 when the token's reference cannot be resolved (never open by mistake)."""
        if reference is None:
            return
        now = time.monotonic()
        cached = self._token
        if cached is None or cached[0] != reference or now - cached[1] >= TOKEN_REREAD:
            try:
                cached = (reference, now, _digest(resolve_metrics_token(reference)))
            except MetricsTokenError as exc:
                log.error("metrics_token_unavailable", reason=str(exc))
                raise Problem(503, f"{exc}; /metrics stays closed until it can be read",
                              headers={"Retry-After": "60"}) from None
            self._token = cached
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                _digest(given.strip()), cached[2]):
            detail = "/metrics requires Authorization: Bearer <the metrics token>"
            raise Problem(401, detail, headers={"WWW-Authenticate": METRICS_REALM},
                          errors=[FieldError("Authorization", detail)])

    async def refresh(self, pool: asyncpg.Pool, max_age: float = 0.0) -> None:
        """Read the database figures unless a reading is younger than `max_age` seconds;
        callers that come while a reading runs wait for that one (one reading for all)."""
        loop = asyncio.get_running_loop()
        if self._read_at is not None and loop.time() - self._read_at < max_age:
            return
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read(pool))
        # shielded: a scraper that goes away does not cancel the reading the others wait for
        await asyncio.shield(self._reading)

    async def _read(self, pool: asyncpg.Pool) -> None:
        try:
            await self._read_database(pool)
        finally:
            self._read_at = asyncio.get_running_loop().time()
            self._reading = None

    async def _read_database(self, pool: asyncpg.Pool) -> None:
        self.database_reads += 1
        try:
            async with pool.acquire() as conn:
                by_state = await task_store.task_counts_of_unfinished_rollouts(conn)
                in_flight = await task_store.count_in_flight(conn)
                held = await task_store.count_held_slots(conn)
                by_rollout = await rollout_store.rollouts_by_state(conn)
                engines = await engine_store.engine_status(conn)
                deliveries = await webhook_store.unsettled_counts(conn)
        except DB_ERRORS as exc:  # the database is down, or refuses the statements
            log.warning("metrics_database_unavailable", error=type(exc).__name__)
            self.database_up.set(0)
            return
        self.database_up.set(1)
        for state in TASK_STATES:
            self.tasks.labels(state).set(by_state.get(state, 0))
        self.in_flight.set(in_flight)
        self.held_slots.set(held)
        for state in ROLLOUT_STATES:
            self.rollouts.labels(state).set(by_rollout.get(state, 0))
        self.engines_live.set(engines.live)
        for state in webhook_store.UNSETTLED_STATES:
            self.webhook_deliveries.labels(state).set(deliveries.get(state, 0))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ middleware
    def middleware(self) -> Any:
        requests = self.requests
        seconds = self.request_seconds

        @web.middleware
        async def measure(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                route = _route_of(request)
                requests.labels(request.method, route, str(status)).inc()
                seconds.labels(route).observe(time.perf_counter() - started)

        return measure


def _route_of(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    return str(resource.canonical)


def _observe_adds(recorder: Any, observe: Callable[[float], None]) -> None:
    """Make `recorder.add(seconds)` (the engine's InstallTimes) also feed a histogram."""
    add = recorder.add

    def observed(seconds: float) -> None:
        observe(seconds)
        add(seconds)

    recorder.add = observed
