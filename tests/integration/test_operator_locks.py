"""An operator's control of a rollout (retry-failed here) against the engine's transactions
on the same rollout: they wait for each other, never deadlock.

Seen on a slow machine (tests/e2e/test_engine_truth.py): retry-failed locked the rollout's
row FOR UPDATE and then waited for a TIMED_OUT task's row, which the engine held while it
inserted that task's event; the event's foreign key asked for FOR KEY SHARE of the rollout,
which FOR UPDATE refuses: PostgreSQL broke the cycle by failing the retry-failed."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.audit import Actor
from tests.helpers import eventually

ACTOR = Actor(name="ops", via="cli")


async def _waiting_on_a_lock(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"))


async def test_retry_failed_waits_for_a_task_row_whose_holder_writes_an_event(
    pool: asyncpg.Pool,
) -> None:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name=f"a-{i}", base_url=f"https://a-{i}/api", site="a") for i in (1, 2)
    ])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="r", target_version="9.0.1-20020", actor=ACTOR,
        strategy={"waves": ["100%"], "order": "name", "preflight": "off"},
    )
    rid = rollout.id
    # the rollout ended with a1's task TIMED_OUT (its appliance came back too late)
    task_id = await pool.fetchval(
        "SELECT id FROM tasks WHERE rollout_id = $1 ORDER BY id LIMIT 1", rid)
    await pool.execute("UPDATE tasks SET state = 'TIMED_OUT', finished_at = now() "
                       "WHERE id = $1", task_id)
    await pool.execute("UPDATE tasks SET state = 'SUCCEEDED', finished_at = now() "
                       "WHERE rollout_id = $1 AND id <> $2", rid, task_id)
    await pool.execute("UPDATE rollouts SET state = 'COMPLETED_WITH_FAILURES', "
                       "started_at = now(), finished_at = now() WHERE id = $1", rid)

    async with pool.acquire() as engine_conn:
        engine_tx = engine_conn.transaction()
        await engine_tx.start()
        # the engine holds the task's row (as a held slot's release or a transition does)
        await engine_conn.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", task_id)
        retry = asyncio.create_task(rollout_store.retry_failed(pool, rid, ACTOR))
        # the retry has locked the rollout and waits for the task's row
        await eventually(lambda: _waiting_on_a_lock(pool), lambda n: n >= 1)
        assert not retry.done()
        # ... and the engine inserts the task's event: it must not wait for the retry
        await asyncio.wait_for(engine_conn.execute(
            "INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail) "
            "VALUES ($1, $2, 'TIMED_OUT', 'TIMED_OUT', $3::jsonb)",
            task_id, rid, json.dumps({"reason": "held slot released"})), timeout=10)
        await engine_tx.commit()
    result = await asyncio.wait_for(retry, timeout=10)
    assert result.rollout.state == "RUNNING"
    assert await pool.fetchval("SELECT state FROM tasks WHERE id = $1", task_id) == "PENDING"
    assert await pool.fetchval(
        "SELECT count(*) FROM task_events WHERE task_id = $1 AND to_state = 'PENDING' "
        "AND detail->>'reason' = 'retry-failed'", task_id) == 1
