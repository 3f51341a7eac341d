"""A rollout's strategy: how it is cut into waves, paced, gated and judged.

`parse_strategy` validates the JSON object stored in `rollouts.strategy` (and sent to the
API) into a `Strategy`; `Strategy.to_dict` gives the normalised object back, with every key
present, so that `parse_strategy(s.to_dict()) == s`. Errors are `StrategyError`s that name
the field (`strategy.waves[2]`) and the bad value.

STRATEGY_TABLE is the one definition of the strategy's keys: their kind, default, bounds,
one-line doc and command-line option. The parsing and the defaults here, the API's request
model and response model (orchestrator/api/models.py, responses.py), the CLI's options
(`add_strategy_flags`, `strategy_from_flags`) and the README's table
(`strategy_markdown_table`) all follow from it; tests/unit/test_strategy_drift.py fails
when one of them drifts.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.gates import strategy_problem

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


# ------------------------------------------------------------------ the table of keys
ORDERS: Final = ("spread", "site-by-site", "name", "random")
APPROVALS: Final = ("none", "each-wave", "after-canary")
WINDOW_MODES: Final = ("required", "ignore")
AT_WINDOW_END: Final = ("finish-in-flight", "cancel-pending")
PREFLIGHT_MODES: Final = ("off", "warn", "required")
PACE_MODES: Final = ("off", "adaptive")

# The largest values the API accepts (its JSON Schema says so); the domain itself does not
# cap counts or seconds.
MAX_COUNT: Final = 1_000_000
MAX_SECONDS: Final = 31_536_000  # one year
INT64: Final = (-(2**63), 2**63 - 1)

MAX_TEXT: Final = 2000  # the longest "text" value the API accepts unless a key says less

Kind = Literal["waves", "size", "choice", "int", "seconds", "services", "bool", "text"]


@dataclass(frozen=True)
class StrategyKey:
    """One key of the strategy object: everything the domain, the API, the CLI and the README
    say about it comes from here (see STRATEGY_TABLE).

    kind: what the value is, in JSON:
        "waves": a non-empty list of sizes (a count >= 1 or a percentage in (0, 100]);
        "size": a count >= `minimum`, or a percentage ((0, 100], or [0, 100] with
            `zero_percent`);
        "choice": one of `choices`;
        "int": an integer >= `minimum` (None: any integer);
        "seconds": a number of seconds >= `minimum` (> it with `exclusive_minimum`);
        "services": a list of service ids, "a|b" meaning either;
        "bool": true or false;
        "text": a non-empty text without control characters, at most `maximum` characters
            (None: MAX_TEXT).
    default: the default, in its JSON form (what `Strategy.to_dict` gives for it).
    nullable: null is a value (and the default may be null): otherwise the key may be
        left out but not be null.
    minimum, exclusive_minimum, zero_percent, choices: the domain's rules (the API's too).
    maximum: the largest count, seconds or integer the API accepts (None: the kind's own
        MAX_COUNT or MAX_SECONDS); max_items: the API's longest list. The domain does not
        cap them.
    doc: one line, in Markdown: the README's "meaning" column and the API's description.
    unset: how the README names a null default.
    flag: the `rollout plan` / `rollout create` option (None: only in a --strategy file or
        the API); flag_help: its --help text (argparse: "%" is written "%%"); metavar: its
        argparse metavar (None: the argparse default, the key in capitals).
    """

    name: str
    kind: Kind
    default: Any
    doc: str
    nullable: bool = False
    minimum: int | None = None
    exclusive_minimum: bool = False
    zero_percent: bool = False
    choices: tuple[str, ...] = ()
    maximum: int | None = None
    max_items: int | None = None
    unset: str = "none"
    flag: str | None = None
    flag_help: str | None = None
    metavar: str | None = None

    @property
    def api_maximum(self) -> int | None:
        """The largest number the API accepts for the value (or each item of it)."""
        if self.maximum is not None:
            return self.maximum
        if self.kind in ("waves", "size", "int"):
            return MAX_COUNT
        if self.kind == "seconds":
            return MAX_SECONDS
        if self.kind == "text":
            return MAX_TEXT
        return None


STRATEGY_TABLE: Final[tuple[StrategyKey, ...]] = (
    StrategyKey(
        "waves", "waves", [1, "10%", "50%", "100%"], max_items=1000,
        doc="wave sizes, each a count or a percentage of the targeted appliances; the last "
            "repeats",
        flag="--waves", flag_help="comma-separated sizes, e.g. 1,10%%,50%%,100%%"),
    StrategyKey(
        "order", "choice", "spread", choices=ORDERS,
        doc="`spread` (round-robin across sites), `site-by-site`, `name`, `random` (with "
            "`seed`)",
        flag="--order"),
    StrategyKey(
        "seed", "int", 0, minimum=None, maximum=INT64[1],
        doc="the seed of the `random` order"),
    StrategyKey(
        "max_concurrency", "size", 10, minimum=1,
        doc="installs in flight at once, a count or a percentage",
        flag="--max-concurrency", flag_help="a count or a percentage"),
    StrategyKey(
        "per_site_concurrency", "int", None, nullable=True, minimum=1,
        doc="installs in flight at once per site",
        flag="--per-site-concurrency"),
    StrategyKey(
        "max_starts_per_minute", "int", None, nullable=True, minimum=1,
        doc="dispatches per rolling minute",
        flag="--max-starts-per-minute"),
    StrategyKey(
        "pace", "choice", "off", choices=PACE_MODES,
        doc="`adaptive`: the concurrency starts at `max_concurrency`, grows while installs "
            "succeed at the canary's speed and halves when they fail or slow down "
            "(docs/pace.md); `off`: fixed"),
    StrategyKey(
        "pace_max_concurrency", "size", None, nullable=True, minimum=1,
        unset="4 times `max_concurrency`",
        doc="the most installs in flight the adaptive pace grows to, a count or a percentage"),
    StrategyKey(
        "pace_min_concurrency", "int", 1, minimum=1,
        doc="the fewest installs in flight the adaptive pace halves to"),
    StrategyKey(
        "pace_interval_seconds", "seconds", 60, minimum=0, exclusive_minimum=True,
        doc="seconds between two decisions of the adaptive pace"),
    StrategyKey(
        "pace_step_percent", "int", 50, minimum=1, maximum=1000,
        doc="how much the adaptive pace grows after a healthy interval, in percent "
            "(50: 1.5 times)"),
    StrategyKey(
        "pace_failure_threshold", "size", "5%", minimum=0, zero_percent=True,
        doc="the adaptive pace halves when more installs of an interval fail than this "
            "count, or a larger share; at most `max_failures`"),
    StrategyKey(
        "pace_duration_band", "int", 200, minimum=100, maximum=100_000,
        doc="the adaptive pace halves when an interval's median install takes longer than "
            "this percentage of the canary's"),
    StrategyKey(
        "max_failures", "size", "10%", minimum=0, zero_percent=True,
        doc="trips on more than this many failed tasks, or a larger failed share of "
            "executed tasks",
        flag="--max-failures", flag_help="a count or a percentage"),
    StrategyKey(
        "min_executed", "int", 5, minimum=0,
        doc="executed tasks before a percentage can trip",
        flag="--min-executed"),
    StrategyKey(
        "canary_max_failures", "int", 0, minimum=0,
        doc="failed tasks the canary (wave 0, when more waves follow) may have: the next one "
            "stops the rollout, whatever `max_failures` and `min_executed` say",
        flag="--canary-max-failures",
        flag_help="failed tasks the canary wave may have before the rollout stops "
                  "(default 0: its first failure stops it)"),
    StrategyKey(
        "soak_seconds", "seconds", 0, minimum=0,
        doc="wait after a wave before the next one",
        flag="--soak-seconds"),
    StrategyKey(
        "approval", "choice", "none", choices=APPROVALS,
        doc="`each-wave` or `after-canary`: the gate waits for `rollout approve`",
        flag="--approval"),
    StrategyKey(
        "task_timeout", "seconds", 3600, minimum=0, exclusive_minimum=True,
        doc="seconds from dispatch to a verified outcome",
        flag="--task-timeout", flag_help="seconds"),
    StrategyKey(
        "reboot_grace", "seconds", 900, minimum=0, exclusive_minimum=True,
        doc="seconds an appliance may be unreachable, answer 503/401, or start its services",
        flag="--reboot-grace", flag_help="seconds"),
    StrategyKey(
        "install_retries", "int", 0, minimum=0, maximum=100,
        doc="times an install that ended in ERROR is tried again"),
    StrategyKey(
        "dispatch_retries", "int", 3, minimum=0, maximum=100,
        doc="transient errors before an install was accepted that are retried"),
    StrategyKey(
        "verify_services", "services", ["hms|srm", "drrest"], max_items=50,
        doc="services that must run for success (`a|b`: either)"),
    StrategyKey(
        "required_services", "services", [], max_items=50,
        doc="health gate: further services that must run for success, and through "
            "`task_soak_seconds` (`a|b`: either); a miss is `SERVICE_NOT_RUNNING`"),
    StrategyKey(
        "probe_url", "text", None, nullable=True,
        doc="health gate: an HTTP probe after each install, an `http(s)://` URL template "
            "(`{name}`, `{host}`: the appliance's name and host); it must succeed within "
            "`probe_stabilisation_seconds`, else `PROBE_FAILED`",
        flag="--probe-url", metavar="URL",
        flag_help="health gate: an HTTP probe after each install, e.g. "
                  "https://{host}/health ({name}, {host}: the appliance's)"),
    StrategyKey(
        "probe_status", "int", 200, minimum=100, maximum=599,
        doc="the HTTP status the probe must answer"),
    StrategyKey(
        "probe_body", "text", None, nullable=True,
        doc="text the probe's answer must contain"),
    StrategyKey(
        "probe_timeout", "seconds", 10, minimum=0, exclusive_minimum=True,
        doc="seconds each try of the probe may take"),
    StrategyKey(
        "probe_stabilisation_seconds", "seconds", 120, minimum=0,
        doc="the probe must succeed within this long after the target version is proven "
            "(tried every few seconds)",
        flag="--probe-stabilisation-seconds", flag_help="seconds"),
    StrategyKey(
        "task_soak_seconds", "seconds", 0, minimum=0,
        doc="health gate: once its checks pass, the appliance must stay healthy (version, "
            "services, probe) this long before its task is SUCCEEDED, else `SOAK_FAILED`",
        flag="--task-soak-seconds", flag_help="seconds"),
    StrategyKey(
        "windows", "choice", None, nullable=True, choices=WINDOW_MODES, unset="automatic",
        doc="`required` (installs start only inside maintenance windows), `ignore`; unset: "
            "required when any window covers a targeted appliance"),
    StrategyKey(
        "at_window_end", "choice", "finish-in-flight", choices=AT_WINDOW_END,
        doc="`finish-in-flight`: never-started tasks wait for the next opening; "
            "`cancel-pending`: they are cancelled when no appliance may start any more"),
    StrategyKey(
        "preflight", "choice", "warn", choices=PREFLIGHT_MODES,
        doc="the engine's pre-flight check of every appliance (docs/preflight.md): `warn` "
            "at start, recorded, installs anyway; `required` at start and before each "
            "window, failing appliances left out (SKIPPED); `off`: only on demand",
        flag="--preflight"),
    StrategyKey(
        "preflight_lead_seconds", "seconds", 1800, minimum=0,
        doc="with `preflight: required`, how long before a maintenance window opens the "
            "rollout that waits for it is checked again",
        flag="--preflight-lead-seconds", flag_help="seconds"),
    StrategyKey(
        "after_overlapping", "bool", False,
        doc="`true`: accept appliances that have an unfinished task in another active "
            "rollout (else creating or starting it is refused); their tasks wait for it",
        flag="--after-overlapping",
        flag_help="accept appliances that have an unfinished task in another active "
                  "rollout: their tasks wait for it (default: refused)"),
)

STRATEGY_KEYS: Final = tuple(key.name for key in STRATEGY_TABLE)
KEYS_BY_NAME: Final = {key.name: key for key in STRATEGY_TABLE}


class StrategyError(OrchestratorError, ValueError):
    """A bad strategy: `field` names where (e.g. "strategy.waves[2]"), `message` says why."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


