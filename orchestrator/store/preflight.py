"""Pre-flight runs and results (migration 0013; docs/preflight.md).

A run is claimed as a row: the engine's automatic runs (`claim_automatic`) under an
advisory lock per rollout, so that two engines never start the same one; a run asked for
through the API (`request_run`: no owner yet) or abandoned by a process that died (its
lease ran out) is taken by any engine (`claim_unowned`, `FOR UPDATE SKIP LOCKED`). Every
write of the run's owner (`save_results`, `finish_run`) is guarded by the owner and the
run being unfinished: a run taken over by another process is not written by the first.

`finish_run` with `leave_out` (the strategy says `preflight: required`) turns the PENDING
tasks of the appliances the run found failing into SKIPPED with the reason, in the same
transaction, while the rollout is active.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.preflight import RESULTS, TASK_CODE_PREFIX
from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB
from orchestrator.store.rollouts import NOTIFY_CHANNEL, RolloutNotFound

# the tasks whose appliances a run checks: never started, or ended without the target
# (a task in flight is never checked: its appliance is installing)
CHECKED_TASK_STATES: Final = ("PENDING", "FAILED", "TIMED_OUT", "CANCELLED", "SKIPPED")
# the rollout states in which a `required` run leaves failing appliances out
LEAVE_OUT_STATES: Final = ("RUNNING", "PAUSED", "WAITING_WINDOW")


class PreflightError(OrchestratorError):
    """A pre-flight cannot be run now; the message says why."""


class PreflightBusy(PreflightError):
    """Another pre-flight of the rollout has not finished (`run`)."""

    def __init__(self, message: str, run: PreflightRun) -> None:
        super().__init__(message)
        self.run = run


@dataclass(frozen=True)
class PreflightTarget:
    """An appliance to check, with what the client needs to reach it."""

    appliance_id: int
    name: str
    site: str
    base_url: str
    credentials_ref: str | None
    tls_ca_file: str | None
    tls_thumbprint: str | None


@dataclass(frozen=True)
class PreflightRun:
    id: int
    rollout_id: int
    trigger: str
    requested_by: str
    owner: str | None
    total: int
    done: int
    counts: dict[str, int]
    left_out: int
    error: str | None
    as_of: datetime
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @property
    def state(self) -> str:
        """`requested` (no process works on it: not taken yet, or handed over), `running`,
        `finished`."""
        if self.finished_at is not None:
            return "finished"
        return "running" if self.owner is not None else "requested"

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id, "trigger": self.trigger, "state": self.state,
            "requested_by": self.requested_by, "total": self.total, "done": self.done,
            "counts": {r: int(self.counts.get(r, 0)) for r in RESULTS},
            "left_out": self.left_out, "error": self.error,
            "created_at": iso(self.created_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
        }


_RUN_COLUMNS = """id, rollout_id, trigger, requested_by, owner, total, done, counts, left_out,
    error, as_of, created_at, started_at, finished_at"""


def _run(row: asyncpg.Record) -> PreflightRun:
    values = dict(row)
    values["counts"] = {str(k): int(v) for k, v in (values["counts"] or {}).items()}
    return PreflightRun(**values)


async def _lock(conn: DB, rollout_id: int) -> None:
    """The rollout's pre-flight lock (held until the transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('preflight'), $1::int)",
                       rollout_id % 2_147_483_647)


async def _unfinished(conn: DB, rollout_id: int) -> PreflightRun | None:
    row = await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM preflight_runs "
        "WHERE rollout_id = $1 AND finished_at IS NULL", rollout_id)
    return _run(row) if row is not None else None


async def _checkable(conn: DB, rollout_id: int) -> None:
    """RolloutNotFound, or PreflightError when its tasks were pruned."""
    row = await conn.fetchrow("SELECT pruned_at FROM rollouts WHERE id = $1", rollout_id)
    if row is None:
        raise RolloutNotFound(f"rollout {rollout_id} does not exist")
    if row["pruned_at"] is not None:
        raise PreflightError(
            f"rollout {rollout_id} was pruned on {row['pruned_at']:%Y-%m-%d}: its tasks are "
            "gone, there is nothing to check")


