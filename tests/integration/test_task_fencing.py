"""Lease tokens, the guarded write before the install POST, the fleet-wide one-install rule,
and writes that survive a bad row: against a real database."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from orchestrator.engine import engine as engine_module
from orchestrator.engine.batching import TransitionBatcher
from orchestrator.simulator import FaultProfile
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store.tasks import ClaimedTask, SendVerdict, TransitionRequest
from tests.fleet import ACTOR, create, engine, fleet, wait_until_terminal

OWNER = "owner-a"
OTHER = "owner-b"


async def _claim(pool: asyncpg.Pool, rid: int, n: int, owner: str = OWNER,
                 **kw: Any) -> list[ClaimedTask]:
    async with pool.acquire() as conn, conn.transaction():
        await task_store.lock_rollout(conn, rid)
        return await task_store.claim_tasks(
            conn, rollout_id=rid, current_wave=0, owner=owner, lease_seconds=60,
            max_in_flight=n, per_site=None, starts_per_minute=None, limit=n, **kw,
        )


async def _guard(pool: asyncpg.Pool, task: ClaimedTask, *, token: uuid.UUID | None = None,
                 owner: str = OWNER, margin: float = 1.0) -> str:
    async with pool.acquire() as conn:
        verdict, _ = await task_store.guard_install_send(
            conn, task_id=task.id, owner=owner, token=token or task.lease_token,
            from_version="9.0.0-10010", lease_margin=margin,
        )
    return verdict


async def test_every_claim_and_reclaim_issues_a_new_token(pool: asyncpg.Pool,
                                                          db_url: str) -> None:
    async with fleet(pool, db_url, appliances=2, sites=1):
        rid = await create(pool)
        (task, _) = await _claim(pool, rid, 2)
        # the lease runs out; another worker reclaims the task: a new token
        await pool.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 s' "
                           "WHERE id = $1", task.id)
        async with pool.acquire() as conn:
            (taken,) = [t for t in await task_store.reclaim_expired(
                conn, owner=OTHER, lease_seconds=60, limit=10) if t.id == task.id]
        assert taken.lease_token != task.lease_token
        # the first owner's writes and renewals match nothing any more...
        async with pool.acquire() as conn:
            stale = await task_store.transition_many(conn, owner=OWNER, requests=[
                TransitionRequest(task.id, "DISPATCHING", "PENDING", {},
                                  token=task.lease_token)])
            kept = await task_store.renew_leases(conn, owner=OWNER,
                                                 leases={task.id: task.lease_token},
                                                 lease_seconds=60)
        assert stale == set() and kept == set()
        assert await _guard(pool, task) == SendVerdict.LOST
        # ...even under the new owner's name with the old token (a reclaim by itself)
        async with pool.acquire() as conn:
            assert await task_store.transition_many(conn, owner=OTHER, requests=[
                TransitionRequest(task.id, "DISPATCHING", "PENDING", {},
                                  token=task.lease_token)]) == set()
            assert await task_store.transition_many(conn, owner=OTHER, requests=[
                TransitionRequest(task.id, "DISPATCHING", "PENDING", {},
                                  token=taken.lease_token)]) == {task.id}


async def test_guard_before_the_post_follows_the_rollout(pool: asyncpg.Pool,
                                                         db_url: str) -> None:
    async with fleet(pool, db_url, appliances=4, sites=1):
        rid = await create(pool)
        a, b, c, d = await _claim(pool, rid, 4)
        assert await _guard(pool, a) == SendVerdict.SEND
        row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", a.id)
        assert row["install_sent_at"] is not None and row["installs_sent"] == 1
        assert row["from_version"] == "9.0.0-10010"
        # a lease that would run out during the call: held back
        assert await _guard(pool, b, margin=120) == SendVerdict.HOLD
        assert await _guard(pool, b, token=uuid.uuid4()) == SendVerdict.LOST
        await rollout_store.pause_rollout(pool, rid, ACTOR)
        assert await _guard(pool, b) == SendVerdict.HOLD
        await rollout_store.resume_rollout(pool, rid, ACTOR)
        await pool.execute("UPDATE rollouts SET abort_reason = 'tripped' WHERE id = $1", rid)
        assert await _guard(pool, c) == SendVerdict.CANCEL
        await pool.execute("UPDATE rollouts SET abort_reason = NULL WHERE id = $1", rid)
        await rollout_store.cancel_rollout(pool, rid, ACTOR)
        assert await _guard(pool, d) == SendVerdict.CANCEL
        for task in (b, c, d):  # nothing recorded as sent
            assert await pool.fetchval(
                "SELECT install_sent_at FROM tasks WHERE id = $1", task.id) is None


async def test_one_task_in_flight_per_appliance_across_rollouts(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1):
        first = await create(pool)
        second = await create(pool, {"after_overlapping": True})
        claimed = await _claim(pool, first, 2)
        busy = {t.appliance_id for t in claimed}
        # the second rollout waits for the first one's tasks (in flight or still pending)
        assert await _claim(pool, second, 3, after_overlapping=True) == []
        # without the wait, it still never takes an appliance that has a task in flight
        other = await _claim(pool, second, 3)
        assert {t.appliance_id for t in other}.isdisjoint(busy) and len(other) == 1
        # and the database refuses a second in-flight task for one appliance outright
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute(
                """UPDATE tasks SET state = 'DISPATCHING', lease_owner = 'x',
                          lease_token = gen_random_uuid(), lease_expires_at = now()
                   WHERE rollout_id = $1 AND appliance_id = $2""",
                second, claimed[0].appliance_id)


async def test_site_capacity_is_shared_by_every_rollout(pool: asyncpg.Pool,
                                                        db_url: str) -> None:
    async with fleet(pool, db_url, appliances=8, sites=1) as f:
        names = list(f.sim.names)
        first = await create(pool, selector={"names": names[:4]})
        second = await create(pool, selector={"names": names[4:]})
        await pool.execute("INSERT INTO sites (name, max_in_flight) VALUES ('site-01', 3)")
        assert len(await _claim(pool, first, 2)) == 2
        assert len(await _claim(pool, second, 4)) == 1  # 3 in flight at the site, all told
        assert await _claim(pool, first, 4) == []


async def test_a_bad_row_fails_alone_and_appliance_text_is_cleaned(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1):
        rid = await create(pool)
        a, b, c = await _claim(pool, rid, 3)
        batcher = TransitionBatcher(pool, OWNER, delay=0.05)
        results = await asyncio.gather(
            batcher.submit(TransitionRequest(a.id, "DISPATCHING", "FAILED",
                                             {"message": "bad\x00 text \ud800"},
                                             fields={"error_message": "no\x00pe \udfff",
                                                     "error_code": "X"},
                                             token=a.lease_token)),
            # progress 500 breaks a CHECK constraint: this row alone must fail
            batcher.submit(TransitionRequest(b.id, "DISPATCHING", "DISPATCHING",
                                             fields={"progress": 500}, event=False,
                                             token=b.lease_token)),
            batcher.submit(TransitionRequest(c.id, "DISPATCHING", "PENDING", {},
                                             token=c.lease_token)),
            return_exceptions=True,
        )
        await batcher.aclose()
        assert results[0] is True and results[2] is True
        assert isinstance(results[1], asyncpg.CheckViolationError)
        row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", a.id)
        assert (row["state"], row["error_message"]) == ("FAILED", "nope \ufffd")
        detail = await pool.fetchval(
            "SELECT detail FROM task_events WHERE task_id = $1 ORDER BY id DESC LIMIT 1", a.id)
        assert "bad text \ufffd" in str(detail)
        assert await pool.fetchval("SELECT state FROM tasks WHERE id = $1", c.id) == "PENDING"


async def test_a_task_sent_back_after_a_cancel_or_a_trip_is_cancelled(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """A claimed task that comes back unsent (a retry, a hold) after its rollout was
    cancelled or its policy tripped is CANCELLED, never left PENDING for nobody."""
    async with fleet(pool, db_url, appliances=2, sites=1):
        tripped = await create(pool)
        (a, _) = await _claim(pool, tripped, 2)
        await pool.execute("UPDATE rollouts SET abort_reason = 'tripped' WHERE id = $1",
                           tripped)
        async with pool.acquire() as conn:
            assert await task_store.transition_many(conn, owner=OWNER, requests=[
                TransitionRequest(a.id, "DISPATCHING", "PENDING", {"reason": "retry"},
                                  token=a.lease_token)]) == {a.id}
        row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", a.id)
        assert row["state"] == "CANCELLED" and row["finished_at"] is not None
        assert row["lease_owner"] is None
        detail = await pool.fetchval(
            "SELECT detail FROM task_events WHERE task_id = $1 ORDER BY id DESC LIMIT 1", a.id)
        assert "never sent" in str(detail)


async def test_a_task_sent_back_while_running_is_pending(pool: asyncpg.Pool,
                                                         db_url: str) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1):
        rid = await create(pool)
        (a,) = await _claim(pool, rid, 1)
        async with pool.acquire() as conn:
            await task_store.transition_many(conn, owner=OWNER, requests=[
                TransitionRequest(a.id, "DISPATCHING", "PENDING", {"reason": "retry"},
                                  token=a.lease_token)])
        assert await pool.fetchval("SELECT state FROM tasks WHERE id = $1", a.id) == "PENDING"


async def test_background_loops_survive_any_error(
    pool: asyncpg.Pool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease renewal meets an error that is not a dropped connection (here: a bad
    value): it logs, carries on, and the next renewal keeps the leases. (One failure:
    renewals run every third of the lease, so a second one in a row would leave the next
    renewal racing the lease's end on a loaded machine.)"""
    failures = {"left": 1}
    renew = task_store.renew_leases

    async def flaky(*args: Any, **kwargs: Any) -> set[int]:
        if failures["left"]:
            failures["left"] -= 1
            raise ValueError("not a connection error")
        return await renew(*args, **kwargs)

    monkeypatch.setattr(engine_module.task_store, "renew_leases", flaky)
    profile = FaultProfile(appliances={"sim-00001": ["long_reboot"]},
                           params={"long_reboot_seconds": 3.0})
    async with fleet(pool, db_url, appliances=1, sites=1, profile=profile) as f:
        rid = await create(pool, {"reboot_grace": 8, "task_timeout": 30})
        async with engine(f, lease_seconds=1.5):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while failures["left"]:  # the faults happen
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            # the install runs 3 s more: the loop goes on renewing, the lease never lapses
            for _ in range(8):
                fresh = await pool.fetchval(
                    "SELECT lease_expires_at > now() FROM tasks WHERE rollout_id = $1 "
                    "AND state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')", rid)
                assert fresh in (True, None)
                await asyncio.sleep(0.25)
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
