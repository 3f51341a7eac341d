"""ETA benchmark: is the forecast made at 25% done close to the real completion time?

A 1,000-appliance rollout on the simulator under a maintenance window that opens every
minute for `--window-seconds`, so the rollout spans several openings; the engine runs
in-process (`run(until_idle=True)`, which waits through the closed windows: a rollout in
WAITING_WINDOW is not idle). It may start while the window is closed: the clock starts at
`rollout start` all the same, so the wait for the first opening is part of both figures.
When a quarter of the tasks have finished, the forecast is taken; when the rollout ends, it
is compared with the real end. Prints one JSON object with both.

    .venv/bin/python bench/eta.py [--appliances 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchdb import temporary_database

from orchestrator.appliance import ApplianceHttp
from orchestrator.domain.inventory import LAB_POLICY
from orchestrator.engine.engine import Engine, EngineConfig
from orchestrator.inventory import read_inventory
from orchestrator.logs import configure_logging
from orchestrator.simulator import SimulatorConfig, run_simulator
from orchestrator.store import appliances as appliance_store
from orchestrator.store import migrations
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import windows as window_store
from orchestrator.store.audit import Actor
from orchestrator.store.db import connect, create_pool
from orchestrator.store.forecast import rollout_forecast

ACTOR = Actor(name="bench", via="cli")


async def run(opts: argparse.Namespace, url: str) -> dict[str, object]:
    conn = await connect(url)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    config = SimulatorConfig(appliances=opts.appliances, sites=opts.sites,
                             install_seconds=opts.install_seconds, install_jitter=0.2,
                             reboot_seconds=opts.reboot_seconds, services_starting_seconds=0.2)
    async with create_pool(url, min_size=2, max_size=20) as pool, \
            run_simulator(config, host="127.0.0.1", port=0) as sim:
        tmp = Path(tempfile.mkdtemp(prefix="orch-eta-"))
        try:
            sim.write_inventory(tmp / "fleet.csv")
            await appliance_store.upsert_appliances(
                pool, read_inventory(tmp / "fleet.csv", policy=LAB_POLICY).specs)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        await window_store.create_window(pool, {
            "name": "every-minute", "cron": "* * * * *", "duration": opts.window_seconds,
            "cutoff": opts.cutoff_seconds, "timezone": "UTC",
            "sites": [config.site_name(i) for i in range(opts.sites)],
        }, ACTOR)
        rollout, _ = await rollout_store.create_rollout(
            pool, name="eta", target_version="9.0.1-20020", actor=ACTOR,
            strategy={"waves": ["5%", "100%"], "max_concurrency": opts.concurrency,
                      "preflight": "off",
                      "reboot_grace": 30, "task_timeout": 120},
        )
        http = ApplianceHttp(request_timeout=5, connect_timeout=2, verify_tls=False,
                             max_connections_per_host=0,
                             environ={"APPLIANCE_SIM_CREDENTIALS": "admin:admin"})
        async with http:
            engine = Engine(pool, http, EngineConfig(
                lease_seconds=10, poll_interval=0.5, install_estimate=opts.install_seconds,
                reboot_estimate=opts.reboot_seconds, min_poll=0.25, max_poll=5,
                target_policy=LAB_POLICY,
            ), database_url=url)
            await rollout_store.start_rollout(pool, rollout.id, ACTOR)
            started = datetime.now(UTC)
            window_open_at_start = started.second < opts.window_seconds - opts.cutoff_seconds
            runner = asyncio.create_task(engine.run(until_idle=True))
            forecast = None
            done_at_forecast = 0
            deadline = time.monotonic() + opts.timeout
            while not runner.done():
                done = await pool.fetchval(
                    """SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state IN
                       ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'SKIPPED', 'CANCELLED')""",
                    rollout.id,
                )
                if forecast is None and done >= opts.appliances * opts.at:
                    forecast = await rollout_forecast(
                        pool, rollout.id, datetime.now(UTC), opts.install_seconds * 2)
                    forecast_made = datetime.now(UTC)
                    done_at_forecast = int(done)
                if time.monotonic() > deadline:
                    engine.stop()
                await asyncio.sleep(0.2)
            await runner
        final = await rollout_store.get_rollout(pool, rollout.id)
        if final.finished_at is None:
            raise SystemExit(f"eta: the rollout is still {final.state} after --timeout "
                             f"{opts.timeout:g} s")
        if forecast is None or forecast.eta is None:
            raise SystemExit(f"eta: no forecast with an ETA was made at {opts.at:g} done "
                             f"(the rollout ended {final.state})")
        real_s = (final.finished_at - started).total_seconds()
        predicted_s = (forecast.eta - started).total_seconds()
        error = abs(predicted_s - real_s) / real_s
        openings_used = await pool.fetchval(
            """SELECT count(DISTINCT date_trunc('minute', dispatched_at)) FROM tasks
               WHERE rollout_id = $1""", rollout.id)
        return {
            "appliances": opts.appliances,
            "state": str(final.state),
            "forecast_at_done_fraction": round(done_at_forecast / opts.appliances, 3),
            "forecast_made_after_s": round((forecast_made - started).total_seconds(), 1),
            "forecast_completion_s": round(predicted_s, 1),
            "real_completion_s": round(real_s, 1),
            "relative_error": round(error, 3),
            "goal_relative_error": 0.15,
            "within_goal": error <= 0.15,
            "forecast_basis": forecast.basis,
            "window_openings_used": int(openings_used),
            "window_open_at_start": window_open_at_start,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version()},
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appliances", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=60)
    parser.add_argument("--install-seconds", type=float, default=2.0)
    parser.add_argument("--reboot-seconds", type=float, default=1.0)
    parser.add_argument("--window-seconds", type=int, default=30)
    parser.add_argument("--cutoff-seconds", type=int, default=2)
    parser.add_argument("--at", type=float, default=0.25, help="fraction done at forecast")
    parser.add_argument("--timeout", type=float, default=900)
    opts = parser.parse_args()
    configure_logging("json", "warning")
    with temporary_database("eta") as url:
        print(json.dumps(asyncio.run(run(opts, url))))
    return 0

if __name__ == "__main__":
    sys.exit(main())