def _busy(rollout_id: int, run: PreflightRun) -> PreflightBusy:
    return PreflightBusy(
        f"a pre-flight of rollout {rollout_id} is {run.state} already (run {run.id}, "
        f"{run.trigger}, {run.done}/{run.total} checked): wait for it to finish", run)


async def _notify(conn: DB, rollout_id: int) -> None:
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"rollout:{rollout_id}")


async def request_run(
    pool: asyncpg.Pool, rollout_id: int, actor: Actor, *, owner: str | None = None,
    lease_seconds: float = 30.0,
) -> PreflightRun:
    """An operator's pre-flight of the rollout: with `owner` (the CLI runs it itself) the
    run is taken at once, else (the API) it waits for an engine. Audited; the engines are
    notified. PreflightBusy while another run of the rollout is unfinished."""
    async with pool.acquire() as conn, conn.transaction():
        await _checkable(conn, rollout_id)
        await _lock(conn, rollout_id)
        running = await _unfinished(conn, rollout_id)
        if running is not None:
            raise _busy(rollout_id, running)
        row = await conn.fetchrow(
            f"""INSERT INTO preflight_runs (rollout_id, trigger, requested_by, owner,
                                            lease_until, started_at)
                VALUES ($1, 'operator', $2, $3,
                        CASE WHEN $3::text IS NULL THEN NULL
                             ELSE now() + make_interval(secs => $4) END,
                        CASE WHEN $3::text IS NULL THEN NULL ELSE now() END)
                RETURNING {_RUN_COLUMNS}""",
            rollout_id, actor.name, owner, lease_seconds)
        assert row is not None
        await record_audit(conn, actor, "rollout.preflight", "rollout", rollout_id,
                           {"run": row["id"]})
        await _notify(conn, rollout_id)
        return _run(row)


async def claim_automatic(
    conn: DB, rollout_id: int, trigger: str, *, owner: str, lease_seconds: float,
    as_of: datetime, fresh_since: datetime | None = None,
) -> PreflightRun | None:
    """The engine's own run of the rollout (`start` or `window`), taken by `owner`, asked
    for at `as_of` (the engine's clock); None when it must not run now: another run is
    unfinished, a `start` run exists already, or a run was asked for at or after
    `fresh_since` (its results are recent enough). Decided under the rollout's pre-flight
    lock, in one transaction of its own."""
    if trigger not in ("start", "window"):
        raise ValueError(f"trigger {trigger!r} is not 'start' or 'window'")
    async with _transaction(conn) as tx:
        await _lock(tx, rollout_id)
        row = await tx.fetchrow(
            f"""INSERT INTO preflight_runs (rollout_id, trigger, requested_by, owner,
                                            lease_until, started_at, as_of)
                SELECT $1, $2, 'engine', $3, now() + make_interval(secs => $4), now(), $6
                WHERE NOT EXISTS (
                    SELECT 1 FROM preflight_runs p WHERE p.rollout_id = $1
                      AND (p.finished_at IS NULL
                           OR ($2 = 'start' AND p.trigger = 'start')
                           OR ($5::timestamptz IS NOT NULL AND p.as_of >= $5)))
                  AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = $1
                              AND r.pruned_at IS NULL)
                RETURNING {_RUN_COLUMNS}""",
            rollout_id, trigger, owner, lease_seconds, fresh_since, as_of)
        return _run(row) if row is not None else None


class _transaction:
    """A transaction on `db`: a pool connection's own, or a savepoint inside the caller's."""

    def __init__(self, db: DB) -> None:
        self.db = db
        self._acquired: Any = None
        self._tx: Any = None

    async def __aenter__(self) -> Any:
        conn: Any = self.db
        if isinstance(self.db, asyncpg.Pool):
            self._acquired = self.db.acquire()
            conn = await self._acquired.__aenter__()
        self._tx = conn.transaction()
        await self._tx.__aenter__()
        return conn

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._tx.__aexit__(*exc)
        finally:
            if self._acquired is not None:
                await self._acquired.__aexit__(*exc)


