from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

import pytest

from orchestrator.domain.states import (
    ACTIVE_ROLLOUT_STATES,
    EXECUTED_TASK_STATES,
    FAILED_TASK_STATES,
    IN_FLIGHT_TASK_STATES,
    RETRYABLE_TASK_STATES,
    ROLLOUT_OPERATIONS,
    ROLLOUT_RETRY_TRANSITIONS,
    ROLLOUT_TRANSITIONS,
    TASK_TRANSITIONS,
    TERMINAL_ROLLOUT_STATES,
    TERMINAL_TASK_STATES,
    TERMINAL_WAVE_STATES,
    WAVE_RETRY_TRANSITIONS,
    WAVE_TRANSITIONS,
    InvalidTransition,
    OperationNotAllowed,
    RolloutState,
    TaskState,
    WaveState,
    can_transition_rollout,
    can_transition_task,
    can_transition_wave,
    check_operation,
    check_rollout_transition,
    check_task_transition,
    check_wave_transition,
)

R = RolloutState
T = TaskState
W = WaveState

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "0001_initial.sql"


def _checked_states(table: str) -> list[str]:
    """The values of the `state IN (...)` CHECK of `table`: the initial migration's, or the
    one a later migration put in its place (the last one wins)."""
    states: list[str] = []
    for path in sorted(MIGRATION.parent.glob("*.sql")):
        sql = path.read_text()
        if f"CREATE TABLE {table} (" in sql:
            body = sql[sql.index(f"CREATE TABLE {table} ("):]
            found = re.search(
                r"state\s+text NOT NULL DEFAULT '\w+' CHECK \(state IN \((.*?)\)\)", body, re.S)
            assert found is not None
            states = re.findall(r"'(\w+)'", found.group(1))
        for later in re.finditer(
            rf"ALTER TABLE {table} ADD CONSTRAINT {table}_state_check CHECK \(state IN \((.*?)\)\)",
            sql, re.S,
        ):
            states = re.findall(r"'(\w+)'", later.group(1))
    return states


@pytest.mark.parametrize(
    ("table", "enum"),
    [("rollouts", RolloutState), ("rollout_waves", WaveState), ("tasks", TaskState)],
)
def test_enum_values_are_the_migration_states(table: str, enum: type[StrEnum]) -> None:
    assert [member.value for member in enum] == _checked_states(table)


def test_in_flight_states_match_the_migration_indexes() -> None:
    sql = MIGRATION.read_text()
    assert "WHERE state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')" in sql
    assert {s.value for s in IN_FLIGHT_TASK_STATES} == {"DISPATCHING", "INSTALLING", "VERIFYING"}
    assert "WHERE state IN ('SCHEDULED', 'RUNNING', 'WAITING_WINDOW')" in sql
    assert ACTIVE_ROLLOUT_STATES == {R.SCHEDULED, R.RUNNING, R.WAITING_WINDOW}


def test_states_are_strings() -> None:
    assert R.WAITING_WINDOW == "WAITING_WINDOW"
    assert f"{T.TIMED_OUT}" == "TIMED_OUT"
    assert TaskState("SKIPPED") is T.SKIPPED


@pytest.mark.parametrize(
    ("table", "enum"),
    [(ROLLOUT_TRANSITIONS, RolloutState), (WAVE_TRANSITIONS, WaveState),
     (TASK_TRANSITIONS, TaskState)],
)
def test_tables_cover_every_state_and_never_loop(
    table: Mapping[StrEnum, frozenset[StrEnum]], enum: type[StrEnum]
) -> None:
    assert set(table) == set(enum)
    for state, nexts in table.items():
        assert state not in nexts
        assert nexts <= set(enum)


