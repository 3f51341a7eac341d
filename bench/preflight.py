"""Pre-flight benchmark: `orchestrator rollout preflight ID --json` over a large simulated
fleet, run as a user runs it, against the ideal of ceil(N / concurrency) x one check.

PostgreSQL, the simulator and the orchestrator run as separate processes (bench/common.py):

- PostgreSQL: a fresh database on ORCHESTRATOR_DATABASE_URL (or TEST_DATABASE_URL) when set,
  dropped at the end; else an embedded server in a temporary data directory;
- the simulator: `python -m orchestrator.simulator` with the `slow` fault on every
  appliance (`--fault slow=1 --fault-param slow_seconds=S`): each request waits S seconds
  before its answer, so one check (login, version, services, reconfigure-required,
  repository, retrieve-updates and its task, logout: about 8 requests one after the other)
  has a known duration; `--plant` gives a few appliances a pre-flight problem as well;
- the orchestrator: `orchestrator appliances import`, `orchestrator rollout create` (a DRAFT
  rollout, `max_concurrency` = --concurrency, no per-site limit), then the measured process
  `orchestrator rollout preflight ID --json`.

One check is measured first: `--calibrations` pre-flights of a rollout of one healthy
appliance (the run's `started_at` to `finished_at`, median). The ideal is
ceil(N / concurrency) x that; `ratio` = wall / ideal (1.0: as fast as the limits allow).

    .venv/bin/python bench/preflight.py                          # 5,000 appliances, ~2 min
    .venv/bin/python bench/preflight.py --appliances 1000 --concurrency 100 --plant none
    .venv/bin/python bench/preflight.py --profile-out /tmp/preflight.speedscope.json

Prints one JSON object (docs/benchmarks.md, "Pre-flight", explains the fields). Everything
listens on 127.0.0.1 only; the measured process is stopped after --timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BIN,
    ROOT,
    TARGET_VERSION,
    ChildResult,
    Processes,
    ProcSampler,
    cli,
    git_state,
    machine,
    orchestrator_env,
    proc_children,
    run_bench,
    start_simulator,
    wait_child,
    with_given_settings,
)

# simulator fault -> the pre-flight code it must give (docs/preflight.md)
PLANTABLE = {
    "bad_credentials": "CREDENTIALS",
    "no_repository": "NO_REPOSITORY",
    "services_down": "SERVICES_DOWN",
    "reconfigure_pending": "RECONFIGURE_PENDING",
    "version_not_offered": "VERSION_NOT_OFFERED",
    "repo_unreachable": "REPOSITORY_UNREACHABLE",
}
CALIBRATION_APPLIANCE = "sim-00001"


def appliance_name(index: int) -> str:
    return f"sim-{index + 1:05d}"


def planted_appliances(n: int, faults: list[str]) -> dict[str, str]:
    """Appliance name -> planted fault, spread evenly over the fleet (never the first
    appliance, which the calibration checks)."""
    out: dict[str, str] = {}
    for j, fault in enumerate(faults):
        index = max(1, (j + 1) * n // (len(faults) + 1))
        out[appliance_name(min(index, n - 1))] = fault
    return out


def create_draft(env: dict[str, str], tmp: Path, strategy: dict[str, Any], name: str,
                 appliances: list[str] | None = None) -> int:
    path = tmp / f"strategy-{name}.json"
    path.write_text(json.dumps(strategy))
    selector = [arg for a in appliances or [] for arg in ("--appliance", a)]
    out = cli(env, "rollout", "create", "--name", name, "--version", TARGET_VERSION,
              "--strategy", str(path), *selector, "--json")
    return int(json.loads(out)["id"])


def run_seconds(run: dict[str, Any]) -> float | None:
    """A pre-flight run's wall time: its `started_at` to its `finished_at` (database
    clock)."""
    if not run.get("started_at") or not run.get("finished_at"):
        return None
    return (datetime.fromisoformat(run["finished_at"])
            - datetime.fromisoformat(run["started_at"])).total_seconds()


def preflight_cli(env: dict[str, str], rollout_id: int, timeout: float) -> dict[str, Any]:
    """`orchestrator rollout preflight ID --json` (exit 0: no fail, 1: some fail)."""
    result = subprocess.run([str(BIN / "orchestrator"), "rollout", "preflight",
                             str(rollout_id), "--json"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise RuntimeError(f"orchestrator rollout preflight {rollout_id}: "
                           f"{result.stderr.strip()[-2000:]}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def timeline(items: list[dict[str, Any]], started_at: str, bucket_s: float
             ) -> dict[str, Any]:
    """When the results came, seconds after the run started: quantiles, and how many
    checks ended in each `bucket_s` seconds (a steady rate below concurrency / one check
    means something else than the appliances sets the pace)."""
    t0 = datetime.fromisoformat(started_at)
    ends = sorted((datetime.fromisoformat(i["checked_at"]) - t0).total_seconds()
                  for i in items)
    if not ends:
        return {}

    def q(p: float) -> float:
        return round(ends[min(len(ends) - 1, int(p * len(ends)))], 2)

    buckets: Counter[int] = Counter(int(e // bucket_s) for e in ends)
    return {
        "first_s": round(ends[0], 2), "p10_s": q(0.10), "p50_s": q(0.50), "p90_s": q(0.90),
        "last_s": round(ends[-1], 2),
        "bucket_s": bucket_s,
        "checks_per_bucket": [buckets.get(b, 0) for b in range(int(ends[-1] // bucket_s) + 1)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=500,
                        help="the rollout's max_concurrency (no per-site limit)")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--slow-seconds", type=float, default=0.5,
                        help="simulator: every request of every appliance waits this long "
                             "before its answer (the `slow` fault at rate 1)")
    parser.add_argument("--retrieve-seconds", type=float, default=0.2,
                        help="simulator: how long a retrieve-updates task runs")
    parser.add_argument("--plant", default=",".join(PLANTABLE),
                        help="faults planted on one appliance each, spread over the fleet "
                             f"(comma-separated, of: {', '.join(PLANTABLE)}; 'none': a "
                             "healthy fleet). Default: all of them")
    parser.add_argument("--calibrations", type=int, default=3,
                        help="pre-flights of one healthy appliance that measure one check")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="an orchestrator setting for the CLI process (repeatable)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="the measured pre-flight is stopped after this many seconds")
    parser.add_argument("--profile-out", metavar="FILE",
                        help="run the measured CLI under py-spy; write a speedscope profile")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    opts = parser.parse_args()
    plant = [] if opts.plant.strip() in ("", "none") else [
        f.strip() for f in opts.plant.split(",") if f.strip()]
    unknown = sorted(set(plant) - set(PLANTABLE))
    if unknown:
        parser.error(f"--plant: unknown fault(s) {', '.join(unknown)} "
                     f"(known: {', '.join(PLANTABLE)})")
    if opts.appliances < len(plant) + 2:
        parser.error(f"--appliances {opts.appliances}: too few for {len(plant)} planted "
                     "fault(s) and the calibration appliance")
    if opts.concurrency < 1 or opts.slow_seconds < 0 or opts.calibrations < 1:
        parser.error("--concurrency and --calibrations must be >= 1, --slow-seconds >= 0")
    opts.plant_list = plant
    return run_bench("preflight", run, opts)


def run(opts: argparse.Namespace, procs: Processes, db: Any, tmp: Path,
        bench_started: float, load_start: list[float]) -> int:
    n = opts.appliances
    planted = planted_appliances(n, opts.plant_list)
    extra = ["--fault", "slow=1", "--fault-param", f"slow_seconds={opts.slow_seconds}",
             "--retrieve-seconds", str(opts.retrieve_seconds)]
    for name, fault in planted.items():  # (replaces the drawn faults: slow is given again)
        extra += ["--fault-appliance", f"{name}=slow,{fault}"]
    sim = start_simulator(procs, tmp, appliances=n, sites=opts.sites, install_seconds=10.0,
                          reboot_seconds=5.0, services_starting_seconds=2.0, extra=extra)
    settings: dict[str, Any] = {
        "appliance_max_connections": max(1000, opts.concurrency),
        # every simulated appliance shares one host:port: no per-host limit
        "appliance_max_connections_per_host": 0,
    }
    env = orchestrator_env(db.url, **with_given_settings(settings, opts.setting))
    cli(env, "migrate")
    cli(env, "appliances", "import", str(sim.inventory))
    strategy = {"max_concurrency": opts.concurrency, "preflight": "off"}

    # one check, measured: pre-flights of a rollout of one healthy appliance
    one = create_draft(env, tmp, strategy, "bench-one-check", [CALIBRATION_APPLIANCE])
    before = sim.stats()["requests"]
    calibrations: list[float] = []
    for _ in range(opts.calibrations):
        seconds = run_seconds(preflight_cli(env, one, 120)["run"])
        if seconds is not None:
            calibrations.append(seconds)
    requests_per_check = (sim.stats()["requests"] - before) / opts.calibrations
    one_check = statistics.median(calibrations) if calibrations else None

    rollout_id = create_draft(env, tmp, strategy, "bench-preflight")
    sim.reset(versions=False)  # the counters from here on are the measured run's

    command = [str(BIN / "orchestrator"), "rollout", "preflight", str(rollout_id), "--json"]
    profile = Path(opts.profile_out).resolve() if opts.profile_out else None
    if profile:
        from rollout import py_spy  # bench/rollout.py: the virtualenv's py-spy (installed)

        command = [py_spy(), "record", "-o", str(profile), "--format", "speedscope",
                   "--rate", str(opts.profile_rate), "--nonblocking", "--", *command]
    sampler = ProcSampler(interval=0.5)
    sampler.watch("simulator", sim.proc.pid)
    if db.postmaster_pid:
        sampler.watch("postgres", db.postmaster_pid, tree=True)
    out_path, err_path = tmp / "preflight.json", tmp / "preflight.stderr"
    started = time.monotonic()
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = procs.popen(command, env=env, cwd=ROOT, stdout=out, stderr=err)
    cli_pid = proc.pid
    if profile:  # measure the orchestrator under py-spy, not py-spy itself
        for _ in range(200):
            kids = proc_children(proc.pid)
            if kids:
                cli_pid = kids[0]
                break
            time.sleep(0.01)
    sampler.watch("cli", cli_pid)
    sampler.start()
    result: ChildResult = wait_child(proc, started + opts.timeout, started)
    sampler.stop()
    stats = sim.stats()

    text = out_path.read_text()
    data: dict[str, Any] = json.loads(text) if text.strip() else {}
    run_info = data.get("run") or {}
    items: list[dict[str, Any]] = data.get("items") or []
    wall = run_seconds(run_info)
    rounds = math.ceil(n / opts.concurrency)
    ideal = rounds * one_check if one_check is not None else None
    lower_bound = requests_per_check * opts.slow_seconds
    by_name = {i["appliance"]: i for i in items}
    planted_report = [
        {"appliance": name, "fault": fault, "expected": PLANTABLE[fault],
         "result": (by_name.get(name) or {}).get("result"),
         "code": (by_name.get(name) or {}).get("code")}
        for name, fault in planted.items()]
    codes = Counter(f"{i['result']} {i['code']}" for i in items if i.get("code"))
    cpu_s = sampler.totals()["cli"] if profile else result.cpu_s
    others = {k: v for k, v in sampler.totals().items() if k != "cli"}
    report: dict[str, Any] = {
        "appliances": n, "concurrency": opts.concurrency, "sites": opts.sites,
        "slow_seconds": opts.slow_seconds, "retrieve_seconds": opts.retrieve_seconds,
        "wall_s": round(wall, 2) if wall is not None else None,
        "process_wall_s": round(result.wall_s, 2),
        "one_check_s": round(one_check, 3) if one_check is not None else None,
        "one_check_runs_s": [round(c, 3) for c in calibrations],
        "requests_per_check": round(requests_per_check, 2),
        "one_check_lower_bound_s": round(lower_bound, 3),
        "slowest_check_s": round(one_check, 3) if one_check is not None else None,
        # results keep no duration: every appliance waits slow_seconds per request, so the
        # slowest check is a healthy one (a planted fault ends its check sooner or as late)
        "slowest_check_source": "one_check_s (the simulator's slow_seconds on every appliance)",
        "rounds": rounds,
        "ideal_s": round(ideal, 2) if ideal is not None else None,
        "ratio": round(wall / ideal, 3) if wall and ideal else None,
        "process_ratio": round(result.wall_s / ideal, 3) if ideal else None,
        "checks_per_s": round(len(items) / wall, 1) if wall else None,
        "ideal_checks_per_s": round(opts.concurrency / one_check, 1) if one_check else None,
        "cli_cpu_s": round(cpu_s, 2),
        "cli_cpu_user_s": round(result.cpu_user_s, 2) if not profile else None,
        "cli_cpu_sys_s": round(result.cpu_sys_s, 2) if not profile else None,
        "cli_cpu_ms_per_appliance": round(1000 * cpu_s / n, 3),
        "cli_busy": round(cpu_s / result.wall_s, 2) if result.wall_s else None,
        "cli_peak_rss_mb": round(sampler.hwm_kb.get("cli", 0) / 1024 if profile
                                 else result.maxrss_mb, 1),
        "cli_exit_code": result.returncode,
        "cli_timed_out": result.timed_out,
        "cli_stderr_tail": err_path.read_text()[-600:] if result.returncode not in (0, 1)
        else None,
        "requests_per_appliance": round(stats["requests"] / n, 2),
        "requests_per_appliance_by_kind": {
            k: round(v / n, 2) for k, v in sorted(stats["requests_by_kind"].items())},
        "installs_accepted": stats["installs_accepted"],
        "results": run_info.get("counts"),
        "results_listed": len(items),
        "codes": dict(codes.most_common()),
        "planted": planted_report,
        "planted_found": all(p["code"] == p["expected"] for p in planted_report),
        "timeline": timeline(items, run_info["started_at"], 5.0)
        if items and run_info.get("started_at") else None,
        "other_cpu_s": others,
        "other_busy": {k: round(v / result.wall_s, 2) for k, v in others.items()}
        if result.wall_s else None,
        "settings": settings,
        "strategy": strategy,
        "database": db.kind,
        "tree": git_state(),
        "bench_wall_s": round(time.monotonic() - bench_started, 1),
        "machine": machine(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }
    if profile:
        from rollout import profile_summary

        report["profile"] = str(profile)
        if profile.exists():
            report["profile_summary"] = profile_summary(profile)
    print(json.dumps(report))
    healthy = (not result.timed_out and result.returncode == (1 if planted else 0)
               and report["planted_found"] and report["results_listed"] == n
               and stats["installs_accepted"] == 0)
    return 0 if healthy else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
