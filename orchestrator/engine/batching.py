"""Transitions of many runners written together, in one guarded statement per batch.

A batch that fails is not allowed to take its members down with it: its requests are then
written one by one, so one bad row fails only its own runner. Deadlocks and serialization
failures are passing troubles (`DB_TRANSIENT`): the runner waits them out and writes again.
"""

from __future__ import annotations

import asyncio

import asyncpg

from orchestrator.logs import get_logger
from orchestrator.store import tasks as task_store
from orchestrator.store.db import DB_TRANSIENT
from orchestrator.store.tasks import TransitionRequest

__all__ = ["DB_TRANSIENT", "TransitionBatcher"]

log = get_logger("orchestrator.engine.batching")


class TransitionBatcher:
    """Writes the transitions of many runners together: the requests that arrive within
    `delay` seconds (at most `max_batch`) go to the database in ONE statement
    (`task_store.transition_many`), each still guarded by its state and lease owner. A
    busy engine then runs a few statements a second instead of several per task."""

    def __init__(self, pool: asyncpg.Pool, owner: str, *, delay: float = 0.05,
                 max_batch: int = 500) -> None:
        self.pool = pool
        self.owner = owner
        self.delay = delay
        self.max_batch = max_batch
        self.statements = 0
        self._pending: list[tuple[TransitionRequest, asyncio.Future[bool]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, request: TransitionRequest) -> bool:
        """Whether the task matched (False: another worker owns it now); raises the
        database's error when the statement failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.append((request, future))
        if len(self._pending) >= self.max_batch or self.delay <= 0:
            self._flush_now()
        elif self._timer is None:
            self._timer = loop.call_later(self.delay, self._flush_now)
        return await future

    def _flush_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # not the cancelled ones; a task at most once per statement (the later waits)
        batch: list[tuple[TransitionRequest, asyncio.Future[bool]]] = []
        later: list[tuple[TransitionRequest, asyncio.Future[bool]]] = []
        ids: set[int] = set()
        for request, future in self._pending:
            if future.done():
                continue
            (later if request.task_id in ids else batch).append((request, future))
            ids.add(request.task_id)
        self._pending = later
        if later:
            self._timer = asyncio.get_running_loop().call_later(self.delay, self._flush_now)
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[TransitionRequest, asyncio.Future[bool]]]) -> None:
        self.statements += 1
        try:
            matched = await self._write([r for r, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            # one bad row must not take the others with it: each on its own
            log.warning("transition_batch_failed", error=repr(exc), size=len(batch),
                        retry="one by one")
            for item in batch:
                await self._flush_one(item)
            return
        for request, future in batch:
            if not future.done():
                future.set_result(request.task_id in matched)

    async def _flush_one(self, item: tuple[TransitionRequest, asyncio.Future[bool]]) -> None:
        request, future = item
        if future.done():
            return
        self.statements += 1
        try:
            matched = await self._write([request])
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            self._fail([item], exc)
            return
        if not future.done():
            future.set_result(request.task_id in matched)

    async def _write(self, requests: list[TransitionRequest]) -> set[int]:
        async with self.pool.acquire() as conn:
            return await task_store.transition_many(conn, owner=self.owner, requests=requests)

    @staticmethod
    def _fail(batch: list[tuple[TransitionRequest, asyncio.Future[bool]]],
              exc: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def aclose(self) -> None:
        """Write what is still waiting (from runners not cancelled) and wait for it."""
        self._flush_now()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
