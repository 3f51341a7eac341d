"""The health gates' decisions (orchestrator/domain/gates.py) and their strategy keys: every
rule of the module's table, the probe URL rules, and a property over random timelines."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.gates import (
    GateOutcome,
    GateSpec,
    Look,
    ProbeResult,
    check_probe_url,
    expand_probe_url,
    judge_gates,
    probe_template_problem,
    shown_url,
    start_gates,
)
from orchestrator.domain.inventory import LAB_POLICY, STRICT_POLICY
from orchestrator.domain.strategy import Strategy, StrategyError, parse_strategy

T = "9.0.1-20020"
OLD = "9.0.0-10010"
UP = {"hms": True, "drrest": True, "envoy": True}
OK = ProbeResult(200, '{"status":"ok"}')
DOWN = ProbeResult(503, '{"status":"unavailable"}')
SPEC = GateSpec(key_services=("hms|srm", "drrest"), grace=60.0, stabilisation=30.0)
PROBED = replace(SPEC, probe_url="https://vr01.example/health")


def run(spec: GateSpec, looks: list[Look]) -> list[tuple[GateOutcome, str | None]]:
    """Judge the looks in turn (from a proof at 0); the verdicts, up to the first final."""
    watch = start_gates(T, 0.0)
    verdicts = []
    for look in looks:
        watch, verdict = judge_gates(spec, watch, look)
        verdicts.append((verdict.outcome, verdict.error_code))
        if verdict.outcome != GateOutcome.WAIT:
            break
    return verdicts


def look(at: float, *, version: str | None = T, running: dict[str, bool] | None = None,
         probe: ProbeResult | None = None) -> Look:
    return Look(at=at, version=version, running=UP if running is None else running,
                probe=probe, error=None if version else "cannot connect")


# ---------------------------------------------------------------------- the spec
def test_the_defaults_set_no_gate() -> None:
    spec = GateSpec.of(Strategy())
    assert not spec.active
    assert (spec.required_services, spec.probe_url, spec.soak) == ((), None, 0.0)
    assert spec.key_services == ("hms|srm", "drrest") and spec.grace == 900
    for changes in ({"required_services": ["envoy"]}, {"task_soak_seconds": 1},
                    {"probe_url": "https://{host}/health"}):
        assert GateSpec.of(parse_strategy(changes)).active, changes


def test_describe_shows_the_gates_but_never_a_query() -> None:
    spec = replace(PROBED, probe_url="https://vr01.example/health?token=s3cret",
                   required_services=("envoy",), soak=30.0, probe_body="ok")
    assert spec.describe() == {
        "required_services": ["envoy"],
        "probe": {"url": "https://vr01.example/health?...", "expect_status": 200,
                  "stabilisation_s": 30, "body_contains": "ok"},
        "soak_s": 30,
    }


# ---------------------------------------------------------------------- probe URLs
@pytest.mark.parametrize(("template", "problem"), [
    ("https://{host}/health", None),
    ("http://{host}:8080/{name}/health?full=1", None),
    ("https://lb.example/{name}/{{literal}}", None),
    ("ftp://{host}/", "is not an http:// or https:// URL"),
    ("https://{hostname}/", "unknown placeholder(s) {hostname}"),
    ("https://{host!r}/", "takes no format or conversion"),
    ("https://{host:>9}/", "takes no format or conversion"),
    ("https://{}/", "unknown placeholder(s) {}"),
    ("https://{host/", "is not a URL template"),
    ("https:///path", "has no host"),
    ("https://user:pw@{host}/", "must not hold credentials"),
    ("https://{host}/#top", "must not carry a fragment"),
    ("https://{host}:99999/", "is not a URL"),
    ("https://{host}/a b", "whitespace"),
])
def test_probe_templates(template: str, problem: str | None) -> None:
    found = probe_template_problem(template)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_expanding_a_template() -> None:
    assert expand_probe_url("https://{host}/{name}/health", name="vr 01/a",
                            host="vr01.example") == "https://vr01.example/vr%2001%2Fa/health"
    assert expand_probe_url("http://{host}:80/", name="x", host="2001:db8::1") == \
        "http://[2001:db8::1]:80/"


def test_probe_urls_follow_the_target_policy() -> None:
    assert check_probe_url("https://vr01.example/health", STRICT_POLICY)
    assert check_probe_url("http://127.0.0.1:9450/sim-00001/health", LAB_POLICY)
    for url, problem in (
        ("http://vr01.example/health", "http:// is refused"),
        ("https://127.0.0.1/health", "loopback"),
        ("https://169.254.169.254/latest?x=secret", "cloud metadata address"),
        ("https://u:p@vr01.example/", "credentials do not belong"),
        ("file:///etc/passwd", r"not an http\(s\) URL"),
    ):
        with pytest.raises(ValueError, match=problem) as info:
            check_probe_url(url, STRICT_POLICY)
        assert "secret" not in str(info.value) and "u:p" not in str(info.value)


def test_shown_url_hides_credentials_and_the_query() -> None:
    assert shown_url("https://u:p@vr01.example:8443/health?token=s3cret") == \
        "https://vr01.example:8443/health?..."
    assert shown_url("http://[2001:db8::1]/h") == "http://[2001:db8::1]/h"


# ---------------------------------------------------------------------- the table
def test_a_probe_that_succeeds_at_once_passes() -> None:
    assert run(PROBED, [look(0, probe=OK)]) == [(GateOutcome.PASSED, None)]


def test_a_flapping_probe_passes_within_the_stabilisation_period() -> None:
    verdicts = run(PROBED, [look(t, probe=DOWN) for t in (0, 5, 10, 29)] + [look(29.5,
                                                                                probe=OK)])
    assert verdicts[-1] == (GateOutcome.PASSED, None)
    assert {v for v, _ in verdicts[:-1]} == {GateOutcome.WAIT}


def test_a_probe_failing_past_the_stabilisation_period_fails() -> None:
    watch = start_gates(T, 0.0)
    for t in (0.0, 10.0, 20.0):
        watch, verdict = judge_gates(PROBED, watch, look(t, probe=DOWN))
        assert verdict.outcome == GateOutcome.WAIT
    watch, verdict = judge_gates(PROBED, watch, look(30.0, probe=DOWN))
    assert (verdict.outcome, verdict.error_code) == (GateOutcome.FAILED, "PROBE_FAILED")
    assert verdict.message is not None and "4 of 4 tries failed, the last answered 503, " \
        "not 200" in verdict.message
    body = replace(PROBED, probe_body="ok")
    watch = start_gates(T, 0.0)
    for t in (0.0, 30.0):
        watch, verdict = judge_gates(body, watch, look(t, probe=ProbeResult(200, "busy")))
    assert (verdict.outcome, verdict.error_code) == (GateOutcome.FAILED, "PROBE_FAILED")
    assert verdict.message is not None
    assert "2 of 2 tries failed, the last answered 200 without 'ok' in its body" in \
        verdict.message
    assert "https://vr01.example/health" in verdict.message


def test_a_probe_without_an_answer_counts_as_failed() -> None:
    no_answer = ProbeResult(None, error="vr01: probe ...: cannot connect")
    verdicts = run(replace(PROBED, stabilisation=0.0), [look(0, probe=no_answer)])
    assert verdicts == [(GateOutcome.FAILED, "PROBE_FAILED")]


def test_required_services_get_reboot_grace_then_fail() -> None:
    spec = replace(SPEC, required_services=("envoy", "vrms|vrms2"))
    running = {**UP, "vrms2": False}
    assert run(spec, [look(0, running=running), look(59, running=running),
                      look(60, running=running)])[-1] == (
        GateOutcome.FAILED, "SERVICE_NOT_RUNNING")
    assert run(spec, [look(0, running=running), look(30, running={**UP, "vrms2": True})]) == [
        (GateOutcome.WAIT, None), (GateOutcome.PASSED, None)]


def test_the_soak_passes_when_every_look_is_healthy() -> None:
    spec = replace(PROBED, soak=20.0)
    verdicts = run(spec, [look(t, probe=OK) for t in (0, 5, 10, 15, 19.9, 20)])
    assert verdicts == [(GateOutcome.WAIT, None)] * 5 + [(GateOutcome.PASSED, None)]


@pytest.mark.parametrize("bad", [
    {"probe": DOWN}, {"running": {**UP, "hms": False}}, {"version": None},
    {"version": OLD}, {"running": {**UP, "envoy": False}},
])
def test_any_unhealthy_look_during_the_soak_fails_it(bad: dict[str, Any]) -> None:
    spec = replace(PROBED, soak=20.0, required_services=("envoy",))
    looks = [look(0, probe=OK), look(5, probe=OK), look(10, **{"probe": OK, **bad})]
    assert run(spec, looks)[-1] == (GateOutcome.FAILED, "SOAK_FAILED")


def test_no_answer_before_the_soak_is_tolerated_for_reboot_grace() -> None:
    assert run(PROBED, [look(0, version=None), look(30, version=None),
                        look(40, probe=OK)])[-1] == (GateOutcome.PASSED, None)
    assert run(PROBED, [look(0, version=None), look(60.5, version=None)])[-1] == (
        GateOutcome.TIMED_OUT, "UNREACHABLE")


def test_another_version_after_the_proof_fails_with_that_version() -> None:
    watch = start_gates(T, 0.0)
    _, verdict = judge_gates(PROBED, watch, look(1, version=OLD, probe=OK))
    assert (verdict.outcome, verdict.error_code, verdict.final_version) == (
        GateOutcome.FAILED, "SOAK_FAILED", OLD)


def test_waits_stay_within_their_bounds_and_the_deadlines() -> None:
    watch = start_gates(T, 0.0)
    _, verdict = judge_gates(PROBED, watch, look(0, probe=DOWN))
    assert verdict.wait == 3.0  # a tenth of the 30 s stabilisation
    _, verdict = judge_gates(replace(PROBED, stabilisation=300, grace=900), watch,
                             look(0, probe=DOWN))
    assert verdict.wait == 5.0
    _, verdict = judge_gates(PROBED, watch, look(29, probe=DOWN))
    assert verdict.wait == pytest.approx(1.0)  # the deadline comes first
    soak = replace(SPEC, soak=600.0)
    watch, verdict = judge_gates(soak, start_gates(T, 0.0), look(0))
    assert verdict.wait == 15.0
    watch, verdict = judge_gates(soak, watch, look(595))
    assert verdict.wait == pytest.approx(5.0)


# ---------------------------------------------------------------------- a property
HEALTHY = st.sampled_from(["ok"])
ANY = st.sampled_from(["ok", "probe_down", "service_down", "no_answer", "old"])


def _look(at: float, kind: str) -> Look:
    if kind == "no_answer":
        return look(at, version=None)
    if kind == "old":
        return look(at, version=OLD, probe=OK)
    if kind == "service_down":
        return look(at, running={**UP, "drrest": False}, probe=OK)
    return look(at, probe=DOWN if kind == "probe_down" else OK)


@settings(max_examples=300, deadline=None)
@given(kinds=st.lists(ANY, min_size=1, max_size=40),
       steps=st.lists(st.floats(min_value=0.1, max_value=20.0), min_size=40, max_size=40),
       soak=st.sampled_from([0.0, 10.0, 45.0]))
def test_a_pass_always_follows_a_healthy_soak(kinds: list[str], steps: list[float],
                                              soak: float) -> None:
    """Whatever the timeline: PASSED only after a healthy look, then healthy looks for the
    whole soak; FAILED/TIMED_OUT only with a gate's code; the verdict is final."""
    spec = replace(PROBED, soak=soak)
    watch = start_gates(T, 0.0)
    at = 0.0
    healthy_since: float | None = None
    for kind, step in zip(kinds, steps, strict=False):
        watch, verdict = judge_gates(spec, watch, _look(at, kind))
        if kind == "ok":
            healthy_since = at if healthy_since is None else healthy_since
        else:
            healthy_since = None
        if verdict.outcome == GateOutcome.PASSED:
            assert healthy_since is not None and at - healthy_since >= soak
            return
        if verdict.outcome != GateOutcome.WAIT:
            assert verdict.error_code in ("PROBE_FAILED", "SERVICE_NOT_RUNNING",
                                          "SOAK_FAILED", "UNREACHABLE")
            return
        assert verdict.wait >= 0
        at += step


