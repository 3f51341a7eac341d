"""`GET /api/v1/rollouts/{id}/events`: server-sent events of a rollout's progress.

- `event: task`, `id: <task_events.id>`: one task transition (`TaskEvent` in the document).
  The events come in id order and each exactly once: a client that reconnects with
  `Last-Event-ID` (browsers' EventSource does it by itself) gets every transition after
  that id, none twice (see orchestrator/store/events.py for why no id is ever skipped).
- `event: progress` (no id): the rollout's state, task counts and adaptive pace (`pace`,
  null when off); sent first, after each batch of task events and when the rollout's
  state changes.
- `: keep-alive` comments every 15 s of silence, so proxies keep the connection.
- `event: end`: the rollout is terminal (SUCCEEDED, COMPLETED_WITH_FAILURES, FAILED,
  CANCELLED), none of its tasks
  is in flight and every event was sent; the server then closes the stream. A rollout that
  retry-failed reopens can be followed again by reconnecting with `Last-Event-ID`.

`?follow=false` sends what exists now and ends instead of waiting for more.

A browser's EventSource cannot send an Authorization header: it opens the stream with
`?ticket=`, a single-use 30-second stream ticket its page got from
`POST /api/v1/stream-tickets` with the token (api/console.py, api/auth.py). The stream then
belongs to that token: counted against its limit, and checked again by its id.

Limits (unauthenticated load, finding 5 of the security review; finding 10):
- open streams are counted per token and in all (`api_sse_max_streams_per_token`,
  `api_sse_max_streams`); one more is answered 429 with `Retry-After`;
- the backlog (`Last-Event-ID: 0` on a long rollout) is read and sent in pages of
  `store.events.PAGE` events, never all in memory;
- every `api_sse_token_recheck_seconds` the stream looks its token up again; once it is
  revoked or has expired the stream sends `event: unauthorized` and ends (a reconnection
  then gets 401);
- a database that does not answer, or no connection free within `api_db_acquire_timeout`,
  ends the stream (the client reconnects with Last-Event-ID) instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any, Final

from aiohttp import web

from orchestrator.api.auth import NEW_TICKET
from orchestrator.api.problems import Problem
from orchestrator.api.rollouts import ID_PARAM, not_found
from orchestrator.api.routing import Call, Operation, Resp
from orchestrator.api.stream_schema import STREAM_EVENT
from orchestrator.api.validation import BIGINT_MAX, Param
from orchestrator.domain.states import IN_FLIGHT_TASK_STATES, TERMINAL_ROLLOUT_STATES
from orchestrator.logs import get_logger
from orchestrator.store import pace as pace_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from orchestrator.store.db import DB_TRANSIENT
from orchestrator.store.events import EventReader, TaskEvent
from orchestrator.store.rollouts import RolloutNotFound

log = get_logger("orchestrator.api.events")

RETRY_AFTER: Final = "10"  # seconds, on the 429 of a stream over a limit


class StreamLimits:
    """The open event streams of one app, per token and in all (one event loop: no lock;
    the check and the count happen without an await in between)."""

    def __init__(self, per_token: int, total: int) -> None:
        self.per_token = per_token
        self.total = total
        self.open = 0
        self.by_token: dict[int, int] = {}

    @contextlib.contextmanager
    def slot(self, token_id: int, token_name: str) -> Iterator[None]:
        """Hold one stream's place while the block runs; 429 when none is left."""
        mine = self.by_token.get(token_id, 0)
        if mine >= self.per_token:
            raise Problem(
                429, f"token {token_name!r} has {mine} event streams open, the most one "
                     f"token may (api_sse_max_streams_per_token = {self.per_token}); close "
                     "one or retry later",
                headers={"Retry-After": RETRY_AFTER}, limit=self.per_token)
        if self.open >= self.total:
            raise Problem(
                429, f"{self.open} event streams are open, the most this server allows "
                     f"(api_sse_max_streams = {self.total}); retry later",
                headers={"Retry-After": RETRY_AFTER}, limit=self.total)
        self.open += 1
        self.by_token[token_id] = mine + 1
        try:
            yield
        finally:
            self.open -= 1
            left = self.by_token[token_id] - 1
            if left:
                self.by_token[token_id] = left
            else:
                del self.by_token[token_id]


STREAMS: Final = web.AppKey("orchestrator_sse_streams", StreamLimits)

