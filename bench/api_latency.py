"""API latency benchmark: a dashboard polling `GET /api/v1/rollouts/{id}` 50 times a second
while the same process runs a 2,000-appliance rollout.

PostgreSQL, the simulator and the orchestrator run as separate processes:

- PostgreSQL: a fresh database on ORCHESTRATOR_DATABASE_URL (or TEST_DATABASE_URL) when set,
  dropped at the end; else an embedded server in a temporary data directory;
- the simulator: `python -m orchestrator.simulator` without faults;
- the orchestrator: `orchestrator serve` (the REST API and the engine in one process), with
  the rollout created and started through the API by an operator token.

The dashboard (this script, a viewer token) sends one request every 20 ms on a fixed
schedule (open loop: a slow answer does not delay the next request, so slow answers are
not hidden) from the rollout's start until it ends, and measures each answer.

    .venv/bin/python bench/api_latency.py                          # 2,000 appliances
    .venv/bin/python bench/api_latency.py --appliances 500 --rate 20   # quick
    .venv/bin/python bench/api_latency.py --appliances 100000 --concurrency 5000 \
        --install-seconds 20 --reboot-seconds 5 --separate-engine --tasks-page --timeout 1500

`--separate-engine` runs the engine as `orchestrator run` and the API as `serve
--no-engine` (two processes, as a large installation would); `--tasks-page` makes every
other request `GET /api/v1/rollouts/{id}/tasks?state=INSTALLING&limit=100` (a dashboard's
"what is installing now"), with its own p99 in `p99_ms_by_kind`.

Prints one JSON object: latency percentiles (ms), requests, errors, the rollout's outcome,
and the machine. Goal: p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BIN,
    ROOT,
    TARGET_VERSION,
    Processes,
    ProcSampler,
    cli,
    database,
    fetch,
    free_port,
    machine,
    orchestrator_env,
    remove,
    start_simulator,
    temp_dir,
)

GOAL_P99_MS = 50.0
TERMINAL = ("SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def wait_ready(base: str, proc: subprocess.Popen[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("orchestrator serve exited before it was ready")
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("orchestrator serve did not become ready")
            await asyncio.sleep(0.1)


async def dashboard(base: str, viewer: str, operator: str, strategy: dict[str, Any],
                    rate: float, timeout: float, tasks_page: bool = False) -> dict[str, Any]:
    """Create and start the rollout (operator), then poll it (viewer) until it ends; with
    `tasks_page`, every other request asks for the page of its installing tasks instead."""
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {operator}"}
    ) as ops:
        body = {"name": "bench", "target_version": TARGET_VERSION, "strategy": strategy}
        async with ops.post(f"{base}/api/v1/rollouts", json=body) as resp:
            created = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"create: {resp.status} {created}")
        rid = created["id"]
        async with ops.post(f"{base}/api/v1/rollouts/{rid}/start") as resp:
            if resp.status != 200:
                raise RuntimeError(f"start: {resp.status} {await resp.text()}")

    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {"rollout": [], "tasks_page": []}
    errors: dict[str, int] = {}
    states: dict[str, int] = {}
    last: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=200)
    url = f"{base}/api/v1/rollouts/{rid}"
    page_url = f"{url}/tasks?state=INSTALLING&limit=100"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {viewer}"},
                                     connector=connector) as session:

        async def poll(kind: str) -> None:
            started = time.perf_counter()
            try:
                async with session.get(page_url if kind == "tasks_page" else url) as resp:
                    data = await resp.json()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            took = time.perf_counter() - started
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                return
            latencies.append(took * 1000)
            by_kind[kind].append(took * 1000)
            if kind == "rollout":
                states[data["state"]] = states.get(data["state"], 0) + 1
                last.update(data)

        interval = 1.0 / rate
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        pending: set[asyncio.Task[None]] = set()
        n = 0
        while True:
            task = asyncio.create_task(
                poll("tasks_page" if tasks_page and n % 2 else "rollout"))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
            if last.get("state") in TERMINAL or loop.time() - t0 > timeout:
                break
            await asyncio.sleep(max(0.0, t0 + n * interval - loop.time()))
        await asyncio.gather(*pending)
        wall = loop.time() - t0
    return {
        "rollout": rid, "latencies": latencies, "by_kind": by_kind, "errors": errors,
        "states": states,
        "last": last, "wall_s": wall, "sent": n,
    }


def histogram_quantile(text: str, name: str, q: float,
                       labels: str = "") -> float | None:
    """A quantile (ms) from the cumulative buckets of a Prometheus histogram."""
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if not line.startswith(f"{name}_bucket{{") or labels not in line:
            continue
        le = line.split('le="', 1)[1].split('"', 1)[0]
        buckets.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q / 100 * total:
            return round(le * 1000, 1) if le != math.inf else None
    return None


async def server_view(base: str) -> dict[str, Any]:
    """What the serve process measured itself: its event-loop lag and the time it took to
    answer the dashboard's requests (bucket upper bounds, ms)."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    route = 'route="/api/v1/rollouts/{id}"'
    return {
        "answer_p50_ms_le": histogram_quantile(
            text, "orchestrator_api_request_duration_seconds", 50, route),
        "answer_p99_ms_le": histogram_quantile(
            text, "orchestrator_api_request_duration_seconds", 99, route),
        "event_loop_lag_p99_ms_le": histogram_quantile(
            text, "orchestrator_event_loop_lag_seconds", 99),
        "event_loop_lag_max_ms": next(
            (round(float(line.rsplit(" ", 1)[1]) * 1000, 1) for line in text.splitlines()
             if line.startswith("orchestrator_engine_max_loop_lag_seconds ")), None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=2000)
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--install-seconds", type=float, default=4.0)
    parser.add_argument("--reboot-seconds", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=50.0, help="dashboard requests/s")
    parser.add_argument("--separate-engine", action="store_true",
                        help="the engine in its own process (`orchestrator run`), the API "
                             "in `serve --no-engine`, as a large installation runs them")
    parser.add_argument("--tasks-page", action="store_true",
                        help="every other request asks for a page of the installing tasks")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="stop polling after this many seconds")
    opts = parser.parse_args()
    started = time.monotonic()
    tmp = temp_dir("orch-bench-api-")
    try:
        with Processes() as procs, database("bench_api", tmp) as db:
            return run(opts, procs, db, tmp, started)
    except KeyboardInterrupt:
        print(json.dumps({"error": "interrupted"}))
        return 130
    finally:
        remove(tmp)


