"""What the appliance API answers, parsed leniently.

The parsers accept API 2.0 and API 1.0.0 bodies and tolerate wrong types in optional
fields (they become None). They raise only `MalformedResponse`, and only when a field the
caller cannot do without is missing or unusable (a Task's `status`, an appliance's
`appliance_version`, a service's `id`). Never KeyError, TypeError or ValueError.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from orchestrator.appliance.errors import MalformedResponse

# Timestamps below this are taken as epoch *seconds* (10**11 ms is March 1973).
_SECONDS_BELOW = 10**11
_MAX_EPOCH = 10**17  # beyond the year 9999 in any unit
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JAVA_DATE = re.compile(
    r"^[A-Za-z]{3} ([A-Za-z]{3}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (?:[A-Za-z0-9+:_/-]+ )?(\d{4})$"
)
_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_MAX_CAUSE_DEPTH = 10


class TaskStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    UNKNOWN = "UNKNOWN"  # anything else the appliance may answer

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.SUCCESS, TaskStatus.ERROR, TaskStatus.CANCELLED)


@dataclass(frozen=True)
class Task:
    id: str | None
    status: TaskStatus
    progress: int | None = None
    description: str | None = None
    type: str | None = None
    start_time: datetime | None = None
    complete_time: datetime | None = None
    error_message: str | None = None
    error_details: str | None = None
    result: dict[str, Any] | None = None
    # the status string as answered (useful when `status` is UNKNOWN)
    raw_status: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ApplianceInfo:
    hostname: str | None
    product_name: str | None
    appliance_version: str
    product_build_number: str | None
    appliance_build_number: str | None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Service:
    id: str
    name: str | None
    is_running: bool | None
    description: str | None = None
    startup_type: str | None = None


@dataclass(frozen=True)
class UpdateInfo:
    version: str
    type: str | None = None
    release_date: str | None = None
    reboot_required: bool | None = None
    severity: str | None = None
    summary: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


# --- small lenient converters ------------------------------------------------------------


def _str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _text(value: Any) -> str | None:
    """A non-empty string, else None."""
    return value if isinstance(value, str) and value.strip() else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d{1,20}", text):
            return int(text)
        if re.fullmatch(r"[+-]?\d{1,20}\.\d*", text):
            return int(float(text))
    return None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1"):
            return True
        if lowered in ("false", "no", "0"):
            return False
    return None


def _progress(value: Any) -> int | None:
    number = _int(value)
    if number is None:
        return None
    return min(100, max(0, number))


def _from_epoch(number: int | float) -> datetime | None:
    if isinstance(number, int):
        if number <= 0 or number > _MAX_EPOCH:
            return None  # 0 is "not set"
    elif not math.isfinite(number) or number <= 0 or number > _MAX_EPOCH:
        return None
    try:
        if abs(number) < _SECONDS_BELOW:
            return _EPOCH + timedelta(seconds=number)
        return _EPOCH + timedelta(milliseconds=number)
    except (OverflowError, ValueError):
        return None


def parse_time(value: Any) -> datetime | None:
    """Epoch milliseconds (int or digit string), ISO 8601, RFC 2822 or Java `Date.toString()`.

    Small numbers (below 10**11) are taken as epoch seconds. Naive times are taken as UTC.
    The result is timezone-aware, or None when the value cannot be read.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _from_epoch(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    if re.fullmatch(r"\d{1,20}(\.\d+)?", text):
        return _from_epoch(float(text) if "." in text else int(text))
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None:
        try:
            parsed = parsedate_to_datetime(text)
        except Exception:  # email.utils raises a variety of errors on junk
            parsed = None
    if parsed is None:
        match = _JAVA_DATE.match(text)
        if match and match.group(1).lower() in _MONTHS:
            mon, day, hh, mm, ss, year = match.groups()
            try:
                parsed = datetime(
                    int(year), _MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss)
                )
            except ValueError:
                parsed = None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _error_fields(error: Any) -> tuple[str | None, str | None]:
    """(message, details) from an API 2.0 `{message, details}` or a serialized Java exception."""
    if isinstance(error, str):
        return _text(error), None
    if not isinstance(error, dict):
        return None, None
    message = _text(error.get("message")) or _text(error.get("localized_message"))
    details = _text(error.get("details"))
    causes: list[str] = []
    cause = error.get("cause")
    depth = 0
    while isinstance(cause, dict) and depth < _MAX_CAUSE_DEPTH:
        cause_message = _text(cause.get("message")) or _text(cause.get("localized_message"))
        if cause_message:
            causes.append(cause_message)
        cause = cause.get("cause")
        depth += 1
    if message is None and causes:
        message = causes.pop(0)
    if details is None:
        extra = [c for c in causes if c != message]
        if extra:
            details = "caused by: " + "; caused by: ".join(extra)
    return message, details


