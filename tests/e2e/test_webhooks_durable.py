"""Webhook delivery survives what production throws at it: the engine SIGKILLed while a
request is in flight, then a receiver that is down for a minute and answers 503 twice when
it comes back. Every event the database holds (the ground truth: the outbox) reaches the
receiver, none lost, and every repeat carries the id of the event it repeats."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from orchestrator.simulator import SimulatorConfig, run_simulator
from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, run_cli
from tests.webhook_receiver import receiver

ENV = {
    "APPLIANCE_SIM_CREDENTIALS": "admin:admin",
    "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.3",
    "ORCHESTRATOR_ENGINE_LEASE_SECONDS": "5",
    "ORCHESTRATOR_LOG_LEVEL": "warning",
    "ORCHESTRATOR_WEBHOOK_POLL_INTERVAL": "0.2",
    "ORCHESTRATOR_WEBHOOK_LEASE_SECONDS": "5",
    "ORCHESTRATOR_WEBHOOK_REQUEST_TIMEOUT": "2",
    "ORCHESTRATOR_WEBHOOK_BACKOFF_BASE": "0.5",
    "ORCHESTRATOR_WEBHOOK_BACKOFF_CAP": "3",
    "ORCHESTRATOR_WEBHOOK_MAX_ATTEMPTS": "200",
}
DOWN_SECONDS = 60.0


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_sigkill_mid_request_and_a_receiver_down_for_a_minute_lose_no_event(
    db_url: str, tmp_path: Path
) -> None:
    config = SimulatorConfig(appliances=6, sites=2, install_seconds=0.4, reboot_seconds=0.3,
                             services_starting_seconds=0.1, duplicate_install="accept")
    async with run_simulator(config, host="127.0.0.1", port=0) as sim, receiver() as rx:
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        env = cli_env(db_url, **ENV)
        loop = asyncio.get_running_loop()
        assert (await loop.run_in_executor(None, lambda: run_cli(
            "appliances", "import", str(inventory), env=env))).returncode == 0
        added = await loop.run_in_executor(None, lambda: run_cli(
            "webhooks", "add", "--name", "ops", "--url", rx.url, env=env))
        assert added.returncode == 0, added.stderr
        conn = await asyncpg.connect(db_url)
        try:
            rx.script = ["hang"]  # the first request never gets an answer
            created = await loop.run_in_executor(None, lambda: run_cli(
                "rollout", "create", "--name", "webhooks", "--version", "9.0.1-20020",
                "--waves", "1,100%", "--start", "--json", env=env))
            assert created.returncode == 0, created.stderr
            rid = json.loads(created.stdout)["id"]

            first = LoggedPopen([str(VENV_BIN / "orchestrator"), "run"], env=env, cwd=ROOT)
            try:
                await asyncio.wait_for(rx.arrived.wait(), 60)
                # the kill is aimed at the notification, not at the install: it waits for
                # the canary's install to be answered (a kill between "install sent" and
                # the POST reaching the appliance leaves an install that cannot be proven,
                # which another test covers: the canary would end INSTALL_UNCONFIRMED)
                deadline = time.monotonic() + 30
                while not await conn.fetchval(
                        """SELECT remote_task_id IS NOT NULL OR finished_at IS NOT NULL
                           FROM tasks WHERE rollout_id = $1 AND wave = 0""", rid):
                    assert time.monotonic() < deadline, "the canary's install was not answered"
                    await asyncio.sleep(0.02)
                first.send_signal(signal.SIGKILL)
                assert first.wait(10) == -signal.SIGKILL
            finally:
                if first.poll() is None:
                    first.kill()
            [hung] = rx.requests
            assert hung.status == 0 and hung.json["type"] == "rollout.started"
            killed_at = time.monotonic()
            await rx.down()

            second = LoggedPopen([str(VENV_BIN / "orchestrator"), "run"], env=env, cwd=ROOT)
            try:
                # the rollout does not wait for its notifications: it ends while the
                # receiver is down
                while await conn.fetchval("SELECT finished_at FROM rollouts WHERE id = $1",
                                          rid) is None:
                    if time.monotonic() - killed_at >= DOWN_SECONDS:
                        tasks = await conn.fetch(
                            """SELECT id, wave, state, attempt, error_code, lease_owner,
                                      now() - lease_expires_at AS lease_past, not_before
                               FROM tasks WHERE rollout_id = $1 ORDER BY id""", rid)
                        log = "\n".join(line for line in second.output()[1].splitlines()
                                         if "webhook_retry" not in line)
                        pytest.fail("the rollout did not end while the receiver was down:\n"
                                    + "\n".join(str(dict(t)) for t in tasks)
                                    + "\n" + log[-6000:])
                    await asyncio.sleep(0.2)
                await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - killed_at)))
                # while it was down the engine kept trying (connection refused), and
                # nothing was delivered
                tries = await conn.fetchrow(
                    """SELECT attempts, last_error FROM webhook_deliveries
                       WHERE state = 'pending' ORDER BY id LIMIT 1""")
                assert tries["attempts"] >= 3 and tries["last_error"], dict(tries)
                assert len(rx.requests) == 1
                rx.script = [503, 503]
                await rx.up()
                deadline = time.monotonic() + 60
                while await conn.fetchval("SELECT count(*) FROM webhook_deliveries "
                                          "WHERE state <> 'delivered'"):
                    assert time.monotonic() < deadline, "deliveries still pending"
                    await asyncio.sleep(0.2)
            finally:
                second.send_signal(signal.SIGTERM)
                try:
                    second.wait(30)
                except Exception:
                    second.kill()
                    raise
            truth = [str(r["id"]) for r in await conn.fetch(
                "SELECT id FROM outbox_events ORDER BY id")]
            state = await conn.fetchval("SELECT state FROM rollouts WHERE id = $1", rid)
        finally:
            await conn.close()

    assert state == "SUCCEEDED"
    assert len(truth) == 6  # started, wave 0 started/finished, wave 1 started/finished, end
    delivered = [r.event_id for r in rx.delivered]
    assert sorted(set(delivered), key=int) == truth, "an event was lost"
    assert delivered == truth, "delivered out of order, or twice after a 2xx"
    # the repeats: the request the SIGKILL cut, then two 503s, all of the first event
    assert [r.event_id for r in rx.requests[:4]] == [truth[0]] * 4
    assert [r.status for r in rx.requests[:4]] == [0, 503, 503, 200]
    assert sim.stats()["duplicate_installs"] == 0
