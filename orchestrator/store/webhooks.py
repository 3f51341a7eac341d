"""Webhooks, the outbox of events, and their deliveries (migration 0010).

- `webhooks`: receivers an admin added (`orchestrator webhooks add`, `/api/v1/webhooks`),
  each with filters (event types, a rollout, a site), a format (json or slack) and an
  optional secret *reference* (env:NAME or file:PATH, resolved by whoever signs, never
  stored or shown).
- `outbox_events`: one row per event, written by `emit` in the transaction of the state
  change that causes it (a rollout started, a wave finished, a task failed, ...). A
  statement trigger fans each event out to one `webhook_deliveries` row per matching
  webhook, in the same transaction: an event that committed has its deliveries, and a
  change that rolled back has neither.
- `webhook_deliveries`: pending until a notifier (any engine replica,
  engine/notifier.py) claims it under a lease, sends it and records the answer:
  delivered, pending again with a later `next_attempt_at`, or failed. A claim skips rows
  another replica holds (SKIP LOCKED) and takes, per webhook, only its oldest deliverable
  delivery, so a webhook receives its events one at a time, in the order they were
  written (task.failed batches excepted: they wait for their rate limit while the others go
  ahead). A lease that ran out (a killed engine) is claimed again: at least once.

Every change an admin makes is written to `audit_log` in its own transaction.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import asyncpg

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import (
    STRICT_POLICY,
    TargetPolicy,
    authority_problem,
    credentials_ref_refusal,
)
from orchestrator.store.audit import Actor, record_audit
from orchestrator.store.db import DB

# Every event type, in the order docs/notifications.md documents them.
EVENT_TYPES: Final = (
    "rollout.started", "rollout.scheduled", "wave.started", "wave.finished",
    "approval.required", "rollout.paused", "rollout.resumed", "policy.tripped",
    "window.closed", "rollout.finished", "task.failed", "ping",
)
FORMATS: Final = ("json", "slack")
DELIVERY_STATES: Final = ("pending", "delivered", "failed")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_URL: Final = 2048


class WebhookError(OrchestratorError):
    """A webhook request is refused; the message names the value at fault.

    `field`: what is at fault (name, url, events, rollout, site, secret_ref, format,
    delivery, state)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(message)


class WebhookNotFound(WebhookError):
    """No webhook (or delivery) with this name (or id)."""


