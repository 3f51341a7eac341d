"""Throughput of the appliance simulator under 1,000 concurrent polling clients.

Starts `python -m orchestrator.simulator` as a separate process, logs one client in per
appliance, starts an install on each (long install_seconds, so every task stays RUNNING),
then lets every client poll `GET /tasks/{id}` back to back for `--seconds`. Prints one JSON
object. The figure is the simulator's own request count over the polling window
(`/_sim/stats`), cross-checked with the clients' count.

    .venv/bin/python bench/simulator.py [--clients 1000] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Any

import aiohttp

from orchestrator.cli.simulator import raise_open_files_limit

VERSION = "9.0.1-20020"


def start_simulator(appliances: int) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "orchestrator.simulator",
        "--appliances", str(appliances), "--sites", "10", "--port", "0", "--seed", "1",
        "--install-seconds", "1000000", "--install-jitter", "0",
        "--available-version", VERSION,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" at (http://\S+) ", line)
    if not match:
        proc.kill()
        _, err = proc.communicate()
        raise SystemExit(f"simulator did not start: {line!r} {err!r}")
    return proc, match.group(1)


async def run_clients(url: str, clients: int, appliances: int,
                      seconds: float) -> dict[str, Any]:
    auth = "Basic " + base64.b64encode(b"admin:admin").decode()
    connector = aiohttp.TCPConnector(limit=clients + 10, limit_per_host=0,
                                     force_close=False, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=30)
    names = [f"sim-{i + 1:05d}" for i in range(clients)]
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        async def prepare(name: str) -> tuple[str, str]:
            base = f"{url}/{name}/api/rest/configure/v1"
            async with http.post(f"{base}/session", headers={"Authorization": auth}) as r:
                sid = (await r.json())["session_id"]
            path = f"{base}/appliance/update-manager/updates/{VERSION}/actions/install"
            async with http.post(path, headers={"x-dr-session": sid}) as r:
                task = await r.json()
                assert r.status == 202, (r.status, task)
            return f"{base}/tasks/{task['id']}", sid

        prepared = await asyncio.gather(*(prepare(n) for n in names))
        counts = [0] * clients
        errors = [0] * clients
        stop = False

        async def poll(i: int, task_url: str, sid: str) -> None:
            headers = {"x-dr-session": sid}
            get = http.get
            while not stop:
                try:
                    async with get(task_url, headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors[i] += 1
                except (TimeoutError, aiohttp.ClientError):
                    errors[i] += 1
                counts[i] += 1

        async def sim_requests() -> int:
            async with http.get(f"{url}/_sim/stats?appliances=0") as r:
                return int((await r.json())["requests"])

        pollers = [asyncio.create_task(poll(i, t, s)) for i, (t, s) in enumerate(prepared)]
        await asyncio.sleep(1.0)  # warm-up: every client is polling
        base_count, base_server = sum(counts), await sim_requests()
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - started
        end_count, end_server = sum(counts), await sim_requests()
        stop = True
        await asyncio.gather(*pollers, return_exceptions=True)
    server_requests = end_server - base_server  # /_sim calls are not counted
    return {
        "clients": clients,
        "appliances": appliances,
        "seconds": round(elapsed, 3),
        "requests": server_requests,
        "requests_per_second": round(server_requests / elapsed, 1),
        "client_requests": end_count - base_count,
        "errors": sum(errors),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--appliances", type=int, default=0,
                        help="fleet size (default: one appliance per client)")
    args = parser.parse_args()
    raise_open_files_limit()  # one socket per client
    proc, url = start_simulator(max(args.appliances, args.clients))
    try:
        result = asyncio.run(run_clients(url, args.clients, max(args.appliances, args.clients),
                                         args.seconds))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    result["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
