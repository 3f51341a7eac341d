"""The shared transport of the appliance API client: `ApplianceHttp` and `ApplianceTarget`.

One `ApplianceHttp` per process owns the single `aiohttp.ClientSession` (one connection
pool for the whole fleet), the TLS contexts, the proxies of the environment, the back-off
and the cache of `ApplianceClient`s (one per appliance, see `client.py`).

Clients in use: the engine's users of a client (a task runner, a look at a held slot)
`hold` it and `release` it when they are done. Once its last user is done, the client
leaves the cache and its session is logged out (`DELETE /session`, best effort, within
`LOGOUT_TIMEOUT`): an engine that drives 100,000 appliances keeps a client and an open
appliance session only for those it works on now. `release_soon` does the same without
waiting (a cancelled user): the logout runs in the background, and `close` cancels the
logouts still running. `release_queued` (a task runner whose outcome is recorded) queues
the logout for a few background workers (`LOGOUT_WORKERS`): in a burst of thousands of task
ends, the requests that prove outcomes and start the next installs are not kept waiting
behind as many logouts; while `busy()` (set by the engine: its event loop running late)
says the process is in such a burst, a queued logout waits for it to pass, at most
`LOGOUT_DEFER_MAX` seconds after its release; `drain_logouts` (the engine, when it stops)
and `close` send the queue without waiting.

HTTP: aiohttp, one `ClientSession` per process. Redirects are never followed (a 3xx is a
`MalformedResponse` naming the status and the Location: fix the inventory's base_url);
an answer body larger than `MAX_ANSWER_BYTES` (4 MiB) and a header line or field larger
than `MAX_HEADER_BYTES` are refused as `MalformedResponse`. With `trust_env` (setting
`appliance_trust_env`, on by default) HTTPS_PROXY / HTTP_PROXY / NO_PROXY are read once,
when the session starts, and each appliance is reached through its proxy (or directly);
credentials for the proxy may come from its URL or from ~/.netrc, never those of an
appliance. `transport_error` maps what aiohttp raises to the typed `ApplianceError`s.

Nothing here logs or puts into an exception the password, the Authorization header or the
session id.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import urlsplit
from urllib.request import proxy_bypass

import aiohttp
from aiohttp.helpers import ProxyInfo, proxies_from_env
from yarl import URL

from orchestrator.appliance.credentials import Credentials, resolve_credentials
from orchestrator.appliance.errors import (
    ApplianceError,
    ApplianceTimeout,
    MalformedResponse,
    TlsError,
    Unreachable,
)
from orchestrator.logs import get_logger
from orchestrator.settings import Settings

if TYPE_CHECKING:
    from orchestrator.appliance.client import ApplianceClient

log = get_logger("orchestrator.appliance")

# the largest answer body read from an appliance (its API answers a few KiB)
MAX_ANSWER_BYTES = 4 * 1024 * 1024
# the longest status line, header line or header field of an answer, and the most headers
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 128
_HEX = frozenset("0123456789abcdef")
# seconds: the most a release's logout waits for its appliance (never longer than the
# request timeout)
LOGOUT_TIMEOUT = 2.0
# the queued logouts (`release_queued`) run this many at a time; past LOGOUT_QUEUE_MAX
# waiting, a release logs out at once instead (appliances slow to answer a logout never
# make the queue grow without bound)
LOGOUT_WORKERS = 8
LOGOUT_QUEUE_MAX = 20_000
# seconds: the most a queued logout waits for `ApplianceHttp.busy` to pass, counted from its
# release; and how often a waiting logout worker asks again
LOGOUT_DEFER_MAX = 10.0
LOGOUT_BUSY_POLL = 0.1

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


class ApplianceHttp:
    """The process-wide HTTP machinery: one ClientSession, TLS contexts, clients, counters.

    Keyword arguments override the settings (handy in tests). `clock` is the monotonic
    clock used for session ages. `default_credentials` serve appliances whose target has
    no `credentials_ref`; `environ` replaces `os.environ` for `env:` references.

    Counters: `requests` counts every HTTP request sent (retries and logins included);
    `errors_by_kind` counts every failed attempt by `ApplianceError.kind`; `retried`
    counts the attempts that were repeated. `cached_clients` is the number of clients
    cached now.
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
        # client -> how many users hold it now (`hold` / `release`)
        self._users: dict[ApplianceClient, int] = {}
        # the background logouts of `release_soon` still running
        self._logouts: set[asyncio.Task[None]] = set()
        # the logouts of `release_queued` not sent yet, and the workers sending them
        self._logout_queue: deque[tuple[ApplianceClient, float]] = deque()  # (client, when)
        self._draining = False  # drain_logouts / close: send without waiting for `busy`
        # whether this process is busy right now (the engine: its event loop runs late):
        # queued logouts wait while it is, at most LOGOUT_DEFER_MAX s (None: never busy)
        self.busy: Callable[[], bool] | None = None
        self._logouts_unfinished = 0  # queued and not sent yet, or being sent
        self._logout_workers: set[asyncio.Task[None]] = set()
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
        await self.drain_logouts()
        logouts = list(self._logouts)
        for task in logouts:  # best effort: never waited for
            task.cancel()
        if logouts:
            await asyncio.gather(*logouts, return_exceptions=True)
        session, self._session = self._session, None
        self._clients.clear()
        self._users.clear()
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
        # imported here: client.py imports this module (ApplianceClient uses the transport)
        from orchestrator.appliance.client import ApplianceClient

        client = ApplianceClient(self, target, credentials)
        self._clients[target.name] = client
        return client

    def forget(self, name: str) -> None:
        """Drop the cached client of an appliance (its session is not logged out)."""
        self._clients.pop(name, None)

    @property
    def cached_clients(self) -> int:
        """How many clients are cached now."""
        return len(self._clients)

    def hold(self, client: ApplianceClient) -> None:
        """One more user of `client` (a task runner, a look at a held slot) until its
        `release` (or `release_soon`): while any holds it, it stays cached and logged in."""
        self._users[client] = self._users.get(client, 0) + 1

    async def release(self, client: ApplianceClient) -> None:
        """One user of `client` is done (see `hold`). Once none is left, the client leaves
        the cache (`forget`) and its session, if any, is logged out: best effort, within
        `LOGOUT_TIMEOUT`; never raises (a failure is logged at debug level)."""
        if self._unheld(client):
            await self._logout_quietly(client)

    def release_soon(self, client: ApplianceClient) -> None:
        """`release` without waiting (for a user that is being cancelled): the client
        leaves the cache now, its logout runs in the background (`close` cancels it)."""
        if self._unheld(client) and client.has_session:
            task = asyncio.get_running_loop().create_task(
                self._logout_quietly(client), name=f"logout-{client.name}")
            self._logouts.add(task)
            task.add_done_callback(self._logouts.discard)

    async def release_queued(self, client: ApplianceClient) -> None:
        """`release` whose logout is queued (sent by `LOGOUT_WORKERS` background workers, in
        the order of the releases) instead of awaited: for a task runner whose outcome is
        recorded, so that a burst of task ends spends its event loop on the requests that
        prove outcomes and start installs first. The client leaves the cache now. With
        `LOGOUT_QUEUE_MAX` logouts waiting already, the logout is awaited here (as
        `release`). Never raises."""
        if not self._unheld(client) or not client.has_session:
            return
        if len(self._logout_queue) >= LOGOUT_QUEUE_MAX or self._session is None:
            await self._logout_quietly(client)
            return
        self._logout_queue.append((client, time.monotonic()))
        self._logouts_unfinished += 1
        self._start_logout_workers()

    def _start_logout_workers(self) -> None:
        """As many workers as the queue needs, at most LOGOUT_WORKERS running (a worker
        that has just returned counts no more, though its done-callback has not run)."""
        running = sum(1 for task in self._logout_workers if not task.done())
        loop = asyncio.get_running_loop()
        for _ in range(min(LOGOUT_WORKERS - running, len(self._logout_queue))):
            task = loop.create_task(self._logout_worker(), name="appliance-logouts")
            self._logout_workers.add(task)
            task.add_done_callback(self._logout_workers.discard)

    async def _logout_worker(self) -> None:
        while self._logout_queue:
            client, released = self._logout_queue.popleft()
            try:
                await self._until_not_busy(released + LOGOUT_DEFER_MAX)
                await self._logout_quietly(client)
            finally:
                self._logouts_unfinished -= 1

    async def _until_not_busy(self, deadline: float) -> None:
        """Wait while `busy()` says so, until `deadline` (monotonic) at most; not at all
        once the queue is being drained."""
        busy = self.busy
        if busy is None:
            return
        while not self._draining and time.monotonic() < deadline and busy():
            await asyncio.sleep(LOGOUT_BUSY_POLL)

    @property
    def queued_logouts(self) -> int:
        """Logouts queued by `release_queued` and not finished yet (waiting or being sent)."""
        return self._logouts_unfinished

    async def drain_logouts(self, within: float | None = None) -> int:
        """Wait for the queued logouts (`release_queued`) to be sent, at most `within`
        seconds (default: as long as LOGOUT_WORKERS workers need at LOGOUT_TIMEOUT each,
        at most 5 s); then drop those still waiting, cancel those being sent, and return
        how many were left unsent (0: all sent)."""
        if within is None:
            within = min(5.0, LOGOUT_TIMEOUT * (1 + len(self._logout_queue) / LOGOUT_WORKERS))
        deadline = time.monotonic() + within
        self._draining = True  # no more waiting for `busy`
        try:
            while self._logout_queue or any(not t.done() for t in self._logout_workers):
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    break
                self._start_logout_workers()
                await asyncio.wait(set(self._logout_workers), timeout=left_s)
            left = self._logouts_unfinished
            self._logouts_unfinished -= len(self._logout_queue)
            self._logout_queue.clear()
            workers = list(self._logout_workers)
            for task in workers:
                task.cancel()
            if workers:
                await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self._draining = False
        if left:
            log.warning("appliance_logouts_left", count=left, waited_s=round(within, 1))
        return left

    @contextlib.asynccontextmanager
    async def using(
        self, client: ApplianceClient, *, queue_logout: bool = False
    ) -> AsyncIterator[ApplianceClient]:
        """`hold` the client for the block; `release` it after, whether the block returns
        or raises (`release_soon` when it is cancelled: nothing waits on the appliance;
        `release_queued` after a block that ended when `queue_logout`)."""
        self.hold(client)
        try:
            yield client
        except Exception:
            await self.release(client)
            raise
        except BaseException:  # cancelled (the engine stopping, a lease lost)
            self.release_soon(client)
            raise
        if queue_logout:
            await self.release_queued(client)
        else:
            await self.release(client)

    def _unheld(self, client: ApplianceClient) -> bool:
        """Count one user of `client` less; True when none is left, the client then out of
        the cache (unless the cache holds another client of that appliance)."""
        users = self._users.get(client, 0) - 1
        if users > 0:
            self._users[client] = users
            return False
        self._users.pop(client, None)
        if self._clients.get(client.name) is client:
            del self._clients[client.name]
        return True

    async def _logout_quietly(self, client: ApplianceClient) -> None:
        try:
            await client.logout(request_timeout=min(LOGOUT_TIMEOUT, self.request_timeout))
        except Exception as exc:  # the appliance's error, or this transport already closed
            log.debug("appliance_logout_failed", appliance=client.name,
                      error=type(exc).__name__)

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

    # --- requests ----------------------------------------------------------------------------

    def client_timeout(self, total: float) -> aiohttp.ClientTimeout:
        """The aiohttp timeout of a request of `total` seconds (connecting within
        `connect_timeout`); a handful of distinct values: made once each."""
        client_timeout = self._timeouts.get(total)
        if client_timeout is None:
            client_timeout = self._timeouts[total] = aiohttp.ClientTimeout(
                total=total, sock_connect=min(self.connect_timeout, total)
            )
        return client_timeout

    # --- bookkeeping ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


