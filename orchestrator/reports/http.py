"""The report as an aiohttp response: `GET /api/v1/rollouts/{id}/report?format=...`.

The API's route checks the token (viewer role) and maps RolloutNotFound to 404 and
ReportFormatError to 400 (both raised before any byte is sent); this helper does the rest.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
from aiohttp import web

from orchestrator.reports.render import render, report_filename


async def report_response(
    request: web.Request, pool: asyncpg.Pool, rollout_id: int, fmt: str, *,
    eta: datetime | None = None,
) -> web.StreamResponse:
    """json and html as one response; csv streamed (chunked) as the rows are read."""
    content_type, body = await render(pool, rollout_id, fmt, eta=eta)
    disposition = "attachment" if fmt.strip().lower() == "csv" else "inline"
    headers = {
        "Content-Type": content_type,
        "Content-Disposition":
            f'{disposition}; filename="{report_filename(rollout_id, fmt)}"',
        "Cache-Control": "no-store",
    }
    if isinstance(body, bytes):
        return web.Response(body=body, headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        async for chunk in body:
            await response.write(chunk)
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()
    await response.write_eof()
    return response