# ---------------------------------------------------------------------- strategy keys
def test_the_gate_keys_parse_and_round_trip() -> None:
    strategy = parse_strategy({
        "required_services": ["envoy", "a|b"], "probe_url": "https://{host}/{name}/health",
        "probe_status": 204, "probe_body": "ok", "probe_timeout": 2.5,
        "probe_stabilisation_seconds": 60, "task_soak_seconds": 300,
    })
    assert parse_strategy(strategy.to_dict()) == strategy
    assert strategy.to_dict()["probe_timeout"] == 2.5
    defaults = Strategy().to_dict()
    assert {k: defaults[k] for k in ("required_services", "probe_url", "probe_status",
                                     "probe_body", "probe_timeout",
                                     "probe_stabilisation_seconds", "task_soak_seconds")} == {
        "required_services": [], "probe_url": None, "probe_status": 200, "probe_body": None,
        "probe_timeout": 10, "probe_stabilisation_seconds": 120, "task_soak_seconds": 0}


@pytest.mark.parametrize(("given", "field", "problem"), [
    ({"probe_url": "gopher://{host}/"}, "strategy.probe_url", "is not an http:// or https://"),
    ({"probe_url": 42}, "strategy.probe_url", "42 is not a non-empty text"),
    ({"probe_url": "https://x/\n"}, "strategy.probe_url", "control characters"),
    ({"probe_url": "https://x/" + "a" * 2000}, "strategy.probe_url", "longer than 2000"),
    ({"probe_body": "ok"}, "strategy.probe_body", "given without probe_url"),
    ({"probe_status": 99}, "strategy.probe_status", "is not an integer >= 100"),
    ({"probe_timeout": 0}, "strategy.probe_timeout", "is not a number of seconds > 0"),
    ({"required_services": ["a|"]}, "strategy.required_services[0]", "without blanks"),
    ({"task_soak_seconds": 3600}, "strategy.task_soak_seconds",
     "3600 is not shorter than task_timeout 3600"),
    ({"probe_url": "https://{host}/", "task_timeout": 100, "reboot_grace": 50},
     "strategy.probe_stabilisation_seconds", "120 (the default) is not shorter than"),
])
def test_bad_gate_keys_are_refused_by_name(given: dict[str, Any], field: str,
                                           problem: str) -> None:
    with pytest.raises(StrategyError) as info:
        parse_strategy(given)
    assert info.value.field == field and problem in info.value.message, info.value
