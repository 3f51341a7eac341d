"""As root, the embedded PostgreSQL's data directory defaults to /var/lib/orchestrator
(issue 14, finding 13): the server's system user needs the traverse permission (o+x) on
every ancestor of the data directory, which the server adds; under /root that opened /root
to every local user. No root needed: the user id is given or patched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.settings import ROOT_DATA_DIR, Settings, default_data_dir, load_settings

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "orchestrator.toml"


def test_default_for_root_is_outside_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/root")
    assert default_data_dir(euid=0) == Path("/var/lib/orchestrator") == ROOT_DATA_DIR
    assert Path("/root") not in default_data_dir(euid=0).parents


def test_default_for_a_user_is_in_home(monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_data_dir(euid=1000) == tmp_path / ".local" / "share" / "orchestrator"


@pytest.mark.parametrize(("euid", "expected"), [
    (0, Path("/var/lib/orchestrator")),
    (1000, Path("~/.local/share/orchestrator")),
])
def test_settings_default_follows_the_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           euid: int, expected: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    assert Settings().data_dir == expected.expanduser()
    # the shipped settings file leaves the default alone
    assert load_settings(SHIPPED, environ={}).data_dir == expected.expanduser()


def test_an_explicit_data_dir_still_wins(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    chosen = tmp_path / "data"
    s = load_settings(SHIPPED, environ={"ORCHESTRATOR_DATA_DIR": str(chosen)})
    assert s.data_dir == chosen
