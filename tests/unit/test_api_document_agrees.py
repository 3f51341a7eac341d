"""What the OpenAPI document calls valid, the server accepts, and the reverse, for the
rules found by schemathesis's positive-data check (tests/integration/test_api_schemathesis.py
runs that check against the whole API): integral JSON numbers are integers, percentages
stop at 100, times have a year from 0001, time zones are the server's own list; base URLs,
credentials references, token lifetimes, window durations and cron expressions as the
domain reads them (under the default settings); a state of things that refuses a valid
body is 409; every event of the SSE stream has its documented schema."""

from __future__ import annotations

import json
import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.api.app import OPERATIONS
from orchestrator.api.events import sse, task_event
from orchestrator.api.models import (
    DATETIME,
    DOC_APPLIANCE_URL,
    DOC_CREDENTIALS_REF,
    DOC_CRON,
    DOC_EXPIRY,
    DOC_REFUSED_HOSTS,
    DOC_WEBHOOK_URL,
    DOC_WINDOW_CUTOFF,
    DOC_WINDOW_DURATION,
    LONGEST_WINDOW,
    PERCENT,
    POSITIVE_PERCENT,
    TAG_LIST,
    PlanRequest,
    RolloutCreate,
    TokenCreate,
    number_range,
)
from orchestrator.api.openapi import build_document
from orchestrator.api.stream_schema import STREAM_EVENT
from orchestrator.api.validation import parse_json
from orchestrator.domain.inventory import (
    STRICT_POLICY,
    check_credentials_ref,
    parse_tags,
    validate_record,
)
from orchestrator.domain.windows import (
    MAX_DURATION,
    WindowError,
    parse_cron,
    parse_duration,
    parse_window,
)
from orchestrator.inventory import target_policy
from orchestrator.settings import Settings
from orchestrator.store.events import TaskEvent
from orchestrator.store.tokens import parse_expiry
from orchestrator.store.webhooks import WebhookError, check_secret_ref, check_url


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


# ---------------------------------------------------------------- the admin operations
# Where the domain checks more than a model (a URL's host, a credentials reference under the
# default settings, a duration's total), the document gives an exact pattern (`DOC_*`):
# every value it admits, the domain accepts. Drawn from the pattern itself.
PATTERNS = settings(max_examples=300, suppress_health_check=[HealthCheck.filter_too_much])


@pytest.mark.parametrize(("low", "high"), [
    (0, 9), (1, 31), (0, 59), (0, 255), (60, 999_999), (1, 604_800), (0, 65_535),
    (99, 100), (123, 4567),
])
def test_number_ranges_are_exact(low: int, high: int) -> None:
    pattern = re.compile(number_range(low, high))
    for n in [*range(0, min(high + 50, 20_000)), high - 1, high, high + 1, 10 * high]:
        assert bool(pattern.fullmatch(str(n))) is (low <= n <= high), n
    assert not pattern.fullmatch(f"0{max(low, 1)}")  # no leading zeros


@PATTERNS
@given(st.from_regex(DOC_APPLIANCE_URL, fullmatch=True).filter(
    lambda u: len(u) <= 2048 and not re.match(DOC_REFUSED_HOSTS, u)))
def test_documented_base_urls_are_accepted(url: str) -> None:
    """https only, a host that is neither loopback, link-local nor a metadata service (the
    strict policy of the default settings)."""
    assert target_policy(Settings()) == STRICT_POLICY
    assert validate_record({"name": "a", "base_url": url, "site": "s"})[1] == []


@pytest.mark.parametrize("url", [
    "http://vr-1.example.net/api", "https://127.0.0.1/api", "https://LOCALHOST./x",
    "https://169.254.169.254/x", "https://metadata.google.internal/x", "https://0.0.0.0/x",
    "https://224.0.0.1/x", "https://127.1/x", "https://h:65536/x", "https://u:p@h/x",
    "https://h/x?q=1", "https://h/x#f", "https://[::1]/x", "https://h/a b",
    "https://h/a\u3000b", "https://-h/x", "https://h_/x",
])
def test_refused_base_urls_are_not_documented(url: str) -> None:
    assert not re.fullmatch(DOC_APPLIANCE_URL, url) or re.match(DOC_REFUSED_HOSTS, url)


