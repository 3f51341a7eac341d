from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.strategy import (
    APPROVALS,
    ORDERS,
    STRATEGY_KEYS,
    Size,
    Strategy,
    StrategyError,
    missing_services,
    parse_size,
    parse_strategy,
)


def error_of(data: Any) -> StrategyError:
    with pytest.raises(StrategyError) as info:
        parse_strategy(data)
    return info.value


# --- Size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "total", "expected"),
    [
        (Size.of_count(1), 100, 1),
        (Size.of_count(7), 3, 7),  # counts are not capped here
        (Size.of_count(0), 10, 0),
        (Size.of_percent("10"), 100, 10),
        (Size.of_percent("10"), 101, 11),  # ceil(10.1)
        (Size.of_percent("10"), 5, 1),  # ceil(0.5)
        (Size.of_percent("1"), 1, 1),
        (Size.of_percent("0.001"), 10, 1),  # at least 1 when total > 0
        (Size.of_percent("0"), 10, 1),
        (Size.of_percent("100"), 37, 37),
        (Size.of_percent("2.5"), 1000, 25),
        (Size.of_percent("2.3"), 1000, 23),  # exact: a float would give 23.000000000000004
        (Size.of_percent("33.333333"), 3, 1),
        (Size.of_percent("50"), 0, 0),
        (Size.of_count(3), 0, 3),
    ],
)
def test_size_resolve(size: Size, total: int, expected: int) -> None:
    assert size.resolve(total) == expected


def test_size_resolve_refuses_a_negative_total() -> None:
    with pytest.raises(ValueError, match="total must be >= 0"):
        Size.of_count(1).resolve(-1)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"count": 1, "percent": Decimal(1)}, {"count": -1}, {"count": True},
     {"percent": Decimal("100.1")}, {"percent": Decimal(-1)}],
)
def test_size_construction_is_checked(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Size(**kwargs)


@pytest.mark.parametrize(
    ("value", "json_form"),
    [(5, 5), ("10%", "10%"), ("10.0%", "10%"), ("2.50%", "2.5%"), ("100%", "100%"),
     ("0.000001%", "0.000001%"), ("007%", "7%")],
)
def test_parse_size_normalises(value: int | str, json_form: int | str) -> None:
    size = parse_size(value)
    assert size.to_json() == json_form
    assert str(size) == str(json_form)
    assert parse_size(size.to_json()) == size


@pytest.mark.parametrize("value", ["abc", "NaN", "Infinity", "101", -1])
def test_size_of_percent_refuses(value: str | int) -> None:
    with pytest.raises(ValueError):
        Size.of_percent(value)


def test_size_kinds() -> None:
    assert parse_size(3) == Size(count=3)
    assert not parse_size(3).is_percent
    assert parse_size("3%") == Size(percent=Decimal(3))
    assert parse_size("3%").is_percent


@pytest.mark.parametrize(
    "value",
    [0, -1, True, False, 1.0, 2.5, "0%", "150%", "100.5%", "1000%", "10", " 10%", "10 %",
     "%", "-5%", "1e2%", "abc", None, [10], "10.1234567%"],
)
def test_parse_size_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match=r"is not a count >= 1 or a percentage in \(0, 100\]"):
        parse_size(value)


def test_parse_size_zero_allowed_when_asked() -> None:
    assert parse_size(0, min_count=0, zero_percent=True) == Size(count=0)
    assert parse_size("0%", min_count=0, zero_percent=True) == Size(percent=Decimal(0))
    expected = r"'101%' is not a count >= 0 or a percentage in \[0, 100\]"
    with pytest.raises(ValueError, match=expected):
        parse_size("101%", min_count=0, zero_percent=True)


# --- Strategy: defaults and round trip ----------------------------------------------------


def test_defaults() -> None:
    strategy = parse_strategy({})
    assert strategy == Strategy()
    assert parse_strategy(None) == strategy
    assert strategy.to_dict() == {
        "waves": [1, "10%", "50%", "100%"],
        "order": "spread",
        "seed": 0,
        "max_concurrency": 10,
        "per_site_concurrency": None,
        "max_starts_per_minute": None,
        "pace": "off",
        "pace_max_concurrency": None,
        "pace_min_concurrency": 1,
        "pace_interval_seconds": 60,
        "pace_step_percent": 50,
        "pace_failure_threshold": "5%",
        "pace_duration_band": 200,
        "max_failures": "10%",
        "min_executed": 5,
        "canary_max_failures": 0,
        "soak_seconds": 0,
        "approval": "none",
        "task_timeout": 3600,
        "reboot_grace": 900,
        "install_retries": 0,
        "dispatch_retries": 3,
        "verify_services": ["hms|srm", "drrest"],
        "required_services": [],
        "probe_url": None,
        "probe_status": 200,
        "probe_body": None,
        "probe_timeout": 10,
        "probe_stabilisation_seconds": 120,
        "task_soak_seconds": 0,
        "windows": None,
        "at_window_end": "finish-in-flight",
        "preflight": "warn",
        "preflight_lead_seconds": 1800,
        "after_overlapping": False,
    }
    assert tuple(strategy.to_dict()) == STRATEGY_KEYS


