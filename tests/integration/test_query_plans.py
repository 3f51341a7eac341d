"""The hot statements' plans at fleet scale: 100,000 appliances, a rollout of 100,000
tasks and a smaller one beside it, built with set-based SQL, then analysed. Every
statement an engine runs on every tick or lease round (the claim, with and without its
optional limits and window filter; the reclaim; the lease renewal; the tick's counters)
is EXPLAINed with realistic parameters, and none may read `tasks` with a sequential
scan: each would read the whole table, per rollout, per tick, per engine.

The statement texts are the store's own constants (EXPLAIN without ANALYZE executes
nothing, so the data-modifying claim is only planned).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import asyncpg

from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store

APPLIANCES = 100_000
SITES = 20
SMALL = 10_000  # the second rollout's tasks
OWNER = "engine-a"
# the big rollout's plan: a canary wave, a small wave, then the rest
WAVES = ((0, 0, 1_000), (1, 1_000, 10_000), (2, 10_000, APPLIANCES))  # (number, from, to)
IN_FLIGHT = range(1_000, 1_400)  # positions in flight in wave 1 (after the canary succeeded)

STRATEGY = {"waves": ["1%", "10%", "100%"], "max_concurrency": 500}


async def _populate(conn: asyncpg.Connection) -> tuple[int, int]:
    """The fleet and the two rollouts; (big rollout id, small rollout id)."""
    await conn.execute(
        """INSERT INTO appliances (name, base_url, site, tags)
           SELECT 'app-' || i, 'https://app-' || i || '.example/api',
                  'site-' || (i % $2), ARRAY['tier-' || (i % 3)]
           FROM generate_series(1, $1) AS i""",
        APPLIANCES, SITES)
    await conn.execute(
        """INSERT INTO sites (name, max_in_flight)
           SELECT 'site-' || i, 40 FROM generate_series(0, 4) AS i""")
    big = await conn.fetchval(
        """INSERT INTO rollouts (name, target_version, strategy, state, current_wave,
                                 created_by, started_at)
           VALUES ('big', '9.0.1-20020', $1::jsonb, 'RUNNING', 1, 'test', now())
           RETURNING id""",
        json.dumps(STRATEGY))
    small = await conn.fetchval(
        """INSERT INTO rollouts (name, target_version, strategy, state, current_wave,
                                 created_by, started_at)
           VALUES ('small', '9.0.1-20020', $1::jsonb, 'RUNNING', 0, 'test', now())
           RETURNING id""",
        json.dumps({"waves": ["100%"], "max_concurrency": 100}))
    for number, first, last in WAVES:
        await conn.execute(
            """INSERT INTO rollout_waves (rollout_id, number, planned_size, state, started_at,
                                          finished_at)
               VALUES ($1, $2, $3, $4, now(), CASE WHEN $2 = 0 THEN now() END)""",
            big, number, last - first,
            "SUCCEEDED" if number == 0 else "RUNNING" if number == 1 else "PENDING")
    await conn.execute(
        """INSERT INTO rollout_waves (rollout_id, number, planned_size, state, started_at)
           VALUES ($1, 0, $2, 'RUNNING', now())""", small, SMALL)
    # the big rollout, in plan order (appliance id order): the canary succeeded, a few
    # hundred tasks of wave 1 are in flight (leased, dispatched within the last minute),
    # a few timed-out installs hold their slot, the rest is PENDING
    await conn.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state, attempt,
                              lease_owner, lease_token, lease_expires_at, dispatched_at,
                              finished_at, final_version, holds_slot, install_sent_at,
                              installs_sent)
           SELECT $1, a.id, w.wave, p.pos, a.site, s.state,
                  CASE WHEN s.state = 'PENDING' THEN 0 ELSE 1 END,
                  CASE WHEN s.leased THEN $4 END,
                  CASE WHEN s.leased THEN gen_random_uuid() END,
                  CASE WHEN s.leased THEN now() + (p.pos % 60) * interval '1 second' END,
                  CASE WHEN s.state <> 'PENDING'
                       THEN now() - (p.pos % 120) * interval '1 second' END,
                  CASE WHEN s.leased OR s.state = 'PENDING' THEN NULL ELSE now() END,
                  CASE WHEN s.state = 'SUCCEEDED' THEN '9.0.1-20020' END,
                  s.state = 'TIMED_OUT',
                  CASE WHEN s.state = 'TIMED_OUT' THEN now() END,
                  CASE WHEN s.state = 'TIMED_OUT' THEN 1 ELSE 0 END
           FROM (SELECT id, site, row_number() OVER (ORDER BY id) - 1 AS rn
                 FROM appliances) AS a,
                LATERAL (SELECT a.rn::int AS pos) AS p,
                LATERAL (SELECT CASE WHEN p.pos < $2 THEN 0 WHEN p.pos < $3 THEN 1 ELSE 2 END
                         AS wave) AS w,
                LATERAL (SELECT CASE
                    WHEN p.pos < $2 THEN 'SUCCEEDED'
                    WHEN p.pos >= $5 AND p.pos < $6 THEN
                        (ARRAY['DISPATCHING', 'INSTALLING', 'VERIFYING'])[1 + p.pos % 3]
                    WHEN p.pos >= $6 AND p.pos < $6 + 20 THEN 'TIMED_OUT'
                    ELSE 'PENDING' END AS state) AS s0,
                LATERAL (SELECT s0.state,
                                s0.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')
                                AS leased) AS s""",
        big, WAVES[0][2], WAVES[1][2], OWNER, IN_FLIGHT.start, IN_FLIGHT.stop)
    # the small rollout: the last SMALL appliances (pending in the big one too), a few in
    # flight
    await conn.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state, attempt,
                              lease_owner, lease_token, lease_expires_at, dispatched_at)
           SELECT $1, a.id, 0, a.rn, a.site, CASE WHEN a.rn < 50 THEN 'INSTALLING'
                                                  ELSE 'PENDING' END,
                  CASE WHEN a.rn < 50 THEN 1 ELSE 0 END,
                  CASE WHEN a.rn < 50 THEN 'engine-b' END,
                  CASE WHEN a.rn < 50 THEN gen_random_uuid() END,
                  CASE WHEN a.rn < 50 THEN now() + interval '30 seconds' END,
                  CASE WHEN a.rn < 50 THEN now() END
           FROM (SELECT id, site, (row_number() OVER (ORDER BY id) - 1)::int AS rn
                 FROM appliances ORDER BY id DESC LIMIT $2) AS a""",
        small, SMALL)
    # what autovacuum does after a bulk load: statistics and the visibility map
    await conn.execute("VACUUM ANALYZE appliances, sites, rollouts, rollout_waves, tasks")
    return int(big), int(small)


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def _seq_scans_of_tasks(conn: asyncpg.Connection, sql: str, *args: Any) -> list[str]:
    """The plan's sequential scans of `tasks` (empty: none), after planning `sql` with
    `args`; raises with the plan when there is one."""
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return [f"{n['Node Type']} on {n['Relation Name']} ({n.get('Alias')})"
            for n in _nodes(plan)
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == "tasks"]


async def _plan_text(conn: asyncpg.Connection, sql: str, *args: Any) -> str:
    rows = await conn.fetch(f"EXPLAIN {sql}", *args)
    # a long array parameter (allowed appliances) would fill the screen
    return "\n".join(line if len(line) < 200 else line[:200] + "..."
                     for line in (r[0] for r in rows))


async def _statements(
    conn: asyncpg.Connection, big: int, small: int
) -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Statement name -> (the store's SQL text, realistic parameters)."""
    in_flight = await conn.fetch(
        """SELECT id, lease_token FROM tasks WHERE rollout_id = $1 AND lease_owner = $2
           ORDER BY id LIMIT 200""", big, OWNER)
    assert len(in_flight) == 200
    # a maintenance window lets two groups of appliances (site, tags, time zone) start now
    allowed = [[f"site-{i}", ["tier-1"], None] for i in (3, 7)]
    # a page of the appliance list (the console's), the newest task of each
    page = [int(r["id"]) for r in await conn.fetch(
        "SELECT id FROM appliances ORDER BY id DESC LIMIT 100")]

    def claim(rid: int, wave: int, *, per_site: int | None = None,
              per_minute: int | None = None, allow: list[Any] | None = None,
              after_overlapping: bool = False) -> tuple[Any, ...]:
        # claim_tasks' arguments, in CLAIM's order
        return (rid, wave, per_site, 500, 100, per_minute, OWNER, 60.0, allow,
                after_overlapping)

    return {
        "claim": (task_store.CLAIM, claim(big, 1)),
        "claim per_site": (task_store.CLAIM, claim(big, 1, per_site=20)),
        "claim starts_per_minute": (task_store.CLAIM, claim(big, 1, per_minute=200)),
        "claim all limits, allowed appliances": (task_store.CLAIM, claim(
            big, 1, per_site=20, per_minute=200, allow=allowed)),
        "claim allowed appliances": (task_store.CLAIM, claim(big, 1, allow=allowed)),
        "window groups": (task_store.PENDING_WINDOW_GROUPS, (big, 1)),
        "claim after_overlapping (small rollout)": (task_store.CLAIM, claim(
            small, 0, after_overlapping=True)),
        "claim per_site (small rollout)": (task_store.CLAIM, claim(small, 0, per_site=5)),
        "reclaim": (task_store.RECLAIM, (OWNER, 60.0, 100, [])),
        "reclaim, tasks running": (task_store.RECLAIM, (
            OWNER, 60.0, 100, [int(r["id"]) for r in in_flight[:50]])),
        "renew leases": (task_store.RENEW_LEASES, (
            [int(r["id"]) for r in in_flight], [r["lease_token"] for r in in_flight],
            OWNER, 60.0)),
        "tick: lock_for_tick": (rollout_store.LOCK_FOR_TICK, (big,)),
        "tick: task_counts_by_wave": (rollout_store.TASK_COUNTS_BY_WAVE, (big,)),
        "tick: task_counts_by_wave (small rollout)": (
            rollout_store.TASK_COUNTS_BY_WAVE, (small,)),
        "rollout counts (API)": (rollout_store.ROLLOUT_COUNTS, (big,)),
        "rollout list counts (API)": (rollout_store.STATE_COUNTS, ([big, small],)),
        "appliances' last tasks (API)": (appliance_store.LAST_TASKS, (page,)),
        "tick: wave_gate": (rollout_store.WAVE_GATE, (big, 1)),
    }