def _number_json(value: float) -> int | float:
    return int(value) if value.is_integer() else value


# ------------------------------------------------------------------ parsing, by kind
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


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(maximum: int) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{value!r} is not a non-empty text")
        if len(value) > maximum:
            raise ValueError(f"{value[:40]!r}... is longer than {maximum} characters")
        if _CONTROL.search(value):
            raise ValueError(f"{value!r} contains control characters")
        return value

    return parse


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            listed = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{value!r} is not one of {listed}")
        return value

    return parse


def _optional(parse: Callable[[Any], T]) -> Callable[[Any], T | None]:
    return lambda value: None if value is None else parse(value)


def _waves(name: str) -> Callable[[Any], tuple[Size, ...]]:
    def parse(value: Any) -> tuple[Size, ...]:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise StrategyError(f"strategy.{name}", f"{value!r} is not a list of wave sizes")
        if not value:
            raise StrategyError(f"strategy.{name}", "[] lists no wave size: give at least one")
        sizes = []
        for index, item in enumerate(value):
            try:
                sizes.append(parse_size(item, min_count=1))
            except ValueError as exc:
                raise StrategyError(f"strategy.{name}[{index}]", str(exc)) from None
        return tuple(sizes)

    return parse


def _services(name: str) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise StrategyError(f"strategy.{name}", f"{value!r} is not a list of service ids")
        services: list[str] = []
        for index, item in enumerate(value):
            where = f"strategy.{name}[{index}]"
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

    return parse


