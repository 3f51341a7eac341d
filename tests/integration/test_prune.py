"""Retention (issue 15): `orchestrator prune --older-than 90d` and the engine's daily prune
delete the tasks and task events of rollouts that ended before the cutoff; the rollouts,
their waves, their per-state counts and the audit log stay. Active rollouts, and rollouts
that ended after the cutoff, are never touched.

The rollouts run for real (engine and simulator); "ended 100 days ago" is then written
into their `finished_at`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from orchestrator.domain.states import IN_FLIGHT_TASK_STATES, TERMINAL_ROLLOUT_STATES
from orchestrator.engine.retention import retention_loop
from orchestrator.reports.model import build_report
from orchestrator.store import prune as prune_store
from orchestrator.store import rollouts as rollout_store
from tests.fleet import ACTOR, create, engine, fleet, wait_until_terminal
from tests.helpers import cli_env, run_cli

DAY = timedelta(days=1)


@dataclass
class Scenario:
    old: int  # ended 100 days ago (COMPLETED_WITH_FAILURES): pruned by --older-than 90d
    recent: int  # ended 10 days ago: kept
    active: int  # RUNNING (no engine runs it any more): never touched


async def _sizes(pool: asyncpg.Pool, rollout_id: int) -> tuple[int, int, int, int]:
    """(tasks, task events, waves, audit entries naming the rollout)."""
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM tasks WHERE rollout_id = $1) AS tasks,
                  (SELECT count(*) FROM task_events WHERE rollout_id = $1) AS events,
                  (SELECT count(*) FROM rollout_waves WHERE rollout_id = $1) AS waves,
                  (SELECT count(*) FROM audit_log
                   WHERE target_type = 'rollout' AND target_id = $1::text) AS audit""",
        rollout_id,
    )
    assert row is not None
    return int(row["tasks"]), int(row["events"]), int(row["waves"]), int(row["audit"])


async def _ended(pool: asyncpg.Pool, rollout_id: int, ago: timedelta) -> None:
    await pool.execute("UPDATE rollouts SET finished_at = now() - $2::interval WHERE id = $1",
                       rollout_id, ago)


@pytest.fixture
async def scenario(pool: asyncpg.Pool, db_url: str) -> AsyncIterator[Scenario]:
    async with fleet(pool, db_url, appliances=8, sites=2) as f:
        f.sim.set_faults("sim-00002", ["install_error"])
        async with engine(f):
            old = await create(pool, {"waves": [1, "100%"], "order": "name"})
            assert (await wait_until_terminal(pool, old)).state == "COMPLETED_WITH_FAILURES"
            recent = await create(pool)
            await wait_until_terminal(pool, recent)
        active = await create(pool)  # started; no engine runs it
        await _ended(pool, old, 100 * DAY)
        await _ended(pool, recent, 10 * DAY)
        yield Scenario(old, recent, active)


