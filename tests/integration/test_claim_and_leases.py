"""The task store against a real database: `claim_tasks` under every limit (the rollout's
`max_in_flight`, `per_site` and `starts_per_minute`, a site's fleet-wide capacity, one busy
task per appliance, held slots included), in plan order and among the allowed appliances;
two connections claiming at once; reclaim after a lease expires; renewal; and every guarded
write (`transition_many`, `guard_install_send`, `release_leases`, `write_progress`) refusing
a stale owner or a stale lease token and writing nothing.

(tests/integration/test_task_fencing.py covers the first stale-token checks, the guard's
verdicts and the one-in-flight rule across rollouts; this file does not repeat them.)
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.domain.windows import WindowGroup
from orchestrator.engine.engine import Engine
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store.audit import Actor
from orchestrator.store.tasks import ClaimedTask, SendVerdict, TransitionRequest
from tests.fleet import create, fast_engine_config, fleet, http_client

ACTOR = Actor(name="ops", via="cli")
OWNER = "engine-a"
OTHER = "engine-b"
# one wave, plan order = name order: positions are predictable
STRATEGY: dict[str, Any] = {"waves": ["100%"], "order": "name"}


async def _fleet(pool: asyncpg.Pool, **sites: int) -> None:
    """`a=3, b=2`: appliances a-1, a-2, a-3 at site a and b-1, b-2 at site b."""
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name=f"{site}-{i}", base_url=f"https://{site}-{i}/api", site=site)
        for site, n in sites.items() for i in range(1, n + 1)
    ])


async def _rollout(pool: asyncpg.Pool, names: list[str] | None = None, *,
                   start: bool = False, **strategy: Any) -> int:
    rollout, _ = await rollout_store.create_rollout(
        pool, name="r", target_version="9.0.1-20020", actor=ACTOR,
        selector={"names": names} if names else None, strategy={**STRATEGY, **strategy},
    )
    if start:
        await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    return rollout.id


async def _claim_on(conn: asyncpg.Connection, rid: int, *, owner: str = OWNER,
                    max_in_flight: int = 100, per_site: int | None = None,
                    starts_per_minute: int | None = None, limit: int = 100,
                    wave: int = 0, allowed: list[WindowGroup] | None = None,
                    after_overlapping: bool = False) -> list[ClaimedTask]:
    async with conn.transaction():
        return await task_store.claim_tasks(
            conn, rollout_id=rid, current_wave=wave, owner=owner, lease_seconds=60,
            max_in_flight=max_in_flight, per_site=per_site,
            starts_per_minute=starts_per_minute, limit=limit, allowed_groups=allowed,
            after_overlapping=after_overlapping,
        )


async def _claim(pool: asyncpg.Pool, rid: int, **kw: Any) -> list[ClaimedTask]:
    async with pool.acquire() as conn:
        return await _claim_on(conn, rid, **kw)


def _names(tasks: list[ClaimedTask]) -> list[str]:
    return [t.appliance for t in tasks]


async def _ids(pool: asyncpg.Pool, rid: int) -> dict[str, int]:
    """Appliance name -> task id, for one rollout."""
    rows = await pool.fetch(
        "SELECT a.name, t.id FROM tasks t JOIN appliances a ON a.id = t.appliance_id "
        "WHERE t.rollout_id = $1", rid)
    return {r["name"]: r["id"] for r in rows}


async def _states(pool: asyncpg.Pool, rid: int) -> list[tuple[str, str, int, str | None]]:
    """(appliance, state, attempt, lease owner) of every task, in plan order."""
    rows = await pool.fetch(
        "SELECT a.name, t.state, t.attempt, t.lease_owner FROM tasks t "
        "JOIN appliances a ON a.id = t.appliance_id WHERE t.rollout_id = $1 "
        "ORDER BY t.position", rid)
    return [(r["name"], r["state"], r["attempt"], r["lease_owner"]) for r in rows]


async def _finish(pool: asyncpg.Pool, ids: list[int]) -> None:
    await pool.execute(
        "UPDATE tasks SET state = 'SUCCEEDED', finished_at = now(), lease_owner = NULL, "
        "lease_token = NULL, lease_expires_at = NULL WHERE id = ANY($1::bigint[])", ids)


async def _expire(pool: asyncpg.Pool, ids: list[int], seconds_ago: int = 1) -> None:
    await pool.execute(
        "UPDATE tasks SET lease_expires_at = now() - make_interval(secs => $2) "
        "WHERE id = ANY($1::bigint[])", ids, seconds_ago)


async def _hold_slot(pool: asyncpg.Pool, task: ClaimedTask) -> None:
    """The install was sent, then the task timed out: it keeps its slot."""
    await pool.execute("UPDATE tasks SET install_sent_at = now() WHERE id = $1", task.id)
    async with pool.acquire() as conn:
        assert await task_store.transition_many(conn, owner=_owner(task), requests=[
            TransitionRequest(task.id, task.state, "TIMED_OUT", {}, token=task.lease_token)
        ]) == {task.id}
    assert await pool.fetchval("SELECT holds_slot FROM tasks WHERE id = $1", task.id)


def _owner(task: ClaimedTask) -> str:
    return OTHER if task.reclaimed else OWNER


async def _snapshot(pool: asyncpg.Pool, ids: list[int]) -> list[dict[str, Any]]:
    """Every column of the tasks, and their events: to assert that nothing was written."""
    tasks = await pool.fetch("SELECT * FROM tasks WHERE id = ANY($1::bigint[]) ORDER BY id",
                             ids)
    events = await pool.fetch(
        "SELECT * FROM task_events WHERE task_id = ANY($1::bigint[]) ORDER BY id", ids)
    return [dict(r) for r in tasks] + [dict(r) for r in events]


# ------------------------------------------------------------------------- claiming
async def test_claim_in_plan_order_up_to_max_in_flight_and_limit(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=5)
    rid = await _rollout(pool)
    first = await _claim(pool, rid, max_in_flight=3, limit=2)
    assert _names(first) == ["a-1", "a-2"]
    assert all(t.state == "DISPATCHING" and t.attempt == 1 and not t.reclaimed
               and t.target_version == "9.0.1-20020" for t in first)
    assert len({t.lease_token for t in first}) == 2
    # two in flight, three allowed: one more, the next in plan order
    assert _names(await _claim(pool, rid, max_in_flight=3, limit=10)) == ["a-3"]
    assert await _claim(pool, rid, max_in_flight=3, limit=10) == []
    assert await _states(pool, rid) == [
        ("a-1", "DISPATCHING", 1, OWNER), ("a-2", "DISPATCHING", 1, OWNER),
        ("a-3", "DISPATCHING", 1, OWNER), ("a-4", "PENDING", 0, None),
        ("a-5", "PENDING", 0, None)]
    row = await pool.fetchrow(
        "SELECT lease_token, lease_expires_at > now() + interval '50 s' AS fresh, "
        "dispatched_at IS NOT NULL AS dispatched FROM tasks WHERE id = $1", first[0].id)
    assert (row["lease_token"], row["fresh"], row["dispatched"]) == (
        first[0].lease_token, True, True)
    events = await pool.fetch(
        "SELECT task_id, from_state, to_state, detail FROM task_events WHERE rollout_id = $1 "
        "AND to_state = 'DISPATCHING' ORDER BY task_id", rid)
    ids = await _ids(pool, rid)
    assert [(e["task_id"], e["from_state"], e["to_state"], e["detail"]) for e in events] == [
        (ids[n], "PENDING", "DISPATCHING", {"owner": OWNER, "attempt": 1})
        for n in ("a-1", "a-2", "a-3")]
    # max_in_flight below what is already in flight: nothing (never a negative LIMIT)
    assert await _claim(pool, rid, max_in_flight=1) == []


async def test_claim_skips_later_waves_and_not_before(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=5)
    rid = await _rollout(pool, waves=[2, "100%"])
    ids = await _ids(pool, rid)
    await pool.execute("UPDATE tasks SET not_before = now() + interval '1 hour' WHERE id = $1",
                       ids["a-1"])
    assert _names(await _claim(pool, rid, wave=0)) == ["a-2"]
    # the next wave opens; a not_before in the past no longer holds a-1 back
    await pool.execute("UPDATE tasks SET not_before = now() - interval '1 s' WHERE id = $1",
                       ids["a-1"])
    assert _names(await _claim(pool, rid, wave=1)) == ["a-1", "a-3", "a-4", "a-5"]
    assert await pool.fetchval("SELECT not_before FROM tasks WHERE id = $1", ids["a-1"]) is None


async def test_claim_per_site_limit(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=3, b=3)
    rid = await _rollout(pool)
    # per site 2, overall 3: the third slot goes to the next site, not to a-3
    assert _names(await _claim(pool, rid, max_in_flight=3, per_site=2)) == [
        "a-1", "a-2", "b-1"]
    assert _names(await _claim(pool, rid, max_in_flight=10, per_site=2)) == ["b-2"]
    assert await _claim(pool, rid, max_in_flight=10, per_site=2) == []
    ids = await _ids(pool, rid)
    await _finish(pool, [ids["a-1"]])  # one ams slot free again
    assert _names(await _claim(pool, rid, max_in_flight=10, per_site=2)) == ["a-3"]
    assert await _claim(pool, rid, max_in_flight=10, per_site=2) == []


async def test_claim_starts_per_minute(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=5)
    rid = await _rollout(pool)
    first = await _claim(pool, rid, starts_per_minute=2)
    assert _names(first) == ["a-1", "a-2"]
    await _finish(pool, [t.id for t in first])
    # nothing in flight, but two dispatches within the last minute
    assert await _claim(pool, rid, starts_per_minute=2) == []
    assert _names(await _claim(pool, rid, starts_per_minute=3)) == ["a-3"]
    # a minute later the window is empty again
    await pool.execute("UPDATE tasks SET dispatched_at = now() - interval '61 s' "
                       "WHERE rollout_id = $1 AND dispatched_at IS NOT NULL", rid)
    assert _names(await _claim(pool, rid, starts_per_minute=2)) == ["a-4", "a-5"]


async def test_claim_site_capacity_with_other_limits(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=4, b=2, c=2)
    rid = await _rollout(pool)
    await pool.execute("INSERT INTO sites (name, max_in_flight) VALUES ('a', 2), ('b', 5)")
    # a: the site's 2 wins over per_site 3; b: per_site 3 (site allows 5); c: unlimited
    assert _names(await _claim(pool, rid, per_site=3)) == ["a-1", "a-2", "b-1", "b-2",
                                                           "c-1", "c-2"]
    assert await _claim(pool, rid) == []
    # the site's limit lowered below what is in flight: no claim there, nothing undone
    await pool.execute("UPDATE sites SET max_in_flight = 1 WHERE name = 'a'")
    ids = await _ids(pool, rid)
    await _finish(pool, [ids["a-1"]])
    assert await _claim(pool, rid) == []
    await _finish(pool, [ids["a-2"]])
    assert _names(await _claim(pool, rid)) == ["a-3"]


async def test_held_slots_count_as_busy_everywhere(pool: asyncpg.Pool) -> None:
    """A timed-out install that was sent keeps its slot: against its rollout's limits, its
    site's capacity and its appliance (in any rollout), until released."""
    await _fleet(pool, a=3, b=2)
    old = await _rollout(pool, ["a-1"])
    (held,) = await _claim(pool, old)
    await _hold_slot(pool, held)
    assert await task_store.held_slots(pool, rollout_id=old) != []

    rid = await _rollout(pool)
    # a-1 is skipped (its appliance is busy), whatever the limits
    assert _names(await _claim(pool, rid, limit=1)) == ["a-2"]
    # site a's capacity of 2 is used up by the held slot and a-2
    await pool.execute("INSERT INTO sites (name, max_in_flight) VALUES ('a', 2)")
    assert _names(await _claim(pool, rid, limit=1)) == ["b-1"]
    own = await _claim(pool, rid, max_in_flight=3, limit=1)
    assert _names(own) == ["b-2"]
    # held slots of the rollout itself count against its max_in_flight and per_site
    await _hold_slot(pool, own[0])
    await pool.execute("DELETE FROM sites")
    assert await _claim(pool, rid, max_in_flight=3) == []  # a-2, b-1 in flight, b-2 held
    assert _names(await _claim(pool, rid, max_in_flight=4, per_site=3)) == ["a-3"]
    # the old rollout's slot released: a-1 may go (a held task is never claimed again)
    assert await task_store.release_held_slot(pool, held.id, version="9.0.0", reason="idle")
    assert _names(await _claim(pool, rid, max_in_flight=5)) == ["a-1"]
    assert await pool.fetchval("SELECT state FROM tasks WHERE id = $1", own[0].id) == \
        "TIMED_OUT"


