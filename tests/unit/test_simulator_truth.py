"""The simulator's ground truth per install: when it started and when it stopped counting as
in flight (`install_times` / `install_ends` of `/_sim/stats?appliances=1`), from which
bench/multi_rollout.py computes the installs in flight per rollout and per site."""

from __future__ import annotations

from orchestrator.simulator import SimulatorConfig
from orchestrator.simulator.fleet import Fleet

V1 = "9.0.1-20020"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(**config: object) -> tuple[Fleet, Clock]:
    clock = Clock()
    wall0 = 1_700_000_000.0
    f = Fleet(SimulatorConfig(appliances=4, sites=2, install_jitter=0.0, **config),
              clock=clock, wall_clock=lambda: wall0 + (clock.now - 1000.0))
    return f, clock


def test_each_install_has_its_in_flight_interval() -> None:
    f, clock = fleet(install_seconds=20.0, reboot_seconds=5.0, services_starting_seconds=2.0)
    a, b = f.appliances[0], f.appliances[1]
    assert f.install(a, V1, clock.now)[0] == 202
    clock.now += 3.0
    assert f.install(b, V1, clock.now)[0] == 202
    apps = f.stats()["appliances"]
    start_a, = apps[a.name]["install_times"]
    end_a, = apps[a.name]["install_ends"]
    # queued 0.1 s + install 20 s + reboot 5 s + services starting 2 s
    assert abs((end_a - start_a) - 27.1) < 1e-6
    assert abs(apps[b.name]["install_times"][0] - start_a - 3.0) < 1e-6
    assert apps[f.appliances[2].name]["install_ends"] == []

    # while both intervals overlap the simulator counts 2 in flight, and 0 after the later
    # one's end: the intervals agree with its own counters
    assert f.stats(include_appliances=False)["in_flight"] == 2
    clock.now = 1000.0 + 3.0 + 27.1 + 0.01
    stats = f.stats()
    assert stats["in_flight"] == 0
    assert stats["max_in_flight"] == 2
    assert stats["appliances"][b.name]["install_ends"][0] < f.epoch(clock.now)


def test_install_ends_cleared_by_reset() -> None:
    f, clock = fleet(install_seconds=1.0, reboot_seconds=0.0)
    app = f.appliances[0]
    f.install(app, V1, clock.now)
    f.reset(versions=True)
    assert f.stats()["appliances"][app.name]["install_ends"] == []
