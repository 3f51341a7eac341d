"""The client over real sockets on 127.0.0.1, with each HTTP client (the stream pool and
aiohttp): TLS verification, CA file, thumbprint pinning, connection refused, a server that
hangs, a server that drops the connection."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from orchestrator.appliance import (
    ApplianceHttp,
    ApplianceTarget,
    ApplianceTimeout,
    Credentials,
    TlsError,
    Unreachable,
)

CREDS = Credentials("admin", "pw-secret")
Serve = Callable[[ssl.SSLContext | None], Awaitable[str]]


@dataclass
class Cert:
    cert: Path
    key: Path
    sha256: str


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return Cert(cert, key, hashlib.sha256(der).hexdigest())


def make_app() -> web.Application:
    async def login(request: web.Request) -> web.Response:
        return web.json_response({"session_id": "s-1"})

    async def appliance(request: web.Request) -> web.Response:
        assert request.headers.get("x-dr-session") == "s-1"
        return web.json_response({"appliance_version": "9.0.0-10010"})

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    async def drop(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(1)
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/session", login)
    app.router.add_get("/api/appliance", appliance)
    app.router.add_get("/api/hang", hang)
    app.router.add_post("/api/appliance/update-manager/updates/{v}/actions/install", drop)
    app.router.add_get("/api/tasks/{id}", hang)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(ctx: ssl.SSLContext | None) -> str:
        runner = web.AppRunner(make_app(), shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"{'https' if ctx else 'http'}://{host}:{port}/api"

    yield start
    for runner in runners:
        await runner.cleanup()


def server_context(cert: Cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


Http = Callable[..., ApplianceHttp]


@pytest.fixture(params=["stream", "aiohttp"])
def http(request: pytest.FixtureRequest) -> Http:
    """ApplianceHttp on each HTTP client: the stream pool (the default) and aiohttp."""

    def make(**overrides: Any) -> ApplianceHttp:
        options: dict[str, Any] = {
            "retries": 0,
            "request_timeout": 5,
            "connect_timeout": 2,
            "default_credentials": CREDS,
            "http_client": request.param,
        }
        return ApplianceHttp(**(options | overrides))

    return make


async def test_self_signed_rejected_by_default(cert: Cert, serve: Serve, http: Http) -> None:
    base = await serve(server_context(cert))
    async with http() as h:
        with pytest.raises(TlsError) as info:
            await h.client(ApplianceTarget("a", base)).get_appliance()
        assert "certificate" in str(info.value)


async def test_ca_file_trusts_the_certificate(cert: Cert, serve: Serve, http: Http) -> None:
    base = await serve(server_context(cert))
    async with http() as h:
        client = h.client(ApplianceTarget("a", base, tls_ca_file=str(cert.cert)))
        assert (await client.get_appliance()).appliance_version == "9.0.0-10010"


async def test_thumbprint_pinned(cert: Cert, serve: Serve, http: Http) -> None:
    base = await serve(server_context(cert))
    async with http() as h:
        client = h.client(ApplianceTarget("a", base, tls_thumbprint=cert.sha256.upper()))
        assert (await client.get_appliance()).appliance_version == "9.0.0-10010"


async def test_thumbprint_mismatch(cert: Cert, serve: Serve, http: Http) -> None:
    base = await serve(server_context(cert))
    wrong = "0" * 64
    async with http() as h:
        with pytest.raises(TlsError) as info:
            await h.client(ApplianceTarget("a", base, tls_thumbprint=wrong)).get_appliance()
        assert "thumbprint" in str(info.value)
        assert h.errors_by_kind["tls"] == 1


async def test_verification_can_be_disabled(cert: Cert, serve: Serve, http: Http) -> None:
    base = await serve(server_context(cert))
    async with http(verify_tls=False) as h:
        assert (await h.client(ApplianceTarget("a", base)).get_appliance()).appliance_version


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_unreachable(http: Http) -> None:
    async with http() as h:
        client = h.client(ApplianceTarget("a", f"http://127.0.0.1:{free_port()}/api"))
        with pytest.raises(Unreachable) as info:
            await client.install("9.0.1")
        assert not info.value.request_sent
        assert "cannot connect" in str(info.value)


async def test_hang_is_timeout(serve: Serve, http: Http) -> None:
    base = await serve(None)
    async with http() as h:
        client = h.client(ApplianceTarget("a", base))
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ApplianceTimeout):
            await client.get_task("t1", request_timeout=0.3)
        assert loop.time() - start < 2


async def test_dropped_install_is_unreachable_and_not_repeated(serve: Serve, http: Http) -> None:
    base = await serve(None)
    async with http(retries=3, backoff_base=0.001) as h:
        client = h.client(ApplianceTarget("a", base))
        with pytest.raises(Unreachable) as info:
            await client.install("9.0.1")
        assert info.value.request_sent
        assert h.requests == 2  # the login and ONE install
