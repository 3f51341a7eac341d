"""`/api/v1/tokens`: API tokens (admin only). A new token is shown once, in the response
that creates it; only its SHA-256 is stored."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from orchestrator.api.models import TOKEN_NAME, TokenCreate
from orchestrator.api.problems import FieldError, Problem
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.validation import Param, read_model
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import record_audit
from orchestrator.store.tokens import TokenError, TokenExists, TokenNotFound

NAME_PARAM: Final = Param("name", "path", pattern=TOKEN_NAME, max_length=100,
                          description="The token's name.")


async def list_tokens(call: Call) -> web.StreamResponse:
    items = await token_store.list_tokens(call.pool,
                                          include_revoked=call.params["include_revoked"])
    return json_response({"items": [t.to_dict() for t in items]})


async def create_token(call: Call) -> web.StreamResponse:
    body = await read_model(call.request, TokenCreate)
    expires_in = None
    if body.expires_in is not None:
        try:
            expires_in = token_store.parse_expiry(body.expires_in, "body.expires_in")
        except TokenError as exc:
            raise Problem(422, str(exc), errors=[FieldError("body.expires_in", str(exc))]) \
                from None
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            info, token = await token_store.create_token(conn, body.name, body.role,
                                                         expires_in=expires_in)
        except TokenExists as exc:
            raise Problem(409, str(exc), errors=[FieldError("body.name", str(exc))]) from None
        await record_audit(conn, call.actor, "token.create", "token", info.name,
                           {"role": info.role, "expires_at": info.to_dict()["expires_at"]})
    return json_response({**info.to_dict(), "token": token}, 201,
                         {"Location": f"/api/v1/tokens/{info.name}",
                          "Cache-Control": "no-store"})


async def revoke_token(call: Call) -> web.StreamResponse:
    name = call.params["name"]
    async with call.pool.acquire() as conn, conn.transaction():
        try:
            info = await token_store.revoke_token(conn, name)
        except TokenNotFound as exc:
            raise Problem(404, str(exc)) from None
        await record_audit(conn, call.actor, "token.revoke", "token", name, {})
    call.state.auth.forget(name)  # at once here; other processes within their cache time
    return json_response(info.to_dict())


OPERATIONS: Final = (
    Operation(
        "GET", "/api/v1/tokens", list_tokens, "listTokens", "List API tokens", "tokens",
        "admin",
        params=(Param("include_revoked", "query", "boolean", default=True,
                      description="false: active tokens only (not revoked, not expired)."),),
        responses={200: Resp("Every token (never the token itself), with its expiry.",
                             "TokenList")},
    ),
    Operation(
        "POST", "/api/v1/tokens", create_token, "createToken", "Create an API token",
        "tokens", "admin", body=TokenCreate,
        responses={201: Resp("Created: `token` is shown this once.", "TokenCreated",
                             headers=("Location",),
                             links=(("revokeToken", "name", "$response.body#/name"),))},
        errors=(409,),
        description="`expires_in` (e.g. `30d`) makes it expire: from then on it is refused "
                    "(401) like a revoked one.",
    ),
    Operation(
        "DELETE", "/api/v1/tokens/{name}", revoke_token, "revokeToken",
        "Revoke an API token", "tokens", "admin", params=(NAME_PARAM,),
        responses={200: Resp("Revoked (revoking twice is harmless).", "Token")},
        description="Refused at once by the process that answers; other `serve` processes "
                    "may accept it for up to `api_token_cache_seconds` (5 s) more.",
    ),
)
