"""Fault names, fault parameters and fault profiles (seeded, deterministic assignment).

A profile says which appliances misbehave and how: `rates` gives each fault a probability
per appliance (drawn once, at start, from the profile's seed), `site_rates` gives further
rates to the appliances of given sites (a bad batch of sites), `appliances` names faults
for given appliances (replacing whatever the rates drew for them), `params` tunes the
faults. Profiles load from JSON or TOML files, or by name (`mixed`).
"""

from __future__ import annotations

import json
import random
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

INSTALL_ERROR = "install_error"
INSTALL_500 = "install_500"
POLL_5XX = "poll_5xx"
POLL_503 = "poll_503"
HANG = "hang"
SLOW = "slow"
SESSION_EXPIRY = "session_expiry"
LONG_REBOOT = "long_reboot"
SILENT_FAILURE = "silent_failure"
FORBIDDEN = "forbidden"
BAD_CREDENTIALS = "bad_credentials"
MALFORMED_JSON = "malformed_json"
WRONG_TYPES = "wrong_types"
API_V1_TASKS = "api_v1_tasks"
LOST_ANSWER = "lost_answer"
REST_RESTART = "rest_restart"
OPAQUE_TASKS = "opaque_tasks"
IN_PROGRESS_ERROR = "in_progress_error"
SPARSE_ACCEPT = "sparse_accept"
NO_REPOSITORY = "no_repository"
REPO_UNREACHABLE = "repo_unreachable"
VERSION_NOT_OFFERED = "version_not_offered"
SERVICES_DOWN = "services_down"
RECONFIGURE_PENDING = "reconfigure_pending"
PROBE_FLAPPING = "probe_flapping"
PROBE_FAILING = "probe_failing"

FAULTS: tuple[str, ...] = (
    INSTALL_ERROR,
    INSTALL_500,
    POLL_5XX,
    POLL_503,
    HANG,
    SLOW,
    SESSION_EXPIRY,
    LONG_REBOOT,
    SILENT_FAILURE,
    FORBIDDEN,
    BAD_CREDENTIALS,
    MALFORMED_JSON,
    WRONG_TYPES,
    API_V1_TASKS,
    # added later: drawn from a second random stream (see `FaultProfile.assign`), so that
    # giving them a rate leaves the draws of the faults above unchanged for every seed
    LOST_ANSWER,
    REST_RESTART,
    OPAQUE_TASKS,
    IN_PROGRESS_ERROR,
    SPARSE_ACCEPT,
    # added later still (pre-flight problems and health gates): drawn from a third random
    # stream, so that rating them leaves the draws of every fault above unchanged
    NO_REPOSITORY,
    REPO_UNREACHABLE,
    VERSION_NOT_OFFERED,
    SERVICES_DOWN,
    RECONFIGURE_PENDING,
    PROBE_FLAPPING,
    PROBE_FAILING,
)
"""Every fault the simulator knows, in a fixed order (the order rates are drawn in)."""

_FIRST_STREAM = 14
"""`FAULTS[:_FIRST_STREAM]` draw from `random.Random(seed)`, the next ones from a second
stream (up to `_SECOND_STREAM`), the rest from a third."""
_SECOND_STREAM = 19
"""`FAULTS[_FIRST_STREAM:_SECOND_STREAM]` draw from `random.Random(f"{seed}/2")`."""

_FAULT_SET = frozenset(FAULTS)


class FaultProfileError(ValueError):
    """A profile (file, dict or flag) is invalid; the message says where and why."""


def check_faults(faults: Iterable[str]) -> frozenset[str]:
    """Validate fault names; raise FaultProfileError naming any unknown one."""
    result = frozenset(faults)
    unknown = sorted(result - _FAULT_SET)
    if unknown:
        raise FaultProfileError(
            f"unknown fault(s) {', '.join(map(repr, unknown))} (known: {', '.join(FAULTS)})"
        )
    return result


