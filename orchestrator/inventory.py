"""Inventory files (CSV or JSON) to validated `ApplianceSpec`s, with line numbers for errors.

CSV: a header row with any of the inventory fields (name, base_url and site required);
`tags` is a `;`-separated list. JSON: an array of objects with the same keys, `tags` a list.

At most `max_rows` appliances (setting `appliance_import_max_rows`) are read from one input,
and at most MAX_LISTED_ERRORS bad rows are listed (the rest are counted), so a huge or
broken file cannot exhaust memory. Every row is checked against the `TargetPolicy` of the
settings (`target_policy`): the same rules as the API's create, update and import.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import (
    FIELDS,
    REQUIRED,
    STRICT_POLICY,
    RowError,
    TargetPolicy,
    TooManyRows,
    ValidationResult,
    validate_records,
)

if TYPE_CHECKING:
    from orchestrator.settings import Settings

DEFAULT_MAX_ROWS = 200_000


def target_policy(settings: Settings) -> TargetPolicy:
    """The settings' rules for credentials references and base URLs."""
    secrets_dir = settings.appliance_secrets_dir
    return TargetPolicy(
        env_prefix=settings.appliance_credentials_env_prefix,
        secrets_dir=str(secrets_dir) if secrets_dir is not None else None,
        allow_http=settings.appliance_allow_http,
        allow_local=settings.appliance_allow_local_addresses,
        networks=tuple(ipaddress.ip_network(n) for n in settings.appliance_allowed_networks),
        domains=tuple(settings.appliance_allowed_domains),
    )


class InventoryError(OrchestratorError):
    """The file is refused; `errors` lists every bad row with its line."""

    def __init__(self, source: str, errors: list[RowError], more: int = 0) -> None:
        self.source = source
        self.errors = errors
        self.more = more  # problems found beyond those listed in `errors`
        tail = f"\n  ... and {more} more problem(s)" if more else ""
        super().__init__(
            f"{source}: {len(errors) + more} problem(s), nothing imported\n"
            + "\n".join(f"  {e}" for e in errors) + tail
        )


class InventoryFileError(InventoryError):
    """The file itself is refused (missing, unreadable, unknown format): one line naming it."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(source, [RowError(0, reason)])
        self.args = (f"{source}: {reason}; nothing imported",)

    def __str__(self) -> str:
        return str(self.args[0])


def _csv_records(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    unknown = [h for h in header if h not in FIELDS]
    missing = [h for h in REQUIRED if h not in header]
    dupes = sorted({h for h in header if header.count(h) > 1})
    problems = []
    if unknown:
        problems.append(
            f"unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(FIELDS)})"
        )
    if missing:
        problems.append(f"missing required column(s) {', '.join(missing)}")
    if dupes:
        problems.append(f"column(s) {', '.join(dupes)} appear more than once")
    if problems:
        raise InventoryError("header", [RowError(1, "; ".join(problems))])
    start = reader.line_num + 1
    for row in reader:
        line = start
        start = reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            yield line, {"__shape__": f"has {len(row)} cells, the header has {len(header)}"}
            continue
        yield line, {k: (v if v.strip() else None) for k, v in zip(header, row, strict=True)}


def _json_records(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise InventoryError("json", [RowError(_line_of(text, pos), "expected a JSON array")])
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        line = _line_of(text, pos)
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            error = RowError(exc.lineno, f"invalid JSON: {exc.msg}")
            raise InventoryError("json", [error]) from None
        if isinstance(value, dict):
            yield line, value
        else:
            yield line, {"__shape__": f"is a {type(value).__name__}, expected an object"}
        pos = _skip_ws(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise InventoryError("json", [RowError(_line_of(text, pos), "expected ',' or ']'")])


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def parse_inventory(
    text: str, fmt: str, policy: TargetPolicy = STRICT_POLICY, *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ValidationResult:
    """Parse and validate; raise InventoryError listing the bad rows (the first
    MAX_LISTED_ERRORS, and how many more), or naming the row past `max_rows`."""
    records = _csv_records(text) if fmt == "csv" else _json_records(text)
    result = ValidationResult()
    try:
        validate_records(records, policy, max_rows=max_rows, result=result)
    except InventoryError:
        raise
    except TooManyRows as exc:
        raise InventoryError(fmt, [RowError(exc.line, str(exc))]) from None
    except csv.Error as exc:  # e.g. a NUL byte or a field larger than the csv limit
        result.add_error(RowError(0, f"unreadable CSV: {exc}"))
        raise InventoryError(fmt, result.errors, result.more_errors) from None
    if result.errors:
        raise InventoryError(fmt, result.errors, result.more_errors)
    if not result.specs:
        raise InventoryError(fmt, [RowError(1, "the file lists no appliances")])
    return result


def read_inventory(
    path: Path, fmt: str | None = None, policy: TargetPolicy = STRICT_POLICY, *,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> ValidationResult:
    """Read an inventory file; the format comes from `fmt` or the file's suffix.

    A file that does not exist, cannot be read or has an unknown format raises
    InventoryFileError (one line naming the file); bad rows raise InventoryError."""
    if not path.exists():
        raise InventoryFileError(str(path), "the file does not exist")
    if path.is_dir():
        raise InventoryFileError(str(path), "is a directory, not an inventory file")
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("csv", "json"):
        raise InventoryFileError(
            str(path), f"unknown format {fmt!r}: name it .csv or .json, or pass --format"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InventoryFileError(str(path), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InventoryFileError(str(path), f"not UTF-8 text: {exc.reason}") from None
    try:
        return parse_inventory(text, fmt, policy, max_rows=max_rows)
    except InventoryError as exc:
        raise InventoryError(str(path), exc.errors, exc.more) from None
