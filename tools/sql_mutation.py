"""Mutation testing of the task store's SQL (`make mutation`, module `claim`).

mutmut mutates Python, not the SQL inside string literals, so this applies SQL-aware
mutations to the statements of `orchestrator/store/tasks.py` (the claim, the reclaim, lease
renewal and release, the guarded install send, the guarded transitions, held slots), one at
a time, in a temporary copy of the repository, and runs the store's integration tests
against each mutant on a real PostgreSQL. A mutant is killed when a test fails (or hangs
past the timeout, as a lost `SKIP LOCKED` would); it survives when every test passes.

Operators: a comparison made strict or loose (`<=` -> `<`, `<` -> `<=`, ...), `<>` -> `=`,
`x.y = ...` -> `x.y <> ...`, `AND` <-> `OR`, a `NOT` dropped, `IS NULL` <-> `IS NOT NULL`,
one state dropped from an `IN (...)` list, a row lock (`FOR UPDATE`, `SKIP LOCKED`,
`FOR SHARE`) dropped, an `ORDER BY` reversed, `least` <-> `greatest`, `+ 1` -> `+ 2`,
`now() +` -> `now() -`, a `LIMIT` dropped. SQL comments and free-text literals are never
mutated.

Usage: python tools/sql_mutation.py [--jobs 2] [--only NAME] [--list]
Env:   TEST_DATABASE_URL (a server to use; default: an embedded one started for the run),
       MUTATION_OUT (default reports/mutation): the report goes to <out>/claim.txt.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = "orchestrator/store/tasks.py"
TESTS = [
    "tests/integration/test_claim_and_leases.py",
    "tests/integration/test_task_fencing.py",
    "tests/integration/test_transition_batch.py",
    "tests/integration/test_overlap.py",
]
# the statements mutated: the claim and everything that guards a task's lease and state
# (listings such as list_tasks() only read, and are covered by the API's tests)
# (`_STARTABLE`: the claim's filter of the PENDING tasks that may start, in both its branches)
STATEMENTS = ("CLAIM", "_STARTABLE", "RECLAIM", "RENEW_LEASES", "release_leases()",
              "GUARD_SEND", "write_progress()", "TRANSITION_MANY", "DUE_HELD_SLOTS",
              "RELEASE_HELD")
SQL_WORDS = re.compile(r"\b(SELECT|UPDATE|INSERT|DELETE)\b")
# a mutant whose SQL PostgreSQL refuses is killed trivially; counted apart in the report
INVALID_SQL = re.compile(
    r"asyncpg\.exceptions\.(PostgresSyntaxError|Undefined\w+Error|DatatypeMismatchError|"
    r"AmbiguousColumnError|GroupingError|InvalidTextRepresentationError|"
    r"WrongObjectTypeError|FeatureNotSupportedError|InvalidColumnReferenceError)"
)
STATES = r"'(?:PENDING|DISPATCHING|INSTALLING|VERIFYING|SUCCEEDED|FAILED|SKIPPED|TIMED_OUT|" \
         r"CANCELLED|RUNNING|PAUSED|SCHEDULED|WAITING_WINDOW)'"

# (operator name, pattern, replacement): applied at each match, one mutant per match
OPERATORS: list[tuple[str, str, str]] = [
    ("<= to <", r"<=", "<"),
    (">= to >", r">=", ">"),
    ("< to <=", r"(?<![<>!-])<(?![=>])", "<="),
    ("> to >=", r"(?<![<>=-])>(?![=>])", ">="),
    ("<> to =", r"<>", "="),
    ("= to <>", r"(?<=[\w)]) = (?=[\w$'(])", " <> "),  # not an assignment: see _assignment
    ("AND to OR", r"\bAND\b", "OR"),
    ("OR to AND", r"\bOR\b", "AND"),
    ("NOT dropped", r"\bNOT (?!NULL)", ""),
    ("IS NULL to IS NOT NULL", r"\bIS NULL\b", "IS NOT NULL"),
    ("IS NOT NULL to IS NULL", r"\bIS NOT NULL\b", "IS NULL"),
    ("SKIP LOCKED dropped", r" SKIP LOCKED", ""),
    ("row lock dropped", r"\bFOR (?:UPDATE|SHARE)(?: OF \w+)?(?: SKIP LOCKED)?", ""),
    ("ORDER BY reversed", r"\bORDER BY ([\w.]+)(?! DESC)", r"ORDER BY \1 DESC"),
    ("least to greatest", r"\bleast\(", "greatest("),
    ("greatest to least", r"\bgreatest\(", "least("),
    ("+ 1 to + 2", r"\+ 1\b", "+ 2"),
    ("now() + to now() -", r"now\(\) \+", "now() -"),
    ("LIMIT dropped", r"\bLIMIT \$\d+", ""),
]


@dataclass(frozen=True)
class Mutant:
    number: int
    statement: str  # the constant or function holding the SQL
    line: int
    operator: str
    before: str  # the mutated line, before and after
    after: str
    source: str  # the whole mutated module


def _sql_spans(source: str) -> list[tuple[int, int, str]]:
    """(start, end, owner) character spans of the module's SQL string literals."""
    tree = ast.parse(source)
    starts = [0]
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(lineno: int, col: int) -> int:
        # ast columns are UTF-8 byte offsets: the SQL here is ASCII, lines may not be
        line = source.splitlines(keepends=True)[lineno - 1]
        return starts[lineno - 1] + len(line.encode()[:col].decode(errors="ignore"))

    spans: list[tuple[int, int, str]] = []
    owners: list[tuple[ast.AST, str]] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            owners.append((node, node.targets[0].id))
        elif isinstance(node, (ast.AsyncFunctionDef, ast.FunctionDef)):
            owners.append((node, node.name + "()"))
    for owner_node, owner in owners:
        for node in ast.walk(owner_node):
            if isinstance(node, ast.JoinedStr) or (
                isinstance(node, ast.Constant) and isinstance(node.value, str)
            ):
                text = ast.get_source_segment(source, node) or ""
                if len(text) > 40 and SQL_WORDS.search(text):
                    assert node.end_lineno is not None and node.end_col_offset is not None
                    spans.append((offset(node.lineno, node.col_offset),
                                  offset(node.end_lineno, node.end_col_offset), owner))
    # an f-string's parts are walked too: keep the outermost spans only
    spans.sort()
    outer: list[tuple[int, int, str]] = []
    for span in spans:
        if outer and span[0] < outer[-1][1]:
            continue
        outer.append(span)
    return outer