@dataclass(frozen=True)
class Webhook:
    id: int
    name: str
    url: str
    events: tuple[str, ...] | None  # None: every event
    rollout_id: int | None
    site: str | None
    secret_ref: str | None  # a reference (env:NAME, file:PATH), never the secret
    format: str
    created_by: str
    created_at: datetime
    pending: int = 0
    failed: int = 0
    delivered: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            # a query string may hold a token: never shown (the path is, to admins)
            "name": self.name, "url": public_url(self.url),
            "events": list(self.events) if self.events is not None else None,
            "rollout_id": self.rollout_id, "site": self.site,
            "secret_ref": self.secret_ref, "signed": self.secret_ref is not None,
            "format": self.format, "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "deliveries": {"pending": self.pending, "delivered": self.delivered,
                           "failed": self.failed},
        }


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook: str
    event_id: int
    event_type: str
    rollout_id: int | None
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    batch_id: int | None

    def to_dict(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None
        return {
            "id": self.id, "webhook": self.webhook, "event_id": self.event_id,
            "event_type": self.event_type, "rollout_id": self.rollout_id,
            "state": self.state, "attempts": self.attempts,
            "next_attempt_at": iso(self.next_attempt_at) if self.state == "pending" else None,
            "last_status": self.last_status, "last_error": self.last_error,
            "created_at": iso(self.created_at), "delivered_at": iso(self.delivered_at),
            "failed_at": iso(self.failed_at), "batch_id": self.batch_id,
        }


# ------------------------------------------------------------------ validation
def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise WebhookError("name", f"name: {str(name)[:80]!r} must be 1-63 letters, digits, "
                                   "'.', '_' or '-', starting with a letter or digit")
    if name == "deliveries":
        raise WebhookError("name", "name: 'deliveries' is reserved (/api/v1/webhooks/"
                                   "deliveries lists the deliveries); choose another name")
    return name


def check_url(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise WebhookError("url", "url: must be an http:// or https:// URL, got nothing")
    url = url.strip()
    if re.search(r"[\x00-\x20\x7f-\x9f]", url) or any(c.isspace() for c in url):
        raise WebhookError("url", f"url: {_shown_url(url)!r} contains blanks or control "
                                  "characters (write a space as %20)")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise WebhookError("url", "url: is not valid UTF-8 text") from None
    if len(url) > MAX_URL:
        raise WebhookError("url", f"url: longer than {MAX_URL} characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise WebhookError("url", f"url: {_shown_url(url)!r} is not a valid URL ({exc})") \
            from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookError("url", f"url: {_shown_url(url)!r} must start with http:// or "
                                  "https://")
    if not parts.hostname:
        raise WebhookError("url", f"url: {_shown_url(url)!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookError("url", "url: must not hold credentials (user:password@); sign "
                                  "the requests with --secret-ref instead")
    problem = authority_problem(parts.netloc)
    if problem:
        raise WebhookError("url", f"url: {_shown_url(url)!r} {problem}")
    return url


def public_url(url: str) -> str:
    """The URL as answers show it: its query string replaced by `?...`."""
    base, sep, _ = url.partition("?")
    return base + ("?..." if sep else "")


def _shown_url(url: str) -> str:
    """The URL as an error may show it: its query string (which may hold a token, as
    Slack's incoming webhooks do in their path) is cut, and it is shortened."""
    shown = public_url(url)
    return shown if len(shown) <= 120 else shown[:117] + "..."


def check_events(events: Sequence[str] | None) -> tuple[str, ...] | None:
    if events is None:
        return None
    cleaned = tuple(dict.fromkeys(e.strip() for e in events if e.strip()))
    if not cleaned:
        raise WebhookError("events", "events: empty; leave it out to receive every event")
    unknown = [e for e in cleaned if e not in EVENT_TYPES]
    if unknown:
        raise WebhookError("events", f"events: unknown {', '.join(map(repr, unknown))}; "
                                     f"known: {', '.join(EVENT_TYPES)}")
    return cleaned


MAX_SITE: Final = 200


def check_site(site: str) -> str:
    if not site.strip():
        raise WebhookError("site", "site: empty; leave it out to receive every site")
    if len(site) > MAX_SITE or site != site.strip() or re.search(r"[\x00-\x1f\x7f]", site):
        raise WebhookError("site", f"site: {site[:40]!r} must be at most {MAX_SITE} "
                                   "characters, without control characters or blanks at "
                                   "either end")
    return site


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise WebhookError("format", f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


def check_secret_ref(ref: str | None, policy: TargetPolicy = STRICT_POLICY) -> str | None:
    """A reference the policy allows (the appliance credentials' rules), or None."""
    if ref is None:
        return None
    ref = ref.strip()
    reason = credentials_ref_refusal(ref, policy)
    if reason:
        scheme = ref.partition(":")[0]
        shown = ref if scheme in ("env", "file") else "<not env: or file:>"
        raise WebhookError("secret_ref", f"secret_ref: {shown!r} {reason}")
    return ref


# ------------------------------------------------------------------ webhooks
_WEBHOOK_COLUMNS = """w.id, w.name, w.url, w.events, w.rollout_id, w.site, w.secret_ref,
    w.format, w.created_by, w.created_at,
    (SELECT count(*) FILTER (WHERE d.state = 'pending') FROM webhook_deliveries d
      WHERE d.webhook_id = w.id)::int AS pending,
    (SELECT count(*) FILTER (WHERE d.state = 'failed') FROM webhook_deliveries d
      WHERE d.webhook_id = w.id)::int AS failed,
    (SELECT count(*) FILTER (WHERE d.state = 'delivered') FROM webhook_deliveries d
      WHERE d.webhook_id = w.id)::int AS delivered"""


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=int(row["id"]), name=row["name"], url=row["url"],
        events=tuple(row["events"]) if row["events"] is not None else None,
        rollout_id=row["rollout_id"], site=row["site"], secret_ref=row["secret_ref"],
        format=row["format"], created_by=row["created_by"], created_at=row["created_at"],
        pending=row["pending"], failed=row["failed"], delivered=row["delivered"],
    )


async def add_webhook(
    db: DB, *, name: str, url: str, actor: Actor, events: Sequence[str] | None = None,
    rollout_id: int | None = None, site: str | None = None, secret_ref: str | None = None,
    format: str = "json", policy: TargetPolicy = STRICT_POLICY,
) -> Webhook:
    """Add a webhook; every value is checked first (WebhookError names the one at fault)."""
    check_name(name)
    url = check_url(url)
    checked_events = check_events(events)
    check_format(format)
    ref = check_secret_ref(secret_ref, policy)
    if site is not None:
        check_site(site)
    async with _transaction(db) as conn:
        if rollout_id is not None and not await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM rollouts WHERE id = $1)", rollout_id):
            raise WebhookError("rollout", f"rollout: {rollout_id} does not exist")
        try:
            await conn.execute(
                """INSERT INTO webhooks (name, url, events, rollout_id, site, secret_ref,
                                         format, created_by)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
                name, url, list(checked_events) if checked_events is not None else None,
                rollout_id, site, ref, format, actor.name)
        except asyncpg.UniqueViolationError:
            raise WebhookError("name", f"name: a webhook {name!r} exists already") from None
        await record_audit(conn, actor, "webhook.add", "webhook", name, {
            "url": _shown_url(url), "events": list(checked_events or []) or None,
            "rollout_id": rollout_id, "site": site, "signed": ref is not None,
            "format": format,
        })
        return await get_webhook(conn, name)


async def get_webhook(db: DB, name: str) -> Webhook:
    row = await db.fetchrow(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks w WHERE w.name = $1",
                            name)
    if row is None:
        raise WebhookNotFound("name", f"no webhook {name!r}")
    return _webhook(row)


async def list_webhooks(db: DB) -> list[Webhook]:
    rows = await db.fetch(f"SELECT {_WEBHOOK_COLUMNS} FROM webhooks w ORDER BY w.name")
    return [_webhook(r) for r in rows]


async def remove_webhook(db: DB, name: str, actor: Actor) -> Webhook:
    """Remove a webhook and its deliveries (pending ones are never sent)."""
    async with _transaction(db) as conn:
        hook = await get_webhook(conn, name)
        await conn.execute("DELETE FROM webhooks WHERE id = $1", hook.id)
        await record_audit(conn, actor, "webhook.remove", "webhook", name,
                           {"pending_dropped": hook.pending})
        return hook


async def ping(db: DB, name: str, actor: Actor) -> Delivery:
    """Queue a `ping` event for this webhook only; returns its delivery."""
    async with _transaction(db) as conn:
        hook = await get_webhook(conn, name)
        event_id = await emit(conn, "ping", None, {"webhook": name, "requested_by": actor.name},
                              webhook_id=hook.id)
        await record_audit(conn, actor, "webhook.test", "webhook", name, {"event_id": event_id})
        row = await conn.fetchrow(f"{_DELIVERY_SELECT} WHERE d.event_id = $1", event_id)
        return _delivery(row)


# ------------------------------------------------------------------ events
# The sites a rollout's event concerns: every site of its tasks, from its counters
# (migration 0007: totals and deltas not yet folded), never from its tasks.
_ROLLOUT_SITES = """SELECT coalesce(array_agg(DISTINCT site ORDER BY site), '{}') FROM (
    SELECT site FROM task_counts WHERE rollout_id = $1
    UNION SELECT site FROM task_count_deltas WHERE rollout_id = $1) s"""


async def wanted(conn: DB) -> bool:
    """Whether any webhook exists: events are written only then."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM webhooks)"))


