"""Every command in the ```sh blocks of README.md and docs/*.md works as documented.

The blocks are parsed (so a new doc or a new example is covered without touching this file):
backslash-continued lines are joined, trailing `# comments` are taken off, and each command
is run as written, `.venv/bin/orchestrator` (or `orchestrator`) as a real process, in
document order. Each file gets a fresh migrated database, its own temporary working
directory (reports land there) holding a copy of `config/` and the inventory files the docs
name, and `APPLIANCE_SIM_CREDENTIALS=admin:admin`; the files run side by side. A simulated
fleet runs for the whole test (started here, on a free port, instead of the documented
`orchestrator simulate`).

A command fails the test when it exits non-zero, prints a traceback, or (a command
documented to fail, marked `# fails: MESSAGE` in the doc) when it succeeds or does not say
MESSAGE. Commands that cannot run in a test are listed in SKIPPED with the reason; they are
still checked statically where that is cheap (orchestrator commands parse with the real
parser, `make` targets exist, the flags of benchmarks are in their --help).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.cli import simulator as simulator_cli
from orchestrator.cli.app import attach_option_values, build_parser
from orchestrator.simulator import SimulatorConfig, run_simulator
from tests.helpers import ROOT, VENV_BIN, cli_env, cloned_database

# README.md's thirty-odd commands run one after the other, each a new process: on a slow
# 2-core machine under the rest of the suite that took more than 240 s
pytestmark = pytest.mark.timeout(480)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCES = {"sh", "bash", "shell"}
COMMAND_TIMEOUT = 60.0
# the extraction must not silently break: at least this many commands really run
MIN_COMMANDS_RUN = 30

# Commands that cannot run here: (prefixes, why). A prefix is matched against the command
# with `.venv/bin/` and a `VAR=$(...)` wrapper taken off. Keep this list small: every entry
# must match some documented command (test_every_documented_command_is_accounted_for).
SKIPPED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("make ",), "creates .venv and runs the whole suite (this test is part of it) or the "
                 "demo; the targets are checked to exist with `make -n`"),
    (("TEST_DATABASE_URL=",), "`make test` against another server: the whole suite"),
    (("pytest ",), "runs part of the suite, which this test belongs to (docs/testing.md)"),
    (("orchestrator demo",), "a run of a minute or more with its own database; "
                             "tests/e2e/test_demo.py runs it (its options are parsed here)"),
    (("orchestrator serve",), "serves until SIGTERM; tests/e2e/test_api_serve.py runs it "
                              "(its options are parsed here)"),
    # (`orchestrator run --until-idle` ends by itself: it is run, not skipped)
    (("orchestrator run",), "the engine runs until SIGTERM (its options are parsed here); "
                            "`rollout watch` after it is followed for a while instead"),
    (("orchestrator simulate", "python -m orchestrator.simulator"),
     "serves until SIGTERM: this test runs the same simulator in-process and writes its "
     "inventory where the docs expect it (the options are parsed here)"),
    (("python bench/",), "benchmarks run for minutes; their flags are checked against --help"),
    (("curl ",), "HTTP against `orchestrator serve` or the simulator on a fixed port "
                 "(tests/e2e/test_api_serve.py, tests/e2e/test_simulate_cli.py)"),
    (("docker ",), "needs a Docker daemon; tests/e2e/test_compose.py checks the Compose file"),
    (("kill %1",), "stops the `serve &` above, which is skipped"),
    (("B=", "echo ", "sleep ", "for ", "[ ", "rm ", "done"),
     "shell plumbing of the curl walk-through in docs/simulator.md (its curl calls are "
     "skipped)"),
)

# Commands that follow something until it ends: run for a few seconds, then stopped. They
# must not have failed by then and must have printed something.
FOLLOWED: tuple[tuple[str, float, str], ...] = (
    ("orchestrator rollout watch", 3.0,
     "follows the rollout until it ends; no engine runs here (`run &` is skipped)"),
)

# Documented paths and addresses -> what stands for them here ({work}: the file's working
# directory, {sim}: the simulator's URL).
SUBSTITUTIONS: dict[str, str] = {
    "/tmp/fleet.csv": "{work}/fleet.csv",  # `orchestrator simulate --write-inventory`
    "http://127.0.0.1:9450": "{sim}",  # the documented simulator port
}
# Inventory files the docs name, written from the simulator into each working directory.
INVENTORIES = ("fleet.csv", "my-fleet.csv")  # my-fleet.csv: README, "your own inventory"


# ------------------------------------------------------------------ extraction
@dataclass(frozen=True)
class DocCommand:
    source: str  # path relative to the repository
    line: int
    text: str  # continuation lines joined, comment taken off
    comment: str = ""

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def expected_failure(self) -> str | None:
        """MESSAGE of a `# fails: MESSAGE` comment: the doc shows this command failing."""
        if self.comment.startswith("fails:"):
            return self.comment.removeprefix("fails:").strip()
        return None


def split_comment(text: str) -> tuple[str, str]:
    """(command, comment): a `#` outside quotes, at the start or after a blank, starts a
    comment (`--cron "0 0 * 2 MON#5"` keeps its `#`)."""
    quote = ""
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].strip(), text[i + 1:].strip()
    return text.strip(), ""


def extract_commands(markdown: str, source: str) -> list[DocCommand]:
    commands: list[DocCommand] = []
    fence: str | None = None  # the language of the open fenced block, "" for none given
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(markdown.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower() if fence is None else None
            pending = []
            continue
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line.strip())
        text, comment = split_comment(" ".join(p for p in pending if p))
        pending = []
        if text:
            commands.append(DocCommand(source, start, text, comment))
    return commands


def documented_commands() -> dict[str, list[DocCommand]]:
    out: dict[str, list[DocCommand]] = {}
    for path in DOCS:
        source = str(path.relative_to(ROOT))
        out[source] = extract_commands(path.read_text(encoding="utf-8"), source)
    return out


# ------------------------------------------------------------------ classification
ASSIGNED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=\$\((.*)\)$")


@dataclass(frozen=True)
class Step:
    kind: str  # run, follow, export, skip, unknown
    words: tuple[str, ...] = ()  # run/follow: the argv after `orchestrator`; export: NAME=VALUE
    capture: str | None = None  # run: the shell variable that receives stdout
    seconds: float = 0.0  # follow
    reason: str = ""  # skip: why; unknown: what is wrong


def normalise(text: str) -> tuple[str, str | None]:
    """(command, variable): a `VAR=$(...)` wrapper and a leading `.venv/bin/` taken off."""
    variable = None
    assigned = ASSIGNED.match(text)
    if assigned:
        variable, text = assigned.group(1), assigned.group(2).strip()
    return text.removeprefix(".venv/bin/"), variable


def skip_reason(command: str) -> str | None:
    if command.startswith("orchestrator run ") and "--until-idle" in command.split():
        return None
    for prefixes, reason in SKIPPED:
        if command.startswith(prefixes):
            return reason
    return None


def classify(cmd: DocCommand) -> Step:
    command, variable = normalise(cmd.text)
    reason = skip_reason(command)
    if reason:
        return Step("skip", reason=reason)
    try:
        words = shlex.split(command)
    except ValueError as exc:
        return Step("unknown", reason=f"not a shell command: {exc}")
    if words[:1] == ["export"] and variable is None:
        if len(words) == 2 and "=" in words[1]:
            return Step("export", tuple(words[1:]))
        return Step("unknown", reason="an export this test cannot apply")
    if words[:1] != ["orchestrator"]:
        return Step("unknown", reason="neither an orchestrator command nor in SKIPPED")
    if any(w in ("&", "|", "&&", "||", ";", ">", "<") or "$" in w for w in words):
        return Step("unknown", reason="shell syntax this test does not run: add it to "
                                      "SKIPPED with the reason, or make the doc plain")
    for prefix, seconds, _why in FOLLOWED:
        if command.startswith(prefix):
            return Step("follow", tuple(words[1:]), seconds=seconds)
    return Step("run", tuple(words[1:]), capture=variable)


def test_extraction_joins_lines_and_strips_comments() -> None:
    markdown = "\n".join([
        "Text `orchestrator not-a-command`.",
        "```sh",
        ".venv/bin/orchestrator windows create --name x --cron \"0 0 * 2 MON#5\" \\",
        "    --duration 4h   # a comment",
        "",
        "# a comment line",
        "orchestrator sites set-limit ams 0   # fails: is not an integer",
        "TOKEN=$(.venv/bin/orchestrator tokens create --name a --role admin)   # once",
        "```",
        "```json",
        "{\"orchestrator\": 1}",
        "```",
        "```",
        "orchestrator in a plain block",
        "```",
    ])
    cmds = extract_commands(markdown, "x.md")
    assert [(c.line, c.text, c.comment) for c in cmds] == [
        (3, '.venv/bin/orchestrator windows create --name x --cron "0 0 * 2 MON#5" '
            "--duration 4h", "a comment"),
        (7, "orchestrator sites set-limit ams 0", "fails: is not an integer"),
        (8, "TOKEN=$(.venv/bin/orchestrator tokens create --name a --role admin)", "once"),
    ]
    assert cmds[1].expected_failure == "is not an integer"
    steps = [classify(c) for c in cmds]
    assert steps[0].kind == "run" and steps[0].words[:2] == ("windows", "create")
    assert "0 0 * 2 MON#5" in steps[0].words
    assert steps[2] == Step("run", ("tokens", "create", "--name", "a", "--role", "admin"),
                            capture="TOKEN")


def test_every_documented_command_is_accounted_for() -> None:
    """Each command runs, is followed, sets a variable, or is skipped for a stated reason;
    every SKIPPED entry is still needed; enough commands run."""
    docs = documented_commands()
    unknown = [f"{c.where}: {c.text}\n    {step.reason}"
               for cmds in docs.values() for c in cmds
               if (step := classify(c)).kind == "unknown"]
    assert not unknown, "commands this test cannot place:\n" + "\n".join(unknown)
    used = {prefix for cmds in docs.values() for c in cmds
            for prefixes, _ in SKIPPED for prefix in prefixes
            if normalise(c.text)[0].startswith(prefix)}
    unused = [p for prefixes, _ in SKIPPED for p in prefixes if p not in used]
    assert not unused, f"SKIPPED entries no documented command needs any more: {unused}"
    runnable = sum(classify(c).kind in ("run", "follow") for cmds in docs.values() for c in cmds)
    assert runnable >= MIN_COMMANDS_RUN


# ------------------------------------------------------------------ static checks of skips
def _parse_error(parser: argparse.ArgumentParser, words: list[str]) -> str | None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(attach_option_values(parser, words))
    except SystemExit as exc:
        if exc.code:
            return stderr.getvalue().strip() or f"exit {exc.code}"
    return None


def _help_of(script: str) -> str:
    result = subprocess.run([str(VENV_BIN / "python"), script, "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{script} --help: {result.stderr[-2000:]}"
    return result.stdout


def test_skipped_commands_still_parse() -> None:
    """What cannot run is checked without running it: orchestrator commands (also inside
    `docker compose exec`) parse with the real parser, the simulator's with its own, `make`
    targets exist (`make -n`), and every flag given to a benchmark is in its --help."""
    problems: list[str] = []
    orchestrator = build_parser()
    simulator = argparse.ArgumentParser(prog="python -m orchestrator.simulator")
    simulator_cli.add_arguments(simulator)
    commands_of = next(a.choices for a in orchestrator._actions
                       if isinstance(a, argparse._SubParsersAction))
    helps: dict[str, str] = {}
    checked = 0
    for cmds in documented_commands().values():
        for cmd in cmds:
            if classify(cmd).kind != "skip":
                continue
            command, _ = normalise(cmd.text)
            words = shlex.split(command.removesuffix("&"))
            error: str | None = None
            if command.startswith("python -m orchestrator.simulator"):
                error = _parse_error(simulator, words[3:])
            elif command.startswith("python bench/"):
                script = words[1]
                if script not in helps:
                    helps[script] = _help_of(script)
                missing = [w.split("=", 1)[0] for w in words if w.startswith("--")
                           and not re.search(re.escape(w.split("=", 1)[0]) + r"\b",
                                             helps[script])]
                error = f"not in its --help: {missing}" if missing else None
            elif "make" in words and all("=" in w for w in words[:words.index("make")]):
                at = words.index("make")
                result = subprocess.run(["make", "-n", *words[at + 1:]], cwd=ROOT,
                                        capture_output=True, text=True, timeout=60,
                                        check=False)
                error = None if result.returncode == 0 else result.stderr.strip()
            else:
                starts = [i for i, w in enumerate(words)
                          if w.endswith("orchestrator") and i + 1 < len(words)
                          and words[i + 1] in commands_of]
                if not starts:
                    continue
                error = _parse_error(orchestrator, words[starts[-1] + 1:])
            checked += 1
            if error:
                problems.append(f"{cmd.where}: {cmd.text}\n    {error}")
    assert not problems, "documented commands that would not run:\n" + "\n".join(problems)
    assert checked >= 10


# ------------------------------------------------------------------ running the commands
@dataclass
class Outcome:
    cmd: DocCommand
    step: Step
    returncode: int | None = None  # None: still running when stopped (followed commands)
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0

    def problem(self) -> str | None:
        if self.step.kind not in ("run", "follow"):
            return None
        output = self.stdout + self.stderr
        expected = self.cmd.expected_failure
        if "Traceback (most recent call last)" in output:
            return "printed a traceback"
        if expected is not None:
            if self.returncode in (0, None):
                return f"documented to fail ({expected!r}), but exited {self.returncode}"
            if expected not in output:
                return f"failed, but without the documented message {expected!r}"
            return None
        if self.step.kind == "follow":
            if self.returncode not in (None, 0):
                return f"exit code {self.returncode} while it was followed"
            return None if output.strip() else "printed nothing while it was followed"
        return None if self.returncode == 0 else f"exit code {self.returncode}"


@dataclass
class DocRun:
    source: str
    work: Path
    env: dict[str, str]
    outcomes: list[Outcome] = field(default_factory=list)


def run_process(argv: list[str], *, env: dict[str, str], cwd: Path, timeout: float,
                logs: Path, started_by: float = 0.0) -> tuple[int | None, str, str, bool]:
    """(returncode, stdout, stderr, timed_out); output goes to files, read at the end.
    A process still running after `timeout` is stopped (returncode None). `started_by`: a
    followed command is first given up to this long to print its first line (a loaded
    machine may take seconds to start Python), and `timeout` counts from then: a Ctrl-C
    during start-up would only show an interpreter's KeyboardInterrupt."""
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + started_by
        while (time.monotonic() < deadline and proc.poll() is None
               and not out_path.stat().st_size and not err_path.stat().st_size):
            time.sleep(0.05)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it: output is flushed
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = None
    return code, out_path.read_text(errors="replace"), err_path.read_text(errors="replace"), \
        code is None