def run(opts: argparse.Namespace, procs: Processes, db: Any, tmp: Path,
        bench_started: float) -> int:
    sim = start_simulator(
        procs, tmp, appliances=opts.appliances, sites=opts.sites,
        install_seconds=opts.install_seconds, reboot_seconds=opts.reboot_seconds,
        services_starting_seconds=0.0,
    )
    settings = {
        "engine_max_tasks": max(2000, opts.concurrency),
        "appliance_max_connections": max(1000, opts.concurrency),
        "appliance_max_connections_per_host": 0,  # one simulator host:port for all
    }
    env = orchestrator_env(db.url, **settings)
    cli(env, "migrate")
    cli(env, "appliances", "import", str(sim.inventory))
    viewer = cli(env, "tokens", "create", "--name", "dashboard", "--role", "viewer").strip()
    operator = cli(env, "tokens", "create", "--name", "bench", "--role", "operator").strip()
    port = free_port()
    err_path = tmp / "serve.stderr"
    engine = None
    if opts.separate_engine:  # the engine in a process of its own, the API without one
        engine = procs.popen([str(BIN / "orchestrator"), "run"], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with err_path.open("w") as err:
        serve = procs.popen([str(BIN / "orchestrator"), "serve", "--port", str(port),
                             *(["--no-engine"] if opts.separate_engine else [])],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    asyncio.run(wait_ready(base, serve, 60))
    strategy = {
        "waves": ["1%", "10%", "100%"], "max_concurrency": opts.concurrency,
        "preflight": "off",
        "reboot_grace": max(600.0, 10 * opts.reboot_seconds),
        "task_timeout": max(3600.0, 10 * (opts.install_seconds + opts.reboot_seconds)),
    }
    sampler = ProcSampler(interval=0.5)
    sampler.watch("orchestrator_serve", serve.pid)
    if engine is not None:
        sampler.watch("orchestrator_run", engine.pid)
    sampler.watch("simulator", sim.proc.pid)
    if db.postmaster_pid:
        sampler.watch("postgres", db.postmaster_pid, tree=True)
    sampler.start()
    result = asyncio.run(dashboard(base, viewer, operator, strategy, opts.rate,
                                   opts.timeout, opts.tasks_page))
    sampler.stop()
    server = asyncio.run(server_view(base))
    latencies = result["latencies"]
    last = result["last"]
    p99 = percentile(latencies, 99)
    report: dict[str, Any] = {
        "appliances": opts.appliances, "concurrency": opts.concurrency,
        "rate_hz": opts.rate, "requests_sent": result["sent"],
        "requests_ok": len(latencies), "errors": result["errors"],
        "poll_wall_s": round(result["wall_s"], 1),
        "achieved_rate_hz": round(len(latencies) / result["wall_s"], 1)
        if result["wall_s"] else None,
        "p50_ms": _ms(percentile(latencies, 50)), "p90_ms": _ms(percentile(latencies, 90)),
        "p99_ms": _ms(p99), "p999_ms": _ms(percentile(latencies, 99.9)),
        "max_ms": _ms(max(latencies) if latencies else None),
        "p99_ms_by_kind": {kind: _ms(percentile(values, 99))
                           for kind, values in result["by_kind"].items() if values},
        "polls_by_rollout_state": result["states"],
        "rollout_state": last.get("state"), "tasks": (last.get("counts") or {}).get("by_state"),
        "server": server,
        "cpu_s": sampler.totals(),
        "goal": {"p99_ms": GOAL_P99_MS},
        "goal_met": p99 is not None and p99 <= GOAL_P99_MS and not result["errors"],
        "db_top_statements_by_time": top_statements(db),
        "database": db.kind, "bench_wall_s": round(time.monotonic() - bench_started, 1),
        "machine": machine(),
    }
    print(json.dumps(report))
    return 0 if report["goal_met"] and last.get("state") == "SUCCEEDED" else 1


def top_statements(db: Any, n: int = 8) -> list[dict[str, Any]] | None:
    """The statements that took the database's time during the run (pg_stat_statements,
    all processes: engine, API, bench), the most first; None without the extension."""
    if not db.stat_statements:
        return None
    rows = fetch(db.url, """
        SELECT calls, total_exec_time, mean_exec_time, query
        FROM bench_stats.pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        ORDER BY total_exec_time DESC LIMIT $1""", n)
    return [{"total_s": round(float(r["total_exec_time"]) / 1000, 1), "calls": int(r["calls"]),
             "mean_ms": round(float(r["mean_exec_time"]), 2),
             "query": " ".join(r["query"].split())[:200]} for r in rows]


def _ms(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
