"""`orchestrator webhooks ...` as a user runs it: add, list (a table and JSON), test (a
queued ping), deliveries, redeliver, remove; a bad value ends in one line naming it and
exit code 1, never a traceback; neither the secret nor a URL's query string is ever
printed. The real `orchestrator` command runs as a subprocess; its output goes to files
(no pipe is left unread)."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg

from tests.e2e.test_sites_cli import Cli, Result, _one_line_error
from tests.helpers import cli_env, run_cli

SECRET = "s3cr3t-" + "c" * 24
URL_TOKEN = "tok-" + "u" * 24
URL = f"https://hooks.example.net/in/ops?token={URL_TOKEN}"


def _clean(result: Result) -> Result:
    assert result.returncode == 0, result
    assert SECRET not in result.stdout + result.stderr
    assert URL_TOKEN not in result.stdout + result.stderr
    return result


def test_add_list_test_deliveries_redeliver_remove(db_url: str, tmp_path: Path) -> None:
    cli = Cli(db_url, tmp_path)
    cli.env["APPLIANCE_HOOK_SECRET"] = SECRET

    added = _clean(cli("webhooks", "add", "--name", "ops", "--url", URL,
                       "--events", "approval.required, rollout.finished",
                       "--secret-ref", "env:APPLIANCE_HOOK_SECRET", "--format", "slack"))
    assert added.stdout.strip() == (
        "webhook 'ops' added: https://hooks.example.net/in/ops?... (approval.required, "
        "rollout.finished; slack; signed with env:APPLIANCE_HOOK_SECRET)")
    every = _clean(cli("webhooks", "add", "--name", "all", "--url", "http://127.0.0.1:9/h",
                       "--site", "ams", "--json"))
    shown = json.loads(every.stdout)
    assert (shown["name"], shown["events"], shown["site"], shown["signed"],
            shown["format"]) == ("all", None, "ams", False, "json")

    table = _clean(cli("webhooks", "list"))
    rows = [line.split() for line in table.stdout.strip().splitlines()]
    assert rows[0] == ["NAME", "URL", "EVENTS", "ROLLOUT", "SITE", "FORMAT", "SECRET",
                       "PENDING", "FAILED", "DELIVERED"]
    assert rows[1:] == [
        ["all", "http://127.0.0.1:9/h", "all", "any", "ams", "json", "-", "0", "0", "0"],
        ["ops", "https://hooks.example.net/in/ops?...", "approval.required,rollout.finished",
         "any", "any", "slack", "env:APPLIANCE_HOOK_SECRET", "0", "0", "0"],
        ["2", "webhook(s)"]]
    listed = json.loads(_clean(cli("webhooks", "list", "--json")).stdout)
    assert [(h["name"], h["url"], h["secret_ref"]) for h in listed] == [
        ("all", "http://127.0.0.1:9/h", None),
        ("ops", "https://hooks.example.net/in/ops?...", "env:APPLIANCE_HOOK_SECRET")]

    tested = _clean(cli("webhooks", "test", "ops"))
    match = re.match(r"ping queued for webhook 'ops': delivery (\d+) \(event (\d+)\); an "
                     r"engine \(orchestrator run or serve\) sends it", tested.stdout)
    assert match, tested.stdout
    delivery_id = int(match.group(1))
    deliveries = json.loads(_clean(cli("webhooks", "deliveries", "--json")).stdout)
    assert [(d["id"], d["webhook"], d["event_type"], d["state"]) for d in deliveries] == [
        (delivery_id, "ops", "ping", "pending")]
    assert json.loads(_clean(cli("webhooks", "deliveries", "--webhook", "all", "--state",
                                 "pending", "--json")).stdout) == []
    table = _clean(cli("webhooks", "deliveries", "--state", "pending"))
    assert table.stdout.split()[:9] == ["ID", "WEBHOOK", "EVENT", "EVENT", "ID", "ROLLOUT",
                                        "STATE", "ATTEMPTS", "LAST"]
    assert table.stdout.strip().splitlines()[-1] == "1 delivery"

    _one_line_error(cli("webhooks", "redeliver", str(delivery_id)),
                    f"delivery {delivery_id} is pending already")
    asyncio.run(_fail_delivery(db_url, delivery_id))
    failed = json.loads(_clean(cli("webhooks", "deliveries", "--state", "failed",
                                   "--json")).stdout)
    assert [(d["id"], d["last_status"]) for d in failed] == [(delivery_id, 503)]
    redone = _clean(cli("webhooks", "redeliver", str(delivery_id)))
    assert redone.stdout.strip() == (
        f"delivery {delivery_id} (ping to 'ops', event {match.group(2)}): pending again "
        "(was failed); an engine sends it with the same event id")
    assert json.loads(_clean(cli("webhooks", "list", "--json")).stdout)[1]["deliveries"] == {
        "pending": 1, "delivered": 0, "failed": 0}

    removed = _clean(cli("webhooks", "remove", "ops"))
    assert removed.stdout.strip() == "webhook 'ops' removed (1 pending delivery dropped)"
    assert [h["name"] for h in json.loads(cli("webhooks", "list", "--json").stdout)] == ["all"]
    assert asyncio.run(_audit(db_url)) == ["webhook.add", "webhook.add", "webhook.test",
                                           "webhook.redeliver", "webhook.remove"]


def test_bad_values_end_in_one_line(db_url: str, tmp_path: Path) -> None:
    add = ("webhooks", "add", "--name", "ops")
    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        ((*add, "--url", "ftp://hooks.example.net/x"), ("url: 'ftp://", "http:// or https://")),
        ((*add, "--url", f"https://hooks.example.net x?token={URL_TOKEN}"),
         ("url: 'https://hooks.example.net x?...'", "blanks")),
        ((*add, "--url", "https://h.example", "--events", "rollout.started,nope"),
         ("events: unknown 'nope'", "rollout.finished")),
        ((*add, "--url", "https://h.example", "--format", "xml"),
         ("format: 'xml' is not one of json, slack",)),
        ((*add, "--url", "https://h.example", "--secret-ref", "env:HOME"),
         ("secret_ref: 'env:HOME'", "APPLIANCE_")),
        ((*add, "--url", "https://h.example", "--rollout", "x1"),
         ("rollout: 'x1' is not an integer",)),
        ((*add, "--url", "https://h.example", "--rollout", "99999"),
         ("rollout: 99999 does not exist",)),
        (("webhooks", "add", "--name", "bad name", "--url", "https://h.example"),
         ("name: 'bad name'",)),
        (("webhooks", "add", "--name", "deliveries", "--url", "https://h.example"),
         ("'deliveries' is reserved",)),
        (("webhooks", "remove", "nope"), ("no webhook 'nope'",)),
        (("webhooks", "test", "nope"), ("no webhook 'nope'",)),
        (("webhooks", "deliveries", "--webhook", "nope"), ("no webhook 'nope'",)),
        (("webhooks", "deliveries", "--state", "lost"),
         ("--state: 'lost' is not one of pending, delivered, failed",)),
        (("webhooks", "deliveries", "--limit", "0"), ("--limit: '0'",)),
        (("webhooks", "redeliver", "12x"), ("DELIVERY_ID: '12x'",)),
        (("webhooks", "redeliver", "4242"), ("no delivery 4242",)),
    ]
    env = cli_env(db_url)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each is a process of its own
        results = list(pool.map(lambda argv: run_cli(*argv, env=env, timeout=60),
                                [argv for argv, _ in cases]))
    for (argv, needles), done in zip(cases, results, strict=True):
        _one_line_error(Result(done.returncode, done.stdout, done.stderr), *needles)
        assert URL_TOKEN not in done.stderr, argv
    cli = Cli(db_url, tmp_path)
    assert _clean(cli("webhooks", "add", "--name", "ops", "--url", URL)).returncode == 0
    _one_line_error(cli("webhooks", "add", "--name", "ops", "--url", URL),
                    "a webhook 'ops' exists already")
    assert asyncio.run(_audit(db_url)) == ["webhook.add"]


async def _fail_delivery(db_url: str, delivery_id: int) -> None:
    """What a notifier leaves when it gives up: state failed, the last answer recorded."""
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("""UPDATE webhook_deliveries SET state = 'failed', attempts = 8,
                                     last_status = 503, failed_at = now()
                              WHERE id = $1""", delivery_id)
    finally:
        await conn.close()


async def _audit(db_url: str) -> list[str]:
    conn = await asyncpg.connect(db_url)
    try:
        return [r["action"] for r in await conn.fetch(
            "SELECT action FROM audit_log WHERE action LIKE 'webhook.%' ORDER BY id")]
    finally:
        await conn.close()