def _protected(text: str) -> list[tuple[int, int]]:
    """Parts of a SQL literal never mutated: comments, free-text strings, f-string holes."""
    spans = [m.span() for m in re.finditer(r"--[^\n]*", text)]
    spans += [m.span() for m in re.finditer(r"'[^'\n]*'", text)
              if not re.fullmatch(STATES, m.group())]
    spans += [m.span() for m in re.finditer(r"\{[^{}\n]*\}", text)]
    return spans


def _assignment(text: str, at: int) -> bool:
    """Whether the `=` at `at` assigns a column (SET a = ..., b = ...), not compares."""
    line_start = text.rfind("\n", 0, at) + 1
    return re.search(r"(^\s*|\bSET\s+|,\s*)\w+$", text[line_start:at]) is not None


def mutants(source: str) -> list[Mutant]:
    found: list[Mutant] = []

    def add(owner: str, at: int, end: int, replacement: str, operator: str) -> None:
        mutated = source[:at] + replacement + source[end:]
        line = source.count("\n", 0, at) + 1
        before = source.splitlines()[line - 1].strip()
        after = mutated.splitlines()[line - 1].strip()
        found.append(Mutant(len(found) + 1, owner, line, operator, before, after, mutated))

    for start, end, owner in _sql_spans(source):
        if owner not in STATEMENTS:
            continue
        text = source[start:end]
        protected = _protected(text)

        def free(a: int, b: int, protected: list[tuple[int, int]] = protected) -> bool:
            return not any(a < pe and ps < b for ps, pe in protected)

        for operator, pattern, replacement in OPERATORS:
            for m in re.finditer(pattern, text):
                if free(*m.span()) and not (operator == "= to <>"
                                            and _assignment(text, m.start())):
                    add(owner, start + m.start(), start + m.end(), m.expand(replacement),
                        operator)
        # one state dropped from an IN list of states
        for m in re.finditer(rf"IN \(({STATES}(?:,\s*{STATES})+)\)", text):
            items = [i.strip() for i in m.group(1).split(",")]
            for drop in items:
                rest = ", ".join(i for i in items if i != drop)
                add(owner, start + m.start(1), start + m.end(1), rest,
                    f"{drop} dropped from IN (...)")
    return found


def _copy_repo(into: Path) -> None:
    ignore = shutil.ignore_patterns(".venv", ".git", "reports", "__pycache__", ".hypothesis",
                                    ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                    ".mutmut-cache", "node_modules")
    shutil.copytree(ROOT, into, ignore=ignore, dirs_exist_ok=True)


