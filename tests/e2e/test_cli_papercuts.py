"""Papercuts found trying the CLI as a new user (issue 21, items 4-11), each as the user
meets it: the `orchestrator` command run as a process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from orchestrator.store import windows as window_store
from tests.helpers import ROOT, VENV_BIN, cli_env, drop_database, run_cli

VERSION = "9.0.1-20020"


def write_fleet(path: Path, count: int = 6) -> Path:
    lines = ["name,base_url,site"]
    for i in range(count):
        site = "ams" if i % 2 == 0 else "nyc"
        lines.append(f"vr-{i:04d},https://vr-{i:04d}.example.com/api/rest/configure/v1,{site}")
    path.write_text("\n".join(lines) + "\n")
    return path


def ok(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = run_cli(*args, env=env)
    assert result.returncode == 0, (args, result.stderr)
    return result


def created_id(*args: str, env: dict[str, str]) -> int:
    return int(json.loads(ok("rollout", "create", *args, "--json", env=env).stdout)["id"])


def wave_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("wave ")]


async def sql(db_url: str, statement: str, *params: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(statement, *params))
    finally:
        await conn.close()


# ------------------------------------------------------------------ item 4
async def test_wave_lines_approval_gate_draft_and_cancel(db_url: str, tmp_path: Path) -> None:
    env = cli_env(db_url)
    ok("appliances", "import", str(write_fleet(tmp_path / "fleet.csv")), env=env)
    rid = created_id("--name", "gated", "--version", VERSION, "--waves", "1,100%",
                     "--approval", "after-canary", env=env)

    draft = ok("rollout", "show", str(rid), env=env).stdout
    assert "wave None" not in draft
    assert draft.splitlines()[0].endswith("on 6 appliance(s); not started")

    ok("rollout", "start", str(rid), env=env)
    running = ok("rollout", "show", str(rid), env=env).stdout
    assert wave_lines(running)[0] == (
        "wave 0: RUNNING           0/1 done; approval needed after this wave")
    assert "needs approval" not in running

    cancelled = ok("rollout", "cancel", str(rid), env=env)
    assert "cancelled" in cancelled.stdout
    shown = ok("rollout", "show", str(rid), env=env).stdout
    assert [line.split()[2] for line in wave_lines(shown)] == ["CANCELLED", "CANCELLED"]
    report = json.loads(ok("report", str(rid), env=env).stdout)
    assert [w["state"] for w in report["waves"]] == ["CANCELLED", "CANCELLED"]
    rows = await sql(db_url, "SELECT state, finished_at FROM rollout_waves WHERE rollout_id = $1",
                     rid)
    assert {r["state"] for r in rows} == {"CANCELLED"}
    assert all(r["finished_at"] is not None for r in rows)


async def test_wave_progress_counts_failures_as_failures(db_url: str, tmp_path: Path) -> None:
    env = cli_env(db_url)
    ok("appliances", "import", str(write_fleet(tmp_path / "fleet.csv", 6)), env=env)
    rid = created_id("--name", "with failures", "--version", VERSION, "--waves", "100%",
                     env=env)
    # what the engine leaves behind: 4 succeeded, 2 failed, the rollout ended
    await sql(db_url, """UPDATE tasks SET finished_at = now(),
                             state = CASE WHEN position < 4 THEN 'SUCCEEDED' ELSE 'FAILED' END
                         WHERE rollout_id = $1""", rid)
    await sql(db_url, """UPDATE rollout_waves SET state = 'SUCCEEDED', started_at = now(),
                             finished_at = now() WHERE rollout_id = $1""", rid)
    await sql(db_url, """UPDATE rollouts SET state = 'FAILED', current_wave = 0,
                             started_at = now(), finished_at = now() WHERE id = $1""", rid)
    shown = ok("rollout", "show", str(rid), env=env).stdout
    assert wave_lines(shown) == ["wave 0: SUCCEEDED         6/6 done (4 succeeded, 2 failed)"]
    watched = run_cli("rollout", "watch", str(rid), env=env)
    assert watched.returncode == 1  # not SUCCEEDED
    bar = next(line for line in watched.stdout.splitlines() if line.startswith("wave 0 "))
    assert "6/6 done (4 succeeded, 2 failed)" in bar
    assert "6/6 succeeded" not in watched.stdout


# ------------------------------------------------------------------ item 4 and 5: the demo
def test_demo_bars_name_failures_and_carry_no_log_lines(pg_server_url: str,
                                                        tmp_path: Path) -> None:
    """stdout and stderr are files (not terminals): before, a JSON log line came between
    the bars and the summary; now only --verbose logs (besides errors)."""
    names = [f"demo_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    env = cli_env(pg_server_url, ORCHESTRATOR_LOG_LEVEL="info")

    def demo(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("demo", "--appliances", "4", "--sites", "2", "--profile", "none",
                       "--waves", "1,100%", "--install-seconds", "0.2", "--reboot-seconds",
                       "0.1", "--canary-fault", "install_error", "--min-executed", "1",
                       "--database-name", name, "--report-dir", str(tmp_path / name), *extra,
                       env=env)

    try:
        with ThreadPoolExecutor(2) as pool:  # two demos at once, each in its own database
            quiet_run = pool.submit(demo, names[0])
            verbose_run = pool.submit(demo, names[1], "--verbose")
            quiet, verbose = quiet_run.result(), verbose_run.result()
    finally:
        for name in names:
            asyncio.run(drop_database(pg_server_url, name))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert not [line for line in lines if line.lstrip().startswith("{")], lines
    canary = next(line for line in quiet.stderr.splitlines() if line.startswith("canary"))
    assert "1/1 done (1 failed)" in canary
    assert "rollout 1: FAILED" in quiet.stdout
    logged = [json.loads(line) for line in verbose.stderr.splitlines() if line.startswith("{")]
    assert {"engine_started", "engine_stopped"} <= {entry["event"] for entry in logged}


# ------------------------------------------------------------------ item 6
def run_into_closed_pipe(args: Sequence[str], env: dict[str, str],
                         stderr_file: Path) -> int:
    """Run with stdout a pipe whose reader has gone (as `| head -1` leaves it)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        with stderr_file.open("w") as err:
            proc = subprocess.run([str(VENV_BIN / "orchestrator"), *args], env=env, cwd=ROOT,
                                  stdout=write_end, stderr=err, timeout=60, check=False)
    finally:
        os.close(write_end)
    return proc.returncode


