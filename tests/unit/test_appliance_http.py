"""ApplianceClient over real sockets on 127.0.0.1, for what aioresponses cannot show: the
environment's proxies, header and body caps, 1xx and stray bytes, certificate pinning, and
the warning when TLS verification is off."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator.appliance import (
    ApplianceHttp,
    ApplianceTarget,
    Credentials,
    MalformedResponse,
    TlsError,
    Unreachable,
)
from orchestrator.appliance.http import MAX_ANSWER_BYTES, MAX_HEADER_BYTES
from orchestrator.settings import Settings

NAME = "vr01"
API = "/api/rest/configure/v1"
CREDS = Credentials("admin", "s3cr3t")
LOGIN = {"session_id": "SID-1"}
APPLIANCE = {"appliance_version": "9.0.0-10010", "hostname": "vr01"}


def answer(status: int, body: bytes = b"", *headers: str, reason: str = "X") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def json_answer(payload: Any) -> bytes:
    return answer(200, json.dumps(payload).encode(), "Content-Type: application/json")


def api(head: str) -> bytes:
    """A well-behaved appliance: login and GET /appliance."""
    line = head.split("\r\n", 1)[0]
    if "/session" in line:
        return json_answer(LOGIN)
    return json_answer(APPLIANCE)


class RawServer:
    """HTTP/1.1 on 127.0.0.1: each request head (requests here carry no body) is recorded
    and answered with the bytes `respond(head)` returns."""

    def __init__(self, respond: Callable[[str], bytes],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.ssl_context = ssl_context
        self.heads: list[str] = []
        self.connections = 0
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                self.heads.append(head)
                writer.write(self.respond(head))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[RawServer]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()


def make_http(**overrides: Any) -> ApplianceHttp:
    options: dict[str, Any] = {"retries": 0, "default_credentials": CREDS, "trust_env": False,
                               "request_timeout": 5.0}
    options.update(overrides)
    return ApplianceHttp(Settings(), **options)


def clear_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy",
                 "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")


# --- proxies --------------------------------------------------------------------------------


async def test_http_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_proxy_env(monkeypatch)
    async with RawServer(api).running() as proxy:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        # the appliance's host does not exist: only the proxy can reach it
        async with make_http(trust_env=True) as http:
            client = http.client(ApplianceTarget(NAME, f"http://vr01.invalid{API}"))
            info = await client.get_appliance()
        assert info.appliance_version == "9.0.0-10010"
        assert [h.split("\r\n", 1)[0] for h in proxy.heads] == [
            f"POST http://vr01.invalid{API}/session HTTP/1.1",
            f"GET http://vr01.invalid{API}/appliance HTTP/1.1",
        ]


async def test_https_proxy_gets_a_tunnel_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_proxy_env(monkeypatch)
    async with RawServer(lambda head: answer(403, reason="Forbidden")).running() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://puser:ppass@127.0.0.1:{proxy.port}")
        async with make_http(trust_env=True) as http:
            client = http.client(ApplianceTarget(NAME, f"https://vr01.invalid{API}"))
            with pytest.raises(Unreachable) as info:
                await client.login()
        assert "proxy" in str(info.value) and "403" in str(info.value)
        assert not info.value.request_sent  # the appliance never saw the request
        [head] = proxy.heads
        assert head.startswith("CONNECT vr01.invalid:443 HTTP/1.1")
        expected = base64.b64encode(b"puser:ppass").decode()
        assert f"Proxy-Authorization: Basic {expected}".lower() in head.lower()
        # the appliance's own credentials never reach the proxy
        assert base64.b64encode(b"admin:s3cr3t").decode() not in head


@pytest.mark.parametrize("trust_env", [True, False])
async def test_no_proxy_and_trust_env_off_go_direct(
    monkeypatch: pytest.MonkeyPatch, trust_env: bool,
) -> None:
    clear_proxy_env(monkeypatch)
    async with RawServer(api).running() as proxy, RawServer(api).running() as appliance:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        if trust_env:
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        async with make_http(trust_env=trust_env) as http:
            client = http.client(ApplianceTarget(NAME, f"http://127.0.0.1:{appliance.port}{API}"))
            await client.get_appliance()
        assert proxy.heads == []
        assert len(appliance.heads) == 2


def test_trust_env_setting_defaults_on() -> None:
    assert Settings().appliance_trust_env is True
    assert ApplianceHttp(Settings()).trust_env is True
    assert ApplianceHttp(Settings(appliance_trust_env=False)).trust_env is False


# --- what the appliance answers ----------------------------------------------------------------


async def test_header_larger_than_the_cap_is_malformed() -> None:
    big = "X-Big: " + "a" * (MAX_HEADER_BYTES + 10)

    def respond(head: str) -> bytes:
        return answer(200, json.dumps(LOGIN).encode(), "Content-Type: application/json", big)

    async with RawServer(respond).running() as server, make_http() as http:
        client = http.client(ApplianceTarget(NAME, f"http://127.0.0.1:{server.port}{API}"))
        with pytest.raises(MalformedResponse) as info:
            await client.login()
    assert "invalid HTTP answer" in str(info.value)
    assert str(info.value).startswith(f"{NAME}: login")


async def test_chunked_body_larger_than_the_cap_is_refused() -> None:
    chunk = b"a" * (1024 * 1024)
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"

    def respond(head: str) -> bytes:
        if "/session" in head.split("\r\n", 1)[0]:
            return json_answer(LOGIN)
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + body)

    async with RawServer(respond).running() as server, make_http() as http:
        client = http.client(ApplianceTarget(NAME, f"http://127.0.0.1:{server.port}{API}"))
        with pytest.raises(MalformedResponse) as info:
            await client.get_appliance()
        assert str(info.value).startswith(f"{NAME}: appliance info: answer larger than 4 MiB")
        assert info.value.status == 200
        # the connection was dropped, not reused with 1 MiB still unread
        await client.login()
        assert server.connections == 2
    assert MAX_ANSWER_BYTES == 4 * 1024 * 1024


async def test_content_length_above_the_cap_is_refused_unread() -> None:
    def respond(head: str) -> bytes:
        if "/session" in head.split("\r\n", 1)[0]:
            return json_answer(LOGIN)
        return f"HTTP/1.1 200 OK\r\nContent-Length: {MAX_ANSWER_BYTES + 1}\r\n\r\n{{".encode()

    async with RawServer(respond).running() as server, make_http() as http:
        client = http.client(ApplianceTarget(NAME, f"http://127.0.0.1:{server.port}{API}"))
        with pytest.raises(MalformedResponse, match="larger than 4 MiB"):
            await client.get_appliance()


async def test_interim_1xx_answer_is_skipped() -> None:
    def respond(head: str) -> bytes:
        return answer(100, reason="Continue").replace(b"Content-Length: 0\r\n", b"") + api(head)

    async with RawServer(respond).running() as server, make_http() as http:
        client = http.client(ApplianceTarget(NAME, f"http://127.0.0.1:{server.port}{API}"))
        info = await client.get_appliance()
        assert info.appliance_version == "9.0.0-10010"


async def test_bytes_after_a_complete_answer_do_not_shift_the_next_one() -> None:
    def respond(head: str) -> bytes:
        if "/session" in head.split("\r\n", 1)[0]:
            return json_answer(LOGIN) + json_answer({"appliance_version": "0.0.0-stray"})
        return api(head)

    async with RawServer(respond).running() as server, make_http() as http:
        client = http.client(ApplianceTarget(NAME, f"http://127.0.0.1:{server.port}{API}"))
        await client.login()
        await asyncio.sleep(0.05)  # the stray answer has arrived on the idle connection
        info = await client.get_appliance()
        assert info.appliance_version == "9.0.0-10010"
        assert server.connections == 2  # the connection holding stray bytes was dropped


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1: (cert, key, SHA-256 of its DER form)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return cert, key, hashlib.sha256(der).hexdigest()


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def test_pinned_thumbprint_replaces_the_chain(certificate: tuple[Path, Path, str]) -> None:
    cert, key, digest = certificate
    pinned = ":".join(digest[i:i + 2].upper() for i in range(0, 64, 2))
    async with RawServer(api, server_context(cert, key)).running() as server:
        base = f"https://127.0.0.1:{server.port}{API}"
        async with make_http(verify_tls=True) as http:
            # self-signed: verification fails without a pin ...
            with pytest.raises(TlsError, match="certificate verification failed"):
                await http.client(ApplianceTarget("plain", base)).login()
            # ... and the pinned thumbprint (with colons, upper case) is trusted instead
            info = await http.client(
                ApplianceTarget(NAME, base, tls_thumbprint=pinned)).get_appliance()
            assert info.appliance_version == "9.0.0-10010"
            # the CA file of the inventory verifies the chain instead of the system's
            await http.client(ApplianceTarget("ca", base, tls_ca_file=str(cert))).login()
            wrong = ApplianceTarget("wrong", base, tls_thumbprint="ab" * 32)
            with pytest.raises(TlsError, match="thumbprint does not match") as info_exc:
                await http.client(wrong).login()
            assert not info_exc.value.transient


async def test_warning_at_start_when_tls_verification_is_off() -> None:
    with capture_logs() as logs:
        async with make_http(verify_tls=False):
            pass
        async with make_http(verify_tls=True):
            pass
    warnings = [e for e in logs if e["event"] == "appliance_tls_verification_off"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "appliance_verify_tls" in warnings[0]["detail"]
