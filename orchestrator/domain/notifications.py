"""What a webhook request says, and what its answer means (pure: no I/O, no store).

- `envelope`: the JSON body of a request (format `json`) from the events it carries, as
  `store.webhooks.claim_deliveries` reads them (plain mappings: id, type, at, rollout,
  data). A `task.failed` request always carries a batch (one failure or several) as
  `data = {"failures": [...], "count": n}`, so receivers parse one shape.
- `slack_message`: the body of format `slack`, `{"text": ...}`: one line a person reads
  in Slack or Mattermost (incoming webhooks accept it as it is).
- `sign` / `verify`: `X-Orchestrator-Signature: t=<unix seconds>,v1=<hex>`, the HMAC-SHA256
  of `b"<t>." + body` with the webhook's secret; `verify` is what a receiver does (and
  what docs/notifications.md shows), the replay window included.
- `classify`, `retry_delay`, `parse_retry_after`: an answer to delivered, retry or failed,
  and how long a retry waits (exponential back-off with full jitter, at least what the
  receiver's Retry-After asks, never more than the cap).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, Literal

Outcome = Literal["delivered", "retry", "failed"]

SIGNATURE_HEADER: Final = "X-Orchestrator-Signature"
# seconds a signature's timestamp may be away from the receiver's clock (either way)
REPLAY_TOLERANCE: Final = 300
# statuses worth another attempt besides 5xx: the receiver timed out, or asks to slow down
RETRY_STATUSES: Final = frozenset({408, 429})
# a Slack message is one line: values longer than this are cut, and at most this many
# failed appliances are named in a task.failed summary
_MAX_VALUE = 200
_MAX_NAMED = 5
_MAX_TEXT = 3000


# ------------------------------------------------------------------ the JSON body
def iso_utc(value: Any) -> str | None:
    """A time as ISO-8601 in UTC with a `Z` (a string is kept as it is)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def envelope(events: Sequence[Mapping[str, Any]], *, attempt: int) -> dict[str, Any]:
    """The body of one request carrying `events` (oldest first; several only for a
    task.failed batch): `{"id", "type", "at", "rollout", "data", "delivery": {"attempt"}}`.

    `id` is the first event's id as a string: the same on every attempt of the request,
    so a receiver drops a repeat by it. A task.failed body lists every failure, each its
    event's data with its `at` and its `rollout` (a webhook for every rollout may get the
    failures of several in one batch; the body's `rollout` is theirs when they share
    one, else null)."""
    if not events:
        raise ValueError("envelope: no events")
    first = events[0]
    event_type = str(first["type"])
    rollout = _rollout(first.get("rollout"))
    data: dict[str, Any]
    if event_type == "task.failed":
        failures = [
            {**dict(e.get("data") or {}), "at": iso_utc(e.get("at")),
             "rollout": _rollout(e.get("rollout"))}
            for e in events
        ]
        if any(f["rollout"] != rollout for f in failures):
            rollout = None
        data = {"failures": failures, "count": len(failures)}
    else:
        if len(events) > 1:
            raise ValueError(f"envelope: {len(events)} events of type {event_type!r}; "
                             "only task.failed is batched")
        data = dict(first.get("data") or {})
    return {
        "id": str(first["id"]),
        "type": event_type,
        "at": iso_utc(first.get("at")),
        "rollout": rollout,
        "data": data,
        "delivery": {"attempt": attempt},
    }


