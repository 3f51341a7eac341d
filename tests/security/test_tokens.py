"""Tokens (issue 14, findings 5 and 10): expiry (`--expires-in`, refused with 401, shown by
`tokens list` and the API), the short lookup cache (a bad token repeated costs one query;
a revoked token stops within the cache time), the limit of failed authentications per
client address (429 with Retry-After), and the log lines of refused requests (rate-limited,
never the token)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from orchestrator.api.auth import Authenticator
from orchestrator.api.routing import STATE
from orchestrator.settings import Settings
from orchestrator.store import tokens as token_store
from tests.helpers import cli_env, run_cli
from tests.integration.test_api_support import auth
from tests.security.auth_support import api_client


# ------------------------------------------------------------------ expiry values
@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("12h", 12 * 3600), ("90m", 5400), ("2w", 14 * 86400),
    ("1d12h", 36 * 3600), ("60s", 60), (" 7D ", 7 * 86400),
])
def test_expiry_values(text: str, seconds: int) -> None:
    assert token_store.parse_expiry(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "-1d", "1.5d", "30 d", "0d", "59s",
                                  "3651d", "1d 2h"])
def test_bad_expiry_values_are_named(text: str) -> None:
    with pytest.raises(token_store.TokenError) as caught:
        token_store.parse_expiry(text)
    assert str(caught.value).startswith(f"--expires-in: {text!r} ")


# ------------------------------------------------------------------ expiry through the API
async def test_expired_token_is_refused_and_the_expiry_is_listed(pool: asyncpg.Pool) -> None:
    _, admin = await token_store.create_token(pool, "admin", "admin")
    async with api_client(pool) as client:
        async with client.post("/api/v1/tokens", headers=auth(admin),
                               json={"name": "ci", "role": "viewer",
                                     "expires_in": "12h"}) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        assert created["expires_at"] is not None
        async with client.get("/api/v1/audit", headers=auth(created["token"])) as resp:
            assert resp.status == 200
        async with client.get("/api/v1/tokens", headers=auth(admin)) as resp:
            listed = {t["name"]: t for t in (await resp.json())["items"]}
        assert listed["ci"]["expires_at"] == created["expires_at"]
        assert listed["admin"]["expires_at"] is None
        # the clock moves past the expiry: refused at once, though the lookup is cached
        await pool.execute("UPDATE api_tokens SET created_at = now() - interval '2 days', "
                           "expires_at = now() - interval '1 second' WHERE name = 'ci'")
        async with client.get("/api/v1/audit", headers=auth(created["token"])) as resp:
            assert resp.status in (200, 401)  # cached for api_token_cache_seconds at most
        client.app[STATE].auth.forget("ci")  # type: ignore[index]
        async with client.get("/api/v1/audit", headers=auth(created["token"])) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            body = await resp.json()
        assert "'ci' expired at" in body["detail"]
        # active tokens only: the expired one is left out
        async with client.get("/api/v1/tokens?include_revoked=false",
                              headers=auth(admin)) as resp:
            assert [t["name"] for t in (await resp.json())["items"]] == ["admin"]
        async with client.post("/api/v1/tokens", headers=auth(admin),
                               json={"name": "bad", "role": "viewer",
                                     "expires_in": "3x"}) as resp:
            assert resp.status == 422
            assert "body.expires_in" in await resp.text()


async def test_expiry_is_checked_on_every_request_not_from_the_cache(
    pool: asyncpg.Pool,
) -> None:
    _, token = await token_store.create_token(pool, "soon", "viewer",
                                              expires_in=timedelta(minutes=1))
    async with api_client(pool, api_token_cache_seconds=60) as client:
        async with client.get("/api/v1/audit", headers=auth(token)) as resp:
            assert resp.status == 200
        cached = next(iter(client.app[STATE].auth._cache.values()))  # type: ignore[index]
        info = cached[1]
        assert info is not None
        expired = token_store.TokenInfo(**{**info.__dict__,
                                           "expires_at": info.created_at})
        digest = token_store.hash_token(token)
        client.app[STATE].auth._cache[digest] = (cached[0], expired)  # type: ignore[index]
        async with client.get("/api/v1/audit", headers=auth(token)) as resp:
            assert resp.status == 401


def test_cli_expires_in(db_url: str) -> None:
    env = cli_env(db_url)
    bad = run_cli("tokens", "create", "--name", "x", "--role", "viewer", "--expires-in",
                  "3x", env=env)
    assert bad.returncode == 1
    assert "--expires-in: '3x' is not a duration" in bad.stderr
    made = run_cli("tokens", "create", "--name", "ci", "--role", "viewer", "--expires-in",
                   "30d", env=env)
    assert made.returncode == 0, made.stderr
    assert "expiring " in made.stderr and "shown only now" in made.stderr
    run_cli("tokens", "create", "--name", "forever", "--role", "viewer", env=env)
    listed = run_cli("tokens", "list", env=env)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert "EXPIRES" in lines[0]
    by_name = {line.split()[0]: line for line in lines[1:-1]}
    assert by_name["forever"].endswith("never")
    as_json = {t["name"]: t for t in json.loads(run_cli("tokens", "list", "--json",
                                                        env=env).stdout)}
    assert as_json["ci"]["expires_at"] is not None
    assert as_json["ci"]["expires_at"][:10] in by_name["ci"]
    assert as_json["forever"]["expires_at"] is None


# ------------------------------------------------------------------ the cache
async def test_a_bad_token_repeated_costs_one_lookup(pool: asyncpg.Pool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = token_store.lookup

    async def counting(conn: Any, token: str) -> Any:
        calls.append(token)
        return await real(conn, token)

    monkeypatch.setattr(token_store, "lookup", counting)
    async with api_client(pool) as client:
        for _ in range(20):
            async with client.get("/api/v1/audit", headers=auth("orch_bad")) as resp:
                assert resp.status == 401
    assert len(calls) == 1


async def test_a_revoked_token_stops_within_the_cache_time(pool: asyncpg.Pool) -> None:
    _, admin = await token_store.create_token(pool, "admin", "admin")
    _, other = await token_store.create_token(pool, "other", "viewer")
    async with api_client(pool, api_token_cache_seconds=0.5) as client:
        async with client.get("/api/v1/audit", headers=auth(other)) as resp:
            assert resp.status == 200
        # revoked by another process (the CLI): this one notices within the cache time
        await token_store.revoke_token(pool, "other")
        await asyncio.sleep(0.6)
        async with client.get("/api/v1/audit", headers=auth(other)) as resp:
            assert resp.status == 401
        # revoked through this process's API: at once
        async with client.get("/api/v1/audit", headers=auth(admin)) as resp:
            assert resp.status == 200
        _, third = await token_store.create_token(pool, "third", "viewer")
        async with client.get("/api/v1/audit", headers=auth(third)) as resp:
            assert resp.status == 200
        async with client.delete("/api/v1/tokens/third", headers=auth(admin)) as resp:
            assert resp.status == 200
        async with client.get("/api/v1/audit", headers=auth(third)) as resp:
            assert resp.status == 401


# ------------------------------------------------------------------ the failure limit
async def test_too_many_failures_from_one_address_get_429(pool: asyncpg.Pool) -> None:
    _, good = await token_store.create_token(pool, "good", "viewer")
    async with api_client(pool, api_auth_failures_per_minute=3) as client:
        # no header at all costs nothing and is no guess: not counted
        for _ in range(5):
            async with client.get("/api/v1/audit") as resp:
                assert resp.status == 401
        for i in range(3):
            async with client.get("/api/v1/audit", headers=auth(f"orch_bad{i}")) as resp:
                assert resp.status == 401
        for token in ("orch_bad-again", good):
            async with client.get("/api/v1/audit", headers=auth(token)) as resp:
                assert resp.status == 429
                assert 1 <= int(resp.headers["Retry-After"]) <= 60
                body = await resp.json()
                assert resp.content_type == "application/problem+json"
        assert body["type"].endswith("#problem-too-many-requests")
        assert "too many failed authentications" in body["detail"]
        # public routes stay open
        async with client.get("/healthz") as resp:
            assert resp.status == 200


def test_the_limit_counts_one_minute() -> None:
    now = [1000.0]
    authn = Authenticator(Settings(api_auth_failures_per_minute=2), clock=lambda: now[0])
    authn._failed("10.0.0.1")
    now[0] += 20
    authn._failed("10.0.0.1")
    assert authn.retry_after("10.0.0.1") == 40
    assert authn.retry_after("10.0.0.2") is None
    now[0] += 40
    assert authn.retry_after("10.0.0.1") is None  # the first failure left the minute


# ------------------------------------------------------------------ log lines
async def test_refusals_are_logged_with_route_client_and_name_never_the_token(
    pool: asyncpg.Pool,
) -> None:
    _, viewer = await token_store.create_token(pool, "grafana", "viewer")
    async with api_client(pool) as client:
        with capture_logs() as logs:
            async with client.delete("/api/v1/tokens/x", headers=auth(viewer)) as resp:
                assert resp.status == 403
            async with client.get("/api/v1/rollouts/7", headers=auth("orch_guess")) as resp:
                assert resp.status == 401
    denied = [e for e in logs if e["event"] == "api_auth_denied"]
    assert len(denied) == 2, logs
    forbidden, unknown = denied
    assert forbidden["status"] == 403 and forbidden["caller"] == "grafana"
    assert forbidden["route"] == "/api/v1/tokens/{name}" and forbidden["reason"] == "role"
    assert forbidden["client"] == "127.0.0.1" and forbidden["log_level"] == "warning"
    assert unknown["status"] == 401 and unknown["reason"] == "unknown"
    assert unknown["route"] == "/api/v1/rollouts/{id}" and "caller" not in unknown
    text = repr(logs)
    assert viewer not in text and "orch_guess" not in text


async def test_a_flood_of_refusals_does_not_flood_the_log(pool: asyncpg.Pool) -> None:
    async with api_client(pool) as client:
        with capture_logs() as logs:
            for i in range(200):
                async with client.get("/api/v1/audit",
                                      headers=auth(f"orch_flood{i}")) as resp:
                    assert resp.status in (401, 429)
    denied = [e for e in logs if e["event"] == "api_auth_denied"]
    assert 1 <= len(denied) <= 5, len(denied)
