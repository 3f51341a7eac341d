"""The appliance client against the real simulator: one test per fault, plus the happy path
through a reboot. Every test runs its own small simulator on 127.0.0.1 with sub-second
timings, and asserts the typed outcome a caller of the client sees."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
import pytest

from orchestrator.appliance import (
    ApplianceClient,
    ApplianceError,
    ApplianceHttp,
    ApplianceTarget,
    ApplianceTimeout,
    Credentials,
    Forbidden,
    MalformedResponse,
    NotFound,
    ServerError,
    ServiceUnavailable,
    Task,
    TaskStatus,
    Unauthorized,
    Unreachable,
    parse_updates,
)
from orchestrator.simulator import FAULTS, FaultProfile, SimulatorConfig, run_simulator
from orchestrator.simulator.server import Simulator

pytestmark = pytest.mark.timeout(90)

NAME = "sim-00001"
V0 = "9.0.0-10010"
V1 = "9.0.1-20020"
CREDS = Credentials("admin", "admin")
BASE = SimulatorConfig(
    appliances=3,
    sites=1,
    seed=1,
    queued_seconds=0.05,
    install_seconds=0.3,
    install_jitter=0.0,
    reboot_seconds=0.4,
    services_starting_seconds=0.4,
    reboot_mode="drop",
    task_after_reboot="lost",
    services_starting_mode="not_running",
    username="admin",
    password="admin",
    initial_version=V0,
    available_versions=(V1,),
)
T = TypeVar("T")


@asynccontextmanager
async def simulate(
    *faults: str, params: dict[str, Any] | None = None, **changes: Any
) -> AsyncIterator[tuple[Simulator, ApplianceTarget]]:
    """A simulator whose appliance NAME has `faults`; yields it and NAME's target."""
    profile = FaultProfile(appliances={NAME: faults}, params=params or {})
    async with run_simulator(BASE.with_changes(profile=profile, **changes)) as sim:
        assert sim.faults_of(NAME) == frozenset(faults)
        yield sim, ApplianceTarget(NAME, sim.base_url(NAME))


def make_http(**overrides: Any) -> ApplianceHttp:
    options: dict[str, Any] = {
        "retries": 2,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "request_timeout": 2.0,
        "connect_timeout": 1.0,
        "default_credentials": CREDS,
    }
    return ApplianceHttp(**(options | overrides))