async def test_prune_deletes_tasks_and_events_of_old_rollouts_only(
    pool: asyncpg.Pool, scenario: Scenario,
) -> None:
    before = {rid: await _sizes(pool, rid)
              for rid in (scenario.old, scenario.recent, scenario.active)}
    counts_before = await rollout_store.rollout_counts(pool, scenario.old)
    assert before[scenario.old][0] == 8 and before[scenario.old][1] > 8
    assert before[scenario.active][0] == 8

    result = await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR,
                                     chunk=3)  # several chunks per rollout

    assert [r.id for r in result.pruned] == [scenario.old]
    assert (result.tasks, result.events) == before[scenario.old][:2]
    tasks, events, waves, audit = await _sizes(pool, scenario.old)
    assert (tasks, events) == (0, 0)
    assert waves == before[scenario.old][2] == 2  # the waves stay
    # so does its audit trail, with one more entry: the prune
    assert audit == before[scenario.old][3] + 1 > 1
    row = await pool.fetchrow(
        "SELECT state, pruned_at, prune_finished_at FROM rollouts WHERE id = $1", scenario.old)
    assert row is not None
    assert row["state"] == "COMPLETED_WITH_FAILURES"
    assert row["pruned_at"] is not None and row["prune_finished_at"] is not None
    # its per-state counts (task_counts) survive the deletion of its tasks
    counts_after = await rollout_store.rollout_counts(pool, scenario.old)
    assert counts_after.by_state == counts_before.by_state == {"SUCCEEDED": 7, "FAILED": 1}
    # the others are untouched
    assert await _sizes(pool, scenario.recent) == before[scenario.recent]
    assert await _sizes(pool, scenario.active) == before[scenario.active]
    entry = await pool.fetchrow(
        "SELECT actor, target_id, detail FROM audit_log WHERE action = 'rollout.prune'")
    assert entry is not None and entry["actor"] == ACTOR.name
    assert entry["target_id"] == str(scenario.old)
    detail = entry["detail"] if isinstance(entry["detail"], dict) else \
        json.loads(entry["detail"])
    assert (detail["tasks"], detail["events"]) == before[scenario.old][:2]

    again = await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR)
    assert again.rollouts == [] and again.tasks == 0


async def test_dry_run_counts_and_deletes_nothing(pool: asyncpg.Pool, scenario: Scenario) -> None:
    before = await _sizes(pool, scenario.old)
    result = await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR,
                                     dry_run=True)
    assert [r.id for r in result.pruned] == [scenario.old]
    assert (result.tasks, result.events) == before[:2]
    assert await _sizes(pool, scenario.old) == before
    assert await prune_store.pruned_at(pool, scenario.old) is None
    assert await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'rollout.prune'") == 0
    # a cutoff of 5 days takes the recent one too
    wider = await prune_store.prune(pool, datetime.now(UTC) - 5 * DAY, actor=ACTOR,
                                    dry_run=True)
    assert [r.id for r in wider.pruned] == [scenario.old, scenario.recent]


async def test_a_prune_that_stopped_half_way_is_finished_by_the_next(
    pool: asyncpg.Pool, scenario: Scenario,
) -> None:
    """The first prune dies after its first chunk (its progress callback raises); the
    rollout is marked pruned with tasks left, and the next prune finishes it even with a
    cutoff that would not take it any more."""
    before = await _sizes(pool, scenario.old)

    def crash(item: prune_store.PrunedRollout) -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR, chunk=2,
                                progress=crash)
    tasks, events, _, _ = await _sizes(pool, scenario.old)
    assert events == before[1] - 2 and tasks == before[0]
    assert await prune_store.pruned_at(pool, scenario.old) is not None
    assert await pool.fetchval("SELECT prune_finished_at FROM rollouts WHERE id = $1",
                               scenario.old) is None

    result = await prune_store.prune(pool, datetime.now(UTC) - 1000 * DAY, actor=ACTOR)
    assert [r.id for r in result.pruned] == [scenario.old]
    assert (result.tasks, result.events) == (before[0], before[1] - 2)
    assert (await _sizes(pool, scenario.old))[:2] == (0, 0)


async def test_a_rollout_whose_task_still_holds_a_slot_is_skipped(
    pool: asyncpg.Pool, scenario: Scenario,
) -> None:
    await pool.execute(
        "UPDATE tasks SET holds_slot = true WHERE rollout_id = $1 AND state = 'FAILED'",
        scenario.old)
    before = await _sizes(pool, scenario.old)
    result = await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR)
    assert result.pruned == []
    assert [r.id for r in result.rollouts] == [scenario.old]
    assert "holds a slot" in (result.rollouts[0].skipped or "")
    assert await _sizes(pool, scenario.old) == before
    assert await prune_store.pruned_at(pool, scenario.old) is None