@dataclass(frozen=True)
class FaultParams:
    """Knobs of the faults. Every field can be set in a profile's `params` table."""

    slow_seconds: float = 1.0
    """`slow`: delay added before every answer."""
    session_expiry_seconds: float = 2.0
    """`session_expiry`: a session answers 401 this long after it was created."""
    long_reboot_seconds: float = 3600.0
    """`long_reboot`: how long the reboot after an install lasts."""
    poll_error_probability: float = 0.3
    """`poll_5xx` / `poll_503`: the chance that a GET is answered with the error."""
    malformed_probability: float = 1.0
    """`malformed_json`: the chance that a 200 GET answer is truncated."""
    max_faults_per_appliance: int = 3
    """Rate-drawn faults per appliance are capped at this many."""
    v1_time_format: str = "iso"
    """`api_v1_tasks`: `iso` ("2024-05-01T12:00:00.123Z") or `epoch_ms` ("1714564800123")."""
    rest_restart_at: float = 0.3
    """`rest_restart`: when the REST service restarts, as a fraction of the RUNNING phase."""
    rest_restart_seconds: float = 3.0
    """`rest_restart`: how long the REST service is down (every request dropped or 503)."""
    probe_flap_seconds: float = 5.0
    """`probe_flapping`: how long the health probe fails after the appliance is back up on
    a new version."""
    bad_batch_after: int = 0
    """A bad batch over time: once this many installs were accepted fleet-wide (since the
    start or the last reset), each further accepted install ends in ERROR with probability
    `bad_batch_rate`. 0: off."""
    bad_batch_rate: float = 0.0
    """See `bad_batch_after`."""

    def __post_init__(self) -> None:
        for name in ("slow_seconds", "session_expiry_seconds", "long_reboot_seconds"):
            if getattr(self, name) < 0:
                raise FaultProfileError(f"params.{name}: must be >= 0")
        if not 0.0 <= self.probe_flap_seconds < float("inf"):  # NaN fails too
            raise FaultProfileError(
                f"params.probe_flap_seconds: {self.probe_flap_seconds!r} is not a number >= 0"
            )
        if self.bad_batch_after < 0:
            raise FaultProfileError(
                f"params.bad_batch_after: {self.bad_batch_after!r} is not >= 0")
        for name in ("poll_error_probability", "malformed_probability", "bad_batch_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FaultProfileError(f"params.{name}: must be between 0 and 1")
        if self.max_faults_per_appliance < 1:
            raise FaultProfileError("params.max_faults_per_appliance: must be >= 1")
        if self.v1_time_format not in ("iso", "epoch_ms"):
            raise FaultProfileError("params.v1_time_format: must be 'iso' or 'epoch_ms'")
        if not 0.0 <= self.rest_restart_at <= 1.0:  # NaN fails too
            raise FaultProfileError(
                f"params.rest_restart_at: {self.rest_restart_at!r} is not between 0 and 1"
            )
        if not self.rest_restart_seconds >= 0.0:
            raise FaultProfileError(
                f"params.rest_restart_seconds: {self.rest_restart_seconds!r} is not >= 0"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultParams:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise FaultProfileError(
                f"params: unknown key(s) {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(known)})"
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            kind = known[key].type
            try:
                if kind == "float":
                    if isinstance(value, bool):
                        raise TypeError
                    values[key] = float(value)
                elif kind == "int":
                    if isinstance(value, bool) or float(value) != int(value):
                        raise TypeError
                    values[key] = int(value)
                else:
                    values[key] = str(value)
            except (TypeError, ValueError):
                raise FaultProfileError(
                    f"params.{key}: expected a {kind}, got {value!r}"
                ) from None
        return cls(**values)


def _normal_appliances(data: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(data, Mapping):
        raise FaultProfileError("appliances: expected a table of name -> fault(s)")
    result: dict[str, tuple[str, ...]] = {}
    for name, value in data.items():
        if isinstance(value, str):
            items: Sequence[Any] = [value] if value else []
        elif isinstance(value, list | tuple):
            items = value
        else:
            raise FaultProfileError(
                f"appliances.{name}: expected a fault name or a list of them, got {value!r}"
            )
        if not all(isinstance(v, str) for v in items):
            raise FaultProfileError(f"appliances.{name}: fault names must be text")
        try:
            check_faults(items)
        except FaultProfileError as exc:
            raise FaultProfileError(f"appliances.{name}: {exc}") from None
        result[str(name)] = tuple(dict.fromkeys(items))
    return result


def _normal_rates(data: Any, where: str = "rates") -> dict[str, float]:
    if not isinstance(data, Mapping):
        raise FaultProfileError(f"{where}: expected a table of fault -> probability")
    try:
        check_faults(data)
    except FaultProfileError as exc:
        if where == "rates":
            raise
        raise FaultProfileError(f"{where}: {exc}") from None
    result: dict[str, float] = {}
    for fault, rate in data.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise FaultProfileError(f"{where}.{fault}: expected a number, got {rate!r}")
        if not 0.0 <= float(rate) <= 1.0:
            raise FaultProfileError(f"{where}.{fault}: {rate} is not between 0 and 1")
        result[fault] = float(rate)
    return result


def _normal_site_rates(data: Any) -> dict[str, dict[str, float]]:
    if not isinstance(data, Mapping):
        raise FaultProfileError("site_rates: expected a table of site -> (fault -> probability)")
    result: dict[str, dict[str, float]] = {}
    for site, rates in data.items():
        result[str(site)] = _normal_rates(rates, f"site_rates.{site}")
    return result


@dataclass(frozen=True)
class FaultProfile:
    """Which appliances get which faults.

    `appliances` values may be given as a single fault name or a sequence; `params` may be
    given as a `FaultParams` or a plain mapping. Both are normalised on construction.
    `site_rates` (site -> fault -> probability) draws further faults for the appliances of
    those sites, on top of `rates` (a bad batch of sites: see `assign`).
    """

    seed: int | None = None
    """Seed of the rate draw; None uses `SimulatorConfig.seed`."""
    rates: Mapping[str, float] = field(default_factory=dict)
    appliances: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    params: FaultParams = field(default_factory=FaultParams)
    name: str = "custom"
    site_rates: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", _normal_rates(self.rates))
        object.__setattr__(self, "site_rates", _normal_site_rates(self.site_rates))
        object.__setattr__(self, "appliances", _normal_appliances(self.appliances))
        params: Any = self.params
        if isinstance(params, Mapping):
            object.__setattr__(self, "params", FaultParams.from_dict(params))
        elif not isinstance(params, FaultParams):
            raise FaultProfileError("params: expected a table")
        if self.seed is not None and (isinstance(self.seed, bool) or
                                      not isinstance(self.seed, int)):
            raise FaultProfileError(f"seed: expected an integer, got {self.seed!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "custom") -> FaultProfile:
        """Build from the JSON/TOML shape; raise FaultProfileError on anything unknown."""
        if not isinstance(data, Mapping):
            raise FaultProfileError("a fault profile must be a JSON object / TOML table")
        unknown = sorted(set(data) - {"seed", "rates", "site_rates", "appliances", "params",
                                      "name"})
        if unknown:
            raise FaultProfileError(
                f"unknown key(s) {', '.join(map(repr, unknown))} "
                "(known: seed, rates, site_rates, appliances, params, name)"
            )
        params = data.get("params", {})
        if not isinstance(params, Mapping):
            raise FaultProfileError("params: expected a table")
        return cls(
            seed=data.get("seed"),
            rates=data.get("rates", {}),
            site_rates=data.get("site_rates", {}),
            appliances=data.get("appliances", {}),
            params=FaultParams.from_dict(params),
            name=str(data.get("name", name)),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> FaultProfile:
        """Load a `.json` or `.toml` profile (the suffix decides; default JSON)."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".toml":
                data: Any = tomllib.loads(text)
            else:
                data = json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise FaultProfileError(f"{path}: not valid {path.suffix or 'JSON'}: {exc}") from None
        try:
            return cls.from_dict(data, name=path.stem)
        except FaultProfileError as exc:
            raise FaultProfileError(f"{path}: {exc}") from None

    @classmethod
    def named(cls, name: str) -> FaultProfile:
        """A built-in profile by name (`none`, `mixed`)."""
        try:
            return _NAMED[name]()
        except KeyError:
            raise FaultProfileError(
                f"no built-in profile {name!r} (built-in: {', '.join(sorted(_NAMED))})"
            ) from None

    @classmethod
    def load(cls, spec: str | Path) -> FaultProfile:
        """A built-in profile name (`mixed`) or a path to a JSON/TOML file."""
        if isinstance(spec, str) and spec in _NAMED:
            return cls.named(spec)
        return cls.from_file(spec)

    @classmethod
    def mixed(cls) -> FaultProfile:
        """A realistic mix: 5xx storms, hangs, lost tasks, session expiry, long reboots,
        silent failures, malformed bodies, old-style task bodies, failed installs, lost
        install answers, REST service restarts, opaque tasks, in-progress refusals and
        sparse install answers."""
        return cls(
            name="mixed",
            rates={
                POLL_5XX: 0.06,
                POLL_503: 0.04,
                HANG: 0.01,
                SLOW: 0.03,
                SESSION_EXPIRY: 0.05,
                LONG_REBOOT: 0.02,
                SILENT_FAILURE: 0.02,
                INSTALL_ERROR: 0.03,
                INSTALL_500: 0.01,
                MALFORMED_JSON: 0.01,
                API_V1_TASKS: 0.05,
                LOST_ANSWER: 0.02,
                REST_RESTART: 0.02,
                OPAQUE_TASKS: 0.05,
                IN_PROGRESS_ERROR: 0.03,
                SPARSE_ACCEPT: 0.02,
            },
            params=FaultParams(
                slow_seconds=2.0,
                session_expiry_seconds=20.0,
                long_reboot_seconds=3600.0,
                poll_error_probability=0.3,
                malformed_probability=0.2,
                max_faults_per_appliance=2,
            ),
        )

    def with_changes(self, **changes: Any) -> FaultProfile:
        """A copy with some fields replaced (e.g. `params={"slow_seconds": 0.1}`)."""
        data: dict[str, Any] = {
            "seed": self.seed, "rates": dict(self.rates),
            "appliances": dict(self.appliances), "params": self.params, "name": self.name,
            "site_rates": {site: dict(rates) for site, rates in self.site_rates.items()},
        }
        data.update(changes)
        return FaultProfile(**data)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "rates": dict(self.rates),
            "site_rates": {site: dict(rates) for site, rates in self.site_rates.items()},
            "appliances": {k: list(v) for k, v in self.appliances.items()},
            "params": asdict(self.params),
        }

    # ------------------------------------------------------------------ assignment
    def assign(self, names: Sequence[str], seed: int,
               sites: Sequence[str] | None = None) -> list[frozenset[str]]:
        """The faults of each appliance, in the order of `names` (`sites`: the site of each,
        in the same order; needed for `site_rates` only).

        Deterministic: one `random.Random(seed)` draws one number per (appliance, fault
        with a rate), appliances in order, faults in `FAULTS` order; at most
        `params.max_faults_per_appliance` are kept (the first in `FAULTS` order). Named
        appliances then replace theirs. The faults added after the first fourteen draw
        the same way from a second `random.Random(f"{seed}/2")`, and those added after
        `sparse_accept` from a third `random.Random(f"{seed}/3")`, so that rating them
        does not change which appliances get the older faults. `site_rates` draw last,
        from `random.Random(f"{seed}/sites")` (one number per appliance of a listed site
        and fault of that site), adding to (never removing) the faults drawn above; the
        cap counts them after those.
        """
        base = self.seed if self.seed is not None else seed
        streams = (
            (random.Random(base), FAULTS[:_FIRST_STREAM]),
            (random.Random(f"{base}/2"), FAULTS[_FIRST_STREAM:_SECOND_STREAM]),
            (random.Random(f"{base}/3"), FAULTS[_SECOND_STREAM:]),
        )
        rated = [(rng, [(fault, self.rates[fault]) for fault in faults
                        if self.rates.get(fault)])
                 for rng, faults in streams]
        rated = [(rng, faults) for rng, faults in rated if faults]
        site_rng = random.Random(f"{base}/sites")
        by_site = {
            site: [(fault, rates[fault]) for fault in FAULTS if rates.get(fault)]
            for site, rates in self.site_rates.items()
        } if sites is not None else {}
        cap = self.params.max_faults_per_appliance
        result: list[frozenset[str]] = []
        empty: frozenset[str] = frozenset()
        for index, name in enumerate(names):
            drawn = [fault for rng, faults in rated for fault, rate in faults
                     if rng.random() < rate]
            site_faults = by_site.get(sites[index]) if sites is not None and by_site else None
            if site_faults:
                drawn += [fault for fault, rate in site_faults
                          if site_rng.random() < rate and fault not in drawn]
            faults_of = frozenset(drawn[:cap]) if drawn else empty
            explicit = self.appliances.get(name)
            if explicit is not None:
                faults_of = frozenset(explicit)
            result.append(faults_of)
        return result


_NAMED: dict[str, Callable[[], FaultProfile]] = {
    "none": lambda: FaultProfile(name="none"),
    "mixed": FaultProfile.mixed,
}
