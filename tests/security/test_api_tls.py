"""HTTPS for the API (issue 14, finding 4): `api_tls_cert`/`api_tls_key` serve HTTPS with a
certificate made here (openssl), a bad or missing file is named, one without the other is
refused, and `orchestrator serve` refuses plain HTTP on a non-loopback address unless
`--insecure-http` is given (then it warns)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from orchestrator.api.server import LoopServer
from orchestrator.api.tls import TlsError, is_loopback, server_context
from orchestrator.settings import Settings, SettingsError, load_settings
from orchestrator.store import tokens as token_store
from tests.helpers import ROOT, VENV_BIN, LoggedPopen, cli_env, free_port, run_cli

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command")


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    assert OPENSSL is not None
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=orchestrator-test",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
    ("10.0.0.5", False), ("orchestrator.example.net", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_no_tls_settings_no_context() -> None:
    assert server_context(Settings()) is None


def test_one_without_the_other_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"ORCHESTRATOR_API_TLS_CERT": str(tmp_path / "c.pem")})
    assert "api_tls_cert is set but api_tls_key is not" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load_settings(environ={"ORCHESTRATOR_API_TLS_KEY": str(tmp_path / "k.pem")})
    assert "api_tls_key is set but api_tls_cert is not" in str(caught.value)


@needs_openssl
def test_bad_files_are_named(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    missing = tmp_path / "nope.pem"
    with pytest.raises(TlsError, match=f"api_tls_cert: {missing}: no such file"):
        server_context(Settings(api_tls_cert=missing, api_tls_key=key))
    with pytest.raises(TlsError, match=f"api_tls_key: {missing}: no such file"):
        server_context(Settings(api_tls_cert=cert, api_tls_key=missing))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not a PEM certificate and its matching private key"):
        server_context(Settings(api_tls_cert=garbage, api_tls_key=key))
    (tmp_path / "other").mkdir()
    _, other_key = self_signed(tmp_path / "other")
    with pytest.raises(TlsError, match="not a PEM certificate and its matching private key"):
        server_context(Settings(api_tls_cert=cert, api_tls_key=other_key))
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.pem"
        locked.write_bytes(key.read_bytes())
        locked.chmod(0)
        with pytest.raises(TlsError, match=f"api_tls_key: {locked}: cannot be read"):
            server_context(Settings(api_tls_cert=cert, api_tls_key=locked))


@needs_openssl
async def test_the_api_answers_https(pool: asyncpg.Pool, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    settings = Settings(api_tls_cert=cert, api_tls_key=key)
    _, token = await token_store.create_token(pool, "viewer", "viewer")
    port = free_port()
    server = LoopServer(pool, settings, "127.0.0.1", port, ssl_context=server_context(settings))
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/api/v1/audit",
                                   headers={"Authorization": f"Bearer {token}"},
                                   ssl=client_context(cert)) as resp:
                assert resp.status == 200
            # the certificate is the one configured: an unknown CA is refused by a client
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"https://127.0.0.1:{port}/healthz",
                                       ssl=ssl.create_default_context()) as resp:
                    pass
            # no plain HTTP on the same port: the token never travels in clear
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
    finally:
        await server.stop()


# ------------------------------------------------------------------ orchestrator serve
def test_serve_refuses_plain_http_on_a_network_address() -> None:
    env = cli_env("postgresql://nobody@127.0.0.1:9/never")  # never reached
    for args in (["--host", "0.0.0.0"], ["--host", "10.1.2.3", "--no-engine"]):
        done = run_cli("serve", *args, "--port", str(free_port()), env=env, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "refusing to serve plain HTTP" in done.stderr
        assert "api_tls_cert" in done.stderr and "--insecure-http" in done.stderr
    # the engine alone serves nothing: no refusal (it fails later on the database)
    done = run_cli("serve", "--host", "0.0.0.0", "--no-api", env=env, timeout=60)
    assert "refusing" not in done.stderr


def test_serve_names_a_missing_certificate(tmp_path: Path) -> None:
    env = cli_env("postgresql://nobody@127.0.0.1:9/never",
                  ORCHESTRATOR_API_TLS_CERT=str(tmp_path / "cert.pem"),
                  ORCHESTRATOR_API_TLS_KEY=str(tmp_path / "key.pem"))
    done = run_cli("serve", "--port", str(free_port()), env=env, timeout=60)
    assert done.returncode == 2
    assert f"api_tls_cert: {tmp_path / 'cert.pem'}: no such file" in done.stderr
    only = cli_env("postgresql://nobody@127.0.0.1:9/never",
                   ORCHESTRATOR_API_TLS_KEY=str(tmp_path / "key.pem"))
    done = run_cli("serve", env=only, timeout=60)
    assert done.returncode == 2
    assert "api_tls_key is set but api_tls_cert is not" in done.stderr


def start_serve(db_url: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return LoggedPopen(
        [str(VENV_BIN / "orchestrator"), "serve", "--no-engine", *args],
        env=cli_env(db_url, ORCHESTRATOR_LOG_LEVEL="warning", **env), cwd=ROOT,
    )


async def wait_status(url: str, proc: subprocess.Popen[str],
                      ssl_context: ssl.SSLContext | bool = True) -> int:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                async with session.get(url, ssl=ssl_context) as resp:
                    return resp.status
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "serve never answered"
            await asyncio.sleep(0.1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    return err


async def test_insecure_http_is_served_with_a_loud_warning(db_url: str) -> None:
    port = free_port()
    proc = start_serve(db_url, "--host", "0.0.0.0", "--port", str(port), "--insecure-http")
    try:
        assert await wait_status(f"http://127.0.0.1:{port}/healthz", proc) == 200
    finally:
        err = stop(proc)
    assert "WARNING: serving the API over plain HTTP on 0.0.0.0 (--insecure-http)" in err
    assert "api_insecure_http" in err  # the log line too


@needs_openssl
async def test_serve_with_tls_on_a_network_address(db_url: str, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = start_serve(db_url, "--host", "0.0.0.0", "--port", str(port),
                       ORCHESTRATOR_API_TLS_CERT=str(cert), ORCHESTRATOR_API_TLS_KEY=str(key))
    try:
        status = await wait_status(f"https://127.0.0.1:{port}/healthz", proc,
                                   client_context(cert))
        assert status == 200
    finally:
        err = stop(proc)
    assert f"API on https://0.0.0.0:{port}" in err
    assert "WARNING" not in err
