"""`/api/v1/rollouts`: create (idempotent), plan preview, the operator controls, reads.

Every action calls the same store function as the CLI (`orchestrator.store.rollouts`),
which checks the state machine, writes `audit_log` with the token's name and notifies the
engines. A control the state machine forbids is a 409 that names the current state and the
states where the control is allowed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
from aiohttp import web

from orchestrator.api.auth import allows
from orchestrator.api.models import PlanRequest, RolloutCreate, parse_time
from orchestrator.api.problems import FieldError, Problem, bad_request
from orchestrator.api.routing import Call, Operation, Resp, json_response, page
from orchestrator.api.schemas import ROLLOUT_STATES
from orchestrator.api.validation import (
    BIGINT_MAX,
    CURSOR,
    Param,
    decode_cursor,
    encode_cursor,
    limit_param,
    read_model,
    read_no_body,
)
from orchestrator.domain.selector import SelectorError
from orchestrator.domain.states import (
    IN_FLIGHT_TASK_STATES,
    TERMINAL_ROLLOUT_STATES,
    OperationNotAllowed,
)
from orchestrator.domain.strategy import StrategyError
from orchestrator.store import engines as engine_store
from orchestrator.store import pace as pace_store
from orchestrator.store import preflight as preflight_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.forecast import rollout_forecast
from orchestrator.store.rollouts import (
    EmptySelection,
    IdempotencyConflict,
    OverlapError,
    RolloutError,
    RolloutNotFound,
)

ID_PARAM: Final = Param("id", "path", "integer", minimum=1, maximum=BIGINT_MAX,
                        description="The rollout's id.")
IDEMPOTENCY_KEY: Final = Param(
    "Idempotency-Key", "header", pattern=r"^[\x21-\x7e]{1,200}$",
    description="Any unique text (e.g. a UUID). The same key with the same body returns "
                "the rollout created the first time (200); with another body: 409.",
)


def not_found(rollout_id: int) -> Problem:
    return Problem(404, f"id: no rollout {rollout_id}",
                   errors=[FieldError("id", f"no rollout {rollout_id}")])


def overlap_problem(exc: OverlapError, field: str | None = None, **extra: Any) -> Problem:
    """409: the rollout overlaps active ones; the lists as members, the hint in detail."""
    return Problem(409, str(exc), errors=[FieldError(field, str(exc))] if field else None,
                   overlapping_rollouts=[r.to_dict() for r in exc.rollouts],
                   overlapping_appliances=exc.appliances, **extra)


def request_problem(exc: StrategyError | SelectorError | RolloutError) -> Problem:
    if isinstance(exc, EmptySelection):  # a well-formed request the inventory refuses
        return Problem(409, str(exc), errors=[FieldError("body.selector", str(exc))])
    if isinstance(exc, StrategyError | SelectorError):
        return Problem(422, f"body.{exc.field}: {exc.message}",
                       errors=[FieldError(f"body.{exc.field}", exc.message)])
    text = str(exc)
    field = text.split(":", 1)[0] if ":" in text.split(" ", 1)[0] else "body.selector"
    if not field.startswith("body"):
        field = f"body.{field}"
    return Problem(422, text, errors=[FieldError(field, text)])


async def rollout_detail(pool: asyncpg.Pool, rollout_id: int, *, forecast: bool = False,
                         eta_task_seconds: float = 900.0) -> dict[str, Any]:
    """What `rollout show --json` shows, read on one connection (one snapshot each)."""
    async with pool.acquire() as conn:
        try:
            rollout = await rollout_store.get_rollout(conn, rollout_id)
        except RolloutNotFound:
            raise not_found(rollout_id) from None
        counts = await rollout_store.rollout_counts(conn, rollout_id)
        engine = await engine_store.engine_status(conn)
        out = rollout.to_dict()
        out["engine"] = engine.to_dict()
        out["counts"] = counts.to_dict()
        out["in_flight"] = sum(counts.by_state.get(s, 0) for s in IN_FLIGHT_TASK_STATES)
        preflight = await preflight_store.summary(conn, rollout_id)
        out["preflight"] = preflight.to_dict() if preflight is not None else None
        pace = await pace_store.pace_state(conn, rollout_id)
        out["pace"] = pace.to_dict() if pace is not None else None
        if forecast:
            result = await rollout_forecast(conn, rollout_id, datetime.now(UTC),
                                            eta_task_seconds, engine=engine)
            out["forecast"] = result.to_dict()
    return out


# ------------------------------------------------------------------ handlers
async def list_rollouts(call: Call) -> web.StreamResponse:
    p = call.params
    limit = p["limit"]
    async with call.pool.acquire() as conn:
        items = await rollout_store.list_rollouts(
            conn, states=p["state"] or None, after_id=decode_cursor(p["cursor"]),
            limit=limit + 1,
        )
        more = len(items) > limit
        items = items[:limit]
        engine = await engine_store.engine_status(conn)
        counts = await rollout_store.state_counts(conn, [r.id for r in items])
        out = [{**r.to_dict(), "engine": engine.to_dict(), "counts": counts[r.id]}
               for r in items]
        if p["forecast"]:
            now = datetime.now(UTC)
            for r, item in zip(items, out, strict=True):
                item["forecast"] = None if r.state in TERMINAL_ROLLOUT_STATES else (
                    await rollout_forecast(conn, r.id, now,
                                           call.state.settings.eta_task_seconds,
                                           engine=engine)).to_dict()
    return json_response(page(out, encode_cursor(items[-1].id) if more else None))


def check_duties_on_create(call: Call, strategy: dict[str, Any]) -> None:
    """Separation of duties: installing outside the maintenance windows is the decision of
    whoever owns the windows (admin), not of an operator."""
    assert call.token is not None
    if strategy.get("windows") == "ignore" and not allows(call.token.role, "admin"):
        detail = (f"body.strategy.windows: 'ignore' (install outside the maintenance "
                  f"windows) may be set only by an admin; token {call.token.name!r} has the "
                  f"role {call.token.role}: leave it out or use 'required'")
        raise call.state.auth.forbidden(
            call.request, call.token, "windows_ignore_needs_admin", detail,
            required_role="admin", role=call.token.role,
            errors=[FieldError("body.strategy.windows", "'ignore' needs the admin role")])


async def check_self_approval(call: Call, rollout_id: int) -> None:
    """With api_forbid_self_approval: whoever created the rollout may not approve it."""
    if not call.state.settings.api_forbid_self_approval:
        return
    creator = await rollout_store.rollout_creator(call.pool, rollout_id)
    if creator is not None and creator == call.actor.name:
        raise call.state.auth.forbidden(
            call.request, call.token, "self_approval",
            f"rollout {rollout_id} was created by {creator!r}: api_forbid_self_approval is "
            "on, so another token must approve its waves",
            created_by=creator)


async def create_rollout(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, RolloutCreate)
    check_duties_on_create(call, body.strategy_dict())
    try:
        schedule_at = parse_time(body.schedule_at)
    except ValueError as exc:
        raise bad_request("body.schedule_at", str(exc), status=422) from None
    key = call.params["Idempotency-Key"]
    try:
        rollout, created = await rollout_store.create_rollout(
            call.pool, name=body.name, target_version=body.target_version,
            selector=body.selector_dict(), strategy=body.strategy_dict(), actor=call.actor,
            schedule_at=schedule_at, idempotency_key=key,
        )
    except IdempotencyConflict as exc:
        raise Problem(409, str(exc), errors=[FieldError("Idempotency-Key", str(exc))]) \
            from None
    except OverlapError as exc:
        raise overlap_problem(exc, "body.strategy.after_overlapping") from None
    except (StrategyError, SelectorError, RolloutError) as exc:
        raise request_problem(exc) from None
    detail = await rollout_detail(call.pool, rollout.id)
    headers = {"Location": f"/api/v1/rollouts/{rollout.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(detail, 201 if created else 200, headers)


async def plan_rollout(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, PlanRequest)
    try:
        plan = await rollout_store.preview_plan(
            call.pool, body.target_version, body.selector_dict(), body.strategy_dict()
        )
    except (StrategyError, SelectorError, RolloutError) as exc:
        raise request_problem(exc) from None
    return json_response(plan.to_dict())


async def get_rollout(call: Call) -> web.StreamResponse:
    p = call.params
    return json_response(await rollout_detail(
        call.pool, p["id"], forecast=p["forecast"],
        eta_task_seconds=call.state.settings.eta_task_seconds,
    ))


async def _state(call: Call, rollout_id: int) -> str | None:
    return await rollout_store.rollout_state(call.pool, rollout_id)


def control(name: str, run: Any) -> Any:
    async def handler(call: Call) -> web.StreamResponse:
        await read_no_body(call.request)
        rollout_id = call.params["id"]
        if name == "approve":
            await check_self_approval(call, rollout_id)
        try:
            result = await run(call.pool, rollout_id, call.actor)
        except RolloutNotFound:
            raise not_found(rollout_id) from None
        except OperationNotAllowed as exc:
            raise Problem(409, str(exc), current_state=str(exc.state),
                          allowed_states=[str(s) for s in exc.allowed]) from None
        except OverlapError as exc:
            raise overlap_problem(exc, current_state=await _state(call, rollout_id)) \
                from None
        except RolloutError as exc:
            raise Problem(409, f"cannot {name} rollout: {exc}",
                          current_state=await _state(call, rollout_id)) from None
        engine = (await engine_store.engine_status(call.pool)).to_dict()
        return json_response({"message": result.message,
                              "rollout": {**result.rollout.to_dict(), "engine": engine}})

    handler.__name__ = f"{name}_rollout"
    return handler


# (path segment, store function, operationId, summary, description)
CONTROLS: Final = (
    ("start", rollout_store.start_rollout, "startRollout", "Start a rollout",
     "Start a DRAFT rollout (SCHEDULED when schedule_at is ahead), or a SCHEDULED one now. "
     "A DRAFT rollout whose appliances have an unfinished task in another active rollout "
     "is refused (409 with `overlapping_rollouts` and `overlapping_appliances`) unless its "
     "strategy says `after_overlapping`."),
    ("pause", rollout_store.pause_rollout, "pauseRollout", "Pause a rollout",
     "Stop new installs; installs already accepted run to their end."),
    ("resume", rollout_store.resume_rollout, "resumeRollout", "Resume a paused rollout",
     "Resume a PAUSED rollout."),
    ("cancel", rollout_store.cancel_rollout, "cancelRollout", "Cancel a rollout",
     "Cancel: never-started tasks are cancelled; accepted installs cannot be stopped."),
    ("approve", rollout_store.approve_rollout, "approveRollout", "Approve the next wave",
     "Open the gate of the wave that waits for an operator (or approve it ahead). With the "
     "setting `api_forbid_self_approval`, the token that created the rollout is refused "
     "(403)."),
    ("retry-failed", rollout_store.retry_failed, "retryFailedRollout",
     "Retry a rollout's failed tasks",
     "Put FAILED, TIMED_OUT and CANCELLED tasks back to PENDING as fresh tasks; the "
     "rollout runs again. Refused like a start (409) when the retried appliances overlap "
     "another active rollout."),
)

LINKS: Final = tuple(
    (op_id, "id", "$response.body#/id")
    for op_id in ("getRollout", "listRolloutTasks", "getRolloutReport",
                  *(c[2] for c in CONTROLS))
)

OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/rollouts", list_rollouts, "listRollouts", "List rollouts",
        "rollouts", "viewer",
        params=(Param("state", "query", many=True, enum=tuple(ROLLOUT_STATES),
                      description="Only rollouts in these states (repeatable)."),
                limit_param(), CURSOR,
                Param("forecast", "query", "boolean", default=False,
                      description="Add each rollout's `forecast` (ETA), as getRollout "
                                  "gives it; null for a terminal rollout.")),
        responses={200: Resp("A page of rollouts, newest first, each with its task counts "
                             "by state.", "RolloutPage")},
    ),
    Operation(
        "POST", "/api/v1/rollouts", create_rollout, "createRollout",
        "Create a rollout (DRAFT) with its plan", "rollouts", "operator",
        params=(IDEMPOTENCY_KEY,), body=RolloutCreate,
        responses={
            201: Resp("Created.", "RolloutDetail", headers=("Location",), links=LINKS),
            200: Resp("The same Idempotency-Key and body were sent before: the rollout "
                      "created then.", "RolloutDetail",
                      headers=("Location", "Idempotent-Replayed"), links=LINKS),
        },
        errors=(409,),
        description="Snapshots the plan: one task per targeted appliance, in waves. "
                    "`strategy.windows: ignore` needs the admin role (403 otherwise). 409 "
                    "when some targeted appliances have an unfinished task in another "
                    "active rollout (SCHEDULED, RUNNING, PAUSED, WAITING_WINDOW), unless "
                    "`strategy.after_overlapping` is true: the problem lists them "
                    "(`overlapping_rollouts`, `overlapping_appliances`). 409 also when the "
                    "selector matches no enabled appliance of the inventory as it is now.",
    ),
    Operation(
        "POST", "/api/v1/rollouts/plan", plan_rollout, "planRollout",
        "Preview a plan (writes nothing)", "rollouts", "operator", body=PlanRequest,
        responses={200: Resp("The waves and appliances a rollout would get now.", "Plan")},
        errors=(409,),
        description="409 when the selector matches no enabled appliance of the inventory "
                    "as it is now.",
    ),
    Operation(
        "GET", "/api/v1/rollouts/{id}", get_rollout, "getRollout",
        "Get a rollout with task counts by state, wave and site", "rollouts", "viewer",
        params=(ID_PARAM, Param("forecast", "query", "boolean", default=False,
                                description="Include the forecast completion (ETA).")),
        responses={200: Resp("The rollout.", "RolloutDetail")},
    ),
    *(
        Operation(
            "POST", f"/api/v1/rollouts/{{id}}/{name}", control(name, run), op_id, summary,
            "rollouts", "operator", params=(ID_PARAM,),
            responses={200: Resp("Done; message says what happened.", "OperationResult")},
            errors=(409,), description=text + " 409 (with current_state) where the "
                                              "rollout's state forbids it.",
        )
        for name, run, op_id, summary, text in CONTROLS
    ),
)
