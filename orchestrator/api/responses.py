"""Response bodies: pydantic models, one class per shape, whose JSON Schemas (serialization
mode) are the OpenAPI document's response components (`component_schemas()`; api/schemas.py
gives them to api/openapi.py as SCHEMAS, next to the request models' of api/models.py).

Conventions of the classes below, as the server writes its answers:
- a field without a default is required; `X | None` is a field the server sends as null;
- `X | SkipJsonSchema[None] = None` is a field the server may leave out but never sends
  as null (not required, not nullable in the document);
- a class's docstring is its component's description (so a class without one has no
  description: notes for the reader are comments);
- objects are closed (`additionalProperties: false`) except the Problem.

Only the classes of RESPONSE_MODELS are components. A model or enum that only they use
(an item of Plan.waves, the domain's state enums, ...) is written inline where it is used,
and pydantic's `title` (on every schema) and `default` (a field that may be left out) are
left out of the document.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema, create_model
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from orchestrator.api.auth import Role
from orchestrator.api.models import EventType
from orchestrator.domain.states import RolloutState, TaskState, WaveState
from orchestrator.domain.strategy import STRATEGY_TABLE, StrategyKey
from orchestrator.store.webhooks import DELIVERY_STATES, FORMATS

REF_TEMPLATE: Final = "#/components/schemas/{model}"

WebhookFormat = Literal["json", "slack"]
DeliveryState = Literal["pending", "delivered", "failed"]
Via = Literal["cli", "api", "engine", "schedule"]  # store.audit.AuditEntry.via
if get_args(WebhookFormat) != FORMATS or get_args(DeliveryState) != DELIVERY_STATES:
    raise AssertionError(  # pragma: no cover - caught by any import
        "api.responses: WebhookFormat and DeliveryState must list store.webhooks' FORMATS "
        "and DELIVERY_STATES")

# The server's own zones (the same list as zoneinfo.available_timezones() at import).
if TYPE_CHECKING:
    ZoneName = str
else:
    ZoneName = Literal[tuple(sorted(zoneinfo.available_timezones()))]

Count = Annotated[int, Field(ge=0)]
TaskCounts = Annotated[dict[str, int], Field(description="Tasks by state.")]
# a count, or a percentage such as "10%" (the normalised value of a wave size)
Size = Annotated[int | str, WithJsonSchema({"oneOf": [{"type": "integer"},
                                                      {"type": "string"}]})]


class Out(BaseModel):
    """A response body (closed object)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeZone(RootModel[ZoneName]):
    """An IANA time zone this server knows, e.g. Europe/Amsterdam."""


# ------------------------------------------------------------------ problems
class ProblemError(Out):
    # one entry of a Problem's `errors` (api/problems.py FieldError)
    field: str
    message: str
    line: int | SkipJsonSchema[None] = None


class Problem(Out):
    """RFC 9457 problem details. Some problems add members: error_id (500, 503),
    current_state and allowed_states (409 on a rollout control), required_role (403),
    max_bytes (413), more_errors (422 on an import: the bad rows beyond the 100 listed),
    overlapping_rollouts (each {id, name, state}) and overlapping_appliances (names) when a
    rollout overlaps an active one (409 on create, start, retry-failed); engine,
    live_engines, last_heartbeat_at and warning (503 on /readyz when the engine this
    process runs is not live)."""

    model_config = ConfigDict(extra="allow")

    type: Annotated[str, Field(json_schema_extra={"format": "uri-reference"})]
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | SkipJsonSchema[None] = None


# ------------------------------------------------------------------ appliances
class LastTask(Out):
    """An appliance's newest task and its outcome."""

    rollout_id: int
    task_id: int
    state: TaskState
    error_code: str | None
    target_version: str
    finished_at: datetime | None


class Appliance(Out):
    id: int
    name: str
    base_url: str
    site: str
    tags: list[str]
    timezone: str | None
    credentials_ref: str | None
    tls_ca_file: str | None
    tls_thumbprint: str | None
    current_version: str | None
    last_seen_at: datetime | None
    enabled: bool
    last_task: Annotated[LastTask | None, Field(description=(
        "The appliance's newest task (of the latest rollout that targeted it); null: no "
        "rollout ever did."))]


class ImportResult(Out):
    imported: int
    inserted: int
    updated: int


