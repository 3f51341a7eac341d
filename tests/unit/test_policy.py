from __future__ import annotations

from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.policy import (
    GATE_WAVE_STATE,
    Gate,
    GateDecision,
    Outcomes,
    PolicyVerdict,
    count_outcomes,
    evaluate_canary,
    evaluate_policy,
    final_rollout_state,
    gate_next_wave,
    wave_requires_approval,
)
from orchestrator.domain.states import (
    WAVE_TRANSITIONS,
    RolloutState,
    TaskState,
    WaveState,
)
from orchestrator.domain.strategy import Size, parse_size

T = TaskState
D = GateDecision


def pct(text: str) -> Size:
    return parse_size(text, min_count=0, zero_percent=True)


# --- count_outcomes ---------------------------------------------------------------------


def test_count_outcomes() -> None:
    states = [T.SUCCEEDED, T.SUCCEEDED, T.FAILED, T.TIMED_OUT, T.SKIPPED, T.CANCELLED,
              T.PENDING, T.DISPATCHING, T.INSTALLING, T.VERIFYING]
    assert count_outcomes(states) == Outcomes(executed=4, failed=2)
    assert count_outcomes(states) == (4, 2)
    assert count_outcomes([]) == (0, 0)
    assert count_outcomes(iter([T.FAILED])) == (1, 1)


# --- evaluate_policy: counts ------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "executed", "failed", "tripped"),
    [
        (0, 0, 0, False),
        (0, 1, 1, True),  # max_failures=0 trips at the first failure
        (0, 100, 0, False),
        (2, 10, 2, False),
        (2, 10, 3, True),  # "more than N"
        (2, 3, 3, True),  # counts ignore min_executed
    ],
)
def test_count_threshold(limit: int, executed: int, failed: int, tripped: bool) -> None:
    verdict = evaluate_policy(Size.of_count(limit), 5, executed, failed)
    assert verdict.tripped is tripped


def test_count_reasons() -> None:
    assert evaluate_policy(Size.of_count(2), 5, 10, 3) == PolicyVerdict(
        True, "3 of 10 executed tasks failed, more than max_failures 2"
    )
    assert evaluate_policy(Size.of_count(2), 5, 10, 2) == PolicyVerdict(
        False, "2 of 10 executed tasks failed, not more than max_failures 2"
    )
    assert evaluate_policy(Size.of_count(0), 5, 1, 1).reason == (
        "1 of 1 executed task failed, more than max_failures 0"
    )


# --- evaluate_policy: percentages -------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "min_executed", "executed", "failed", "tripped"),
    [
        ("10%", 5, 10, 1, False),  # exactly 10%: not above
        ("10%", 5, 10, 2, True),
        ("10%", 5, 4, 4, False),  # before min_executed nothing trips
        ("10%", 5, 5, 1, True),  # 20% once min_executed is reached
        ("10%", 0, 0, 0, False),  # nothing executed
        ("10%", 0, 1, 1, True),
        ("0%", 0, 1, 1, True),
        ("0%", 0, 5, 0, False),
        ("100%", 0, 5, 5, False),  # never trips
        ("33.3%", 3, 3, 1, True),  # 33.33..% > 33.3%
        ("33.34%", 3, 3, 1, False),
        ("10%", 5, 1000, 100, False),
        ("10%", 5, 1000, 101, True),
    ],
)
def test_percentage_threshold(
    limit: str, min_executed: int, executed: int, failed: int, tripped: bool
) -> None:
    assert evaluate_policy(pct(limit), min_executed, executed, failed).tripped is tripped


def test_percentage_reasons() -> None:
    assert evaluate_policy(pct("10%"), 5, 10, 3) == PolicyVerdict(
        True, "3 of 10 executed tasks failed (30.0%), above max_failures 10%"
    )
    assert evaluate_policy(pct("10%"), 5, 10, 1) == PolicyVerdict(
        False, "1 of 10 executed tasks failed (10.0%), not above max_failures 10%"
    )
    assert evaluate_policy(pct("10%"), 5, 3, 2) == PolicyVerdict(
        False,
        "2 of 3 executed tasks failed (66.7%); max_failures 10% applies once 5 tasks have "
        "executed",
    )
    assert evaluate_policy(pct("10%"), 0, 0, 0) == PolicyVerdict(
        False, "no task has executed yet (max_failures 10%)"
    )


def test_percentage_reason_shows_enough_decimals_to_tell_the_side() -> None:
    # 10.04% must not read "10.0%, above max_failures 10%"
    assert evaluate_policy(pct("10%"), 5, 10000, 1004).reason == (
        "1004 of 10000 executed tasks failed (10.04%), above max_failures 10%"
    )
    assert evaluate_policy(pct("2.5%"), 5, 1000, 25).reason == (
        "25 of 1000 executed tasks failed (2.5%), not above max_failures 2.5%"
    )


