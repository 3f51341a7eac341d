"""A timed-out install keeps its slot until its appliance is seen idle again.

An appliance whose reboot outlasts `reboot_grace` ends TIMED_OUT while it is still
rebooting onto the new version: the simulator (the ground truth) still counts that install
in flight. If the task released its slot then, the next install at the site would exceed
the site's limit on the appliances themselves. These tests run the real engine against the
simulator and a real database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from orchestrator.simulator import FaultProfile
from orchestrator.store import sites as site_store
from orchestrator.store import tasks as task_store
from orchestrator.store.audit import list_audit
from orchestrator.store.sites import SiteError
from tests.fleet import (
    ACTOR,
    TARGET,
    create,
    engine,
    fleet,
    task_by_appliance,
    wait_until_terminal,
)

pytestmark = pytest.mark.timeout(120)

SLOW = "sim-00001"  # reboots for longer than reboot_grace


async def _until(probe: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert loop.time() < deadline, "not reached in time"
        await asyncio.sleep(interval)


async def _events(pool: asyncpg.Pool, task_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT from_state, to_state, at, detail FROM task_events WHERE task_id = $1 "
        "ORDER BY id", task_id)
    return [dict(r) for r in rows]


async def test_a_timed_out_install_holds_its_site_slot_until_the_appliance_is_back(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Site limit 1, three appliances; the first reboots for 5 s against a reboot_grace of
    1 s. It ends TIMED_OUT while still rebooting; the next install waits until the engine
    sees that appliance idle on the target version (recorded as its final version), so the
    site never has two installs in flight on the appliances."""
    profile = FaultProfile(appliances={SLOW: ["long_reboot"]},
                           params={"long_reboot_seconds": 5.0})
    async with fleet(pool, db_url, appliances=3, sites=1, profile=profile) as f:
        await site_store.set_site_limit(pool, "site-01", 1, ACTOR)
        rid = await create(pool, {"reboot_grace": 1, "task_timeout": 30, "order": "name"})
        async with engine(f):
            async def timed_out() -> bool:
                row = (await task_by_appliance(pool, rid))[SLOW]
                return bool(row["state"] == "TIMED_OUT")

            await _until(timed_out)
            # the fault happened: timed out while the appliance is still rebooting
            assert f.sim.stats(include_appliances=True)["appliances"][SLOW]["phase"] != "up"
            held = await pool.fetchrow(
                "SELECT t.id, t.holds_slot, t.error_code FROM tasks t JOIN appliances a "
                "ON a.id = t.appliance_id WHERE a.name = $1", SLOW)
            assert (held["holds_slot"], held["error_code"]) == (True, "UNREACHABLE")
            site = await site_store.get_site(pool, "site-01")
            assert (site.in_flight, site.held) == (1, 1)
            assert [h.appliance for h in await site_store.list_held(pool)] == [SLOW]
            others = {n: r["state"] for n, r in (await task_by_appliance(pool, rid)).items()
                      if n != SLOW}
            assert set(others.values()) == {"PENDING"}

            async def done() -> bool:
                rows = await task_by_appliance(pool, rid)
                return all(r["state"] in ("SUCCEEDED", "TIMED_OUT") for r in rows.values())

            await _until(done, timeout=60)
            rollout = await wait_until_terminal(pool, rid)
        rows = await task_by_appliance(pool, rid)
        stats = f.sim.stats(include_appliances=True)
        assert stats["max_in_flight_by_site"]["site-01"] == 1  # never two at the site
        assert stats["duplicate_installs"] == 0
        assert {n: a["installs_accepted"] for n, a in stats["appliances"].items()} == {
            "sim-00001": 1, "sim-00002": 1, "sim-00003": 1}
        # the timed-out task records what its appliance really reached once it was idle
        slow = rows[SLOW]
        assert (slow["state"], slow["final_version"]) == ("TIMED_OUT", TARGET)
        assert f.sim.version_of(SLOW) == TARGET
        assert await pool.fetchval("SELECT holds_slot FROM tasks WHERE id = $1",
                                   held["id"]) is False
        released = [e for e in await _events(pool, held["id"])
                    if e["detail"].get("slot_released")]
        assert len(released) == 1 and released[0]["detail"]["version"] == TARGET
        # and the next install was sent only after the slot was free. install_sent_at is
        # written after the claim that saw the free slot committed; dispatched_at is not a
        # send time (it is the claiming transaction's start, which may have begun before
        # the release committed)
        second = min(r["install_sent_at"] for n, r in rows.items() if n != SLOW)
        assert second >= released[0]["at"]
        assert rollout.state == "COMPLETED_WITH_FAILURES"
        assert await pool.fetchval(
            "SELECT current_version FROM appliances WHERE name = $1", SLOW) == TARGET


