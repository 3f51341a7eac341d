"""The HTTP/1.1 machinery under `ApplianceClient`: a lean keep-alive connection pool.

`StreamPool` speaks just what the appliance API needs (requests without a body, JSON
answers) on asyncio protocols with the `httptools` parser (C, the one uvicorn uses). A
request costs about half the CPU of an `aiohttp.ClientSession` request on the same
connection (`bench/http_client.py` measures both), and an orchestrator driving thousands
of appliances spends most of its CPU in exactly that. `aiohttp` stays available
(`appliance_http_client = "aiohttp"`), e.g. for the `aioresponses` unit tests.

Errors are `TransportError`s: `ConnectFailed` (nothing was sent), `Disconnected`,
`ReadTimeout`, `BadHttp`; `ApplianceClient._send` turns them into `ApplianceError`s.

The pool: at most `limit` open connections in all (0: no limit) and `limit_per_host` per
endpoint (0: no limit), idle connections reused most recent first and closed after
`keepalive` seconds; an idle connection of another endpoint is closed to make room when
the global limit is reached. Nothing is repeated here: whether a failed request is sent
again is `ApplianceClient`'s decision (reads and logins may be, an install never).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

import httptools

KEEPALIVE_SECONDS = 15.0
DNS_TTL_SECONDS = 300.0


class TransportError(Exception):
    """A request failed below HTTP. `request_sent`: the request may have reached the server."""

    request_sent = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectFailed(TransportError):
    """No connection: nothing was sent. `kind`: "dns", "refused" (any OSError), "timeout",
    "tls-verify", "tls-pin" or "tls"."""

    request_sent = False

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class Disconnected(TransportError):
    """The connection closed before the whole answer arrived. `partial`: some of it had."""

    def __init__(self, reason: str, *, partial: bool) -> None:
        super().__init__(reason)
        self.partial = partial


class ReadTimeout(TransportError):
    """No whole answer within the request's timeout."""


class BadHttp(TransportError):
    """The answer is not valid HTTP/1.x."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go: one pool of connections per endpoint."""

    scheme: str
    host: str  # as connected to (no brackets around an IPv6 address)
    port: int
    host_header: str
    ssl: ssl.SSLContext | None = field(default=None, compare=False)
    ssl_key: object = None  # what identifies the TLS policy (for pooling)
    fingerprint: bytes | None = None  # SHA-256 of the peer certificate, pinned


