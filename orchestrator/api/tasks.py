"""`/api/v1/rollouts/{id}/tasks` and the rollout report: what happened to each appliance."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from orchestrator.api.models import TEXT
from orchestrator.api.problems import FieldError, Problem
from orchestrator.api.rollouts import ID_PARAM, not_found
from orchestrator.api.routing import Call, Operation, Resp, json_response, page
from orchestrator.api.schemas import TASK_STATES
from orchestrator.api.validation import CURSOR, Param, decode_cursor, encode_cursor, limit_param
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store.rollouts import RolloutNotFound


async def list_tasks(call: Call) -> web.StreamResponse:
    p = call.params
    rollout_id = p["id"]
    if not await rollout_store.rollout_exists(call.pool, rollout_id):
        raise not_found(rollout_id)
    limit = p["limit"]
    rows = await task_store.list_tasks(
        call.pool, rollout_id, states=p["state"] or None, site=p["site"], wave=p["wave"],
        after_id=decode_cursor(p["cursor"]) or 0, limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response(page([r.to_dict() for r in rows],
                              encode_cursor(rows[-1].id) if more else None))


async def get_report(call: Call) -> web.StreamResponse:
    from orchestrator.reports.http import report_response
    from orchestrator.reports.render import ReportFormatError

    rollout_id = call.params["id"]
    try:
        return await report_response(call.request, call.pool, rollout_id,
                                     call.params["format"])
    except RolloutNotFound:
        raise not_found(rollout_id) from None
    except ReportFormatError as exc:
        raise Problem(400, str(exc), errors=[FieldError("query parameter format", str(exc))]) \
            from None


OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/rollouts/{id}/tasks", list_tasks, "listRolloutTasks",
        "List a rollout's tasks", "tasks", "viewer",
        params=(ID_PARAM,
                Param("state", "query", many=True, enum=tuple(TASK_STATES),
                      description="Only tasks in these states (repeatable)."),
                Param("site", "query", pattern=TEXT, max_length=200,
                      description="Only tasks of this site."),
                Param("wave", "query", "integer", minimum=0, maximum=1_000_000,
                      description="Only tasks of this wave."),
                limit_param(), CURSOR),
        responses={200: Resp("A page of tasks, by id.", "TaskPage")},
    ),
    Operation(
        "GET", "/api/v1/rollouts/{id}/report", get_report, "getRolloutReport",
        "The rollout's report (JSON, CSV or HTML)", "tasks", "viewer",
        params=(ID_PARAM, Param("format", "query", enum=("json", "csv", "html"),
                                default="json", description="Report format.")),
        responses={200: Resp("The report.", {"type": "object"}, extra_media=(
            ("text/csv", {"type": "string"}), ("text/html", {"type": "string"})))},
    ),
)
