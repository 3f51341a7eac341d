"""Appliance clients released when their task ends: after a rollout the engine caches no
client and every appliance session it opened is logged out (the simulator's own count),
whatever the end (succeeded, failed, dropped as lost, cancelled); a held-slot look and a
runner on the same appliance share one client until both are done."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from orchestrator.appliance import ApplianceClient, ApplianceHttp, ApplianceTarget
from orchestrator.appliance.guard import guarded_client
from orchestrator.domain.inventory import LAB_POLICY
from orchestrator.domain.strategy import parse_strategy
from orchestrator.engine import held
from orchestrator.engine.runner import TaskRunner
from orchestrator.simulator import Simulator
from orchestrator.store.tasks import HeldSlot
from tests.fleet import (
    TARGET,
    create,
    engine,
    fleet,
    http_client,
    task_by_appliance,
    wait_until_terminal,
)
from tests.helpers import eventually
from tests.integration.test_runner import (
    NAME,
    OWNER,
    _claim,
    _context,
    _park_after,
    _run,
    _take_over,
)

pytestmark = pytest.mark.timeout(120)


def kinds(sim: Simulator) -> dict[str, int]:
    return dict(sim.stats(include_appliances=False)["requests_by_kind"])


def open_sessions(sim: Simulator) -> int:
    """Sessions the simulated appliances hold now (login adds one, logout removes it)."""
    return sum(len(app.sessions) for app in sim.fleet.appliances)


async def test_rollout_leaves_no_client_and_no_session(pool: asyncpg.Pool,
                                                        db_url: str) -> None:
    """N appliances, one of them FAILED (install_error): 2N logouts (N tasks, N pre-flight
    checks), none left open, and the engine's client cache is empty once its runners are
    done."""
    n = 6
    async with fleet(pool, db_url, appliances=n, sites=2) as f:
        f.sim.set_faults("sim-00003", ["install_error"])
        rid = await create(pool)
        http = http_client()
        async with engine(f, http=http) as eng:
            await wait_until_terminal(pool, rid)

            async def running() -> int:
                return len(eng.runners)

            await eventually(running, lambda count: count == 0)
            assert http.cached_clients == 0
        states = {name: row["state"] for name, row in (await task_by_appliance(
            pool, rid)).items()}
        assert states.pop("sim-00003") == "FAILED"
        assert set(states.values()) == {"SUCCEEDED"} and len(states) == n - 1
        seen = kinds(f.sim)
        # one session per task, and one per appliance for the pre-flight the rollout runs
        # at start (strategy preflight: warn by default): each logged out
        # at least 2n logouts: a session forgotten on a wrong sign of a restart (the
        # failed install did not restart its appliance) is logged out too
        assert seen["logout"] >= 2 * n
        assert seen["login"] >= 2 * n  # one before the install, more after the reboot
        assert open_sessions(f.sim) == 0


async def test_a_session_forgotten_without_a_restart_is_logged_out(pool: asyncpg.Pool,
                                                                   db_url: str) -> None:
    """The install runs longer than the steady install times predict, then fails without
    a restart. At the predicted end the runner stops using its session (a restart would
    have ended it) and logs in again to look; the appliance never restarted, so the first
    session is still open there. The runner's end logs out both."""
    async with fleet(pool, db_url, appliances=1, sites=1, install_seconds=1.5,
                     install_jitter=0.0) as f:
        f.sim.set_faults(NAME, ["install_error"])
        task = await _claim(pool, await create(pool))
        async with http_client() as http:
            h = _context(pool, http, OWNER)
            for _ in range(5):  # steady and shorter than this install: no look at its task
                h.ctx.install_times.add(0.3)
            for _ in range(3):  # returns measured: the runner does not scout
                h.ctx.returns.add(0.1)
            try:
                assert await _run(h, task) == "FAILED"
                assert http.cached_clients == 0
            finally:
                assert h.ctx.batcher is not None
                await h.ctx.batcher.aclose()
        seen = kinds(f.sim)
        # the fault happened: a second login while the first session was open (no restart);
        # and only one: the runner follows the overrunning install from its task, paced,
        # rather than probing again at once (it used to spin, logging in each time)
        assert seen["login"] == 2 and f.sim.stats()["appliances"][NAME]["version"] != TARGET
        assert seen["logout"] == 2
        assert open_sessions(f.sim) == 0


