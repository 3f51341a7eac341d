"""JSON Schemas of the responses (components of the OpenAPI document)."""

from __future__ import annotations

import zoneinfo
from typing import Any, Final

from orchestrator.domain.states import RolloutState, TaskState, WaveState
from orchestrator.domain.strategy import STRATEGY_TABLE, StrategyKey
from orchestrator.store.webhooks import DELIVERY_STATES, EVENT_TYPES, FORMATS

ROLLOUT_STATES: Final = [str(s) for s in RolloutState]
TASK_STATES: Final = [str(s) for s in TaskState]
WAVE_STATES: Final = [str(s) for s in WaveState]


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Any], *, required: list[str] | None = None,
        additional: bool = False, description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object", "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": additional,
    }
    if description:
        out["description"] = description
    return out


def page_of(name: str) -> dict[str, Any]:
    return obj({
        "items": {"type": "array", "items": ref(name)},
        "next_cursor": nullable({"type": "string"}),
    }, description="A page; pass next_cursor as ?cursor= for the next one (null: last page).")


STR: Final = {"type": "string"}
INT: Final = {"type": "integer"}
TIME: Final = {"type": "string", "format": "date-time"}
COUNTS: Final = {"type": "object", "additionalProperties": {"type": "integer"},
                 "description": "Tasks by state."}
SIZE: Final = {"oneOf": [{"type": "integer"}, {"type": "string"}]}


def strategy_out(key: StrategyKey) -> dict[str, Any]:
    """The response schema of a strategy key's normalised value (StrategyOut), from its row
    of the domain's STRATEGY_TABLE."""
    by_kind: dict[str, dict[str, Any]] = {
        "waves": {"type": "array", "items": SIZE}, "size": SIZE, "choice": STR, "int": INT,
        "seconds": {"type": "number"}, "services": {"type": "array", "items": STR},
        "bool": {"type": "boolean"},
    }
    schema = by_kind[key.kind]
    return nullable(schema) if key.nullable else schema


SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "TimeZone": {"type": "string", "enum": sorted(zoneinfo.available_timezones()),
                 "description": "An IANA time zone this server knows, e.g. Europe/Amsterdam."},
    "Problem": obj({
        "type": {"type": "string", "format": "uri-reference"},
        "title": STR, "status": INT, "detail": STR,
        "errors": {"type": "array", "items": obj({
            "field": STR, "message": STR, "line": INT,
        }, required=["field", "message"])},
    }, required=["type", "title", "status", "detail"], additional=True,
        description="RFC 9457 problem details. Some problems add members: error_id (500, "
                    "503), current_state and allowed_states (409 on a rollout control), "
                    "required_role (403), max_bytes (413), more_errors (422 on an "
                    "import: the bad rows beyond the 100 listed), overlapping_rollouts (each "
                    "{id, name, state}) and overlapping_appliances (names) when a rollout "
                    "overlaps an active one (409 on create, start, retry-failed); "
                    "engine, live_engines, last_heartbeat_at and warning (503 on /readyz "
                    "when the engine this process runs is not live)."),
    "Appliance": obj({
        "id": INT, "name": STR, "base_url": STR, "site": STR,
        "tags": {"type": "array", "items": STR},
        "timezone": nullable(STR), "credentials_ref": nullable(STR),
        "tls_ca_file": nullable(STR), "tls_thumbprint": nullable(STR),
        "current_version": nullable(STR), "last_seen_at": nullable(TIME),
        "enabled": {"type": "boolean"},
    }),
    "AppliancePage": page_of("Appliance"),
    "ImportResult": obj({"imported": INT, "inserted": INT, "updated": INT}),
    "SelectorOut": obj({k: {"type": "array", "items": STR}
                        for k in ("sites", "tags", "names", "current_versions")},
                       required=[]),
    "StrategyOut": obj({key.name: strategy_out(key) for key in STRATEGY_TABLE},
                       description="The normalised strategy: every key present."),
    "Rollout": obj({
        "id": INT, "name": STR, "target_version": STR, "selector": ref("SelectorOut"),
        "strategy": ref("StrategyOut"), "state": {"type": "string", "enum": ROLLOUT_STATES},
        "current_wave": nullable(INT), "schedule_at": nullable(TIME), "created_by": STR,
        "abort_reason": nullable(STR), "created_at": TIME, "started_at": nullable(TIME),
        "finished_at": nullable(TIME), "targeted": INT, "pruned_at": nullable(TIME),
        "engine": ref("EngineStatus"),
    }),
    "EngineStatus": obj({
        "live_engines": {"type": "integer", "minimum": 0, "description": (
            "Engines (`orchestrator run`, `orchestrator serve`) whose heartbeat is fresh. "
            "0: no rollout progresses (a SCHEDULED, RUNNING or WAITING_WINDOW one stays "
            "where it is until an engine runs).")},
        "last_heartbeat_at": nullable({**TIME, "description": (
            "The newest heartbeat (or clean stop) of any engine, live or not; null: no "
            "engine has ever run against this database.")}),
    }, description="Whether any engine is running now, read when the response was made."),
    "Wave": obj({
        "number": INT, "planned_size": INT, "state": {"type": "string", "enum": WAVE_STATES},
        "requires_approval": {"type": "boolean"}, "approved_by": nullable(STR),
        "started_at": nullable(TIME), "finished_at": nullable(TIME),
    }),
    "Counts": obj({
        "by_state": COUNTS,
        "by_wave": {"type": "object", "additionalProperties": COUNTS,
                    "description": "Tasks by state, per wave number."},
        "by_site": {"type": "object", "additionalProperties": COUNTS,
                    "description": "Tasks by state, per site."},
        "waves": {"type": "array", "items": ref("Wave")},
    }),
    "Forecast": obj({"eta": nullable(TIME), "task_seconds": {"type": "number"},
                     "observed_tasks": INT, "basis": STR,
                     "blocked": nullable({"type": "string", "description": (
                         "Why the rollout cannot progress now, e.g. `no engine is running "
                         "(...)`: `eta` is then what it would be if an engine started "
                         "now. null: nothing blocks it.")})}),
    "RolloutPage": page_of("Rollout"),
    "OperationResult": obj({"message": STR, "rollout": ref("Rollout")}),
    "Plan": obj({
        "target_version": STR, "targeted": INT, "selector": ref("SelectorOut"),
        "strategy": ref("StrategyOut"),
        "waves": {"type": "array", "items": obj({
            "number": INT, "size": INT, "requires_approval": {"type": "boolean"},
            "sites": {"type": "array", "items": STR},
            "appliances": {"type": "array", "items": STR},
        })},
    }),
    "Task": obj({
        "id": INT, "appliance": STR, "site": STR, "wave": INT,
        "state": {"type": "string", "enum": TASK_STATES}, "attempt": INT,
        "progress": nullable(INT), "from_version": nullable(STR),
        "final_version": nullable(STR), "error_code": nullable(STR),
        "error_message": nullable(STR), "reconfigure_required": nullable({"type": "boolean"}),
        "dispatched_at": nullable(TIME), "finished_at": nullable(TIME),
    }),
    "TaskPage": page_of("Task"),
    "AuditEntry": obj({
        "id": INT, "at": TIME, "actor": STR,
        "via": {"type": "string", "enum": ["cli", "api", "engine", "schedule"]},
        "action": STR, "target_type": STR, "target_id": nullable(STR),
        "detail": {"type": "object"},
    }),
    "AuditPage": page_of("AuditEntry"),
    "Token": obj({
        "name": STR, "role": {"type": "string", "enum": ["viewer", "operator", "admin"]},
        "created_at": TIME, "last_used_at": nullable(TIME), "revoked_at": nullable(TIME),
        "expires_at": nullable({**TIME, "description": (
            "From then on the token is refused (401); null: it never expires.")}),
    }),
    "TokenList": obj({"items": {"type": "array", "items": ref("Token")}}),
    "Health": obj({"status": {"type": "string", "enum": ["ok"]}, "version": STR}),
    "Ready": obj({"status": {"type": "string", "enum": ["ready"]},
                  "database": {"type": "string", "enum": ["ok"]},
                  "engine": {"type": "string", "enum": ["running", "off"], "description": (
                      "running: this process runs an engine (and it is live, else /readyz "
                      "answers 503); off: served with `--no-engine`.")},
                  "live_engines": {"type": "integer", "minimum": 0, "description": (
                      "Live engines against this database, this process's included.")},
                  "last_heartbeat_at": nullable({**TIME, "description": (
                      "The newest heartbeat (or clean stop) of any engine; null: none has "
                      "ever run.")}),
                  "warning": nullable({"type": "string", "description": (
                      "When no engine is live: says so and since when (nothing progresses "
                      "until one runs); else null.")})}),
    "Window": obj({
        "id": INT, "name": STR, "cron": STR,
        "duration": {"type": "integer", "description": "Seconds."},
        "timezone": STR, "cutoff": {"type": "integer", "description": "Seconds."},
        "sites": {"type": "array", "items": STR}, "tags": {"type": "array", "items": STR},
        "next": {"type": "array", "items": ref("WindowOpening"),
                 "description": "The next openings (in the window's own zone)."},
    }),
    "WindowList": obj({"items": {"type": "array", "items": ref("Window")}}),
    "WindowOpening": obj({
        "window": STR, "timezone": STR, "opens": TIME, "closes": TIME,
        "opens_local": STR, "closes_local": STR,
    }, description="One opening: `opens`/`closes` in UTC, `*_local` on the wall clock of "
                   "`timezone`."),
    "WindowOpenings": obj({
        "site": STR, "covered": {"type": "boolean", "description": (
            "false: no window covers the site (and tags): its appliances are not "
            "restricted.")},
        "items": {"type": "array", "items": ref("WindowOpening")},
    }),
    "Site": obj({
        "name": STR,
        "max_in_flight": nullable({"type": "integer", "minimum": 1, "description": (
            "Installs in flight at the site across every rollout; null: unlimited.")}),
        "in_flight": {"type": "integer", "minimum": 0, "description": (
            "Tasks in DISPATCHING, INSTALLING or VERIFYING at the site now, all "
            "rollouts together, plus the held slots (`held`).")},
        "held": {"type": "integer", "minimum": 0, "description": (
            "Of `in_flight`: tasks that timed out after their install was sent and keep "
            "their slot until an engine sees the appliance idle (or an operator runs "
            "`orchestrator sites release APPLIANCE`).")},
        "appliances": {"type": "integer", "minimum": 0,
                       "description": "Appliances of the inventory at the site."},
        "updated_at": nullable({**TIME, "description": (
            "When the limit was last set or cleared; null: never.")}),
    }, description="A site: every site of the inventory, and any with a limit set."),
    "SiteList": obj({"items": {"type": "array", "items": ref("Site")}}),
    "Webhook": obj({
        "name": STR,
        "url": {"type": "string", "description": (
            "Where the events are POSTed, without its query string (which may hold a "
            "token): `?...` stands for it.")},
        "events": nullable({"type": "array", "items": {"type": "string",
                                                       "enum": list(EVENT_TYPES)},
                            "description": "The event types it receives; null: every one."}),
        "rollout_id": nullable({**INT, "description": "Only this rollout's events; null: "
                                                     "every rollout."}),
        "site": nullable({**STR, "description": "Only events about this site; null: every "
                                               "site."}),
        "secret_ref": nullable({**STR, "description": (
            "Where the signing secret lives (env:NAME or file:PATH), never the secret; "
            "null: the requests are not signed.")}),
        "signed": {"type": "boolean"},
        "format": {"type": "string", "enum": list(FORMATS)},
        "created_by": STR, "created_at": TIME,
        "deliveries": obj({k: {"type": "integer", "minimum": 0}
                           for k in ("pending", "delivered", "failed")},
                          description="Its deliveries by state."),
    }, description="A webhook (admin only)."),
    "WebhookList": obj({"items": {"type": "array", "items": ref("Webhook")}}),
    "WebhookDelivery": obj({
        "id": INT, "webhook": STR,
        "event_id": {**INT, "description": (
            "The event's id, the same on every attempt and redelivery: the "
            "X-Orchestrator-Event-Id header of its request (a task.failed batch's request "
            "carries its first event's).")},
        "event_type": {"type": "string", "enum": list(EVENT_TYPES)},
        "rollout_id": nullable(INT),
        "state": {"type": "string", "enum": list(DELIVERY_STATES), "description": (
            "pending: to be sent (or being sent); delivered; failed: given up on (it can "
            "be redelivered).")},
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": nullable({**TIME, "description": (
            "When a pending delivery is due; null once it is delivered or failed.")}),
        "last_status": nullable({**INT, "description": "The receiver's last HTTP status."}),
        "last_error": nullable(STR), "created_at": TIME,
        "delivered_at": nullable(TIME), "failed_at": nullable(TIME),
        "batch_id": nullable({**INT, "description": (
            "task.failed deliveries sent together in one request share the id of the "
            "batch's first delivery.")}),
    }, description="One event sent (or to be sent) to one webhook."),
    "WebhookDeliveryList": obj({"items": {"type": "array", "items": ref("WebhookDelivery")}}),
    "TaskEvent": obj({
        "id": INT, "task_id": INT, "appliance": STR, "site": STR, "wave": INT,
        "from_state": nullable(STR), "to_state": STR, "at": TIME,
        "detail": {"type": "object"},
    }, description="SSE `event: task` data (the SSE id is `id`)."),
    "Progress": obj({
        "rollout": INT, "state": {"type": "string", "enum": ROLLOUT_STATES},
        "current_wave": nullable(INT), "counts": COUNTS, "in_flight": INT,
        "last_event_id": INT,
    }, description="SSE `event: progress` data: the rollout's state and task counts."),
}


def _extend(base: str, extra: dict[str, Any], required: list[str], description: str) -> None:
    schema = SCHEMAS[base]
    SCHEMAS[f"{base}{'Detail' if base == 'Rollout' else 'Created'}"] = {
        **schema, "properties": {**schema["properties"], **extra},
        "required": [*schema["required"], *required], "description": description,
    }


_extend("Rollout", {"counts": ref("Counts"), "in_flight": INT, "forecast": ref("Forecast")},
        ["counts", "in_flight"],
        "A rollout with its task counts by state, wave and site, and the tasks in flight; "
        "forecast only with ?forecast=true.")
_extend("Token", {"token": STR}, ["token"],
        "The new token: `token` is shown here only, store it now.")
