"""`GET /api/v1/audit`: who did what, newest first."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from orchestrator.api.routing import Call, Operation, Resp, json_response, page
from orchestrator.api.validation import CURSOR, decode_cursor, encode_cursor, limit_param
from orchestrator.store.audit import AuditEntry, list_audit


def entry_dict(e: AuditEntry) -> dict[str, object]:
    return {"id": e.id, "at": e.at.isoformat(), "actor": e.actor, "via": e.via,
            "action": e.action, "target_type": e.target_type, "target_id": e.target_id,
            "detail": e.detail}


async def audit_log(call: Call) -> web.StreamResponse:
    limit = call.params["limit"]
    items = await list_audit(call.pool, before_id=decode_cursor(call.params["cursor"]),
                             limit=limit + 1)
    more = len(items) > limit
    items = items[:limit]
    return json_response(page([entry_dict(e) for e in items],
                              encode_cursor(items[-1].id) if more else None))


OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/audit", audit_log, "listAudit", "The audit log", "audit", "viewer",
        params=(limit_param(), CURSOR),
        responses={200: Resp("A page of audit entries, newest first.", "AuditPage")},
    ),
)
