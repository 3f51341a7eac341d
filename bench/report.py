"""Report benchmark: how long the JSON, CSV and HTML reports of a 10,000-appliance rollout
take to render (goal: each under 3 s).

The rollout is built directly in the database with set-based SQL, no engine: appliances
over `--sites` sites, a finished rollout in four waves (10, 10%, 40%, the rest), one task
per appliance with a realistic mix of outcomes (installs failing in two ways, bad
credentials, reboots timing out, appliances already on the target, a cancelled tail) and
its `task_events` history with timestamps (dispatch, install of 1-4 min, reboot of
0.5-2 min; some lease take-overs and install retries). Each report is then rendered
`--repeat` times from the database; the CSV is streamed and counted, never held.

Prints one JSON object: the seconds of each format (the median and the first run), their
sizes, the data set and the machine.

    .venv/bin/python bench/report.py [--appliances 10000] [--out DIR]

Uses the embedded PostgreSQL in a temporary directory unless ORCHESTRATOR_DATABASE_URL or
TEST_DATABASE_URL is set (then it creates and drops its own database there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from benchdb import temporary_database

from orchestrator.logs import configure_logging
from orchestrator.reports import render, write_reports
from orchestrator.store import migrations
from orchestrator.store.db import connect, create_pool

GOAL_SECONDS = 3.0

# The plan of every task: its wave, its outcome ("kind") and the times of its transitions.
PLAN = """
CREATE TEMP TABLE plan ON COMMIT DROP AS
WITH a AS (
    SELECT id AS appliance_id, site, row_number() OVER (ORDER BY id) - 1 AS position,
           random() AS u, random() AS install_r, random() AS reboot_r
    FROM appliances WHERE name LIKE 'bench-%'
),
w AS (
    SELECT a.*,
           CASE WHEN position < $2::int THEN 0 WHEN position < $3::int THEN 1
                WHEN position < $4::int THEN 2 ELSE 3 END AS wave
    FROM a
),
k AS (
    SELECT w.*,
           CASE WHEN position >= $1::int - $5::int THEN 'cancelled'
                WHEN u < 0.020 THEN 'install_error'
                WHEN u < 0.030 THEN 'mismatch'
                WHEN u < 0.034 THEN 'unauthorized'
                WHEN u < 0.042 THEN 'timeout'
                WHEN u < 0.070 THEN 'skipped'
                WHEN u < 0.075 THEN 'retried'
                ELSE 'ok' END AS kind,
           -- a sliding window of $6 installs, and a 5-minute gate between waves
           $7::timestamptz + make_interval(secs => position * 180.0 / $6::int + wave * 300)
               AS t_d,
           60 + install_r * 180 AS install_s,
           30 + reboot_r * 90 AS reboot_s
    FROM w
)
SELECT k.*,
       t_d + interval '0.4 s' AS t_i,
       t_d + interval '0.4 s' + make_interval(secs => install_s) AS t_v,
       t_d + interval '0.4 s' + make_interval(secs => install_s + reboot_s) AS t_e
FROM k
"""

TASKS = """
INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state, attempt,
                   remote_task_id, progress, from_version, final_version, error_code,
                   error_message, created_at, dispatched_at, accepted_at, finished_at)
