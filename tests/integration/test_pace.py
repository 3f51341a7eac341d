"""The adaptive pace (strategy `pace`: "adaptive") against the simulator and a real
database: a healthy fleet runs more installs at once than configured, never more than
pace_max_concurrency (the simulator's truth); a fleet whose installs start failing part-way
gets its pace halved before the failure policy trips; each change is a task event and an
audit row with its reason, kept in the rollout's row across engines."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import asyncpg
import pytest

from orchestrator.cli.rollout import watch
from orchestrator.store import pace as pace_store
from tests.fleet import create, engine, fleet, wait_until_terminal
from tests.helpers import cli_env, eventually, run_cli

PACE: dict[str, Any] = {
    "pace": "adaptive", "waves": [2, "100%"], "order": "name", "max_concurrency": 4,
    "pace_max_concurrency": 20, "pace_interval_seconds": 0.4,
}


async def audit_rows(pool: asyncpg.Pool, rollout_id: int) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT actor, via, detail FROM audit_log WHERE action = 'rollout.pace'
           AND target_id = $1 ORDER BY id""", str(rollout_id))
    return [dict(r) for r in rows]


def assert_a_chain(events: list[dict[str, Any]], start: int) -> None:
    """Each change starts where the one before ended: the pace was never reset."""
    at = start
    for event in events:
        assert event["from"] == at, events
        assert event["reason"]
        at = event["to"]