async def emit(
    conn: DB, event_type: str, rollout_id: int | None, data: dict[str, Any], *,
    sites: Sequence[str] | None = None, webhook_id: int | None = None,
) -> int | None:
    """Write one event to the outbox, in the caller's transaction (its deliveries are
    written by the fan-out trigger in the same statement). Returns its id, or None when
    no webhook exists (nothing would receive it, so nothing is written).

    `sites`: the sites it concerns; by default, for a rollout's event, every site of the
    rollout."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    if webhook_id is None and not await wanted(conn):
        return None
    if sites is None:
        sites = list(await conn.fetchval(_ROLLOUT_SITES, rollout_id)) \
            if rollout_id is not None else []
    event_id: int = await conn.fetchval(
        """INSERT INTO outbox_events (type, rollout_id, sites, webhook_id, data)
           VALUES ($1, $2, $3, $4, $5) RETURNING id""",
        event_type, rollout_id, list(sites), webhook_id, data)
    return event_id


# ------------------------------------------------------------------ deliveries
_DELIVERY_SELECT = """SELECT d.id, w.name AS webhook, d.event_id, d.event_type,
    e.rollout_id, d.state, d.attempts, d.next_attempt_at, d.last_status, d.last_error,
    d.created_at, d.delivered_at, d.failed_at, d.batch_id
FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
JOIN outbox_events e ON e.id = d.event_id"""


def _delivery(row: Any) -> Delivery:
    return Delivery(**{k: row[k] for k in (
        "id", "webhook", "event_id", "event_type", "rollout_id", "state", "attempts",
        "next_attempt_at", "last_status", "last_error", "created_at", "delivered_at",
        "failed_at", "batch_id")})


async def list_deliveries(
    db: DB, *, webhook: str | None = None, state: str | None = None, limit: int = 100,
    rollout_id: int | None = None,
) -> list[Delivery]:
    """The newest deliveries first, filtered by webhook name, state and rollout."""
    if state is not None and state not in DELIVERY_STATES:
        raise WebhookError("state", f"state: {state!r} is not one of "
                                    f"{', '.join(DELIVERY_STATES)}")
    if not 1 <= limit <= 1000:
        raise WebhookError("limit", f"limit: {limit} is not between 1 and 1000")
    if webhook is not None:
        await get_webhook(db, webhook)  # WebhookNotFound names it
    rows = await db.fetch(
        f"""{_DELIVERY_SELECT}
            WHERE ($1::text IS NULL OR w.name = $1) AND ($2::text IS NULL OR d.state = $2)
              AND ($3::bigint IS NULL OR e.rollout_id = $3)
            ORDER BY d.id DESC LIMIT $4""", webhook, state, rollout_id, limit)
    return [_delivery(r) for r in rows]


async def delivery_states(db: DB) -> dict[str, int]:
    """Deliveries per state, every webhook together."""
    rows = await db.fetch("SELECT state, count(*)::int AS n FROM webhook_deliveries "
                          "GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


UNSETTLED_STATES: Final = ("pending", "failed")


async def unsettled_counts(db: DB) -> dict[str, int]:
    """Deliveries waiting (pending) and given up (failed), every webhook together (read
    through the (state, id) index: the delivered ones, which only grow, are not counted)."""
    rows = await db.fetch("SELECT state, count(*)::int AS n FROM webhook_deliveries "
                          "WHERE state = ANY($1::text[]) GROUP BY state", list(UNSETTLED_STATES))
    return {r["state"]: r["n"] for r in rows}


async def any_pending(db: DB) -> bool:
    return bool(await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM webhook_deliveries WHERE state = 'pending')"))


async def get_delivery(db: DB, delivery_id: int) -> Delivery:
    row = await db.fetchrow(f"{_DELIVERY_SELECT} WHERE d.id = $1", delivery_id)
    if row is None:
        raise WebhookNotFound("delivery", f"no delivery {delivery_id}")
    return _delivery(row)


async def redeliver(db: DB, delivery_id: int, actor: Actor) -> Delivery:
    """Make a failed (or delivered) delivery pending again, to be sent at once with the
    same event id; a pending one is refused (it is on its way)."""
    async with _transaction(db) as conn:
        current = await get_delivery(conn, delivery_id)
        if current.state == "pending":
            raise WebhookError("delivery", f"delivery {delivery_id} is pending already "
                                           f"(attempt {current.attempts + 1} is on its way)")
        await conn.execute(
            """UPDATE webhook_deliveries SET state = 'pending', attempts = 0,
                   next_attempt_at = now(), lease_owner = NULL, lease_expires_at = NULL,
                   batch_id = NULL, failed_at = NULL, delivered_at = NULL,
                   created_at = now()  -- its age (webhook_max_age) starts again
               WHERE id = $1""", delivery_id)
        await record_audit(conn, actor, "webhook.redeliver", "delivery", delivery_id,
                           {"webhook": current.webhook, "event_type": current.event_type,
                            "was": current.state})
        return await get_delivery(conn, delivery_id)


@contextlib.asynccontextmanager
async def _transaction(db: DB) -> AsyncIterator[Any]:
    """A transaction on `db` (a savepoint when it is a connection in one already); the
    connection taken from a pool goes back to it whatever happens, a cancellation too."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn, conn.transaction():
            yield conn
    else:
        async with db.transaction():
            yield db


