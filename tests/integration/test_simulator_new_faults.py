"""The simulator's later fault kinds over real HTTP: lost_answer, rest_restart,
opaque_tasks, in_progress_error and sparse_accept.

Every test runs its own small simulator with sub-second timings and waits for states by
polling with a deadline, so the assertions do not depend on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from orchestrator.simulator import (
    FAULTS,
    FaultParams,
    FaultProfile,
    FaultProfileError,
    Simulator,
    SimulatorConfig,
    run_simulator,
)
from orchestrator.simulator.fleet import Fleet
from tests.integration.test_simulator import Api as SimulatorApi

pytestmark = pytest.mark.timeout(90)

V0 = "9.0.0-10010"
V1 = "9.0.1-20020"
NAME = "sim-00001"
OTHER = "sim-00002"
NEW_FAULTS = ("lost_answer", "rest_restart", "opaque_tasks", "in_progress_error",
              "sparse_accept")
AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
FAST = SimulatorConfig(
    appliances=2, sites=1, seed=1, queued_seconds=0.05, install_seconds=0.5,
    install_jitter=0.0, reboot_seconds=0.3, services_starting_seconds=0.2,
    retrieve_seconds=0.05,
)
INSTALL = f"/appliance/update-manager/updates/{V1}/actions/install"
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Api(SimulatorApi):
    """The simulator tests' client of one appliance, plus its task list."""

    async def tasks(self) -> list[dict[str, Any]]:
        status, body = await self.call("GET", "/tasks")
        assert status == 200, status
        return list(body["list"])


@asynccontextmanager
async def simulate(faults: dict[str, tuple[str, ...]], *, params: dict[str, Any] | None = None,
                   **changes: Any) -> AsyncIterator[tuple[Simulator, Api]]:
    profile = FaultProfile(appliances=faults, params=FaultParams.from_dict(params or {}))
    async with run_simulator(FAST.with_changes(profile=profile, **changes)) as sim:
        async with aiohttp.ClientSession() as http:
            yield sim, Api(http, sim.base_url(NAME))


async def until(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool],
                deadline: float = 20.0, interval: float = 0.02) -> Any:
    end = time.monotonic() + deadline
    while True:
        result = await probe()
        if done(result):
            return result
        assert time.monotonic() < end, f"not reached: last {result!r}"
        await asyncio.sleep(interval)


def stats_of(sim: Simulator) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def probe() -> dict[str, Any]:
        return sim.stats()
    return probe


async def observe(api: Api, path: str) -> tuple[str, Any]:
    """One GET: ("dropped", None), ("http", status) for an answer without JSON, or
    ("json", (status, body))."""
    try:
        status, raw = await api.raw("GET", path, timeout=1.0)
    except DROPPED:
        return "dropped", None
    if status != 200:
        return "http", status
    return "json", (status, json.loads(raw))


async def wait_until_up_on(api: Api, version: str, versions_seen: list[str]) -> None:
    """Poll GET /appliance (logging in again after 401s, tolerating drops and 503s) until
    it reports `version` with every service running; record each version seen."""
    end = time.monotonic() + 20
    while time.monotonic() < end:
        kind, value = await observe(api, "/appliance")
        if kind == "http" and value == 401:
            try:
                await api.login()
            except (*DROPPED, AssertionError):
                pass
        elif kind == "json":
            seen = value[1]["appliance_version"]
            if not versions_seen or versions_seen[-1] != seen:
                versions_seen.append(seen)
            if seen == version:
                status, services = await api.call("GET", "/services")
                if status == 200 and all(s["is_running"] for s in services):
                    return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not up on {version}; versions seen {versions_seen}")


# --------------------------------------------------------------------------- the names
def test_the_new_faults_are_appended_and_in_the_mixed_profile() -> None:
    assert FAULTS[14:19] == NEW_FAULTS
    assert FAULTS[:14] == (
        "install_error", "install_500", "poll_5xx", "poll_503", "hang", "slow",
        "session_expiry", "long_reboot", "silent_failure", "forbidden", "bad_credentials",
        "malformed_json", "wrong_types", "api_v1_tasks",
    )
    mixed = FaultProfile.mixed()
    assert {f: mixed.rates[f] for f in NEW_FAULTS} == {
        "lost_answer": 0.02, "rest_restart": 0.02, "opaque_tasks": 0.05,
        "in_progress_error": 0.03, "sparse_accept": 0.02,
    }


