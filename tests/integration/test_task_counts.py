"""How the engine keeps a rollout's work small and fair at scale.

A rollout's task counts (migration 0007: deltas appended by a trigger on every statement
that writes tasks, folded into totals by the tick) agree with counting the tasks
themselves: through a real rollout with failures and a retry, and under concurrent writers,
rolled-back transactions and folds in between."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import asyncpg

from orchestrator.store import rollouts as rollout_store
from orchestrator.store import sites as site_store
from tests.fleet import ACTOR, create, engine, fleet, wait_until_terminal

STATES = ("PENDING", "DISPATCHING", "INSTALLING", "VERIFYING", "SUCCEEDED", "FAILED",
          "TIMED_OUT", "SKIPPED", "CANCELLED")
TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELLED"}


async def _truth(pool: asyncpg.Pool, rid: int) -> dict[tuple[int, str, str], int]:
    """Counting the tasks, as the tick did before the counters."""
    return {(r["wave"], r["site"], r["state"]): r["n"] for r in await pool.fetch(
        """SELECT wave, site, state, count(*)::int AS n FROM tasks WHERE rollout_id = $1
           GROUP BY wave, site, state""", rid)}


async def _kept(pool: asyncpg.Pool, rid: int) -> dict[tuple[int, str, str], int]:
    return {(r["wave"], r["site"], r["state"]): r["n"]
            for r in await pool.fetch(rollout_store.ROLLOUT_COUNTS, rid)}


async def _folded(pool: asyncpg.Pool, rid: int) -> dict[tuple[int, str], int]:
    async with pool.acquire() as conn, conn.transaction():
        return {(r["wave"], r["state"]): r["n"]
                for r in await rollout_store.task_counts_by_wave(conn, rid)}


def _by_wave(counts: dict[tuple[int, str, str], int]) -> dict[tuple[int, str], int]:
    out: Counter[tuple[int, str]] = Counter()
    for (wave, _site, state), n in counts.items():
        out[(wave, state)] += n
    return dict(out)


async def test_counts_of_a_real_rollout_with_failures_and_a_retry(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=12, sites=3) as f:
        for name in ("sim-00004", "sim-00009"):
            f.sim.set_faults(name, ["install_error"])
        rid = await create(pool, {"waves": [2, "100%"], "max_concurrency": 4,
                                  "max_failures": "50%"})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
            assert rollout.state == "COMPLETED_WITH_FAILURES"
            truth = await _truth(pool, rid)
            assert sum(n for (_, _, s), n in truth.items() if s == "FAILED") == 2
            assert await _kept(pool, rid) == truth
            for name in ("sim-00004", "sim-00009"):
                f.sim.set_faults(name, [])
            await rollout_store.retry_failed(pool, rid, ACTOR)
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        truth = await _truth(pool, rid)
        assert {s for (_, _, s) in truth} == {"SUCCEEDED"}
        assert await _kept(pool, rid) == truth
        assert await _folded(pool, rid) == _by_wave(truth)
        # the tick folded every delta it had: the next fold finds what is left (none, or
        # the last transitions after the final tick) and changes no count
        assert await _kept(pool, rid) == truth


async def _writer(pool: asyncpg.Pool, rid: int, seed: int, rounds: int) -> int:
    """Random state changes of random tasks, some in transactions that roll back; returns
    how many transactions rolled back."""
    rng = random.Random(seed)
    rolled_back = 0
    for _ in range(rounds):
        async with pool.acquire() as conn:
            tr = conn.transaction()
            await tr.start()
            try:
                # lock the tasks first, in id order (random orders would deadlock the
                # writers on the tasks' own rows), then change them in 1 to 3 statements
                ids = [r["id"] for r in await conn.fetch(
                    """SELECT id FROM tasks WHERE id IN (
                           SELECT id FROM tasks WHERE rollout_id = $1
                           ORDER BY random() LIMIT $2)
                       ORDER BY id FOR UPDATE""", rid, rng.randint(1, 8))]
                for _ in range(rng.randint(1, 3)):
                    state = rng.choice(STATES)
                    await conn.execute(
                        """UPDATE tasks SET state = $2,
                               finished_at = CASE WHEN $3 THEN clock_timestamp() END
                           WHERE id = ANY($1::bigint[])""",
                        rng.sample(ids, rng.randint(1, len(ids))), state, state in TERMINAL)
            except BaseException:
                await tr.rollback()
                raise
            if rng.random() < 0.3:
                await tr.rollback()
                rolled_back += 1
            else:
                await tr.commit()
    return rolled_back


async def _folder(pool: asyncpg.Pool, rid: int, stop: asyncio.Event) -> int:
    folds = 0
    while not stop.is_set():
        await _folded(pool, rid)
        folds += 1
        await asyncio.sleep(0.005)
    return folds


async def test_counts_stay_exact_under_concurrent_writers_and_folds(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Eight writers change states at random (30% of their transactions roll back) while
    folds run between them: at the end, and at every fold's snapshot taken with no writer
    left, the counts are the tasks' own."""
    async with fleet(pool, db_url, appliances=40, sites=4):
        rid = await create(pool, {"waves": ["25%", "100%"]})
        stop = asyncio.Event()
        folder = asyncio.create_task(_folder(pool, rid, stop))
        try:
            results: list[Any] = await asyncio.gather(
                *(_writer(pool, rid, seed, 25) for seed in range(8)))
        finally:
            stop.set()
            folds = await folder
        assert sum(results) > 0 and folds > 0  # rollbacks and folds did happen
        truth = await _truth(pool, rid)
        assert sum(truth.values()) == 40
        assert await _kept(pool, rid) == truth
        assert await _folded(pool, rid) == _by_wave(truth)
        assert await pool.fetchval(
            "SELECT count(*) FROM task_count_deltas WHERE rollout_id = $1", rid) == 0
        # a last finished_at per wave, as the gate's soak reads it
        last = await pool.fetchval(
            "SELECT max(finished_at) FROM tasks WHERE rollout_id = $1 AND wave = 0", rid)
        async with pool.acquire() as conn, conn.transaction():
            rows = await rollout_store.task_counts_by_wave(conn, rid)
        kept_last = max((r["last"] for r in rows if r["wave"] == 0 and r["last"]),
                        default=None)
        assert last is None or (kept_last is not None and kept_last >= last)