async def _failures(
    conn: asyncpg.Connection, statements: dict[str, tuple[str, tuple[Any, ...]]]
) -> list[str]:
    """Each statement whose plan reads `tasks` sequentially, with its plan."""
    failures = []
    for name, (sql, args) in statements.items():
        scans = await _seq_scans_of_tasks(conn, sql, *args)
        if scans:
            failures.append(f"--- {name}: {', '.join(scans)}\n"
                            f"{await _plan_text(conn, sql, *args)}")
    return failures


async def test_no_hot_statement_reads_all_tasks(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        big, small = await _populate(conn)
        failures = await _failures(conn, await _statements(conn, big, small))
    assert not failures, "sequential scans of tasks:\n" + "\n".join(failures)


async def test_lease_renewal_changes_no_indexed_column(pool: asyncpg.Pool) -> None:
    """A renewal sets lease_expires_at only: when no index of tasks involves it (its key,
    included columns or predicate), the update may be HOT (no new index entries), which
    matters with every in-flight task renewed every third of its lease."""
    indexes = await pool.fetch(
        """SELECT indexname, indexdef FROM pg_indexes
           WHERE tablename = 'tasks' AND indexdef ILIKE '%lease_expires_at%'""")
    assert not indexes, [r["indexdef"] for r in indexes]
    update = re.search(r"UPDATE tasks SET (.*?) FROM", " ".join(task_store.RENEW_LEASES.split()))
    assert update is not None
    assert update.group(1) == "lease_expires_at = now() + make_interval(secs => $4)"


async def _claim_reads(conn: asyncpg.Connection, big: int, room: int, *,
                       site_limits: bool) -> tuple[dict[str, float], int]:
    """Run the claim for real (EXPLAIN ANALYZE, in a transaction rolled back) with room for
    `room` more tasks: (rows read from tasks per index, tasks claimed). `site_limits`:
    keep the fleet-wide capacities of five sites (else cleared: no per-site limit)."""
    in_flight = await conn.fetchval(
        """SELECT count(*) FROM tasks WHERE rollout_id = $1
           AND (state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING') OR holds_slot)""", big)
    args = (big, 1, None, in_flight + room, 1000, None, OWNER, 60.0, None, False)
    tr = conn.transaction()
    await tr.start()
    try:
        if not site_limits:
            await conn.execute("UPDATE sites SET max_in_flight = NULL")
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {task_store.CLAIM}", *args)
        claimed = await conn.fetchval(
            """SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state = 'DISPATCHING'
               AND lease_owner = $2 AND dispatched_at = now()""", big, OWNER)
    finally:
        await tr.rollback()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    reads: dict[str, float] = {}
    for n in _nodes(plan):
        if n.get("Relation Name") == "tasks" and n.get("Index Name") in (
                "tasks_pending_site_idx", "tasks_pending_idx"):
            reads[n["Index Name"]] = reads.get(n["Index Name"], 0) + \
                n["Actual Rows"] * n["Actual Loops"]
    return reads, int(claimed)


async def test_claim_reads_as_many_pending_tasks_as_it_may_start(pool: asyncpg.Pool) -> None:
    """The claim reads only as many PENDING tasks as it may start now, not every PENDING
    task of the rollout (98,600 here): run for real, the index scans of PENDING tasks
    return at most sites x room rows with per-site limits (some sites have a fleet-wide
    capacity: read per site), about the room without (read in plan order across sites),
    and the claim takes exactly the room."""
    room = 30
    async with pool.acquire() as conn:
        big, _ = await _populate(conn)
        per_site, claimed = await _claim_reads(conn, big, room, site_limits=True)
        assert claimed == room
        assert per_site.get("tasks_pending_site_idx"), \
            f"with site limits the claim no longer reads PENDING tasks per site: {per_site}"
        assert sum(per_site.values()) <= SITES * room, per_site
        plain, claimed = await _claim_reads(conn, big, room, site_limits=False)
        assert claimed == room
        assert not plain.get("tasks_pending_site_idx"), \
            f"without a per-site limit the claim still reads per site: {plain}"
        assert 0 < plain.get("tasks_pending_idx", 0) <= 2 * room, plain


async def test_the_claim_counts_recent_starts_only_with_a_start_limit(
        pool: asyncpg.Pool) -> None:
    """The generic plan a prepared claim gets after five runs (asyncpg prepares every
    statement) still runs a subquery whose value meets a NULL parameter. Without
    `max_starts_per_minute` the claim must not count the rollout's starts of the last
    minute (thousands of index entries at concurrency 5,000, on every claim); with it,
    it must."""
    async with pool.acquire() as conn:
        big, _ = await _populate(conn)
        in_flight = await conn.fetchval(
            """SELECT count(*) FROM tasks WHERE rollout_id = $1
               AND (state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING') OR holds_slot)""",
            big)

        async def dispatched_index_loops(starts_per_minute: str) -> float:
            tr = conn.transaction()
            await tr.start()
            try:
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await conn.execute(
                    "PREPARE claim_generic(bigint, int, int, int, int, int, text, float8, "
                    f"jsonb, boolean) AS {task_store.CLAIM}")
                raw = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim_generic("
                    f"{big}, 1, NULL, {in_flight + 30}, 1000, {starts_per_minute}, "
                    f"'{OWNER}', 60.0, NULL, false)")
            finally:
                await tr.rollback()
                await conn.execute("DEALLOCATE claim_generic")
            plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
            return sum(n["Actual Loops"] for n in _nodes(plan)
                       if n.get("Index Name") == "tasks_rollout_dispatched_idx")

        assert await dispatched_index_loops("NULL") == 0
        assert await dispatched_index_loops("100000") >= 1


async def test_a_page_of_tasks_in_one_state(pool: asyncpg.Pool) -> None:
    """A dashboard's "what is installing now" (`GET .../tasks?state=INSTALLING`), the
    statement of its own (equality on the state, so that (rollout_id, state, id) can give
    the page in id order from the cursor on: bench/api_latency.py): pages in id order,
    only that state, the cursor continuing where the last page ended."""
    async with pool.acquire() as conn:
        big, _ = await _populate(conn)
        first = await task_store.list_tasks(conn, big, states=["INSTALLING"], limit=50)
        second = await task_store.list_tasks(conn, big, states=["INSTALLING"], limit=50,
                                             after_id=first[-1].id)
        every = await conn.fetch(
            """SELECT id FROM tasks WHERE rollout_id = $1 AND state = 'INSTALLING'
               ORDER BY id LIMIT 100""", big)
    assert [p.id for p in first + second] == [r["id"] for r in every]
    assert {p.state for p in first + second} == {"INSTALLING"}


async def test_a_large_rollout_gives_the_planner_its_tasks_at_once(
        pool: asyncpg.Pool) -> None:
    """Creating a rollout of thousands of tasks refreshes the statistics of `tasks` at once,
    rather than when autovacuum gets to it (up to a minute): the first claims of a
    100,000-task rollout were planned without its tasks and took 65-120 ms. A small
    rollout leaves it to autovacuum."""
    from orchestrator.store import rollouts as rollout_store
    from orchestrator.store.audit import Actor

    actor = Actor(name="ops", via="cli")

    async def planner_rows() -> float:
        return float(await pool.fetchval(
            "SELECT reltuples FROM pg_class WHERE oid = 'tasks'::regclass"))

    n = rollout_store.ANALYZE_AFTER_TASKS
    await pool.execute(
        """INSERT INTO appliances (name, base_url, site)
           SELECT 'app-' || i, 'https://app-' || i || '.example/api', 'site-' || (i % 4)
           FROM generate_series(1, $1) AS i""", n + 10)
    await rollout_store.create_rollout(
        pool, name="small", target_version="9.0.1-20020",
        selector={"names": ["app-1", "app-2"]}, actor=actor)
    before = await planner_rows()
    assert before < n  # never analyzed (-1), or without the tasks of the large rollout
    await rollout_store.create_rollout(
        pool, name="large", target_version="9.0.1-20020",
        selector={"sites": ["site-0", "site-1", "site-2", "site-3"]},
        strategy={"waves": ["100%"]}, actor=actor)
    assert await planner_rows() >= n
    assert await pool.fetchval(
        "SELECT count(*) FROM pg_stats WHERE tablename = 'tasks' AND attname = 'state'") == 1