async def test_sessions_a_restart_ended_are_not_logged_out(pool: asyncpg.Pool,
                                                           db_url: str) -> None:
    """The common case: the appliance restarts onto the target version, which proves the
    session the runner dropped at the restart is over. One logout (the session after the
    restart), no DELETE of a session the appliance already ended."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        task = await _claim(pool, await create(pool))
        async with http_client() as http:
            h = _context(pool, http, OWNER)
            try:
                assert await _run(h, task) == "SUCCEEDED"
            finally:
                assert h.ctx.batcher is not None
                await h.ctx.batcher.aclose()
        seen = kinds(f.sim)
        assert seen["login"] >= 2 and seen["logout"] == 1
        assert open_sessions(f.sim) == 0


async def test_failed_task_logs_out(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        f.sim.set_faults(NAME, ["install_error"])
        task = await _claim(pool, await create(pool))
        async with http_client() as http:
            h = _context(pool, http, OWNER)
            try:
                assert await _run(h, task) == "FAILED"
                assert http.cached_clients == 0
            finally:
                assert h.ctx.batcher is not None
                await h.ctx.batcher.aclose()
        assert kinds(f.sim)["logout"] == 1 and open_sessions(f.sim) == 0


async def test_lost_task_releases_its_client(pool: asyncpg.Pool, db_url: str) -> None:
    """Another worker reclaimed the task before this runner's guarded write: the runner
    (logged in to read the version) drops the task (TaskLost) and logs out."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        task = await _claim(pool, await create(pool))
        await _take_over(pool, task)
        async with http_client() as http:
            h = _context(pool, http, OWNER)
            try:
                assert await _run(h, task) == "DISPATCHING"  # dropped: TaskLost
                assert http.cached_clients == 0
            finally:
                assert h.ctx.batcher is not None
                await h.ctx.batcher.aclose()
        seen = kinds(f.sim)
        assert (seen["login"], seen["logout"]) == (1, 1)
        assert open_sessions(f.sim) == 0


async def test_cancelled_runner_leaves_the_cache_at_once(pool: asyncpg.Pool,
                                                         db_url: str) -> None:
    """A runner stopped at a safe point (the engine stopping, its lease lost): its client
    leaves the cache at once, the logout runs in the background, exactly once."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        task = await _claim(pool, await create(pool))
        async with http_client() as http:
            h = _context(pool, http, OWNER)
            sleep, parked = _park_after("INSTALLING", h)
            h.ctx.sleep = sleep
            runner = TaskRunner(h.ctx, task, parse_strategy(task.strategy))
            h.ctx.lease_until[task.id] = asyncio.get_running_loop().time() + 60
            handle = asyncio.create_task(runner.run())
            try:
                await asyncio.wait_for(parked.wait(), 60)
                assert http.cached_clients == 1
                handle.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await handle
                assert http.cached_clients == 0

                async def logouts() -> int:
                    return kinds(f.sim).get("logout", 0)

                await eventually(logouts, lambda count: count == 1)
            finally:
                assert h.ctx.batcher is not None
                await h.ctx.batcher.aclose()
        assert kinds(f.sim)["logout"] == 1 and open_sessions(f.sim) == 0


def _slot(sim: Simulator) -> HeldSlot:
    return HeldSlot(
        id=1, rollout_id=1, appliance_id=1, appliance=NAME, base_url=sim.base_url(NAME),
        credentials_ref="env:APPLIANCE_SIM_CREDENTIALS", tls_ca_file=None,
        tls_thumbprint=None, site="site-1", target_version=TARGET, finished_at=None,
        strategy={},
    )


def _client_of(http: ApplianceHttp, slot: HeldSlot) -> ApplianceClient:
    return guarded_client(http, ApplianceTarget(
        name=slot.appliance, base_url=slot.base_url, credentials_ref=slot.credentials_ref,
    ), LAB_POLICY)


async def test_held_slot_look_releases_its_client(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        slot = _slot(f.sim)
        async with http_client() as http:
            assert await held.look(http, slot, seconds=10, policy=LAB_POLICY) is not None
            assert http.cached_clients == 0
        seen = kinds(f.sim)
        assert (seen["login"], seen["logout"]) == (1, 1)
        assert open_sessions(f.sim) == 0


async def test_look_and_runner_on_one_appliance_share_the_client(pool: asyncpg.Pool,
                                                                 db_url: str) -> None:
    """A runner of this process holds the appliance's client when a held-slot look takes
    it too: the look's end keeps the client and its session; the runner's end releases
    it. One login, one logout."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        slot = _slot(f.sim)
        async with http_client() as http:
            client = _client_of(http, slot)
            async with http.using(client):
                assert await held.look(http, slot, seconds=10, policy=LAB_POLICY) is not None
                assert http.cached_clients == 1
                assert _client_of(http, slot) is client
                assert kinds(f.sim).get("logout", 0) == 0 and open_sessions(f.sim) == 1
            assert http.cached_clients == 0
        seen = kinds(f.sim)
        assert (seen["login"], seen["logout"]) == (1, 1)
        assert open_sessions(f.sim) == 0