async def claim_unowned(
    conn: DB, *, owner: str, lease_seconds: float, limit: int = 1
) -> list[PreflightRun]:
    """Runs no live process works on (asked for through the API, or abandoned: their
    lease ran out), taken by `owner`."""
    rows = await conn.fetch(
        f"""UPDATE preflight_runs SET owner = $1,
                   lease_until = now() + make_interval(secs => $2),
                   started_at = coalesce(started_at, now()), done = 0
            WHERE id IN (SELECT id FROM preflight_runs
                         WHERE finished_at IS NULL
                           AND (lease_until IS NULL OR lease_until < now())
                         ORDER BY lease_until NULLS FIRST, id
                         LIMIT $3 FOR UPDATE SKIP LOCKED)
            RETURNING {_RUN_COLUMNS}""",
        owner, lease_seconds, limit)
    return [_run(r) for r in rows]


async def gate(conn: DB, rollout_id: int) -> tuple[PreflightRun | None, PreflightRun | None,
                                                   datetime | None]:
    """(the unfinished run, the `start` run, when the latest run was asked for (`as_of`))
    of a rollout."""
    rows = await conn.fetch(
        f"""(SELECT {_RUN_COLUMNS} FROM preflight_runs
             WHERE rollout_id = $1 AND (finished_at IS NULL OR trigger = 'start'))
            UNION ALL
            (SELECT {_RUN_COLUMNS} FROM preflight_runs
             WHERE rollout_id = $1 ORDER BY as_of DESC LIMIT 1)""",
        rollout_id)
    runs = [_run(r) for r in rows]
    unfinished = next((r for r in runs if r.finished_at is None), None)
    start = next((r for r in runs if r.trigger == "start"), None)
    last = max((r.as_of for r in runs), default=None)
    return unfinished, start, last


@dataclass(frozen=True)
class RunContext:
    """What a run needs to know of its rollout."""

    rollout_id: int
    state: str
    target_version: str
    strategy: dict[str, Any]
    targeted: int


async def run_context(conn: DB, rollout_id: int) -> RunContext:
    row = await conn.fetchrow(
        """SELECT r.state, r.target_version, r.strategy,
                  (SELECT count(*) FROM tasks t WHERE t.rollout_id = r.id) AS targeted
           FROM rollouts r WHERE r.id = $1""", rollout_id)
    if row is None:
        raise RolloutNotFound(f"rollout {rollout_id} does not exist")
    return RunContext(rollout_id, row["state"], row["target_version"], row["strategy"],
                      int(row["targeted"]))


async def targets(conn: DB, rollout_id: int) -> list[PreflightTarget]:
    """The appliances a run checks, in plan order: those of the rollout's tasks that have
    not started or ended without the target (CHECKED_TASK_STATES; a SKIPPED one only when
    a pre-flight left it out), leaving out any appliance busy with an install (in flight
    or holding its slot) in any rollout."""
    rows = await conn.fetch(
        """SELECT a.id, a.name, t.site, a.base_url, a.credentials_ref, a.tls_ca_file,
                  a.tls_thumbprint
           FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.rollout_id = $1 AND t.state = ANY($2::text[])
             AND (t.state <> 'SKIPPED' OR t.error_code LIKE $3)
             AND NOT EXISTS (
                 SELECT 1 FROM tasks b WHERE b.appliance_id = t.appliance_id
                   AND (b.state IN ('DISPATCHING', 'INSTALLING', 'VERIFYING')
                        OR b.holds_slot))
           ORDER BY t.position""",
        rollout_id, list(CHECKED_TASK_STATES), TASK_CODE_PREFIX + "%")
    return [PreflightTarget(r["id"], r["name"], r["site"], r["base_url"],
                            r["credentials_ref"], r["tls_ca_file"], r["tls_thumbprint"])
            for r in rows]


async def site_limits(conn: DB, sites: Sequence[str]) -> dict[str, int]:
    """The fleet-wide limits (`sites.max_in_flight`) of these sites that have one."""
    rows = await conn.fetch(
        "SELECT name, max_in_flight FROM sites WHERE name = ANY($1::text[]) "
        "AND max_in_flight IS NOT NULL", list(sites))
    return {r["name"]: int(r["max_in_flight"]) for r in rows}