# ------------------------------------------------------------------ rollouts
class SelectorOut(Out):
    # only the fields that filter (domain.selector.Selector.to_dict)
    sites: list[str] | SkipJsonSchema[None] = None
    tags: list[str] | SkipJsonSchema[None] = None
    names: list[str] | SkipJsonSchema[None] = None
    current_versions: list[str] | SkipJsonSchema[None] = None


def _strategy_out_type(key: StrategyKey) -> Any:
    """The type of a strategy key's normalised value, from its row of STRATEGY_TABLE."""
    by_kind: dict[str, Any] = {
        "waves": list[Size], "size": Size, "choice": str, "int": int, "seconds": float,
        "services": list[str], "bool": bool, "text": str,
    }
    t = by_kind[key.kind]
    return t | None if key.nullable else t


# The normalised strategy of a rollout, built from the domain's STRATEGY_TABLE: one required
# field per key, in the table's order.
if TYPE_CHECKING:
    StrategyOut = Out
else:
    StrategyOut = create_model(
        "StrategyOut", __base__=Out, __module__=__name__,
        __doc__="The normalised strategy: every key present.",
        **{key.name: (_strategy_out_type(key), ...) for key in STRATEGY_TABLE})


class EngineStatus(Out):
    """Whether any engine is running now, read when the response was made."""

    live_engines: Annotated[int, Field(ge=0, description=(
        "Engines (`orchestrator run`, `orchestrator serve`) whose heartbeat is fresh. "
        "0: no rollout progresses (a SCHEDULED, RUNNING or WAITING_WINDOW one stays "
        "where it is until an engine runs)."))]
    last_heartbeat_at: Annotated[datetime | None, Field(description=(
        "The newest heartbeat (or clean stop) of any engine, live or not; null: no "
        "engine has ever run against this database."))]


class Rollout(Out):
    id: int
    name: str
    target_version: str
    selector: SelectorOut
    strategy: StrategyOut
    state: RolloutState
    current_wave: int | None
    schedule_at: datetime | None
    created_by: str
    abort_reason: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    targeted: int
    pruned_at: datetime | None
    engine: EngineStatus


class Wave(Out):
    number: int
    planned_size: int
    state: WaveState
    requires_approval: bool
    approved_by: str | None
    started_at: datetime | None
    finished_at: datetime | None


class Counts(Out):
    by_state: TaskCounts
    by_wave: Annotated[dict[str, TaskCounts], Field(
        description="Tasks by state, per wave number.")]
    by_site: Annotated[dict[str, TaskCounts], Field(description="Tasks by state, per site.")]
    waves: list[Wave]


class Forecast(Out):
    eta: datetime | None
    task_seconds: float
    observed_tasks: int
    basis: str
    blocked: Annotated[str | None, Field(description=(
        "Why the rollout cannot progress now, e.g. `no engine is running (...)`: `eta` is "
        "then what it would be if an engine started now. null: nothing blocks it."))]


# ------------------------------------------------------------------ pre-flight
PreflightResultName = Literal["ok", "warn", "fail", "skip"]


class PreflightCounts(Out):
    # appliances by pre-flight result (store.preflight; docs/preflight.md)
    ok: Count
    warn: Count
    fail: Count
    skip: Count


class PreflightRun(Out):
    """One pre-flight run of a rollout (docs/preflight.md)."""

    id: int
    trigger: Annotated[Literal["start", "window", "operator"], Field(description=(
        "start: the engine's, before the first install; window: the engine's, "
        "`preflight_lead_seconds` before a window opens (`preflight: required`); "
        "operator: the CLI's or the API's."))]
    state: Annotated[Literal["requested", "running", "finished"], Field(description=(
        "requested: no process works on it yet (an engine takes it); running; finished."))]
    requested_by: str
    total: Annotated[int, Field(ge=0, description="Appliances it checks.")]
    done: Annotated[int, Field(ge=0, description="Appliances checked so far.")]
    counts: PreflightCounts
    left_out: Annotated[int, Field(ge=0, description=(
        "Tasks it turned SKIPPED (`preflight: required`: the appliances that fail)."))]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class PreflightCode(Out):
    # one problem of a PreflightSummary: its result, its code, how many appliances
    result: PreflightResultName
    code: str
    appliances: Count


class PreflightSummary(Out):
    """The latest pre-flight result of each checked appliance, counted per result and per
    problem (result and reason code, worst first); `run`: the latest run."""

    counts: PreflightCounts
    codes: list[PreflightCode]
    checked_at: datetime | None
    run: PreflightRun | None


