"""The appliance simulator over real HTTP (in-process server, plain aiohttp client).

Every test runs its own small simulator with sub-second timings; client timeouts are short
so a held (`hang`) request cannot block the suite.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.domain.inventory import LAB_POLICY
from orchestrator.inventory import parse_inventory
from orchestrator.simulator import (
    FAULTS,
    FaultProfile,
    FaultProfileError,
    Simulator,
    SimulatorConfig,
    run_simulator,
)
from orchestrator.simulator.fleet import Fleet

pytestmark = pytest.mark.timeout(90)

V0 = "9.0.0-10010"
V1 = "9.0.1-20020"
NAME = "sim-00001"
AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
BAD_AUTH = {"Authorization": "Basic " + base64.b64encode(b"admin:nope").decode()}
FAST = SimulatorConfig(
    appliances=4, sites=2, seed=1, queued_seconds=0.1, install_seconds=0.4,
    install_jitter=0.0, reboot_seconds=0.4, services_starting_seconds=0.4,
    retrieve_seconds=0.05,
)
INSTALL = f"/appliance/update-manager/updates/{V1}/actions/install"
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class Api:
    """A thin client of one simulated appliance: status and parsed body per call."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.sid: str | None = None

    async def raw(self, method: str, path: str, *, auth: bool = True,
                  headers: dict[str, str] | None = None,
                  timeout: float = 2.0, **kwargs: Any) -> tuple[int, bytes]:
        sent = dict(headers or {})
        if auth and self.sid is not None:
            sent["x-dr-session"] = self.sid
        async with self.http.request(method, self.base + path, headers=sent,
                                     timeout=aiohttp.ClientTimeout(total=timeout),
                                     **kwargs) as resp:
            return resp.status, await resp.read()

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        status, body = await self.raw(method, path, **kwargs)
        return status, (json.loads(body) if body else None)

    async def login(self) -> str:
        status, body = await self.call("POST", "/session", auth=False, headers=AUTH)
        assert status == 200, status
        self.sid = body["session_id"]
        return str(self.sid)

    async def install(self, version: str = V1) -> tuple[int, Any]:
        return await self.call("POST", f"/appliance/update-manager/updates/{version}"
                                       "/actions/install")


@asynccontextmanager
async def simulate(config: SimulatorConfig = FAST,
                   **changes: Any) -> AsyncIterator[tuple[Simulator, Api]]:
    async with run_simulator(config.with_changes(**changes)) as sim:
        async with aiohttp.ClientSession() as http:
            yield sim, Api(http, sim.base_url(NAME))


def with_faults(*faults: str, name: str = NAME, **params: Any) -> FaultProfile:
    return FaultProfile(appliances={name: faults}, params=params)


async def until(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool],
                deadline: float = 20.0, interval: float = 0.02) -> Any:
    end = time.monotonic() + deadline
    while True:
        result = await probe()
        if done(result):
            return result
        assert time.monotonic() < end, f"not reached: last {result!r}"
        await asyncio.sleep(interval)


def is_response_error(body: Any) -> bool:
    return (isinstance(body, dict) and set(body) == {"error_code", "message", "op_id"}
            and uuid.UUID(body["op_id"]) is not None)


# --------------------------------------------------------------------------- sessions
async def test_login_session_and_logout() -> None:
    async with simulate() as (_, api):
        status, body = await api.raw("POST", "/session", auth=False, headers=BAD_AUTH)
        assert (status, body) == (401, b"")
        status, body = await api.raw("POST", "/session", auth=False)
        assert (status, body) == (401, b"")
        sid = await api.login()
        assert isinstance(sid, str) and sid
        assert await api.call("GET", "/session") == (200, {"username": "admin"})
        assert await api.raw("DELETE", "/session") == (204, b"")
        assert await api.raw("GET", "/session") == (401, b"")
        assert await api.raw("GET", "/appliance", auth=False) == (401, b"")
        assert await api.raw("GET", "/appliance", auth=False,
                             headers={"x-dr-session": "nope"}) == (401, b"")