@dataclass(frozen=True)
class ResultRow:
    """One appliance's verdict, as written."""

    appliance_id: int
    result: str
    code: str | None
    message: str
    current_version: str | None
    checked_at: datetime
    retrieve_task_id: str | None = None


async def save_results(
    conn: DB, run: PreflightRun, owner: str, results: Sequence[ResultRow], *, done: int,
    lease_seconds: float,
) -> bool:
    """Write a batch of results and the run's progress, and renew its lease; False when
    the run is no longer `owner`'s (taken over, or finished): nothing is written."""
    async with _transaction(conn) as tx:
        owned = await tx.fetchval(
            """UPDATE preflight_runs SET done = $3,
                      lease_until = now() + make_interval(secs => $4)
               WHERE id = $1 AND owner = $2 AND finished_at IS NULL RETURNING id""",
            run.id, owner, done, lease_seconds)
        if owned is None:
            return False
        if results:
            await tx.execute(
                """INSERT INTO preflight_results AS p (rollout_id, appliance_id, run_id,
                       result, code, message, current_version, checked_at, retrieve_task_ids)
                   SELECT $1, a, $2, r, c, m, v, at,
                          CASE WHEN k IS NULL THEN '{}'::text[] ELSE ARRAY[k] END
                   FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[],
                               $7::text[], $8::timestamptz[], $9::text[])
                        AS u(a, r, c, m, v, at, k)
                   WHERE EXISTS (SELECT 1 FROM appliances WHERE id = a)
                   ON CONFLICT (rollout_id, appliance_id) DO UPDATE SET
                       run_id = excluded.run_id, result = excluded.result,
                       code = excluded.code, message = excluded.message,
                       current_version = excluded.current_version,
                       checked_at = excluded.checked_at,
                       retrieve_task_ids = (excluded.retrieve_task_ids
                                            || p.retrieve_task_ids)[1:10]""",
                run.rollout_id, run.id, [r.appliance_id for r in results],
                [r.result for r in results], [r.code for r in results],
                [r.message for r in results], [r.current_version for r in results],
                [r.checked_at for r in results], [r.retrieve_task_id for r in results])
        return True


async def retrieve_task_ids(conn: DB, appliance_id: int, within_seconds: float) -> set[str]:
    """The retrieve-updates tasks pre-flights started on the appliance (in any rollout)
    and recorded within the last `within_seconds`: never an install."""
    rows = await conn.fetch(
        """SELECT DISTINCT unnest(retrieve_task_ids) AS id FROM preflight_results
           WHERE appliance_id = $1 AND retrieve_task_ids <> '{}'
             AND checked_at > now() - make_interval(secs => $2)""",
        appliance_id, within_seconds)
    return {r["id"] for r in rows}


async def set_total(conn: DB, run: PreflightRun, owner: str, total: int) -> bool:
    result = await conn.fetchval(
        """UPDATE preflight_runs SET total = $3, done = 0
           WHERE id = $1 AND owner = $2 AND finished_at IS NULL RETURNING id""",
        run.id, owner, total)
    return result is not None


async def release_run(conn: DB, run: PreflightRun, owner: str) -> bool:
    """Hand an unfinished run of `owner` over at once (its process stops): any engine
    takes it (`claim_unowned`) and checks its appliances again."""
    result = await conn.fetchval(
        """UPDATE preflight_runs SET owner = NULL, lease_until = NULL
           WHERE id = $1 AND owner = $2 AND finished_at IS NULL RETURNING id""",
        run.id, owner)
    return result is not None


