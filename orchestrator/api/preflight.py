"""`/api/v1/rollouts/{id}/preflight`: ask for a pre-flight of a rollout's appliances
(operator) and read the latest results (viewer). docs/preflight.md.

The API never talks to appliances itself (it does not import the engine): `POST` records
the request and notifies the engines, one of which runs it; the answer is `202 Accepted`
with the run (`requested`) and a `Location` to `GET` for the results as they come.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from orchestrator.api.problems import Problem
from orchestrator.api.rollouts import ID_PARAM, not_found
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.validation import (
    CURSOR,
    Param,
    decode_cursor,
    encode_cursor,
    limit_param,
    read_no_body,
)
from orchestrator.domain.preflight import RESULTS
from orchestrator.store import engines as engine_store
from orchestrator.store import preflight as preflight_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.preflight import PreflightBusy, PreflightError
from orchestrator.store.rollouts import RolloutNotFound


async def start_preflight(call: Call) -> web.StreamResponse:
    await read_no_body(call.request)
    rollout_id = call.params["id"]
    try:
        run = await preflight_store.request_run(call.pool, rollout_id, call.actor)
    except RolloutNotFound:
        raise not_found(rollout_id) from None
    except PreflightBusy as exc:
        raise Problem(409, str(exc), run=exc.run.to_dict()) from None
    except PreflightError as exc:
        raise Problem(409, str(exc)) from None
    message = f"pre-flight run {run.id} of rollout {rollout_id} asked for: an engine runs it"
    blocked = await engine_store.blocked_reason(call.pool, "RUNNING")
    if blocked:
        message += f" (warning: {blocked})"
    return json_response({"message": message, "run": run.to_dict()}, 202,
                         {"Location": f"/api/v1/rollouts/{rollout_id}/preflight"})


async def get_preflight(call: Call) -> web.StreamResponse:
    p = call.params
    rollout_id = p["id"]
    limit = p["limit"]
    async with call.pool.acquire() as conn:
        if not await rollout_store.rollout_exists(conn, rollout_id):
            raise not_found(rollout_id)
        summary = await preflight_store.summary(conn, rollout_id)
        rows = await preflight_store.results(
            conn, rollout_id, only=p["result"] or None,
            after_appliance=decode_cursor(p["cursor"]), limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response({
        "rollout_id": rollout_id,
        "summary": summary.to_dict() if summary is not None else None,
        "items": [r.to_dict() for r in rows],
        "next_cursor": encode_cursor(rows[-1].appliance_id) if more else None,
    })


OPERATIONS: Final = (
    Operation(
        "POST", "/api/v1/rollouts/{id}/preflight", start_preflight, "startRolloutPreflight",
        "Check a rollout's appliances without installing (pre-flight)", "rollouts",
        "operator", params=(ID_PARAM,),
        responses={202: Resp("Asked for: an engine runs it; GET the Location for the "
                             "results.", "PreflightAccepted", headers=("Location",))},
        errors=(409,),
        description="Checks every appliance of the rollout that has not started or ended "
                    "without the target (reachable, TLS, credentials, version, key "
                    "services, reconfigure-required, update repository, target version "
                    "offered) under the rollout's limits, installing nothing. An engine "
                    "runs it; meanwhile no install of the rollout starts. With the "
                    "strategy's `preflight: required`, on an active rollout, the "
                    "appliances that fail are left out of the plan (SKIPPED). 409 while "
                    "another pre-flight of the rollout is unfinished (the problem's `run`), "
                    "or when the rollout was pruned.",
    ),
    Operation(
        "GET", "/api/v1/rollouts/{id}/preflight", get_preflight, "getRolloutPreflight",
        "A rollout's latest pre-flight results", "rollouts", "viewer",
        params=(ID_PARAM,
                Param("result", "query", many=True, enum=RESULTS,
                      description="Only appliances with these results (repeatable)."),
                limit_param(), CURSOR),
        responses={200: Resp("The summary and a page of appliances' latest results.",
                             "PreflightResults")},
    ),
)
