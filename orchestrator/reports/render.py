"""One entry point per consumer: `render` (the REST API, the CLI), `write_reports` (the
demo, or anyone who wants the three files), `write_stream` (atomic file output)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import IO

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.reports import csv_report, html_report
from orchestrator.reports.model import RolloutReport, build_report
from orchestrator.store import reports as report_store
from orchestrator.store.rollouts import RolloutNotFound

FORMATS = ("json", "csv", "html")
CONTENT_TYPES = {
    "json": "application/json",
    "csv": csv_report.CONTENT_TYPE,
    "html": html_report.CONTENT_TYPE,
}

Body = bytes | AsyncIterator[bytes]


class ReportFormatError(OrchestratorError, ValueError):
    """An unknown report format; the message names the known ones."""


def check_format(fmt: str) -> str:
    value = (fmt or "").strip().lower()
    if value not in FORMATS:
        raise ReportFormatError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return value


def report_filename(rollout_id: int, fmt: str) -> str:
    return f"rollout-{rollout_id}-report.{check_format(fmt)}"


def render_json(report: RolloutReport) -> bytes:
    return (json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n").encode()


def render_html(report: RolloutReport) -> bytes:
    return html_report.render_html(report).encode()


async def render(
    pool: asyncpg.Pool, rollout_id: int, fmt: str, *, eta: datetime | None = None
) -> tuple[str, Body]:
    """The report of a rollout as (content type, body).

    json and html: the whole body as bytes. csv: an async iterator of bytes that streams the
    rows from a server-side cursor; it holds a pool connection until it is exhausted or
    closed (`aclose()`, or cancelling the task that iterates it). Raises RolloutNotFound
    (before anything is streamed) and ReportFormatError.
    """
    fmt = check_format(fmt)
    if fmt == "csv":
        if await report_store.rollout_row(pool, rollout_id) is None:
            raise RolloutNotFound(f"no rollout {rollout_id}")
        return CONTENT_TYPES["csv"], csv_report.stream_csv(pool, rollout_id)
    report = await build_report(pool, rollout_id, eta=eta)
    body = render_json(report) if fmt == "json" else render_html(report)
    return CONTENT_TYPES[fmt], body


async def as_chunks(body: Body) -> AsyncGenerator[bytes, None]:
    """The body as chunks of bytes; closing this iterator closes a streamed body too (and
    so gives its pool connection back)."""
    if isinstance(body, bytes):
        yield body
        return
    try:
        async for chunk in body:
            yield chunk
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


# ------------------------------------------------------------------ files
def _open_temp(path: Path) -> IO[bytes]:
    return tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False
    )


def _commit(handle: IO[bytes], path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.chmod(handle.name, 0o644)  # a report is meant to be read
    os.replace(handle.name, path)


def _discard(handle: IO[bytes]) -> None:
    handle.close()
    Path(handle.name).unlink(missing_ok=True)


async def write_stream(path: Path, chunks: AsyncIterator[bytes]) -> Path:
    """Write `chunks` to `path` as they come, atomically: into a temporary file beside it,
    renamed over `path` once complete (a failure leaves `path` as it was)."""
    path = Path(path)
    async with contextlib.aclosing(as_chunks(chunks)) as stream:
        handle = await asyncio.to_thread(_open_temp, path)
        try:
            async for chunk in stream:
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_commit, handle, path)
        except BaseException:
            await asyncio.to_thread(_discard, handle)
            raise
    return path


async def write_reports(
    pool: asyncpg.Pool, rollout_id: int, directory: Path | str, *,
    eta: datetime | None = None,
) -> dict[str, Path]:
    """Write the JSON, CSV and HTML reports of a rollout into `directory` (created when
    missing) as `rollout-<id>-report.<format>`; return their paths by format."""
    target = Path(directory)
    await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
    report = await build_report(pool, rollout_id, eta=eta)
    paths = {
        "json": await write_stream(target / report_filename(rollout_id, "json"),
                                   as_chunks(render_json(report))),
        "html": await write_stream(target / report_filename(rollout_id, "html"),
                                   as_chunks(render_html(report))),
        "csv": await write_stream(target / report_filename(rollout_id, "csv"),
                                  csv_report.stream_csv(pool, rollout_id)),
    }
    return {fmt: path.resolve() for fmt, path in paths.items()}