# hosts and ports that urlsplit reads leniently (it ignores what follows a ']', takes "h:"
# for h); the first one schemathesis sent, and the server created the appliance (201)
BAD_AUTHORITIES = [
    ("https://[3000:0:0::]*", "invalid host"), ("https://[3000::1]x:443/api", "invalid host"),
    ("https://vr-1.example.net*/api", "not a host name"), ("https://h_/x", "not a host name"),
    ("https://b\u00fccher.example/api", "xn--"), ("https://vr-1:/api", "invalid port"),
    ("https://[3000::1]:/api", "invalid port"), ("https://vr-1:0443/api", "invalid port"),
    ("https://vr-1:99999/api", "invalid port"), ("https://1.2.3.999/api", "not an IPv4"),
    ("https://[3000::1", "not a valid URL"),
]


@pytest.mark.parametrize(("url", "why"), BAD_AUTHORITIES)
def test_undocumented_hosts_and_ports_are_refused(url: str, why: str) -> None:
    """The reverse of the tests above: a base URL or webhook URL whose host or port the
    document's pattern does not admit is refused, with a reason that names it."""
    assert not re.fullmatch(DOC_APPLIANCE_URL, url)
    assert not re.fullmatch(DOC_WEBHOOK_URL, url)
    errors = validate_record({"name": "a", "base_url": url, "site": "s"})[1]
    assert len(errors) == 1 and errors[0].startswith("base_url:"), errors
    assert why in errors[0], errors
    with pytest.raises(WebhookError, match=re.escape(why)):
        check_url(url)


@PATTERNS
@given(st.from_regex(DOC_WEBHOOK_URL, fullmatch=True).filter(lambda u: len(u) <= 2048))
def test_documented_webhook_urls_are_accepted(url: str) -> None:
    assert check_url(url) == url


@PATTERNS
@given(st.from_regex(DOC_CREDENTIALS_REF, fullmatch=True).filter(lambda r: len(r) <= 1029))
def test_documented_credentials_refs_are_accepted(ref: str) -> None:
    """env:APPLIANCE_* or a file inside /etc/orchestrator/secrets (the default settings),
    for an appliance's credentials and a webhook's secret alike."""
    assert check_credentials_ref(ref) == ref
    assert check_secret_ref(ref) == ref


@pytest.mark.parametrize("ref", [
    "env:HOME", "env:ORCHESTRATOR_DATABASE_URL", "file:/etc/shadow",
    "file:/etc/orchestrator/secrets", "file:/etc/orchestrator/secrets/../x",
    "file:/etc/orchestrator/secrets/./", "file:/etc/orchestrator/secrets/a b",
])
def test_refused_credentials_refs_are_not_documented(ref: str) -> None:
    assert not re.fullmatch(DOC_CREDENTIALS_REF, ref)


@PATTERNS
@given(st.from_regex(DOC_EXPIRY, fullmatch=True))
def test_documented_token_lifetimes_are_accepted(text: str) -> None:
    assert timedelta(minutes=1) <= parse_expiry(text) <= timedelta(days=3650)


@pytest.mark.parametrize("text", ["0d", "59s", "0h30s", "3651d", "522w", "87601h", "1000000m",
                                  "30D", "1h1d"])
def test_token_lifetimes_out_of_range_are_not_documented(text: str) -> None:
    assert not re.fullmatch(DOC_EXPIRY, text)


@pytest.mark.parametrize("text", ["1m", "60s", "30d", "3650d", "521w", "87600h", "1d12h",
                                  "2w3d4h5m6s", "99w999d"])
def test_token_lifetimes_in_range_are_documented(text: str) -> None:
    assert re.fullmatch(DOC_EXPIRY, text)
    parse_expiry(text)


@PATTERNS
@given(st.one_of(st.from_regex(DOC_WINDOW_DURATION, fullmatch=True),
                 st.integers(1, LONGEST_WINDOW)))