async def test_two_prunes_at_once_share_the_work(pool: asyncpg.Pool,
                                                 scenario: Scenario) -> None:
    """Two engine replicas pruning at the same moment: every row is deleted once, the
    counts of both add up to what there was, neither fails."""
    await _ended(pool, scenario.recent, 95 * DAY)
    old, recent = await _sizes(pool, scenario.old), await _sizes(pool, scenario.recent)
    cutoff = datetime.now(UTC) - 90 * DAY
    a, b = await asyncio.gather(
        prune_store.prune(pool, cutoff, actor=ACTOR, chunk=1),
        prune_store.prune(pool, cutoff, actor=ACTOR, chunk=1),
    )
    assert a.tasks + b.tasks == old[0] + recent[0]
    assert a.events + b.events == old[1] + recent[1]
    for rid in (scenario.old, scenario.recent):
        assert (await _sizes(pool, rid))[:2] == (0, 0)
        assert await prune_store.pruned_at(pool, rid) is not None
    assert (await _sizes(pool, scenario.active))[0] == 8
    # the audit log says who removed what: its entries add up to what there was
    entries = await pool.fetch(
        "SELECT target_id, detail FROM audit_log WHERE action = 'rollout.prune'")
    details = [e["detail"] if isinstance(e["detail"], dict) else json.loads(e["detail"])
               for e in entries]
    assert sum(d["tasks"] for d in details) == old[0] + recent[0]
    assert sum(d["events"] for d in details) == old[1] + recent[1]
    assert sorted(e["target_id"] for e, d in zip(entries, details, strict=True)
                  if d["finished"]) == sorted([str(scenario.old), str(scenario.recent)])


async def test_retry_failed_of_a_pruned_rollout_changes_nothing(
    pool: asyncpg.Pool, scenario: Scenario,
) -> None:
    await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR)
    with pytest.raises(rollout_store.RolloutError, match="pruned on"):
        await rollout_store.retry_failed(pool, scenario.old, ACTOR)
    row = await pool.fetchrow("SELECT state, finished_at FROM rollouts WHERE id = $1",
                              scenario.old)
    assert row is not None
    assert row["state"] == "COMPLETED_WITH_FAILURES" and row["finished_at"] is not None


async def test_report_of_a_pruned_rollout_says_so(pool: asyncpg.Pool,
                                                  scenario: Scenario) -> None:
    await prune_store.prune(pool, datetime.now(UTC) - 90 * DAY, actor=ACTOR)
    report = await build_report(pool, scenario.old)
    data = report.to_dict()
    assert data["rollout"]["pruned_at"] is not None
    # the counts come from the summary rows, not from the (deleted) tasks
    assert data["summary"]["targeted"] == 8
    assert (data["summary"]["succeeded"], data["summary"]["failed"]) == (7, 1)
    assert [w["targeted"] for w in data["waves"]] == [1, 7]
    assert sum(s["targeted"] for s in data["sites"]) == 8


async def test_retention_loop_prunes_when_the_setting_is_on(
    pool: asyncpg.Pool, scenario: Scenario,
) -> None:
    stop = asyncio.Event()
    runs: list[prune_store.PruneResult] = []
    loop = asyncio.create_task(retention_loop(
        pool, 90 * DAY, owner="test-engine", interval=0.2, first_delay=0.0,
        stop_event=stop, on_prune=runs.append))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(runs) < 2:  # the first prune, then one more at the next interval
            assert asyncio.get_running_loop().time() < deadline, runs
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 10)
    assert [r.id for r in runs[0].pruned] == [scenario.old]
    assert runs[1].rollouts == []
    assert (await _sizes(pool, scenario.old))[:2] == (0, 0)
    assert (await _sizes(pool, scenario.recent))[0] == 8
    via = await pool.fetchval(
        "SELECT actor || '/' || via FROM audit_log WHERE action = 'rollout.prune'")
    assert via == "engine:test-engine/engine"


