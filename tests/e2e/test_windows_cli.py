"""`orchestrator windows ...` as a user runs it."""

from __future__ import annotations

import json

from tests.helpers import cli_env, run_cli


def test_windows_crud_and_next(db_url: str) -> None:
    env = cli_env(db_url)
    created = run_cli("windows", "create", "--name", "nightly-ams", "--cron", "0 22 * * *",
                      "--duration", "4h", "--timezone", "Europe/Amsterdam", "--cutoff", "30m",
                      "--site", "ams", "--json", env=env)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["duration"] == 4 * 3600
    duplicate = run_cli("windows", "create", "--name", "nightly-ams", "--cron", "0 1 * * *",
                        "--duration", "1h", "--timezone", "UTC", "--site", "x", env=env)
    assert duplicate.returncode == 1 and "exists already" in duplicate.stderr
    bad = run_cli("windows", "create", "--name", "bad", "--cron", "0 25 * * *",
                  "--duration", "1h", "--timezone", "Mars/Olympus", "--site", "x", env=env)
    assert bad.returncode == 1
    assert "window.cron" in bad.stderr and "25" in bad.stderr
    listed = json.loads(run_cli("windows", "list", "--json", env=env).stdout)
    assert [w["name"] for w in listed] == ["nightly-ams"]
    upcoming = json.loads(run_cli("windows", "next", "--site", "ams", "--count", "3",
                                  "--json", env=env).stdout)
    assert len(upcoming) == 3
    assert all(u["window"] == "nightly-ams" for u in upcoming)
    text = run_cli("windows", "next", "--site", "ams", env=env).stdout
    assert "22:00 CE" in text and "UTC" in text  # local time and UTC
    other = run_cli("windows", "next", "--site", "nyc", env=env).stdout
    assert "not restricted" in other
    assert run_cli("windows", "delete", "nightly-ams", env=env).returncode == 0
    assert json.loads(run_cli("windows", "list", "--json", env=env).stdout) == []