async def finish_run(
    conn: DB, run: PreflightRun, owner: str, *, counts: Mapping[str, int],
    error: str | None = None, leave_out: bool = False,
) -> PreflightRun | None:
    """End the run (None when it is no longer `owner`'s). With `leave_out`, while the
    rollout is active (LEAVE_OUT_STATES), every PENDING task whose appliance this run
    found failing becomes SKIPPED, its error_code `PREFLIGHT_<CODE>` and its message the
    pre-flight's, with a task event; the count is the run's `left_out`."""
    async with _transaction(conn) as tx:
        await _lock(tx, run.rollout_id)
        owned = await tx.fetchval(
            "SELECT id FROM preflight_runs WHERE id = $1 AND owner = $2 "
            "AND finished_at IS NULL FOR UPDATE", run.id, owner)
        if owned is None:
            return None
        left_out = 0
        if leave_out and error is None:
            left_out = await _leave_out(tx, run)
        row = await tx.fetchrow(
            f"""UPDATE preflight_runs SET finished_at = now(), owner = NULL,
                       lease_until = NULL, counts = $2, error = $3, left_out = $4,
                       done = greatest(done, total)
                WHERE id = $1 RETURNING {_RUN_COLUMNS}""",
            run.id, dict(counts), error, left_out)
        assert row is not None
        await _notify(tx, run.rollout_id)
        return _run(row)


async def _leave_out(conn: DB, run: PreflightRun) -> int:
    count = await conn.fetchval(
        """WITH failing AS (
               SELECT p.appliance_id, p.code, p.message FROM preflight_results p
               WHERE p.rollout_id = $1 AND p.run_id = $2 AND p.result = 'fail'),
           skipped AS (
               UPDATE tasks t SET state = 'SKIPPED', finished_at = now(), updated_at = now(),
                      error_code = $3 || f.code,
                      error_message = left('pre-flight ' || f.code || ': ' || f.message, 500)
               FROM failing f
               WHERE t.rollout_id = $1 AND t.appliance_id = f.appliance_id
                 AND t.state = 'PENDING'
                 AND EXISTS (SELECT 1 FROM rollouts r WHERE r.id = $1
                             AND r.state = ANY($4::text[]))
               RETURNING t.id, t.rollout_id, f.code),
           events AS (
               INSERT INTO task_events (task_id, rollout_id, from_state, to_state, detail)
               SELECT id, rollout_id, 'PENDING', 'SKIPPED',
                      jsonb_build_object('reason', 'pre-flight', 'code', code,
                                         'preflight_run', $2::bigint)
               FROM skipped)
           SELECT count(*) FROM skipped""",
        run.rollout_id, run.id, TASK_CODE_PREFIX, list(LEAVE_OUT_STATES))
    return int(count)


async def before_installs(conn: DB, run: PreflightRun) -> bool:
    """Whether `run` finished before the rollout's first install was dispatched (or no
    install was)."""
    first = await conn.fetchval(
        "SELECT min(dispatched_at) FROM tasks WHERE rollout_id = $1", run.rollout_id)
    return run.finished_at is not None and (first is None or run.finished_at <= first)


async def latest_run(conn: DB, rollout_id: int) -> PreflightRun | None:
    row = await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM preflight_runs WHERE rollout_id = $1 "
        "ORDER BY id DESC LIMIT 1", rollout_id)
    return _run(row) if row is not None else None


async def get_run(conn: DB, run_id: int) -> PreflightRun | None:
    row = await conn.fetchrow(
        f"SELECT {_RUN_COLUMNS} FROM preflight_runs WHERE id = $1", run_id)
    return _run(row) if row is not None else None


@dataclass(frozen=True)
class Summary:
    """A rollout's latest pre-flight results: counts per result, per (result, code), the
    latest check, and its latest run."""

    counts: dict[str, int]
    codes: list[tuple[str, str, int]]  # (result, code, appliances), worst first
    checked_at: datetime | None
    run: PreflightRun | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": {r: int(self.counts.get(r, 0)) for r in RESULTS},
            "codes": [{"result": r, "code": c, "appliances": n} for r, c, n in self.codes],
            "checked_at": self.checked_at.isoformat() if self.checked_at else None,
            "run": self.run.to_dict() if self.run is not None else None,
        }


_ORDER = "CASE result WHEN 'fail' THEN 0 WHEN 'warn' THEN 1 WHEN 'skip' THEN 2 ELSE 3 END"
_P_ORDER = _ORDER.replace("result", "p.result")


