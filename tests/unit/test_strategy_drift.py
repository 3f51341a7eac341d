"""The strategy's keys are defined once, in orchestrator.domain.strategy.STRATEGY_TABLE: these
tests fail when a place that follows from it drifts (the domain's defaults, the API's request
model and response schema in the OpenAPI document, the README's table, the CLI's options).

Each check is a function that lists the differences between a table and one place; the
checks are tested too, on a copy of the table with a key added or changed, so that a check
that cannot see drift fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.models import PERCENT, POSITIVE_PERCENT, PlanRequest, StrategyBody
from orchestrator.api.openapi import OPERATIONS, build_document
from orchestrator.domain.strategy import (
    MAX_COUNT,
    README_TABLE_HEAD,
    STRATEGY_KEYS,
    STRATEGY_TABLE,
    Strategy,
    StrategyKey,
    add_strategy_flags,
    parse_strategy,
    readme_default,
    strategy_from_flags,
    strategy_markdown_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"
Table = Sequence[StrategyKey]

FAKE = StrategyKey("fake_key", "int", 7, minimum=0, doc="a key nobody added anywhere",
                   flag="--fake-key", flag_help="a fake")


def with_fake(table: Table = STRATEGY_TABLE) -> tuple[StrategyKey, ...]:
    return (*table, FAKE)


def changed(name: str, **changes: Any) -> tuple[StrategyKey, ...]:
    """A copy of the table with key `name` changed."""
    assert name in STRATEGY_KEYS
    return tuple(dataclasses.replace(key, **changes) if key.name == name else key
                 for key in STRATEGY_TABLE)


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    schemas: dict[str, Any] = build_document(OPERATIONS)["components"]["schemas"]
    return schemas


# ------------------------------------------------------------------ the checks
def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _size(minimum: int, zero_percent: bool) -> dict[str, Any]:
    pattern = PERCENT if zero_percent else POSITIVE_PERCENT
    return {"oneOf": [{"type": "integer", "minimum": minimum, "maximum": MAX_COUNT},
                      {"type": "string", "pattern": pattern}]}


def expected_request_schema(key: StrategyKey) -> dict[str, Any]:
    """What the OpenAPI document must say of `key` in the request's Strategy object (besides
    title and description), read from the table independently of the model's code."""
    most = key.api_maximum
    schema: dict[str, Any]
    if key.kind == "waves":
        schema = {"type": "array", "items": _size(1, False), "minItems": 1,
                  "maxItems": key.max_items}
    elif key.kind == "size":
        schema = _size(key.minimum or 0, key.zero_percent)
    elif key.kind == "choice":
        schema = {"type": "string", "enum": list(key.choices)}
    elif key.kind == "int":
        least = -(2**63) if key.minimum is None else key.minimum
        schema = {"type": "integer", "minimum": least, "maximum": most}
    elif key.kind == "seconds":
        bound = "exclusiveMinimum" if key.exclusive_minimum else "minimum"
        schema = {"type": "number", bound: key.minimum or 0, "maximum": most}
    elif key.kind == "services":
        schema = {"type": "array", "items": {"type": "string"}, "maxItems": key.max_items}
    elif key.kind == "text":
        schema = {"type": "string", "minLength": 1, "maxLength": most}
    else:
        schema = {"type": "boolean"}
    return _nullable(schema) if key.nullable else schema


def _subset(expected: Any, actual: Any) -> bool:
    """Whether `actual` says at least what `expected` says (dicts: every key of expected)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and _subset(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(_subset(e, a) for e, a in zip(expected, actual, strict=True)))
    return bool(expected == actual and type(expected) is type(actual))


def request_drift(table: Table, schema: dict[str, Any]) -> list[str]:
    """The differences between the table and the request's Strategy object schema."""
    props: dict[str, Any] = schema["properties"]
    names = [key.name for key in table]
    problems = [f"{name}: in the API model, not in the table" for name in props
                if name not in names]
    if schema.get("additionalProperties") is not False:
        problems.append("the API model accepts unknown keys")
    if [name for name in props if name in names] != [n for n in names if n in props]:
        problems.append("the API model lists the keys in another order than the table")
    for key in table:
        prop = props.get(key.name)
        if prop is None:
            problems.append(f"{key.name}: not in the API model")
            continue
        if "default" not in prop or prop["default"] != key.default:
            problems.append(f"{key.name}: the API's default is {prop.get('default')!r}, the "
                            f"table's {key.default!r}")
        if prop.get("description") != key.doc:
            problems.append(f"{key.name}: the API's description is not the table's doc")
        core = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
        expected = expected_request_schema(key)
        if not _subset(expected, core) or set(core) != set(expected):
            problems.append(f"{key.name}: the API's schema {core} is not {expected}")
    return problems


