"""The pure parts of the CLI papercut fixes (issue 21): wave lines, argument handling,
inventory errors, windows that never open, simulator fault names, demo arguments."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import demo
from orchestrator.cli.app import Parser, attach_option_values, build_parser
from orchestrator.cli.common import UsageError
from orchestrator.cli.rollout import rollout_summary, wave_gate, wave_progress
from orchestrator.cli.simulator import check_fault_appliances
from orchestrator.domain.inventory import validate_records
from orchestrator.domain.selector import parse_selector
from orchestrator.domain.states import RolloutState
from orchestrator.domain.strategy import parse_strategy
from orchestrator.domain.windows import WindowError, check_opens, parse_window
from orchestrator.inventory import InventoryError, InventoryFileError, read_inventory
from orchestrator.simulator import FaultProfile, SimulatorConfig
from orchestrator.simulator.config import SimulatorConfigError
from orchestrator.store.rollouts import Rollout, RolloutCounts

NOW = datetime(2026, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------ item 4: wave lines
def test_wave_progress_names_failures_as_failures() -> None:
    assert wave_progress({"SUCCEEDED": 28, "FAILED": 2}, 30) == \
        "30/30 done (28 succeeded, 2 failed)"
    assert wave_progress({"SUCCEEDED": 3, "TIMED_OUT": 1, "SKIPPED": 1, "CANCELLED": 2,
                          "INSTALLING": 2, "PENDING": 1}, 10) == \
        "7/10 done (3 succeeded, 1 timed out, 1 skipped, 2 cancelled; 2 in flight)"
    assert wave_progress({"DISPATCHING": 1}, 1) == "0/1 done (1 in flight)"
    assert wave_progress({"PENDING": 5}, 5) == "0/5 done"


def _wave(state: str, *, approval: bool = True, by: str | None = None) -> dict[str, Any]:
    return {"number": 0, "planned_size": 1, "state": state, "requires_approval": approval,
            "approved_by": by, "started_at": None, "finished_at": None}


def test_wave_gate_says_the_approval_comes_after_the_wave() -> None:
    assert wave_gate(_wave("RUNNING")) == "approval needed after this wave"
    assert wave_gate(_wave("PENDING")) == "approval needed after this wave"
    assert wave_gate(_wave("AWAITING_APPROVAL")).startswith("waiting for approval")
    assert wave_gate(_wave("SUCCEEDED", by="ops")) == "approved by ops"
    assert wave_gate(_wave("CANCELLED")) == ""
    assert wave_gate(_wave("RUNNING", approval=False)) == ""


def _rollout(state: RolloutState, current_wave: int | None) -> Rollout:
    return Rollout(
        id=7, name="r", target_version="9.0.1", selector=parse_selector({}),
        strategy=parse_strategy({}), state=state, current_wave=current_wave,
        schedule_at=None, created_by="me", abort_reason=None, created_at=NOW,
        started_at=None, finished_at=None, targeted=1,
    )


def test_rollout_summary_of_a_draft_and_of_a_running_canary() -> None:
    counts = RolloutCounts({"PENDING": 1}, {0: {"PENDING": 1}}, {}, [_wave("PENDING")])
    text = rollout_summary(_rollout(RolloutState.DRAFT, None), counts)
    assert "None" not in text
    assert text.splitlines()[0].endswith("; not started")
    running = RolloutCounts({"INSTALLING": 1}, {0: {"INSTALLING": 1}}, {}, [_wave("RUNNING")])
    text = rollout_summary(_rollout(RolloutState.RUNNING, 0), running)
    assert "; wave 0" in text.splitlines()[0]
    assert "wave 0: RUNNING           0/1 done (1 in flight); approval needed after this " \
           "wave" in text
    assert "needs approval" not in text


# ------------------------------------------------------------------ item 7 and 9: arguments
def test_unknown_flag_shows_the_subcommands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["rollout", "create", "--name", "x", "--version", "1",
                           "--max-concurency", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: orchestrator rollout create ")
    assert err.rstrip().splitlines()[-1] == (
        "orchestrator rollout create: error: unrecognized arguments: --max-concurency 5 "
        "(did you mean --max-concurrency?)"
    )
    # subparsers are made of the same class
    assert isinstance(parser, Parser)


def test_values_that_look_like_options_reach_their_option() -> None:
    parser = build_parser()
    argv = ["windows", "create", "--name", "w", "--cron", "0 0 * * *", "--duration", "-1h",
            "--cutoff", "-5m", "--timezone", "UTC", "--site", "ams"]
    joined = attach_option_values(parser, argv)
    assert "--duration=-1h" in joined and "--cutoff=-5m" in joined
    args = parser.parse_args(joined)
    assert (args.duration, args.cutoff) == ("-1h", "-5m")
    # an option after an option that takes a value stays an option; flags take nothing
    assert attach_option_values(parser, ["windows", "list", "--json"]) == \
        ["windows", "list", "--json"]
    assert attach_option_values(parser, ["windows", "next", "--site", "--count", "3"]) == \
        ["windows", "next", "--site", "--count", "3"]
    # short options, the top level (--config) and `--` are handled too
    assert attach_option_values(parser, ["--config", "-c.toml", "report", "1", "-o", "-"]) == \
        ["--config=-c.toml", "report", "1", "-o-"]
    assert attach_option_values(parser, ["rollout", "show", "--", "-1"]) == \
        ["rollout", "show", "--", "-1"]
    assert parser.parse_args(attach_option_values(parser, ["windows", "next", "--site", "a",
                                                           "--count", "-1"])).count == -1


# ------------------------------------------------------------------ item 8: inventory
def test_every_bad_row_is_listed_with_duplicates_of_bad_rows() -> None:
    rows = [
        (2, {"name": "a", "base_url": "ftp://a", "site": "ams"}),
        (3, {"name": "a", "base_url": "https://a.example/api", "site": "ams"}),
        (4, {"name": "b", "base_url": "https://b.example/api", "site": "ams"}),
        (5, {"name": "b", "base_url": "not a url", "site": ""}),
    ]
    result = validate_records(rows)
    assert sorted((e.line, e.reason.split(":")[0]) for e in result.errors) == [
        (2, "base_url"), (3, "name"), (5, "base_url"), (5, "name"), (5, "site"),
    ]
    assert "duplicates line 2" in str(result.errors[1])
    assert "duplicates line 4" in str(result.errors[4])


def test_a_missing_file_is_named_before_its_format(tmp_path: Path) -> None:
    for name in ("missing.csv", "fleet.txt"):
        with pytest.raises(InventoryFileError) as info:
            read_inventory(tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}: the file does not exist; nothing imported"
        assert isinstance(info.value, InventoryError)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InventoryFileError, match="is a directory"):
        read_inventory(tmp_path / "dir.csv")
    (tmp_path / "fleet.txt").write_text("name,base_url,site\n")
    with pytest.raises(InventoryFileError, match="unknown format 'txt'"):
        read_inventory(tmp_path / "fleet.txt")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ item 9: windows
def test_a_window_that_never_opens_is_refused_when_created() -> None:
    data = {"name": "rare", "cron": "0 0 * 2 MON#5", "duration": "1h", "timezone": "UTC",
            "sites": ["ams"]}
    parse_window(data)  # reading a stored window back does not check it
    with pytest.raises(WindowError) as info:
        parse_window(data, now=NOW)
    assert info.value.field == "window.cron"
    assert "'0 0 * 2 MON#5' never opens in the 400 days after 2026-01-01" in str(info.value)
    # 2043-06-01: the next fifth Monday of February (2044-02-29) is within 400 days
    check_opens(parse_window(data), datetime(2043, 6, 1, tzinfo=UTC))
    parse_window({**data, "cron": "0 22 * * *"}, now=NOW)


# ------------------------------------------------------------------ item 11: simulator
def test_faults_for_appliances_the_fleet_lacks_are_refused() -> None:
    config = SimulatorConfig(appliances=2,
                             profile=FaultProfile(appliances={"sim-00009": ("hang",)}))
    with pytest.raises(SimulatorConfigError) as info:
        check_fault_appliances(config, {"sim-00009"})
    assert str(info.value) == ("--fault-appliance: no appliance 'sim-00009' in a fleet of 2: "
                               "the names are sim-00001 .. sim-00002")
    with pytest.raises(SimulatorConfigError, match="profile appliances: no appliance 'vr-1'"):
        check_fault_appliances(
            SimulatorConfig(appliances=2, profile=FaultProfile(appliances={"vr-1": ("hang",)})),
            set())
    ok = SimulatorConfig(appliances=2, profile=FaultProfile(appliances={"sim-00002": ("hang",)}))
    check_fault_appliances(ok, {"sim-00002"})


# ------------------------------------------------------------------ item 5 and 12: demo
def _demo_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_demo_arguments_are_checked_before_anything_starts() -> None:
    assert _demo_args().verbose is False and _demo_args("--verbose").verbose is True
    demo.check_arguments(_demo_args())
    with pytest.raises(SimulatorConfigError, match="appliances: must be >= 1, got -1"):
        demo.check_arguments(_demo_args("--appliances", "-1"))
    with pytest.raises(UsageError, match="--canary-fault 'nope': unknown fault"):
        demo.check_arguments(_demo_args("--canary-fault", "nope"))
    with pytest.raises(UsageError, match="--database-name 'a-b'"):
        demo.check_arguments(_demo_args("--database-name", "a-b"))
    with pytest.raises(UsageError, match=r"--profile /nonexistent/p\.json: cannot read"):
        demo.check_arguments(_demo_args("--profile", "/nonexistent/p.json"))
