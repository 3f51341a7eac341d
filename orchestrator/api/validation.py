"""Validation of what a request carries: query, path and header parameters, JSON bodies.

Parameters are declared once as `Param`s: the same declaration parses the request and
becomes the parameter's entry in the OpenAPI document, so the two cannot drift apart.
Bodies are pydantic models (strict, `extra="forbid"`), read by `read_model`; their JSON
Schema is the document's request schema. Every failure is a `Problem` that names the field
and the value; text that PostgreSQL cannot store (NUL, lone surrogates) is refused here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from orchestrator.api.models import PATTERN_HINTS
from orchestrator.api.problems import FieldError, Problem, bad_request, show

KiB: Final = 1024
MiB: Final = 1024 * KiB
BODY_LIMIT: Final = 1 * MiB
IMPORT_LIMIT: Final = 16 * MiB
BIGINT_MAX: Final = 2**63 - 1

Kind = Literal["integer", "string", "boolean"]
Where = Literal["query", "path", "header"]

# Characters no parameter may hold (C0/C1 controls): PostgreSQL refuses NUL, logs and
# headers are not the place for the others.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_INTEGER = re.compile(r"^-?[0-9]{1,20}$")


@dataclass(frozen=True)
class Param:
    """One query, path or header parameter: parsing rules and documentation in one."""

    name: str
    where: Where
    kind: Kind = "string"
    description: str = ""
    required: bool = False
    many: bool = False  # a query parameter that may repeat (?state=A&state=B)
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    default: Any = None
    example: Any = None
    # the documented schema is this component of the document (e.g. TimeZone: the server's
    # own list of zones), when the rules above cannot say all the handler checks
    ref: str | None = None
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern:
            object.__setattr__(self, "_regex", re.compile(self.pattern))

    @property
    def label(self) -> str:
        return {"query": "query parameter", "path": "path parameter",
                "header": "header"}[self.where] + f" {self.name}"

    def schema(self) -> dict[str, Any]:
        if self.ref is not None:  # documented as that component; checked as declared here
            return {"$ref": f"#/components/schemas/{self.ref}"}
        one: dict[str, Any] = {"type": self.kind}
        for key, value in (("minimum", self.minimum), ("maximum", self.maximum),
                           ("minLength", self.min_length), ("maxLength", self.max_length),
                           ("pattern", self.pattern)):
            if value is not None:
                one[key] = value
        if self.enum is not None:
            one["enum"] = list(self.enum)
        if self.many:
            out: dict[str, Any] = {"type": "array", "items": one, "maxItems": 20}
            return out
        if self.default is not None:
            one["default"] = self.default
        return one

    def to_openapi(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "in": self.where, "required": self.required or
            self.where == "path", "schema": self.schema(),
        }
        if self.description:
            out["description"] = self.description
        if self.many:
            out["style"] = "form"
            out["explode"] = True
        if self.example is not None:
            out["example"] = self.example
        return out

    def convert(self, raw: str) -> Any:
        """One raw text value to its typed value, or a Problem naming it."""
        if _CONTROL.search(raw) or not _encodable(raw):
            raise bad_request(self.label, "must not contain control characters", raw)
        if self.kind == "integer":
            if not _INTEGER.match(raw):
                raise bad_request(self.label, "must be an integer", raw)
            value: Any = int(raw)
            low = self.minimum
            high = self.maximum
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"between {low} and {high}" if high is not None else f">= {low}"
                raise bad_request(self.label, f"must be an integer {span}", raw)
            return value
        if self.kind == "boolean":
            if raw not in ("true", "false"):
                raise bad_request(self.label, "must be true or false", raw)
            return raw == "true"
        if self.min_length is not None and len(raw) < self.min_length:
            raise bad_request(self.label, f"must be at least {self.min_length} characters",
                              raw)
        if self.max_length is not None and len(raw) > self.max_length:
            raise bad_request(self.label, f"must be at most {self.max_length} characters",
                              raw)
        if self.enum is not None and raw not in self.enum:
            raise bad_request(self.label, f"must be one of {', '.join(self.enum)}", raw)
        if self._regex is not None and not self._regex.fullmatch(raw):
            raise bad_request(self.label, f"must match {self.pattern}", raw)
        return raw


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_params(request: web.Request, params: tuple[Param, ...]) -> dict[str, Any]:
    """Every declared parameter of the request, typed; unknown query parameters refused."""
    out: dict[str, Any] = {}
    query = request.rel_url.query
    known = {p.name for p in params if p.where == "query"}
    for name in query:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise bad_request(f"query parameter {name}",
                              f"unknown parameter (known: {listed})")
    for p in params:
        if p.where == "query":
            values = query.getall(p.name, [])
            if not p.many and len(values) > 1:
                raise bad_request(p.label, "must be given at most once", values)
            if p.many:
                if len(values) > 20:
                    raise bad_request(p.label, "must be given at most 20 times")
                out[p.name] = [p.convert(v) for v in values]
                continue
            raw = values[0] if values else None
        elif p.where == "path":
            raw = request.match_info.get(p.name)
        else:
            raw = request.headers.get(p.name)
        if raw is None:
            if p.required:
                raise bad_request(p.label, "is required")
            out[p.name] = p.default
            continue
        out[p.name] = p.convert(raw)
    return out


# ------------------------------------------------------------------ cursors
# A cursor is the sort key of the last item of the previous page. Clients treat it as
# opaque text; any value of the documented form is valid (past the end: an empty page).
def encode_cursor(key: int) -> str:
    return str(key)


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    value = int(cursor)
    if value > BIGINT_MAX:
        raise bad_request("query parameter cursor", "is not a cursor this API returned",
                          cursor)
    return value


CURSOR = Param("cursor", "query", description="The `next_cursor` of the previous page "
               "(opaque).", pattern=r"^[0-9]{1,18}$")


def limit_param(default: int = 100, maximum: int = 500) -> Param:
    return Param("limit", "query", "integer", minimum=1, maximum=maximum, default=default,
                 description=f"Items per page (default {default}, at most {maximum}).")


# ------------------------------------------------------------------ bodies
async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, at most `limit` bytes (413 beyond)."""
    length = request.content_length
    if length is not None and length > limit:
        raise Problem(413, f"the body is {length} bytes; this operation accepts at most "
                           f"{limit} bytes", max_bytes=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * KiB):
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the body is larger than the {limit} bytes this operation "
                               "accepts", max_bytes=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: web.Request) -> str:
    return request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise bad_request("body", f"is not UTF-8 text (byte {exc.start})") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_INTEGRAL_LIMIT: Final = Decimal(2) ** 63  # beyond any integer field's maximum


