"""A bounded wait for a database connection in every API request.

The pool's `acquire()` waits without end by default: once every connection is taken (slow
queries, many event streams, a flood of requests), each further request would hang, and
its client with it. The middleware puts each request under `bounded_acquire()` (see
orchestrator/store/db.py): every acquire it makes, including those inside `pool.fetch()`
and the token lookup, waits at most `api_db_acquire_timeout` seconds, then the request is
answered 503 (problem+json, `Retry-After`) instead. An event stream already under way ends
instead (its client reconnects with Last-Event-ID: api/events.py).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from orchestrator.api.problems import Problem
from orchestrator.logs import get_logger
from orchestrator.store.db import AcquireTimeout, bounded_acquire

log = get_logger("orchestrator.api.load")

RETRY_AFTER: Final = "5"  # seconds, on the 503 of a request that found no connection


def acquire_bound_middleware(seconds: float) -> Middleware:
    """Goes inside the problem middleware (it raises a Problem)."""

    @web.middleware
    async def bound(request: web.Request, handler: Handler) -> web.StreamResponse:
        with bounded_acquire(seconds):
            try:
                return await handler(request)
            except AcquireTimeout as exc:
                log.warning("api_database_busy", waited=exc.seconds, method=request.method,
                            path=request.path)
                raise Problem(
                    503, f"no database connection came free within {exc.seconds:g} s; "
                         "retry later", headers={"Retry-After": RETRY_AFTER},
                ) from None

    return bound