class PreflightItem(Out):
    # one appliance's latest pre-flight result
    appliance: str
    site: str
    result: PreflightResultName
    code: Annotated[str | None, Field(description=(
        "The reason code (UNREACHABLE, TLS, CREDENTIALS, SERVICES_DOWN, ...); null: ok."))]
    message: Annotated[str, Field(description="The appliance's own words, when it gave any.")]
    current_version: str | None
    checked_at: datetime
    run_id: int | None


class PreflightResults(Out):
    """A rollout's latest pre-flight results: the summary (null: never checked) and a page
    of appliances, by appliance id; pass next_cursor as ?cursor= for the next one."""

    rollout_id: int
    summary: PreflightSummary | None
    items: list[PreflightItem]
    next_cursor: str | None


class PreflightAccepted(Out):
    """The pre-flight is asked for: an engine runs it (`run.state` requested, then
    running); GET the Location for its results."""

    message: str
    run: PreflightRun


# ------------------------------------------------------------------ adaptive pace
class Pace(Out):
    """A rollout's adaptive pace (strategy `pace: adaptive`; docs/pace.md): the installs
    in flight it allows now, in place of `max_concurrency`, and when and why it last
    changed."""

    concurrency: Annotated[int, Field(ge=1, description="Installs in flight allowed now.")]
    reason: Annotated[str | None, Field(description=(
        "Why it changed last (or where it started), e.g. `healthy (...)`."))]
    changed_at: datetime | None
    evaluated_at: Annotated[datetime | None, Field(description=(
        "When it was last decided (each `pace_interval_seconds`)."))]


class RolloutDetail(Rollout):
    """A rollout with its task counts by state, wave and site, and the tasks in flight;
    forecast only with ?forecast=true."""

    counts: Counts
    in_flight: int
    forecast: Forecast | SkipJsonSchema[None] = None
    preflight: Annotated[PreflightSummary | None, Field(description=(
        "Its latest pre-flight results, counted (null: never checked)."))]
    pace: Annotated[Pace | None, Field(description=(
        "Its adaptive pace now (null: the pace is off, or has not started yet)."))]


class RolloutSummary(Rollout):
    """A rollout of the list, with its task counts by state; forecast only with
    ?forecast=true (null for a terminal rollout)."""

    counts: TaskCounts
    forecast: Forecast | None = None


class OperationResult(Out):
    message: str
    rollout: Rollout


class PlanWave(Out):
    # one wave of a Plan (store.rollouts.Plan.to_dict)
    number: int
    size: int
    requires_approval: bool
    sites: list[str]
    appliances: list[str]


class Plan(Out):
    target_version: str
    targeted: int
    selector: SelectorOut
    strategy: StrategyOut
    waves: list[PlanWave]


# ------------------------------------------------------------------ tasks and events
class Task(Out):
    id: int
    appliance: str
    site: str
    wave: int
    state: TaskState
    attempt: int
    progress: int | None
    from_version: str | None
    final_version: str | None
    error_code: str | None
    error_message: str | None
    reconfigure_required: bool | None
    dispatched_at: datetime | None
    finished_at: datetime | None


class TaskEvent(Out):
    """SSE `event: task` data (the SSE id is `id`)."""

    id: int
    task_id: int
    appliance: str
    site: str
    wave: int
    from_state: str | None
    to_state: str
    at: datetime
    detail: dict[str, Any]


class Progress(Out):
    """SSE `event: progress` data: the rollout's state, task counts and adaptive pace."""

    rollout: int
    state: RolloutState
    current_wave: int | None
    counts: TaskCounts
    in_flight: int
    last_event_id: int
    pace: Annotated[Pace | None, Field(description=(
        "The adaptive pace now (null: off, or not started yet)."))]


# ------------------------------------------------------------------ audit, tokens
class AuditEntry(Out):
    id: int
    at: datetime
    actor: str
    via: Via
    action: str
    target_type: str
    target_id: str | None
    detail: dict[str, Any]


class Token(Out):
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: Annotated[datetime | None, Field(description=(
        "From then on the token is refused (401); null: it never expires."))]


class TokenCreated(Token):
    """The new token: `token` is shown here only, store it now."""

    token: str


class TokenList(Out):
    items: list[Token]


