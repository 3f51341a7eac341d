"""State machines of rollouts, waves and tasks, and operator controls (README: "How a task
runs"; docs/architecture.md says who writes each task transition).

The enum values are exactly the strings stored in the `state` columns of
`migrations/0001_initial.sql`. Every table below is a frozen mapping from a state to the
frozenset of states it may move to next; a state absent from a set is a forbidden move.
Staying in the same state (a lease changing hands, progress being written) is not a
transition and is not listed.

Retry-failed is the only way out of a terminal state, and it is kept out of the ordinary
tables on purpose: it is an operator action, never something the engine decides alone.
`can_transition_task` and `can_transition_rollout` accept it only with `retry_failed=True`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from orchestrator.domain.errors import OrchestratorError


class RolloutState(StrEnum):
    DRAFT = "DRAFT"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    WAITING_WINDOW = "WAITING_WINDOW"
    SUCCEEDED = "SUCCEEDED"
    # every wave ran and the failure policy held, but some tasks failed or timed out
    COMPLETED_WITH_FAILURES = "COMPLETED_WITH_FAILURES"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class WaveState(StrEnum):
    """State of one `rollout_waves` row.

    PENDING: not started. RUNNING: its tasks are being dispatched or are in flight.
    SOAKING: every task is terminal and the policy holds; the soak time is running.
    AWAITING_APPROVAL: soaked; the next wave waits for an operator's approval.
    SUCCEEDED: its gate opened (or it was the last wave and finished with the policy holding).
    FAILED: the failure policy tripped while it was the current wave.
    CANCELLED: the rollout was cancelled or failed before or while it ran.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SOAKING = "SOAKING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class TaskState(StrEnum):
    PENDING = "PENDING"
    DISPATCHING = "DISPATCHING"
    INSTALLING = "INSTALLING"
    VERIFYING = "VERIFYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"


_R = RolloutState
_W = WaveState
_T = TaskState

# Rollout transitions the engine and the operator controls may make.
#   DRAFT          -> SCHEDULED (start with a future schedule_at), RUNNING (start now),
#                     CANCELLED
#   SCHEDULED      -> RUNNING (schedule reached, or "start" now), WAITING_WINDOW (bound to
#                     windows and none open), PAUSED, CANCELLED
#   RUNNING        -> PAUSED, WAITING_WINDOW, SUCCEEDED (last wave done, every task
#                     succeeded or skipped), COMPLETED_WITH_FAILURES (last wave done, the
#                     policy held, some tasks failed or timed out), FAILED (policy tripped,
#                     or every executed task failed), CANCELLED
#   PAUSED         -> RUNNING (resume), CANCELLED, FAILED (installs still in flight when
#                     paused finished as failures and tripped the policy)
#   WAITING_WINDOW -> RUNNING (a window opened), PAUSED, CANCELLED, FAILED (in-flight
#                     failures tripped the policy)
#   SUCCEEDED, COMPLETED_WITH_FAILURES, FAILED, CANCELLED: terminal, no exits (see
#                     ROLLOUT_RETRY_TRANSITIONS).
ROLLOUT_TRANSITIONS: Mapping[RolloutState, frozenset[RolloutState]] = MappingProxyType({
    _R.DRAFT: frozenset({_R.SCHEDULED, _R.RUNNING, _R.CANCELLED}),
    _R.SCHEDULED: frozenset({_R.RUNNING, _R.WAITING_WINDOW, _R.PAUSED, _R.CANCELLED}),
    _R.RUNNING: frozenset({
        _R.PAUSED, _R.WAITING_WINDOW, _R.SUCCEEDED, _R.COMPLETED_WITH_FAILURES, _R.FAILED,
        _R.CANCELLED,
    }),
    _R.PAUSED: frozenset({_R.RUNNING, _R.CANCELLED, _R.FAILED}),
    _R.WAITING_WINDOW: frozenset({_R.RUNNING, _R.PAUSED, _R.CANCELLED, _R.FAILED}),
    _R.SUCCEEDED: frozenset(),
    _R.COMPLETED_WITH_FAILURES: frozenset(),
    _R.FAILED: frozenset(),
    _R.CANCELLED: frozenset(),
})

