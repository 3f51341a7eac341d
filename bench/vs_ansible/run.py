"""The same rollout by the orchestrator and by an Ansible playbook, on the same fleet.

One simulator process (no faults) serves the fleet; the orchestrator side runs first
(`orchestrator appliances import`, `rollout create --start` with waves 1%, 10%, 100% and
max_concurrency = --concurrency, then `orchestrator run --until-idle`), then every appliance
is put back on its old version (`POST /_sim/reset {"versions": true}`) and the Ansible side
runs `ansible-playbook rollout.yml` (waves as `serial`, `forks` = --concurrency, the `uri`
module, inventory generated from the simulator's CSV). ansible-core comes from PyPI, installed
by this script into bench/vs_ansible/.venv (requirements.txt) on first use.

    .venv/bin/python bench/vs_ansible/run.py [--appliances 200 --concurrency 50]

CPU: each side's process tree as the kernel accounts it when the process ends (os.wait4:
the process and every descendant it reaped: Ansible's forks and module runs included).
PostgreSQL's CPU on the orchestrator side is reported apart (embedded server only).
Prints one JSON object; docs/benchmarks.md explains each field. Goal: the orchestrator uses
at least 100x less CPU per appliance than the playbook, both outcomes verified.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import (  # noqa: E402
    BIN,
    ROOT,
    TARGET_VERSION,
    Processes,
    ProcSampler,
    Simulator,
    create_rollout,
    database,
    machine,
    orchestrator_env,
    remove,
    rollout_outcome,
    start_simulator,
    temp_dir,
    wait_child,
)
from common import cli as orchestrator_cli  # noqa: E402

VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements.txt"
PLAYBOOK = HERE / "rollout.yml"
GOAL_CPU_RATIO = 100.0


# --------------------------------------------------------------------------- ansible
def ensure_ansible(venv: Path) -> tuple[Path, str, float]:
    """A virtualenv with ansible-core from requirements.txt (reused while it matches).
    Returns (its bin directory, the ansible-core version, seconds spent installing)."""
    started = time.monotonic()
    stamp = venv / ".requirements"
    wanted = REQUIREMENTS.read_text()
    python = venv / "bin" / "python"
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=True,
                       stdout=sys.stderr)
        stamp.write_text(wanted)
    version = subprocess.run(
        [str(python), "-c", "import ansible.release as r; print(r.__version__)"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    return venv / "bin", version, time.monotonic() - started


def write_inventory(csv_path: Path, out: Path, python: Path) -> int:
    """inventory.yml: group `appliances`, one host per CSV row with its base_url (and site
    as a group), all driven from the control node."""
    import csv

    hosts: dict[str, dict[str, str]] = {}
    sites: dict[str, dict[str, Any]] = {}
    with csv_path.open() as fh:
        for row in csv.DictReader(fh):
            hosts[row["name"]] = {"base_url": row["base_url"]}
            sites.setdefault(row["site"].replace("-", "_"), {"hosts": {}})["hosts"][
                row["name"]] = None
    inventory = {"all": {"children": {"appliances": {
        "hosts": hosts,
        "children": sites,
        "vars": {"ansible_connection": "local",
                 "ansible_python_interpreter": str(python)},
    }}}}
    out.write_text(json.dumps(inventory, indent=1))  # JSON is YAML
    return len(hosts)


def run_ansible(procs: Processes, tmp: Path, sim: Simulator, opts: argparse.Namespace,
                bin_dir: Path, deadline: float) -> dict[str, Any]:
    inventory = tmp / "inventory.yml"
    write_inventory(sim.inventory, inventory, bin_dir / "python")
    cfg = tmp / "ansible.cfg"
    cfg.write_text(
        "[defaults]\n"
        f"forks = {opts.concurrency}\n"
        "host_key_checking = False\n"
        "retry_files_enabled = False\n"
        "interpreter_python = auto_silent\n"
        f"local_tmp = {tmp / 'ansible-local'}\n"
        f"remote_tmp = {tmp / 'ansible-remote'}\n"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "ORCHESTRATOR_", "VIRTUAL_ENV"))}
    env |= {
        "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "APPLIANCE_USER": "admin", "APPLIANCE_PASSWORD": "admin",
        "PATH": f"{bin_dir}:{env.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1",
    }
    extra = {"waves": opts.ansible_waves.split(","), "target_version": TARGET_VERSION,
             "poll_delay": opts.poll_delay}
    log_path = tmp / "ansible.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = procs.popen(
            [str(bin_dir / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK),
             "-f", str(opts.concurrency), "-e", json.dumps(extra)],
            env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
        )
    result = wait_child(proc, deadline, started)
    text = log_path.read_text()
    recap = re.findall(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                       r"failed=(\d+)", text, flags=re.M)
    failed_hosts = sorted(h for h, _ok, _c, unreach, failed in recap
                          if int(failed) or int(unreach))
    stats = sim.stats(appliances=True)
    out = side_report(stats, opts.appliances, result.wall_s, result.cpu_s)
    out |= {
        "cpu_user_s": round(result.cpu_user_s, 2), "cpu_sys_s": round(result.cpu_sys_s, 2),
        "exit_code": result.returncode, "timed_out": result.timed_out,
        "hosts_in_recap": len(recap), "hosts_failed": len(failed_hosts),
        "peak_rss_mb_largest_process": round(result.maxrss_mb, 1),
        "forks": opts.concurrency, "serial": extra["waves"], "poll_delay_s": opts.poll_delay,
    }
    if failed_hosts:
        out["failed_sample"] = failed_hosts[:5]
    if result.returncode != 0:
        out["log_tail"] = text[-2000:]
    return out


# --------------------------------------------------------------------------- orchestrator
def run_orchestrator(procs: Processes, tmp: Path, sim: Simulator, db: Any,
                     opts: argparse.Namespace, deadline: float) -> dict[str, Any]:
    settings = {"engine_max_tasks": max(2000, opts.concurrency),
                "appliance_max_connections": max(1000, opts.concurrency),
                "appliance_max_connections_per_host": 0}
    env = orchestrator_env(db.url, **settings)
    orchestrator_cli(env, "migrate")
    orchestrator_cli(env, "appliances", "import", str(sim.inventory))
    rollout_id = create_rollout(env, tmp, {
        "waves": ["1%", "10%", "100%"], "max_concurrency": opts.concurrency,
        "preflight": "off",  # the playbook has no pre-flight either
        "reboot_grace": 600, "task_timeout": 3600,
    })
    sampler = ProcSampler(interval=0.5)
    if db.postmaster_pid:
        sampler.watch("postgres", db.postmaster_pid, tree=True)
    sampler.start()
    started = time.monotonic()
    with (tmp / "engine.stderr").open("w") as err:
        proc = procs.popen([str(BIN / "orchestrator"), "run", "--until-idle"], env=env,
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    result = wait_child(proc, deadline, started)
    sampler.stop()
    stats = sim.stats(appliances=True)
    outcome = rollout_outcome(db.url, rollout_id)
    out = side_report(stats, opts.appliances, result.wall_s, result.cpu_s)
    out |= {
        "db_wall_s": round(outcome["wall_s"], 2) if outcome["wall_s"] else None,
        "cpu_user_s": round(result.cpu_user_s, 2), "cpu_sys_s": round(result.cpu_sys_s, 2),
        "postgres_cpu_s": sampler.totals().get("postgres"),
        "exit_code": result.returncode, "timed_out": result.timed_out,
        "rollout_state": outcome["state"], "tasks": outcome["tasks"],
        "peak_rss_mb": round(result.maxrss_mb, 1),
    }
    return out


def side_report(stats: dict[str, Any], n: int, wall: float, cpu: float) -> dict[str, Any]:
    """Figures of one side, the outcome checked against the simulator's ground truth."""
    apps = stats["appliances"]
    on_target = sum(1 for a in apps.values() if a["version"] == TARGET_VERSION)
    not_up = sum(1 for a in apps.values() if a["phase"] != "up")
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_ms_per_appliance": round(1000 * cpu / n, 2),
        "requests_per_appliance": round(stats["requests"] / n, 2),
        "requests_per_appliance_by_kind": {
            k: round(v / n, 2) for k, v in sorted(stats["requests_by_kind"].items())},
        "installs_accepted": stats["installs_accepted"],
        "duplicate_installs": stats["duplicate_installs"],
        "max_in_flight": stats["max_in_flight"],
        "on_target_version": on_target,
        "appliances_not_up": not_up,
        "verified": on_target == n and not_up == 0 and stats["duplicate_installs"] == 0
        and stats["installs_accepted"] == n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50,
                        help="orchestrator max_concurrency, Ansible forks")
    parser.add_argument("--install-seconds", type=float, default=10.0)
    parser.add_argument("--reboot-seconds", type=float, default=3.0)
    parser.add_argument("--services-starting-seconds", type=float, default=0.5)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--poll-delay", type=float, default=3.0,
                        help="the playbook's `delay` between polls (until/retries)")
    parser.add_argument("--ansible-waves", default="1%,10%,100%",
                        help="the playbook's `serial`, comma-separated; e.g. 1%%,10%%,50 "
                             "caps every batch at 50 hosts")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="each side is stopped after this many seconds")
    parser.add_argument("--skip-ansible", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    bench_started = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    bin_dir, ansible_version, install_s = (Path(), "", 0.0)
    if not opts.skip_ansible:
        bin_dir, ansible_version, install_s = ensure_ansible(VENV)
    tmp = temp_dir("orch-bench-vs-ansible-")
    try:
        with Processes() as procs, database("bench_vs_ansible", tmp) as db:
            sim = start_simulator(
                procs, tmp, appliances=opts.appliances, sites=opts.sites,
                install_seconds=opts.install_seconds, reboot_seconds=opts.reboot_seconds,
                services_starting_seconds=opts.services_starting_seconds,
            )
            orch = run_orchestrator(procs, tmp, sim, db, opts,
                                    time.monotonic() + opts.timeout)
            sim.reset(versions=True)
            ans: dict[str, Any] = {}
            if not opts.skip_ansible:
                ans = run_ansible(procs, tmp, sim, opts, bin_dir,
                                  time.monotonic() + opts.timeout)
    except KeyboardInterrupt:
        print(json.dumps({"error": "interrupted"}))
        return 130
    finally:
        remove(tmp)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 1) if a and b else None

    report: dict[str, Any] = {
        "appliances": opts.appliances, "concurrency": opts.concurrency, "sites": opts.sites,
        "install_seconds": opts.install_seconds, "reboot_seconds": opts.reboot_seconds,
        "services_starting_seconds": opts.services_starting_seconds,
        "orchestrator": orch,
        "ansible": ans,
        "cpu_per_appliance_ratio": ratio(ans.get("cpu_ms_per_appliance"),
                                         orch["cpu_ms_per_appliance"]),
        "cpu_per_appliance_ratio_with_postgres": ratio(
            ans.get("cpu_s"), orch["cpu_s"] + (orch.get("postgres_cpu_s") or 0.0)),
        "wall_ratio": ratio(ans.get("wall_s"), orch["wall_s"]),
        "requests_ratio": ratio(ans.get("requests_per_appliance"),
                                orch["requests_per_appliance"]),
        "goal_cpu_ratio": GOAL_CPU_RATIO,
        "ansible_core": ansible_version,
        "ansible_install_s": round(install_s, 1),
        "database": db.kind,
        "bench_wall_s": round(time.monotonic() - bench_started, 1),
        "machine": machine(),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }
    report["goal_met"] = bool(
        report["cpu_per_appliance_ratio"]
        and report["cpu_per_appliance_ratio"] >= GOAL_CPU_RATIO
        and orch["verified"] and ans.get("verified")
    )
    print(json.dumps(report))
    return 0 if orch["exit_code"] == 0 and ans.get("exit_code", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
