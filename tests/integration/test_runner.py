"""`TaskRunner` on its own: one claimed task driven against the in-process simulator and a
real database, without the engine around it.

Each test claims its task with the store functions (`claim_tasks`, `reclaim_expired`),
builds the `RunnerContext` the way `Engine.__init__` / `Engine._spawn` do, runs the runner
to its end (bounded only so that a hang fails instead of blocking), and checks the outcome
twice: in the database (the task row and its events) and against the simulator's ground
truth (the appliance's version and how many installs it accepted: one at most, ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest

from orchestrator.appliance import ApplianceHttp, ApplianceTarget
from orchestrator.appliance.guard import guarded_client
from orchestrator.domain.inventory import LAB_POLICY, TargetPolicy
from orchestrator.domain.strategy import parse_strategy
from orchestrator.engine.batching import TransitionBatcher
from orchestrator.engine.engine import EngineConfig
from orchestrator.engine.pacing import InstallTimes, ProgressBuffer
from orchestrator.engine.runner import RunnerContext, TaskRunner
from orchestrator.simulator import Simulator
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store.tasks import ClaimedTask, SendVerdict
from tests.fleet import (
    ACTOR,
    TARGET,
    create,
    events_of,
    fast_engine_config,
    fleet,
    http_client,
)
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(120)

V0 = "9.0.0-10010"  # the simulator's initial version
NAME = "sim-00001"
OWNER = "runner-a"
OTHER = "runner-b"
# only turns a hang into a failure: every scenario here ends in a few seconds
RUN_DEADLINE = 60.0
CLAIMED = [(None, "PENDING"), ("PENDING", "DISPATCHING")]


# ----------------------------------------------------------------------------- harness
@dataclass
class Harness:
    """One engine process's share of what runners use (see `Engine.__init__`)."""

    ctx: RunnerContext
    config: EngineConfig
    events: list[str] = field(default_factory=list)  # states reported through on_event


def _context(pool: asyncpg.Pool, http: ApplianceHttp, owner: str,
             sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
             policy: TargetPolicy = LAB_POLICY) -> Harness:
    """A RunnerContext built as `Engine.__init__` builds it, from the quick test config."""
    config = fast_engine_config(target_policy=policy)
    events: list[str] = []
    ctx = RunnerContext(
        pool=pool, http=http, owner=owner, progress=ProgressBuffer(),
        install_times=InstallTimes(default=config.install_estimate),
        reboot_times=InstallTimes(default=config.reboot_estimate),
        lease_seconds=config.lease_seconds, min_poll=config.min_poll,
        max_poll=config.max_poll, on_event=lambda state, _info: events.append(state),
        batcher=TransitionBatcher(pool, owner, delay=config.write_batch_delay),
        gate=asyncio.Semaphore(config.active_runners), target_policy=config.target_policy,
        sleep=sleep,
    )
    return Harness(ctx=ctx, config=config, events=events)


@contextlib.asynccontextmanager
async def _engine_side(pool: asyncpg.Pool, owner: str = OWNER, **kw: Any
                       ) -> AsyncIterator[Harness]:
    """An HTTP client and a runner context for `owner`; the batcher is closed on exit."""
    async with http_client() as http:
        harness = _context(pool, http, owner, **kw)
        try:
            yield harness
        finally:
            assert harness.ctx.batcher is not None
            await harness.ctx.batcher.aclose()


async def _claim(pool: asyncpg.Pool, rid: int, owner: str = OWNER,
                 lease_seconds: float = 60.0) -> ClaimedTask:
    """Claim the rollout's one task, as the engine's tick does (rollout lock, then claim)."""
    async with pool.acquire() as conn, conn.transaction():
        await task_store.lock_rollout(conn, rid)
        claimed = await task_store.claim_tasks(
            conn, rollout_id=rid, current_wave=0, owner=owner, lease_seconds=lease_seconds,
            max_in_flight=10, per_site=None, starts_per_minute=None, limit=10,
        )
    (task,) = claimed
    assert task.state == "DISPATCHING" and not task.reclaimed
    return task