# Retry-failed on a finished rollout reopens it: its retryable tasks go back to PENDING and
# the rollout runs again. Only the "retry-failed" operation may make these moves.
ROLLOUT_RETRY_TRANSITIONS: Mapping[RolloutState, frozenset[RolloutState]] = MappingProxyType({
    _R.SUCCEEDED: frozenset({_R.RUNNING}),
    _R.COMPLETED_WITH_FAILURES: frozenset({_R.RUNNING}),
    _R.FAILED: frozenset({_R.RUNNING}),
    _R.CANCELLED: frozenset({_R.RUNNING}),
})

TERMINAL_ROLLOUT_STATES: frozenset[RolloutState] = frozenset(
    {_R.SUCCEEDED, _R.COMPLETED_WITH_FAILURES, _R.FAILED, _R.CANCELLED}
)
# The states the engine scans on every tick (the partial index rollouts_active_idx).
ACTIVE_ROLLOUT_STATES: frozenset[RolloutState] = frozenset(
    {_R.SCHEDULED, _R.RUNNING, _R.WAITING_WINDOW}
)

# Wave transitions.
#   PENDING           -> RUNNING (the wave starts), CANCELLED (rollout cancelled or failed
#                        before the wave started)
#   RUNNING           -> SOAKING, AWAITING_APPROVAL (no soak), SUCCEEDED (no soak, no
#                        approval, or last wave), FAILED (policy tripped), CANCELLED
#   SOAKING           -> AWAITING_APPROVAL, SUCCEEDED, FAILED, CANCELLED
#   AWAITING_APPROVAL -> SUCCEEDED (approved), FAILED, CANCELLED
#   SUCCEEDED, FAILED, CANCELLED: terminal (see WAVE_RETRY_TRANSITIONS).
WAVE_TRANSITIONS: Mapping[WaveState, frozenset[WaveState]] = MappingProxyType({
    _W.PENDING: frozenset({_W.RUNNING, _W.CANCELLED}),
    _W.RUNNING: frozenset({
        _W.SOAKING, _W.AWAITING_APPROVAL, _W.SUCCEEDED, _W.FAILED, _W.CANCELLED,
    }),
    _W.SOAKING: frozenset({_W.AWAITING_APPROVAL, _W.SUCCEEDED, _W.FAILED, _W.CANCELLED}),
    _W.AWAITING_APPROVAL: frozenset({_W.SUCCEEDED, _W.FAILED, _W.CANCELLED}),
    _W.SUCCEEDED: frozenset(),
    _W.FAILED: frozenset(),
    _W.CANCELLED: frozenset(),
})

# Retry-failed reopens a finished wave that holds retried tasks.
WAVE_RETRY_TRANSITIONS: Mapping[WaveState, frozenset[WaveState]] = MappingProxyType({
    _W.SUCCEEDED: frozenset({_W.RUNNING}),
    _W.FAILED: frozenset({_W.RUNNING}),
    _W.CANCELLED: frozenset({_W.RUNNING}),
})

TERMINAL_WAVE_STATES: frozenset[WaveState] = frozenset(
    {_W.SUCCEEDED, _W.FAILED, _W.CANCELLED}
)

