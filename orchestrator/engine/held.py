"""Held slots: timed-out installs that keep their slot until their appliance is idle.

A task that ends TIMED_OUT after its install was sent may still be installing or rebooting
on its appliance: `tasks.holds_slot` keeps it counting as in flight for its rollout's
limits, its site's fleet-wide capacity and one install per appliance. Every engine looks at
the held slots now and then (each slot at most once per `every` seconds, whichever engine
takes it) and frees a slot once its appliance answers with no install task running
(`outcome.slot_free`); the version it reports becomes the task's final version. An
operator frees one by hand with `orchestrator appliances release NAME`.

A look holds the appliance's client for its duration only (`ApplianceHttp.using`): the
client is released after it (logged out, out of the cache) unless a task runner of this
process uses it at the same time.
"""

from __future__ import annotations

import asyncio

import asyncpg

from orchestrator.appliance import ApplianceError, ApplianceHttp, ApplianceTarget
from orchestrator.appliance.credentials import CredentialsError
from orchestrator.appliance.guard import guarded_client
from orchestrator.appliance.models import TaskStatus
from orchestrator.domain import outcome
from orchestrator.domain.inventory import STRICT_POLICY, TargetPolicy
from orchestrator.domain.strategy import Strategy, StrategyError, missing_services, parse_strategy
from orchestrator.logs import get_logger
from orchestrator.store import tasks as task_store
from orchestrator.store.tasks import HeldSlot

log = get_logger("orchestrator.engine.held")

_RUNNING = (TaskStatus.QUEUED, TaskStatus.RUNNING, TaskStatus.UNKNOWN)


async def look(http: ApplianceHttp, slot: HeldSlot, *, seconds: float,
               policy: TargetPolicy = STRICT_POLICY) -> str | None:
    """The version of the slot's appliance when it is idle, else None."""
    try:
        client = guarded_client(http, ApplianceTarget(
            name=slot.appliance, base_url=slot.base_url,
            credentials_ref=slot.credentials_ref, tls_ca_file=slot.tls_ca_file,
            tls_thumbprint=slot.tls_thumbprint,
        ), policy)
    except (CredentialsError, ValueError):
        return None
    try:
        key_services = parse_strategy(slot.strategy).verify_services
    except StrategyError:
        key_services = Strategy().verify_services
    version: str | None = None
    listing_read = running = services_up = False
    try:
        # held for the look only: released after it (logged out unless a runner of this
        # process uses the same client now)
        async with http.using(client), asyncio.timeout(seconds):
            version = (await client.get_appliance(retries=0)).appliance_version
            services = await client.get_services(retries=0)
            services_up = not missing_services(
                key_services, {s.id: bool(s.is_running) for s in services})
            listed = await client.list_tasks(sort_by="start_time", order_by="desc",
                                             limit=50, retries=0)
            listing_read = True
            running = any(t.status in _RUNNING for t in listed)
    except (ApplianceError, TimeoutError):
        pass
    if outcome.slot_free(version=version, listing_read=listing_read,
                         install_running=running, services_up=services_up):
        return version
    return None


async def release_idle(
    pool: asyncpg.Pool, http: ApplianceHttp, *, every: float, limit: int = 100,
    concurrency: int = 20, look_seconds: float = 30.0,
    policy: TargetPolicy = STRICT_POLICY,
) -> int:
    """One pass: look at up to `limit` held slots due for a look; free those whose
    appliance is idle. Returns how many were freed."""
    async with pool.acquire() as conn:
        slots = await task_store.due_held_slots(conn, every_seconds=every, limit=limit)
    if not slots:
        return 0
    gate = asyncio.Semaphore(concurrency)

    async def one(slot: HeldSlot) -> bool:
        async with gate:
            version = await look(http, slot, seconds=look_seconds, policy=policy)
        if version is None:
            log.debug("slot_still_held", task=slot.id, appliance=slot.appliance)
            return False
        async with pool.acquire() as conn:
            freed = await task_store.release_held_slot(
                conn, slot.id, version=version,
                reason="the appliance answered with its key services up and no install "
                       "task running")
        if freed:
            log.info("slot_released", task=slot.id, rollout=slot.rollout_id,
                     appliance=slot.appliance, site=slot.site, version=version)
        return freed

    return sum(await asyncio.gather(*(one(s) for s in slots)))
