"""bench/rollout.py's `db_slow_statements`: the slow statements read back from PostgreSQL's
log are attributed to the right statement and the right moment of the rollout.

The bench's figures are only as good as this reading: a claim whose text spans several log
lines must still count as a claim, and a line of another log entry must not be glued to it.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from types import ModuleType

from tests.helpers import ROOT


def _bench_rollout() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_rollout",
                                                  ROOT / "bench" / "rollout.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOG = """\
2026-12-01 05:49:00.010 UTC [90] LOG:  database system is ready to accept connections
2026-12-01 05:50:00.000 UTC [100] LOG:  duration: 66.0 ms  execute <unnamed>: WITH free AS (
\t    SELECT 1
\t), pending_sites AS (
\t    SELECT 2)
\tSELECT * FROM free
2026-12-01 05:50:02.000 UTC [100] LOG:  duration: 51.2 ms  execute <unnamed>: WITH u AS (
\t    SELECT * FROM unnest($1::bigint[]))
2026-12-01 05:50:02.100 UTC [101] LOG:  checkpoint starting: time
\tpending_sites AS (a line of another entry: neither a claim nor the statement above)
2026-12-01 05:50:02.400 UTC [102] LOG:  duration: 75.0 ms  execute <unnamed>: WITH u AS (
\t    SELECT * FROM unnest($1::bigint[]))
2026-12-01 05:50:03.300 UTC [100] LOG:  duration: 120.5 ms  statement: DELETE FROM task_count_deltas
	WHERE rollout_id = 1
2026-12-01 05:50:04.000 UTC [100] LOG:  duration: 58.0 ms  execute <unnamed>: WITH free AS (
\t), pending_sites AS (SELECT 3)
"""


def test_slow_claims_counted_with_their_moment_and_the_rest_grouped() -> None:
    bench = _bench_rollout()
    started = datetime(2026, 12, 1, 5, 49, 0, tzinfo=UTC)
    out = bench.parse_slow_log(LOG, started)
    assert out["claim"] == {"count": 2, "slowest": [{"at_s": 60.0, "ms": 66.0},
                                                    {"at_s": 64.0, "ms": 58.0}]}
    assert out["tick_counts"] == {"count": 1, "slowest": [{"at_s": 63.3, "ms": 120.5}]}
    assert out["other"] == [{"statement": "WITH u AS ( SELECT * FROM unnest($1::bigint[]))",
                             "count": 2, "max_ms": 75.0}]
    assert out["threshold_ms"] == 50


def test_a_log_without_slow_statements_reports_none() -> None:
    bench = _bench_rollout()
    out = bench.parse_slow_log(LOG.splitlines()[0] + "\n", None)
    assert out["claim"] == {"count": 0, "slowest": []}
    assert out["tick_counts"] == {"count": 0, "slowest": []}
    assert out["other"] == []