SELECT $1, appliance_id, wave, position, site,
       CASE kind WHEN 'ok' THEN 'SUCCEEDED' WHEN 'retried' THEN 'SUCCEEDED'
                 WHEN 'skipped' THEN 'SKIPPED' WHEN 'timeout' THEN 'TIMED_OUT'
                 WHEN 'cancelled' THEN 'CANCELLED' ELSE 'FAILED' END,
       CASE kind WHEN 'cancelled' THEN 0 WHEN 'retried' THEN 2 ELSE 1 END,
       CASE WHEN kind IN ('ok', 'retried', 'install_error', 'mismatch', 'timeout')
            THEN 'task-' || appliance_id END,
       CASE WHEN kind IN ('ok', 'retried', 'mismatch') THEN 100 END,
       CASE WHEN kind = 'skipped' THEN $3 WHEN kind IN ('unauthorized', 'cancelled') THEN NULL
            ELSE $4 END,
       CASE WHEN kind IN ('ok', 'retried', 'skipped') THEN $3 WHEN kind = 'mismatch' THEN $4
            END,
       CASE kind WHEN 'install_error' THEN 'INSTALL_ERROR' WHEN 'mismatch'
                 THEN 'VERSION_MISMATCH' WHEN 'unauthorized' THEN 'UNAUTHORIZED'
                 WHEN 'timeout' THEN 'UNREACHABLE' WHEN 'cancelled' THEN 'CANCELLED' END,
       CASE kind
           WHEN 'install_error' THEN
               'Installation of update ' || $3 || ' failed: post-install script exited '
               || 'with status ' || (1 + appliance_id % 3) || '.'
           WHEN 'mismatch' THEN 'the appliance came back on ' || $4 || ', not ' || $3
           WHEN 'unauthorized' THEN 'cannot read the appliance''s version: the appliance '
               || 'rejected the credentials (env:FLEET_CREDENTIALS)'
           WHEN 'timeout' THEN 'appliance unreachable for more than reboot_grace 900 s '
               || 'during the install (unreachable)'
           WHEN 'cancelled' THEN 'cancelled by bench' END,
       $2::timestamptz,
       CASE WHEN kind = 'cancelled' THEN NULL
            WHEN kind = 'retried' THEN t_d + interval '20 s' ELSE t_d END,
       CASE WHEN kind IN ('ok', 'retried', 'install_error', 'mismatch', 'timeout')
            THEN t_i + CASE WHEN kind = 'retried' THEN interval '20 s' ELSE interval '0 s'
                       END END,
       CASE kind WHEN 'cancelled' THEN $5::timestamptz
                 WHEN 'unauthorized' THEN t_d + interval '0.3 s'
                 WHEN 'skipped' THEN t_d + interval '0.3 s'
                 WHEN 'install_error' THEN t_v
                 WHEN 'timeout' THEN t_i + interval '900 s'
                 WHEN 'retried' THEN t_e + interval '20 s'
                 ELSE t_e END
