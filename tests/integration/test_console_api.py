"""The operator console's server side (issue 16): the page and its files with their own
Content-Security-Policy, `GET /api/v1/me`, stream tickets (how a browser's EventSource,
which cannot send an Authorization header, opens a rollout's event stream without the token
in a URL), and what the console's lists show: each rollout's task counts and forecast, each
appliance's newest task, appliances by version. Against the app on 127.0.0.1 over a real
database; every JSON answer is checked against the served OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from structlog.testing import capture_logs

from orchestrator.api import console, openapi
from orchestrator.api.app import create_app
from orchestrator.settings import Settings
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import Actor
from orchestrator.store.tickets import hash_ticket
from tests.integration.test_api_support import DocumentChecker, auth

ACTOR = Actor(name="setup", via="cli")
BOUND = 30.0  # seconds: only against a hang, never asserted
TICKETS = "/api/v1/stream-tickets"
EVENTS = "/api/v1/rollouts/{id}/events"


@contextlib.asynccontextmanager
async def serve(pool: asyncpg.Pool, **settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(pool, Settings(**settings), sse_keepalive=0.2, sse_poll=0.05)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def checker(client: TestClient[Any, Any]) -> DocumentChecker:
    return DocumentChecker(client.app[openapi.DOCUMENT])


async def draft_rollout(pool: asyncpg.Pool) -> int:
    """A DRAFT rollout of two appliances: nothing moves, its stream stays open."""
    await pool.executemany(
        "INSERT INTO appliances (name, base_url, site) VALUES ($1, $2, 'ams')",
        [(f"vr-{i}", f"https://vr-{i}.example.net/api") for i in range(2)])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="watched", target_version="9.0.1-20020", actor=ACTOR)
    return rollout.id


async def sse_until(resp: ClientResponse,
                    stop: Callable[[dict[str, Any]], bool] | None = None
                    ) -> list[dict[str, Any]]:
    """The events of a stream (comments left out) until `stop` says so or it ends."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def run() -> None:
        nonlocal current
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                key, _, value = line.partition(": ")
                current[key] = value
                continue
            if current:
                out.append(current)
                if stop is not None and stop(current):
                    return
                current = {}

    async with asyncio.timeout(BOUND):
        await run()
    return out


def is_progress(event: dict[str, Any]) -> bool:
    return event.get("event") == "progress"


async def new_ticket(client: TestClient[Any, Any], token: str) -> str:
    async with client.post(TICKETS, headers=auth(token)) as resp:
        assert resp.status == 201, await resp.text()
        body = await checker(client).check(resp, TICKETS, "POST")
        assert resp.headers["Cache-Control"] == "no-store"
    assert body["expires_in_seconds"] == 30
    return str(body["ticket"])


# ------------------------------------------------------------------ the page and its files
async def test_console_page_and_its_files_with_their_policy(pool: asyncpg.Pool) -> None:
    async with serve(pool) as client:
        async with client.get("/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
            policy = resp.headers["Content-Security-Policy"]
            assert resp.headers["Cache-Control"] == "no-cache"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives == {
            "default-src": "'none'", "script-src": "'self'", "style-src": "'self'",
            "img-src": "'self' data:", "connect-src": "'self'", "base-uri": "'none'",
            "form-action": "'none'", "frame-ancestors": "'none'",
        }
        # the page loads files of this server only, and each is served with its type
        urls = re.findall(r'(?:src|href)="(/[^"]*)"', page)
        assets = [u for u in urls if u.startswith("/console/assets/")]
        assert "/console/assets/console.js" in assets
        assert not re.search(r'(?:src|href)="(?:https?:)?//', page), "nothing off-site"
        types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                 ".png": "image/png"}
        for url in assets:
            async with client.get(url) as resp:
                assert resp.status == 200, url
                assert resp.content_type == types[url[url.rindex("."):]], url
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Cache-Control"] == "no-cache"
                assert await resp.read()
        # every file the directory holds, and nothing else
        for name in console.ASSETS:
            async with client.get(f"/console/assets/{name}") as resp:
                assert resp.status == 200, name
        for bad in ("nope.js", "index.html", "..%2Fconsole.py", "%2E%2E%2F%2E%2E%2Fapp.py",
                    "console.js%00.png", "..%5Cconsole.py", ".%2Fconsole.js"):
            async with client.get(f"/console/assets/{bad}") as resp:
                assert resp.status == 404, bad
                assert (await resp.json())["status"] == 404
        async with client.get("/console/assets/../../api/console.py") as resp:
            assert resp.status == 404  # the client's own normalisation leaves /api/...
        async with client.get("/console/assets/") as resp:
            assert resp.status == 404


