"""The promise against the simulator's ground truth: never install twice, never exceed a
limit, never misreport; across rollouts, lost answers, REST restarts and a pause that lands
in the middle of a claim burst. Every fault is planted by name and its firing asserted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from orchestrator.engine.engine import Engine
from orchestrator.simulator import FaultProfile
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store.db import create_pool
from tests.fleet import (
    ACTOR,
    TARGET,
    Fleet,
    create,
    engine,
    fleet,
    http_client,
    task_by_appliance,
    wait_until_terminal,
)

pytestmark = pytest.mark.timeout(180)


async def _names(f: Fleet, site: str) -> list[str]:
    return [n for n in f.sim.names if f.sim.site_of(n) == site]


async def test_two_rollouts_share_a_site_capacity_two_engines(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Two rollouts on disjoint appliances of one site, each allowed 3 there, two engines:
    the site's fleet-wide limit of 2 holds on the appliances themselves."""
    async with fleet(pool, db_url, appliances=20, sites=2, install_seconds=0.6) as f:
        site = await _names(f, "site-01")
        await pool.execute("INSERT INTO sites (name, max_in_flight) VALUES ('site-01', 2)")
        first = await create(pool, {"max_concurrency": 5, "per_site_concurrency": 3},
                             selector={"names": site[:5]})
        second = await create(pool, {"max_concurrency": 5, "per_site_concurrency": 3},
                              selector={"names": site[5:]})
        async with engine(f), engine(f):
            a = await wait_until_terminal(pool, first, timeout=60)
            b = await wait_until_terminal(pool, second, timeout=60)
        assert (a.state, b.state) == ("SUCCEEDED", "SUCCEEDED")
        stats = f.sim.stats()
        assert stats["installs_accepted"] == 10
        assert stats["duplicate_installs"] == 0
        assert stats["max_in_flight_by_site"]["site-01"] == 2  # reached, never exceeded