async def read_capped(resp: aiohttp.ClientResponse, appliance: str, op: str) -> bytes:
    """The body of an answer without a usable Content-Length (chunked, or read to the
    end of the connection) or with one above the cap: at most `MAX_ANSWER_BYTES`."""
    def too_large() -> MalformedResponse:
        resp.close()  # the rest is never read: the connection is not reused
        return MalformedResponse(
            appliance,
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


def transport_error(
    exc: aiohttp.ClientError | OSError, appliance: str, op: str, *, timeout: float,
    proxy: URL | None,
) -> ApplianceError:
    """The typed error of a request to `appliance` that failed in aiohttp or the socket
    (`timeout`: its total seconds; `proxy`: the proxy it went through, if any).

    `request_sent` is False only when the connection (to the appliance or through the
    proxy) could not be opened: the request certainly never left this process."""
    name = appliance
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        return TlsError(
            name, f"{op}: certificate thumbprint does not match the pinned one", op=op
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        reason = getattr(exc.certificate_error, "verify_message", None) or "not trusted"
        return TlsError(name, f"{op}: certificate verification failed ({reason})", op=op)
    if isinstance(exc, aiohttp.ClientSSLError):
        return TlsError(name, f"{op}: TLS handshake failed ({_os_reason(exc)})", op=op)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ApplianceTimeout(
            name, f"{op}: no connection within the timeout", op=op, request_sent=False
        )
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError and aiohttp.ServerTimeoutError
        return ApplianceTimeout(name, f"{op}: no answer within {timeout:g} s", op=op)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return Unreachable(
            name, f"{op}: cannot connect to the proxy {proxy} ({_os_reason(exc)})",
            op=op, request_sent=False,
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Unreachable(name, f"{op}: host name does not resolve", op=op, request_sent=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Unreachable(
            name, f"{op}: cannot connect ({_os_reason(exc)})", op=op, request_sent=False
        )
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return Unreachable(
            name, f"{op}: the proxy {proxy} refused the tunnel ({exc.status})",
            op=op, request_sent=False,
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Unreachable(name, f"{op}: server disconnected", op=op)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Unreachable(name, f"{op}: connection lost while reading the answer", op=op)
    if isinstance(exc, aiohttp.ClientResponseError):  # unparsable HTTP answer, header too large
        return MalformedResponse(name, f"{op}: invalid HTTP answer ({exc.message})", op=op)
    return Unreachable(name, f"{op}: connection failed ({_os_reason(exc)})", op=op)


def _os_reason(exc: BaseException) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, OSError):
        exc = os_error
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


__all__ = [
    "LOGOUT_TIMEOUT",
    "MAX_ANSWER_BYTES",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "Answer",
    "ApplianceHttp",
    "ApplianceTarget",
    "SslSetting",
    "read_capped",
    "transport_error",
]
