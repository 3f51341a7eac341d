"""`orchestrator serve` and `orchestrator tokens` as real processes: a rollout driven through
the REST API is run by the engine of the serve process; SIGTERM stops both cleanly (also
with an event stream open)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from orchestrator.simulator import SimulatorConfig, run_simulator
from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, free_port, run_cli

SERVE_ENV = {
    "APPLIANCE_SIM_CREDENTIALS": "admin:admin",
    "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.3",
    "ORCHESTRATOR_ENGINE_LEASE_SECONDS": "5",
    "ORCHESTRATOR_APPLIANCE_REQUEST_TIMEOUT": "5",
    "ORCHESTRATOR_LOG_LEVEL": "warning",
}


def serve(db_url: str, port: int, *extra: str) -> subprocess.Popen[str]:
    return LoggedPopen(
        [str(VENV_BIN / "orchestrator"), "serve", "--port", str(port), *extra],
        env=cli_env(db_url, **SERVE_ENV), cwd=ROOT,
    )


async def wait_ready(base: str, proc: subprocess.Popen[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                async with session.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return await resp.json()
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "serve never became ready"
            await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, float, str]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"serve did not stop on SIGTERM: {err[-2000:]}") from None
    return proc.returncode, time.monotonic() - started, err


async def test_tokens_commands(db_url: str) -> None:
    env = cli_env(db_url)
    loop = asyncio.get_running_loop()

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await loop.run_in_executor(None, lambda: run_cli(*args, env=env))

    created = await cli("tokens", "create", "--name", "ci", "--role", "operator")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("orch_") and len(token) > 40
    assert "shown only now" in created.stderr
    listed = await cli("tokens", "list", "--json")
    assert listed.returncode == 0 and token not in listed.stdout
    assert [(t["name"], t["role"], t["revoked_at"]) for t in json.loads(listed.stdout)] == \
        [("ci", "operator", None)]
    again = await cli("tokens", "create", "--name", "ci", "--role", "admin")
    assert again.returncode == 1 and "'ci' exists" in again.stderr
    bad = await cli("tokens", "create", "--name", "x", "--role", "root")
    assert bad.returncode == 2
    revoked = await cli("tokens", "revoke", "ci")
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    missing = await cli("tokens", "revoke", "nobody")
    assert missing.returncode == 1 and "no token named 'nobody'" in missing.stderr
    active = await cli("tokens", "list", "--active")
    assert "0 token(s)" in active.stdout


async def test_serve_runs_api_and_engine_and_stops_on_sigterm(db_url: str,
                                                              tmp_path: Path) -> None:
    env = cli_env(db_url)
    admin = run_cli("tokens", "create", "--name", "admin", "--role", "admin", env=env)
    assert admin.returncode == 0, admin.stderr
    headers = {"Authorization": f"Bearer {admin.stdout.strip()}"}
    config = SimulatorConfig(appliances=10, sites=2, install_seconds=0.3, reboot_seconds=0.2,
                             services_starting_seconds=0.1, duplicate_install="accept")
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = serve(db_url, port)
        try:
            ready = await wait_ready(base, proc)
            assert {k: ready[k] for k in ("status", "database", "engine")} == {
                "status": "ready", "database": "ok", "engine": "running"}
            assert ready["live_engines"] >= 1 and ready["warning"] is None
            async with aiohttp.ClientSession(headers=headers) as session:
                async with session.post(f"{base}/api/v1/appliances:import",
                                        data=inventory.read_text(),
                                        headers={"Content-Type": "text/csv"}) as resp:
                    assert resp.status == 200, await resp.text()
                body = {"name": "via api", "target_version": "9.0.1-20020",
                        "strategy": {"waves": [1, "100%"], "max_concurrency": 5,
                                     "reboot_grace": 5, "task_timeout": 30}}
                async with session.post(f"{base}/api/v1/rollouts", json=body,
                                        headers={"Idempotency-Key": "e2e-1"}) as resp:
                    assert resp.status == 201, await resp.text()
                    rid = (await resp.json())["id"]
                async with session.post(f"{base}/api/v1/rollouts/{rid}/start") as resp:
                    assert resp.status == 200
                deadline = time.monotonic() + 60
                while True:
                    async with session.get(f"{base}/api/v1/rollouts/{rid}") as resp:
                        detail = await resp.json()
                    if detail["state"] in ("SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED",
                                           "CANCELLED"):
                        break
                    assert time.monotonic() < deadline, detail
                    await asyncio.sleep(0.2)
                assert detail["state"] == "SUCCEEDED", detail
                assert detail["counts"]["by_state"] == {"SUCCEEDED": 10}
                async with session.get(f"{base}/metrics") as resp:
                    metrics = await resp.text()
                assert 'orchestrator_task_transitions_total{to_state="SUCCEEDED"} 10.0' in metrics
                assert "orchestrator_install_duration_seconds_count" in metrics
                assert "orchestrator_engine_claimed_total 10.0" in metrics
                assert "orchestrator_claim_latency_seconds_count" in metrics
                # an open event stream does not hold the shutdown
                second, _ = await _create(session, base, "paused one")
                stream = await session.get(f"{base}/api/v1/rollouts/{second}/events")
                assert stream.status == 200
                await stream.content.readline()
                code, took, err = await asyncio.get_running_loop().run_in_executor(
                    None, stop, proc)
                stream.close()
            # it stopped (within stop()'s deadline, which only catches a hang) and cleanly
            assert code == 0, (took, err[-3000:])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert sim.stats()["duplicate_installs"] == 0


async def _create(session: aiohttp.ClientSession, base: str, name: str) -> tuple[int, Any]:
    body = {"name": name, "target_version": "9.0.1-20020"}
    async with session.post(f"{base}/api/v1/rollouts", json=body) as resp:
        data = await resp.json()
        assert resp.status == 201, data
        return data["id"], data


async def test_serve_api_only_and_bad_flags(db_url: str) -> None:
    port = free_port()
    proc = serve(db_url, port, "--no-engine", "--host", "127.0.0.1")
    try:
        ready = await wait_ready(f"http://127.0.0.1:{port}", proc)
        assert ready["engine"] == "off"
        code, _, err = stop(proc)
        assert code == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    both = run_cli("serve", "--no-engine", "--no-api", env=cli_env(db_url))
    assert both.returncode == 2 and "not allowed with" in both.stderr
    busy = serve(db_url, port)  # the port is free again; take it twice
    try:
        await wait_ready(f"http://127.0.0.1:{port}", busy)
        clash = run_cli("serve", "--port", str(port), "--no-engine", env=cli_env(db_url))
        assert clash.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in clash.stderr
    finally:
        stop(busy)
