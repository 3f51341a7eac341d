"""The machine a bench reports (`bench/common.py` `machine`): the hypervisor's steal during
the bench and the core's speed, which tell whether two runs may be compared."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import ROOT


def _bench_common() -> ModuleType:
    name = "bench_common_under_test"
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _stat(tmp_path: Path, steal_ticks: int) -> str:
    path = tmp_path / f"stat-{steal_ticks}"
    path.write_text(f"cpu  294524 246 53073 310936 2692 0 8098 {steal_ticks} 0 0\n"
                    "cpu0 147262 123 26536 155468 1346 0 4049 6000 0 0\n")
    return str(path)


def test_steal_is_the_eighth_column_of_the_cpu_line_in_seconds(tmp_path: Path) -> None:
    common = _bench_common()
    assert common.cpu_steal_s(_stat(tmp_path, 12989)) == pytest.approx(
        12989 / common.CLOCK_TICKS)


def test_steal_is_none_without_the_file_or_the_cpu_line(tmp_path: Path) -> None:
    common = _bench_common()
    assert common.cpu_steal_s(str(tmp_path / "missing")) is None
    other = tmp_path / "other"
    other.write_text("intr 1 2 3 4 5 6 7 8 9\n")
    assert common.cpu_steal_s(str(other)) is None


def test_machine_reports_the_steal_since_the_bench_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = _bench_common()
    ticks = common.CLOCK_TICKS
    readings = iter([_stat(tmp_path, 1000), _stat(tmp_path, 1000 + 3 * ticks)])
    real = common.cpu_steal_s
    monkeypatch.setattr(common, "cpu_steal_s", lambda: real(next(readings)))
    monkeypatch.setattr(common, "speed_reading", lambda: {"best": 9.0, "median": 10.0})
    # the bench started 10 s ago: 10 s times the CPUs of CPU time, 3 s of it stolen
    common._steal_at_start[:] = [(time.monotonic() - 10.0, common.cpu_steal_s())]
    common._speed_at_start[:] = [{"best": 8.0, "median": 9.5}]

    found = common.machine()

    cpus = os.cpu_count() or 1
    assert found["cpu_steal"]["seconds"] == 3.0
    assert found["cpu_steal"]["share"] == pytest.approx(3.0 / (10.0 * cpus), abs=0.002)
    assert found["speed_ms"] == {"start": {"best": 8.0, "median": 9.5},
                                 "end": {"best": 9.0, "median": 10.0}}


def test_a_speed_reading_is_a_best_and_a_median_time() -> None:
    common = _bench_common()
    reading = common.speed_reading(repeat=5)
    assert set(reading) == {"best", "median"}
    assert 0 < reading["best"] <= reading["median"]