async def test_custom_credentials_and_unknown_paths() -> None:
    async with simulate(username="root", password="s3cret:x") as (sim, api):
        assert (await api.raw("POST", "/session", auth=False, headers=AUTH))[0] == 401
        token = base64.b64encode(b"root:s3cret:x").decode()
        status, _ = await api.raw("POST", "/session", auth=False,
                                  headers={"Authorization": f"Basic {token}"})
        assert status == 200
        async with api.http.get(f"{sim.url}/sim-99999/api/rest/configure/v1/session") as r:
            assert (r.status, await r.read()) == (404, b"")
        async with api.http.get(f"{sim.url}/{NAME}/api/rest/other/session") as r:
            assert r.status == 404
        assert (await api.raw("GET", "/no/such/thing"))[0] == 404
        assert (await api.raw("PATCH", "/session"))[0] == 405


async def test_appliance_services_reconfigure_and_repository() -> None:
    async with simulate() as (sim, api):
        await api.login()
        status, info = await api.call("GET", "/appliance")
        assert status == 200
        assert set(info) == {"hostname", "product_name", "product_build_number",
                             "appliance_version", "appliance_build_number",
                             "system_information"}
        assert info["appliance_version"] == V0 and info["appliance_build_number"] == "10010"
        status, services = await api.call("GET", "/services")
        assert status == 200
        assert {s["id"] for s in services} >= {"hms", "drrest"}
        for service in services:
            assert set(service) == {"id", "name", "description", "startup_type", "is_running"}
            assert service["is_running"] is True
        assert (await api.call("GET", "/services/hms"))[1]["id"] == "hms"
        assert await api.raw("GET", "/services/nope") == (404, b"")
        assert await api.call("GET", "/appliance/configuration-manager/reconfigure-required") \
            == (200, {"value": False})
        status, repo = await api.call("GET", "/appliance/update-manager/repository")
        assert status == 200 and "url" in repo
        repo_body = {"url": "https://mirror.invalid/", "mounted_iso": False}
        status, _ = await api.raw("PUT", "/appliance/update-manager/repository", json=repo_body)
        assert status == 204
        assert (await api.call("GET", "/appliance/update-manager/repository"))[1] == repo_body
        assert sim.site_of(NAME) == "site-01" and sim.site_of("sim-00002") == "site-02"


async def test_retrieve_updates_task() -> None:
    async with simulate(available_versions=(V1, "9.0.2-30030")) as (_, api):
        await api.login()
        status, task = await api.call(
            "POST", "/appliance/update-manager/actions/retrieve-updates")
        assert status == 202 and task["status"] in ("QUEUED", "RUNNING")
        done = await until(lambda: api.call("GET", f"/tasks/{task['id']}"),
                           lambda r: r[1]["status"] == "SUCCESS")
        body = done[1]
        assert body["_meta"] == {"errors": []}
        updates = body["result"]["updates"]
        assert [u["version"] for u in updates] == [V1, "9.0.2-30030"]
        assert set(updates[0]) == {"version", "type", "release_date", "reboot_required",
                                   "severity", "summary"}
        assert isinstance(body["start_time"], int) and isinstance(body["complete_time"], int)


# --------------------------------------------------------------------------- lifecycle
async def _poll_through_install(api: Api, task_id: str) -> tuple[list[tuple[str, int]], int]:
    """Poll the task until the first 401; return the (status, progress)s seen and drops."""
    seen: list[tuple[str, int]] = []
    dropped = 0
    end = time.monotonic() + 20
    while time.monotonic() < end:
        try:
            status, raw = await api.raw("GET", f"/tasks/{task_id}", timeout=1.0)
        except DROPPED:
            dropped += 1
        else:
            if status == 401:
                return seen, dropped
            if status == 503:
                dropped += 1
            else:
                assert status == 200
                body = json.loads(raw)
                seen.append((body["status"], body["progress"]))
        await asyncio.sleep(0.03)
    raise AssertionError(f"no 401 after the reboot: {seen}, dropped {dropped}")


