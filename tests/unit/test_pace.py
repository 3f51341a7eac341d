"""The adaptive pace's rules (orchestrator/domain/pace.py): how the concurrency grows,
halves and holds after an interval, and its properties: within its bounds always, never
growing while failures are above the threshold, backing off before the failure policy
can trip."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.domain.pace import (
    Change,
    Interval,
    PaceParams,
    decide,
    failures_left,
    params_of,
)
from orchestrator.domain.policy import evaluate_policy
from orchestrator.domain.strategy import Size, parse_size, parse_strategy


def params(**overrides: object) -> PaceParams:
    values: dict[str, object] = {
        "start": 10, "minimum": 1, "maximum": 40, "step_percent": 50,
        "failure_threshold": Size.of_percent(5), "duration_band_percent": 200,
        "interval_seconds": 60.0,
    }
    values.update(overrides)
    return PaceParams(**values)  # type: ignore[arg-type]


HEALTHY = Interval(succeeded=12, failed=0, median_seconds=30.0, saturated=True)


# ------------------------------------------------------------------ parameters
def test_params_come_from_the_strategy() -> None:
    strategy = parse_strategy({"pace": "adaptive", "max_concurrency": 10})
    p = params_of(strategy, 10, 500)
    assert (p.start, p.minimum, p.maximum, p.step_percent) == (10, 1, 40, 50)
    assert p.failure_threshold == Size.of_percent(5)
    assert (p.duration_band_percent, p.interval_seconds) == (200, 60.0)
    strategy = parse_strategy({"pace": "adaptive", "max_concurrency": "2%",
                               "pace_max_concurrency": "10%", "pace_min_concurrency": 4})
    p = params_of(strategy, 10, 500)
    assert (p.minimum, p.maximum) == (4, 50)
    # the bounds always hold the start: a small rollout's percentages are raised to it
    p = params_of(strategy, 10, 20)
    assert (p.minimum, p.start, p.maximum) == (4, 10, 10)
    p = params_of(strategy, 2, 20)
    assert (p.minimum, p.start) == (2, 2)


def test_bad_params_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="minimum=5, start=3, maximum=10"):
        params(minimum=5, start=3, maximum=10)
    with pytest.raises(ValueError, match="got 0 and 200"):
        params(step_percent=0)
    with pytest.raises(ValueError, match="interval_seconds must be > 0, got 0"):
        params(interval_seconds=0)


# ------------------------------------------------------------------ the rules
def test_a_healthy_saturated_interval_grows_by_the_step_up_to_the_maximum() -> None:
    d = decide(10, HEALTHY, params(), canary_seconds=25.0)
    assert (d.previous, d.concurrency, d.change) == (10, 15, Change.GROW)
    assert d.reason == ("healthy (12 succeeded, 0 failed in the interval; median install "
                        "30 s, within 200% of the canary's 25 s)")
    assert decide(30, HEALTHY, params()).concurrency == 40  # 45, capped
    assert decide(1, HEALTHY, params()).concurrency == 2  # at least one more
    held = decide(40, HEALTHY, params())
    assert held.change == Change.HOLD
    assert held.reason.endswith("at pace_max_concurrency 40")


def test_it_grows_only_when_the_limit_held_tasks_back_and_something_succeeded() -> None:
    idle = Interval(succeeded=12, failed=0, median_seconds=30.0, saturated=False)
    d = decide(10, idle, params())
    assert d.change == Change.HOLD and d.reason.endswith("no task waited for a slot")
    d = decide(10, Interval(0, 0, saturated=True), params())
    assert d.change == Change.HOLD
    assert d.reason == "no install succeeded in the interval (0 failed)"


def test_failures_above_the_threshold_halve_it() -> None:
    d = decide(20, Interval(succeeded=8, failed=2, median_seconds=30.0, saturated=True),
               params())
    assert (d.concurrency, d.change) == (10, Change.SHRINK)
    assert d.reason == ("2 of 10 installs finished in the interval failed (20.0%), more "
                        "than pace_failure_threshold 5%")
    # a count: more than that many failures
    p = params(failure_threshold=Size.of_count(2))
    assert decide(20, Interval(0, 2, saturated=True), p, failures_left=None).change \
        == Change.HOLD
    assert decide(20, Interval(0, 3), p).concurrency == 10
    # never below the minimum
    assert decide(3, Interval(0, 3), params(minimum=2)).concurrency == 2
    assert decide(2, Interval(0, 3), params(minimum=2)).change == Change.HOLD


def test_a_failure_while_the_policy_is_close_to_tripping_halves_it() -> None:
    # 1 failure in 50 is under 5%, but the policy trips after 3 more failures: fewer than
    # the 20 installs the pace lets run at once
    interval = Interval(succeeded=49, failed=1, median_seconds=30.0, saturated=True)
    d = decide(20, interval, params(maximum=80), failures_left=3)
    assert (d.concurrency, d.change) == (10, Change.SHRINK)
    assert d.reason == ("1 of 50 installs finished in the interval failed, and the failure "
                        "policy trips after 3 more failures, fewer than the 20 installs the "
                        "pace lets run at once")
    # with room for a whole pace of failures, the same interval grows it
    assert decide(20, interval, params(maximum=80), failures_left=20).change == Change.GROW
    assert decide(20, interval, params(maximum=80), failures_left=None).change == Change.GROW


def test_slow_installs_halve_it() -> None:
    slow = Interval(succeeded=10, failed=0, median_seconds=61.0, saturated=True)
    d = decide(16, slow, params(), canary_seconds=30.0)
    assert (d.concurrency, d.change) == (8, Change.SHRINK)
    assert d.reason == ("the median install of the interval took 61 s, more than "
                        "pace_duration_band 200% of the canary's 30 s")
    # exactly at the band is within it; without a canary the durations are not judged
    at_band = Interval(succeeded=10, failed=0, median_seconds=60.0, saturated=True)
    assert decide(16, at_band, params(), canary_seconds=30.0).change == Change.GROW
    assert decide(16, slow, params(), canary_seconds=None).change == Change.GROW
    assert decide(16, Interval(10, 0, 2.5, True), params(),
                  canary_seconds=1.0).reason.startswith("the median install of the interval "
                                                        "took 2.5 s")


def test_a_pace_outside_its_bounds_is_brought_back_first() -> None:
    assert decide(100, Interval(0, 0), params()).concurrency == 40
    assert decide(0, Interval(0, 0), params(minimum=2, start=5)).concurrency == 2


def test_failures_left_counts_what_the_policy_tolerates() -> None:
    assert failures_left(Size.of_count(3), 10, 1) == 2
    assert failures_left(Size.of_count(3), 10, 5) == 0
    # 10%: 1 of 10 failed; (1 + f) / (10 + f) <= 0.1 holds for f = 0 only
    assert failures_left(Size.of_percent(10), 10, 1) == 0
    assert failures_left(Size.of_percent(10), 100, 0) == 11  # 11/111 <= 10%, 12/112 > 10%
    assert failures_left(Size.of_percent(10), 0, 0) == 0
    assert failures_left(Size.of_percent(100), 10, 10) is None
    with pytest.raises(ValueError, match="failed=3, executed=2"):
        failures_left(Size.of_count(1), 2, 3)


# ------------------------------------------------------------------ properties
sizes = st.one_of(
    st.integers(min_value=0, max_value=50).map(Size.of_count),
    st.decimals(min_value=0, max_value=100, places=2).map(Size.of_percent),
)


@st.composite
def paces(draw: st.DrawFn) -> PaceParams:
    minimum = draw(st.integers(min_value=1, max_value=20))
    start = draw(st.integers(min_value=minimum, max_value=200))
    return PaceParams(
        start=start, minimum=minimum,
        maximum=draw(st.integers(min_value=start, max_value=1000)),
        step_percent=draw(st.integers(min_value=1, max_value=1000)),
        failure_threshold=draw(sizes),
        duration_band_percent=draw(st.integers(min_value=100, max_value=1000)),
        interval_seconds=draw(st.floats(min_value=0.01, max_value=3600)),
    )


intervals = st.builds(
    Interval, succeeded=st.integers(min_value=0, max_value=500),
    failed=st.integers(min_value=0, max_value=500),
    median_seconds=st.one_of(st.none(), st.floats(min_value=0, max_value=1e5)),
    saturated=st.booleans(),
)
lefts = st.one_of(st.none(), st.integers(min_value=0, max_value=2000))
canaries = st.one_of(st.none(), st.floats(min_value=0.001, max_value=1e5))


def over(threshold: Size, interval: Interval) -> bool:
    if threshold.count is not None:
        return interval.failed > threshold.count
    assert threshold.percent is not None
    return interval.finished > 0 and \
        Decimal(interval.failed * 100) > threshold.percent * interval.finished


@given(st.integers(min_value=-5, max_value=2000), intervals, paces(), canaries, lefts)
def test_the_pace_stays_within_its_bounds_and_moves_by_its_rules(
    current: int, interval: Interval, p: PaceParams, canary: float | None, left: int | None,
) -> None:
    d = decide(current, interval, p, canary_seconds=canary, failures_left=left)
    assert p.minimum <= d.concurrency <= p.maximum
    assert d.previous == p.clamp(current)
    if d.change == Change.GROW:
        assert interval.saturated and interval.succeeded > 0
        assert d.concurrency <= max(d.previous + 1, d.previous * (100 + p.step_percent) // 100)
    if d.change == Change.SHRINK:
        assert d.concurrency == max(p.minimum, d.previous // 2)
    assert d.reason


@given(st.integers(min_value=1, max_value=2000), intervals, paces(), canaries, lefts)
def test_it_never_grows_while_failures_are_over_the_threshold(
    current: int, interval: Interval, p: PaceParams, canary: float | None, left: int | None,
) -> None:
    d = decide(current, interval, p, canary_seconds=canary, failures_left=left)
    if over(p.failure_threshold, interval):
        assert d.change == Change.SHRINK or d.concurrency == p.minimum


@given(
    executed=st.integers(min_value=0, max_value=2000), data=st.data(),
    max_failures=sizes, current=st.integers(min_value=1, max_value=500),
    interval=intervals, p=paces(),
)
def test_it_backs_off_before_the_failure_policy_can_trip(
    executed: int, data: st.DataObject, max_failures: Size, current: int,
    interval: Interval, p: PaceParams,
) -> None:
    """While the policy holds, an interval with a failure at a pace whose installs could
    all fail and trip the policy halves the pace (or it is at its minimum already)."""
    failed = data.draw(st.integers(min_value=0, max_value=executed))
    if evaluate_policy(max_failures, 0, executed, failed).tripped:
        return
    left = failures_left(max_failures, executed, failed)
    d = decide(current, interval, p, failures_left=left)
    pace = d.previous
    trips = evaluate_policy(max_failures, 0, executed + pace, failed + pace).tripped
    if interval.failed and trips:
        assert d.change == Change.SHRINK or d.concurrency == p.minimum


@given(executed=st.integers(min_value=0, max_value=5000), data=st.data(), max_failures=sizes)
def test_failures_left_agrees_with_the_policy(
    executed: int, data: st.DataObject, max_failures: Size,
) -> None:
    failed = data.draw(st.integers(min_value=0, max_value=executed))
    left = failures_left(max_failures, executed, failed)
    tripped = evaluate_policy(max_failures, 0, executed, failed).tripped
    if left is None:
        assert max_failures.percent == 100
        return
    if tripped:
        assert left == 0
        return
    assert not evaluate_policy(max_failures, 0, executed + left, failed + left).tripped
    assert evaluate_policy(max_failures, 0, executed + left + 1, failed + left + 1).tripped


@given(
    p=paces(), policy=st.decimals(min_value=0, max_value=100, places=2), data=st.data(),
    interval=intervals, current=st.integers(min_value=1, max_value=500),
    canary=canaries, left=lefts,
)
def test_a_failure_rate_that_would_trip_the_policy_halves_the_pace(
    p: PaceParams, policy: Decimal, data: st.DataObject, interval: Interval, current: int,
    canary: float | None, left: int | None,
) -> None:
    """With pace_failure_threshold at most max_failures (parse_strategy refuses more), an
    interval failing at a share above max_failures, which kept up trips the policy, halves
    the pace."""
    threshold = data.draw(st.decimals(min_value=0, max_value=policy, places=2))
    p = PaceParams(p.start, p.minimum, p.maximum, p.step_percent, Size.of_percent(threshold),
                   p.duration_band_percent, p.interval_seconds)
    d = decide(current, interval, p, canary_seconds=canary, failures_left=left)
    if interval.finished and Decimal(interval.failed * 100) > policy * interval.finished:
        assert d.change == Change.SHRINK or d.concurrency == p.minimum


def test_the_strategy_refuses_a_threshold_above_the_policy() -> None:
    from orchestrator.domain.strategy import StrategyError

    assert parse_strategy({"pace": "adaptive", "max_failures": "5%"}).pace == "adaptive"
    with pytest.raises(StrategyError, match=r"strategy\.pace_failure_threshold: '20%' is "
                                            r"above max_failures '10%'"):
        parse_strategy({"pace": "adaptive", "pace_failure_threshold": "20%"})
    # only the adaptive pace is judged
    assert parse_strategy({"pace_failure_threshold": "20%"}).pace == "off"
    assert parse_size("5%", min_count=0, zero_percent=True) == Size.of_percent(5)
