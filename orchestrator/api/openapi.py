"""The OpenAPI 3.1 document, written from the operations the app routes; `/api/docs`, the
interactive documentation (Swagger UI, its files served from the `swagger-ui-py` wheel:
works offline, bearer-token "Try it out"); and `/api/reference`, the same document as a
page rendered on the server (no script at all), with the problem types that every error's
`type` links to."""

from __future__ import annotations

import functools
import html
import importlib.util
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from pydantic.json_schema import models_json_schema

from orchestrator import __version__
from orchestrator.api.models import BODY_MODELS, PATTERN_HINTS
from orchestrator.api.problems import CONTENT_TYPE as PROBLEM_TYPE
from orchestrator.api.problems import STATUS_SLUGS, TYPES
from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.schemas import SCHEMAS, ref
from orchestrator.api.validation import Param

TAGS: Final = (
    ("appliances", "The inventory: viewer reads, admin writes."),
    ("rollouts", "Rollouts and their controls: viewer reads, operator acts."),
    ("maintenance windows", "When installs may start: viewer reads, admin writes."),
    ("sites", "Fleet-wide capacity per site, all rollouts together: viewer reads, admin "
              "writes."),
    ("webhooks", "Notifications: webhooks and their deliveries (admin)."),
    ("tasks", "What happened to each appliance of a rollout."),
    ("events", "Server-sent events of a rollout's progress."),
    ("audit", "Who did what."),
    ("tokens", "API tokens: the caller's own (any role), every token (admin)."),
    ("health", "Liveness, readiness and metrics (no token)."),
    ("docs", "This document and its pages (no token)."),
    ("console", "The operator console: its page and files (no token)."),
)

DESCRIPTION: Final = """\
REST API of the fleet update orchestrator.

Authentication: `Authorization: Bearer <token>`. Tokens are created with
`orchestrator tokens create --name N --role R` or `POST /api/v1/tokens`; roles are
`viewer` (read), `operator` (also rollout actions) and `admin` (also inventory, tokens
and webhooks). A token may expire (`expires_in`); a revoked one may work for up to
`api_token_cache_seconds` (5 s) more. Too many failed authentications from one client
address in a minute: 429 with `Retry-After`. Errors are `application/problem+json`
(RFC 9457) naming the offending field and value. Lists are paginated with `limit` and an
opaque `cursor` (`next_cursor` of the previous page; null on the last page). Unknown query
parameters and unknown body fields are refused. Bodies are limited to 1 MiB (16 MiB for the
bulk import).
"""

HEADERS: Final[dict[str, dict[str, Any]]] = {
    "Location": {"description": "The URL of the resource.", "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "true: this answers a repeated request.",
                            "schema": {"type": "string", "enum": ["true"]}},
    "WWW-Authenticate": {"description": "The Bearer challenge.", "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds to wait before retrying.",
                    "schema": {"type": "string"}},
}


def _schema(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return ref(value) if isinstance(value, str) else value


def _success(resp: Resp) -> dict[str, Any]:
    out: dict[str, Any] = {"description": resp.description}
    schema = _schema(resp.schema)
    if schema is not None:
        content = {resp.media_type: {"schema": schema}}
        for media, extra in resp.extra_media:
            content[media] = {"schema": extra}
        out["content"] = content
    if resp.headers:
        out["headers"] = {h: HEADERS[h] for h in resp.headers}
    if resp.links:
        out["links"] = {op_id: {"operationId": op_id, "parameters": {param: expression}}
                        for op_id, param, expression in resp.links}
    return out


def _problem(status: int) -> dict[str, Any]:
    slug = STATUS_SLUGS[status]
    out: dict[str, Any] = {
        "description": f"{TYPES[slug][0]}: {TYPES[slug][1]}",
        "content": {PROBLEM_TYPE: {"schema": ref("Problem")}},
    }
    if status == 401:
        out["headers"] = {"WWW-Authenticate": HEADERS["WWW-Authenticate"]}
    elif status in (429, 503):
        out["headers"] = {"Retry-After": HEADERS["Retry-After"]}
    return out


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                           "tags": [op.tag]}
    description = op.description
    if op.role:
        description = (description + "\n\n" if description else "") + \
            f"Requires the **{op.role}** role (or higher)."
    if description:
        out["description"] = description
    out["x-required-role"] = op.role
    if op.params:
        out["parameters"] = [p.to_openapi() for p in op.params]
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": ref(op.body.__name__)}}}
    elif op.body_doc is not None:
        out["requestBody"] = op.body_doc
    out["security"] = [{"bearerAuth": []}] if op.role else []
    responses: dict[str, Any] = {str(s): _success(r) for s, r in sorted(op.responses.items())}
    for status in op.problem_statuses():
        responses.setdefault(str(status), _problem(status))
    out["responses"] = dict(sorted(responses.items()))
    return out