def test_tables_are_frozen() -> None:
    with pytest.raises(TypeError):
        ROLLOUT_TRANSITIONS[R.DRAFT] = frozenset()  # type: ignore[index]
    with pytest.raises(TypeError):
        TASK_TRANSITIONS[T.PENDING] = frozenset()  # type: ignore[index]
    with pytest.raises(TypeError):
        ROLLOUT_OPERATIONS["pause"] = frozenset()  # type: ignore[index]


def test_terminal_sets_are_the_states_without_exits() -> None:
    assert TERMINAL_ROLLOUT_STATES == {s for s, n in ROLLOUT_TRANSITIONS.items() if not n}
    assert TERMINAL_WAVE_STATES == {s for s, n in WAVE_TRANSITIONS.items() if not n}
    assert TERMINAL_TASK_STATES == {s for s, n in TASK_TRANSITIONS.items() if not n}
    assert TERMINAL_ROLLOUT_STATES == {R.SUCCEEDED, R.COMPLETED_WITH_FAILURES, R.FAILED,
                                      R.CANCELLED}
    assert TERMINAL_TASK_STATES == {T.SUCCEEDED, T.FAILED, T.TIMED_OUT, T.SKIPPED, T.CANCELLED}


def test_task_state_groups() -> None:
    assert IN_FLIGHT_TASK_STATES == {T.DISPATCHING, T.INSTALLING, T.VERIFYING}
    assert EXECUTED_TASK_STATES == {T.SUCCEEDED, T.FAILED, T.TIMED_OUT}
    assert FAILED_TASK_STATES == {T.FAILED, T.TIMED_OUT}
    assert RETRYABLE_TASK_STATES == {T.FAILED, T.TIMED_OUT, T.CANCELLED}
    assert not IN_FLIGHT_TASK_STATES & TERMINAL_TASK_STATES
    assert EXECUTED_TASK_STATES <= TERMINAL_TASK_STATES
    assert FAILED_TASK_STATES <= EXECUTED_TASK_STATES
    assert RETRYABLE_TASK_STATES <= TERMINAL_TASK_STATES


EXPECTED_ROLLOUT = {
    R.DRAFT: {R.SCHEDULED, R.RUNNING, R.CANCELLED},
    R.SCHEDULED: {R.RUNNING, R.WAITING_WINDOW, R.CANCELLED, R.PAUSED},
    R.RUNNING: {R.PAUSED, R.WAITING_WINDOW, R.SUCCEEDED, R.COMPLETED_WITH_FAILURES, R.FAILED,
                R.CANCELLED},
    R.PAUSED: {R.RUNNING, R.CANCELLED, R.FAILED},
    R.WAITING_WINDOW: {R.RUNNING, R.PAUSED, R.CANCELLED, R.FAILED},
    R.SUCCEEDED: set(),
    R.COMPLETED_WITH_FAILURES: set(),
    R.FAILED: set(),
    R.CANCELLED: set(),
}

EXPECTED_TASK = {
    T.PENDING: {T.DISPATCHING, T.SKIPPED, T.CANCELLED},
    T.DISPATCHING: {T.INSTALLING, T.FAILED, T.TIMED_OUT, T.PENDING, T.SUCCEEDED, T.SKIPPED,
                    T.CANCELLED},
    T.INSTALLING: {T.VERIFYING, T.FAILED, T.TIMED_OUT, T.PENDING},
    T.VERIFYING: {T.SUCCEEDED, T.FAILED, T.TIMED_OUT},
    T.SUCCEEDED: set(),
    T.FAILED: set(),
    T.TIMED_OUT: set(),
    T.SKIPPED: set(),
    T.CANCELLED: set(),
}


@pytest.mark.parametrize("a", list(RolloutState))
@pytest.mark.parametrize("b", list(RolloutState))
def test_rollout_transitions(a: RolloutState, b: RolloutState) -> None:
    allowed = b in EXPECTED_ROLLOUT[a]
    assert can_transition_rollout(a, b) is allowed
    if allowed:
        check_rollout_transition(a, b)
    else:
        with pytest.raises(InvalidTransition, match=f"rollout cannot go from {a} to {b}$"):
            check_rollout_transition(a, b)


