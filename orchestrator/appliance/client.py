"""Async client of the appliance configuration REST API.

One `ApplianceHttp` per process owns the single `aiohttp.ClientSession` (one connection
pool for the whole fleet) and hands out one `ApplianceClient` per appliance:

    async with ApplianceHttp(settings) as http:
        client = http.client(target)          # credentials from target.credentials_ref
        task = await client.install("9.0.1-20020")

Sessions: the client logs in lazily (`POST /session` with HTTP Basic auth), sends
`x-dr-session` on every other call, logs in again when the session is older than
`appliance_session_max_age`, and on a 401 logs in again once and repeats the call (a second
401 raises `Unauthorized`). A 401 on the login itself is `Unauthorized` (wrong
credentials) and is not retried. Concurrent callers on one client share one login.

Retries: calls that are safe to repeat (GETs, the login) are retried on transient errors
(unreachable, timeout, 5xx) with exponential backoff and full jitter, `retries` extra
attempts at most. Calls that start something on the appliance (`install`,
`retrieve_updates`) are retried only when the request certainly never left this process:
the connection could not be opened (`aiohttp.ClientConnectorError`, or a timeout while
connecting), or the login before it failed, or the appliance refused the session (401)
before running the call. Once the request may have been sent, a lost or failed answer is
raised as is: whether an install was accepted is for the caller to find out (from
`list_tasks()` and the appliance's version), never by sending it again. (This is
conservative: a POST on a pooled keep-alive connection that the appliance had just closed
fails as "server disconnected" and counts as possibly sent.)

Every call takes `request_timeout=` (seconds, per HTTP request, login included) to
override `appliance_request_timeout`, e.g. for short polls while an appliance reboots.

Nothing here logs or puts into an exception the password, the Authorization header or the
session id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp

from orchestrator.appliance import transport as tx
from orchestrator.appliance.credentials import Credentials, resolve_credentials
from orchestrator.appliance.errors import (
    ApplianceError,
    ApplianceHttpError,
    ApplianceTimeout,
    BadRequest,
    Forbidden,
    MalformedResponse,
    NotFound,
    ServerError,
    ServiceUnavailable,
    TlsError,
    Unauthorized,
    Unreachable,
    response_error,
)
from orchestrator.appliance.models import (
    ApplianceInfo,
    Service,
    Task,
    parse_appliance,
    parse_service,
    parse_task,
)
from orchestrator.logs import get_logger
from orchestrator.settings import Settings

log = get_logger("orchestrator.appliance")

SESSION_HEADER = "x-dr-session"
HTTP_CLIENTS = ("stream", "aiohttp")
_HEX = frozenset("0123456789abcdef")
_T = TypeVar("_T")
_COMMON_HEADERS = "Accept: application/json\r\nUser-Agent: orchestrator\r\n"

SslSetting = bool | ssl.SSLContext | aiohttp.Fingerprint


@dataclass(frozen=True)
class ApplianceTarget:
    """Where an appliance answers and how to trust it.

    `base_url` is the whole API prefix, e.g. `https://vr01.example.com/api/rest/configure/v1`.
    `tls_thumbprint` is the SHA-256 of the server certificate (64 hex digits; colons and
    upper case are accepted and normalized). When set it is pinned *instead of* the
    certificate chain (the usual case of a self-signed appliance certificate);
    `tls_ca_file` verifies the chain against that CA bundle instead of the system one.
    """

    name: str
    base_url: str
    credentials_ref: str | None = None
    tls_ca_file: str | None = None
    tls_thumbprint: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("appliance name is empty")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{self.name}: base_url must be an http(s) URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                f"{self.name}: base_url must not hold credentials; use credentials_ref"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.tls_thumbprint is not None:
            thumb = self.tls_thumbprint.replace(":", "").replace(" ", "").lower()
            if len(thumb) != 64 or not set(thumb) <= _HEX:
                raise ValueError(
                    f"{self.name}: tls_thumbprint must be a SHA-256 digest (64 hex digits)"
                )
            object.__setattr__(self, "tls_thumbprint", thumb)


class _Attempt:
    """State of one attempt of a call: whether its main request may have been sent."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = False