async def test_claim_only_allowed_appliances(pool: asyncpg.Pool) -> None:
    """Maintenance windows reach the claim as the groups of appliances (site, tags, time
    zone) that may start now: only their appliances are claimed, matched on the
    appliance's current site, tags and time zone."""
    await _fleet(pool, a=4, b=1)
    await pool.execute(
        "UPDATE appliances SET tags = ARRAY['x'] WHERE name IN ('a-2', 'a-4', 'b-1')")
    await pool.execute("UPDATE appliances SET timezone = 'Europe/Paris' WHERE name = 'a-3'")
    rid = await _rollout(pool)
    tagged: WindowGroup = ("a", ("x",), None)
    assert await _claim(pool, rid, allowed=[]) == []
    assert _names(await _claim(pool, rid, allowed=[tagged], limit=1)) == ["a-2"]
    assert _names(await _claim(pool, rid, allowed=[tagged, ("b", (), None)])) == ["a-4"]
    assert _names(await _claim(pool, rid, allowed=[("a", (), "Europe/Paris")])) == ["a-3"]
    assert [s[1] for s in await _states(pool, rid)] == [
        "PENDING", "DISPATCHING", "DISPATCHING", "DISPATCHING", "PENDING"]
    assert _names(await _claim(pool, rid, allowed=[("b", ("x",), None)])) == ["b-1"]