def run_doc(doc: DocRun, commands: list[DocCommand],
            setup: Callable[[DocRun], None] | None) -> DocRun:
    if setup:
        setup(doc)
    for n, cmd in enumerate(commands):
        step = classify(cmd)
        outcome = Outcome(cmd, step)
        doc.outcomes.append(outcome)
        if step.kind == "export":
            name, value = step.words[0].split("=", 1)
            doc.env[name] = value
            continue
        if step.kind not in ("run", "follow"):
            continue
        timeout = step.seconds if step.kind == "follow" else COMMAND_TIMEOUT
        began = time.monotonic()
        code, out, err, timed_out = run_process(
            [str(VENV_BIN / "orchestrator"), *step.words], env=doc.env, cwd=doc.work,
            timeout=timeout, logs=doc.work / "logs" / f"{n:03d}",
            started_by=60.0 if step.kind == "follow" else 0.0)
        outcome.seconds = time.monotonic() - began
        outcome.returncode, outcome.stdout, outcome.stderr = code, out, err
        if timed_out and step.kind == "run":
            outcome.returncode = -1
            outcome.stderr += f"\n(stopped after {timeout:.0f} s)"
        if step.capture and code == 0:
            doc.env[step.capture] = out.strip()
    return doc


def finished_rollout(doc: DocRun) -> None:
    """docs/reports.md reports on rollout 1: the simulated fleet, updated by an engine."""
    env = {**doc.env, "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "0.2",
           "ORCHESTRATOR_LOG_LEVEL": "warning"}
    for args in (("appliances", "import", "fleet.csv"),
                 ("rollout", "create", "--name", "docs", "--version", "9.0.1-20020",
                  "--waves", "1,100%", "--start"),
                 ("run", "--until-idle")):
        code, _out, err, _ = run_process(
            [str(VENV_BIN / "orchestrator"), *args], env=env, cwd=doc.work,
            timeout=COMMAND_TIMEOUT, logs=doc.work / "logs" / f"setup-{args[0]}")
        assert code == 0, f"setup of {doc.source}: {' '.join(args)}: {err[-2000:]}"