async def until(
    probe: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    *,
    deadline: float = 20.0,
    interval: float = 0.03,
    seen: Counter[str] | None = None,
) -> T:
    """Call `probe` until `done(result)`; ApplianceErrors are counted in `seen` by kind."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        try:
            result = await probe()
            if done(result):
                return result
        except ApplianceError as exc:
            if seen is None:
                raise
            seen[type(exc).__name__] += 1
        if loop.time() > end:
            raise AssertionError(f"condition not reached within {deadline} s (seen: {seen})")
        await asyncio.sleep(interval)


async def terminal_task(client: ApplianceClient, task: Task) -> Task:
    assert task.id is not None
    task_id = task.id
    return await until(lambda: client.get_task(task_id), lambda t: t.status.is_terminal)


def first_error(
    call: Callable[[], Awaitable[Any]],
) -> Callable[[], Awaitable[ApplianceError | None]]:
    """A probe answering None while `call` succeeds and the error once it fails."""

    async def probe() -> ApplianceError | None:
        try:
            await call()
        except ApplianceError as exc:
            return exc
        return None

    return probe


def test_every_fault_has_a_test() -> None:
    tested = {
        name.removeprefix("test_").removesuffix("_fault")
        for name in globals()
        if name.startswith("test_") and name.endswith("_fault")
    }
    assert tested == set(FAULTS)


# --- one test per fault -------------------------------------------------------------------


async def test_install_error_fault() -> None:
    async with simulate("install_error") as (sim, target), make_http() as http:
        client = http.client(target)
        task = await client.install(V1)
        assert task.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)
        done = await terminal_task(client, task)
        assert done.status is TaskStatus.ERROR
        assert done.error_message is not None
        assert "post-install script exited with status 1" in done.error_message
        assert done.error_details is not None and "updatecli.log" in done.error_details
        assert done.complete_time is not None
        assert (await client.get_appliance()).appliance_version == V0
        assert sim.version_of(NAME) == V0


async def test_install_500_fault() -> None:
    async with simulate("install_500") as (sim, target), make_http(retries=3) as http:
        with pytest.raises(ServerError) as info:
            await http.client(target).install(V1)
        exc = info.value
        assert type(exc) is ServerError
        assert exc.status == 500
        assert exc.error_code == "INTERNAL_SERVER_ERROR"
        assert exc.message and exc.op_id
        assert str(exc).startswith(f"{NAME}: install of {V1} failed on the appliance (500 ")
        assert sim.stats()["install_requests"] == 1  # never repeated


async def _poll_error_fault(fault: str, expected: type[ServerError]) -> None:
    async with simulate(fault, params={"poll_error_probability": 0.5}) as (sim, target):
        async with make_http(retries=0) as http:
            client = http.client(target)
            seen: Counter[str] = Counter()
            # without retries, some GET fails sooner or later (p = 0.5 per GET)
            await until(client.get_appliance, lambda _: sum(seen.values()) > 0, seen=seen)
            assert set(seen) == {expected.__name__}
        async with make_http(retries=12, backoff_cap=0.01) as http:
            client = http.client(target)
            for _ in range(5):  # retries suffice: every call succeeds
                assert (await client.get_appliance()).appliance_version == V0
            assert sum(http.errors_by_kind.values()) == http.retried
    async with simulate(fault, params={"poll_error_probability": 1.0}) as (sim, target):
        async with make_http(retries=2) as http:
            with pytest.raises(expected) as info:
                await http.client(target).get_appliance()
            assert info.value.transient
            assert sim.stats()["requests_by_kind"]["get_appliance"] == 3  # retries exhausted


async def test_poll_5xx_fault() -> None:
    await _poll_error_fault("poll_5xx", ServerError)


async def test_poll_503_fault() -> None:
    await _poll_error_fault("poll_503", ServiceUnavailable)


async def test_hang_fault() -> None:
    async with simulate("hang") as (_sim, target), make_http(retries=0) as http:
        # the appliance never answers: the client's own timeout ends the request (the outer
        # wait_for only turns a client that ignored its timeout into a TimeoutError)
        with pytest.raises(ApplianceTimeout) as info:
            await asyncio.wait_for(
                http.client(target).get_appliance(request_timeout=0.3), 20)
        assert info.value.transient


async def test_slow_fault() -> None:
    async with simulate("slow", params={"slow_seconds": 0.3}) as (_sim, target):
        async with make_http(retries=0) as http:
            client = http.client(target)
            info = await client.get_appliance(request_timeout=2.0)
            assert info.appliance_version == V0
            with pytest.raises(ApplianceTimeout):
                await client.get_appliance(request_timeout=0.1)


async def test_session_expiry_fault() -> None:
    params = {"session_expiry_seconds": 0.5}
    async with simulate("session_expiry", params=params) as (sim, target), make_http() as http:
        client = http.client(target)
        await client.get_appliance()
        # the session expires on the appliance: every call still succeeds (a transparent
        # re-login), however late the loaded machine makes it
        await until(client.get_appliance, lambda info: client.logins >= 2
                    and info.appliance_version == V0, interval=0.1)
        assert sim.stats()["requests_by_kind"]["login"] == client.logins


@pytest.mark.parametrize(
    ("reboot_mode", "expected"), [("drop", Unreachable), ("503", ServiceUnavailable)]
)
async def test_long_reboot_fault(reboot_mode: str, expected: type[ApplianceError]) -> None:
    params = {"long_reboot_seconds": 3600.0}
    async with simulate("long_reboot", params=params, reboot_mode=reboot_mode) as (sim, target):
        async with make_http(retries=1) as http:
            client = http.client(target)
            await client.install(V1)
            # up while installing, then down after the install and staying down
            first = await until(first_error(client.get_appliance), lambda e: e is not None)
            assert isinstance(first, expected)
            for _ in range(3):
                await asyncio.sleep(0.15)
                with pytest.raises(expected) as info:
                    await client.get_appliance(request_timeout=0.5)
                assert info.value.transient
            assert sim.stats()["appliances"][NAME]["phase"] == "rebooting"


async def test_silent_failure_fault() -> None:
    async with simulate("silent_failure", task_after_reboot="kept") as (sim, target):
        async with make_http() as http:
            client = http.client(target)
            task = await client.install(V1)
            assert task.id is not None
            task_id = task.id
            seen: Counter[str] = Counter()
            done = await until(
                lambda: client.get_task(task_id), lambda t: t.status.is_terminal, seen=seen
            )
            assert done.status is TaskStatus.SUCCESS  # the task says it worked...
            info = await until(
                client.get_services, lambda s: all(x.is_running for x in s), seen=seen
            )
            assert info
            assert (await client.get_appliance()).appliance_version == V0  # ...it did not
            assert sim.version_of(NAME) == V0
            assert sim.stats()["outcomes"] == {"silent_failure": 1}


async def test_forbidden_fault() -> None:
    async with simulate("forbidden") as (sim, target), make_http() as http:
        with pytest.raises(Forbidden) as info:
            await http.client(target).install(V1)
        exc = info.value
        assert exc.status == 403
        assert exc.error_code == "INSUFFICIENT_RIGHTS"
        assert exc.message is not None and "rights" in exc.message
        assert exc.op_id
        assert not exc.transient
        assert sim.stats()["install_requests"] == 1


async def test_bad_credentials_fault() -> None:
    async with simulate("bad_credentials") as (sim, target), make_http(retries=3) as http:
        with pytest.raises(Unauthorized) as info:
            await http.client(target).get_appliance()
        assert "wrong credentials" in str(info.value)
        assert "admin:admin" not in repr(info.value)
        kinds = sim.stats()["requests_by_kind"]
        assert kinds["login"] == 1  # not retried
        assert "get_appliance" not in kinds


async def test_malformed_json_fault() -> None:
    async with simulate("malformed_json") as (sim, target), make_http(retries=3) as http:
        client = http.client(target)
        with pytest.raises(MalformedResponse) as info:
            await client.get_appliance()
        assert info.value.status == 200
        assert "not JSON" in str(info.value)
        assert sim.stats()["requests_by_kind"]["get_appliance"] == 1  # not retried
        with pytest.raises(MalformedResponse):
            await client.get_services()
        # POST answers are intact
        task = await client.install(V1)
        assert task.status is TaskStatus.QUEUED


async def test_wrong_types_fault() -> None:
    async with simulate("wrong_types") as (sim, target), make_http(retries=3) as http:
        client = http.client(target)
        # status is 7: the one required field is unusable -> MalformedResponse
        with pytest.raises(MalformedResponse) as info:
            await client.install(V1)
        assert info.value.status == 202
        assert "status" in str(info.value)
        stats = sim.stats()
        assert stats["install_requests"] == 1 and stats["installs_accepted"] == 1
        with pytest.raises(MalformedResponse):
            await client.list_tasks()
    # the same body with a usable status parses, wrong optional types becoming None
    from orchestrator.appliance import parse_task

    task = parse_task(
        {"id": "x", "description": ["a"], "type": 42, "status": "RUNNING", "progress": "fifty",
         "start_time": "yesterday", "complete_time": {"when": "later"}, "error": "it broke"}
    )  # fmt: skip
    assert task.progress is None and task.start_time is None and task.complete_time is None
    assert task.description is None and task.type == "42" and task.error_message == "it broke"


@pytest.mark.parametrize("time_format", ["iso", "epoch_ms"])
async def test_api_v1_tasks_fault(time_format: str) -> None:
    params = {"v1_time_format": time_format}
    async with simulate("api_v1_tasks", "install_error", params=params) as (_sim, target):
        async with make_http() as http:
            client = http.client(target)
            task = await client.install(V1)
            assert isinstance(task.start_time, datetime)
            done = await terminal_task(client, task)
            assert done.status is TaskStatus.ERROR
            assert done.error_message == (
                f"Installation of update {V1} failed: post-install script exited with status 1."
            )
            assert done.error_details == "caused by: Process exited with status 1"
            assert done.start_time is not None and done.complete_time is not None
            assert done.start_time <= done.complete_time
            [listed] = await client.list_tasks()
            assert listed.id == task.id and listed.status is TaskStatus.ERROR


# --- the happy path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reboot_mode", "down_error"), [("drop", "Unreachable"), ("503", "ServiceUnavailable")]
)
async def test_install_through_reboot(reboot_mode: str, down_error: str) -> None:
    async with simulate(reboot_mode=reboot_mode) as (sim, target), make_http(retries=0) as http:
        client = http.client(target)
        updates_task = await client.retrieve_updates()
        assert updates_task.id is not None
        updates_id = updates_task.id
        updates_done = await until(
            lambda: client.get_task(updates_id), lambda t: t.status.is_terminal
        )
        assert [u.version for u in parse_updates(updates_done.result)] == [V1]

        task = await client.install(V1)
        assert task.id is not None
        task_id = task.id
        logins_before = client.logins
        seen: Counter[str] = Counter()
        running: list[bool] = []

        async def lost_or_done() -> Task | None:
            try:
                return await client.get_task(task_id, request_timeout=0.5)
            except NotFound:
                return None  # the reboot forgot the task

        await until(lost_or_done, lambda t: t is None or t.status.is_terminal, seen=seen)
        assert seen[down_error] > 0, seen  # the appliance was down for a while

        async def version() -> str:
            services = await client.get_services(request_timeout=0.5)
            running.append(all(s.is_running for s in services))
            return (await client.get_appliance(request_timeout=0.5)).appliance_version

        assert await until(version, lambda v: v == V1 and running[-1], seen=seen) == V1
        assert False in running  # key services were starting for a while
        assert client.logins > logins_before  # the old session died with the reboot
        assert sim.version_of(NAME) == V1
        stats = sim.stats()
        assert stats["installs_accepted"] == 1
        assert stats["outcomes"] == {"success": 1}
        assert not await client.reconfigure_required()
        await client.logout()
        assert not client.has_session


# --- faults an independent appliance showed (each: what the client reports, never more) ---


async def test_lost_answer_fault() -> None:
    """Accepted, but the connection closes before the 202: the client says the request was
    sent and never repeats it (the appliance counts exactly one install)."""
    async with simulate("lost_answer") as (sim, target), make_http(retries=3) as http:
        with pytest.raises(Unreachable) as info:
            await http.client(target).install(V1)
        assert info.value.request_sent
        stats = sim.stats()
        assert (stats["install_requests"], stats["installs_accepted"]) == (1, 1)
        assert stats["lost_answers"] == 1


async def test_rest_restart_fault() -> None:
    """Part-way through the install the REST service restarts: the install task id is
    forgotten (404), the old version is reported, and a second install is refused."""
    params = {"rest_restart_at": 0.2, "rest_restart_seconds": 0.2}
    async with simulate("rest_restart", params=params, install_seconds=1.5) as (sim, target):
        async with make_http(retries=0) as http:
            client = http.client(target)
            task = await client.install(V1)
            assert task.id is not None
            task_id = task.id
            await until(lambda: asyncio.sleep(0, sim.stats()["rest_restarts"]), lambda n: n == 1)
            gone = await until(first_error(lambda: client.get_task(task_id)),
                               lambda e: isinstance(e, NotFound), seen=Counter())
            assert isinstance(gone, NotFound)
            assert (await client.get_appliance()).appliance_version == V0
            with pytest.raises(ApplianceError) as info:
                await client.install(V1)
            assert info.value.status == 400
            await until(client.get_appliance, lambda a: a.appliance_version == V1,
                        seen=Counter())
        assert sim.stats()["installs_accepted"] == 1


async def test_opaque_tasks_fault() -> None:
    async with simulate("opaque_tasks") as (_sim, target), make_http() as http:
        client = http.client(target)
        task = await client.install(V1)
        listed = await client.list_tasks()
        for seen in (task, *listed):
            text = f"{seen.description} {seen.type}".lower()
            assert V1 not in text and "install" not in text


async def test_in_progress_error_fault() -> None:
    async with simulate("in_progress_error", duplicate_install="accept") as (sim, target):
        async with make_http() as http:
            client = http.client(target)
            await client.install(V1)
            with pytest.raises(ApplianceError) as info:
                await client.install(V1)
            assert info.value.status == 400
            assert getattr(info.value, "error_code", None)
        assert sim.stats()["duplicate_installs"] == 0


async def test_sparse_accept_fault() -> None:
    async with simulate("sparse_accept") as (_sim, target), make_http() as http:
        client = http.client(target)
        task = await client.install(V1)
        assert task.id is None and task.status is TaskStatus.QUEUED
        listed = await client.list_tasks()
        assert [t.id for t in listed if t.id]  # the task is there, with its id


# --- pre-flight problems and health gates (issue 18) ---------------------------------------


async def repository_url(sim: Simulator) -> str:
    """`GET .../update-manager/repository` on NAME (the client has no call for it): its url."""
    base = sim.base_url(NAME)
    async with aiohttp.ClientSession() as raw:
        async with raw.post(f"{base}/session", headers={
                "Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}) as r:
            sid = (await r.json())["session_id"]
        async with raw.get(f"{base}/appliance/update-manager/repository",
                           headers={"x-dr-session": sid}) as r:
            assert r.status == 200
            return str((await r.json())["url"])


async def probe(sim: Simulator, name: str = NAME) -> tuple[int, str]:
    """The appliance's health page, `GET http://HOST:PORT/{name}/health`: (status, body)."""
    async with aiohttp.ClientSession() as raw, raw.get(
            f"{sim.url}/{name}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
        return r.status, await r.text()


async def test_no_repository_fault() -> None:
    async with simulate("no_repository") as (sim, target), make_http() as http:
        client = http.client(target)
        assert await repository_url(sim) == ""
        done = await terminal_task(client, await client.retrieve_updates())
        assert done.status is TaskStatus.ERROR
        assert done.error_message == "No update repository is configured."
        installed = await terminal_task(client, await client.install(V1))
        assert installed.status is TaskStatus.ERROR
        assert installed.error_message is not None
        assert "No update repository is configured" in installed.error_message
        assert (await client.get_appliance()).appliance_version == V0


async def test_repo_unreachable_fault() -> None:
    async with simulate("repo_unreachable") as (sim, target), make_http() as http:
        client = http.client(target)
        assert await repository_url(sim) == "https://updates.sim.invalid/vr/"
        for task in (await client.retrieve_updates(), await client.install(V1)):
            done = await terminal_task(client, task)
            assert done.status is TaskStatus.ERROR
            assert done.error_message is not None
            assert "Cannot reach the update repository" in done.error_message
        assert (await client.get_appliance()).appliance_version == V0
        assert sim.stats()["outcomes"] == {"error": 1}


async def test_version_not_offered_fault() -> None:
    async with simulate("version_not_offered") as (sim, target), make_http() as http:
        client = http.client(target)
        done = await terminal_task(client, await client.retrieve_updates())
        assert done.status is TaskStatus.SUCCESS
        assert parse_updates(done.result) == []
        with pytest.raises(NotFound):
            await client.install(V1)
        # the same answer as an install of a version no appliance offers
        other = http.client(ApplianceTarget("sim-00002", sim.base_url("sim-00002")))
        with pytest.raises(NotFound):
            await other.install("9.9.9-99999")
        assert sim.stats()["install_responses"] == {"404": 2}


async def test_services_down_fault() -> None:
    async with simulate("services_down") as (sim, target), make_http() as http:
        client = http.client(target)
        services = {s.id: s.is_running for s in await client.get_services()}
        assert services == {"hms": False, "drrest": True, "envoy": True}
        assert (await probe(sim))[0] == 503
        await client.install(V1)  # the install still runs; the reboot brings hms back

        async def up() -> tuple[str, bool]:
            version = (await client.get_appliance(request_timeout=0.5)).appliance_version
            services = await client.get_services(request_timeout=0.5)
            return version, all(s.is_running for s in services)

        await until(up, lambda seen: seen == (V1, True), seen=Counter())


async def test_reconfigure_pending_fault() -> None:
    async with simulate("reconfigure_pending") as (_sim, target), make_http() as http:
        client = http.client(target)
        assert await client.reconfigure_required()
        await client.install(V1)
        await until(client.get_appliance, lambda a: a.appliance_version == V1, seen=Counter())
        await until(client.reconfigure_required, lambda value: value is False, seen=Counter())


FAILING = '"reason":"health check failing"'


async def _probe_after_upgrade(sim: Simulator, target: ApplianceTarget) -> list[tuple[int, str]]:
    """Install V1 and probe the health page until the appliance is back on V1 and the probe
    answered 200, or answered "health check failing" 20 times; the answers seen on V1, in
    order."""
    async with make_http() as http:
        await http.client(target).install(V1)
    seen: list[tuple[int, str]] = []

    async def look() -> list[tuple[int, str]]:
        try:
            answer = await probe(sim)
        except (aiohttp.ClientError, TimeoutError):
            return seen  # rebooting: no answer
        if V1 in answer[1]:
            seen.append(answer)
        return seen

    await until(look, lambda s: (bool(s) and s[-1][0] == 200) or
                sum(FAILING in body for _, body in s) >= 20)
    return seen


async def test_probe_flapping_fault() -> None:
    async with simulate("probe_flapping", params={"probe_flap_seconds": 1.0}) as (sim, target):
        healthy = json.dumps({"status": "ok", "name": NAME, "version": V0},
                             separators=(",", ":"))
        assert await probe(sim) == (200, healthy)  # healthy before the upgrade
        seen = await _probe_after_upgrade(sim, target)
        *failed, last = seen
        assert last[0] == 200 and '"status":"ok"' in last[1]
        assert failed and all(status == 503 for status, _ in failed)
        # key services starting, then the flapping probe
        assert "health check failing after the upgrade" in failed[-1][1]
        stats = sim.stats()
        assert stats["probe_responses"]["503"] >= len(failed)
        assert stats["appliances"][NAME]["probe_requests"] == stats["probe_requests"]


async def test_probe_failing_fault() -> None:
    async with simulate("probe_failing") as (sim, target):
        assert (await probe(sim))[0] == 503
        seen = await _probe_after_upgrade(sim, target)
        assert {status for status, _ in seen} == {503}
        assert sum(FAILING in body for _, body in seen) == 20
        assert sim.version_of(NAME) == V1
