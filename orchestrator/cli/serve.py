"""`orchestrator serve`: the REST API and the engine in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import ssl
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.cli.common import run_with_database
from orchestrator.logs import get_logger
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.api.server import LoopServer, ThreadServer
    from orchestrator.appliance import ApplianceHttp
    from orchestrator.engine.engine import Engine

log = get_logger("orchestrator.serve")
API_POOL_SIZE = 5  # connections of the API beside the engine's pool (db_pool_max_size)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def add_command(sub: Any) -> None:
    """`serve [--host H] [--port P] ...`."""
    serve_parser = sub.add_parser(
        "serve", help="serve the REST API and run the engine until SIGTERM")
    add_arguments(serve_parser)
    serve_parser.set_defaults(func=cmd_serve)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: the api_host setting, "
                                       "127.0.0.1)")
    parser.add_argument("--port", type=_port, help="listen port (default: the api_port "
                                                   "setting, 8080)")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--no-engine", action="store_true",
                      help="serve the API only (the engines run elsewhere)")
    only.add_argument("--no-api", action="store_true",
                      help="run the engine only, like `orchestrator run`")
    parser.add_argument("--insecure-http", action="store_true",
                        help="serve plain HTTP on a non-loopback address although "
                             "api_tls_cert/api_tls_key are not set (bearer tokens cross "
                             "the network in clear text: only behind a TLS-terminating "
                             "proxy or on a network you trust)")


INSECURE_REFUSED = (
    "orchestrator: serve: refusing to serve plain HTTP on {host}, which is not a loopback "
    "address: bearer tokens would cross the network in clear text. Set api_tls_cert and "
    "api_tls_key (ORCHESTRATOR_API_TLS_CERT, ORCHESTRATOR_API_TLS_KEY) to serve HTTPS, "
    "listen on 127.0.0.1 behind a TLS-terminating reverse proxy, or pass --insecure-http "
    "if the network is trusted"
)
INSECURE_WARNING = (
    "WARNING: serving the API over plain HTTP on {host} (--insecure-http): bearer tokens "
    "cross the network in clear text; anyone on the path can read and reuse them"
)


def api_transport(settings: Settings, host: str, insecure_http: bool) \
        -> tuple[ssl.SSLContext | None, str | None]:
    """(the SSLContext or None, a refusal message or None) for serving the API on `host`.
    Raises TlsError when the certificate or key cannot be used."""
    from orchestrator.api.tls import is_loopback, server_context

    context = server_context(settings)
    if context is None and not is_loopback(host) and not insecure_http:
        return None, INSECURE_REFUSED.format(host=host or "every address")
    return context, None


def _how_it_ended(task: asyncio.Task[Any]) -> str:
    """A finished task's end, for a log line: its exception's repr, or how it ended."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return repr(exc) if exc is not None else "returned"


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from orchestrator.api.tls import TlsError, is_loopback

    url_holder: list[str] = []
    host = args.host or settings.api_host
    ssl_context: ssl.SSLContext | None = None
    if not args.no_api:
        try:
            ssl_context, refusal = api_transport(settings, host, args.insecure_http)
        except TlsError as exc:
            print(f"orchestrator: serve: {exc}", file=sys.stderr)
            return 2
        if refusal is not None:
            print(refusal, file=sys.stderr)
            return 2
        if ssl_context is None and not is_loopback(host):
            print(INSECURE_WARNING.format(host=host or "every address"), file=sys.stderr,
                  flush=True)
            log.warning("api_insecure_http", host=host,
                        reason="--insecure-http: bearer tokens cross the network in clear "
                               "text")

    async def body(pool: asyncpg.Pool) -> int:
        return await serve(
            pool, settings, host=host,
            port=args.port or settings.api_port, with_engine=not args.no_engine,
            with_api=not args.no_api, database_url=url_holder[0] if url_holder else None,
            ssl_context=ssl_context,
        )

    return run_with_database(settings, body, url_holder)


