"""The CSV report: one row per appliance of the rollout, streamed.

RFC 4180: a header row, fields quoted when they hold a comma, a quote or a line break,
quotes doubled, records ended by CRLF, UTF-8 (no byte-order mark). Rows come from a
server-side cursor in batches (`store.reports.appliance_rows`) and leave as one chunk of
bytes per batch, so a report of any size never holds more than a batch in memory.

Spreadsheet formula injection: a text cell that starts with `=`, `+`, `-`, `@`, a tab or a
carriage return would be run as a formula by Excel, LibreOffice or Google Sheets when the
file is opened. Such a cell gets a leading apostrophe (`'=1+1`), which spreadsheets show
as text. Every text cell is treated so (appliance names, sites, versions, error codes and
messages); numeric cells (wave, duration_s) and timestamps are written by the renderer and
never start with those characters. Strip one leading apostrophe to get the raw text back.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from orchestrator.store import preflight as preflight_store
from orchestrator.store import reports as report_store

COLUMNS = (
    "appliance", "site", "wave", "from_version", "final_version", "outcome", "error_code",
    "error_message", "started_at", "finished_at", "duration_s", "preflight",
    "preflight_code",
)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
BATCH_SIZE = 1000
CONTENT_TYPE = "text/csv; charset=utf-8; header=present"


def neutralise(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (see the module docstring)."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _text(value: str | None) -> str:
    return "" if value is None else neutralise(value)


def _time(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def csv_row(record: Any, preflight: tuple[str, str | None] | None = None
            ) -> list[str | int]:
    """The CSV cells of one appliance row (a record of `store.reports.APPLIANCE_ROWS`) and
    its latest pre-flight (result, code), if it was checked."""
    duration = record["duration_s"]
    result, code = preflight if preflight is not None else (None, None)
    return [
        _text(record["name"]), _text(record["site"]), int(record["wave"]),
        _text(record["from_version"]), _text(record["final_version"]),
        _text(record["outcome"]), _text(record["error_code"]), _text(record["error_message"]),
        _time(record["started_at"]), _time(record["finished_at"]),
        "" if duration is None else f"{duration:.3f}", _text(result), _text(code),
    ]


class _Writer:
    """csv.writer into a buffer that is emptied at each `take()`."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")

    def rows(self, rows: Iterable[Sequence[Any]]) -> None:
        self.writer.writerows(rows)

    def take(self) -> bytes:
        data = self.buffer.getvalue().encode("utf-8")
        self.buffer.seek(0)
        self.buffer.truncate()
        return data


async def csv_chunks(
    conn: asyncpg.Connection | PoolConnectionProxy, rollout_id: int, *,
    batch_size: int = BATCH_SIZE,
) -> AsyncIterator[bytes]:
    """The CSV report in chunks of bytes: the header with the first batch, then one chunk
    per batch of `batch_size` rows. `conn` must not be inside a transaction."""
    out = _Writer()
    out.rows([COLUMNS])
    sent_header = False
    async for batch in report_store.appliance_rows(conn, rollout_id, batch_size=batch_size):
        checked = await preflight_store.results_by_name(conn, rollout_id,
                                                        [r["name"] for r in batch])
        out.rows(csv_row(r, checked.get(r["name"])) for r in batch)
        sent_header = True
        yield out.take()
    if not sent_header:
        yield out.take()


async def stream_csv(
    pool: asyncpg.Pool, rollout_id: int, *, batch_size: int = BATCH_SIZE
) -> AsyncIterator[bytes]:
    """`csv_chunks` on a connection held from the pool until the stream ends (or is
    closed: `aclose()`, or cancellation of the task iterating it)."""
    async with pool.acquire() as conn:
        async for chunk in csv_chunks(conn, rollout_id, batch_size=batch_size):
            yield chunk
