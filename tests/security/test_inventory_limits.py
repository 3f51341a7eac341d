"""Imports cannot exhaust memory or block the API, and both import paths check the same
things (issue 14, findings 6 and 8).

Finding 6: a body with hundreds of thousands of bad rows built one error per reason (and a
422 listing them all), any number of rows was accepted, and the parse ran on the event
loop. Now at most 100 errors are listed plus the count of the rest, at most
`appliance_import_max_rows` appliances are read, and the API parses in a worker thread.

Finding 8: the file import skipped checks the API applied (lengths, control characters in
site and tags, a relative tls_ca_file). One validation (`validate_record`) serves both;
the table below goes through the file path, the CLI, and the API's create and import.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api import appliances as api_appliances
from orchestrator.api.app import create_app
from orchestrator.domain.inventory import MAX_LISTED_ERRORS, validate_records
from orchestrator.inventory import InventoryError, parse_inventory
from orchestrator.settings import Settings
from tests.helpers import cli_env, run_cli
from tests.integration.test_api_support import auth, tokens_by_role

GOOD: dict[str, Any] = {"name": "vr-1", "base_url": "https://vr-1.example.net/api",
                        "site": "ams"}

# (field, bad value, what the refusal says): the same for every path
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("site", "am\x07s", "control characters"),
    ("site", "a\x1bb", "control characters"),
    ("site", "a\x85b", "control characters"),
    ("site", "s" * 201, "longer than 200"),
    ("tags", ["prod", "be\x07ll"], "control characters"),
    ("tags", ["t" * 101], "longer than 100"),
    ("tags", [f"t{i}" for i in range(101)], "more than 100 tags"),
    ("tags", ["a;b"], "';'"),
    ("tls_ca_file", "ca.pem", "absolute path"),
    ("tls_ca_file", "../etc/ca.pem", "absolute path"),
    ("tls_ca_file", "/etc/x" + "y" * 1030, "longer than 1024"),
    ("base_url", "https://vr.example.net/" + "p" * 2048, "longer than 2048"),
    ("timezone", "Europe/" + "A" * 70, "longer than 64"),
    ("credentials_ref", "env:APPLIANCE_" + "X" * 200, "credentials_ref"),
    ("name", "n" * 254, "name"),
]
IDS = [f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_VALUES)]


def _record(key: str, value: Any) -> dict[str, Any]:
    return {**GOOD, key: value}


@pytest.mark.parametrize(("key", "value", "why"), BAD_VALUES, ids=IDS)
def test_file_path_refuses(key: str, value: Any, why: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(json.dumps([_record(key, value)]), "json")
    (error,) = info.value.errors
    assert error.reason.startswith(f"{key}:") and why in error.reason, error.reason
    assert len(error.reason) < 1000, "a huge value is cut short in the message"


@pytest.mark.parametrize(("key", "value", "why"), [b for b in BAD_VALUES
                                                   if b[0] in ("site", "tls_ca_file")],
                         ids=[i for i, b in zip(IDS, BAD_VALUES, strict=True)
                              if b[0] in ("site", "tls_ca_file")])
def test_csv_file_path_refuses(key: str, value: Any, why: str) -> None:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "base_url", "site", "tls_ca_file"])
    record = _record(key, value)
    writer.writerow([record["name"], record["base_url"], record["site"],
                     record.get("tls_ca_file", "")])
    with pytest.raises(InventoryError) as info:
        parse_inventory(out.getvalue(), "csv")
    assert any(e.reason.startswith(f"{key}:") and why in e.reason
               for e in info.value.errors), info.value.errors


def test_cli_path_refuses_the_whole_table(tmp_path: Path, db_url: str) -> None:
    rows = [{**_record(key, value), "name": f"vr-{i}"} if key != "name"
            else _record(key, value) for i, (key, value, _) in enumerate(BAD_VALUES)]
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(rows, indent=1))
    result = run_cli("appliances", "import", str(path), env=cli_env(db_url))
    assert result.returncode == 1
    for key, _, why in BAD_VALUES:
        assert f"{key}:" in result.stderr and why in result.stderr, (key, why)
    assert f"{len(BAD_VALUES)} problem(s), nothing imported" in result.stderr


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    tokens = await tokens_by_role(pool)
    settings = Settings(appliance_import_max_rows=1000)
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(pool, settings), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client, tokens["admin"]
    finally:
        await client.close()


async def test_api_paths_refuse_the_whole_table(
    api: tuple[TestClient[Any, Any], str], pool: asyncpg.Pool
) -> None:
    client, token = api
    for key, value, _why in BAD_VALUES:
        async with client.post("/api/v1/appliances", json=_record(key, value),
                               headers=auth(token)) as resp:
            body = await resp.json()
            assert resp.status == 422, (key, body)
            assert any(e["field"].startswith(f"body.{key}") for e in body["errors"]), \
                (key, body)
        async with client.post("/api/v1/appliances:import", json=[_record(key, value)],
                               headers=auth(token)) as resp:
            body = await resp.json()
            assert resp.status == 422, (key, body)
            assert body["errors"][0]["field"] == key, (key, body)
    assert await pool.fetchval("SELECT count(*) FROM appliances") == 0


# ------------------------------------------------------------------ limits
def test_at_most_100_errors_are_listed_and_the_rest_counted() -> None:
    rows = "".join(f"vr-{i},ftp://vr-{i}/api,ams\n" for i in range(5000))
    with pytest.raises(InventoryError) as info:
        parse_inventory("name,base_url,site\n" + rows, "csv")
    assert len(info.value.errors) == MAX_LISTED_ERRORS == 100
    assert info.value.more == 4900
    text = str(info.value)
    assert text.startswith("csv: 5000 problem(s), nothing imported")
    assert text.endswith("... and 4900 more problem(s)")
    assert text.count("\n") == 101


def test_rows_beyond_the_limit_are_refused_early() -> None:
    consumed = 0

    def records() -> Any:
        nonlocal consumed
        for i in range(10_000_000):  # would take minutes and gigabytes if read whole
            consumed += 1
            yield i + 2, {**GOOD, "name": f"vr-{i}"}

    from orchestrator.domain.inventory import TooManyRows

    with pytest.raises(TooManyRows) as info:
        validate_records(records(), max_rows=1000)
    assert consumed == 1001 and info.value.line == 1002
    text = "name,base_url,site\n" + "".join(
        f"vr-{i},https://vr-{i}.example.net,ams\n" for i in range(11))
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "csv", max_rows=10)
    (error,) = err.value.errors
    assert error.line == 12 and "at most 10" in error.reason
    assert "appliance_import_max_rows" in error.reason
    assert len(parse_inventory(text, "csv", max_rows=11).specs) == 11


def test_the_default_limit_is_a_setting() -> None:
    assert Settings().appliance_import_max_rows == 200_000
    with pytest.raises(ValueError):
        Settings(appliance_import_max_rows=0)


async def test_api_import_lists_100_errors_counts_the_rest_and_caps_rows(
    api: tuple[TestClient[Any, Any], str], pool: asyncpg.Pool
) -> None:
    client, token = api
    headers = {**auth(token), "Content-Type": "text/csv"}
    bad = "name,base_url,site\n" + "".join(f"vr-{i},ftp://x,\n" for i in range(900))
    async with client.post("/api/v1/appliances:import", data=bad, headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 422
    assert len(body["errors"]) == 100 and body["more_errors"] == 1700  # 2 reasons a row
    assert body["detail"].startswith("1800 problem(s), nothing imported")
    many = "name,base_url,site\n" + "".join(
        f"vr-{i},https://vr-{i}.example.net,ams\n" for i in range(1001))
    async with client.post("/api/v1/appliances:import", data=many, headers=headers) as resp:
        body = await resp.json()
    assert resp.status == 422 and "at most 1000" in body["detail"], body
    assert await pool.fetchval("SELECT count(*) FROM appliances") == 0


async def test_api_import_parses_off_the_event_loop(
    api: tuple[TestClient[Any, Any], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, token = api
    seen: list[bool] = []
    real = api_appliances.parse_inventory

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread() is threading.main_thread())
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(api_appliances, "parse_inventory", spy)
    data = "name,base_url,site\nvr-1,https://vr-1.example.net,ams\n"
    async with client.post("/api/v1/appliances:import", data=data,
                           headers={**auth(token), "Content-Type": "text/csv"}) as resp:
        assert resp.status == 200, await resp.text()
    assert seen == [False], "parsed on the event loop's thread"
