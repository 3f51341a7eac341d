"""Stream tickets: the SQL of the `stream_tickets` table (migration 0012).

A ticket lets a browser's EventSource, which cannot send an Authorization header, open a
rollout's event stream without putting the bearer token in a URL. It is 256 random bits,
URL-safe, made for one token, lives `TICKET_SECONDS`, and works once: `redeem` deletes it
and returns its token in one statement (DELETE ... RETURNING), so of two requests with the
same ticket, on any replica, exactly one gets the token. Only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from orchestrator.store.db import DB
from orchestrator.store.tokens import TokenInfo, token_from_row

TICKET_SECONDS: Final = 30
TICKET_BYTES: Final = 32  # 256 bits from the OS's CSPRNG


def hash_ticket(ticket: str) -> str:
    return hashlib.sha256(ticket.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Redeemed:
    """A ticket that existed (it is now used up): its token, and whether it had expired."""

    token: TokenInfo
    expired: bool
    expires_at: datetime


async def create_ticket(conn: DB, token_id: int,
                        lifetime: timedelta = timedelta(seconds=TICKET_SECONDS)
                        ) -> tuple[str, datetime]:
    """A new ticket for the token `token_id`: (ticket, expires_at). The ticket itself is
    kept nowhere. Deletes the expired tickets of every token on the way."""
    ticket = secrets.token_urlsafe(TICKET_BYTES)
    await conn.execute("DELETE FROM stream_tickets WHERE expires_at <= now()")
    expires_at = await conn.fetchval(
        """INSERT INTO stream_tickets (ticket_hash, token_id, expires_at)
           VALUES ($1, $2, now() + $3::interval) RETURNING expires_at""",
        hash_ticket(ticket), token_id, lifetime,
    )
    return ticket, expires_at


async def redeem(conn: DB, ticket: str) -> Redeemed | None:
    """Use the ticket up: its token (revoked or expired ones too: `token.active` says) and
    whether the ticket had expired; None when no such ticket exists (never made, already
    used, or expired and pruned)."""
    row = await conn.fetchrow(
        """WITH used AS (
               DELETE FROM stream_tickets WHERE ticket_hash = $1
               RETURNING token_id, expires_at)
           SELECT t.id, t.name, t.role, t.created_at, t.last_used_at, t.revoked_at,
                  t.expires_at, used.expires_at AS ticket_expires_at,
                  used.expires_at <= now() AS ticket_expired
           FROM used JOIN api_tokens t ON t.id = used.token_id""",
        hash_ticket(ticket),
    )
    if row is None:
        return None
    return Redeemed(token_from_row(row), bool(row["ticket_expired"]),
                    row["ticket_expires_at"])

