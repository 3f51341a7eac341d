"""The failure policy and the wave gate (README: "How a rollout ends").

`evaluate_policy` judges the failures of a rollout against its `max_failures`;
`gate_next_wave` decides, from the current wave's tasks, the verdict, the soak time and the
approval, whether the next wave may start. Both are pure: the caller passes the task states
and the current time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from orchestrator.domain.states import (
    EXECUTED_TASK_STATES,
    FAILED_TASK_STATES,
    TERMINAL_TASK_STATES,
    RolloutState,
    TaskState,
    WaveState,
)
from orchestrator.domain.strategy import APPROVALS, Size


class Outcomes(NamedTuple):
    """How many tasks executed (SUCCEEDED, FAILED, TIMED_OUT) and how many of them failed."""

    executed: int
    failed: int


StateCounts = Mapping[TaskState, int]
"""How many tasks are in each state (a `collections.Counter` of states, for instance)."""


def count_outcomes(states: Iterable[TaskState] | StateCounts) -> Outcomes:
    """Count executed and failed tasks among `states` (each task's state, or how many tasks
    are in each state).

    Executed: terminal tasks that ran an install (SUCCEEDED, FAILED, TIMED_OUT). SKIPPED
    (already at the target) and CANCELLED (never started) tasks did not execute; pending and
    in-flight tasks have not executed yet. Failed: FAILED or TIMED_OUT.
    """
    executed = failed = 0
    for state, n in Counter(states).items():
        if state in EXECUTED_TASK_STATES:
            executed += n
            if state in FAILED_TASK_STATES:
                failed += n
    return Outcomes(executed, failed)


@dataclass(frozen=True)
class PolicyVerdict:
    """Whether the failure policy tripped, and a sentence saying why or why not."""

    tripped: bool
    reason: str


def _share_text(failed: int, executed: int, threshold: Decimal) -> str:
    """failed / executed as a percentage with one decimal, or more when one decimal would
    hide on which side of the threshold it lies (10.04% is not shown as "10.0%")."""
    share = Decimal(failed * 100) / Decimal(executed)
    text = f"{share:.1f}"
    for places in range(2, 7):
        if (Decimal(text) == threshold) == (share == threshold):
            break
        text = f"{share:.{places}f}"
    return f"{text}%"


def evaluate_policy(
    max_failures: Size, min_executed: int, executed: int, failed: int
) -> PolicyVerdict:
    """Judge `failed` out of `executed` tasks (see `count_outcomes`) against `max_failures`.

    A count N trips on MORE than N failed tasks: max_failures=0 trips at the first failure,
    max_failures=2 at the third. A count ignores `min_executed`.
    A percentage p trips when executed >= min_executed and failed / executed * 100 > p
    (strictly above, computed exactly): with p=10%, 1 failure of 10 holds and 2 of 10 trip;
    it never trips while nothing has executed, and 100% never trips.
    Raises ValueError unless 0 <= failed <= executed and min_executed >= 0.
    """
    if not 0 <= failed <= executed or min_executed < 0:
        raise ValueError(
            f"need 0 <= failed <= executed and min_executed >= 0, got failed={failed}, "
            f"executed={executed}, min_executed={min_executed}"
        )
    noun = "task" if executed == 1 else "tasks"
    tally = f"{failed} of {executed} executed {noun} failed"
    if max_failures.count is not None:
        limit = max_failures.count
        if failed > limit:
            return PolicyVerdict(True, f"{tally}, more than max_failures {limit}")
        return PolicyVerdict(False, f"{tally}, not more than max_failures {limit}")
    assert max_failures.percent is not None
    threshold = max_failures.percent
    if executed == 0:
        return PolicyVerdict(False, f"no task has executed yet (max_failures {max_failures})")
    share = _share_text(failed, executed, threshold)
    if executed < min_executed:
        return PolicyVerdict(
            False,
            f"{tally} ({share}); max_failures {max_failures} applies once {min_executed} "
            "tasks have executed",
        )
    if Decimal(failed * 100) > threshold * executed:
        return PolicyVerdict(True, f"{tally} ({share}), above max_failures {max_failures}")
    return PolicyVerdict(False, f"{tally} ({share}), not above max_failures {max_failures}")


def evaluate_canary(
    canary_max_failures: int, canary: Outcomes, *, more_waves: bool
) -> PolicyVerdict:
    """The canary's own rule: the canary wave (wave 0) exists to stop a bad version before
    it spreads, so more than `canary_max_failures` failed tasks in it trip the rollout at
    once, whatever `max_failures` and `min_executed` say. A rollout of one wave has no
    canary (its only wave is the whole rollout): the rule does not apply."""
    if not more_waves:
        return PolicyVerdict(False, "a single wave: no canary")
    noun = "task" if canary.failed == 1 else "tasks"
    if canary.failed > canary_max_failures:
        return PolicyVerdict(
            True, f"{canary.failed} {noun} of the canary wave failed, more than "
                  f"canary_max_failures {canary_max_failures}",
        )
    return PolicyVerdict(
        False, f"{canary.failed} {noun} of the canary wave failed, not more than "
               f"canary_max_failures {canary_max_failures}",
    )


def final_rollout_state(outcomes: Outcomes) -> tuple[RolloutState, str]:
    """How a rollout whose last wave finished with the policy holding ends.

    SUCCEEDED only when no executed task failed (every task succeeded or was skipped);
    FAILED when every executed task failed (a rollout that installed nothing anywhere is
    never a success, whatever min_executed said); otherwise COMPLETED_WITH_FAILURES."""
    if outcomes.failed == 0:
        return RolloutState.SUCCEEDED, "every task succeeded or was skipped"
    if outcomes.failed == outcomes.executed:
        noun = "task" if outcomes.executed == 1 else "tasks"
        return (RolloutState.FAILED,
                f"every executed task failed ({outcomes.failed} of {outcomes.executed} "
                f"{noun})")
    return (RolloutState.COMPLETED_WITH_FAILURES,
            f"{outcomes.failed} of {outcomes.executed} executed tasks failed")


def wave_requires_approval(approval: str, wave_number: int, wave_count: int) -> bool:
    """Whether the gate after wave `wave_number` (0-based) of `wave_count` waits for an
    operator's approval, per the strategy's `approval`.

    "none": never. "each-wave": after every wave but the last. "after-canary": after wave 0
    only, when there is a next wave. The last wave never needs approval: nothing follows it.
    """
    if approval not in APPROVALS:
        raise ValueError(f"unknown approval {approval!r} (known: {', '.join(APPROVALS)})")
    if not 0 <= wave_number < wave_count:
        raise ValueError(f"wave {wave_number} is not one of {wave_count} waves")
    has_next = wave_number < wave_count - 1
    if approval == "each-wave":
        return has_next
    if approval == "after-canary":
        return has_next and wave_number == 0
    return False


class GateDecision(StrEnum):
    """What the gate after the current wave says.

    WAIT_TASKS: some task of the wave is not terminal yet.
    WAIT_SOAK: the wave finished; its soak time has not passed.
    WAIT_APPROVAL: soaked; an operator must approve before the next wave starts.
    OPEN: the next wave may start.
    TRIPPED: the failure policy tripped: stop dispatching, let in-flight installs finish,
        cancel the never-started tasks, end the rollout FAILED with the verdict's reason.
    DONE: the last wave finished with the policy holding: the rollout ends in the state
        `final_rollout_state` gives (SUCCEEDED, COMPLETED_WITH_FAILURES or FAILED).
    """

    WAIT_TASKS = "WAIT_TASKS"
    WAIT_SOAK = "WAIT_SOAK"
    WAIT_APPROVAL = "WAIT_APPROVAL"
    OPEN = "OPEN"
    TRIPPED = "TRIPPED"
    DONE = "DONE"


# The state the current wave's row should be in for each decision.
GATE_WAVE_STATE: Mapping[GateDecision, WaveState] = MappingProxyType({
    GateDecision.WAIT_TASKS: WaveState.RUNNING,
    GateDecision.WAIT_SOAK: WaveState.SOAKING,
    GateDecision.WAIT_APPROVAL: WaveState.AWAITING_APPROVAL,
    GateDecision.OPEN: WaveState.SUCCEEDED,
    GateDecision.TRIPPED: WaveState.FAILED,
    GateDecision.DONE: WaveState.SUCCEEDED,
})


@dataclass(frozen=True)
class Gate:
    """A gate decision, a sentence for people, and when a soak ends (WAIT_SOAK only)."""

    decision: GateDecision
    reason: str
    soak_ends_at: datetime | None = None


def gate_next_wave(
    wave_task_states: Iterable[TaskState] | StateCounts,
    *,
    verdict: PolicyVerdict,
    is_last_wave: bool,
    finished_at: datetime | None,
    soak_seconds: float,
    requires_approval: bool,
    approved: bool,
    now: datetime,
) -> Gate:
    """Decide whether the wave after the current one may start.

    The checks, in order: a tripped `verdict` (the policy over the whole rollout's tasks,
    see `count_outcomes`) gives TRIPPED at once, even with tasks still in flight; a task of
    the current wave not terminal gives WAIT_TASKS; the last wave, all terminal, gives DONE
    (no soak and no approval after the last wave); `now - finished_at < soak_seconds` gives
    WAIT_SOAK (`finished_at` is when the wave's last task finished; when soak_seconds > 0 and
    it is not recorded yet, the soak has not started); `requires_approval and not approved`
    gives WAIT_APPROVAL (an approval given early, during the wave or its soak, counts);
    otherwise OPEN. Whether the rollout is paused or outside its window is not the gate's
    business: the caller does not start a wave then.
    """
    if verdict.tripped:
        return Gate(GateDecision.TRIPPED, verdict.reason)
    states = Counter(wave_task_states)
    unfinished = sum(n for state, n in states.items() if state not in TERMINAL_TASK_STATES)
    if unfinished:
        return Gate(
            GateDecision.WAIT_TASKS,
            f"{unfinished} of {states.total()} tasks of the wave are not finished",
        )
    if is_last_wave:
        return Gate(GateDecision.DONE, f"the last wave finished; {verdict.reason}")
    if soak_seconds > 0:
        if finished_at is None:
            return Gate(
                GateDecision.WAIT_SOAK,
                f"the wave finished; its soak of {soak_seconds:g} s starts when that is recorded",
            )
        soak_ends_at = finished_at + timedelta(seconds=soak_seconds)
        if now < soak_ends_at:
            left = math.ceil((soak_ends_at - now).total_seconds())
            return Gate(
                GateDecision.WAIT_SOAK,
                f"soaking: {left} s of {soak_seconds:g} s left",
                soak_ends_at,
            )
    if requires_approval and not approved:
        return Gate(
            GateDecision.WAIT_APPROVAL,
            "the wave finished; the next wave waits for an operator's approval",
        )
    return Gate(GateDecision.OPEN, f"the wave finished; {verdict.reason}")