async def metric(client: Any, name: str) -> float:
    """The value of the unlabelled metric `name` on the API's /metrics page."""
    async with client.get("/metrics") as resp:
        text = await resp.text()
    [line] = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


async def test_metrics_show_the_clients_kept_now(pool: asyncpg.Pool) -> None:
    """`orchestrator_appliance_clients_cached`: the clients (and sessions) the process keeps
    now, one per appliance being worked on; none once each is released."""
    from tests.fleet import http_client as make_http
    from tests.integration.test_api_support import api_client

    async def gauge(client: Any) -> float:
        return await metric(client, "orchestrator_appliance_clients_cached")

    async with make_http() as http, api_client(pool, http=http) as client:
        a, b = (http.client(ApplianceTarget(name=name, base_url=f"http://127.0.0.1:9/{name}",
                                            credentials_ref="env:APPLIANCE_SIM_CREDENTIALS"))
                for name in ("vr-a", "vr-b"))
        http.hold(a)
        http.hold(b)
        assert await gauge(client) == 2.0
        await http.release(a)  # no session: nothing to log out, no request
        assert await gauge(client) == 1.0
        await http.release(b)
        assert await gauge(client) == 0.0


async def test_metrics_show_the_logouts_queued(pool: asyncpg.Pool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`orchestrator_appliance_logouts_queued`: a finished task's logout (queued by the
    runner) counts until it is sent; planted logouts that wait for the test."""
    from tests.fleet import http_client as make_http
    from tests.integration.test_api_support import api_client

    sent = asyncio.Event()

    async def held_logout(self: ApplianceClient, **kwargs: Any) -> None:
        await sent.wait()

    monkeypatch.setattr(ApplianceClient, "logout", held_logout)
    monkeypatch.setattr(ApplianceClient, "has_session", property(lambda self: True))

    async def gauge(client: Any) -> float:
        return await metric(client, "orchestrator_appliance_logouts_queued")

    async with make_http() as http, api_client(pool, http=http) as client:
        a = http.client(ApplianceTarget(name="vr-a", base_url="http://127.0.0.1:9/vr-a",
                                        credentials_ref="env:APPLIANCE_SIM_CREDENTIALS"))
        http.hold(a)
        assert await gauge(client) == 0.0
        await http.release_queued(a)
        assert http.cached_clients == 0 and await gauge(client) == 1.0
        sent.set()
        assert await http.drain_logouts() == 0
        assert await gauge(client) == 0.0


async def test_an_engine_holds_logouts_back_while_its_event_loop_runs_late(
    pool: asyncpg.Pool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running engine marks its transport busy while its event loop runs late (a burst of
    task ends and starts): a logout queued then waits, and goes once the loop keeps time
    again. Stopped, the engine leaves the transport as it found it. The lateness is made
    here: the test blocks the loop."""
    import time

    from orchestrator.engine.engine import BUSY_LOOP_LAG

    sent_for: list[str] = []

    async def logout(self: ApplianceClient, **kwargs: Any) -> None:
        sent_for.append(self.name)

    monkeypatch.setattr(ApplianceClient, "logout", logout)
    monkeypatch.setattr(ApplianceClient, "has_session", property(lambda self: True))
    async with fleet(pool, db_url, appliances=1) as f:
        http = http_client()
        async with engine(f, http=http) as eng:
            await eventually(lambda: asyncio.sleep(0, http.busy), lambda b: b is not None)
            busy = http.busy
            assert busy is not None

            async def is_busy() -> bool:
                return busy()

            await eventually(is_busy, lambda b: b is False)  # an idle loop keeps time
            time.sleep(0.3)  # the point: the loop cannot run meanwhile
            await asyncio.sleep(0.01)  # the lag monitor wakes, late
            assert eng.loop_lag > BUSY_LOOP_LAG and busy()
            client = http.client(ApplianceTarget(name="vr-a", base_url="http://127.0.0.1:9/a",
                                                 credentials_ref="env:APPLIANCE_SIM_CREDENTIALS"))
            http.hold(client)
            await http.release_queued(client)
            await asyncio.sleep(0)
            assert sent_for == [] and http.queued_logouts == 1  # held back
            await eventually(is_busy, lambda b: b is False)
            await eventually(lambda: asyncio.sleep(0, list(sent_for)),
                             lambda names: names == ["vr-a"])
        assert http.busy is None
