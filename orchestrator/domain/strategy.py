"""A rollout's strategy: how it is cut into waves, paced, gated and judged.

`parse_strategy` validates the JSON object stored in `rollouts.strategy` (and sent to the
API) into a `Strategy`; `Strategy.to_dict` gives the normalised object back, with every key
present, so that `parse_strategy(s.to_dict()) == s`. Errors are `StrategyError`s that name
the field (`strategy.waves[2]`) and the bad value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Final, TypeVar

ORDERS: Final = ("spread", "site-by-site", "name", "random")
APPROVALS: Final = ("none", "each-wave", "after-canary")

_PERCENT = re.compile(r"^(\d{1,3}(?:\.\d{1,6})?)%$")
_HUNDRED = Decimal(100)


@dataclass(frozen=True)
class Size:
    """A number of appliances: a count, or a percentage of a total.

    Exactly one of `count` and `percent` is set. Build one with `Size.of_count(3)`,
    `Size.of_percent("2.5")` or `parse_size(3)` / `parse_size("2.5%")`.
    """

    count: int | None = None
    percent: Decimal | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.percent is None):
            raise ValueError("a Size is either a count or a percentage")
        if self.count is not None and (isinstance(self.count, bool) or self.count < 0):
            raise ValueError(f"a Size count must be an int >= 0, got {self.count!r}")
        if self.percent is not None and not (0 <= self.percent <= _HUNDRED):
            raise ValueError(f"a Size percentage must be in [0, 100], got {self.percent}")

    @classmethod
    def of_count(cls, count: int) -> Size:
        return cls(count=count)

    @classmethod
    def of_percent(cls, percent: str | int | Decimal) -> Size:
        try:
            value = Decimal(percent)
        except ArithmeticError:
            raise ValueError(f"{percent!r} is not a percentage") from None
        if not value.is_finite():
            raise ValueError(f"{percent!r} is not a percentage")
        return cls(percent=value)

    @property
    def is_percent(self) -> bool:
        return self.percent is not None

    def resolve(self, total: int) -> int:
        """The number of appliances this size stands for among `total` targeted ones.

        A count is returned as is (callers cap it where it matters). A percentage is
        ceil(total * p / 100), computed exactly, and at least 1 when total > 0; it is 0 when
        total is 0.
        """
        if total < 0:
            raise ValueError(f"total must be >= 0, got {total}")
        if self.count is not None:
            return self.count
        assert self.percent is not None
        if total == 0:
            return 0
        return max(1, math.ceil(Decimal(total) * self.percent / _HUNDRED))

    def to_json(self) -> int | str:
        """The JSON form: an int, or a string like "10%" or "2.5%"."""
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return f"{_plain(self.percent)}%"

    def __str__(self) -> str:
        return str(self.to_json())


def _plain(value: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 10.0 -> "10", 2.50 -> "2.5"."""
    return format(value.normalize(), "f")


def parse_size(value: object, *, min_count: int = 1, zero_percent: bool = False) -> Size:
    """Parse a count (an int >= min_count) or a percentage string ("10%", "2.5%").

    Percentages are in (0, 100], or [0, 100] when `zero_percent`; at most 3 integer digits
    and 6 decimals. Bools are not counts. Raises ValueError naming the bad value.
    """
    low = "[0, 100]" if zero_percent else "(0, 100]"
    problem = f"{value!r} is not a count >= {min_count} or a percentage in {low}"
    if isinstance(value, bool):
        raise ValueError(problem)
    if isinstance(value, int):
        if value < min_count:
            raise ValueError(problem)
        return Size(count=value)
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            raise ValueError(problem)
        percent = Decimal(match.group(1))
        if percent > _HUNDRED or (percent == 0 and not zero_percent):
            raise ValueError(problem)
        return Size(percent=percent)
    raise ValueError(problem)


