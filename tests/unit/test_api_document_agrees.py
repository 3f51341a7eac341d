"""What the OpenAPI document calls valid, the server accepts, and the reverse, for the
rules found by schemathesis's positive-data check (tests/integration/test_api_schemathesis.py
runs that check against the whole API): integral JSON numbers are integers, percentages
stop at 100, times have a year from 0001, time zones are the server's own list."""

from __future__ import annotations

import re
import zoneinfo

import pytest
from pydantic import ValidationError

from orchestrator.api.app import OPERATIONS
from orchestrator.api.models import (
    DATETIME,
    PERCENT,
    POSITIVE_PERCENT,
    PlanRequest,
    RolloutCreate,
    TokenCreate,
)
from orchestrator.api.openapi import build_document
from orchestrator.api.validation import parse_json


def test_integral_numbers_are_integers() -> None:
    """JSON Schema's integer includes 16275.0 and 1e3: the body reads them as ints, so
    every integer field takes them; other numbers stay floats."""
    body = parse_json('{"a": 16275.0, "b": 1e3, "c": 2.5, "d": -0.0, "e": 1e300}')
    assert body == {"a": 16275, "b": 1000, "c": 2.5, "d": 0, "e": 1e300}
    assert [type(body[k]) for k in "abcde"] == [int, int, float, int, float]
    plan = PlanRequest.model_validate(parse_json(
        '{"target_version": "9.0.1", "strategy": {"waves": [1.0, "10%", 1e2],'
        ' "max_concurrency": 5.0}}'))
    assert plan.strategy_dict()["waves"] == [1, "10%", 100]
    assert plan.strategy_dict()["max_concurrency"] == 5


@pytest.mark.parametrize(("value", "positive", "with_zero"), [
    ("10%", True, True), ("2.5%", True, True), ("100%", True, True),
    ("100.000000%", True, True), ("0.000001%", True, True), ("0.10%", True, True),
    ("0%", False, True), ("0.0%", False, True),
    ("100.1%", False, False), ("108.62%", False, False), ("1000%", False, False),
    ("0.0000001%", False, False), ("10", False, False),
])
def test_percentages_stop_at_100(value: str, positive: bool, with_zero: bool) -> None:
    assert bool(re.fullmatch(POSITIVE_PERCENT, value)) is positive
    assert bool(re.fullmatch(PERCENT, value)) is with_zero
    body = {"target_version": "9.0.1", "strategy": {"waves": [1, value]}}
    if positive:
        PlanRequest.model_validate(body)
    else:
        with pytest.raises(ValidationError, match="percentage"):
            PlanRequest.model_validate(body)


def test_times_start_at_year_one() -> None:
    assert not re.fullmatch(DATETIME, "0000-01-01T00:00:00Z")
    assert re.fullmatch(DATETIME, "0001-01-01T00:00:00Z")
    with pytest.raises(ValidationError, match="should match pattern"):
        RolloutCreate.model_validate({"name": "r", "target_version": "9.0.1",
                                      "schedule_at": "0000-01-01T00:00:00Z"})


def test_time_zones_are_one_component_of_the_server_s_own_zones() -> None:
    doc = build_document(OPERATIONS)
    schemas = doc["components"]["schemas"]
    assert set(schemas["TimeZone"]["enum"]) == zoneinfo.available_timezones()
    ref = {"$ref": "#/components/schemas/TimeZone"}
    assert schemas["WindowCreate"]["properties"]["timezone"] == ref
    assert ref in schemas["ApplianceCreate"]["properties"]["timezone"]["anyOf"]
    [param] = [p for p in doc["paths"]["/api/v1/maintenance-windows:next"]["get"]
               ["parameters"] if p["name"] == "timezone"]
    assert param["schema"] == ref
    assert "x-component" not in str(doc)  # every marker became its $ref


def test_fields_that_may_not_be_null_are_not_documented_nullable() -> None:
    """`not_null` fields (left out: the default; null: refused) and a window's sites or
    tags (at least one of them not empty): as the server refuses them."""
    schemas = build_document(OPERATIONS)["components"]["schemas"]
    expires = schemas["TokenCreate"]["properties"]["expires_in"]
    assert expires["type"] == "string" and "anyOf" not in expires and "default" not in expires
    assert "anyOf" not in schemas["AppliancePatch"]["properties"]["site"]
    assert schemas["WindowCreate"]["anyOf"] == [
        {"required": ["sites"], "properties": {"sites": {"minItems": 1}}},
        {"required": ["tags"], "properties": {"tags": {"minItems": 1}}}]
    with pytest.raises(ValidationError, match="null"):
        TokenCreate.model_validate({"name": "t", "role": "viewer", "expires_in": None})
