"""The OpenAPI document's response components are the JSON Schemas of the response models
(orchestrator/api/responses.py), one definition per shape and none written by hand; they
say what the server writes (required fields, null where it sends null, closed objects),
without pydantic's own habits (`title`, `default`). The integration tests check every
answer of the API against the document (test_api*.py, schemathesis); here the models
also read what the store's objects write."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from orchestrator.api import responses
from orchestrator.api.app import OPERATIONS
from orchestrator.api.models import BODY_MODELS
from orchestrator.api.openapi import build_document
from orchestrator.api.problems import FieldError, Problem
from orchestrator.domain.selector import parse_selector
from orchestrator.domain.states import RolloutState, TaskState
from orchestrator.domain.strategy import STRATEGY_KEYS, parse_strategy
from orchestrator.store.engines import EngineStatus
from orchestrator.store.events import TaskEvent
from orchestrator.store.forecast import Forecast
from orchestrator.store.pace import PaceState
from orchestrator.store.preflight import ApplianceResult, PreflightRun
from orchestrator.store.preflight import Summary as PreflightSummary
from orchestrator.store.rollouts import Rollout
from orchestrator.store.tasks import TaskRow
from orchestrator.store.tokens import TokenInfo

RESPONSE_NAMES = {m.__name__ for m in responses.RESPONSE_MODELS}
NOW = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    schemas: dict[str, Any] = build_document(OPERATIONS)["components"]["schemas"]
    return schemas


def _schemas(schema: Any) -> Iterator[dict[str, Any]]:
    """Every schema within `schema` (the values of `properties`, not their names)."""
    if isinstance(schema, list):
        for item in schema:
            yield from _schemas(item)
    elif isinstance(schema, dict):
        yield schema
        for key, value in schema.items():
            if key == "properties":
                for prop in value.values():
                    yield from _schemas(prop)
            elif key not in ("enum", "const", "required", "examples"):
                yield from _schemas(value)


def test_every_component_is_a_model(components: dict[str, Any]) -> None:
    assert set(components) == RESPONSE_NAMES | {m.__name__ for m in BODY_MODELS}
    generated = responses.component_schemas()
    assert {name: components[name] for name in RESPONSE_NAMES} == generated
    # every response an operation documents names a model (or is not JSON)
    for op in OPERATIONS:
        for resp in op.responses.values():
            if isinstance(resp.schema, str):
                assert resp.schema in RESPONSE_NAMES, (op.operation_id, resp.schema)


def test_pydantic_s_habits_stay_out_of_the_document(components: dict[str, Any]) -> None:
    for name in RESPONSE_NAMES:
        for schema in _schemas(components[name]):
            assert "title" not in schema and "default" not in schema, (name, schema)
            assert "$defs" not in schema, name
            if schema.get("type") == "object" and "properties" in schema:
                # closed objects, except the problem's added members
                assert schema["additionalProperties"] is (schema is components["Problem"]), \
                    name


def test_the_components_say_what_the_server_writes(components: dict[str, Any]) -> None:
    rollout, detail = components["Rollout"], components["RolloutDetail"]
    assert rollout["required"] == list(rollout["properties"])
    assert detail["required"] == [*rollout["required"], "counts", "in_flight", "preflight",
                                  "pace"]
    # the pace: null while off or not started, else its own closed object
    assert detail["properties"]["pace"]["anyOf"] == [
        {"$ref": "#/components/schemas/Pace"}, {"type": "null"}]
    assert components["Progress"]["properties"]["pace"]["anyOf"] == [
        {"$ref": "#/components/schemas/Pace"}, {"type": "null"}]
    assert components["Pace"]["required"] == [
        "concurrency", "reason", "changed_at", "evaluated_at"]
    # forecast: only with ?forecast=true, never null
    assert detail["properties"]["forecast"] == {"$ref": "#/components/schemas/Forecast"}
    assert rollout["properties"]["state"] == {
        "type": "string", "enum": [str(s) for s in RolloutState]}
    assert components["Task"]["properties"]["state"]["enum"] == [str(s) for s in TaskState]
    assert components["Task"]["properties"]["progress"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert components["Token"]["properties"]["expires_at"] == {
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}],
        "description": "From then on the token is refused (401); null: it never expires."}
    selector = components["SelectorOut"]
    assert "required" not in selector and "anyOf" not in str(selector)
    assert list(components["StrategyOut"]["properties"]) == list(STRATEGY_KEYS)
    problem = components["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail"]
    assert problem["properties"]["type"] == {"type": "string", "format": "uri-reference"}
    assert problem["properties"]["errors"]["items"]["required"] == ["field", "message"]
    assert "overlapping_rollouts" in problem["description"]
    assert components["AppliancePage"]["properties"]["next_cursor"] == {
        "anyOf": [{"type": "string"}, {"type": "null"}]}
    assert "\n" not in components["Problem"]["description"]  # docstrings read as text


def _reads(model: type[BaseModel], data: dict[str, Any]) -> None:
    model.model_validate(data)


def test_the_models_read_what_the_store_writes() -> None:
    engine = EngineStatus(0, None, 30.0).to_dict()
    rollout = Rollout(
        7, "9.0.1 to ams", "9.0.1-20020", parse_selector({"sites": ["ams"]}),
        parse_strategy({"waves": [1, "50%", "100%"]}), RolloutState.RUNNING, 1, None,
        "ops", None, NOW, NOW, None, 12)
    _reads(responses.Rollout, {**rollout.to_dict(), "engine": engine})
    _reads(responses.RolloutDetail, {
        **rollout.to_dict(), "engine": engine, "in_flight": 1,
        "counts": {"by_state": {"RUNNING": 1}, "by_wave": {"1": {"RUNNING": 1}},
                   "by_site": {"ams": {"RUNNING": 1}}, "waves": []},
        "forecast": Forecast(None, 900.0, 0, "default", "no engine is running").to_dict(),
        "preflight": None, "pace": None})
    pace = PaceState(15, "healthy (2 succeeded, 0 failed in the interval)", NOW, NOW)
    _reads(responses.Pace, pace.to_dict())
    _reads(responses.Progress, {"rollout": 7, "state": "RUNNING", "current_wave": 1,
                                "counts": {"RUNNING": 1}, "in_flight": 1,
                                "last_event_id": 9, "pace": pace.to_dict()})
    run = PreflightRun(4, 7, "start", "engine", None, 12, 12, {"ok": 11, "fail": 1}, 1, None,
                       NOW, NOW, NOW, NOW)
    checked = PreflightSummary({"ok": 11, "fail": 1}, [("fail", "CREDENTIALS", 1)], NOW, run)
    _reads(responses.PreflightSummary, checked.to_dict())
    _reads(responses.PreflightResults, {
        "rollout_id": 7, "summary": checked.to_dict(), "next_cursor": None,
        "items": [ApplianceResult(1, "vr-ams-01", "ams", "fail", "CREDENTIALS",
                                  "login refused", "9.0.0", NOW, 4).to_dict()]})
    _reads(responses.PreflightAccepted, {"message": "asked for", "run": run.to_dict()})
    _reads(responses.Task, TaskRow(
        3, "vr-ams-01", "ams", 1, "INSTALLING", 1, 40, "9.0.0", None, None, None, None,
        NOW, None).to_dict())
    _reads(responses.TaskEvent, TaskEvent(
        5, 3, "vr-ams-01", "ams", 1, None, "PENDING", NOW, {}).to_dict())
    _reads(responses.Token, TokenInfo(1, "grafana", "viewer", NOW, None, None).to_dict())
    _reads(responses.Problem, Problem(
        409, "overlaps", errors=[FieldError("body.selector", "overlaps")],
        overlapping_rollouts=[{"id": 1, "name": "r", "state": "RUNNING"}]).body())


def test_a_field_the_model_does_not_know_is_refused() -> None:
    """What keeps a handler's new field from being left out of the document: the
    components are closed, and so are the models."""
    row = TokenInfo(1, "grafana", "viewer", NOW, None, None).to_dict()
    with pytest.raises(ValidationError, match="hash"):
        responses.Token.model_validate({**row, "hash": "..."})
    with pytest.raises(ValidationError, match="expires_at"):
        responses.Token.model_validate({k: v for k, v in row.items() if k != "expires_at"})