async def test_rollouts_sharing_a_capped_site_take_turns(pool: asyncpg.Pool, db_url: str) -> None:
    """Two rollouts over one site with a fleet-wide capacity of 1: each slot that frees goes
    to the rollout served longest ago, so they alternate (A B A B) instead of the older
    rollout taking every slot first (A A B B) and the other finishing on a tail."""
    async with fleet(pool, db_url, appliances=4, sites=1) as f:
        await site_store.set_site_limit(pool, "site-01", 1, ACTOR)
        # no pre-flight: each rollout's would run on its own, and the one that ended first
        # would claim first, whichever rollout is older
        first = await create(pool, {"order": "name", "preflight": "off"},
                             selector={"names": ["sim-00001", "sim-00002"]})
        second = await create(pool, {"order": "name", "preflight": "off"},
                              selector={"names": ["sim-00003", "sim-00004"]})
        # ticks only when a task's end has committed (its runner's end, its NOTIFY), never
        # on the poll timer: a tick that ran while an install's end was committing could
        # see the site full when serving the first rollout and free when serving the next
        # (a race between two statements, not the order this test is about)
        async with engine(f, poll_interval=30.0):
            await wait_until_terminal(pool, first)
            await wait_until_terminal(pool, second)
        order = [r["rollout_id"] for r in await pool.fetch(
            """SELECT rollout_id FROM tasks WHERE rollout_id = ANY($1::bigint[])
               ORDER BY dispatched_at""", [first, second])]
        assert order == [first, second, first, second]
        stats = f.sim.stats()
        assert stats["max_in_flight_by_site"]["site-01"] == 1
        assert stats["duplicate_installs"] == 0 and stats["installs_accepted"] == 4