def parse_task(body: Any, *, appliance: str = "?") -> Task:
    """Parse a Task (API 2.0 or 1.0.0). Raises MalformedResponse only."""
    if not isinstance(body, dict):
        raise MalformedResponse(
            appliance, f"task is not a JSON object but {_json_type(body)}", op="task"
        )
    status_raw = body.get("status")
    if not isinstance(status_raw, str):
        what = "missing" if status_raw is None else f"a {_json_type(status_raw)}"
        raise MalformedResponse(appliance, f"task status is {what}", op="task")
    try:
        status = TaskStatus(status_raw.strip().upper())
    except ValueError:
        status = TaskStatus.UNKNOWN
    error_message, error_details = _error_fields(body.get("error"))
    result = body.get("result")
    if isinstance(result, list):
        result = {"list": result}
    return Task(
        id=_str(body.get("id")),
        status=status,
        progress=_progress(body.get("progress")),
        description=_str(body.get("description")),
        type=_str(body.get("type")),
        start_time=parse_time(body.get("start_time")),
        complete_time=parse_time(body.get("complete_time")),
        error_message=error_message,
        error_details=error_details,
        result=result if isinstance(result, dict) else None,
        raw_status=status_raw,
    )


def parse_appliance(body: Any, *, appliance: str = "?") -> ApplianceInfo:
    if not isinstance(body, dict):
        raise MalformedResponse(
            appliance, f"appliance info is not a JSON object but {_json_type(body)}", op="appliance"
        )
    version = _text(body.get("appliance_version"))
    if version is None:
        raise MalformedResponse(
            appliance, "appliance_version is missing or not a string", op="appliance"
        )
    return ApplianceInfo(
        hostname=_str(body.get("hostname")),
        product_name=_str(body.get("product_name")),
        appliance_version=version.strip(),
        product_build_number=_str(body.get("product_build_number")),
        appliance_build_number=_str(body.get("appliance_build_number")),
        raw=body,
    )


def parse_service(body: Any, *, appliance: str = "?") -> Service:
    if not isinstance(body, dict):
        raise MalformedResponse(
            appliance, f"service is not a JSON object but {_json_type(body)}", op="service"
        )
    service_id = _str(body.get("id"))
    if not service_id:
        raise MalformedResponse(appliance, "service id is missing", op="service")
    return Service(
        id=service_id,
        name=_str(body.get("name")),
        is_running=_bool(body.get("is_running")),
        description=_str(body.get("description")),
        startup_type=_str(body.get("startup_type")),
    )


def parse_updates(result: Any) -> list[UpdateInfo]:
    """The available updates listed by a SUCCESS retrieve-updates task's `result`.

    The entry shape is undocumented: accepts a list, or an object holding the list under
    one of `list`, `updates`, `items`, `available_updates`; entries may be objects with a
    `version` (or `update_version`/`name`) or bare version strings. Unusable entries are
    skipped. Never raises.
    """
    items: Any = result
    if isinstance(result, dict):
        items = next(
            (
                result[key]
                for key in ("list", "updates", "items", "available_updates")
                if isinstance(result.get(key), list)
            ),
            [],
        )
    if not isinstance(items, list):
        return []
    out: list[UpdateInfo] = []
    for item in items:
        if isinstance(item, str) and item.strip():
            out.append(UpdateInfo(version=item.strip()))
            continue
        if not isinstance(item, dict):
            continue
        version = (
            _text(item.get("version"))
            or _text(item.get("update_version"))
            or _text(item.get("name"))
        )
        if version is None:
            continue
        out.append(
            UpdateInfo(
                version=version.strip(),
                type=_str(item.get("type")),
                release_date=_str(item.get("release_date")),
                reboot_required=_bool(item.get("reboot_required")),
                severity=_str(item.get("severity")),
                summary=_str(item.get("summary")),
                raw=item,
            )
        )
    return out


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


__all__ = [
    "ApplianceInfo",
    "Service",
    "Task",
    "TaskStatus",
    "UpdateInfo",
    "parse_appliance",
    "parse_service",
    "parse_task",
    "parse_time",
    "parse_updates",
]