def key_parser(key: StrategyKey) -> Callable[[Any], Any]:
    """The domain's parser of `key`'s JSON value: the parsed value, or ValueError (a
    StrategyError for lists, naming the item) naming the bad value."""
    parse: Callable[[Any], Any]
    if key.kind == "waves":
        parse = _waves(key.name)
    elif key.kind == "size":
        minimum, zero = key.minimum or 0, key.zero_percent

        def parse(value: Any) -> Size:
            return parse_size(value, min_count=minimum, zero_percent=zero)
    elif key.kind == "choice":
        parse = _choice(key.choices)
    elif key.kind == "int":
        if key.nullable:
            return _optional_int_at_least(key.minimum or 0)
        parse = _any_int if key.minimum is None else _int_at_least(key.minimum)
    elif key.kind == "seconds":
        parse = _seconds(positive=key.exclusive_minimum)
    elif key.kind == "services":
        parse = _services(key.name)
    elif key.kind == "bool":
        parse = _bool
    elif key.kind == "text":
        parse = _text(key.maximum or MAX_TEXT)
    else:  # pragma: no cover - Kind lists them all
        raise AssertionError(key.kind)
    return _optional(parse) if key.nullable else parse


def key_json(key: StrategyKey, value: Any) -> Any:
    """The JSON form of a parsed value of `key` (what `Strategy.to_dict` gives)."""
    if value is None:
        return None
    if key.kind == "waves":
        return [size.to_json() for size in value]
    if key.kind == "size":
        return value.to_json()
    if key.kind == "seconds":
        return _number_json(value)
    if key.kind == "services":
        return list(value)
    return value