# ------------------------------------------------------------------ /api/v1/me
@pytest.mark.parametrize("role", token_store.ROLES)
async def test_me_names_the_callers_token_and_role(pool: asyncpg.Pool, role: str) -> None:
    _, token = await token_store.create_token(pool, f"{role}-me", role)
    _, expiring = await token_store.create_token(pool, f"{role}-soon", role,
                                                 expires_in=timedelta(days=2))
    async with serve(pool) as client:
        check = checker(client)
        async with client.get("/api/v1/me", headers=auth(token)) as resp:
            assert resp.status == 200
            body = await check.check(resp, "/api/v1/me", "GET")
        assert body == {"name": f"{role}-me", "role": role, "expires_at": None}
        async with client.get("/api/v1/me", headers=auth(expiring)) as resp:
            body = await check.check(resp, "/api/v1/me", "GET")
        assert body["name"] == f"{role}-soon" and body["expires_at"] is not None
        assert token not in str(body) and expiring not in str(body)
        async with client.get("/api/v1/me") as resp:
            assert resp.status == 401


# ------------------------------------------------------------------ stream tickets
async def test_a_ticket_opens_the_stream_once(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "browser", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool) as client:
        ticket = await new_ticket(client, token)
        assert len(ticket) >= 43  # 32 random bytes, URL-safe
        # stored as its SHA-256 only
        stored = await pool.fetch("SELECT ticket_hash FROM stream_tickets")
        assert [r["ticket_hash"] for r in stored] == [hash_ticket(ticket)]
        with capture_logs() as logs:
            async with client.get(f"{url}?ticket={ticket}&follow=false") as resp:
                assert resp.status == 200
                assert resp.content_type == "text/event-stream"
                events = await sse_until(resp)
            assert any(is_progress(e) for e in events)
            async with client.get(f"{url}?ticket={ticket}") as again:
                assert again.status == 401
                assert again.headers["WWW-Authenticate"].startswith("Bearer")
                body = await checker(client).check(again, EVENTS, "GET")
        assert "already used" in body["detail"] and TICKETS in body["detail"]
        assert body["errors"][0]["field"] == "ticket"
        assert ticket not in str(body)
        assert ticket not in str(logs), "a ticket is never logged"
        assert any(e.get("reason") == "ticket_unknown" for e in logs)
        assert await pool.fetchval("SELECT count(*) FROM stream_tickets") == 0


async def test_two_requests_with_one_ticket_open_one_stream(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "browser", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool) as client:
        ticket = await new_ticket(client, token)

        async def use() -> int:
            async with client.get(f"{url}?ticket={ticket}&follow=false") as resp:
                await resp.read()
                return resp.status

        assert sorted(await asyncio.gather(use(), use(), use())) == [200, 401, 401]


async def test_an_expired_ticket_is_refused(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "browser", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool) as client:
        ticket = await new_ticket(client, token)
        await pool.execute("UPDATE stream_tickets SET created_at = now() - interval '1 min', "
                           "expires_at = now() - interval '30 s'")
        async with client.get(f"{url}?ticket={ticket}") as resp:
            assert resp.status == 401
            body = await checker(client).check(resp, EVENTS, "GET")
        assert "expired" in body["detail"] and TICKETS in body["detail"]
        # a new one works; making it pruned the expired rows
        fresh = await new_ticket(client, token)
        assert await pool.fetchval("SELECT count(*) FROM stream_tickets") == 1
        async with client.get(f"{url}?ticket={fresh}&follow=false") as resp:
            assert resp.status == 200
            await resp.read()


