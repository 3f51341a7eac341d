"""Async client of the appliance configuration REST API.

One `ApplianceHttp` per process (the shared transport, in `http.py`: the single
`aiohttp.ClientSession`, TLS, proxies, back-off) hands out one `ApplianceClient` per
appliance:

    async with ApplianceHttp(settings) as http:
        client = http.client(target)          # credentials from target.credentials_ref
        task = await client.install("9.0.1-20020")

Sessions: the client logs in lazily (`POST /session` with HTTP Basic auth), sends
`x-dr-session` on every other call, logs in again when the session is older than
`appliance_session_max_age`, and on a 401 logs in again once and repeats the call (a second
401 raises `Unauthorized`). A 401 on the login itself is `Unauthorized` (wrong
credentials) and is not retried. Concurrent callers on one client share one login.
`logout()` ends the current session and every session the client stopped using without a
logout that may still be open: one replaced for its age, and one `forget_session()` dropped
at a sign of a restart, unless `restart_proven()` said the appliance restarted since (a
restart ends sessions; the appliance then answers 401 to them).

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

HTTP (redirects, answer and header caps, proxies) is the business of `http.py`.

Nothing here logs or puts into an exception the password, the Authorization header or the
session id.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from orchestrator.appliance.credentials import Credentials
from orchestrator.appliance.errors import (
    ApplianceError,
    ApplianceHttpError,
    BadRequest,
    Forbidden,
    MalformedResponse,
    NotFound,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
    response_error,
)
from orchestrator.appliance.http import (
    MAX_ANSWER_BYTES,
    Answer,
    ApplianceHttp,
    ApplianceTarget,
    SslSetting,
    read_capped,
    transport_error,
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

log = get_logger("orchestrator.appliance")

SESSION_HEADER = "x-dr-session"
_T = TypeVar("_T")


class _Attempt:
    """State of one attempt of a call: whether its main request may have been sent."""

    __slots__ = ("reached",)

    def __init__(self) -> None:
        self.reached = False


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
        self._session_ordinal = 0  # the current session's login: `logins` once it was opened
        self._login_at = 0.0
        # sessions this client stopped using without logging them out, logged out with
        # the current one (`logout`): replaced ones (age, an explicit login) and forgotten
        # ones (a restart, perhaps, ended them: dropped from here once one is proven), each
        # forgotten one with its login's ordinal (`logins` once it was opened)
        self._replaced: list[str] = []
        self._forgotten: list[tuple[str, int]] = []
        # `logins` when the appliance last accepted an install: sessions opened up to
        # then are older than any restart that install caused
        self._logins_at_install: int | None = None
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
        """Whether `logout` has a session to end (the current one, or one dropped without a
        logout that may still be open on the appliance)."""
        return self._session_id is not None or bool(self._replaced or self._forgotten)

    @property
    def forgotten_sessions(self) -> int:
        """Sessions dropped by `forget_session` that `logout` will still end."""
        return len(self._forgotten)

    def forget_session(self) -> None:
        """Stop using the session without logging out: the appliance seems to restart, and
        a restart ends its sessions (the next call logs in rather than meeting a 401). A
        sign of a restart can be wrong (an install that ran longer than predicted, a slow
        answer), so the session is still logged out by `logout` unless `restart_proven`
        says the appliance did restart after it was opened."""
        sid, self._session_id = self._session_id, None
        if sid is not None:
            _keep(self._forgotten, (sid, self._session_ordinal))

    def restart_proven(self) -> None:
        """The appliance has restarted since it accepted this client's install (it reports
        another version than before): the forgotten sessions opened before that install
        was accepted ended with the restart, and `logout` leaves them alone. One opened
        after it may have been opened after the restart too (a login as the appliance came
        back, then a wrong sign of a restart): it is still logged out. Without an install
        sent by this client (a task taken over from another engine) nothing is known to
        be older than the restart."""
        before = self._logins_at_install
        if before is not None:
            self._forgotten = [(s, n) for s, n in self._forgotten if n > before]

    # --- session -------------------------------------------------------------------------

    async def login(self, *, request_timeout: float | None = None) -> None:
        """Log in now (replacing any session). Retried on transient errors."""

        async def attempt(state: _Attempt) -> None:
            async with self._lock:
                await self._login_locked(request_timeout)

        await self._retrying(attempt, op="login", safe=True)

    async def logout(self, *, request_timeout: float | None = None) -> None:
        """`DELETE /session` for the current session and for every session this client
        dropped without a logout that may still be open (see `forget_session`). No-op
        without any; 401/404 (already gone) are ignored. Every session is tried; the first
        error is raised after."""
        async with self._lock:
            forgotten = [s for s, _ in self._forgotten]
            sids = [s for s in (self._session_id, *self._replaced, *forgotten) if s]
            self._session_id = None
            self._replaced.clear()
            self._forgotten.clear()
        first: ApplianceError | None = None
        for sid in sids:
            try:
                answer = await self._send(
                    "DELETE", "/session", op="logout", sid=sid, request_timeout=request_timeout
                )
                if answer.status not in (401, 404):
                    self._checked(answer, "logout")
            except ApplianceError as exc:
                self._count(exc)
                first = first or exc
        if first is not None:
            raise first

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
            if sid == stale:
                self._session_id = None  # refused: it is over, nothing to log out
            return await self._login_locked(request_timeout)

    async def _login_locked(self, request_timeout: float | None) -> str:
        if self._session_id is not None:  # replaced (its age, an explicit login): still open
            _keep(self._replaced, self._session_id)
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
        self._session_ordinal = self.logins
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
        task = await self._call(
            "POST",
            f"/appliance/update-manager/updates/{quote(version, safe='')}/actions/install",
            op=f"install of {version}",
            parse=self._task,
            safe=False,
            request_timeout=request_timeout,
        )
        self._logins_at_install = self.logins
        return task

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

    async def get_repository(self, *, request_timeout: float | None = None) -> dict[str, Any]:
        """`GET /appliance/update-manager/repository` -> the repository settings as
        answered (`url`, `mounted_iso`, `username`; never a password): a JSON object."""
        return await self._call(
            "GET",
            "/appliance/update-manager/repository",
            op="update repository",
            parse=self._object,
            request_timeout=request_timeout,
        )

    def _object(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise MalformedResponse(self.name, "the answer is not a JSON object")
        return body

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
        """One HTTP request, its answer read whole; transport failures become typed errors
        (`transport_error`)."""
        http = self._http
        total = request_timeout if request_timeout is not None else http.request_timeout
        headers = self._headers(sid, basic_auth)
        http.requests += 1
        self.requests += 1
        session = http.session
        client_timeout = http.client_timeout(total)
        url = self.target.base_url + path
        proxy = self._proxy
        if proxy is None:
            proxy = self._proxy = http.proxy_for(self.target)
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
                    body = await read_capped(resp, self.name, op)
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
        except (aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc, self.name, op, timeout=total, proxy=proxy[0]) from None

    def _headers(self, sid: str | None, basic_auth: bool) -> dict[str, str]:
        """The headers of one request: the session id, or the login's Basic auth (encoded
        on first use, then kept)."""
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
        return headers

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


__all__ = ["SESSION_HEADER", "ApplianceClient", "ApplianceHttp", "ApplianceTarget"]


_KEPT_SESSIONS = 8  # dropped sessions remembered for the logout, per kind (oldest go first)


def _keep(sids: list[_T], sid: _T) -> None:
    sids.append(sid)
    del sids[:-_KEPT_SESSIONS]