def test_a_closed_pipe_ends_quietly(db_url: str, tmp_path: Path) -> None:
    env = cli_env(db_url)
    ok("appliances", "import", str(write_fleet(tmp_path / "fleet.csv", 500)), env=env)
    rid = created_id("--name", "piped", "--version", VERSION, env=env)
    for args in (["appliances", "list"], ["appliances", "list", "--json"],
                 ["config", "show"], ["rollout", "show", str(rid)], ["report", str(rid)],
                 ["--help"]):
        err = tmp_path / "stderr.txt"
        code = run_into_closed_pipe(args, env, err)
        assert code in (0, 141), (args, code, err.read_text())
        assert err.read_text() == "", args


# ------------------------------------------------------------------ item 7
def test_a_mistyped_flag_shows_the_subcommands_usage(db_url: str) -> None:
    result = run_cli("rollout", "create", "--name", "x", "--version", VERSION,
                     "--max-concurency", "5", env=cli_env(db_url))
    assert result.returncode == 2
    assert result.stderr.startswith("usage: orchestrator rollout create ")
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("orchestrator rollout create: error: unrecognized arguments: "
                           "--max-concurency 5")
    assert "did you mean --max-concurrency?" in last


# ------------------------------------------------------------------ item 8
def test_import_names_a_missing_file_and_lists_every_bad_row(db_url: str,
                                                             tmp_path: Path) -> None:
    env = cli_env(db_url)
    for name in ("missing.csv", "fleet.txt"):
        result = run_cli("appliances", "import", str(tmp_path / name), env=env)
        assert result.returncode == 1
        assert result.stderr == (f"orchestrator: {tmp_path / name}: the file does not exist; "
                                 "nothing imported\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,base_url,site\n"
                   "a,ftp://a.example,ams\n"              # line 2: not http(s)
                   "a,https://a.example/api,ams\n"        # line 3: duplicates line 2
                   "b,https://b.example/api,ams\n"
                   "b,https://b2.example/api,nyc\n")      # line 5: duplicates line 4
    result = run_cli("appliances", "import", str(bad), env=env)
    assert result.returncode == 1
    assert "3 problem(s), nothing imported" in result.stderr
    assert "line 2: base_url: 'ftp://a.example' is not an http(s) URL" in result.stderr
    assert "line 3: name: 'a' duplicates line 2" in result.stderr
    assert "line 5: name: 'b' duplicates line 4" in result.stderr


