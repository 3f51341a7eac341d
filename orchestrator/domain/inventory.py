"""Validation of inventory records (pure: no I/O besides the time-zone database).

Each record becomes an `ApplianceSpec` or a list of `RowError`s that name the line and the
reason. `validate_records` checks a whole file: a file with any bad row is refused whole.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

FIELDS = (
    "name", "base_url", "site", "tags", "timezone",
    "credentials_ref", "tls_ca_file", "tls_thumbprint",
)
REQUIRED = ("name", "base_url", "site")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_ENV_REF = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ApplianceSpec:
    """What an inventory file says about one appliance."""

    name: str
    base_url: str
    site: str
    tags: tuple[str, ...] = ()
    timezone: str | None = None
    credentials_ref: str | None = None
    tls_ca_file: str | None = None
    tls_thumbprint: str | None = None


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ValidationResult:
    specs: list[ApplianceSpec] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be text, got {type(value).__name__} {value!r}")
    _storable(value, key)
    value = value.strip()
    return value or None


def _storable(value: str, key: str) -> None:
    """PostgreSQL text holds neither NUL nor unpaired surrogates: refuse them by name."""
    if "\x00" in value:
        raise ValueError(f"{key}: {value!r} contains the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{key}: {value!r} is not valid Unicode (unpaired surrogate)") \
            from None


def check_base_url(value: str) -> str:
    if any(ch.isspace() for ch in value):
        raise ValueError(f"base_url: {value!r} contains whitespace")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"base_url: {value!r} is not an http(s) URL")
    if not parts.hostname:
        raise ValueError(f"base_url: {value!r} has no host")
    if parts.username or parts.password:
        raise ValueError(
            "base_url: credentials do not belong in the URL; name a secret in credentials_ref"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"base_url: {value!r} has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"base_url: {value!r} must not carry a query or fragment")
    return value.rstrip("/")


def check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone: {value!r} is not a known IANA time zone") from None
    return value


def check_thumbprint(value: str) -> str:
    normal = value.replace(":", "").lower()
    if not _HEX64.match(normal):
        raise ValueError(
            f"tls_thumbprint: {value!r} is not a SHA-256 thumbprint (64 hex digits, "
            "colons allowed)"
        )
    return normal


def check_credentials_ref(value: str) -> str:
    if _ENV_REF.match(value):
        return value
    if value.startswith("file:") and value[5:].startswith("/"):
        return value
    raise ValueError(
        f"credentials_ref: {value!r} must be env:VARIABLE or file:/absolute/path"
    )


def parse_tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(";")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ValueError(f"tags: must be a list of text or a ';'-separated text, got {value!r}")
    seen: dict[str, None] = {}
    for item in items:
        _storable(item, "tags")
        tag = item.strip()
        if tag:
            seen[tag] = None
    return tuple(seen)


def validate_record(record: Mapping[str, Any]) -> tuple[ApplianceSpec | None, list[str]]:
    """Validate one record; return the spec or every reason it is bad."""
    reasons: list[str] = []
    unknown = [k for k in record if k not in FIELDS]
    if unknown:
        reasons.append(f"unknown column(s) {', '.join(map(repr, unknown))}")
    values: dict[str, Any] = {}
    for key in ("name", "base_url", "site", "timezone", "credentials_ref", "tls_ca_file",
                "tls_thumbprint"):
        try:
            values[key] = _text(record.get(key), key)
        except ValueError as exc:
            reasons.append(str(exc))
            values[key] = None
    for key in REQUIRED:
        if values.get(key) is None and not any(r.startswith(f"{key}:") for r in reasons):
            reasons.append(f"{key}: required field is missing or empty")
    checks = {
        "base_url": check_base_url,
        "timezone": check_timezone,
        "tls_thumbprint": check_thumbprint,
        "credentials_ref": check_credentials_ref,
    }
    for key, check in checks.items():
        if values.get(key) is not None:
            try:
                values[key] = check(values[key])
            except ValueError as exc:
                reasons.append(str(exc))
    name = values.get("name")
    if name is not None and not _NAME.match(name):
        reasons.append(
            f"name: {name!r} must be 1-253 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    try:
        tags = parse_tags(record.get("tags"))
    except ValueError as exc:
        reasons.append(str(exc))
        tags = ()
    if reasons:
        return None, reasons
    return ApplianceSpec(tags=tags, **values), []


def validate_records(records: Iterable[tuple[int, Mapping[str, Any]]]) -> ValidationResult:
    """Validate (line, record) pairs; duplicates by name inside the input are errors too.

    Every bad row is listed with every reason: a row is checked for a duplicated name
    whether or not its other fields are valid (and counts as the first holder of its name
    even when it is bad itself)."""
    result = ValidationResult()
    first_line: dict[str, int] = {}
    for line, record in records:
        spec, reasons = validate_record(record)
        for reason in reasons:
            result.errors.append(RowError(line, reason))
        raw_name = record.get("name")
        name = raw_name.strip() if isinstance(raw_name, str) else None
        if name:
            if name in first_line:
                result.errors.append(
                    RowError(line, f"name: {name!r} duplicates line {first_line[name]}")
                )
                continue
            first_line[name] = line
        if spec is None:
            continue
        result.specs.append(spec)
    return result
