"""Every route, table-driven: no token (or a bad one) is 401, a viewer on any mutation is 403
(except the one a viewer may make: a stream ticket, to read its own event stream), an
operator on admin routes is 403, and an admin can do everything (each request succeeds).

The table must list every operation of the app: a new route without a row fails here."""

from __future__ import annotations

from typing import Any

import asyncpg

from orchestrator.api.app import OPERATIONS
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.audit import Actor
from tests.integration.test_api_support import api_client, auth, tokens_by_role

CSV = ("name,base_url,site,tags\n"
       "vr-1,https://vr-1.example.net/api,ams,prod\n"
       "vr-2,https://vr-2.example.net/api,nyc,prod\n")
NEW = {"name": "new-1", "base_url": "https://new-1.example.net/api", "site": "fra"}
ROLLOUT = {"name": "r", "target_version": "9.0.1-20020", "selector": {"tags": ["prod"]},
           "strategy": {"waves": [1, "100%"], "approval": "after-canary"}}

# (operationId, method, url, request kwargs, status an admin gets); run in this order
TABLE: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("healthz", "GET", "/healthz", {}, 200),
    ("readyz", "GET", "/readyz", {}, 200),
    ("metrics", "GET", "/metrics", {}, 200),
    ("openapi", "GET", "/api/v1/openapi.json", {}, 200),
    ("docs", "GET", "/api/docs", {}, 200),
    ("docsAsset", "GET", "/api/docs/assets/docs.js", {}, 200),
    ("reference", "GET", "/api/reference", {}, 200),
    ("console", "GET", "/", {}, 200),
    ("consoleAsset", "GET", "/console/assets/console.js", {}, 200),
    ("getMe", "GET", "/api/v1/me", {}, 200),
    ("createStreamTicket", "POST", "/api/v1/stream-tickets", {}, 201),
    ("importAppliances", "POST", "/api/v1/appliances:import",
     {"data": CSV, "headers": {"Content-Type": "text/csv"}}, 200),
    ("listAppliances", "GET", "/api/v1/appliances?site=ams", {}, 200),
    ("createAppliance", "POST", "/api/v1/appliances", {"json": NEW}, 201),
    ("getAppliance", "GET", "/api/v1/appliances/new-1", {}, 200),
    ("updateAppliance", "PATCH", "/api/v1/appliances/new-1", {"json": {"tags": ["lab"]}},
     200),
    ("deleteAppliance", "DELETE", "/api/v1/appliances/new-1", {}, 204),
    ("planRollout", "POST", "/api/v1/rollouts/plan",
     {"json": {"target_version": "9.0.1-20020"}}, 200),
    ("createRollout", "POST", "/api/v1/rollouts",
     {"json": ROLLOUT, "headers": {"Idempotency-Key": "k-1"}}, 201),
    ("listRollouts", "GET", "/api/v1/rollouts?state=DRAFT", {}, 200),
    ("getRollout", "GET", "/api/v1/rollouts/{rid}", {}, 200),
    ("startRollout", "POST", "/api/v1/rollouts/{rid}/start", {}, 200),
    ("pauseRollout", "POST", "/api/v1/rollouts/{rid}/pause", {}, 200),
    ("resumeRollout", "POST", "/api/v1/rollouts/{rid}/resume", {}, 200),
    ("approveRollout", "POST", "/api/v1/rollouts/{rid}/approve", {}, 200),
    ("cancelRollout", "POST", "/api/v1/rollouts/{rid}/cancel", {}, 200),
    ("retryFailedRollout", "POST", "/api/v1/rollouts/{rid}/retry-failed", {}, 200),
    ("listRolloutTasks", "GET", "/api/v1/rollouts/{rid}/tasks?state=PENDING", {}, 200),
    ("getRolloutReport", "GET", "/api/v1/rollouts/{rid}/report?format=csv", {}, 200),
    ("startRolloutPreflight", "POST", "/api/v1/rollouts/{rid}/preflight", {}, 202),
    ("getRolloutPreflight", "GET", "/api/v1/rollouts/{rid}/preflight?result=fail", {}, 200),
    ("streamRolloutEvents", "GET", "/api/v1/rollouts/{rid}/events?follow=false", {}, 200),
    ("createWindow", "POST", "/api/v1/maintenance-windows",
     {"json": {"name": "w-1", "cron": "0 22 * * *", "duration": "4h",
               "timezone": "Europe/Amsterdam", "sites": ["ams"]}}, 201),
    ("listWindows", "GET", "/api/v1/maintenance-windows?site=ams", {}, 200),
    ("nextWindowOpenings", "GET", "/api/v1/maintenance-windows:next?site=ams&count=2", {},
     200),
    ("getWindow", "GET", "/api/v1/maintenance-windows/w-1", {}, 200),
    ("updateWindow", "PATCH", "/api/v1/maintenance-windows/w-1", {"json": {"cutoff": "30m"}},
     200),
    ("deleteWindow", "DELETE", "/api/v1/maintenance-windows/w-1", {}, 204),
    ("listSites", "GET", "/api/v1/sites", {}, 200),
    ("setSiteLimit", "PUT", "/api/v1/sites/ams", {"json": {"max_in_flight": 4}}, 200),
    ("createWebhook", "POST", "/api/v1/webhooks",
     {"json": {"name": "hook-1", "url": "https://hooks.example.net/in"}}, 201),
    ("listWebhooks", "GET", "/api/v1/webhooks", {}, 200),
    ("getWebhook", "GET", "/api/v1/webhooks/hook-1", {}, 200),
    ("testWebhook", "POST", "/api/v1/webhooks/hook-1/test", {}, 202),
    ("listWebhookDeliveries", "GET", "/api/v1/webhooks/deliveries?webhook=hook-1", {}, 200),
    # delivery 1 is the ping just queued: pending, so a redelivery is refused
    ("redeliverWebhookDelivery", "POST", "/api/v1/webhooks/deliveries/1/redeliver", {}, 409),
    ("deleteWebhook", "DELETE", "/api/v1/webhooks/hook-1", {}, 204),
    ("listAudit", "GET", "/api/v1/audit?limit=5", {}, 200),
    ("createToken", "POST", "/api/v1/tokens", {"json": {"name": "ci", "role": "operator"}},
     201),
    ("listTokens", "GET", "/api/v1/tokens", {}, 200),
    ("revokeToken", "DELETE", "/api/v1/tokens/ci", {}, 200),
]