# added with `make mutation` (tools/sql_mutation.py): mutants of the claim that lived
async def test_after_overlapping_waits_only_for_an_earlier_active_rollout(
    pool: asyncpg.Pool
) -> None:
    """`after_overlapping`: an appliance waits while an earlier rollout that is active
    (scheduled, running, paused, waiting for a window) still has it to do; an earlier
    rollout that was only drafted holds nothing back."""
    await _fleet(pool, a=3)
    drafted = await _rollout(pool, ["a-1"])  # never started: not active
    running = await _rollout(pool, ["a-2"], start=True)
    later = await _rollout(pool, ["a-1", "a-2", "a-3"], start=True, after_overlapping=True)
    assert _names(await _claim(pool, later, after_overlapping=True)) == ["a-1", "a-3"]
    assert [s[1] for s in await _states(pool, later)] == ["DISPATCHING", "PENDING",
                                                          "DISPATCHING"]
    # the earlier running rollout finishes a-2: the later one may take it now
    await _finish(pool, [(await _ids(pool, running))["a-2"]])
    assert _names(await _claim(pool, later, after_overlapping=True)) == ["a-2"]
    assert [s[1] for s in await _states(pool, drafted)] == ["PENDING"]


@pytest.mark.parametrize("busy", ["DISPATCHING", "INSTALLING", "VERIFYING"])
async def test_every_in_flight_state_counts_against_every_limit(
    pool: asyncpg.Pool, busy: str
) -> None:
    """A task counts as in flight from its claim to its outcome, whichever step it is at:
    the rollout's max_in_flight and per_site, the site's fleet-wide capacity, and one busy
    task per appliance across rollouts."""
    await _fleet(pool, a=4)
    rid = await _rollout(pool)
    assert _names(await _claim(pool, rid, limit=1)) == ["a-1"]
    ids = await _ids(pool, rid)
    await pool.execute("UPDATE tasks SET state = $2 WHERE id = $1", ids["a-1"], busy)
    assert await _claim(pool, rid, max_in_flight=1) == []
    assert await _claim(pool, rid, per_site=1) == []
    await pool.execute("INSERT INTO sites (name, max_in_flight) VALUES ('a', 2)")
    assert _names(await _claim(pool, rid)) == ["a-2"]  # the site's room: 2 - 1 busy
    # another rollout of the same appliance waits for it, even when told to go ahead
    other = await _rollout(pool, ["a-1"], start=True, after_overlapping=True)
    await pool.execute("UPDATE sites SET max_in_flight = NULL WHERE name = 'a'")
    assert await _claim(pool, other) == []
    assert [s[1] for s in await _states(pool, other)] == ["PENDING"]


@pytest.mark.parametrize("earlier_state", ["SCHEDULED", "RUNNING", "PAUSED", "WAITING_WINDOW"])
async def test_after_overlapping_waits_for_an_earlier_rollout_in_any_active_state(
    pool: asyncpg.Pool, earlier_state: str
) -> None:
    await _fleet(pool, a=2)
    earlier = await _rollout(pool, ["a-1"])
    await pool.execute("UPDATE rollouts SET state = $2 WHERE id = $1", earlier, earlier_state)
    later = await _rollout(pool, ["a-1", "a-2"], start=True, after_overlapping=True)
    assert _names(await _claim(pool, later, after_overlapping=True)) == ["a-2"]
    await pool.execute("UPDATE rollouts SET state = 'CANCELLED' WHERE id = $1", earlier)
    assert _names(await _claim(pool, later, after_overlapping=True)) == ["a-1"]


async def test_a_finished_task_of_an_active_rollout_blocks_nothing(pool: asyncpg.Pool) -> None:
    """One busy task per appliance: a task another (still running) rollout has finished on
    the appliance does not count, with or without `after_overlapping`."""
    await _fleet(pool, a=2)
    first = await _rollout(pool, ["a-1", "a-2"], start=True)
    done = (await _ids(pool, first))["a-1"]
    await _finish(pool, [done])
    second = await _rollout(pool, ["a-1"], start=True)
    assert _names(await _claim(pool, second)) == ["a-1"]
    assert await pool.fetchval("SELECT state FROM rollouts WHERE id = $1", first) == "RUNNING"


