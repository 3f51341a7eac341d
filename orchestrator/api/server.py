"""Serving the app: in the caller's event loop, or in a thread with an event loop and a
connection pool of its own.

`orchestrator serve` runs the API in its own thread when the engine runs in the same
process: the engine's event loop drives thousands of appliance calls and may be busy for
tens of milliseconds at a time, and an API sharing that loop would wait behind it on every
database round trip. In its own loop the API waits at most for the interpreter's thread
switch (5 ms) instead, and its connections never queue behind the engine's.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Any

import asyncpg
from aiohttp import web

from orchestrator.api.app import create_app
from orchestrator.domain.errors import OrchestratorError
from orchestrator.logs import get_logger
from orchestrator.settings import Settings
from orchestrator.store.db import create_pool

log = get_logger("orchestrator.api.server")
SHUTDOWN_TIMEOUT = 5.0  # seconds open requests get when the server stops


class ListenError(OrchestratorError):
    """The API cannot listen on its address; the message says why."""


async def _start(app: web.Application, host: str, port: int,
                 ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    """Listen on host:port; HTTPS only when `ssl_context` is given (api/tls.py)."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True,
                          ssl_context=ssl_context).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return runner


class LoopServer:
    """The API in the current event loop, over `pool`."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, host: str, port: int, *,
                 ssl_context: ssl.SSLContext | None = None, **app_options: Any) -> None:
        self.app = create_app(pool, settings, **app_options)
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = await _start(self.app, self.host, self.port, self.ssl_context)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class ThreadServer:
    """The API in a thread of its own, with its own event loop and connection pool."""

    def __init__(self, database_url: str, settings: Settings, host: str, port: int, *,
                 pool_size: int = 5, ssl_context: ssl.SSLContext | None = None,
                 **app_options: Any) -> None:
        self.database_url = database_url
        self.ssl_context = ssl_context
        self.settings = settings
        self.host = host
        self.port = port
        self.pool_size = pool_size
        self.app_options = app_options
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="api", daemon=True)
        # set (in the caller's loop) when the thread has ended, for whatever reason; with
        # `failure`, what ended it when that was not `stop()` (`orchestrator serve` watches it)
        self.ended = asyncio.Event()
        self.failure: str | None = None
        self._caller: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._caller = asyncio.get_running_loop()
        self._thread.start()
        await asyncio.to_thread(self._ready.wait)
        if self._error is not None:
            await asyncio.to_thread(self._thread.join)
            raise self._error

    async def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
            if self._stop is None or not self._stop.is_set():
                self.failure = "returned"
        except BaseException as exc:  # reported to start(), or logged after it
            self.failure = repr(exc)
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.error("api_thread_failed", error=repr(exc))
        finally:
            if self._caller is not None and not self._caller.is_closed():
                self._caller.call_soon_threadsafe(self.ended.set)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with create_pool(self.database_url, self.settings, min_size=1,
                               max_size=self.pool_size) as pool:
            app = create_app(pool, self.settings, **self.app_options)
            runner = await _start(app, self.host, self.port, self.ssl_context)
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