@pytest.mark.parametrize("a", list(TaskState))
@pytest.mark.parametrize("b", list(TaskState))
def test_task_transitions(a: TaskState, b: TaskState) -> None:
    allowed = b in EXPECTED_TASK[a]
    assert can_transition_task(a, b) is allowed
    if allowed:
        check_task_transition(a, b)
    else:
        with pytest.raises(InvalidTransition, match=f"task cannot go from {a} to {b}$"):
            check_task_transition(a, b)


@pytest.mark.parametrize("a", list(TaskState))
@pytest.mark.parametrize("b", list(TaskState))
def test_retry_failed_adds_only_retryable_to_pending(a: TaskState, b: TaskState) -> None:
    extra = a in {T.FAILED, T.TIMED_OUT, T.CANCELLED} and b is T.PENDING
    assert can_transition_task(a, b, retry_failed=True) is (b in EXPECTED_TASK[a] or extra)
    if extra:
        check_task_transition(a, b, retry_failed=True)


def test_succeeded_and_skipped_tasks_are_never_retried() -> None:
    for state in (T.SUCCEEDED, T.SKIPPED):
        assert not can_transition_task(state, T.PENDING, retry_failed=True)


@pytest.mark.parametrize("a", list(RolloutState))
@pytest.mark.parametrize("b", list(RolloutState))
def test_retry_failed_reopens_finished_rollouts(a: RolloutState, b: RolloutState) -> None:
    extra = a in TERMINAL_ROLLOUT_STATES and b is R.RUNNING
    assert can_transition_rollout(a, b, retry_failed=True) is (b in EXPECTED_ROLLOUT[a] or extra)
    assert set(ROLLOUT_RETRY_TRANSITIONS) == TERMINAL_ROLLOUT_STATES


def test_wave_transitions() -> None:
    assert can_transition_wave(W.PENDING, W.RUNNING)
    assert can_transition_wave(W.PENDING, W.CANCELLED)
    assert not can_transition_wave(W.PENDING, W.SUCCEEDED)
    assert can_transition_wave(W.RUNNING, W.SOAKING)
    assert can_transition_wave(W.RUNNING, W.AWAITING_APPROVAL)
    assert can_transition_wave(W.RUNNING, W.SUCCEEDED)
    assert can_transition_wave(W.RUNNING, W.FAILED)
    assert can_transition_wave(W.SOAKING, W.AWAITING_APPROVAL)
    assert not can_transition_wave(W.SOAKING, W.RUNNING)
    assert can_transition_wave(W.AWAITING_APPROVAL, W.SUCCEEDED)
    assert not can_transition_wave(W.AWAITING_APPROVAL, W.SOAKING)
    assert not can_transition_wave(W.FAILED, W.RUNNING)
    assert can_transition_wave(W.FAILED, W.RUNNING, retry_failed=True)
    assert set(WAVE_RETRY_TRANSITIONS) == TERMINAL_WAVE_STATES
    with pytest.raises(InvalidTransition, match="wave cannot go from SUCCEEDED to RUNNING"):
        check_wave_transition(W.SUCCEEDED, W.RUNNING)
    check_wave_transition(W.SUCCEEDED, W.RUNNING, retry_failed=True)