async def test_full_install_lifecycle_drop_and_lost_task() -> None:
    # an install and a reboot long enough for several polls even on a loaded machine
    async with simulate(install_seconds=1.2, reboot_seconds=1.2) as (sim, api):
        await api.login()
        old_sid = api.sid
        status, task = await api.install()
        assert status == 202
        assert task["status"] == "QUEUED" and task["type"] == "INSTALL_UPDATE"
        assert isinstance(task["start_time"], int) and "error" not in task
        assert sim.stats()["in_flight"] == 1

        seen, dropped = await _poll_through_install(api, task["id"])
        statuses = [s for s, _ in seen]
        assert statuses[0] in ("QUEUED", "RUNNING")
        assert statuses.count("RUNNING") >= 3
        progress = [p for s, p in seen if s == "RUNNING"]
        assert progress == sorted(progress) and progress[-1] > progress[0]
        assert "SUCCESS" not in statuses  # the reboot came before anyone saw it
        assert dropped >= 1  # the connection was closed without an answer
        assert sim.stats()["in_flight"] == 1  # still in flight until the services are up

        # old session dead; a new login works; the old task is gone
        assert (await api.raw("GET", "/appliance"))[0] == 401
        await api.login()
        assert api.sid != old_sid
        assert await api.raw("GET", f"/tasks/{task['id']}") == (404, b"")
        # services starting: key services not running, version already new
        status, services = await api.call("GET", "/services")
        running = {s["id"]: s["is_running"] for s in services}
        assert running["hms"] is False and running["drrest"] is False
        await until(lambda: api.call("GET", "/services"),
                    lambda r: all(s["is_running"] for s in r[1]))
        status, info = await api.call("GET", "/appliance")
        assert info["appliance_version"] == V1
        assert sim.version_of(NAME) == V1
        stats = sim.stats()
        assert stats["in_flight"] == 0 and stats["installs_accepted"] == 1
        assert stats["versions"] == {V0: 3, V1: 1}
        assert stats["outcomes"] == {"success": 1}
        assert len(stats["appliances"][NAME]["install_times"]) == 1


async def test_reboot_503_mode_and_kept_task() -> None:
    async with simulate(reboot_mode="503", task_after_reboot="kept",
                        services_starting_mode="503") as (sim, api):
        await api.login()
        _, task = await api.install()
        await until(lambda: asyncio.sleep(0, sim.stats()["appliances"][NAME]["phase"]),
                    lambda p: p == "rebooting")
        assert (await api.raw("GET", f"/tasks/{task['id']}"))[0] == 503
        await until(lambda: asyncio.sleep(0, sim.stats()["appliances"][NAME]["phase"]),
                    lambda p: p == "services_starting")
        # while services start, in 503 mode even login answers 503
        status, text = await api.raw("POST", "/session", auth=False, headers=AUTH)
        assert status == 503 and text
        await until(lambda: api.raw("GET", "/appliance"), lambda r: r[0] != 503)
        assert (await api.raw("GET", "/appliance"))[0] == 401  # the old session is gone
        await api.login()
        status, body = await api.call("GET", f"/tasks/{task['id']}")
        assert status == 200 and body["status"] == "SUCCESS" and body["progress"] == 100
        assert body["complete_time"] >= body["start_time"]
        assert (await api.call("GET", "/appliance"))[1]["appliance_version"] == V1
        assert sim.stats()["in_flight"] == 0


async def test_update_without_reboot_and_reconfigure_required() -> None:
    async with simulate(reboot_required=False, reconfigure_fraction=1.0) as (sim, api):
        await api.login()
        _, task = await api.install()
        body = (await until(lambda: api.call("GET", f"/tasks/{task['id']}"),
                            lambda r: r[1]["status"] == "SUCCESS"))[1]
        assert body["progress"] == 100 and body["result"]["version"] == V1
        assert (await api.call("GET", "/appliance"))[1]["appliance_version"] == V1
        assert (await api.call(
            "GET", "/appliance/configuration-manager/reconfigure-required"))[1]["value"] is True
        assert sim.stats()["in_flight"] == 0