class ApplianceHttp:
    """The process-wide HTTP machinery: one ClientSession, TLS contexts, clients, counters.

    Keyword arguments override the settings (handy in tests). `clock` is the monotonic
    clock used for session ages. `default_credentials` serve appliances whose target has
    no `credentials_ref`; `environ` replaces `os.environ` for `env:` references.

    Counters: `requests` counts every HTTP request sent (retries and logins included);
    `errors_by_kind` counts every failed attempt by `ApplianceError.kind`; `retried`
    counts the attempts that were repeated.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        connect_timeout: float | None = None,
        request_timeout: float | None = None,
        max_connections: int | None = None,
        max_connections_per_host: int | None = None,
        session_max_age: float | None = None,
        verify_tls: bool | None = None,
        retries: int | None = None,
        backoff_base: float = 0.2,
        backoff_cap: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        default_credentials: Credentials | None = None,
        environ: Mapping[str, str] | None = None,
        http_client: str | None = None,
    ) -> None:
        s = settings if settings is not None else Settings()
        http_client = http_client if http_client is not None else s.appliance_http_client
        if http_client not in HTTP_CLIENTS:
            raise ValueError(
                f"http_client {http_client!r} is not one of {', '.join(HTTP_CLIENTS)}"
            )
        self.http_client = http_client
        self.connect_timeout = (
            connect_timeout if connect_timeout is not None else s.appliance_connect_timeout
        )
        self.request_timeout = (
            request_timeout if request_timeout is not None else s.appliance_request_timeout
        )
        self.max_connections = (
            max_connections if max_connections is not None else s.appliance_max_connections
        )
        self.max_connections_per_host = (
            max_connections_per_host
            if max_connections_per_host is not None
            else s.appliance_max_connections_per_host
        )
        self.session_max_age = (
            session_max_age if session_max_age is not None else s.appliance_session_max_age
        )
        self.verify_tls = verify_tls if verify_tls is not None else s.appliance_verify_tls
        retries = s.appliance_retries if retries is None else retries
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock
        self.default_credentials = default_credentials
        self.environ = environ
        self.requests = 0
        self.retried = 0
        self.errors_by_kind: Counter[str] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self._pool: tx.StreamPool | None = None
        self._clients: dict[str, ApplianceClient] = {}
        self._ca_contexts: dict[str, ssl.SSLContext] = {}
        self._tls_contexts: dict[bool, ssl.SSLContext] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        if self._session is not None or self._pool is not None:
            return
        if self.http_client == "stream":
            self._pool = tx.StreamPool(
                limit=self.max_connections,
                limit_per_host=self.max_connections_per_host,
                connect_timeout=self.connect_timeout,
            )
            return
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            limit_per_host=self.max_connections_per_host,
            ssl=True if self.verify_tls else False,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=self.request_timeout, sock_connect=self.connect_timeout
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"Accept": "application/json", "User-Agent": "orchestrator"},
            raise_for_status=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        pool, self._pool = self._pool, None
        self._clients.clear()
        if session is not None:
            await session.close()
        if pool is not None:
            await pool.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (`http_client="aiohttp"`)."""
        if self._session is None or self._session.closed:
            raise RuntimeError(
                "ApplianceHttp is not started with http_client='aiohttp' "
                "(use `async with ApplianceHttp(...)`)"
            )
        return self._session

    @property
    def pool(self) -> tx.StreamPool:
        """The connection pool (`http_client="stream"`, the default)."""
        if self._pool is None:
            raise RuntimeError(
                "ApplianceHttp is not started with http_client='stream' "
                "(use `async with ApplianceHttp(...)`)"
            )
        return self._pool

    # --- clients -------------------------------------------------------------------------

    def client(
        self, target: ApplianceTarget, credentials: Credentials | None = None
    ) -> ApplianceClient:
        """The client of this appliance, cached by name so that its session is reused.

        Credentials come from `target.credentials_ref` (else `default_credentials`) unless
        given; an unresolvable reference raises `CredentialsError`.
        """
        cached = self._clients.get(target.name)
        if (
            cached is not None
            and cached.target == target
            and (credentials is None or credentials == cached.credentials)
        ):
            return cached
        if credentials is None:
            credentials = resolve_credentials(
                target.credentials_ref, environ=self.environ, default=self.default_credentials
            )
        client = ApplianceClient(self, target, credentials)
        self._clients[target.name] = client
        return client

    def forget(self, name: str) -> None:
        """Drop the cached client of an appliance (its session is not logged out)."""
        self._clients.pop(name, None)

    async def logout_all(self, *, request_timeout: float = 5.0) -> None:
        """Best effort: log out every client that holds a session; errors are ignored."""
        clients = [c for c in self._clients.values() if c.has_session]
        results = await asyncio.gather(
            *(c.logout(request_timeout=request_timeout) for c in clients), return_exceptions=True
        )
        for client, result in zip(clients, results, strict=True):
            if isinstance(result, Exception):
                log.debug("appliance_logout_failed", appliance=client.name, error=str(result))

    # --- TLS -------------------------------------------------------------------------------

    def ssl_for(self, target: ApplianceTarget) -> SslSetting:
        """The `ssl=` argument of aiohttp for this appliance."""
        if target.tls_thumbprint:
            return aiohttp.Fingerprint(bytes.fromhex(target.tls_thumbprint))
        if target.tls_ca_file:
            return self._ca_context(target)
        return True if self.verify_tls else False

    def endpoint_for(self, target: ApplianceTarget) -> tx.Endpoint:
        """Where the stream pool connects for this appliance, with its TLS policy (the same
        as `ssl_for`: a pinned thumbprint replaces the chain, a CA file replaces the
        system's, `verify_tls` false trusts any certificate)."""
        parts = urlsplit(target.base_url)
        host = parts.hostname or ""
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        default_port = parts.port is None or parts.port == (443 if https else 80)
        shown = f"[{host}]" if ":" in host else host
        host_header = shown if default_port else f"{shown}:{port}"
        if not https:
            return tx.Endpoint("http", host, port, host_header)
        fingerprint: bytes | None = None
        if target.tls_thumbprint:
            context, key = self._tls_context(verify=False), "pinned"
            fingerprint = bytes.fromhex(target.tls_thumbprint)
        elif target.tls_ca_file:
            context, key = self._ca_context(target), f"ca:{target.tls_ca_file}"
        else:
            context, key = self._tls_context(self.verify_tls), f"verify:{self.verify_tls}"
        return tx.Endpoint("https", host, port, host_header, context, key, fingerprint)

    def _tls_context(self, verify: bool) -> ssl.SSLContext:
        context = self._tls_contexts.get(verify)
        if context is None:
            context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._tls_contexts[verify] = context
        return context

    def _ca_context(self, target: ApplianceTarget) -> ssl.SSLContext:
        assert target.tls_ca_file is not None
        path = target.tls_ca_file
        context = self._ca_contexts.get(path)
        if context is None:
            try:
                context = ssl.create_default_context(cafile=path)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise TlsError(
                    target.name, f"CA file {path} cannot be loaded ({reason})", op="tls setup"
                ) from None
            self._ca_contexts[path] = context
        return context

    # --- bookkeeping ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


