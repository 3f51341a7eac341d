"""Database bytes per appliance: what one rollout leaves in PostgreSQL, and after a prune.

A fresh database (as bench/rollout.py: ORCHESTRATOR_DATABASE_URL or TEST_DATABASE_URL when
set, else an embedded server), the simulator as its own process, `orchestrator appliances
import`, `orchestrator rollout create --start` (one wave, max_concurrency --concurrency) and
`orchestrator run --until-idle`: the rollout runs for real, so its tasks and events are the
rows an engine writes (every transition, the lease take-overs, the dead row versions of
the updates until autovacuum). Then, per table (heap, indexes and TOAST together,
`pg_total_relation_size`):

- `after_run`: the sizes as the run left them (dead row versions included);
- `after_run_compact`: after VACUUM FULL of those tables: the live rows alone;
- `prune`: `orchestrator prune --older-than 1m --json` after the rollout's `finished_at`
  was set 2 minutes back (its wall time and output);
- `after_prune`: the sizes right after it (the space of deleted rows is free for reuse by
  the table but not given back to the file system: a plain VACUUM, which autovacuum runs,
  marks it reusable);
- `after_prune_compact`: after VACUUM FULL: what the pruned rollout still costs (its
  `rollouts`, `rollout_waves` and `task_counts` rows).

    .venv/bin/python bench/db_bytes.py                      # 10,000 appliances
    .venv/bin/python bench/db_bytes.py --appliances 2000    # quick

Prints one JSON object; docs/benchmarks.md explains each field.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BIN,
    ROOT,
    Processes,
    cli,
    create_rollout,
    database,
    fetch,
    git_state,
    machine,
    orchestrator_env,
    remove,
    rollout_outcome,
    start_simulator,
    temp_dir,
    wait_child,
)

# the tables a rollout writes rows into (0007: task_counts and its deltas)
ROLLOUT_TABLES = ("tasks", "task_events", "task_counts", "task_count_deltas",
                  "rollouts", "rollout_waves", "audit_log")
OTHER_TABLES = ("appliances",)


def sizes(url: str) -> dict[str, dict[str, int]]:
    """Per table: total bytes (heap + indexes + TOAST), of which indexes, and live rows."""
    out: dict[str, dict[str, int]] = {}
    for table in ROLLOUT_TABLES + OTHER_TABLES:
        row = fetch(url, f"""
            SELECT pg_total_relation_size('{table}') AS total,
                   pg_indexes_size('{table}') AS indexes,
                   (SELECT count(*) FROM {table}) AS rows""")[0]
        out[table] = {"bytes": int(row["total"]), "index_bytes": int(row["indexes"]),
                      "rows": int(row["rows"])}
    return out


def per_appliance(s: dict[str, dict[str, int]], empty: dict[str, dict[str, int]],
                  tables: tuple[str, ...], n: int) -> float:
    """Bytes per appliance of `tables` beyond what they take empty (`empty`)."""
    return round(sum(s[t]["bytes"] - empty[t]["bytes"] for t in tables) / n, 1)


def vacuum_full(url: str, tries: int = 20) -> None:
    """VACUUM FULL each table. A table left with no live rows but with pages is vacuumed
    again a second later: on a shared server, another session's old snapshot (another
    database's CREATE DATABASE, say) can keep the deleted rows for a moment."""
    for table in ROLLOUT_TABLES + OTHER_TABLES:
        for _ in range(tries):
            fetch(url, f"VACUUM (FULL, ANALYZE) {table}")
            row = fetch(url, f"SELECT (SELECT count(*) FROM {table}) AS rows, "
                             f"pg_relation_size('{table}') AS heap")[0]
            if row["rows"] or not row["heap"]:
                break
            time.sleep(1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--appliances", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=1000)
    p.add_argument("--sites", type=int, default=10)
    p.add_argument("--install-seconds", type=float, default=1.0)
    p.add_argument("--reboot-seconds", type=float, default=0.5)
    opts = p.parse_args()
    tmp = temp_dir("orch-bench-bytes-")
    try:
        with Processes() as procs, database("bench_bytes", tmp) as db:
            return run(opts, procs, db, tmp)
    except KeyboardInterrupt:
        print(json.dumps({"error": "interrupted"}))
        return 130
    finally:
        remove(tmp)


def run(opts: argparse.Namespace, procs: Processes, db: Any, tmp: Path) -> int:
    started = time.monotonic()
    n = opts.appliances
    sim = start_simulator(procs, tmp, appliances=n, sites=opts.sites,
                          install_seconds=opts.install_seconds,
                          reboot_seconds=opts.reboot_seconds, services_starting_seconds=0.2)
    env = orchestrator_env(db.url, engine_max_tasks=max(2000, opts.concurrency),
                           appliance_max_connections=max(1000, opts.concurrency),
                           appliance_max_connections_per_host=0)
    cli(env, "migrate")
    cli(env, "appliances", "import", str(sim.inventory))
    vacuum_full(db.url)
    before = sizes(db.url)
    strategy = {"waves": ["100%"], "max_concurrency": opts.concurrency, "preflight": "off",
                "reboot_grace": 600.0, "task_timeout": 3600.0}
    rollout_id = create_rollout(env, tmp, strategy, start=True)
    engine = procs.popen([str(BIN / "orchestrator"), "run", "--until-idle"], env=env,
                         cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=(tmp / "engine.log").open("w"))
    t0 = time.monotonic()
    result = wait_child(engine, t0 + max(600.0, n / 10), t0)
    outcome = rollout_outcome(db.url, rollout_id)
    after_run = sizes(db.url)
    vacuum_full(db.url)
    compact = sizes(db.url)

    fetch(db.url, "UPDATE rollouts SET finished_at = now() - interval '2 minutes' "
                  "WHERE id = $1", rollout_id)
    t1 = time.monotonic()
    pruned = json.loads(cli(env, "prune", "--older-than", "1m", "--json"))
    prune_s = time.monotonic() - t1
    after_prune = sizes(db.url)
    vacuum_full(db.url)
    after_prune_compact = sizes(db.url)

    task_tables = ("tasks", "task_events", "task_counts", "task_count_deltas")
    report: dict[str, Any] = {
        "bench": "db_bytes",
        "appliances": n,
        "rollout_state": outcome["state"],
        "tasks": outcome["tasks"],
        "task_events": after_run["task_events"]["rows"],
        "task_events_per_appliance": round(after_run["task_events"]["rows"] / n, 2),
        "engine_wall_s": round(result.wall_s, 1),
        "engine_exit_code": result.returncode,
        # the figures: bytes per appliance of the rollout's rows (tasks, task_events and
        # the counts of 0007, indexes included), beyond the tables' size when empty
        "bytes_per_appliance": {
            "after_run": per_appliance(after_run, before, task_tables, n),
            "after_run_compact": per_appliance(compact, before, task_tables, n),
            "after_prune": per_appliance(after_prune, before, task_tables, n),
            "after_prune_compact": per_appliance(after_prune_compact, before, task_tables, n),
            "tasks_compact": per_appliance(compact, before, ("tasks",), n),
            "task_events_compact": per_appliance(compact, before, ("task_events",), n),
            "appliances_row_compact": round(compact["appliances"]["bytes"] / n, 1),
        },
        # what the pruned rollout keeps: its summary rows
        "rows_kept": {t: after_prune_compact[t]["rows"]
                      for t in ("rollouts", "rollout_waves", "task_counts",
                                "task_count_deltas")},
        "prune": {"wall_s": round(prune_s, 2), "rollouts": pruned["rollouts"],
                  "tasks": pruned["tasks"], "events": pruned["events"]},
        "tables": {"before_rollout": before, "after_run": after_run,
                   "after_run_compact": compact, "after_prune": after_prune,
                   "after_prune_compact": after_prune_compact},
        "database": db.kind,
        "tree": git_state(),
        "machine": machine(),
        "bench_wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(report))
    ok = outcome["state"] == "SUCCEEDED" and pruned["tasks"] == n
    return 0 if ok and result.returncode == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
