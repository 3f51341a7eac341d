"""Webhook deliveries end to end: events emitted in a transaction (store/webhooks.py), sent
by the notifier (engine/notifier.py) to a local receiver on 127.0.0.1, against the real
database.

What a receiver sees: a signed request with the documented headers; the same event id on
every attempt (503 twice then 200: three requests, delivered after attempt 3); a 4xx (or a
redirect) failing at once; 429's Retry-After honoured; a receiver that never answers
timing out into a retry; the last attempt failing; a redelivery with the same event id; a
lease left by a killed notifier taken over by another; each webhook's events in order;
two notifiers at once never sending one delivery twice at the same time; task.failed
batched; a slow receiver holding only its own webhook's queue.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from orchestrator import __version__
from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.domain.notifications import verify
from orchestrator.engine.notifier import Notifier, NotifierConfig
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.audit import Actor

pytestmark = pytest.mark.timeout(30)

ACTOR = Actor(name="ops", via="cli")
SECRET = "whsec-0123456789abcdef"
ENVIRON = {"APPLIANCE_HOOK_SECRET": SECRET}


# ------------------------------------------------------------------ the receiver
@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["X-Orchestrator-Event-Id"]


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers each path with
    the answers planned for it, in turn (then 200): a status, (status, headers, body), or
    "hang" (never answers, until the test ends)."""

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    plans: dict[str, list[Any]] = field(default_factory=dict)
    delay: float = 0.0
    in_flight: dict[str, int] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def plan(self, path: str, *answers: Any) -> None:
        self.plans.setdefault(path, []).extend(answers)

    def at(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen = Seen(request.path, dict(request.headers), body, time.monotonic())
        self.seen.append(seen)
        # the same delivery, or the same webhook (its path), twice at once is recorded
        keys = [f"delivery {request.headers.get('X-Orchestrator-Delivery')}",
                f"webhook {request.path}"]
        for key in keys:
            if self.in_flight.get(key):
                self.overlaps.append(key)
            self.in_flight[key] = self.in_flight.get(key, 0) + 1
        try:
            answers = self.plans.get(request.path)
            answer = answers.pop(0) if answers else 200
            if self.delay:
                await asyncio.sleep(self.delay)
            if answer == "hang":
                await self.released.wait()
                return web.Response(status=200)
            if isinstance(answer, int):
                return web.Response(status=answer, text="ok" if answer < 300 else "nope")
            status, headers, text = answer
            return web.Response(status=status, headers=headers, text=text)
        finally:
            for key in keys:
                self.in_flight[key] -= 1


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        rec.released.set()
        await runner.cleanup()


# ------------------------------------------------------------------ helpers
def config(**overrides: Any) -> NotifierConfig:
    values: dict[str, Any] = {
        "poll_interval": 0.05, "lease_seconds": 10.0, "concurrency": 8,
        "connect_timeout": 1.0, "request_timeout": 2.0, "max_attempts": 10,
        "backoff_base": 0.05, "backoff_cap": 0.2, "batch_seconds": 30.0,
        "trust_env": False, "environ": ENVIRON,
    }
    values.update(overrides)
    return NotifierConfig(**values)


async def hook(pool: asyncpg.Pool, rec: Receiver, name: str, *, signed: bool = False,
               **kwargs: Any) -> webhook_store.Webhook:
    return await webhook_store.add_webhook(
        pool, name=name, url=rec.url(f"/{name}"), actor=ACTOR,
        secret_ref="env:APPLIANCE_HOOK_SECRET" if signed else None, **kwargs)


async def emit(pool: asyncpg.Pool, event_type: str, data: dict[str, Any] | None = None,
               rollout_id: int | None = None) -> int:
    """One event written as the engine writes them: in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction():
        event_id = await webhook_store.emit(conn, event_type, rollout_id, data or {})
    assert event_id is not None
    return event_id


async def deliveries(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT d.id, w.name AS webhook, d.event_id, d.event_type, d.state, d.attempts,
                  d.last_status, d.last_error, d.batch_id, d.lease_owner,
                  extract(epoch FROM d.next_attempt_at - now())::float AS due_in
           FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
           ORDER BY d.id""")