@pytest.mark.parametrize(
    ("executed", "failed", "min_executed"), [(1, 2, 0), (-1, 0, 0), (1, -1, 0), (5, 1, -1)]
)
def test_impossible_counts_are_refused(executed: int, failed: int, min_executed: int) -> None:
    with pytest.raises(ValueError, match="need 0 <= failed <= executed"):
        evaluate_policy(Size.of_count(1), min_executed, executed, failed)


@settings(max_examples=200)
@given(
    st.decimals(min_value=0, max_value=100, places=3),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=500).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n))
    ),
)
def test_percentage_matches_exact_arithmetic(
    p: object, min_executed: int, counts: tuple[int, int]
) -> None:
    executed, failed = counts
    size = pct(f"{p}%")
    assert size.percent is not None
    expected = (
        executed > 0 and executed >= min_executed
        and Fraction(failed, executed) * 100 > Fraction(size.percent)
    )
    verdict = evaluate_policy(size, min_executed, executed, failed)
    assert verdict.tripped is expected
    assert ("above max_failures" in verdict.reason and "not above" not in verdict.reason) is (
        expected
    )


@settings(max_examples=200)
@given(
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=0, max_value=200).flatmap(
        lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n))
    ),
)
def test_count_matches_more_than(limit: int, counts: tuple[int, int]) -> None:
    executed, failed = counts
    assert evaluate_policy(Size.of_count(limit), 5, executed, failed).tripped is (failed > limit)


# --- approval ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approval", "count", "expected"),
    [
        ("none", 4, [False, False, False, False]),
        ("each-wave", 4, [True, True, True, False]),
        ("after-canary", 4, [True, False, False, False]),
        ("after-canary", 1, [False]),
        ("each-wave", 1, [False]),
    ],
)
def test_wave_requires_approval(approval: str, count: int, expected: list[bool]) -> None:
    assert [wave_requires_approval(approval, k, count) for k in range(count)] == expected


def test_wave_requires_approval_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown approval 'maybe'"):
        wave_requires_approval("maybe", 0, 2)
    with pytest.raises(ValueError, match="wave 2 is not one of 2 waves"):
        wave_requires_approval("none", 2, 2)


# --- gate -------------------------------------------------------------------------------

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
HOLDS = PolicyVerdict(False, "0 of 3 executed tasks failed (0.0%), not above max_failures 10%")
TRIPS = PolicyVerdict(True, "3 of 3 executed tasks failed (100.0%), above max_failures 10%")
DONE_WAVE = [T.SUCCEEDED, T.SKIPPED, T.SUCCEEDED]


def gate(
    states: list[TaskState] = DONE_WAVE,
    *,
    verdict: PolicyVerdict = HOLDS,
    is_last_wave: bool = False,
    finished_at: datetime | None = NOW,
    soak_seconds: float = 0,
    requires_approval: bool = False,
    approved: bool = False,
    now: datetime = NOW,
) -> Gate:
    return gate_next_wave(
        states, verdict=verdict, is_last_wave=is_last_wave, finished_at=finished_at,
        soak_seconds=soak_seconds, requires_approval=requires_approval, approved=approved,
        now=now,
    )


def test_gate_opens_when_all_conditions_hold() -> None:
    result = gate()
    assert result.decision is D.OPEN
    assert result.reason == f"the wave finished; {HOLDS.reason}"
    assert result.soak_ends_at is None


def test_gate_trips_first_even_with_tasks_in_flight() -> None:
    result = gate([T.FAILED, T.INSTALLING, T.PENDING], verdict=TRIPS, is_last_wave=True)
    assert result == Gate(D.TRIPPED, TRIPS.reason)


def test_gate_waits_for_unfinished_tasks() -> None:
    result = gate([T.SUCCEEDED, T.VERIFYING, T.PENDING, T.DISPATCHING])
    assert result == Gate(D.WAIT_TASKS, "3 of 4 tasks of the wave are not finished")


def test_last_wave_is_done_without_soak_or_approval() -> None:
    result = gate(is_last_wave=True, soak_seconds=600, requires_approval=True)
    assert result.decision is D.DONE
    assert result.reason == f"the last wave finished; {HOLDS.reason}"


def test_gate_soaks() -> None:
    result = gate(soak_seconds=300, finished_at=NOW - timedelta(seconds=100.5))
    assert result.decision is D.WAIT_SOAK
    assert result.reason == "soaking: 200 s of 300 s left"
    assert result.soak_ends_at == NOW + timedelta(seconds=199.5)


def test_gate_opens_when_the_soak_has_passed() -> None:
    assert gate(soak_seconds=300, finished_at=NOW - timedelta(seconds=300)).decision is D.OPEN


def test_soak_starts_only_when_the_finish_is_recorded() -> None:
    result = gate(soak_seconds=60, finished_at=None)
    assert result.decision is D.WAIT_SOAK
    assert result.reason == "the wave finished; its soak of 60 s starts when that is recorded"
    assert gate(soak_seconds=0, finished_at=None).decision is D.OPEN


