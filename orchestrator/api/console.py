"""The operator console's server side.

- `GET /`: the console, one HTML page (api/static/console/index.html) that loads its scripts
  and style sheets from `GET /console/assets/{name}`: the other files of that directory
  with a type listed in `TYPES`, found when this module is imported (any other name is 404,
  no such path: nothing outside the directory can be named). Nothing comes from the network.
  The page's Content-Security-Policy allows scripts, styles and requests of this origin
  only: no inline script or style, no eval, no frames, no forms posted elsewhere.
- `GET /api/v1/me`: the caller's token (name, role, expiry): the console shows the
  controls the role allows (the server checks the role again on every request).
- `POST /api/v1/stream-tickets`: a single-use, 30-second ticket that opens a rollout's
  event stream (`?ticket=`) for a browser's EventSource, which cannot send the
  Authorization header; the token itself never goes into a URL (store/tickets.py).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Final

from aiohttp import web

from orchestrator.api.routing import Call, Operation, Resp, json_response
from orchestrator.api.validation import Param, read_no_body
from orchestrator.store import tickets as ticket_store

STATIC: Final = Path(__file__).parent / "static" / "console"
PAGE: Final = "index.html"
TYPES: Final[dict[str, str]] = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _assets(directory: Path) -> dict[str, str]:
    """The files the page may load: name -> content type."""
    if not directory.is_dir():
        return {}
    return {p.name: TYPES[p.suffix] for p in sorted(directory.iterdir())
            if p.is_file() and p.suffix in TYPES and _NAME.match(p.name)}


ASSETS: Final[dict[str, str]] = _assets(STATIC)

# The console's own policy (the other HTML answers get headers.html_policy()): its files
# only, fetch/EventSource to this origin only; images also as data: URLs (icons in CSS).
CONSOLE_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@functools.cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


async def console_page(call: Call) -> web.StreamResponse:
    return web.Response(body=_read(PAGE), content_type="text/html", charset="utf-8",
                        headers={"Cache-Control": "no-cache",
                                 "Content-Security-Policy": CONSOLE_POLICY})


async def console_asset(call: Call) -> web.StreamResponse:
    name = call.params["name"]
    kind = ASSETS.get(name)
    if kind is None:  # only when the directory had no asset at all (see ASSET_PARAM)
        raise web.HTTPNotFound()
    charset = "utf-8" if kind.startswith("text/") else None
    # no-cache: a browser asks again (cheap: the files are small and kept in memory), so
    # the page never runs with the scripts of an older version
    return web.Response(body=_read(name), content_type=kind, charset=charset,
                        headers={"Cache-Control": "no-cache"})


async def me(call: Call) -> web.StreamResponse:
    token = call.token
    assert token is not None  # the operation requires the viewer role
    return json_response({
        "name": token.name, "role": token.role,
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
    })


async def create_stream_ticket(call: Call) -> web.StreamResponse:
    await read_no_body(call.request)
    assert call.token is not None
    ticket, expires_at = await ticket_store.create_ticket(call.pool, call.token.id)
    return json_response({"ticket": ticket, "expires_at": expires_at.isoformat(),
                          "expires_in_seconds": ticket_store.TICKET_SECONDS}, 201,
                         headers={"Cache-Control": "no-store"})


ASSET_PARAM: Final = Param(
    "name", "path", enum=tuple(ASSETS) or None,
    pattern=None if ASSETS else _NAME.pattern,
    description="One of the console's scripts, style sheets and images.")

OPERATIONS: Final = (
    Operation("GET", "/", console_page, "console", "The operator console (a web page)",
              "console", None,
              responses={200: Resp("The console's HTML page; signing in is pasting a token.",
                                   {"type": "string"}, media_type="text/html")},
              uses_database=False,
              description="Rollouts, appliances, maintenance windows and the audit log in a "
                          "browser, with the controls the token's role allows. Everything "
                          "it loads comes from this server."),
    Operation("GET", "/console/assets/{name}", console_asset, "consoleAsset",
              "A file of the operator console", "console", None, params=(ASSET_PARAM,),
              responses={200: Resp("The file.", {"type": "string"},
                                   media_type="text/javascript",
                                   extra_media=(("text/css", {"type": "string"}),
                                                ("image/svg+xml", {"type": "string"}),
                                                ("image/png", {"type": "string"})))},
              uses_database=False),
    Operation("GET", "/api/v1/me", me, "getMe", "The caller's token: name, role, expiry",
              "tokens", "viewer",
              responses={200: Resp("The token that sent the request.", "Me")},
              description="What the console asks first, to show the controls the token's "
                          "role allows. Never the token itself."),
    Operation("POST", "/api/v1/stream-tickets", create_stream_ticket, "createStreamTicket",
              "A single-use ticket that opens an event stream without the Authorization "
              "header", "events", "viewer",
              responses={201: Resp("The ticket: pass it as `?ticket=` to "
                                   "`GET /api/v1/rollouts/{id}/events` within "
                                   "`expires_in_seconds`.", "StreamTicket")},
              description=f"For a browser's EventSource, which cannot send a header: the "
                          f"ticket opens one event stream, once, within "
                          f"{ticket_store.TICKET_SECONDS} s, as the token that asked for it "
                          "(its role; once that token is revoked or expires the ticket and "
                          "the stream it opened stop working). Only its SHA-256 is stored. "
                          "A reconnection needs a new ticket (and `last_event_id`). No "
                          "body."),
)
