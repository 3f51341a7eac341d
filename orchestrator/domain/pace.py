"""The adaptive pace (strategy key `pace`: "adaptive"): how many installs a rollout keeps
in flight, decided again after each interval from how the last interval went.

The pace starts at `max_concurrency` and, once per `pace_interval_seconds`, looks at the
installs that finished in that interval:

1. more failed installs than `pace_failure_threshold` (a count, or a share of the
   interval's finished installs): it halves;
2. any failed install while the failure policy would trip after fewer further failures
   than the pace lets run at once (`failures_left` < the current pace): it halves;
3. a median install (of the interval's successes) longer than `pace_duration_band` percent
   of the canary's median: it halves;
4. otherwise, when some install succeeded and tasks waited for a slot at the current pace
   (the pace was what held them back): it grows by `pace_step_percent` (at least by one);
5. otherwise it holds.

It never goes below `pace_min_concurrency` nor above `pace_max_concurrency`. Everything
here is pure: the engine (orchestrator/engine/pace.py) gathers the interval's figures from
the database and keeps the current pace in the rollout's row. docs/pace.md describes it for
operators, with an example run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Final

from orchestrator.domain.strategy import PACE_MODES, Size, Strategy

# pace_max_concurrency unset: this many times the starting concurrency
DEFAULT_MAX_FACTOR: Final = 4


class Change(StrEnum):
    GROW = "grow"
    SHRINK = "shrink"
    HOLD = "hold"


@dataclass(frozen=True)
class PaceParams:
    """The pace's bounds and rules, resolved for one rollout (see `params_of`).

    start: the first pace (`max_concurrency`); minimum <= start <= maximum.
    step_percent: the growth after a healthy interval (50: x1.5).
    failure_threshold: an interval with more failed installs than this count, or a larger
        failed share than this percentage, halves the pace.
    duration_band_percent: an interval whose median install takes longer than this
        percentage of the canary's median halves the pace.
    interval_seconds: how often the pace is decided.
    """

    start: int
    minimum: int
    maximum: int
    step_percent: int
    failure_threshold: Size
    duration_band_percent: int
    interval_seconds: float

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.start <= self.maximum:
            raise ValueError(
                f"need 1 <= minimum <= start <= maximum, got minimum={self.minimum}, "
                f"start={self.start}, maximum={self.maximum}")
        if self.step_percent < 1 or self.duration_band_percent < 100:
            raise ValueError(
                f"need step_percent >= 1 and duration_band_percent >= 100, got "
                f"{self.step_percent} and {self.duration_band_percent}")
        if not self.interval_seconds > 0:
            raise ValueError(f"interval_seconds must be > 0, got {self.interval_seconds!r}")

    def clamp(self, concurrency: int) -> int:
        return max(self.minimum, min(self.maximum, concurrency))


def params_of(strategy: Strategy, start: int, targeted: int) -> PaceParams:
    """The pace's parameters for a rollout of `targeted` appliances whose `max_concurrency`
    resolves to `start` (planning.resolve_max_concurrency).

    An unset `pace_max_concurrency` is DEFAULT_MAX_FACTOR times `start`; a percentage is
    resolved against `targeted`. The bounds always contain `start`: a maximum below it (a
    percentage of a small rollout) is raised to it, a minimum above it lowered to it.
    """
    if strategy.pace_max_concurrency is None:
        maximum = DEFAULT_MAX_FACTOR * start
    else:
        maximum = strategy.pace_max_concurrency.resolve(targeted)
    return PaceParams(
        start=start, minimum=min(strategy.pace_min_concurrency, start),
        maximum=max(maximum, start), step_percent=strategy.pace_step_percent,
        failure_threshold=strategy.pace_failure_threshold,
        duration_band_percent=strategy.pace_duration_band,
        interval_seconds=strategy.pace_interval_seconds,
    )


@dataclass(frozen=True)
class Interval:
    """What one interval saw: its finished installs (SUCCEEDED; FAILED or TIMED_OUT), the
    median seconds from dispatch to success of its successes (None: none succeeded), and
    whether tasks waited for a slot while the pace's limit was full (`saturated`)."""

    succeeded: int
    failed: int
    median_seconds: float | None = None
    saturated: bool = False

    def __post_init__(self) -> None:
        if self.succeeded < 0 or self.failed < 0:
            raise ValueError(f"counts must be >= 0, got succeeded={self.succeeded}, "
                             f"failed={self.failed}")

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed


