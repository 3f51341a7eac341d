#!/bin/sh
# Mutation testing of the decision code (`make mutation`): mutmut 2.x mutates
# orchestrator/domain/{outcome,policy,planning}.py one change at a time and runs that
# module's fast unit tests against each mutant. It works in temporary copies of the
# repository (one per module, run side by side), so the checkout is never left mutated,
# even when interrupted. mutmut does not mutate SQL strings: module `claim` runs
# tools/sql_mutation.py instead, which mutates the SQL of orchestrator/store/tasks.py (the
# claim, leases, guarded writes) and runs the store's integration tests on a real
# PostgreSQL against each mutant. About 20-30 minutes on an idle 2-core machine, an hour on
# a busy one; not in CI.
#
# Usage: tools/mutation.sh [module ...]   (default: outcome policy planning claim)
# Env:   PYTHON (the project's interpreter, default .venv/bin/python),
#        MUTATION_OUT (where the reports go, default reports/mutation)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
case $PYTHON in /*) ;; *) PYTHON=$ROOT/$PYTHON ;; esac
OUT=${MUTATION_OUT:-$ROOT/reports/mutation}
case $OUT in /*) ;; *) OUT=$ROOT/$OUT ;; esac
TOOL=$ROOT/.venv/mutmut  # mutmut in its own virtualenv: its old pins stay out of the project's
MODULES=${*:-outcome policy planning claim}

if ! "$TOOL/bin/mutmut" --help >/dev/null 2>&1; then
    "$PYTHON" -m venv "$TOOL"
    "$TOOL/bin/python" -m pip install --quiet 'mutmut==2.5.1'
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/orchestrator-mutation.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
mkdir -p "$OUT"

run_module() {
    module=$1
    copy=$WORK/$module
    mkdir -p "$copy"
    # a copy without the virtualenv, caches or bytecode; the tests import from the copy
    (cd "$ROOT" && tar cf - --exclude=./.venv --exclude=./.git --exclude=./reports \
        --exclude=__pycache__ --exclude=./.hypothesis --exclude=./.mypy_cache \
        --exclude=./.ruff_cache --exclude=./.mutmut-cache .) | (cd "$copy" && tar xf -)
    # mutmut 2 counts only exit status 1 as "killed": a mutant that breaks collection
    # (status 2) would count as survived, so any failure becomes 1
    runner="sh -c '$PYTHON -m pytest -x -q -p no:cacheprovider --noconftest -p no:xdist \
-p no:cov tests/unit/test_$module.py >/dev/null 2>&1 || exit 1'"
    (
        cd "$copy"
        # no bytecode: a mutant of the same size written in the same second as the
        # original must never run as a stale .pyc
        export PYTHONPATH=$copy PYTHONDONTWRITEBYTECODE=1
        start=$(date +%s)
        "$TOOL/bin/mutmut" run --paths-to-mutate "orchestrator/domain/$module.py" \
            --tests-dir tests/unit --runner "$runner" --no-progress >"$OUT/$module.log" 2>&1 \
            || true  # mutmut exits non-zero when mutants survive
        end=$(date +%s)
        "$PYTHON" - "$module" $((end - start)) "$TOOL/bin/mutmut" >"$OUT/$module.txt" <<'EOF'
import sqlite3, subprocess, sys
module, seconds, mutmut = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = sqlite3.connect(".mutmut-cache").execute(
    "select id, status from mutant").fetchall()
counts = {}
for _, status in rows:
    counts[status] = counts.get(status, 0) + 1
killed = counts.get("ok_killed", 0)
total = len(rows)
share = 100.0 * killed / total if total else 0.0
print(f"{module}.py: {killed} of {total} mutants killed ({share:.1f}%) in {seconds} s;"
      f" {dict(sorted(counts.items()))}")
for mutant_id, status in rows:
    if status != "ok_killed":
        shown = subprocess.run([mutmut, "show", str(mutant_id)],
                               capture_output=True, text=True).stdout
        print(f"\n--- mutant {mutant_id} ({status})")
        print("\n".join(line for line in shown.splitlines()
                        if line[:1] in "-+" and line[:3] not in ("---", "+++")))
EOF
    )
}

for module in $MODULES; do
    if [ "$module" = claim ]; then
        # one job: it shares the two cores with the mutmut runs
        MUTATION_OUT=$OUT "$PYTHON" "$ROOT/tools/sql_mutation.py" --jobs 1 \
            >"$OUT/claim.log" 2>&1 &
    else
        run_module "$module" &
    fi
done
wait
for module in $MODULES; do
    head -n 1 "$OUT/$module.txt"
done
echo "surviving mutants: $OUT/<module>.txt"