class Me(Out):
    """The token that sent the request (never the token itself)."""

    name: str
    role: Role
    expires_at: Annotated[datetime | None, Field(
        description="null: the token never expires.")]


class StreamTicket(Out):
    """A single-use stream ticket of the caller's token."""

    ticket: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{20,128}$", description=(
        "Pass as `?ticket=` to GET /api/v1/rollouts/{id}/events: once, before "
        "`expires_at`."))]
    expires_at: datetime
    expires_in_seconds: Annotated[int, Field(ge=1)]


# ------------------------------------------------------------------ health
class Health(Out):
    status: Literal["ok"]
    version: str


class Ready(Out):
    status: Literal["ready"]
    database: Literal["ok"]
    engine: Annotated[Literal["running", "off"], Field(description=(
        "running: this process runs an engine (and it is live, else /readyz answers 503); "
        "off: served with `--no-engine`."))]
    live_engines: Annotated[int, Field(ge=0, description=(
        "Live engines against this database, this process's included."))]
    last_heartbeat_at: Annotated[datetime | None, Field(description=(
        "The newest heartbeat (or clean stop) of any engine; null: none has ever run."))]
    warning: Annotated[str | None, Field(description=(
        "When no engine is live: says so and since when (nothing progresses until one "
        "runs); else null."))]


# ------------------------------------------------------------------ maintenance windows
class WindowOpening(Out):
    """One opening: `opens`/`closes` in UTC, `*_local` on the wall clock of `timezone`."""

    window: str
    timezone: str
    opens: datetime
    closes: datetime
    opens_local: str
    closes_local: str


class Window(Out):
    id: int
    name: str
    cron: str
    duration: Annotated[int, Field(description="Seconds.")]
    timezone: str
    cutoff: Annotated[int, Field(description="Seconds.")]
    sites: list[str]
    tags: list[str]
    next: Annotated[list[WindowOpening], Field(
        description="The next openings (in the window's own zone).")]


class WindowList(Out):
    items: list[Window]


class WindowOpenings(Out):
    site: str
    covered: Annotated[bool, Field(description=(
        "false: no window covers the site (and tags): its appliances are not restricted."))]
    items: list[WindowOpening]


# ------------------------------------------------------------------ sites
class Site(Out):
    """A site: every site of the inventory, and any with a limit set."""

    name: str
    max_in_flight: Annotated[Annotated[int, Field(ge=1)] | None, Field(description=(
        "Installs in flight at the site across every rollout; null: unlimited."))]
    in_flight: Annotated[int, Field(ge=0, description=(
        "Tasks in DISPATCHING, INSTALLING or VERIFYING at the site now, all rollouts "
        "together, plus the held slots (`held`)."))]
    held: Annotated[int, Field(ge=0, description=(
        "Of `in_flight`: tasks that timed out after their install was sent and keep their "
        "slot until an engine sees the appliance idle (or an operator runs "
        "`orchestrator sites release APPLIANCE`)."))]
    appliances: Annotated[int, Field(ge=0, description=(
        "Appliances of the inventory at the site."))]
    updated_at: Annotated[datetime | None, Field(description=(
        "When the limit was last set or cleared; null: never."))]


class SiteList(Out):
    items: list[Site]


# ------------------------------------------------------------------ webhooks
class DeliveryCounts(Out):
    """Its deliveries by state."""

    pending: Count
    delivered: Count
    failed: Count


class Webhook(Out):
    """A webhook (admin only)."""

    name: str
    url: Annotated[str, Field(description=(
        "Where the events are POSTed, without its query string (which may hold a token): "
        "`?...` stands for it."))]
    events: Annotated[list[EventType] | None, Field(
        description="The event types it receives; null: every one.")]
    rollout_id: Annotated[int | None, Field(
        description="Only this rollout's events; null: every rollout.")]
    site: Annotated[str | None, Field(
        description="Only events about this site; null: every site.")]
    secret_ref: Annotated[str | None, Field(description=(
        "Where the signing secret lives (env:NAME or file:PATH), never the secret; null: "
        "the requests are not signed."))]
    signed: bool
    format: WebhookFormat
    created_by: str
    created_at: datetime
    deliveries: DeliveryCounts


class WebhookList(Out):
    items: list[Webhook]


