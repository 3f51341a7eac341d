"""The simulator's pre-flight and health-gate faults on the fleet's state machine, with a
manual clock (no HTTP, no timing): what each fault shows before and after an install, how
they are drawn (a third random stream that leaves every older draw alone), the bad batch
of sites (`site_rates`) and the bad batch over time (`bad_batch_after`).

The same faults over real HTTP, as an appliance client sees them, are in
tests/integration/test_client_faults.py."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.simulator import (
    FAULTS,
    FaultParams,
    FaultProfile,
    FaultProfileError,
    SimulatorConfig,
    SimulatorConfigError,
)
from orchestrator.simulator.fleet import Appliance, Fleet

V0 = "9.0.0-10010"
V1 = "9.0.1-20020"
GATE_FAULTS = ("no_repository", "repo_unreachable", "version_not_offered", "services_down",
               "reconfigure_pending", "probe_flapping", "probe_failing")
OLDER = FAULTS[:19]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(*faults: str, params: dict[str, Any] | None = None,
          **config: Any) -> tuple[Fleet, Clock, Appliance]:
    clock = Clock()
    profile = FaultProfile(appliances={"sim-00001": faults}, params=params or {})
    options: dict[str, Any] = {
        "appliances": 4, "sites": 2, "install_jitter": 0.0, "install_seconds": 10.0,
        "queued_seconds": 0.0, "reboot_seconds": 5.0, "services_starting_seconds": 2.0,
        "retrieve_seconds": 1.0, "profile": profile,
    }
    f = Fleet(SimulatorConfig(**(options | config)), clock=clock)
    return f, clock, f.appliances[0]


def at(f: Fleet, clock: Clock, app: Appliance, when: float) -> None:
    clock.now = when
    f.advance(app, when)


def retrieved(f: Fleet, clock: Clock, app: Appliance) -> dict[str, Any]:
    """Run a retrieve-updates task to its end; the task as the appliance shows it."""
    task = f.retrieve_updates(app, clock.now)
    at(f, clock, app, clock.now + 1.5)
    return f.render_task(app, app.tasks[task["id"]], clock.now)


def running(f: Fleet, clock: Clock, app: Appliance) -> dict[str, bool]:
    return {s["id"]: s["is_running"] for s in f.services(app, clock.now)}


# --------------------------------------------------------------------------- names, draws
def test_the_gate_faults_are_appended_after_sparse_accept() -> None:
    assert FAULTS[19:] == GATE_FAULTS
    assert FAULTS[18] == "sparse_accept"
    assert not set(GATE_FAULTS) & set(FaultProfile.mixed().rates)  # mixed is unchanged


def test_rating_the_gate_faults_keeps_every_older_draw() -> None:
    names = [f"sim-{i:05d}" for i in range(1, 2001)]
    mixed = FaultProfile.mixed().with_changes(params={"max_faults_per_appliance": 9})
    rated = mixed.with_changes(rates={**mixed.rates, **dict.fromkeys(GATE_FAULTS, 0.1)})
    for seed in (0, 5, 7):
        without = mixed.assign(names, seed)
        with_gates = rated.assign(names, seed)
        assert [faults - set(GATE_FAULTS) for faults in with_gates] == without
        assert set(GATE_FAULTS) <= {f for faults in with_gates for f in faults}
    # and the draws of the gate faults do not depend on the older rates
    only_gates = FaultProfile(rates=dict.fromkeys(GATE_FAULTS, 0.1),
                              params={"max_faults_per_appliance": 9})
    assert [faults & set(GATE_FAULTS) for faults in rated.assign(names, 3)] == \
        only_gates.assign(names, 3)


def test_site_rates_add_faults_to_the_sites_named_only() -> None:
    names = [f"sim-{i:05d}" for i in range(1, 301)]
    sites = [f"site-{i % 3 + 1:02d}" for i in range(300)]
    base = FaultProfile(rates={"poll_503": 0.2})
    bad = base.with_changes(site_rates={"site-03": {"install_error": 0.5}})
    before, after = base.assign(names, 1, sites), bad.assign(names, 1, sites)
    for site, old, new in zip(sites, before, after, strict=True):
        assert old <= new  # a site rate never removes a fault drawn otherwise
        assert new - old <= {"install_error"}
        if site != "site-03":
            assert new == old
    hit = sum("install_error" in new for site, new in zip(sites, after, strict=True)
              if site == "site-03")
    assert 30 <= hit <= 70  # about half of site-03's 100 appliances
    assert bad.assign(names, 1) == before  # without sites, site_rates do nothing


def test_site_rates_from_a_profile_and_their_errors() -> None:
    profile = FaultProfile.from_dict(
        {"site_rates": {"site-02": {"install_error": 1}}, "rates": {"poll_503": 0}})
    assert profile.to_dict()["site_rates"] == {"site-02": {"install_error": 1.0}}
    f = Fleet(SimulatorConfig(appliances=4, sites=2, profile=profile))
    assert [sorted(a.faults) for a in f.appliances] == [[], ["install_error"], [],
                                                        ["install_error"]]
    with pytest.raises(FaultProfileError, match=r"site_rates\.site-02: unknown fault\(s\) 'nope'"):
        FaultProfile.from_dict({"site_rates": {"site-02": {"nope": 0.5}}})
    with pytest.raises(FaultProfileError, match=r"site_rates\.site-02\.hang: 2 is not between"):
        FaultProfile.from_dict({"site_rates": {"site-02": {"hang": 2}}})
    with pytest.raises(SimulatorConfigError, match=r"no site 'site-07' in this fleet"):
        SimulatorConfig(sites=2, profile=FaultProfile(site_rates={"site-07": {"hang": 0.1}}))


def test_gate_params_are_validated() -> None:
    params = FaultParams()
    assert (params.probe_flap_seconds, params.bad_batch_after, params.bad_batch_rate) == \
        (5.0, 0, 0.0)
    with pytest.raises(FaultProfileError, match=r"params\.probe_flap_seconds: -1\.0 is not"):
        FaultParams(probe_flap_seconds=-1.0)
    with pytest.raises(FaultProfileError, match=r"params\.bad_batch_rate: must be between"):
        FaultParams.from_dict({"bad_batch_rate": 1.5})
    with pytest.raises(FaultProfileError, match=r"params\.bad_batch_after: -2 is not >= 0"):
        FaultParams.from_dict({"bad_batch_after": -2})


# --------------------------------------------------------------------------- the faults
def test_no_repository() -> None:
    f, clock, app = fleet("no_repository")
    assert f.repository(app)["url"] == ""
    task = retrieved(f, clock, app)
    assert task["status"] == "ERROR"
    assert task["error"]["message"] == "No update repository is configured."
    assert "result" not in task
    status, accepted = f.install(app, V1, clock.now)
    assert status == 202
    at(f, clock, app, clock.now + 1.5)  # fails as quickly as a retrieve-updates
    done = f.render_task(app, app.tasks[accepted["id"]], clock.now)
    assert done["status"] == "ERROR"
    assert "No update repository is configured" in done["error"]["message"]
    assert app.version == V0 and f.stats()["outcomes"] == {"error": 1}
    # configuring a repository cures it
    app.repository = {"url": "https://mirror.example/vr/", "mounted_iso": False}
    assert retrieved(f, clock, app)["result"]["updates"][0]["version"] == V1


def test_repo_unreachable() -> None:
    f, clock, app = fleet("repo_unreachable")
    assert f.repository(app)["url"] == "https://updates.sim.invalid/vr/"
    task = retrieved(f, clock, app)
    assert task["status"] == "ERROR"
    assert task["error"]["message"].startswith(
        "Cannot reach the update repository https://updates.sim.invalid/vr/")
    _, accepted = f.install(app, V1, clock.now)
    at(f, clock, app, clock.now + 1.5)
    done = f.render_task(app, app.tasks[accepted["id"]], clock.now)
    assert done["status"] == "ERROR" and "Cannot reach the update repository" in \
        done["error"]["message"]
    assert app.version == V0


def test_version_not_offered_answers_as_for_an_unknown_version() -> None:
    f, clock, app = fleet("version_not_offered")
    task = retrieved(f, clock, app)
    assert task["status"] == "SUCCESS" and task["result"] == {"updates": []}
    assert f.install(app, V1, clock.now) == (404, None)
    healthy = f.appliances[1]
    assert f.install(healthy, "9.9.9-99999", clock.now) == (404, None)  # the same answer
    assert f.stats()["install_responses"] == {"404": 2}


def test_services_down_until_the_reboot_after_an_install() -> None:
    f, clock, app = fleet("services_down")
    assert running(f, clock, app) == {"hms": False, "drrest": True, "envoy": True}
    assert f.probe(app, clock.now)[0] == 503
    assert f.install(app, V1, clock.now)[0] == 202  # the install still runs
    at(f, clock, app, clock.now + 5.0)
    assert running(f, clock, app)["hms"] is False
    at(f, clock, app, clock.now + 5.0 + 5.0 + 2.0 + 0.1)  # after reboot and services start
    assert app.version == V1
    assert running(f, clock, app) == {"hms": True, "drrest": True, "envoy": True}
    # given again at run time, it takes effect at once
    f.set_faults(app.name, ["services_down"])
    assert running(f, clock, app)["hms"] is False


def test_reconfigure_pending_until_an_install_succeeded() -> None:
    f, clock, app = fleet("reconfigure_pending")
    assert f.reconfigure_required(app)
    assert not f.reconfigure_required(f.appliances[1])
    f.install(app, V1, clock.now)
    at(f, clock, app, clock.now + 17.1)
    assert app.version == V1 and not f.reconfigure_required(app)


def test_reconfigure_fraction_is_kept() -> None:
    f, clock, app = fleet(reconfigure_fraction=1.0)
    assert not f.reconfigure_required(app)
    f.install(app, V1, clock.now)
    at(f, clock, app, clock.now + 17.1)
    assert f.reconfigure_required(app)


def test_probe_flapping_fails_for_a_while_after_the_upgrade() -> None:
    f, clock, app = fleet("probe_flapping", params={"probe_flap_seconds": 4.0})
    assert f.probe(app, clock.now) == (200, {"status": "ok", "name": app.name, "version": V0})
    f.install(app, V1, clock.now)
    up = clock.now + 10.0 + 5.0 + 2.0  # install, reboot, services starting
    at(f, clock, app, up + 0.01)
    status, body = f.probe(app, clock.now)
    assert (status, body["status"], body["version"]) == (503, "unavailable", V1)
    assert "ok" not in str(body)
    at(f, clock, app, up + 3.9)
    assert f.probe(app, clock.now)[0] == 503
    at(f, clock, app, up + 4.0)
    assert f.probe(app, clock.now) == (200, {"status": "ok", "name": app.name, "version": V1})
    stats = f.stats()
    assert stats["probe_requests"] == 4
    assert stats["probe_responses"] == {"200": 2, "503": 2}
    assert stats["appliances"][app.name]["probe_requests"] == 4


def test_probe_failing_never_succeeds_and_starting_services_fail_it() -> None:
    f, clock, app = fleet("probe_failing")
    other = f.appliances[1]
    f.install(app, V1, clock.now)
    f.install(other, V1, clock.now)
    at(f, clock, other, clock.now + 16.0)  # services starting
    assert f.probe(other, clock.now)[1]["reason"] == "key services not running"
    for when in (0.0, 20.0, 3600.0):
        at(f, clock, app, 1000.0 + 17.0 + when)
        status, body = f.probe(app, clock.now)
        assert (status, body["reason"]) == (503, "health check failing")
    assert app.version == V1


def test_bad_batch_after_some_installs() -> None:
    f, clock, _ = fleet(appliances=40, sites=4,
                        params={"bad_batch_after": 10, "bad_batch_rate": 1.0})
    for app in f.appliances:
        f.install(app, V1, clock.now)
    outcomes = [app.install.outcome for app in f.appliances if app.install is not None]
    assert outcomes == ["success"] * 10 + ["error"] * 30
    assert f.stats()["bad_batch_errors"] == 30
    f, clock, _ = fleet(appliances=200, params={"bad_batch_after": 100, "bad_batch_rate": 0.5})
    for app in f.appliances:
        f.install(app, V1, clock.now)
    errors = [app.install is not None and app.install.outcome == "error"
              for app in f.appliances]
    assert not any(errors[:100])
    assert 25 <= sum(errors[100:]) <= 75


def test_fault_site_and_gate_faults_from_the_command_line() -> None:
    import argparse

    from orchestrator.cli.simulator import add_arguments, build_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = build_config(parser.parse_args([
        "--sites", "3", "--fault-site", "site-03:install_error=0.5",
        "--fault-appliance", "sim-00002=no_repository,probe_flapping",
        "--fault-param", "probe_flap_seconds=2", "--fault-param", "bad_batch_after=7",
    ]))
    profile = config.profile
    assert profile.site_rates == {"site-03": {"install_error": 0.5}}
    assert profile.appliances == {"sim-00002": ("no_repository", "probe_flapping")}
    assert (profile.params.probe_flap_seconds, profile.params.bad_batch_after) == (2.0, 7)
    for bad, message in (("site-03=0.5", "expected SITE:FAULT=RATE"),
                         ("site-03:hang=lots", "the rate is not a number")):
        with pytest.raises(FaultProfileError, match=message):
            build_config(parser.parse_args(["--fault-site", bad]))
    with pytest.raises(SimulatorConfigError, match="no site 'site-09'"):
        build_config(parser.parse_args(["--fault-site", "site-09:hang=0.1"]))