async def make_due(pool: asyncpg.Pool) -> None:
    """The back-off is over (the test does not wait for it)."""
    await pool.execute("UPDATE webhook_deliveries SET next_attempt_at = now() "
                       "WHERE state = 'pending'")


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def stop(runner: asyncio.Task[None]) -> None:
    """Cancel `Notifier.run`: it must end, at once."""
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5.0):
            await runner


class LongestDelay(random.Random):
    """The back-off's jitter at its longest: a retry is certainly not due at once."""

    def uniform(self, a: float, b: float) -> float:
        return b


def failure(n: int) -> dict[str, Any]:
    return {"task_id": n, "appliance": f"vr-{n:02d}", "site": "paris", "state": "FAILED",
            "error_code": "INSTALL_FAILED", "message": f"install {n} failed", "wave": 1}


# ------------------------------------------------------------------ the tests
async def test_a_signed_delivery_with_every_header(pool: asyncpg.Pool,
                                                   receiver: Receiver) -> None:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name="vr-01", base_url="https://vr-01/api", site="paris")])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="spring", target_version="5.2.1", actor=ACTOR)
    await hook(pool, receiver, "ops", signed=True)
    event_id = await emit(pool, "approval.required", {"wave": 2}, rollout_id=rollout.id)
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        assert await notifier.deliver_once() == 1
        assert await notifier.deliver_once() == 0  # nothing left
    [seen] = receiver.seen
    [row] = await deliveries(pool)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.headers["User-Agent"] == f"fleet-orchestrator/{__version__}"
    assert seen.headers["X-Orchestrator-Event-Id"] == str(event_id)
    assert seen.headers["X-Orchestrator-Event"] == "approval.required"
    assert seen.headers["X-Orchestrator-Delivery"] == str(row["id"])
    assert seen.headers["X-Orchestrator-Attempt"] == "1"
    assert verify(seen.headers["X-Orchestrator-Signature"], SECRET.encode(), seen.body,
                  now=time.time())
    assert not verify(seen.headers["X-Orchestrator-Signature"], b"wrong", seen.body,
                      now=time.time())
    body = seen.json
    assert body["id"] == str(event_id) and body["type"] == "approval.required"
    assert body["rollout"] == {"id": rollout.id, "name": "spring", "target_version": "5.2.1"}
    assert body["data"] == {"wave": 2} and body["delivery"] == {"attempt": 1}
    assert body["at"].endswith("Z")


async def test_slack_format_and_unsigned_requests(pool: asyncpg.Pool,
                                                  receiver: Receiver) -> None:
    await hook(pool, receiver, "chat", format="slack")
    await emit(pool, "ping", {"webhook": "chat", "requested_by": "ops"})
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        assert await notifier.deliver_once() == 1
    [seen] = receiver.seen
    assert list(seen.json) == ["text"] and "ping" in seen.json["text"]
    assert "X-Orchestrator-Signature" not in seen.headers


async def test_503_twice_then_200_keeps_the_event_id(pool: asyncpg.Pool,
                                                     receiver: Receiver) -> None:
    await hook(pool, receiver, "ops", signed=True)
    receiver.plan("/ops", 503, 503, 200)
    event_id = await emit(pool, "rollout.finished", {"state": "SUCCEEDED"})
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        before = await pool.fetchval("SELECT clock_timestamp()")
        assert await notifier.deliver_once() == 1
        after = await pool.fetchval("SELECT clock_timestamp()")
        [row] = await deliveries(pool)
        assert (row["state"], row["attempts"], row["last_status"]) == ("pending", 1, 503)
        # the back-off (full jitter: anywhere from 0 to the cap) starts from the answer;
        # it is measured against the clock before and after the attempt, not against "now"
        # (a jitter of 10 ms would already be over by the time it is read)
        due = await pool.fetchval("SELECT next_attempt_at FROM webhook_deliveries")
        assert before <= due <= after + timedelta(seconds=0.2)
        for _ in range(2):
            await make_due(pool)
            assert await notifier.deliver_once() == 1
    assert [s.event_id for s in receiver.seen] == [str(event_id)] * 3
    assert [s.headers["X-Orchestrator-Attempt"] for s in receiver.seen] == ["1", "2", "3"]
    for seen in receiver.seen:  # each attempt signed anew
        assert verify(seen.headers["X-Orchestrator-Signature"], SECRET.encode(), seen.body,
                      now=time.time())
    [row] = await deliveries(pool)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 3, 200)


