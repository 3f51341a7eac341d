"""Bearer tokens and roles.

`viewer` reads, `operator` also steers rollouts, `admin` also changes the inventory and the
tokens (admin can do everything). No token, or an unknown, revoked or expired one: 401 with
`WWW-Authenticate: Bearer`. A role too low: 403 naming the role that is needed.

Lookups are cached for `api_token_cache_seconds` (5 s), the misses too, so a client that
repeats a token costs one query per period; a token revoked elsewhere therefore keeps
working for at most that long (revoked through this process's API: at once). Expiry is
checked on every request against the clock, never from the cache. A client address with
more than `api_auth_failures_per_minute` failed authentications (a token presented and
refused) in the last minute gets 429 with `Retry-After` on every route that needs a token,
without a lookup, until the minute has passed. Every 401, 403 and 429 is logged
(`api_auth_denied`: route, client address, the token's name when known, never the token),
at most a few lines per address and minute (`DenialLog`).

Stream tickets (`check_ticket`): the operations that accept one (the event stream, whose
browser client EventSource cannot send a header) take `?ticket=` instead of the header. A
ticket is made by `POST /api/v1/stream-tickets` for the caller's token, works once and for
30 s (store/tickets.py); using it looks its token up again (revoked or expired: refused). A
bad, used or expired ticket is a 401 counted in the failure limit like a bad token. The
ticket is never logged.
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

from aiohttp import web

from orchestrator.api.problems import FieldError, Problem
from orchestrator.logs import get_logger
from orchestrator.store import tickets as ticket_store
from orchestrator.store import tokens as token_store
from orchestrator.store.db import DB
from orchestrator.store.tokens import TokenInfo

if TYPE_CHECKING:
    from orchestrator.settings import Settings

log = get_logger("orchestrator.api.auth")

Role = Literal["viewer", "operator", "admin"]
RANK: Final[dict[str, int]] = {"viewer": 1, "operator": 2, "admin": 3}
REALM: Final = 'Bearer realm="orchestrator"'
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{1,512}$")
TOUCH_EVERY: Final = 60.0  # seconds between two last_used_at writes of one token
_TICKET = re.compile(r"^[A-Za-z0-9_-]{20,128}$")
NEW_TICKET: Final = ("get a new one with POST /api/v1/stream-tickets (a ticket opens one "
                     f"stream, once, within {ticket_store.TICKET_SECONDS} s)")


def allows(role: str, required: Role) -> bool:
    return RANK.get(role, 0) >= RANK[required]


def _unauthorized(detail: str, error: str | None = None,
                  field: str = "Authorization") -> Problem:
    challenge = REALM + (f', error="{error}"' if error else "")
    return Problem(401, detail, headers={"WWW-Authenticate": challenge},
                   errors=[FieldError(field, detail)])


def _bad_ticket(detail: str) -> Problem:
    return _unauthorized(f"{detail}: {NEW_TICKET}", "invalid_token", "ticket")


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


WINDOW: Final = 60.0  # seconds: the failure limit counts per minute
CACHE_MAX: Final = 10_000  # cached lookups at most (a flood of made-up tokens stays bounded)
Clock = Callable[[], float]


def client_address(request: web.Request) -> str:
    """The peer's address (behind a reverse proxy: the proxy's)."""
    return request.remote or "unknown"


def route_of(request: web.Request) -> str:
    """The route template (`/api/v1/rollouts/{id}`), not the path: bounded, no ids."""
    info = request.match_info
    resource = info.route.resource if info is not None and info.route is not None else None
    return resource.canonical if resource is not None else request.path


class DenialLog:
    """Logs refused requests, `per_client` lines per address and `overall` lines in all per
    window; what it leaves out is counted and reported with the next window's first line."""

    def __init__(self, *, per_client: int = 5, overall: int = 50, window: float = WINDOW,
                 clock: Clock = time.monotonic) -> None:
        self.per_client = per_client
        self.overall = overall
        self.window = window
        self.clock = clock
        self._start = clock()
        self._lines: dict[str, int] = {}
        self._total = 0
        self._suppressed = 0

    def denied(self, request: web.Request, status: int, reason: str, **fields: Any) -> bool:
        """Log one refusal (True) unless this window's lines are used up (False)."""
        now = self.clock()
        if now - self._start >= self.window:
            if self._suppressed:
                log.warning("api_auth_denials_suppressed", count=self._suppressed,
                            window_seconds=self.window)
            self._start, self._lines, self._total, self._suppressed = now, {}, 0, 0
        client = client_address(request)
        used = self._lines.get(client, 0)
        if used >= self.per_client or self._total >= self.overall:
            self._suppressed += 1
            return False
        self._lines[client] = used + 1
        self._total += 1
        log.warning("api_auth_denied", status=status, reason=reason, method=request.method,
                    route=route_of(request), client=client,
                    **{k: v for k, v in fields.items() if v is not None})
        return True