async def _take_over(pool: asyncpg.Pool, task: ClaimedTask, owner: str = OTHER
                     ) -> ClaimedTask:
    """The lease of `task` runs out and `owner` reclaims it (as a tick's reclaim does)."""
    await pool.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' "
                       "WHERE id = $1", task.id)
    async with pool.acquire() as conn:
        stale = await task_store.reclaim_expired(conn, owner=owner, lease_seconds=60, limit=10)
    (taken,) = [t for t in stale if t.id == task.id]
    assert taken.reclaimed and taken.lease_token != task.lease_token
    return taken


async def _run(harness: Harness, task: ClaimedTask) -> str:
    """Spawn the runner as `Engine._spawn` does and wait for its end."""
    ctx = harness.ctx
    ctx.lease_until[task.id] = time.monotonic() + ctx.lease_seconds
    runner = TaskRunner(ctx, task, parse_strategy(task.strategy))
    try:
        return await asyncio.wait_for(runner.run(), RUN_DEADLINE)
    finally:
        ctx.lease_until.pop(task.id, None)


async def _row(pool: asyncpg.Pool, task_id: int) -> asyncpg.Record:
    row = await pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
    assert row is not None
    return row


def _truth(sim: Simulator, name: str = NAME) -> dict[str, Any]:
    """The simulator's ground truth about one appliance (version, phase, installs)."""
    return dict(sim.stats()["appliances"][name])


async def _install_as_dead_engine(pool: asyncpg.Pool, task: ClaimedTask) -> str:
    """What an engine that died right after the install POST did: the guarded write
    (`install_sent_at`), then the POST; INSTALLING never recorded. The remote task id."""
    async with pool.acquire() as conn:
        verdict, _ = await task_store.guard_install_send(
            conn, task_id=task.id, owner=OWNER, token=task.lease_token, from_version=V0,
            lease_margin=1.0,
        )
    assert verdict == SendVerdict.SEND
    async with http_client() as http:
        client = guarded_client(http, ApplianceTarget(
            name=task.appliance, base_url=task.base_url,
            credentials_ref=task.credentials_ref), LAB_POLICY)
        remote = await client.install(TARGET)
    assert remote.id
    return remote.id


def _park_after(state: str, harness: Harness) -> tuple[
        Callable[[float], Awaitable[None]], asyncio.Event]:
    """A `RunnerContext.sleep` that parks the runner for good at its first pause once
    `state` was recorded (a safe point: the engine may stop it there); and the event set
    when it parks."""
    parked = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if state in harness.events:
            parked.set()
            await asyncio.Event().wait()
        await asyncio.sleep(seconds)

    return sleep, parked


# ----------------------------------------------------------------------------- the path
async def test_fresh_task_installs_once_and_succeeds(pool: asyncpg.Pool, db_url: str) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "SUCCEEDED"
        row = await _row(pool, task.id)
        truth = _truth(f.sim)
        assert (row["state"], row["error_code"], row["final_version"]) == (
            "SUCCEEDED", None, TARGET)
        assert row["final_version"] == truth["version"] == f.sim.version_of(NAME)
        assert (row["from_version"], row["installs_sent"], row["progress"]) == (V0, 1, 100)
        assert row["remote_task_id"] and row["accepted_at"] is not None
        assert row["lease_owner"] is None and not row["holds_slot"]
        assert await events_of(pool, task.id) == [*CLAIMED,
            ("DISPATCHING", "INSTALLING"), ("INSTALLING", "VERIFYING"),
            ("VERIFYING", "SUCCEEDED")]
        assert h.events == ["INSTALLING", "VERIFYING", "SUCCEEDED"]
        assert truth["installs_accepted"] == 1
        assert f.sim.stats()["duplicate_installs"] == 0
        # the appliance's last known version is recorded in the inventory
        assert await pool.fetchval("SELECT current_version FROM appliances WHERE name = $1",
                                   NAME) == TARGET


