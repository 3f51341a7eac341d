"""A draining engine and the guarded sends: the engine's `GuardBatcher` writes "the install
is being sent" for several runners in one statement, whoever waits for it. An engine that
stops while such a statement is being written must not leave a task recorded as sent
though no install went out (its next owner could only call it a lost answer)."""

from __future__ import annotations

import asyncio

import asyncpg

from orchestrator.store import rollouts as rollout_store
from tests.fleet import create, engine, fleet, task_by_appliance
from tests.helpers import eventually

APPLIANCES = 3


async def test_an_engine_stopping_during_a_guarded_send_sends_what_it_recorded(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """Every appliance answers 1 s late (`slow`), so the claimed tasks spend ~2 s in login
    and the version read; the test then locks their rows, so the guarded send statement
    waits (seen waiting in pg_stat_activity), and stops the engine while it waits; the lock
    is released 1 s later. Every task recorded as sent was sent (the simulator accepted an
    install for its appliance) and recorded INSTALLING before the engine let it go."""
    async with fleet(pool, db_url, appliances=APPLIANCES, sites=1) as f:
        for n in range(1, APPLIANCES + 1):
            f.sim.set_faults(f"sim-{n:05d}", ["slow"])
        rid = await create(pool, {"max_concurrency": APPLIANCES, "preflight": "off",
                                  "reboot_grace": 60, "task_timeout": 120})
        async with engine(f, shutdown_deadline=15.0, lease_seconds=60.0) as eng:
            await eventually(
                lambda: rollout_store.rollout_counts(pool, rid),
                lambda c: c.by_state.get("DISPATCHING", 0) == APPLIANCES, timeout=30)
            async with pool.acquire() as blocker:
                tr = blocker.transaction()
                await tr.start()
                try:
                    await blocker.fetch(
                        "SELECT id FROM tasks WHERE rollout_id = $1 FOR UPDATE", rid)
                    # the fault happened: the guarded send statement (GUARD_SEND's start:
                    # pg_stat_activity keeps a query's first 1 kB) waits for the rows
                    await eventually(
                        lambda: pool.fetchval(
                            """SELECT count(*) FROM pg_stat_activity
                               WHERE wait_event_type = 'Lock'
                                 AND query LIKE '%AS u(id, tok, fv, margin)%'"""),
                        lambda n: n >= 1, timeout=20)
                    stopping = asyncio.get_running_loop().create_task(asyncio.sleep(1.0))
                    eng.stop()  # the drain starts while the statement waits
                    await stopping
                finally:
                    await tr.rollback()
        # the engine has stopped (the context waited for it)
    tasks = await task_by_appliance(pool, rid)
    truth = f.sim.stats()
    accepted = {name: a["installs_accepted"] for name, a in truth["appliances"].items()}
    sent = {name: row for name, row in tasks.items() if row["install_sent_at"] is not None}
    assert sent, "no guarded send was written: the scenario did not happen"
    for name, row in sent.items():
        assert accepted[name] == 1, f"{name} recorded as sent, never sent: {accepted}"
        assert row["state"] == "INSTALLING", (name, row["state"])
    assert truth["installs_accepted"] == len(sent)
    assert truth["duplicate_installs"] == 0