class Authenticator:
    """Checks tokens against `api_tokens` (through a short cache), limits failed attempts
    per client address, logs refusals; records use at most once a minute per token."""

    def __init__(self, settings: Settings | None = None, *,
                 clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.cache_seconds = 5.0
        self.failure_limit = 60
        self.denials = DenialLog(clock=clock)
        self._touched: dict[int, float] = {}
        self._cache: dict[str, tuple[float, TokenInfo | None]] = {}
        self._failures: dict[str, deque[float]] = {}
        if settings is not None:
            self.configure(settings)

    def configure(self, settings: Settings) -> None:
        self.cache_seconds = settings.api_token_cache_seconds
        self.failure_limit = settings.api_auth_failures_per_minute

    # -------------------------------------------------------------- the failure limit
    def retry_after(self, client: str) -> int | None:
        """Seconds until `client` may try again, or None when it is under the limit."""
        failures = self._failures.get(client)
        if not failures:
            return None
        now = self.clock()
        while failures and now - failures[0] >= WINDOW:
            failures.popleft()
        if not failures:
            del self._failures[client]
            return None
        if len(failures) < self.failure_limit:
            return None
        return max(1, math.ceil(failures[0] + WINDOW - now))

    def _failed(self, client: str) -> None:
        failures = self._failures.get(client)
        if failures is None:
            if len(self._failures) >= CACHE_MAX:
                self._prune_failures()
            failures = self._failures[client] = deque(maxlen=self.failure_limit)
        failures.append(self.clock())

    def _prune_failures(self) -> None:
        now = self.clock()
        for client in [c for c, f in self._failures.items() if not f or now - f[-1] >= WINDOW]:
            del self._failures[client]
        if len(self._failures) >= CACHE_MAX:  # a flood from many addresses: forget the oldest
            for client in list(self._failures)[: CACHE_MAX // 2]:
                del self._failures[client]

    # -------------------------------------------------------------- the lookup cache
    async def _lookup(self, db: DB, token: str) -> TokenInfo | None:
        if self.cache_seconds <= 0:
            return await token_store.lookup(db, token)
        digest = token_store.hash_token(token)
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        info = await token_store.lookup(db, token)
        if len(self._cache) >= CACHE_MAX:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
        self._cache[digest] = (now + self.cache_seconds, info)
        return info

    def forget(self, name: str) -> None:
        """Drop the cached lookups of the token `name` (revoked through this process)."""
        self._cache = {k: v for k, v in self._cache.items()
                       if v[1] is None or v[1].name != name}

    # -------------------------------------------------------------- the check
    def _refuse(self, request: web.Request, problem: Problem, reason: str, *,
                count: bool, info: TokenInfo | None = None) -> Problem:
        if count:
            self._failed(client_address(request))
        self.denials.denied(request, problem.status, reason,
                            caller=info.name if info else None,
                            role=info.role if info else None)
        return problem

    def _check_limit(self, request: web.Request) -> None:
        client = client_address(request)
        wait = self.retry_after(client)
        if wait is not None:
            raise self._refuse(request, Problem(
                429, f"too many failed authentications from {client}: more than "
                     f"{self.failure_limit} in the last minute; retry in {wait} s",
                headers={"Retry-After": str(wait)}, retry_after=wait,
            ), "too_many_failures", count=False)

    async def check(self, db: DB, request: web.Request, required: Role, *,
                    ticket_ok: bool = False) -> TokenInfo:
        """The request's bearer token, if it may call an operation that needs `required`
        (`ticket_ok`: the operation also takes a stream ticket, which the 401 of a request
        with neither mentions)."""
        self._check_limit(request)
        try:
            token = bearer_token(request)
        except Problem as problem:
            presented = bool(request.headers.get("Authorization"))
            refused = problem
            if not presented and ticket_ok:
                refused = _unauthorized("send an Authorization: Bearer <token> header, or "
                                        "?ticket= with a ticket from POST "
                                        "/api/v1/stream-tickets")
            raise self._refuse(request, refused, "malformed" if presented else "missing",
                               count=presented) from None
        info = await self._lookup(db, token)
        if info is None or info.revoked_at is not None:
            raise self._refuse(
                request, _unauthorized("the bearer token is unknown or revoked",
                                       "invalid_token"),
                "unknown" if info is None else "revoked", count=True, info=info)
        if info.expired(datetime.now(UTC)):
            assert info.expires_at is not None
            raise self._refuse(
                request, _unauthorized(f"the bearer token {info.name!r} expired at "
                                       f"{info.expires_at.isoformat()}; create a new one",
                                       "invalid_token"),
                "expired", count=True, info=info)
        return await self._admit(db, request, info, required)

    async def check_ticket(self, db: DB, request: web.Request, required: Role) -> TokenInfo:
        """The token of the request's `?ticket=` (used up by this call), if it is active and
        may call an operation that needs `required`. The ticket is never logged."""
        self._check_limit(request)
        values = request.rel_url.query.getall("ticket", [])
        if len(values) != 1 or not _TICKET.match(values[0]):
            raise self._refuse(request, _bad_ticket(
                "query parameter ticket: give exactly one stream ticket, as it was issued"),
                "ticket_malformed", count=True)
        redeemed = await ticket_store.redeem(db, values[0])
        if redeemed is None:
            raise self._refuse(request, _bad_ticket(
                "the stream ticket is unknown, already used or expired"), "ticket_unknown",
                count=True)
        info = redeemed.token
        if redeemed.expired:
            raise self._refuse(request, _bad_ticket(
                f"the stream ticket expired at {redeemed.expires_at.isoformat()}"),
                "ticket_expired", count=True, info=info)
        if info.revoked_at is not None:
            raise self._refuse(request, _bad_ticket(
                f"the token {info.name!r} this stream ticket was made for is revoked"),
                "revoked", count=True, info=info)
        if info.expired(datetime.now(UTC)):
            assert info.expires_at is not None
            raise self._refuse(request, _bad_ticket(
                f"the token {info.name!r} this stream ticket was made for expired at "
                f"{info.expires_at.isoformat()}"), "expired", count=True, info=info)
        return await self._admit(db, request, info, required)

    async def _admit(self, db: DB, request: web.Request, info: TokenInfo,
                     required: Role) -> TokenInfo:
        """An active token: 403 when its role is too low; else records its use."""
        if not allows(info.role, required):
            raise self._refuse(request, Problem(
                403, f"token {info.name!r} has the role {info.role}; this needs {required}",
                required_role=required, role=info.role,
                errors=[FieldError("Authorization", f"role {required} or higher required")],
            ), "role", count=False, info=info)
        now = time.monotonic()
        if now - self._touched.get(info.id, -TOUCH_EVERY) >= TOUCH_EVERY:
            self._touched[info.id] = now
            await token_store.touch_token(db, info.id)
        return info

    def forbidden(self, request: web.Request, info: TokenInfo | None, reason: str,
                  detail: str, **extra: Any) -> Problem:
        """A 403 of a rule other than the role (separation of duties), logged like the
        others; the caller raises it."""
        return self._refuse(request, Problem(403, detail, **extra), reason, count=False,
                            info=info)