async def test_a_revoked_or_expired_tokens_ticket_is_refused(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "gone", "operator")
    _, other = await token_store.create_token(pool, "lapsed", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool) as client:
        ticket = await new_ticket(client, token)
        lapsed = await new_ticket(client, other)
        await token_store.revoke_token(pool, "gone")
        await pool.execute("UPDATE api_tokens SET expires_at = now() WHERE name = 'lapsed'")
        async with client.get(f"{url}?ticket={ticket}") as resp:
            assert resp.status == 401
            body = await resp.json()
        assert "'gone'" in body["detail"] and "revoked" in body["detail"]
        async with client.get(f"{url}?ticket={lapsed}") as resp:
            assert resp.status == 401
            body = await resp.json()
        assert "'lapsed'" in body["detail"] and "expired" in body["detail"]
        # deleting a token deletes its tickets
        _, short = await token_store.create_token(pool, "short-lived", "viewer")
        await new_ticket(client, short)
        await pool.execute("DELETE FROM stream_tickets WHERE token_id <> "
                           "(SELECT id FROM api_tokens WHERE name = 'short-lived')")
        assert await pool.fetchval("SELECT count(*) FROM stream_tickets") == 1
        await pool.execute("DELETE FROM api_tokens WHERE name = 'short-lived'")
        assert await pool.fetchval("SELECT count(*) FROM stream_tickets") == 0


async def test_a_ticket_stream_ends_when_its_token_is_revoked(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "watcher", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool, api_sse_token_recheck_seconds=0.1,
                     api_token_cache_seconds=0) as client:
        ticket = await new_ticket(client, token)
        async with client.get(f"{url}?ticket={ticket}") as stream:
            assert stream.status == 200
            await sse_until(stream, is_progress)
            await token_store.revoke_token(pool, "watcher")
            rest = await sse_until(stream)  # to the end of the stream
            assert rest[-1]["event"] == "unauthorized"
            assert stream.content.at_eof()


async def test_without_token_or_ticket_and_with_bad_tickets(pool: asyncpg.Pool) -> None:
    rid = await draft_rollout(pool)
    _, token = await token_store.create_token(pool, "browser", "viewer")
    url = f"/api/v1/rollouts/{rid}/events"
    async with serve(pool, api_auth_failures_per_minute=4) as client:
        async with client.get(url) as resp:
            assert resp.status == 401
            body = await checker(client).check(resp, EVENTS, "GET")
        assert "Authorization" in body["detail"] and "ticket" in body["detail"]
        # a ticket authenticates the event stream only: elsewhere it is no credential
        ticket = await new_ticket(client, token)
        async with client.get(f"/api/v1/rollouts?ticket={ticket}") as resp:
            assert resp.status == 401
        async with client.post(TICKETS, data='{"rollout_id": 1}',
                               headers={**auth(token),
                                        "Content-Type": "application/json"}) as resp:
            assert resp.status == 422  # no body
        # bad tickets count as failed authentications, like bad tokens
        with capture_logs() as logs:
            for bad in ("x" * 43, "short", "a" * 43 + "&ticket=" + "b" * 43, "a" * 300):
                async with client.get(f"{url}?ticket={bad}") as resp:
                    assert resp.status == 401, bad
                    assert bad not in await resp.text()
            async with client.get(f"{url}?ticket={ticket}") as resp:
                assert resp.status == 429  # even a good ticket, until the minute is over
                assert int(resp.headers["Retry-After"]) > 0
        assert "x" * 43 not in str(logs)


# ------------------------------------------------------------------ the lists
async def _fleet_with_history(pool: asyncpg.Pool) -> tuple[int, int]:
    """vr-0 (9.0.0), vr-1 (9.0.1), vr-2 (no version); rollout `old` over all three,
    cancelled; rollout `new` over vr-0 (FAILED E_DISK) and vr-1 (PENDING); vr-3 added
    after both, never targeted. Returns (old id, new id)."""
    await pool.executemany(
        "INSERT INTO appliances (name, base_url, site, current_version) "
        "VALUES ($1, $2, 'ams', $3)",
        [("vr-0", "https://vr-0.example.net/api", "9.0.0"),
         ("vr-1", "https://vr-1.example.net/api", "9.0.1"),
         ("vr-2", "https://vr-2.example.net/api", None)])
    old, _ = await rollout_store.create_rollout(pool, name="old",
                                                target_version="9.0.1-20020", actor=ACTOR)
    await rollout_store.cancel_rollout(pool, old.id, ACTOR)
    new, _ = await rollout_store.create_rollout(
        pool, name="new", target_version="9.0.2-20030", selector={"names": ["vr-0", "vr-1"]},
        actor=ACTOR)
    await pool.execute(
        """UPDATE tasks SET state = 'FAILED', error_code = 'E_DISK', finished_at = now()
           WHERE rollout_id = $1
             AND appliance_id = (SELECT id FROM appliances WHERE name = 'vr-0')""", new.id)
    await pool.execute("INSERT INTO appliances (name, base_url, site, current_version) "
                       "VALUES ('vr-3', 'https://vr-3.example.net/api', 'nyc', '9.0.0')")
    return old.id, new.id


