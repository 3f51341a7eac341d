"""`/api/v1/appliances`: the inventory (viewer reads, admin writes).

Create, update and bulk import go through the same validation as an inventory file
(`validate_record`, `parse_inventory`) and the same upsert as `appliances import`; every
change is written to `audit_log` in the same transaction.

The settings' target policy applies to every row (`target_policy`: allowed credentials
references and base URLs). A change of an appliance's host must name its credentials_ref
in the same request. An import is parsed and validated in a worker thread (a 16 MiB body
does not block the event loop), lists at most 100 bad rows (and counts the rest), and
refuses more than `appliance_import_max_rows` appliances.
"""

from __future__ import annotations

import asyncio
import csv
from typing import Any, Final

import asyncpg
from aiohttp import web

from orchestrator.api.models import NAME, TAG, TAG_LIST, TEXT, ApplianceCreate, AppliancePatch
from orchestrator.api.problems import FieldError, Problem
from orchestrator.api.routing import Call, Operation, Resp, json_response, page
from orchestrator.api.validation import (
    CURSOR,
    IMPORT_LIMIT,
    Param,
    decode_cursor,
    decode_text,
    encode_cursor,
    limit_param,
    media_type,
    read_body,
    read_model,
)
from orchestrator.domain.inventory import (
    FIELDS,
    REQUIRED,
    RowError,
    TargetPolicy,
    ValidationResult,
    url_host,
    validate_record,
)
from orchestrator.domain.models import Appliance
from orchestrator.inventory import InventoryError, parse_inventory, target_policy
from orchestrator.settings import Settings
from orchestrator.store import appliances as appliance_store
from orchestrator.store.audit import record_audit
from orchestrator.store.db import DB

NAME_PARAM: Final = Param("name", "path", pattern=NAME, max_length=253,
                          description="The appliance's name.")
IMPORT_TYPES: Final = {"text/csv": "csv", "application/json": "json"}


def appliance_dict(a: Appliance, last_task: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": a.id, "name": a.name, "base_url": a.base_url, "site": a.site,
        "tags": list(a.tags), "timezone": a.timezone, "credentials_ref": a.credentials_ref,
        "tls_ca_file": a.tls_ca_file, "tls_thumbprint": a.tls_thumbprint,
        "current_version": a.current_version,
        "last_seen_at": a.last_seen_at.isoformat() if a.last_seen_at else None,
        "enabled": a.enabled,
        "last_task": last_task,
    }


async def with_last_tasks(conn: DB, appliances: list[Appliance]) -> list[dict[str, Any]]:
    """The appliances as the API shows them, each with its newest task (one statement)."""
    last = await appliance_store.last_tasks(conn, [a.id for a in appliances])
    return [appliance_dict(a, last.get(a.id)) for a in appliances]


def _record(a: Appliance) -> dict[str, Any]:
    return {
        "name": a.name, "base_url": a.base_url, "site": a.site, "tags": list(a.tags),
        "timezone": a.timezone, "credentials_ref": a.credentials_ref,
        "tls_ca_file": a.tls_ca_file, "tls_thumbprint": a.tls_thumbprint,
    }


def _field_of(reason: str) -> str:
    head = reason.split(":", 1)[0]
    return head if head in FIELDS else "row"


def _invalid_record(reasons: list[str]) -> Problem:
    errors = [FieldError("body." + f if (f := _field_of(r)) != "row" else "body", r)
              for r in reasons]
    return Problem(422, "; ".join(reasons), errors=errors)


def _not_found(name: str) -> Problem:
    return Problem(404, f"no appliance named {name!r}")


def _host_change(exc: appliance_store.HostChangeError, field: str) -> Problem:
    """409: the request is valid in itself; the appliance as it is stored (its host) is
    what refuses it."""
    return Problem(409, str(exc), errors=[
        FieldError(field, f"appliance {name!r}: base_url host {old} -> {new} without its "
                          "credentials_ref") for name, old, new in exc.changes[:100]])