# ---------------------------------------------------------- two connections at once
async def test_a_claim_waits_for_another_claim_to_commit(pool: asyncpg.Pool) -> None:
    """The claim lock: a second claim reads the in-flight counts only after the first one's
    transaction ended, so together they never exceed a limit."""
    await _fleet(pool, a=5)
    rid = await _rollout(pool)
    async with pool.acquire() as one, pool.acquire() as two:
        tx = one.transaction()
        await tx.start()
        try:
            first = await task_store.claim_tasks(
                one, rollout_id=rid, current_wave=0, owner=OWNER, lease_seconds=60,
                max_in_flight=3, per_site=None, starts_per_minute=None, limit=2)
            second = asyncio.ensure_future(_claim_on(two, rid, owner=OTHER, max_in_flight=3))
            await asyncio.sleep(0.5)
            assert not second.done()  # blocked on the claim lock
        finally:
            await tx.commit()
        assert _names(first) == ["a-1", "a-2"]
        assert _names(await asyncio.wait_for(second, 30)) == ["a-3"]
    assert [s[3] for s in await _states(pool, rid)] == [OWNER, OWNER, OTHER, None, None]


async def test_a_claim_skips_rows_locked_by_another_transaction(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=4)
    rid = await _rollout(pool)
    ids = await _ids(pool, rid)
    async with pool.acquire() as one, pool.acquire() as two:
        tx = one.transaction()
        await tx.start()
        try:
            await one.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", ids["a-1"])
            # a-1 is among the first two but locked: skipped, not waited for
            got = await asyncio.wait_for(_claim_on(two, rid, limit=2), 30)
            assert _names(got) == ["a-2"]
        finally:
            await tx.rollback()
        assert _names(await _claim_on(two, rid, limit=2)) == ["a-1", "a-3"]


async def test_two_connections_claim_one_rollout_at_once(pool: asyncpg.Pool) -> None:
    """Rounds of two concurrent claims of one rollout: together they take exactly what one
    claim would, never the same task, never beyond a limit; every task is claimed once."""
    await _fleet(pool, a=6, b=6)
    rid = await _rollout(pool)
    ids = await _ids(pool, rid)
    expected_rounds = [
        ["a-1", "a-2", "b-1"], ["a-3", "a-4", "b-2"], ["a-5", "a-6", "b-3"],
        ["b-4", "b-5"], ["b-6"]]
    async with pool.acquire() as one, pool.acquire() as two:
        for expected in expected_rounds:
            got_one, got_two = await asyncio.gather(
                _claim_on(one, rid, owner=OWNER, max_in_flight=3, per_site=2, limit=3),
                _claim_on(two, rid, owner=OTHER, max_in_flight=3, per_site=2, limit=3))
            names = _names(got_one) + _names(got_two)
            assert sorted(names) == expected and len(set(names)) == len(names)
            busy = await pool.fetch(
                "SELECT site, count(*) AS n FROM tasks WHERE rollout_id = $1 "
                "AND state = 'DISPATCHING' GROUP BY site", rid)
            assert all(r["n"] <= 2 for r in busy) and sum(r["n"] for r in busy) <= 3
            await _finish(pool, [ids[n] for n in names])
    claims = await pool.fetch(
        "SELECT task_id, count(*) AS n FROM task_events WHERE rollout_id = $1 "
        "AND to_state = 'DISPATCHING' GROUP BY task_id", rid)
    assert sorted(r["task_id"] for r in claims) == sorted(ids.values())
    assert {r["n"] for r in claims} == {1}


async def test_two_rollouts_claim_at_once_within_site_capacity(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=6, b=2)
    one_rid = await _rollout(pool, ["a-1", "a-2", "a-3", "b-1"])
    two_rid = await _rollout(pool, ["a-4", "a-5", "a-6", "b-2"])
    await pool.execute("INSERT INTO sites (name, max_in_flight) VALUES ('a', 2)")
    for _ in range(5):
        async with pool.acquire() as one, pool.acquire() as two:
            await asyncio.gather(_claim_on(one, one_rid, owner=OWNER),
                                 _claim_on(two, two_rid, owner=OTHER))
        busy = await pool.fetchval(
            "SELECT count(*) FROM tasks WHERE site = 'a' AND state = 'DISPATCHING'")
        assert busy == 2  # never more, and the room is always used
        await pool.execute(
            "UPDATE tasks SET state = 'SUCCEEDED', finished_at = now(), lease_owner = NULL, "
            "lease_token = NULL, lease_expires_at = NULL WHERE state = 'DISPATCHING' "
            "AND site = 'a' AND id = (SELECT min(id) FROM tasks WHERE state = 'DISPATCHING' "
            "AND site = 'a')")
        if await pool.fetchval("SELECT count(*) FROM tasks WHERE state = 'PENDING'") == 0:
            break
    assert await pool.fetchval("SELECT count(*) FROM tasks WHERE state = 'PENDING'") == 0
    assert await pool.fetchval(
        "SELECT count(*) FROM task_events WHERE to_state = 'DISPATCHING'") == 8