async def summary(conn: DB, rollout_id: int) -> Summary | None:
    """None when the rollout was never checked."""
    run = await latest_run(conn, rollout_id)
    rows = await conn.fetch(
        f"""SELECT result, code, count(*)::int AS n, max(checked_at) AS at
            FROM preflight_results WHERE rollout_id = $1
            GROUP BY result, code ORDER BY {_ORDER}, count(*) DESC, code""",
        rollout_id)
    if run is None and not rows:
        return None
    counts: dict[str, int] = {}
    codes: list[tuple[str, str, int]] = []
    for r in rows:
        counts[r["result"]] = counts.get(r["result"], 0) + r["n"]
        if r["code"] is not None:
            codes.append((r["result"], r["code"], r["n"]))
    checked = max((r["at"] for r in rows), default=None)
    return Summary(counts, codes, checked, run)


@dataclass(frozen=True)
class ApplianceResult:
    appliance_id: int
    appliance: str
    site: str
    result: str
    code: str | None
    message: str
    current_version: str | None
    checked_at: datetime
    run_id: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"appliance": self.appliance, "site": self.site, "result": self.result,
                "code": self.code, "message": self.message,
                "current_version": self.current_version,
                "checked_at": self.checked_at.isoformat(), "run_id": self.run_id}


async def results(
    conn: DB, rollout_id: int, *, only: Sequence[str] | None = None,
    after_appliance: int | None = None, limit: int | None = None,
) -> list[ApplianceResult]:
    """The latest result per appliance, by appliance id (`after_appliance`: the next page),
    worst first when `limit` is None."""
    order = "p.appliance_id" if limit is not None else f"{_P_ORDER}, a.name"
    rows = await conn.fetch(
        f"""SELECT p.appliance_id, a.name, a.site, p.result, p.code, p.message,
                   p.current_version, p.checked_at, p.run_id
            FROM preflight_results p JOIN appliances a ON a.id = p.appliance_id
            WHERE p.rollout_id = $1
              AND ($2::text[] IS NULL OR p.result = ANY($2))
              AND ($3::bigint IS NULL OR p.appliance_id > $3)
            ORDER BY {order} LIMIT $4""",
        rollout_id, list(only) if only else None, after_appliance, limit)
    return [ApplianceResult(r["appliance_id"], r["name"], r["site"], r["result"], r["code"],
                            r["message"], r["current_version"], r["checked_at"], r["run_id"])
            for r in rows]


async def results_by_name(
    conn: DB, rollout_id: int, names: Sequence[str]
) -> dict[str, tuple[str, str | None]]:
    """Appliance name -> (result, code), for the appliances named that were checked."""
    rows = await conn.fetch(
        """SELECT a.name, p.result, p.code FROM preflight_results p
           JOIN appliances a ON a.id = p.appliance_id
           WHERE p.rollout_id = $1 AND a.name = ANY($2::text[])""",
        rollout_id, list(names))
    return {r["name"]: (r["result"], r["code"]) for r in rows}


async def code_groups(
    conn: DB, rollout_id: int, names_cap: int
) -> list[tuple[str, str, int, list[str]]]:
    """(result, code, appliances, the first `names_cap` names) per problem, worst first."""
    rows = await conn.fetch(
        f"""SELECT result, code, count(*)::int AS n,
                   (array_agg(a.name ORDER BY a.name))[1:$2] AS names
            FROM preflight_results p JOIN appliances a ON a.id = p.appliance_id
            WHERE p.rollout_id = $1 AND p.code IS NOT NULL
            GROUP BY result, code ORDER BY {_ORDER}, count(*) DESC, code""",
        rollout_id, names_cap)
    return [(r["result"], r["code"], r["n"], list(r["names"])) for r in rows]


__all__ = [
    "CHECKED_TASK_STATES",
    "LEAVE_OUT_STATES",
    "ApplianceResult",
    "PreflightBusy",
    "PreflightError",
    "PreflightRun",
    "PreflightTarget",
    "ResultRow",
    "RunContext",
    "Summary",
    "before_installs",
    "claim_automatic",
    "claim_unowned",
    "code_groups",
    "finish_run",
    "gate",
    "get_run",
    "latest_run",
    "release_run",
    "request_run",
    "results",
    "results_by_name",
    "retrieve_task_ids",
    "run_context",
    "save_results",
    "set_total",
    "site_limits",
    "summary",
]
