"""The age of `orchestrator prune --older-than` and of the setting `prune_older_than`."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.cli.app import build_parser
from orchestrator.cli.prune import age
from orchestrator.settings import SettingsError, load_settings, parse_age


@pytest.mark.parametrize(("text", "expected"), [
    ("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), ("30m", timedelta(minutes=30)),
    ("2w", timedelta(weeks=2)), ("1d12h", timedelta(days=1, hours=12)),
    (" 90D ", timedelta(days=90)),
])
def test_ages(text: str, expected: timedelta) -> None:
    assert parse_age(text) == expected


@pytest.mark.parametrize(("text", "why"), [
    ("5x", "not a duration"), ("90", "not a duration"), ("-1d", "not a duration"),
    ("", "not a duration"), ("d", "not a duration"), ("10s", "not a duration"),
    ("0d", "out of range"), ("36501d", "out of range"),
])
def test_bad_ages_name_the_value(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_age(text)
    assert repr(text) in str(info.value)
    with pytest.raises(argparse.ArgumentTypeError):
        age(text)


def test_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["prune", "--older-than", "90d", "--dry-run", "--json"])
    assert (args.older_than, args.dry_run, args.json) == (timedelta(days=90), True, True)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["prune", "--older-than", "5x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--older-than" in err and "'5x'" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["prune"])  # the age is required: no prune of everything
    assert "--older-than" in capsys.readouterr().err


def test_the_setting(tmp_path: Path) -> None:
    assert load_settings(environ={}).prune_age is None  # off by default
    s = load_settings(environ={"ORCHESTRATOR_PRUNE_OLDER_THAN": "90D"})
    assert (s.prune_older_than, s.prune_age) == ("90d", timedelta(days=90))
    assert load_settings(environ={"ORCHESTRATOR_PRUNE_OLDER_THAN": ""}).prune_age is None
    with pytest.raises(SettingsError, match=r"prune_older_than .*'5x'"):
        load_settings(environ={"ORCHESTRATOR_PRUNE_OLDER_THAN": "5x"})
    with pytest.raises(SettingsError, match="prune_interval"):
        load_settings(environ={"ORCHESTRATOR_PRUNE_INTERVAL": "1"})