_PARSERS: Final = {key.name: key_parser(key) for key in STRATEGY_TABLE}
_DEFAULTS: Final = {key.name: _PARSERS[key.name](key.default) for key in STRATEGY_TABLE}


# ------------------------------------------------------------------ the strategy
@dataclass(frozen=True)
class Strategy:
    """How a rollout runs: one attribute per key of STRATEGY_TABLE (which has each key's
    type, default, bounds and one-line doc). Build it with `parse_strategy`.

    waves: wave sizes, each a count or a percentage of all targeted appliances (not
        cumulative); the last one repeats until every appliance is planned.
    order: plan order, one of ORDERS; seed: the seed of the "random" order.
    max_concurrency: installs in flight at once in the rollout, a count or a percentage of
        the targeted appliances (see planning.resolve_max_concurrency).
    per_site_concurrency: installs in flight at once per site (None: no per-site limit).
    max_starts_per_minute: dispatches started per rolling minute (None: no limit).
    pace: "off" (max_concurrency holds) or "adaptive" (the limit starts at max_concurrency
        and follows the fleet's health: orchestrator/domain/pace.py). pace_max_concurrency
        (None: 4 x max_concurrency), pace_min_concurrency: its bounds;
        pace_interval_seconds: how often it is decided; pace_step_percent: its growth after
        a healthy interval; pace_failure_threshold: the failures of an interval that halve
        it; pace_duration_band: the median install time, in percent of the canary's, above
        which it halves.
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
    required_services, probe_url (a template: {name}, {host}), probe_status, probe_body,
        probe_timeout, probe_stabilisation_seconds, task_soak_seconds: the health gates a
        task passes after its version is proven, before it is SUCCEEDED (see
        domain/gates.py; the defaults set none).
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
    preflight: "warn" (the default: the engine checks every appliance when the rollout
        starts, before its first install, records the results and installs anyway),
        "required" (the same, and again `preflight_lead_seconds` before the maintenance
        window a waiting rollout waits for opens; appliances that fail are left out as
        SKIPPED) or "off" (only when an operator asks); see domain/preflight.py.
    preflight_lead_seconds: how long before a window opens the `required` check runs.
    """

    waves: tuple[Size, ...] = _DEFAULTS["waves"]
    order: str = _DEFAULTS["order"]
    seed: int = _DEFAULTS["seed"]
    max_concurrency: Size = _DEFAULTS["max_concurrency"]
    per_site_concurrency: int | None = _DEFAULTS["per_site_concurrency"]
    max_starts_per_minute: int | None = _DEFAULTS["max_starts_per_minute"]
    pace: str = _DEFAULTS["pace"]
    pace_max_concurrency: Size | None = _DEFAULTS["pace_max_concurrency"]
    pace_min_concurrency: int = _DEFAULTS["pace_min_concurrency"]
    pace_interval_seconds: float = _DEFAULTS["pace_interval_seconds"]
    pace_step_percent: int = _DEFAULTS["pace_step_percent"]
    pace_failure_threshold: Size = _DEFAULTS["pace_failure_threshold"]
    pace_duration_band: int = _DEFAULTS["pace_duration_band"]
    max_failures: Size = _DEFAULTS["max_failures"]
    min_executed: int = _DEFAULTS["min_executed"]
    canary_max_failures: int = _DEFAULTS["canary_max_failures"]
    soak_seconds: float = _DEFAULTS["soak_seconds"]
    approval: str = _DEFAULTS["approval"]
    task_timeout: float = _DEFAULTS["task_timeout"]
    reboot_grace: float = _DEFAULTS["reboot_grace"]
    install_retries: int = _DEFAULTS["install_retries"]
    dispatch_retries: int = _DEFAULTS["dispatch_retries"]
    verify_services: tuple[str, ...] = _DEFAULTS["verify_services"]
    required_services: tuple[str, ...] = _DEFAULTS["required_services"]
    probe_url: str | None = _DEFAULTS["probe_url"]
    probe_status: int = _DEFAULTS["probe_status"]
    probe_body: str | None = _DEFAULTS["probe_body"]
    probe_timeout: float = _DEFAULTS["probe_timeout"]
    probe_stabilisation_seconds: float = _DEFAULTS["probe_stabilisation_seconds"]
    task_soak_seconds: float = _DEFAULTS["task_soak_seconds"]
    windows: str | None = _DEFAULTS["windows"]
    at_window_end: str = _DEFAULTS["at_window_end"]
    preflight: str = _DEFAULTS["preflight"]
    preflight_lead_seconds: float = _DEFAULTS["preflight_lead_seconds"]
    after_overlapping: bool = _DEFAULTS["after_overlapping"]

    def to_dict(self) -> dict[str, Any]:
        """The normalised JSON object, every key present; `parse_strategy` reads it back."""
        return {key.name: key_json(key, getattr(self, key.name)) for key in STRATEGY_TABLE}


