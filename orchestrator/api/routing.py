"""Operations: one declaration per route, from which the app routes and the OpenAPI
document is written (method, path, role, parameters, body, responses)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from pydantic import BaseModel

from orchestrator.api.auth import Authenticator, Role
from orchestrator.api.validation import Param, parse_params
from orchestrator.store.audit import Actor
from orchestrator.store.tokens import TokenInfo

if TYPE_CHECKING:
    import asyncpg

    from orchestrator.api.metrics import ApiMetrics
    from orchestrator.settings import Settings


@dataclass
class ApiState:
    """What every handler of one app shares."""

    pool: asyncpg.Pool
    settings: Settings
    metrics: ApiMetrics
    engine: Any = None  # the in-process Engine, when there is one (see metrics.EngineView)
    http: Any = None  # its ApplianceHttp
    auth: Authenticator = field(default_factory=Authenticator)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    sse_keepalive: float = 15.0
    sse_poll: float = 0.25

    def __post_init__(self) -> None:
        self.auth.configure(self.settings)  # token cache and failure limit


STATE: Final = web.AppKey("orchestrator_api_state", ApiState)


@dataclass(frozen=True)
class Call:
    """One request, its validated parameters and its caller."""

    request: web.Request
    params: dict[str, Any]
    token: TokenInfo | None
    state: ApiState

    @property
    def pool(self) -> asyncpg.Pool:
        return self.state.pool

    @property
    def actor(self) -> Actor:
        assert self.token is not None
        return Actor(name=self.token.name, via="api")


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Resp:
    """A success response: description, schema (a $ref name or a schema), media type."""

    description: str
    schema: str | dict[str, Any] | None = None
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()  # names of documented response headers
    extra_media: tuple[tuple[str, dict[str, Any]], ...] = ()
    # OpenAPI links: operationId -> {parameter: runtime expression}
    links: tuple[tuple[str, str, str], ...] = ()  # (operationId, parameter, expression)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    tag: str
    role: Role | None
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_doc: dict[str, Any] | None = None  # a requestBody written by hand (CSV import)
    responses: dict[int, Resp] = field(default_factory=dict)
    errors: tuple[int, ...] = ()  # problem statuses besides those implied below
    description: str = ""
    uses_database: bool = True
    # also authenticated by `?ticket=` (a stream ticket, api/auth.py) instead of the
    # Authorization header: for clients that cannot send a header (EventSource)
    ticket_auth: bool = False

    @property
    def mutation(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    def route_path(self) -> str:
        """The path as routed: integer path parameters match digits only, so that
        `/rollouts/plan` is never taken for `/rollouts/{id}`; a path parameter with a
        fixed set of values (the files of a page) matches those only: anything else is
        404, no such path."""
        path = self.path
        for p in self.params:
            if p.where == "path" and p.kind == "integer":
                path = path.replace(f"{{{p.name}}}", f"{{{p.name}:[0-9]{{1,19}}}}")
            elif p.where == "path" and p.enum:
                values = "|".join(re.escape(v) for v in p.enum)
                path = path.replace(f"{{{p.name}}}", f"{{{p.name}:(?:{values})}}")
        return path

    def problem_statuses(self) -> list[int]:
        found = set(self.errors)
        if self.role:
            found |= {401, 403, 429}  # 429: too many failed authentications (api/auth.py)
        if self.params:
            found.add(400)
        if any(p.where == "path" for p in self.params):
            found.add(404)
        if self.body is not None or self.body_doc is not None or self.mutation:
            found |= {400, 413, 415, 422}
        found.add(500)
        if self.uses_database:
            found.add(503)
        return sorted(found)


def wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        token = None
        if op.role is not None:
            if op.ticket_auth and "ticket" in request.rel_url.query:
                token = await state.auth.check_ticket(state.pool, request, op.role)
            else:
                token = await state.auth.check(state.pool, request, op.role,
                                               ticket_ok=op.ticket_auth)
        params = parse_params(request, op.params)
        return await op.handler(Call(request, params, token, state))

    handle.__name__ = op.operation_id
    return handle


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(data, ensure_ascii=False, default=str),
        content_type="application/json", headers=headers,
    )


def page(items: list[dict[str, Any]], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor}