TICKET_PARAM: Final = Param(
    "ticket", "query", pattern=r"^[A-Za-z0-9_-]{20,128}$",
    description="A stream ticket from `POST /api/v1/stream-tickets`, instead of the "
                "Authorization header (a browser's EventSource cannot send one, and a token "
                "never goes in a URL). Single-use, valid 30 s; it authenticates as the token "
                "that made it. A bad, used or expired ticket: 401; " + NEW_TICKET + ".")


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
        self.unreported = False  # task events sent since the last progress event
        settings = call.state.settings
        self.recheck_every = settings.api_sse_token_recheck_seconds
        self.next_check = self.loop.time() + self.recheck_every
        # looked up again by id: the same for a stream opened with a bearer token or with
        # a stream ticket (which was that token's, and is used up)
        self.token_id = call.token.id if call.token is not None else None

    async def write(self, data: bytes) -> None:
        await self.response.write(data)
        self.last_write = self.loop.time()

    async def progress(self) -> str | None:
        try:
            rollout = await rollout_store.get_rollout(self.call.pool, self.rollout_id)
        except RolloutNotFound:
            return None
        counts = await rollout_store.rollout_counts(self.call.pool, self.rollout_id)
        pace = await pace_store.pace_state(self.call.pool, self.rollout_id)
        state = str(rollout.state)
        await self.write(sse("progress", {
            "rollout": rollout.id, "state": state, "current_wave": rollout.current_wave,
            "counts": counts.by_state,
            "in_flight": sum(counts.by_state.get(s, 0) for s in IN_FLIGHT_TASK_STATES),
            "last_event_id": self.reader.after_id,
            "pace": pace.to_dict() if pace is not None else None,
        }))
        self.sent_state = state
        self.unreported = False
        return state

    async def token_valid(self) -> bool:
        """Whether the stream's token is still active (looked up again every
        `recheck_every` seconds; between two lookups the last answer holds)."""
        if self.token_id is None or self.loop.time() < self.next_check:
            return True
        self.next_check = self.loop.time() + self.recheck_every
        return await token_store.active_by_id(self.call.pool, self.token_id) is not None

    async def run(self, follow: bool) -> None:
        state = self.call.state
        await self.write(b"retry: 2000\n\n")
        await self.progress()
        while not state.closing.is_set():
            if not await self.token_valid():
                assert self.call.token is not None
                log.info("sse_token_no_longer_valid", caller=self.call.token.name,
                         rollout=self.rollout_id)
                await self.write(sse("unauthorized", {
                    "detail": "the bearer token was revoked or has expired",
                    "last_event_id": self.reader.after_id}))
                return
            batch = await self.reader.poll()
            for event in batch.events:
                await self.write(task_event(event))
            if batch.events:
                self.unreported = True
            head = batch.head
            if head.state is None:  # the rollout was deleted
                return
            if batch.more:
                continue  # the next page of the backlog at once
            if self.unreported or head.state != self.sent_state:
                await self.progress()
            quiet = batch.confirmed and not batch.events
            if quiet and head.state in TERMINAL_ROLLOUT_STATES and not head.in_flight \
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
    after = p["Last-Event-ID"]
    if after is None:
        after = p["last_event_id"]
    assert call.token is not None  # the operation requires the viewer role
    with call.request.app[STREAMS].slot(call.token.id, call.token.name):  # 429 first
        if not await rollout_store.rollout_exists(call.pool, rollout_id):
            raise not_found(rollout_id)
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
        except DB_TRANSIENT as exc:
            # the answer has started: no problem document can follow; end the stream, the
            # client reconnects (retry: 2000) with Last-Event-ID and misses nothing
            log.warning("sse_database_unavailable", error=type(exc).__name__,
                        rollout=rollout_id)
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
            TICKET_PARAM,
        ),
        ticket_auth=True,
        responses={200: Resp(
            "text/event-stream: `event: task` (id = task_events.id, data TaskEvent), "
            "`event: progress` (data Progress), `: keep-alive` comments, and `event: end` "
            "once the rollout is terminal with nothing in flight; `event: unauthorized` "
            "when the token was revoked or expired while the stream was open (then it "
            "ends). The schema is that of one event (api/stream_schema.py).",
            STREAM_EVENT, media_type="text/event-stream")},
        errors=(429,),
        description="At most `api_sse_max_streams_per_token` streams per token and "
                    "`api_sse_max_streams` in all are open at once: one more is answered "
                    "429 with `Retry-After`. The token is checked again every "
                    "`api_sse_token_recheck_seconds`: once it is revoked or has expired, "
                    "the stream sends `event: unauthorized` and ends. A browser's "
                    "EventSource, which cannot send the Authorization header, passes "
                    "`?ticket=` instead (a single-use stream ticket of the token, from "
                    "`POST /api/v1/stream-tickets`); such a stream is checked the same way, "
                    "by the token the ticket was made for.",
    ),
)