def test_everything_set() -> None:
    data = {
        "waves": [2, "5%", "25.5%"],
        "order": "random",
        "seed": 42,
        "max_concurrency": "20%",
        "per_site_concurrency": 3,
        "max_starts_per_minute": 30,
        "pace": "adaptive",
        "pace_max_concurrency": "50%",
        "pace_min_concurrency": 2,
        "pace_interval_seconds": 12.5,
        "pace_step_percent": 25,
        "pace_failure_threshold": 1,
        "pace_duration_band": 150,
        "max_failures": 0,
        "min_executed": 0,
        "canary_max_failures": 2,
        "soak_seconds": 120.5,
        "approval": "after-canary",
        "task_timeout": 1800,
        "reboot_grace": 1800,
        "install_retries": 1,
        "dispatch_retries": 0,
        "verify_services": ["drrest"],
        "required_services": ["envoy", "vrms|vrms2"],
        "probe_url": "https://{host}:8443/{name}/health?full=1",
        "probe_status": 204,
        "probe_body": "ok",
        "probe_timeout": 2.5,
        "probe_stabilisation_seconds": 60,
        "task_soak_seconds": 300,
        "windows": "ignore",
        "at_window_end": "cancel-pending",
        "preflight": "required",
        "preflight_lead_seconds": 600.5,
        "after_overlapping": True,
    }
    strategy = parse_strategy(data)
    assert strategy.waves == (Size(count=2), Size(percent=Decimal(5)),
                              Size(percent=Decimal("25.5")))
    assert strategy.max_concurrency == Size(percent=Decimal(20))
    assert strategy.max_failures == Size(count=0)
    assert strategy.soak_seconds == 120.5
    assert strategy.task_timeout == 1800.0
    assert strategy.verify_services == ("drrest",)
    assert strategy.to_dict() == data


def test_window_modes_are_validated() -> None:
    assert parse_strategy({"windows": "required"}).windows == "required"
    with pytest.raises(StrategyError, match=r"strategy\.windows"):
        parse_strategy({"windows": "sometimes"})
    with pytest.raises(StrategyError, match=r"strategy\.at_window_end"):
        parse_strategy({"at_window_end": "panic"})


def test_after_overlapping_is_a_boolean() -> None:
    assert parse_strategy({}).after_overlapping is False
    assert parse_strategy({"after_overlapping": True}).after_overlapping is True
    for bad in (1, "true", None):
        with pytest.raises(StrategyError, match=r"strategy\.after_overlapping: .* is not true "
                                                r"or false"):
            parse_strategy({"after_overlapping": bad})


def test_to_dict_normalises() -> None:
    strategy = parse_strategy({
        "waves": ["10.0%", 3], "task_timeout": 3600.0, "verify_services": ["a", "b", "a"],
        "max_failures": "5.50%",
    })
    assert strategy.to_dict()["waves"] == ["10%", 3]
    assert strategy.to_dict()["task_timeout"] == 3600
    assert strategy.to_dict()["verify_services"] == ["a", "b"]
    assert strategy.to_dict()["max_failures"] == "5.5%"
    assert json.loads(json.dumps(strategy.to_dict())) == strategy.to_dict()


def test_empty_verify_services_is_allowed() -> None:
    assert parse_strategy({"verify_services": []}).verify_services == ()


def test_strategy_is_frozen() -> None:
    strategy = Strategy()
    with pytest.raises(AttributeError):
        strategy.order = "name"  # type: ignore[misc]