if tuple(f.name for f in fields(Strategy)) != STRATEGY_KEYS:  # pragma: no cover - drift
    raise RuntimeError("Strategy's attributes must be STRATEGY_TABLE's keys, in its order")


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
    values = {
        name: _field(name, parse, data[name]) if name in data else _DEFAULTS[name]
        for name, parse in _PARSERS.items()
    }
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
    if strategy.pace == "adaptive":
        _check_pace(strategy, data)
    gates = strategy_problem(strategy, data)
    if gates is not None:
        raise StrategyError(*gates)
    return strategy


def _check_pace(strategy: Strategy, data: Mapping[str, Any]) -> None:
    """The adaptive pace's bounds must hold max_concurrency (where both are counts), and its
    failure threshold must not be above max_failures (where both are percentages): it must
    back off before the failure policy trips."""
    start, most = strategy.max_concurrency, strategy.pace_max_concurrency
    if start.count is not None:
        if most is not None and most.count is not None and most.count < start.count:
            raise StrategyError(
                "strategy.pace_max_concurrency",
                f"{most.count!r} is below max_concurrency {start.count}: the pace starts at "
                "max_concurrency and grows up to pace_max_concurrency")
        if strategy.pace_min_concurrency > start.count:
            raise StrategyError(
                "strategy.pace_min_concurrency",
                f"{strategy.pace_min_concurrency!r} is above max_concurrency {start.count}: "
                "the pace starts at max_concurrency and halves down to pace_min_concurrency")
    pace, policy = strategy.pace_failure_threshold, strategy.max_failures
    if pace.percent is not None and policy.percent is not None and pace.percent > policy.percent:
        given = "" if "pace_failure_threshold" in data else " (the default)"
        raise StrategyError(
            "strategy.pace_failure_threshold",
            f"{str(pace)!r}{given} is above max_failures {str(policy)!r}: the pace must back "
            "off before the failure policy trips")