def test_rating_the_new_faults_keeps_the_older_draws() -> None:
    names = [f"sim-{i:05d}" for i in range(1, 1001)]
    mixed = FaultProfile.mixed()
    older = mixed.with_changes(
        rates={f: r for f, r in mixed.rates.items() if f not in NEW_FAULTS})
    for seed in (0, 5, 7):
        with_new = mixed.assign(names, seed)
        without = older.assign(names, seed)
        assert [faults - set(NEW_FAULTS) for faults in with_new] == without
        assert all(len(faults) <= 2 for faults in with_new)
        drawn = {f for faults in with_new for f in faults}
        assert set(NEW_FAULTS) <= drawn
    assert mixed.assign(names, 3) == FaultProfile.mixed().assign(names, 3)


def test_rest_restart_params_are_validated() -> None:
    params = FaultParams()
    assert (params.rest_restart_at, params.rest_restart_seconds) == (0.3, 3.0)
    with pytest.raises(FaultProfileError, match=r"params\.rest_restart_at: 1\.5 is not"):
        FaultParams(rest_restart_at=1.5)
    with pytest.raises(FaultProfileError, match=r"params\.rest_restart_at: nan is not"):
        FaultParams(rest_restart_at=float("nan"))
    with pytest.raises(FaultProfileError,
                       match=r"params\.rest_restart_seconds: -1\.0 is not >= 0"):
        FaultProfile.from_dict({"params": {"rest_restart_seconds": -1}})
    with pytest.raises(FaultProfileError,
                       match=r"params\.rest_restart_at: expected a float, got 'soon'"):
        FaultProfile.from_dict({"params": {"rest_restart_at": "soon"}})
    profile = FaultProfile.from_dict(
        {"params": {"rest_restart_at": 0, "rest_restart_seconds": "0.25"}})
    assert (profile.params.rest_restart_at, profile.params.rest_restart_seconds) == (0.0, 0.25)


# --------------------------------------------------------------------------- lost_answer
async def test_lost_answer_fault() -> None:
    """Accepted, connection closed before the 202; the retry is answered and counted as
    a duplicate (duplicate_install=accept); the install itself runs normally."""
    async with simulate({NAME: ("lost_answer",)}, duplicate_install="accept") as (sim, api):
        await api.login()
        with pytest.raises(DROPPED):
            await api.raw("POST", INSTALL)
        stats = sim.stats()
        assert stats["installs_accepted"] == 1 and stats["lost_answers"] == 1
        assert stats["install_responses"] == {"202": 1}
        assert stats["appliances"][NAME]["phase"] == "installing"
        # the session survived; the task is there for whoever looks
        listed = await api.tasks()
        assert len(listed) == 1 and listed[0]["type"] == "INSTALL_UPDATE"
        assert listed[0]["status"] in ("QUEUED", "RUNNING")
        # a retry is answered, and it is a duplicate
        status, body = await api.install()
        assert status == 202 and body["type"] == "INSTALL_UPDATE" and body["id"]
        stats = sim.stats()
        assert stats["installs_accepted"] == 2 and stats["duplicate_installs"] == 1
        assert stats["lost_answers"] == 1
        versions: list[str] = []
        await wait_until_up_on(api, V1, versions)
        assert versions[-1] == V1 and set(versions) <= {V0, V1}
        stats = sim.stats()
        assert stats["outcomes"] == {"success": 1} and stats["in_flight"] == 0
        assert stats["versions"] == {V1: 1, V0: 1}


async def test_lost_answer_once_per_appliance_until_reset_with_versions() -> None:
    async with simulate({NAME: ("lost_answer",), OTHER: ("lost_answer",)},
                        reboot_required=False) as (sim, api):
        await api.login()
        other = Api(api.http, sim.base_url(OTHER))
        await other.login()
        with pytest.raises(DROPPED):
            await api.raw("POST", INSTALL)
        # 'reject' (the default): the retry is refused, not lost, not accepted
        status, body = await api.install()
        assert status == 400 and body["error_code"] == "UPDATE_IN_PROGRESS"
        with pytest.raises(DROPPED):  # another appliance: its own first install
            await other.raw("POST", INSTALL)
        assert sim.stats()["lost_answers"] == 2
        await until(stats_of(sim), lambda s: s["in_flight"] == 0)
        sim.reset()  # counters only: the fault does not fire again
        status, body = await api.install()
        assert status == 400 and body["error_code"] == "UPDATE_ALREADY_INSTALLED"
        stats = sim.stats()
        assert stats["lost_answers"] == 0 and stats["installs_accepted"] == 0
        sim.reset(versions=True)  # back to the start: it fires again
        with pytest.raises(DROPPED):
            await api.raw("POST", INSTALL)
        stats = sim.stats()
        assert stats["lost_answers"] == 1 and stats["installs_accepted"] == 1
        assert stats["duplicate_installs"] == 0 and stats["install_responses"] == {"202": 1}


