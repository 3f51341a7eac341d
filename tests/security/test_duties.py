"""Separation of duties (issue 14, finding 11): only an admin may set `windows: ignore`
(installs outside the maintenance windows), and with `api_forbid_self_approval` the token
that created a rollout may not approve its waves."""

from __future__ import annotations

from typing import Any

import asyncpg
from structlog.testing import capture_logs

from orchestrator.store import tokens as token_store
from tests.integration.test_api_support import auth
from tests.security.auth_support import api_client

CSV = ("name,base_url,site,tags\n"
       "vr-1,https://vr-1.example.net/api,ams,prod\n"
       "vr-2,https://vr-2.example.net/api,nyc,prod\n")


def rollout(name: str, **strategy: Any) -> dict[str, Any]:
    return {"name": name, "target_version": "9.0.1-20020",
            "strategy": {"waves": [1, "100%"], **strategy}}


async def setup(pool: asyncpg.Pool) -> dict[str, str]:
    tokens = {}
    for name, role in (("admin", "admin"), ("alice", "operator"), ("bob", "operator")):
        _, tokens[name] = await token_store.create_token(pool, name, role)
    return tokens


async def test_only_an_admin_may_ignore_the_windows(pool: asyncpg.Pool) -> None:
    tokens = await setup(pool)
    async with api_client(pool) as client:
        async with client.post("/api/v1/appliances:import", data=CSV,
                               headers={**auth(tokens["admin"]),
                                        "Content-Type": "text/csv"}) as resp:
            assert resp.status == 200
        with capture_logs() as logs:
            async with client.post("/api/v1/rollouts", headers=auth(tokens["alice"]),
                                   json=rollout("r1", windows="ignore")) as resp:
                assert resp.status == 403
                body = await resp.json()
        assert body["required_role"] == "admin" and body["role"] == "operator"
        assert "body.strategy.windows: 'ignore'" in body["detail"]
        assert "only by an admin" in body["detail"]
        assert body["errors"][0]["field"] == "body.strategy.windows"
        assert [e["reason"] for e in logs if e["event"] == "api_auth_denied"] == \
            ["windows_ignore_needs_admin"]
        assert await pool.fetchval("SELECT count(*) FROM rollouts") == 0
        for token, name, strategy in ((tokens["alice"], "r2", {"windows": "required"}),
                                      (tokens["alice"], "r3", {}),
                                      (tokens["admin"], "r4", {"windows": "ignore"})):
            async with client.post("/api/v1/rollouts", headers=auth(token),
                                   json=rollout(name, **strategy)) as resp:
                assert resp.status == 201, await resp.text()


async def approve(client: Any, token: str, rollout_id: int) -> tuple[int, Any]:
    async with client.post(f"/api/v1/rollouts/{rollout_id}/approve",
                           headers=auth(token)) as resp:
        return resp.status, await resp.json()


async def started(client: Any, token: str, name: str) -> int:
    async with client.post("/api/v1/rollouts", headers=auth(token),
                           json=rollout(name, approval="each-wave",
                                        after_overlapping=True)) as resp:
        assert resp.status == 201, await resp.text()
        rollout_id = int((await resp.json())["id"])
    async with client.post(f"/api/v1/rollouts/{rollout_id}/start",
                           headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
    return rollout_id


async def test_self_approval_is_refused_when_forbidden(pool: asyncpg.Pool) -> None:
    tokens = await setup(pool)
    async with api_client(pool, api_forbid_self_approval=True) as client:
        async with client.post("/api/v1/appliances:import", data=CSV,
                               headers={**auth(tokens["admin"]),
                                        "Content-Type": "text/csv"}) as resp:
            assert resp.status == 200
        rid = await started(client, tokens["alice"], "by-alice")
        status, body = await approve(client, tokens["alice"], rid)
        assert status == 403, body
        assert body["created_by"] == "alice"
        assert f"rollout {rid} was created by 'alice'" in body["detail"]
        assert "api_forbid_self_approval" in body["detail"]
        assert await pool.fetchval("SELECT count(*) FROM rollout_waves WHERE rollout_id = $1 "
                                   "AND approved_by IS NOT NULL", rid) == 0
        status, body = await approve(client, tokens["bob"], rid)
        assert status == 200, body
        assert await pool.fetchval("SELECT approved_by FROM rollout_waves WHERE "
                                   "rollout_id = $1 AND approved_by IS NOT NULL", rid) == "bob"
        # an admin is no exception
        rid = await started(client, tokens["admin"], "by-admin")
        status, _ = await approve(client, tokens["admin"], rid)
        assert status == 403


async def test_self_approval_is_allowed_by_default(pool: asyncpg.Pool) -> None:
    tokens = await setup(pool)
    async with api_client(pool) as client:
        async with client.post("/api/v1/appliances:import", data=CSV,
                               headers={**auth(tokens["admin"]),
                                        "Content-Type": "text/csv"}) as resp:
            assert resp.status == 200
        rid = await started(client, tokens["alice"], "by-alice")
        status, body = await approve(client, tokens["alice"], rid)
        assert status == 200, body
