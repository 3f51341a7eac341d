"""Errors as `application/problem+json` (RFC 9457), and the middleware that guarantees them.

Every error response carries `type` (a link to its explanation on `/api/reference`), `title`,
`status` and a `detail` that names the offending field and value; validation errors add
`errors`, one item per problem (`field`, `message`, and `line` for inventory rows). An
unexpected exception is logged with an id and answered with a generic 500 problem that
carries the same id: never a stack trace.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from orchestrator.domain.errors import OrchestratorError
from orchestrator.logs import get_logger
from orchestrator.store.db import DB_UNAVAILABLE

log = get_logger("orchestrator.api")

CONTENT_TYPE: Final = "application/problem+json"
DOCS_PATH: Final = "/api/reference"

# slug -> (title, what it means); /api/reference lists them under #problem-<slug>
TYPES: Final[dict[str, tuple[str, str]]] = {
    "bad-request": ("Bad request", "A query, path or header parameter, or the body's JSON "
                    "syntax, is invalid; `detail` and `errors` name it."),
    "validation-error": ("Invalid request body", "The body is well-formed JSON (or CSV) but "
                         "a field is missing, unknown or invalid; `errors` lists each one."),
    "unauthorized": ("Authentication required", "No bearer token, or a token that is unknown "
                     "or revoked."),
    "forbidden": ("Role too low", "The token's role may not do this; `required_role` says "
                  "which role may. Also a separation-of-duties rule: `strategy.windows: "
                  "ignore` needs an admin, and with `api_forbid_self_approval` the token "
                  "that created a rollout may not approve it."),
    "not-found": ("Not found", "No such resource, or no such path."),
    "method-not-allowed": ("Method not allowed", "The path exists but not with this method; "
                           "the `Allow` header lists the methods it has."),
    "conflict": ("Conflict", "The request is valid but the resource's current state forbids "
                 "it (a rollout control in the wrong state, a name already taken, an "
                 "appliance still referenced by tasks, an Idempotency-Key reused with "
                 "another body)."),
    "payload-too-large": ("Payload too large", "The body is larger than this operation "
                          "accepts."),
    "unsupported-media-type": ("Unsupported media type", "The body's Content-Type is not one "
                               "this operation accepts."),
    "too-many-requests": ("Too many requests", "A limit was reached (e.g. open event "
                          "streams per token or in all, or too many failed "
                          "authentications from one client address); `Retry-After` says "
                          "when to try again."),
    "service-unavailable": ("Service unavailable", "The database cannot be reached, has "
                            "no connection free in time, or is not migrated, or (`/readyz`) "
                            "the engine this process runs is not live; retry later."),
    "internal-error": ("Internal error", "An unexpected error; it is logged on the server "
                       "with the `error_id` given in the response."),
}

STATUS_SLUGS: Final = {
    400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found",
    405: "method-not-allowed", 409: "conflict", 413: "payload-too-large",
    415: "unsupported-media-type", 422: "validation-error", 429: "too-many-requests",
    500: "internal-error",
    503: "service-unavailable",
}


def type_uri(slug: str) -> str:
    return f"{DOCS_PATH}#problem-{slug}"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str
    line: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field, "message": self.message}
        if self.line is not None:
            out["line"] = self.line
        return out


class Problem(OrchestratorError):
    """Raise anywhere in a handler: the middleware turns it into the response.

    An error the orchestrator raises on purpose (an HTTP error answer), hence an
    `OrchestratorError`; the middleware catches `Problem` first, by name."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status = status
        self.slug = slug or STATUS_SLUGS.get(status, "bad-request")
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra
        super().__init__(detail)

    def body(self) -> dict[str, Any]:
        title = TYPES[self.slug][0]
        out: dict[str, Any] = {
            "type": type_uri(self.slug), "title": title, "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            out["errors"] = [e.to_dict() for e in self.errors]
        out.update(self.extra)
        return out

    def response(self) -> web.Response:
        return problem_response(self.status, self.body(), self.headers)


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False, default=str),
        content_type=CONTENT_TYPE, headers=headers,
    )


def bad_request(field: str, message: str, value: Any = None, *, status: int = 400) -> Problem:
    """A problem naming one field (and its value, when given)."""
    shown = f"; got {show(value)}" if value is not None else ""
    return Problem(status, f"{field}: {message}{shown}",
                   errors=[FieldError(field, message + shown)])


def show(value: Any, limit: int = 120) -> str:
    """A value as JSON for a message, shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    status = exc.status
    slug = STATUS_SLUGS.get(status, "bad-request")
    headers: dict[str, str] = {}
    if status == 405:
        allow = exc.headers.get("Allow", "")
        headers["Allow"] = allow
        detail = f"method not allowed on this path (allowed: {allow})"
    elif status == 404:
        detail = "no such path"
    elif status == 413:
        detail = "the body is larger than this server accepts"
    else:
        detail = exc.reason or TYPES.get(slug, ("", ""))[0]
    body = {"type": type_uri(slug), "title": TYPES[slug][0] if slug in TYPES else exc.reason,
            "status": status, "detail": detail}
    return problem_response(status, body, headers)


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return problem.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client went away: nobody to answer
    except DB_UNAVAILABLE as exc:  # failures of the database a retry may cure: 503, not 500
        error_id = uuid.uuid4().hex
        log.warning("api_database_unavailable", error=type(exc).__name__, error_id=error_id,
                    method=request.method, path=request.path)
        return Problem(503, "the database is unavailable; retry later", error_id=error_id,
                       headers={"Retry-After": "5"}).response()
    except Exception:
        error_id = uuid.uuid4().hex
        log.exception("api_internal_error", error_id=error_id, method=request.method,
                      path=request.path)
        return Problem(500, f"an unexpected error occurred (error id {error_id})",
                       error_id=error_id).response()