def _reachable(table: Mapping[StrEnum, frozenset[StrEnum]], start: StrEnum) -> set[StrEnum]:
    seen = {start}
    todo = [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(
    ("table", "start", "terminal"),
    [
        (ROLLOUT_TRANSITIONS, R.DRAFT, TERMINAL_ROLLOUT_STATES),
        (WAVE_TRANSITIONS, W.PENDING, TERMINAL_WAVE_STATES),
        (TASK_TRANSITIONS, T.PENDING, TERMINAL_TASK_STATES),
    ],
)
def test_every_state_is_reachable_and_can_finish(
    table: Mapping[StrEnum, frozenset[StrEnum]], start: StrEnum, terminal: frozenset[StrEnum]
) -> None:
    assert _reachable(table, start) == set(table)
    for state in table:
        assert _reachable(table, state) & terminal, state


def test_invalid_transition_carries_its_states() -> None:
    error = InvalidTransition("task", T.VERIFYING, T.PENDING)
    assert (error.kind, error.from_state, error.to_state) == ("task", "VERIFYING", "PENDING")
    assert str(error) == "task cannot go from VERIFYING to PENDING"


EXPECTED_OPERATIONS = {
    "start": {R.DRAFT, R.SCHEDULED},
    "pause": {R.SCHEDULED, R.RUNNING, R.WAITING_WINDOW},
    "resume": {R.PAUSED},
    "cancel": {R.DRAFT, R.SCHEDULED, R.RUNNING, R.PAUSED, R.WAITING_WINDOW},
    "approve": {R.RUNNING, R.PAUSED, R.WAITING_WINDOW},
    "retry-failed": {R.RUNNING, R.PAUSED, R.FAILED, R.SUCCEEDED, R.COMPLETED_WITH_FAILURES,
                     R.CANCELLED},
}


def test_operations_table() -> None:
    assert dict(ROLLOUT_OPERATIONS) == EXPECTED_OPERATIONS


@pytest.mark.parametrize("op", list(EXPECTED_OPERATIONS))
@pytest.mark.parametrize("state", list(RolloutState))
def test_check_operation(op: str, state: RolloutState) -> None:
    if state in EXPECTED_OPERATIONS[op]:
        check_operation(op, state)
        return
    with pytest.raises(OperationNotAllowed) as info:
        check_operation(op, state)
    assert str(info.value).startswith(f"cannot {op} rollout: it is {state} ({op} is allowed in ")
    assert info.value.operation == op
    assert info.value.state is state
    assert set(info.value.allowed) == EXPECTED_OPERATIONS[op]


def test_operation_messages() -> None:
    with pytest.raises(OperationNotAllowed) as info:
        check_operation("pause", R.CANCELLED)
    assert str(info.value) == (
        "cannot pause rollout: it is CANCELLED "
        "(pause is allowed in SCHEDULED, RUNNING, WAITING_WINDOW)"
    )
    with pytest.raises(OperationNotAllowed) as info:
        check_operation("resume", R.RUNNING)
    assert str(info.value) == "cannot resume rollout: it is RUNNING (resume is allowed in PAUSED)"
    with pytest.raises(OperationNotAllowed) as info:
        check_operation("start", R.SUCCEEDED)
    assert str(info.value) == (
        "cannot start rollout: it is SUCCEEDED (start is allowed in DRAFT, SCHEDULED)"
    )


def test_unknown_operation_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown rollout operation 'restart'"):
        check_operation("restart", R.RUNNING)


def test_operations_lead_to_allowed_transitions() -> None:
    """Each state change an operation implies is one the rollout table allows."""
    for state in ROLLOUT_OPERATIONS["pause"]:
        assert can_transition_rollout(state, R.PAUSED)
    for state in ROLLOUT_OPERATIONS["resume"]:
        assert can_transition_rollout(state, R.RUNNING)
    for state in ROLLOUT_OPERATIONS["cancel"]:
        assert can_transition_rollout(state, R.CANCELLED)
    for state in ROLLOUT_OPERATIONS["start"]:
        assert can_transition_rollout(state, R.RUNNING)
    for state in ROLLOUT_OPERATIONS["retry-failed"] & TERMINAL_ROLLOUT_STATES:
        assert can_transition_rollout(state, R.RUNNING, retry_failed=True)
    assert ROLLOUT_OPERATIONS["cancel"] == set(RolloutState) - TERMINAL_ROLLOUT_STATES
