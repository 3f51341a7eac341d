"""The HTTP side: one aiohttp server serving every simulated appliance on one port.

Appliance `sim-00001` lives under `http://HOST:PORT/sim-00001/api/rest/configure/v1`; its
health page (for an HTTP probe, no session needed) is `http://HOST:PORT/sim-00001/health`.
There is a single low-level handler (no per-appliance routes): it splits the path, finds
the appliance in a dict, applies the request-level faults and the reboot phases, and
answers from `Fleet`. `/_sim/...` is the simulator's own control API (ground truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from orchestrator.simulator.config import API_PREFIX, SimulatorConfig
from orchestrator.simulator.faults import (
    HANG,
    MALFORMED_JSON,
    POLL_5XX,
    POLL_503,
    SLOW,
    FaultProfileError,
)
from orchestrator.simulator.fleet import (
    E_INTERNAL,
    E_INVALID_REQUEST,
    Appliance,
    Fleet,
    response_error,
)

INVENTORY_HEADER: tuple[str, ...] = (
    "name", "base_url", "site", "tags", "timezone", "credentials_ref", "tls_ca_file",
    "tls_thumbprint",
)
DEFAULT_CREDENTIALS_REF = "env:APPLIANCE_SIM_CREDENTIALS"
DEFAULT_BACKLOG = 4096

_JSON = "application/json"
_TEXT = "text/plain"
_PREFIX_LEN = len(API_PREFIX)
_HEALTH = "/health"
_INSTALL_HEAD = "/appliance/update-manager/updates/"
_INSTALL_TAIL = "/actions/install"

# path (under the base URL) -> method -> request kind
_STATIC: dict[str, dict[str, str]] = {
    "/session": {"POST": "login", "GET": "get_session", "DELETE": "logout"},
    "/appliance": {"GET": "get_appliance"},
    "/appliance/update-manager/actions/retrieve-updates": {"POST": "retrieve_updates"},
    "/appliance/update-manager/repository": {"GET": "get_repository",
                                              "PUT": "put_repository"},
    "/appliance/actions/restart": {"POST": "restart"},
    "/appliance/configuration-manager/reconfigure-required": {"GET": "reconfigure_required"},
    "/tasks": {"GET": "list_tasks"},
    "/services": {"GET": "list_services"},
}
_TASK = {"GET": "get_task"}
_SERVICE = {"GET": "get_service"}
_INSTALL = {"POST": "install"}


def _route(sub: str) -> tuple[dict[str, str] | None, str]:
    """(method -> kind, path argument) for the path under the base URL."""
    if len(sub) > 1 and sub.endswith("/"):
        sub = sub.rstrip("/")
    methods = _STATIC.get(sub)
    if methods is not None:
        return methods, ""
    if sub.startswith("/tasks/"):
        arg = sub[7:]
        return (_TASK, arg) if arg and "/" not in arg else (None, "")
    if sub.startswith("/services/"):
        arg = sub[10:]
        return (_SERVICE, arg) if arg and "/" not in arg else (None, "")
    if sub.startswith(_INSTALL_HEAD) and sub.endswith(_INSTALL_TAIL):
        arg = sub[len(_INSTALL_HEAD):-len(_INSTALL_TAIL)]
        return (_INSTALL, arg) if arg and "/" not in arg else (None, "")
    return None, ""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json(status: int, value: Any) -> web.Response:
    return web.Response(status=status, body=_dumps(value), content_type=_JSON)


def _empty(status: int) -> web.Response:
    return web.Response(status=status)


def _drop(request: web.BaseRequest) -> web.StreamResponse:
    """Close the connection without an answer (the returned response is never sent)."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return web.Response(status=503)


def _unavailable() -> web.Response:
    return web.Response(status=503, text="upstream connect error or disconnect/reset "
                        "before headers. reset reason: connection failure",
                        content_type=_TEXT)