def _components(value: Any) -> Any:
    """The models' schemas with each `x-component` marker (a shape defined once, among the
    components, such as TimeZone) replaced by its $ref."""
    if isinstance(value, dict):
        if "x-component" in value:
            return ref(value["x-component"])
        return {k: _components(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_components(v) for v in value]
    return value


def build_document(operations: Iterable[Operation]) -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in BODY_MODELS],
                                 ref_template="#/components/schemas/{model}")
    schemas = {**SCHEMAS, **_components(defs.get("$defs", {}))}
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Fleet update orchestrator", "version": __version__,
                 "description": DESCRIPTION},
        "servers": [{"url": "/"}],
        "tags": [{"name": n, "description": d} for n, d in TAGS],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "A token from `orchestrator tokens create` or "
                               "POST /api/v1/tokens.",
            }},
        },
    }


# ------------------------------------------------------------------ handlers
DOCUMENT: Final = web.AppKey("orchestrator_openapi", dict)


async def openapi_json(call: Call) -> web.StreamResponse:
    return json_response(call.request.app[DOCUMENT])


async def reference_page(call: Call) -> web.StreamResponse:
    return web.Response(text=_render_page(json.dumps(call.request.app[DOCUMENT])),
                        content_type="text/html", charset="utf-8")


# ------------------------------------------------------------------ Swagger UI
# The files /api/docs loads: Swagger UI's own (from the swagger-ui-py wheel, which ships
# Swagger UI 5, the first to read OpenAPI 3.1) and the page's script (api/static/docs.js).
ASSETS: Final[dict[str, str]] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "docs.js": "text/javascript",
}
ASSET_CACHE_SECONDS: Final = 3600

# Swagger UI needs scripts of its own origin and inline style attributes (React sets
# them); everything else stays as strict as the other pages (headers.py).
DOCS_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

