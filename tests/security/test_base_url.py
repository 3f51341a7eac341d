"""Where credentials may be sent (issue 14, finding 3).

`base_url` used to accept `http://`, loopback, link-local and cloud metadata addresses:
the appliance's credentials (HTTP Basic) could go in clear text, or to a service of the
orchestrator's own host or cloud. Now https only (unless `appliance_allow_http`), no
loopback or link-local host (unless `appliance_allow_local_addresses`), never a metadata
address, optionally only allowed networks and domains; checked at import, at the API's
create and update, and again when the engine builds a client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import create_app
from orchestrator.appliance import ApplianceHttp, ApplianceTarget
from orchestrator.appliance.guard import TargetRefused, guarded_client
from orchestrator.domain.inventory import (
    LAB_POLICY,
    STRICT_POLICY,
    TargetPolicy,
    check_base_url,
)
from orchestrator.inventory import InventoryError, parse_inventory, target_policy
from orchestrator.settings import Settings, load_settings
from tests.fleet import create, engine, fleet, http_client, wait_until_terminal
from tests.helpers import cli_env, drop_database, run_cli
from tests.integration.test_api_support import auth, tokens_by_role

REFUSED = [
    ("http://vr-1.example.net/api", "clear text"),
    ("HTTP://vr-1.example.net/api", "clear text"),
    ("https://127.0.0.1/api", "loopback"),
    ("https://127.8.9.10:8443/api", "loopback"),
    ("https://localhost/api", "loopback"),
    ("https://LOCALHOST./api", "loopback"),
    ("https://vr.localhost/api", "loopback"),
    ("https://[::1]/api", "loopback"),
    ("https://[::ffff:127.0.0.1]/api", "loopback"),
    ("https://169.254.10.20/api", "link-local"),
    ("https://[fe80::1]/api", "link-local"),
    ("https://169.254.169.254/latest/meta-data", "metadata"),
    ("https://[fd00:ec2::254]/latest", "metadata"),
    ("https://[::ffff:169.254.169.254]/x", "metadata"),
    ("https://100.100.100.200/x", "metadata"),
    ("https://metadata.google.internal/computeMetadata", "metadata"),
    ("https://0.0.0.0/api", "not an address"),
    ("https://[::]/api", "not an address"),
    ("https://224.0.0.1/api", "not an address"),
    ("https://2130706433/api", "non-standard form"),
    ("https://127.1/api", "non-standard form"),
    ("https://0x7f.0.0.1/api", "non-standard form"),
    ("https://017700000001/api", "non-standard form"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED)
def test_strict_policy_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        check_base_url(url)
    assert str(info.value).startswith("base_url:")


@pytest.mark.parametrize("url", [
    "https://vr-1.example.net/api/rest/configure/v1", "https://10.0.0.5:8443/api",
    "https://[2001:db8::5]/api", "https://[fd12:3456::1]/api", "https://192.168.1.10/api",
])
def test_strict_policy_accepts(url: str) -> None:
    assert check_base_url(url) == url


def test_lab_policy_allows_the_simulator_but_never_metadata() -> None:
    assert check_base_url("http://127.0.0.1:9450/sim-00001/api", LAB_POLICY)
    assert check_base_url("http://localhost:9450/x", LAB_POLICY)
    assert check_base_url("https://[fe80::1]/x", LAB_POLICY)
    for url in ("http://169.254.169.254/latest", "https://[fd00:ec2::254]/",
                "http://metadata.google.internal/", "http://0.0.0.0:9450/x"):
        with pytest.raises(ValueError):
            check_base_url(url, LAB_POLICY)


def test_allow_lists() -> None:
    policy = TargetPolicy(networks=(ipaddress.ip_network("10.20.0.0/16"),
                                    ipaddress.ip_network("2001:db8::/32")),
                          domains=("example.net",))
    for url in ("https://10.20.3.4/api", "https://[2001:db8::1]/api",
                "https://vr.example.net/api", "https://example.net/api",
                "https://VR.Example.NET./api"):
        assert check_base_url(url, policy)
    for url, why in (("https://10.21.0.1/api", "appliance_allowed_networks"),
                     ("https://[2001:db9::1]/api", "appliance_allowed_networks"),
                     ("https://badexample.net/api", "appliance_allowed_domains"),
                     ("https://example.net.evil.org/api", "appliance_allowed_domains")):
        with pytest.raises(ValueError, match=why):
            check_base_url(url, policy)
    only_networks = TargetPolicy(networks=(ipaddress.ip_network("10.20.0.0/16"),))
    with pytest.raises(ValueError, match="appliance_allowed_domains"):
        check_base_url("https://vr.example.net/api", only_networks)


def test_settings_build_the_policy() -> None:
    settings = load_settings(environ={
        "ORCHESTRATOR_APPLIANCE_ALLOWED_NETWORKS": "10.20.0.0/16, 192.0.2.0/24",
        "ORCHESTRATOR_APPLIANCE_ALLOWED_DOMAINS": "*.Example.net,lab.example.org",
        "ORCHESTRATOR_APPLIANCE_ALLOW_HTTP": "true",
    }, config_path=Path("/dev/null"))
    policy = target_policy(settings)
    assert policy.allow_http and not policy.allow_local
    assert [str(n) for n in policy.networks] == ["10.20.0.0/16", "192.0.2.0/24"]
    assert policy.domains == ("example.net", "lab.example.org")
    assert target_policy(Settings()) == STRICT_POLICY


def test_file_import_refuses_them_all() -> None:
    rows = "".join(f"vr-{i},{url},ams\n" for i, (url, _) in enumerate(REFUSED))
    with pytest.raises(InventoryError) as info:
        parse_inventory("name,base_url,site\n" + rows, "csv")
    assert [e.line for e in info.value.errors] == list(range(2, len(REFUSED) + 2))
    assert all(e.reason.startswith("base_url:") for e in info.value.errors)


def test_cli_import_is_strict_unless_the_lab_settings_say_so(
    tmp_path: Path, db_url: str
) -> None:
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("name,base_url,site,credentials_ref\n"
                         "sim-1,http://127.0.0.1:9450/sim-1/api,ams,env:APPLIANCE_SIM\n")
    strict = cli_env(db_url, ORCHESTRATOR_APPLIANCE_ALLOW_HTTP="false",
                     ORCHESTRATOR_APPLIANCE_ALLOW_LOCAL_ADDRESSES="false")
    result = run_cli("appliances", "import", str(inventory), env=strict)
    assert result.returncode == 1
    assert "clear text" in result.stderr and "appliance_allow_http" in result.stderr
    assert "loopback" in result.stderr
    lab = cli_env(db_url)  # the tests' environment: the lab settings
    result = run_cli("appliances", "import", str(inventory), env=lab)
    assert result.returncode == 0, result.stderr


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    tokens = await tokens_by_role(pool)
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(pool, Settings()), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client, tokens["admin"]
    finally:
        await client.close()


async def test_api_create_update_and_import_refuse(
    api: tuple[TestClient[Any, Any], str]
) -> None:
    client, token = api
    for url, why in REFUSED:
        new = {"name": "vr-1", "base_url": url, "site": "ams"}
        async with client.post("/api/v1/appliances", json=new, headers=auth(token)) as resp:
            body = await resp.json()
            assert resp.status == 422 and why in body["detail"], (url, body)
    new = {"name": "vr-1", "base_url": "https://vr-1.example.net/api", "site": "ams",
           "credentials_ref": "env:APPLIANCE_CREDENTIALS"}
    async with client.post("/api/v1/appliances", json=new, headers=auth(token)) as resp:
        assert resp.status == 201
    patch = {"base_url": "https://169.254.169.254/latest",
             "credentials_ref": "env:APPLIANCE_CREDENTIALS"}
    async with client.patch("/api/v1/appliances/vr-1", json=patch,
                            headers=auth(token)) as resp:
        body = await resp.json()
        assert resp.status == 422 and "metadata" in body["detail"], body
    data = "name,base_url,site\nvr-2,http://vr-2.example.net/api,ams\n"
    async with client.post("/api/v1/appliances:import", data=data,
                           headers={**auth(token), "Content-Type": "text/csv"}) as resp:
        body = await resp.json()
        assert resp.status == 422 and "clear text" in body["detail"], body


async def test_client_build_rechecks_a_stored_url() -> None:
    async with ApplianceHttp(Settings(), environ={"APPLIANCE_C": "a:b"}) as http:
        for url, why in REFUSED:
            target = ApplianceTarget("vr-1", url, credentials_ref="env:APPLIANCE_C")
            with pytest.raises(TargetRefused, match=why) as info:
                guarded_client(http, target, STRICT_POLICY)
            assert "'vr-1'" in str(info.value)
        ok = ApplianceTarget("vr-1", "https://vr-1.example.net/api",
                             credentials_ref="env:APPLIANCE_C")
        assert guarded_client(http, ok, STRICT_POLICY).credentials.username == "a"


async def test_engine_refuses_a_stored_http_row_under_strict_settings(
    pool: asyncpg.Pool, db_url: str
) -> None:
    """The simulator's rows (http://127.0.0.1) were stored under lab settings; an engine
    with the strict policy fails their tasks TARGET_REFUSED and sends nothing."""
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        before = f.sim.stats(include_appliances=False)["requests"]
        rid = await create(pool)
        async with engine(f, http=http_client(), target_policy=STRICT_POLICY):
            await wait_until_terminal(pool, rid)
        rows = await pool.fetch("SELECT state, error_code, error_message FROM tasks "
                                "WHERE rollout_id = $1", rid)
        assert [(r["state"], r["error_code"]) for r in rows] == \
            [("FAILED", "TARGET_REFUSED")] * 2
        assert all("clear text" in r["error_message"] for r in rows)
        assert f.sim.stats(include_appliances=False)["requests"] == before


def test_the_demo_sets_the_lab_settings_for_itself(pg_server_url: str, tmp_path: Path) -> None:
    """`orchestrator demo` runs under strict settings: it allows its simulator's
    http://127.0.0.1 in its own settings only."""
    name = f"demo_{uuid.uuid4().hex[:8]}"
    env = cli_env(pg_server_url, ORCHESTRATOR_APPLIANCE_ALLOW_HTTP="false",
                  ORCHESTRATOR_APPLIANCE_ALLOW_LOCAL_ADDRESSES="false")
    try:
        result = run_cli("demo", "--json", "--database-name", name, "--appliances", "20",
                         "--sites", "2", "--profile", "none", "--install-seconds", "0.3",
                         "--reboot-seconds", "0.2", "--report-dir", str(tmp_path / "reports"),
                         env=env, timeout=240)  # within the suite's 300 s per test
    finally:
        asyncio.run(drop_database(pg_server_url, name))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["state"] == "SUCCEEDED" and summary["tasks"] == {"SUCCEEDED": 20}