async def test_overlapping_rollouts_install_each_appliance_once(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """A second rollout over the same appliances (queued behind the first with
    after_overlapping), two engines: every appliance gets exactly one install; the first
    rollout records them SUCCEEDED, the second SKIPPED (already at the target), and the
    first rollout's limits hold on the appliances."""
    async with fleet(pool, db_url, appliances=16, sites=2, install_seconds=0.6) as f:
        first = await create(pool, {"max_concurrency": 4, "per_site_concurrency": 2})
        second = await create(pool, {"max_concurrency": 6, "per_site_concurrency": 3,
                                     "after_overlapping": True})
        async with engine(f), engine(f):
            a = await wait_until_terminal(pool, first, timeout=60)
            b = await wait_until_terminal(pool, second, timeout=60)
        assert (a.state, b.state) == ("SUCCEEDED", "SUCCEEDED")
        stats = f.sim.stats()
        assert stats["installs_accepted"] == 16
        assert stats["duplicate_installs"] == 0
        assert stats["max_in_flight"] <= 4
        assert all(n <= 2 for n in stats["max_in_flight_by_site"].values())
        rows_a = await task_by_appliance(pool, first)
        rows_b = await task_by_appliance(pool, second)
        assert {r["state"] for r in rows_a.values()} == {"SUCCEEDED"}
        assert {r["state"] for r in rows_b.values()} == {"SKIPPED"}
        for name, row in rows_a.items():
            assert f.sim.stats(include_appliances=True)["appliances"][name][
                "installs_accepted"] == 1
            assert row["final_version"] == f.sim.version_of(name) == TARGET


async def test_lost_answers_and_rest_restarts_end_succeeded_with_one_install(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Installs whose 202 is lost, a REST service that restarts mid-install (tasks and
    sessions gone, the old version reported until the real reboot), task texts that never
    name the version, a 202 without a task id, "update in progress" on a second install:
    every task ends SUCCEEDED with exactly one accepted install (the appliances accept a
    second install and count it, so a resend would show)."""
    faults = {
        "sim-00001": ["rest_restart", "opaque_tasks"],
        "sim-00002": ["lost_answer", "opaque_tasks"],
        "sim-00003": ["lost_answer", "in_progress_error", "opaque_tasks"],
        "sim-00004": ["sparse_accept", "opaque_tasks"],
        "sim-00005": ["rest_restart", "sparse_accept"],
    }
    profile = FaultProfile(appliances=faults,
                           params={"rest_restart_at": 0.2, "rest_restart_seconds": 0.3})
    async with fleet(pool, db_url, appliances=8, sites=1, install_seconds=2.0,
                     install_jitter=0.0, profile=profile) as f:
        rid = await create(pool, {"reboot_grace": 8, "task_timeout": 40})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid, timeout=60)
        stats = f.sim.stats(include_appliances=True)
        assert stats["lost_answers"] == 2  # the faults fired
        assert stats["rest_restarts"] == 2
        rows = await task_by_appliance(pool, rid)
        assert {n: r["state"] for n, r in rows.items()} == dict.fromkeys(rows, "SUCCEEDED")
        assert rollout.state == "SUCCEEDED"
        assert stats["installs_accepted"] == 8
        assert stats["duplicate_installs"] == 0
        for name, row in rows.items():
            assert stats["appliances"][name]["installs_accepted"] == 1, name
            assert row["final_version"] == f.sim.version_of(name) == TARGET


@contextlib.asynccontextmanager
async def _big_engine(f: Fleet, **config: Any) -> AsyncIterator[Engine]:
    """An engine with a pool of its own, large enough for a 1,000-task burst."""
    async with create_pool(f.db_url, min_size=2, max_size=20) as pool, \
            engine(f, http=http_client(request_timeout=10.0), pool=pool, **config) as eng:
        yield eng


async def test_pause_during_a_claim_burst_stops_every_unsent_install(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """1,000 tasks claimed at once; a pause committed while they are being sent: no install
    is accepted after the pause except those whose send was already recorded, and the rest
    go back to PENDING unsent; a cancel then cancels every one of them."""
    async with fleet(pool, db_url, appliances=1000, sites=4, install_seconds=4.0,
                     install_jitter=0.0, reboot_seconds=0.2) as f:
        rid = await create(pool, {"max_concurrency": 1000, "task_timeout": 120})
        async with _big_engine(f, active_runners=20, max_tasks=2000):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while f.sim.stats()["installs_accepted"] < 50:
                assert loop.time() < deadline, "the burst did not start"
                await asyncio.sleep(0.01)
            claimed = await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state <> 'PENDING'", rid)
            await rollout_store.pause_rollout(pool, rid, ACTOR)
            sent = await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE rollout_id = $1 "
                "AND install_sent_at IS NOT NULL", rid)
            assert claimed > sent, "the pause landed after the burst"
            assert sent < 1000
            # every claimed task either went out (recorded before the pause) or comes back
            while await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state = 'DISPATCHING'",
                rid,
            ):
                assert loop.time() < deadline + 60, "claimed tasks never settled"
                await asyncio.sleep(0.05)
            assert f.sim.stats()["installs_accepted"] == sent
            pending = await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state = 'PENDING'", rid)
            assert pending == 1000 - sent
            await rollout_store.cancel_rollout(pool, rid, ACTOR)
            await wait_until_terminal(pool, rid, timeout=60)
        stats = f.sim.stats()
        assert stats["installs_accepted"] == sent
        assert stats["duplicate_installs"] == 0
        states = await pool.fetch(
            "SELECT state, count(*) AS n FROM tasks WHERE rollout_id = $1 GROUP BY state", rid)
        by_state = {r["state"]: r["n"] for r in states}
        assert by_state.get("CANCELLED") == 1000 - sent
        assert by_state.get("SUCCEEDED") == sent


async def test_retry_failed_after_a_late_success_records_it_succeeded(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """A task that timed out while its appliance took too long to come back; the install did
    apply in the end. retry-failed starts the task afresh, finds the target version, and
    records SUCCEEDED (its own earlier install), not SKIPPED, without a second install."""
    profile = FaultProfile(appliances={"sim-00001": ["long_reboot"]},
                           params={"long_reboot_seconds": 4.0})
    async with fleet(pool, db_url, appliances=2, sites=1, profile=profile) as f:
        rid = await create(pool, {"reboot_grace": 1, "task_timeout": 20})
        async with engine(f):
            await wait_until_terminal(pool, rid)
            row = (await task_by_appliance(pool, rid))["sim-00001"]
            assert (row["state"], row["error_code"]) == ("TIMED_OUT", "UNREACHABLE")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while f.sim.stats(include_appliances=True)["appliances"]["sim-00001"][
                    "phase"] != "up":  # back from its reboot, on the target version
                assert loop.time() < deadline
                await asyncio.sleep(0.1)
            assert f.sim.version_of("sim-00001") == TARGET
            await rollout_store.retry_failed(pool, rid, ACTOR)
            rollout = await wait_until_terminal(pool, rid)
        row = (await task_by_appliance(pool, rid))["sim-00001"]
        assert (row["state"], row["attempt"], row["error_code"]) == ("SUCCEEDED", 1, None)
        assert row["final_version"] == TARGET
        assert rollout.state == "SUCCEEDED"
        stats = f.sim.stats(include_appliances=True)
        assert stats["appliances"]["sim-00001"]["installs_accepted"] == 1
        assert stats["duplicate_installs"] == 0


async def test_a_crash_between_the_guard_and_the_post_is_never_resent(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """An engine recorded that it was sending the install and died before the request left.
    The next engine cannot prove that nothing started (the dead one's session is gone), so
    it never sends it again: it watches the appliance and, once the old version has stayed
    put for the confirmation period, records INSTALL_UNCONFIRMED (not VERSION_MISMATCH: no
    install was ever acknowledged)."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool, {"reboot_grace": 2, "task_timeout": 30})
        async with pool.acquire() as conn, conn.transaction():
            (task,) = await task_store.claim_tasks(
                conn, rollout_id=rid, current_wave=0, owner="dead", lease_seconds=60,
                max_in_flight=1, per_site=None, starts_per_minute=None, limit=1)
        async with pool.acquire() as conn:
            verdict, _ = await task_store.guard_install_send(
                conn, task_id=task.id, owner="dead", token=task.lease_token,
                from_version="9.0.0-10010", lease_margin=1)
        assert verdict == "send"
        await pool.execute("UPDATE tasks SET lease_expires_at = now() WHERE id = $1", task.id)
        async with engine(f) as eng:
            await wait_until_terminal(pool, rid)
            assert eng.reclaimed == 1
        row = (await task_by_appliance(pool, rid))["sim-00001"]
        assert (row["state"], row["error_code"]) == ("FAILED", "INSTALL_UNCONFIRMED")
        assert f.sim.stats()["installs_accepted"] == 0  # never sent again
