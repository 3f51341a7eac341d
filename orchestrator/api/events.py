"""`GET /api/v1/rollouts/{id}/events`: server-sent events of a rollout's progress.

- `event: task`, `id: <task_events.id>`: one task transition (`TaskEvent` in the document).
  The events come in id order and each exactly once: a client that reconnects with
  `Last-Event-ID` (browsers' EventSource does it by itself) gets every transition after
  that id, none twice (see orchestrator/store/events.py for why no id is ever skipped).
- `event: progress` (no id): the rollout's state and task counts; sent first, after each
  batch of task events and when the rollout's state changes.
- `: keep-alive` comments every 15 s of silence, so proxies keep the connection.
- `event: end`: the rollout is terminal (SUCCEEDED, COMPLETED_WITH_FAILURES, FAILED,
  CANCELLED), none of its tasks
  is in flight and every event was sent; the server then closes the stream. A rollout that
  retry-failed reopens can be followed again by reconnecting with `Last-Event-ID`.

`?follow=false` sends what exists now and ends instead of waiting for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

from aiohttp import web

from orchestrator.api.rollouts import ID_PARAM, not_found
from orchestrator.api.routing import Call, Operation, Resp
from orchestrator.api.validation import BIGINT_MAX, Param
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.events import EventReader, TaskEvent
from orchestrator.store.rollouts import RolloutNotFound

TERMINAL: Final = ("SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED")
IN_FLIGHT: Final = ("DISPATCHING", "INSTALLING", "VERIFYING")


def sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def task_event(event: TaskEvent) -> bytes:
    return sse("task", event.to_dict(), event.id)


class Stream:
    """One SSE connection."""

    def __init__(self, call: Call, response: web.StreamResponse, rollout_id: int,
                 after_id: int) -> None:
        self.call = call
        self.response = response
        self.rollout_id = rollout_id
        self.reader = EventReader(call.pool, rollout_id, after_id)
        self.loop = asyncio.get_running_loop()
        self.last_write = self.loop.time()
        self.sent_state: str | None = None

    async def write(self, data: bytes) -> None:
        await self.response.write(data)
        self.last_write = self.loop.time()

    async def progress(self) -> str | None:
        try:
            rollout = await rollout_store.get_rollout(self.call.pool, self.rollout_id)
        except RolloutNotFound:
            return None
        counts = await rollout_store.rollout_counts(self.call.pool, self.rollout_id)
        state = str(rollout.state)
        await self.write(sse("progress", {
            "rollout": rollout.id, "state": state, "current_wave": rollout.current_wave,
            "counts": counts.by_state,
            "in_flight": sum(counts.by_state.get(s, 0) for s in IN_FLIGHT),
            "last_event_id": self.reader.after_id,
        }))
        self.sent_state = state
        return state

    async def run(self, follow: bool) -> None:
        state = self.call.state
        await self.write(b"retry: 2000\n\n")
        await self.progress()
        while not state.closing.is_set():
            batch = await self.reader.poll()
            for event in batch.events:
                await self.write(task_event(event))
            head = batch.head
            if head.state is None:  # the rollout was deleted
                return
            if batch.events or head.state != self.sent_state:
                await self.progress()
            quiet = batch.confirmed and not batch.events
            if quiet and head.state in TERMINAL and not head.in_flight \
                    and await self.reader.settled():
                await self.progress()
                await self.write(sse("end", {"rollout": self.rollout_id,
                                             "state": head.state,
                                             "last_event_id": self.reader.after_id}))
                return
            if quiet and not follow:
                return
            if self.loop.time() - self.last_write >= state.sse_keepalive:
                await self.write(b": keep-alive\n\n")
            if not batch.events:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.closing.wait(), state.sse_poll)


async def rollout_events(call: Call) -> web.StreamResponse:
    p = call.params
    rollout_id = p["id"]
    if await call.pool.fetchval("SELECT 1 FROM rollouts WHERE id = $1", rollout_id) is None:
        raise not_found(rollout_id)
    after = p["Last-Event-ID"]
    if after is None:
        after = p["last_event_id"]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(call.request)
    stream = Stream(call, response, rollout_id, after or 0)
    call.state.metrics.sse_clients.inc()
    try:
        await stream.run(p["follow"])
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away; it resumes with Last-Event-ID
    finally:
        call.state.metrics.sse_clients.dec()
    return response


OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/rollouts/{id}/events", rollout_events, "streamRolloutEvents",
        "Follow a rollout: server-sent events of task transitions and counts", "events",
        "viewer",
        params=(
            ID_PARAM,
            Param("Last-Event-ID", "header", "integer", minimum=0, maximum=BIGINT_MAX,
                  description="Resume after this event id (EventSource sends it when it "
                              "reconnects)."),
            Param("last_event_id", "query", "integer", minimum=0, maximum=BIGINT_MAX,
                  description="Same as the Last-Event-ID header, for a first connection."),
            Param("follow", "query", "boolean", default=True,
                  description="false: send what exists now, then end."),
        ),
        responses={200: Resp(
            "text/event-stream: `event: task` (id = task_events.id, data TaskEvent), "
            "`event: progress` (data Progress), `: keep-alive` comments, and `event: end` "
            "once the rollout is terminal with nothing in flight.",
            {"type": "string"}, media_type="text/event-stream")},
    ),
)
