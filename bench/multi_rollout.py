"""Many rollouts at once: several engine replicas, each rollout with its own limits, and
sites with fleet-wide limits shared by every rollout.

PostgreSQL, the simulator and the orchestrator run as separate processes (as in
bench/rollout.py):

- PostgreSQL: a fresh database on ORCHESTRATOR_DATABASE_URL (or TEST_DATABASE_URL) when set,
  dropped at the end; else an embedded server in a temporary data directory;
- the simulator: one `python -m orchestrator.simulator` serving `rollouts x
  appliances-per-rollout` appliances (no faults, `--duplicate-install accept`);
- the inventory is imported with one tag per rollout (`mr-01`, `mr-02`, ...: appliance k
  belongs to rollout k // appliances-per-rollout), so the rollouts' fleets are disjoint;
- `orchestrator sites set-limit` caps two sites fleet-wide (every rollout together);
- `--rollouts` rollouts are created (`rollout create --tag mr-NN`), each with its own
  `max_concurrency` and, for every other one, a `per_site_concurrency`;
- `--replicas` engine processes (`orchestrator run`) are started and listening, then every
  rollout is started at once (`orchestrator rollout start`, in parallel); once every rollout
  has ended the engines get SIGTERM.

    .venv/bin/python bench/multi_rollout.py                                 # 10 x 10,000
    .venv/bin/python bench/multi_rollout.py --appliances-per-rollout 500    # development

Prints one JSON object; docs/benchmarks.md ("bench/multi_rollout.py") explains it. Goals:
every rollout's efficiency >= 0.90, every limit held on the appliances themselves (the
simulator's ground truth), 0 duplicate installs.

The ideal makespan of a rollout (`ideal_s`) is that of an engine with no overhead at all
following the engine's own claim rules (`shared_ideal_rounds`): every task lasts one round
of install + reboot; in each round the rollouts claim one task at a time, the next claim
going to the rollout that has used the smallest share of its max_concurrency (a capped
site's slots shared in proportion to the rollouts' concurrency), within their
max_concurrency, per_site_concurrency and the room left under each capped site's limit; a
wave starts when the previous one has ended. An efficiency above 1 means that the rollout
got more than that share of a capped site (and others less). Reported beside it:
- `ideal_own_s`: the rollout alone (no site limit): per wave, max(ceil(wave /
  max_concurrency), max over sites of ceil(wave at the site / per_site_concurrency)) rounds
  (without a per-site limit exactly bench/rollout.py's `ideal_seconds`);
- `site_work_bound_s`: ceil(tasks of every rollout at a capped site / its limit) rounds,
  the earliest the last rollout there can end (it is in `fleet_ideal_s`), not a bound for
  each rollout (one that gets more than a proportional share of the site ends before it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import heapq
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
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
    fetch,
    git_state,
    listening_engines,
    machine,
    orchestrator_env,
    rollout_outcome,
    run_bench,
    start_simulator,
    wait_child,
    with_given_settings,
)
from rollout import ideal_seconds

GOALS = {"efficiency": 0.90, "duplicate_installs": 0}
# rollout k's max_concurrency and per_site_concurrency (None: none) at 10,000 appliances
# per rollout and 20 sites; scaled by appliances-per-rollout / 10,000 unless given
CONCURRENCY = (300, 350, 400, 450, 500, 300, 350, 400, 450, 500)
PER_SITE: tuple[int | None, ...] = (None, 15, None, 20, None, 14, None, 18, None, 22)
SITE_LIMITS = ("site-01=170", "site-02=150")


def scaled(value: int, scale: float) -> int:
    return max(1, round(value * scale))


def own_ideal_seconds(waves: list[dict[str, int]], concurrency: int, per_site: int | None,
                      slot_s: float) -> float:
    """Per wave, max(ceil(size / concurrency), max over sites ceil(size at site / per_site))
    rounds of install + reboot; `waves`: one {site: appliances} per wave, in order."""
    if per_site is None:
        return ideal_seconds([sum(w.values()) for w in waves], concurrency, slot_s)
    rounds = 0
    for wave in waves:
        rounds += max(math.ceil(sum(wave.values()) / concurrency),
                      max((math.ceil(n / per_site) for n in wave.values()), default=0))
    return rounds * slot_s


def shared_ideal_rounds(rollouts: list[dict[str, Any]], site_limits: dict[str, int]) -> list[int]:
    """The rounds of install + reboot each rollout takes under an engine with no overhead at
    all that follows the engine's claim rules, all rollouts started together: every task
    lasts one round; in each round the rollouts claim one task at a time, the next claim
    going to the rollout that has used the smallest share of its max_concurrency (so a
    capped site's slots are shared in proportion to the rollouts' concurrency, none favoured
    beyond it), each its next eligible task: within its current
    wave, at the site with the most tasks left (the plan's round-robin over sites taken in
    position order), within its max_concurrency, its per_site_concurrency and the room left
    under the site's fleet-wide limit; a wave starts the round after the previous one ended.
    `rollouts`: {"waves": [{site: tasks}], "max_concurrency": int, "per_site": int|None}."""
    left = [[dict(sorted(w.items())) for w in r["waves"]] for r in rollouts]  # ties: by name
    wave = [0] * len(rollouts)
    done = [0] * len(rollouts)
    for i in range(len(rollouts)):  # empty waves are skipped
        while wave[i] < len(left[i]) and not sum(left[i][wave[i]].values()):
            wave[i] += 1
    t = 0
    while any(wave[i] < len(left[i]) for i in range(len(rollouts))):
        t += 1
        room = dict(site_limits)
        budget = {i: rollouts[i]["max_concurrency"] for i in range(len(rollouts))
                  if wave[i] < len(left[i])}
        used: dict[tuple[int, str], int] = defaultdict(int)
        taken = dict.fromkeys(budget, 0)
        # the next claim is the rollout's that has used the smallest share of its own
        # max_concurrency this round (ties: a turn rotating from round to round)
        turns = [(0.0, (i - t) % len(rollouts), i) for i in budget]
        heapq.heapify(turns)
        while turns:
            _, tie, i = heapq.heappop(turns)
            per = rollouts[i]["per_site"]
            current = left[i][wave[i]]
            best = None
            for site, n in current.items():
                if n <= 0 or (per is not None and used[(i, site)] >= per):
                    continue
                if site in room and room[site] <= 0:
                    continue
                if best is None or n > current[best]:
                    best = site
            if best is None:
                continue
            current[best] -= 1
            used[(i, best)] += 1
            if best in room:
                room[best] -= 1
            taken[i] += 1
            if taken[i] < budget[i]:
                heapq.heappush(turns, (taken[i] / budget[i], tie, i))
        for i in budget:  # a wave whose tasks all ran this round ends with it
            while wave[i] < len(left[i]) and not sum(left[i][wave[i]].values()):
                wave[i] += 1
            if wave[i] == len(left[i]):
                done[i] = t
    return done


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals [start, end) open at one time (an end before a start at the same
    instant, as the simulator counts)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def appliance_intervals(app: dict[str, Any]) -> list[tuple[float, float]]:
    """The appliance's installs in flight, per the simulator: [accepted, end) of each, a
    second install accepted on the one already running (a duplicate) merged into it."""
    spans = sorted(zip(app["install_times"], app.get("install_ends", []), strict=False))
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def write_inventory(source: Path, target: Path, per_rollout: int) -> dict[str, int]:
    """The simulator's inventory with one more tag per appliance: `mr-NN`, its rollout
    (appliance k of the file, 0-based, belongs to rollout k // per_rollout + 1)."""
    member: dict[str, int] = {}
    with source.open(newline="") as src, target.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        assert reader.fieldnames is not None
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        for k, row in enumerate(reader):
            number = k // per_rollout + 1
            row["tags"] = ";".join([t for t in (row.get("tags") or "").split(";") if t]
                                   + [f"mr-{number:02d}"])
            member[row["name"]] = number
            writer.writerow(row)
    return member


def watch_backends(sampler: ProcSampler, db_url: str) -> None:
    """Sample the CPU of the PostgreSQL backends serving this database (a shared server
    serves others too: only ours count), as `pg-<pid>`; call again to add new ones."""
    for row in fetch(db_url, "SELECT pid FROM pg_stat_activity WHERE datname = "
                             "current_database() AND pid <> pg_backend_pid()"):
        name = f"pg-{int(row['pid'])}"
        if name not in sampler.targets:
            sampler.watch(name, int(row["pid"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--appliances-per-rollout", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=3, help="engine processes")
    parser.add_argument("--install-seconds", type=float, default=20.0)
    parser.add_argument("--reboot-seconds", type=float, default=5.0)
    parser.add_argument("--services-starting-seconds", type=float, default=0.0)
    parser.add_argument("--install-jitter", type=float, default=0.0,
                        help="simulator: each install lasts install-seconds x (1 +- this); 0 "
                             "(the default): fixed durations, as the ideal assumes")
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--waves", default="1%,10%,100%")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                        help="max_concurrency of rollout 1, 2, ... (cycled), at 10,000 "
                             "appliances per rollout")
    parser.add_argument("--per-site", default=",".join("-" if p is None else str(p)
                                                       for p in PER_SITE),
                        help="per_site_concurrency of rollout 1, 2, ... ('-': none; cycled)")
    parser.add_argument("--site-limit", action="append", metavar="SITE=N",
                        help=f"a fleet-wide site limit (repeatable; default {SITE_LIMITS})")
    parser.add_argument("--scale", type=float,
                        help="multiplies the concurrencies and limits above (default: "
                             "appliances-per-rollout / 10,000)")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="an orchestrator setting for the engines (repeatable)")
    parser.add_argument("--timeout", type=float, default=3600.0,
                        help="the engines are stopped this many seconds after the start")
    return run_bench("multi", run, parser.parse_args())


def other_cpu(sampler: ProcSampler) -> dict[str, float]:
    """CPU seconds of the simulator and of PostgreSQL (the embedded server's whole tree, or
    the backends of a shared server that served the bench database, sampled every second:
    a backend's last second before it exits may be missed)."""
    totals = sampler.totals()
    out = {k: v for k, v in totals.items() if not k.startswith(("engine-", "pg-"))}
    backends = [v for k, v in totals.items() if k.startswith("pg-")]
    if backends:
        out["postgres_backends"] = round(sum(backends), 2)
    return out


def progress(msg: str) -> None:
    print(f"multi_rollout: {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def run(opts: argparse.Namespace, procs: Processes, db: Any, tmp: Path,
        bench_started: float, load_start: list[float]) -> int:
    n_per, n_roll = opts.appliances_per_rollout, opts.rollouts
    total = n_per * n_roll
    scale = opts.scale if opts.scale is not None else n_per / 10_000
    conc_in = [int(x) for x in opts.concurrency.split(",")]
    per_in = [None if x.strip() in ("-", "") else int(x) for x in opts.per_site.split(",")]
    limits: list[dict[str, Any]] = []
    for k in range(n_roll):
        per = per_in[k % len(per_in)]
        limits.append({"max_concurrency": scaled(conc_in[k % len(conc_in)], scale),
                       "per_site": scaled(per, scale) if per is not None else None})
    site_limits: dict[str, int] = {}
    for item in opts.site_limit or SITE_LIMITS:
        site, _, value = item.partition("=")
        site_limits[site.strip()] = scaled(int(value), scale)

    progress(f"simulator: {total} appliances, {opts.sites} sites")
    sim = start_simulator(
        procs, tmp, appliances=total, sites=opts.sites,
        install_seconds=opts.install_seconds, reboot_seconds=opts.reboot_seconds,
        services_starting_seconds=opts.services_starting_seconds,
        install_jitter=opts.install_jitter, timeout=600,
    )
    total_conc = sum(x["max_concurrency"] for x in limits)
    settings: dict[str, Any] = {
        # any replica may end up driving most of the work: each may take all of it
        "engine_max_tasks": max(2000, total_conc),
        "appliance_max_connections": max(1000, total_conc),
        # every simulated appliance shares one host:port: no per-host limit
        "appliance_max_connections_per_host": 0,
    }
    env = orchestrator_env(db.url, **with_given_settings(settings, opts.setting))
    cli(env, "migrate")
    inventory = tmp / "fleet-tagged.csv"
    member = write_inventory(sim.inventory, inventory, n_per)
    progress("import")
    cli(env, "appliances", "import", str(inventory), timeout=1800)
    for site, limit in site_limits.items():
        cli(env, "sites", "set-limit", site, str(limit))
    waves_spec: list[Any] = [w if w.endswith("%") else int(w) for w in opts.waves.split(",")]
    rollout_ids: list[int] = []
    strategies: list[dict[str, Any]] = []
    progress("create rollouts")
    for k, lim in enumerate(limits):
        strategy: dict[str, Any] = {
            "waves": waves_spec, "max_concurrency": lim["max_concurrency"],
            "preflight": "off",
            "reboot_grace": max(600.0, 10 * opts.reboot_seconds),
            "task_timeout": max(3600.0, 10 * (opts.install_seconds + opts.reboot_seconds)),
            **({"per_site_concurrency": lim["per_site"]} if lim["per_site"] else {}),
        }
        path = tmp / f"strategy-{k + 1:02d}.json"
        path.write_text(json.dumps(strategy))
        out = cli(env, "rollout", "create", "--name", f"multi-{k + 1:02d}", "--version",
                  TARGET_VERSION, "--tag", f"mr-{k + 1:02d}", "--strategy", str(path),
                  "--json", timeout=600)
        rollout_ids.append(int(json.loads(out)["id"]))
        strategies.append(strategy)

    sampler = ProcSampler(interval=1.0)
    sampler.watch("simulator", sim.proc.pid)
    if db.postmaster_pid:
        sampler.watch("postgres", db.postmaster_pid, tree=True)
    engines: list[subprocess.Popen[Any]] = []
    err_paths: list[Path] = []
    spawned = time.monotonic()
    for r in range(opts.replicas):
        err_path = tmp / f"engine-{r + 1}.stderr"
        err_paths.append(err_path)
        with err_path.open("w") as err:
            engine = procs.popen([str(BIN / "orchestrator"), "run"], env=env, cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=err)
        engines.append(engine)
        sampler.watch(f"engine-{r + 1}", engine.pid)
    sampler.start()
    while listening_engines(db.url) < opts.replicas:
        if any(e.poll() is not None for e in engines):
            raise RuntimeError("an engine exited before the rollouts started")
        if time.monotonic() > spawned + 120:
            raise RuntimeError("the engines did not listen within 120 s")
        time.sleep(0.05)
    engines_ready_s = time.monotonic() - spawned
    if not db.postmaster_pid:
        watch_backends(sampler, db.url)
    progress(f"{opts.replicas} engines listening; starting {n_roll} rollouts")
    started = time.monotonic()
    starters = [subprocess.Popen([str(BIN / "orchestrator"), "rollout", "start", str(rid)],
                                 env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for rid in rollout_ids]
    for starter in starters:
        _, err_text = starter.communicate(timeout=300)
        if starter.returncode != 0:
            raise RuntimeError(f"orchestrator rollout start: {err_text.strip()}")

    timed_out = False
    next_report = time.monotonic() + 30
    while True:
        row = fetch(db.url, """SELECT count(*) FILTER (WHERE finished_at IS NULL) AS open,
                                      (SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL)
                                          AS done
                               FROM rollouts""")[0]
        if row["open"] == 0:
            break
        if any(e.poll() is not None for e in engines):
            progress("an engine exited early")
            break
        if time.monotonic() > started + opts.timeout:
            timed_out = True
            progress("timeout: stopping the engines")
            break
        if time.monotonic() > next_report:
            next_report += 30
            if not db.postmaster_pid:
                watch_backends(sampler, db.url)
            progress(f"{int(row['done'])}/{total} tasks ended, {int(row['open'])} rollouts "
                     f"open, {time.monotonic() - started:.0f} s")
        time.sleep(1.0)
    run_wall = time.monotonic() - started
    for engine in engines:
        with contextlib.suppress(ProcessLookupError):
            os.kill(engine.pid, signal.SIGTERM)
    results: list[ChildResult] = [wait_child(e, time.monotonic() + 60, spawned)
                                  for e in engines]
    sampler.stop()
    progress("reading the ground truth")
    stats = sim.stats(appliances=True)
    report = measure(opts, db, stats, member, rollout_ids, strategies, limits, site_limits)
    owners = {r["owner"]: int(r["n"]) for r in fetch(db.url, """
        SELECT detail->>'owner' AS owner, count(*) AS n FROM task_events
        WHERE to_state = 'DISPATCHING' GROUP BY 1 ORDER BY 1""")}
    errors: list[list[str]] = [
        [line for line in p.read_text().splitlines() if '"level": "error"' in line
         or '"level":"error"' in line] for p in err_paths]
    replicas = [{
        "replica": r + 1,
        "cpu_s": round(res.cpu_s, 2), "cpu_user_s": round(res.cpu_user_s, 2),
        "cpu_sys_s": round(res.cpu_sys_s, 2),
        "cpu_ms_per_appliance": round(1000 * res.cpu_s / total, 3),
        "peak_rss_mb": round(res.maxrss_mb, 1), "exit_code": res.returncode,
        "timed_out": res.timed_out, "error_lines": len(errors[r]),
    } for r, res in enumerate(results)]
    engines_cpu = sum(res.cpu_s for res in results)
    out: dict[str, Any] = {
        "rollouts": n_roll, "appliances_per_rollout": n_per, "appliances": total,
        "replicas": opts.replicas, "sites": opts.sites, "scale": scale,
        "install_seconds": opts.install_seconds, "reboot_seconds": opts.reboot_seconds,
        "install_jitter": opts.install_jitter,
        "services_starting_seconds": opts.services_starting_seconds,
        "waves": opts.waves, "site_limits": site_limits,
        "sum_max_concurrency": total_conc,
        **report,
        "run_wall_s": round(run_wall, 2), "timed_out": timed_out,
        "engines_ready_s": round(engines_ready_s, 2),
        "engines": replicas,
        "engines_cpu_s": round(engines_cpu, 2),
        "engines_cpu_ms_per_appliance": round(1000 * engines_cpu / total, 3),
        "dispatches_by_engine": owners,
        "other_cpu_s": other_cpu(sampler),
        "settings": settings,
        "database": db.kind,
        "tree": git_state(),
        "bench_wall_s": round(time.monotonic() - bench_started, 1),
        "machine": machine(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }
    if any(errors):
        out["engine_error_sample"] = [line for e in errors for line in e][:3]
    out["goals"] = GOALS
    out["goals_met"] = {
        "efficiency": all(r["efficiency"] is not None and r["efficiency"] >= GOALS["efficiency"]
                          for r in report["per_rollout"]),
        "limits_held": report["limits_held"],
        "duplicate_installs": report["duplicate_installs"] == 0,
        "all_on_target": report["on_target_version"] == total and all(
            r["state"] == "SUCCEEDED" for r in report["per_rollout"]),
    }
    print(json.dumps(out))
    return 0 if not timed_out and all(r.returncode == 0 for r in results) else 1


def measure(opts: argparse.Namespace, db: Any, stats: dict[str, Any], member: dict[str, int],
            rollout_ids: list[int], strategies: list[dict[str, Any]],
            limits: list[dict[str, Any]], site_limits: dict[str, int]) -> dict[str, Any]:
    """Per rollout: makespan, ideal, efficiency (from the database) and the installs in
    flight, in all and per site (from the simulator's ground truth); per capped site: the
    simulator's own highest count against the limit."""
    slot = opts.install_seconds + opts.reboot_seconds
    apps: dict[str, Any] = stats["appliances"]
    # per (rollout, wave, site): planned tasks
    plan: dict[int, dict[int, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    at_site: dict[str, int] = defaultdict(int)
    for row in fetch(db.url, "SELECT rollout_id, wave, site, count(*) AS n FROM tasks "
                             "GROUP BY 1, 2, 3"):
        plan[int(row["rollout_id"])][int(row["wave"])][row["site"]] = int(row["n"])
        at_site[row["site"]] += int(row["n"])
    site_bound = {s: math.ceil(at_site[s] / cap) * slot for s, cap in site_limits.items()
                  if at_site.get(s)}
    own_ideal: dict[int, float] = {}
    for k, rid in enumerate(rollout_ids):
        waves = [plan[rid][w] for w in sorted(plan[rid])]
        own_ideal[rid] = own_ideal_seconds(waves, limits[k]["max_concurrency"],
                                           limits[k]["per_site"], slot)
    shared_rounds = shared_ideal_rounds(
        [{"waves": [plan[rid][w] for w in sorted(plan[rid])], **limits[k]}
         for k, rid in enumerate(rollout_ids)], site_limits)
    shared_ideal = {rid: shared_rounds[k] * slot for k, rid in enumerate(rollout_ids)}

    by_rollout: dict[int, list[tuple[float, float]]] = defaultdict(list)
    by_rollout_site: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    by_site: dict[str, list[tuple[float, float]]] = defaultdict(list)
    installs: dict[int, int] = defaultdict(int)
    repeated: dict[int, int] = defaultdict(int)
    for name, app in apps.items():
        number = member.get(name)
        if number is None:
            continue
        spans = appliance_intervals(app)
        by_rollout[number] += spans
        by_rollout_site[(number, app["site"])] += spans
        by_site[app["site"]] += spans
        installs[number] += int(app["installs_accepted"])
        repeated[number] += max(0, int(app["installs_accepted"]) - 1)

    per_rollout: list[dict[str, Any]] = []
    held = True
    first_start: float | None = None
    last_end: float | None = None
    for k, rid in enumerate(rollout_ids):
        number = k + 1
        lim = limits[k]
        outcome = rollout_outcome(db.url, rid)
        times = fetch(db.url, "SELECT extract(epoch FROM started_at) AS s, "
                              "extract(epoch FROM finished_at) AS f FROM rollouts WHERE id = $1",
                      rid)[0]
        if times["s"] is not None:
            first_start = min(first_start or float(times["s"]), float(times["s"]))
        if times["f"] is not None:
            last_end = max(last_end or float(times["f"]), float(times["f"]))
        waves = [plan[rid][w] for w in sorted(plan[rid])]
        own = own_ideal[rid]
        sites_here = {s for w in waves for s in w}
        shared = max((b for s, b in site_bound.items() if s in sites_here), default=0.0)
        ideal = shared_ideal[rid]
        wall = outcome["wall_s"]
        max_total = max_overlap(by_rollout[number])
        site_max = {s: max_overlap(v) for (r, s), v in by_rollout_site.items() if r == number}
        worst_site = max(site_max.values(), default=0)
        ok = max_total <= lim["max_concurrency"] and (
            lim["per_site"] is None or worst_site <= lim["per_site"])
        held = held and ok
        n_apps = sum(sum(w.values()) for w in waves)
        on_target = sum(1 for name, app in apps.items()
                        if member.get(name) == number and app["version"] == TARGET_VERSION)
        per_rollout.append({
            "rollout": number, "id": rid, "appliances": n_apps,
            "max_concurrency": lim["max_concurrency"], "per_site_concurrency": lim["per_site"],
            "wave_sizes": [sum(w.values()) for w in waves],
            "state": outcome["state"], "abort_reason": outcome["abort_reason"],
            "tasks": outcome["tasks"],
            "makespan_s": round(wall, 2) if wall is not None else None,
            "ideal_own_s": round(own, 2), "ideal_s": round(ideal, 2),
            "efficiency": round(ideal / wall, 3) if wall else None,
            "efficiency_vs_own_ideal": round(own / wall, 3) if wall else None,
            "site_work_bound_s": round(shared, 2),
            "appliances_at_capped_sites": {s: sum(w.get(s, 0) for w in waves)
                                           for s in site_limits},
            "efficiency_vs_max_own_and_site_work_bound": round(max(own, shared) / wall, 3)
            if wall else None,
            "max_in_flight": max_total, "max_in_flight_limit": lim["max_concurrency"],
            "max_in_flight_per_site": worst_site,
            "max_in_flight_per_site_limit": lim["per_site"],
            "limits_held": ok,
            "installs_accepted": installs[number],
            "appliances_installed_more_than_once": repeated[number],
            "on_target_version": on_target,
            "waves": [{k2: w[k2] for k2 in ("number", "planned_size", "start_s",
                                            "first_dispatch_s", "last_finish_s", "end_s")}
                      for w in outcome["waves"]],
        })

    sites: list[dict[str, Any]] = []
    for site, cap in site_limits.items():
        truth = int(stats["max_in_flight_by_site"].get(site, 0))
        swept = max_overlap(by_site[site])
        ok = truth <= cap and swept <= cap
        held = held and ok
        sites.append({"site": site, "limit": cap, "appliances": at_site.get(site, 0),
                      "max_in_flight": truth, "max_in_flight_from_intervals": swept,
                      "work_bound_s": round(site_bound.get(site, 0.0), 2), "limit_held": ok})
    uncapped = {s: n for s, n in stats["max_in_flight_by_site"].items() if s not in site_limits}
    effs = [r["efficiency"] for r in per_rollout if r["efficiency"] is not None]
    # a true lower bound of the last end: no rollout alone, and no capped site, faster
    fleet_ideal = max([r["ideal_own_s"] for r in per_rollout] + list(site_bound.values()),
                      default=0.0)
    fleet_makespan = (last_end - first_start) if first_start and last_end else None
    return {
        "per_rollout": per_rollout,
        "efficiency_min": min(effs) if effs else None,
        "efficiency_mean": round(sum(effs) / len(effs), 3) if effs else None,
        "fleet_makespan_s": round(fleet_makespan, 2) if fleet_makespan else None,
        "fleet_ideal_s": round(fleet_ideal, 2),
        "fleet_efficiency": round(fleet_ideal / fleet_makespan, 3) if fleet_makespan else None,
        "capped_sites": sites,
        "max_in_flight_uncapped_site": max(uncapped.values(), default=0),
        "max_in_flight": stats["max_in_flight"],
        "limits_held": held,
        "duplicate_installs": stats["duplicate_installs"],
        "installs_accepted": stats["installs_accepted"],
        "install_responses": stats["install_responses"],
        "on_target_version": int(stats["versions"].get(TARGET_VERSION, 0)),
        "requests_per_appliance": round(stats["requests"] / max(1, len(apps)), 2),
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
