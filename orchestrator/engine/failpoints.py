"""Failpoints: let the chaos benchmark and the resilience tests kill the engine at the worst
moments.

Off unless the environment variable `ORCH_FAILPOINTS` names them, comma-separated, each in
one of two forms:

- `name=#N`: fire on the N-th pass through the point in this process (deterministic:
  `after_install_sent=#3` kills the engine right after the third accepted install);
- `name=P`: fire at each pass with probability P (a bare `name` is P = 1), drawn from a
  generator seeded only by `ORCH_FAILPOINTS_SEED` (default "0"), so one seed repeats.

Firing a crash point (`hit`) SIGKILLs the process (no clean-up at all); firing a fault point
(`fault`) raises `InjectedFault` where it stands. When `ORCH_FAILPOINTS_LOG` names a file, a
line `<name> hit=<N> pid=<pid>` is appended to it, written and fsynced before the kill (or
the raise), so a test can assert that the failpoint fired (and which pass it was). Points:

- `after_install_sent`: the appliance accepted the install; INSTALLING is not recorded yet
  (the crash window that the DISPATCHING intent record and reconciliation exist for).
- `after_claim`: tasks were claimed (DISPATCHING) and no install was sent yet.
- `lease_loop_crash` (a fault): the engine's lease-renewal loop raises at its N-th pass,
  outside the errors it tolerates: the engine must notice, drain and stop with an error.

This never runs in production unless someone sets the variable on purpose.
"""

from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass

from orchestrator.domain.errors import OrchestratorError


class FailpointSpecError(OrchestratorError, ValueError):
    """`ORCH_FAILPOINTS` could not be read; the message says which item and why."""


class InjectedFault(OrchestratorError, RuntimeError):
    """Raised by `fault(name)` when the failpoint `name` fires."""


@dataclass(frozen=True)
class Failpoint:
    """Fire on the `nth` hit (when set), else with probability `rate` at each hit."""

    nth: int | None = None
    rate: float = 0.0


def parse(spec: str) -> dict[str, Failpoint]:
    """`after_install_sent=#3,after_claim=0.1` -> {name: Failpoint}."""
    points: dict[str, Failpoint] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = (s.strip() for s in item.partition("="))
        if not name:
            raise FailpointSpecError(f"ORCH_FAILPOINTS: {item!r} names no failpoint")
        try:
            if value.startswith("#"):
                nth = int(value[1:])
                if nth < 1:
                    raise ValueError
                points[name] = Failpoint(nth=nth)
            else:
                rate = float(value or "1")
                if not 0.0 <= rate <= 1.0:
                    raise ValueError
                points[name] = Failpoint(rate=rate)
        except ValueError:
            raise FailpointSpecError(
                f"ORCH_FAILPOINTS: {item!r}: expected {name}=#N (N >= 1) or "
                f"{name}=P (0 <= P <= 1)"
            ) from None
    return points


_points = parse(os.environ.get("ORCH_FAILPOINTS", ""))
_log = os.environ.get("ORCH_FAILPOINTS_LOG", "")
_rng = random.Random(os.environ.get("ORCH_FAILPOINTS_SEED", "0"))
_hits: dict[str, int] = {}


def _record(name: str, count: int) -> None:
    """Append `<name> hit=<N> pid=<pid>` to the log file, durably, before the kill."""
    if not _log:
        return
    fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{name} hit={count} pid={os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def configure(spec: str) -> None:
    """Use the failpoints of `spec` (the `ORCH_FAILPOINTS` syntax) from now on, counting
    their passes from zero: for tests that run the engine in their own process."""
    global _points
    _points = parse(spec)
    _hits.clear()


def passes(name: str) -> int:
    """How many times the failpoint `name` (when set) was passed through so far."""
    return _hits.get(name, 0)


def _fires(name: str) -> bool:
    """Count a pass through `name`; whether it fires now (recorded when it does)."""
    point = _points.get(name)
    if point is None:
        return False
    count = _hits[name] = _hits.get(name, 0) + 1
    fire = count == point.nth if point.nth is not None else (
        point.rate > 0 and _rng.random() < point.rate)
    if fire:
        _record(name, count)
    return fire


def hit(name: str) -> None:
    """Crash here (SIGKILL, no clean-up at all) when the failpoint fires."""
    if _fires(name):
        os.kill(os.getpid(), signal.SIGKILL)


def fault(name: str) -> None:
    """Raise `InjectedFault(name)` here when the failpoint fires."""
    if _fires(name):
        raise InjectedFault(name)
