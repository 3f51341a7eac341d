"""`orchestrator webhooks ...`: where the fleet's events are sent (admin), and the
deliveries.

    orchestrator webhooks add --name NAME --url URL [--events E1,E2,...] [--rollout ID]
                              [--site SITE] [--secret-ref env:NAME|file:PATH]
                              [--format json|slack]
    orchestrator webhooks list [--json]
    orchestrator webhooks remove NAME
    orchestrator webhooks test NAME               # queue a ping; an engine sends it
    orchestrator webhooks deliveries [--webhook NAME] [--state pending|delivered|failed]
                                     [--rollout ID] [--limit N] [--json]
    orchestrator webhooks redeliver DELIVERY_ID   # a failed delivery: pending again

Every value is checked before the database is touched, by the same functions as
`/api/v1/webhooks` (`store.webhooks`), and `--secret-ref` by the settings' rules for
appliance credentials references (`target_policy`). Output never shows a secret (only
its reference) nor a URL's query string (a receiver's token may be in it).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from typing import Any, Final

import asyncpg

from orchestrator.cli.common import cli_actor, print_table, run_with_database
from orchestrator.inventory import target_policy
from orchestrator.settings import Settings
from orchestrator.store import webhooks as webhook_store
from orchestrator.store.webhooks import (
    DELIVERY_STATES,
    EVENT_TYPES,
    FORMATS,
    Delivery,
    Webhook,
    WebhookError,
)

MAX_SITE: Final = 200  # the API's bound for a site
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN_URL: Final = 70  # the table's URL column
_SHOWN_ERROR: Final = 60


def add_command(sub: Any) -> None:
    hooks = sub.add_parser(
        "webhooks", help="notifications: webhooks that receive the rollouts' events (admin)",
        description="Webhooks receive the rollouts' events (see docs/notifications.md); an "
                    "engine (`orchestrator run` or `serve`) sends them, at least once.")
    wsub = hooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    add = wsub.add_parser(
        "add", help="add a webhook",
        description="Without --events the webhook receives every event; --rollout and "
                    "--site narrow it to one rollout's or one site's events.")
    add.add_argument("--name", required=True,
                     help="unique: 1-63 letters, digits, '.', '_' or '-'")
    add.add_argument("--url", required=True, help="an http:// or https:// URL")
    add.add_argument("--events", metavar="E1,E2,...",
                     help=f"comma-separated event types (default: every event): "
                          f"{', '.join(EVENT_TYPES)}")
    add.add_argument("--rollout", metavar="ID", help="only this rollout's events")
    add.add_argument("--site", help="only events about this site")
    add.add_argument("--secret-ref", metavar="env:NAME|file:PATH",
                     help="where the signing secret lives (the rules of appliance "
                          "credentials references); default: unsigned")
    add.add_argument("--format", default="json", metavar="|".join(FORMATS),
                     help="json (default), or slack: {\"text\": ...} for Slack and "
                          "Mattermost incoming webhooks")
    add.add_argument("--json", action="store_true")
    lst = wsub.add_parser("list", help="webhooks with their deliveries by state")
    lst.add_argument("--json", action="store_true")
    remove = wsub.add_parser("remove", help="remove a webhook (its pending deliveries are "
                                            "never sent)")
    remove.add_argument("name", metavar="NAME")
    test = wsub.add_parser("test", help="queue a ping for a webhook; an engine sends it")
    test.add_argument("name", metavar="NAME")
    test.add_argument("--json", action="store_true")
    deliveries = wsub.add_parser("deliveries", help="deliveries, newest first")
    deliveries.add_argument("--webhook", metavar="NAME")
    deliveries.add_argument("--state", metavar="|".join(DELIVERY_STATES))
    deliveries.add_argument("--rollout", metavar="ID")
    deliveries.add_argument("--limit", default="50", metavar="N",
                            help="at most N (1-1000, default 50)")
    deliveries.add_argument("--json", action="store_true")
    redeliver = wsub.add_parser(
        "redeliver", help="send a failed (or delivered) delivery again",
        description="The delivery becomes pending again, due at once, with the same event "
                    "id; an engine sends it.")
    redeliver.add_argument("delivery", metavar="DELIVERY_ID")
    redeliver.add_argument("--json", action="store_true")
    hooks.set_defaults(func=cmd_webhooks)


# ------------------------------------------------------------------ values
def _integer(text: str | None, field: str, label: str, high: int = 2**63 - 1) -> int | None:
    """An integer in [1, high] from the command line, or WebhookError naming it."""
    if text is None:
        return None
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise WebhookError(field, f"{label}: {text!r} is not an integer >= 1") from None
    if not 1 <= value <= high:
        raise WebhookError(field, f"{label}: {text!r} is not an integer between 1 and "
                                  f"{high}")
    return value


def _text(value: str | None, field: str, label: str, limit: int | None = None) -> str | None:
    """Text the database can store as given: no control characters, valid Unicode."""
    if value is None:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise WebhookError(field, f"{label}: {value!r} is not valid UTF-8") from None
    if _CONTROL.search(value):
        raise WebhookError(field, f"{label}: {value[:80]!r} contains control characters")
    if limit is not None and len(value) > limit:
        raise WebhookError(field, f"{label}: {value[:40]!r}... is longer than {limit} "
                                  "characters")
    return value


def check_add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The arguments of `webhooks add`, checked: WebhookError names the first bad one."""
    webhook_store.check_name(args.name)
    url = webhook_store.check_url(args.url)
    listed = _text(args.events, "events", "events", 2000)
    events = webhook_store.check_events(listed.split(",")) if listed is not None else None
    site = _text(args.site, "site", "site", MAX_SITE)
    if site is not None and (not site.strip() or site != site.strip()):
        raise WebhookError("site", f"site: {site!r} must be a site name without leading or "
                                   "trailing blanks")
    return {
        "name": args.name, "url": url, "events": events,
        "rollout_id": _integer(args.rollout, "rollout", "rollout"), "site": site,
        "secret_ref": webhook_store.check_secret_ref(
            _text(args.secret_ref, "secret_ref", "secret_ref"), target_policy(settings)),
        "format": webhook_store.check_format(args.format),
    }


