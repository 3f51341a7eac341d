"""Health gates after an install: the checks a task passes, once its appliance is proven on
the target version with its key services running, before it is SUCCEEDED.

The strategy names them (all optional; the defaults check nothing more, so a task succeeds
the moment its version is proven, as it always did):

- `required_services`: services that must run besides the key ones (`verify_services`);
- an HTTP probe per appliance: `probe_url` (a template: `{name}` and `{host}` are the
  appliance's), `probe_status`, `probe_body`, `probe_timeout`; it must succeed within
  `probe_stabilisation_seconds` of the proof, tried every few seconds;
- `task_soak_seconds`: once every check passed, the appliance must stay healthy (the
  target version, the key and required services running, the probe succeeding) this long.

The runner (orchestrator/engine/runner.py) does the requests and feeds each look to
`judge_gates`, which decides (pure, no I/O, any monotonic clock):

- key or required services not running `reboot_grace` after the proof: FAILED
  `SERVICE_NOT_RUNNING`;
- the probe not succeeding `probe_stabilisation_seconds` after the proof: FAILED
  `PROBE_FAILED`;
- another version once the target was proven, or during the soak any look that fails: FAILED
  `SOAK_FAILED`;
- no answer for longer than `reboot_grace` before the soak: TIMED_OUT `UNREACHABLE`;
- every check passing, then healthy at every look for `task_soak_seconds`: SUCCEEDED.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from orchestrator.domain.inventory import TargetPolicy, host_refusal

# the placeholders of a probe URL template
PROBE_FIELDS = ("name", "host")
# the most characters of a probe's answer kept in a task event
BODY_EXCERPT = 200
# the most characters of a probe's answer read when looking for `probe_body`
BODY_READ = 65536
# between two tries of the probe (and looks at the services) before the checks passed:
# a tenth of the period, within these bounds
SETTLE_STEP = (0.5, 5.0)
# between two looks during the soak: a tenth of it, within these bounds
SOAK_STEP = (0.5, 15.0)

SERVICE_NOT_RUNNING = "SERVICE_NOT_RUNNING"
PROBE_FAILED = "PROBE_FAILED"
SOAK_FAILED = "SOAK_FAILED"
UNREACHABLE = "UNREACHABLE"
ERROR_CODES: tuple[str, ...] = (SERVICE_NOT_RUNNING, PROBE_FAILED, SOAK_FAILED)
"""The error codes of a failed gate (UNREACHABLE is the outcome module's, reused)."""


# ---------------------------------------------------------------------- probe URLs
def probe_template_problem(template: str) -> str | None:
    """Why `template` is not a probe URL template (None: it is one): an http(s) URL whose
    only placeholders are `{name}` and `{host}`, a URL with a host once they are filled in,
    without credentials or a fragment. The host policy is applied per appliance, when the
    task runs (`check_probe_url`)."""
    if any(ch.isspace() or ord(ch) < 32 for ch in template):
        return f"{template!r} contains whitespace or control characters"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{template!r} is not a URL template ({exc}; write a brace as {{{{ or }}}})"
    fields = [name for _, name, _, _ in parsed if name is not None]
    if any(spec or conv for _, _, spec, conv in parsed):
        return f"{template!r}: a placeholder takes no format or conversion (write {{host}})"
    unknown = sorted({str(name) for name in fields if name not in PROBE_FIELDS})
    if unknown:
        return (f"{template!r} has the unknown placeholder(s) "
                f"{', '.join('{' + n + '}' for n in unknown)} (known: {{name}}, {{host}})")
    try:
        url = expand_probe_url(template, name="appliance-01", host="appliance.example")
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{template!r} is not a URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return f"{template!r} is not an http:// or https:// URL"
    if not parts.hostname:
        return f"{template!r} has no host"
    if parts.username is not None or parts.password is not None:
        return "a probe URL must not hold credentials (the probe sends none)"
    if parts.fragment:
        return f"{template!r} must not carry a fragment"
    return None


def expand_probe_url(template: str, *, name: str, host: str) -> str:
    """The probe URL of one appliance: `{name}` (URL-quoted) and `{host}` (an IPv6
    address in brackets) filled in; `{{`/`}}` are literal braces."""
    shown_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return template.format(name=quote(name, safe=""), host=shown_host)


def check_probe_url(url: str, policy: TargetPolicy) -> str:
    """`url` once it passes the rules of appliance base URLs (`check_base_url`): http(s),
    http:// only with `allow_http`, a host the policy lets be contacted; no credentials,
    no fragment (a query is allowed: it is never shown). ValueError naming the problem."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    shown = shown_url(url)
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"probe_url: {shown} is not an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("probe_url: credentials do not belong in the URL")
    if parts.fragment:
        raise ValueError(f"probe_url: {shown} must not carry a fragment")
    reasons = []
    if scheme == "http" and not policy.allow_http:
        reasons.append("http:// is refused (appliance_allow_http = true allows it for labs "
                       "and the simulator)")
    reason = host_refusal(parts.hostname, policy)
    if reason:
        reasons.append(reason)
    if reasons:
        raise ValueError(f"probe_url: {shown}: " + "; and ".join(reasons))
    return url


def shown_url(url: str) -> str:
    """`url` as logs and events show it: without credentials, and a query as `?...` (it
    may carry a token)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "(an invalid URL)"
    return urlunsplit((parts.scheme, host + port, parts.path, "..." if parts.query else "", ""))


# ---------------------------------------------------------------------- the spec
@dataclass(frozen=True)
class GateSpec:
    """The gates of a rollout's tasks (from its strategy, `GateSpec.of`)."""

    key_services: tuple[str, ...] = ()
    required_services: tuple[str, ...] = ()
    probe_url: str | None = None
    probe_status: int = 200
    probe_body: str | None = None
    probe_timeout: float = 10.0
    stabilisation: float = 120.0
    soak: float = 0.0
    grace: float = 900.0

    @classmethod
    def of(cls, strategy: Any) -> GateSpec:
        """The gates a `Strategy` names."""
        return cls(
            key_services=tuple(strategy.verify_services),
            required_services=tuple(strategy.required_services),
            probe_url=strategy.probe_url, probe_status=strategy.probe_status,
            probe_body=strategy.probe_body, probe_timeout=strategy.probe_timeout,
            stabilisation=strategy.probe_stabilisation_seconds,
            soak=strategy.task_soak_seconds, grace=strategy.reboot_grace,
        )

    @property
    def active(self) -> bool:
        """Whether any gate is set (the defaults set none: success at the proof)."""
        return bool(self.required_services or self.probe_url or self.soak > 0)

    def describe(self) -> dict[str, Any]:
        """The gates, for the task event that starts them (never the probe's query)."""
        described: dict[str, Any] = {}
        if self.required_services:
            described["required_services"] = list(self.required_services)
        if self.probe_url:
            described["probe"] = {
                "url": shown_url(self.probe_url), "expect_status": self.probe_status,
                "stabilisation_s": _num(self.stabilisation),
            }
            if self.probe_body is not None:
                described["probe"]["body_contains"] = self.probe_body
        if self.soak > 0:
            described["soak_s"] = _num(self.soak)
        return described


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 3)