async def test_restart_drops_sessions() -> None:
    async with simulate(reboot_seconds=0.2, services_starting_seconds=0.1) as (_, api):
        await api.login()
        assert (await api.raw("POST", "/appliance/actions/restart"))[0] == 204
        with pytest.raises(DROPPED):
            await api.raw("GET", "/appliance")

        async def status() -> int | None:
            try:
                return (await api.raw("GET", "/appliance", timeout=1.0))[0]
            except (TimeoutError, *DROPPED):
                return None

        # dropped or 503 while it reboots, then up again: the old session is gone
        assert await until(status, lambda s: s not in (None, 503)) == 401


# --------------------------------------------------------------------------- install errors
async def test_install_rejections() -> None:
    async with simulate(available_versions=(V1, "8.0.0-1")) as (sim, api):
        await api.login()
        assert await api.raw("POST", "/appliance/update-manager/updates/7.7.7-7/actions/install"
                             ) == (404, b"")
        status, body = await api.install("8.0.0-1")
        assert status == 400 and body["error_code"] == "UPDATE_NOT_APPLICABLE"
        assert (await api.install())[0] == 202
        status, body = await api.install()
        assert status == 400 and is_response_error(body)
        assert body["error_code"] == "UPDATE_IN_PROGRESS"
        await until(lambda: asyncio.sleep(0, sim.stats()["in_flight"]), lambda n: n == 0)
        await api.login()
        status, body = await api.install()
        assert status == 400 and body["error_code"] == "UPDATE_ALREADY_INSTALLED"
        stats = sim.stats()
        assert stats["install_requests"] == 5 and stats["installs_accepted"] == 1
        assert stats["duplicate_installs"] == 0
        assert stats["install_responses"]["400 UPDATE_IN_PROGRESS"] == 1


async def test_duplicate_installs_counted_in_accept_mode() -> None:
    async with simulate(duplicate_install="accept") as (sim, api):
        await api.login()
        assert (await api.install())[0] == 202
        status, _ = await api.install()  # while the first runs
        assert status == 202
        assert sim.stats()["duplicate_installs"] == 1
        assert sim.stats()["max_in_flight"] == 1  # one appliance, one install in flight
        await until(lambda: asyncio.sleep(0, sim.stats()["in_flight"]), lambda n: n == 0)
        await api.login()
        assert (await api.install())[0] == 202  # of the version it is already on
        stats = sim.stats()
        assert stats["duplicate_installs"] == 2 and stats["installs_accepted"] == 3
        assert stats["appliances"][NAME]["installs_accepted"] == 3


async def test_retry_after_error_is_not_a_duplicate() -> None:
    async with simulate(profile=with_faults("install_error")) as (sim, api):
        await api.login()
        _, task = await api.install()
        await until(lambda: api.call("GET", f"/tasks/{task['id']}"),
                    lambda r: r[1]["status"] == "ERROR")
        sim.set_faults(NAME, [])
        assert (await api.install())[0] == 202
        stats = sim.stats()
        assert stats["installs_accepted"] == 2 and stats["duplicate_installs"] == 0


async def test_max_in_flight_overall_and_by_site() -> None:
    async with simulate(appliances=6, install_seconds=0.5) as (sim, api):
        apis = [Api(api.http, sim.base_url(n)) for n in sim.names]
        # site-01: sim-00001, 00003, 00005; site-02: sim-00002, 00004, 00006
        chosen = [apis[0], apis[2], apis[4], apis[1]]
        for a in chosen:
            await a.login()
            assert (await a.install())[0] == 202
        stats = sim.stats()
        assert stats["in_flight"] == 4
        assert stats["in_flight_by_site"] == {"site-01": 3, "site-02": 1}
        await until(lambda: asyncio.sleep(0, sim.stats()["in_flight"]), lambda n: n == 0)
        stats = sim.stats()
        assert stats["max_in_flight"] == 4
        assert stats["max_in_flight_by_site"] == {"site-01": 3, "site-02": 1}
        assert stats["versions"] == {V1: 4, V0: 2}
        times = stats["appliances"]["sim-00003"]["install_times"]
        assert len(times) == 1 and abs(times[0] - time.time()) < 10


