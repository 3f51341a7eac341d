"""No secret leaks anywhere (issue 14): a small rollout against the simulator, the API and
the reports, run with known secrets, and none of them may appear in any log line (json,
console, console with colours), any API answer fetched (but the one that hands a new token
out, once), any report (JSON, CSV, HTML) or any text of any database row.

The secrets: the database password (in the URL of the pool, of the engine's LISTEN
connection and of the API's settings; the test server accepts any password or has its
own), the appliances' password (in the environment variable the inventory's
`credentials_ref` names, as `admin:<password>`, and its Basic form), an admin token and a
token freshly created through the API (their SHA-256 in `api_tokens` is expected; their
plaintext is not). Some appliances misbehave (failed install, expiring sessions, refused
credentials, malformed bodies), so the error paths log too."""

from __future__ import annotations

import base64
import io
import re
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import create_app
from orchestrator.logs import configure_logging
from orchestrator.settings import Settings
from orchestrator.store import tokens as token_store
from orchestrator.store.db import create_pool
from tests.fleet import create, engine, fleet, http_client, wait_until_terminal
from tests.integration.test_api_support import auth

FAULTS = ("install_error", "session_expiry", "bad_credentials", "malformed_json")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


async def url_with_password(db_url: str) -> tuple[str, str]:
    """A URL of the test database carrying a password, and the password: the URL's own, or
    a new one when the server accepts it (trust authentication ignores it)."""
    parts = urlsplit(db_url)
    if parts.password:
        return db_url, parts.password
    password = f"DbPw-{uuid.uuid4().hex}"
    host = parts.netloc.rsplit("@", 1)[-1]
    url = urlunsplit((parts.scheme, f"{parts.username or 'postgres'}:{password}@{host}",
                      parts.path, parts.query, parts.fragment))
    try:
        conn = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"the test server refuses a password in the URL: {exc}")
    await conn.close()
    return url, password


async def database_text(pool: asyncpg.Pool) -> dict[str, str]:
    """Every row of every table of the database, cast to text, by table."""
    tables = await pool.fetch(
        """SELECT format('%I.%I', table_schema, table_name) AS name
           FROM information_schema.tables
           WHERE table_type = 'BASE TABLE'
             AND table_schema NOT IN ('pg_catalog', 'information_schema')""")
    out = {}
    for t in tables:
        rows = await pool.fetch(f"SELECT t::text AS row FROM {t['name']} t")
        out[t["name"]] = "\n".join(r["row"] for r in rows)
    return out


@pytest.mark.parametrize("fmt", ["json", "console", "console-colours"])
async def test_no_secret_in_logs_api_reports_or_database(db_url: str, fmt: str) -> None:
    secret_url, db_password = await url_with_password(db_url)
    appliance_password = f"ApplPw-{uuid.uuid4().hex}"
    stream: io.StringIO = _Terminal() if fmt == "console-colours" else io.StringIO()
    configure_logging("json" if fmt == "json" else "console", "debug", stream=stream)
    answers: dict[str, str] = {}  # what the API answered, by request
    try:
        async with (create_pool(secret_url, min_size=1, max_size=10) as pool,
                    fleet(pool, secret_url, appliances=8, sites=2,
                          password=appliance_password) as f):
            refs = {r["credentials_ref"] for r in await pool.fetch(
                "SELECT DISTINCT credentials_ref FROM appliances")}
            (ref,) = refs
            assert ref.startswith("env:"), ref
            credentials = f"admin:{appliance_password}"
            names = [r["name"] for r in await pool.fetch(
                "SELECT name FROM appliances ORDER BY name")]
            for name, fault in zip(names, FAULTS, strict=False):
                f.sim.set_faults(name, [fault])
            rollout_id = await create(pool)
            http = http_client(environ={ref.removeprefix("env:"): credentials})
            async with engine(f, http=http):
                rollout = await wait_until_terminal(pool, rollout_id, timeout=60)
            assert rollout.state in ("COMPLETED_WITH_FAILURES", "FAILED", "SUCCEEDED")
            succeeded = await pool.fetchval(
                "SELECT count(*) FROM tasks WHERE rollout_id = $1 AND state = 'SUCCEEDED'",
                rollout_id)
            assert succeeded >= 1, "the credentials must have worked for some appliances"

            _, admin = await token_store.create_token(pool, "admin", "admin")
            app = create_app(pool, Settings(database_url=secret_url))
            client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1",
                                                                 port=0))
            await client.start_server()
            try:
                async with client.post("/api/v1/tokens", headers=auth(admin),
                                       json={"name": "fresh", "role": "viewer"}) as resp:
                    assert resp.status == 201
                    fresh = (await resp.json())["token"]  # its one showing: not scanned
                gets = [
                    "/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/api/docs",
                    "/api/reference", "/api/docs/assets/docs.js",
                    "/api/v1/appliances?limit=500", f"/api/v1/appliances/{names[0]}",
                    "/api/v1/rollouts", f"/api/v1/rollouts/{rollout_id}?forecast=true",
                    f"/api/v1/rollouts/{rollout_id}/tasks?limit=500",
                    f"/api/v1/rollouts/{rollout_id}/events?follow=false",
                    f"/api/v1/rollouts/{rollout_id}/report?format=json",
                    f"/api/v1/rollouts/{rollout_id}/report?format=csv",
                    f"/api/v1/rollouts/{rollout_id}/report?format=html",
                    "/api/v1/audit?limit=500", "/api/v1/tokens", "/api/v1/sites",
                    "/api/v1/maintenance-windows",
                ]
                for url in gets:
                    token = admin if "tokens" in url or "audit" in url else fresh
                    async with client.get(url, headers=auth(token)) as resp:
                        assert resp.status == 200, (url, resp.status)
                        answers[f"GET {url}"] = await resp.text()
                # refusals and errors answer too
                refused: list[tuple[str, str, dict[str, Any]]] = [
                    ("POST", "/api/v1/tokens", {"json": {"name": "fresh", "role": "admin"}}),
                    ("POST", "/api/v1/rollouts", {"json": {"name": admin}}),
                    ("DELETE", "/api/v1/tokens/fresh", {}),
                ]
                for method, url, kwargs in refused:
                    async with client.request(method, url, headers=auth(admin),
                                              **kwargs) as resp:
                        answers[f"{method} {url} ({resp.status})"] = await resp.text()
                async with client.get("/api/v1/tokens", headers=auth(fresh)) as resp:
                    answers[f"GET /api/v1/tokens revoked ({resp.status})"] = await resp.text()
            finally:
                await client.close()
            rows = await database_text(pool)
    finally:
        structlog.reset_defaults()

    logs = _plain(stream.getvalue())
    assert "install" in logs and len(logs.splitlines()) > 20, "the logs were not captured"
    assert any("name,base_url" in a or "appliance" in a for a in answers.values())
    assert token_store.hash_token(fresh) in rows["public.api_tokens"]
    assert names[0] in rows["public.appliances"]
    secrets = {
        "database password": db_password,
        "appliance password": appliance_password,
        "appliance Basic credentials": base64.b64encode(credentials.encode()).decode(),
        "admin token": admin,
        "new token": fresh,
    }
    places = {f"{fmt} log": logs, **{f"API answer {k}": v for k, v in answers.items()},
              **{f"database table {k}": v for k, v in rows.items()}}
    leaks = [f"{what} in {where}" for what, secret in secrets.items()
             for where, text in places.items() if secret in text]
    assert not leaks, leaks