async def serve(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    host: str,
    port: int,
    with_engine: bool = True,
    with_api: bool = True,
    database_url: str | None = None,
    stop: asyncio.Event | None = None,
    ssl_context: ssl.SSLContext | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the API and/or the engine until SIGTERM/SIGINT (or `stop`); both stop cleanly
    and at once: the API stops listening and ends its event streams while the engine
    drains. With both, the API runs in a thread of its own (see api/server.py).

    The engine and the API's own background task (its loop-lag monitor, without an engine)
    are supervised: each runs until the stop, and the end of either before it (the engine
    failing, see `EngineFailure`) stops both and returns 1, with a line on stderr."""
    from orchestrator.appliance import ApplianceHttp
    from orchestrator.engine.engine import Engine, EngineConfig

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            engine: Engine | None = None
            http: ApplianceHttp | None = None
            if with_engine:
                http = await stack.enter_async_context(ApplianceHttp(settings, environ=environ))
                engine = Engine(pool, http, EngineConfig.from_settings(settings),
                                database_url=database_url)
            server: LoopServer | ThreadServer | None = None
            if with_api:
                server = await _start_api(pool, settings, host, port, engine, http,
                                          database_url, ssl_context)
                if server is None:
                    return 1
            _announce(server, engine, host, port, with_api=with_api,
                      with_engine=with_engine, ssl_context=ssl_context)
            engine_task = asyncio.create_task(engine.run(), name="engine") if engine else None
            code = await _wait_for_stop(server, engine_task, stop)
            code = await _stop_both(server, engine, engine_task, stop, code)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("serve_stopped", code=code)
    return code


async def _start_api(
    pool: asyncpg.Pool, settings: Settings, host: str, port: int, engine: Engine | None,
    http: ApplianceHttp | None, database_url: str | None, ssl_context: ssl.SSLContext | None,
) -> LoopServer | ThreadServer | None:
    """Start the API: in a thread of its own beside an engine (with a database URL for its
    own pool), else in this loop. None when it cannot listen (said on stderr)."""
    from orchestrator.api.server import ListenError, LoopServer, ThreadServer

    server: LoopServer | ThreadServer
    if engine is not None and database_url:
        server = ThreadServer(database_url, settings, host, port,
                              pool_size=API_POOL_SIZE, engine=engine, http=http,
                              ssl_context=ssl_context)
    else:
        server = LoopServer(pool, settings, host, port, engine=engine, http=http,
                            ssl_context=ssl_context)
    try:
        await server.start()
    except ListenError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return None
    return server


def _announce(
    server: LoopServer | ThreadServer | None, engine: Engine | None, host: str, port: int,
    *, with_api: bool, with_engine: bool, ssl_context: ssl.SSLContext | None,
) -> None:
    """Everything is up: settle the garbage collector, say so on stderr and in the log."""
    from orchestrator.engine.engine import tune_gc_for_engine

    # what the process holds now stays for its whole life: keep it out of the
    # garbage collector's full passes (shorter pauses of both loops); with the
    # engine, also the engine's collector thresholds
    if engine is not None:
        tune_gc_for_engine()
    else:
        gc.freeze()
    scheme = "https" if ssl_context is not None else "http"
    parts = [f"API on {scheme}://{host}:{port}"] if server is not None else []
    if engine is not None:
        parts.append(f"engine {engine.owner}")
    print(f"orchestrator serving: {', '.join(parts)} (SIGTERM or Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    log.info("serve_started", host=host, port=port, api=with_api, engine=with_engine,
             tls=ssl_context is not None)


async def _wait_for_stop(
    server: LoopServer | ThreadServer | None, engine_task: asyncio.Task[None] | None,
    stop: asyncio.Event,
) -> int:
    """Wait for the stop, or for the engine or the API's background work to end before it:
    1 when the API's part ended early (said on stderr and in the log), else 0."""
    from orchestrator.api.routing import STATE
    from orchestrator.api.server import LoopServer, ThreadServer

    code = 0
    # the API's loop-lag monitor runs in this loop when the API does without an
    # engine (with one, the engine measures the lag)
    monitor = server.app[STATE].metrics.loop_monitor \
        if isinstance(server, LoopServer) else None
    # with the engine, the API runs in a thread: its end before the stop is a failure
    api_thread = asyncio.create_task(server.ended.wait(), name="api") \
        if isinstance(server, ThreadServer) else None
    stopper = asyncio.create_task(stop.wait(), name="stop")
    waiting: set[asyncio.Task[Any]] = {stopper}
    for watched in (engine_task, monitor, api_thread):
        if watched is not None:
            waiting.add(watched)
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if monitor is not None and monitor.done() and not stop.is_set():
        error = _how_it_ended(monitor)
        log.error("api_background_failed", task=monitor.get_name(), error=error)
        print(f"orchestrator: API stopped: background task {monitor.get_name()} "
              f"failed: {error}", file=sys.stderr, flush=True)
        code = 1
    if isinstance(server, ThreadServer) and server.ended.is_set() \
            and not stop.is_set():
        log.error("api_background_failed", task="api", error=server.failure)
        print(f"orchestrator: API stopped: its thread ended: {server.failure}",
              file=sys.stderr, flush=True)
        code = 1
    if api_thread is not None:
        api_thread.cancel()
    return code


async def _stop_both(
    server: LoopServer | ThreadServer | None, engine: Engine | None,
    engine_task: asyncio.Task[None] | None, stop: asyncio.Event, code: int,
) -> int:
    """Stop the API and the engine at once (the engine drains); the exit code: `code`, or
    1 when a stop failed or the engine had ended by itself."""
    from orchestrator.engine.engine import EngineFailure

    async def stop_api() -> None:
        if server is not None:
            await server.stop()

    async def stop_engine() -> None:
        nonlocal code
        if engine is not None and engine_task is not None:
            engine.stop()
            try:
                await engine_task
            except EngineFailure as exc:  # drained and handed its tasks over
                print(f"orchestrator: {exc}", file=sys.stderr, flush=True)
                code = 1

    results = await asyncio.gather(stop_api(), stop_engine(), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            log.error("serve_stop_failed", error=repr(result))
            code = 1
    if engine_task is not None and not stop.is_set():
        code = 1  # the engine ended by itself
    return code
