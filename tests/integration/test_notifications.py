"""Notifications end to end: real rollouts driven by the engine against the simulator, their
events written to the outbox with the state changes, and delivered by the engine's
notifier to a local receiver, signed.

The ground truth of what must arrive is the documented sequence of each rollout's events
(docs/notifications.md); every request's signature is checked with the secret."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from orchestrator.domain.inventory import LAB_POLICY
from orchestrator.domain.notifications import verify
from orchestrator.engine.notifier import NotifierConfig
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import webhooks
from orchestrator.store import windows as window_store
from tests.fleet import ACTOR, create, engine, fleet, wait_for_state, wait_until_terminal
from tests.helpers import eventually
from tests.webhook_receiver import Received, Receiver, receiver

SECRET = "s3cret-for-the-test"
ENV = {"APPLIANCE_HOOK_SECRET": SECRET}


def notifier_config(**overrides: Any) -> NotifierConfig:
    values: dict[str, Any] = {
        "poll_interval": 0.1, "batch_seconds": 0.5, "backoff_base": 0.05,
        "backoff_cap": 0.2, "request_timeout": 2.0, "connect_timeout": 1.0,
        "environ": ENV, "policy": LAB_POLICY, "trust_env": False,
    }
    values.update(overrides)
    return NotifierConfig(**values)


def _events(rx: Receiver, rollout_id: int) -> list[dict[str, Any]]:
    """The distinct events of one rollout the receiver accepted, in arrival order."""
    seen: set[str] = set()
    out = []
    for r in rx.delivered:
        body = r.json
        if (body.get("rollout") or {}).get("id") == rollout_id and body["id"] not in seen:
            seen.add(body["id"])
            out.append(body)
    return out


def _finished(rollout_id: int) -> Callable[[Receiver], bool]:
    return lambda rx: any(e["type"] == "rollout.finished" for e in _events(rx, rollout_id))


def _signed(r: Received) -> bool:
    return verify(r.headers["X-Orchestrator-Signature"], SECRET.encode(), r.body,
                  now=time.time())


async def test_gate_trip_and_finish_send_exactly_the_documented_events(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with receiver() as rx, fleet(pool, db_url, appliances=6, sites=2) as f:
        await webhooks.add_webhook(pool, name="ops", url=rx.url, actor=ACTOR,
                                   secret_ref="env:APPLIANCE_HOOK_SECRET", policy=LAB_POLICY)
        gated = await create(pool, {"waves": [1, "100%"], "approval": "each-wave"},
                             selector={"names": ["sim-00001", "sim-00002", "sim-00003"]})
        failing = ["sim-00004", "sim-00005", "sim-00006"]
        for name in failing:
            f.sim.set_faults(name, ["install_error"])
        async with engine(f, notifier=notifier_config()):
            deadline = asyncio.get_running_loop().time() + 30
            while (await pool.fetchval("SELECT state FROM rollout_waves WHERE rollout_id = $1 "
                                       "AND number = 0", gated)) != "AWAITING_APPROVAL":
                assert asyncio.get_running_loop().time() < deadline, "no approval gate"
                await asyncio.sleep(0.05)
            await rx.wait_for(lambda rx: any(
                e["type"] == "approval.required" for e in _events(rx, gated)))
            await rollout_store.approve_rollout(pool, gated, ACTOR)
            assert (await wait_until_terminal(pool, gated)).state == "SUCCEEDED"
            tripped = await create(pool, {"waves": ["100%"], "max_failures": 0, "order": "name",
                                          "max_concurrency": 1},
                                   selector={"names": failing})
            assert (await wait_until_terminal(pool, tripped)).state == "FAILED"
            await rx.wait_for(_finished(gated))
            await rx.wait_for(_finished(tripped))
            # the last answer reached the notifier: it records it a moment later
            await eventually(lambda: webhooks.delivery_states(pool),
                             lambda states: states == {"delivered": 13})

        got = [(e["type"], e["data"].get("wave")) for e in _events(rx, gated)]
        assert got == [
            ("rollout.started", None), ("wave.started", 0), ("approval.required", 0),
            ("wave.finished", 0), ("wave.started", 1), ("wave.finished", 1),
            ("rollout.finished", None),
        ]
        finished = _events(rx, gated)[-1]["data"]
        assert finished["state"] == "SUCCEEDED" and finished["counts"] == {"SUCCEEDED": 3}
        assert finished["reports"]["html"] == f"/api/v1/rollouts/{gated}/report?format=html"

        events = _events(rx, tripped)
        assert [e["type"] for e in events] == [
            "rollout.started", "wave.started", "task.failed", "policy.tripped",
            "wave.finished", "rollout.finished"]
        failure = events[2]["data"]["failures"]
        assert [(x["appliance"], x["state"]) for x in failure] == [("sim-00004", "FAILED")]
        trip = events[3]["data"]
        assert "max_failures 0" in trip["reason"] and trip["cancelled"] == 2
        assert [x["appliance"] for x in trip["failed"]] == ["sim-00004"]
        assert events[4]["data"]["state"] == "FAILED"
        assert events[5]["data"]["state"] == "FAILED"
        assert events[5]["data"]["counts"] == {"CANCELLED": 2, "FAILED": 1}
        # what the appliances saw agrees: one install per appliance reached, the others
        # never started
        assert f.sim.stats()["installs_accepted"] == 4

        # every request signed with the secret, each event delivered once (the receiver
        # answered 200 at once), event ids unique
        assert rx.requests and all(_signed(r) for r in rx.requests)
        ids = [r.event_id for r in rx.requests]
        assert len(ids) == len(set(ids)) == 13
        states = await pool.fetch("SELECT state, count(*) AS n FROM webhook_deliveries "
                                  "GROUP BY state")
        assert {r["state"]: r["n"] for r in states} == {"delivered": 13}


async def test_a_receiver_that_never_answers_does_not_hold_the_rollout(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The receiver accepts the connection and never answers: the rollout ends all the
    same (its events wait on the receiver, not the other way round), and the first event is
    still pending, with its attempt and the timeout recorded."""
    async with receiver() as rx, fleet(pool, db_url, appliances=4, sites=2) as f:
        rx.default = "hang"
        await webhooks.add_webhook(pool, name="slow", url=rx.url, actor=ACTOR)
        rid = await create(pool, {"waves": [1, "100%"]})
        async with engine(f, notifier=notifier_config(request_timeout=60.0)):
            rollout = await wait_until_terminal(pool, rid)
            assert rollout.state == "SUCCEEDED"
            assert rx.requests, "the notifier never reached the receiver"
        assert len(rx.requests) == 1  # one request in flight per webhook, and it hangs
        rows = await pool.fetch(
            "SELECT event_type, state, attempts FROM webhook_deliveries ORDER BY id")
        assert [r["event_type"] for r in rows] == [
            "rollout.started", "wave.started", "wave.finished", "wave.started",
            "wave.finished", "rollout.finished"]
        assert {r["state"] for r in rows} == {"pending"}
        assert f.sim.stats()["installs_accepted"] == 4


