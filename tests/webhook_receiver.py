"""A webhook receiver for tests: an aiohttp server on 127.0.0.1 that records every request
and answers as a test scripts it (an HTTP status, or "hang": no answer until it goes down),
and that can go down (connections refused) and come back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered (0: it never answered)

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers.get("X-Orchestrator-Event-Id", "")


@dataclass
class Receiver:
    path: str
    requests: list[Received] = field(default_factory=list)
    # the answers to give, in order (a status, or "hang"); then `default`
    script: list[int | str] = field(default_factory=list)
    default: int | str = 200
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _hang: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def delivered(self) -> list[Received]:
        """The requests answered 2xx, in arrival order."""
        return [r for r in self.requests if 200 <= r.status < 300]

    async def wait_for(self, done: Callable[[Receiver], bool], timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done(self):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"receiver: condition not met after {timeout} s; got "
                    f"{[(r.headers.get('X-Orchestrator-Event'), r.status) for r in self.requests]}")
            await asyncio.sleep(0.05)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        answer = self.script.pop(0) if self.script else self.default
        hangs = answer == "hang"
        self.requests.append(Received(dict(request.headers), body, 0 if hangs else int(answer)))
        self.arrived.set()
        if hangs:
            await self._hang.wait()
            return web.Response(status=503)
        return web.Response(status=int(answer))

    async def up(self) -> None:
        """Listen (again, on the same port once it has one)."""
        self._hang.clear()
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def down(self) -> None:
        """Stop listening: connections are refused until `up()`; a hanging answer ends."""
        self._hang.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@contextlib.asynccontextmanager
async def receiver(path: str = "/hook") -> AsyncIterator[Receiver]:
    rx = Receiver(path=path)
    await rx.up()
    try:
        yield rx
    finally:
        await rx.down()