class Simulator:
    """A simulated fleet plus its HTTP server. Use `run_simulator` to start one."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config if config is not None else SimulatorConfig()
        if clock is None:
            self.fleet = Fleet(self.config)
        else:
            self.fleet = Fleet(self.config, clock=clock)
        self._clock = self.fleet.clock
        self._runner: web.ServerRunner | None = None
        self._released: asyncio.Event | None = None
        self._url: str | None = None
        self._host = "127.0.0.1"
        self._port = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    backlog: int = DEFAULT_BACKLOG) -> None:
        """Listen on host:port (0: a free port)."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        self._released = asyncio.Event()
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=backlog, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._host = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        shown = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{shown}:{self._port}"

    async def stop(self) -> None:
        """Release held (`hang`) requests, then close every connection."""
        if self._released is not None:
            self._released.set()
        runner, self._runner = self._runner, None
        if runner is not None:
            await asyncio.sleep(0)
            await runner.cleanup()

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (after start)."""
        if self._url is None:
            raise RuntimeError("the simulator is not running")
        return self._url

    @property
    def port(self) -> int:
        return self._port

    # ------------------------------------------------------------------ Python API
    @property
    def names(self) -> list[str]:
        return [a.name for a in self.fleet.appliances]

    @property
    def sites(self) -> list[str]:
        return list(self.fleet.sites)

    def base_url(self, name: str) -> str:
        if name not in self.fleet.by_name:
            raise KeyError(name)
        return f"{self.url}/{name}{API_PREFIX}"

    def site_of(self, name: str) -> str:
        return self.fleet.by_name[name].site

    def version_of(self, name: str) -> str:
        return self.fleet.version_of(name)

    def faults_of(self, name: str) -> frozenset[str]:
        return self.fleet.by_name[name].faults

    def set_faults(self, name: str, faults: Iterable[str]) -> None:
        """Replace the faults of `name` (KeyError: unknown appliance; ValueError: fault)."""
        self.fleet.set_faults(name, faults)

    def stats(self, include_appliances: bool = True) -> dict[str, Any]:
        """The ground truth, as `GET /_sim/stats` answers it."""
        return self.fleet.stats(include_appliances=include_appliances)

    def reset(self, versions: bool = False) -> None:
        """Clear the counters (`versions=True`: every appliance back on the initial one)."""
        self.fleet.reset(versions=versions)

    def write_inventory(
        self,
        path: str | Path,
        *,
        credentials_ref: str = DEFAULT_CREDENTIALS_REF,
        tags: Sequence[str] = ("sim",),
        timezone: str = "",
    ) -> Path:
        """Write a CSV inventory of the fleet importable by `orchestrator appliances import`."""
        path = Path(path)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(INVENTORY_HEADER)
            tag_text = ";".join(tags)
            for app in self.fleet.appliances:
                writer.writerow([
                    app.name, self.base_url(app.name), app.site, tag_text, timezone,
                    credentials_ref, "", "",
                ])
        return path

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_sim/"):
            return await self._control(request, path)
        fleet = self.fleet
        fleet.requests += 1
        slash = path.find("/", 1)
        app = fleet.by_name.get(path[1:slash]) if slash > 0 else None
        if app is not None and request.method == "GET" and path.endswith(_HEALTH) \
                and len(path) == slash + len(_HEALTH):
            return await self._probe(app, request)
        if app is None or not path.startswith(API_PREFIX, slash):
            return _empty(404)
        methods, arg = _route(path[slash + _PREFIX_LEN:])
        if methods is None:
            fleet.requests_by_kind["unknown"] = fleet.requests_by_kind.get("unknown", 0) + 1
            return _empty(404)
        method = request.method
        kind = methods.get(method)
        if kind is None:
            return _empty(405)
        by_kind = fleet.requests_by_kind
        by_kind[kind] = by_kind.get(kind, 0) + 1

        faults = app.faults
        if faults:
            released = self._released
            if HANG in faults:
                if released is not None:
                    await released.wait()
                return _drop(request)
            if SLOW in faults and released is not None and not released.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released.wait(), fleet.params.slow_seconds)

        now = self._clock()
        if now >= app.next_event:
            fleet.advance(app, now)
        if app.ready_at and now >= app.reboot_start:
            if now < app.reboot_end:  # rebooting
                if self.config.reboot_mode == "drop":
                    return _drop(request)
                return _unavailable()
            if self.config.services_starting_mode == "503":
                return _unavailable()
        if app.install is not None and fleet.rest_down(app, now):
            # `rest_restart`: the REST service restarts while the install goes on
            if self.config.reboot_mode == "drop":
                return _drop(request)
            return _unavailable()

        is_get = method == "GET"
        if faults and is_get:
            if POLL_5XX in faults or POLL_503 in faults:
                rng = fleet.rng(app)
                p = fleet.params.poll_error_probability
                if POLL_5XX in faults and rng.random() < p:
                    if rng.random() < 0.5:
                        return _json(500, response_error(E_INTERNAL, "Internal server error."))
                    return web.Response(status=502, text="Bad Gateway", content_type=_TEXT)
                if POLL_503 in faults and rng.random() < p:
                    return _unavailable()

        if kind == "login":
            sid = fleet.login(app, request.headers.get("Authorization"), now)
            if sid is None:
                return _empty(401)
            return _json(200, {"session_id": sid})
        sid = request.headers.get("x-dr-session")
        if not fleet.session_ok(app, sid, now):
            return _empty(401)
        assert sid is not None

        if kind == "put_repository":
            status, body = await self._put_repository(app, request)
        else:
            status, body = self._answer(kind, app, arg, sid, request, now)
            if kind == "install" and status == 202 and faults and fleet.lose_answer(app):
                # `lost_answer`: accepted, but the connection goes before the answer
                return _drop(request)
        if body is None:
            return _empty(status)
        data = _dumps(body)
        if (is_get and status == 200 and MALFORMED_JSON in faults
                and fleet.rng(app).random() < fleet.params.malformed_probability):
            data = data[: max(1, len(data) // 2)]
        return web.Response(status=status, body=data, content_type=_JSON)

    def _answer(self, kind: str, app: Appliance, arg: str, sid: str,
                request: web.BaseRequest, now: float) -> tuple[int, Any]:
        fleet = self.fleet
        if kind == "get_task":
            task = app.tasks.get(arg)
            if task is None:
                return 404, None
            body = fleet.render_task(app, task, now)
            body["_meta"] = {"errors": []}
            return 200, body
        if kind == "get_appliance":
            return 200, fleet.appliance_info(app, now)
        if kind == "install":
            return fleet.install(app, arg, now)
        if kind == "retrieve_updates":
            return 202, fleet.retrieve_updates(app, now)
        if kind == "list_tasks":
            return fleet.list_tasks(app, request.query, now)
        if kind == "list_services":
            return 200, fleet.services(app, now)
        if kind == "get_service":
            for service in fleet.services(app, now):
                if service["id"] == arg:
                    return 200, service
            return 404, None
        if kind == "get_session":
            return 200, {"username": self.config.username}
        if kind == "logout":
            fleet.logout(app, sid)
            return 204, None
        if kind == "reconfigure_required":
            return 200, {"value": fleet.reconfigure_required(app)}
        if kind == "get_repository":
            return 200, fleet.repository(app)
        if kind == "restart":
            return fleet.restart(app, now)
        return 404, None  # pragma: no cover - every kind is handled above

    async def _probe(self, app: Appliance, request: web.BaseRequest) -> web.StreamResponse:
        """`GET /{name}/health`: the appliance's health page (see `Fleet.probe`). Not counted
        in `requests`; `hang` and `slow` apply, and so does a reboot (like the API)."""
        fleet = self.fleet
        faults = app.faults
        released = self._released
        if HANG in faults:
            if released is not None:
                await released.wait()
            fleet.probe_unanswered(app, "dropped")
            return _drop(request)
        if SLOW in faults and released is not None and not released.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), fleet.params.slow_seconds)
        now = self._clock()
        if now >= app.next_event:
            fleet.advance(app, now)
        if app.ready_at and now >= app.reboot_start and (
                now < app.reboot_end or self.config.services_starting_mode == "503"):
            if now < app.reboot_end and self.config.reboot_mode == "drop":
                fleet.probe_unanswered(app, "dropped")
                return _drop(request)
            fleet.probe_unanswered(app, "503")
            return _unavailable()
        status, body = fleet.probe(app, now)
        return _json(status, body)

    async def _put_repository(self, app: Appliance,
                              request: web.BaseRequest) -> tuple[int, Any]:
        try:
            data = await request.json()
        except ValueError:
            return 400, response_error(E_INVALID_REQUEST, "The body is not valid JSON.")
        allowed = {"url", "mounted_iso", "username", "password"}
        if not isinstance(data, dict) or set(data) - allowed:
            return 400, response_error(
                E_INVALID_REQUEST, "Expected an object with url, mounted_iso, username, password."
            )
        app.repository = data
        return 204, None

    # ------------------------------------------------------------------ /_sim control API
    async def _control(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        parts = [p for p in path.split("/") if p][1:]
        method = request.method
        try:
            if parts == ["health"] and method == "GET":
                return _json(200, {"ok": True, "appliances": len(self.fleet.appliances)})
            if parts == ["stats"] and method == "GET":
                flag = request.query.get("appliances", "1").lower()
                include = flag not in ("0", "false", "no")
                return _json(200, self.stats(include_appliances=include))
            if parts == ["reset"] and method == "POST":
                versions = False
                if request.can_read_body:
                    body = await request.json()
                    if not isinstance(body, dict):
                        raise ValueError("expected a JSON object")
                    versions = bool(body.get("versions", False))
                self.reset(versions=versions)
                return _json(200, {"reset": True, "versions": versions})
            if parts == ["config"] and method == "GET":
                return _json(200, self._config_view())
            if len(parts) >= 2 and parts[0] == "appliances":
                app = self.fleet.by_name.get(parts[1])
                if app is None:
                    return _json(404, {"error": f"no appliance {parts[1]!r}"})
                now = self._clock()
                if now >= app.next_event:
                    self.fleet.advance(app, now)
                if len(parts) == 2 and method == "GET":
                    stats = self.fleet.appliance_stats(app, now)
                    return _json(200, {"name": app.name, **stats})
                if parts[2:] == ["faults"] and method == "GET":
                    return _json(200, {"name": app.name, "faults": sorted(app.faults)})
                if parts[2:] == ["faults"] and method in ("POST", "PUT"):
                    body = await request.json()
                    faults = body.get("faults") if isinstance(body, dict) else None
                    if isinstance(faults, str):
                        faults = [faults]
                    if not isinstance(faults, list):
                        raise ValueError('expected {"faults": [...]}')
                    self.set_faults(app.name, faults)
                    return _json(200, {"name": app.name, "faults": sorted(app.faults)})
        except FaultProfileError as exc:
            return _json(400, {"error": str(exc)})
        except ValueError as exc:  # includes JSONDecodeError
            return _json(400, {"error": str(exc)})
        return _json(404, {"error": f"no control endpoint {method} {path}"})

    def _config_view(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "appliances": cfg.appliances,
            "sites": cfg.sites,
            "seed": cfg.seed,
            "queued_seconds": cfg.queued_seconds,
            "install_seconds": cfg.install_seconds,
            "install_jitter": cfg.install_jitter,
            "reboot_required": cfg.reboot_required,
            "reboot_seconds": cfg.reboot_seconds,
            "reboot_mode": cfg.reboot_mode,
            "task_after_reboot": cfg.task_after_reboot,
            "services_starting_seconds": cfg.services_starting_seconds,
            "services_starting_mode": cfg.services_starting_mode,
            "retrieve_seconds": cfg.retrieve_seconds,
            "duplicate_install": cfg.duplicate_install,
            "reconfigure_fraction": cfg.reconfigure_fraction,
            "initial_version": cfg.initial_version,
            "available_versions": list(cfg.available_versions),
            "profile": cfg.profile.to_dict(),
        }


@asynccontextmanager
async def run_simulator(
    config: SimulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    backlog: int = DEFAULT_BACKLOG,
) -> AsyncIterator[Simulator]:
    """Start a simulator on host:port (0: a free port), stop it on exit."""
    sim = Simulator(config)
    await sim.start(host, port, backlog=backlog)
    try:
        yield sim
    finally:
        await sim.stop()
