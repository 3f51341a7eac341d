"""Helpers shared by the bench scripts that run the orchestrator as separate processes.

PostgreSQL, the simulator and the orchestrator each run as their own process, as in
production; the bench only starts them, waits, and reads what they leave behind (the
database, the simulator's ground truth at `/_sim/stats`, the kernel's resource usage).

- `database()`: a fresh database on ORCHESTRATOR_DATABASE_URL / TEST_DATABASE_URL, or on an
  embedded PostgreSQL in a temporary data directory (with pg_stat_statements loaded), dropped
  at the end.
- `StatementCounter`: statements (pg_stat_statements, else transactions from
  pg_stat_database) the orchestrator ran in that database between two snapshots.
- `start_simulator()`: `python -m orchestrator.simulator ... --write-inventory`.
- `orchestrator_env()`, `cli()`: the `orchestrator` command with a given database.
- `wait_child()`: wait for a child with `os.wait4`, which gives the CPU time and peak RSS of
  exactly that process (plus the descendants it reaped), killing it at a deadline.
- `ProcSampler`: samples /proc of some processes (CPU seconds, RSS) in a thread.
- `Processes`: children to kill on exit, also on Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGET_VERSION = "9.0.1-20020"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- machine
def _speed_work() -> int:
    """A fixed piece of pure-Python work of the kind the engine does per request (small
    dicts and strings, JSON both ways, function calls): 9-20 ms a run on the machines of
    docs/benchmarks.md."""
    items = [{"id": i, "name": f"sim-{i:05d}", "state": "RUNNING", "progress": i % 100}
             for i in range(4_000)]
    text = json.dumps(items)
    back = json.loads(text)
    return sum(len(d["name"]) + d["progress"] for d in back if d["state"] == "RUNNING")


def speed_reading(repeat: int = 30) -> dict[str, float]:
    """How fast one core of the machine is right now: milliseconds of `repeat` runs of
    `_speed_work` in this process, the best (the core's own speed) and the median (what a
    process got: the virtual machines of this kind share their hosts, and the same work
    took 9 ms or 20 ms from one tenth of a second to the next on an idle machine).
    Machines of the same kind differed by up to 2.5 times in the engine's CPU per appliance
    (docs/benchmarks.md): runs compare where their readings do."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        _speed_work()
        times.append(time.perf_counter() - started)
    times.sort()
    return {"best": round(times[0] * 1000, 2), "median": round(times[len(times) // 2] * 1000, 2)}


_speed_at_start: list[dict[str, float]] = []
_steal_at_start: list[tuple[float, float]] = []  # (monotonic, steal seconds)


def cpu_steal_s(stat: str = "/proc/stat") -> float | None:
    """CPU seconds the hypervisor gave to others while this virtual machine's CPUs wanted
    to run (the `steal` column of the `cpu` line of /proc/stat: every CPU together); None
    where there is no such file."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(stat) as f:
            fields = f.readline().split()
        if fields[0] == "cpu":  # user nice system idle iowait irq softirq steal ...
            return int(fields[8]) / CLOCK_TICKS
    return None


def cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def machine() -> dict[str, Any]:
    """The machine a bench ran on, with its core's speed at the start of the bench (when
    it ran under `run_bench`) and now, at its end (`speed_reading`)."""
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    speed: dict[str, Any] = {"start": _speed_at_start[0] if _speed_at_start else None,
                             "end": speed_reading()}
    steal: dict[str, float] | None = None
    now_steal = cpu_steal_s()
    if _steal_at_start and now_steal is not None:
        since, before = _steal_at_start[0]
        seconds = now_steal - before
        share = seconds / max(1e-9, (time.monotonic() - since) * (os.cpu_count() or 1))
        steal = {"seconds": round(seconds, 1), "share": round(share, 3)}
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
            "platform": platform.platform(), "python": platform.python_version(),
            "memory_gb": memory_gb, "speed_ms": speed, "cpu_steal": steal}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the engine's code differs from it (others may be
    editing the work tree while a bench runs)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    changed = subprocess.run(["git", "status", "--porcelain", "--", "orchestrator", "migrations"],
                             cwd=ROOT, capture_output=True, text=True, check=False).stdout
    return {"commit": git("rev-parse", "--short", "HEAD") or None,
            "orchestrator_modified": [line[3:] for line in changed.splitlines()]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- processes
class Processes:
    """Children to stop when the bench ends, however it ends (Ctrl-C and SIGTERM included).

    Children run in their own session, so a Ctrl-C reaches the bench only; the bench then
    stops each child it started, by its pid (and its process group)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Processes:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    @staticmethod
    def _on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        kwargs.setdefault("start_new_session", True)
        proc: subprocess.Popen[Any] = subprocess.Popen(args, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self, grace: float = 5.0) -> None:
        alive = [p for p in self.procs if p.returncode is None and p.poll() is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in alive:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@dataclass
class ChildResult:
    returncode: int | None
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    maxrss_mb: float
    timed_out: bool

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s


def wait_child(proc: subprocess.Popen[Any], deadline: float, started: float,
               on_poll: Any = None) -> ChildResult:
    """Wait for `proc` with os.wait4: its own CPU time and peak RSS (and those of the
    descendants it reaped), not those of other children of the bench. At `deadline`
    (monotonic) it gets SIGTERM, then SIGKILL 10 s later."""
    timed_out = False
    term_at: float | None = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        now = time.monotonic()
        if now > deadline and term_at is None:
            timed_out = True
            term_at = now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        elif term_at is not None and now > term_at + 10:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if on_poll is not None:
            on_poll()
        time.sleep(0.05)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return ChildResult(
        returncode=proc.returncode, wall_s=wall, cpu_user_s=usage.ru_utime,
        cpu_sys_s=usage.ru_stime, maxrss_mb=usage.ru_maxrss / 1024, timed_out=timed_out,
    )


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_cpu_s(pid: int) -> float | None:
    """user+sys CPU seconds of one live process, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out += [int(x) for x in (task / "children").read_text().split()]
    return out


@dataclass
class ProcSampler:
    """Samples CPU seconds and peak RSS of named processes every `interval` seconds.

    `tree=True` adds every descendant alive at a sample (PostgreSQL backends); the CPU of a
    descendant that exits between two samples is counted up to its last sample."""

    interval: float = 0.5
    targets: dict[str, tuple[int, bool]] = field(default_factory=dict)
    cpu: dict[str, dict[int, float]] = field(default_factory=dict)
    hwm_kb: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, name: str, pid: int, tree: bool = False) -> None:
        self.targets[name] = (pid, tree)
        self.cpu.setdefault(name, {})

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.sample()

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.wait(self.interval):
            self.sample()
            self.timeline.append((time.monotonic() - t0, self.totals()))

    def sample(self) -> None:
        for name, (pid, tree) in list(self.targets.items()):
            pids = [pid]
            if tree:
                stack = [pid]
                while stack:
                    kids = proc_children(stack.pop())
                    pids += kids
                    stack += kids
            for p in pids:
                value = proc_cpu_s(p)
                if value is not None:
                    self.cpu[name][p] = max(value, self.cpu[name].get(p, 0.0))
            hwm = proc_status_kb(pid, "VmHWM")
            if hwm is not None:
                self.hwm_kb[name] = max(hwm, self.hwm_kb.get(name, 0))

    def totals(self) -> dict[str, float]:
        return {name: round(sum(v.values()), 2) for name, v in self.cpu.items()}


# --------------------------------------------------------------------------- database
def with_db(url: str, name: str) -> str:
    p = urlsplit(url)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


async def _admin(url: str, *sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(url, sql, *args))


@dataclass
class Database:
    server_url: str
    url: str
    name: str
    kind: str  # "embedded" or "external"
    postmaster_pid: int | None
    stat_statements: bool
    # the embedded server's log, where every statement slower than SLOW_STATEMENT_MS is
    # written with its duration (None for an external server: its log is not ours)
    log_path: Path | None = None


# statements slower than this are logged by the embedded server (the claim's goal: max 50 ms)
SLOW_STATEMENT_MS = 50


def _enable_stat_statements(embedded: Any) -> bool:
    """Load pg_stat_statements into the (temporary, ours) embedded server: restart it."""
    url = embedded.info.url()
    try:
        asyncio.run(_admin(url, "ALTER SYSTEM SET shared_preload_libraries = "
                                "'pg_stat_statements'",
                           "ALTER SYSTEM SET pg_stat_statements.track_utility = on",
                           f"ALTER SYSTEM SET log_min_duration_statement = {SLOW_STATEMENT_MS}",
                           "ALTER SYSTEM SET log_timezone = 'UTC'"))
        embedded.stop()
        embedded.restart_same_port()
        return True
    except Exception as exc:  # the count falls back to pg_stat_database
        print(f"bench: pg_stat_statements unavailable: {exc}", file=sys.stderr)
        with contextlib.suppress(Exception):
            embedded.restart_same_port()
        return False


def _postmaster_pid(pgdata: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    return None


@contextlib.contextmanager
def database(prefix: str, tmp: Path) -> Iterator[Database]:
    """A fresh, migrated database for one run, dropped at the end (see module docstring)."""
    from orchestrator.store.embedded import EmbeddedPostgres

    server = os.environ.get("ORCHESTRATOR_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    embedded = None
    stat = False
    if not server:
        embedded = EmbeddedPostgres(tmp / "pg", announce=lambda _m: None)
        server = embedded.start()
        stat = _enable_stat_statements(embedded)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
        url = with_db(server, name)
        try:
            # in a schema of its own in the bench database: nothing outside it changes
            loaded = fetch(url, "SELECT current_setting('shared_preload_libraries') AS v")
            if "pg_stat_statements" in loaded[0]["v"]:
                asyncio.run(_admin(url, "CREATE SCHEMA bench_stats",
                                   "CREATE EXTENSION pg_stat_statements SCHEMA bench_stats"))
                stat = True
            else:
                stat = False
        except asyncpg.PostgresError as exc:
            print(f"bench: pg_stat_statements unavailable: {exc}", file=sys.stderr)
            stat = False
        yield Database(
            server_url=server, url=url, name=name,
            kind="embedded" if embedded else "external",
            postmaster_pid=_postmaster_pid(embedded.pgdata) if embedded else None,
            stat_statements=stat,
            log_path=embedded.pgdata / "server.log" if embedded else None,
        )
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if embedded:
            embedded.release()


class StatementCounter:
    """Statements run in the bench database between `before()` and `after()`: the calls
    recorded by pg_stat_statements (utility statements such as BEGIN/COMMIT included), else
    the committed and rolled-back transactions of pg_stat_database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.source = ("pg_stat_statements" if db.stat_statements
                       else "pg_stat_database xact_commit+xact_rollback")
        self._before_statements: dict[tuple[int, str], int] = {}
        self._before_xacts = 0

    def _statements(self) -> dict[tuple[int, str], int]:
        rows = fetch(self.db.url, """
            SELECT queryid, query, calls FROM bench_stats.pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query NOT LIKE '%bench_stats.pg_stat_statements%'""")
        return {(int(r["queryid"] or 0), r["query"]): int(r["calls"]) for r in rows}

    def _xacts(self) -> int:
        rows = fetch(self.db.url, """
            SELECT xact_commit + xact_rollback AS n FROM pg_stat_database
            WHERE datname = current_database()""")
        return int(rows[0]["n"])

    def before(self) -> None:
        if self.db.stat_statements:
            self._before_statements = self._statements()
        self._before_xacts = self._xacts()

    def after(self) -> dict[str, Any]:
        """{statements (None without pg_stat_statements), transactions, top: [...]}"""
        # the connections that ran the work are closed: their counters are flushed, but
        # give the statistics collector a moment
        time.sleep(1.0)
        xacts = self._xacts() - self._before_xacts - 1  # minus the before() snapshot's own
        out: dict[str, Any] = {"statements": None, "transactions": xacts, "top": []}
        if self.db.stat_statements:
            now = self._statements()
            delta = {k: v - self._before_statements.get(k, 0) for k, v in now.items()}
            delta = {k: v for k, v in delta.items() if v > 0}
            out["statements"] = sum(delta.values())
            out["top"] = [
                {"calls": v, "query": " ".join(k[1].split())[:160]}
                for k, v in sorted(delta.items(), key=lambda kv: -kv[1])[:15]
            ]
        return out


# --------------------------------------------------------------------------- simulator
@dataclass
class Simulator:
    proc: subprocess.Popen[Any]
    url: str
    inventory: Path

    def stats(self, appliances: bool = False) -> dict[str, Any]:
        flag = "1" if appliances else "0"
        with urllib.request.urlopen(f"{self.url}/_sim/stats?appliances={flag}",  # noqa: S310
                                    timeout=60) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def reset(self, versions: bool = True) -> None:
        req = urllib.request.Request(  # noqa: S310
            f"{self.url}/_sim/reset", data=json.dumps({"versions": versions}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            resp.read()


def start_simulator(procs: Processes, tmp: Path, *, appliances: int, sites: int,
                    install_seconds: float, reboot_seconds: float,
                    services_starting_seconds: float, install_jitter: float | None = None,
                    extra: list[str] | None = None, timeout: float = 120) -> Simulator:
    """The simulator as its own process, no faults; returns once the inventory is written.

    `--duplicate-install accept`: a second install of the same version is accepted and
    counted in `duplicate_installs` (the default, reject, would answer 400 and hide it)."""
    port = free_port()
    inventory = tmp / "fleet.csv"
    args = [str(BIN / "python"), "-m", "orchestrator.simulator",
            "--appliances", str(appliances), "--sites", str(sites), "--port", str(port),
            "--install-seconds", str(install_seconds), "--reboot-seconds", str(reboot_seconds),
            "--services-starting-seconds", str(services_starting_seconds),
            "--duplicate-install", "accept", "--write-inventory", str(inventory),
            *(["--install-jitter", str(install_jitter)] if install_jitter is not None else []),
            *(extra or [])]
    log = (tmp / "simulator.log").open("w")
    proc = procs.popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()  # printed once the inventory is written
    if not line or proc.poll() is not None or time.monotonic() > deadline:
        raise RuntimeError(f"the simulator did not start: {(tmp / 'simulator.log').read_text()}")
    return Simulator(proc=proc, url=f"http://127.0.0.1:{port}", inventory=inventory)


# --------------------------------------------------------------------------- orchestrator
def with_given_settings(settings: dict[str, Any], given: list[str]) -> dict[str, Any]:
    """`settings` with the bench's `--setting KEY=VALUE` options laid over them."""
    out = dict(settings)
    for item in given:
        key, _, value = item.partition("=")
        out[key.strip().lower()] = value.strip()
    return out


def orchestrator_env(db_url: str, **settings: Any) -> dict[str, str]:
    """The environment of an orchestrator process: this database, quiet JSON logs, the
    simulator's credentials, and `settings` as ORCHESTRATOR_<KEY> variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env |= {"ORCHESTRATOR_DATABASE_URL": db_url, "ORCHESTRATOR_LOG_LEVEL": "warning",
            "ORCHESTRATOR_LOG_FORMAT": "json", "APPLIANCE_SIM_CREDENTIALS": "admin:admin",
            # the simulator answers on http://127.0.0.1: a lab
            "ORCHESTRATOR_APPLIANCE_ALLOW_HTTP": "true",
            "ORCHESTRATOR_APPLIANCE_ALLOW_LOCAL_ADDRESSES": "true"}
    env |= {f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in settings.items()}
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    result = subprocess.run([str(BIN / "orchestrator"), *args], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"orchestrator {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def create_rollout(env: dict[str, str], tmp: Path, strategy: dict[str, Any],
                   name: str = "bench", start: bool = True) -> int:
    """`orchestrator rollout create [--start] --strategy FILE --json`; returns its id."""
    path = tmp / "strategy.json"
    path.write_text(json.dumps(strategy))
    out = cli(env, "rollout", "create", "--name", name, "--version", TARGET_VERSION,
              "--strategy", str(path), *(["--start"] if start else []), "--json")
    return int(json.loads(out)["id"])


def rollout_outcome(db_url: str, rollout_id: int) -> dict[str, Any]:
    """The rollout's state, wall time from the database, tasks by state, and its waves."""
    r = fetch(db_url, """SELECT state, abort_reason, started_at, finished_at,
                                extract(epoch FROM finished_at - started_at) AS wall
                         FROM rollouts WHERE id = $1""", rollout_id)[0]
    states = {x["state"]: int(x["n"]) for x in fetch(
        db_url, "SELECT state, count(*) AS n FROM tasks WHERE rollout_id = $1 GROUP BY state",
        rollout_id)}
    waves = [dict(x) for x in fetch(db_url, """
        SELECT w.number, w.planned_size,
               extract(epoch FROM w.started_at - r.started_at) AS start_s,
               extract(epoch FROM w.finished_at - r.started_at) AS end_s,
               extract(epoch FROM min(t.dispatched_at) - r.started_at) AS first_dispatch_s,
               extract(epoch FROM max(t.finished_at) - r.started_at) AS last_finish_s
        FROM rollout_waves w JOIN rollouts r ON r.id = w.rollout_id
        LEFT JOIN tasks t ON t.rollout_id = w.rollout_id AND t.wave = w.number
        WHERE w.rollout_id = $1
        GROUP BY w.number, w.planned_size, w.started_at, w.finished_at, r.started_at
        ORDER BY w.number""", rollout_id)]
    for w in waves:
        for k in ("start_s", "end_s", "first_dispatch_s", "last_finish_s"):
            w[k] = round(float(w[k]), 2) if w[k] is not None else None
    return {
        "state": r["state"], "abort_reason": r["abort_reason"],
        "wall_s": float(r["wall"]) if r["wall"] is not None else None,
        "tasks": states, "waves": waves,
    }


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def run_bench(name: str, run: Callable[..., int], opts: Any) -> int:
    """Run `run(opts, procs, db, tmp, bench_started, load_start)` with its processes, a
    database `bench_<name>` and a temporary directory, all removed at the end (also on
    Ctrl-C: one JSON line says so, exit 130)."""
    load_start = [round(x, 2) for x in os.getloadavg()]
    _speed_at_start[:] = [speed_reading()]  # before any process of the bench starts
    steal = cpu_steal_s()
    _steal_at_start[:] = [(time.monotonic(), steal)] if steal is not None else []
    bench_started = time.monotonic()
    tmp = temp_dir(f"orch-bench-{name}-")
    try:
        with Processes() as procs, database(f"bench_{name}", tmp) as db:
            return run(opts, procs, db, tmp, bench_started, load_start)
    except KeyboardInterrupt:
        print(json.dumps({"error": "interrupted"}))
        return 130
    finally:
        remove(tmp)


def listening_engines(db_url: str) -> int:
    """Engine processes listening for operator actions in this database (one LISTEN each)."""
    rows = fetch(db_url, "SELECT count(*) AS n FROM pg_stat_activity "
                         "WHERE datname = current_database() AND query ILIKE 'LISTEN%'")
    return int(rows[0]["n"])
