"""The stream pool (the default HTTP client) against raw HTTP servers on 127.0.0.1: what
goes on the wire, keep-alive reuse, connection limits, answers framed every legal way, and
servers that misbehave (close idle connections, cut answers short, speak no HTTP)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from orchestrator.appliance import (
    ApplianceHttp,
    ApplianceTarget,
    ApplianceTimeout,
    Credentials,
    MalformedResponse,
    Unreachable,
)

CREDS = Credentials("admin", "pw-secret")
LOGIN = json.dumps({"session_id": "s-1"}).encode()
INFO = json.dumps({"appliance_version": "9.0.0-10010"}).encode()
TASK = json.dumps({"id": "t-1", "status": "RUNNING", "progress": 10}).encode()


def ok(body: bytes, *, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@dataclass
class Conn:
    """What one connection to the server carried."""

    requests: list[bytes] = field(default_factory=list)


# answer(conn, index of the request on its connection, request head) -> bytes to send,
# or None to close the connection without an answer
Answer = Callable[[Conn, int, bytes], Awaitable[bytes | None]]


@dataclass
class Server:
    url: str
    conns: list[Conn]
    open_now: int = 0
    most_open: int = 0

    @property
    def requests(self) -> list[bytes]:
        return [r for c in self.conns for r in c.requests]


async def default_answer(conn: Conn, index: int, head: bytes) -> bytes | None:
    line = head.split(b"\r\n", 1)[0]
    if line.startswith(b"POST") and b"/session" in line:
        return ok(LOGIN)
    if b"/tasks?" in line:
        return ok(b'{"list": [%s]}' % TASK)
    if b"/tasks" in line:
        return ok(TASK)
    if b"/actions/install" in line:
        return b"HTTP/1.1 202 Accepted\r\nContent-Length: %d\r\n\r\n%s" % (len(TASK), TASK)
    return ok(INFO)


async def slow(conn: Conn, index: int, head: bytes) -> bytes | None:
    await asyncio.sleep(0.02)
    return await default_answer(conn, index, head)


async def one_per_connection(conn: Conn, index: int, head: bytes) -> bytes | None:
    """Answers the first request of a connection; closes it at the next one, unanswered."""
    return await default_answer(conn, index, head) if index == 0 else None


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Server:
        state = Server("", [])

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = Conn()
            state.conns.append(conn)
            state.open_now += 1
            state.most_open = max(state.most_open, state.open_now)
            try:
                while True:
                    try:
                        head = await reader.readuntil(b"\r\n\r\n")
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    conn.requests.append(head)
                    data = await answer(conn, len(conn.requests) - 1, head)
                    if data is None:
                        return
                    writer.write(data)
                    await writer.drain()
                    if data.startswith(b"HTTP/1.0") or b"Connection: close" in data:
                        return
            finally:
                state.open_now -= 1
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        state.url = f"http://127.0.0.1:{port}/api"
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


Serve = Callable[[Answer], Awaitable[Server]]


def make_http(**overrides: object) -> ApplianceHttp:
    options: dict[str, object] = {"retries": 0, "request_timeout": 5, "connect_timeout": 2,
                                  "default_credentials": CREDS, "http_client": "stream"}
    return ApplianceHttp(**(options | overrides))  # type: ignore[arg-type]


async def test_the_request_on_the_wire(serve: Serve) -> None:
    server = await serve(default_answer)
    async with make_http() as h:
        client = h.client(ApplianceTarget("a", server.url))
        await client.install("9.0.1 beta")
        await client.list_tasks(filter_property="state", filter="RUN NING&x", limit=5)
    login, install, listing = server.requests
    port = server.url.split(":")[2].split("/")[0]
    assert login.startswith(b"POST /api/session HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Basic YWRtaW46cHctc2VjcmV0\r\n" in login
    assert f"\r\nHost: 127.0.0.1:{port}\r\n".encode() in login
    assert b"\r\nContent-Length: 0\r\n" in login
    assert install.startswith(
        b"POST /api/appliance/update-manager/updates/9.0.1%20beta/actions/install HTTP/1.1")
    assert b"\r\nx-dr-session: s-1\r\n" in install
    assert b"Authorization" not in install
    assert listing.startswith(
        b"GET /api/tasks?limit=5&offset=0&filter_property=state&filter=RUN+NING%26x HTTP/1.1")
    assert b"Content-Length" not in listing


async def test_keep_alive_reuses_one_connection(serve: Serve) -> None:
    server = await serve(default_answer)
    async with make_http() as h:
        client = h.client(ApplianceTarget("a", server.url))
        for _ in range(20):
            assert (await client.get_appliance()).appliance_version == "9.0.0-10010"
        assert h.pool.opened == 1
    assert len(server.conns) == 1 and len(server.requests) == 21  # the login + 20


async def test_connection_limit_is_never_exceeded(serve: Serve) -> None:
    server = await serve(slow)
    async with make_http(max_connections=3, max_connections_per_host=0) as h:
        clients = [h.client(ApplianceTarget(f"a{i}", server.url)) for i in range(12)]
        infos = await asyncio.gather(*(c.get_appliance() for c in clients))
    assert all(i.appliance_version == "9.0.0-10010" for i in infos)
    assert server.most_open <= 3
    assert len(server.requests) == 24  # every client logged in and asked once


async def test_per_host_limit(serve: Serve) -> None:
    server = await serve(slow)
    async with make_http(max_connections=100, max_connections_per_host=2) as h:
        clients = [h.client(ApplianceTarget(f"a{i}", server.url)) for i in range(8)]
        await asyncio.gather(*(c.get_appliance() for c in clients))
    assert server.most_open <= 2


async def test_idle_connection_of_another_host_makes_room(serve: Serve) -> None:
    one, two = await serve(default_answer), await serve(default_answer)
    async with make_http(max_connections=1) as h:
        await h.client(ApplianceTarget("a", one.url)).get_appliance()
        await h.client(ApplianceTarget("b", two.url)).get_appliance()  # does not wait
        assert h.pool.open_connections == 1
    assert len(one.conns) == len(two.conns) == 1


async def test_no_free_connection_within_the_timeout(serve: Serve) -> None:
    async def hang(conn: Conn, index: int, head: bytes) -> bytes | None:
        if index == 0:
            return await default_answer(conn, index, head)
        await asyncio.sleep(5)
        return None

    server = await serve(hang)
    async with make_http(max_connections=1) as h:
        busy = h.client(ApplianceTarget("a", server.url))
        await busy.login()
        stuck = asyncio.create_task(busy.get_appliance(request_timeout=3))
        await asyncio.sleep(0.05)
        other = h.client(ApplianceTarget("b", server.url))
        with pytest.raises(ApplianceTimeout) as info:
            await other.login(request_timeout=0.2)
        assert not info.value.request_sent
        stuck.cancel()


async def test_read_on_a_dropped_connection_is_retried_by_the_client(serve: Serve) -> None:
    """The server answers one request per connection, then closes at the next one unread:
    "server disconnected" (possibly sent); a read is repeated by the client's retries, on a
    new connection."""

    server = await serve(one_per_connection)
    async with make_http(retries=0) as h:
        client = h.client(ApplianceTarget("a", server.url))
        await client.login()
        with pytest.raises(Unreachable, match="server disconnected") as info:
            await client.get_appliance()
        assert info.value.request_sent
    async with make_http(retries=1, backoff_base=0.001) as h:
        client = h.client(ApplianceTarget("a", server.url))
        await client.login()
        assert (await client.get_appliance()).appliance_version == "9.0.0-10010"
        assert h.requests == 3 and h.retried == 1


async def test_install_on_a_connection_closed_while_idle_is_not_repeated(serve: Serve) -> None:
    server = await serve(one_per_connection)
    async with make_http(retries=3) as h:
        client = h.client(ApplianceTarget("a", server.url))
        await client.login()
        with pytest.raises(Unreachable) as info:
            await client.install("9.0.1")
        assert info.value.request_sent
    installs = [r for r in server.requests if b"/actions/install" in r]
    assert len(installs) == 1


@pytest.mark.parametrize(
    ("raw", "kept_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"%x\r\n%s\r\n0\r\n\r\n" % (len(INFO), INFO), True),
        (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + INFO, False),
        (ok(INFO, extra="Connection: close\r\n"), False),
    ],
    ids=["chunked", "until-close", "connection-close"],
)
async def test_answers_framed_every_legal_way(serve: Serve, raw: bytes,
                                              kept_alive: bool) -> None:
    async def answer(conn: Conn, index: int, head: bytes) -> bytes | None:
        if b"/session" in head:
            return await default_answer(conn, index, head)
        return raw

    server = await serve(answer)
    async with make_http() as h:
        client = h.client(ApplianceTarget("a", server.url))
        for _ in range(3):
            assert (await client.get_appliance()).appliance_version == "9.0.0-10010"
    # the login's connection carries the first GET; an answer that ends its connection
    # makes the next request open a new one
    assert len(server.conns) == (1 if kept_alive else 3)


async def test_answer_that_never_completes_times_out(serve: Serve) -> None:
    async def cut(conn: Conn, index: int, head: bytes) -> bytes | None:
        if b"/session" in head:
            return await default_answer(conn, index, head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"appliance_ver"

    server = await serve(cut)
    async with make_http(request_timeout=1) as h:
        client = h.client(ApplianceTarget("a", server.url))
        await client.login()
        # the server keeps the connection open: the answer never completes
        with pytest.raises(ApplianceTimeout):
            await client.get_appliance()


async def test_answer_cut_by_the_server_closing(serve: Serve) -> None:
    state: dict[str, asyncio.StreamWriter] = {}

    async def answer(conn: Conn, index: int, head: bytes) -> bytes | None:
        if b"/session" in head:
            return await default_answer(conn, index, head)
        return None

    server = await serve(answer)

    async def partial_then_close(reader: asyncio.StreamReader,
                                 writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"appliance_ver")
        await writer.drain()
        writer.close()
        state["w"] = writer

    raw = await asyncio.start_server(partial_then_close, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        async with make_http() as h:
            client = h.client(ApplianceTarget("a", f"http://127.0.0.1:{port}/api"))
            with pytest.raises(Unreachable) as info:
                await client.login()
            assert "connection lost while reading the answer" in str(info.value)
            assert info.value.request_sent
    finally:
        raw.close()
        await raw.wait_closed()
    assert server.conns == []


async def test_not_http_is_malformed(serve: Serve) -> None:
    async def garbage(conn: Conn, index: int, head: bytes) -> bytes | None:
        return b"SSH-2.0-OpenSSH_9.2\r\n\r\n"

    server = await serve(garbage)
    async with make_http() as h:
        with pytest.raises(MalformedResponse) as info:
            await h.client(ApplianceTarget("a", server.url)).login()
        assert "invalid HTTP answer" in str(info.value)


async def test_session_id_that_cannot_be_a_header_is_refused(serve: Serve) -> None:
    async def bad_sid(conn: Conn, index: int, head: bytes) -> bytes | None:
        return ok(json.dumps({"session_id": "s-1\r\nX-Injected: 1"}).encode())

    server = await serve(bad_sid)
    async with make_http() as h:
        client = h.client(ApplianceTarget("a", server.url))
        with pytest.raises(MalformedResponse, match="session_id"):
            await client.get_appliance()
    assert not any(b"X-Injected" in r for r in server.requests)


async def test_host_name_is_resolved(serve: Serve) -> None:
    server = await serve(default_answer)
    url = server.url.replace("127.0.0.1", "localhost")
    async with make_http() as h:
        assert (await h.client(ApplianceTarget("a", url)).get_appliance()).appliance_version
    assert any(b"\r\nHost: localhost:" in r for r in server.requests)


def test_unknown_http_client_is_named() -> None:
    with pytest.raises(ValueError, match="'curl'"):
        ApplianceHttp(http_client="curl")
