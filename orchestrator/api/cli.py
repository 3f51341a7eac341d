"""`orchestrator serve` (the REST API and the engine in one process) and `orchestrator
tokens ...` (API tokens).

Wired into `orchestrator.cli` like `cli_rollout`: the functions take the database runner
(`run_with_database`, or `run_with_database_url` for serve, which needs the URL for the
engine's LISTEN connection) as a parameter, or import it lazily, so that this module never
imports `orchestrator.cli` at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from orchestrator.logs import get_logger
from orchestrator.settings import Settings
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import Actor, record_audit

log = get_logger("orchestrator.serve")
API_POOL_SIZE = 5  # connections of the API beside the engine's pool (db_pool_max_size)

Body = Callable[[asyncpg.Pool], Awaitable[int]]
Runner = Callable[[Settings, Body], int]
UrlRunner = Callable[[Settings, Body, list[str]], int]


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


# ------------------------------------------------------------------ serve
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
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


def cmd_serve(settings: Settings, args: argparse.Namespace,
              run_with_database_url: UrlRunner | None = None) -> int:
    from orchestrator.api.tls import TlsError, is_loopback

    runner = run_with_database_url or _url_runner()
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

    return runner(settings, body, url_holder)


def _url_runner() -> UrlRunner:
    from orchestrator.cli import run_with_database_url

    return run_with_database_url


def _runner() -> Runner:
    from orchestrator.cli import run_with_database

    return run_with_database


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
) -> int:
    """Run the API and/or the engine until SIGTERM/SIGINT (or `stop`); both stop cleanly
    and at once: the API stops listening and ends its event streams while the engine
    drains. With both, the API runs in a thread of its own (see api/server.py)."""
    from orchestrator.api.server import ListenError, LoopServer, ThreadServer
    from orchestrator.appliance import ApplianceHttp
    from orchestrator.cli_rollout import engine_config
    from orchestrator.engine.engine import Engine, tune_gc_for_engine

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
                http = await stack.enter_async_context(ApplianceHttp(settings))
                engine = Engine(pool, http, engine_config(settings),
                                database_url=database_url)
            server: LoopServer | ThreadServer | None = None
            if with_api:
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
                    return 1
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
            engine_task = asyncio.create_task(engine.run(), name="engine") if engine else None
            stopper = asyncio.create_task(stop.wait(), name="stop")
            waiting: set[asyncio.Task[Any]] = {stopper}
            if engine_task is not None:
                waiting.add(engine_task)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()

            async def stop_api() -> None:
                if server is not None:
                    await server.stop()

            async def stop_engine() -> None:
                if engine is not None and engine_task is not None:
                    engine.stop()
                    await engine_task

            results = await asyncio.gather(stop_api(), stop_engine(), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.error("serve_stop_failed", error=repr(result))
                    code = 1
            if engine_task is not None and not stop.is_set():
                code = 1  # the engine ended by itself
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("serve_stopped", code=code)
    return code


# ------------------------------------------------------------------ tokens
def add_tokens_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a token; it is printed once, only its "
                                           "hash is stored")
    create.add_argument("--name", required=True, help="who or what uses it (unique)")
    create.add_argument("--role", required=True, choices=list(token_store.ROLES),
                        help="viewer: read; operator: also rollout actions; admin: also "
                             "inventory and tokens")
    create.add_argument("--expires-in", metavar="DURATION",
                        help="the token stops working after this long, e.g. 30d, 12h, 90m, "
                             "2w (1 minute to 3650 days; default: never)")
    create.add_argument("--json", action="store_true")
    lst = sub.add_parser("list", help="list tokens (never the tokens themselves)")
    lst.add_argument("--active", action="store_true",
                     help="leave revoked and expired tokens out")
    lst.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")


def _expiry(info: token_store.TokenInfo) -> str:
    if info.expires_at is None:
        return "never"
    return f"{info.expires_at:%Y-%m-%d %H:%M}" + (" (expired)" if info.expired() else "")


def _actor() -> Actor:
    from orchestrator.cli_rollout import cli_actor

    return cli_actor()


def cmd_tokens(settings: Settings, args: argparse.Namespace,
               run_with_database: Runner | None = None) -> int:
    runner = run_with_database or _runner()
    action = args.tokens_command
    if action == "create" and args.expires_in is not None:
        try:  # a bad value is named before the database is touched
            token_store.parse_expiry(args.expires_in)
        except token_store.TokenError as exc:
            print(f"orchestrator: tokens create: {exc}", file=sys.stderr)
            return 1

    async def body(pool: asyncpg.Pool) -> int:
        try:
            return await _tokens(pool, args, action)
        except token_store.TokenError as exc:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return 1

    return runner(settings, body)


async def _tokens(pool: asyncpg.Pool, args: argparse.Namespace, action: str) -> int:
    actor = _actor()
    if action == "create":
        expires_in = (token_store.parse_expiry(args.expires_in)
                      if args.expires_in is not None else None)
        async with pool.acquire() as conn, conn.transaction():
            info, token = await token_store.create_token(conn, args.name, args.role,
                                                         expires_in=expires_in)
            await record_audit(conn, actor, "token.create", "token", info.name,
                               {"role": info.role, "expires_at": info.to_dict()["expires_at"]})
        if args.json:
            print(json.dumps({**info.to_dict(), "token": token}))
        else:
            print(token)
            until = (f", expiring {info.expires_at:%Y-%m-%d %H:%M %Z}" if info.expires_at
                     else "")
            print(f"created token {info.name!r} with the role {info.role}{until}; it is "
                  "shown only now: store it", file=sys.stderr)
        return 0
    if action == "list":
        items = await token_store.list_tokens(pool, include_revoked=not args.active)
        if args.json:
            print(json.dumps([t.to_dict() for t in items], indent=2))
            return 0
        rows = [(t.name, t.role, f"{t.created_at:%Y-%m-%d %H:%M}",
                 f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-",
                 f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
                 _expiry(t)) for t in items]
        headers = ("NAME", "ROLE", "CREATED", "LAST USED", "REVOKED", "EXPIRES")
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        for row in (headers, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        print(f"{len(items)} token(s)")
        return 0
    async with pool.acquire() as conn, conn.transaction():
        info = await token_store.revoke_token(conn, args.name)
        await record_audit(conn, actor, "token.revoke", "token", info.name, {})
    print(f"revoked token {info.name!r}")
    return 0
