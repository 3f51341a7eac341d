"""Test harness: a simulated fleet imported into a test database, and an in-process engine."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.appliance import ApplianceHttp
from orchestrator.domain.inventory import LAB_POLICY
from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES
from orchestrator.engine.engine import Engine, EngineConfig
from orchestrator.inventory import read_inventory
from orchestrator.simulator import Simulator, SimulatorConfig, run_simulator
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.audit import Actor

ACTOR = Actor(name="test", via="cli")
TARGET = "9.0.1-20020"
# quick timings: a whole small rollout finishes in a few seconds
FAST = {
    "install_seconds": 0.3, "install_jitter": 0.2, "reboot_seconds": 0.3,
    "services_starting_seconds": 0.2, "queued_seconds": 0.05,
    # appliances accept a second install and the simulator counts it as a duplicate
    "duplicate_install": "accept",
}
FAST_STRATEGY: dict[str, Any] = {
    "waves": ["100%"], "max_concurrency": 50, "reboot_grace": 5, "task_timeout": 20,
    "max_failures": "100%", "dispatch_retries": 2,
}


def fast_engine_config(**overrides: Any) -> EngineConfig:
    values: dict[str, Any] = {
        "lease_seconds": 5.0, "poll_interval": 0.2, "shutdown_deadline": 5.0,
        "progress_interval": 0.2, "batch_delay": 0.01, "install_estimate": 0.3,
        "reboot_estimate": 0.5,
        "min_poll": 0.05, "max_poll": 0.3, "held_slot_interval": 0.5,
        # the simulator answers on http://127.0.0.1
        "target_policy": LAB_POLICY,
    }
    values.update(overrides)
    return EngineConfig(**values)


def http_client(**overrides: Any) -> ApplianceHttp:
    values: dict[str, Any] = {
        "connect_timeout": 1.0, "request_timeout": 2.0, "retries": 1,
        "backoff_base": 0.02, "backoff_cap": 0.1, "verify_tls": False, "trust_env": False,
        "environ": {"APPLIANCE_SIM_CREDENTIALS": "admin:admin"},
    }
    values.update(overrides)
    return ApplianceHttp(**values)


@dataclass
class Fleet:
    sim: Simulator
    pool: asyncpg.Pool
    db_url: str


@contextlib.asynccontextmanager
async def fleet(pool: asyncpg.Pool, db_url: str, **config: Any) -> AsyncIterator[Fleet]:
    """A running simulator whose appliances are imported into the test database."""
    values = {**FAST, **config}
    async with run_simulator(SimulatorConfig(**values), host="127.0.0.1", port=0) as sim:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fleet.csv"
            sim.write_inventory(path)
            await appliance_store.upsert_appliances(
                pool, read_inventory(path, policy=LAB_POLICY).specs)
        yield Fleet(sim=sim, pool=pool, db_url=db_url)


async def create(
    pool: asyncpg.Pool, strategy: dict[str, Any] | None = None, *, start: bool = True,
    selector: dict[str, Any] | None = None,
) -> int:
    rollout, _ = await rollout_store.create_rollout(
        pool, name="test", target_version=TARGET, selector=selector,
        strategy={**FAST_STRATEGY, **(strategy or {})}, actor=ACTOR,
    )
    if start:
        await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    return rollout.id


@contextlib.asynccontextmanager
async def engine(
    f: Fleet, *, http: ApplianceHttp | None = None,
    clock: Callable[[], datetime] | None = None, pool: asyncpg.Pool | None = None,
    **config: Any,
) -> AsyncIterator[Engine]:
    """An engine running in the background of the test's event loop (on the fleet's pool,
    or on `pool`)."""
    async with http or http_client() as client:
        eng = Engine(pool or f.pool, client, fast_engine_config(**config),
                     database_url=f.db_url, clock=clock)
        task = asyncio.create_task(eng.run())
        try:
            yield eng
        finally:
            eng.stop()
            await asyncio.wait_for(task, 30)


async def wait_for_state(
    pool: asyncpg.Pool, rollout_id: int, states: tuple[str, ...], timeout: float = 30.0
) -> rollout_store.Rollout:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rollout = await rollout_store.get_rollout(pool, rollout_id)
        if rollout.state in states:
            return rollout
        if asyncio.get_running_loop().time() > deadline:
            counts = await rollout_store.rollout_counts(pool, rollout_id)
            raise AssertionError(
                f"rollout {rollout_id} still {rollout.state} after {timeout} s: "
                f"{counts.by_state}"
            )
        await asyncio.sleep(0.05)


async def wait_until_terminal(pool: asyncpg.Pool, rollout_id: int,
                              timeout: float = 30.0) -> rollout_store.Rollout:
    """Until the rollout is terminal AND none of its tasks is in flight any more."""
    rollout = await wait_for_state(pool, rollout_id, tuple(TERMINAL_ROLLOUT_STATES),
                                   timeout)
    deadline = asyncio.get_running_loop().time() + timeout
    while await pool.fetchval(
        "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state IN "
        "('DISPATCHING', 'INSTALLING', 'VERIFYING')", rollout_id,
    ):
        assert asyncio.get_running_loop().time() < deadline, "tasks still in flight"
        await asyncio.sleep(0.05)
    return rollout


async def task_by_appliance(pool: asyncpg.Pool, rollout_id: int) -> dict[str, asyncpg.Record]:
    rows = await pool.fetch(
        """SELECT a.name, t.* FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.rollout_id = $1""",
        rollout_id,
    )
    return {r["name"]: r for r in rows}


async def events_of(pool: asyncpg.Pool, task_id: int) -> list[tuple[str | None, str]]:
    rows = await pool.fetch(
        "SELECT from_state, to_state FROM task_events WHERE task_id = $1 ORDER BY id", task_id
    )
    return [(r["from_state"], r["to_state"]) for r in rows]
