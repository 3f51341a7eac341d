"""Tick benchmark: what one scheduler tick and one claim cost on a rollout of 10,000 tasks
and on one of 100,000, in the same database, the same process, one after the other.

For each size a fleet and a rollout are built with set-based SQL in a fresh database
(migrated as `orchestrator migrate` does), in the middle of their last wave: the canary
and wave 1 done, 30% of the tasks SUCCEEDED, `--in-flight` tasks INSTALLING under another
engine's lease, the rest PENDING, spread over 20 sites. Then:

- `tick`: the engine's real `Engine.tick()` with the rollout saturated (its in-flight tasks
  at max_concurrency: what nearly every tick of a large rollout sees between two task
  endings), `--ticks` times; the engine's CPU (this process: `time.process_time`) and wall
  time per tick. `tick_windows` does the same with a maintenance window open over half the
  sites, so the window decision runs on every tick.
- `claim`: `store.tasks.claim_tasks` with room for `--room` more tasks (the tasks that
  ended since the last tick), in a transaction rolled back afterwards, `--claims` times;
  wall time per statement as the engine sees it (mean, p50, max).

    .venv/bin/python bench/tick.py                       # 10,000 and 100,000 tasks
    .venv/bin/python bench/tick.py --sizes 2000,20000    # quick

Prints one JSON object; the ratios `*_100k_vs_10k` (largest size over smallest) are the
figures of docs/benchmarks.md. Goals: tick CPU ratio <= 1.5; claim mean ratio <= 1.5, max
<= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchdb import temporary_database
from common import git_state, machine

from orchestrator.appliance.http import ApplianceHttp
from orchestrator.engine.engine import Engine, EngineConfig
from orchestrator.store import migrations
from orchestrator.store import tasks as task_store
from orchestrator.store.db import create_pool

SITES = 20
OTHER = "engine-elsewhere"  # the owner of the in-flight tasks: never this bench's engine


async def populate(conn: asyncpg.Connection, size: int, in_flight: int) -> int:
    """A fleet of `size` appliances and a rollout of all of them, mid-way through its last
    wave; returns the rollout id."""
    canary, wave1 = max(1, size // 100), max(1, size // 10)
    done = int(size * 0.3)
    await conn.execute(
        """INSERT INTO appliances (name, base_url, site, tags)
           SELECT 'app-' || i, 'https://app-' || i || '.invalid/api', 'site-' || (i % $2),
                  ARRAY['tier-' || (i % 3)]
           FROM generate_series(1, $1) AS i""", size, SITES)
    # no pre-flight: by default (`warn`) the first tick would start one over the whole
    # rollout, and the ticks measured would carry its work
    strategy = {"waves": ["1%", "10%", "100%"], "max_concurrency": in_flight,
                "preflight": "off"}
    rid = await conn.fetchval(
        """INSERT INTO rollouts (name, target_version, strategy, state, current_wave,
                                 created_by, started_at)
           VALUES ('bench', '9.0.1-20020', $1::jsonb, 'RUNNING', 2, 'bench', now())
           RETURNING id""", json.dumps(strategy))
    for number, planned, state in ((0, canary, "SUCCEEDED"), (1, wave1 - canary, "SUCCEEDED"),
                                   (2, size - wave1, "RUNNING")):
        await conn.execute(
            """INSERT INTO rollout_waves (rollout_id, number, planned_size, state, started_at,
                                          finished_at)
               VALUES ($1, $2, $3, $4, now(), CASE WHEN $4 = 'SUCCEEDED' THEN now() END)""",
            rid, number, planned, state)
    await conn.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state, attempt,
                              lease_owner, lease_token, lease_expires_at, dispatched_at,
                              finished_at, final_version)
           SELECT $1, a.id,
                  CASE WHEN a.pos < $2 THEN 0 WHEN a.pos < $3 THEN 1 ELSE 2 END,
                  a.pos, a.site, s.state, CASE WHEN s.state = 'PENDING' THEN 0 ELSE 1 END,
                  CASE WHEN s.state = 'INSTALLING' THEN $6 END,
                  CASE WHEN s.state = 'INSTALLING' THEN gen_random_uuid() END,
                  CASE WHEN s.state = 'INSTALLING' THEN now() + interval '1 hour' END,
                  CASE WHEN s.state <> 'PENDING' THEN now() - interval '2 minutes' END,
                  CASE WHEN s.state = 'SUCCEEDED' THEN now() - interval '1 minute' END,
                  CASE WHEN s.state = 'SUCCEEDED' THEN '9.0.1-20020' END
           FROM (SELECT id, site, (row_number() OVER (ORDER BY id) - 1)::int AS pos
                 FROM appliances) AS a,
                LATERAL (SELECT CASE WHEN a.pos < $4 THEN 'SUCCEEDED'
                                     WHEN a.pos < $4 + $5 THEN 'INSTALLING'
                                     ELSE 'PENDING' END AS state) AS s""",
        rid, canary, wave1, done, in_flight, OTHER)
    await conn.execute("VACUUM ANALYZE appliances, rollouts, rollout_waves, tasks")
    return int(rid)