@dataclass(slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; one request at a time."""

    def __init__(self, pool: StreamPool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.closed = False
        self.counted = True  # in the pool's open counts until released for good
        self.used = 0  # requests sent on it
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.body: list[bytes] = []
        self.content_type = ""
        self.got_bytes = False
        self.headers_done = False
        self.framed = False  # the length is known (Content-Length or chunked)
        self.keep_alive = True

    # --- asyncio.Protocol -----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # nothing was asked: the connection cannot be trusted any more
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadHttp(str(exc) or type(exc).__name__))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and not self.framed:
                self._complete()  # the body ends with the connection
            elif self.got_bytes:
                self._fail(Disconnected("connection lost while reading the answer",
                                        partial=True))
            else:
                self._fail(Disconnected("server disconnected", partial=False))
        self.pool._lost(self)

    # --- httptools callbacks -------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value.split(b";", 1)[0].strip().lower().decode("latin-1")
        elif lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        status = self.parser.get_status_code()
        if status in (204, 304) or 100 <= status < 200:
            self.framed = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._complete()

    # --- requests --------------------------------------------------------------------
    def _complete(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            status = self.parser.get_status_code()
            waiter.set_result(Answer(status, b"".join(self.body), self.content_type))

    def _fail(self, exc: TransportError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, request: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Answer]:
        self._reset()
        self.used += 1
        self.waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(request)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class StreamPool:
    """Keep-alive HTTP/1.1 connections to the appliances (see the module docstring)."""

    def __init__(self, *, limit: int, limit_per_host: int, connect_timeout: float,
                 keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.limit = limit
        self.limit_per_host = limit_per_host
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self.opened = 0  # connections opened since the start (for tests and benchmarks)
        self._open = 0
        self._per_endpoint: dict[Endpoint, int] = {}
        self._idle: dict[Endpoint, deque[_Connection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}
        self._closing = False

    # --- the request -----------------------------------------------------------------
    async def request(self, endpoint: Endpoint, method: str, target: str, headers: str,
                      seconds: float) -> Answer:
        """One request without a body; `headers` are ready-made `Name: value\\r\\n` lines.
        `seconds` bound the whole request, connecting included."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        data = (
            f"{method} {target} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n{headers}"
            f"{'Content-Length: 0' + chr(13) + chr(10) if method != 'GET' else ''}\r\n"
        ).encode("latin-1")
        conn = await self._acquire(endpoint, deadline)
        waiter = conn.send(data, loop)
        timer = loop.call_at(deadline, _expire, waiter, seconds)
        try:
            answer = await waiter
        except BaseException:
            self._release(conn, reuse=False)
            raise
        finally:
            timer.cancel()
        self._release(conn, reuse=conn.keep_alive)
        return answer

    # --- the pool ---------------------------------------------------------------------
    async def _acquire(self, endpoint: Endpoint, deadline: float) -> _Connection:
        while True:
            idle = self._idle.get(endpoint)
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn
            if self._closing:
                raise ConnectFailed("refused", "the client is closing")
            at_limit = 0 < self.limit <= self._open
            if at_limit and self._close_idle_elsewhere(endpoint):
                continue
            host_full = 0 < self.limit_per_host <= self._per_endpoint.get(endpoint, 0)
            if not at_limit and not host_full:
                return await self._connect(endpoint, deadline)
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                remaining = deadline - asyncio.get_running_loop().time()
                async with asyncio.timeout(max(0.0, remaining)):
                    await waiter
            except TimeoutError:
                raise ConnectFailed("timeout", "no free connection within the timeout") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _close_idle_elsewhere(self, endpoint: Endpoint) -> bool:
        for other, idle in self._idle.items():
            if other != endpoint and idle:
                conn = idle.popleft()
                self._forget(conn)
                conn.close()
                return True
        return False

    async def _connect(self, endpoint: Endpoint, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        self._open += 1
        self._per_endpoint[endpoint] = self._per_endpoint.get(endpoint, 0) + 1
        conn = _Connection(self, endpoint)
        try:
            remaining = min(self.connect_timeout, deadline - loop.time())
            async with asyncio.timeout(max(0.0, remaining)):
                await self._open_connection(loop, conn, endpoint)
        except TimeoutError:
            self._forget(conn)
            conn.close()
            raise ConnectFailed("timeout", "no connection within the timeout") from None
        except BaseException:
            self._forget(conn)
            conn.close()
            raise
        self.opened += 1
        return conn

    async def _open_connection(self, loop: asyncio.AbstractEventLoop, conn: _Connection,
                               endpoint: Endpoint) -> None:
        addresses = await self._resolve(loop, endpoint)
        last: ConnectFailed | None = None
        for address, port in addresses:
            try:
                await loop.create_connection(
                    lambda: conn, address, port, ssl=endpoint.ssl,
                    server_hostname=endpoint.host if endpoint.ssl is not None else None,
                )
            except ssl.SSLCertVerificationError as exc:
                raise ConnectFailed("tls-verify", exc.verify_message or "not trusted") from None
            except ssl.SSLError as exc:
                raise ConnectFailed("tls", exc.reason or type(exc).__name__) from None
            except OSError as exc:
                last = ConnectFailed("refused", exc.strerror or type(exc).__name__)
                continue
            break
        else:
            assert last is not None
            raise last
        if endpoint.fingerprint is not None:
            assert conn.transport is not None
            sslobj = conn.transport.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
            if der is None or hashlib.sha256(der).digest() != endpoint.fingerprint:
                raise ConnectFailed(
                    "tls-pin", "certificate thumbprint does not match the pinned one")

    async def _resolve(self, loop: asyncio.AbstractEventLoop,
                       endpoint: Endpoint) -> list[tuple[str, int]]:
        key = (endpoint.host, endpoint.port)
        cached = self._dns.get(key)
        now = loop.time()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET,
                             endpoint.host)
            addresses = [key]  # an address already
        except OSError:
            try:
                infos = await loop.getaddrinfo(endpoint.host, endpoint.port,
                                               type=socket.SOCK_STREAM)
            except socket.gaierror:
                raise ConnectFailed("dns", "host name does not resolve") from None
            addresses = list(dict.fromkeys((str(i[4][0]), int(i[4][1])) for i in infos))
            if not addresses:
                raise ConnectFailed("dns", "host name does not resolve") from None
        self._dns[key] = (now + DNS_TTL_SECONDS, addresses)
        return addresses

    def _release(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and not conn.closed and not self._closing:
            now = time.monotonic()
            conn.idle_since = now
            conn.waiter = None
            idle = self._idle.setdefault(conn.endpoint, deque())
            while idle and now - idle[0].idle_since > self.keepalive:
                stale = idle.popleft()
                self._forget(stale)
                stale.close()
            idle.append(conn)
        else:
            self._forget(conn)
            conn.close()
        self._wake()

    def _lost(self, conn: _Connection) -> None:
        """The connection closed (either side): out of the counts, if still in them."""
        self._forget(conn)
        self._wake()

    def _forget(self, conn: _Connection) -> None:
        if conn.counted:
            conn.counted = False
            self._open -= 1
            left = self._per_endpoint.get(conn.endpoint, 1) - 1
            if left > 0:
                self._per_endpoint[conn.endpoint] = left
            else:
                self._per_endpoint.pop(conn.endpoint, None)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    @property
    def open_connections(self) -> int:
        return self._open

    async def close(self) -> None:
        self._closing = True
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                self._forget(conn)
                conn.close()
        self._idle.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        await asyncio.sleep(0)  # let the transports finish closing


def _expire(waiter: asyncio.Future[Answer], timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"no answer within {timeout:g} s"))


__all__ = ["Answer", "BadHttp", "ConnectFailed", "Disconnected", "Endpoint", "ReadTimeout",
           "StreamPool", "TransportError"]