def test_the_table_covers_every_operation() -> None:
    assert sorted(row[0] for row in TABLE) == sorted(op.operation_id for op in OPERATIONS)


async def test_roles_on_every_route(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    ops = {op.operation_id: op for op in OPERATIONS}
    async with api_client(pool) as client:
        # the inventory and a rollout exist before the checks
        async with client.post("/api/v1/appliances:import", data=CSV,
                               headers={**auth(tokens["admin"]),
                                        "Content-Type": "text/csv"}) as resp:
            assert resp.status == 200
        rollout, _ = await rollout_store.create_rollout(
            pool, name="fixture", target_version="9.0.1-20020", selector={"tags": ["prod"]},
            strategy={"waves": [1, "100%"], "approval": "after-canary"},
            actor=Actor("setup"),
        )
        rid = rollout.id
        for op_id, method, url, kwargs, admin_status in TABLE:
            op = ops[op_id]
            url = url.format(rid=rid)
            headers = kwargs.get("headers", {})
            plain = {k: v for k, v in kwargs.items() if k != "headers"}

            async def send(token: str | None, headers: dict[str, str] = headers,
                           method: str = method, url: str = url,
                           plain: dict[str, Any] = plain) -> tuple[int, Any]:
                sent = {**headers, **(auth(token) if token else {})}
                async with client.request(method, url, headers=sent, **plain) as resp:
                    body = await resp.read()
                    return resp.status, (resp.headers, body)

            if op.role is not None:
                status, (resp_headers, _) = await send(None)
                assert status == 401, (op_id, status)
                assert resp_headers["WWW-Authenticate"].startswith("Bearer"), op_id
                status, _ = await send("orch_not-a-real-token")
                assert status == 401, (op_id, status)
            if op.mutation and op.role != "viewer":
                status, _ = await send(tokens["viewer"])
                assert status == 403, (op_id, "viewer", status)
            if op.role == "admin":
                status, _ = await send(tokens["operator"])
                assert status == 403, (op_id, "operator", status)
            status, (_, body) = await send(tokens["admin"])
            assert status == admin_status, (op_id, status, body[:300])
            if op.role == "viewer":
                status, _ = await send(tokens["viewer"])
                assert status == admin_status, (op_id, "viewer", status)