# ------------------------------------------------------------------------- reclaiming
async def test_reclaim_takes_only_expired_leases_with_a_new_token(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=5)
    rid = await _rollout(pool)
    a1, a2, a3, a4 = await _claim(pool, rid, limit=4)
    await pool.execute("UPDATE tasks SET state = 'INSTALLING' WHERE id = $1", a2.id)
    await pool.execute("UPDATE tasks SET state = 'VERIFYING' WHERE id = $1", a3.id)
    await _expire(pool, [a1.id], seconds_ago=5)
    await _expire(pool, [a2.id, a4.id], seconds_ago=2)
    # a3's lease is still valid; a4 is expired but the caller drives it; a5 is PENDING
    async with pool.acquire() as conn:
        first = await task_store.reclaim_expired(
            conn, owner=OTHER, lease_seconds=60, limit=1, running=[a4.id])
        second = await task_store.reclaim_expired(
            conn, owner=OTHER, lease_seconds=60, limit=10, running=[a4.id])
        third = await task_store.reclaim_expired(
            conn, owner=OTHER, lease_seconds=60, limit=10, running=[a4.id])
    # the oldest expiry first
    assert [(t.id, t.state, t.reclaimed) for t in first] == [(a1.id, "DISPATCHING", True)]
    assert [(t.id, t.state, t.reclaimed) for t in second] == [(a2.id, "INSTALLING", True)]
    assert third == []
    assert first[0].lease_token != a1.lease_token
    assert second[0].lease_token != a2.lease_token
    rows = {r["id"]: r for r in await pool.fetch(
        "SELECT id, state, lease_owner, lease_token, lease_expires_at > now() AS live "
        "FROM tasks WHERE rollout_id = $1", rid)}
    assert {i: (r["lease_owner"], r["lease_token"], r["live"]) for i, r in rows.items()
            if r["state"] != "PENDING"} == {
        a1.id: (OTHER, first[0].lease_token, True),
        a2.id: (OTHER, second[0].lease_token, True),
        a3.id: (OWNER, a3.lease_token, True),
        a4.id: (OWNER, a4.lease_token, False)}
    events = await pool.fetch(
        "SELECT task_id, from_state, to_state, detail FROM task_events "
        "WHERE rollout_id = $1 AND from_state = to_state ORDER BY id", rid)
    detail = {"reason": "lease expired: reclaimed for reconciliation",
              "previous_owner": OWNER, "owner": OTHER}
    assert [(e["task_id"], e["from_state"], e["to_state"], e["detail"]) for e in events] == [
        (a1.id, "DISPATCHING", "DISPATCHING", detail),
        (a2.id, "INSTALLING", "INSTALLING", detail)]
    # without `running`, the caller's own expired task is reclaimed too
    async with pool.acquire() as conn:
        (again,) = await task_store.reclaim_expired(
            conn, owner=OWNER, lease_seconds=60, limit=10)
    assert again.id == a4.id and again.lease_token != a4.lease_token
    # a verifying task whose lease ran out is reclaimed like the others
    await _expire(pool, [a3.id])
    async with pool.acquire() as conn:
        (verifying,) = await task_store.reclaim_expired(
            conn, owner=OTHER, lease_seconds=60, limit=10)
    assert (verifying.id, verifying.state, verifying.reclaimed) == (a3.id, "VERIFYING", True)


async def test_reclaim_skips_rows_locked_by_another_transaction(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=2)
    rid = await _rollout(pool)
    a1, a2 = await _claim(pool, rid)
    await _expire(pool, [a1.id, a2.id])
    async with pool.acquire() as one, pool.acquire() as two:
        tx = one.transaction()
        await tx.start()
        try:
            await one.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", a1.id)
            got = await asyncio.wait_for(task_store.reclaim_expired(
                two, owner=OTHER, lease_seconds=60, limit=10), 30)
            assert [t.id for t in got] == [a2.id]
        finally:
            await tx.rollback()


