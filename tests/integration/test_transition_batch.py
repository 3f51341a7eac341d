"""Writes of many runners made together: `transition_many` (one statement, each task guarded
on its own) and the engine's `TransitionBatcher` in front of it; the guarded install sends
(`guard_install_sends`) and the `GuardBatcher`; and the runner's learned timings."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import asyncpg

from orchestrator.engine.batching import GuardBatcher, TransitionBatcher
from orchestrator.engine.pacing import InstallTimes, ReturnOffsets
from orchestrator.store import tasks as task_store
from orchestrator.store.tasks import GuardRequest, TransitionRequest
from tests.fleet import TARGET, create, events_of, fleet

OWNER = "test-owner"


def _req(task: task_store.ClaimedTask, *args: Any, **kwargs: Any) -> TransitionRequest:
    """A transition of `task` under the lease token of its claim."""
    return TransitionRequest(task.id, *args, token=task.lease_token, **kwargs)


async def _claim(pool: asyncpg.Pool, rid: int, n: int) -> list[task_store.ClaimedTask]:
    async with pool.acquire() as conn, conn.transaction():
        await task_store.lock_rollout(conn, rid)
        return await task_store.claim_tasks(
            conn, rollout_id=rid, current_wave=0, owner=OWNER, lease_seconds=60,
            max_in_flight=n, per_site=None, starts_per_minute=None, limit=n,
        )


async def test_transition_many_guards_each_task(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1):
        rid = await create(pool)
        a, b, c = await _claim(pool, rid, 3)
        accepted = datetime.now(UTC)
        async with pool.acquire() as conn:
            matched = await task_store.transition_many(conn, owner=OWNER, requests=[
                _req(a, "DISPATCHING", "DISPATCHING",
                                  fields={"from_version": "9.0.0-10010"}, event=False),
                _req(b, "DISPATCHING", "INSTALLING", {"remote_task_id": "r1"},
                                  fields={"remote_task_id": "r1", "accepted_at": accepted}),
                # wrong expected state: another worker would own it, nothing changes
                _req(c, "INSTALLING", "VERIFYING", {"reason": "x"}),
            ])
        assert matched == {a.id, b.id}
        rows = {r["id"]: r for r in await pool.fetch(
            "SELECT * FROM tasks WHERE rollout_id = $1", rid)}
        assert rows[a.id]["state"] == "DISPATCHING"
        assert rows[a.id]["from_version"] == "9.0.0-10010"
        assert rows[b.id]["state"] == "INSTALLING"
        assert rows[b.id]["remote_task_id"] == "r1"
        assert rows[b.id]["accepted_at"] is not None
        assert rows[c.id]["state"] == "DISPATCHING"
        assert await events_of(pool, a.id) == [(None, "PENDING"), ("PENDING", "DISPATCHING")]
        assert await events_of(pool, c.id) == [(None, "PENDING"), ("PENDING", "DISPATCHING")]

        # through VERIFYING to SUCCEEDED in one statement: two events, lease released
        async with pool.acquire() as conn:
            matched = await task_store.transition_many(conn, owner=OWNER, requests=[
                _req(b, "INSTALLING", "SUCCEEDED", {}, via="VERIFYING",
                                  via_detail={"reason": "back up on the target version"},
                                  fields={"final_version": TARGET, "progress": 100,
                                          "reconfigure_required": None}),
            ])
        assert matched == {b.id}
        row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", b.id)
        assert row["state"] == "SUCCEEDED"
        assert row["lease_owner"] is None and row["finished_at"] is not None
        assert row["progress"] == 100 and row["reconfigure_required"] is None
        assert await events_of(pool, b.id) == [
            (None, "PENDING"), ("PENDING", "DISPATCHING"), ("DISPATCHING", "INSTALLING"),
            ("INSTALLING", "VERIFYING"), ("VERIFYING", "SUCCEEDED"),
        ]
        assert await pool.fetchval(
            "SELECT current_version FROM appliances WHERE id = $1", b.appliance_id) == TARGET


async def test_batcher_writes_concurrent_transitions_in_one_statement(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=5, sites=1):
        rid = await create(pool)
        claimed = await _claim(pool, rid, 5)
        batcher = TransitionBatcher(pool, OWNER, delay=0.05)
        results = await asyncio.gather(*(
            batcher.submit(_req(t, "DISPATCHING", "PENDING", {"reason": "r"}))
            for t in claimed
        ), batcher.submit(_req(claimed[0], "VERIFYING", "SUCCEEDED", {})))
        # the same task twice: the second waits for the next statement, where its guard fails
        assert results == [True] * 5 + [False]
        assert batcher.statements == 2
        assert await pool.fetchval(
            "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state = 'PENDING' "
            "AND lease_owner IS NULL", rid) == 5
        await batcher.aclose()


async def test_guard_batcher_judges_each_send_of_a_burst_in_one_statement(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The guarded writes right before install POSTs of four runners share one statement,
    each task judged on its own: ours with a fresh lease -> send (recorded as sent, with the
    version seen before); a stale lease token -> lost; a lease that would run out during
    the install call -> hold. Nothing is written for the last two. Then a paused rollout
    holds every send, and a cancelled one cancels them."""
    async with fleet(pool, db_url, appliances=4, sites=1):
        rid = await create(pool)
        a, b, c, d = await _claim(pool, rid, 4)  # leases of 60 s
        guards = GuardBatcher(pool, OWNER, delay=0.05)
        results = await asyncio.gather(
            guards.submit(GuardRequest(a.id, a.lease_token, "9.0.0-10010", 5.0)),
            guards.submit(GuardRequest(b.id, uuid4(), "9.0.0-10010", 5.0)),
            guards.submit(GuardRequest(c.id, c.lease_token, "9.0.0-10010", 3600.0)),
            guards.submit(GuardRequest(d.id, d.lease_token, None, 5.0)),
        )
        assert results == [
            ("send", ""), ("lost", ""),
            ("hold", "the lease would expire during the install call"), ("send", ""),
        ]
        assert guards.statements == 1
        rows = {r["id"]: r for r in await pool.fetch(
            "SELECT id, install_sent_at, installs_sent, from_version FROM tasks "
            "WHERE rollout_id = $1", rid)}
        assert rows[a.id]["installs_sent"] == 1 and rows[a.id]["install_sent_at"] is not None
        assert rows[a.id]["from_version"] == "9.0.0-10010"
        assert rows[d.id]["installs_sent"] == 1 and rows[d.id]["from_version"] is None
        for task in (b, c):
            assert rows[task.id]["installs_sent"] == 0
            assert rows[task.id]["install_sent_at"] is None
        await pool.execute("UPDATE rollouts SET state = 'PAUSED' WHERE id = $1", rid)
        assert await guards.submit(GuardRequest(c.id, c.lease_token, None, 5.0)) == (
            "hold", "rollout is PAUSED")
        await pool.execute("UPDATE rollouts SET state = 'CANCELLED' WHERE id = $1", rid)
        assert await guards.submit(GuardRequest(c.id, c.lease_token, None, 5.0)) == (
            "cancel", "rollout is CANCELLED")
        assert await pool.fetchval(
            "SELECT installs_sent FROM tasks WHERE id = $1", c.id) == 0
        await guards.aclose()