def _rollout(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        return None
    return {"id": value.get("id"), "name": value.get("name"),
            "target_version": value.get("target_version")}


# ------------------------------------------------------------------ the Slack message
def slack_message(body: Mapping[str, Any]) -> dict[str, str]:
    """`{"text": ...}`: a one-line summary of an envelope for Slack and Mattermost
    incoming webhooks, naming the rollout (name, #id), its version and the key fact. A
    field it does not find is left out, never an error: the text of an unknown type is
    its type and rollout."""
    event_type = str(body.get("type") or "event")
    data = body.get("data")
    data = data if isinstance(data, Mapping) else {}
    rollout = body.get("rollout")
    subject = _rollout_label(rollout if isinstance(rollout, Mapping) else None)
    describe = _DESCRIBE.get(event_type)
    fact = describe(data) if describe is not None else event_type
    if event_type == "ping":
        text = fact
    elif event_type == "task.failed" and subject is None:
        text = f"{fact}"
    else:
        text = f"{subject or 'Orchestrator'}: {fact}"
    text = " ".join(text.split())  # one line
    if len(text) > _MAX_TEXT:
        text = text[:_MAX_TEXT - 3] + "..."
    return {"text": _escape(text)}


def _escape(text: str) -> str:
    """Slack reads `<...>` as a link or mention and `&` as an entity: the three are
    escaped as Slack asks (Mattermost shows them as they were)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _value(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 3] + "..."


def _rollout_label(rollout: Mapping[str, Any] | None) -> str | None:
    if rollout is None:
        return None
    name = rollout.get("name")
    rid = rollout.get("id")
    label = f"Rollout {_value(name)!s}" if name else "Rollout"
    if rid is not None:
        label += f" (#{_value(rid)})"
    version = rollout.get("target_version")
    if version:
        label += f" to {_value(version)}"
    return label


def _first(data: Mapping[str, Any], *keys: str) -> Any:
    """The first of `keys` that `data` (or its `counts` / `summary` mapping) holds."""
    for source in (data, data.get("counts"), data.get("summary")):
        if isinstance(source, Mapping):
            for key in keys:
                value = source.get(key)
                if value is not None and value != "":
                    return value
    return None


def _wave(data: Mapping[str, Any]) -> str:
    wave = _first(data, "wave", "wave_index")
    return "a wave" if wave is None else f"wave {_value(wave)}"


def _by(data: Mapping[str, Any]) -> str:
    who = _first(data, "by", "actor", "requested_by")
    return f" by {_value(who)}" if who else ""


def _outcome_counts(data: Mapping[str, Any]) -> str:
    parts = []
    for label, keys in (("succeeded", ("succeeded", "SUCCEEDED")),
                        ("failed", ("failed", "FAILED")),
                        ("timed out", ("timed_out", "TIMED_OUT")),
                        ("skipped", ("skipped", "SKIPPED")),
                        ("cancelled", ("cancelled", "CANCELLED"))):
        value = _first(data, *keys)
        if isinstance(value, list | tuple):
            value = len(value)
        if value is not None and (value or label in ("succeeded", "failed")):
            parts.append(f"{_value(value)} {label}")
    return ", ".join(parts)


def _started(data: Mapping[str, Any]) -> str:
    total = _first(data, "appliances", "total", "targeted", "tasks")
    if isinstance(total, list | tuple):
        total = len(total)
    waves = _first(data, "waves")
    if isinstance(waves, list | tuple):
        waves = len(waves)
    text = "started"
    if total is not None:
        text += f" ({_value(total)} appliances" + (
            f" in {_value(waves)} waves)" if waves is not None else ")")
    return text


def _scheduled(data: Mapping[str, Any]) -> str:
    when = _first(data, "schedule_at", "start_at", "scheduled_for", "starts_at")
    return (f"scheduled to start at {_value(iso_utc(when))}" if when else "scheduled") \
        + _by(data)


def _wave_started(data: Mapping[str, Any]) -> str:
    total = _first(data, "tasks", "total", "size")
    return f"{_wave(data)} started" + (f" ({_value(total)} appliances)"
                                       if total is not None else "")


def _wave_finished(data: Mapping[str, Any]) -> str:
    state = data.get("state")
    counts = _outcome_counts(data)
    return f"{_wave(data)} finished" + (f" {_value(state)}" if state else "") + \
        (f": {counts}" if counts else "")


def _approval(data: Mapping[str, Any]) -> str:
    wave = _first(data, "next_wave", "wave")
    label = _wave({"wave": wave}) if wave is not None else "the next wave"
    return f"{label} awaits approval"


def _paused(data: Mapping[str, Any]) -> str:
    reason = _first(data, "reason", "message")
    return "paused" + _by(data) + (f": {_value(reason)}" if reason else "")


def _resumed(data: Mapping[str, Any]) -> str:
    return "resumed" + _by(data)


def _policy(data: Mapping[str, Any]) -> str:
    """The reason (which says how many failed of how many) or the figures; and the first
    failed appliances by name."""
    failed = data.get("failed")
    names = [f.get("appliance") for f in failed if isinstance(f, Mapping)] \
        if isinstance(failed, list | tuple) else []
    if isinstance(failed, list | tuple):
        failed = len(failed)
    total = _first(data, "total", "executed", "finished", "considered")
    reason = data.get("reason")
    text = "failure policy tripped"
    if failed is not None and total is not None and not isinstance(failed, Mapping):
        text += f": {_value(failed)} of {_value(total)} failed"
        if reason:
            text += f" ({_value(reason)})"
    elif reason:
        text += f": {_value(reason)}"
    elif failed is not None:
        text += f": {_value(failed)} failed"
    shown = [_value(n) for n in names[:_MAX_NAMED] if n]
    if shown:
        more = len(names) - len(shown)
        text += "; failed: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")
    return text


def _window(data: Mapping[str, Any]) -> str:
    left = _first(data, "left", "remaining", "pending")
    if isinstance(left, list | tuple):
        left = len(left)
    text = "maintenance window closed"
    if left is not None:
        text += f" with {_value(left)} appliance(s) left"
    nxt = _first(data, "next_opening", "next_window", "next_open")
    text += f"; next opening {_value(iso_utc(nxt))}" if nxt else "; no next opening"
    return text


def _finished(data: Mapping[str, Any]) -> str:
    state = data.get("state") or data.get("outcome")
    counts = _outcome_counts(data)
    reason = data.get("reason")
    text = f"finished {_value(state)}" if state else "finished"
    return text + (f": {counts}" if counts else "") + (f" ({_value(reason)})"
                                                       if reason else "")


def _task_failed(data: Mapping[str, Any]) -> str:
    failures = data.get("failures")
    if not isinstance(failures, list | tuple):
        failures = [data]
    count = data.get("count", len(failures))
    named = []
    for failure in failures[:_MAX_NAMED]:
        if not isinstance(failure, Mapping):
            continue
        who = failure.get("appliance") or (f"task {failure['task_id']}"
                                           if failure.get("task_id") is not None else "?")
        why = failure.get("error_code") or failure.get("state")
        named.append(f"{_value(who)} ({_value(why)})" if why else _value(who))
    more = len(failures) - len(named)
    text = f"{_value(count)} task(s) failed"
    if named:
        text += ": " + ", ".join(named) + (f" and {more} more" if more > 0 else "")
    return text


def _ping(data: Mapping[str, Any]) -> str:
    hook = data.get("webhook")
    text = "Test notification (ping) from the fleet orchestrator"
    if hook:
        text += f" for webhook {_value(hook)}"
    who = data.get("requested_by")
    return text + (f", requested by {_value(who)}" if who else "")


_DESCRIBE = {
    "rollout.started": _started, "rollout.scheduled": _scheduled,
    "wave.started": _wave_started, "wave.finished": _wave_finished,
    "approval.required": _approval, "rollout.paused": _paused,
    "rollout.resumed": _resumed, "policy.tripped": _policy, "window.closed": _window,
    "rollout.finished": _finished, "task.failed": _task_failed, "ping": _ping,
}


# ------------------------------------------------------------------ signatures
def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The `X-Orchestrator-Signature` value: `t=<timestamp>,v1=<hex HMAC-SHA256 of
    b"<timestamp>." + body>`."""
    digest = hmac.new(secret, f"{int(timestamp)}.".encode() + body, hashlib.sha256)
    return f"t={int(timestamp)},v1={digest.hexdigest()}"


def verify(header: str | None, secret: bytes, body: bytes, now: float,
           tolerance: float = REPLAY_TOLERANCE) -> bool:
    """Whether `header` signs `body` with `secret` at a time within `tolerance` seconds
    of `now`: a request replayed later (or signed with a clock far off) is refused. Any
    of several `v1=` values may match (a secret being rotated); compared in constant
    time."""
    if not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode(), expected.encode())
    return matched