# ------------------------------------------------------------------ the notifier's side
@dataclass(frozen=True)
class Outgoing:
    """One request to send: a delivery (or a batch of task.failed deliveries) with what the
    request is built from."""

    ids: tuple[int, ...]  # the deliveries it settles (one, or a task.failed batch)
    webhook_id: int
    webhook: str
    url: str
    format: str
    secret_ref: str | None
    event_id: int  # the id receivers see (a batch: its first event's)
    event_type: str
    attempts: int  # this attempt's number (1 = the first)
    first_created_at: datetime  # when its (oldest) delivery was written
    events: tuple[dict[str, Any], ...]  # id, type, at, rollout (or None), data; oldest first


# Per webhook, its oldest pending delivery (a task.failed waiting for its rate limit does
# not count, unless it is a batch being retried), if it is due and no live lease holds it
# or any other pending delivery of the webhook (a newer event sent while the rate limit
# held back an older task.failed may still be in flight when the limit ends): a webhook
# has at most one request in flight, and gets its events in the order written.
CLAIM_DELIVERIES = """
WITH firsts AS (
    SELECT DISTINCT ON (d.webhook_id) d.id, d.webhook_id, d.next_attempt_at,
           d.lease_expires_at
    FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
    WHERE d.state = 'pending'
      AND (d.event_type <> 'task.failed' OR d.batch_id IS NOT NULL
           OR w.last_batch_at IS NULL
           OR w.last_batch_at <= now() - make_interval(secs => $3))
    ORDER BY d.webhook_id, d.id
),
due AS (
    SELECT f.id FROM firsts f
    WHERE f.next_attempt_at <= now()
      AND (f.lease_expires_at IS NULL OR f.lease_expires_at < now())
      AND NOT EXISTS (SELECT 1 FROM webhook_deliveries o
                      WHERE o.webhook_id = f.webhook_id AND o.state = 'pending'
                        AND o.lease_expires_at >= now())
    ORDER BY f.next_attempt_at, f.id LIMIT $4
),
locked AS (
    SELECT id FROM webhook_deliveries
    WHERE id IN (SELECT id FROM due) AND state = 'pending'
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET lease_owner = $1,
       lease_expires_at = now() + make_interval(secs => $2), attempts = d.attempts + 1
FROM locked WHERE d.id = locked.id
RETURNING d.id, d.webhook_id, d.event_type, d.batch_id
"""

# A task.failed delivery just claimed gathers the webhook's other pending task.failed
# deliveries into its batch (at most $5), under the same lease; a batch being retried
# keeps its members.
LEASE_BATCH = """
WITH members AS (
    SELECT id FROM webhook_deliveries
    WHERE webhook_id = $2 AND state = 'pending' AND event_type = 'task.failed'
      AND id <> $1
      AND (CASE WHEN $6::bigint IS NULL
                THEN batch_id IS NULL AND (lease_expires_at IS NULL OR lease_expires_at < now())
                ELSE batch_id = $6 END)
    ORDER BY id LIMIT $5
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d SET batch_id = coalesce($6, $1), lease_owner = $3,
       lease_expires_at = now() + make_interval(secs => $4),
       attempts = CASE WHEN d.id = $1 THEN d.attempts ELSE d.attempts + 1 END
WHERE d.id = $1 OR d.id IN (SELECT id FROM members)
RETURNING d.id
"""

_OUTGOING_EVENTS = """
SELECT d.id AS delivery_id, d.created_at, e.id, e.type, e.at, e.rollout_id, e.data,
       r.name AS rollout_name, r.target_version
FROM webhook_deliveries d JOIN outbox_events e ON e.id = d.event_id
LEFT JOIN rollouts r ON r.id = e.rollout_id
WHERE d.id = ANY($1::bigint[]) ORDER BY e.id
"""


