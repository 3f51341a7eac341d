"""Every SQL statement lives in `orchestrator/store/`: nothing above the store holds SQL
text or runs statements itself (it calls a named function of a store module).

The check walks every Python module of the package outside `orchestrator/store/`, parses
it, and flags
- string literals (of 20 characters or more) that read as an SQL statement: they start
  with WITH, SELECT, INSERT, UPDATE or DELETE (capitals, as this code base writes SQL) and
  later name FROM, INTO, SET or VALUES;
- calls of `.execute`, `.executemany`, `.fetch`, `.fetchrow` or `.fetchval` on anything.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"
STORE = PACKAGE / "store"

# SQL keywords are capitals in this code base; an English sentence ("select the rollout
# to update from the list") never matches, neither does a sentence that starts with a
# capital ("Update the rollout from ..."): the keywords must be whole upper-case words.
SQL = re.compile(r"^\s*(WITH|SELECT|INSERT|UPDATE|DELETE)\b.*\b(FROM|INTO|SET|VALUES)\b", re.S)
MIN_LENGTH = 20
DB_METHODS = frozenset({"execute", "executemany", "fetch", "fetchrow", "fetchval"})


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if STORE not in p.parents)


def _strings(node: ast.AST) -> list[tuple[int, str]]:
    """The string constants of a module, an f-string's literal parts joined (with a
    placeholder for each value) so that a statement built with f"..." is seen whole."""
    found: list[tuple[int, str]] = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str)
                           else "{}" for v in sub.values)
            found.append((sub.lineno, text))
        elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            found.append((sub.lineno, sub.value))
    return found


def sql_outside_store(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """`file:line: what` for every SQL statement text or database call in one module
    (`file` relative to `root`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    where = path.relative_to(root).as_posix()
    problems: list[str] = []
    for line, text in _strings(tree):
        if len(text) >= MIN_LENGTH and SQL.match(text):
            first = text.strip().splitlines()[0][:60]
            problems.append(f"{where}:{line}: SQL text {first!r}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in DB_METHODS):
            problems.append(f"{where}:{node.lineno}: database call .{node.func.attr}()")
    return sorted(set(problems))


def test_no_sql_outside_the_store() -> None:
    problems = [p for path in _modules() for p in sql_outside_store(path)]
    assert not problems, "SQL outside orchestrator/store/:\n" + "\n".join(problems)


def test_the_walk_covers_the_package() -> None:
    modules = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {"engine/engine.py", "api/metrics.py", "cli/demo.py"} <= modules
    assert not any(m.startswith("store/") for m in modules)


@pytest.mark.parametrize("source", [
    'rows = await pool.fetch("SELECT id FROM rollouts WHERE state = $1", s)\n',
    'Q = """\n    UPDATE rollouts SET state = $2 WHERE id = $1"""\n',
    'Q = f"INSERT INTO tasks (a) VALUES ({x})"\n',
    'Q = "WITH a AS (SELECT 1) DELETE FROM tasks"\n',
    'n = await conn.fetchval(query)\n',
    'await db.executemany(query, rows)\n',
])
def test_flags_sql_and_database_calls(tmp_path: Path, source: str) -> None:
    module = tmp_path / "orchestrator" / "mod.py"
    module.parent.mkdir()
    module.write_text("async def f(pool, conn, db, s, x, query, rows):\n    "
                      + source.replace("\n", "\n    ") + "\n")
    problems = sql_outside_store(module, root=tmp_path)
    assert problems and problems[0].startswith("orchestrator/mod.py:")


@pytest.mark.parametrize("text", [
    "select the rollout to update from the list of rollouts",
    "Update the appliances from the inventory file, then set their tags",
    "With --after-overlapping the rollout waits; select from the sites",
    "DELETE is not allowed: the token may only read",
])
def test_english_is_not_sql(text: str) -> None:
    assert not SQL.match(text)