async def test_rollout_list_has_counts_and_forecast(pool: asyncpg.Pool) -> None:
    old, new = await _fleet_with_history(pool)
    _, token = await token_store.create_token(pool, "v", "viewer")
    path = "/api/v1/rollouts"
    async with serve(pool) as client:
        check = checker(client)
        async with client.get(path, headers=auth(token)) as resp:
            body = await check.check(resp, path, "GET")
        items = {r["id"]: r for r in body["items"]}
        assert items[old]["counts"] == {"CANCELLED": 3}
        assert items[new]["counts"] == {"FAILED": 1, "PENDING": 1}
        assert "forecast" not in items[old] and "forecast" not in items[new]
        async with client.get(f"{path}?forecast=true", headers=auth(token)) as resp:
            body = await check.check(resp, path, "GET")
        items = {r["id"]: r for r in body["items"]}
        assert items[old]["forecast"] is None  # terminal
        assert items[new]["forecast"]["basis"]
        # the same counts and forecast as the rollout's own page
        async with client.get(f"{path}/{new}?forecast=true", headers=auth(token)) as resp:
            detail = await resp.json()
        assert detail["counts"]["by_state"] == items[new]["counts"]
        assert detail["forecast"].keys() == items[new]["forecast"].keys()
        # paging keeps them per item
        async with client.get(f"{path}?limit=1", headers=auth(token)) as resp:
            first = await check.check(resp, path, "GET")
        assert [r["id"] for r in first["items"]] == [new]
        assert first["items"][0]["counts"] == {"FAILED": 1, "PENDING": 1}


async def test_appliances_by_version_with_their_last_task(pool: asyncpg.Pool) -> None:
    old, new = await _fleet_with_history(pool)
    _, token = await token_store.create_token(pool, "v", "viewer")
    path = "/api/v1/appliances"
    async with serve(pool) as client:
        check = checker(client)
        async with client.get(path, headers=auth(token)) as resp:
            body = await check.check(resp, path, "GET")
        last = {a["name"]: a["last_task"] for a in body["items"]}
        assert last["vr-0"] is not None and last["vr-0"]["finished_at"] is not None
        assert {k: v for k, v in last["vr-0"].items() if k not in ("task_id", "finished_at")} \
            == {"rollout_id": new, "state": "FAILED", "error_code": "E_DISK",
                "target_version": "9.0.2-20030"}
        assert last["vr-1"] is not None
        assert (last["vr-1"]["rollout_id"], last["vr-1"]["state"],
                last["vr-1"]["finished_at"]) == (new, "PENDING", None)
        assert last["vr-2"] is not None
        assert (last["vr-2"]["rollout_id"], last["vr-2"]["state"],
                last["vr-2"]["target_version"]) == (old, "CANCELLED", "9.0.1-20020")
        assert last["vr-3"] is None
        task_ids = {t["appliance"]: t["id"] for t in (await (await client.get(
            f"/api/v1/rollouts/{new}/tasks", headers=auth(token))).json())["items"]}
        assert last["vr-0"]["task_id"] == task_ids["vr-0"]

        async def names(query: str) -> list[str]:
            async with client.get(f"{path}?{query}", headers=auth(token)) as resp:
                assert resp.status == 200, await resp.text()
                found = await check.check(resp, path, "GET")
            return [a["name"] for a in found["items"]]

        assert await names("version=9.0.0") == ["vr-0", "vr-3"]
        assert await names("version=9.0.0&site=nyc") == ["vr-3"]
        assert await names("version=9.0.1") == ["vr-1"]
        assert await names("version=9.0") == []  # exact, not a prefix
        async with client.get(f"{path}/vr-0", headers=auth(token)) as resp:
            one = await check.check(resp, f"{path}/{{name}}", "GET")
        assert one["last_task"] == last["vr-0"]
        async with client.get(f"{path}/vr-3", headers=auth(token)) as resp:
            assert (await resp.json())["last_task"] is None