# ------------------------------------------------------------------ handlers
async def list_appliances(call: Call) -> web.StreamResponse:
    p = call.params
    limit = p["limit"]
    async with call.pool.acquire() as conn:
        items = await appliance_store.list_appliances(
            conn, site=p["site"], tag=p["tag"], version=p["version"],
            after_id=decode_cursor(p["cursor"]) or 0, limit=limit + 1,
        )
        more = len(items) > limit
        items = items[:limit]
        out = await with_last_tasks(conn, items)
    return json_response(page(out, encode_cursor(items[-1].id) if more else None))


async def get_appliance(call: Call) -> web.StreamResponse:
    name = call.params["name"]
    async with call.pool.acquire() as conn:
        found = await appliance_store.get_appliance(conn, name)
        if found is None:
            raise _not_found(name)
        [out] = await with_last_tasks(conn, [found])
    return json_response(out)


async def create_appliance(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, ApplianceCreate)
    spec, reasons = validate_record(body.model_dump(), target_policy(call.state.settings))
    if spec is None:
        raise _invalid_record(reasons)
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            summary = await appliance_store.upsert_appliances(conn, [spec])
        except appliance_store.HostChangeError as exc:
            raise _host_change(exc, "body.credentials_ref") from None
        if summary.updated:  # the row existed: undo by leaving the transaction
            raise Problem(409, f"name: an appliance named {spec.name!r} exists; change it "
                               f"with PATCH /api/v1/appliances/{spec.name}")
        await record_audit(conn, call.actor, "appliance.create", "appliance", spec.name,
                           {"site": spec.site})
        created = await appliance_store.get_appliance(conn, spec.name)
        assert created is not None
        [out] = await with_last_tasks(conn, [created])
    return json_response(out, 201, {"Location": f"/api/v1/appliances/{created.name}"})


async def update_appliance(call: Call) -> web.StreamResponse:
    name = call.params["name"]
    body = await read_model(call.request, AppliancePatch)
    changes = body.given()
    async with call.pool.acquire() as conn, conn.transaction():
        if not await appliance_store.lock_appliance(conn, name):
            raise _not_found(name)
        current = await appliance_store.get_appliance(conn, name)
        assert current is not None
        record = _record(current)
        record.update({k: v for k, v in changes.items() if k != "enabled"})
        if ("base_url" in changes and "credentials_ref" not in changes
                and url_host(str(changes["base_url"])) != url_host(current.base_url)):
            raise Problem(  # the stored host refuses it (as a host change in an import)
                409, f"appliance {name!r}: base_url moves it from host "
                     f"{url_host(current.base_url)} to {url_host(str(changes['base_url']))}: "
                     "give its credentials_ref again in the same change (the credentials "
                     "would otherwise be sent to the new host)",
                errors=[FieldError("body.credentials_ref", "required when the base_url "
                                                           "host changes")])
        spec, reasons = validate_record(record, target_policy(call.state.settings))
        if spec is None:
            raise _invalid_record(reasons)
        try:  # a move that also clears its credentials_ref: refused by the store
            await appliance_store.upsert_appliances(conn, [spec])
        except appliance_store.HostChangeError as exc:
            raise _host_change(exc, "body.credentials_ref") from None
        if "enabled" in changes:
            await appliance_store.set_enabled(conn, name, bool(changes["enabled"]))
        await record_audit(conn, call.actor, "appliance.update", "appliance", name,
                           {"fields": sorted(changes)})
        updated = await appliance_store.get_appliance(conn, name)
        assert updated is not None
        [out] = await with_last_tasks(conn, [updated])
    return json_response(out)


async def delete_appliance(call: Call) -> web.StreamResponse:
    name = call.params["name"]
    async with call.pool.acquire() as conn, conn.transaction():
        if not await appliance_store.lock_appliance(conn, name):
            raise _not_found(name)
        rollouts = await appliance_store.referencing_rollouts(conn, name)
        if rollouts:
            listed = ", ".join(str(r) for r in rollouts)
            raise Problem(
                409, f"appliance {name!r} is referenced by tasks of rollout(s) {listed}; "
                     "their history stays: disable it instead (PATCH enabled=false)",
                rollouts=rollouts,
            )
        try:
            await appliance_store.remove_appliance(conn, name)
        except asyncpg.ForeignKeyViolationError:
            raise Problem(409, f"appliance {name!r} is referenced by tasks") from None
        await record_audit(conn, call.actor, "appliance.delete", "appliance", name, {})
    return web.Response(status=204)


