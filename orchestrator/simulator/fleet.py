"""The simulated fleet's state machine: no I/O, time passed in, computed lazily.

Every appliance keeps a few timestamps (monotonic seconds) instead of timers: an install
accepted at `t` is QUEUED until `running`, RUNNING until `run_end`, then (with a reboot)
down until `reboot_end` and "services starting" until `ready_at`. `Fleet.advance(app, now)`
applies whatever became due since the last look (version switch, sessions and tasks lost);
it is called before every request to that appliance and before reading the statistics, so
the outcome does not depend on when, or whether, anybody looks.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import random
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.faults import (
    API_V1_TASKS,
    BAD_CREDENTIALS,
    FORBIDDEN,
    IN_PROGRESS_ERROR,
    INSTALL_500,
    INSTALL_ERROR,
    LONG_REBOOT,
    LOST_ANSWER,
    NO_REPOSITORY,
    OPAQUE_TASKS,
    PROBE_FAILING,
    PROBE_FLAPPING,
    RECONFIGURE_PENDING,
    REPO_UNREACHABLE,
    REST_RESTART,
    SERVICES_DOWN,
    SESSION_EXPIRY,
    SILENT_FAILURE,
    SPARSE_ACCEPT,
    VERSION_NOT_OFFERED,
    WRONG_TYPES,
    FaultParams,
    check_faults,
)

INF = float("inf")

# Task statuses (API 2.0)
QUEUED = "QUEUED"
RUNNING = "RUNNING"
SUCCESS = "SUCCESS"
ERROR = "ERROR"

# install outcomes, decided when the install is accepted
OUTCOME_SUCCESS = "success"
OUTCOME_ERROR = "error"
OUTCOME_SILENT = "silent_failure"

# phases of an appliance, as seen from outside
PHASE_UP = "up"
PHASE_INSTALLING = "installing"
PHASE_REBOOTING = "rebooting"
PHASE_STARTING = "services_starting"

# ResponseError codes the simulator answers with (documented in docs/simulator.md)
E_ALREADY_INSTALLED = "UPDATE_ALREADY_INSTALLED"
E_IN_PROGRESS = "UPDATE_IN_PROGRESS"
E_NOT_APPLICABLE = "UPDATE_NOT_APPLICABLE"
E_INSUFFICIENT_RIGHTS = "INSUFFICIENT_RIGHTS"
E_INTERNAL = "INTERNAL_SERVER_ERROR"
E_INVALID_PARAMETER = "INVALID_PARAMETER"
E_INVALID_REQUEST = "INVALID_REQUEST"
ERROR_CODES: tuple[str, ...] = (
    E_ALREADY_INSTALLED, E_IN_PROGRESS, E_NOT_APPLICABLE, E_INSUFFICIENT_RIGHTS,
    E_INTERNAL, E_INVALID_PARAMETER, E_INVALID_REQUEST,
)

KIND_INSTALL = "INSTALL_UPDATE"
KIND_RETRIEVE = "RETRIEVE_UPDATES"

# what an install task says about itself with the `opaque_tasks` fault
OPAQUE_TYPE = "com.vmware.hms.task"
OPAQUE_DESCRIPTION = "Operation in progress"

# (id, description, key service?)
SERVICES: tuple[tuple[str, str, bool], ...] = (
    ("hms", "vSphere Replication Management Server", True),
    ("drrest", "Disaster Recovery REST API service", True),
    ("envoy", "Envoy reverse proxy", False),
)
KEY_SERVICES: tuple[str, ...] = tuple(s[0] for s in SERVICES if s[2])
# the key service the `services_down` fault stops
DOWN_SERVICE = KEY_SERVICES[0]

DEFAULT_REPOSITORY = "https://updates.sim.invalid/vr/"

_DIGITS = re.compile(r"\d+")


def version_key(version: str) -> tuple[int, ...]:
    """Order versions like 9.0.0-10010 < 9.0.1-20020 by their numbers."""
    return tuple(int(part) for part in _DIGITS.findall(version))


def response_error(code: str, message: str) -> dict[str, Any]:
    """The documented ResponseError body (400/403/500)."""
    return {"error_code": code, "message": message, "op_id": str(uuid.uuid4())}


class Install:
    """One accepted install and its (precomputed) timeline."""

    __slots__ = (
        "accepted", "accepted_wall", "end", "fail_progress", "message", "outcome", "previous",
        "ran", "reboot", "rest_done", "rest_end", "rest_start", "run_end", "running",
        "version",
    )

    def __init__(
        self, *, version: str, previous: str, accepted: float, accepted_wall: float,
        running: float, run_end: float, end: float, outcome: str, reboot: bool,
        fail_progress: int, rest_start: float = INF, rest_end: float = INF,
        message: str | None = None,
    ) -> None:
        self.version = version
        self.previous = previous
        self.accepted = accepted
        self.accepted_wall = accepted_wall
        self.running = running
        self.run_end = run_end
        self.end = end
        self.outcome = outcome
        self.reboot = reboot
        self.fail_progress = fail_progress
        self.ran = False  # the RUNNING phase has been processed by advance()
        # `rest_restart`: the REST service is down in [rest_start, rest_end) (INF: never)
        self.rest_start = rest_start
        self.rest_end = rest_end
        self.rest_done = False  # the REST restart has been processed by advance()
        self.message = message  # the task's error message when it ends in ERROR (None: default)


class Task:
    __slots__ = ("created", "done", "error", "id", "install", "kind", "result")

    def __init__(
        self, kind: str, created: float, *, install: Install | None = None,
        done: float = 0.0, result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        self.id = str(uuid.uuid4())
        self.kind = kind
        self.created = created
        self.done = done
        self.install = install
        self.result = result
        self.error = error  # a retrieve-updates task that ends in ERROR: its message


class Appliance:
    """The state of one simulated appliance (kept small: 10,000 of them are cheap)."""

    __slots__ = (
        "answer_lost", "booted_at", "faults", "flap_until", "index", "install", "install_ends",
        "install_times", "installs_accepted", "name", "next_event", "probe_requests",
        "ready_at", "reboot_end", "reboot_start", "rebooted", "reconfigure", "repository",
        "restored", "rng", "sessions", "site", "succeeded", "tasks", "version",
    )

    def __init__(self, index: int, name: str, site: str, version: str,
                 faults: frozenset[str], booted_at: float) -> None:
        self.index = index
        self.name = name
        self.site = site
        self.version = version
        self.faults = faults
        self.sessions: dict[str, float] = {}
        self.tasks: dict[str, Task] = {}
        self.install: Install | None = None
        self.reboot_start = 0.0
        self.reboot_end = 0.0
        self.ready_at = 0.0  # 0.0: no reboot scheduled
        self.rebooted = False
        self.next_event = INF
        self.booted_at = booted_at
        self.reconfigure = False
        self.installs_accepted = 0
        self.install_times: list[float] = []
        # epoch seconds at which each accepted install stops counting as in flight (its
        # reboot and services start included): [install_times[i], install_ends[i]) is
        # the i-th install's interval in `in_flight`
        self.install_ends: list[float] = []
        self.succeeded: set[str] = set()
        self.repository: dict[str, Any] | None = None
        self.rng: random.Random | None = None
        self.answer_lost = False  # `lost_answer` has fired on this appliance
        # `services_down`: the appliance restarted (or was upgraded in place) since the
        # fault was given, which brought its services back up
        self.restored = False
        # `probe_flapping`: the health probe fails until then (monotonic seconds)
        self.flap_until = 0.0
        self.probe_requests = 0


class Fleet:
    """All appliances, the ground-truth counters and the API semantics (without HTTP)."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.clock = clock
        self.params: FaultParams = config.profile.params
        now = clock()
        self._mono0 = now
        self._wall0 = wall_clock()
        names = [config.appliance_name(i) for i in range(config.appliances)]
        faults = config.profile.assign(
            names, config.seed, [config.site_name(i) for i in range(config.appliances)])
        self.appliances: list[Appliance] = [
            Appliance(i, name, config.site_name(i), config.initial_version, faults[i], now)
            for i, name in enumerate(names)
        ]
        self.by_name: dict[str, Appliance] = {a.name: a for a in self.appliances}
        self.sites: list[str] = sorted({a.site for a in self.appliances})
        self.offered: frozenset[str] = frozenset(config.available_versions)
        self._auth_ok = "Basic " + base64.b64encode(
            f"{config.username}:{config.password}".encode()
        ).decode("ascii")
        self._pending: set[Appliance] = set()
        self._versions: Counter[str] = Counter({config.initial_version: len(names)})
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        # the bad batch's draws (`bad_batch_after`), one per install accepted past it
        self._batch_rng = random.Random(f"{config.seed}/bad_batch")
        self._reset_counters()

    # ------------------------------------------------------------------ time helpers
    def epoch(self, t: float) -> float:
        """Monotonic time `t` as epoch seconds."""
        return self._wall0 + (t - self._mono0)

    def epoch_ms(self, t: float) -> int:
        return int((self._wall0 + (t - self._mono0)) * 1000)

    def rng(self, app: Appliance) -> random.Random:
        """The appliance's own seeded RNG (created on first use)."""
        rng = app.rng
        if rng is None:
            rng = app.rng = random.Random(f"{self.config.seed}/{app.name}")
        return rng

    # ------------------------------------------------------------------ counters
    def _reset_counters(self) -> None:
        self.requests = 0
        self.requests_by_kind: dict[str, int] = {}
        self.install_requests = 0
        self.installs_accepted = 0
        self.duplicate_installs = 0
        self.install_responses: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.lost_answers = 0
        self.rest_restarts = 0
        self.bad_batch_errors = 0
        self.probe_requests = 0
        self.probe_responses: Counter[str] = Counter()
        self.in_flight = len(self._heap)
        self.in_flight_by_site: dict[str, int] = dict.fromkeys(self.sites, 0)
        for _, _, site in self._heap:
            self.in_flight_by_site[site] += 1
        self.max_in_flight = self.in_flight
        self.max_in_flight_by_site = dict(self.in_flight_by_site)

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, site = heapq.heappop(heap)
            self.in_flight -= 1
            self.in_flight_by_site[site] -= 1

    # ------------------------------------------------------------------ state machine
    def _set_version(self, app: Appliance, version: str) -> None:
        if version != app.version:
            self._versions[app.version] -= 1
            if not self._versions[app.version]:
                del self._versions[app.version]
            self._versions[version] += 1
            app.version = version

    def advance(self, app: Appliance, now: float) -> None:
        """Apply everything that became due on `app` up to `now`."""
        ins = app.install
        if ins is not None and not ins.rest_done and now >= ins.rest_start:
            # `rest_restart`: the REST service restarted; its in-memory state is gone,
            # the install goes on underneath
            ins.rest_done = True
            app.sessions.clear()
            app.tasks.clear()
            self.rest_restarts += 1
        if ins is not None and not ins.ran and now >= ins.run_end:
            ins.ran = True
            if ins.outcome == OUTCOME_SUCCESS and not ins.reboot:
                self._set_version(app, ins.version)
        if app.ready_at:
            if not app.rebooted and now >= app.reboot_start:
                # the appliance went down: in-memory state is gone
                app.rebooted = True
                app.sessions.clear()
                if self.config.task_after_reboot == "lost":
                    app.tasks.clear()
                if ins is not None and ins.reboot and ins.outcome == OUTCOME_SUCCESS:
                    self._set_version(app, ins.version)
                app.booted_at = app.reboot_end
                app.restored = True
            if now >= app.ready_at:
                app.reboot_start = app.reboot_end = app.ready_at = 0.0
                app.rebooted = False
        if ins is not None and now >= ins.end:
            app.install = None
            self.outcomes[ins.outcome] += 1
            if ins.outcome == OUTCOME_SUCCESS:
                app.succeeded.add(ins.version)
                app.restored = True
                app.flap_until = ins.end + self.params.probe_flap_seconds
                if self.config.reconfigure_fraction > 0:
                    app.reconfigure = self.rng(app).random() < self.config.reconfigure_fraction
            ins = None
        nxt = INF
        if ins is not None:
            nxt = ins.end if ins.ran else ins.run_end
            if not ins.rest_done:
                nxt = min(nxt, ins.rest_start)
        if app.ready_at:
            nxt = min(nxt, app.ready_at if app.rebooted else app.reboot_start)
        app.next_event = nxt
        if nxt == INF:
            self._pending.discard(app)
        else:
            self._pending.add(app)

    def advance_all(self, now: float) -> None:
        for app in list(self._pending):
            if now >= app.next_event:
                self.advance(app, now)
        self._expire(now)

    def rest_down(self, app: Appliance, now: float) -> bool:
        """Is the REST service restarting (`rest_restart`) at `now`? (call `advance` first)"""
        ins = app.install
        return ins is not None and ins.rest_start <= now < ins.rest_end

    def phase(self, app: Appliance, now: float) -> str:
        """The appliance's phase (call `advance` first)."""
        if app.ready_at and now >= app.reboot_start:
            return PHASE_REBOOTING if now < app.reboot_end else PHASE_STARTING
        if app.install is not None:
            return PHASE_INSTALLING
        return PHASE_UP

    # ------------------------------------------------------------------ sessions
    def login(self, app: Appliance, authorization: str | None, now: float) -> str | None:
        """A new session id, or None for bad (or `bad_credentials`) credentials."""
        if authorization is None or BAD_CREDENTIALS in app.faults:
            return None
        if authorization != self._auth_ok and not self._basic_matches(authorization):
            return None
        sessions = app.sessions
        while len(sessions) >= self.config.max_sessions_per_appliance:
            del sessions[next(iter(sessions))]
        sid = secrets.token_hex(16)
        sessions[sid] = now
        return sid

    def _basic_matches(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            text = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = text.partition(":")
        return bool(sep) and secrets.compare_digest(
            f"{user}:{password}", f"{self.config.username}:{self.config.password}"
        )

    def session_ok(self, app: Appliance, sid: str | None, now: float) -> bool:
        if sid is None:
            return False
        created = app.sessions.get(sid)
        if created is None:
            return False
        if SESSION_EXPIRY in app.faults and now - created > self.params.session_expiry_seconds:
            del app.sessions[sid]
            return False
        return True

    def logout(self, app: Appliance, sid: str) -> None:
        app.sessions.pop(sid, None)

    # ------------------------------------------------------------------ tasks
    def _add_task(self, app: Appliance, task: Task) -> None:
        tasks = app.tasks
        while len(tasks) >= self.config.max_tasks_per_appliance:
            del tasks[next(iter(tasks))]
        tasks[task.id] = task

    def repository(self, app: Appliance) -> dict[str, Any]:
        """The update repository as `GET .../repository` shows it (without a password)."""
        repo = app.repository
        if repo is None:
            repo = {"url": "" if NO_REPOSITORY in app.faults else DEFAULT_REPOSITORY,
                    "mounted_iso": False, "username": ""}
        return {k: v for k, v in repo.items() if k != "password"}

    def repository_problem(self, app: Appliance) -> str | None:
        """Why updates cannot be fetched (`no_repository`, `repo_unreachable`), or None."""
        faults = app.faults
        if NO_REPOSITORY not in faults and REPO_UNREACHABLE not in faults:
            return None
        repo = self.repository(app)
        url = repo.get("url")
        if not url and not repo.get("mounted_iso"):
            return "No update repository is configured."
        if REPO_UNREACHABLE in faults:
            return (f"Cannot reach the update repository {url or 'on the mounted ISO'}: "
                    "connection timed out.")
        return None

    def reconfigure_required(self, app: Appliance) -> bool:
        """`reconfigure-required`: after an upgrade (`reconfigure_fraction`), or with
        `reconfigure_pending` until an install succeeded."""
        return app.reconfigure or (RECONFIGURE_PENDING in app.faults and not app.succeeded)

    def retrieve_updates(self, app: Appliance, now: float) -> dict[str, Any]:
        problem = self.repository_problem(app)
        if problem is not None:
            task = Task(KIND_RETRIEVE, now, done=now + self.config.retrieve_seconds,
                        error=problem)
            self._add_task(app, task)
            return self.render_task(app, task, now)
        current = version_key(app.version)
        offered = () if VERSION_NOT_OFFERED in app.faults else self.offered
        updates = [
            {
                "version": v,
                "type": "UPDATE",
                "release_date": "2025-01-15",
                "reboot_required": self.config.reboot_required,
                "severity": "important",
                "summary": f"{self.config.product_name} {v}",
            }
            for v in sorted(offered, key=version_key)
            if version_key(v) > current
        ]
        task = Task(KIND_RETRIEVE, now, done=now + self.config.retrieve_seconds,
                    result={"updates": updates})
        self._add_task(app, task)
        return self.render_task(app, task, now)

    def install(self, app: Appliance, version: str, now: float) -> tuple[int, Any]:
        """POST .../updates/{version}/actions/install -> (status, body or None)."""
        self.install_requests += 1
        status, body = self._install(app, version, now)
        self.install_responses[str(status)] += 1
        if status == 400 and isinstance(body, dict):
            self.install_responses[f"400 {body['error_code']}"] += 1
        return status, body

    def _install(self, app: Appliance, version: str, now: float) -> tuple[int, Any]:
        faults = app.faults
        if FORBIDDEN in faults:
            return 403, response_error(
                E_INSUFFICIENT_RIGHTS, "The user does not have the rights to install updates."
            )
        if INSTALL_500 in faults:
            return 500, response_error(E_INTERNAL, "Unexpected error in the update manager.")
        if version not in self.offered or VERSION_NOT_OFFERED in faults:
            return 404, None
        # `in_progress_error`: this appliance refuses a second install like 'reject' does
        reject = self.config.duplicate_install == "reject" or IN_PROGRESS_ERROR in faults
        active = app.install
        if active is not None:
            # after a REST restart the update manager still knows an install is running
            if reject or active.version != version or active.rest_done:
                return 400, response_error(
                    E_IN_PROGRESS,
                    f"An update ({active.version}) is being installed; try again later.",
                )
            # 'accept': a second task on the install that is already running
            return self._accept(app, active, now, duplicate=True)
        if version == app.version and reject:
            return 400, response_error(
                E_ALREADY_INSTALLED, f"Update {version} is already installed."
            )
        if version_key(version) < version_key(app.version):
            return 400, response_error(
                E_NOT_APPLICABLE,
                f"Update {version} is older than the installed version {app.version}.",
            )
        duplicate = version in app.succeeded
        cfg = self.config
        rng = self.rng(app)
        duration = max(0.0, cfg.install_seconds * (1 + cfg.install_jitter * rng.uniform(-1, 1)))
        message: str | None = None
        problem = self.repository_problem(app)
        if problem is not None:
            # the download fails at once: the install ends as quickly as a retrieve-updates
            duration = cfg.retrieve_seconds
            outcome = OUTCOME_ERROR
            message = f"Cannot download update {version}: {problem}"
        elif INSTALL_ERROR in faults:
            outcome = OUTCOME_ERROR
        elif SILENT_FAILURE in faults:
            outcome = OUTCOME_SILENT
        else:
            outcome = OUTCOME_SUCCESS
        after = self.params.bad_batch_after
        if (outcome == OUTCOME_SUCCESS and after and self.installs_accepted >= after
                and self._batch_rng.random() < self.params.bad_batch_rate):
            outcome = OUTCOME_ERROR  # a bad batch: the failure rate rose part-way
            self.bad_batch_errors += 1
        running = now + cfg.queued_seconds
        run_end = running + duration
        reboot = cfg.reboot_required and outcome != OUTCOME_ERROR
        end = run_end
        if reboot:
            length = (self.params.long_reboot_seconds if LONG_REBOOT in faults
                      else cfg.reboot_seconds)
            app.reboot_start = run_end
            app.reboot_end = run_end + length
            app.ready_at = end = app.reboot_end + cfg.services_starting_seconds
            app.rebooted = False
        rest_start = rest_end = INF
        if REST_RESTART in faults:
            rest_start = running + self.params.rest_restart_at * duration
            # back at the latest when RUNNING ends (the reboot, if any, takes over then)
            rest_end = min(rest_start + self.params.rest_restart_seconds, run_end)
        ins = Install(
            version=version, previous=app.version, accepted=now,
            accepted_wall=self.epoch(now), running=running, run_end=run_end, end=end,
            outcome=outcome, reboot=reboot,
            fail_progress=rng.randint(5, 95) if outcome == OUTCOME_ERROR else 100,
            rest_start=rest_start, rest_end=rest_end, message=message,
        )
        app.install = ins
        self._expire(now)
        heapq.heappush(self._heap, (end, self._seq, app.site))
        self._seq += 1
        self.in_flight += 1
        self.in_flight_by_site[app.site] += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        site_now = self.in_flight_by_site[app.site]
        if site_now > self.max_in_flight_by_site[app.site]:
            self.max_in_flight_by_site[app.site] = site_now
        self.advance(app, now)  # schedules next_event
        return self._accept(app, ins, now, duplicate=duplicate)

    def _accept(self, app: Appliance, ins: Install, now: float,
                *, duplicate: bool) -> tuple[int, Any]:
        self.installs_accepted += 1
        if duplicate:
            self.duplicate_installs += 1
        app.installs_accepted += 1
        app.install_times.append(self.epoch(now))
        app.install_ends.append(self.epoch(ins.end))
        task = Task(KIND_INSTALL, now, install=ins)
        self._add_task(app, task)
        if SPARSE_ACCEPT in app.faults:
            return 202, {"status": QUEUED}
        return 202, self.render_task(app, task, now)

    def lose_answer(self, app: Appliance) -> bool:
        """`lost_answer`: should the answer to the install just accepted be lost?

        True (and counted) once per appliance: for its first accepted install while it has
        the fault (until a reset with versions)."""
        if LOST_ANSWER not in app.faults or app.answer_lost:
            return False
        app.answer_lost = True
        self.lost_answers += 1
        return True

    def restart(self, app: Appliance, now: float) -> tuple[int, Any]:
        """POST /appliance/actions/restart: 204, then down for reboot_seconds."""
        if app.install is not None:
            return 400, response_error(
                E_IN_PROGRESS, "An update is being installed; try again later."
            )
        length = (self.params.long_reboot_seconds if LONG_REBOOT in app.faults
                  else self.config.reboot_seconds)
        app.reboot_start = now
        app.reboot_end = now + length
        app.ready_at = app.reboot_end + self.config.services_starting_seconds
        app.rebooted = False
        self.advance(app, now)
        return 204, None

    # ------------------------------------------------------------------ rendering
    def render_task(self, app: Appliance, task: Task, now: float) -> dict[str, Any]:
        """The Task as the appliance shows it (API 2.0, or the fault's variant)."""
        error: dict[str, Any] | None = None
        complete: float | None = None
        result: dict[str, Any] | None = None
        ins = task.install
        if ins is None:  # retrieve-updates
            if now < task.done:
                status, progress = RUNNING, int(100 * (now - task.created) /
                                                max(task.done - task.created, 1e-9))
            elif task.error is not None:
                status, progress, complete = ERROR, 0, task.done
                error = {"message": task.error,
                         "details": "See /opt/vmware/var/log/vami/updatecli.log on the "
                                    "appliance."}
            else:
                status, progress, complete, result = SUCCESS, 100, task.done, task.result
            description = "Retrieve available updates"
        else:
            description = f"Install update {ins.version}"
            if now < ins.running:
                status, progress = QUEUED, 0
            elif now < ins.run_end:
                frac = (now - ins.running) / max(ins.run_end - ins.running, 1e-9)
                status, progress = RUNNING, int(min(ins.fail_progress, 99) * frac)
            elif ins.outcome == OUTCOME_ERROR:
                status, progress, complete = ERROR, ins.fail_progress, ins.run_end
                error = {
                    "message": ins.message or f"Installation of update {ins.version} "
                                              "failed: post-install script exited with "
                                              "status 1.",
                    "details": "See /opt/vmware/var/log/vami/updatecli.log on the appliance.",
                }
            else:
                status, progress, complete = SUCCESS, 100, ins.run_end
                result = {"version": ins.version, "reboot_required": ins.reboot}
        faults = app.faults
        if WRONG_TYPES in faults:
            body: dict[str, Any] = {
                "id": task.id, "description": ["not", "a", "string"], "type": 42,
                "status": 7, "progress": "fifty", "start_time": "yesterday",
                "complete_time": {"when": "later"},
            }
            if error is not None:
                body["error"] = "it broke"
            return body
        kind = task.kind
        if ins is not None and OPAQUE_TASKS in faults:
            description, kind = OPAQUE_DESCRIPTION, OPAQUE_TYPE
        body = {
            "id": task.id, "description": description, "type": kind, "status": status,
            "progress": progress,
        }
        if API_V1_TASKS in faults:
            body["start_time"] = self._v1_time(task.created)
            if complete is not None:
                body["complete_time"] = self._v1_time(complete)
            if error is not None:
                body["error"] = _java_exception(error["message"])
        else:
            body["start_time"] = self.epoch_ms(task.created)
            if complete is not None:
                body["complete_time"] = self.epoch_ms(complete)
            if error is not None:
                body["error"] = error
        if result is not None:
            body["result"] = result
        return body

    def _v1_time(self, t: float) -> str:
        if self.params.v1_time_format == "epoch_ms":
            return str(self.epoch_ms(t))
        stamp = datetime.fromtimestamp(self.epoch(t), tz=UTC)
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"

    def list_tasks(self, app: Appliance, query: Mapping[str, str],
                   now: float) -> tuple[int, Any]:
        try:
            limit = int(query.get("limit", "100"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            return 400, response_error(E_INVALID_PARAMETER, "limit and offset must be integers")
        if limit < 0 or offset < 0:
            return 400, response_error(E_INVALID_PARAMETER, "limit and offset must be >= 0")
        order = query.get("order_by", "asc").lower()
        if order not in ("asc", "desc"):
            return 400, response_error(E_INVALID_PARAMETER, "order_by must be asc or desc")
        items = [self.render_task(app, t, now) for t in app.tasks.values()]
        prop, value = query.get("filter_property"), query.get("filter")
        if prop and value is not None:
            items = [t for t in items if str(t.get(prop)) == value]
        sort_by = query.get("sort_by") or "start_time"
        items.sort(key=lambda t: _sort_key(t.get(sort_by)), reverse=order == "desc")
        total = len(items)
        page = items[offset:offset + min(limit, 1000)]
        return 200, {"list": page, "_meta": {"total": total, "limit": limit, "offset": offset,
                                             "errors": []}}

    def appliance_info(self, app: Appliance, now: float) -> dict[str, Any]:
        build = app.version.rsplit("-", 1)[-1]
        return {
            "hostname": f"{app.name}.sim.invalid",
            "product_name": self.config.product_name,
            "product_build_number": build,
            "appliance_version": app.version,
            "appliance_build_number": build,
            "system_information": {
                "os": "VMware Photon OS 4.0",
                "site": app.site,
                "uptime_seconds": int(now - app.booted_at),
            },
        }

    def services(self, app: Appliance, now: float) -> list[dict[str, Any]]:
        starting = (self.config.services_starting_mode == "not_running"
                    and self.phase(app, now) == PHASE_STARTING)
        down = SERVICES_DOWN in app.faults and not app.restored
        return [
            {"id": sid, "name": sid, "description": desc, "startup_type": "AUTOMATIC",
             "is_running": not (starting and key) and not (down and sid == DOWN_SERVICE)}
            for sid, desc, key in SERVICES
        ]

    def probe(self, app: Appliance, now: float) -> tuple[int, dict[str, Any]]:
        """The appliance's health page (`GET /{name}/health`), once it answers at all (the
        server handles the reboot): 200 `{"status": "ok", ...}` when healthy; 503
        `{"status": "unavailable", ...}` while a key service is not running, with
        `probe_failing`, or with `probe_flapping` for `probe_flap_seconds` after it came
        back up on a new version. Counted in `probe_requests` / `probe_responses`."""
        app.probe_requests += 1
        self.probe_requests += 1
        running = {s["id"]: s["is_running"] for s in self.services(app, now)}
        reason: str | None = None
        if not all(running[sid] for sid in KEY_SERVICES):
            reason = "key services not running"
        elif PROBE_FAILING in app.faults:
            reason = "health check failing"
        elif PROBE_FLAPPING in app.faults and now < app.flap_until:
            reason = "health check failing after the upgrade"
        status = 200 if reason is None else 503
        self.probe_responses[str(status)] += 1
        body: dict[str, Any] = {"status": "ok" if reason is None else "unavailable",
                                "name": app.name, "version": app.version}
        if reason is not None:
            body["reason"] = reason
        return status, body

    def probe_unanswered(self, app: Appliance, how: str) -> None:
        """Count a probe the appliance itself did not answer (`dropped`: rebooting in `drop`
        mode, or `hang`; `503`: rebooting in `503` mode, or services starting in `503`
        mode)."""
        app.probe_requests += 1
        self.probe_requests += 1
        self.probe_responses[how] += 1

    # ------------------------------------------------------------------ control
    def set_faults(self, name: str, faults: Iterable[str]) -> frozenset[str]:
        """Replace the faults of appliance `name` (KeyError if unknown)."""
        app = self.by_name[name]
        app.faults = check_faults(faults)
        app.restored = False  # `services_down` given now takes effect now
        return app.faults

    def version_of(self, name: str) -> str:
        app = self.by_name[name]
        now = self.clock()
        if now >= app.next_event:
            self.advance(app, now)
        return app.version

    def reset(self, *, versions: bool = False) -> None:
        """Clear the counters; with `versions`, also put every appliance back on the
        initial version with no install, reboot or task in progress."""
        now = self.clock()
        self.advance_all(now)
        if versions:
            for app in self.appliances:
                app.install = None
                app.tasks.clear()
                app.reboot_start = app.reboot_end = app.ready_at = 0.0
                app.rebooted = False
                app.next_event = INF
                app.succeeded.clear()
                app.reconfigure = False
                app.answer_lost = False
                app.restored = False
                app.flap_until = 0.0
                app.version = self.config.initial_version
            self._pending.clear()
            self._heap.clear()
            self._versions = Counter({self.config.initial_version: len(self.appliances)})
        for app in self.appliances:
            app.installs_accepted = 0
            app.install_times = []
            app.install_ends = []
            app.probe_requests = 0
        self._reset_counters()

    def appliance_stats(self, app: Appliance, now: float) -> dict[str, Any]:
        return {
            "site": app.site,
            "version": app.version,
            "phase": self.phase(app, now),
            "installs_accepted": app.installs_accepted,
            "install_times": list(app.install_times),
            "install_ends": list(app.install_ends),
            "probe_requests": app.probe_requests,
            "faults": sorted(app.faults),
        }

    def stats(self, *, include_appliances: bool = True) -> dict[str, Any]:
        now = self.clock()
        self.advance_all(now)
        fault_counts: Counter[str] = Counter()
        for app in self.appliances:
            if app.faults:
                fault_counts.update(app.faults)
        result: dict[str, Any] = {
            "appliances_total": len(self.appliances),
            "sites": list(self.sites),
            "install_requests": self.install_requests,
            "installs_accepted": self.installs_accepted,
            "duplicate_installs": self.duplicate_installs,
            "lost_answers": self.lost_answers,
            "rest_restarts": self.rest_restarts,
            "bad_batch_errors": self.bad_batch_errors,
            "probe_requests": self.probe_requests,
            "probe_responses": dict(self.probe_responses),
            "install_responses": dict(self.install_responses),
            "outcomes": dict(self.outcomes),
            "in_flight": self.in_flight,
            "in_flight_by_site": dict(self.in_flight_by_site),
            "max_in_flight": self.max_in_flight,
            "max_in_flight_by_site": dict(self.max_in_flight_by_site),
            "versions": dict(self._versions),
            "requests": self.requests,
            "requests_by_kind": dict(self.requests_by_kind),
            "faults": dict(fault_counts),
            "profile": self.config.profile.name,
            "params": asdict(self.params),
        }
        if include_appliances:
            result["appliances"] = {
                app.name: self.appliance_stats(app, now) for app in self.appliances
            }
        return result


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, bool) or value is None:
        return (2, 0.0, str(value))
    if isinstance(value, int | float):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _java_exception(message: str) -> dict[str, Any]:
    """An API-1.0.0 style `error`: a serialized Java exception."""
    cause = {
        "message": "Process exited with status 1",
        "localized_message": "Process exited with status 1",
        "stack_trace": [
            {"declaring_class": "com.vmware.vami.update.ScriptRunner",
             "method_name": "run", "file_name": "ScriptRunner.java", "line_number": 88},
        ],
        "cause": None,
        "suppressed": [],
    }
    return {
        "message": message,
        "localized_message": message,
        "stack_trace": [
            {"declaring_class": "com.vmware.hms.update.UpdateManager",
             "method_name": "install", "file_name": "UpdateManager.java", "line_number": 412},
            {"declaring_class": "com.vmware.hms.task.TaskRunner",
             "method_name": "call", "file_name": "TaskRunner.java", "line_number": 57},
        ],
        "cause": cause,
        "suppressed": [],
    }