async def test_prune_command(db_url: str, pool: asyncpg.Pool, scenario: Scenario) -> None:
    env = cli_env(db_url)
    old = await _sizes(pool, scenario.old)

    bad = await asyncio.to_thread(run_cli, "prune", "--older-than", "5x", env=env)
    assert bad.returncode == 2
    assert "--older-than" in bad.stderr and "'5x'" in bad.stderr
    assert "Traceback" not in bad.stderr

    dry = await asyncio.to_thread(run_cli, "prune", "--older-than", "90d", "--dry-run",
                                  env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"rollout {scenario.old} " in dry.stdout
    assert f"would delete {old[0]} tasks, {old[1]} events" in dry.stdout
    assert "dry run: nothing was deleted" in dry.stdout
    assert f"rollout {scenario.recent} " not in dry.stdout
    assert (await _sizes(pool, scenario.old))[:2] == old[:2]

    done = await asyncio.to_thread(run_cli, "prune", "--older-than", "90d", "--json",
                                   env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert (data["rollouts"], data["tasks"], data["events"]) == (1, old[0], old[1])
    assert data["dry_run"] is False
    assert [r["id"] for r in data["by_rollout"]] == [scenario.old]
    assert (await _sizes(pool, scenario.old))[:2] == (0, 0)
    # `rollout show` says it was pruned, with its counts
    show = await asyncio.to_thread(run_cli, "rollout", "show", str(scenario.old), env=env)
    assert show.returncode == 0, show.stderr
    assert "pruned on " in show.stdout and "tasks: failed 1, succeeded 7" in show.stdout

    text = await asyncio.to_thread(run_cli, "prune", "--older-than", "1w", env=env)
    assert text.returncode == 0, text.stderr
    assert f"rollout {scenario.recent} " in text.stdout
    assert "1 rollout(s) ended before" in text.stdout
    assert (await _sizes(pool, scenario.recent))[:2] == (0, 0)
    assert (await _sizes(pool, scenario.active))[0] == 8


# ------------------------------------------------------------------ plans at scale
BIG = 50_000  # tasks of the ended rollout; two events each


async def _populate_big(conn: asyncpg.Connection) -> tuple[int, int]:
    """An ended rollout of BIG tasks (two events each) and a running one beside it, built
    with set-based SQL; (ended id, running id)."""
    await conn.execute(
        """INSERT INTO appliances (name, base_url, site)
           SELECT 'app-' || i, 'https://app-' || i || '.example/api', 'site-' || (i % 10)
           FROM generate_series(1, $1) AS i""", BIG)
    ended = await conn.fetchval(
        """INSERT INTO rollouts (name, target_version, state, current_wave, created_by,
                                 started_at, finished_at)
           VALUES ('ended', '9.0.1-20020', 'SUCCEEDED', 0, 'test', now() - interval '101 days',
                   now() - interval '100 days') RETURNING id""")
    running = await conn.fetchval(
        """INSERT INTO rollouts (name, target_version, state, current_wave, created_by,
                                 started_at)
           VALUES ('running', '9.0.1-20020', 'RUNNING', 0, 'test', now()) RETURNING id""")
    for rid, n in ((ended, BIG), (running, BIG // 10)):
        await conn.execute(
            """INSERT INTO rollout_waves (rollout_id, number, planned_size, state)
               VALUES ($1, 0, $2, 'RUNNING')""", rid, n)
    await conn.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state,
                              dispatched_at, finished_at)
           SELECT $1, a.id, 0, a.id - 1, a.site, 'SUCCEEDED', now() - interval '101 days',
                  now() - interval '100 days'
           FROM appliances a""", ended)
    await conn.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site)
           SELECT $1, a.id, 0, a.id - 1, a.site FROM appliances a WHERE a.id <= $2""",
        running, BIG // 10)
    await conn.execute(
        """INSERT INTO task_events (task_id, rollout_id, from_state, to_state, at)
           SELECT t.id, t.rollout_id, s.f, s.t, now() - interval '100 days'
           FROM tasks t CROSS JOIN (VALUES ('PENDING', 'DISPATCHING'),
                                           ('VERIFYING', 'SUCCEEDED')) AS s (f, t)
           WHERE t.rollout_id = $1""", ended)
    await conn.execute("ANALYZE")
    return int(ended), int(running)


def _seq_scans(plan: Any) -> list[str]:
    found: list[str] = []
    if isinstance(plan, dict):
        if plan.get("Node Type") == "Seq Scan" and \
                plan.get("Relation Name") in ("tasks", "task_events"):
            found.append(str(plan["Relation Name"]))
        for value in plan.values():
            found += _seq_scans(value)
    elif isinstance(plan, list):
        for value in plan:
            found += _seq_scans(value)
    return found


@pytest.mark.timeout(600)
async def test_prune_statements_read_no_whole_table_and_prune_a_large_rollout(
    pool: asyncpg.Pool,
) -> None:
    """At 55,000 tasks and 100,000 events, no statement of the prune reads `tasks` or
    `task_events` with a sequential scan (each would read every rollout's rows, per
    chunk); then the prune removes the ended rollout, chunk by chunk, and nothing else."""
    async with pool.acquire() as conn:
        ended, running = await _populate_big(conn)
        terminal = sorted(TERMINAL_ROLLOUT_STATES)
        in_flight = sorted(IN_FLIGHT_TASK_STATES)
        cutoff = datetime.now(UTC) - 90 * DAY
        # (SIZES, the dry run's count of a rollout's rows, is left out: it reads every row
        # of the rollout anyway, and a rollout that is most of the table is counted best
        # with a sequential scan)
        statements: dict[str, tuple[str, tuple[Any, ...]]] = {
            "candidates": (prune_store.CANDIDATES, (cutoff, terminal, in_flight)),
            "claim": (prune_store.CLAIM, (ended, terminal, in_flight, cutoff)),
            "still_prunable": (prune_store.STILL_PRUNABLE, (ended, terminal)),
            "delete_events": (prune_store.DELETE_EVENTS, (ended, 5000)),
            "delete_tasks": (prune_store.DELETE_TASKS, (ended, 5000)),
            "mark_finished": (prune_store.MARK_FINISHED, (ended,)),
        }
        for name, (sql, args) in statements.items():
            plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
            plan = json.loads(plan) if isinstance(plan, str) else plan
            assert _seq_scans(plan) == [], f"{name}: {json.dumps(plan)[:3000]}"

    result = await prune_store.prune(pool, cutoff, actor=ACTOR)
    assert [r.id for r in result.pruned] == [ended]
    assert (result.tasks, result.events) == (BIG, 2 * BIG)
    assert (await _sizes(pool, ended))[:2] == (0, 0)
    assert (await _sizes(pool, running))[0] == BIG // 10


async def test_the_engine_prunes_when_the_setting_is_on(
    pool: asyncpg.Pool, db_url: str, scenario: Scenario,
) -> None:
    """`prune_older_than` set: the engine's retention loop prunes the old rollout (and only
    it) while the engine runs."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f, \
            engine(f, prune_older_than=90 * DAY, prune_interval=3600.0,
                   prune_first_delay=0.0):
        # the prune's last transaction marks it finished and writes its audit entry, after
        # the deletes: wait for that, not for the tasks to be gone (the engine would stop
        # between the two, and the next prune would write the entry)
        deadline = asyncio.get_running_loop().time() + 30
        while await pool.fetchval(
                "SELECT prune_finished_at FROM rollouts WHERE id = $1", scenario.old) is None:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    assert (await _sizes(pool, scenario.old))[:2] == (0, 0)
    assert (await _sizes(pool, scenario.recent))[0] == 8
    assert await pool.fetchval(
        "SELECT via FROM audit_log WHERE action = 'rollout.prune'") == "engine"
