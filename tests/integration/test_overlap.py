"""Overlapping rollouts: creating or starting a rollout whose appliances have an unfinished
task in another active rollout is refused (naming the other rollout and the appliances)
unless its strategy says `after_overlapping`; retry-failed checks the same and starts the
retried tasks afresh. Store and API against a real database."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.audit import Actor
from orchestrator.store.rollouts import OverlapError, Rollout
from tests.integration.test_api import _api
from tests.integration.test_api_support import api_client, tokens_by_role

ACTOR = Actor(name="t")
VERSION = "9.0.1-20020"


async def _fleet(pool: asyncpg.Pool, **sites: int) -> None:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name=f"vr-{site}-{i:02d}", base_url=f"https://vr-{site}-{i}/api",
                      site=site)
        for site, count in sites.items() for i in range(1, count + 1)
    ])


async def _create(pool: asyncpg.Pool, name: str, sites: list[str] | None = None,
                  **strategy: Any) -> Rollout:
    rollout, _ = await rollout_store.create_rollout(
        pool, name=name, target_version=VERSION, actor=ACTOR,
        selector={"sites": sites} if sites else {},
        strategy={"waves": ["100%"], **strategy},
    )
    return rollout


async def _finish(pool: asyncpg.Pool, rollout_id: int, state: str = "SUCCEEDED") -> None:
    await pool.execute(
        """UPDATE tasks SET state = $2, finished_at = now() WHERE rollout_id = $1""",
        rollout_id, state,
    )
    await pool.execute(
        "UPDATE rollouts SET state = $2, finished_at = now() WHERE id = $1", rollout_id, state,
    )


async def test_create_and_start_refused_while_an_active_rollout_holds_the_appliances(
    pool: asyncpg.Pool,
) -> None:
    await _fleet(pool, ams=3, nyc=2)
    first = await _create(pool, "ams first", ["ams"])
    # another DRAFT does not block: a DRAFT rollout installs nothing
    everything = await _create(pool, "everything")
    await rollout_store.start_rollout(pool, first.id, ACTOR)

    with pytest.raises(OverlapError) as refused:
        await _create(pool, "ams again", ["ams"])
    message = str(refused.value)
    assert message.startswith("cannot create rollout 'ams again': 3 of its appliances have "
                              "an unfinished task in active rollout ")
    assert f"{first.id} 'ams first' (RUNNING)" in message
    assert "vr-ams-01, vr-ams-02, vr-ams-03" in message
    assert "--after-overlapping" in message and "strategy.after_overlapping" in message
    assert "nyc" not in message
    assert [r.to_dict() for r in refused.value.rollouts] == [
        {"id": first.id, "name": "ams first", "state": "RUNNING"}]
    assert refused.value.appliances == ["vr-ams-01", "vr-ams-02", "vr-ams-03"]
    assert await pool.fetchval("SELECT count(*) FROM rollouts WHERE name = 'ams again'") == 0

    with pytest.raises(OverlapError) as refused:
        await rollout_store.start_rollout(pool, everything.id, ACTOR)
    assert str(refused.value).startswith(f"cannot start rollout {everything.id}: 3 of its ")
    assert f"{first.id} 'ams first' (RUNNING)" in str(refused.value)
    assert "create it again with --after-overlapping" in str(refused.value)
    assert (await rollout_store.get_rollout(pool, everything.id)).state == "DRAFT"

    # PAUSED, SCHEDULED and WAITING_WINDOW hold their appliances too
    for state in ("PAUSED", "SCHEDULED", "WAITING_WINDOW"):
        await pool.execute("UPDATE rollouts SET state = $2 WHERE id = $1", first.id, state)
        with pytest.raises(OverlapError, match=rf"'ams first' \({state}\)"):
            await rollout_store.start_rollout(pool, everything.id, ACTOR)

    # asked for: created and started; its tasks wait (the engine's business)
    queued = await _create(pool, "queued", ["ams"], after_overlapping=True)
    assert queued.strategy.after_overlapping is True
    assert queued.to_dict()["strategy"]["after_overlapping"] is True
    result = await rollout_store.start_rollout(pool, queued.id, ACTOR)
    assert result.rollout.state == "RUNNING"

    # a task of the other rollout that has ended does not hold its appliance
    await pool.execute("UPDATE rollouts SET state = 'RUNNING' WHERE id = $1", first.id)
    await pool.execute(
        """UPDATE tasks SET state = 'SUCCEEDED', finished_at = now()
           WHERE rollout_id = $1""", first.id)
    await pool.execute(
        """UPDATE tasks SET state = 'SKIPPED', finished_at = now()
           WHERE rollout_id = $1""", queued.id)
    started = await rollout_store.start_rollout(pool, everything.id, ACTOR)
    assert started.rollout.state == "RUNNING"


async def test_finished_and_draft_rollouts_do_not_block(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=2)
    done = {}
    for state in ("SUCCEEDED", "FAILED", "CANCELLED"):
        done[state] = await _create(pool, f"was {state}")
        await rollout_store.start_rollout(pool, done[state].id, ACTOR)
        await _finish(pool, done[state].id, state)
    draft = await _create(pool, "draft")
    fresh = await _create(pool, "fresh")
    assert (await rollout_store.start_rollout(pool, fresh.id, ACTOR)).rollout.state == "RUNNING"
    # the draft now overlaps an active one
    with pytest.raises(OverlapError, match=r"'fresh' \(RUNNING\): vr-ams-01, vr-ams-02"):
        await rollout_store.start_rollout(pool, draft.id, ACTOR)


async def test_a_scheduled_start_is_checked_when_it_is_scheduled(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=1)
    rollout, _ = await rollout_store.create_rollout(
        pool, name="later", target_version=VERSION, actor=ACTOR,
        schedule_at=await pool.fetchval("SELECT now() + interval '1 day'"),
    )
    assert (await rollout_store.start_rollout(pool, rollout.id, ACTOR)).rollout.state == \
        "SCHEDULED"
    with pytest.raises(OverlapError, match=rf"{rollout.id} 'later' \(SCHEDULED\)"):
        await _create(pool, "now")
    queued = await _create(pool, "queued", after_overlapping=True)
    await rollout_store.start_rollout(pool, queued.id, ACTOR)
    # starting the SCHEDULED one now is no new admission: it was checked when scheduled
    now = await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    assert now.rollout.state == "RUNNING"


async def test_at_most_twenty_names_then_the_count(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=25, nyc=1)
    first = await _create(pool, "big")
    await rollout_store.start_rollout(pool, first.id, ACTOR)
    with pytest.raises(OverlapError) as refused:
        await _create(pool, "again", ["ams"])
    message = str(refused.value)
    assert "25 of its appliances" in message
    listed = [f"vr-ams-{i:02d}" for i in range(1, 21)]
    assert ", ".join(listed) + " and 5 more;" in message
    assert "vr-ams-21" not in message
    assert len(refused.value.appliances) == 25  # the exception keeps them all


async def test_two_overlapping_rollouts_of_several_others(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=2, nyc=2)
    ams = await _create(pool, "ams", ["ams"])
    nyc = await _create(pool, "nyc", ["nyc"])
    for r in (ams, nyc):
        await rollout_store.start_rollout(pool, r.id, ACTOR)
    await rollout_store.pause_rollout(pool, nyc.id, ACTOR)
    with pytest.raises(OverlapError) as refused:
        await _create(pool, "all")
    assert f"active rollouts {ams.id} 'ams' (RUNNING), {nyc.id} 'nyc' (PAUSED): " \
        "vr-ams-01, vr-ams-02, vr-nyc-01, vr-nyc-02; pass --after-overlapping (API: " \
        "strategy.after_overlapping: true) to queue behind them" in str(refused.value)


async def test_concurrent_starts_cannot_both_pass(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=5)
    drafts = [await _create(pool, f"d{i}") for i in range(4)]

    async def hold(seconds: float) -> None:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_sleep($1)", seconds)

    await asyncio.gather(*(hold(0.05) for _ in range(6)))  # connections ready: a real race
    results = await asyncio.gather(
        *(rollout_store.start_rollout(pool, d.id, ACTOR) for d in drafts),
        return_exceptions=True,
    )
    started = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, OverlapError)]
    assert len(started) == 1 and len(refused) == 3, results
    running = await pool.fetchval("SELECT count(*) FROM rollouts WHERE state = 'RUNNING'")
    assert running == 1


async def test_create_start_and_retry_wait_for_the_overlap_lock(pool: asyncpg.Pool) -> None:
    """The check runs under one advisory lock: while another transaction holds it, create,
    start and retry-failed wait (so two of them never both pass the check)."""
    await _fleet(pool, ams=2)
    draft = await _create(pool, "draft")
    failed = await _create(pool, "failed")
    await rollout_store.start_rollout(pool, failed.id, ACTOR)
    await _finish(pool, failed.id, "FAILED")
    calls = {
        "create": lambda: _create(pool, "created", after_overlapping=True),
        "start": lambda: rollout_store.start_rollout(pool, draft.id, ACTOR),
        "retry-failed": lambda: rollout_store.retry_failed(pool, failed.id, ACTOR),
    }
    for name, call in calls.items():
        async with pool.acquire() as holder:
            tx = holder.transaction()
            await tx.start()
            await rollout_store.lock_overlap_check(holder)
            waiting = asyncio.ensure_future(call())
            await asyncio.sleep(0.3)
            assert not waiting.done(), f"{name} did not wait for the overlap lock"
            await tx.rollback()
            await asyncio.wait_for(waiting, 10)
        if name == "start":  # the next call must not overlap it
            await rollout_store.cancel_rollout(pool, draft.id, ACTOR)


async def test_retry_failed_starts_tasks_afresh_and_keeps_installs_sent(
    pool: asyncpg.Pool,
) -> None:
    await _fleet(pool, ams=3)
    rollout = await _create(pool, "r")
    await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    # two tasks ran and failed (one had sent its install), one succeeded
    await pool.execute(
        """UPDATE tasks SET state = 'FAILED', finished_at = now(), attempt = 2,
                  error_code = 'VERSION_MISMATCH', error_message = 'back on 9.0.0',
                  from_version = '9.0.0', final_version = '9.0.0', remote_task_id = 'task-7',
                  progress = 100, accepted_at = now(), install_sent_at = now(),
                  installs_sent = 1, reconfigure_required = true,
                  not_before = now() + interval '1 hour', dispatched_at = now()
           WHERE rollout_id = $1 AND position < 2""", rollout.id)
    await pool.execute(
        """UPDATE tasks SET state = 'SUCCEEDED', finished_at = now(), installs_sent = 1,
                  from_version = '9.0.0', final_version = $2, attempt = 1
           WHERE rollout_id = $1 AND position = 2""", rollout.id, VERSION)
    await pool.execute(
        """UPDATE rollouts SET state = 'FAILED', finished_at = now(),
                  abort_reason = 'failure policy tripped: 2 failed' WHERE id = $1""",
        rollout.id)

    result = await rollout_store.retry_failed(pool, rollout.id, ACTOR)
    assert result.message == f"rollout {rollout.id}: 2 task(s) will be retried"
    assert result.rollout.state == "RUNNING" and result.rollout.abort_reason is None
    rows = await pool.fetch(
        """SELECT state, attempt, error_code, error_message, from_version, final_version,
                  remote_task_id, progress, accepted_at, install_sent_at,
                  reconfigure_required, not_before, dispatched_at, finished_at,
                  installs_sent
           FROM tasks WHERE rollout_id = $1 ORDER BY position""", rollout.id)
    for row in rows[:2]:
        assert dict(row) == {
            "state": "PENDING", "attempt": 0, "error_code": None, "error_message": None,
            "from_version": None, "final_version": None, "remote_task_id": None,
            "progress": None, "accepted_at": None, "install_sent_at": None,
            "reconfigure_required": None, "not_before": None, "dispatched_at": None,
            "finished_at": None, "installs_sent": 1,
        }
    assert rows[2]["state"] == "SUCCEEDED" and rows[2]["final_version"] == VERSION
    assert rows[2]["installs_sent"] == 1


async def test_retry_failed_lifts_a_trip_that_is_still_draining(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=2)
    rollout = await _create(pool, "r")
    await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    await pool.execute(
        """UPDATE tasks SET state = 'FAILED', finished_at = now()
           WHERE rollout_id = $1 AND position = 0""", rollout.id)
    await pool.execute(
        """UPDATE tasks SET state = 'INSTALLING' WHERE rollout_id = $1 AND position = 1""",
        rollout.id)
    await pool.execute("UPDATE rollouts SET abort_reason = 'tripped' WHERE id = $1",
                       rollout.id)
    result = await rollout_store.retry_failed(pool, rollout.id, ACTOR)
    assert result.rollout.state == "RUNNING" and result.rollout.abort_reason is None


async def test_retry_failed_is_refused_when_it_now_overlaps(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=2, nyc=1)
    old = await _create(pool, "old", ["ams"])
    await rollout_store.start_rollout(pool, old.id, ACTOR)
    await _finish(pool, old.id, "FAILED")
    newer = await _create(pool, "newer")
    await rollout_store.start_rollout(pool, newer.id, ACTOR)

    with pytest.raises(OverlapError) as refused:
        await rollout_store.retry_failed(pool, old.id, ACTOR)
    assert str(refused.value).startswith(
        f"cannot retry rollout {old.id}: 2 of its appliances have an unfinished task in "
        f"active rollout {newer.id} 'newer' (RUNNING): vr-ams-01, vr-ams-02; ")
    states = await pool.fetch("SELECT DISTINCT state FROM tasks WHERE rollout_id = $1",
                              old.id)
    assert [r["state"] for r in states] == ["FAILED"], "nothing changed"
    assert (await rollout_store.get_rollout(pool, old.id)).state == "FAILED"

    # only the retried tasks count: nyc's task of `newer` is no overlap for a retry of ams
    await pool.execute(
        """UPDATE tasks t SET state = 'SUCCEEDED', finished_at = now() FROM appliances a
           WHERE a.id = t.appliance_id AND t.rollout_id = $1 AND a.site = 'ams'""", newer.id)
    result = await rollout_store.retry_failed(pool, old.id, ACTOR)
    assert result.rollout.state == "RUNNING"

    # with after_overlapping the retry is accepted even while it overlaps
    patient = await _create(pool, "patient", ["nyc"], after_overlapping=True)
    await rollout_store.start_rollout(pool, patient.id, ACTOR)
    await _finish(pool, patient.id, "FAILED")
    retried = await rollout_store.retry_failed(pool, patient.id, ACTOR)
    assert retried.rollout.state == "RUNNING"


# ------------------------------------------------------------------ the API
async def test_api_answers_409_with_the_lists(pool: asyncpg.Pool) -> None:
    await _fleet(pool, ams=2, nyc=1)
    tokens = await tokens_by_role(pool)
    first = await _create(pool, "first", ["ams"])
    waiting = await _create(pool, "waiting")
    await rollout_store.start_rollout(pool, first.id, ACTOR)
    async with api_client(pool) as client:
        api = await _api(client, tokens["operator"])
        body = {"name": "second", "target_version": VERSION, "selector": {"sites": ["ams"]}}
        status, problem = await api.call("POST", "/api/v1/rollouts", json=body)
        assert status == 409, problem
        assert problem["detail"].startswith("cannot create rollout 'second': 2 of its")
        assert "strategy.after_overlapping" in problem["detail"]
        assert problem["overlapping_rollouts"] == [
            {"id": first.id, "name": "first", "state": "RUNNING"}]
        assert problem["overlapping_appliances"] == ["vr-ams-01", "vr-ams-02"]
        assert problem["errors"][0]["field"] == "body.strategy.after_overlapping"

        status, problem = await api.call("POST", f"/api/v1/rollouts/{waiting.id}/start",
                                         "/api/v1/rollouts/{id}/start")
        assert status == 409, problem
        assert problem["detail"].startswith(f"cannot start rollout {waiting.id}: 2 of its")
        assert problem["current_state"] == "DRAFT"
        assert problem["overlapping_rollouts"][0]["id"] == first.id
        assert problem["overlapping_appliances"] == ["vr-ams-01", "vr-ams-02"]

        status, created = await api.call(
            "POST", "/api/v1/rollouts",
            json={**body, "strategy": {"after_overlapping": True}})
        assert status == 201, created
        assert created["strategy"]["after_overlapping"] is True
        status, result = await api.call("POST", f"/api/v1/rollouts/{created['id']}/start",
                                        "/api/v1/rollouts/{id}/start")
        assert status == 200 and result["rollout"]["state"] == "RUNNING"
        status, problem = await api.call(
            "POST", "/api/v1/rollouts",
            json={**body, "strategy": {"after_overlapping": "yes"}})
        assert status == 422 and problem["errors"][0]["field"] == \
            "body.strategy.after_overlapping"
