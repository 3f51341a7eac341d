"""Pre-flight against the simulator and a real database: every planted problem is found with
its reason code and nothing else is flagged; `required` leaves the failing appliances out
and the rollout succeeds on the rest; `warn` records and installs anyway; a re-run sees a
fixed appliance; two engines never run the same automatic pre-flight twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from orchestrator.domain.inventory import LAB_POLICY
from orchestrator.engine.preflight import execute_run, preflight_task_ids
from orchestrator.store import preflight as preflight_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import windows as window_store
from orchestrator.store.forecast import rollout_forecast
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
from tests.helpers import eventually

# the planted problems: appliance -> (fault, the code the pre-flight must give)
PLANTED = {
    "sim-00002": ("bad_credentials", "CREDENTIALS"),
    "sim-00003": ("no_repository", "NO_REPOSITORY"),
    "sim-00004": ("repo_unreachable", "REPOSITORY_UNREACHABLE"),
    "sim-00005": ("version_not_offered", "VERSION_NOT_OFFERED"),
    "sim-00006": ("services_down", "SERVICES_DOWN"),
    "sim-00007": ("reconfigure_pending", "RECONFIGURE_PENDING"),
}


def plant(f: Fleet) -> None:
    for name, (fault, _) in PLANTED.items():
        f.sim.set_faults(name, [fault])


async def operator_run(pool: asyncpg.Pool, rollout_id: int) -> preflight_store.PreflightRun:
    """A pre-flight as `orchestrator rollout preflight` runs it (in this process)."""
    run = await preflight_store.request_run(pool, rollout_id, ACTOR, owner="test-cli",
                                            lease_seconds=10)
    async with http_client() as http:
        done = await execute_run(pool, http, run, owner="test-cli", policy=LAB_POLICY,
                                 lease_seconds=10)
    assert done is not None
    return done


async def by_name(pool: asyncpg.Pool, rollout_id: int
                  ) -> dict[str, preflight_store.ApplianceResult]:
    return {r.appliance: r for r in await preflight_store.results(pool, rollout_id)}


async def test_preflight_finds_every_planted_problem_and_nothing_else(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=12, sites=2) as f:
        # sim-00008 is on the target already (a first rollout installed it)
        first = await create(pool, selector={"names": ["sim-00008"]})
        async with engine(f):
            await wait_until_terminal(pool, first)
        plant(f)
        installs_before = f.sim.stats()["install_requests"]
        rid = await create(pool, start=False)
        run = await operator_run(pool, rid)
        results = await by_name(pool, rid)
        stats = f.sim.stats()
        # every client logged out after its check: no session is left open
        assert {a.name: len(a.sessions) for a in f.sim.fleet.appliances
                if a.sessions} == {}
    assert stats["install_requests"] == installs_before, "a pre-flight installs nothing"
    assert run.total == 12 and run.done == 12 and run.state == "finished"
    for name, (_, code) in PLANTED.items():
        assert (results[name].result, results[name].code) == ("fail", code), \
            (name, results[name])
        assert results[name].message
    assert (results["sim-00008"].result, results["sim-00008"].code) == \
        ("skip", "ALREADY_AT_TARGET")
    assert results["sim-00008"].current_version == TARGET
    healthy = set(results) - set(PLANTED) - {"sim-00008"}
    assert len(healthy) == 5
    for name in healthy:
        assert (results[name].result, results[name].code) == ("ok", None), results[name]
        assert results[name].current_version == "9.0.0-10010"
    assert run.counts == {"fail": 6, "skip": 1, "ok": 5}
    # the appliances' own words
    assert "No update repository" in results["sim-00003"].message
    assert "Cannot reach the update repository" in results["sim-00004"].message
    assert "wrong credentials" in results["sim-00002"].message
    # a DRAFT rollout's tasks are never touched by a pre-flight
    tasks = await task_by_appliance(pool, rid)
    assert {t["state"] for t in tasks.values()} == {"PENDING"}


async def test_required_leaves_the_failing_appliances_out_and_succeeds_on_the_rest(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=10, sites=2) as f:
        plant(f)
        rid = await create(pool, {"preflight": "required", "waves": [1, "100%"]})
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        stats = f.sim.stats()
        versions = {name: f.sim.version_of(name) for name in f.sim.names}
    assert rollout.state == "SUCCEEDED"
    tasks = await task_by_appliance(pool, rid)
    for name, (_, code) in PLANTED.items():
        task = tasks[name]
        assert task["state"] == "SKIPPED", (name, task["state"])
        assert task["error_code"] == f"PREFLIGHT_{code}"
        assert task["error_message"].startswith(f"pre-flight {code}: ")
        assert task["dispatched_at"] is None
        assert versions[name] == "9.0.0-10010"
    healthy = set(tasks) - set(PLANTED)
    assert {tasks[n]["state"] for n in healthy} == {"SUCCEEDED"}
    # simulator truth: an install was sent to each healthy appliance, and only to them
    assert stats["install_requests"] == len(healthy) == stats["installs_accepted"]
    run = await preflight_store.latest_run(pool, rid)
    assert run is not None and run.trigger == "start" and run.left_out == len(PLANTED)
    assert run.finished_at is not None
    # install_sent_at, not dispatched_at (the claiming transaction's start, which may
    # precede the pre-flight's commit that the claim then saw)
    assert run.finished_at <= min(t["install_sent_at"] for t in tasks.values()
                                  if t["install_sent_at"]), "checked before the first install"


async def test_warn_records_the_problems_and_installs_anyway(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=8, sites=2) as f:
        f.sim.set_faults("sim-00005", ["version_not_offered"])
        f.sim.set_faults("sim-00007", ["reconfigure_pending"])
        rid = await create(pool)  # preflight: warn, the default
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        stats = f.sim.stats()
    results = await by_name(pool, rid)
    assert results["sim-00005"].code == "VERSION_NOT_OFFERED"
    assert results["sim-00007"].code == "RECONFIGURE_PENDING"
    assert sum(r.result == "ok" for r in results.values()) == 6
    tasks = await task_by_appliance(pool, rid)
    # installed anyway: the appliance refused the version it does not offer
    assert tasks["sim-00005"]["state"] == "FAILED"
    assert tasks["sim-00005"]["dispatched_at"] is not None
    assert stats["install_responses"].get("404", 0) >= 1
    assert tasks["sim-00007"]["state"] == "SUCCEEDED"
    assert rollout.state == "COMPLETED_WITH_FAILURES"


async def test_a_rerun_sees_a_fixed_appliance(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=4, sites=1) as f:
        f.sim.set_faults("sim-00003", ["no_repository"])
        rid = await create(pool, start=False)
        first = await operator_run(pool, rid)
        f.sim.set_faults("sim-00003", [])
        second = await operator_run(pool, rid)
        # the retrieve-updates tasks the checks started are known, so that a task runner
        # reconciling a lost install answer never takes them for an install
        app = await pool.fetchval("SELECT id FROM appliances WHERE name = 'sim-00001'")
        known = await preflight_task_ids(pool, app)
        on_appliance = set(f.sim.fleet.by_name["sim-00001"].tasks)
        assert len(known) == 2 and known <= on_appliance  # one per run
    assert first.counts == {"ok": 3, "fail": 1}
    assert second.counts == {"ok": 4}
    results = await by_name(pool, rid)
    assert results["sim-00003"].result == "ok"
    assert results["sim-00003"].run_id == second.id
    summary = await preflight_store.summary(pool, rid)
    assert summary is not None and summary.counts == {"ok": 4}
    assert summary.run is not None and summary.run.id == second.id


async def test_two_engines_run_the_start_preflight_once(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=6, sites=2) as f:
        rid = await create(pool, {"preflight": "required"})
        async with engine(f), engine(f):
            rollout = await wait_until_terminal(pool, rid)
        stats = f.sim.stats()
    assert rollout.state == "SUCCEEDED"
    runs = await pool.fetch("SELECT trigger, finished_at FROM preflight_runs "
                            "WHERE rollout_id = $1", rid)
    assert [r["trigger"] for r in runs] == ["start"]
    # every appliance was asked for its updates once: by one engine's run
    assert stats["requests_by_kind"]["retrieve_updates"] == 6


async def test_the_forecast_leaves_out_what_will_fail_or_be_skipped(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=10, sites=1) as f:
        for name in ("sim-00002", "sim-00003", "sim-00004"):
            f.sim.set_faults(name, ["no_repository"])
        rid = await create(pool, {"max_concurrency": 1}, start=False)
        now = datetime.now(UTC)
        before = await rollout_forecast(pool, rid, now, 100.0)
        await operator_run(pool, rid)
        after = await rollout_forecast(pool, rid, now, 100.0)
    assert before.eta is not None and after.eta is not None
    assert before.eta - now == timedelta(seconds=1000)
    assert after.eta - now == timedelta(seconds=700)


async def test_an_api_request_is_run_by_an_engine(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=3, sites=1) as f:
        rid = await create(pool, start=False)
        run = await preflight_store.request_run(pool, rid, ACTOR)
        assert run.state == "requested"
        async with engine(f):
            async def finished() -> preflight_store.PreflightRun | None:
                return await preflight_store.get_run(pool, run.id)

            done = await eventually(finished, lambda r: r is not None and r.finished_at)
    assert done is not None and done.counts == {"ok": 3}
    rollout = await rollout_store.get_rollout(pool, rid)
    assert rollout.state == "DRAFT"


async def test_required_checks_again_before_the_window_opens(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """A problem that appears after the start (the rollout waits for its window) is found
    by the run `preflight_lead_seconds` before the window opens, before any install."""
    real = datetime.now(UTC)
    opening = real.replace(second=0, microsecond=0) + timedelta(minutes=1)
    offset = opening - real - timedelta(seconds=20)  # the window opens 20 s from now

    def clock() -> datetime:
        return datetime.now(UTC) + offset

    await window_store.create_window(pool, {
        "name": "every-minute", "cron": "* * * * *", "duration": 15, "cutoff": 3,
        "timezone": "UTC", "sites": ["site-01"]}, ACTOR)
    async with fleet(pool, db_url, appliances=4, sites=1) as f:
        rid = await create(pool, {"preflight": "required", "preflight_lead_seconds": 10,
                                  "task_timeout": 60})
        async with engine(f, clock=clock):
            await eventually(lambda: rollout_store.get_rollout(pool, rid),
                             lambda r: r.state == "WAITING_WINDOW")
            start = await preflight_store.latest_run(pool, rid)
            assert start is not None and start.trigger == "start"
            assert start.finished_at is not None and start.counts == {"ok": 4}
            f.sim.set_faults("sim-00002", ["repo_unreachable"])  # after the start run
            rollout = await wait_until_terminal(pool, rid, timeout=60)
    assert rollout.state == "SUCCEEDED"
    runs = await pool.fetch("SELECT trigger, finished_at FROM preflight_runs "
                            "WHERE rollout_id = $1 ORDER BY id", rid)
    assert [r["trigger"] for r in runs] == ["start", "window"]
    tasks = await task_by_appliance(pool, rid)
    assert tasks["sim-00002"]["state"] == "SKIPPED"
    assert tasks["sim-00002"]["error_code"] == "PREFLIGHT_REPOSITORY_UNREACHABLE"
    first_install = min(t["install_sent_at"] for t in tasks.values() if t["install_sent_at"])
    assert runs[1]["finished_at"] <= first_install


async def test_the_api_asks_for_a_preflight_and_shows_its_results(
    pool: asyncpg.Pool, db_url: str
) -> None:
    from tests.integration.test_api import _api
    from tests.integration.test_api_support import api_client, tokens_by_role

    tokens = await tokens_by_role(pool)
    async with fleet(pool, db_url, appliances=5, sites=1) as f:
        f.sim.set_faults("sim-00004", ["services_down"])
        rid = await create(pool, start=False)
        template = "/api/v1/rollouts/{id}/preflight"
        async with api_client(pool) as client:
            api = await _api(client, tokens["operator"])
            viewer = tokens["viewer"]
            status, body = await api.call("GET", f"/api/v1/rollouts/{rid}/preflight",
                                          template, token=viewer)
            assert (status, body["summary"], body["items"]) == (200, None, [])
            status, body = await api.call("GET", f"/api/v1/rollouts/{rid}",
                                          "/api/v1/rollouts/{id}", token=viewer)
            assert body["preflight"] is None
            async with client.post(f"/api/v1/rollouts/{rid}/preflight",
                                   headers={"Authorization": f"Bearer {tokens['viewer']}"}
                                   ) as resp:
                assert resp.status == 403  # a viewer reads, an operator asks
            status, body = await api.call("POST", f"/api/v1/rollouts/{rid}/preflight",
                                          template)
            assert status == 202 and body["run"]["state"] == "requested"
            run_id = body["run"]["id"]
            status, again = await api.call("POST", f"/api/v1/rollouts/{rid}/preflight",
                                           template)
            assert status == 409 and again["run"]["id"] == run_id
            async with engine(f):
                await eventually(lambda: preflight_store.get_run(pool, run_id),
                                 lambda r: r is not None and r.finished_at is not None)
            status, body = await api.call("GET", f"/api/v1/rollouts/{rid}/preflight",
                                          template, token=viewer)
            assert status == 200
            assert body["summary"]["counts"] == {"ok": 4, "warn": 0, "fail": 1, "skip": 0}
            assert body["summary"]["codes"] == [
                {"result": "fail", "code": "SERVICES_DOWN", "appliances": 1}]
            assert body["summary"]["run"]["state"] == "finished"
            assert len(body["items"]) == 5
            status, body = await api.call(
                "GET", f"/api/v1/rollouts/{rid}/preflight?result=fail&limit=1", template,
                token=viewer)
            assert [(i["appliance"], i["code"]) for i in body["items"]] == [
                ("sim-00004", "SERVICES_DOWN")]
            assert body["next_cursor"] is None
            status, body = await api.call("GET", f"/api/v1/rollouts/{rid}",
                                          "/api/v1/rollouts/{id}", token=viewer)
            assert body["preflight"]["counts"]["fail"] == 1
            status, body = await api.call("GET", "/api/v1/rollouts/999/preflight", template,
                                          token=viewer)
            assert status == 404
    audit = await pool.fetch("SELECT actor, action FROM audit_log WHERE action = "
                             "'rollout.preflight'")
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("operator-token", "rollout.preflight")]


async def test_an_abandoned_run_is_taken_over_and_holds_the_installs_meanwhile(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """A process that died mid-run (its lease runs out) leaves its run to an engine, which
    checks the appliances again; the rollout installs nothing until the run has ended."""
    async with fleet(pool, db_url, appliances=4, sites=1) as f:
        f.sim.set_faults("sim-00003", ["version_not_offered"])
        rid = await create(pool, {"preflight": "required"})
        # a CLI that died: its run is unfinished, its lease short
        dead = await preflight_store.request_run(pool, rid, ACTOR, owner="cli:dead",
                                                 lease_seconds=1)
        async with engine(f):
            rollout = await wait_until_terminal(pool, rid)
        stats = f.sim.stats()
    taken = await preflight_store.get_run(pool, dead.id)
    assert taken is not None and taken.finished_at is not None
    assert taken.counts == {"ok": 3, "fail": 1} and taken.left_out == 1
    tasks = await task_by_appliance(pool, rid)
    assert tasks["sim-00003"]["error_code"] == "PREFLIGHT_VERSION_NOT_OFFERED"
    first_install = min(t["install_sent_at"] for t in tasks.values() if t["install_sent_at"])
    runs = await pool.fetch("SELECT trigger, finished_at FROM preflight_runs "
                            "WHERE rollout_id = $1 ORDER BY id", rid)
    # the start run waited for the operator's, then ran; both before the first install
    assert [r["trigger"] for r in runs] == ["operator", "start"]
    assert all(r["finished_at"] <= first_install for r in runs)
    assert rollout.state == "SUCCEEDED"
    assert stats["install_requests"] == 3


async def test_results_written_in_batches_are_all_kept(
    pool: asyncpg.Pool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.engine.preflight as engine_preflight

    monkeypatch.setattr(engine_preflight, "WRITE_BATCH", 2)
    async with fleet(pool, db_url, appliances=7, sites=2) as f:
        f.sim.set_faults("sim-00006", ["reconfigure_pending"])
        rid = await create(pool, {"max_concurrency": 3, "per_site_concurrency": 1},
                           start=False)
        run = await operator_run(pool, rid)
    assert run.counts == {"ok": 6, "fail": 1} and run.done == run.total == 7
    results = await by_name(pool, rid)
    assert len(results) == 7 and {r.run_id for r in results.values()} == {run.id}