# --------------------------------------------------------------------------- faults
async def test_fault_install_error() -> None:
    async with simulate(profile=with_faults("install_error")) as (sim, api):
        await api.login()
        _, task = await api.install()
        body = (await until(lambda: api.call("GET", f"/tasks/{task['id']}", timeout=1.0),
                            lambda r: r[1]["status"] != "QUEUED"
                            and r[1]["status"] != "RUNNING"))[1]
        assert body["status"] == "ERROR" and body["error"]["message"]
        assert "details" in body["error"] and isinstance(body["complete_time"], int)
        # no reboot: the session still works, the version is unchanged
        assert (await api.call("GET", "/appliance"))[1]["appliance_version"] == V0
        assert sim.stats()["outcomes"] == {"error": 1} and sim.stats()["in_flight"] == 0


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("install_500", 500, "INTERNAL_SERVER_ERROR"),
    ("forbidden", 403, "INSUFFICIENT_RIGHTS"),
])
async def test_fault_install_refused(fault: str, status: int, code: str) -> None:
    async with simulate(profile=with_faults(fault)) as (sim, api):
        await api.login()
        got, body = await api.install()
        assert got == status and is_response_error(body) and body["error_code"] == code
        stats = sim.stats()
        assert stats["install_requests"] == 1 and stats["installs_accepted"] == 0
        assert sim.version_of(NAME) == V0


async def test_fault_poll_5xx_and_poll_503() -> None:
    profile = FaultProfile(appliances={NAME: ["poll_5xx"], "sim-00002": ["poll_503"]},
                           params={"poll_error_probability": 0.5})
    async with simulate(profile=profile) as (sim, api):
        await api.login()
        codes = [(await api.raw("GET", "/appliance")) for _ in range(40)]
        got = {c for c, _ in codes}
        assert 200 in got and got & {500, 502} and got <= {200, 500, 502}
        for c, body in codes:
            if c == 500:
                assert is_response_error(json.loads(body))
        other = Api(api.http, sim.base_url("sim-00002"))
        await other.login()
        got = {(await other.raw("GET", "/appliance"))[0] for _ in range(40)}
        assert got == {200, 503}
        assert (await api.install())[0] == 202  # POSTs are not affected


async def test_fault_hang_is_released_on_shutdown() -> None:
    async with aiohttp.ClientSession() as http:
        async with run_simulator(FAST.with_changes(profile=with_faults("hang"))) as sim:
            api = Api(http, sim.base_url(NAME))
            with pytest.raises(asyncio.TimeoutError):
                await api.raw("POST", "/session", auth=False, headers=AUTH, timeout=0.3)
            pending = asyncio.create_task(
                api.raw("GET", "/appliance", auth=False, timeout=10))
            await asyncio.sleep(0.1)
            assert not pending.done()
            # the other appliances answer
            other = Api(http, sim.base_url("sim-00002"))
            assert len(await other.login()) > 0
        # leaving the simulator released the held request: it ends with a dropped connection
        # (not with its own 10 s timeout)
        with pytest.raises(aiohttp.ClientConnectionError):
            await pending


async def test_fault_slow() -> None:
    async with simulate(profile=with_faults("slow", slow_seconds=0.3)) as (_, api):
        started = time.monotonic()
        await api.login()
        assert time.monotonic() - started >= 0.29


async def test_fault_session_expiry() -> None:
    # a new session answers (2 s is ample for a local request on a loaded machine); polled
    # until it expires, then a new login answers again
    profile = with_faults("session_expiry", session_expiry_seconds=2.0)
    async with simulate(profile=profile) as (_, api):
        await api.login()
        assert (await api.raw("GET", "/appliance"))[0] == 200
        assert await until(lambda: api.raw("GET", "/appliance"),
                           lambda r: r[0] != 200, interval=0.1) == (401, b"")
        await api.login()
        assert (await api.raw("GET", "/appliance"))[0] == 200


