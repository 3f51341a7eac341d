from __future__ import annotations

import asyncpg

from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as store


def spec(name: str, site: str = "ams", tags: tuple[str, ...] = (), **kw: str) -> ApplianceSpec:
    return ApplianceSpec(name=name, base_url=f"https://{name}/api", site=site, tags=tags, **kw)


async def test_upsert_inserts_then_updates_by_name(pool: asyncpg.Pool) -> None:
    first = await store.upsert_appliances(pool, [spec("a1", tags=("vr",)), spec("a2", "nyc")])
    assert (first.inserted, first.updated) == (2, 0)
    again = await store.upsert_appliances(
        pool, [spec("a1", "lon", tags=("srm", "prod"), timezone="Europe/London"), spec("a3")]
    )
    assert (again.inserted, again.updated) == (1, 1)
    a1 = await store.get_appliance(pool, "a1")
    assert a1 is not None
    assert (a1.site, a1.tags, a1.timezone) == ("lon", ("srm", "prod"), "Europe/London")
    assert await store.count_appliances(pool) == 3


async def test_list_filters(pool: asyncpg.Pool) -> None:
    await store.upsert_appliances(
        pool,
        [spec("a1", "ams", ("vr",)), spec("a2", "nyc", ("vr", "prod")), spec("a3", "nyc")],
    )
    assert [a.name for a in await store.list_appliances(pool, site="nyc")] == ["a2", "a3"]
    assert [a.name for a in await store.list_appliances(pool, tag="vr")] == ["a1", "a2"]
    assert [a.name for a in await store.list_appliances(pool, site="nyc", tag="prod")] == ["a2"]
    assert [a.name for a in await store.list_appliances(pool, names=["a3", "zz"])] == ["a3"]
    page = await store.list_appliances(pool, limit=2)
    rest = await store.list_appliances(pool, after_id=page[-1].id)
    assert [a.name for a in page + rest] == ["a1", "a2", "a3"]


async def test_credentials_ref_is_stored_never_the_secret(pool: asyncpg.Pool) -> None:
    await store.upsert_appliances(pool, [spec("a1", credentials_ref="env:APPL_CREDS")])
    row = await pool.fetchrow("SELECT * FROM appliances WHERE name = 'a1'")
    assert row is not None and row["credentials_ref"] == "env:APPL_CREDS"