# --------------------------------------------------------------------------- rest_restart
async def test_rest_restart_fault() -> None:
    """Part-way through RUNNING the REST service restarts: dropped for a while, then
    sessions and tasks are gone, the old version is reported, a second install is
    refused; the reboot onto the new version comes at the normal time."""
    async with simulate(
        # long enough that polling on a loaded machine sees the outage, and that the
        # install still runs for seconds after the REST service is back
        {NAME: ("rest_restart",)}, params={"rest_restart_at": 0.1, "rest_restart_seconds": 1.5},
        install_seconds=8.0, duplicate_install="accept",
    ) as (sim, api):
        await api.login()
        status, task = await api.install()
        assert status == 202
        assert [t["id"] for t in await api.tasks()] == [task["id"]]
        # the REST service goes away while the install runs...
        await until(lambda: observe(api, "/appliance"), lambda r: r[0] == "dropped")
        stats = sim.stats()
        assert stats["rest_restarts"] == 1
        assert stats["appliances"][NAME]["phase"] == "installing"
        # ...and comes back without its sessions
        back = await until(lambda: observe(api, "/appliance"), lambda r: r[0] != "dropped")
        assert back == ("http", 401)
        await api.login()
        assert sim.stats()["appliances"][NAME]["phase"] == "installing"  # not the reboot
        # ...and without its tasks; the old version, every service running
        assert await api.raw("GET", f"/tasks/{task['id']}") == (404, b"")
        assert await api.tasks() == []
        status, info = await api.call("GET", "/appliance")
        assert status == 200 and info["appliance_version"] == V0
        status, services = await api.call("GET", "/services")
        assert status == 200 and all(s["is_running"] for s in services)
        # the install goes on underneath: a second one is refused even in 'accept' mode
        status, body = await api.install()
        assert status == 400 and body["error_code"] == "UPDATE_IN_PROGRESS"
        stats = sim.stats()
        assert stats["in_flight"] == 1 and stats["installs_accepted"] == 1
        assert stats["appliances"][NAME]["phase"] == "installing"
        # then the real reboot, and the appliance ends on the new version
        versions: list[str] = [V0]
        await wait_until_up_on(api, V1, versions)
        assert versions == [V0, V1]
        stats = sim.stats()
        assert stats["installs_accepted"] == 1 and stats["duplicate_installs"] == 0
        assert stats["rest_restarts"] == 1 and stats["outcomes"] == {"success": 1}
        assert stats["in_flight"] == 0 and stats["versions"] == {V1: 1, V0: 1}
        assert stats["install_responses"] == {"202": 1, "400": 1, "400 UPDATE_IN_PROGRESS": 1}


async def test_rest_restart_fault_in_503_mode_happens_unobserved() -> None:
    async with simulate(
        # an outage of seconds: the two requests below land in it even on a loaded machine
        {NAME: ("rest_restart",)}, params={"rest_restart_at": 0.0, "rest_restart_seconds": 3.0},
        install_seconds=6.0, reboot_mode="503", task_after_reboot="kept",
    ) as (sim, api):
        await api.login()
        _, task = await api.install()
        # counted even though nobody asks the appliance
        await until(stats_of(sim), lambda s: s["rest_restarts"] == 1)
        status, text = await api.raw("POST", "/session", auth=False, headers=AUTH)
        assert status == 503 and text  # everything answers 503, login included
        assert (await api.raw("GET", f"/tasks/{task['id']}"))[0] == 503
        await until(lambda: observe(api, "/appliance"), lambda r: r != ("http", 503))
        await api.login()
        # task_after_reboot=kept does not keep tasks across a REST restart
        assert await api.raw("GET", f"/tasks/{task['id']}") == (404, b"")
        assert await api.tasks() == []
        assert sim.stats()["installs_accepted"] == 1


# --------------------------------------------------------------------------- opaque_tasks
def assert_opaque(body: dict[str, Any]) -> None:
    assert body["type"] == "com.vmware.hms.task"
    assert body["description"] == "Operation in progress"
    for text in (body["type"], body["description"]):
        assert "install" not in text.lower() and V1 not in text and "9.0.1" not in text