FROM plan ORDER BY position
"""

# Each task's history, in order (ids ascending within a task). A 'retried' task's first
# install was refused by a transient error (back to PENDING, dispatched again 20 s later);
# every 97th installing task shows a lease take-over (from_state = to_state).
EVENTS = """
INSERT INTO task_events (task_id, rollout_id, from_state, to_state, at, detail)
SELECT t.id, t.rollout_id, s.from_state, s.to_state, s.at, s.detail
FROM tasks t JOIN plan p ON p.appliance_id = t.appliance_id
CROSS JOIN LATERAL (VALUES
    (0, NULL, 'PENDING', t.created_at, '{}'::jsonb, true),
    (1, 'PENDING', 'DISPATCHING', p.t_d, '{"attempt": 1}', p.kind <> 'cancelled'),
    (2, 'DISPATCHING', 'PENDING', p.t_d + interval '2 s', '{"reason": "transient"}',
        p.kind = 'retried'),
    (3, 'PENDING', 'DISPATCHING', p.t_d + interval '20 s', '{"attempt": 2}',
        p.kind = 'retried'),
    (4, 'DISPATCHING', 'SKIPPED', p.t_d + interval '0.3 s', '{}', p.kind = 'skipped'),
    (5, 'DISPATCHING', 'FAILED', p.t_d + interval '0.3 s', '{"error_code": "UNAUTHORIZED"}',
        p.kind = 'unauthorized'),
    (6, 'DISPATCHING', 'INSTALLING', t.accepted_at, '{}', t.accepted_at IS NOT NULL),
    (7, 'INSTALLING', 'INSTALLING', t.accepted_at + interval '30 s',
        '{"reason": "lease expired: reclaimed for reconciliation"}',
        t.accepted_at IS NOT NULL AND p.appliance_id % 97 = 0),
    (8, 'INSTALLING', 'FAILED', t.finished_at, '{"error_code": "INSTALL_ERROR"}',
        p.kind = 'install_error'),
    (9, 'INSTALLING', 'TIMED_OUT', t.finished_at, '{"error_code": "UNREACHABLE"}',
        p.kind = 'timeout'),
    (10, 'INSTALLING', 'VERIFYING',
        t.accepted_at + make_interval(secs => p.install_s), '{}',
        p.kind IN ('ok', 'retried', 'mismatch')),
    (11, 'VERIFYING', 'SUCCEEDED', t.finished_at, '{}', p.kind IN ('ok', 'retried')),
    (12, 'VERIFYING', 'FAILED', t.finished_at, '{"error_code": "VERSION_MISMATCH"}',
        p.kind = 'mismatch'),
    (13, 'PENDING', 'CANCELLED', t.finished_at, '{}', p.kind = 'cancelled')
) AS s(n, from_state, to_state, at, detail, keep)
WHERE t.rollout_id = $1 AND s.keep
ORDER BY t.id, s.n
"""


async def build_rollout(conn: asyncpg.Connection, appliances: int, sites: int,
                        concurrency: int) -> int:
    """A finished 4-wave rollout of `appliances` appliances with its history; its id."""
    target, old = "9.0.1-20020", "9.0.0-10010"
    async with conn.transaction():
        await conn.execute("SELECT setseed(0.42)")
        await conn.execute(
            """INSERT INTO appliances (name, base_url, site, tags, current_version)
               SELECT format('bench-%s', lpad(i::text, 5, '0')),
                      format('https://10.%s.%s.%s', i / 65536, i / 256 % 256, i % 256),
                      format('site-%s', lpad((i % $2)::text, 2, '0')),
                      ARRAY['bench', CASE WHEN i % 3 = 0 THEN 'tier-1' ELSE 'tier-2' END],
                      $3
               FROM generate_series(1, $1) AS i""",
            appliances, sites, old,
        )
        waves = [10, appliances // 10, appliances * 4 // 10]
        waves.append(appliances - sum(waves))
        bounds = [sum(waves[:i + 1]) for i in range(3)]
        created = await conn.fetchval("SELECT now() - interval '1 day'")
        started = await conn.fetchval("SELECT $1::timestamptz + interval '10 minutes'",
                                      created)
        rid = await conn.fetchval(
            """INSERT INTO rollouts (name, target_version, selector, strategy, state,
                                     current_wave, created_by, created_at, started_at)
               VALUES ('bench 10k', $1, '{"tags": ["bench"]}', $2, 'RUNNING', 3, 'bench',
                       $3, $4) RETURNING id""",
            target, {"waves": [10, "10%", "40%", "100%"], "max_concurrency": concurrency,
                     "per_site_concurrency": 20, "max_failures": "10%", "reboot_grace": 900},
            created, started,
        )
        await conn.execute(
            """INSERT INTO rollout_waves (rollout_id, number, planned_size, state)
               SELECT $1, n - 1, size, 'SUCCEEDED' FROM unnest($2::int[])
                   WITH ORDINALITY AS u(size, n)""",
            rid, waves,
        )
        cancelled = max(1, appliances * 3 // 100)
        await conn.execute(PLAN, appliances, *bounds, cancelled, concurrency, started)
        # the operator cancels a minute after the last dispatch: the tail never starts
        cancel_at = await conn.fetchval(
            "SELECT max(t_d) + interval '1 minute' FROM plan WHERE kind <> 'cancelled'")
        await conn.execute(TASKS, rid, created, target, old, cancel_at)
        await conn.execute(EVENTS, rid)
        await conn.execute(
            """UPDATE rollout_waves w SET started_at = s.started, finished_at = s.finished
               FROM (SELECT wave, min(dispatched_at) AS started, max(finished_at) AS finished
                     FROM tasks WHERE rollout_id = $1 GROUP BY wave) s
               WHERE w.rollout_id = $1 AND w.number = s.wave""",
            rid,
        )
        await conn.execute(
            """UPDATE rollout_waves SET state = 'CANCELLED' WHERE rollout_id = $1
               AND number = 3""",
            rid,
        )
        await conn.execute(
            """UPDATE rollouts SET state = 'CANCELLED', abort_reason = 'cancelled by bench',
                      finished_at = (SELECT max(finished_at) FROM tasks WHERE rollout_id = $1)
               WHERE id = $1""",
            rid,
        )
        await conn.execute(
            """INSERT INTO maintenance_windows (name, cron, duration_s, timezone, cutoff_s,
                                               sites, tags)
               VALUES ('nightly-eu', '0 1 * * *', 14400, 'Europe/Paris', 900,
                       ARRAY['site-00', 'site-01', 'site-02'], '{}'),
                      ('tier-1-sunday', '0 3 * * 0', 7200, 'UTC', 600, '{}',
                       ARRAY['tier-1'])""",
        )
    await conn.execute("ANALYZE appliances; ANALYZE tasks; ANALYZE task_events")
    return int(rid)


async def timed(fn: Callable[[], Awaitable[int]], repeat: int) -> tuple[list[float], int]:
    seconds, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        size = await fn()
        seconds.append(time.perf_counter() - started)
    return seconds, size


async def run(opts: argparse.Namespace, url: str) -> dict[str, object]:
    conn = await connect(url)
    try:
        await migrations.migrate(conn)
        started = time.perf_counter()
        rid = await build_rollout(conn, opts.appliances, opts.sites, opts.concurrency)
        build_s = time.perf_counter() - started
        events = await conn.fetchval(
            "SELECT count(*) FROM task_events WHERE rollout_id = $1", rid)
        states = {r["state"]: int(r["n"]) for r in await conn.fetch(
            "SELECT state, count(*) AS n FROM tasks WHERE rollout_id = $1 GROUP BY state",
            rid)}
    finally:
        await conn.close()
    results: dict[str, dict[str, float]] = {}
    sizes: dict[str, int] = {}
    chunks = {"csv": 0}
    async with create_pool(url, min_size=1, max_size=4) as pool:
        for fmt in ("json", "csv", "html"):
            async def once(fmt: str = fmt) -> int:
                _, body = await render(pool, rid, fmt)
                if isinstance(body, bytes):
                    return len(body)
                total, count = 0, 0
                async for chunk in body:
                    total += len(chunk)
                    count += 1
                chunks["csv"] = count
                return total

            seconds, sizes[fmt] = await timed(once, opts.repeat)
            results[fmt] = {"median_s": round(statistics.median(seconds), 3),
                            "first_s": round(seconds[0], 3), "max_s": round(max(seconds), 3)}
        if opts.out:
            paths = await write_reports(pool, rid, opts.out)
    slowest = max(r["max_s"] for r in results.values())
    out: dict[str, object] = {
        "appliances": opts.appliances,
        "sites": opts.sites,
        "task_events": int(events),
        "tasks_by_state": {k: int(v) for k, v in sorted(states.items())},
        "build_seconds": round(build_s, 2),
        "repeat": opts.repeat,
        "seconds": results,
        "bytes": sizes,
        "csv_chunks": chunks["csv"],
        "goal_seconds": GOAL_SECONDS,
        "within_goal": slowest < GOAL_SECONDS,
        "database": "external" if _external() else "embedded",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine()},
    }
    if opts.out:
        out["files"] = {fmt: str(p) for fmt, p in paths.items()}
    return out


def _external() -> str | None:
    return os.environ.get("ORCHESTRATOR_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=10000)
    parser.add_argument("--sites", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=200,
                        help="installs in flight in the simulated history")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the three reports here")
    opts = parser.parse_args()
    if opts.appliances < 100:
        parser.error("--appliances: at least 100")
    configure_logging("json", "warning")
    with temporary_database("report") as url:
        print(json.dumps(asyncio.run(run(opts, url))))
    return 0

if __name__ == "__main__":
    sys.exit(main())
