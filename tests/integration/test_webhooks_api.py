"""`/api/v1/webhooks`: admin only (reads too), every answer checked against the document,
bad values answered naming the field, the secret (and a URL's query string) never in any
answer, every change audited; a ping queues one pending delivery, the listing filters,
and a redelivery is refused while pending and accepted once failed. A schemathesis pass
on the webhooks operations with an admin token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from orchestrator.api.routing import STATE
from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.audit import Actor, list_audit
from tests.integration.test_api import _api
from tests.integration.test_api_schemathesis import cases, no_failure_limit, schemathesis, served
from tests.integration.test_api_support import api_client, tokens_by_role

BASE = "/api/v1/webhooks"
ITEM = BASE + "/{name}"
TEST = ITEM + "/test"
DELIVERIES = BASE + "/deliveries"
REDELIVER = DELIVERIES + "/{id}/redeliver"
SECRET = "s3cr3t-" + "w" * 24  # in the environment variable the reference names
URL_TOKEN = "tok-" + "q" * 24  # in the URL's query string


async def _rollout(pool: asyncpg.Pool) -> rollout_store.Rollout:
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(name="vr-ams-1", base_url="https://vr-ams-1/api", site="ams")])
    rollout, _ = await rollout_store.create_rollout(pool, name="r", target_version="9.0.1",
                                                    actor=Actor("setup"))
    return rollout


async def test_crud_roles_validation_deliveries_and_audit(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APPLIANCE_HOOK_SECRET", SECRET)  # never read here, never shown
    tokens = await tokens_by_role(pool)
    rollout = await _rollout(pool)
    answers: list[Any] = []
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])

        async def call(method: str, url: str, template: str | None = None,
                       **kwargs: Any) -> tuple[int, Any]:
            status, body = await api.call(method, url, template, **kwargs)
            answers.append(body)
            return status, body

        # ---------------------------------------------------------------- create
        status, ops = await call("POST", BASE, json={
            "name": "ops", "url": f"https://hooks.example.net/in/ops?token={URL_TOKEN}",
            "events": ["approval.required", "rollout.finished"], "site": "ams",
            "secret_ref": "env:APPLIANCE_HOOK_SECRET", "format": "slack"})
        assert status == 201, ops
        assert ops == {**ops, "name": "ops", "url": "https://hooks.example.net/in/ops?...",
                       "events": ["approval.required", "rollout.finished"],
                       "rollout_id": None, "site": "ams",
                       "secret_ref": "env:APPLIANCE_HOOK_SECRET", "signed": True,
                       "format": "slack", "created_by": "admin-token",
                       "deliveries": {"pending": 0, "delivered": 0, "failed": 0}}
        async with client.post(BASE, json={"name": "all", "url": "http://127.0.0.1:9/h"},
                               headers={"Authorization": f"Bearer {tokens['admin']}"}) as resp:
            assert resp.status == 201
            assert resp.headers["Location"] == f"{BASE}/all"
            every = await resp.json()
        assert (every["events"], every["signed"], every["format"]) == (None, False, "json")
        status, one = await call("POST", BASE, json={
            "name": "one-rollout", "url": "https://hooks.example.net/r",
            "rollout_id": rollout.id, "events": None, "site": None, "secret_ref": None})
        assert status == 201 and one["rollout_id"] == rollout.id, one

        status, listed = await call("GET", BASE)
        assert status == 200
        assert [h["name"] for h in listed["items"]] == ["all", "one-rollout", "ops"]
        status, got = await call("GET", f"{BASE}/ops", ITEM)
        assert status == 200 and got == ops

        # ---------------------------------------------------------------- roles
        ping_id = 1  # any id: the role is checked first
        for role in ("viewer", "operator"):
            for method, url, template, kwargs in (
                ("GET", BASE, None, {}),
                ("POST", BASE, None, {"json": {"name": "x", "url": "https://x.example"}}),
                ("GET", f"{BASE}/ops", ITEM, {}),
                ("DELETE", f"{BASE}/ops", ITEM, {}),
                ("POST", f"{BASE}/ops/test", TEST, {}),
                ("GET", DELIVERIES, None, {}),
                ("POST", f"{DELIVERIES}/{ping_id}/redeliver", REDELIVER, {}),
            ):
                status, problem = await call(method, url, template, token=tokens[role],
                                             **kwargs)
                assert status == 403, (role, method, url, problem)
                assert problem["required_role"] == "admin", problem

        # ---------------------------------------------------------------- bad values
        good = {"name": "new", "url": "https://hooks.example.net/new"}
        cases: list[tuple[dict[str, Any], int, str, str]] = [
            ({**good, "name": "ops"}, 409, "body.name", "'ops' exists already"),
            ({**good, "name": "bad name"}, 422, "body.name", '"bad name"'),
            ({**good, "name": "deliveries"}, 422, "body.name", "reserved"),
            ({**good, "url": "ftp://hooks.example.net/x"}, 422, "body.url", "ftp://"),
            ({**good, "url": "https://user:pw@hooks.example.net/x"}, 422, "body.url",
             "user:password"),
            ({**good, "url": "http:///no-host"}, 422, "body.url", "has no host"),
            ({**good, "url": "https://h.example/" + "x" * 2048}, 422, "body.url", "2048"),
            ({**good, "events": ["rollout.started", "nope"]}, 422, "body.events[1]", "nope"),
            ({**good, "events": []}, 422, "body.events", "at least 1"),
            ({**good, "events": ["ping", "ping"]}, 422, "body.events", "ping more than once"),
            ({**good, "format": "xml"}, 422, "body.format", '"xml"'),
            ({**good, "format": None}, 422, "body.format", "not null"),
            ({**good, "secret_ref": "env:HOME"}, 422, "body.secret_ref", "APPLIANCE_"),
            ({**good, "secret_ref": "file:/tmp/hook"}, 422, "body.secret_ref",
             "outside /etc/orchestrator/secrets"),
            ({**good, "secret_ref": "hunter2"}, 422, "body.secret_ref", "env:VARIABLE"),
            # a valid body that the state of things refuses: no such rollout (any more)
            ({**good, "rollout_id": 999_999}, 409, "body.rollout_id", "999999 does not exist"),
            ({**good, "rollout_id": 0}, 422, "body.rollout_id", "0"),
            ({**good, "site": ""}, 422, "body.site", '""'),
            ({**good, "secret": "x"}, 422, "body.secret", "unknown field"),
            ({"name": "new"}, 422, "body.url", "required"),
        ]
        for body, want, field, shown in cases:
            status, problem = await call("POST", BASE, json=body)
            assert status == want, (body, problem)
            assert problem["errors"][0]["field"] == field, (body, problem)
            assert shown in problem["detail"], (body, problem)
        status, problem = await call("GET", f"{BASE}/nope", ITEM)
        assert status == 404 and "no webhook 'nope'" in problem["detail"], problem
        status, problem = await call("GET", f"{BASE}/bad%20name", ITEM)
        assert status == 400 and "path parameter name" in problem["detail"], problem
        async with client.delete(DELIVERIES, headers={
                "Authorization": f"Bearer {tokens['admin']}"}) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "GET"

        # ---------------------------------------------------------------- ping, deliveries
        status, ping = await call("POST", f"{BASE}/ops/test", TEST)
        assert status == 202, ping
        assert (ping["webhook"], ping["event_type"], ping["state"], ping["attempts"],
                ping["rollout_id"]) == ("ops", "ping", "pending", 0, None)
        assert ping["next_attempt_at"] is not None
        # a ping goes to its webhook only, whatever its event filter
        async with pool.acquire() as conn, conn.transaction():
            await webhook_store.emit(conn, "rollout.started", rollout.id, {}, sites=["ams"])
        status, page = await call("GET", DELIVERIES)
        assert status == 200
        assert [(d["webhook"], d["event_type"]) for d in page["items"]] == [
            ("one-rollout", "rollout.started"), ("all", "rollout.started"), ("ops", "ping")]
        for query, ids in (
            ("?webhook=ops", [ping["id"]]),
            ("?state=pending&webhook=ops", [ping["id"]]),
            ("?state=failed", []),
            (f"?rollout_id={rollout.id}&webhook=all", [page["items"][1]["id"]]),
            ("?limit=1", [page["items"][0]["id"]]),
        ):
            status, found = await call("GET", DELIVERIES + query, DELIVERIES)
            assert status == 200 and [d["id"] for d in found["items"]] == ids, query
        status, got = await call("GET", f"{BASE}/ops", ITEM)
        assert got["deliveries"] == {"pending": 1, "delivered": 0, "failed": 0}
        for query, code, field in (
            ("?webhook=nope", 404, "query parameter webhook"),
            ("?state=lost", 400, "query parameter state"),
            ("?limit=0", 400, "query parameter limit"),
            ("?limit=1001", 400, "query parameter limit"),
            ("?rollout_id=x", 400, "query parameter rollout_id"),
            ("?hook=ops", 400, "query parameter hook"),
        ):
            status, problem = await call("GET", DELIVERIES + query, DELIVERIES)
            assert status == code, (query, problem)
            assert problem["errors"][0]["field"] == field, (query, problem)

        # ---------------------------------------------------------------- redeliver
        again = f"{DELIVERIES}/{ping['id']}/redeliver"
        status, problem = await call("POST", again, REDELIVER)
        assert status == 409 and "pending already" in problem["detail"], problem
        await pool.execute("""UPDATE webhook_deliveries SET state = 'failed', attempts = 8,
                                     failed_at = now(), last_status = 503
                              WHERE id = $1""", ping["id"])
        status, failed = await call("GET", DELIVERIES + "?state=failed", DELIVERIES)
        assert [(d["id"], d["next_attempt_at"]) for d in failed["items"]] == [
            (ping["id"], None)]
        status, redone = await call("POST", again, REDELIVER)
        assert status == 200, redone
        assert (redone["id"], redone["event_id"], redone["state"], redone["attempts"],
                redone["failed_at"]) == (ping["id"], ping["event_id"], "pending", 0, None)
        status, problem = await call("POST", f"{DELIVERIES}/999999/redeliver", REDELIVER)
        assert status == 404 and problem["errors"][0]["field"] == "id", problem

        # ---------------------------------------------------------------- remove
        async with client.delete(f"{BASE}/ops", headers={
                "Authorization": f"Bearer {tokens['admin']}"}) as resp:
            assert resp.status == 204
        status, problem = await call("DELETE", f"{BASE}/ops", ITEM)
        assert status == 404, problem
        status, problem = await call("POST", f"{BASE}/ops/test", TEST)
        assert status == 404, problem
        status, page = await call("GET", DELIVERIES)
        assert "ops" not in {d["webhook"] for d in page["items"]}

    text = json.dumps(answers)
    assert SECRET not in text and URL_TOKEN not in text
    entries = [(e.actor, e.via, e.action, e.target_type, e.target_id)
               for e in await list_audit(pool) if e.action.startswith("webhook.")][::-1]
    assert entries == [
        ("admin-token", "api", "webhook.add", "webhook", "ops"),
        ("admin-token", "api", "webhook.add", "webhook", "all"),
        ("admin-token", "api", "webhook.add", "webhook", "one-rollout"),
        ("admin-token", "api", "webhook.test", "webhook", "ops"),
        ("admin-token", "api", "webhook.redeliver", "delivery", str(ping["id"])),
        ("admin-token", "api", "webhook.remove", "webhook", "ops"),
    ]
    audit_text = json.dumps([e.detail for e in await list_audit(pool)])
    assert SECRET not in audit_text and URL_TOKEN not in audit_text


async def test_secret_refs_follow_the_settings(pool: asyncpg.Pool) -> None:
    """`--secret-ref` obeys the appliance credentials rules of the settings: another env
    prefix, and file references inside the secrets directory only."""
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        state = client.app[STATE]
        state.settings = state.settings.model_copy(update={
            "appliance_credentials_env_prefix": "HOOKS_",
            "appliance_secrets_dir": Path("/run/hooks")})
        api = await _api(client, tokens["admin"])
        for i, (ref, want) in enumerate((
                ("env:HOOKS_OPS", 201), ("env:APPLIANCE_OPS", 422),
                ("file:/run/hooks/ops", 201), ("file:/run/hooks/../etc/x", 422))):
            status, body = await api.call("POST", BASE, json={
                "name": f"hook-{i}", "url": "https://hooks.example.net/x", "secret_ref": ref})
            assert status == want, (ref, body)
            if want == 422:
                assert body["errors"][0]["field"] == "body.secret_ref", body
    assert [h.name for h in await webhook_store.list_webhooks(pool)] == ["hook-0", "hook-2"]


async def test_schemathesis_on_the_webhooks_operations(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The admin pass of test_api_schemathesis.py, on the webhooks tag, with every check:
    no 5xx, every answer as the document describes it, and every body the document calls
    valid accepted (a `rollout_id` that does not exist: 409, the state of things)."""
    tokens = await tokens_by_role(pool)
    await _rollout(pool)
    await webhook_store.add_webhook(pool, name="ops", url="https://hooks.example.net/x",
                                    actor=Actor("setup"))
    await webhook_store.ping(pool, "ops", Actor("setup"))
    async with api_client(pool) as client:
        state = client.app[STATE]
        no_failure_limit(state)
        base = str(client.make_url("")).rstrip("/")
        code, output = await schemathesis(base, tokens["admin"], tmp_path,
                                          "--include-tag", "webhooks", max_time=15)
        total, errors = served(state)
        throttled, _ = served(state, status="429")
        assert code == 0, output[-6000:]
        assert errors == 0, output[-3000:]
        assert total > 0, output[-2000:]
        assert throttled == 0, "the pass was throttled: it tested little"
    print(f"schemathesis: {cases(output)} cases ({total} requests) on the webhooks "
          "operations, no 5xx")