def test_documented_window_durations_are_accepted(value: str | int) -> None:
    """Above 0, at most 7 days; a cutoff: under 7 days (shorter than its window's
    duration: a rule between two values, the one the pattern cannot say)."""
    assert timedelta(0) < parse_duration(value) <= MAX_DURATION
    assert re.fullmatch(DOC_WINDOW_DURATION, "7d") and not re.fullmatch(DOC_WINDOW_CUTOFF, "7d")


@PATTERNS
@given(st.one_of(st.from_regex(DOC_WINDOW_CUTOFF, fullmatch=True),
                 st.integers(0, LONGEST_WINDOW - 1)))
def test_documented_window_cutoffs_are_accepted(value: str | int) -> None:
    assert timedelta(0) <= parse_duration(value) < MAX_DURATION


def _ranges_ascend(expression: str) -> bool:
    """Whether every range `a-b` of the expression has b >= a (names read as numbers)."""
    names = {n: i for i, n in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
    names |= {n: i + 1 for i, n in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL",
                                              "AUG", "SEP", "OCT", "NOV", "DEC"))}

    def number(text: str) -> int:
        return int(text) if text.isdigit() else names[text]

    for term in re.split("[ ,]", expression.upper()):
        first, sep, last = term.split("/")[0].split("#")[0].partition("-")
        if sep and number(last) < number(first):
            return False
    return True


@settings(max_examples=100, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.from_regex(DOC_CRON, fullmatch=True).filter(lambda c: len(c) <= 200))
def test_documented_cron_expressions_are_accepted(expression: str) -> None:
    """But for the rules between two values, which createWindow and updateWindow are
    exempt from (tests/integration/test_api_schemathesis.py): a range's end before its
    start, a day that the months of the expression do not have."""
    if not _ranges_ascend(expression):
        return
    try:
        parse_cron(expression)
    except ValueError as exc:
        assert "never occurs" in str(exc) or "day-of-month" in str(exc), exc


def test_window_rules_between_two_values_stay_out_of_the_document() -> None:
    """Documented valid, refused 422: what createWindow and updateWindow are exempt from in
    the schemathesis passes, and nothing else."""
    doc = build_document(OPERATIONS)
    validator = jsonschema_rs.Draft202012Validator(
        {**doc["components"]["schemas"]["WindowCreate"], "components": doc["components"]})
    window = {"name": "w", "cron": "0 22 * * *", "duration": "4h", "timezone": "UTC",
              "sites": ["ams"]}
    assert validator.is_valid(window)
    parse_window(window)
    for change in ({"cutoff": "4h"}, {"cutoff": 14_400}, {"cron": "5-3 * * * *"},
                   {"cron": "0 0 31 2 *"}, {"cron": "0 0 * 2 MON#5"}):
        assert validator.is_valid({**window, **change}), change
        with pytest.raises(WindowError):
            parse_window({**window, **change}, now=datetime(2026, 1, 1, tzinfo=UTC))


@PATTERNS
@given(st.from_regex(TAG_LIST, fullmatch=True))
def test_documented_tag_texts_are_accepted(text: str) -> None:
    parse_tags(text)


def test_import_rows_take_null_and_empty_optional_fields() -> None:
    """A JSON import row: an ApplianceCreate whose optional fields may also be null or ""
    (an inventory file's empty cell), tags a list or one ';'-separated text."""
    doc = build_document(OPERATIONS)
    body = doc["paths"]["/api/v1/appliances:import"]["post"]["requestBody"]["content"]
    row = {**body["application/json"]["schema"]["items"], "components": doc["components"]}
    validator = jsonschema_rs.Draft202012Validator(row)
    required = {"name": "vr-1", "base_url": "https://vr-1.example.net/api", "site": "ams"}
    for extra in ({"timezone": None, "credentials_ref": "", "tls_ca_file": None,
                   "tls_thumbprint": "", "tags": None},
                  {"tags": "prod;;edge"}, {"tags": ["prod", ""]}):
        record = {**required, **extra}
        assert validator.is_valid(record), record
        assert validate_record(record)[1] == [], record
    for bad in ({"name": None}, {"site": ""}, {"timezone": "Mars/Olympus"},
                {"base_url": "http://vr-1.example.net"}, {"tags": ["a;b"]}):
        assert not validator.is_valid({**required, **bad}), bad
        assert validate_record({**required, **bad})[1], bad