async def test_opaque_tasks_fault() -> None:
    async with simulate({NAME: ("opaque_tasks",)}, reboot_required=False) as (sim, api):
        await api.login()
        status, task = await api.install()
        assert status == 202 and task["status"] == "QUEUED"
        assert_opaque(task)
        status, body = await api.call("GET", f"/tasks/{task['id']}")
        assert status == 200
        assert_opaque(body)
        [listed] = await api.tasks()
        assert listed["id"] == task["id"]
        assert_opaque(listed)
        status, found = await api.call("GET", "/tasks?filter_property=type"
                                              "&filter=INSTALL_UPDATE")
        assert status == 200 and found["list"] == []
        # retrieve-updates tasks are not affected
        status, retrieve = await api.call(
            "POST", "/appliance/update-manager/actions/retrieve-updates")
        assert status == 202 and retrieve["type"] == "RETRIEVE_UPDATES"
        done = (await until(lambda: api.call("GET", f"/tasks/{task['id']}"),
                            lambda r: r[1]["status"] == "SUCCESS"))[1]
        assert_opaque(done)
        assert (await api.call("GET", "/appliance"))[1]["appliance_version"] == V1
        # another appliance of the same fleet shows the usual task
        other = Api(api.http, sim.base_url(OTHER))
        await other.login()
        status, plain = await other.install()
        assert status == 202 and plain["type"] == "INSTALL_UPDATE"
        assert plain["description"] == f"Install update {V1}"


# --------------------------------------------------------------------------- in_progress_error
async def test_in_progress_error_fault() -> None:
    """This appliance refuses a second install like duplicate_install=reject, while its
    neighbour follows the global 'accept'."""
    async with simulate({NAME: ("in_progress_error",)}, reboot_required=False,
                        duplicate_install="accept") as (sim, api):
        await api.login()
        other = Api(api.http, sim.base_url(OTHER))
        await other.login()
        assert (await api.install())[0] == 202
        status, body = await api.install()
        assert status == 400 and body["error_code"] == "UPDATE_IN_PROGRESS"
        assert set(body) == {"error_code", "message", "op_id"}
        assert (await other.install())[0] == 202
        assert (await other.install())[0] == 202  # accepted: a duplicate
        await until(stats_of(sim), lambda s: s["in_flight"] == 0)
        assert (await api.call("GET", "/appliance"))[1]["appliance_version"] == V1
        status, body = await api.install()  # of the version just installed
        assert status == 400 and body["error_code"] == "UPDATE_ALREADY_INSTALLED"
        stats = sim.stats()
        assert stats["installs_accepted"] == 3 and stats["duplicate_installs"] == 1
        assert stats["appliances"][NAME]["installs_accepted"] == 1
        assert stats["install_responses"] == {
            "202": 3, "400": 2, "400 UPDATE_IN_PROGRESS": 1, "400 UPDATE_ALREADY_INSTALLED": 1,
        }


# --------------------------------------------------------------------------- sparse_accept
async def test_sparse_accept_fault() -> None:
    async with simulate({NAME: ("sparse_accept",)}, queued_seconds=0.0,
                        install_seconds=2.0) as (sim, api):
        await api.login()
        status, body = await api.install()
        assert (status, body) == (202, {"status": "QUEUED"})
        # the task exists on the appliance and can be found in the list
        [listed] = await api.tasks()
        assert listed["type"] == "INSTALL_UPDATE" and listed["id"]
        assert listed["description"] == f"Install update {V1}"
        assert listed["status"] in ("QUEUED", "RUNNING")
        status, task = await api.call("GET", f"/tasks/{listed['id']}")
        assert status == 200 and task["id"] == listed["id"]
        stats = sim.stats()
        assert stats["installs_accepted"] == 1 and stats["duplicate_installs"] == 0
        assert stats["in_flight"] == 1
        # retrieve-updates answers are not affected
        status, retrieve = await api.call(
            "POST", "/appliance/update-manager/actions/retrieve-updates")
        assert status == 202 and retrieve["id"] and retrieve["type"] == "RETRIEVE_UPDATES"


def test_rest_restart_window_ends_with_running_at_the_latest() -> None:
    """With a fake clock: the REST service is down from rest_restart_at of RUNNING until
    rest_restart_seconds later, or until the reboot takes over at the end of RUNNING."""
    clock = [100.0]
    profile = FaultProfile(appliances={NAME: ("rest_restart",)},
                           params=FaultParams(rest_restart_at=0.5, rest_restart_seconds=60))
    fleet = Fleet(FAST.with_changes(profile=profile, install_seconds=1.0),
                  clock=lambda: clock[0])
    app = fleet.by_name[NAME]
    assert fleet.install(app, V1, 100.0)[0] == 202  # RUNNING 100.05 .. 101.05
    for now, down, phase in ((100.5, False, "installing"), (100.6, True, "installing"),
                             (101.0, True, "installing"), (101.05, False, "rebooting")):
        clock[0] = now
        fleet.advance(app, now)
        assert (fleet.rest_down(app, now), fleet.phase(app, now)) == (down, phase), now
    assert fleet.stats()["rest_restarts"] == 1 and app.version == V1