async def _run(mutant: Mutant, copy: Path, db_url: str, budget: float) -> tuple[str, str]:
    (copy / TARGET).write_text(mutant.source)
    env = dict(os.environ, PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1",
               TEST_DATABASE_URL=db_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
        "-p", "no:cov", "-o", "timeout=60", *TESTS,
        cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), budget)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return "killed (hung)", ""
    text = out.decode(errors="replace")
    if proc.returncode == 0:
        return "survived", text
    if "Timeout" in text and "+++++++ Timeout" in text:
        return "killed (hung)", text
    if INVALID_SQL.search(text):
        return "killed (invalid SQL)", text
    if proc.returncode == 1:
        return "killed", text
    return f"error (pytest exit {proc.returncode})", text


async def _main(args: argparse.Namespace) -> int:
    source = (ROOT / TARGET).read_text()
    todo = [m for m in mutants(source) if not args.only or m.statement == args.only]
    if args.list:
        for m in todo:
            print(f"{m.number:4d} {m.statement}:{m.line} {m.operator}: {m.after}")
        print(f"{len(todo)} mutants")
        return 0
    out_dir = Path(os.environ.get("MUTATION_OUT", ROOT / "reports" / "mutation"))
    if not out_dir.is_absolute():
        out_dir = ROOT / out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="orchestrator-sql-mutation-"))
    server = None
    try:
        db_url = os.environ.get("TEST_DATABASE_URL")
        if not db_url:
            sys.path.insert(0, str(ROOT))
            from orchestrator.store.embedded import EmbeddedPostgres

            server = EmbeddedPostgres(work / "pg", announce=lambda _m: None)
            db_url = server.start()
        copies = []
        for i in range(args.jobs):
            copies.append(work / f"copy{i}")
            _copy_repo(copies[-1])
        # the unmutated tests must pass first, or every mutant would look killed
        baseline, text = await _run(Mutant(0, "", 0, "none", "", "", source), copies[0],
                                    db_url, args.timeout)
        if baseline != "survived":
            print(text[-3000:])
            print(f"the tests fail without any mutation ({baseline}): fix them first")
            return 2
        results: dict[int, str] = {}
        queue: asyncio.Queue[Mutant] = asyncio.Queue()
        for m in todo:
            queue.put_nowait(m)
        started = time.monotonic()

        async def worker(copy: Path) -> None:
            while not queue.empty():
                m = queue.get_nowait()
                results[m.number], _ = await _run(m, copy, db_url, args.timeout)
                done = len(results)
                print(f"[{done}/{len(todo)}] #{m.number} {m.statement}:{m.line} "
                      f"{m.operator}: {results[m.number]}", flush=True)

        await asyncio.gather(*(worker(c) for c in copies))
        seconds = int(time.monotonic() - started)
    finally:
        if server is not None:
            server.release()
        shutil.rmtree(work, ignore_errors=True)

    report = _report(todo, results, seconds, args.jobs)
    (out_dir / "claim.txt").write_text(report)
    print(report.splitlines()[0])
    return 0


def _report(todo: list[Mutant], results: dict[int, str], seconds: int, jobs: int) -> str:
    total = len(todo)
    killed = sum(1 for r in results.values() if r.startswith("killed"))
    invalid = sum(1 for r in results.values() if r == "killed (invalid SQL)")
    valid = total - invalid
    lines = [
        f"claim (orchestrator/store/tasks.py SQL): {killed} of {total} mutants killed "
        f"({100.0 * killed / total:.1f}%); of the {valid} that PostgreSQL accepts, "
        f"{killed - invalid} killed ({100.0 * (killed - invalid) / max(valid, 1):.1f}%); "
        f"{seconds} s with {jobs} jobs",
        "",
        "per statement (killed / mutants):",
    ]
    for statement in dict.fromkeys(m.statement for m in todo):
        mine = [m for m in todo if m.statement == statement]
        k = sum(1 for m in mine if results[m.number].startswith("killed"))
        lines.append(f"  {statement}: {k} / {len(mine)}")
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r] = counts.get(r, 0) + 1
    lines += ["", "by result: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""]
    for m in todo:
        if not results[m.number].startswith("killed"):
            lines += [f"--- mutant {m.number} ({results[m.number]}): {m.statement}, line "
                      f"{m.line}, {m.operator}", f"- {m.before}", f"+ {m.after}", ""]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="mutants run side by side")
    parser.add_argument("--only", help="only the statement named (e.g. CLAIM, RECLAIM)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds a mutant's test run may take before it counts as hung")
    return asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