def _step(period: float, bounds: tuple[float, float]) -> float:
    return max(bounds[0], min(bounds[1], period / 10))


# ---------------------------------------------------------------------- one look
@dataclass(frozen=True)
class ProbeResult:
    """One try of the probe: the status (None: no answer) and the start of the answer."""

    status: int | None
    body: str = ""
    error: str | None = None

    def shown(self) -> str:
        if self.status is None:
            return f"no answer ({self.error or 'failed'})"
        return str(self.status)


def probe_problem(spec: GateSpec, result: ProbeResult) -> str | None:
    """Why the probe's try failed (None: it succeeded)."""
    if result.status is None:
        return f"no answer ({result.error or 'failed'})"
    if result.status != spec.probe_status:
        return f"answered {result.status}, not {spec.probe_status}"
    if spec.probe_body is not None and spec.probe_body not in result.body:
        return f"answered {result.status} without {spec.probe_body!r} in its body"
    return None


@dataclass(frozen=True)
class Look:
    """One look at the appliance during the gates. `version` None: it did not answer
    (`error` says how); `running`: service id -> is_running; `probe`: the probe's try
    (None: no probe, or not tried)."""

    at: float
    version: str | None
    running: Mapping[str, bool] | None = None
    probe: ProbeResult | None = None
    error: str | None = None


