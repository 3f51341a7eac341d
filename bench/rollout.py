"""Rollout benchmark: a whole rollout of a large simulated fleet, end to end.

PostgreSQL, the simulator and the orchestrator run as separate processes:

- PostgreSQL: a fresh database on ORCHESTRATOR_DATABASE_URL (or TEST_DATABASE_URL) when set,
  dropped at the end; else an embedded server in a temporary data directory, with
  pg_stat_statements loaded;
- the simulator: `python -m orchestrator.simulator` without faults;
- the orchestrator: `orchestrator appliances import`, `orchestrator rollout create`
  (waves 1%, 10%, 100%; max_concurrency = --concurrency); the engine process that is
  measured, `orchestrator run`, is started and listening before `orchestrator rollout start`,
  as a service is in production, and is stopped (SIGTERM) once the rollout has ended.
  `--cold-start` instead starts `orchestrator run --until-idle` after `rollout create
  --start`, so that the engine's start-up (~1.5 s) falls inside `wall_s`. `--replicas N`
  starts N such engine processes (replicas sharing the rollout, as in a deployment of
  several); the CPU figures are then their sum, `peak_rss_mb` the largest.

    .venv/bin/python bench/rollout.py                                  # 10,000 appliances
    .venv/bin/python bench/rollout.py --appliances 2000 --concurrency 200   # quick
    .venv/bin/python bench/rollout.py --profile-out /tmp/engine.speedscope.json

Prints one JSON object; docs/benchmarks.md explains each field. Goals: efficiency >= 0.95,
cpu_ms_per_appliance <= 2, peak_rss_mb <= 300, duplicate_installs 0.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BIN,
    ROOT,
    SLOW_STATEMENT_MS,
    TARGET_VERSION,
    ChildResult,
    Processes,
    ProcSampler,
    StatementCounter,
    cli,
    create_rollout,
    fetch,
    git_state,
    listening_engines,
    machine,
    orchestrator_env,
    proc_children,
    rollout_outcome,
    run_bench,
    start_simulator,
    wait_child,
    with_given_settings,
)

UVLOOP_ENGINE = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from orchestrator.cli import main; sys.exit(main({args!r}))"
)
GOALS = {"efficiency": 0.95, "cpu_ms_per_appliance": 2.0, "peak_rss_mb": 300.0,
         "duplicate_installs": 0}


# the hot statements whose time per call is a goal (issue: claim max <= 50 ms, mean at
# 100,000 tasks <= 1.5x at 10,000): a fragment that only their text holds
TIMED_STATEMENTS = {"claim": "pending_sites AS", "tick_counts": "DELETE FROM task_count_deltas"}


def statement_times(db: Any) -> dict[str, Any] | None:
    """Calls, mean and max execution time (ms) of the claim and of the tick's counts over
    the whole run, from pg_stat_statements (None without it)."""
    if not db.stat_statements:
        return None
    out: dict[str, Any] = {}
    for name, fragment in TIMED_STATEMENTS.items():
        rows = fetch(db.url, """
            SELECT sum(calls)::bigint AS calls,
                   sum(total_exec_time) / nullif(sum(calls), 0) AS mean,
                   max(max_exec_time) AS max
            FROM bench_stats.pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query LIKE '%' || $1 || '%'
              AND query NOT LIKE '%bench_stats.pg_stat_statements%'""", fragment)
        r = rows[0]
        out[name] = {"calls": int(r["calls"] or 0),
                     "mean": round(float(r["mean"]), 3) if r["mean"] is not None else None,
                     "max": round(float(r["max"]), 3) if r["max"] is not None else None}
    return out


# a line of the embedded server's log that starts an entry (log_line_prefix '%m [%p] ', UTC)
LOG_ENTRY = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] ")
SLOW_ENTRY = re.compile(r"LOG:  duration: ([\d.]+) ms  (.*)$")


def slow_statements(db: Any, rollout_id: int, top: int = 10) -> dict[str, Any] | None:
    """The statements slower than SLOW_STATEMENT_MS during the run, from the embedded
    server's log (`parse_slow_log`). None for an external server."""
    if db.log_path is None or not db.log_path.exists():
        return None
    started = fetch(db.url, "SELECT started_at FROM rollouts WHERE id = $1",
                    rollout_id)[0]["started_at"]
    return parse_slow_log(db.log_path.read_text(errors="replace"), started, top)