async def test_fault_long_reboot() -> None:
    profile = with_faults("long_reboot", long_reboot_seconds=60)
    async with simulate(profile=profile, install_seconds=0.1) as (sim, api):
        await api.login()
        await api.install()
        await until(lambda: asyncio.sleep(0, sim.stats()["appliances"][NAME]["phase"]),
                    lambda p: p == "rebooting")
        await asyncio.sleep(0.6)  # longer than the normal reboot + services starting
        with pytest.raises(DROPPED):
            await api.raw("GET", "/appliance", timeout=1.0)
        stats = sim.stats()
        assert stats["in_flight"] == 1 and stats["appliances"][NAME]["phase"] == "rebooting"


async def test_fault_silent_failure() -> None:
    profile = with_faults("silent_failure")
    async with simulate(profile=profile, task_after_reboot="kept") as (sim, api):
        await api.login()
        _, task = await api.install()
        await _poll_through_install(api, task["id"])
        await api.login()
        assert (await api.call("GET", f"/tasks/{task['id']}"))[1]["status"] == "SUCCESS"
        await until(lambda: asyncio.sleep(0, sim.stats()["in_flight"]), lambda n: n == 0)
        assert (await api.call("GET", "/appliance"))[1]["appliance_version"] == V0
        assert sim.stats()["outcomes"] == {"silent_failure": 1}
        # a retry is not a duplicate: the version never arrived
        assert (await api.install())[0] == 202
        assert sim.stats()["duplicate_installs"] == 0


async def test_fault_bad_credentials() -> None:
    async with simulate(profile=with_faults("bad_credentials")) as (_, api):
        assert await api.raw("POST", "/session", auth=False, headers=AUTH) == (401, b"")


async def test_fault_malformed_json() -> None:
    async with simulate(profile=with_faults("malformed_json")) as (_, api):
        await api.login()  # POST answers are intact
        status, body = await api.raw("GET", "/appliance")
        assert status == 200 and body
        with pytest.raises(ValueError):
            json.loads(body)


async def test_fault_wrong_types() -> None:
    async with simulate(profile=with_faults("wrong_types")) as (_, api):
        await api.login()
        status, task = await api.install()
        assert status == 202
        assert task["progress"] == "fifty" and task["status"] == 7
        assert task["start_time"] == "yesterday"
        body = (await api.call("GET", f"/tasks/{task['id']}"))[1]
        assert not isinstance(body["status"], str)


async def test_fault_api_v1_tasks() -> None:
    async with simulate(profile=with_faults("api_v1_tasks", "install_error")) as (_, api):
        await api.login()
        _, task = await api.install()
        assert isinstance(task["start_time"], str) and task["start_time"].endswith("Z")
        body = (await until(lambda: api.call("GET", f"/tasks/{task['id']}"),
                            lambda r: r[1]["status"] == "ERROR"))[1]
        assert isinstance(body["complete_time"], str)
        error = body["error"]
        assert set(error) == {"message", "localized_message", "stack_trace", "cause",
                              "suppressed"}
        assert error["message"] and error["stack_trace"] and error["cause"]["message"]


def test_every_fault_is_named() -> None:
    assert set(FAULTS) == {
        "install_error", "install_500", "poll_5xx", "poll_503", "hang", "slow",
        "session_expiry", "long_reboot", "silent_failure", "forbidden", "bad_credentials",
        "malformed_json", "wrong_types", "api_v1_tasks", "lost_answer", "rest_restart",
        "opaque_tasks", "in_progress_error", "sparse_accept", "no_repository",
        "repo_unreachable", "version_not_offered", "services_down", "reconfigure_pending",
        "probe_flapping", "probe_failing",
    }


