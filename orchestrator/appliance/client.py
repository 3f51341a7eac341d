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

HTTP: aiohttp, one `ClientSession` per process. Redirects are never followed (a 3xx is a
`MalformedResponse` naming the status and the Location: fix the inventory's base_url);
an answer body larger than `MAX_ANSWER_BYTES` (4 MiB) and a header line or field larger
than `MAX_HEADER_BYTES` are refused as `MalformedResponse`. With `trust_env` (setting
`appliance_trust_env`, on by default) HTTPS_PROXY / HTTP_PROXY / NO_PROXY are read once,
when the session starts, and each appliance is reached through its proxy (or directly);
credentials for the proxy may come from its URL or from ~/.netrc, never those of an
appliance.

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
from urllib.parse import quote, urlsplit
from urllib.request import proxy_bypass

import aiohttp
from aiohttp.helpers import ProxyInfo, proxies_from_env
from yarl import URL

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
# the largest answer body read from an appliance (its API answers a few KiB)
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# the longest status line, header line or header field of an answer, and the most headers
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 128
_HEX = frozenset("0123456789abcdef")
_T = TypeVar("_T")

SslSetting = bool | ssl.SSLContext | aiohttp.Fingerprint


class Answer:
    """An HTTP answer, read whole: status, body, and the two headers looked at."""

    __slots__ = ("body", "content_type", "location", "status")

    def __init__(self, status: int, body: bytes, content_type: str = "",
                 location: str | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.location = location


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
        trust_env: bool | None = None,
    ) -> None:
        s = settings if settings is not None else Settings()
        self.trust_env = trust_env if trust_env is not None else s.appliance_trust_env
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
        self._clients: dict[str, ApplianceClient] = {}
        self._ca_contexts: dict[str, ssl.SSLContext] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # the proxies of the environment by URL scheme, read once at start (trust_env)
        self._proxies: dict[str, ProxyInfo] = {}

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
        if self._session is not None:
            return
        if not self.verify_tls:
            log.warning(
                "appliance_tls_verification_off",
                detail="appliance_verify_tls is false: appliance certificates are not "
                "verified, except the thumbprints and CA files the inventory names",
            )
        # aiohttp's own trust_env would look for a proxy and read ~/.netrc in a thread on
        # every request (and send a netrc login for the appliance's host to the
        # appliance): the environment is read once here instead, for the proxies only
        self._proxies = proxies_from_env() if self.trust_env else {}
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
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
            max_headers=MAX_HEADERS,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        self._clients.clear()
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session."""
        if self._session is None or self._session.closed:
            raise RuntimeError(
                "ApplianceHttp is not started (use `async with ApplianceHttp(...)`)"
            )
        return self._session

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

    def proxy_for(self, target: ApplianceTarget) -> tuple[URL | None, str | None]:
        """The proxy of this appliance from the environment (`trust_env`), and the
        Proxy-Authorization header for it; (None, None) to reach it directly."""
        parts = urlsplit(target.base_url)
        info = self._proxies.get(parts.scheme)
        if info is None or (parts.hostname and proxy_bypass(parts.hostname)):
            return None, None
        auth = info.proxy_auth.encode() if info.proxy_auth is not None else None
        return info.proxy, auth

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
        self._ssl: SslSetting = http.ssl_for(target)
        self._proxy: tuple[URL | None, str | None] | None = None  # looked up on first use
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
        repeats, as the engine's polling loops do through a reboot). The retry rules are
        those of `_retrying`, written out here: one coroutine per call instead of three
        (every appliance request resumes each coroutine of its chain several times)."""
        http = self._http
        limit = http.retries if retries is None else retries
        number = 0
        while True:
            reached = False  # whether this attempt's request may have run
            try:
                sid = self._session_id
                if sid is None or self._expired():
                    sid = await self._current_session(request_timeout)
                reached = True
                answer = await self._send(
                    method, path, op=op, sid=sid, params=params, request_timeout=request_timeout
                )
                if answer.status == 401:
                    reached = False  # refused: the call did not run
                    sid = await self._renew_session(sid, request_timeout)
                    reached = True
                    answer = await self._send(
                        method, path, op=op, sid=sid, params=params,
                        request_timeout=request_timeout,
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
                if not 200 <= answer.status < 300:
                    self._checked(answer, op)
                body = self._json(answer, op)
                try:
                    return parse(body)
                except MalformedResponse as exc:
                    raise MalformedResponse(
                        self.name, f"{op}: {exc.detail}", op=op, status=answer.status
                    ) from None
            except ApplianceError as exc:
                self._count(exc)
                if number >= limit or not exc.transient or (
                        reached and exc.request_sent and not safe):
                    raise
                await self._back_off(number, op, exc)
                number += 1

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
                await self._back_off(number, op, exc)
                number += 1

    async def _back_off(self, number: int, op: str, exc: ApplianceError) -> None:
        """Wait before retry `number + 1` of `op` (the shared back-off; counted and logged)."""
        http = self._http
        delay = http._backoff(number)
        http.retried += 1
        log.debug("appliance_retry", appliance=self.name, op=op, kind=exc.kind,
                  attempt=number + 1, delay=round(delay, 3))
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
    ) -> Answer:
        """One HTTP request, its answer read whole; transport failures become typed errors."""
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
        session = http.session
        client_timeout = http._timeouts.get(total)
        if client_timeout is None:  # a handful of distinct values: made once each
            client_timeout = http._timeouts[total] = aiohttp.ClientTimeout(
                total=total, sock_connect=min(http.connect_timeout, total)
            )
        url = self.target.base_url + path
        proxy = self._proxy
        if proxy is None:
            proxy = self._proxy = http.proxy_for(self.target)
        name = self.name
        try:
            if proxy[0] is None:
                resp = await session.request(
                    method, url, headers=headers, params=params, ssl=self._ssl,
                    timeout=client_timeout, allow_redirects=False,
                )
            else:
                resp = await session.request(
                    method, url, headers=headers, params=params, ssl=self._ssl,
                    timeout=client_timeout, allow_redirects=False, proxy=proxy[0],
                    proxy_headers={"Proxy-Authorization": proxy[1]} if proxy[1] else None,
                )
            try:
                length = resp.content_length
                if length is not None and length <= MAX_ANSWER_BYTES:
                    body = await resp.read()
                else:
                    body = await self._read_capped(resp, op)
                status = resp.status
                answer_headers = resp.headers
                content_type = answer_headers.get("Content-Type", "")
                if 300 <= status < 400:
                    return Answer(status, body, content_type, answer_headers.get("Location"))
                return Answer(status, body, content_type)
            finally:
                resp.release()
        except ApplianceError:
            raise
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
        except aiohttp.ClientProxyConnectionError as exc:
            raise Unreachable(
                name, f"{op}: cannot connect to the proxy {proxy[0]} ({_os_reason(exc)})",
                op=op, request_sent=False,
            ) from None
        except aiohttp.ClientConnectorDNSError:
            raise Unreachable(
                name, f"{op}: host name does not resolve", op=op, request_sent=False
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(
                name, f"{op}: cannot connect ({_os_reason(exc)})", op=op, request_sent=False
            ) from None
        except aiohttp.ClientHttpProxyError as exc:
            raise Unreachable(
                name, f"{op}: the proxy {proxy[0]} refused the tunnel ({exc.status})",
                op=op, request_sent=False,
            ) from None
        except aiohttp.ServerDisconnectedError:
            raise Unreachable(name, f"{op}: server disconnected", op=op) from None
        except aiohttp.ClientPayloadError:
            raise Unreachable(
                name, f"{op}: connection lost while reading the answer", op=op
            ) from None
        except aiohttp.ClientResponseError as exc:  # unparsable HTTP answer, header too large
            raise MalformedResponse(
                name, f"{op}: invalid HTTP answer ({exc.message})", op=op
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(name, f"{op}: connection failed ({_os_reason(exc)})", op=op) from None

    async def _read_capped(self, resp: aiohttp.ClientResponse, op: str) -> bytes:
        """The body of an answer without a usable Content-Length (chunked, or read to the
        end of the connection) or with one above the cap: at most `MAX_ANSWER_BYTES`."""
        def too_large() -> MalformedResponse:
            resp.close()  # the rest is never read: the connection is not reused
            return MalformedResponse(
                self.name,
                f"{op}: answer larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB "
                f"({MAX_ANSWER_BYTES} bytes): not read",
                op=op, status=resp.status,
            )

        length = resp.content_length
        if length is not None and length > MAX_ANSWER_BYTES:
            raise too_large()
        chunks: list[bytes] = []
        size = 0
        while chunk := await resp.content.readany():
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _checked(self, answer: Answer, op: str) -> None:
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
        elif 300 <= status < 400:
            location = answer.location
            where = f"to {location[:200]}" if location else "without a Location"
            raise MalformedResponse(
                self.name,
                f"{op}: redirected ({status} {where}); redirects are not followed: "
                "check the appliance's base_url",
                op=op, status=status,
            )
        else:
            raise MalformedResponse(
                self.name, f"{op}: unexpected HTTP status {status}", op=op, status=status
            )
        raise response_error(cls, self.name, op, status, what, **fields)

    def _json(self, answer: Answer, op: str) -> Any:
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