# ------------------------------------------------------------------ command-line options
def flag_size(text: str) -> int | str:
    """A size given on the command line: "10%" stays text, "3" becomes 3 (anything else is
    left for `parse_strategy` to refuse, naming it)."""
    text = text.strip()
    return text if text.endswith("%") else int(text) if text.lstrip("-").isdigit() else text


def add_strategy_flags(
    group: argparse._ActionsContainer, table: Sequence[StrategyKey] = STRATEGY_TABLE
) -> None:
    """Add an option for each key of the table that has a `flag` to `group` (a parser or an
    argument group), in the table's order; `strategy_from_flags` reads them back."""
    for key in table:
        if key.flag is None:
            continue
        options: dict[str, Any] = {"dest": key.name}
        if key.flag_help is not None:
            options["help"] = key.flag_help
        if key.metavar is not None:
            options["metavar"] = key.metavar
        if key.kind == "bool":
            options.update(action="store_true", default=None)
        elif key.kind == "choice":
            options["choices"] = list(key.choices)
        elif key.kind == "int":
            options["type"] = int
        elif key.kind == "seconds":
            options["type"] = float
        elif key.kind not in ("waves", "size", "text"):
            raise ValueError(f"strategy key {key.name}: no command-line option for {key.kind}")
        group.add_argument(key.flag, **options)


def strategy_from_flags(
    args: argparse.Namespace, table: Sequence[StrategyKey] = STRATEGY_TABLE
) -> dict[str, Any]:
    """The strategy keys given as options (see `add_strategy_flags`), as JSON values for
    `parse_strategy`: waves split at commas, sizes as counts or percentage text. An empty
    --waves is not given."""
    strategy: dict[str, Any] = {}
    for key in table:
        if key.flag is None:
            continue
        value = getattr(args, key.name, None)
        if key.kind == "waves":
            if value:
                strategy[key.name] = [flag_size(text) for text in value.split(",")]
        elif value is not None:
            strategy[key.name] = flag_size(value) if key.kind == "size" else value
    return strategy


# ------------------------------------------------------------------ the README's table
README_TABLE_HEAD: Final = "| key | default | meaning |\n|---|---|---|\n"


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme_default(key: StrategyKey) -> str:
    """The README's "default" cell of `key` (before escaping '|')."""
    if key.default is None:
        return key.unset
    if key.kind == "choice":
        return f"`{key.default}`"
    return f"`{json.dumps(key.default)}`"


def strategy_markdown_table(table: Sequence[StrategyKey] = STRATEGY_TABLE) -> str:
    """The README's strategy table (a key per row: key, default, meaning), ending with a
    newline. Print it with `python -c "from orchestrator.domain.strategy import
    strategy_markdown_table as t; print(t(), end='')"`.
    """
    rows = "".join(
        f"| `{key.name}` | {_markdown_cell(readme_default(key))} | {_markdown_cell(key.doc)} |\n"
        for key in table
    )
    return README_TABLE_HEAD + rows


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