@dataclass(frozen=True)
class PaceDecision:
    """The pace after an interval, the pace before it, and a sentence saying why."""

    concurrency: int
    previous: int
    reason: str

    @property
    def change(self) -> Change:
        if self.concurrency > self.previous:
            return Change.GROW
        if self.concurrency < self.previous:
            return Change.SHRINK
        return Change.HOLD


def failures_left(max_failures: Size, executed: int, failed: int) -> int | None:
    """How many more failed tasks (and no success) the failure policy tolerates before it
    trips (policy.evaluate_policy), for a rollout where `failed` of `executed` tasks failed;
    None: it never trips (100%).

    A count N tolerates N - failed more. A percentage p tolerates the largest f with
    (failed + f) / (executed + f) <= p / 100. `min_executed` is left out: it can only delay
    a trip, so this is never more than the truth.
    """
    if not 0 <= failed <= executed:
        raise ValueError(f"need 0 <= failed <= executed, got failed={failed}, "
                         f"executed={executed}")
    if max_failures.count is not None:
        return max(0, max_failures.count - failed)
    assert max_failures.percent is not None
    p = max_failures.percent
    if p >= 100:
        return None
    # (failed + f) * 100 <= p * (executed + f)  <=>  f <= (p * executed - 100 * failed) / (100 - p)
    room = (p * executed - 100 * failed) / (Decimal(100) - p)
    return max(0, math.floor(room))


def _over_threshold(threshold: Size, failed: int, finished: int) -> bool:
    """More failures than a count, or a failed share above a percentage (exactly)."""
    if threshold.count is not None:
        return failed > threshold.count
    assert threshold.percent is not None
    return finished > 0 and Decimal(failed * 100) > threshold.percent * finished


def _share(failed: int, finished: int) -> str:
    return f"{Decimal(failed * 100) / Decimal(finished):.1f}%"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"


def _halve(current: int, params: PaceParams) -> int:
    return max(params.minimum, current // 2)


def decide(
    current: int,
    interval: Interval,
    params: PaceParams,
    *,
    canary_seconds: float | None = None,
    failures_left: int | None = None,
) -> PaceDecision:
    """The pace after `interval` (see the module docstring for the rules, in order).

    current: the pace during the interval (clamped into the bounds first);
    canary_seconds: the canary's median seconds from dispatch to success (None: not known
        yet, durations are not judged);
    failures_left: `failures_left(...)` of the rollout's failure policy now (None: it never
        trips).
    The result is always within [params.minimum, params.maximum].
    """
    current = params.clamp(current)
    failed, finished = interval.failed, interval.finished
    if _over_threshold(params.failure_threshold, failed, finished):
        return PaceDecision(
            _halve(current, params), current,
            f"{failed} of {finished} installs finished in the interval failed "
            f"({_share(failed, finished)}), more than pace_failure_threshold "
            f"{params.failure_threshold}")
    if failed and failures_left is not None and failures_left < current:
        noun = "failure" if failures_left == 1 else "failures"
        return PaceDecision(
            _halve(current, params), current,
            f"{failed} of {finished} installs finished in the interval failed, and the "
            f"failure policy trips after {failures_left} more {noun}, fewer than the "
            f"{current} installs the pace lets run at once")
    median = interval.median_seconds
    judged = median is not None and canary_seconds is not None and canary_seconds > 0
    if judged:
        assert median is not None and canary_seconds is not None
        if median * 100 > params.duration_band_percent * canary_seconds:
            return PaceDecision(
                _halve(current, params), current,
                f"the median install of the interval took {_seconds(median)}, more than "
                f"pace_duration_band {params.duration_band_percent}% of the canary's "
                f"{_seconds(canary_seconds)}")
    health = f"{interval.succeeded} succeeded, {failed} failed in the interval"
    if judged:
        assert median is not None and canary_seconds is not None
        health += (f"; median install {_seconds(median)}, within "
                   f"{params.duration_band_percent}% of the canary's "
                   f"{_seconds(canary_seconds)}")
    if interval.succeeded == 0:
        return PaceDecision(current, current,
                            f"no install succeeded in the interval ({failed} failed)")
    if current >= params.maximum:
        return PaceDecision(current, current,
                            f"healthy ({health}); at pace_max_concurrency {params.maximum}")
    if not interval.saturated:
        return PaceDecision(current, current,
                            f"healthy ({health}); no task waited for a slot")
    grown = max(current + 1, current * (100 + params.step_percent) // 100)
    return PaceDecision(min(params.maximum, grown), current, f"healthy ({health})")


__all__ = [
    "DEFAULT_MAX_FACTOR",
    "PACE_MODES",
    "Change",
    "Interval",
    "PaceDecision",
    "PaceParams",
    "decide",
    "failures_left",
    "params_of",
]