def _float(text: str) -> float | int:
    """A JSON number written with a fraction or an exponent. One without a fractional part
    (`16275.0`, `1e3`) is an integer in JSON Schema's data model, so the document's
    `"type": "integer"` admits it: it is read as that integer (exactly, through Decimal),
    and every integer field accepts it. Float fields accept integers anyway."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    exact = Decimal(text)
    if exact == exact.to_integral_value() and abs(exact) <= _INTEGRAL_LIMIT:
        return int(exact)
    return value


def parse_json(text: str) -> Any:
    """Standard JSON only (no NaN/Infinity), text that PostgreSQL can store."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_float)
    except json.JSONDecodeError as exc:
        raise bad_request("body", f"is not valid JSON: {exc.msg} at line {exc.lineno} "
                                  f"column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise bad_request("body", f"is not acceptable JSON: {exc}") from None
    bad = next(_bad_text(value, "body"), None)
    if bad is not None:
        where, what = bad
        raise bad_request(where, what, status=422)
    return value


def _bad_text(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if "\x00" in value:
            yield where, "must not contain the NUL character (U+0000)"
        elif not _encodable(value):
            yield where, "must not contain unpaired surrogates"
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _bad_text(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _bad_text(key, f"{where} key")
            yield from _bad_text(item, f"{where}.{key}")


async def read_json(request: web.Request, limit: int = BODY_LIMIT) -> Any:
    if media_type(request) != "application/json":
        got = request.headers.get("Content-Type")
        raise Problem(415, f"Content-Type: send application/json; got {show(got)}",
                      errors=[FieldError("Content-Type", "must be application/json")])
    body = await read_body(request, limit)
    if not body.strip():
        raise bad_request("body", "is empty; send a JSON object")
    return parse_json(decode_text(body))


M = TypeVar("M", bound=BaseModel)


def field_name(loc: tuple[int | str, ...]) -> str:
    out = "body"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def validation_problem(exc: ValidationError, *, prefix: tuple[str, ...] = ()) -> Problem:
    errors: list[FieldError] = []
    for err in exc.errors(include_url=False):
        name = field_name(prefix + tuple(err["loc"]))
        message = str(err["msg"]).removeprefix("Value error, ")
        pattern = (err.get("ctx") or {}).get("pattern")
        if err["type"] == "string_pattern_mismatch" and pattern in PATTERN_HINTS:
            message = PATTERN_HINTS[pattern]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        elif err["type"] != "missing":
            message += f"; got {show(err.get('input'))}"
        errors.append(FieldError(name, message))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
    if len(errors) > 5:
        detail += f"; and {len(errors) - 5} more"
    return Problem(422, detail, errors=errors)


async def read_model(request: web.Request, model: type[M], limit: int = BODY_LIMIT) -> M:
    data = await read_json(request, limit)
    if not isinstance(data, dict):
        raise bad_request("body", "must be a JSON object", data, status=422)
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise validation_problem(exc) from None


async def read_no_body(request: web.Request) -> None:
    """Operations without a body accept none, or an empty JSON object."""
    body = await read_body(request, 4 * KiB)
    if not body.strip():
        return
    if media_type(request) != "application/json":
        raise Problem(415, "this operation takes no body",
                      errors=[FieldError("body", "must be empty")])
    data = parse_json(decode_text(body))
    if data != {}:
        raise bad_request("body", "this operation takes no body (or {})", data, status=422)