def substitute(text: str, values: dict[str, str]) -> str:
    for documented, here in SUBSTITUTIONS.items():
        for key, value in values.items():
            here = here.replace(key, value)
        text = text.replace(documented, here)
    return text


# Docs that need something to exist before their first command runs.
SETUP: dict[str, Callable[[DocRun], None]] = {
    "docs/reports.md": finished_rollout,
}


async def test_documented_commands_run(pg_server_url: str, template_db: str,
                                       tmp_path: Path) -> None:
    extracted = documented_commands()
    docs = {source: cmds for source, cmds in extracted.items()
            if any(classify(c).kind in ("run", "follow", "export") for c in cmds)}
    config = SimulatorConfig(appliances=6, sites=2, install_seconds=0.2, install_jitter=0,
                             reboot_seconds=0.2, services_starting_seconds=0.1,
                             queued_seconds=0.05)
    began = time.monotonic()
    async with run_simulator(config, host="127.0.0.1", port=0) as sim, \
            contextlib.AsyncExitStack() as stack:
        runs: list[DocRun] = []
        for source in docs:
            db_url = await stack.enter_async_context(
                cloned_database(pg_server_url, template_db, "orch_docs"))
            work = tmp_path / re.sub(r"\W+", "-", source)
            (work / "logs").mkdir(parents=True)
            shutil.copytree(ROOT / "config", work / "config")
            for name in INVENTORIES:
                sim.write_inventory(work / name)
            env = cli_env(db_url, APPLIANCE_SIM_CREDENTIALS="admin:admin",
                          ORCHESTRATOR_DATA_DIR=str(work / "data"))
            runs.append(DocRun(source, work, env))
        for run in runs:
            values = {"{work}": str(run.work), "{sim}": sim.url}
            docs[run.source] = [
                DocCommand(c.source, c.line, substitute(c.text, values), c.comment)
                for c in docs[run.source]
            ]
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(
            loop.run_in_executor(None, run_doc, run, docs[run.source], SETUP.get(run.source))
            for run in runs
        ))
    elapsed = time.monotonic() - began

    outcomes = [o for run in runs for o in run.outcomes]
    ran = [o for o in outcomes if o.step.kind in ("run", "follow")]
    total = sum(len(cmds) for cmds in extracted.values())
    print(f"\n{total} documented commands in {len(extracted)} files: {len(ran)} run "
          f"({sum(o.step.kind == 'follow' for o in outcomes)} of them followed, then stopped), "
          f"{sum(o.step.kind == 'export' for o in outcomes)} export(s) applied, "
          f"{total - len(ran) - sum(o.step.kind == 'export' for o in outcomes)} skipped; "
          f"{elapsed:.1f} s")
    for o in outcomes:
        status = o.step.kind if o.step.kind != "run" else f"exit {o.returncode}"
        print(f"  {o.cmd.where:<22} {status:<8} {o.seconds:5.1f}s  {o.cmd.text[:90]}")
    failures = [
        f"{o.cmd.where}: {o.cmd.text}\n    {problem}\n    stderr: {o.stderr.strip()[-1500:]}"
        for o in ran if (problem := o.problem())
    ]
    assert not failures, "documented commands that do not work as written:\n" + "\n".join(
        failures)
    assert len(ran) >= MIN_COMMANDS_RUN, f"only {len(ran)} documented commands ran"