# Task transitions.
#   PENDING     -> DISPATCHING (claimed; written before the install call, the intent
#                  record), SKIPPED (already at the target version), CANCELLED (never
#                  started: rollout cancelled, or the policy tripped)
#   DISPATCHING -> INSTALLING (install accepted), FAILED (permanent error: 400/403/404, or
#                  dispatch retries exhausted), TIMED_OUT, PENDING (transient error before
#                  an install was accepted, or the install was held back unsent: paused,
#                  window closing), SUCCEEDED (the target version found installed by an
#                  earlier attempt of the task), SKIPPED (the appliance was found already at
#                  the target version), CANCELLED (never sent: the rollout was cancelled or
#                  its failure policy tripped before the install left)
#   INSTALLING  -> VERIFYING, FAILED (task in ERROR, or back up on the old version),
#                  TIMED_OUT, PENDING (task in ERROR and the strategy's install_retries
#                  allow another attempt)
#   VERIFYING   -> SUCCEEDED, FAILED, TIMED_OUT
#   SUCCEEDED, FAILED, TIMED_OUT, SKIPPED, CANCELLED: terminal (see RETRYABLE_TASK_STATES).
TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = MappingProxyType({
    _T.PENDING: frozenset({_T.DISPATCHING, _T.SKIPPED, _T.CANCELLED}),
    _T.DISPATCHING: frozenset({
        _T.INSTALLING, _T.FAILED, _T.TIMED_OUT, _T.PENDING, _T.SUCCEEDED, _T.SKIPPED,
        _T.CANCELLED,
    }),
    _T.INSTALLING: frozenset({_T.VERIFYING, _T.FAILED, _T.TIMED_OUT, _T.PENDING}),
    _T.VERIFYING: frozenset({_T.SUCCEEDED, _T.FAILED, _T.TIMED_OUT}),
    _T.SUCCEEDED: frozenset(),
    _T.FAILED: frozenset(),
    _T.TIMED_OUT: frozenset(),
    _T.SKIPPED: frozenset(),
    _T.CANCELLED: frozenset(),
})

TERMINAL_TASK_STATES: frozenset[TaskState] = frozenset(
    {_T.SUCCEEDED, _T.FAILED, _T.TIMED_OUT, _T.SKIPPED, _T.CANCELLED}
)
# Tasks that may hold a lease and count against the concurrency limits.
IN_FLIGHT_TASK_STATES: frozenset[TaskState] = frozenset(
    {_T.DISPATCHING, _T.INSTALLING, _T.VERIFYING}
)
# Terminal tasks that ran an install attempt: the denominator of the failure policy.
EXECUTED_TASK_STATES: frozenset[TaskState] = frozenset({_T.SUCCEEDED, _T.FAILED, _T.TIMED_OUT})
# Executed tasks that count as failures for the failure policy.
FAILED_TASK_STATES: frozenset[TaskState] = frozenset({_T.FAILED, _T.TIMED_OUT})
# Retry-failed moves tasks in these states back to PENDING (and only retry-failed does).
RETRYABLE_TASK_STATES: frozenset[TaskState] = frozenset({_T.FAILED, _T.TIMED_OUT, _T.CANCELLED})


class InvalidTransition(OrchestratorError):
    """A state change that the machine of `kind` ("rollout", "wave", "task") forbids."""

    def __init__(self, kind: str, from_state: str, to_state: str) -> None:
        self.kind = kind
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"{kind} cannot go from {from_state} to {to_state}")


def can_transition_rollout(
    a: RolloutState, b: RolloutState, *, retry_failed: bool = False
) -> bool:
    """Whether a rollout may move from `a` to `b`; `retry_failed` also allows reopening."""
    if b in ROLLOUT_TRANSITIONS[a]:
        return True
    return retry_failed and b in ROLLOUT_RETRY_TRANSITIONS.get(a, frozenset())


def can_transition_wave(a: WaveState, b: WaveState, *, retry_failed: bool = False) -> bool:
    """Whether a wave may move from `a` to `b`; `retry_failed` also allows reopening."""
    if b in WAVE_TRANSITIONS[a]:
        return True
    return retry_failed and b in WAVE_RETRY_TRANSITIONS.get(a, frozenset())


def can_transition_task(a: TaskState, b: TaskState, *, retry_failed: bool = False) -> bool:
    """Whether a task may move from `a` to `b`.

    With `retry_failed`, a task in RETRYABLE_TASK_STATES may also go back to PENDING.
    """
    if b in TASK_TRANSITIONS[a]:
        return True
    return retry_failed and a in RETRYABLE_TASK_STATES and b is TaskState.PENDING


