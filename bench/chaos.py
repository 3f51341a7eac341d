"""Chaos benchmark: SIGKILL the engine again and again mid-rollout; nothing may be lost or
installed twice.

The simulator, PostgreSQL and the engine run as separate processes. The engine is killed
`--kills` times: half of the runs at a random moment (SIGKILL from outside), the other half
by the engine itself right after an appliance accepted an install and before INSTALLING was
recorded (the failpoint `after_install_sent`, set to fire on the N-th accepted install of
that engine, N drawn from --seed: a seed repeats its plan), the worst moment there is.
Each time a new engine process starts; it reclaims the dead one's tasks once their leases expire and
reconciles them with the appliances. A last engine runs until the rollout ends.

    .venv/bin/python bench/chaos.py --appliances 500 --kills 10 --seed 1

Prints one JSON object: kills, failpoints_fired (read from the failpoints' log),
duplicate_installs, lost_tasks (not terminal at the end),
truth_mismatches, completed, limits_held (the simulator's highest installs in flight, in all
and per site, against --concurrency, --per-site and --site-limit), plus context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from orchestrator.store.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET = "9.0.1-20020"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


@contextlib.contextmanager
def database(tmp: Path, keep: bool = False) -> Iterator[tuple[str, str]]:
    """(server URL, URL of a fresh database for this run)."""
    server = os.environ.get("ORCHESTRATOR_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    embedded = None
    if not server:
        embedded = EmbeddedPostgres(tmp / "pg", announce=lambda _m: None)
        server = embedded.start()
    name = f"chaos_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    try:
        yield server, with_db(server, name)
    finally:
        if not keep:
            asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if embedded:
            embedded.release()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def sim_stats(sim_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{sim_url}/_sim/stats", timeout=30) as resp:  # noqa: S310
        data: dict[str, Any] = json.loads(resp.read())
        return data


def wait_for_simulator(sim_url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the simulator exited early")
        try:
            sim_stats(sim_url)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the simulator did not start")


async def outcome(db_url: str, versions: dict[str, str], installs: dict[str, int],
                  task_timeout: float) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        # a task may not stay unfinished past task_timeout after its (last) dispatch; the
        # slack covers one polling interval of the engine
        over_timeout = await conn.fetchval(
            """SELECT count(*) FROM tasks WHERE dispatched_at IS NOT NULL
               AND coalesce(finished_at, now()) - dispatched_at
                   > make_interval(secs => $1 + 10)""",
            task_timeout,
        )
        rows = await conn.fetch(
            """SELECT a.name, t.state, t.final_version, t.error_code FROM tasks t
               JOIN appliances a ON a.id = t.appliance_id"""
        )
        rollout = await conn.fetchrow("SELECT state, abort_reason FROM rollouts")
        held = await conn.fetchval("SELECT count(*) FROM tasks WHERE holds_slot")
        reclaims = await conn.fetchval(
            "SELECT count(*) FROM task_events WHERE detail ? 'previous_owner'"
        )
    finally:
        await conn.close()
    lost = [r["name"] for r in rows if r["state"] in ("PENDING", "DISPATCHING", "INSTALLING",
                                                      "VERIFYING")]
    mismatches = []
    for r in rows:
        actual = versions.get(r["name"])
        wrong = (
            (r["state"] in ("SUCCEEDED", "SKIPPED") and actual != TARGET)
            or (r["state"] in ("FAILED", "CANCELLED") and actual == TARGET)
            # SKIPPED says "it was there already": not after an install of ours was accepted
            or (r["state"] == "SKIPPED" and installs.get(r["name"]))
            # TIMED_OUT records a final version only once its held slot was freed (the
            # appliance seen idle): then it must be the appliance's
            or (r["final_version"] is not None and r["final_version"] != actual)
            # "the install did not apply" claims the appliance acknowledged one
            or (r["error_code"] == "VERSION_MISMATCH" and not installs.get(r["name"]))
        )
        if wrong:
            mismatches.append({"appliance": r["name"], "recorded": r["state"],
                               "simulator": actual})
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    assert rollout is not None
    return {"lost": lost, "mismatches": mismatches, "states": states,
            "rollout_state": rollout["state"], "abort_reason": rollout["abort_reason"],
            "reclaims": int(reclaims), "over_timeout": int(over_timeout),
            "held": int(held)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=500)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--install-seconds", type=float, default=2.0)
    parser.add_argument("--reboot-seconds", type=float, default=1.0)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--max-run-seconds", type=float, default=6.0,
                        help="an engine killed from outside lives at most this long")
    parser.add_argument("--profile", help="simulator fault profile (e.g. mixed)")
    parser.add_argument("--waves", default="1%,10%,100%",
                        help="wave sizes (a single 100%% wave keeps installs flowing while "
                             "the engines are killed: no wave gate waits for a verdict)")
    parser.add_argument("--per-site", type=int, default=None,
                        help="the rollout's per_site_concurrency (default: none)")
    parser.add_argument("--site-limit", type=int, default=None,
                        help="a fleet-wide limit on every site (orchestrator sites set-limit)")
    parser.add_argument("--request-timeout", type=float, default=5.0)
    parser.add_argument("--appliance-retries", type=int, default=2)
    parser.add_argument("--dispatch-retries", type=int, default=3)
    parser.add_argument("--reboot-grace", type=float, default=60.0)
    parser.add_argument("--task-timeout", type=float, default=600.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep-database", action="store_true",
                        help="keep the run's database for inspection (external server only)")
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    tmp = Path(tempfile.mkdtemp(prefix="orch-chaos-"))
    started = time.monotonic()
    sim: subprocess.Popen[bytes] | None = None
    engine: subprocess.Popen[Any] | None = None
    try:
        with database(tmp, keep=opts.keep_database) as (_server, db_url):
            env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
            env |= {
                "ORCHESTRATOR_DATABASE_URL": db_url, "ORCHESTRATOR_LOG_LEVEL": "warning",
                "ORCHESTRATOR_LOG_FORMAT": "json", "APPLIANCE_SIM_CREDENTIALS": "admin:admin",
                "ORCHESTRATOR_APPLIANCE_ALLOW_HTTP": "true",
                "ORCHESTRATOR_APPLIANCE_ALLOW_LOCAL_ADDRESSES": "true",
                "ORCHESTRATOR_ENGINE_LEASE_SECONDS": str(opts.lease_seconds),
                "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.5",
                "ORCHESTRATOR_APPLIANCE_MAX_CONNECTIONS_PER_HOST": "0",
                "ORCHESTRATOR_APPLIANCE_REQUEST_TIMEOUT": str(opts.request_timeout),
                "ORCHESTRATOR_APPLIANCE_RETRIES": str(opts.appliance_retries),
            }
            port = free_port()
            sim_url = f"http://127.0.0.1:{port}"
            inventory = tmp / "fleet.csv"
            sim = subprocess.Popen(
                [str(BIN / "python"), "-m", "orchestrator.simulator",
                 "--appliances", str(opts.appliances), "--sites", str(opts.sites),
                 "--port", str(port), "--seed", str(opts.seed),
                 "--install-seconds", str(opts.install_seconds),
                 "--reboot-seconds", str(opts.reboot_seconds),
                 "--services-starting-seconds", "0.3", "--write-inventory", str(inventory),
                 # accept a second install and count it: the ground truth sees every one
                 "--duplicate-install", "accept",
                 *(["--profile", opts.profile] if opts.profile else [])],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            wait_for_simulator(sim_url, sim, 60)

            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                result = subprocess.run([str(BIN / "orchestrator"), *args], env=env, cwd=ROOT,
                                        capture_output=True, text=True, timeout=300,
                                        check=False)
                if result.returncode != 0:
                    raise RuntimeError(f"orchestrator {' '.join(args)}: {result.stderr}")
                return result

            cli("migrate")
            cli("appliances", "import", str(inventory))
            if opts.site_limit is not None:
                for n in range(1, opts.sites + 1):
                    cli("sites", "set-limit", f"site-{n:02d}", str(opts.site_limit))
            strategy = tmp / "strategy.json"
            strategy.write_text(json.dumps({
                "waves": [w if w.endswith("%") else int(w) for w in opts.waves.split(",")],
                "max_concurrency": opts.concurrency, "preflight": "off",
                "reboot_grace": opts.reboot_grace, "task_timeout": opts.task_timeout,
                "max_failures": "100%", "dispatch_retries": opts.dispatch_retries,
                **({"per_site_concurrency": opts.per_site} if opts.per_site else {}),
                # faults are the point here, in the canary too: only lost or doubled
                # installs and wrong outcomes count, not the failure policy
                "canary_max_failures": opts.appliances,
            }))
            cli("rollout", "create", "--name", "chaos", "--version", TARGET,
                "--strategy", str(strategy), "--start")

            kills = 0
            self_kills = 0
            # each fired failpoint appends a line here (fsynced before its SIGKILL)
            failpoint_log = tmp / "failpoints.log"
            deadline = started + opts.timeout
            for k in range(opts.kills):
                at_install = k % 2 == 1
                run_env = dict(env)
                if at_install:
                    # deterministic: die right after the N-th install this engine had
                    # accepted, N drawn from the run's seeded generator
                    run_env["ORCH_FAILPOINTS"] = f"after_install_sent=#{rng.randint(1, 5)}"
                    run_env["ORCH_FAILPOINTS_LOG"] = str(failpoint_log)
                engine = subprocess.Popen([str(BIN / "orchestrator"), "run"], env=run_env,
                                          cwd=ROOT, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                life = rng.uniform(1.0, opts.max_run_seconds)
                born = time.monotonic()
                while engine.poll() is None and time.monotonic() - born < (
                    opts.max_run_seconds * 4 if at_install else life
                ):
                    time.sleep(0.05)
                if engine.poll() is None:
                    engine.send_signal(signal.SIGKILL)
                engine.wait()
                if engine.returncode == -signal.SIGKILL:
                    kills += 1
                    self_kills += at_install and time.monotonic() - born < opts.max_run_seconds * 4
                if time.monotonic() > deadline:
                    break
            # the survivor: runs until the rollout is over
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            # at info: its clean stop (engine_stopped, with the loop lag) is an info line
            engine = subprocess.Popen([str(BIN / "orchestrator"), "run", "--until-idle"],
                                      env=env | {"ORCHESTRATOR_LOG_LEVEL": "info"}, cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
            try:
                _, err = engine.communicate(timeout=max(30.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                engine.kill()
                _, err = engine.communicate()
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            last_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            stats = sim_stats(sim_url)
            versions = {n: a["version"] for n, a in stats["appliances"].items()}
            installs = {n: a["installs_accepted"] for n, a in stats["appliances"].items()}
            result = asyncio.run(outcome(db_url, versions, installs, opts.task_timeout))
            lag = [json.loads(line).get("max_loop_lag_ms") for line in
                   (err or "").splitlines() if '"engine_stopped"' in line]
            report = {
                "appliances": opts.appliances,
                "kills": kills,
                "kills_right_after_install_sent": int(self_kills),
                # from the failpoints' own log: how many really fired
                "failpoints_fired": len(failpoint_log.read_text().splitlines())
                if failpoint_log.exists() else 0,
                "duplicate_installs": stats["duplicate_installs"],
                "lost_tasks": len(result["lost"]),
                "truth_mismatches": len(result["mismatches"]),
                # the rollout ran to its end (no kill may make it give up or fail whole)
                "completed": result["rollout_state"] in ("SUCCEEDED", "COMPLETED_WITH_FAILURES")
                and not result["lost"],
                "rollout_state": result["rollout_state"],
                "tasks": result["states"],
                "reclaimed_tasks": result["reclaims"],
                # timed-out installs whose appliance was not yet seen idle at the end
                "held_slots_at_end": result["held"],
                "tasks_over_task_timeout": result["over_timeout"],
                "max_loop_lag_ms": lag[-1] if lag else None,
                "profile": opts.profile or "none",
                "installs_accepted": stats["installs_accepted"],
                "max_in_flight": stats["max_in_flight"],
                "max_in_flight_by_site": max(stats["max_in_flight_by_site"].values()),
                "limits_held": stats["max_in_flight"] <= opts.concurrency and all(
                    n <= limit for n in stats["max_in_flight_by_site"].values()
                    for limit in (opts.per_site, opts.site_limit) if limit is not None),
                "faults_fired": {k: stats.get(k, 0) for k in ("lost_answers", "rest_restarts")},
                "last_engine_cpu_s": round(last_cpu, 2),
                "requests_per_appliance": round(stats["requests"] / opts.appliances, 1),
                "requests_per_appliance_by_kind": {
                    k: round(v / opts.appliances, 2)
                    for k, v in stats.get("requests_by_kind", {}).items()
                },
                "seed": opts.seed,
                "wall_s": round(time.monotonic() - started, 1),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
            }
            if result["mismatches"]:
                report["mismatched"] = result["mismatches"][:10]
            if engine.returncode != 0:
                report["last_engine_stderr"] = (err or "")[-1500:]
            print(json.dumps(report))
            return 0
    finally:
        for proc in (engine, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
