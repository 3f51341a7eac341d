"""The authorization matrix, generated from the OpenAPI document the API serves.

For every operation of the document: no token (or a malformed, unknown or revoked one) is
401 with a Bearer challenge, every role below the one the operation declares
(`x-required-role`) is 403 naming the role needed, and no answer is ever 5xx (also for a
sufficient role sending no body to a resource that does not exist). The operations with
no required role must be exactly the ones public by design, listed here. A new operation
is covered without touching this file; one that forgets its role fails here."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import create_app
from orchestrator.settings import Settings
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import Actor
from tests.integration.test_api_support import auth, tokens_by_role

# public by design: liveness, readiness, the document, its two pages (Swagger UI with its
# files, and the reference page), the operator console's page and files (signing in happens
# in the page, with a token), and /metrics (while no metrics token is configured: the
# default)
PUBLIC = {"healthz", "readyz", "openapi", "docs", "docsAsset", "reference", "metrics",
          "console", "consoleAsset"}
ROLES = token_store.ROLES  # lowest first
CSV = ("name,base_url,site,tags\n"
       "vr-1,https://vr-1.example.net/api,ams,prod\n"
       "vr-2,https://vr-2.example.net/api,nyc,prod\n")
TIMEOUT = aiohttp.ClientTimeout(total=15)
BAD_AUTHORIZATION = (
    "Bearer orch_not-a-real-token",
    "Bearer " + "A" * 600,
    "Bearer",
    "Basic YWRtaW46YWRtaW4=",
    "bearer  orch_\u00e9t\u00e9",
    "Bearer orch_x' OR '1'='1",
)


@contextlib.asynccontextmanager
async def api_client(pool: asyncpg.Pool, **settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The app on 127.0.0.1 with `settings` (this test fails hundreds of authentications
    from one address on purpose: the limit of failures per minute is raised)."""
    values: dict[str, Any] = {"api_auth_failures_per_minute": 100_000, **settings}
    known = {k: v for k, v in values.items() if k in Settings.model_fields}
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(pool, Settings(**known)), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, methods in document["paths"].items()
            for method, op in methods.items()]


def fill(path: str, op: dict[str, Any], values: dict[str, str]) -> str:
    """The path with each path parameter given a value of its type."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        (param,) = [p for p in op.get("parameters", [])
                    if p["in"] == "path" and p["name"] == name]
        if "enum" in param["schema"]:  # a fixed set of values (the docs' files)
            return str(param["schema"]["enum"][0])
        return values["integer" if param["schema"].get("type") == "integer" else name]
    return re.sub(r"\{([^}]+)\}", value, path)


async def test_authorization_matrix(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    _, revoked = await token_store.create_token(pool, "revoked-admin", "admin")
    await token_store.revoke_token(pool, "revoked-admin")
    async with api_client(pool) as client:
        async with client.post("/api/v1/appliances:import", data=CSV,
                               headers={**auth(tokens["admin"]),
                                        "Content-Type": "text/csv"}) as resp:
            assert resp.status == 200
        rollout, _ = await rollout_store.create_rollout(
            pool, name="fixture", target_version="9.0.1-20020", selector={"tags": ["prod"]},
            strategy={"waves": [1, "100%"]}, actor=Actor("setup"),
        )
        async with client.get("/api/v1/openapi.json") as resp:
            assert resp.status == 200
            document = await resp.json()
        # existing resources for the 401/403 checks, missing ones for the no-5xx probe
        existing = {"integer": str(rollout.id), "name": "vr-1", "window": "w-1"}
        missing = {"integer": "999999999", "name": "no-such-thing", "window": "no-such"}

        async def send(method: str, url: str, authorization: str | None) -> tuple[int, Any]:
            headers = {"Authorization": authorization} if authorization else {}
            async with client.request(method, url, headers=headers, timeout=TIMEOUT) as resp:
                body = await resp.read()
                return resp.status, (resp.headers, body)

        ops = operations(document)
        assert len(ops) >= 30
        public = {op["operationId"] for _, _, op in ops if op.get("x-required-role") is None}
        assert public == PUBLIC, "operations without a required role must be public by design"
        checked: list[str] = []
        for method, path, op in ops:
            op_id = op["operationId"]
            assert "x-required-role" in op, f"{op_id} does not declare x-required-role"
            required = op["x-required-role"]
            url = fill(path, op, existing)
            if required is None:
                status, (_, body) = await send(method, url, None)
                assert status == 200, (op_id, status, body[:300])
                assert op["security"] == [], op_id
                checked.append(op_id)
                continue
            assert required in ROLES, (op_id, required)
            assert op["security"] == [{"bearerAuth": []}], op_id
            assert "401" in op["responses"] and "403" in op["responses"], op_id
            for authorization in (None, *BAD_AUTHORIZATION, f"Bearer {revoked}"):
                status, (headers, body) = await send(method, url, authorization)
                assert status == 401, (op_id, authorization, status, body[:300])
                assert headers["WWW-Authenticate"].startswith("Bearer"), op_id
            for role in ROLES[:ROLES.index(required)]:
                status, (_, body) = await send(method, url, f"Bearer {tokens[role]}")
                assert status == 403, (op_id, role, status, body[:300])
                assert required in body.decode(), (op_id, body[:300])
            # a sufficient role: whatever the answer to a bodiless request about a missing
            # resource, never a server error
            for role in ROLES[ROLES.index(required):]:
                status, (_, body) = await send(method, fill(path, op, missing),
                                               f"Bearer {tokens[role]}")
                assert status < 500, (op_id, role, status, body[:300])
                assert status not in (401, 403), (op_id, role, status, body[:300])
            checked.append(op_id)
        assert sorted(checked) == sorted(op["operationId"] for _, _, op in ops)


async def test_metrics_is_public_only_without_a_metrics_token(pool: asyncpg.Pool) -> None:
    """/metrics is in PUBLIC because no metrics token is configured by default; with one,
    it answers 401 to anyone without it (API tokens included) and never 5xx."""
    secret = "metrics-" + "m" * 24
    tokens = await tokens_by_role(pool)
    async with api_client(pool, api_metrics_token=secret) as client:
        for authorization in (None, "Bearer wrong-wrong-wrong-wrong",
                              f"Bearer {tokens['admin']}"):
            headers = {"Authorization": authorization} if authorization else {}
            async with client.get("/metrics", headers=headers, timeout=TIMEOUT) as resp:
                assert resp.status == 401, (authorization, resp.status)
        async with client.get("/metrics", headers={"Authorization": f"Bearer {secret}"},
                              timeout=TIMEOUT) as resp:
            assert resp.status == 200