def check_rollout_transition(
    a: RolloutState, b: RolloutState, *, retry_failed: bool = False
) -> None:
    """Raise InvalidTransition unless `can_transition_rollout(a, b, ...)`."""
    if not can_transition_rollout(a, b, retry_failed=retry_failed):
        raise InvalidTransition("rollout", a, b)


def check_wave_transition(a: WaveState, b: WaveState, *, retry_failed: bool = False) -> None:
    """Raise InvalidTransition unless `can_transition_wave(a, b, ...)`."""
    if not can_transition_wave(a, b, retry_failed=retry_failed):
        raise InvalidTransition("wave", a, b)


def check_task_transition(a: TaskState, b: TaskState, *, retry_failed: bool = False) -> None:
    """Raise InvalidTransition unless `can_transition_task(a, b, ...)`."""
    if not can_transition_task(a, b, retry_failed=retry_failed):
        raise InvalidTransition("task", a, b)


# Operator controls (README: "A rollout against your own inventory") and the rollout
# states in which each is allowed.
#   start        DRAFT (now, or SCHEDULED when schedule_at is in the future), SCHEDULED
#                (start now instead of waiting for the schedule)
#   pause        SCHEDULED, RUNNING, WAITING_WINDOW: stops new dispatches only; installs
#                already accepted by appliances run to their end
#   resume       PAUSED
#   cancel       every non-terminal state: never-started tasks become CANCELLED, accepted
#                installs cannot be stopped and run to their end
#   approve      RUNNING, PAUSED, WAITING_WINDOW: approves the wave awaiting approval (or
#                the current wave's gate ahead of time); does not change the rollout state
#   retry-failed RUNNING, PAUSED (retry in place), FAILED, SUCCEEDED,
#                COMPLETED_WITH_FAILURES, CANCELLED (the rollout reopens:
#                ROLLOUT_RETRY_TRANSITIONS)
ROLLOUT_OPERATIONS: Mapping[str, frozenset[RolloutState]] = MappingProxyType({
    "start": frozenset({_R.DRAFT, _R.SCHEDULED}),
    "pause": frozenset({_R.SCHEDULED, _R.RUNNING, _R.WAITING_WINDOW}),
    "resume": frozenset({_R.PAUSED}),
    "cancel": frozenset({_R.DRAFT, _R.SCHEDULED, _R.RUNNING, _R.PAUSED, _R.WAITING_WINDOW}),
    "approve": frozenset({_R.RUNNING, _R.PAUSED, _R.WAITING_WINDOW}),
    "retry-failed": frozenset({
        _R.RUNNING, _R.PAUSED, _R.FAILED, _R.SUCCEEDED, _R.COMPLETED_WITH_FAILURES,
        _R.CANCELLED,
    }),
})


def _in_declaration_order(states: frozenset[RolloutState]) -> list[RolloutState]:
    return [s for s in RolloutState if s in states]


class OperationNotAllowed(OrchestratorError):
    """An operator control refused because of the rollout's current state."""

    def __init__(self, operation: str, state: RolloutState) -> None:
        self.operation = operation
        self.state = state
        self.allowed: tuple[RolloutState, ...] = tuple(
            _in_declaration_order(ROLLOUT_OPERATIONS[operation])
        )
        allowed = ", ".join(self.allowed)
        super().__init__(
            f"cannot {operation} rollout: it is {state} ({operation} is allowed in {allowed})"
        )


def check_operation(op: str, state: RolloutState) -> None:
    """Raise OperationNotAllowed if operator control `op` is not allowed in `state`.

    An unknown `op` is a programming error and raises ValueError.
    """
    allowed = ROLLOUT_OPERATIONS.get(op)
    if allowed is None:
        known = ", ".join(ROLLOUT_OPERATIONS)
        raise ValueError(f"unknown rollout operation {op!r} (known: {known})")
    if state not in allowed:
        raise OperationNotAllowed(op, state)