DOCS_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Fleet update orchestrator API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" type="image/png" href="/api/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/api/docs/assets/swagger-ui.css">
</head><body>
<noscript>This page needs JavaScript: <a href="/api/reference">/api/reference</a> is the same
document without it.</noscript>
<div id="swagger-ui"></div>
<script src="/api/docs/assets/swagger-ui-bundle.js"></script>
<script src="/api/docs/assets/docs.js"></script>
</body></html>
"""


def _swagger_ui_dir() -> Path:
    """Swagger UI's files in the installed swagger-ui-py wheel (found without importing
    the package, whose import pulls in its template engine)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (a dependency of orchestrator: "
                           "`make install` installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@functools.cache
def _asset(name: str) -> bytes:
    if name == "docs.js":
        return (Path(__file__).parent / "static" / "docs.js").read_bytes()
    return (_swagger_ui_dir() / name).read_bytes()


async def docs_page(call: Call) -> web.StreamResponse:
    response = web.Response(text=DOCS_PAGE, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = DOCS_POLICY
    return response


async def docs_asset(call: Call) -> web.StreamResponse:
    name = call.params["name"]
    return web.Response(body=_asset(name), content_type=ASSETS[name],
                        headers={"Cache-Control": f"public, max-age={ASSET_CACHE_SECONDS}"})


OPERATIONS: Final = (
    Operation("GET", "/api/v1/openapi.json", openapi_json, "openapi",
              "This OpenAPI 3.1 document", "docs", None,
              responses={200: Resp("The document.", {"type": "object"})},
              uses_database=False),
    Operation("GET", "/api/docs", docs_page, "docs",
              "The interactive documentation (Swagger UI)", "docs", None,
              responses={200: Resp("An HTML page that loads Swagger UI over this document.",
                                   {"type": "string"}, media_type="text/html")},
              uses_database=False),
    Operation("GET", "/api/docs/assets/{name}", docs_asset, "docsAsset",
              "A file of the interactive documentation", "docs", None,
              params=(Param("name", "path", enum=tuple(ASSETS),
                            description="Swagger UI's script, style sheet and icon, and the "
                                        "page's own script."),),
              responses={200: Resp("The file.", {"type": "string"},
                                   media_type="text/javascript",
                                   extra_media=(("text/css", {"type": "string"}),
                                                ("image/png", {"type": "string"})))},
              uses_database=False),
    Operation("GET", "/api/reference", reference_page, "reference",
              "This document as a page without script, with the problem types", "docs", None,
              responses={200: Resp("An HTML page rendered from the document.",
                                   {"type": "string"}, media_type="text/html")},
              uses_database=False),
)


# ------------------------------------------------------------------ the docs page
_STYLE: Final = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:1100px;margin:auto;padding:1rem 2rem 4rem}
h1{margin:.5rem 0}h2{border-bottom:2px solid #dde3ea;padding-top:1.5rem}
nav a{margin-right:1rem}
.op{background:#fff;border:1px solid #dde3ea;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700;font-family:monospace}
.GET{color:#0a6b2e}.POST{color:#1450a3}.PUT{color:#5b3a99}.PATCH{color:#8a5a00}.DELETE{color:#a11}
code,.p{font-family:ui-monospace,monospace;font-size:14px}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #e3e7ec;padding:.2rem .5rem;
text-align:left;vertical-align:top}
pre{background:#f3f5f8;padding:.6rem;overflow:auto;font-size:13px;max-height:28rem}
.role{font-size:12px;background:#eef2f7;border-radius:4px;padding:.1rem .4rem}
details summary{cursor:pointer}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _md(text: str) -> str:
    """The little markdown the descriptions use: `code` and **bold**."""
    out = _e(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _type_of(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = str(schema["$ref"]).rsplit("/", 1)[-1]
        return f'<a href="#schema-{_e(name)}">{_e(name)}</a>'
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(_type_of(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    extras = []
    for key in ("enum", "minimum", "maximum", "minLength", "maxLength", "pattern",
                "default"):
        if key in schema:
            if key == "pattern" and schema[key] in PATTERN_HINTS:
                extras.append(PATTERN_HINTS[schema[key]])
            else:
                extras.append(f"{key} {json.dumps(schema[key])}")
    return _e(kind) + (f' <span class="p">({_e("; ".join(extras))})</span>' if extras else "")


def _fields_table(schema: dict[str, Any]) -> str:
    """The properties of an object schema: name, required, type, description."""
    required = set(schema.get("required", []))
    rows = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{'yes' if name in required else ''}</td>"
        f"<td>{_type_of(prop)}</td><td>{_md(prop.get('description', ''))}</td></tr>"
        for name, prop in schema.get("properties", {}).items()
    )
    return ("<table><tr><th>field</th><th>required</th><th>type</th><th>description</th>"
            f"</tr>{rows}</table>")


def _params_table(params: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
        f"<td>{'yes' if p.get('required') else ''}</td><td>{_type_of(p['schema'])}</td>"
        f"<td>{_md(p.get('description', ''))}</td></tr>"
        for p in params
    )
    return ("<table><tr><th>parameter</th><th>in</th><th>required</th><th>type</th>"
            f"<th>description</th></tr>{rows}</table>")


def _op_html(path: str, method: str, op: dict[str, Any],
             schemas: dict[str, dict[str, Any]]) -> str:
    role = op.get("x-required-role")
    badge = f' <span class="role">{_e(role)}</span>' if role else \
        ' <span class="role">no token</span>'
    parts = [f'<div class="op" id="op-{_e(op["operationId"])}"><div><span class="m '
             f'{_e(method.upper())}">{_e(method.upper())}</span> <code>{_e(path)}</code>'
             f"{badge}</div><div><b>{_e(op.get('summary', ''))}</b></div>"]
    if op.get("description"):
        parts.append(f"<p>{_md(op['description'])}</p>")
    if op.get("parameters"):
        parts.append(_params_table(op["parameters"]))
    body = op.get("requestBody")
    if body:
        kinds = ", ".join(
            f"{_e(media)}: {_type_of(spec.get('schema', {}))}"
            for media, spec in body.get("content", {}).items()
        )
        parts.append(f"<p>Body: {kinds}</p>")
        if body.get("description"):
            parts.append(f"<p>{_md(body['description'])}</p>")
        for spec in body.get("content", {}).values():
            target = spec.get("schema", {})
            if "$ref" in target:
                target = schemas.get(str(target["$ref"]).rsplit("/", 1)[-1], {})
            if target.get("properties"):
                parts.append(_fields_table(target))
    rows = []
    for status, resp in op.get("responses", {}).items():
        content = resp.get("content", {})
        kinds = ", ".join(f"{_e(m)} {_type_of(s.get('schema', {}))}"
                          for m, s in content.items())
        rows.append(f"<tr><td>{_e(status)}</td><td>{_md(resp.get('description', ''))}</td>"
                    f"<td>{kinds}</td></tr>")
    parts.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>"
                 + "".join(rows) + "</table></div>")
    return "".join(parts)


@functools.lru_cache(maxsize=4)
def _render_page(document_json: str) -> str:
    doc = json.loads(document_json)
    by_tag: dict[str, list[str]] = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            by_tag.setdefault(op["tags"][0], []).append(
                _op_html(path, method, op, doc["components"]["schemas"]))
    sections = []
    for tag in doc.get("tags", []):
        ops = by_tag.get(tag["name"], [])
        if ops:
            sections.append(f'<h2 id="tag-{_e(tag["name"])}">{_e(tag["name"])}</h2>'
                            f"<p>{_e(tag['description'])}</p>" + "".join(ops))
    problems = "".join(
        f'<tr id="problem-{_e(slug)}"><td><code>{_e(slug)}</code></td><td>{_e(title)}</td>'
        f"<td>{_md(text)}</td></tr>"
        for slug, (title, text) in TYPES.items()
    )
    schemas = "".join(
        f'<details id="schema-{_e(name)}"><summary><code>{_e(name)}</code> '
        f"{_md(schema.get('description', ''))}</summary>"
        + (_fields_table(schema) if schema.get("properties") else "")
        + f"<pre>{_e(json.dumps(schema, indent=2))}</pre></details>"
        for name, schema in doc["components"]["schemas"].items()
    )
    nav = "".join(f'<a href="#tag-{_e(t["name"])}">{_e(t["name"])}</a>'
                  for t in doc.get("tags", []))
    description = "".join(f"<p>{_md(p)}</p>" for p in doc["info"]["description"].split("\n\n"))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(doc['info']['title'])} API</title>"
        f'<meta name=viewport content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><main><h1>{_e(doc['info']['title'])} API "
        f"<small>{_e(doc['info']['version'])}</small></h1>{description}"
        '<p>Machine-readable: <a href="/api/v1/openapi.json">/api/v1/openapi.json</a> '
        f"(OpenAPI {_e(doc['openapi'])}).</p><nav>{nav}<a href=\"#problems\">problems</a>"
        f'<a href="#schemas">schemas</a></nav>{"".join(sections)}'
        '<h2 id="problems">Problem types</h2><p>Every error is '
        "<code>application/problem+json</code>; its <code>type</code> links here.</p>"
        "<table><tr><th>type</th><th>title</th><th>meaning</th></tr>"
        f'{problems}</table><h2 id="schemas">Schemas</h2>{schemas}</main></body></html>'
    )