async def import_appliances(call: Call) -> web.StreamResponse:
    request = call.request
    kind = media_type(request)
    fmt = IMPORT_TYPES.get(kind)
    if fmt is None:
        raise Problem(415, f"Content-Type: send text/csv or application/json; got {kind!r}",
                      errors=[FieldError("Content-Type", "must be text/csv or "
                                                         "application/json")])
    body = await read_body(request, IMPORT_LIMIT)
    settings = call.state.settings
    # decoding, parsing and validating 16 MiB take a while: not on the event loop
    result = await asyncio.to_thread(
        _parse_import, body, fmt, target_policy(settings), settings.appliance_import_max_rows)
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            summary = await appliance_store.upsert_appliances(conn, result.specs)
        except appliance_store.HostChangeError as exc:
            raise _host_change(exc, "credentials_ref") from None
        await record_audit(conn, call.actor, "appliance.import", "appliance", None,
                           {"inserted": summary.inserted, "updated": summary.updated,
                            "format": fmt})
    return json_response({"imported": summary.total, "inserted": summary.inserted,
                          "updated": summary.updated})


def _parse_import(
    body: bytes, fmt: str, policy: TargetPolicy, max_rows: int
) -> ValidationResult:
    """The import body, decoded, parsed and validated (run in a worker thread)."""
    text = decode_text(body)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise _rows_problem([RowError(line, "contains the NUL character")])
    try:
        result = parse_inventory(text, fmt, policy, max_rows=max_rows)
    except InventoryError as exc:
        raise _rows_problem(exc.errors, exc.more) from None
    except (csv.Error, ValueError, RecursionError) as exc:
        raise Problem(422, f"the {fmt.upper()} body cannot be read: {exc}",
                      errors=[FieldError("body", str(exc))]) from None
    for spec in result.specs:
        for key, value in spec.__dict__.items():
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, str) and not _storable(v) for v in values):
                raise _rows_problem([RowError(0, f"{key}: the value of appliance "
                                                 f"{spec.name!r} holds NUL or unpaired "
                                                 "surrogates")])
    return result


