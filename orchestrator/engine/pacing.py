"""Pacing statistics shared by the runners of one engine: how long installs and restarts
take here, when appliances answer again, and the progress percentages waiting to be written.
They decide only when to look at an appliance, never what an answer means (that is
`orchestrator.domain.outcome`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class ProgressBuffer:
    """Progress percentages waiting to be written in one batched statement."""

    pending: dict[int, int] = field(default_factory=dict)

    def record(self, task_id: int, progress: int | None) -> None:
        if progress is not None:
            self.pending[task_id] = progress

    def drain(self) -> dict[int, int]:
        out, self.pending = self.pending, {}
        return out


@dataclass
class InstallTimes:
    """Observed durations (seconds) of installs, or of restarts, for the polling cadence of
    later tasks."""

    default: float = 60.0
    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        if len(self.samples) > 200:
            del self.samples[:100]

    def expected(self) -> float:
        if not self.samples:
            return self.default
        ordered = sorted(self.samples)
        return ordered[len(ordered) // 2]

    def low(self) -> float:
        """The 10th percentile of the samples (the default without any)."""
        if not self.samples:
            return self.default
        ordered = sorted(self.samples)
        return ordered[len(ordered) // 10]

    def steady(self) -> bool:
        """Whether the samples agree closely enough (10th to 90th percentile within 10 % of
        the median) to predict the end of an install without looking at its task."""
        n = len(self.samples)
        if n < 5:
            return False
        ordered = sorted(self.samples)
        median = ordered[n // 2]
        return ordered[min(n - 1, (9 * n) // 10)] - ordered[n // 10] <= 0.1 * median


@dataclass
class ReturnOffsets:
    """How long after the end of its install an appliance answers again (seconds), as
    measured by "scout" tasks, which probe closely from before the usual return; the other
    tasks make their first probe at `expected()` (a high percentile of the recent scouts),
    so that one request usually finds the appliance back. Every `every`-th task scouts
    (every `every_steady`-th while the recent measurements agree closely: a scout's probes
    before the return each cost a connection the restarting appliance drops), and every
    task while fewer than three measurements exist."""

    window: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    every: int = 20
    every_steady: int = 100
    count: int = 0

    def add(self, seconds: float) -> None:
        self.window.append(max(0.0, seconds))

    def expected(self) -> float | None:
        if len(self.window) < 3:
            return None
        ordered = sorted(self.window)
        return ordered[(4 * (len(ordered) - 1)) // 5]

    def steady(self) -> bool:
        """Whether at least ten recent measurements agree closely (10th to 90th percentile
        within half a second, or within 10 % of the median when that is more)."""
        n = len(self.window)
        if n < 10:
            return False
        ordered = sorted(self.window)
        spread = ordered[min(n - 1, (9 * n) // 10)] - ordered[n // 10]
        return spread <= max(0.5, 0.1 * ordered[n // 2])

    def next_is_scout(self) -> bool:
        if len(self.window) < 3:
            return True
        self.count += 1
        return self.count % (self.every_steady if self.steady() else self.every) == 0