async def claim_deliveries(
    db: DB, *, owner: str, lease_seconds: float, limit: int, batch_seconds: float,
    batch_max: int = 500,
) -> list[Outgoing]:
    """Claim up to `limit` requests to send (at most one per webhook), each under a lease of
    `lease_seconds` that counts as an attempt. A task.failed delivery gathers the webhook's
    other pending task.failed deliveries (at most `batch_max`) into one request; a webhook
    gets such a batch at most once every `batch_seconds`."""
    async with _transaction(db) as conn:
        claimed = await conn.fetch(CLAIM_DELIVERIES, owner, lease_seconds, batch_seconds,
                                   limit)
        out: list[Outgoing] = []
        for row in claimed:
            ids: list[int] = [int(row["id"])]
            if row["event_type"] == "task.failed":
                ids = sorted(int(r["id"]) for r in await conn.fetch(
                    LEASE_BATCH, row["id"], row["webhook_id"], owner, lease_seconds,
                    batch_max - 1, row["batch_id"]))
            hook = await conn.fetchrow(
                "SELECT name, url, format, secret_ref FROM webhooks WHERE id = $1",
                row["webhook_id"])
            attempts = await conn.fetchval(
                "SELECT attempts FROM webhook_deliveries WHERE id = $1", row["id"])
            events = await conn.fetch(_OUTGOING_EVENTS, ids)
            out.append(Outgoing(
                ids=tuple(ids), webhook_id=int(row["webhook_id"]), webhook=hook["name"],
                url=hook["url"], format=hook["format"], secret_ref=hook["secret_ref"],
                event_id=int(events[0]["id"]), event_type=row["event_type"],
                attempts=int(attempts), first_created_at=min(e["created_at"] for e in events),
                events=tuple({
                    "id": int(e["id"]), "type": e["type"], "at": e["at"],
                    "rollout": None if e["rollout_id"] is None else {
                        "id": int(e["rollout_id"]), "name": e["rollout_name"],
                        "target_version": e["target_version"]},
                    "data": e["data"],
                } for e in events),
            ))
        return out


async def release_leases(db: DB, owner: str, *, error: str) -> int:
    """Hand back every pending delivery this owner holds a lease on (pending again, due
    now), for a notifier that stops with nothing of its own in flight: this includes a
    claim that committed while its caller was cancelled, whose answer was never seen.
    Returns how many it handed back."""
    rows = await db.fetch(
        """UPDATE webhook_deliveries SET next_attempt_at = now(), last_error = $2,
               lease_owner = NULL, lease_expires_at = NULL
           WHERE lease_owner = $1 AND state = 'pending' RETURNING id""",
        owner, error[:500])
    return len(rows)


async def settle(
    db: DB, ids: Sequence[int], *, owner: str, outcome: str, status: int | None = None,
    error: str | None = None, retry_in: float | None = None,
) -> int:
    """Record what the receiver answered for deliveries this owner holds (a lease taken over
    by another replica changes nothing): outcome `delivered`, `failed`, or `retry` (pending
    again, due in `retry_in` seconds). Returns the number of deliveries it settled."""
    if outcome not in ("delivered", "failed", "retry"):
        raise ValueError(f"unknown outcome {outcome!r}")
    async with _transaction(db) as conn:
        rows = await conn.fetch(
            """UPDATE webhook_deliveries SET
                   state = CASE $3::text WHEN 'retry' THEN 'pending' ELSE $3::text END,
                   last_status = $4, last_error = $5,
                   next_attempt_at = CASE WHEN $3::text = 'retry'
                       THEN now() + make_interval(secs => $6) ELSE next_attempt_at END,
                   delivered_at = CASE WHEN $3::text = 'delivered' THEN now() END,
                   failed_at = CASE WHEN $3::text = 'failed' THEN now() END,
                   lease_owner = NULL, lease_expires_at = NULL
               WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND state = 'pending'
               RETURNING webhook_id, event_type""",
            list(ids), owner, outcome, status, error and error[:500], retry_in or 0.0)
        if outcome == "delivered" and any(r["event_type"] == "task.failed" for r in rows):
            await conn.execute("UPDATE webhooks SET last_batch_at = now() WHERE id = $1",
                               rows[0]["webhook_id"])
        return len(rows)
