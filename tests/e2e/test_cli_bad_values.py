"""Every command with a handful of bad values (issue 21, item 12): a missing or unreadable
file, an unknown id or name, negative numbers, empty strings, a database that is down.

Each command line ends with one line naming the problem (or, for what argparse refuses, the
subcommand's usage and one error line) and a non-zero exit code, never a traceback. Each
command line runs as a process of its own when its case runs (the cases spread over the
suite's workers), against one database per worker for the module.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli_env, cloned_database, free_port, run_cli

V = "9.0.1-20020"
WINDOW = ("windows", "create", "--name", "w", "--cron", "0 1 * * *", "--timezone", "UTC",
          "--site", "ams")
DB, DOWN, NONE = "db", "down", "none"  # the environment a command line runs in

ROOT_CANNOT_BE_REFUSED = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="file permissions do not stop root from reading a file",
)


def case(*argv: str, names: tuple[str, ...], env: str = DB,
         marks: pytest.MarkDecorator | tuple[()] = ()) -> Any:
    """One command line; `names`: what its error line must contain ({tmp}, {port} are
    replaced as in argv)."""
    return pytest.param(argv, env, names, id=" ".join(a or "''" for a in argv)[:90],
                        marks=marks)


CASES = [
    # ---------------------------------------------------------------- files
    case("appliances", "import", "{tmp}/missing.csv", names=("missing.csv", "does not exist")),
    case("appliances", "import", "{tmp}/missing.txt", names=("missing.txt", "does not exist")),
    case("appliances", "import", "{tmp}/folder.csv", names=("folder.csv", "directory")),
    case("appliances", "import", "{tmp}/latin1.csv", names=("latin1.csv", "not UTF-8")),
    case("appliances", "import", "{tmp}/locked.csv", names=("locked.csv", "cannot read"),
         marks=ROOT_CANNOT_BE_REFUSED),
    case("appliances", "import", "{tmp}/fleet.yaml", names=("fleet.yaml", "'yaml'")),
    case("appliances", "import", "", names=("''",)),
    case("appliances", "import", "{tmp}/fleet.csv", "--format", "xml", names=("'xml'",)),
    case("rollout", "plan", "--version", V, "--strategy", "{tmp}/missing.json",
         names=("missing.json", "No such file")),
    case("rollout", "plan", "--version", V, "--strategy", "{tmp}/fleet.csv",
         names=("fleet.csv", "not JSON")),
    case("rollout", "plan", "--version", V, "--strategy", "{tmp}/folder.csv",
         names=("folder.csv", "directory")),
    case("--config", "{tmp}/missing.toml", "config", "show", names=("missing.toml",)),
    case("--config", "{tmp}/fleet.csv", "config", "show", names=("fleet.csv", "TOML")),
    case("report", "1", "-o", "{tmp}/no-such-dir/r.json", names=("no-such-dir",)),
    case("simulate", "--profile", "{tmp}/missing.json", "--port", "0",
         names=("missing.json",), env=NONE),
    case("demo", "--profile", "{tmp}/missing.json", names=("missing.json",)),
    # ---------------------------------------------------------------- unknown ids and names
    *(case("rollout", action, "999999", names=("999999",))
      for action in ("show", "start", "pause", "resume", "cancel", "approve", "retry-failed",
                     "watch")),
    case("rollout", "show", "abc", names=("'abc'",)),
    case("rollout", "list", "--state", "bogus", names=("BOGUS",)),
    case("rollout", "plan", "--version", V, "--site", "nowhere", names=("nowhere",)),
    case("rollout", "create", "--name", "x", "--version", V, "--max-concurency", "5",
         names=("--max-concurency",)),
    case("windows", "show", "nope", names=("'nope'",)),
    case("windows", "delete", "nope", names=("'nope'",)),
    case(*WINDOW, "--duration", "1h", "--timezone", "Mars/Olympus", names=("Mars/Olympus",)),
    case("windows", "next", "--site", "ams", "--timezone", "Mars/Olympus",
         names=("Mars/Olympus",)),
    case("sites", "set-limit", "nowhere", "3", names=("'nowhere'",)),
    case("report", "999999", names=("999999",)),
    case("report", "1", "--format", "pdf", names=("'pdf'",)),
    case("prune", "--older-than", "5x", names=("'5x'",)),
    case("tokens", "revoke", "nope", names=("'nope'",)),
    case("tokens", "create", "--name", "x", "--role", "root", names=("'root'",)),
    case("simulate", "--appliances", "2", "--fault-appliance", "sim-00009=hang", "--port", "0",
         names=("sim-00009", "sim-00002"), env=NONE),
    case("simulate", "--fault", "nope=1", "--port", "0", names=("'nope'",), env=NONE),
    case("demo", "--canary-fault", "nope", names=("'nope'",)),
    # ---------------------------------------------------------------- negative numbers
    case("rollout", "show", "-1", names=("-1",)),
    case("rollout", "list", "--limit", "-1", names=("'-1'",)),
    case("rollout", "create", "--name", "x", "--version", V, "--max-concurrency", "-5",
         names=("max_concurrency", "-5")),
    case("rollout", "create", "--name", "x", "--version", V, "--waves", "-1",
         names=("waves", "-1")),
    case("rollout", "plan", "--version", V, "--per-site-concurrency", "-1",
         names=("per_site_concurrency", "-1")),
    case("rollout", "plan", "--version", V, "--soak-seconds", "-1",
         names=("soak_seconds", "-1")),
    case("rollout", "plan", "--version", V, "--min-executed", "-3",
         names=("min_executed", "-3")),
    case("rollout", "create", "--name", "x", "--version", V, "--schedule-at", "tomorrow",
         names=("'tomorrow'",)),
    case("rollout", "start", "{rid}", "--schedule-at", "yesterday", names=("'yesterday'",)),
    case("windows", "next", "--site", "ams", "--count", "-1", names=("--count -1",)),
    case("windows", "next", "--site", "ams", "--count", "0", names=("--count 0",)),
    case(*WINDOW, "--duration", "-1h", names=("window.duration", "'-1h'")),
    case(*WINDOW, "--duration", "0", names=("window.duration", "'0'")),
    case(*WINDOW, "--duration", "2h", "--cutoff", "-30m", names=("window.cutoff", "'-30m'")),
    case(*WINDOW[:-2], "--duration", "1h", "--cron", "61 * * * *", names=("window.cron", "61")),
    case("sites", "set-limit", "ams", "-1", names=("'-1'",)),
    case("sites", "set-limit", "ams", "0", names=("'0'",)),
    case("serve", "--port", "-1", names=("-1",)),
    case("simulate", "--appliances", "-1", "--port", "0", names=("-1",), env=NONE),
    case("simulate", "--port", "-5", names=("-5",), env=NONE),
    case("demo", "--appliances", "-1", names=("appliances", "-1")),
    case("demo", "--max-concurrency", "-4", names=("max_concurrency", "-4")),
    # ---------------------------------------------------------------- empty strings
    case("appliances", "list", "--site", "", names=("--site", "''")),
    case("rollout", "create", "--name", "", "--version", V, names=("name", "empty")),
    case("rollout", "create", "--name", "x", "--version", "", names=("target_version", "empty")),
    case("windows", "show", "", names=("''",)),
    case("windows", "create", "--name", "", "--cron", "0 1 * * *", "--duration", "1h",
         "--timezone", "UTC", "--site", "ams", names=("window.name", "''")),
    case(*WINDOW[:-1], "", "--duration", "1h", names=("window.sites", "''")),
    case(*WINDOW, "--duration", "1h", "--cron", "", names=("window.cron", "''")),
    case("sites", "set-limit", "", "3", names=("''",)),
    case("tokens", "create", "--name", "", "--role", "viewer", names=("name", "empty")),
    case("demo", "--waves", "", names=("waves", "''")),
    case("demo", "--database-name", "a-b", names=("'a-b'",)),
    # ---------------------------------------------------------------- a rare window
    case(*WINDOW, "--duration", "1h", "--cron", "0 0 * 2 MON#5",
         names=("window.cron", "'0 0 * 2 MON#5'", "never opens")),
    # ---------------------------------------------------------------- the database is down
    *(case(*argv, names=("127.0.0.1:{port}",), env=DOWN) for argv in (
        ("migrate",), ("migrate", "--status"), ("appliances", "list"),
        ("appliances", "import", "{tmp}/fleet.csv"), ("rollout", "list"),
        ("rollout", "show", "1"), ("rollout", "plan", "--version", V),
        ("rollout", "start", "1"), ("windows", "list"), ("windows", "next", "--site", "ams"),
        ("sites", "list"), ("report", "1"), ("tokens", "list"), ("run", "--until-idle"),
        ("serve", "--no-engine", "--port", "{port2}"), ("demo", "--appliances", "3"),
    )),
]


@dataclass(frozen=True)
class Setting:
    tmp: Path
    db_url: str
    down_port: int
    rid: int

    def fill(self, text: str) -> str:
        return text.format(tmp=self.tmp, port=self.down_port, port2=free_port(),
                           rid=self.rid)


@pytest.fixture(scope="module")
async def module_db(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """One database for every command line of this module."""
    async with cloned_database(pg_server_url, template_db, "orch_bad") as url:
        yield url


@pytest.fixture(scope="module")
def setting(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setting]:
    tmp = tmp_path_factory.mktemp("bad-values")
    fleet = tmp / "fleet.csv"
    fleet.write_text("name,base_url,site\n"
                     "vr-ams-01,https://vr-ams-01.example.com/api/rest/configure/v1,ams\n"
                     "vr-nyc-01,https://vr-nyc-01.example.com/api/rest/configure/v1,nyc\n")
    (tmp / "folder.csv").mkdir()
    (tmp / "latin1.csv").write_bytes("name,base_url,site\nk\xf6ln,x,y\n".encode("latin-1"))
    (tmp / "fleet.yaml").write_text("- name: vr-ams-01\n")
    locked = tmp / "locked.csv"
    locked.write_text(fleet.read_text())
    locked.chmod(0)
    env = cli_env(module_db)
    assert run_cli("appliances", "import", str(fleet), env=env).returncode == 0
    created = run_cli("rollout", "create", "--name", "draft", "--version", V, "--json", env=env)
    assert created.returncode == 0, created.stderr
    yield Setting(tmp, module_db, free_port(), int(created.stdout.split('"id": ')[1].split(",")[0]))
    locked.chmod(0o600)


Result = subprocess.CompletedProcess[str]


def _run(setting: Setting, argv: tuple[str, ...], env_kind: str) -> Result:
    env = {
        DB: cli_env(setting.db_url),
        DOWN: cli_env(f"postgresql://postgres@127.0.0.1:{setting.down_port}/postgres"),
        NONE: cli_env(),
    }[env_kind]
    return run_cli(*(setting.fill(a) for a in argv), env=env, timeout=60)


@pytest.mark.parametrize(("argv", "env_kind", "names"), CASES)
def test_a_bad_value_ends_in_one_line_naming_it(
    argv: tuple[str, ...], env_kind: str, names: tuple[str, ...], setting: Setting,
) -> None:
    result = _run(setting, argv, env_kind)
    stderr = result.stderr
    assert result.returncode != 0, (result.stdout, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "an error line on stderr"
    if lines[0].startswith("usage: "):
        # argparse: the usage of the subcommand (which may wrap), then one error line
        assert result.returncode == 2
        *usage, error = lines
        assert all(line.startswith(" ") for line in usage[1:]), stderr
        assert ": error: " in error and not any("error:" in line for line in usage), stderr
    else:
        assert len(lines) == 1, stderr
        error = lines[0]
        assert error.startswith(("orchestrator: ", "simulator: ")), error
    for name in names:
        assert setting.fill(name) in error, (name, error)