def expected_response_schema(key: StrategyKey) -> dict[str, Any]:
    by_kind: dict[str, dict[str, Any]] = {
        "waves": {"type": "array"}, "size": {"oneOf": [{"type": "integer"},
                                                       {"type": "string"}]},
        "choice": {"type": "string"}, "int": {"type": "integer"},
        "seconds": {"type": "number"}, "services": {"type": "array",
                                                    "items": {"type": "string"}},
        "bool": {"type": "boolean"}, "text": {"type": "string"},
    }
    schema = by_kind[key.kind]
    return _nullable(schema) if key.nullable else schema


def response_drift(table: Table, schema: dict[str, Any]) -> list[str]:
    """The differences between the table and the StrategyOut response schema."""
    props: dict[str, Any] = schema["properties"]
    names = [key.name for key in table]
    problems = [f"{name}: in StrategyOut, not in the table" for name in props
                if name not in names]
    if sorted(schema["required"]) != sorted(props):
        problems.append("StrategyOut does not require every key")
    for key in table:
        if key.name not in props:
            problems.append(f"{key.name}: not in StrategyOut")
        elif not _subset(expected_response_schema(key), props[key.name]):
            problems.append(f"{key.name}: StrategyOut says {props[key.name]}")
    return problems


_ROW = re.compile(r"^\| `([^`]+)` \| (.*?) \| (.*) \|$")


def readme_rows(text: str) -> list[tuple[str, str]]:
    """(key, default cell) of each row of the README's strategy table."""
    start = text.index(README_TABLE_HEAD) + len(README_TABLE_HEAD)
    rows = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        match = _ROW.match(line)
        assert match is not None, f"not a row of the strategy table: {line!r}"
        rows.append((match.group(1), match.group(2)))
    return rows


def readme_drift(table: Table, text: str) -> list[str]:
    """The differences between the table and the README's table: same keys, same order,
    same defaults."""
    rows = readme_rows(text)
    listed = [name for name, _ in rows]
    names = [key.name for key in table]
    problems = [f"{name}: in the README, not in the table" for name in listed
                if name not in names]
    problems += [f"{name}: not in the README" for name in names if name not in listed]
    if [n for n in listed if n in names] != [n for n in names if n in listed]:
        problems.append("the README lists the keys in another order than the table")
    defaults = dict(rows)
    for key in table:
        cell = readme_default(key).replace("|", "\\|")
        if key.name in defaults and defaults[key.name] != cell:
            problems.append(f"{key.name}: the README's default is {defaults[key.name]}, the "
                            f"table's {cell}")
    return problems


def _words(text: str) -> str:
    return " ".join(text.split())


def flag_entries(table: Table) -> dict[str, str]:
    """Each flagged key's --help entry ("--max-concurrency MAX_CONCURRENCY a count or a
    percentage"), blanks collapsed, from a parser given the table's options."""
    parser = argparse.ArgumentParser(prog="x", add_help=False)
    add_strategy_flags(parser, table)
    body = _words(parser.format_help()).split(" options: ", 1)[1] + " "
    flagged = [key for key in table if key.flag is not None]
    starts = [body.index(f" {key.flag}" if i else f"{key.flag}") for i, key in
              enumerate(flagged)]
    ends = [*starts[1:], len(body)]
    return {key.name: body[start:end].strip()
            for key, start, end in zip(flagged, starts, ends, strict=True)}


def cli_drift(table: Table, help_text: str) -> list[str]:
    """The flagged keys whose option (flag, metavar or choices, help) is not in the
    `rollout create --help` text as the table says."""
    text = f" {_words(help_text)} "
    return [f"{name}: `rollout create --help` lacks {entry!r}"
            for name, entry in flag_entries(table).items() if f" {entry} " not in text]