# ------------------------------------------------------------------ item 9
async def test_windows_count_negative_values_and_a_window_that_never_opens(
    db_url: str, pool: asyncpg.Pool
) -> None:
    env = cli_env(db_url)
    negative = run_cli("windows", "next", "--site", "ams", "--count", "-1", env=env)
    assert negative.returncode == 1 and "Traceback" not in negative.stderr
    assert negative.stderr == "orchestrator: windows next: --count -1 is not an integer >= 1\n"

    ok("windows", "create", "--name", "yearly", "--cron", "0 3 1 1 *", "--duration", "1h",
       "--timezone", "UTC", "--site", "ams", env=env)
    many = ok("windows", "next", "--site", "ams", "--count", "100000", env=env)
    listed = len(many.stdout.strip().splitlines())
    assert listed in (1, 2)  # 1 January, once or twice within 400 days
    assert many.stderr == (f"note: {listed} opening(s) in the next 400 days (the search "
                           "horizon), fewer than --count 100000\n")

    for flag, value in (("--duration", "-1h"), ("--cutoff", "-30m")):
        values = {"--duration": "2h", "--cutoff": "0", flag: value}
        result = run_cli("windows", "create", "--name", "neg", "--cron", "0 1 * * *",
                         "--duration", values["--duration"], "--cutoff", values["--cutoff"],
                         "--timezone", "UTC", "--site", "ams", env=env)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(
            f"orchestrator: invalid maintenance window: window.{flag[2:]}: '{value}' is not a "
            "duration")

    never = run_cli("windows", "create", "--name", "rare", "--cron", "0 0 * 2 MON#5",
                    "--duration", "1h", "--timezone", "UTC", "--site", "ams", env=env)
    assert never.returncode == 1
    assert never.stderr.startswith("orchestrator: invalid maintenance window: window.cron: "
                                   "'0 0 * 2 MON#5' never opens in the 400 days after ")
    # the API refuses it the same way (422 naming the field and the cron)
    from tests.integration.test_api import _api
    from tests.integration.test_api_support import api_client, tokens_by_role

    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        status, body = await api.call("POST", "/api/v1/maintenance-windows", json={
            "name": "rare", "cron": "0 0 * 2 MON#5", "duration": "1h", "timezone": "UTC",
            "sites": ["ams"]})
        assert status == 422, body
        assert body["errors"][0]["field"] == "body.cron"
        assert "'0 0 * 2 MON#5' never opens" in body["detail"]
        status, body = await api.call("PATCH", "/api/v1/maintenance-windows/yearly",
                                      "/api/v1/maintenance-windows/{window}",
                                      json={"cron": "0 0 * 2 MON#5"})
        assert status == 422, body
    assert [w.spec.cron for w in await window_store.list_windows(pool)] == ["0 3 1 1 *"]


# ------------------------------------------------------------------ item 10
async def test_rollout_start_takes_a_schedule(db_url: str, tmp_path: Path) -> None:
    env = cli_env(db_url)
    ok("appliances", "import", str(write_fleet(tmp_path / "fleet.csv")), env=env)
    rid = created_id("--name", "later", "--version", VERSION, env=env)
    started = ok("rollout", "start", str(rid), "--schedule-at", "2099-01-01T22:00:00+01:00",
                 env=env)
    assert started.stdout.strip() == (
        f"rollout {rid} is scheduled to start at 2099-01-01T21:00:00+00:00")
    shown = json.loads(ok("rollout", "show", str(rid), "--json", env=env).stdout)
    assert (shown["state"], shown["schedule_at"]) == ("SCHEDULED", "2099-01-01T21:00:00+00:00")
    again = run_cli("rollout", "start", str(rid), "--schedule-at", "2099-02-01T00:00:00+00:00",
                    env=env)
    assert again.returncode == 1
    assert again.stderr.startswith(f"orchestrator: cannot schedule rollout {rid}: it is "
                                   "SCHEDULED")
    # a time already past starts it now; a time without a zone is refused
    ok("rollout", "cancel", str(rid), env=env)
    now_id = created_id("--name", "now", "--version", VERSION, env=env)
    no_zone = run_cli("rollout", "start", str(now_id), "--schedule-at", "2099-01-01T22:00",
                      env=env)
    assert no_zone.returncode == 1 and "give a time zone" in no_zone.stderr
    ok("rollout", "start", str(now_id), "--schedule-at", "2000-01-01T00:00:00+00:00", env=env)
    rows = await sql(db_url, "SELECT state, schedule_at FROM rollouts WHERE id = $1", now_id)
    assert rows[0]["state"] == "RUNNING" and rows[0]["schedule_at"].year == 2000


# ------------------------------------------------------------------ item 11
@pytest.mark.parametrize("fault", ["sim-00009=hang", "vr-ams-01=slow"])
def test_simulate_refuses_faults_for_unknown_appliances(fault: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "orchestrator"), "simulate", "--appliances", "2", "--port", "0",
         "--fault-appliance", fault], env=cli_env(), cwd=ROOT, capture_output=True,
        text=True, timeout=30, check=False)
    assert result.returncode == 2
    name = fault.split("=")[0]
    assert result.stderr == (f"simulator: --fault-appliance: no appliance {name!r} in a fleet "
                             "of 2: the names are sim-00001 .. sim-00002\n")