def test_gate_soaks_before_asking_for_approval() -> None:
    soaking = gate(soak_seconds=60, finished_at=NOW, requires_approval=True)
    assert soaking.decision is D.WAIT_SOAK
    soaked = gate(soak_seconds=60, finished_at=NOW - timedelta(minutes=2), requires_approval=True)
    assert soaked == Gate(
        D.WAIT_APPROVAL, "the wave finished; the next wave waits for an operator's approval"
    )


def test_approval_given_opens_and_early_approval_counts() -> None:
    assert gate(requires_approval=True, approved=True).decision is D.OPEN
    early = gate(soak_seconds=60, finished_at=NOW, requires_approval=True, approved=True)
    assert early.decision is D.WAIT_SOAK


def test_approval_alone_does_not_skip_unfinished_tasks() -> None:
    result = gate([T.INSTALLING], requires_approval=True, approved=True)
    assert result.decision is D.WAIT_TASKS


def test_gate_wave_states_are_reachable_from_running() -> None:
    assert set(GATE_WAVE_STATE) == set(GateDecision)
    for decision, state in GATE_WAVE_STATE.items():
        assert state is WaveState.RUNNING or state in WAVE_TRANSITIONS[WaveState.RUNNING], decision
    assert GATE_WAVE_STATE[D.WAIT_SOAK] is WaveState.SOAKING
    assert GATE_WAVE_STATE[D.WAIT_APPROVAL] is WaveState.AWAITING_APPROVAL
    assert GATE_WAVE_STATE[D.TRIPPED] is WaveState.FAILED
    assert WaveState.SUCCEEDED in WAVE_TRANSITIONS[WaveState.SOAKING]
    assert WaveState.SUCCEEDED in WAVE_TRANSITIONS[WaveState.AWAITING_APPROVAL]


# --- the canary's own rule and how a finished rollout ends -------------------------------


@pytest.mark.parametrize(
    ("allowed", "failed", "more_waves", "tripped"),
    [
        (0, 0, True, False),
        (0, 1, True, True),  # the README's waves and the defaults: one failure stops it
        (1, 1, True, False),
        (1, 2, True, True),
        (0, 5, False, False),  # one wave: no canary, max_failures alone decides
    ],
)
def test_a_failed_canary_trips_whatever_min_executed_says(
    allowed: int, failed: int, more_waves: bool, tripped: bool
) -> None:
    verdict = evaluate_canary(allowed, Outcomes(executed=max(1, failed), failed=failed),
                              more_waves=more_waves)
    assert verdict.tripped is tripped
    if tripped:
        assert f"more than canary_max_failures {allowed}" in verdict.reason


@pytest.mark.parametrize(
    ("executed", "failed", "state"),
    [
        (0, 0, RolloutState.SUCCEEDED),  # everything skipped
        (10, 0, RolloutState.SUCCEEDED),
        (10, 1, RolloutState.COMPLETED_WITH_FAILURES),
        (2, 2, RolloutState.FAILED),  # every executed task failed: never a success
        (1, 1, RolloutState.FAILED),
    ],
)
def test_how_a_finished_rollout_ends(executed: int, failed: int, state: RolloutState) -> None:
    final, reason = final_rollout_state(Outcomes(executed, failed))
    assert final is state
    assert reason


# added with `make mutation` (tools/mutation.sh): mutants of policy.py the tests above let live


def test_how_a_finished_rollout_ends_as_the_operator_reads_it() -> None:
    """The exact sentence `rollout show` and the reports print as the end reason."""
    assert final_rollout_state(Outcomes(0, 0)) == (
        RolloutState.SUCCEEDED, "every task succeeded or was skipped")
    assert final_rollout_state(Outcomes(1, 1)) == (
        RolloutState.FAILED, "every executed task failed (1 of 1 task)")
    assert final_rollout_state(Outcomes(3, 3)) == (
        RolloutState.FAILED, "every executed task failed (3 of 3 tasks)")
    assert final_rollout_state(Outcomes(10, 4)) == (
        RolloutState.COMPLETED_WITH_FAILURES, "4 of 10 executed tasks failed")


def test_canary_reasons_as_the_operator_reads_them() -> None:
    """The exact sentences of the canary rule, singular and plural."""
    assert evaluate_canary(1, Outcomes(5, 1), more_waves=True) == PolicyVerdict(
        False, "1 task of the canary wave failed, not more than canary_max_failures 1")
    assert evaluate_canary(1, Outcomes(5, 2), more_waves=True) == PolicyVerdict(
        True, "2 tasks of the canary wave failed, more than canary_max_failures 1")
    assert evaluate_canary(0, Outcomes(5, 0), more_waves=True) == PolicyVerdict(
        False, "0 tasks of the canary wave failed, not more than canary_max_failures 0")
    assert evaluate_canary(0, Outcomes(5, 5), more_waves=False) == PolicyVerdict(
        False, "a single wave: no canary")


def test_impossible_counts_error_as_the_operator_reads_it() -> None:
    with pytest.raises(ValueError) as refused:
        evaluate_policy(pct("10%"), 0, 1, 2)
    assert str(refused.value) == (
        "need 0 <= failed <= executed and min_executed >= 0, got failed=2, executed=1, "
        "min_executed=0")