async def test_appliance_already_on_target_is_skipped(pool: asyncpg.Pool,
                                                      db_url: str) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        first = await create(pool)
        async with _engine_side(pool) as h:
            assert await _run(h, await _claim(pool, first)) == "SUCCEEDED"
        f.sim.reset()  # the counters only: the appliance stays on the target
        second = await create(pool)
        task = await _claim(pool, second)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "SKIPPED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["from_version"], row["final_version"],
                row["installs_sent"], row["install_sent_at"]) == (
            "SKIPPED", None, TARGET, TARGET, 0, None)
        assert await events_of(pool, task.id) == [*CLAIMED, ("DISPATCHING", "SKIPPED")]
        assert f.sim.stats()["install_requests"] == 0
        assert _truth(f.sim)["installs_accepted"] == 0
        assert f.sim.version_of(NAME) == TARGET


# ----------------------------------------------------------------------------- the guard
@pytest.mark.parametrize(("operation", "state"), [("pause", "PENDING"),
                                                  ("cancel", "CANCELLED")])
async def test_rollout_paused_or_cancelled_before_the_send(
    pool: asyncpg.Pool, db_url: str, operation: str, state: str
) -> None:
    """The operator pauses (cancels) the rollout after the claim: the guarded write before
    the POST sees it, nothing reaches the appliance; a paused task goes back to PENDING
    without spending an attempt, a cancelled one is CANCELLED."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        act = (rollout_store.pause_rollout if operation == "pause"
               else rollout_store.cancel_rollout)
        await act(pool, rid, ACTOR)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == state
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["installs_sent"],
                row["install_sent_at"], row["lease_owner"]) == (state, None, 0, None, None)
        events = await pool.fetch(
            "SELECT from_state, to_state, detail FROM task_events WHERE task_id = $1 "
            "ORDER BY id", task.id)
        assert [(e["from_state"], e["to_state"]) for e in events] == [*CLAIMED,
            ("DISPATCHING", state)]
        rollout_state = "PAUSED" if operation == "pause" else "CANCELLED"
        assert f"rollout is {rollout_state}" in events[-1]["detail"]["reason"]
        if operation == "pause":
            # not sent: the attempt is given back, and it may be claimed again soon
            assert row["attempt"] == 0 and row["not_before"] is not None
        assert f.sim.stats()["install_requests"] == 0
        assert _truth(f.sim)["installs_accepted"] == 0
        assert f.sim.version_of(NAME) == V0


async def test_stale_lease_before_the_send_sends_nothing(pool: asyncpg.Pool,
                                                         db_url: str) -> None:
    """Another worker reclaimed the task (its lease ran out) before this runner's guarded
    write: the runner drops it without writing; the new owner installs exactly once."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        taken = await _take_over(pool, task)
        async with _engine_side(pool, OWNER) as h:
            assert await _run(h, task) == "DISPATCHING"  # dropped: TaskLost
        assert h.events == []
        row = await _row(pool, task.id)
        assert (row["state"], row["lease_owner"], row["lease_token"], row["installs_sent"],
                row["install_sent_at"], row["error_code"]) == (
            "DISPATCHING", OTHER, taken.lease_token, 0, None, None)
        assert await events_of(pool, task.id) == [*CLAIMED, ("DISPATCHING", "DISPATCHING")]
        assert f.sim.stats()["install_requests"] == 0
        # the new owner: nothing was sent under the old claim, so it dispatches afresh
        async with _engine_side(pool, OTHER) as h:
            assert await _run(h, taken) == "SUCCEEDED"
        row = await _row(pool, task.id)
        assert (row["state"], row["final_version"], row["installs_sent"]) == (
            "SUCCEEDED", TARGET, 1)
        assert _truth(f.sim)["installs_accepted"] == 1
        assert f.sim.version_of(NAME) == TARGET