class ApplianceClient:
    """Calls of one appliance. Get it from `ApplianceHttp.client(target)`.

    Every call accepts `request_timeout=` (seconds, per HTTP request) overriding
    `appliance_request_timeout`. Counters `requests` and `errors_by_kind` are kept per
    client as well as on the `ApplianceHttp`.
    """

    def __init__(
        self, http: ApplianceHttp, target: ApplianceTarget, credentials: Credentials
    ) -> None:
        self._http = http
        self.target = target
        self.credentials = credentials
        self._ssl: SslSetting = False
        self._endpoint: tx.Endpoint | None = None
        if http.http_client == "stream":
            self._endpoint = http.endpoint_for(target)
            self._base_path = quote(urlsplit(target.base_url).path, safe="/%:@!$&'()*+,;=-._~")
        else:
            self._ssl = http.ssl_for(target)
        self._basic_auth: str | None = None
        self._session_id: str | None = None
        self._login_at = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0
        self.logins = 0
        self.errors_by_kind: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"ApplianceClient(name={self.name!r}, base_url={self.target.base_url!r})"

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def has_session(self) -> bool:
        return self._session_id is not None

    def forget_session(self) -> None:
        """Drop the session without logging out (e.g. the appliance is known to have rebooted)."""
        self._session_id = None

    # --- session -------------------------------------------------------------------------

    async def login(self, *, request_timeout: float | None = None) -> None:
        """Log in now (replacing any session). Retried on transient errors."""

        async def attempt(state: _Attempt) -> None:
            async with self._lock:
                await self._login_locked(request_timeout)

        await self._retrying(attempt, op="login", safe=True)

    async def logout(self, *, request_timeout: float | None = None) -> None:
        """`DELETE /session`. No-op without a session; 401/404 (already gone) are ignored."""
        async with self._lock:
            sid, self._session_id = self._session_id, None
        if sid is None:
            return
        try:
            answer = await self._send(
                "DELETE", "/session", op="logout", sid=sid, request_timeout=request_timeout
            )
            if answer.status not in (401, 404):
                self._checked(answer, "logout")
        except ApplianceError as exc:
            self._count(exc)
            raise

    def _expired(self) -> bool:
        return self._http.clock() - self._login_at >= self._http.session_max_age

    async def _current_session(self, request_timeout: float | None) -> str:
        sid = self._session_id
        if sid is not None and not self._expired():
            return sid
        async with self._lock:
            sid = self._session_id
            if sid is not None and not self._expired():
                return sid  # another caller logged in meanwhile
            if sid is not None:
                log.debug("appliance_session_renew", appliance=self.name, reason="max age")
            return await self._login_locked(request_timeout)

    async def _renew_session(self, stale: str, request_timeout: float | None) -> str:
        """After a 401 with session `stale`: log in again unless another caller already did."""
        async with self._lock:
            sid = self._session_id
            if sid is not None and sid != stale and not self._expired():
                return sid
            log.debug("appliance_session_renew", appliance=self.name, reason="401")
            self._session_id = None
            return await self._login_locked(request_timeout)

    async def _login_locked(self, request_timeout: float | None) -> str:
        self._session_id = None
        answer = await self._send(
            "POST",
            "/session",
            op="login",
            basic_auth=True,
            request_timeout=request_timeout,
        )
        if answer.status == 401:
            raise Unauthorized(
                self.name, "login refused: wrong credentials (401)", op="login", status=401
            )
        self._checked(answer, "login")
        body = self._json(answer, "login")
        sid = body.get("session_id") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid:
            raise MalformedResponse(
                self.name, "login: the answer holds no session_id", op="login", status=answer.status
            )
        if not (sid.isascii() and sid.isprintable()):
            raise MalformedResponse(
                self.name,
                "login: the session_id is not printable ASCII (cannot be sent as a header)",
                op="login",
                status=answer.status,
            )
        self._session_id = sid
        self._login_at = self._http.clock()
        self.logins += 1
        log.debug("appliance_login", appliance=self.name)
        return sid

    # --- calls -------------------------------------------------------------------------------

    async def install(self, version: str, *, request_timeout: float | None = None) -> Task:
        """`POST .../updates/{version}/actions/install` -> the Task (202).

        Never repeated once the request may have been sent (see the module docstring):
        after a lost answer (`Unreachable`/`ApplianceTimeout` with `request_sent` True) or
        any 5xx, the install may or may not have started. Only a failure to connect
        (`request_sent` False) is retried.
        """
        return await self._call(
            "POST",
            f"/appliance/update-manager/updates/{quote(version, safe='')}/actions/install",
            op=f"install of {version}",
            parse=self._task,
            safe=False,
            request_timeout=request_timeout,
        )

    async def retrieve_updates(self, *, request_timeout: float | None = None) -> Task:
        """`POST .../actions/retrieve-updates` -> Task (not repeated once possibly sent).

        When the task is SUCCESS, `parse_updates(task.result)` lists the available updates.
        """
        return await self._call(
            "POST",
            "/appliance/update-manager/actions/retrieve-updates",
            op="retrieve-updates",
            parse=self._task,
            safe=False,
            request_timeout=request_timeout,
        )

    async def get_task(
        self, task_id: str, *, request_timeout: float | None = None, retries: int | None = None
    ) -> Task:
        """`GET /tasks/{id}`. NotFound when the appliance forgot the task (e.g. rebooted)."""
        return await self._call(
            "GET",
            f"/tasks/{quote(task_id, safe='')}",
            op=f"task {task_id}",
            parse=self._task,
            request_timeout=request_timeout,
            retries=retries,
        )

    async def list_tasks(
        self,
        *,
        filter_property: str | None = None,
        filter: str | None = None,
        sort_by: str | None = None,
        order_by: str | None = None,
        limit: int = 100,
        offset: int = 0,
        request_timeout: float | None = None,
        retries: int | None = None,
    ) -> list[Task]:
        """`GET /tasks?...`; accepts a `{"list": [...]}` envelope or a bare list.

        Any entry that is not a Task (no status) makes the whole answer MalformedResponse.
        """
        params: dict[str, str] = {"limit": str(limit), "offset": str(offset)}
        for key, value in (
            ("filter_property", filter_property),
            ("filter", filter),
            ("sort_by", sort_by),
            ("order_by", order_by),
        ):
            if value is not None:
                params[key] = value
        return await self._call(
            "GET",
            "/tasks",
            op="task list",
            parse=lambda body: [self._task(item) for item in _items(body)],
            params=params,
            request_timeout=request_timeout,
            retries=retries,
        )

    async def get_appliance(
        self, *, request_timeout: float | None = None, retries: int | None = None
    ) -> ApplianceInfo:
        """`GET /appliance`: hostname, product and `appliance_version` (required)."""
        return await self._call(
            "GET",
            "/appliance",
            op="appliance info",
            parse=lambda body: parse_appliance(body, appliance=self.name),
            request_timeout=request_timeout,
            retries=retries,
        )

    async def get_services(
        self, *, request_timeout: float | None = None, retries: int | None = None
    ) -> list[Service]:
        """`GET /services`; accepts a `{"list": [...]}` envelope or a bare list."""
        return await self._call(
            "GET",
            "/services",
            op="service list",
            parse=lambda body: [parse_service(item, appliance=self.name) for item in _items(body)],
            request_timeout=request_timeout,
            retries=retries,
        )

    async def get_service(
        self, service_id: str, *, request_timeout: float | None = None
    ) -> Service:
        """`GET /services/{id}`."""
        return await self._call(
            "GET",
            f"/services/{quote(service_id, safe='')}",
            op=f"service {service_id}",
            parse=lambda body: parse_service(body, appliance=self.name),
            request_timeout=request_timeout,
        )

    async def reconfigure_required(self, *, request_timeout: float | None = None) -> bool:
        """`GET /appliance/configuration-manager/reconfigure-required` -> `value`."""
        return await self._call(
            "GET",
            "/appliance/configuration-manager/reconfigure-required",
            op="reconfigure-required",
            parse=self._bool_value,
            request_timeout=request_timeout,
        )

    def _task(self, body: Any) -> Task:
        return parse_task(body, appliance=self.name)

    def _bool_value(self, body: Any) -> bool:
        value = body.get("value") if isinstance(body, dict) else body
        if not isinstance(value, bool):
            raise MalformedResponse(self.name, "no boolean value in the answer")
        return value

    # --- machinery ---------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        op: str,
        parse: Callable[[Any], _T],
        params: Mapping[str, str] | None = None,
        safe: bool = True,
        request_timeout: float | None = None,
        retries: int | None = None,
    ) -> _T:
        """One authenticated call with re-login on 401 and retries; returns `parse(body)`.

        `retries` overrides the client's count for this call (0: the caller paces its own
        repeats, as the engine's polling loops do through a reboot)."""

        async def attempt(state: _Attempt) -> _T:
            sid = await self._current_session(request_timeout)
            state.reached = True
            answer = await self._send(
                method, path, op=op, sid=sid, params=params, request_timeout=request_timeout
            )
            if answer.status == 401:
                state.reached = False  # refused: the call did not run
                sid = await self._renew_session(sid, request_timeout)
                state.reached = True
                answer = await self._send(
                    method, path, op=op, sid=sid, params=params, request_timeout=request_timeout
                )
                if answer.status == 401:
                    raise response_error(
                        Unauthorized,
                        self.name,
                        op,
                        401,
                        "unauthorized right after a new login",
                        **_response_error_fields(answer.body),
                    )
            self._checked(answer, op)
            body = self._json(answer, op)
            try:
                return parse(body)
            except MalformedResponse as exc:
                raise MalformedResponse(
                    self.name, f"{op}: {exc.detail}", op=op, status=answer.status
                ) from None

        return await self._retrying(attempt, op=op, safe=safe, retries=retries)

    async def _retrying(
        self, attempt: Callable[[_Attempt], Awaitable[_T]], *, op: str, safe: bool,
        retries: int | None = None,
    ) -> _T:
        http = self._http
        limit = http.retries if retries is None else retries
        number = 0
        while True:
            state = _Attempt()
            try:
                return await attempt(state)
            except ApplianceError as exc:
                self._count(exc)
                may_have_run = state.reached and exc.request_sent
                if number >= limit or not exc.transient or (may_have_run and not safe):
                    raise
                delay = http._backoff(number)
                number += 1
                http.retried += 1
                log.debug(
                    "appliance_retry",
                    appliance=self.name,
                    op=op,
                    kind=exc.kind,
                    attempt=number,
                    delay=round(delay, 3),
                )
                await asyncio.sleep(delay)

    def _count(self, exc: ApplianceError) -> None:
        self.errors_by_kind[exc.kind] += 1
        self._http.errors_by_kind[exc.kind] += 1

    async def _send(
        self,
        method: str,
        path: str,
        *,
        op: str,
        sid: str | None = None,
        basic_auth: bool = False,
        params: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> tx.Answer:
        """One HTTP request; transport failures become typed errors."""
        http = self._http
        total = request_timeout if request_timeout is not None else http.request_timeout
        headers: dict[str, str] = {}
        if sid is not None:
            headers[SESSION_HEADER] = sid
        if basic_auth:
            auth = self._basic_auth
            if auth is None:
                creds = self.credentials
                token = base64.b64encode(f"{creds.username}:{creds.password}".encode())
                auth = self._basic_auth = "Basic " + token.decode("ascii")
            headers["Authorization"] = auth
        http.requests += 1
        self.requests += 1
        if self._endpoint is not None:
            return await self._send_stream(self._endpoint, method, path, op, headers, params,
                                           total)
        return await self._send_aiohttp(method, path, op, headers, params, total)

    async def _send_stream(
        self, endpoint: tx.Endpoint, method: str, path: str, op: str,
        headers: dict[str, str], params: Mapping[str, str] | None, total: float,
    ) -> tx.Answer:
        target = self._base_path + path
        if params:
            target += "?" + urlencode(params)
        lines = _COMMON_HEADERS + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        name = self.name
        try:
            return await self._http.pool.request(endpoint, method, target, lines, total)
        except tx.ConnectFailed as exc:
            if exc.kind == "tls-pin":
                raise TlsError(name, f"{op}: {exc.reason}", op=op) from None
            if exc.kind == "tls-verify":
                raise TlsError(
                    name, f"{op}: certificate verification failed ({exc.reason})", op=op
                ) from None
            if exc.kind == "tls":
                raise TlsError(name, f"{op}: TLS handshake failed ({exc.reason})", op=op) from None
            if exc.kind == "timeout":
                raise ApplianceTimeout(
                    name, f"{op}: {exc.reason}", op=op, request_sent=False
                ) from None
            if exc.kind == "dns":
                raise Unreachable(name, f"{op}: {exc.reason}", op=op, request_sent=False) from None
            raise Unreachable(
                name, f"{op}: cannot connect ({exc.reason})", op=op, request_sent=False
            ) from None
        except tx.ReadTimeout:
            raise ApplianceTimeout(name, f"{op}: no answer within {total:g} s", op=op) from None
        except tx.Disconnected as exc:
            raise Unreachable(name, f"{op}: {exc.reason}", op=op) from None
        except tx.BadHttp as exc:
            raise MalformedResponse(
                name, f"{op}: invalid HTTP answer ({exc.reason})", op=op
            ) from None

    async def _send_aiohttp(
        self, method: str, path: str, op: str, headers: dict[str, str],
        params: Mapping[str, str] | None, total: float,
    ) -> tx.Answer:
        http = self._http
        session = http.session
        client_timeout = http._timeouts.get(total)
        if client_timeout is None:  # a handful of distinct values: made once each
            client_timeout = http._timeouts[total] = aiohttp.ClientTimeout(
                total=total, sock_connect=min(http.connect_timeout, total)
            )
        name = self.name
        try:
            async with session.request(
                method,
                self.target.base_url + path,
                headers=headers,
                params=params,
                ssl=self._ssl,
                timeout=client_timeout,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return tx.Answer(resp.status, body, resp.content_type)
        except aiohttp.ServerFingerprintMismatch:
            raise TlsError(
                name, f"{op}: certificate thumbprint does not match the pinned one", op=op
            ) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
            raise TlsError(
                name, f"{op}: certificate verification failed ({reason})", op=op
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise TlsError(name, f"{op}: TLS handshake failed ({_os_reason(exc)})", op=op) from None
        except aiohttp.ConnectionTimeoutError:
            raise ApplianceTimeout(
                name, f"{op}: no connection within the timeout", op=op, request_sent=False
            ) from None
        except TimeoutError:  # asyncio.TimeoutError and aiohttp.ServerTimeoutError
            raise ApplianceTimeout(name, f"{op}: no answer within {total:g} s", op=op) from None
        except aiohttp.ClientConnectorDNSError:
            raise Unreachable(
                name, f"{op}: host name does not resolve", op=op, request_sent=False
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(
                name, f"{op}: cannot connect ({_os_reason(exc)})", op=op, request_sent=False
            ) from None
        except aiohttp.ServerDisconnectedError:
            raise Unreachable(name, f"{op}: server disconnected", op=op) from None
        except aiohttp.ClientPayloadError:
            raise Unreachable(
                name, f"{op}: connection lost while reading the answer", op=op
            ) from None
        except aiohttp.ClientResponseError as exc:  # unparsable HTTP answer
            raise MalformedResponse(
                name, f"{op}: invalid HTTP answer ({exc.message})", op=op
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(name, f"{op}: connection failed ({_os_reason(exc)})", op=op) from None

    def _checked(self, answer: tx.Answer, op: str) -> None:
        """Raise the typed error of a non-2xx answer."""
        status = answer.status
        if 200 <= status < 300:
            return
        fields = _response_error_fields(answer.body)
        cls: type[ApplianceHttpError]
        if status == 400:
            cls, what = BadRequest, "refused"
        elif status == 401:
            cls, what = Unauthorized, "unauthorized"
        elif status == 403:
            cls, what = Forbidden, "forbidden"
        elif status == 404:
            cls, what = NotFound, "not found"
        elif status == 503:
            cls, what = ServiceUnavailable, "unavailable"
        elif 500 <= status < 600:
            cls, what = ServerError, "failed on the appliance"
        elif 400 <= status < 500:
            cls, what = BadRequest, "refused"
        else:
            raise MalformedResponse(
                self.name, f"{op}: unexpected HTTP status {status}", op=op, status=status
            )
        raise response_error(cls, self.name, op, status, what, **fields)

    def _json(self, answer: tx.Answer, op: str) -> Any:
        if not answer.body.strip():
            raise MalformedResponse(
                self.name, f"{op}: empty answer ({answer.status})", op=op, status=answer.status
            )
        try:
            return json.loads(answer.body)
        except (ValueError, RecursionError):
            raise MalformedResponse(
                self.name,
                f"{op}: answer is not JSON ({answer.content_type or 'no content type'}, "
                f"{len(answer.body)} bytes)",
                op=op,
                status=answer.status,
            ) from None


def _items(body: Any) -> list[Any]:
    """The entries of a `{"list": [...]}` (or `{"items": [...]}`) envelope or a bare list."""
    if isinstance(body, dict):
        for key in ("list", "items"):
            value = body.get(key)
            if isinstance(value, list):
                return value
    if isinstance(body, list):
        return body
    raise MalformedResponse("?", 'expected a list (or a {"list": [...]} envelope)')


def _response_error_fields(body: bytes) -> dict[str, str | None]:
    """`error_code`, `error_message`, `op_id` of a ResponseError body, when there is one."""
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        return {"error_code": None, "error_message": None, "op_id": None}

    def text(key: str) -> str | None:
        value = data.get(key)
        return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None

    return {
        "error_code": text("error_code"),
        "error_message": text("message"),
        "op_id": text("op_id"),
    }


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError):
        exc = os_error
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


__all__ = ["SESSION_HEADER", "ApplianceClient", "ApplianceHttp", "ApplianceTarget"]