# --------------------------------------------------------------------------- control API
async def test_runtime_fault_control_over_http_and_python() -> None:
    async with simulate() as (sim, api):
        control = f"{sim.url}/_sim/appliances/sim-00002/faults"
        async with api.http.post(control, json={"faults": ["forbidden"]}) as r:
            assert r.status == 200 and (await r.json())["faults"] == ["forbidden"]
        assert sim.faults_of("sim-00002") == {"forbidden"}
        other = Api(api.http, sim.base_url("sim-00002"))
        await other.login()
        assert (await other.install())[0] == 403
        async with api.http.post(control, json={"faults": ["nonsense"]}) as r:
            assert r.status == 400
        async with api.http.post(f"{sim.url}/_sim/appliances/nope/faults",
                                 json={"faults": []}) as r:
            assert r.status == 404
        async with api.http.post(control, json={"faults": []}) as r:
            assert r.status == 200
        assert (await other.install())[0] == 202
        sim.set_faults(NAME, ["bad_credentials"])
        assert (await api.raw("POST", "/session", auth=False, headers=AUTH))[0] == 401
        with pytest.raises(ValueError):
            sim.set_faults(NAME, ["nope"])
        with pytest.raises(KeyError):
            sim.set_faults("nope", [])


async def test_reset_and_stats_endpoints() -> None:
    async with simulate(install_seconds=0.1, reboot_seconds=0.1,
                        services_starting_seconds=0.1) as (sim, api):
        await api.login()
        await api.install()
        await until(lambda: asyncio.sleep(0, sim.stats()["in_flight"]), lambda n: n == 0)
        async with api.http.get(f"{sim.url}/_sim/stats?appliances=0") as r:
            stats = await r.json()
        assert "appliances" not in stats
        assert stats["installs_accepted"] == 1 and stats["requests"] >= 2
        async with api.http.post(f"{sim.url}/_sim/reset") as r:
            assert r.status == 200
        stats = sim.stats()
        assert stats["installs_accepted"] == 0 and stats["requests"] == 0
        assert stats["max_in_flight"] == 0 and stats["versions"] == {V0: 3, V1: 1}
        assert stats["appliances"][NAME]["install_times"] == []
        async with api.http.post(f"{sim.url}/_sim/reset", json={"versions": True}) as r:
            assert r.status == 200
        assert sim.stats()["versions"] == {V0: 4}
        assert sim.version_of(NAME) == V0


async def test_list_tasks_filter_sort_page() -> None:
    async with simulate(retrieve_seconds=0.0) as (_, api):
        await api.login()
        for _ in range(3):
            await api.call("POST", "/appliance/update-manager/actions/retrieve-updates")
        _, install = await api.install()
        status, page = await api.call("GET", "/tasks", params={
            "filter_property": "type", "filter": "RETRIEVE_UPDATES", "sort_by": "start_time",
            "order_by": "desc", "limit": "2", "offset": "0"})
        assert status == 200 and page["_meta"]["total"] == 3 and len(page["list"]) == 2
        times = [t["start_time"] for t in page["list"]]
        assert times == sorted(times, reverse=True)
        _, everything = await api.call("GET", "/tasks")
        assert install["id"] in {t["id"] for t in everything["list"]}
        assert (await api.call("GET", "/tasks", params={"limit": "x"}))[0] == 400


# --------------------------------------------------------------------------- profiles
def test_fault_assignment_is_deterministic() -> None:
    profile = FaultProfile(seed=7, rates={"hang": 0.1, "slow": 0.2, "poll_503": 0.3})
    names = [f"sim-{i:05d}" for i in range(1, 501)]
    first = profile.assign(names, seed=0)
    assert first == profile.assign(names, seed=99)  # the profile's seed wins
    assert first != FaultProfile(seed=8, rates=dict(profile.rates)).assign(names, seed=0)
    counts = {f: sum(f in s for s in first) for f in ("hang", "slow", "poll_503")}
    assert 20 < counts["hang"] < 80 and 60 < counts["slow"] < 140
    # the first appliances keep their faults when the fleet grows
    assert profile.assign(names[:100], seed=0) == first[:100]
    # the config seed is used when the profile has none
    no_seed = FaultProfile(rates={"hang": 0.5})
    assert no_seed.assign(names, 1) == no_seed.assign(names, 1) != no_seed.assign(names, 2)
    a = Fleet(SimulatorConfig(appliances=300, profile=FaultProfile.mixed(), seed=3))
    b = Fleet(SimulatorConfig(appliances=300, profile=FaultProfile.mixed(), seed=3))
    assert [x.faults for x in a.appliances] == [x.faults for x in b.appliances]
    assert all(len(x.faults) <= 2 for x in a.appliances)


