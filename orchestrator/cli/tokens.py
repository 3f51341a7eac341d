"""`orchestrator tokens ...`: API bearer tokens (create, list, revoke)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import asyncpg

from orchestrator.cli.common import cli_actor, run_with_database
from orchestrator.settings import Settings
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import record_audit


def add_command(sub: Any) -> None:
    """`tokens ACTION ...`."""
    tokens = sub.add_parser("tokens", help="API bearer tokens: create, list, revoke")
    add_arguments(tokens)
    tokens.set_defaults(func=cmd_tokens)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a token; it is printed once, only its "
                                           "hash is stored")
    create.add_argument("--name", required=True, help="who or what uses it (unique)")
    create.add_argument("--role", required=True, choices=list(token_store.ROLES),
                        help="viewer: read; operator: also rollout actions; admin: also "
                             "inventory and tokens")
    create.add_argument("--expires-in", metavar="DURATION",
                        help="the token stops working after this long, e.g. 30d, 12h, 90m, "
                             "2w (1 minute to 3650 days; default: never)")
    create.add_argument("--json", action="store_true")
    lst = sub.add_parser("list", help="list tokens (never the tokens themselves)")
    lst.add_argument("--active", action="store_true",
                     help="leave revoked and expired tokens out")
    lst.add_argument("--json", action="store_true")
    revoke = sub.add_parser("revoke", help="revoke a token by name")
    revoke.add_argument("name")


def _expiry(info: token_store.TokenInfo) -> str:
    if info.expires_at is None:
        return "never"
    return f"{info.expires_at:%Y-%m-%d %H:%M}" + (" (expired)" if info.expired() else "")


def cmd_tokens(settings: Settings, args: argparse.Namespace) -> int:
    action = args.tokens_command
    if action == "create" and args.expires_in is not None:
        try:  # a bad value is named before the database is touched
            token_store.parse_expiry(args.expires_in)
        except token_store.TokenError as exc:
            print(f"orchestrator: tokens create: {exc}", file=sys.stderr)
            return 1

    async def body(pool: asyncpg.Pool) -> int:
        try:
            return await _tokens(pool, args, action)
        except token_store.TokenError as exc:
            print(f"orchestrator: {exc}", file=sys.stderr)
            return 1

    return run_with_database(settings, body)


async def _tokens(pool: asyncpg.Pool, args: argparse.Namespace, action: str) -> int:
    actor = cli_actor()
    if action == "create":
        expires_in = (token_store.parse_expiry(args.expires_in)
                      if args.expires_in is not None else None)
        async with pool.acquire() as conn, conn.transaction():
            info, token = await token_store.create_token(conn, args.name, args.role,
                                                         expires_in=expires_in)
            await record_audit(conn, actor, "token.create", "token", info.name,
                               {"role": info.role, "expires_at": info.to_dict()["expires_at"]})
        if args.json:
            print(json.dumps({**info.to_dict(), "token": token}))
        else:
            print(token)
            until = (f", expiring {info.expires_at:%Y-%m-%d %H:%M %Z}" if info.expires_at
                     else "")
            print(f"created token {info.name!r} with the role {info.role}{until}; it is "
                  "shown only now: store it", file=sys.stderr)
        return 0
    if action == "list":
        items = await token_store.list_tokens(pool, include_revoked=not args.active)
        if args.json:
            print(json.dumps([t.to_dict() for t in items], indent=2))
            return 0
        rows = [(t.name, t.role, f"{t.created_at:%Y-%m-%d %H:%M}",
                 f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "-",
                 f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-",
                 _expiry(t)) for t in items]
        headers = ("NAME", "ROLE", "CREATED", "LAST USED", "REVOKED", "EXPIRES")
        widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
        for row in (headers, *rows):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        print(f"{len(items)} token(s)")
        return 0
    async with pool.acquire() as conn, conn.transaction():
        info = await token_store.revoke_token(conn, args.name)
        await record_audit(conn, actor, "token.revoke", "token", info.name, {})
    print(f"revoked token {info.name!r}")
    return 0