def test_refusals_by_the_state_of_things_are_documented_409() -> None:
    """A valid body that what is stored refuses: a webhook's rollout that does not exist,
    an appliance moved to another host without its credentials_ref (PATCH, import)."""
    paths = build_document(OPERATIONS)["paths"]
    for path, method in (("/api/v1/webhooks", "post"), ("/api/v1/appliances/{name}", "patch"),
                         ("/api/v1/appliances:import", "post")):
        assert "409" in paths[path][method]["responses"], (path, method)


# ---------------------------------------------------------------- the event stream
def _parsed(stream: bytes) -> list[dict[str, str]]:
    """Events as an SSE parser hands them over (data lines joined, the last id kept)."""
    events, last_id = [], None
    for block in stream.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":"))
        last_id = fields.get("id", last_id)
        if "data" in fields:
            events.append({"event": fields["event"], "data": fields["data"],
                           **({"id": last_id} if last_id is not None else {})})
    return events


def test_every_event_the_stream_writes_is_documented() -> None:
    """Task, progress, end and unauthorized, as api/events.py writes them, match the
    document's per-event schema of the stream (what schemathesis checks on the live
    stream); an event without its data's fields does not."""
    doc = build_document(OPERATIONS)
    stream = (doc["paths"]["/api/v1/rollouts/{id}/events"]["get"]["responses"]["200"]
              ["content"]["text/event-stream"]["schema"])
    assert stream == STREAM_EVENT
    task = TaskEvent(id=7, task_id=3, appliance="vr-1", site="ams", wave=0, from_state=None,
                     to_state="PENDING", at=datetime(2026, 1, 1, tzinfo=UTC), detail={})
    written = b"retry: 2000\n\n" + b"".join([
        sse("progress", {"rollout": 1, "state": "RUNNING", "current_wave": 0,
                         "counts": {"PENDING": 1}, "in_flight": 0, "last_event_id": 0,
                         "pace": {"concurrency": 4, "reason": "adaptive pace starts at 4",
                                  "changed_at": "2026-01-01T00:00:00+00:00",
                                  "evaluated_at": "2026-01-01T00:00:00+00:00"}}),
        task_event(task), b": keep-alive\n\n",
        sse("progress", {"rollout": 1, "state": "CANCELLED", "current_wave": None,
                         "counts": {"CANCELLED": 1}, "in_flight": 0, "last_event_id": 7,
                         "pace": None}),
        sse("end", {"rollout": 1, "state": "CANCELLED", "last_event_id": 7}),
        sse("unauthorized", {"detail": "the bearer token was revoked or has expired",
                             "last_event_id": 7}),
    ])
    events = _parsed(written)
    assert [e["event"] for e in events] == ["progress", "task", "progress", "end",
                                            "unauthorized"]
    for event in events:
        assert _event_errors(event, stream, doc["components"]) == [], event
    wrong = [{"event": "task", "data": events[1]["data"]},  # a task event without its id
             {**events[3], "data": '{"rollout": 1, "state": "RUNNING", "last_event_id": 7}'},
             {**events[0], "data": "{}"}, {"event": "message", "data": "{}"},
             # a progress event without its pace (null when the pace is off)
             {**events[2], "data": json.dumps({k: v for k, v in json.loads(
                 events[2]["data"]).items() if k != "pace"})}]
    assert all(_event_errors(e, stream, doc["components"]) for e in wrong)


def _event_errors(event: dict[str, str], stream: dict[str, Any],
                  components: dict[str, Any]) -> list[str]:
    """What is wrong with one parsed event: its envelope (`oneOf`), then its data against
    the `contentSchema` of its type (JSON Schema validators take content keywords as
    annotations; SSE-aware tools, schemathesis among them, check them)."""
    envelope = jsonschema_rs.Draft202012Validator({**stream, "components": components})
    errors = [e.message for e in envelope.iter_errors(event)]
    if errors:
        return errors
    [branch] = [b for b in stream["oneOf"] if b["properties"]["event"]["const"] == event["event"]]
    data = branch["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    content = jsonschema_rs.Draft202012Validator({**data["contentSchema"],
                                                  "components": components})
    return [e.message for e in content.iter_errors(json.loads(event["data"]))]
