"""The REST API against a real database: each resource as a dashboard or a script uses it,
every response checked against the OpenAPI document the app serves."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from orchestrator.store import appliances as appliance_store
from orchestrator.store import engines as engine_store
from orchestrator.store import tokens as token_store
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.audit import Actor, list_audit
from tests.integration.test_api_support import (
    DocumentChecker,
    api_client,
    auth,
    tokens_by_role,
)

CSV = """name,base_url,site,tags,timezone
vr-ams-01,https://vr-ams-01.example.net/api/rest/configure/v1,ams,prod;canary,Europe/Amsterdam
vr-ams-02,https://vr-ams-02.example.net/api/rest/configure/v1,ams,prod,
vr-nyc-01,https://vr-nyc-01.example.net/api/rest/configure/v1,nyc,prod,America/New_York
vr-nyc-02,https://vr-nyc-02.example.net/api/rest/configure/v1,nyc,lab,
"""


class Api:
    """A client that checks every response against the document."""

    def __init__(self, client: TestClient[Any, Any], doc: DocumentChecker,
                 token: str) -> None:
        self.client = client
        self.doc = doc
        self.token = token

    async def call(self, method: str, url: str, template: str | None = None,
                   token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = {**auth(token or self.token), **kwargs.pop("headers", {})}
        async with self.client.request(method, url, headers=headers, **kwargs) as resp:
            body = await self.doc.check(resp, template or url.split("?")[0], method)
            return resp.status, body


async def _api(client: TestClient[Any, Any], token: str) -> Api:
    async with client.get("/api/v1/openapi.json") as resp:
        assert resp.status == 200
        document = await resp.json()
    return Api(client, DocumentChecker(document), token)


async def test_appliances_crud_import_and_audit(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        status, body = await api.call("POST", "/api/v1/appliances:import", data=CSV,
                                      headers={"Content-Type": "text/csv"})
        assert (status, body) == (200, {"imported": 4, "inserted": 4, "updated": 0})

        status, page = await api.call("GET", "/api/v1/appliances?site=ams",
                                      token=tokens["viewer"])
        assert status == 200 and [a["name"] for a in page["items"]] == ["vr-ams-01",
                                                                        "vr-ams-02"]
        assert page["items"][0]["tags"] == ["prod", "canary"]
        # cursor pagination walks everything once
        seen: list[str] = []
        url = "/api/v1/appliances?limit=3"
        while url:
            status, page = await api.call("GET", url, "/api/v1/appliances")
            seen += [a["name"] for a in page["items"]]
            url = (f"/api/v1/appliances?limit=3&cursor={page['next_cursor']}"
                   if page["next_cursor"] else "")
        assert seen == ["vr-ams-01", "vr-ams-02", "vr-nyc-01", "vr-nyc-02"]
        status, page = await api.call("GET", "/api/v1/appliances?tag=lab")
        assert [a["name"] for a in page["items"]] == ["vr-nyc-02"]

        new = {"name": "srm-fra-01", "base_url": "https://srm-fra-01.example.net/api",
               "site": "fra", "tags": ["prod"], "credentials_ref": "env:APPLIANCE_SRM_CREDENTIALS"}
        status, created = await api.call("POST", "/api/v1/appliances", json=new)
        assert status == 201 and created["name"] == "srm-fra-01" and created["enabled"]
        status, problem = await api.call("POST", "/api/v1/appliances", json=new)
        assert status == 409 and "srm-fra-01" in problem["detail"]

        status, patched = await api.call(
            "PATCH", "/api/v1/appliances/srm-fra-01", "/api/v1/appliances/{name}",
            json={"site": "fra2", "credentials_ref": None, "enabled": False})
        assert status == 200
        assert (patched["site"], patched["credentials_ref"], patched["enabled"]) == \
            ("fra2", None, False)
        assert patched["base_url"] == new["base_url"], "fields left out stay"
        status, got = await api.call("GET", "/api/v1/appliances/srm-fra-01",
                                     "/api/v1/appliances/{name}", token=tokens["viewer"])
        assert got == patched

        status, problem = await api.call(
            "PATCH", "/api/v1/appliances/srm-fra-01", "/api/v1/appliances/{name}",
            json={"timezone": "Mars/Olympus"})
        assert status == 422 and "Mars/Olympus" in problem["detail"]
        assert problem["errors"][0]["field"] == "body.timezone"

        status, _ = await api.call("DELETE", "/api/v1/appliances/srm-fra-01",
                                   "/api/v1/appliances/{name}")
        assert status == 204
        status, problem = await api.call("GET", "/api/v1/appliances/srm-fra-01",
                                         "/api/v1/appliances/{name}")
        assert status == 404 and "srm-fra-01" in problem["detail"]

    actions = [(e.actor, e.via, e.action, e.target_id) for e in await list_audit(pool)]
    assert actions[::-1] == [
        ("admin-token", "api", "appliance.import", None),
        ("admin-token", "api", "appliance.create", "srm-fra-01"),
        ("admin-token", "api", "appliance.update", "srm-fra-01"),
        ("admin-token", "api", "appliance.delete", "srm-fra-01"),
    ]


async def test_import_is_all_or_nothing_and_lists_every_bad_row(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    bad = CSV + ("bad-1,ftp://x.example.net,ams,,\n"
                 "vr-ams-01,https://dup.example.net,ams,,\n"
                 "bad-3,https://ok.example.net,,,Not/AZone\n")
    records = [
        {"name": "j-1", "base_url": "https://j-1.example.net", "site": "ams"},
        {"name": "j-2", "base_url": "https://j-2.example.net", "site": "ams",
         "tls_thumbprint": "zz"},
    ]
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        status, problem = await api.call("POST", "/api/v1/appliances:import", data=bad,
                                         headers={"Content-Type": "text/csv"})
        assert status == 422
        lines = [(e["line"], e["field"]) for e in problem["errors"]]
        assert lines == [(6, "base_url"), (7, "name"), (8, "site"), (8, "timezone")]
        assert "nothing imported" in problem["detail"]
        status, problem = await api.call("POST", "/api/v1/appliances:import",
                                         data=json.dumps(records, indent=1),
                                         headers={"Content-Type": "application/json"})
        assert status == 422 and problem["errors"][0]["field"] == "tls_thumbprint"
        assert problem["errors"][0]["line"] == 7
        status, problem = await api.call("POST", "/api/v1/appliances:import", data="a,b",
                                         headers={"Content-Type": "text/plain"})
        assert status == 415
        status, problem = await api.call("POST", "/api/v1/appliances:import",
                                         data="name,base_url,site\nx\x00,http://a,b\n",
                                         headers={"Content-Type": "text/csv"})
        assert status == 422 and problem["errors"][0]["line"] == 2
    assert await appliance_store.count_appliances(pool) == 0


async def test_validation_problems_name_the_field_and_value(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        cases: list[tuple[str, str, str, dict[str, Any], int, str]] = [
            ("GET", "/api/v1/appliances?limit=0", "/api/v1/appliances", {}, 400,
             "query parameter limit"),
            ("GET", "/api/v1/appliances?limit=abc", "/api/v1/appliances", {}, 400, '"abc"'),
            ("GET", "/api/v1/appliances?colour=red", "/api/v1/appliances", {}, 400,
             "query parameter colour"),
            ("GET", "/api/v1/appliances?cursor=nope", "/api/v1/appliances", {}, 400,
             "cursor"),
            ("GET", "/api/v1/rollouts/9999999999999999999", "/api/v1/rollouts/{id}", {}, 400,
             "path parameter id"),
            ("GET", "/api/v1/rollouts?state=DONE", "/api/v1/rollouts", {}, 400, "DONE"),
            ("POST", "/api/v1/appliances", "/api/v1/appliances",
             {"data": "{", "headers": {"Content-Type": "application/json"}}, 400,
             "not valid JSON"),
            ("POST", "/api/v1/appliances", "/api/v1/appliances",
             {"data": "{}", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
            ("POST", "/api/v1/appliances", "/api/v1/appliances",
             {"json": {"name": "a", "base_url": "https://a", "site": "s", "colour": 1}}, 422,
             "body.colour: unknown field"),
            ("POST", "/api/v1/appliances", "/api/v1/appliances",
             {"json": {"name": "a", "base_url": "https://a", "site": 5}}, 422,
             "body.site"),
            ("POST", "/api/v1/appliances", "/api/v1/appliances",
             {"json": {"name": "a", "base_url": "https://a", "site": "s\u0000"}}, 422,
             "NUL"),
            ("POST", "/api/v1/rollouts", "/api/v1/rollouts",
             {"json": {"name": "r", "target_version": "9.0.1",
                       "strategy": {"max_concurrency": 0}}}, 422,
             "body.strategy.max_concurrency"),
            ("POST", "/api/v1/rollouts/plan", "/api/v1/rollouts/plan",
             {"json": {"target_version": "9.0.1", "strategy": {"task_timeout": 60}}}, 422,
             "body.strategy.task_timeout: 60 is shorter than the default reboot_grace"),
            ("POST", "/api/v1/rollouts/plan", "/api/v1/rollouts/plan",
             {"json": {"target_version": "9.0.1", "selector": {"sites": ["nowhere"]}}}, 409,
             "matches no enabled appliance"),  # well-formed: the inventory refuses it
            ("POST", "/api/v1/rollouts", "/api/v1/rollouts",
             {"data": "x" * (1024 * 1024 + 1),
              "headers": {"Content-Type": "application/json"}}, 413, "at most"),
            ("POST", "/api/v1/rollouts", "/api/v1/rollouts",
             {"data": '{"name": NaN}', "headers": {"Content-Type": "application/json"}}, 400,
             "NaN"),
            ("POST", "/api/v1/rollouts/1/start", "/api/v1/rollouts/{id}/start", {}, 404,
             "no rollout 1"),
        ]
        for method, url, template, kwargs, status, needle in cases:
            got, problem = await api.call(method, url, template, **kwargs)
            assert got == status, (url, kwargs, problem)
            assert needle in problem["detail"], (url, problem)
            assert problem["type"].startswith("/api/reference#problem-")
        # not routed at all: problem+json too, 405 keeps Allow
        async with client.get("/api/v1/nothing", headers=auth(tokens["admin"])) as resp:
            assert resp.status == 404
            assert resp.headers["Content-Type"].startswith("application/problem+json")
        async with client.put("/api/v1/appliances", headers=auth(tokens["admin"])) as resp:
            assert resp.status == 405 and "GET" in resp.headers["Allow"]
            assert (await resp.json(content_type=None))["status"] == 405


async def test_rollout_lifecycle_idempotency_and_conflicts(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        await api.call("POST", "/api/v1/appliances:import", data=CSV,
                       headers={"Content-Type": "text/csv"})
        op = tokens["operator"]
        body = {"name": "9.0.1 to prod", "target_version": "9.0.1-20020",
                "selector": {"tags": ["prod"]},
                "strategy": {"waves": [1, "100%"], "approval": "after-canary"}}
        status, plan = await api.call("POST", "/api/v1/rollouts/plan", token=op,
                                      json={k: body[k] for k in ("target_version",
                                                                 "selector", "strategy")})
        assert status == 200 and [w["size"] for w in plan["waves"]] == [1, 2]
        assert plan["waves"][0]["requires_approval"]

        key = {"Idempotency-Key": "3b0c9f5e-create-1"}
        status, first = await api.call("POST", "/api/v1/rollouts", token=op, json=body,
                                       headers=key)
        assert status == 201 and first["state"] == "DRAFT" and first["targeted"] == 3
        assert first["counts"]["by_state"] == {"PENDING": 3}
        status, again = await api.call("POST", "/api/v1/rollouts", token=op, json=body,
                                       headers=key)
        assert status == 200 and again["id"] == first["id"]
        status, problem = await api.call("POST", "/api/v1/rollouts", token=op,
                                         json={**body, "name": "other"}, headers=key)
        assert status == 409 and "Idempotency-Key" in problem["detail"]
        rid = first["id"]
        base = f"/api/v1/rollouts/{rid}"

        status, problem = await api.call("POST", f"{base}/resume",
                                         "/api/v1/rollouts/{id}/resume", token=op)
        assert status == 409 and problem["current_state"] == "DRAFT"
        assert problem["allowed_states"] == ["PAUSED"]
        assert "resume is allowed in PAUSED" in problem["detail"]
        for action, state in (("start", "RUNNING"), ("pause", "PAUSED"),
                              ("resume", "RUNNING")):
            status, result = await api.call("POST", f"{base}/{action}",
                                            f"/api/v1/rollouts/{{id}}/{action}", token=op)
            assert status == 200 and result["rollout"]["state"] == state, result
        status, problem = await api.call("POST", f"{base}/retry-failed",
                                         "/api/v1/rollouts/{id}/retry-failed", token=op)
        assert status == 409 and problem["current_state"] == "RUNNING"
        status, result = await api.call("POST", f"{base}/approve",
                                        "/api/v1/rollouts/{id}/approve", token=op)
        assert status == 200 and "wave 0 approved" in result["message"]
        status, result = await api.call("POST", f"{base}/cancel",
                                        "/api/v1/rollouts/{id}/cancel", token=op, json={})
        assert status == 200 and result["rollout"]["state"] == "CANCELLED"

        status, detail = await api.call("GET", f"{base}?forecast=true", "/api/v1/rollouts/{id}",
                                        token=tokens["viewer"])
        assert status == 200 and detail["counts"]["by_state"] == {"CANCELLED": 3}
        assert set(detail["counts"]["by_site"]) == {"ams", "nyc"}
        assert detail["forecast"]["basis"]
        status, tasks = await api.call("GET", f"{base}/tasks?site=nyc&state=CANCELLED",
                                       "/api/v1/rollouts/{id}/tasks", token=tokens["viewer"])
        assert [t["appliance"] for t in tasks["items"]] == ["vr-nyc-01"]
        status, tasks = await api.call("GET", f"{base}/tasks?wave=1&limit=1",
                                       "/api/v1/rollouts/{id}/tasks")
        assert len(tasks["items"]) == 1 and tasks["next_cursor"]
        status, rollouts = await api.call("GET", "/api/v1/rollouts?state=CANCELLED")
        assert [r["id"] for r in rollouts["items"]] == [rid]
        status, report = await api.call("GET", f"{base}/report",
                                        "/api/v1/rollouts/{id}/report")
        assert status == 200 and report["rollout"]["id"] == rid

        # the appliances of a rollout cannot be deleted: their history stays
        status, problem = await api.call("DELETE", "/api/v1/appliances/vr-nyc-01",
                                         "/api/v1/appliances/{name}")
        assert status == 409 and f"rollout(s) {rid}" in problem["detail"]

        status, audit = await api.call("GET", "/api/v1/audit?limit=50", "/api/v1/audit")
        mine = [(e["actor"], e["action"]) for e in audit["items"] if e["via"] == "api"
                and e["target_type"] == "rollout"]
        assert mine[::-1] == [("operator-token", f"rollout.{a}") for a in
                              ("create", "start", "pause", "resume", "approve", "cancel")]


async def test_tokens_via_api_and_auth_failures(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        status, created = await api.call("POST", "/api/v1/tokens",
                                         json={"name": "grafana", "role": "viewer"})
        assert status == 201 and created["token"].startswith("orch_")
        secret = created["token"]
        stored = await pool.fetchval("SELECT token_hash FROM api_tokens WHERE name = 'grafana'")
        assert secret not in stored and len(stored) == 64
        status, listed = await api.call("GET", "/api/v1/tokens")
        assert {t["name"] for t in listed["items"]} >= {"grafana", "admin-token"}
        assert all("token" not in t for t in listed["items"])
        status, _ = await api.call("GET", "/api/v1/rollouts", token=secret)
        assert status == 200
        status, problem = await api.call("POST", "/api/v1/tokens",
                                         json={"name": "grafana", "role": "admin"})
        assert status == 409
        status, revoked = await api.call("DELETE", "/api/v1/tokens/grafana",
                                         "/api/v1/tokens/{name}")
        assert status == 200 and revoked["revoked_at"]
        async with client.get("/api/v1/rollouts", headers=auth(secret)) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            assert "revoked" in (await resp.json(content_type=None))["detail"]
        async with client.get("/api/v1/rollouts", headers={"Authorization": "Basic x"}) as r:
            assert r.status == 401
        status, problem = await api.call("POST", "/api/v1/tokens", token=tokens["operator"],
                                         json={"name": "x", "role": "admin"})
        assert status == 403 and problem["required_role"] == "admin"
    assert (await token_store.get_token(pool, "grafana")) is not None


async def test_health_ready_metrics_and_docs(pool: asyncpg.Pool) -> None:
    async with api_client(pool) as client:
        async with client.get("/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"
        async with client.get("/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["database"] == "ok"
        async with client.get("/metrics") as resp:
            text = await resp.text()
            assert resp.status == 200
        for name in ("orchestrator_tasks", "orchestrator_installs_in_flight",
                     "orchestrator_held_slots",
                     "orchestrator_engines_live", "orchestrator_webhook_deliveries",
                     "orchestrator_install_duration_seconds",
                     "orchestrator_reboot_duration_seconds",
                     "orchestrator_claim_latency_seconds",
                     "orchestrator_event_loop_lag_seconds", "orchestrator_api_requests_total"):
            assert f"# TYPE {name}" in text or f"\n{name}" in text, name
        async with client.get("/api/reference") as resp:
            page = await resp.text()
            assert resp.status == 200 and resp.content_type == "text/html"
        # offline: nothing is loaded from anywhere, links stay on this server
        assert "<script" not in page and "<link" not in page and " src=" not in page
        assert all(h.startswith(("#", "/")) for h in re.findall(r'href="([^"]*)"', page))
        assert 'id="op-createRollout"' in page and 'id="problem-validation-error"' in page
        await pool.execute("DELETE FROM schema_migrations")
        async with client.get("/readyz") as resp:
            assert resp.status == 503
            assert "orchestrator migrate" in (await resp.json(content_type=None))["detail"]


async def test_metrics_count_live_engines_and_unsettled_deliveries(pool: asyncpg.Pool) -> None:
    """What the dashboard's "Engines live" and "Webhook deliveries" panels show."""
    async def scrape() -> str:
        async with api_client(pool) as client, client.get("/metrics") as resp:
            assert resp.status == 200
            return await resp.text()

    before = await scrape()
    assert "orchestrator_engines_live 0.0" in before
    assert 'orchestrator_webhook_deliveries{state="pending"} 0.0' in before
    await engine_store.register(pool, "metrics-test-engine")
    await webhook_store.add_webhook(pool, name="ops", url="https://hooks.example.com/x",
                                    actor=Actor("t"))
    await webhook_store.ping(pool, "ops", Actor("t"))
    await webhook_store.ping(pool, "ops", Actor("t"))
    await pool.execute("UPDATE webhook_deliveries SET state = 'failed' "
                       "WHERE id = (SELECT min(id) FROM webhook_deliveries)")
    after = await scrape()
    assert "orchestrator_engines_live 1.0" in after
    assert 'orchestrator_webhook_deliveries{state="pending"} 1.0' in after
    assert 'orchestrator_webhook_deliveries{state="failed"} 1.0' in after