def create_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    from orchestrator.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # no wrapping, so no word is cut at a hyphen
    with pytest.raises(SystemExit) as exit_info:
        main(["rollout", "create", "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------ the current state
def test_the_domain_follows_the_table() -> None:
    assert tuple(f.name for f in dataclasses.fields(Strategy)) == STRATEGY_KEYS
    assert Strategy().to_dict() == {key.name: key.default for key in STRATEGY_TABLE}
    assert parse_strategy({}) == Strategy()
    assert parse_strategy(Strategy().to_dict()) == Strategy()


def test_the_table_is_sound() -> None:
    assert len(set(STRATEGY_KEYS)) == len(STRATEGY_KEYS)
    for key in STRATEGY_TABLE:
        assert key.doc and "\n" not in key.doc, key.name
        assert (key.kind == "choice") == bool(key.choices), key.name
        assert (key.default is None) <= key.nullable, key.name
        if key.flag is not None:
            assert key.flag == "--" + key.name.replace("_", "-"), key.name


def test_the_api_model_follows_the_table(components: dict[str, Any]) -> None:
    assert request_drift(STRATEGY_TABLE, components["Strategy"]) == []
    assert StrategyBody.not_null == {key.name for key in STRATEGY_TABLE if not key.nullable}


@pytest.mark.parametrize("key", STRATEGY_TABLE, ids=lambda key: key.name)
def test_the_api_takes_each_default_and_refuses_null_where_the_table_does(
    key: StrategyKey,
) -> None:
    request = PlanRequest.model_validate({"target_version": "1.0",
                                          "strategy": {key.name: key.default}})
    assert request.strategy_dict() == {key.name: key.default}
    assert parse_strategy(request.strategy_dict()) == Strategy()
    if key.nullable:
        assert StrategyBody.model_validate({key.name: None}).given() == {key.name: None}
    else:
        with pytest.raises(ValueError, match="may be left out but not null"):
            StrategyBody.model_validate({key.name: None})


def test_the_response_schema_follows_the_table(components: dict[str, Any]) -> None:
    assert response_drift(STRATEGY_TABLE, components["StrategyOut"]) == []
    assert list(components["StrategyOut"]["properties"]) == list(STRATEGY_KEYS)


def test_the_readme_table_is_generated_from_the_table() -> None:
    text = README.read_text()
    assert readme_drift(STRATEGY_TABLE, text) == []
    start = text.index(README_TABLE_HEAD)
    assert text[start:start + len(strategy_markdown_table())] == strategy_markdown_table(), (
        "README.md's strategy table differs from strategy_markdown_table(): paste its output")


def test_rollout_create_offers_every_flag_of_the_table(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    help_text = create_help(monkeypatch, capsys)
    assert cli_drift(STRATEGY_TABLE, help_text) == []
    # and no option for a key the table gives none (it would not be read)
    words = set(help_text.replace("[", " ").replace("]", " ").split())
    assert [key.name for key in STRATEGY_TABLE if key.flag is None
            and "--" + key.name.replace("_", "-") in words] == []


def test_the_flags_give_the_strategy_keys() -> None:
    parser = argparse.ArgumentParser()
    add_strategy_flags(parser)
    assert strategy_from_flags(parser.parse_args([])) == {}
    args = parser.parse_args([
        "--waves", "1, 10%,50%", "--order", "name", "--max-concurrency", "5",
        "--per-site-concurrency", "2", "--max-starts-per-minute", "30",
        "--max-failures", "2.5%", "--min-executed", "0", "--canary-max-failures", "1",
        "--soak-seconds", "1.5", "--approval", "each-wave", "--task-timeout", "600",
        "--reboot-grace", "300", "--after-overlapping",
        "--probe-url", "https://{host}/health", "--probe-stabilisation-seconds", "60",
        "--task-soak-seconds", "30", "--preflight", "required",
        "--preflight-lead-seconds", "600",
    ])
    given = strategy_from_flags(args)
    assert given == {
        "waves": [1, "10%", "50%"], "order": "name", "max_concurrency": 5,
        "per_site_concurrency": 2, "max_starts_per_minute": 30, "max_failures": "2.5%",
        "min_executed": 0, "canary_max_failures": 1, "soak_seconds": 1.5,
        "approval": "each-wave", "task_timeout": 600.0, "reboot_grace": 300.0,
        "after_overlapping": True,
        "probe_url": "https://{host}/health", "probe_stabilisation_seconds": 60.0,
        "task_soak_seconds": 30.0, "preflight": "required",
        "preflight_lead_seconds": 600.0,
    }
    assert set(given) == {key.name for key in STRATEGY_TABLE if key.flag is not None}
    strategy = parse_strategy(given).to_dict()
    assert {name: strategy[name] for name in given} == {**given, "task_timeout": 600,
                                                        "reboot_grace": 300,
                                                        "probe_stabilisation_seconds": 60,
                                                        "task_soak_seconds": 30,
                                                        "preflight_lead_seconds": 600}
    # an empty --waves is not given; a bad size is left for parse_strategy to name
    assert strategy_from_flags(parser.parse_args(["--waves", ""])) == {}
    assert strategy_from_flags(parser.parse_args(["--max-concurrency", "x"])) == {
        "max_concurrency": "x"}


# ------------------------------------------------------------------ the checks see drift
def test_request_drift_reports_a_key_missing_from_the_model(
    components: dict[str, Any],
) -> None:
    schema = components["Strategy"]
    assert request_drift(with_fake(), schema) == ["fake_key: not in the API model"]
    assert request_drift(STRATEGY_TABLE[1:], schema) == [
        "waves: in the API model, not in the table"]


@pytest.mark.parametrize(("name", "changes", "problem"), [
    ("max_concurrency", {"default": 20}, "max_concurrency: the API's default is 10"),
    ("min_executed", {"minimum": 1}, "min_executed: the API's schema"),
    ("install_retries", {"maximum": 1000}, "install_retries: the API's schema"),
    ("task_timeout", {"exclusive_minimum": False}, "task_timeout: the API's schema"),
    ("approval", {"choices": ("none", "each-wave")}, "approval: the API's schema"),
    ("windows", {"nullable": False}, "windows: the API's schema"),
    ("seed", {"kind": "seconds"}, "seed: the API's schema"),
    ("waves", {"max_items": 10}, "waves: the API's schema"),
    ("order", {"doc": "something else"}, "order: the API's description"),
])
def test_request_drift_reports_a_changed_key(
    components: dict[str, Any], name: str, changes: dict[str, Any], problem: str,
) -> None:
    problems = request_drift(changed(name, **changes), components["Strategy"])
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_response_drift_reports_missing_and_changed_keys(components: dict[str, Any]) -> None:
    schema = components["StrategyOut"]
    assert response_drift(with_fake(), schema) == ["fake_key: not in StrategyOut"]
    assert response_drift(changed("seed", nullable=True), schema) == [
        "seed: StrategyOut says {'type': 'integer'}"]
    assert response_drift(changed("after_overlapping", kind="int"), schema) == [
        "after_overlapping: StrategyOut says {'type': 'boolean'}"]


def test_readme_drift_reports_missing_extra_and_changed_keys() -> None:
    text = README.read_text()
    assert readme_drift(with_fake(), text) == ["fake_key: not in the README"]
    assert readme_drift(STRATEGY_TABLE[:-1], text) == [
        "after_overlapping: in the README, not in the table"]
    assert readme_drift(changed("soak_seconds", default=5), text) == [
        "soak_seconds: the README's default is `0`, the table's `5`"]
    reordered = (STRATEGY_TABLE[1], STRATEGY_TABLE[0], *STRATEGY_TABLE[2:])
    assert readme_drift(reordered, text) == [
        "the README lists the keys in another order than the table"]


def test_cli_drift_reports_a_missing_or_changed_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    help_text = create_help(monkeypatch, capsys)
    assert cli_drift(with_fake(), help_text) == [
        "fake_key: `rollout create --help` lacks '--fake-key FAKE_KEY a fake'"]
    assert cli_drift(changed("task_timeout", flag_help="minutes"), help_text) == [
        "task_timeout: `rollout create --help` lacks '--task-timeout TASK_TIMEOUT minutes'"]
    assert cli_drift(changed("approval", choices=("none", "each-wave")), help_text) == [
        "approval: `rollout create --help` lacks '--approval {none,each-wave}'"]
    assert cli_drift(changed("seed", flag="--seed"), help_text) == [
        "seed: `rollout create --help` lacks '--seed SEED'"]