@pytest.mark.parametrize(("answer", "error"), [
    ((400, {}, "invalid_payload"), "invalid_payload"),
    ((302, {"Location": "/elsewhere"}, ""), "redirects are not followed"),
])
async def test_4xx_and_redirects_fail_at_once(pool: asyncpg.Pool, receiver: Receiver,
                                              answer: Any, error: str) -> None:
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", answer)
    await emit(pool, "wave.started", {"wave": 1})
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        assert await notifier.deliver_once() == 1
        await make_due(pool)
        assert await notifier.deliver_once() == 0
    [row] = await deliveries(pool)
    assert (row["state"], row["attempts"], row["last_status"]) == ("failed", 1, answer[0])
    assert error in row["last_error"]
    assert [s.path for s in receiver.seen] == ["/ops"]  # the redirect is not followed


async def test_429_retry_after_is_honoured(pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", (429, {"Retry-After": "7"}, "slow down"))
    await emit(pool, "wave.started", {"wave": 1})
    async with Notifier(pool, owner="n1", config=config(backoff_cap=60.0)) as notifier:
        assert await notifier.deliver_once() == 1
        assert await notifier.deliver_once() == 0  # not due for 7 s
    [row] = await deliveries(pool)
    assert (row["state"], row["last_status"]) == ("pending", 429)
    assert 6.0 <= row["due_in"] <= 7.5


async def test_a_receiver_that_never_answers_times_out_into_a_retry(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", "hang")
    await emit(pool, "wave.started", {"wave": 1})
    started = time.monotonic()
    async with Notifier(pool, owner="n1", config=config(request_timeout=0.5)) as notifier:
        assert await notifier.deliver_once() == 1
    assert time.monotonic() - started < 2.0
    [row] = await deliveries(pool)
    assert (row["state"], row["attempts"], row["last_status"]) == ("pending", 1, None)
    assert "no answer within 0.5 s" in row["last_error"]
    assert row["lease_owner"] is None


async def test_a_dead_receiver_fails_the_last_attempt_and_an_old_delivery(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    await hook(pool, receiver, "old")
    receiver.plan("/ops", 500, 500)
    receiver.plan("/old", 503)
    await emit(pool, "rollout.started", {"total": 3})
    # the delivery to "old" was written 2 days ago (the receiver was down since)
    await pool.execute("UPDATE webhook_deliveries d SET created_at = now() - interval '2 days'"
                       " FROM webhooks w WHERE w.id = d.webhook_id AND w.name = 'old'")
    async with Notifier(pool, owner="n1", config=config(max_attempts=2)) as notifier:
        assert await notifier.deliver_once() == 2
        await make_due(pool)
        assert await notifier.deliver_once() == 1
    rows = {r["webhook"]: r for r in await deliveries(pool)}
    assert (rows["ops"]["state"], rows["ops"]["attempts"]) == ("failed", 2)
    assert rows["ops"]["last_status"] == 500
    assert "gave up after 2 attempt(s)" in rows["ops"]["last_error"]
    assert (rows["old"]["state"], rows["old"]["attempts"]) == ("failed", 1)
    assert "old" in rows["old"]["last_error"] and "max_age" in rows["old"]["last_error"]


async def test_a_failed_delivery_is_redelivered_with_its_event_id(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", 404)
    event_id = await emit(pool, "policy.tripped", {"reason": "3 failed"})
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        assert await notifier.deliver_once() == 1
        [row] = await deliveries(pool)
        assert row["state"] == "failed"
        await webhook_store.redeliver(pool, row["id"], ACTOR)
        assert await notifier.deliver_once() == 1
    assert [s.event_id for s in receiver.seen] == [str(event_id)] * 2
    [row] = await deliveries(pool)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 1, 200)


async def test_a_lease_left_by_a_killed_notifier_is_taken_over(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    event_id = await emit(pool, "rollout.paused", {"by": "ops"})
    # notifier A claims and dies before it settles (it may or may not have sent it)
    [claimed] = await webhook_store.claim_deliveries(
        pool, owner="A", lease_seconds=0.3, limit=8, batch_seconds=30.0)
    assert claimed.event_id == event_id
    async with Notifier(pool, owner="B", config=config()) as b:
        assert await b.deliver_once() == 0  # A's lease still holds
        await asyncio.sleep(0.4)
        assert await b.deliver_once() == 1
    # A, back from the dead, settles: its lease is gone, nothing changes
    assert await webhook_store.settle(pool, claimed.ids, owner="A", outcome="failed",
                                      status=500) == 0
    [row] = await deliveries(pool)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 2, 200)
    assert [s.event_id for s in receiver.seen] == [str(event_id)]
    assert receiver.seen[0].headers["X-Orchestrator-Attempt"] == "2"


async def test_each_webhook_gets_its_events_in_order(pool: asyncpg.Pool,
                                                     receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", 503)  # the first event needs a retry: the others wait for it
    ids = [await emit(pool, "wave.started", {"wave": n}) for n in (1, 2, 3)]
    async with Notifier(pool, owner="n1", config=config(backoff_base=5.0, backoff_cap=5.0),
                        rng=LongestDelay()) as notifier:
        assert await notifier.deliver_once() == 1
        assert await notifier.deliver_once() == 0  # the first is not due: none overtakes
        await make_due(pool)
        for _ in range(3):
            assert await notifier.deliver_once() == 1
    assert [s.event_id for s in receiver.seen] == [str(i) for i in (ids[0], *ids)]
    assert {r["state"] for r in await deliveries(pool)} == {"delivered"}


async def test_two_notifiers_never_send_one_delivery_twice_at_once(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    names = [f"h{n}" for n in range(5)]
    for name in names:
        await hook(pool, receiver, name)
    for n in range(4):
        await emit(pool, "wave.started", {"wave": n})
    receiver.delay = 0.03
    cfg = config()
    async with Notifier(pool, owner="A", config=cfg) as a, \
            Notifier(pool, owner="B", config=cfg) as b:
        for _ in range(12):
            sent = await asyncio.gather(a.deliver_once(), b.deliver_once())
            if sum(sent) == 0 and all(r["state"] == "delivered"
                                      for r in await deliveries(pool)):
                break
    rows = await deliveries(pool)
    assert len(rows) == 20 and {r["state"] for r in rows} == {"delivered"}
    assert receiver.overlaps == []  # never one delivery, nor one webhook, twice at once
    # every delivery sent once, each webhook's in event order
    assert sorted(s.headers["X-Orchestrator-Delivery"] for s in receiver.seen) == \
        sorted(str(r["id"]) for r in rows)
    for name in names:
        ids = [int(s.event_id) for s in receiver.at(f"/{name}")]
        assert ids == sorted(ids) and len(ids) == 4


async def test_task_failures_are_batched(pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", 503)  # the batch is retried whole
    first = [await emit(pool, "task.failed", failure(n)) for n in range(1, 6)]
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        assert await notifier.deliver_once() == 1
        await make_due(pool)
        assert await notifier.deliver_once() == 1
        one, two = receiver.seen
        assert one.event_id == two.event_id == str(first[0])
        body = two.json
        assert body["type"] == "task.failed" and body["data"]["count"] == 5
        assert [f["appliance"] for f in body["data"]["failures"]] == \
            [f"vr-{n:02d}" for n in range(1, 6)]
        assert body["data"]["failures"][0]["error_code"] == "INSTALL_FAILED"
        rows = await deliveries(pool)
        assert {r["state"] for r in rows} == {"delivered"}
        assert {r["batch_id"] for r in rows} == {rows[0]["id"]}
        assert {r["attempts"] for r in rows} == {2}
        # a 6th failure within batch_seconds waits; the next event goes ahead
        sixth = await emit(pool, "task.failed", failure(6))
        finished = await emit(pool, "rollout.finished", {"state": "COMPLETED_WITH_FAILURES"})
        assert await notifier.deliver_once() == 1
        assert receiver.seen[-1].event_id == str(finished)
        assert await notifier.deliver_once() == 0
        # the rate limit is over
        await pool.execute("UPDATE webhooks SET last_batch_at = now() - interval '31 s'")
        assert await notifier.deliver_once() == 1
    last = receiver.seen[-1]
    assert last.event_id == str(sixth) and last.json["data"]["count"] == 1
    assert len(receiver.seen) == 4


async def test_an_unresolvable_secret_fails_the_delivery_naming_the_reference(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await webhook_store.add_webhook(pool, name="ops", url=receiver.url("/ops"), actor=ACTOR,
                                    secret_ref="env:APPLIANCE_NOT_SET")
    await emit(pool, "wave.started", {"wave": 1})
    async with Notifier(pool, owner="n1", config=config()) as notifier:
        assert await notifier.deliver_once() == 0
    [row] = await deliveries(pool)
    assert row["state"] == "failed" and "env:APPLIANCE_NOT_SET" in row["last_error"]
    assert receiver.seen == []


async def test_run_a_slow_receiver_holds_only_its_own_queue(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    await hook(pool, receiver, "slow")
    await hook(pool, receiver, "fast", events=["wave.started"])
    receiver.plan("/slow", "hang")
    notifier = Notifier(pool, owner="n1", config=config(request_timeout=5.0))
    runner = asyncio.create_task(notifier.run())
    try:
        ids = [await emit(pool, "wave.started", {"wave": n}) for n in (1, 2, 3)]
        await wait_for(lambda: len(receiver.at("/fast")) == 3, timeout=3.0)
        assert [s.event_id for s in receiver.at("/fast")] == [str(i) for i in ids]
        assert len(receiver.at("/slow")) == 1  # still waiting for its first answer
        # the third answer reached the receiver; its delivery is recorded a moment later
        deadline = asyncio.get_running_loop().time() + 5.0
        while await pool.fetchval(
                """SELECT count(*) FROM webhook_deliveries d JOIN webhooks w
                   ON w.id = d.webhook_id WHERE w.name = 'fast' AND d.state = 'delivered'"""
        ) < 3:
            assert asyncio.get_running_loop().time() < deadline, "fast deliveries not settled"
            await asyncio.sleep(0.02)
    finally:
        await stop(runner)
        await notifier.aclose()
    rows = {(r["webhook"], r["event_id"]): r for r in await deliveries(pool)}
    assert all(rows[("fast", i)]["state"] == "delivered" for i in ids)
    # the request cancelled with the notifier is handed back, due at once
    slow = rows[("slow", ids[0])]
    assert slow["state"] == "pending" and slow["lease_owner"] is None
    assert "stopped" in slow["last_error"] and slow["due_in"] <= 0.1


async def test_a_stop_reads_the_answer_of_a_request_already_sent(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    """The engine stops its notifier while a request is out (the demo's engine stops as
    soon as its rollout ends, with rollout.finished just sent): the answer, which arrives
    after the stop began, is still read and recorded, so no notifier sends the event
    again (it reached a receiver that answered 200 twice, seen with the demo)."""
    await hook(pool, receiver, "ops")
    receiver.plan("/ops", "hang")  # 200 once the test releases it
    event = await emit(pool, "rollout.finished", {"state": "SUCCEEDED"})
    notifier = Notifier(pool, owner="n1", config=config())
    runner = asyncio.create_task(notifier.run())
    try:
        await wait_for(lambda: len(receiver.seen) == 1)
        runner.cancel()  # the stop begins with the request unanswered
        await asyncio.sleep(0.3)
        assert not runner.done(), "the stop did not wait for the request already sent"
        receiver.released.set()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5.0):
                await runner
    finally:
        await notifier.aclose()
    [row] = await deliveries(pool)
    assert (row["event_id"], row["state"], row["attempts"]) == (event, "delivered", 1)
    assert row["lease_owner"] is None
    async with Notifier(pool, owner="n2", config=config()) as again:
        assert await again.deliver_once() == 0  # nothing left to send again
    assert len(receiver.seen) == 1


async def test_a_claim_cancelled_as_it_commits_is_handed_back(
        pool: asyncpg.Pool, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine stops its notifier right as the notifier claims (the last transition
    wrote rollout.finished and woke it): the claim commits its lease, but the cancellation
    reaches the loop before the answer does. The loop never sees that delivery, yet the
    stopped notifier hands it back, due at once, rather than leaving it leased for
    `webhook_lease_seconds` (the demo, which delivers what its engine left, gave up)."""
    await hook(pool, receiver, "ops")
    event = await emit(pool, "rollout.finished", {"state": "SUCCEEDED"})
    real_claim = webhook_store.claim_deliveries
    lost: list[int] = []

    async def claim_then_cancelled(*args: Any, **kwargs: Any) -> list[Any]:
        claimed = await real_claim(*args, **kwargs)  # committed
        lost.extend(i for out in claimed for i in out.ids)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the stop arrives before the loop sees the answer
        await asyncio.sleep(0)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(webhook_store, "claim_deliveries", claim_then_cancelled)
    notifier = Notifier(pool, owner="n1", config=config(lease_seconds=60.0))
    runner = asyncio.create_task(notifier.run())
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5.0):
            await runner
    await notifier.aclose()
    # the fault happened: a lease was taken, and no request was sent
    assert len(lost) == 1 and receiver.seen == []
    [row] = await deliveries(pool)
    assert (row["id"], row["state"], row["attempts"]) == (lost[0], "pending", 1)
    assert row["lease_owner"] is None and row["due_in"] <= 0.1
    assert "stopped" in row["last_error"]
    # so the next notifier sends it now, not a lease (60 s) later
    monkeypatch.setattr(webhook_store, "claim_deliveries", real_claim)
    async with Notifier(pool, owner="n2", config=config()) as other:
        assert await other.deliver_once() == 1
    assert [s.event_id for s in receiver.at("/ops")] == [str(event)]
    assert [r["state"] for r in await deliveries(pool)] == ["delivered"]


async def test_run_survives_a_database_error(pool: asyncpg.Pool, receiver: Receiver,
                                             db_url: str) -> None:
    await hook(pool, receiver, "ops")
    other = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    notifier = Notifier(other, owner="n1", config=config())
    runner = asyncio.create_task(notifier.run())
    try:
        await asyncio.sleep(0.1)
        await other.close()  # every claim now fails
        await asyncio.sleep(0.2)
        assert not runner.done()
    finally:
        await stop(runner)
        await notifier.aclose()


async def test_requests_go_through_the_proxy_of_the_environment(
        pool: asyncpg.Pool, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY and NO_PROXY apply as they do to the appliance client: the receiver
    plays the proxy of a host that does not resolve."""
    for name in ("HTTPS_PROXY", "https_proxy", "http_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{receiver.port}")
    await webhook_store.add_webhook(pool, name="far", url="http://hooks.example.invalid/far",
                                    actor=ACTOR)
    await emit(pool, "wave.started", {"wave": 1})
    async with Notifier(pool, owner="n1", config=config(trust_env=True)) as notifier:
        assert await notifier.deliver_once() == 1
    [seen] = receiver.seen
    assert seen.path == "/far" and seen.headers["Host"] == "hooks.example.invalid"
    # NO_PROXY names the host: reached directly, it does not resolve (a retry)
    monkeypatch.setenv("NO_PROXY", "hooks.example.invalid")
    await emit(pool, "wave.started", {"wave": 2})
    async with Notifier(pool, owner="n1", config=config(trust_env=True)) as notifier:
        assert await notifier.deliver_once() == 1
    assert len(receiver.seen) == 1
    row = (await deliveries(pool))[-1]
    assert row["state"] == "pending" and row["last_status"] is None and row["last_error"]


async def test_the_end_of_a_rate_limit_does_not_open_a_second_request(
        pool: asyncpg.Pool, receiver: Receiver) -> None:
    """A task.failed held back by the rate limit while a newer event of its webhook is in
    flight stays queued when the limit ends: one request at a time per webhook."""
    await hook(pool, receiver, "ops")
    await pool.execute("UPDATE webhooks SET last_batch_at = now()")  # a batch just went
    await emit(pool, "task.failed", failure(1))
    finished = await emit(pool, "rollout.finished", {"state": "FAILED"})
    [in_flight] = await webhook_store.claim_deliveries(
        pool, owner="A", lease_seconds=30.0, limit=8, batch_seconds=30.0)
    assert in_flight.event_id == finished
    await pool.execute("UPDATE webhooks SET last_batch_at = now() - interval '1 hour'")
    assert await webhook_store.claim_deliveries(
        pool, owner="B", lease_seconds=30.0, limit=8, batch_seconds=30.0) == []
    await webhook_store.settle(pool, in_flight.ids, owner="A", outcome="delivered",
                               status=200)
    [batch] = await webhook_store.claim_deliveries(
        pool, owner="B", lease_seconds=30.0, limit=8, batch_seconds=30.0)
    assert batch.event_type == "task.failed"