def parse_slow_log(text: str, started: datetime | None, top: int = 10) -> dict[str, Any]:
    """From a server log with log_min_duration_statement: per timed statement (the claim,
    the tick's counts) how many and the slowest, each with when it ran (seconds since
    `started`, the rollout's start); the other slow statements by their first words."""
    entries: list[list[Any]] = []  # [at_s, ms, statement text]
    current: list[Any] | None = None
    for line in text.splitlines():
        head = LOG_ENTRY.match(line)
        if head is None:  # a statement's text goes on over several lines
            if current is not None:
                current[2] += " " + line.strip()
            continue
        slow = SLOW_ENTRY.search(line)
        current = None
        if slow is not None:
            at = datetime.strptime(head[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            current = [round((at - started).total_seconds(), 1) if started else None,
                       float(slow[1]), slow[2]]
            entries.append(current)
    out: dict[str, Any] = {"threshold_ms": SLOW_STATEMENT_MS}
    named: set[int] = set()
    for name, fragment in TIMED_STATEMENTS.items():
        mine = [e for e in entries if fragment in e[2]]
        named.update(id(e) for e in mine)
        out[name] = {"count": len(mine), "slowest": [
            {"at_s": at, "ms": round(ms, 1)}
            for at, ms, _ in sorted(mine, key=lambda e: -e[1])[:top]]}
    others: Counter[str] = Counter()
    worst: dict[str, float] = {}
    for _, ms, statement in (e for e in entries if id(e) not in named):
        key = " ".join(statement.split(":", 1)[-1].split())[:90]
        others[key] += 1
        worst[key] = max(worst.get(key, 0.0), ms)
    out["other"] = [{"statement": k, "count": n, "max_ms": round(worst[k], 1)}
                    for k, n in others.most_common(top)]
    return out


def ideal_seconds(sizes: list[int], concurrency: int, slot_s: float) -> float:
    """Sum over waves of ceil(wave size / concurrency) x (install + reboot)."""
    return sum(math.ceil(n / concurrency) for n in sizes) * slot_s


def jitter_ideal_seconds(sizes: list[int], concurrency: int, opts: argparse.Namespace,
                         runs: int = 20) -> float:
    """The makespan of an engine with no overhead at all on the simulated fleet: each
    install lasts install x (1 +- jitter) (uniform, as the simulator draws it), plus the
    queued, reboot and services-starting times; a sliding window of `concurrency` slots
    per wave, each wave after the previous one. Mean of `runs` draws. With jitter the
    slots drift apart, so the last wave ends about half a task after total work /
    concurrency, later than the ceil() rounds of `ideal_s` assume."""
    rng = random.Random(1)
    fixed = 0.1 + opts.reboot_seconds + opts.services_starting_seconds
    total = 0.0
    for _ in range(runs):
        t = 0.0
        for size in sizes:
            slots = [t] * min(concurrency, size)
            heapq.heapify(slots)
            end = t
            for _ in range(size):
                start = heapq.heappop(slots)
                finish = start + fixed + opts.install_seconds * (
                    1 + rng.uniform(-opts.install_jitter, opts.install_jitter))
                end = max(end, finish)
                heapq.heappush(slots, finish)
            t = end
        total += t
    return total / runs


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile of `values` (nearest rank below), rounded to ms; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def task_timing(db_url: str, rollout_id: int, concurrency: int,
                expected_hold: float) -> dict[str, Any]:
    """Where a task's time goes, from the database (seconds, means over the tasks):
    claim -> install accepted -> VERIFYING -> outcome, the slot hold time against what the
    simulated appliance needs, and how long a freed slot stays empty before the next claim
    (k-th dispatch after the first `concurrency` of a wave vs the (k - concurrency)-th end),
    how long after a wave's first dispatch its first round was sent (by wave: median and
    last), plus the reasons the engine gave for moving to VERIFYING."""
    rows = fetch(db_url, """
        SELECT t.wave, extract(epoch FROM t.dispatched_at) AS d,
               extract(epoch FROM t.accepted_at) AS a,
               extract(epoch FROM t.finished_at) AS f,
               (SELECT extract(epoch FROM e.at) FROM task_events e
                 WHERE e.task_id = t.id AND e.to_state = 'VERIFYING' ORDER BY e.id DESC
                 LIMIT 1) AS v
        FROM tasks t WHERE t.rollout_id = $1 AND t.state = 'SUCCEEDED'""", rollout_id)
    reasons = {r["reason"]: int(r["n"]) for r in fetch(db_url, """
        SELECT detail->>'reason' AS reason, count(*) AS n FROM task_events
        WHERE rollout_id = $1 AND to_state = 'VERIFYING' GROUP BY 1""", rollout_id)}
    if not rows:
        return {}

    def mean(values: list[float]) -> float | None:
        return round(statistics.fmean(values), 3) if values else None

    hold = [float(r["f"] - r["d"]) for r in rows]
    accept = [float(r["a"] - r["d"]) for r in rows if r["a"] is not None]
    to_verify = [float(r["v"] - r["a"]) for r in rows if r["a"] is not None and r["v"]]
    verify = [float(r["f"] - r["v"]) for r in rows if r["v"] is not None]
    refill: list[float] = []
    first_round: dict[str, dict[str, float | None]] = {}
    for wave in sorted({r["wave"] for r in rows}):
        mine = [r for r in rows if r["wave"] == wave]
        starts = sorted(float(r["d"]) for r in mine)
        ends = sorted(float(r["f"]) for r in mine)
        refill += [starts[k] - ends[k - concurrency] for k in range(concurrency, len(starts))]
        # the wave's first `concurrency` dispatches, after its first one: how long the
        # engine takes to send a burst of installs (every slot free at once)
        burst = [d - starts[0] for d in starts[:concurrency]]
        first_round[str(wave)] = {"p50": pct(burst, 0.5), "max": round(burst[-1], 3)}
    return {
        "expected_hold_s": round(expected_hold, 3),
        "hold_s_mean": mean(hold), "hold_s_p50": pct(hold, 0.5), "hold_s_p95": pct(hold, 0.95),
        "overhead_per_task_s": round(statistics.fmean(hold) - expected_hold, 3),
        "claim_to_accepted_s_mean": mean(accept),
        "accepted_to_verifying_s_mean": mean(to_verify),
        "verifying_to_outcome_s_mean": mean(verify),
        "slot_refill_s_mean": mean(refill), "slot_refill_s_p95": pct(refill, 0.95),
        "first_round_dispatch_s": first_round,
        "verifying_reasons": reasons,
    }


def timing_vs_appliances(db_url: str, rollout_id: int,
                         stats: dict[str, Any]) -> dict[str, Any]:
    """A task's overhead split by the simulator's own clock (same machine, epoch seconds;
    means, p50 and p95 over the tasks): `claim_to_install_s`, from the claim to the moment
    the appliance accepted the install (the dispatch: login, version read, guarded write,
    POST); `ready_to_outcome_s`, from the moment the appliance answers again on the new
    version with its services up to the outcome written (the first probe's timing, the
    confirmation requests, the write)."""
    appliances = stats.get("appliances") or {}
    rows = fetch(db_url, """
        SELECT a.name, extract(epoch FROM t.dispatched_at) AS d,
               extract(epoch FROM t.finished_at) AS f,
               extract(epoch FROM t.install_sent_at) AS g
        FROM tasks t JOIN appliances a ON a.id = t.appliance_id
        WHERE t.rollout_id = $1 AND t.state = 'SUCCEEDED'""", rollout_id)
    to_install: list[float] = []
    to_guard: list[float] = []
    to_outcome: list[float] = []
    for r in rows:
        app = appliances.get(r["name"]) or {}
        starts, ends = app.get("install_times") or [], app.get("install_ends") or []
        if len(starts) != 1 or len(ends) != 1:
            continue  # more than one install: no single timeline to split
        to_install.append(starts[0] - float(r["d"]))
        if r["g"] is not None:
            to_guard.append(float(r["g"] - r["d"]))
        to_outcome.append(float(r["f"]) - ends[0])

    def summary(values: list[float]) -> dict[str, float | None] | None:
        if not values:
            return None
        return {"mean": round(statistics.fmean(values), 3),
                "p50": pct(values, 0.5), "p95": pct(values, 0.95)}

    return {"tasks": len(to_install), "claim_to_install_s": summary(to_install),
            "claim_to_guard_s": summary(to_guard), "ready_to_outcome_s": summary(to_outcome)}


def py_spy() -> str:
    """The py-spy binary: the project's virtualenv, else PATH, else pip-installed into it."""
    for candidate in (BIN / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    subprocess.run([str(BIN / "python"), "-m", "pip", "install", "--quiet", "py-spy"],
                   check=True)
    return str(BIN / "py-spy")


# innermost match wins: a sample is charged to the first of these found walking its stack
# from the leaf outwards (so a statement run by a runner counts as "database")
ACTIVITIES = (
    ("asyncpg/", None, "database (asyncpg)"),
    (None, "ApplianceClient._login_locked", "appliance: login"),
    (None, "ApplianceClient.get_task", "appliance: poll install task"),
    (None, "ApplianceClient.get_appliance", "appliance: GET /appliance"),
    (None, "ApplianceClient.get_services", "appliance: GET /services"),
    (None, "ApplianceClient.reconfigure_required", "appliance: reconfigure-required"),
    (None, "ApplianceClient.install", "appliance: install"),
    (None, "ApplianceClient.list_tasks", "appliance: list tasks"),
    (None, "Engine.tick", "engine: scheduler tick"),
    (None, "Engine._lease_loop", "engine: lease renewal"),
    (None, "Engine._progress_loop", "engine: progress flush"),
    (None, "Engine._loop_lag_monitor", "engine: loop-lag monitor"),
    (None, "TaskRunner.", "runner: own code"),
    ("structlog/", None, "logging"),
    ("/logging/", None, "logging"),
)


def _activity(frames: list[dict[str, Any]], stack: list[int]) -> str:
    for i in reversed(stack):
        f = frames[i]
        where, name = f.get("file") or "", f["name"]
        for file_part, name_part, label in ACTIVITIES:
            if (file_part and file_part in where) or (name_part and name.startswith(name_part)):
                return label
    return "event loop, transports, protocol callbacks (no task frame)"


def profile_summary(path: Path, top: int = 25) -> dict[str, Any]:
    """Top functions of a py-spy speedscope profile (idle samples are not recorded, so
    these are shares of the engine's CPU): self (the function is the innermost frame of the
    sample) and total (the function is anywhere on the sample's stack); functions are
    merged over their lines, and `top_files_self` sums self time by source file."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]

    def short(where: str) -> str:
        for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
            if marker in where:
                return where.split(marker, 1)[1]
        return where

    labels = [f"{f['name']} ({short(f.get('file') or '?')})" for f in frames]
    files = [short(f.get("file") or "?") for f in frames]
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    by_activity: Counter[str] = Counter()
    samples = 0.0
    for prof in data["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            if not stack:
                continue
            samples += weight
            own[labels[stack[-1]]] += weight
            by_file[files[stack[-1]]] += weight
            by_activity[_activity(frames, stack)] += weight
            for label in {labels[i] for i in stack}:
                total[label] += weight
    if not samples:
        return {"samples": 0}

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"pct": round(100 * v / samples, 1), "function": k}
                for k, v in counter.most_common(top)]

    return {
        "sampled_cpu_s": round(samples, 1) if data["profiles"][0].get("unit") == "seconds"
        else None,
        "cpu_by_activity": share(by_activity),
        "top_self": share(own),
        "top_total": share(total),
        "top_files_self": share(by_file),
    }


@contextlib.contextmanager
def never_answering_receiver() -> Any:
    """A webhook receiver on 127.0.0.1 that accepts every connection and never answers
    (a thread holding the sockets open): its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


def webhook_deliveries(db_url: str) -> dict[str, Any]:
    """What the notifier did with the hanging receiver's deliveries."""
    rows = fetch(db_url, """SELECT state, count(*) AS n, max(attempts) AS attempts
                            FROM webhook_deliveries GROUP BY state""")
    return {"receiver": "accepts connections, never answers",
            "deliveries": {r["state"]: int(r["n"]) for r in rows},
            "max_attempts": max((int(r["attempts"]) for r in rows), default=0)}


def start_when_listening(env: dict[str, str], db_url: str, rollout_id: int,
                         engines: list[subprocess.Popen[Any]], deadline: float) -> float:
    """Wait until every engine process LISTENs for operator actions, then start the rollout
    (`orchestrator rollout start`, whose NOTIFY wakes them); seconds from spawn to ready."""
    spawned = time.monotonic()
    while True:
        if any(engine.poll() is not None for engine in engines):
            raise RuntimeError("an engine exited before the rollout started")
        if listening_engines(db_url) >= len(engines):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the engines did not listen within 120 s")
        time.sleep(0.05)
    ready = time.monotonic() - spawned
    cli(env, "rollout", "start", str(rollout_id))
    return ready


def dispatches_by_pid(db_url: str) -> dict[int, int]:
    """Engine process id -> the installs it dispatched (task events' owner: host:pid:tag)."""
    rows = fetch(db_url, """SELECT detail->>'owner' AS owner, count(*) AS n FROM task_events
                            WHERE to_state = 'DISPATCHING' GROUP BY 1""")
    return {int(str(r["owner"]).split(":")[1]): int(r["n"]) for r in rows
            if r["owner"] and str(r["owner"]).count(":") == 2}


def stop_when_ended(db_url: str, rollout_id: int, engine_pids: list[int]) -> Any:
    """An on_poll for wait_child: SIGTERM to the engine processes (not to py-spy, which then
    writes its profile) once the rollout is in a terminal state (checked every 0.5 s)."""
    state = {"next": 0.0, "sent": False}

    def poll() -> None:
        now = time.monotonic()
        if state["sent"] or now < state["next"]:
            return
        state["next"] = now + 0.5
        rows = fetch(db_url, "SELECT finished_at IS NOT NULL AS done FROM rollouts "
                             "WHERE id = $1", rollout_id)
        if rows and rows[0]["done"]:
            state["sent"] = True
            for pid in engine_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    return poll


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=1_000)
    parser.add_argument("--install-seconds", type=float, default=20.0)
    parser.add_argument("--reboot-seconds", type=float, default=5.0)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--install-jitter", type=float, default=0.0,
                        help="simulator: each install lasts install-seconds x (1 +- this), "
                             "uniform (simulator default 0.2). 0 (the default here): fixed "
                             "durations, as ideal_s assumes")
    parser.add_argument("--services-starting-seconds", type=float, default=0.0,
                        help="simulator: key services still starting after the reboot")
    parser.add_argument("--waves", default="1%,10%,100%")
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                        help="an orchestrator setting for the engine process, e.g. "
                             "engine_poll_interval=0.5 (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="the engine is stopped after this many seconds")
    parser.add_argument("--profile-out", metavar="FILE",
                        help="run the engine under py-spy; write a speedscope profile here")
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    parser.add_argument("--cold-start", action="store_true",
                        help="start the engine after the rollout (its start-up counts in "
                             "wall_s) instead of before it")
    parser.add_argument("--hanging-webhook", action="store_true",
                        help="register a webhook for every event whose receiver accepts "
                             "connections and never answers (compare wall_s with a run "
                             "without: a dead receiver must not slow the rollout)")
    parser.add_argument("--uvloop", action="store_true",
                        help="what-if: run the engine on uvloop's event loop (uvloop must be "
                             "importable by the engine, e.g. on PYTHONPATH)")
    parser.add_argument("--replicas", type=int, default=1,
                        help="engine processes sharing the rollout (as replicas of a "
                             "deployment); CPU is their sum, peak RSS the largest")
    opts = parser.parse_args()
    if opts.replicas < 1:
        parser.error(f"--replicas must be at least 1, got {opts.replicas}")
    if opts.replicas > 1:
        clash = [flag for flag, given in (("--profile-out", opts.profile_out),
                                          ("--cold-start", opts.cold_start),
                                          ("--uvloop", opts.uvloop)) if given]
        if clash:
            parser.error(f"--replicas {opts.replicas} measures plain engine processes: "
                         f"not with {', '.join(clash)}")
    return run_bench("rollout", run, opts)


def run(opts: argparse.Namespace, procs: Processes, db: Any, tmp: Path,
        bench_started: float, load_start: list[float]) -> int:
    sim = start_simulator(
        procs, tmp, appliances=opts.appliances, sites=opts.sites,
        install_seconds=opts.install_seconds, reboot_seconds=opts.reboot_seconds,
        services_starting_seconds=opts.services_starting_seconds,
        install_jitter=opts.install_jitter,
    )
    settings: dict[str, Any] = {
        "engine_max_tasks": max(2000, opts.concurrency),
        "appliance_max_connections": max(1000, opts.concurrency),
        # every simulated appliance shares one host:port: no per-host limit
        "appliance_max_connections_per_host": 0,
    }
    env = orchestrator_env(db.url, **with_given_settings(settings, opts.setting))
    cli(env, "migrate")
    cli(env, "appliances", "import", str(sim.inventory))
    hanging = contextlib.ExitStack()
    if opts.hanging_webhook:
        url = hanging.enter_context(never_answering_receiver())
        cli(env, "webhooks", "add", "--name", "hanging", "--url", url)
    waves: list[Any] = [w if w.endswith("%") else int(w) for w in opts.waves.split(",")]
    strategy = {
        "waves": waves, "max_concurrency": opts.concurrency, "preflight": "off",
        "reboot_grace": max(600.0, 10 * opts.reboot_seconds),
        "task_timeout": max(3600.0, 10 * (opts.install_seconds + opts.reboot_seconds)),
    }
    # the fixed cost of an engine process (interpreter, imports, pool, exit) with no work
    idle = procs.popen([str(BIN / "orchestrator"), "run", "--until-idle"], env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    idle_run = wait_child(idle, t0 + 120, t0)
    rollout_id = create_rollout(env, tmp, strategy, start=opts.cold_start)
    counter = StatementCounter(db)  # from here on only the engine uses the database
    counter.before()

    engine_args = ["run", *(["--until-idle"] if opts.cold_start else [])]
    command = [str(BIN / "orchestrator"), *engine_args]
    if opts.uvloop:
        command = [str(BIN / "python"), "-c", UVLOOP_ENGINE.format(args=engine_args)]
    profile = Path(opts.profile_out).resolve() if opts.profile_out else None
    if profile:
        command = [py_spy(), "record", "-o", str(profile), "--format", "speedscope",
                   "--rate", str(opts.profile_rate), "--nonblocking", "--", *command]
    sampler = ProcSampler(interval=0.5)
    sampler.watch("simulator", sim.proc.pid)
    if db.postmaster_pid:
        sampler.watch("postgres", db.postmaster_pid, tree=True)
    err_paths = [tmp / ("engine.stderr" if r == 0 else f"engine-{r + 1}.stderr")
                 for r in range(opts.replicas)]
    started = time.monotonic()
    engines: list[subprocess.Popen[Any]] = []
    for err_path in err_paths:
        with err_path.open("w") as err:
            engines.append(procs.popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                       stderr=err))
    engine = engines[0]
    engine_pid = engine.pid
    if profile:  # measure the orchestrator under py-spy, not py-spy itself
        for _ in range(200):
            kids = proc_children(engine.pid)
            if kids:
                engine_pid = kids[0]
                break
            time.sleep(0.01)
    sampler.watch("orchestrator", engine_pid)
    for r, other in enumerate(engines[1:], start=2):
        sampler.watch(f"orchestrator-{r}", other.pid)
    sampler.start()
    on_poll = None
    if not opts.cold_start:
        engine_ready_s = start_when_listening(env, db.url, rollout_id, engines, started + 120)
        on_poll = stop_when_ended(db.url, rollout_id,
                                  [engine_pid, *(e.pid for e in engines[1:])])
    with hanging:
        results = [wait_child(engine, started + opts.timeout, started, on_poll)]
        # the others were sent SIGTERM with the first (or are stopped now, after a timeout)
        results += [wait_child(e, time.monotonic() + 30, started) for e in engines[1:]]
    result = ChildResult(
        returncode=next((r.returncode for r in results if r.returncode != 0), 0),
        wall_s=max(r.wall_s for r in results),
        cpu_user_s=sum(r.cpu_user_s for r in results),
        cpu_sys_s=sum(r.cpu_sys_s for r in results),
        maxrss_mb=max(r.maxrss_mb for r in results),
        timed_out=any(r.timed_out for r in results))
    sampler.stop()
    statements = counter.after()
    stats = sim.stats(appliances=True)
    outcome = rollout_outcome(db.url, rollout_id)

    if profile:
        cpu_s = sampler.totals()["orchestrator"]
        peak_rss_mb = sampler.hwm_kb.get("orchestrator", 0) / 1024
        cpu_source = "/proc/<pid>/stat sampled every 0.5 s (under py-spy)"
    else:
        cpu_s = result.cpu_s
        peak_rss_mb = result.maxrss_mb
        cpu_source = "os.wait4 rusage of the engine process"
    n = opts.appliances
    sizes = [int(w["planned_size"]) for w in outcome["waves"]]
    slot = opts.install_seconds + opts.reboot_seconds
    ideal = ideal_seconds(sizes, opts.concurrency, slot)
    jitter_ideal = jitter_ideal_seconds(sizes, opts.concurrency, opts)
    wall = outcome["wall_s"]
    dispatched = dispatches_by_pid(db.url) if opts.replicas > 1 else {}
    lines = [line for path in err_paths for line in path.read_text().splitlines()]
    stopped = [json.loads(line) for line in lines if '"engine_stopped"' in line]
    errors = [line for line in lines
              if '"level": "error"' in line or '"level":"error"' in line]
    on_target = int(stats["versions"].get(TARGET_VERSION, 0))
    report: dict[str, Any] = {
        "appliances": n, "concurrency": opts.concurrency, "sites": opts.sites,
        "install_seconds": opts.install_seconds, "reboot_seconds": opts.reboot_seconds,
        "install_jitter": opts.install_jitter,
        "services_starting_seconds": opts.services_starting_seconds,
        "waves": [{"size": w["planned_size"],
                   "ideal_s": ideal_seconds([int(w["planned_size"])], opts.concurrency, slot),
                   "start_s": w["start_s"], "first_dispatch_s": w["first_dispatch_s"],
                   "last_finish_s": w["last_finish_s"], "end_s": w["end_s"]}
                  for w in outcome["waves"]],
        "wall_s": round(wall, 2) if wall is not None else None,
        "engine_start": "cold: started after the rollout" if opts.cold_start else
                        f"warm: listening {engine_ready_s:.2f} s after spawn, before the "
                        "rollout started",
        "process_wall_s": round(result.wall_s, 2),
        "ideal_s": round(ideal, 2),
        "efficiency": round(ideal / wall, 3) if wall else None,
        "ideal_with_jitter_s": round(jitter_ideal, 2),
        "efficiency_vs_jitter_ideal": round(jitter_ideal / wall, 3) if wall else None,
        "orchestrator_cpu_s": round(cpu_s, 2),
        "orchestrator_cpu_user_s": round(result.cpu_user_s, 2) if not profile else None,
        "orchestrator_cpu_sys_s": round(result.cpu_sys_s, 2) if not profile else None,
        "cpu_ms_per_appliance": round(1000 * cpu_s / n, 3),
        "cpu_source": cpu_source,
        "engine_idle_run_cpu_s": round(idle_run.cpu_s, 2),
        "cpu_ms_per_appliance_excl_startup": round(
            1000 * max(0.0, cpu_s - idle_run.cpu_s) / n, 3),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "requests_per_appliance": round(stats["requests"] / n, 2),
        "requests_per_appliance_by_kind": {
            k: round(v / n, 2) for k, v in sorted(stats["requests_by_kind"].items())},
        "db_statements_per_appliance": round(
            (statements["statements"] if statements["statements"] is not None
             else statements["transactions"]) / n, 2),
        "db_statements_source": counter.source,
        "db_transactions_per_appliance": round(statements["transactions"] / n, 2),
        "db_top_statements_per_appliance": [
            {"per_appliance": round(s["calls"] / n, 2), "query": s["query"]}
            for s in statements["top"]],
        "db_statement_times_ms": statement_times(db),
        "db_slow_statements": slow_statements(db, rollout_id),
        "duplicate_installs": stats["duplicate_installs"],
        "installs_accepted": stats["installs_accepted"],
        "install_responses": stats["install_responses"],
        "max_in_flight": stats["max_in_flight"],
        "on_target_version": on_target,
        "rollout_state": outcome["state"],
        "abort_reason": outcome["abort_reason"],
        "tasks": outcome["tasks"],
        "timing": task_timing(db.url, rollout_id, opts.concurrency,
                              0.1 + opts.install_seconds + opts.reboot_seconds
                              + opts.services_starting_seconds),
        "timing_vs_appliances": timing_vs_appliances(db.url, rollout_id, stats),
        "webhook": webhook_deliveries(db.url) if opts.hanging_webhook else None,
        "engine_exit_code": result.returncode,
        "engine_timed_out": result.timed_out,
        "engine_error_lines": len(errors),
        "max_loop_lag_ms": max((s.get("max_loop_lag_ms") or 0 for s in stopped),
                               default=None),
        "engine_replicas": opts.replicas,
        "replicas": [{"replica": r + 1, "cpu_s": round(res.cpu_s, 2),
                      "peak_rss_mb": round(res.maxrss_mb, 1), "exit_code": res.returncode,
                      "dispatches": dispatched.get(engines[r].pid, 0)}
                     for r, res in enumerate(results)] if opts.replicas > 1 else None,
        "other_cpu_s": {k: v for k, v in sampler.totals().items()
                        if not k.startswith("orchestrator")},
        "settings": settings,
        "event_loop": "uvloop" if opts.uvloop else "asyncio",
        "strategy": strategy,
        "database": db.kind,
        "tree": git_state(),
        "bench_wall_s": round(time.monotonic() - bench_started, 1),
        "machine": machine(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }
    report["goals"] = GOALS
    report["goals_met"] = {
        "efficiency": bool(report["efficiency"] and report["efficiency"] >= GOALS["efficiency"]),
        "cpu_ms_per_appliance":
            report["cpu_ms_per_appliance"] <= GOALS["cpu_ms_per_appliance"],
        "peak_rss_mb": report["peak_rss_mb"] <= GOALS["peak_rss_mb"],
        "duplicate_installs": report["duplicate_installs"] == 0,
        "all_on_target": on_target == n and outcome["state"] == "SUCCEEDED",
    }
    if errors:
        report["engine_error_sample"] = errors[:3]
    if profile:
        report["profile"] = str(profile)
        if profile.exists():
            report["profile_summary"] = profile_summary(profile)
    print(json.dumps(report))
    return 0 if result.returncode == 0 and not result.timed_out else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
