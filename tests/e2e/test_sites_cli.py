"""`orchestrator sites ...` as a user runs it, and the overlap refusal of `rollout create`
and `rollout start` as the command line shows it: one line naming the value or the other
rollout, a non-zero exit, never a traceback. The real `orchestrator` command runs as a
subprocess; its output goes to files (no pipe is left unread)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.helpers import ROOT, VENV_BIN, cli_env

CSV = ("name,base_url,site\n"
       "vr-a-1,https://vr-a-1.example.net/api,site-a\n"
       "vr-a-2,https://vr-a-2.example.net/api,site-a\n"
       "vr-b-1,https://vr-b-1.example.net/api,site-b\n")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


class Cli:
    def __init__(self, db_url: str, tmp: Path) -> None:
        self.env = cli_env(db_url)
        self.tmp = tmp
        self.runs = 0

    def __call__(self, *args: str) -> Result:
        self.runs += 1
        out = self.tmp / f"run-{self.runs}.out"
        err = self.tmp / f"run-{self.runs}.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.run([str(VENV_BIN / "orchestrator"), *args], env=self.env,
                                  cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout,
                                  stderr=stderr, timeout=120, check=False)
        return Result(proc.returncode, out.read_text(), err.read_text())


def _one_line_error(result: Result, *needles: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("orchestrator: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_sites_list_set_and_clear(db_url: str, tmp_path: Path) -> None:
    cli = Cli(db_url, tmp_path)
    inventory = tmp_path / "fleet.csv"
    inventory.write_text(CSV)
    assert cli("appliances", "import", str(inventory)).returncode == 0

    listed = cli("sites", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(s["name"], s["max_in_flight"], s["in_flight"], s["appliances"])
            for s in json.loads(listed.stdout)] == [("site-a", None, 0, 2),
                                                    ("site-b", None, 0, 1)]

    done = cli("sites", "set-limit", "site-a", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("site 'site-a': limit 3 (was unlimited); "
                                   "0 install(s) in flight now")
    table = cli("sites", "list")
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.strip().splitlines()]
    assert rows[0] == ["SITE", "LIMIT", "IN", "FLIGHT", "HELD", "APPLIANCES"]
    assert rows[1:] == [["site-a", "3", "0", "0", "2"], ["site-b", "unlimited", "0", "0", "1"],
                        ["2", "site(s)"]]

    _one_line_error(cli("sites", "set-limit", "site-a", "0"), "'0'", "integer >= 1")
    _one_line_error(cli("sites", "set-limit", "site-a", "none"), "'none'", "--clear")
    _one_line_error(cli("sites", "set-limit", "site-a", "-2"), "'-2'")
    _one_line_error(cli("sites", "set-limit", "site-a"), "give the limit N")
    _one_line_error(cli("sites", "set-limit", "site-a", "4", "--clear"), "not both")
    _one_line_error(cli("sites", "set-limit", "nowhere", "2"), "unknown site 'nowhere'",
                    "site-a, site-b")

    cleared = cli("sites", "set-limit", "site-a", "--clear")
    assert cleared.returncode == 0, cleared.stderr
    assert "limit unlimited (was 3)" in cleared.stdout
    assert json.loads(cli("sites", "list", "--json").stdout)[0]["max_in_flight"] is None


def test_rollout_overlap_refused_on_the_command_line(db_url: str, tmp_path: Path) -> None:
    cli = Cli(db_url, tmp_path)
    inventory = tmp_path / "fleet.csv"
    inventory.write_text(CSV)
    assert cli("appliances", "import", str(inventory)).returncode == 0
    later = cli("rollout", "create", "--name", "later", "--version", "9.0.1-20020", "--json")
    assert later.returncode == 0, later.stderr
    later_id = json.loads(later.stdout)["id"]
    first = cli("rollout", "create", "--name", "first", "--version", "9.0.1-20020",
                "--site", "site-a", "--start", "--json")
    assert first.returncode == 0, first.stderr
    first_id = json.loads(first.stdout)["id"]

    _one_line_error(cli("rollout", "create", "--name", "second", "--version", "9.0.1-20020"),
                    "cannot create rollout 'second'", f"{first_id} 'first' (RUNNING)",
                    "vr-a-1, vr-a-2", "--after-overlapping")
    _one_line_error(cli("rollout", "start", str(later_id)),
                    f"cannot start rollout {later_id}", f"{first_id} 'first' (RUNNING)",
                    "--after-overlapping")

    queued = cli("rollout", "create", "--name", "second", "--version", "9.0.1-20020",
                 "--after-overlapping", "--start", "--json")
    assert queued.returncode == 0, queued.stderr
    shown = json.loads(queued.stdout)
    assert shown["state"] == "RUNNING" and shown["strategy"]["after_overlapping"] is True


def test_held_slots_listed_and_released_on_the_command_line(
    db_url: str, tmp_path: Path
) -> None:
    """A timed-out install that still holds its slot shows in `sites list` and `sites held`;
    `sites release` frees it, and names a bad appliance in one line."""
    cli = Cli(db_url, tmp_path)
    inventory = tmp_path / "fleet.csv"
    inventory.write_text(CSV)
    assert cli("appliances", "import", str(inventory)).returncode == 0
    created = cli("rollout", "create", "--name", "r", "--version", "9.0.1-20020",
                  "--site", "site-a", "--json")
    assert created.returncode == 0, created.stderr
    rid = json.loads(created.stdout)["id"]
    asyncio.run(_time_out_holding(db_url, rid, "vr-a-1"))

    listed = json.loads(cli("sites", "list", "--json").stdout)
    assert [(s["name"], s["in_flight"], s["held"]) for s in listed] == [
        ("site-a", 1, 1), ("site-b", 0, 0)]
    held = cli("sites", "held", "--json")
    assert held.returncode == 0, held.stderr
    assert [(h["rollout"], h["appliance"], h["site"]) for h in json.loads(held.stdout)] == [
        (rid, "vr-a-1", "site-a")]
    table = cli("sites", "held")
    assert table.stdout.strip().splitlines()[-1] == "1 held slot(s)"
    assert "vr-a-1" in table.stdout

    _one_line_error(cli("sites", "release", "vr-zz"), "no appliance named 'vr-zz'")
    _one_line_error(cli("sites", "release", "vr-a-2"), "'vr-a-2' holds no slot")
    released = cli("sites", "release", "vr-a-1")
    assert released.returncode == 0, released.stderr
    assert released.stdout.startswith("appliance 'vr-a-1': 1 held slot(s) released")
    assert json.loads(cli("sites", "held", "--json").stdout) == []
    assert json.loads(cli("sites", "list", "--json").stdout)[0]["in_flight"] == 0


async def _time_out_holding(db_url: str, rollout_id: int, appliance: str) -> None:
    """The state a timed-out install leaves: TIMED_OUT after the install was sent."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            """UPDATE tasks t SET state = 'TIMED_OUT', install_sent_at = now(),
                      installs_sent = 1, holds_slot = true, finished_at = now()
               FROM appliances a WHERE a.id = t.appliance_id AND a.name = $2
                 AND t.rollout_id = $1""", rollout_id, appliance)
    finally:
        await conn.close()