def _ms(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values) * 1000, 3),
            "p50": round(statistics.median(values) * 1000, 3),
            "max": round(max(values) * 1000, 3)}


async def measure_ticks(pool: asyncpg.Pool, ticks: int) -> dict[str, Any]:
    """`ticks` calls of Engine.tick() on the saturated rollout: CPU and wall per tick."""
    async with ApplianceHttp(trust_env=False) as http:
        engine = Engine(pool, http, EngineConfig(poll_interval=5.0, max_tasks=10_000))
        for _ in range(5):  # warm: statement caches, the active list, the wave row
            await engine.tick()
        walls: list[float] = []
        cpu0 = time.process_time()
        for _ in range(ticks):
            t0 = time.perf_counter()
            await engine.tick()
            walls.append(time.perf_counter() - t0)
        cpu = time.process_time() - cpu0
        assert engine.claimed == 0 and not engine.runners, "the rollout was not saturated"
    return {"cpu_ms_per_tick": round(cpu / ticks * 1000, 3), "wall_ms": _ms(walls)}


async def measure_claims(pool: asyncpg.Pool, rid: int, in_flight: int, room: int,
                         claims: int) -> dict[str, Any]:
    """`claims` claims with room for `room` more tasks, each rolled back."""
    walls: list[float] = []
    async with pool.acquire() as conn:
        for i in range(claims + 3):
            tr = conn.transaction()
            await tr.start()
            try:
                t0 = time.perf_counter()
                got = await task_store.claim_tasks(
                    conn, rollout_id=rid, current_wave=2, owner="bench", lease_seconds=60,
                    max_in_flight=in_flight + room, per_site=None, starts_per_minute=None,
                    limit=room)
                elapsed = time.perf_counter() - t0
            finally:
                await tr.rollback()
            assert len(got) == room, f"claimed {len(got)} of {room}"
            if i >= 3:  # the first ones prepare the statement
                walls.append(elapsed)
    return _ms(walls)


async def one_size(url: str, size: int, args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        await migrations.migrate(conn)
        t0 = time.perf_counter()
        rid = await populate(conn, size, args.in_flight)
        build_s = time.perf_counter() - t0
    finally:
        await conn.close()
    async with create_pool(url) as pool:
        out: dict[str, Any] = {"tasks": size, "build_s": round(build_s, 1)}
        out["tick"] = await measure_ticks(pool, args.ticks)
        out["claim"] = await measure_claims(pool, rid, args.in_flight, args.room,
                                            args.claims)
        half = [f"site-{i}" for i in range(SITES // 2)]
        await pool.execute(
            """INSERT INTO maintenance_windows (name, cron, duration_s, timezone,
                                                cutoff_s, sites, tags)
               VALUES ('always', '* * * * *', 86400, 'UTC', 0, $1, '{}')""", half)
        out["tick_windows"] = await measure_ticks(pool, args.ticks)
        return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    started = datetime.now(UTC)
    results = []
    for size in sizes:  # each in a database of its own
        with temporary_database("bench_tick") as url:
            results.append(asyncio.run(one_size(url, size, args)))
    small, large = results[0], results[-1]

    def ratio(path: tuple[str, ...]) -> float:
        a: Any = large
        b: Any = small
        for key in path:
            a, b = a[key], b[key]
        return round(a / b, 2) if b else float("nan")

    key = f"{large['tasks'] // 1000}k_vs_{small['tasks'] // 1000}k"
    return {
        "bench": "tick", "started": started.isoformat(), "machine": machine(),
        "tree": git_state(),
        "params": {"sizes": sizes, "in_flight": args.in_flight, "room": args.room,
                   "ticks": args.ticks, "claims": args.claims, "sites": SITES},
        "results": results,
        f"tick_cpu_ratio_{key}": ratio(("tick", "cpu_ms_per_tick")),
        f"tick_windows_cpu_ratio_{key}": ratio(("tick_windows", "cpu_ms_per_tick")),
        f"tick_wall_mean_ratio_{key}": ratio(("tick", "wall_ms", "mean")),
        f"claim_mean_ratio_{key}": ratio(("claim", "mean")),
        "claim_max_ms_largest": large["claim"]["max"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000",
                        help="rollout sizes, smallest first (default: 10000,100000)")
    parser.add_argument("--in-flight", type=int, default=1000)
    parser.add_argument("--room", type=int, default=50)
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--claims", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