@dataclass(frozen=True)
class Strategy:
    """How a rollout runs (README: the strategy table). Build it with `parse_strategy`.

    waves: wave sizes, each a count or a percentage of all targeted appliances (not
        cumulative); the last one repeats until every appliance is planned.
    order: plan order, one of ORDERS; seed: the seed of the "random" order.
    max_concurrency: installs in flight at once in the rollout, a count or a percentage of
        the targeted appliances (see planning.resolve_max_concurrency).
    per_site_concurrency: installs in flight at once per site (None: no per-site limit).
    max_starts_per_minute: dispatches started per rolling minute (None: no limit).
    max_failures: the failure threshold (see policy.evaluate_policy): more than this many
        failed tasks, or a failed share of executed tasks above this percentage, trips it.
    min_executed: executed tasks needed before a percentage max_failures can trip.
    canary_max_failures: failed tasks the canary wave (wave 0, when more waves follow) may
        have before the rollout stops: 0 (the default) stops it at the canary's first
        failure, whatever max_failures and min_executed say.
    soak_seconds: wait after a wave's last task finished before the gate opens.
    approval: "none", "each-wave" (every wave but the last waits for an operator before the
        next one starts) or "after-canary" (only the first wave does).
    task_timeout: seconds from dispatch to verified outcome before a task is TIMED_OUT.
    reboot_grace: seconds an appliance may stay unreachable during an install.
    install_retries: how many times a task whose install ended in ERROR is dispatched again.
    dispatch_retries: how many transient errors before an install was accepted are retried.
    verify_services: services that must be running for a task to be verified; an entry
        "hms|srm" is satisfied by any one of its alternatives (see missing_services).
    windows: "required" (an appliance is dispatched only while one of its maintenance
        windows is open with at least the window's cutoff left), "ignore", or None (the
        default: "required" when any window covers a targeted appliance).
    at_window_end: "finish-in-flight" (never-started tasks wait for the next opening) or
        "cancel-pending" (when no targeted appliance may start any more, the never-started
        tasks are cancelled and the rollout ends once in-flight installs finish).
    after_overlapping: False (the default) refuses to create or start the rollout while
        some of its appliances have an unfinished task in another active rollout; True
        accepts it, and each such task waits until the other rollout's task for that
        appliance has ended (then the appliance's version is checked again).
    """

    waves: tuple[Size, ...] = (
        Size(count=1), Size(percent=Decimal(10)), Size(percent=Decimal(50)),
        Size(percent=Decimal(100)),
    )
    order: str = "spread"
    seed: int = 0
    max_concurrency: Size = Size(count=10)
    per_site_concurrency: int | None = None
    max_starts_per_minute: int | None = None
    max_failures: Size = Size(percent=Decimal(10))
    min_executed: int = 5
    canary_max_failures: int = 0
    soak_seconds: float = 0.0
    approval: str = "none"
    task_timeout: float = 3600.0
    reboot_grace: float = 900.0
    install_retries: int = 0
    dispatch_retries: int = 3
    verify_services: tuple[str, ...] = ("hms|srm", "drrest")
    windows: str | None = None
    at_window_end: str = "finish-in-flight"
    after_overlapping: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The normalised JSON object, every key present; `parse_strategy` reads it back."""
        return {
            "waves": [size.to_json() for size in self.waves],
            "order": self.order,
            "seed": self.seed,
            "max_concurrency": self.max_concurrency.to_json(),
            "per_site_concurrency": self.per_site_concurrency,
            "max_starts_per_minute": self.max_starts_per_minute,
            "max_failures": self.max_failures.to_json(),
            "min_executed": self.min_executed,
            "canary_max_failures": self.canary_max_failures,
            "soak_seconds": _number_json(self.soak_seconds),
            "approval": self.approval,
            "task_timeout": _number_json(self.task_timeout),
            "reboot_grace": _number_json(self.reboot_grace),
            "install_retries": self.install_retries,
            "dispatch_retries": self.dispatch_retries,
            "verify_services": list(self.verify_services),
            "windows": self.windows,
            "at_window_end": self.at_window_end,
            "after_overlapping": self.after_overlapping,
        }


WINDOW_MODES: Final = ("required", "ignore")
AT_WINDOW_END: Final = ("finish-in-flight", "cancel-pending")

STRATEGY_KEYS: Final = tuple(field.name for field in fields(Strategy))


class StrategyError(ValueError):
    """A bad strategy: `field` names where (e.g. "strategy.waves[2]"), `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def _number_json(value: float) -> int | float:
    return int(value) if value.is_integer() else value


T = TypeVar("T")


def _field(name: str, parse: Callable[[Any], T], value: Any) -> T:
    try:
        return parse(value)
    except StrategyError:
        raise
    except ValueError as exc:
        raise StrategyError(f"strategy.{name}", str(exc)) from None


def _int_at_least(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{value!r} is not an integer >= {minimum}")
        return value

    return parse


def _any_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _optional_int_at_least(minimum: int) -> Callable[[Any], int | None]:
    def parse(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{value!r} is not an integer >= {minimum} or null")
        return value

    return parse


def _seconds(*, positive: bool) -> Callable[[Any], float]:
    bound = "> 0" if positive else ">= 0"

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number of seconds {bound}")
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
            raise ValueError(f"{value!r} is not a number of seconds {bound}")
        return seconds

    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{value!r} is not true or false")
    return value


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{value!r} is not one of {listed}")
        return value

    return parse


def _parse_waves(value: Any) -> tuple[Size, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise StrategyError("strategy.waves", f"{value!r} is not a list of wave sizes")
    if not value:
        raise StrategyError("strategy.waves", "[] lists no wave size: give at least one")
    sizes = []
    for index, item in enumerate(value):
        try:
            sizes.append(parse_size(item, min_count=1))
        except ValueError as exc:
            raise StrategyError(f"strategy.waves[{index}]", str(exc)) from None
    return tuple(sizes)


def _parse_services(value: Any) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise StrategyError(
            "strategy.verify_services", f"{value!r} is not a list of service ids"
        )
    services: list[str] = []
    for index, item in enumerate(value):
        where = f"strategy.verify_services[{index}]"
        if not isinstance(item, str):
            raise StrategyError(where, f"{item!r} is not a service id")
        alternatives = item.split("|")
        if any(not alt or alt != alt.strip() for alt in alternatives):
            raise StrategyError(
                where,
                f"{item!r} is not a service id (or alternatives like 'hms|srm') "
                "without blanks",
            )
        if item not in services:
            services.append(item)
    return tuple(services)


def parse_strategy(data: Mapping[str, Any] | None) -> Strategy:
    """Validate a strategy object; missing keys take the `Strategy` defaults.

    Unknown keys are refused by name. None stands for the empty object (all defaults).
    Raises StrategyError on the first problem found.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise StrategyError("strategy", f"{data!r} is not an object")
    unknown = sorted(str(key) for key in data if key not in STRATEGY_KEYS)
    if unknown:
        others = "".join(f", {key!r}" for key in unknown[1:])
        also = f"; also unknown: {others[2:]}" if others else ""
        raise StrategyError(
            f"strategy.{unknown[0]}",
            f"unknown key{also} (known keys: {', '.join(STRATEGY_KEYS)})",
        )
    default = Strategy()
    values: dict[str, Any] = {}
    parsers: dict[str, Callable[[Any], Any]] = {
        "waves": _parse_waves,
        "order": _choice(ORDERS),
        "seed": _any_int,
        "max_concurrency": lambda v: parse_size(v, min_count=1),
        "per_site_concurrency": _optional_int_at_least(1),
        "max_starts_per_minute": _optional_int_at_least(1),
        "max_failures": lambda v: parse_size(v, min_count=0, zero_percent=True),
        "min_executed": _int_at_least(0),
        "canary_max_failures": _int_at_least(0),
        "soak_seconds": _seconds(positive=False),
        "approval": _choice(APPROVALS),
        "task_timeout": _seconds(positive=True),
        "reboot_grace": _seconds(positive=True),
        "install_retries": _int_at_least(0),
        "dispatch_retries": _int_at_least(0),
        "verify_services": _parse_services,
        "windows": lambda v: None if v is None else _choice(WINDOW_MODES)(v),
        "at_window_end": _choice(AT_WINDOW_END),
        "after_overlapping": _bool,
    }
    for name, parse in parsers.items():
        values[name] = (
            _field(name, parse, data[name]) if name in data else getattr(default, name)
        )
    strategy = Strategy(**values)
    if strategy.reboot_grace > strategy.task_timeout:
        grace = _number_json(strategy.reboot_grace)
        timeout = _number_json(strategy.task_timeout)
        why = "an install's reboot must fit in the task's time"
        if "reboot_grace" in data:
            raise StrategyError(
                "strategy.reboot_grace",
                f"{grace!r} is longer than task_timeout {timeout!r}: {why}",
            )
        raise StrategyError(
            "strategy.task_timeout",
            f"{timeout!r} is shorter than the default reboot_grace {grace!r}: {why}",
        )
    return strategy


def missing_services(
    verify_services: Sequence[str], running: Mapping[str, bool]
) -> tuple[str, ...]:
    """The `verify_services` entries not satisfied by `running` (service id -> is_running).

    An entry "hms|srm" is satisfied when any of its alternatives is running. An empty
    result means the appliance's key services are up.
    """
    return tuple(
        entry for entry in verify_services
        if not any(running.get(alt, False) for alt in entry.split("|"))
    )