async def test_a_healthy_fleet_runs_faster_than_configured_within_the_maximum(
    pool: asyncpg.Pool, db_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    async with fleet(pool, db_url, appliances=100, sites=4) as f:
        rid = await create(pool, PACE)
        async with engine(f):
            # `rollout watch` follows it live: a line per change of the pace
            assert await asyncio.wait_for(watch(pool, rid, interval=0.05), 120) == 0
            rollout = await wait_until_terminal(pool, rid, timeout=120)
        assert rollout.state == "SUCCEEDED"
        watched = [int(n) for n in re.findall(
            r"^pace: (\d+) installs at once \(adaptive\)", capsys.readouterr().out, re.M)]
        assert watched[0] == 4 and max(watched) > 4, watched
        stats = f.sim.stats()
        assert 4 < stats["max_in_flight"] <= 20, stats["max_in_flight"]
        assert stats["duplicate_installs"] == 0
        events = await pace_store.pace_events(pool, rid)
        assert events and events[0]["change"] == "grow"
        assert events[0]["reason"].startswith("healthy (")
        assert max(e["to"] for e in events) > 4
        assert all(1 <= e["to"] <= 20 for e in events)
        assert_a_chain(events, 4)
        # each change is a task event on a task of the rollout that finished, which keeps
        # its state, and an audit row by the engine
        rows = await pool.fetch(
            """SELECT e.from_state, e.to_state, t.state FROM task_events e
               JOIN tasks t ON t.id = e.task_id WHERE e.rollout_id = $1
               AND e.detail ? 'pace'""", rid)
        assert {(r["from_state"], r["to_state"], r["state"]) for r in rows} == {
            ("SUCCEEDED", "SUCCEEDED", "SUCCEEDED")}
        audit = await audit_rows(pool, rid)
        assert [(a["detail"]["from"], a["detail"]["to"]) for a in audit] == [
            (e["from"], e["to"]) for e in events]
        assert {a["via"] for a in audit} == {"engine"}
        assert all(a["actor"].startswith("engine:") for a in audit)
        state = await pace_store.pace_state(pool, rid)
        assert state is not None and state.concurrency == events[-1]["to"]
        assert state.reason == events[-1]["reason"]
        # `rollout show` says where the pace ended, and why
        env = cli_env(db_url)
        shown = run_cli("rollout", "show", str(rid), env=env)
        assert f"pace: {state.concurrency} installs at once (adaptive): {state.reason}" in \
            shown.stdout, shown.stdout + shown.stderr
        detail = json.loads(run_cli("rollout", "show", str(rid), "--json", env=env).stdout)
        assert detail["pace"]["concurrency"] == state.concurrency
        assert detail["strategy"]["pace"] == "adaptive"


async def test_failures_rising_part_way_halve_the_pace_before_the_policy_trips(
    pool: asyncpg.Pool, db_url: str,
) -> None:
    async with fleet(pool, db_url, appliances=100, sites=4) as f:
        # a bad batch: every appliance after the first 50 of the plan (name order) fails
        for n in range(51, 101):
            f.sim.set_faults(f"sim-{n:05d}", ["install_error"])
        # a loaded machine slows the installs as the engine sees them: a duration band
        # wide enough that only the failures halve the pace, which is what this is about
        rid = await create(pool, {**PACE, "max_failures": "30%", "min_executed": 10,
                                  "pace_duration_band": 2000})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid, timeout=120)
        assert rollout.state == "FAILED"
        assert rollout.abort_reason and "failure policy tripped" in rollout.abort_reason
        events = await pace_store.pace_events(pool, rid)
        assert_a_chain(events, 4)
        grew = [e for e in events if e["change"] == "grow"]
        shrank = [e for e in events if e["change"] == "shrink"]
        assert grew and shrank, events
        first_shrink = shrank[0]
        assert first_shrink["to"] == max(1, first_shrink["from"] // 2)
        assert "failed" in first_shrink["reason"]
        assert first_shrink["failed"] >= 1
        # the trip cancelled the tasks not started yet: its events come after the shrink
        trip_event = await pool.fetchval(
            """SELECT min(id) FROM task_events WHERE rollout_id = $1
               AND to_state = 'CANCELLED' AND detail->>'reason' LIKE 'failure policy%'""",
            rid)
        assert trip_event is not None
        assert first_shrink["id"] < trip_event
        # and the simulator never saw more installs at once than the pace allowed
        assert f.sim.stats()["max_in_flight"] <= 20


async def test_the_pace_outlives_its_engine(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=100, sites=4, install_seconds=0.6) as f:
        # an engine handing its installs over to another, on a loaded machine, may take
        # longer than the fast fleet's 5 s reboot_grace: this test is about the pace
        rid = await create(pool, {**PACE, "reboot_grace": 60, "task_timeout": 180})
        async with engine(f):
            await eventually(lambda: pace_store.pace_state(pool, rid),
                             lambda s: s is not None and s.concurrency > 4, timeout=60)
        before = await pace_store.pace_state(pool, rid)
        assert before is not None and before.concurrency > 4
        seen = {e["id"] for e in await pace_store.pace_events(pool, rid)}
        async with engine(f):  # another engine (another owner) goes on from there
            rollout = await wait_until_terminal(pool, rid, timeout=120)
        failed = [dict(r) for r in await pool.fetch(
            """SELECT a.name, t.state, t.error_code, t.error_message FROM tasks t
               JOIN appliances a ON a.id = t.appliance_id
               WHERE t.rollout_id = $1 AND t.state <> 'SUCCEEDED'""", rid)]
        assert rollout.state == "SUCCEEDED", failed
        events = await pace_store.pace_events(pool, rid)
        assert_a_chain(events, 4)  # never reset to max_concurrency
        after = [e for e in events if e["id"] not in seen]
        assert not after or after[0]["from"] == before.concurrency
        assert len({a["actor"] for a in await audit_rows(pool, rid)}) >= 1
        assert f.sim.stats()["max_in_flight"] <= 20


async def test_with_the_pace_off_nothing_changes(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=20, sites=2) as f:
        rid = await create(pool, {"waves": [2, "100%"], "max_concurrency": 4})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        assert rollout.state == "SUCCEEDED"
        assert f.sim.stats()["max_in_flight"] <= 4
        assert await pace_store.pace_state(pool, rid) is None
        assert json.loads(run_cli("rollout", "show", str(rid), "--json",
                                  env=cli_env(db_url)).stdout)["pace"] is None
        assert await pace_store.pace_events(pool, rid) == []
        assert await audit_rows(pool, rid) == []
