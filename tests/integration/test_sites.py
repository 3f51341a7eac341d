"""Sites and their fleet-wide limits: the store (list, set, clear, validation naming the
value, audit, installs in flight across rollouts) and `/api/v1/sites` (viewer reads, admin
writes; every response checked against the document; a schemathesis pass on the sites
operations with an admin token)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from orchestrator.api.routing import STATE
from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import sites as site_store
from orchestrator.store.audit import Actor, list_audit
from orchestrator.store.sites import SiteError, SiteNotFound
from tests.integration.test_api import _api
from tests.integration.test_api_schemathesis import schemathesis, served
from tests.integration.test_api_support import api_client, tokens_by_role

ACTOR = Actor(name="ops", via="cli")
BASE = "/api/v1/sites"
ITEM = BASE + "/{name}"


async def _fleet(pool: asyncpg.Pool) -> None:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name=name, base_url=f"https://{name}/api", site=site)
        for name, site in (("vr-ams-1", "ams"), ("vr-ams-2", "ams"), ("vr-ams-3", "ams"),
                           ("vr-nyc-1", "nyc"), ("vr-nyc-2", "nyc"), ("vr-fra-1", "fra"))
    ])


def _view(sites: list[site_store.Site]) -> list[tuple[str, int | None, int, int]]:
    return [(s.name, s.max_in_flight, s.in_flight, s.appliances) for s in sites]


async def test_list_set_clear_and_audit(pool: asyncpg.Pool) -> None:
    assert await site_store.list_sites(pool) == []
    await _fleet(pool)
    assert _view(await site_store.list_sites(pool)) == [
        ("ams", None, 0, 3), ("fra", None, 0, 1), ("nyc", None, 0, 2)]

    site = await site_store.set_site_limit(pool, "ams", 2, ACTOR)
    assert (site.name, site.max_in_flight, site.appliances) == ("ams", 2, 3)
    assert site.updated_at is not None
    assert site.to_dict()["max_in_flight"] == 2
    site = await site_store.set_site_limit(pool, "ams", 5, ACTOR)
    assert site.max_in_flight == 5
    await site_store.set_site_limit(pool, "nyc", 1, ACTOR)
    site = await site_store.set_site_limit(pool, "nyc", None, ACTOR)  # cleared: unlimited
    assert site.max_in_flight is None and site.updated_at is not None
    assert _view(await site_store.list_sites(pool)) == [
        ("ams", 5, 0, 3), ("fra", None, 0, 1), ("nyc", None, 0, 2)]
    assert await pool.fetchval("SELECT max_in_flight FROM sites WHERE name = 'ams'") == 5

    # a site known only from the table (its appliances moved away) is still listed and set
    await pool.execute("UPDATE appliances SET site = 'ams-new' WHERE site = 'ams'")
    assert _view(await site_store.list_sites(pool)) == [
        ("ams", 5, 0, 0), ("ams-new", None, 0, 3), ("fra", None, 0, 1), ("nyc", None, 0, 2)]
    assert (await site_store.set_site_limit(pool, "ams", 4, ACTOR)).max_in_flight == 4

    entries = [(e.actor, e.via, e.action, e.target_type, e.target_id, e.detail)
               for e in await list_audit(pool)][::-1]
    assert entries == [
        ("ops", "cli", "site.set-limit", "site", "ams", {"max_in_flight": 2, "previous": None}),
        ("ops", "cli", "site.set-limit", "site", "ams", {"max_in_flight": 5, "previous": 2}),
        ("ops", "cli", "site.set-limit", "site", "nyc", {"max_in_flight": 1, "previous": None}),
        ("ops", "cli", "site.set-limit", "site", "nyc", {"max_in_flight": None, "previous": 1}),
        ("ops", "cli", "site.set-limit", "site", "ams", {"max_in_flight": 4, "previous": 5}),
    ]


async def test_validation_names_the_value(pool: asyncpg.Pool) -> None:
    await _fleet(pool)
    with pytest.raises(SiteNotFound) as unknown:
        await site_store.set_site_limit(pool, "lon", 3, ACTOR)
    assert str(unknown.value) == ("site: unknown site 'lon': no appliance is at it and it "
                                  "has no limit (known sites: ams, fra, nyc)")
    with pytest.raises(SiteNotFound, match="'lon'"):
        await site_store.get_site(pool, "lon")
    for bad in (0, -1, True, "3", 2.5, 10**7):
        with pytest.raises(SiteError) as refused:
            await site_store.set_site_limit(pool, "ams", bad, ACTOR)  # type: ignore[arg-type]
        assert refused.value.field == "max_in_flight"
        assert str(refused.value).startswith(f"max_in_flight: {bad!r} is "), refused.value
    for name in ("", "   "):
        with pytest.raises(SiteError, match=r"site: .* is not a site name"):
            await site_store.set_site_limit(pool, name, 3, ACTOR)
    with pytest.raises(SiteError, match="longer than 253"):
        await site_store.set_site_limit(pool, "x" * 300, 3, ACTOR)
    assert await pool.fetchval("SELECT count(*) FROM sites") == 0
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == 0


async def test_in_flight_counts_every_rollout(pool: asyncpg.Pool) -> None:
    await _fleet(pool)
    one, _ = await rollout_store.create_rollout(
        pool, name="one", target_version="9", actor=ACTOR, selector={"sites": ["ams"]})
    two, _ = await rollout_store.create_rollout(
        pool, name="two", target_version="9", actor=ACTOR,
        strategy={"after_overlapping": True})
    # one: two ams installs in flight; two: one ams (the third appliance) and one nyc
    # (at most one task per appliance may be in flight, whichever rollout it belongs to)
    await pool.execute(
        """UPDATE tasks t SET state = s.state FROM appliances a,
                  (VALUES ('vr-ams-1', 'DISPATCHING'), ('vr-ams-2', 'INSTALLING')) s(n, state)
           WHERE a.id = t.appliance_id AND a.name = s.n AND t.rollout_id = $1""", one.id)
    await pool.execute(
        """UPDATE tasks t SET state = s.state FROM appliances a,
                  (VALUES ('vr-ams-3', 'VERIFYING'), ('vr-nyc-1', 'INSTALLING')) s(n, state)
           WHERE a.id = t.appliance_id AND a.name = s.n AND t.rollout_id = $1""", two.id)
    # ended and not-yet-started tasks are not in flight
    await pool.execute(
        """UPDATE tasks t SET state = 'SUCCEEDED', finished_at = now() FROM appliances a
           WHERE a.id = t.appliance_id AND a.name = 'vr-fra-1' AND t.rollout_id = $1""",
        two.id)
    assert _view(await site_store.list_sites(pool)) == [
        ("ams", None, 3, 3), ("fra", None, 0, 1), ("nyc", None, 1, 2)]
    # counted by the task's site (the site when planned), not the appliance's site now
    await pool.execute("UPDATE appliances SET site = 'nyc' WHERE name = 'vr-ams-1'")
    assert _view(await site_store.list_sites(pool)) == [
        ("ams", None, 3, 2), ("fra", None, 0, 1), ("nyc", None, 1, 3)]
    site = await site_store.set_site_limit(pool, "ams", 3, ACTOR)
    assert (site.max_in_flight, site.in_flight) == (3, 3)


# ------------------------------------------------------------------ the API
async def test_api_list_set_clear_roles_and_audit(pool: asyncpg.Pool) -> None:
    await _fleet(pool)
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        status, listed = await api.call("GET", BASE, token=tokens["viewer"])
        assert status == 200
        assert [(s["name"], s["max_in_flight"], s["in_flight"], s["appliances"])
                for s in listed["items"]] == [("ams", None, 0, 3), ("fra", None, 0, 1),
                                              ("nyc", None, 0, 2)]
        assert listed["items"][0]["updated_at"] is None

        status, site = await api.call("PUT", f"{BASE}/ams", ITEM, json={"max_in_flight": 4})
        assert status == 200, site
        assert (site["name"], site["max_in_flight"], site["appliances"]) == ("ams", 4, 3)
        assert site["updated_at"] is not None
        status, site = await api.call("PUT", f"{BASE}/ams", ITEM, json={"max_in_flight": None})
        assert status == 200 and site["max_in_flight"] is None

        # roles: viewers and operators read, only admins write
        for role in ("viewer", "operator"):
            status, problem = await api.call("PUT", f"{BASE}/ams", ITEM, token=tokens[role],
                                             json={"max_in_flight": 1})
            assert status == 403 and problem["required_role"] == "admin", problem
            status, _ = await api.call("GET", BASE, token=tokens[role])
            assert status == 200
        status, _ = await api.call("GET", BASE, token="orch_unknown")
        assert status == 401

        # errors name the field and the value
        cases: list[tuple[str, Any, int, str, str]] = [
            ("ams", {"max_in_flight": 0}, 422, "body.max_in_flight", "0"),
            ("ams", {"max_in_flight": "3"}, 422, "body.max_in_flight", '"3"'),
            ("ams", {"max_in_flight": 2_000_000}, 422, "body.max_in_flight", "2000000"),
            ("ams", {}, 422, "body.max_in_flight", "required"),
            ("ams", {"max_in_flight": 2, "site": "x"}, 422, "body.site", "unknown field"),
            ("lon", {"max_in_flight": 2}, 404, "name", "'lon'"),
        ]
        for name, body, want, field, shown in cases:
            status, problem = await api.call("PUT", f"{BASE}/{name}", ITEM, json=body)
            assert status == want, (body, problem)
            assert problem["errors"][0]["field"] == field, problem
            assert shown in problem["detail"], problem
        status, problem = await api.call("PUT", f"{BASE}/%20ams", ITEM,
                                         json={"max_in_flight": 2})
        assert status == 400 and "path parameter name" in problem["detail"]

    entries = [(e.actor, e.via, e.action, e.target_id, e.detail)
               for e in await list_audit(pool)][::-1]
    assert entries == [
        ("admin-token", "api", "site.set-limit", "ams", {"max_in_flight": 4, "previous": None}),
        ("admin-token", "api", "site.set-limit", "ams", {"max_in_flight": None, "previous": 4}),
    ]


async def test_schemathesis_on_the_sites_operations(pool: asyncpg.Pool, tmp_path: Path) -> None:
    """The admin pass of test_api_schemathesis.py, on the sites tag: no 5xx, and every
    answer as the document describes it."""
    await _fleet(pool)
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        state = client.app[STATE]  # type: ignore[index]
        base = str(client.make_url("")).rstrip("/")
        code, output = await schemathesis(base, tokens["admin"], tmp_path,
                                          "--include-tag", "sites", max_time=15)
        total, errors = served(state)
        assert code == 0, output[-6000:]
        assert errors == 0, output[-3000:]
        # it ran against this app (how many requests fit the time budget depends on the
        # machine's load: not asserted)
        assert total > 0, output[-2000:]
