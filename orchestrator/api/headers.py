"""Security headers on every answer of the API.

Every answer: `X-Content-Type-Options: nosniff` (a browser never reads a JSON, CSV or
problem body as HTML or script). HTML answers (the `/api/docs` page, the rollout report)
also get a Content-Security-Policy that allows exactly what those pages use: one inline
`<style>` element each, allowed by its SHA-256 (an injected style or script would not
match), no script at all, images only from the page itself or `data:`, no frames, no
forms, no `<base>`. The pages' own CSS is hashed when the first HTML answer is made, so a
change to it keeps the policy right.
"""

from __future__ import annotations

import base64
import functools
import hashlib

from aiohttp import web


def style_hash(css: str) -> str:
    """The CSP source that allows `<style>{css}</style>`."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


@functools.cache
def html_policy() -> str:
    """The Content-Security-Policy of the HTML answers."""
    from orchestrator.api.openapi import _STYLE as DOCS_CSS
    from orchestrator.reports.html_report import CSS as REPORT_CSS

    styles = " ".join(style_hash(css) for css in (DOCS_CSS, REPORT_CSS))
    return ("default-src 'none'; "
            f"style-src {styles}; "
            "img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


async def security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp `on_response_prepare`: runs for every answer, streamed ones and problems
    included, right before its headers are sent."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", html_policy())
        response.headers.setdefault("Referrer-Policy", "no-referrer")