# ---------------------------------------------------------------------- the watch
@dataclass(frozen=True)
class GateWatch:
    """What the gates saw since the version was proven (at `proven`). Built with
    `start_gates`, advanced by `judge_gates`."""

    target: str
    proven: float
    soak_from: float | None = None  # every check passed: the soak runs from then
    looks: int = 0
    probe_tries: int = 0
    probe_failures: int = 0
    probe_ok_after: float | None = None  # seconds from the proof to the first success
    last_probe: ProbeResult | None = None
    last_problem: str | None = None
    down_since: float | None = None

    def seen(self) -> dict[str, Any]:
        """What the gates saw, for a task event."""
        seen: dict[str, Any] = {"looks": self.looks}
        if self.probe_tries:
            seen["probe"] = {"tries": self.probe_tries, "failed": self.probe_failures}
            if self.last_probe is not None:
                seen["probe"]["last"] = self.last_probe.shown()
                if self.last_probe.body:
                    seen["probe"]["last_body"] = self.last_probe.body[:BODY_EXCERPT]
            if self.probe_ok_after is not None:
                seen["probe"]["ok_after_s"] = round(self.probe_ok_after, 1)
        if self.soak_from is not None:
            seen["soak_from_s"] = round(self.soak_from - self.proven, 1)
        if self.last_problem:
            seen["last_problem"] = self.last_problem
        return seen


def start_gates(target: str, now: float) -> GateWatch:
    """The target version was proven (with the key services running) at `now`."""
    return GateWatch(target=target, proven=now)


class GateOutcome(StrEnum):
    WAIT = "wait"
    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class GateVerdict:
    outcome: GateOutcome
    error_code: str | None = None
    message: str | None = None
    wait: float = 0.0  # WAIT: seconds until the next look
    final_version: str | None = None  # the version last seen, when not the target


def missing(services: Sequence[str], running: Mapping[str, bool]) -> tuple[str, ...]:
    """The entries of `services` ("a|b": either) that `running` does not satisfy."""
    return tuple(entry for entry in services
                 if not any(running.get(alt, False) for alt in entry.split("|")))


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def judge_gates(spec: GateSpec, w: GateWatch, look: Look) -> tuple[GateWatch, GateVerdict]:
    """Fold one look into the watch and say what follows (see the module's table)."""
    now = look.at
    w = replace(w, looks=w.looks + 1)
    soaking = w.soak_from is not None
    elapsed = now - w.proven
    probe = look.probe
    probe_why: str | None = None
    if probe is not None:
        probe_why = probe_problem(spec, probe)
        w = replace(w, probe_tries=w.probe_tries + 1, last_probe=probe,
                    probe_failures=w.probe_failures + (probe_why is not None))
        if probe_why is None and w.probe_ok_after is None:
            w = replace(w, probe_ok_after=elapsed)
    elif spec.probe_url:
        probe_why = "not tried"

    if look.version is None:
        problem = f"no answer ({look.error or 'failed'})"
        w = replace(w, last_problem=problem,
                    down_since=w.down_since if w.down_since is not None else now)
        if soaking:
            return w, _soak_failed(spec, w, now, problem)
        assert w.down_since is not None
        if now - w.down_since > spec.grace:
            return w, GateVerdict(
                GateOutcome.TIMED_OUT, UNREACHABLE,
                f"the appliance did not answer for more than reboot_grace {spec.grace:g} s "
                f"during its health gates ({look.error or 'no answer'})")
        return w, _wait(spec, w, now)
    w = replace(w, down_since=None)
    if not _same(look.version, w.target):
        problem = f"reports {look.version}, not {w.target}"
        return replace(w, last_problem=problem), GateVerdict(
            GateOutcome.FAILED, SOAK_FAILED,
            f"the appliance {problem}, after {w.target} had been proven "
            f"{elapsed:.0f} s before", final_version=look.version)
    running = look.running or {}
    down = missing(spec.key_services, running) + missing(spec.required_services, running)
    problems = []
    if down:
        problems.append(f"service(s) not running: {', '.join(down)}")
    if probe_why is not None:
        problems.append(f"probe {probe_why}")
    if soaking:
        assert w.soak_from is not None
        if problems:
            problem = "; ".join(problems)
            return replace(w, last_problem=problem), _soak_failed(spec, w, now, problem)
        if now - w.soak_from >= spec.soak:
            return w, GateVerdict(GateOutcome.PASSED)
        return w, _wait(spec, w, now)
    if not problems:
        w = replace(w, soak_from=now, last_problem=None)
        if spec.soak <= 0:
            return w, GateVerdict(GateOutcome.PASSED)
        return w, _wait(spec, w, now)
    w = replace(w, last_problem="; ".join(problems))
    if down and elapsed >= spec.grace:
        return w, GateVerdict(
            GateOutcome.FAILED, SERVICE_NOT_RUNNING,
            f"{w.target} is installed but {', '.join(down)} "
            f"{'is' if len(down) == 1 else 'are'} not running {elapsed:.0f} s later "
            f"(reboot_grace {spec.grace:g} s)")
    if probe_why is not None and elapsed >= spec.stabilisation:
        assert spec.probe_url is not None
        return w, GateVerdict(
            GateOutcome.FAILED, PROBE_FAILED,
            f"the probe {shown_url(spec.probe_url)} did not succeed within "
            f"probe_stabilisation_seconds {spec.stabilisation:g} s of {w.target} being "
            f"proven: {w.probe_failures} of {w.probe_tries} tries failed, the last "
            f"{probe_why}")
    return w, _wait(spec, w, now)


