"""Bearer tokens and roles.

`viewer` reads, `operator` also steers rollouts, `admin` also changes the inventory and the
tokens (admin can do everything). No token, or an unknown or revoked one: 401 with
`WWW-Authenticate: Bearer`. A role too low: 403 naming the role that is needed.
"""

from __future__ import annotations

import re
import time
from typing import Final, Literal

from aiohttp import web

from orchestrator.api.problems import FieldError, Problem
from orchestrator.store import tokens as token_store
from orchestrator.store.db import DB
from orchestrator.store.tokens import TokenInfo

Role = Literal["viewer", "operator", "admin"]
RANK: Final[dict[str, int]] = {"viewer": 1, "operator": 2, "admin": 3}
REALM: Final = 'Bearer realm="orchestrator"'
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")
TOUCH_EVERY: Final = 60.0  # seconds between two last_used_at writes of one token


def allows(role: str, required: Role) -> bool:
    return RANK.get(role, 0) >= RANK[required]


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = REALM + (f', error="{error}"' if error else "")
    return Problem(401, detail, headers={"WWW-Authenticate": challenge},
                   errors=[FieldError("Authorization", detail)])


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization")
    if not header:
        raise _unauthorized("send an Authorization: Bearer <token> header")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("the Authorization header must be 'Bearer <token>'",
                            "invalid_request")
    if not _TOKEN.match(token):
        raise _unauthorized("the bearer token is not valid", "invalid_token")
    return token


class Authenticator:
    """Checks tokens against `api_tokens`; records use at most once a minute per token."""

    def __init__(self) -> None:
        self._touched: dict[int, float] = {}

    async def check(self, db: DB, request: web.Request, required: Role) -> TokenInfo:
        token = bearer_token(request)
        info = await token_store.authenticate(db, token)
        if info is None:
            raise _unauthorized("the bearer token is unknown or revoked", "invalid_token")
        if not allows(info.role, required):
            raise Problem(
                403, f"token {info.name!r} has the role {info.role}; this needs {required}",
                required_role=required, role=info.role,
                errors=[FieldError("Authorization", f"role {required} or higher required")],
            )
        now = time.monotonic()
        if now - self._touched.get(info.id, -TOUCH_EVERY) >= TOUCH_EVERY:
            self._touched[info.id] = now
            await token_store.touch_token(db, info.id)
        return info
