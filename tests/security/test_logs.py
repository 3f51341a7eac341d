"""Logs never carry secrets (issue 14, findings 2 and 7).

- A traceback in console format (the default on a terminal) is rendered WITHOUT local
  variables: structlog's default shows them, and they hold the database URL with its
  password, a token just created, appliance credentials. Checked on a forced 500 of the API
  (whose handler holds a new plaintext token) with a database URL with a password in the
  app's settings and in the failing frame.
- Passwords in URLs are redacted also when they hold `@` or when the user is empty.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import structlog

from orchestrator.api.app import create_app
from orchestrator.logs import REDACTED, configure_logging, get_logger, redact_value
from orchestrator.settings import Settings
from orchestrator.store import tokens as token_store
from tests.integration.test_api_support import auth


class _Terminal(io.StringIO):
    """A stream that says it is a terminal: the console renderer then uses colours."""

    def isatty(self) -> bool:
        return True


def plain(text: str) -> str:
    """`text` without the colour escapes of a terminal."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def with_password(url: str, password: str) -> str:
    """`url` with `password` as its password (the user kept)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or "postgres"
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query,
                       parts.fragment))


# ------------------------------------------------------------------ finding 7: URLs
@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://u:p@ss@db.example.net/x", f"postgresql://u:{REDACTED}@db.example.net/x"),
    ("postgresql://u:p@s@s@db:5432/x?sslmode=require",
     f"postgresql://u:{REDACTED}@db:5432/x?sslmode=require"),
    ("postgresql://:s3cret@db.example.net/x", f"postgresql://:{REDACTED}@db.example.net/x"),
    ("postgresql://:p@ss@db/x", f"postgresql://:{REDACTED}@db/x"),
    ("postgresql://u:hunter2@db/x", f"postgresql://u:{REDACTED}@db/x"),
    # nothing to hide: unchanged
    ("postgresql://u@db/x", "postgresql://u@db/x"),
    ("https://vr-1.example.net:443/api/rest/configure/v1",
     "https://vr-1.example.net:443/api/rest/configure/v1"),
])
def test_url_passwords_are_redacted(url: str, expected: str) -> None:
    assert redact_value(url) == expected
    assert redact_value(f"cannot connect to {url}: refused") == \
        f"cannot connect to {expected}: refused"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_url_passwords_are_redacted_in_log_lines(fmt: str) -> None:
    out = io.StringIO()
    configure_logging(fmt, "debug", stream=out)  # type: ignore[arg-type]
    get_logger().info("connect", url="postgresql://u:p@ss@db/x",
                      dsn="postgresql://:s3cret@db/x",
                      note="tried postgresql://app:a@b@c@db.example.net/prod")
    text = out.getvalue()
    for secret in ("p@ss", "ss@db", "s3cret", "a@b@c", "b@c@"):
        assert secret not in text, (fmt, secret, text)
    assert "db.example.net/prod" in text


def test_api_tokens_are_redacted_in_any_text() -> None:
    token = "orch_" + "A1b2-C3d4_" * 4 + "xyz"  # the shape of store/tokens.py's tokens
    assert redact_value(f"created {token} for ci") == f"created orch_{REDACTED} for ci"
    assert redact_value({"note": [token]}) == {"note": [f"orch_{REDACTED}"]}
    # test database names and the like are not tokens
    assert redact_value("orch_test_0123456789ab") == "orch_test_0123456789ab"


# ------------------------------------------------------------------ finding 2: locals
def _fail_with_secrets(database_url: str, token: str) -> None:
    settings = {"database_url": database_url, "token": token}  # locals a renderer could show
    raise RuntimeError(f"boom with {len(settings)} settings")


@pytest.mark.parametrize("stream_type", [io.StringIO, _Terminal], ids=["plain", "colours"])
def test_console_traceback_has_no_locals(stream_type: type[io.StringIO]) -> None:
    out = stream_type()
    configure_logging("console", "info", stream=out)
    password, token = f"DbPw{uuid.uuid4().hex}", f"orch_{uuid.uuid4().hex}"
    try:
        _fail_with_secrets(f"postgresql://orchestrator:{password}@db/x", token)
    except RuntimeError:
        get_logger().exception("failed")
    text = plain(out.getvalue())
    assert "_fail_with_secrets" in text and "boom with 2 settings" in text  # a traceback
    assert password not in text
    assert token not in text


def test_console_traceback_redacts_the_exception_message() -> None:
    for out in (io.StringIO(), _Terminal()):
        configure_logging("console", "info", stream=out)
        try:
            raise ConnectionError("cannot reach postgresql://u:p@ss-w0rd@db.example.net/x")
        except ConnectionError:
            get_logger().exception("failed")
        text = plain(out.getvalue())
        assert "ss-w0rd" not in text and "ConnectionError" in text


@pytest.mark.parametrize("fmt", ["console", "console-colours", "json"])
async def test_forced_500_logs_neither_database_password_nor_token(
    pool: asyncpg.Pool, db_url: str, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token-creation handler holds the new plaintext token when it fails; the app's
    settings (and the failing frame) hold the database URL with its password."""
    from aiohttp.test_utils import TestClient, TestServer

    from orchestrator.api import tokens as api_tokens

    password = f"DbPw{uuid.uuid4().hex}"
    secret_url = with_password(db_url, password)
    out: io.StringIO = _Terminal() if fmt == "console-colours" else io.StringIO()
    configure_logging("json" if fmt == "json" else "console", "info", stream=out)

    created: list[str] = []
    real_create = token_store.create_token

    async def create_token(*args: Any, **kwargs: Any) -> Any:
        info, token = await real_create(*args, **kwargs)
        created.append(token)
        return info, token

    async def failing_audit(*_args: Any, **_kwargs: Any) -> None:
        database_url = secret_url  # a local holding the secret, in the failing frame
        raise RuntimeError(f"audit failed ({len(database_url)})")

    monkeypatch.setattr(token_store, "create_token", create_token)
    monkeypatch.setattr(api_tokens, "record_audit", failing_audit)
    _, admin = await token_store.create_token(pool, "admin", "admin")
    created.clear()

    app = create_app(pool, Settings(database_url=secret_url))
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        async with client.post("/api/v1/tokens", json={"name": "new", "role": "viewer"},
                               headers=auth(admin)) as resp:
            assert resp.status == 500
            body = await resp.text()
    finally:
        await client.close()
    (new_token,) = created
    text = plain(out.getvalue())
    assert "api_internal_error" in text and "failing_audit" in text, text[-2000:]
    for secret in (password, new_token, admin):
        assert secret not in text, f"{fmt}: a secret is in the log:\n{text}"
        assert secret not in body