# ---------------------------------------------------------------------------- renewal
@pytest.mark.parametrize("chunk", [task_store.RENEW_CHUNK, 1])
async def test_renewal_keeps_only_the_leases_whose_token_matches(
    pool: asyncpg.Pool, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also when the renewal goes in several statements (chunk 1: one per lease)."""
    monkeypatch.setattr(task_store, "RENEW_CHUNK", chunk)
    await _fleet(pool, a=4)
    rid = await _rollout(pool)
    a1, a2, a3, a4 = await _claim(pool, rid)
    await pool.execute("UPDATE tasks SET lease_expires_at = now() + interval '30 s' "
                       "WHERE rollout_id = $1", rid)
    await _expire(pool, [a3.id])
    async with pool.acquire() as conn:
        (taken,) = await task_store.reclaim_expired(conn, owner=OTHER, lease_seconds=5,
                                                    limit=10)
        assert taken.id == a3.id
        kept = await task_store.renew_leases(conn, owner=OWNER, lease_seconds=600, leases={
            a1.id: a1.lease_token, a2.id: uuid.uuid4(), a3.id: a3.lease_token,
            a4.id: a4.lease_token})
        # another owner's name with the right tokens renews nothing
        assert await task_store.renew_leases(conn, owner=OTHER, lease_seconds=600,
                                             leases={a1.id: a1.lease_token}) == set()
        assert await task_store.renew_leases(conn, owner=OWNER, lease_seconds=600,
                                             leases={}) == set()
    assert kept == {a1.id, a4.id}
    long_lived = await pool.fetch(
        "SELECT id FROM tasks WHERE rollout_id = $1 "
        "AND lease_expires_at > now() + interval '500 s' ORDER BY id", rid)
    assert [r["id"] for r in long_lived] == sorted([a1.id, a4.id])
    # a finished task has no lease left to renew
    await _finish(pool, [a1.id])
    async with pool.acquire() as conn:
        assert await task_store.renew_leases(conn, owner=OWNER, lease_seconds=600,
                                             leases={a1.id: a1.lease_token}) == set()


# --------------------------------------------------------- guarded writes, stale owners
async def _reclaimed(pool: asyncpg.Pool, task: ClaimedTask) -> ClaimedTask:
    """Another owner takes `task` over after its lease ran out."""
    await _expire(pool, [task.id])
    async with pool.acquire() as conn:
        taken = [t for t in await task_store.reclaim_expired(
            conn, owner=OTHER, lease_seconds=60, limit=10) if t.id == task.id]
    assert len(taken) == 1
    return taken[0]


async def test_transition_many_refuses_stale_owners_and_tokens(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=3)
    rid = await _rollout(pool)
    a1, a2, a3 = await _claim(pool, rid)
    new = await _reclaimed(pool, a1)
    before = await _snapshot(pool, [a1.id])
    appliance_before = dict(await pool.fetchrow("SELECT * FROM appliances WHERE id = $1",
                                                a1.appliance_id))
    success = {"final_version": "9.0.1-20020", "progress": 100}
    async with pool.acquire() as conn:
        for owner, token in ((OWNER, a1.lease_token), (OWNER, new.lease_token),
                             (OTHER, a1.lease_token), (OTHER, None)):
            # a batch with one stale row and one good row: only the good row is written
            matched = await task_store.transition_many(conn, owner=owner, requests=[
                TransitionRequest(a1.id, "DISPATCHING", "SUCCEEDED", {"why": "stale"},
                                  fields=success, token=token),
                TransitionRequest(a1.id, "DISPATCHING", "DISPATCHING", fields={"progress": 5},
                                  event=False, token=token),
            ])
            assert matched == set()
        assert await _snapshot(pool, [a1.id]) == before
        assert dict(await pool.fetchrow("SELECT * FROM appliances WHERE id = $1",
                                        a1.appliance_id)) == appliance_before
        # a mixed batch: a2 (current) is written, a1 (stale) and a3 (wrong state) are not
        a3_before = await _snapshot(pool, [a3.id])
        matched = await task_store.transition_many(conn, owner=OWNER, requests=[
            TransitionRequest(a1.id, "DISPATCHING", "FAILED", {}, token=a1.lease_token,
                              fields={"error_code": "X"}),
            TransitionRequest(a2.id, "DISPATCHING", "INSTALLING", {"ok": True},
                              token=a2.lease_token, fields={"remote_task_id": "r-2"}),
            TransitionRequest(a3.id, "INSTALLING", "VERIFYING", {}, token=a3.lease_token),
        ])
        assert matched == {a2.id}
    assert await _snapshot(pool, [a1.id]) == before
    assert await _snapshot(pool, [a3.id]) == a3_before
    row = await pool.fetchrow("SELECT state, remote_task_id, lease_owner FROM tasks "
                              "WHERE id = $1", a2.id)
    assert tuple(row) == ("INSTALLING", "r-2", OWNER)
    # the new owner, with the new token, may write
    async with pool.acquire() as conn:
        assert await task_store.transition_many(conn, owner=OTHER, requests=[
            TransitionRequest(a1.id, "DISPATCHING", "SUCCEEDED", {}, fields=success,
                              token=new.lease_token)]) == {a1.id}
    assert await pool.fetchval("SELECT current_version FROM appliances WHERE id = $1",
                               a1.appliance_id) == "9.0.1-20020"


async def test_guard_install_send_refuses_a_stale_owner(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=1)
    rid = await _rollout(pool, start=True)
    (a1,) = await _claim(pool, rid)
    new = await _reclaimed(pool, a1)
    before = await _snapshot(pool, [a1.id])
    async with pool.acquire() as conn:
        for owner, token in ((OWNER, a1.lease_token), (OWNER, new.lease_token),
                             (OTHER, a1.lease_token)):
            verdict, why = await task_store.guard_install_send(
                conn, task_id=a1.id, owner=owner, token=token, from_version="9.0.0",
                lease_margin=1)
            assert (verdict, why) == (SendVerdict.LOST, "")
        assert await _snapshot(pool, [a1.id]) == before
        # an unknown task: lost, nothing written
        assert await task_store.guard_install_send(
            conn, task_id=a1.id + 1000, owner=OTHER, token=new.lease_token,
            from_version=None, lease_margin=1) == (SendVerdict.LOST, "")
        assert await task_store.guard_install_send(
            conn, task_id=a1.id, owner=OTHER, token=new.lease_token, from_version="9.0.0",
            lease_margin=1) == (SendVerdict.SEND, "")
    row = await pool.fetchrow("SELECT installs_sent, from_version, install_sent_at IS NOT NULL "
                              "AS sent FROM tasks WHERE id = $1", a1.id)
    assert tuple(row) == (1, "9.0.0", True)


async def test_release_leases_refuses_a_stale_owner(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=3)
    rid = await _rollout(pool)
    a1, a2, a3 = await _claim(pool, rid)
    new = await _reclaimed(pool, a1)
    before = await _snapshot(pool, [a1.id, a3.id])
    async with pool.acquire() as conn:
        assert await task_store.release_leases(conn, owner=OWNER,
                                               leases={a1.id: a1.lease_token}) == 0
        assert await task_store.release_leases(conn, owner=OTHER,
                                               leases={a1.id: a1.lease_token}) == 0
        assert await task_store.release_leases(conn, owner=OWNER, leases={
            a1.id: new.lease_token, a2.id: a2.lease_token, a3.id: uuid.uuid4()}) == 1
        assert await task_store.release_leases(conn, owner=OWNER, leases={}) == 0
    assert await _snapshot(pool, [a1.id, a3.id]) == before
    expired = await pool.fetch("SELECT id FROM tasks WHERE rollout_id = $1 "
                               "AND lease_expires_at < now()", rid)
    assert [r["id"] for r in expired] == [a2.id]
    # released: reclaimable at once, by anyone
    async with pool.acquire() as conn:
        assert [t.id for t in await task_store.reclaim_expired(
            conn, owner=OTHER, lease_seconds=60, limit=10)] == [a2.id]


async def test_write_progress_refuses_a_stale_owner(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=3)
    rid = await _rollout(pool)
    a1, a2, a3 = await _claim(pool, rid)
    await pool.execute("UPDATE tasks SET state = 'INSTALLING' WHERE id = ANY($1::bigint[])",
                       [a1.id, a2.id])  # a3 stays DISPATCHING
    new = await _reclaimed(pool, a1)
    assert new.state == "INSTALLING"
    async with pool.acquire() as conn:
        await task_store.write_progress(conn, owner=OWNER,
                                        progress={a1.id: 40, a2.id: 150, a3.id: 10})
        await task_store.write_progress(conn, owner=OWNER, progress={})
    progress = {r["id"]: r["progress"] for r in await pool.fetch(
        "SELECT id, progress FROM tasks WHERE rollout_id = $1", rid)}
    # a1 is OTHER's now, a3 is not installing: only a2, clamped to 100
    assert progress == {a1.id: None, a2.id: 100, a3.id: None}
    async with pool.acquire() as conn:
        await task_store.write_progress(conn, owner=OTHER, progress={a1.id: -5, a2.id: 7})
    progress = {r["id"]: r["progress"] for r in await pool.fetch(
        "SELECT id, progress FROM tasks WHERE rollout_id = $1", rid)}
    assert progress == {a1.id: 0, a2.id: 100, a3.id: None}


# ------------------------------------ added with `make mutation` (tools/sql_mutation.py)
async def _guard(pool: asyncpg.Pool, task: ClaimedTask) -> tuple[str, str]:
    async with pool.acquire() as conn:
        return await task_store.guard_install_send(
            conn, task_id=task.id, owner=OWNER, token=task.lease_token,
            from_version="9.0.0-10010", lease_margin=1)


async def _to(pool: asyncpg.Pool, task: ClaimedTask, to_state: str,
              fields: dict[str, Any] | None = None) -> set[int]:
    async with pool.acquire() as conn:
        return await task_store.transition_many(conn, owner=OWNER, requests=[
            TransitionRequest(task.id, task.state, to_state, fields=fields or {},
                              token=task.lease_token)])


@pytest.mark.parametrize("ended", ["CANCELLED", "FAILED"])
async def test_nothing_is_sent_for_a_rollout_that_ended(pool: asyncpg.Pool, ended: str) -> None:
    """A rollout CANCELLED or FAILED (whatever its abort reason says): the guarded send
    refuses with CANCEL, and a claimed task coming back unsent is CANCELLED, not PENDING."""
    await _fleet(pool, a=2)
    rid = await _rollout(pool, start=True)
    a1, a2 = await _claim(pool, rid)
    await pool.execute("UPDATE rollouts SET state = $2, abort_reason = NULL WHERE id = $1",
                       rid, ended)
    assert await _guard(pool, a1) == (SendVerdict.CANCEL, f"rollout is {ended}")
    assert await _to(pool, a2, "PENDING") == {a2.id}
    assert [(s[0], s[1]) for s in await _states(pool, rid)] == [
        ("a-1", "DISPATCHING"), ("a-2", "CANCELLED")]
    assert await pool.fetchval("SELECT install_sent_at FROM tasks WHERE id = $1", a1.id) is None


async def test_only_a_task_sent_back_to_pending_forgets_its_send(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=2)
    rid = await _rollout(pool, start=True)
    a1, a2 = await _claim(pool, rid)
    assert (await _guard(pool, a1))[0] == SendVerdict.SEND
    assert (await _guard(pool, a2))[0] == SendVerdict.SEND
    assert await _to(pool, a1, "INSTALLING") == {a1.id}
    assert await _to(pool, a2, "PENDING") == {a2.id}
    sent = {r["id"]: r["install_sent_at"] for r in await pool.fetch(
        "SELECT id, install_sent_at FROM tasks WHERE rollout_id = $1", rid)}
    assert sent[a1.id] is not None and sent[a2.id] is None


async def test_a_final_version_is_recorded_on_its_own_appliance_only(
    pool: asyncpg.Pool
) -> None:
    await _fleet(pool, a=2)
    rid = await _rollout(pool, start=True)
    a1, _ = await _claim(pool, rid)
    assert await _to(pool, a1, "SUCCEEDED", {"final_version": "9.0.1-20020"}) == {a1.id}
    assert {r["name"]: r["current_version"] for r in await pool.fetch(
        "SELECT name, current_version FROM appliances")} == {
        "a-1": "9.0.1-20020", "a-2": None}


async def test_held_slots_are_looked_at_in_turn_and_released_on_evidence(
    pool: asyncpg.Pool
) -> None:
    await _fleet(pool, a=3)
    rid = await _rollout(pool, start=True)
    a1, a2, a3 = await _claim(pool, rid)
    await _hold_slot(pool, a1)
    await _hold_slot(pool, a2)
    apps = {r["name"]: r["id"] for r in await pool.fetch("SELECT name, id FROM appliances")}

    async def due(limit: int = 10) -> list[str]:
        async with pool.acquire() as conn:
            slots = await task_store.due_held_slots(conn, every_seconds=60, limit=limit)
        for slot in slots:
            assert (slot.rollout_id, slot.target_version, slot.site) == (
                rid, "9.0.1-20020", "a")
            assert slot.appliance_id == apps[slot.appliance]
        return [slot.appliance for slot in slots]

    # never looked at first, then by id; each at most once per interval; a3 holds nothing
    assert await due(limit=1) == ["a-1"]
    assert await due() == ["a-2"]
    assert await due() == []
    await pool.execute(
        "UPDATE tasks SET slot_checked_at = now() - interval '2 minutes' WHERE id = $1", a1.id)
    assert await due() == ["a-1"]
    # another engine looking at the same time skips the slot being looked at
    await pool.execute("UPDATE tasks SET slot_checked_at = NULL WHERE rollout_id = $1", rid)
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", a1.id)
        assert await asyncio.wait_for(due(), 30) == ["a-2"]
    # the one looked at longest ago first; several at once in task order
    await pool.execute(
        "UPDATE tasks SET slot_checked_at = now() - make_interval(mins => "
        "CASE WHEN id = $1 THEN 2 ELSE 3 END) WHERE rollout_id = $2", a1.id, rid)
    assert await due(limit=1) == ["a-2"]
    await pool.execute("UPDATE tasks SET slot_checked_at = NULL WHERE rollout_id = $1", rid)
    assert await due() == ["a-1", "a-2"]

    async with pool.acquire() as conn:
        assert await task_store.release_held_slot(conn, a1.id, version="9.0.1-20020",
                                                  reason="idle on 9.0.1-20020")
        assert not await task_store.release_held_slot(conn, a1.id, version="9.0.1-20020",
                                                      reason="again")
    rows = {r["id"]: r for r in await pool.fetch(
        "SELECT id, state, holds_slot, final_version FROM tasks WHERE rollout_id = $1", rid)}
    assert [(rows[t.id]["state"], rows[t.id]["holds_slot"], rows[t.id]["final_version"])
            for t in (a1, a2, a3)] == [("TIMED_OUT", False, "9.0.1-20020"),
                                       ("TIMED_OUT", True, None), ("DISPATCHING", False, None)]
    versions = {r["name"]: r["current_version"] for r in await pool.fetch(
        "SELECT name, current_version FROM appliances")}
    assert versions == {"a-1": "9.0.1-20020", "a-2": None, "a-3": None}
    event = await pool.fetchrow(
        "SELECT from_state, to_state, detail FROM task_events WHERE task_id = $1 "
        "ORDER BY id DESC LIMIT 1", a1.id)
    assert (event["from_state"], event["to_state"], event["detail"]) == (
        "TIMED_OUT", "TIMED_OUT",
        {"slot_released": True, "version": "9.0.1-20020", "reason": "idle on 9.0.1-20020"})
    # an operator frees every slot of one appliance: the others stay held
    await _hold_slot(pool, a3)
    async with pool.acquire() as conn:
        assert await task_store.release_appliance_slots(
            conn, apps["a-2"], reason="operator") == [a2.id]
    held = {r["id"]: (r["holds_slot"], r["final_version"]) for r in await pool.fetch(
        "SELECT id, holds_slot, final_version FROM tasks WHERE rollout_id = $1", rid)}
    assert held == {a1.id: (False, "9.0.1-20020"), a2.id: (False, None), a3.id: (True, None)}
    assert (await pool.fetchval("SELECT current_version FROM appliances WHERE name = 'a-2'")
            is None)


async def test_a_tick_skips_a_rollout_another_engine_is_ticking(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The tick takes the rollout's lock without waiting: while another transaction (another
    engine's tick) holds it, the tick returns at once and claims nothing for that rollout;
    once released, the next tick claims."""
    async with fleet(pool, db_url, appliances=4), http_client() as client:
        rid = await create(pool, {"preflight": "off"})  # (the first tick claims)
        eng = Engine(pool, client, fast_engine_config(), database_url=db_url)
        holder = await pool.acquire()
        try:
            tx = holder.transaction()
            await tx.start()
            await task_store.lock_rollout(holder, rid)
            # a hang (a blocking lock) fails here instead of hanging the suite
            assert await asyncio.wait_for(eng.tick(), 60) is True  # still active
            assert eng.claimed == 0
            assert await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state <> 'PENDING'",
                rid) == 0
            # the holder's lock is still there: the skip did not take it over
            async with pool.acquire() as other, other.transaction():
                assert not await task_store.try_lock_rollout(other, rid)
            await tx.commit()
            await asyncio.wait_for(eng.tick(), 60)
            assert eng.claimed == 4
            owners = {r["lease_owner"] for r in await pool.fetch(
                "SELECT lease_owner FROM tasks WHERE rollout_id = $1", rid)}
            assert owners <= {eng.owner, None} and eng.owner in owners
        finally:
            await pool.release(holder)
            eng.stop()
            await asyncio.wait_for(eng.run(), 60)  # drains the runners the tick started