class WebhookDelivery(Out):
    """One event sent (or to be sent) to one webhook."""

    id: int
    webhook: str
    event_id: Annotated[int, Field(description=(
        "The event's id, the same on every attempt and redelivery: the "
        "X-Orchestrator-Event-Id header of its request (a task.failed batch's request "
        "carries its first event's)."))]
    event_type: EventType
    rollout_id: int | None
    state: Annotated[DeliveryState, Field(description=(
        "pending: to be sent (or being sent); delivered; failed: given up on (it can be "
        "redelivered)."))]
    attempts: Count
    next_attempt_at: Annotated[datetime | None, Field(description=(
        "When a pending delivery is due; null once it is delivered or failed."))]
    last_status: Annotated[int | None, Field(description="The receiver's last HTTP status.")]
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    batch_id: Annotated[int | None, Field(description=(
        "task.failed deliveries sent together in one request share the id of the batch's "
        "first delivery."))]


class WebhookDeliveryList(Out):
    items: list[WebhookDelivery]


# ------------------------------------------------------------------ pages
PAGE_DESCRIPTION: Final = ("A page; pass next_cursor as ?cursor= for the next one (null: "
                           "last page).")


class AppliancePage(Out):
    __doc__ = PAGE_DESCRIPTION
    items: list[Appliance]
    next_cursor: str | None


class RolloutPage(Out):
    __doc__ = PAGE_DESCRIPTION
    items: list[RolloutSummary]
    next_cursor: str | None


class TaskPage(Out):
    __doc__ = PAGE_DESCRIPTION
    items: list[Task]
    next_cursor: str | None


class AuditPage(Out):
    __doc__ = PAGE_DESCRIPTION
    items: list[AuditEntry]
    next_cursor: str | None


# The components, by their names in the document (operations name them: Resp(..., "Task")).
RESPONSE_MODELS: Final[tuple[type[BaseModel], ...]] = (
    PreflightRun, PreflightSummary, PreflightResults, PreflightAccepted,
    TimeZone, Problem,
    Appliance, LastTask, AppliancePage, ImportResult,
    SelectorOut, StrategyOut, EngineStatus, Rollout, RolloutDetail, RolloutSummary,
    RolloutPage, Wave, Counts, Forecast, Pace, OperationResult, Plan,
    Task, TaskPage, TaskEvent, Progress,
    AuditEntry, AuditPage, Token, TokenCreated, TokenList, Me, StreamTicket,
    Health, Ready,
    Window, WindowList, WindowOpening, WindowOpenings, Site, SiteList,
    Webhook, WebhookList, WebhookDelivery, WebhookDeliveryList,
)


# ------------------------------------------------------------------ the components
_ONE_NEWLINE: Final = re.compile(r"(?<!\n)\n(?!\n)")


def _clean(schema: Any) -> Any:
    """A schema without pydantic's `title` and `default` keywords (property NAMES such as
    Problem's `title` stay: only the values of `properties` are schemas)."""
    if isinstance(schema, list):
        return [_clean(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("title", "default"):
            continue
        if key == "description":  # a docstring's lines joined (paragraphs stay apart)
            out[key] = _ONE_NEWLINE.sub(" ", value)
        elif key in ("properties", "$defs"):
            out[key] = {name: _clean(s) for name, s in value.items()}
        elif key in ("enum", "const", "required", "examples"):
            out[key] = value
        else:
            out[key] = _clean(value)
    return out


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """`schema` with every $ref to one of `defs` replaced by that definition."""
    if isinstance(schema, list):
        return [_inline(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    target = schema.get("$ref", "")
    name = target.rsplit("/", 1)[-1] if target.startswith(REF_TEMPLATE[:-7]) else None
    if name in defs:
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return _inline({**defs[name], **siblings}, defs)
    return {k: _inline(v, defs) if k not in ("enum", "const") else v
            for k, v in schema.items()}


def component_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each of RESPONSE_MODELS, by its class name: what the document's
    components say the server answers."""
    _, top = models_json_schema([(m, "serialization") for m in RESPONSE_MODELS],
                                ref_template=REF_TEMPLATE)
    defs = {name: _clean(s) for name, s in top.get("$defs", {}).items()}
    names = {m.__name__ for m in RESPONSE_MODELS}
    missing = names - set(defs)
    if missing:  # pragma: no cover - pydantic names a definition after its class
        raise AssertionError(f"no JSON Schema for {sorted(missing)}")
    helpers = {name: s for name, s in defs.items() if name not in names}
    return {name: _inline(defs[name], helpers) for name in sorted(names)}