# ----------------------------------------------------------------------------- reclaimed
async def test_task_taken_over_mid_install_old_runner_stops_new_one_finishes(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The install is accepted and INSTALLING recorded; then another worker reclaims the
    task (this process's lease ran out). The old runner keeps only reading the appliance
    and stops at its next write, leaving no outcome; the new owner follows the same install
    to SUCCEEDED. One install."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        taken: list[ClaimedTask] = []
        async with http_client() as http:
            holder: list[Harness] = []

            async def sleep(seconds: float) -> None:
                # the first pause once INSTALLING is recorded: the lease is taken over
                if not taken and "INSTALLING" in holder[0].events:
                    taken.append(await _take_over(pool, task))
                await asyncio.sleep(seconds)

            holder.append(_context(pool, http, OWNER, sleep=sleep))
            old = holder[0]
            try:
                assert await _run(old, task) == "INSTALLING"  # dropped: TaskLost
            finally:
                assert old.ctx.batcher is not None
                await old.ctx.batcher.aclose()
        assert old.events == ["INSTALLING"]
        (new_claim,) = taken
        assert new_claim.state == "INSTALLING" and new_claim.remote_task_id
        row = await _row(pool, task.id)
        assert (row["state"], row["lease_owner"], row["final_version"], row["error_code"]) \
            == ("INSTALLING", OTHER, None, None)
        async with _engine_side(pool, OTHER) as h:
            assert await _run(h, new_claim) == "SUCCEEDED"
        row = await _row(pool, task.id)
        truth = _truth(f.sim)
        assert (row["state"], row["final_version"], row["installs_sent"]) == (
            "SUCCEEDED", truth["version"], 1)
        assert truth["version"] == TARGET and truth["installs_accepted"] == 1
        assert await events_of(pool, task.id) == [*CLAIMED,
            ("DISPATCHING", "INSTALLING"), ("INSTALLING", "INSTALLING"),
            ("INSTALLING", "VERIFYING"), ("VERIFYING", "SUCCEEDED")]


async def test_reclaimed_installing_task_adopts_the_running_install(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The engine stopped right after recording INSTALLING (a safe point: its runner is
    cancelled and its lease released, as `Engine._drain` does); the install still runs on
    the appliance. The next owner follows that install by its id, sends nothing."""
    async with fleet(pool, db_url, appliances=1, sites=1, install_seconds=2.0,
                     install_jitter=0.0) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        async with http_client() as http:
            harness = _context(pool, http, OWNER)
            sleep, parked = _park_after("INSTALLING", harness)
            harness.ctx.sleep = sleep
            handle = asyncio.create_task(_run(harness, task))
            await asyncio.wait_for(parked.wait(), RUN_DEADLINE)
            assert not handle.done()
            handle.cancel()
            with pytest.raises(asyncio.CancelledError):
                await handle
            assert harness.ctx.batcher is not None
            await harness.ctx.batcher.aclose()
        async with pool.acquire() as conn:
            assert await task_store.release_leases(
                conn, owner=OWNER, leases={task.id: task.lease_token}) == 1
            (taken,) = await task_store.reclaim_expired(conn, owner=OTHER, lease_seconds=60,
                                                        limit=10)
        before = await _row(pool, task.id)
        assert taken.state == "INSTALLING"
        assert taken.remote_task_id == before["remote_task_id"] is not None
        assert _truth(f.sim)["phase"] == "installing"  # still running when taken over
        async with _engine_side(pool, OTHER) as h:
            assert await _run(h, taken) == "SUCCEEDED"
        row = await _row(pool, task.id)
        truth = _truth(f.sim)
        assert (row["state"], row["error_code"], row["final_version"], row["installs_sent"],
                row["remote_task_id"]) == (
            "SUCCEEDED", None, truth["version"], 1, before["remote_task_id"])
        assert truth["version"] == TARGET and truth["installs_accepted"] == 1
        assert f.sim.stats()["install_requests"] == 1
        assert await events_of(pool, task.id) == [*CLAIMED,
            ("DISPATCHING", "INSTALLING"), ("INSTALLING", "INSTALLING"),
            ("INSTALLING", "VERIFYING"), ("VERIFYING", "SUCCEEDED")]


@pytest.mark.parametrize("appliance_done", [False, True],
                         ids=["install-running", "already-on-target"])
async def test_reclaimed_after_the_send_never_sends_again(
    pool: asyncpg.Pool, db_url: str, appliance_done: bool
) -> None:
    """The engine died between the install POST and recording INSTALLING (the task is
    DISPATCHING with `install_sent_at` set). The next owner gathers evidence instead of
    sending: a running install is adopted by its id; an appliance already on the target
    is verified. SUCCEEDED either way, on one install."""
    async with fleet(pool, db_url, appliances=1, sites=1, install_seconds=2.0,
                     install_jitter=0.0) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        remote_id = await _install_as_dead_engine(pool, task)
        if appliance_done:
            async def truth() -> dict[str, Any]:
                return _truth(f.sim)

            # the install applied, the appliance rebooted and its services run again
            await eventually(truth, lambda t: (t["phase"], t["version"]) == ("up", TARGET))
        taken = await _take_over(pool, task)
        assert (taken.state, taken.installs_sent) == ("DISPATCHING", 1)
        assert taken.install_sent_at is not None
        async with _engine_side(pool, OTHER) as h:
            assert await _run(h, taken) == "SUCCEEDED"
        row = await _row(pool, task.id)
        truth = _truth(f.sim)
        assert (row["state"], row["error_code"], row["final_version"], row["from_version"],
                row["installs_sent"]) == ("SUCCEEDED", None, truth["version"], V0, 1)
        assert truth["version"] == TARGET and truth["installs_accepted"] == 1
        assert f.sim.stats()["install_requests"] == 1
        # adopted by its id while it runs; on the target, followed by the version alone
        assert row["remote_task_id"] == (None if appliance_done else remote_id)
        assert await events_of(pool, task.id) == [*CLAIMED,
            ("DISPATCHING", "DISPATCHING"), ("DISPATCHING", "INSTALLING"),
            ("INSTALLING", "VERIFYING"), ("VERIFYING", "SUCCEEDED")]


# ----------------------------------------------------------------------------- failures
async def test_install_error_on_the_appliance_fails_install_error(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        f.sim.set_faults(NAME, ["install_error"])
        rid = await create(pool)
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["installs_sent"], row["holds_slot"]) == (
            "FAILED", "INSTALL_ERROR", 1, False)
        assert "post-install script exited with status 1" in row["error_message"]
        assert row["final_version"] is None
        assert await events_of(pool, task.id) == [*CLAIMED,
            ("DISPATCHING", "INSTALLING"), ("INSTALLING", "FAILED")]
        truth = _truth(f.sim)
        assert (truth["version"], truth["installs_accepted"]) == (V0, 1)


async def test_version_not_offered_fails_without_an_install(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """A target the appliance does not offer: 404 on the install, a permanent error."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rollout, _ = await rollout_store.create_rollout(
            pool, name="unknown version", target_version="9.0.2-30030", selector=None,
            strategy={"waves": ["100%"], "task_timeout": 20, "reboot_grace": 5},
            actor=ACTOR,
        )
        await rollout_store.start_rollout(pool, rollout.id, ACTOR)
        task = await _claim(pool, rollout.id)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["from_version"], row["installs_sent"]) \
            == ("FAILED", "VERSION_NOT_OFFERED", V0, 1)
        assert "9.0.2-30030" in row["error_message"]
        assert await events_of(pool, task.id) == [*CLAIMED, ("DISPATCHING", "FAILED")]
        truth = _truth(f.sim)
        assert (truth["version"], truth["installs_accepted"]) == (V0, 0)
        assert f.sim.stats()["install_responses"] == {"404": 1}


async def _forbidden_install(pool: asyncpg.Pool, db_url: str) -> asyncpg.Record:
    """The appliance refuses the install with 403 INSUFFICIENT_RIGHTS: the task's row."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        f.sim.set_faults(NAME, ["forbidden"])
        rid = await create(pool)
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        assert await events_of(pool, task.id) == [*CLAIMED, ("DISPATCHING", "FAILED")]
        truth = _truth(f.sim)
        assert (truth["version"], truth["installs_accepted"]) == (V0, 0)
        assert f.sim.stats()["install_responses"] == {"403": 1}  # never repeated
        return await _row(pool, task.id)


async def test_forbidden_install_fails_at_once_as_forbidden(
    pool: asyncpg.Pool, db_url: str
) -> None:
    row = await _forbidden_install(pool, db_url)
    # the orchestrator's own code (as documented), whatever the appliance calls a 403
    assert (row["state"], row["error_code"], row["installs_sent"], row["final_version"]) \
        == ("FAILED", "FORBIDDEN", 1, None)
    # the runner's reason, then the appliance's own code and message
    assert "lacks the rights to install updates" in row["error_message"]
    assert "appliance says: [INSUFFICIENT_RIGHTS]" in row["error_message"]
    assert "does not have the rights" in row["error_message"]


async def test_unresolvable_credentials_fail_before_anything_is_sent(
    pool: asyncpg.Pool, db_url: str
) -> None:
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        await pool.execute("UPDATE appliances SET credentials_ref = $2 WHERE name = $1",
                           NAME, "env:APPLIANCE_NO_SUCH_VARIABLE")
        rid = await create(pool)
        task = await _claim(pool, rid)
        assert task.credentials_ref == "env:APPLIANCE_NO_SUCH_VARIABLE"
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["installs_sent"],
                row["install_sent_at"]) == ("FAILED", "CREDENTIALS", 0, None)
        assert "APPLIANCE_NO_SUCH_VARIABLE is not set" in row["error_message"]
        assert await events_of(pool, task.id) == [*CLAIMED, ("DISPATCHING", "FAILED")]
        assert f.sim.stats()["requests"] == 0  # not even a login
        assert f.sim.version_of(NAME) == V0


async def test_http_target_refused_by_the_strict_policy(pool: asyncpg.Pool,
                                                        db_url: str) -> None:
    """Settings that allow neither http:// nor loopback addresses: the simulator's stored
    base_url is refused when the client is built, before any request."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        rid = await create(pool)
        task = await _claim(pool, rid)
        async with _engine_side(pool, policy=TargetPolicy()) as h:
            assert await _run(h, task) == "FAILED"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["installs_sent"]) == (
            "FAILED", "TARGET_REFUSED", 0)
        assert f.sim.stats()["requests"] == 0
        assert f.sim.version_of(NAME) == V0


