"""The aiohttp application: routes from the operations of each resource module, the
problem and metrics middlewares, the OpenAPI document, and the app's lifecycle."""

from __future__ import annotations

from typing import Any, Final

import asyncpg
from aiohttp import web

from orchestrator.api import (
    appliances,
    audit,
    console,
    events,
    health,
    openapi,
    preflight,
    rollouts,
    sites,
    tasks,
    tokens,
    webhooks,
    windows,
)
from orchestrator.api.headers import security_headers
from orchestrator.api.load import acquire_bound_middleware
from orchestrator.api.metrics import ApiMetrics, HttpView
from orchestrator.api.problems import problem_middleware
from orchestrator.api.routing import STATE, ApiState, Operation, wrap
from orchestrator.api.validation import IMPORT_LIMIT
from orchestrator.settings import Settings

OPERATIONS: Final[tuple[Operation, ...]] = (
    *appliances.OPERATIONS,
    *rollouts.OPERATIONS,
    *preflight.OPERATIONS,
    *tasks.OPERATIONS,
    *events.OPERATIONS,
    *audit.OPERATIONS,
    *tokens.OPERATIONS,
    *windows.OPERATIONS,
    *sites.OPERATIONS,
    *webhooks.OPERATIONS,
    *health.OPERATIONS,
    *openapi.OPERATIONS,
    *console.OPERATIONS,
)


def create_app(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    engine: Any = None,
    http: HttpView | None = None,
    sse_keepalive: float = 15.0,
    sse_poll: float = 0.25,
) -> web.Application:
    """The REST API over `pool`. With `engine` (and its `http` client) running in the same
    process, /metrics also reports the engine's counters and durations."""
    metrics = ApiMetrics()
    metrics.attach(engine, http)
    # the per-operation limits (1 MiB, 16 MiB for the import) are enforced when reading
    app = web.Application(client_max_size=IMPORT_LIMIT,
                          middlewares=[metrics.middleware(), problem_middleware,
                                       acquire_bound_middleware(settings.api_db_acquire_timeout)])
    state = ApiState(pool=pool, settings=settings, metrics=metrics, engine=engine, http=http,
                     sse_keepalive=sse_keepalive, sse_poll=sse_poll)
    app[STATE] = state
    app[events.STREAMS] = events.StreamLimits(settings.api_sse_max_streams_per_token,
                                              settings.api_sse_max_streams)
    app[openapi.DOCUMENT] = openapi.build_document(OPERATIONS)
    for op in OPERATIONS:
        app.router.add_route(op.method, op.route_path(), wrap(op))

    async def on_startup(_app: web.Application) -> None:
        metrics.start_loop_monitor()

    async def on_shutdown(_app: web.Application) -> None:
        state.closing.set()  # open event streams end

    async def on_cleanup(_app: web.Application) -> None:
        await metrics.stop()

    app.on_response_prepare.append(security_headers)  # nosniff; CSP on HTML
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
