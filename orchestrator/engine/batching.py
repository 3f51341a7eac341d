"""Writes of many runners made together, in one guarded statement per batch.

Two kinds: the transitions (`TransitionBatcher`, `store.tasks.transition_many`) and the
guarded install sends (`GuardBatcher`, `store.tasks.guard_install_sends`). Each task in a
batch is still guarded on its own (its state, lease owner and token). A batch that fails is
not allowed to take its members down with it: its requests are then written one by one, so
one bad row fails only its own runner. Deadlocks and serialization failures are passing
troubles (`DB_TRANSIENT`): the runner waits them out and writes again.
"""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

import asyncpg

from orchestrator.logs import get_logger
from orchestrator.store import tasks as task_store
from orchestrator.store.db import DB_TRANSIENT
from orchestrator.store.tasks import GuardRequest, TransitionRequest

__all__ = ["DB_TRANSIENT", "GuardBatcher", "TransitionBatcher"]

log = get_logger("orchestrator.engine.batching")


class _Request(Protocol):
    @property
    def task_id(self) -> int: ...


_Req = TypeVar("_Req", bound=_Request)
_Res = TypeVar("_Res")


class _Batcher(Generic[_Req, _Res]):
    """The requests that arrive within `delay` seconds (at most `max_batch`) go to the
    database in ONE statement (`_write`); a task at most once per statement (a second
    request of it waits for the next). A busy engine then runs a few statements a second
    instead of one or more per task."""

    kind = "write"

    def __init__(self, pool: asyncpg.Pool, owner: str, *, delay: float = 0.05,
                 max_batch: int = 500) -> None:
        self.pool = pool
        self.owner = owner
        self.delay = delay
        self.max_batch = max_batch
        self.statements = 0
        self._pending: list[tuple[_Req, asyncio.Future[_Res]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def submit(self, request: _Req) -> _Res:
        """The request's result; raises the database's error when the statement failed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Res] = loop.create_future()
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
        batch: list[tuple[_Req, asyncio.Future[_Res]]] = []
        later: list[tuple[_Req, asyncio.Future[_Res]]] = []
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

    async def _flush(self, batch: list[tuple[_Req, asyncio.Future[_Res]]]) -> None:
        self.statements += 1
        try:
            results = await self._write([r for r, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            # one bad row must not take the others with it: each on its own
            log.warning(f"{self.kind}_batch_failed", error=repr(exc), size=len(batch),
                        retry="one by one")
            for item in batch:
                await self._flush_one(item)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _flush_one(self, item: tuple[_Req, asyncio.Future[_Res]]) -> None:
        request, future = item
        if future.done():
            return
        self.statements += 1
        try:
            (result,) = await self._write([request])
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            self._fail([item], exc)
            return
        if not future.done():
            future.set_result(result)

    async def _write(self, requests: list[_Req]) -> list[_Res]:
        """One statement for `requests`: their results, in their order."""
        raise NotImplementedError

    @staticmethod
    def _fail(batch: list[tuple[_Req, asyncio.Future[_Res]]], exc: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def aclose(self) -> None:
        """Write what is still waiting (from runners not cancelled) and wait for it."""
        self._flush_now()
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)


class TransitionBatcher(_Batcher[TransitionRequest, bool]):
    """Writes the transitions of many runners together (`task_store.transition_many`);
    each request's result: whether the task matched (False: another worker owns it now)."""

    kind = "transition"

    async def _write(self, requests: list[TransitionRequest]) -> list[bool]:
        async with self.pool.acquire() as conn:
            matched = await task_store.transition_many(conn, owner=self.owner,
                                                       requests=requests)
        return [r.task_id in matched for r in requests]


class GuardBatcher(_Batcher[GuardRequest, tuple[str, str]]):
    """The guarded writes right before install POSTs of many runners together
    (`task_store.guard_install_sends`): in a burst of claims, one statement for the tasks
    dispatched within `delay` instead of one each. Each request's result: (verdict, why)."""

    kind = "guard"

    async def _write(self, requests: list[GuardRequest]) -> list[tuple[str, str]]:
        async with self.pool.acquire() as conn:
            verdicts = await task_store.guard_install_sends(conn, owner=self.owner,
                                                            requests=requests)
        return [verdicts.get(r.task_id, (task_store.SendVerdict.LOST, "")) for r in requests]
