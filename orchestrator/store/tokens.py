"""API tokens: the SQL of the `api_tokens` aggregate.

A token is a high-entropy random string shown once, when it is created; the table keeps
only its SHA-256 (`token_hash`), never the token. A request's bearer token is hashed and
looked up by that hash, and the stored hash is compared again in constant time. Revoked
tokens stay in the table (their name stays taken) so the audit log keeps meaning. A token
may expire (`expires_at`, migration 0005): past it, it is refused like a revoked one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.store.db import DB

ROLES: Final = ("viewer", "operator", "admin")
TOKEN_PREFIX: Final = "orch_"  # noqa: S105 - not a secret
_COLUMNS = "id, name, role, created_at, last_used_at, revoked_at, expires_at"
# --expires-in: one or more <number><unit> parts, units w d h m s ("30d", "12h", "1d12h")
_DURATION = re.compile(r"^(?:[0-9]{1,6}[wdhms])+$")
_UNIT_SECONDS: Final = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
MIN_EXPIRY: Final = timedelta(minutes=1)
MAX_EXPIRY: Final = timedelta(days=3650)


class TokenError(OrchestratorError):
    """A token request is refused; the message says why."""


class TokenExists(TokenError):
    pass


class TokenNotFound(TokenError):
    pass


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token: never the token itself, nor its hash."""

    id: int
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    expires_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired()

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def new_token() -> str:
    """256 bits from the OS's CSPRNG, URL-safe, with a recognisable prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def parse_expiry(text: str, field: str = "--expires-in") -> timedelta:
    """`30d`, `12h`, `90m`, `2w`, `1d12h`: how long a new token lives (1 minute to 10
    years). Raises TokenError naming the field and the bad value."""
    value = text.strip().lower()
    if not _DURATION.match(value):
        raise TokenError(f"{field}: {text!r} is not a duration such as 30d, 12h, 90m or "
                         "1d12h (units w, d, h, m, s)")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in re.findall(r"([0-9]+)([wdhms])",
                                                                      value))
    duration = timedelta(seconds=seconds)
    if not MIN_EXPIRY <= duration <= MAX_EXPIRY:
        raise TokenError(f"{field}: {text!r} is out of range (1 minute to 3650 days)")
    return duration


def token_from_row(row: asyncpg.Record) -> TokenInfo:
    """The TokenInfo of a row holding the columns of `api_tokens` (never the hash)."""
    return TokenInfo(**{k: row[k] for k in ("id", "name", "role", "created_at",
                                            "last_used_at", "revoked_at", "expires_at")})


_info = token_from_row


async def create_token(conn: DB, name: str, role: str, *,
                       expires_in: timedelta | None = None) -> tuple[TokenInfo, str]:
    """Store a new token; returns (info, token). The token is not kept anywhere. With
    `expires_in`, it is refused (401) from now + expires_in on."""
    if role not in ROLES:
        raise TokenError(f"role: {role!r} is not one of {', '.join(ROLES)}")
    if not name.strip():
        raise TokenError("name: required, got an empty value")
    token = new_token()
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO api_tokens (name, role, token_hash, expires_at)
                VALUES ($1, $2, $3, now() + $4::interval)
                RETURNING {_COLUMNS}""",
            name, role, hash_token(token), expires_in,
        )
    except asyncpg.UniqueViolationError:
        raise TokenExists(
            f"name: a token named {name!r} exists (revoked tokens keep their name)"
        ) from None
    assert row is not None
    return _info(row), token


async def lookup(conn: DB, token: str) -> TokenInfo | None:
    """The token matching `token` (revoked or expired ones too: `active` says), or None."""
    digest = hash_token(token)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, token_hash FROM api_tokens WHERE token_hash = $1", digest
    )
    if row is None or not hmac.compare_digest(row["token_hash"], digest):
        return None
    return _info(row)


async def authenticate(conn: DB, token: str) -> TokenInfo | None:
    """The active token matching `token`, or None (unknown, revoked or expired)."""
    info = await lookup(conn, token)
    return info if info is not None and info.active else None


async def active_by_id(conn: DB, token_id: int) -> TokenInfo | None:
    """The token with this id if it is active (not revoked, not expired), else None: how
    an open event stream checks its token again, however it was opened."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_tokens WHERE id = $1", token_id)
    info = _info(row) if row is not None else None
    return info if info is not None and info.active else None


async def touch_token(conn: DB, token_id: int) -> None:
    """Record that the token was just used."""
    await conn.execute("UPDATE api_tokens SET last_used_at = now() WHERE id = $1", token_id)


async def list_tokens(conn: DB, *, include_revoked: bool = True) -> list[TokenInfo]:
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM api_tokens
            WHERE $1 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))
            ORDER BY name""",
        include_revoked,
    )
    return [_info(r) for r in rows]


async def get_token(conn: DB, name: str) -> TokenInfo | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_tokens WHERE name = $1", name)
    return _info(row) if row else None


async def revoke_token(conn: DB, name: str) -> TokenInfo:
    """Revoke by name; revoking a revoked token is a no-op that returns it unchanged."""
    row = await conn.fetchrow(
        f"""UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
            WHERE name = $1 RETURNING {_COLUMNS}""",
        name,
    )
    if row is None:
        raise TokenNotFound(f"no token named {name!r}")
    return _info(row)
