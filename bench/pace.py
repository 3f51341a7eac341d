"""Fixed plan versus adaptive pace: the same healthy simulated fleet rolled out twice.

The simulator (its own process, no faults) serves the fleet; a fresh database holds the
inventory. The first rollout runs with a fixed `max_concurrency`; then the simulator puts
every appliance back on the initial version and a second rollout, identical except for
`pace: adaptive` (starting at the same `max_concurrency`, growing up to
`--pace-max-concurrency`), runs on the same fleet. Each rollout is run by its own engine
process (`orchestrator run --until-idle`).

It prints one JSON object: per run the makespan (first dispatch to last finish, from the
tasks' times; what the pace changes), the wall time (the rollout's start to its end), the
simulator's highest number of installs in flight, and the pace's changes; then the ratio
fixed / adaptive. Everything listens on 127.0.0.1 only. Bounded: each engine is stopped
after `--timeout` seconds. The defaults take under 2 minutes on a 2-core machine:

    .venv/bin/python bench/pace.py
    .venv/bin/python bench/pace.py --appliances 500 --concurrency 20 --pace-max-concurrency 200
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
    ChildResult,
    Processes,
    cli,
    create_rollout,
    fetch,
    git_state,
    machine,
    orchestrator_env,
    rollout_outcome,
    run_bench,
    start_simulator,
    wait_child,
)


def makespan(db_url: str, rollout_id: int) -> float | None:
    """Seconds from the rollout's first dispatch to its last finished task."""
    value = fetch(db_url, """SELECT extract(epoch FROM max(finished_at) - min(dispatched_at))
                             AS s FROM tasks WHERE rollout_id = $1""", rollout_id)[0]["s"]
    return round(float(value), 2) if value is not None else None


def pace_changes(db_url: str, rollout_id: int) -> list[dict[str, Any]]:
    """The pace's changes: seconds after the first dispatch, from, to, and why."""
    rows = fetch(db_url, """
        SELECT extract(epoch FROM e.at - (SELECT min(dispatched_at) FROM tasks
                                          WHERE rollout_id = $1)) AS s,
               e.detail->'pace' AS pace
        FROM task_events e WHERE e.rollout_id = $1 AND e.detail ? 'pace' ORDER BY e.id""",
                 rollout_id)
    out = []
    for r in rows:
        pace = json.loads(r["pace"]) if isinstance(r["pace"], str) else r["pace"]
        out.append({"at_s": round(float(r["s"]), 2), "from": pace["from"], "to": pace["to"],
                    "reason": pace["reason"]})
    return out


def one_run(opts: argparse.Namespace, procs: Processes, env: dict[str, str], db_url: str,
            tmp: Path, sim: Any, strategy: dict[str, Any], name: str) -> dict[str, Any]:
    rollout_id = create_rollout(env, tmp, strategy, name=name, start=True)
    started = time.monotonic()
    engine = procs.popen([str(BIN / "orchestrator"), "run", "--until-idle"], env=env,
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: ChildResult = wait_child(engine, started + opts.timeout, started)
    stats = sim.stats()
    outcome = rollout_outcome(db_url, rollout_id)
    run: dict[str, Any] = {
        "rollout": rollout_id, "state": outcome["state"], "tasks": outcome["tasks"],
        "makespan_s": makespan(db_url, rollout_id),
        "wall_s": round(outcome["wall_s"], 2) if outcome["wall_s"] is not None else None,
        "max_in_flight": stats["max_in_flight"],
        "duplicate_installs": stats["duplicate_installs"],
        "engine_cpu_s": round(result.cpu_s, 2), "engine_timed_out": result.timed_out,
    }
    if strategy.get("pace") == "adaptive":
        changes = pace_changes(db_url, rollout_id)
        run["pace_changes"] = changes
        run["pace_highest"] = max([opts.concurrency, *(c["to"] for c in changes)])
    return run


def run(opts: argparse.Namespace, procs: Processes, db: Any, tmp: Path,
        bench_started: float, load_start: list[float]) -> int:
    sim = start_simulator(
        procs, tmp, appliances=opts.appliances, sites=opts.sites,
        install_seconds=opts.install_seconds, reboot_seconds=opts.reboot_seconds,
        services_starting_seconds=opts.services_starting_seconds,
        install_jitter=opts.install_jitter,
    )
    env = orchestrator_env(db.url, appliance_max_connections_per_host=0)
    cli(env, "migrate")
    cli(env, "appliances", "import", str(sim.inventory))
    waves: list[Any] = [w if w.endswith("%") else int(w) for w in opts.waves.split(",")]
    fixed = {"waves": waves, "max_concurrency": opts.concurrency, "preflight": "off",
             "reboot_grace": 600, "task_timeout": 3600}
    adaptive = {**fixed, "pace": "adaptive",
                "pace_max_concurrency": opts.pace_max_concurrency,
                "pace_interval_seconds": opts.pace_interval}
    runs = {"fixed": one_run(opts, procs, env, db.url, tmp, sim, fixed, "bench-fixed")}
    sim.reset(versions=True)
    runs["adaptive"] = one_run(opts, procs, env, db.url, tmp, sim, adaptive, "bench-pace")
    a, b = runs["fixed"]["makespan_s"], runs["adaptive"]["makespan_s"]
    report: dict[str, Any] = {
        "appliances": opts.appliances, "sites": opts.sites,
        "install_seconds": opts.install_seconds, "reboot_seconds": opts.reboot_seconds,
        "services_starting_seconds": opts.services_starting_seconds,
        "install_jitter": opts.install_jitter, "waves": waves,
        "strategy_fixed": fixed, "strategy_adaptive": adaptive,
        "fixed": runs["fixed"], "adaptive": runs["adaptive"],
        "makespan_ratio_fixed_over_adaptive": round(a / b, 2) if a and b else None,
        "tree": git_state(), "machine": machine(),
        "bench_wall_s": round(time.monotonic() - bench_started, 1),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }
    print(json.dumps(report))
    ok = all(r["state"] == "SUCCEEDED" and not r["engine_timed_out"] for r in runs.values())
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=200)
    parser.add_argument("--sites", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=10,
                        help="max_concurrency of both runs (where the pace starts)")
    parser.add_argument("--pace-max-concurrency", type=int, default=60)
    parser.add_argument("--pace-interval", type=float, default=1.0,
                        help="pace_interval_seconds")
    parser.add_argument("--install-seconds", type=float, default=0.5)
    parser.add_argument("--reboot-seconds", type=float, default=0.3)
    parser.add_argument("--services-starting-seconds", type=float, default=0.2)
    parser.add_argument("--install-jitter", type=float, default=0.2)
    parser.add_argument("--waves", default="1,10%,100%")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds each engine may run before it is stopped")
    return run_bench("pace", run, parser.parse_args())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