# ------------------------------------------------------------------ answers and retries
def classify(status: int | None, error: str | None = None) -> Outcome:
    """2xx: delivered. No answer (a connection error, a timeout: `status` None), 408,
    429 and 5xx: retry. Any other status fails at once: a 4xx will not change by asking
    again, and a 3xx is not followed (the webhook's URL is to be fixed)."""
    del error  # the reason of a missing answer does not change the verdict
    if status is None:
        return "retry"
    if 200 <= status <= 299:
        return "delivered"
    if status in RETRY_STATUSES or 500 <= status <= 599:
        return "retry"
    return "failed"


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None,
                retry_after: float | None = None) -> float:
    """Seconds before the attempt after attempt number `attempt` (1 = the first):
    uniform in [0, min(cap, base * 2**(attempt-1))] (full jitter: replicas and webhooks
    retrying together spread out), at least `retry_after` when the receiver sent one,
    never more than `cap`."""
    rng = rng or random.Random()
    ceiling = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 60))
    delay = rng.uniform(0.0, ceiling)
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, retry_after)
    return max(0.0, min(cap, delay))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """A Retry-After header in seconds from `now`: delay-seconds (`120`) or an HTTP-date
    (`Wed, 21 Oct 2026 07:28:00 GMT`); a date in the past is 0; anything else is None."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


__all__ = [
    "REPLAY_TOLERANCE", "SIGNATURE_HEADER", "Outcome", "classify", "envelope", "iso_utc",
    "parse_retry_after", "retry_delay", "sign", "slack_message", "verify",
]
