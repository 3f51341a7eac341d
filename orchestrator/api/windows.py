"""`/api/v1/maintenance-windows`: maintenance windows (viewer reads; admin writes, as for
the inventory: a window decides when installs may reach production appliances).

Every write goes through the same validation and store functions as `orchestrator windows`
(`parse_window`, `store.windows`), with its audit row in the same transaction; the domain's
`WindowError` names the field, which is answered as `body.<field>`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final
from zoneinfo import ZoneInfo

from aiohttp import web

from orchestrator.api.models import NAME, TAG, TEXT, TIMEZONE, WindowCreate, WindowPatch
from orchestrator.api.problems import FieldError, Problem
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.validation import Param, read_model
from orchestrator.domain.windows import WindowError, WindowSpec, covering, next_openings
from orchestrator.store import windows as window_store
from orchestrator.store.windows import StoredWindow, WindowStoreError

WINDOW_PARAM: Final = Param("window", "path", pattern=NAME, max_length=200,
                            description="The window's name, or its id.")
NEXT_SHOWN: Final = 3


def opening_dict(name: str, zone: str, opens: datetime, closes: datetime) -> dict[str, Any]:
    tz = ZoneInfo(zone)
    return {
        "window": name, "timezone": zone,
        "opens": opens.astimezone(UTC).isoformat(), "closes": closes.astimezone(UTC).isoformat(),
        "opens_local": opens.astimezone(tz).isoformat(),
        "closes_local": closes.astimezone(tz).isoformat(),
    }


def window_dict(window: StoredWindow, now: datetime) -> dict[str, Any]:
    spec = window.spec
    return {**window.to_dict(), "next": [
        opening_dict(spec.name, spec.timezone, opens, closes)
        for opens, closes in next_openings(spec, now, NEXT_SHOWN)
    ]}


def _invalid(exc: WindowError) -> Problem:
    field = "body." + exc.field.removeprefix("window.")
    return Problem(422, f"{field}: {exc.message}", errors=[FieldError(field, exc.message)])


def _store_problem(exc: WindowStoreError) -> Problem:
    text = str(exc)
    if text.startswith("no maintenance window"):
        return Problem(404, text)
    return Problem(409, text, errors=[FieldError("body.name", text)])


async def list_windows(call: Call) -> web.StreamResponse:
    p = call.params
    items = await window_store.list_windows(call.pool)
    if p["site"] is not None or p["tag"] is not None:
        wanted = covering([w.spec for w in items], p["site"] or "",
                          (p["tag"],) if p["tag"] else ())
        items = [w for w in items if w.spec in wanted]
    now = datetime.now(UTC)
    return json_response({"items": [window_dict(w, now) for w in items]})


async def create_window(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, WindowCreate)
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            window = await window_store.create_window(conn, body.model_dump(), call.actor)
        except WindowError as exc:
            raise _invalid(exc) from None
        except WindowStoreError as exc:
            raise _store_problem(exc) from None
    return json_response(window_dict(window, datetime.now(UTC)), 201,
                         {"Location": f"/api/v1/maintenance-windows/{window.spec.name}"})


async def get_window(call: Call) -> web.StreamResponse:
    try:
        window = await window_store.get_window(call.pool, call.params["window"])
    except WindowStoreError as exc:
        raise _store_problem(exc) from None
    return json_response(window_dict(window, datetime.now(UTC)))


async def update_window(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, WindowPatch)
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            window = await window_store.update_window(conn, call.params["window"],
                                                      body.given(), call.actor)
        except WindowError as exc:
            raise _invalid(exc) from None
        except WindowStoreError as exc:
            raise _store_problem(exc) from None
    return json_response(window_dict(window, datetime.now(UTC)))


async def delete_window(call: Call) -> web.StreamResponse:
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            await window_store.delete_window(conn, call.params["window"], call.actor)
        except WindowStoreError as exc:
            raise _store_problem(exc) from None
    return web.Response(status=204)


async def next_window_openings(call: Call) -> web.StreamResponse:
    """What `orchestrator windows next --site S` prints, as JSON."""
    p = call.params
    site, tags, zone = p["site"], (p["tag"],) if p["tag"] else (), p["timezone"]
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ValueError, LookupError):
            raise Problem(400, f"query parameter timezone: {zone!r} is not an IANA time zone",
                          errors=[FieldError("query parameter timezone",
                                             f"{zone!r} is not an IANA time zone")]) from None
    specs: list[WindowSpec] = covering(await window_store.all_specs(call.pool), site, tags)
    now = datetime.now(UTC)
    rows: list[tuple[datetime, datetime, str, str]] = []
    for spec in specs:
        for opens, closes in next_openings(spec, now, p["count"], zone):
            rows.append((opens, closes, spec.name, zone or spec.timezone))
    rows.sort()
    return json_response({"site": site, "covered": bool(specs), "items": [
        opening_dict(name, tz, opens, closes) for opens, closes, name, tz in rows[: p["count"]]
    ]})


OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/maintenance-windows", list_windows, "listWindows",
        "List maintenance windows", "maintenance windows", "viewer",
        params=(Param("site", "query", pattern=TEXT, max_length=200,
                      description="Only windows covering this site."),
                Param("tag", "query", pattern=TAG, max_length=100,
                      description="Only windows covering this tag.")),
        responses={200: Resp("Every window (by name), each with its next openings.",
                             "WindowList")},
    ),
    Operation(
        "POST", "/api/v1/maintenance-windows", create_window, "createWindow",
        "Create a maintenance window", "maintenance windows", "admin", body=WindowCreate,
        responses={201: Resp("Created, with its next openings.", "Window",
                             headers=("Location",), links=tuple(
            (op_id, "window", "$response.body#/name")
            for op_id in ("getWindow", "updateWindow", "deleteWindow")))},
        errors=(409,),
        description="Same rules as `orchestrator windows create`: 422 names the bad field, "
                    "also for the rules between two values that the schema cannot state (a "
                    "cutoff not shorter than the duration, a cron range that ends before it "
                    "starts, a day of the month that its months lack, a window that does "
                    "not open within 400 days); 409 when the name exists.",
    ),
    Operation(
        "GET", "/api/v1/maintenance-windows:next", next_window_openings, "nextWindowOpenings",
        "Next openings for a site", "maintenance windows", "viewer",
        params=(Param("site", "query", pattern=TEXT, max_length=200, required=True,
                      description="The site."),
                Param("tag", "query", pattern=TAG, max_length=100,
                      description="An appliance tag (windows may cover tags)."),
                Param("timezone", "query", pattern=TIMEZONE, max_length=64, ref="TimeZone",
                      description="An appliance's own zone, which overrides the window's."),
                Param("count", "query", "integer", minimum=1, maximum=100, default=5,
                      description="How many openings (default 5).")),
        responses={200: Resp("The next openings of every window covering the site, soonest "
                             "first.", "WindowOpenings")},
    ),
    Operation(
        "GET", "/api/v1/maintenance-windows/{window}", get_window, "getWindow",
        "Get a maintenance window", "maintenance windows", "viewer", params=(WINDOW_PARAM,),
        responses={200: Resp("The window and its next openings.", "Window")},
    ),
    Operation(
        "PATCH", "/api/v1/maintenance-windows/{window}", update_window, "updateWindow",
        "Change a maintenance window", "maintenance windows", "admin",
        params=(WINDOW_PARAM,), body=WindowPatch,
        responses={200: Resp("The window after the change.", "Window")}, errors=(409,),
        description="The changed window is validated as a whole, like a new one. Running "
                    "rollouts follow the change at their next scheduling pass.",
    ),
    Operation(
        "DELETE", "/api/v1/maintenance-windows/{window}", delete_window, "deleteWindow",
        "Delete a maintenance window", "maintenance windows", "admin",
        params=(WINDOW_PARAM,), responses={204: Resp("Deleted.")},
    ),
)