def _soak_failed(spec: GateSpec, w: GateWatch, now: float, problem: str) -> GateVerdict:
    assert w.soak_from is not None
    return GateVerdict(
        GateOutcome.FAILED, SOAK_FAILED,
        f"the appliance went unhealthy {now - w.soak_from:.0f} s into its "
        f"task_soak_seconds {spec.soak:g} s: {problem}")


def _wait(spec: GateSpec, w: GateWatch, now: float) -> GateVerdict:
    """WAIT, with the time to the next look: during the soak, a tenth of it (0.5-15 s),
    never past its end; before, a tenth of the period that bounds what is missing
    (0.5-5 s), never past the deadline that is next."""
    if w.soak_from is not None:
        left = w.soak_from + spec.soak - now
        return GateVerdict(GateOutcome.WAIT, wait=max(0.0, min(_step(spec.soak, SOAK_STEP),
                                                               left)))
    periods = [spec.grace]
    if spec.probe_url:
        periods.append(spec.stabilisation)
    step = _step(min(periods), SETTLE_STEP)
    deadlines = [w.proven + p - now for p in periods if w.proven + p - now > 0]
    if deadlines:
        step = min(step, min(deadlines))
    return GateVerdict(GateOutcome.WAIT, wait=max(0.0, step))


# ---------------------------------------------------------------------- strategy checks
def strategy_problem(strategy: Any, given: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, why) when the gates of a parsed strategy do not fit together, else None
    (`given`: the keys as given, to tell a default from a value):
    a probe template that is not one; a probe_body without a probe_url; a soak, probe
    timeout or stabilisation period that could not end before task_timeout."""
    if strategy.probe_url is not None:
        why = probe_template_problem(strategy.probe_url)
        if why is not None:
            return "strategy.probe_url", why
    elif strategy.probe_body is not None:
        return "strategy.probe_body", "given without probe_url: there is no probe"
    timeout = strategy.task_timeout
    checks = [("task_soak_seconds", strategy.task_soak_seconds)]
    if strategy.probe_url is not None:
        checks.append(("probe_stabilisation_seconds", strategy.probe_stabilisation_seconds))
        checks.append(("probe_timeout", strategy.probe_timeout))
    for name, value in checks:
        if value >= timeout:
            default = "" if name in given else " (the default)"
            return (f"strategy.{name}",
                    f"{_num(value)!r}{default} is not shorter than task_timeout "
                    f"{_num(timeout)!r}: a task could never succeed")
    return None