async def test_a_failed_delivery_is_redelivered_with_the_same_event_id(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with receiver() as rx, fleet(pool, db_url, appliances=2, sites=1) as f:
        rx.script = [410]  # Gone: a 4xx other than 408/429 fails at once
        await webhooks.add_webhook(pool, name="ops", url=rx.url, actor=ACTOR,
                                   events=["rollout.finished"])
        rid = await create(pool, {})
        async with engine(f, notifier=notifier_config()):
            await wait_until_terminal(pool, rid)
            await rx.wait_for(lambda rx: len(rx.requests) == 1)
            # the answer reached the notifier; it records the failure a moment later
            failures = await eventually(
                lambda: webhooks.list_deliveries(pool, state="failed"), bool)
            [failed] = failures
            assert (failed.event_type, failed.last_status, failed.attempts) == (
                "rollout.finished", 410, 1)
            again = await webhooks.redeliver(pool, failed.id, ACTOR)
            assert again.state == "pending"
            await rx.wait_for(lambda rx: len(rx.delivered) == 1)
            await eventually(lambda: webhooks.get_delivery(pool, failed.id),
                             lambda d: d.state == "delivered")
        first, second = rx.requests
        assert first.event_id == second.event_id and first.json["type"] == "rollout.finished"
        assert (await webhooks.get_delivery(pool, failed.id)).state == "delivered"
        await wait_for_state(pool, rid, ("SUCCEEDED",))


async def test_a_closed_window_says_what_is_left_and_when_it_opens(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The rollout starts while its maintenance window is closed: window.closed names the
    appliances left and the next opening (in the engine's time), and the rollout goes on
    when the window opens."""
    async with receiver() as rx, fleet(pool, db_url, appliances=3, sites=1) as f:
        await webhooks.add_webhook(pool, name="ops", url=rx.url, actor=ACTOR)
        await window_store.create_window(pool, {
            "name": "every-minute", "cron": "* * * * *", "duration": 20, "cutoff": 2,
            "timezone": "UTC", "sites": ["site-01"],
        }, ACTOR)
        # the engine's clock is shifted so that the window (open 20 s from every minute's
        # start) is closed at the start and opens ~3 s later; durations stay real
        real = datetime.now(UTC)
        opening = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
        offset = opening - real - timedelta(seconds=3)
        rid = await create(pool, {})
        async with engine(f, clock=lambda: datetime.now(UTC) + offset,
                          notifier=notifier_config()):
            assert (await wait_until_terminal(pool, rid, timeout=45)).state == "SUCCEEDED"
            await rx.wait_for(_finished(rid))
    events = _events(rx, rid)
    assert [e["type"] for e in events] == [
        "rollout.started", "wave.started", "window.closed", "wave.finished",
        "rollout.finished"]
    closed = events[2]["data"]
    assert closed["started"] is False and closed["pending"] == 3
    assert datetime.fromisoformat(closed["next_opening"]) == opening


async def test_operator_actions_write_their_events_with_the_change(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Start, pause, resume, a scheduled start and a cancel each write their event in the
    transaction of the change (no engine runs: the outbox is the record); with no webhook,
    nothing is written at all."""
    async with fleet(pool, db_url, appliances=4, sites=2):
        quiet = await create(pool, {})
        await rollout_store.pause_rollout(pool, quiet, ACTOR)
        await rollout_store.cancel_rollout(pool, quiet, ACTOR)
        assert await pool.fetchval("SELECT count(*) FROM outbox_events") == 0
        await webhooks.add_webhook(pool, name="ops", url="http://127.0.0.1:9/hook",
                                   actor=ACTOR, site="site-02")
        await webhooks.add_webhook(pool, name="elsewhere", url="http://127.0.0.1:9/hook",
                                   actor=ACTOR, site="site-03")
        rid = await create(pool, {}, selector={"names": ["sim-00001", "sim-00002"]})
        await rollout_store.pause_rollout(pool, rid, ACTOR)
        await rollout_store.resume_rollout(pool, rid, ACTOR)
        later = await create(pool, {}, start=False,
                             selector={"names": ["sim-00003", "sim-00004"]})
        await rollout_store.start_rollout(pool, later, ACTOR,
                                          schedule_at=datetime.now(UTC) + timedelta(hours=1))
        await rollout_store.cancel_rollout(pool, later, ACTOR)
        rows = await pool.fetch(
            """SELECT e.rollout_id, e.type, e.sites, e.data, d.id IS NOT NULL AS queued
               FROM outbox_events e LEFT JOIN webhook_deliveries d ON d.event_id = e.id
               ORDER BY e.id""")
    assert [(r["rollout_id"], r["type"]) for r in rows] == [
        (rid, "rollout.started"), (rid, "wave.started"), (rid, "rollout.paused"),
        (rid, "rollout.resumed"), (later, "rollout.scheduled"), (later, "rollout.finished")]
    paused = rows[2]["data"]
    assert paused["by"] == ACTOR.name and paused["from_state"] == "RUNNING"
    assert rows[5]["data"]["state"] == "CANCELLED"
    assert rows[5]["data"]["counts"] == {"CANCELLED": 2}
    # each rollout has an appliance at site-01 and one at site-02 (sites alternate): its
    # events concern both, so the webhook of site-02 gets every one, that of site-03 none
    assert all(r["sites"] == ["site-01", "site-02"] for r in rows)
    assert all(r["queued"] for r in rows)
    assert (await webhooks.get_webhook(pool, "ops")).pending == 6
    assert (await webhooks.get_webhook(pool, "elsewhere")).pending == 0