async def test_a_held_slot_blocks_the_appliance_and_the_site_for_every_rollout(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """While a timed-out install holds its slot, no other rollout installs on that
    appliance or over the site's limit; the operator frees it by hand (`sites release`),
    which is audited and names a bad appliance."""
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        await site_store.set_site_limit(pool, "site-01", 1, ACTOR)
        first = await create(pool, {"order": "name"}, start=False,
                             selector={"names": ["sim-00001"]})
        # a timed-out install of the first rollout, sent, on an appliance that is gone
        await pool.execute(
            """UPDATE tasks SET state = 'TIMED_OUT', error_code = 'UNREACHABLE',
                      install_sent_at = now(), installs_sent = 1, holds_slot = true,
                      finished_at = now() WHERE rollout_id = $1""", first)
        await pool.execute("UPDATE rollouts SET state = 'COMPLETED_WITH_FAILURES', "
                           "finished_at = now(), started_at = now() WHERE id = $1", first)
        second = await create(pool, {"order": "name"})
        async with pool.acquire() as conn, conn.transaction():
            claimed = await task_store.claim_tasks(
                conn, rollout_id=second, current_wave=0, owner="t", lease_seconds=30,
                max_in_flight=10, per_site=None, starts_per_minute=None, limit=10)
        assert claimed == []  # sim-00001 is held; sim-00002 would exceed the site's 1

        with pytest.raises(SiteError, match="no appliance named 'nope'"):
            await site_store.release_held(pool, "nope", ACTOR)
        with pytest.raises(SiteError, match="'sim-00002' holds no slot"):
            await site_store.release_held(pool, "sim-00002", ACTOR)
        released = await site_store.release_held(pool, "sim-00001", ACTOR)
        assert len(released) == 1
        audit = (await list_audit(pool))[0]
        assert (audit.action, audit.target_id, audit.detail) == (
            "site.release-held", "sim-00001", {"tasks": released})
        async with pool.acquire() as conn, conn.transaction():
            claimed = await task_store.claim_tasks(
                conn, rollout_id=second, current_wave=0, owner="t", lease_seconds=30,
                max_in_flight=10, per_site=None, starts_per_minute=None, limit=10)
        assert [c.appliance for c in claimed] == ["sim-00001"]  # one, the site allows 1
        await pool.execute("UPDATE tasks SET state = 'PENDING', lease_owner = NULL, "
                           "lease_token = NULL, lease_expires_at = NULL WHERE id = $1",
                           claimed[0].id)
        async with engine(f):
            rows = await _until(lambda: _all_done(pool, second), timeout=60)
        assert {n: r["state"] for n, r in rows.items()} == {
            "sim-00001": "SUCCEEDED", "sim-00002": "SUCCEEDED"}
        stats = f.sim.stats()
        assert stats["max_in_flight_by_site"]["site-01"] == 1
        assert stats["duplicate_installs"] == 0


async def _all_done(pool: asyncpg.Pool, rid: int) -> dict[str, Any] | None:
    rows = await task_by_appliance(pool, rid)
    return rows if all(r["state"] == "SUCCEEDED" for r in rows.values()) else None