_counts = st.integers(min_value=1, max_value=10_000)
_percents = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal(100), places=6)
_sizes = st.one_of(_counts, _percents.map(lambda d: f"{d}%"))
_seconds = st.one_of(
    st.integers(min_value=1, max_value=10**6),
    st.floats(min_value=0.001, max_value=1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def strategy_objects(draw: st.DrawFn) -> dict[str, Any]:
    grace = draw(_seconds)
    timeout = draw(_seconds.filter(lambda t: t >= grace))
    candidates: dict[str, Any] = {
        "waves": draw(st.lists(_sizes, min_size=1, max_size=6)),
        "order": draw(st.sampled_from(ORDERS)),
        "seed": draw(st.integers(min_value=-(2**63), max_value=2**63)),
        "max_concurrency": draw(_sizes),
        "per_site_concurrency": draw(st.none() | _counts),
        "max_starts_per_minute": draw(st.none() | _counts),
        "max_failures": draw(st.one_of(
            st.integers(min_value=0, max_value=100),
            st.decimals(min_value=0, max_value=100, places=3).map(lambda d: f"{d}%"),
        )),
        "min_executed": draw(st.integers(min_value=0, max_value=1000)),
        "canary_max_failures": draw(st.integers(min_value=0, max_value=1000)),
        "soak_seconds": draw(st.just(0) | _seconds),
        "approval": draw(st.sampled_from(APPROVALS)),
        "task_timeout": timeout,
        "reboot_grace": grace,
        "install_retries": draw(st.integers(min_value=0, max_value=5)),
        "dispatch_retries": draw(st.integers(min_value=0, max_value=5)),
        "verify_services": draw(st.lists(st.sampled_from(["hms", "srm", "drrest", "hms|srm"]))),
        "after_overlapping": draw(st.booleans()),
    }
    keep = draw(st.sets(st.sampled_from(sorted(candidates))))
    if {"reboot_grace", "task_timeout"} & keep:
        keep |= {"reboot_grace", "task_timeout"}  # one alone may clash with the other's default
    return {key: value for key, value in candidates.items() if key in keep}


@settings(max_examples=200)
@given(strategy_objects())
def test_round_trip(data: dict[str, Any]) -> None:
    strategy = parse_strategy(data)
    normalised = strategy.to_dict()
    assert set(normalised) == set(STRATEGY_KEYS)
    assert parse_strategy(normalised) == strategy
    assert parse_strategy(json.loads(json.dumps(normalised))) == strategy
    assert parse_strategy(normalised).to_dict() == normalised


# --- Strategy: errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"waves": [1, "10%", "150%"]},
         "strategy.waves[2]: '150%' is not a count >= 1 or a percentage in (0, 100]"),
        ({"waves": [0]}, "strategy.waves[0]: 0 is not a count >= 1 or a percentage in (0, 100]"),
        ({"waves": [True]},
         "strategy.waves[0]: True is not a count >= 1 or a percentage in (0, 100]"),
        ({"waves": ["0%"]},
         "strategy.waves[0]: '0%' is not a count >= 1 or a percentage in (0, 100]"),
        ({"waves": []}, "strategy.waves: [] lists no wave size: give at least one"),
        ({"waves": "10%"}, "strategy.waves: '10%' is not a list of wave sizes"),
        ({"waves": 5}, "strategy.waves: 5 is not a list of wave sizes"),
        ({"order": "alphabetical"},
         "strategy.order: 'alphabetical' is not one of 'spread', 'site-by-site', 'name', "
         "'random'"),
        ({"seed": True}, "strategy.seed: True is not an integer"),
        ({"seed": "1"}, "strategy.seed: '1' is not an integer"),
        ({"max_concurrency": 0},
         "strategy.max_concurrency: 0 is not a count >= 1 or a percentage in (0, 100]"),
        ({"max_concurrency": "0%"},
         "strategy.max_concurrency: '0%' is not a count >= 1 or a percentage in (0, 100]"),
        ({"per_site_concurrency": 0},
         "strategy.per_site_concurrency: 0 is not an integer >= 1 or null"),
        ({"per_site_concurrency": "2"},
         "strategy.per_site_concurrency: '2' is not an integer >= 1 or null"),
        ({"max_starts_per_minute": False},
         "strategy.max_starts_per_minute: False is not an integer >= 1 or null"),
        ({"max_failures": -1},
         "strategy.max_failures: -1 is not a count >= 0 or a percentage in [0, 100]"),
        ({"max_failures": "101%"},
         "strategy.max_failures: '101%' is not a count >= 0 or a percentage in [0, 100]"),
        ({"max_failures": True},
         "strategy.max_failures: True is not a count >= 0 or a percentage in [0, 100]"),
        ({"min_executed": -1}, "strategy.min_executed: -1 is not an integer >= 0"),
        ({"min_executed": 2.0}, "strategy.min_executed: 2.0 is not an integer >= 0"),
        ({"canary_max_failures": -1},
         "strategy.canary_max_failures: -1 is not an integer >= 0"),
        ({"soak_seconds": -1}, "strategy.soak_seconds: -1 is not a number of seconds >= 0"),
        ({"soak_seconds": float("nan")},
         "strategy.soak_seconds: nan is not a number of seconds >= 0"),
        ({"soak_seconds": True}, "strategy.soak_seconds: True is not a number of seconds >= 0"),
        ({"soak_seconds": "60"}, "strategy.soak_seconds: '60' is not a number of seconds >= 0"),
        ({"approval": "always"},
         "strategy.approval: 'always' is not one of 'none', 'each-wave', 'after-canary'"),
        ({"approval": None},
         "strategy.approval: None is not one of 'none', 'each-wave', 'after-canary'"),
        ({"task_timeout": 0}, "strategy.task_timeout: 0 is not a number of seconds > 0"),
        ({"task_timeout": float("inf")},
         "strategy.task_timeout: inf is not a number of seconds > 0"),
        ({"reboot_grace": 0}, "strategy.reboot_grace: 0 is not a number of seconds > 0"),
        ({"reboot_grace": 4000},
         "strategy.reboot_grace: 4000 is longer than task_timeout 3600: an install's reboot "
         "must fit in the task's time"),
        ({"reboot_grace": 700.5, "task_timeout": 600},
         "strategy.reboot_grace: 700.5 is longer than task_timeout 600: an install's reboot "
         "must fit in the task's time"),
        ({"task_timeout": 600},
         "strategy.task_timeout: 600 is shorter than the default reboot_grace 900: an "
         "install's reboot must fit in the task's time"),
        ({"install_retries": -1}, "strategy.install_retries: -1 is not an integer >= 0"),
        ({"install_retries": True}, "strategy.install_retries: True is not an integer >= 0"),
        ({"dispatch_retries": None}, "strategy.dispatch_retries: None is not an integer >= 0"),
        ({"verify_services": "drrest"},
         "strategy.verify_services: 'drrest' is not a list of service ids"),
        ({"verify_services": ["drrest", 3]}, "strategy.verify_services[1]: 3 is not a service id"),
        ({"verify_services": [""]},
         "strategy.verify_services[0]: '' is not a service id (or alternatives like "
         "'hms|srm') without blanks"),
        ({"verify_services": ["hms|"]},
         "strategy.verify_services[0]: 'hms|' is not a service id (or alternatives like "
         "'hms|srm') without blanks"),
        ({"verify_services": [" hms"]},
         "strategy.verify_services[0]: ' hms' is not a service id (or alternatives like "
         "'hms|srm') without blanks"),
        ([1, 2], "strategy: [1, 2] is not an object"),
    ],
)
def test_errors_name_the_field_and_value(data: Any, message: str) -> None:
    error = error_of(data)
    assert str(error) == message
    field, _, why = message.partition(": ")
    assert (error.field, error.message) == (field, why)
    assert isinstance(error, ValueError)