# ------------------------------------------------------------------ output

def _short(text: str, limit: int) -> str:
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S") if at else "-"



def _describe(hook: Webhook) -> str:
    events = "every event" if hook.events is None else ", ".join(hook.events)
    scope = "".join([f"; rollout {hook.rollout_id}" if hook.rollout_id is not None else "",
                     f"; site {hook.site!r}" if hook.site is not None else ""])
    signed = f"signed with {hook.secret_ref}" if hook.secret_ref else "unsigned"
    return f"{webhook_store.public_url(hook.url)} ({events}{scope}; {hook.format}; {signed})"


def _last(d: Delivery) -> str:
    parts = [str(d.last_status)] if d.last_status is not None else []
    if d.last_error:
        parts.append(_short(d.last_error, _SHOWN_ERROR))
    return " ".join(parts) or "-"


def _moment(d: Delivery) -> str:
    if d.state == "delivered":
        return f"delivered {_when(d.delivered_at)}"
    if d.state == "failed":
        return f"failed {_when(d.failed_at)}"
    return f"due {_when(d.next_attempt_at)}"


def _print_deliveries(items: list[Delivery]) -> None:
    print_table(["id", "webhook", "event", "event id", "rollout", "state", "attempts", "last",
                 "when"],
                [(d.id, d.webhook, d.event_type, d.event_id,
                  "-" if d.rollout_id is None else d.rollout_id, d.state, d.attempts,
                  _last(d), _moment(d)) for d in items])
    print(f"{len(items)} deliver{'y' if len(items) == 1 else 'ies'}")


# ------------------------------------------------------------------ the command
def cmd_webhooks(settings: Settings, args: argparse.Namespace) -> int:
    actor = cli_actor()
    action = args.webhooks_command
    # every value is checked before any database
    added = check_add(args, settings) if action == "add" else {}
    delivery_id = _integer(args.delivery, "delivery", "DELIVERY_ID") \
        if action == "redeliver" else None
    if action in ("remove", "test"):
        webhook_store.check_name(args.name)
    filters: dict[str, Any] = {}
    if action == "deliveries":
        if args.webhook is not None:
            webhook_store.check_name(args.webhook)
        if args.state is not None and args.state not in DELIVERY_STATES:
            raise WebhookError("state", f"--state: {args.state!r} is not one of "
                                        f"{', '.join(DELIVERY_STATES)}")
        filters = {"webhook": args.webhook, "state": args.state,
                   "rollout_id": _integer(args.rollout, "rollout", "--rollout"),
                   "limit": _integer(args.limit, "limit", "--limit", 1000)}

    async def body(pool: asyncpg.Pool) -> int:
        if action == "add":
            hook = await webhook_store.add_webhook(pool, actor=actor,
                                                   policy=target_policy(settings), **added)
            if args.json:
                print(json.dumps(hook.to_dict(), indent=2))
            else:
                print(f"webhook {hook.name!r} added: {_describe(hook)}")
            return 0
        if action == "list":
            hooks = await webhook_store.list_webhooks(pool)
            if args.json:
                print(json.dumps([h.to_dict() for h in hooks], indent=2))
                return 0
            print_table(["name", "url", "events", "rollout", "site", "format", "secret",
                         "pending", "failed", "delivered"],
                        [(h.name, _short(webhook_store.public_url(h.url), _SHOWN_URL),
                          "all" if h.events is None else ",".join(h.events),
                          "any" if h.rollout_id is None else h.rollout_id,
                          "any" if h.site is None else _short(h.site, 40), h.format,
                          h.secret_ref or "-", h.pending, h.failed, h.delivered)
                         for h in hooks])
            print(f"{len(hooks)} webhook(s)")
            return 0
        if action == "remove":
            hook = await webhook_store.remove_webhook(pool, args.name, actor)
            print(f"webhook {hook.name!r} removed ({hook.pending} pending deliver"
                  f"{'y' if hook.pending == 1 else 'ies'} dropped)")
            return 0
        if action == "test":
            delivery = await webhook_store.ping(pool, args.name, actor)
            if args.json:
                print(json.dumps(delivery.to_dict(), indent=2))
                return 0
            print(f"ping queued for webhook {delivery.webhook!r}: delivery {delivery.id} "
                  f"(event {delivery.event_id}); an engine (orchestrator run or serve) "
                  f"sends it; see `orchestrator webhooks deliveries --webhook "
                  f"{delivery.webhook}`")
            return 0
        if action == "deliveries":
            items = await webhook_store.list_deliveries(pool, **filters)
            if args.json:
                print(json.dumps([d.to_dict() for d in items], indent=2))
                return 0
            _print_deliveries(items)
            return 0
        assert delivery_id is not None
        before = await webhook_store.get_delivery(pool, delivery_id)
        delivery = await webhook_store.redeliver(pool, delivery_id, actor)
        if args.json:
            print(json.dumps(delivery.to_dict(), indent=2))
            return 0
        print(f"delivery {delivery.id} ({delivery.event_type} to {delivery.webhook!r}, event "
              f"{delivery.event_id}): pending again (was {before.state}); an engine sends "
              "it with the same event id")
        return 0

    return run_with_database(settings, body)