async def test_try_lock_rollout_is_per_rollout_and_per_transaction(pool: asyncpg.Pool) -> None:
    await _fleet(pool, a=2)
    first, second = await _rollout(pool), await _rollout(pool)
    async with pool.acquire() as a, pool.acquire() as b:
        async with a.transaction():
            assert await task_store.try_lock_rollout(a, first)
            async with b.transaction():
                assert not await task_store.try_lock_rollout(b, first)
                assert await task_store.try_lock_rollout(b, second)  # another rollout
        async with b.transaction():  # a's transaction ended: its lock went with it
            assert await task_store.try_lock_rollout(b, first)


async def test_a_tick_claims_free_slots_in_bounded_batches(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """`claim_batch`: no claim statement takes more than that many tasks (so none holds the
    fleet-wide claim lock for long), yet one tick fills every free slot, claiming again at
    once after each full batch."""
    async with fleet(pool, db_url, appliances=5), http_client() as client:
        rid = await create(pool, {"max_concurrency": 5, "preflight": "off"})
        eng = Engine(pool, client, fast_engine_config(claim_batch=2), database_url=db_url)
        try:
            await asyncio.wait_for(eng.tick(), 60)
            assert eng.claimed == 5  # one tick: batches of 2, 2 and 1
            claims = [r["n"] for r in await pool.fetch(
                """SELECT count(*) AS n FROM task_events
                   WHERE rollout_id = $1 AND to_state = 'DISPATCHING'
                   GROUP BY at ORDER BY at""", rid)]
            assert claims == [2, 2, 1]
        finally:
            eng.stop()
            await asyncio.wait_for(eng.run(), 60)


async def test_a_refresh_while_the_tick_reads_its_rollouts_is_not_lost(
    pool: asyncpg.Pool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NOTIFY (`Engine.refresh`) that arrives while the tick reads the active rollouts and
    picks up pre-flight runs: the tick still claims from what it read, and the next tick
    reads the list again. (It failed with a TypeError, and the engine ticked again only
    after poll_interval: seen at the start of bench/multi_rollout.py, as ten rollouts
    started at once.)"""
    async with fleet(pool, db_url, appliances=4), http_client() as client:
        rid = await create(pool, {"preflight": "off"})
        eng = Engine(pool, client, fast_engine_config(poll_interval=30.0),
                     database_url=db_url)
        real_read = rollout_store.active_rollout_ids
        reads: list[list[int]] = []

        async def read(*args: Any, **kwargs: Any) -> list[int]:
            ids = await real_read(*args, **kwargs)
            reads.append(list(ids))
            return ids

        real_pick_up = eng.preflight.pick_up

        async def pick_up_then_notified() -> None:
            await real_pick_up()
            if len(reads) == 1:
                eng.refresh()  # a NOTIFY handled while the tick awaited

        monkeypatch.setattr(rollout_store, "active_rollout_ids", read)
        monkeypatch.setattr(eng.preflight, "pick_up", pick_up_then_notified)
        try:
            assert await asyncio.wait_for(eng.tick(), 60) is True
            assert eng.claimed == 4 and reads == [[rid]]
            await asyncio.wait_for(eng.tick(), 60)  # within poll_interval: only the refresh
            assert len(reads) == 2  # reads again
        finally:
            eng.stop()
            await asyncio.wait_for(eng.run(), 60)