def test_unknown_keys_are_named() -> None:
    known = ", ".join(STRATEGY_KEYS)
    assert str(error_of({"wave": [1]})) == f"strategy.wave: unknown key (known keys: {known})"
    error = error_of({"waves": [1], "zeta": 1, "alpha": 2})
    assert error.field == "strategy.alpha"
    assert str(error) == f"strategy.alpha: unknown key; also unknown: 'zeta' (known keys: {known})"


@pytest.mark.parametrize(
    "key",
    ["seed", "per_site_concurrency", "max_starts_per_minute", "min_executed",
     "canary_max_failures", "install_retries", "dispatch_retries", "max_concurrency",
     "max_failures"],
)
def test_bools_are_not_counts(key: str) -> None:
    for flag in (True, False):
        assert error_of({key: flag}).field == f"strategy.{key}"


# --- verify services ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running", "missing"),
    [
        ({"hms": True, "drrest": True}, ()),
        ({"srm": True, "drrest": True}, ()),
        ({"hms": False, "srm": True, "drrest": True}, ()),
        ({"hms": True}, ("drrest",)),
        ({"hms": False, "drrest": True}, ("hms|srm",)),
        ({}, ("hms|srm", "drrest")),
    ],
)
def test_missing_services(running: dict[str, bool], missing: tuple[str, ...]) -> None:
    assert missing_services(Strategy().verify_services, running) == missing


def test_no_services_to_verify() -> None:
    assert missing_services((), {}) == ()