def test_profiles_from_files_and_names(tmp_path: Path) -> None:
    data = {"seed": 1, "rates": {"install_error": 0.02},
            "appliances": {"sim-00003": "hang", "sim-00004": ["slow", "poll_503"]},
            "params": {"slow_seconds": 1.5, "session_expiry_seconds": 2,
                       "long_reboot_seconds": 3600, "poll_error_probability": 0.3}}
    path = tmp_path / "faults.json"
    path.write_text(json.dumps(data))
    profile = FaultProfile.load(path)
    assert profile.appliances["sim-00004"] == ("slow", "poll_503")
    assert profile.params.slow_seconds == 1.5
    toml = tmp_path / "faults.toml"
    toml.write_text('seed = 1\n[rates]\ninstall_error = 0.02\n[appliances]\n'
                    '"sim-00003" = "hang"\n"sim-00004" = ["slow", "poll_503"]\n'
                    '[params]\nslow_seconds = 1.5\nsession_expiry_seconds = 2\n'
                    'long_reboot_seconds = 3600\npoll_error_probability = 0.3\n')
    assert FaultProfile.load(toml).to_dict() == {**profile.to_dict(), "name": "faults"}
    fleet = Fleet(SimulatorConfig(appliances=5, profile=profile))
    assert fleet.by_name["sim-00003"].faults == {"hang"}
    assert fleet.by_name["sim-00004"].faults == {"slow", "poll_503"}
    mixed = FaultProfile.load("mixed")
    assert mixed.name == "mixed" and len(mixed.rates) >= 7
    with pytest.raises(FaultProfileError):
        FaultProfile.from_dict({"rates": {"explode": 0.1}})
    with pytest.raises(FaultProfileError):
        FaultProfile.from_dict({"params": {"nope": 1}})
    with pytest.raises(FaultProfileError):
        FaultProfile.from_dict({"rates": {"hang": 2}})


# --------------------------------------------------------------------------- scale, inventory
async def test_ten_thousand_appliances_answer_quickly() -> None:
    async with run_simulator(SimulatorConfig(appliances=10_000, sites=20)) as sim:
        assert sim.names[-1] == "sim-10000" and sim.site_of("sim-10000") == "site-20"
        async with aiohttp.ClientSession() as http:
            api = Api(http, sim.base_url("sim-09999"))
            await api.login()
            assert (await api.call("GET", "/appliance"))[0] == 200
            async with http.get(f"{sim.url}/_sim/stats?appliances=0") as r:
                stats = await r.json()
            assert stats["versions"] == {V0: 10_000}
            async with http.get(f"{sim.url}/_sim/stats") as r:
                assert len((await r.json())["appliances"]) == 10_000


async def test_write_inventory_is_importable(tmp_path: Path) -> None:
    async with run_simulator(SimulatorConfig(appliances=6, sites=3)) as sim:
        path = sim.write_inventory(tmp_path / "fleet.csv")
        text = path.read_text()
        assert text.splitlines()[0] == ("name,base_url,site,tags,timezone,credentials_ref,"
                                        "tls_ca_file,tls_thumbprint")
        result = parse_inventory(text, "csv", LAB_POLICY)
        assert [s.name for s in result.specs] == sim.names
        spec = result.specs[2]
        assert spec.base_url == sim.base_url("sim-00003") and spec.site == "site-03"
        assert spec.credentials_ref == "env:APPLIANCE_SIM_CREDENTIALS" and spec.tags == ("sim",)
