"""The foundation commands as a user runs them: real processes, a real database."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, run_cli

HEADER = "name,base_url,site,tags,timezone,credentials_ref,tls_ca_file,tls_thumbprint\n"


def test_config_show_masks_secrets() -> None:
    env = cli_env("postgresql://orch:hunter2@db.example.net:5432/orch")
    result = run_cli("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "postgresql://orch:********@db.example.net:5432/orch" in result.stdout
    shown = json.loads(run_cli("config", "show", "--json", env=env).stdout)
    assert shown["log_format"] == "json"


def test_bad_setting_exits_2_with_one_line_naming_the_key() -> None:
    env = cli_env(None, ORCHESTRATOR_ENGINE_LEASE_SECONDS="-1")
    result = run_cli("config", "show", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "engine_lease_seconds" in lines[0] and "ORCHESTRATOR_ENGINE_LEASE_SECONDS" in lines[0]


def test_import_and_list(db_url: str, tmp_path: Path) -> None:
    env = cli_env(db_url)
    result = run_cli("appliances", "import", str(ROOT / "config/example-inventory.csv"), env=env)
    assert result.returncode == 0, result.stderr
    assert "imported 6 appliance(s)" in result.stdout and "6 new" in result.stdout
    listed = json.loads(run_cli("appliances", "list", "--site", "nyc", "--json", env=env).stdout)
    assert [a["name"] for a in listed] == ["vr-nyc-01", "srm-nyc-01"]
    table = run_cli("appliances", "list", "--tag", "lab", env=env).stdout
    assert "vr-lab-01" in table and "1 appliance(s)" in table
    again = run_cli("appliances", "import", str(ROOT / "config/example-inventory.csv"), env=env)
    assert "0 new, 6 updated" in again.stdout


async def test_bad_import_imports_nothing_and_lists_every_bad_row(
    db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text(
        HEADER
        + "a1,https://a1/x,ams,,,,,\n"
        + "a2,ftp://a2/x,ams,,,,,\n"
        + "a3,https://a3/x,ams,,Nowhere/Town,,,\n"
        + "a1,https://a1b/x,ams,,,,,\n"
    )
    result = run_cli("appliances", "import", str(path), env=cli_env(db_url))
    assert result.returncode == 1
    assert "nothing imported" in result.stderr
    assert "line 3: base_url" in result.stderr
    assert "line 4: timezone: 'Nowhere/Town'" in result.stderr
    assert "line 5: name: 'a1' duplicates line 2" in result.stderr
    conn = await asyncpg.connect(db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM appliances") == 0
    finally:
        await conn.close()


def test_two_migrate_processes_at_once(empty_db_url: str) -> None:
    env = cli_env(empty_db_url)
    procs = [
        LoggedPopen(
            [str(VENV_BIN / "orchestrator"), "migrate"], env=env, cwd=ROOT,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    lines = [line for out, _ in outputs for line in out.splitlines()]
    applied = [line for line in lines if line.startswith("applied")]
    files = sorted(p.stem for p in (ROOT / "migrations").glob("*.sql"))
    assert sorted(line.removeprefix("applied ") for line in applied) == files
    status = run_cli("migrate", "--status", env=env)
    assert status.returncode == 0
    assert status.stdout.count(" applied ") == len(files)


def test_commands_refuse_an_unmigrated_external_database(empty_db_url: str) -> None:
    result = run_cli("appliances", "list", env=cli_env(empty_db_url))
    assert result.returncode == 1
    assert "run `orchestrator migrate`" in result.stderr


def _embedded_running(data_dir: Path) -> bool:
    return (data_dir / "pgdata" / "postmaster.pid").exists()


def test_embedded_default_starts_reuses_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(None, ORCHESTRATOR_DATA_DIR=str(data_dir))
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert f"data in {data_dir / 'pgdata'}" in first.stderr
    assert not _embedded_running(data_dir), "the server must stop when the process exits"
    second = run_cli(
        "appliances", "import", str(ROOT / "config/example-inventory.csv"), env=env
    )
    assert second.returncode == 0, second.stderr
    assert "initialised" not in second.stderr
    listed = run_cli("appliances", "list", "--json", env=env)
    assert len(json.loads(listed.stdout)) == 6
    info = json.loads((data_dir / "embedded.json").read_text())
    assert oct((data_dir / "embedded.json").stat().st_mode & 0o777) == "0o600"
    assert info["password"] not in first.stdout + first.stderr + listed.stdout + listed.stderr
    assert not _embedded_running(data_dir)


@pytest.fixture
def ordinary_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("running as an ordinary user already: the embedded test above covers it")
    entry = pwd.getpwnam("nobody")
    # The interpreter may live under /root (pyenv): grant other users traverse (x) rights on
    # its ancestors, as the embedded server's root set-up does for its data directory.
    for parent in Path(os.path.realpath(sys.executable)).parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    probe = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import orchestrator"], user=entry.pw_uid,
        group=entry.pw_gid, extra_groups=[], capture_output=True, cwd="/", check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"this checkout is not readable by other users: {probe.stderr[-200:]!r}")
    yield entry


def test_embedded_default_as_an_ordinary_user(ordinary_user: pwd.struct_passwd) -> None:
    home = Path(tempfile.mkdtemp(prefix="orch-user-"))
    try:
        os.chown(home, ordinary_user.pw_uid, ordinary_user.pw_gid)
        env = cli_env(None, HOME=str(home))
        result = subprocess.run(
            [str(VENV_BIN / "orchestrator"), "migrate"], env=env, cwd="/",
            user=ordinary_user.pw_uid, group=ordinary_user.pw_gid, extra_groups=[],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert result.returncode == 0, result.stderr
        pgdata = home / ".local/share/orchestrator/pgdata"
        assert f"data in {pgdata}" in result.stderr
        assert pgdata.stat().st_uid == ordinary_user.pw_uid
    finally:
        shutil.rmtree(home, ignore_errors=True)
