"""CPU per appliance API call, by HTTP client: the stream pool vs aiohttp (and uvloop).

The simulator runs as its own process (no faults); this process makes `--calls` calls of
`ApplianceClient.get_appliance()` (a logged-in session, kept-alive connections) spread
over `--appliances` appliances with `--concurrency` calls in flight, once per HTTP client
(`appliance_http_client` "stream" and "aiohttp"), each in a fresh child process so that
one does not warm the other, and prints one JSON object: per client, CPU microseconds per
call (user + sys of the measuring process, from `resource.getrusage`), calls per second of
wall time, and the connections opened.

    .venv/bin/python bench/http_client.py
    .venv/bin/python bench/http_client.py --calls 50000 --concurrency 500
    .venv/bin/python bench/http_client.py --uvloop      # also on uvloop, when importable

Everything goes to 127.0.0.1 and stops by itself (`--calls` is the bound).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, Processes, git_state, machine, remove, start_simulator, temp_dir


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(inventory: Path, client: str, calls: int, concurrency: int,
                  appliances: int) -> dict[str, Any]:
    from orchestrator.appliance import ApplianceHttp, ApplianceTarget, Credentials

    with inventory.open() as f:
        rows = list(csv.DictReader(f))[:appliances]
    targets = [ApplianceTarget(r["name"], r["base_url"]) for r in rows]
    http = ApplianceHttp(http_client=client, default_credentials=Credentials("admin", "admin"),
                         max_connections=max(concurrency, 1), max_connections_per_host=0,
                         retries=0, request_timeout=30)
    async with http:
        clients = [http.client(t) for t in targets]
        # log in everywhere and warm the connections: not measured
        await asyncio.gather(*(c.login() for c in clients))
        await asyncio.gather(*(c.get_appliance() for c in clients[:concurrency]))
        queue = iter(range(calls))

        async def worker() -> None:
            for n in queue:
                await clients[n % len(clients)].get_appliance()

        cpu, wall = _cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = _cpu() - cpu, time.perf_counter() - wall
        opened = http.pool.opened if client == "stream" else None
    return {"cpu_us_per_call": round(cpu / calls * 1e6, 1),
            "calls_per_s": round(calls / wall), "wall_s": round(wall, 2),
            "connections_opened": opened}


def child(args: argparse.Namespace) -> int:
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    result = asyncio.run(measure(Path(args.inventory), args.client, args.calls,
                                 args.concurrency, args.appliances))
    print(json.dumps(result))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--appliances", type=int, default=1_000)
    parser.add_argument("--uvloop", action="store_true", help="also measure on uvloop")
    parser.add_argument("--child", choices=["stream", "aiohttp"], dest="client",
                        help=argparse.SUPPRESS)
    parser.add_argument("--inventory", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        return child(args)
    if args.calls < 1 or args.concurrency < 1 or args.appliances < 1:
        parser.error("--calls, --concurrency and --appliances must be at least 1")
    loops = ["asyncio", "uvloop"] if args.uvloop else ["asyncio"]
    tmp = temp_dir("orch-bench-http-")
    results: dict[str, Any] = {}
    try:
        with Processes() as procs:
            sim = start_simulator(procs, tmp, appliances=args.appliances, sites=10,
                                  install_seconds=20, reboot_seconds=5,
                                  services_starting_seconds=0)
            for loop in loops:
                for client in ("stream", "aiohttp"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", client, "--inventory",
                         str(sim.inventory), "--loop", loop, "--calls", str(args.calls),
                         "--concurrency", str(args.concurrency),
                         "--appliances", str(args.appliances)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
                    if out.returncode != 0:
                        print(out.stderr, file=sys.stderr)
                        return 1
                    results[f"{client}/{loop}"] = json.loads(out.stdout.splitlines()[-1])
    finally:
        remove(tmp)
    base = results["aiohttp/asyncio"]["cpu_us_per_call"]
    print(json.dumps({
        "calls": args.calls, "concurrency": args.concurrency, "appliances": args.appliances,
        "results": results,
        "cpu_ratio_aiohttp_to_stream": round(base / results["stream/asyncio"]["cpu_us_per_call"],
                                             2),
        "machine": machine(), "tree": git_state(),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
