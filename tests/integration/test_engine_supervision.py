"""The engine's background loops are supervised: one that ends while the engine runs stops
the engine (drained, leases handed over) and `Engine.run` raises `EngineFailure` naming it;
in `serve`, the API's own loop-lag monitor is supervised the same way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from orchestrator.cli.serve import serve
from orchestrator.engine import failpoints
from orchestrator.engine.engine import Engine, EngineFailure
from orchestrator.settings import Settings
from tests.fleet import create, fast_engine_config, fleet, http_client
from tests.helpers import eventually, free_port


@pytest.fixture
def no_failpoints() -> Iterator[None]:
    failpoints.configure("")
    yield
    failpoints.configure("")


async def _in_flight(pool: asyncpg.Pool, rollout_id: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT id, state, lease_owner AS owner, lease_expires_at < now() AS expired FROM tasks "
        "WHERE rollout_id = $1 AND state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')",
        rollout_id))


async def test_a_failed_loop_drains_hands_over_and_raises(
        pool: asyncpg.Pool, db_url: str, no_failpoints: None) -> None:
    # installs that outlast the test: the runners hold their tasks' leases throughout
    async with fleet(pool, db_url, appliances=4, install_seconds=600, install_jitter=0), \
            http_client() as http:
        rollout_id = await create(pool)
        engine = Engine(pool, http, fast_engine_config(lease_seconds=3.0),
                        database_url=db_url)
        with capture_logs() as logs:
            run = asyncio.create_task(engine.run())
            try:
                rows = await eventually(
                    lambda: _in_flight(pool, rollout_id),
                    lambda rows: len(rows) == 4
                    and all(r["state"] == "INSTALLING" for r in rows))
                assert all(r["owner"] == engine.owner and not r["expired"] for r in rows)
                # the next pass of the lease loop raises, outside what it tolerates
                failpoints.configure("lease_loop_crash=#1")
                with pytest.raises(EngineFailure) as raised:
                    await asyncio.wait_for(asyncio.shield(run), 60)
            finally:
                await _stopped(engine, run)
        assert failpoints.passes("lease_loop_crash") == 1, "the fault fired once"
        assert raised.value.task == "leases"
        assert str(raised.value) == ("engine stopped: background task leases failed: "
                                     "InjectedFault('lease_loop_crash')")
        failed = [e for e in logs if e["event"] == "engine_background_failed"]
        assert failed == [{"event": "engine_background_failed", "log_level": "error",
                           "owner": engine.owner, "task": "leases",
                           "error": "InjectedFault('lease_loop_crash')"}]
        events = [e["event"] for e in logs]
        # stopped as on SIGTERM: the runners drained and their leases were released
        assert events.index("engine_background_failed") < events.index("leases_released") \
            < events.index("engine_stopped")
        assert next(e for e in logs if e["event"] == "leases_released")["tasks"] == 4
        rows = await _in_flight(pool, rollout_id)
        assert len(rows) == 4 and all(r["expired"] for r in rows), \
            "the tasks are reclaimable at once"
        assert not engine.runners
        # none of the other loops is left running
        assert not [t for t in asyncio.all_tasks()
                    if t.get_name() in ("heartbeat", "leases", "progress", "listen",
                                        "loop-lag", "held-slots")]


async def test_a_loop_that_returns_stops_the_engine(
        pool: asyncpg.Pool, db_url: str, no_failpoints: None) -> None:
    """A return is an unexpected end too (the loops run until the engine stops)."""
    async with http_client() as http:
        engine = Engine(pool, http, fast_engine_config(), database_url=db_url)
        ended = asyncio.Event()

        async def held_loop_that_returns() -> None:
            await ended.wait()

        engine._held_loop = held_loop_that_returns  # type: ignore[method-assign]
        run = asyncio.create_task(engine.run())
        try:
            await eventually(lambda: _registered(pool, engine.owner), bool)
            assert not run.done()
            ended.set()
            with pytest.raises(EngineFailure) as raised:
                await asyncio.wait_for(asyncio.shield(run), 60)
        finally:
            await _stopped(engine, run)
        assert str(raised.value) == \
            "engine stopped: background task held-slots failed: returned"


async def test_stop_and_until_idle_raise_nothing(
        pool: asyncpg.Pool, db_url: str, no_failpoints: None) -> None:
    async with http_client() as http:
        engine = Engine(pool, http, fast_engine_config(), database_url=db_url)
        with capture_logs() as logs:
            await asyncio.wait_for(engine.run(until_idle=True), 60)
            run = asyncio.create_task(engine.run())
            await eventually(lambda: _registered(pool, engine.owner), bool)
            engine.stop()
            await asyncio.wait_for(run, 60)
        assert "engine_background_failed" not in [e["event"] for e in logs]


async def _stopped(engine: Engine, run: asyncio.Task[None]) -> None:
    """Stop the engine if the test failed before it ended by itself."""
    if not run.done():
        engine.stop()
    with contextlib.suppress(Exception):
        await run


async def _registered(pool: asyncpg.Pool, owner: str) -> bool:
    return bool(await pool.fetchval("SELECT count(*) FROM engines WHERE owner = $1", owner))


async def test_serve_stops_when_the_api_loop_monitor_ends(
        pool: asyncpg.Pool, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --no-engine`: the API's loop-lag monitor runs in the process's loop; its
    end (here: cancelled from elsewhere) stops the API and the process with code 1."""
    stop = asyncio.Event()
    port = free_port()
    with capture_logs() as logs:
        served = asyncio.create_task(serve(
            pool, Settings(), host="127.0.0.1", port=port, with_engine=False, stop=stop))

        async def monitors() -> list[asyncio.Task[Any]]:
            return [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag"]

        [monitor] = await eventually(monitors, lambda tasks: len(tasks) == 1)
        assert not served.done()
        monitor.cancel()
        code = await asyncio.wait_for(served, 60)
    assert code == 1 and not stop.is_set()
    assert "orchestrator: API stopped: background task loop-lag failed: cancelled\n" in \
        capsys.readouterr().err
    assert [e for e in logs if e["event"] == "api_background_failed"] == [
        {"event": "api_background_failed", "log_level": "error", "task": "loop-lag",
         "error": "cancelled"}]
    with pytest.raises(OSError):  # the API stopped listening
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()


async def test_serve_stops_when_the_api_thread_ends(
        pool: asyncpg.Pool, db_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` with the engine: the API runs in a thread with its own event loop; the end
    of that thread (here: its loop's tasks cancelled) stops the engine and the process with
    code 1."""
    from orchestrator.api import server as server_module

    loops: list[asyncio.AbstractEventLoop] = []
    real_create_app = server_module.create_app

    def recording_create_app(*args: Any, **kwargs: Any) -> Any:
        loops.append(asyncio.get_running_loop())  # called in the API thread's loop
        return real_create_app(*args, **kwargs)

    monkeypatch.setattr(server_module, "create_app", recording_create_app)
    stop = asyncio.Event()
    port = free_port()
    with capture_logs() as logs:
        served = asyncio.create_task(serve(
            pool, Settings(), host="127.0.0.1", port=port, with_engine=True,
            database_url=db_url, stop=stop))
        [api_loop] = await eventually(lambda: _now(loops), lambda found: len(found) == 1)
        # serving: the API listens and serve() waits (a cancel while the API thread was
        # still starting would be a failed start, another path)
        await eventually(lambda: _listening(port), bool)
        await eventually(lambda: _now([e["event"] for e in logs]),
                         lambda events: "serve_started" in events)
        assert not served.done()

        def cancel_everything() -> None:
            for task in asyncio.all_tasks(api_loop):
                task.cancel()

        api_loop.call_soon_threadsafe(cancel_everything)
        code = await asyncio.wait_for(served, 60)
    assert code == 1 and not stop.is_set()
    assert "orchestrator: API stopped: its thread ended: CancelledError()\n" in \
        capsys.readouterr().err
    assert [e for e in logs if e["event"] == "api_background_failed"] == [
        {"event": "api_background_failed", "log_level": "error", "task": "api",
         "error": "CancelledError()"}]
    assert [e["event"] for e in logs if e["event"] in ("engine_stopped", "serve_stopped")] == [
        "engine_stopped", "serve_stopped"]


async def _now(items: list[Any]) -> list[Any]:
    return list(items)


async def _listening(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True