def test_install_times_steady_and_low() -> None:
    times = InstallTimes(default=60.0)
    assert not times.steady() and times.low() == 60.0
    for seconds in (20.0, 20.1, 20.2, 19.9, 20.0, 20.1):
        times.add(seconds)
    assert times.steady()
    assert 19.9 <= times.low() <= 20.0
    for seconds in (14.0, 26.0, 15.0, 25.0):
        times.add(seconds)
    assert not times.steady()


def test_return_offsets_scouts() -> None:
    offsets = ReturnOffsets(every=4)
    assert offsets.expected() is None and offsets.next_is_scout()
    for seconds in (5.2, 5.0, 5.4, 5.1, 9.0):
        offsets.add(seconds)
    # a high percentile of the recent measurements, not the one outlier
    assert offsets.expected() == 5.4
    scouts = [offsets.next_is_scout() for _ in range(8)]
    assert scouts.count(True) == 2


def test_return_offsets_scout_less_while_they_agree() -> None:
    """A scout's early probes each cost a connection the restarting appliance drops: while
    the recent returns agree within half a second, one task in `every_steady` scouts; once
    they spread out, one in `every` again."""
    offsets = ReturnOffsets(every=4, every_steady=10)
    for seconds in (5.0, 5.1, 5.2, 5.0, 5.1, 5.05, 5.15, 5.0, 5.1, 5.2):
        offsets.add(seconds)
    assert offsets.steady()
    assert [offsets.next_is_scout() for _ in range(20)].count(True) == 2
    for seconds in (9.0, 2.0, 8.0, 3.0):
        offsets.add(seconds)
    assert not offsets.steady()
    assert [offsets.next_is_scout() for _ in range(8)].count(True) == 2