def _storable(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _rows_problem(errors: list[RowError], more: int = 0) -> Problem:
    """422 listing at most 100 bad rows; `more_errors` counts those not listed."""
    total = len(errors) + more
    listed = errors[:100]
    shown = "; ".join(str(e) for e in listed[:5])
    rest = f"; and {total - 5} more" if total > 5 else ""
    return Problem(
        422, f"{total} problem(s), nothing imported: {shown}{rest}",
        errors=[FieldError(_field_of(e.reason), e.reason, e.line) for e in listed],
        more_errors=total - len(listed),
    )


# ------------------------------------------------------------------ operations
def _component_refs(value: Any) -> Any:
    """A model's schema with its `x-component` markers as $refs (as api/openapi.py does
    for the components)."""
    if isinstance(value, dict):
        if "x-component" in value:
            return {"$ref": f"#/components/schemas/{value['x-component']}"}
        return {k: _component_refs(v) for k, v in value.items() if k != "default"}
    if isinstance(value, list):
        return [_component_refs(v) for v in value]
    return value


def _record_doc() -> dict[str, Any]:
    """A row of a JSON import: an ApplianceCreate, as an inventory file may also write it
    (validate_record): an optional field may be null or "" (not given), and `tags` one
    ';'-separated text."""
    model = _component_refs(ApplianceCreate.model_json_schema())
    properties: dict[str, Any] = {}
    for key, schema in model["properties"].items():
        if key == "tags":  # empty tags are skipped
            schema["items"] = {"anyOf": [schema["items"], {"type": "string", "maxLength": 0}]}
            schema = {"anyOf": [schema, {"type": "string", "pattern": TAG_LIST},
                                {"type": "null"}],
                      "description": "A list, or one ';'-separated text."}
        elif key not in REQUIRED:
            schema = {"anyOf": [*schema["anyOf"], {"type": "string", "maxLength": 0}]}
        properties[key] = schema
    assert set(properties) == set(FIELDS)
    return {"type": "object", "properties": properties, "required": list(REQUIRED),
            "additionalProperties": False}


_RECORD_DOC: Final = _record_doc()
# the default settings' appliance_import_max_rows
_MAX_ROWS: Final = Settings.model_fields["appliance_import_max_rows"].default

OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/appliances", list_appliances, "listAppliances",
        "List appliances", "appliances", "viewer",
        params=(Param("site", "query", pattern=TEXT, max_length=200,
                      description="Only this site."),
                Param("tag", "query", pattern=TAG, max_length=100,
                      description="Only appliances with this tag."),
                Param("version", "query", pattern=TEXT, max_length=200,
                      description="Only appliances whose current version is exactly this "
                                  "one."),
                limit_param(), CURSOR),
        responses={200: Resp("A page of appliances, by id, each with its newest task "
                             "(`last_task`).", "AppliancePage")},
    ),
    Operation(
        "POST", "/api/v1/appliances", create_appliance, "createAppliance",
        "Create an appliance", "appliances", "admin", body=ApplianceCreate,
        responses={201: Resp("Created.", "Appliance", headers=("Location",), links=tuple(
            (op_id, "name", "$response.body#/name")
            for op_id in ("getAppliance", "updateAppliance", "deleteAppliance")))},
        errors=(409,),
        description="Same rules as a row of an inventory file; 409 when the name exists.",
    ),
    Operation(
        "POST", "/api/v1/appliances:import", import_appliances, "importAppliances",
        "Import appliances (CSV or JSON, all or nothing)", "appliances", "admin",
        body_doc={
            "required": True,
            "description": "An inventory file as the body: CSV with a header row "
                           "(name,base_url,site,tags,timezone,credentials_ref,tls_ca_file,"
                           "tls_thumbprint; tags ';'-separated), or a JSON array of "
                           "objects. At most 16 MiB.",
            "content": {
                "text/csv": {"schema": {"type": "string"}},
                "application/json": {"schema": {
                    "type": "array", "minItems": 1, "maxItems": _MAX_ROWS,
                    "items": _RECORD_DOC, "examples": [[ApplianceCreate.example]]}},
            },
        },
        responses={200: Resp("Imported: inserted and updated counts.", "ImportResult")},
        errors=(409,),
        description="Upserts by name in one transaction, like `orchestrator appliances "
                    "import`. A body with any bad row imports nothing: 422 lists every bad "
                    "row with its line (a name given on two rows too). 409 when a row moves "
                    "an existing appliance to another host without its `credentials_ref`. "
                    "At most `appliance_import_max_rows` rows (200,000 by default).",
    ),
    Operation(
        "GET", "/api/v1/appliances/{name}", get_appliance, "getAppliance",
        "Get an appliance", "appliances", "viewer", params=(NAME_PARAM,),
        responses={200: Resp("The appliance.", "Appliance")},
    ),
    Operation(
        "PATCH", "/api/v1/appliances/{name}", update_appliance, "updateAppliance",
        "Change an appliance", "appliances", "admin", params=(NAME_PARAM,),
        body=AppliancePatch,
        responses={200: Resp("The appliance after the change.", "Appliance")},
        errors=(409,),
        description="409 when `base_url` moves it to another host without its "
                    "`credentials_ref` in the same change (the credentials would otherwise "
                    "go to the new host).",
    ),
    Operation(
        "DELETE", "/api/v1/appliances/{name}", delete_appliance, "deleteAppliance",
        "Delete an appliance", "appliances", "admin", params=(NAME_PARAM,),
        responses={204: Resp("Deleted.")}, errors=(409,),
        description="Refused (409) while tasks of any rollout reference it: disable it "
                    "instead.",
    ),
)
