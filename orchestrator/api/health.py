"""`/healthz` (the process answers), `/readyz` (database reachable and migrated; the
process's own engine, when it runs one, live; whether any engine is live) and `/metrics`
(Prometheus text). None of them needs an API token; /metrics needs the metrics token when
`api_metrics_token` is set."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from orchestrator import __version__
from orchestrator.api.metrics import CONTENT_TYPE
from orchestrator.api.problems import Problem
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.store import engines as engine_store
from orchestrator.store import migrations


async def healthz(call: Call) -> web.StreamResponse:
    return json_response({"status": "ok", "version": __version__})


async def readyz(call: Call) -> web.StreamResponse:
    try:
        async with call.pool.acquire(timeout=5) as conn:
            await migrations.ensure_current(conn)  # type: ignore[arg-type]
            status = await engine_store.engine_status(conn)
            own = call.state.engine
            not_live = (await engine_store.not_live_reason(conn, own.owner)
                        if own is not None else None)
    except migrations.MigrationError as exc:
        raise Problem(503, str(exc), headers={"Retry-After": "10"}) from None
    engines = {**status.to_dict(), "warning": status.sentence() or None}
    if not_live is not None:
        # this process was started to run an engine: not ready while it does not
        raise Problem(503, f"the engine of this process is not live: {not_live}",
                      headers={"Retry-After": "5"}, engine="not live", **engines)
    engine = "running" if own is not None else "off"
    return json_response({"status": "ready", "database": "ok", "engine": engine, **engines})


async def metrics(call: Call) -> web.StreamResponse:
    settings = call.state.settings
    call.state.metrics.authorize(call.request, settings.api_metrics_token)
    await call.state.metrics.refresh(call.pool, settings.api_metrics_cache_seconds)
    return web.Response(body=call.state.metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE})


OPERATIONS: Final = (
    Operation("GET", "/healthz", healthz, "healthz", "Liveness: the process answers",
              "health", None, responses={200: Resp("Alive.", "Health")},
              uses_database=False),
    Operation("GET", "/readyz", readyz, "readyz",
              "Readiness: the database answers and its migrations are current", "health",
              None, responses={200: Resp("Ready.", "Ready")},
              description="Also says whether any engine is live (`live_engines`, "
                          "`last_heartbeat_at`, `warning` when none is: no rollout "
                          "progresses). A process serving with its own engine (`orchestrator "
                          "serve` without `--no-engine`) is not ready (503) while that engine "
                          "is not live; with `--no-engine` the answer stays 200."),
    Operation("GET", "/metrics", metrics, "metrics", "Prometheus metrics", "health", None,
              responses={200: Resp("Prometheus text exposition format.", {"type": "string"},
                                   media_type="text/plain")},
              errors=(401,),
              description="Tasks by state, installs in flight, install and reboot "
                          "durations, appliance API errors by kind, claim latency, "
                          "event-loop lag, API requests. See docs/api.md. The database "
                          "figures are read at most once per `api_metrics_cache_seconds`. "
                          "With `api_metrics_token` set, requires `Authorization: Bearer "
                          "<that token>` (401 otherwise)."),
)