async def test_task_timeout_during_a_long_reboot_keeps_the_slot(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The install is accepted, then the appliance reboots for an hour: no outcome within
    task_timeout is TIMED_OUT TASK_TIMEOUT, and since the install was sent the task keeps
    its slot (the appliance is still busy)."""
    async with fleet(pool, db_url, appliances=1, sites=1) as f:
        f.sim.set_faults(NAME, ["long_reboot"])
        # reboot_grace may not exceed task_timeout; equal, the outage that starts after the
        # install is always shorter than the time since the dispatch: TASK_TIMEOUT first
        rid = await create(pool, {"task_timeout": 2, "reboot_grace": 2})
        task = await _claim(pool, rid)
        async with _engine_side(pool) as h:
            assert await _run(h, task) == "TIMED_OUT"
        row = await _row(pool, task.id)
        assert (row["state"], row["error_code"], row["installs_sent"], row["holds_slot"],
                row["final_version"]) == ("TIMED_OUT", "TASK_TIMEOUT", 1, True, None)
        assert "task_timeout 2 s" in row["error_message"]
        assert await events_of(pool, task.id) == [*CLAIMED,
            ("DISPATCHING", "INSTALLING"), ("INSTALLING", "TIMED_OUT")]
        truth = _truth(f.sim)
        assert (truth["phase"], truth["installs_accepted"]) == ("rebooting", 1)
        async with pool.acquire() as conn:
            held = await task_store.held_slots(conn, rollout_id=rid)
        assert [h["id"] for h in held] == [task.id]
