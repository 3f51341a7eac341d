"""Credentials references cannot read the orchestrator's own secrets (issue 14, finding 1).

`credentials_ref` used to accept any `env:NAME` or `file:/path`, and its value went as HTTP
Basic auth to a base_url chosen by the same admin: `env:ORCHESTRATOR_DATABASE_URL`, the
embedded server's `embedded.json`, `/etc/shadow`. Now only `env:<prefix>*` and regular
files whose real path is inside the secrets directory are allowed (at import, at the
API, and again when the engine builds a client), and a host change must name the
credentials_ref again.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import create_app
from orchestrator.appliance import ApplianceHttp, ApplianceTarget, CredentialsError
from orchestrator.appliance.credentials import resolve_credentials
from orchestrator.appliance.guard import guarded_client
from orchestrator.domain.inventory import (
    LAB_POLICY,
    STRICT_POLICY,
    TargetPolicy,
    check_credentials_ref,
    validate_record,
)
from orchestrator.inventory import InventoryError, parse_inventory
from orchestrator.settings import Settings
from orchestrator.store import appliances as appliance_store
from tests.fleet import create, engine, fleet, http_client, wait_until_terminal
from tests.helpers import cli_env, run_cli
from tests.integration.test_api_support import auth, tokens_by_role

SECRET = "postgresql://orchestrator:Hunter2-Db-Secret@db.internal/orchestrator"
PASSWORD = "Hunter2-Db-Secret"

REFUSED = [
    ("env:ORCHESTRATOR_DATABASE_URL", "orchestrator's own settings"),
    ("env:orchestrator_database_url", "orchestrator's own settings"),
    ("env:ORCHESTRATOR_API_METRICS_TOKEN", "orchestrator's own settings"),
    ("env:HOME", "without the prefix APPLIANCE_"),
    ("env:SIM_CREDENTIALS", "without the prefix APPLIANCE_"),
    ("env:PGPASSWORD", "without the prefix APPLIANCE_"),
    ("file:/etc/shadow", "outside /etc/orchestrator/secrets"),
    ("file:/root/.local/share/orchestrator/embedded.json", "outside"),
    ("file:/var/lib/orchestrator/embedded.json", "outside"),
    ("file:/etc/orchestrator/secrets/../../shadow", "'..'"),
    ("file:/etc/orchestrator/secrets/a/../../../etc/shadow", "'..'"),
    ("file:/etc/orchestrator/secrets", "outside"),
    ("file:/etc/orchestrator/secretsX/a", "outside"),
    ("file:relative/path", "env:VARIABLE or file:/absolute/path"),
    ("vault:x", "env:VARIABLE or file:/absolute/path"),
]
ALLOWED = ["env:APPLIANCE_CREDENTIALS", "env:APPLIANCE_SIM_CREDENTIALS",
           "file:/etc/orchestrator/secrets/nyc.secret",
           "file:/etc/orchestrator/secrets/sub/dir/x"]


@pytest.mark.parametrize(("ref", "why"), REFUSED)
def test_refused_references_name_the_reference_and_what_is_allowed(ref: str, why: str) -> None:
    spec, reasons = validate_record({"name": "vr-1", "base_url": "https://vr-1.example.net",
                                     "site": "ams", "credentials_ref": ref})
    assert spec is None
    (reason,) = reasons
    assert reason.startswith("credentials_ref:") and repr(ref) in reason and why in reason
    assert "allowed: env:APPLIANCE_NAME" in reason
    assert "/etc/orchestrator/secrets" in reason


@pytest.mark.parametrize("ref", ALLOWED)
def test_allowed_references(ref: str) -> None:
    assert check_credentials_ref(ref) == ref


def test_prefix_and_directory_come_from_the_policy() -> None:
    policy = TargetPolicy(env_prefix="VR_", secrets_dir="/run/secrets")
    assert check_credentials_ref("env:VR_CREDS", policy) == "env:VR_CREDS"
    assert check_credentials_ref("file:/run/secrets/nyc", policy) == "file:/run/secrets/nyc"
    with pytest.raises(ValueError, match="without the prefix VR_"):
        check_credentials_ref("env:APPLIANCE_CREDS", policy)
    no_files = TargetPolicy(secrets_dir=None)
    with pytest.raises(ValueError, match="file references are not allowed"):
        check_credentials_ref("file:/etc/orchestrator/secrets/a", no_files)


def test_file_import_refuses_them_all() -> None:
    rows = "".join(f"vr-{i},https://vr-{i}.example.net/api,ams,{ref}\n"
                   for i, (ref, _) in enumerate(REFUSED))
    with pytest.raises(InventoryError) as info:
        parse_inventory("name,base_url,site,credentials_ref\n" + rows, "csv")
    assert len(info.value.errors) == len(REFUSED)
    assert all(e.reason.startswith("credentials_ref:") for e in info.value.errors)


# ------------------------------------------------------------------ resolution
@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    root = tmp_path / "secrets"
    root.mkdir()
    (root / "nyc").write_text("admin:Nyc-Pass\n", encoding="utf-8")
    (tmp_path / "outside").write_text(f"root:{PASSWORD}\n", encoding="utf-8")
    return root


def _policy(secrets_dir: Path) -> TargetPolicy:
    return TargetPolicy(secrets_dir=str(secrets_dir))


def test_a_file_inside_the_directory_resolves(secrets_dir: Path) -> None:
    creds = resolve_credentials(f"file:{secrets_dir}/nyc", policy=_policy(secrets_dir))
    assert (creds.username, creds.password) == ("admin", "Nyc-Pass")
    # a link that stays inside is fine
    (secrets_dir / "alias").symlink_to(secrets_dir / "nyc")
    assert resolve_credentials(f"file:{secrets_dir}/alias",
                               policy=_policy(secrets_dir)).username == "admin"


def test_a_symbolic_link_out_of_the_directory_is_refused(secrets_dir: Path) -> None:
    (secrets_dir / "escape").symlink_to(secrets_dir.parent / "outside")
    (secrets_dir / "shadow").symlink_to("/etc/shadow")
    (secrets_dir / "subdir").symlink_to(secrets_dir.parent)
    for ref in (f"file:{secrets_dir}/escape", f"file:{secrets_dir}/shadow",
                f"file:{secrets_dir}/subdir/outside"):
        with pytest.raises(CredentialsError) as info:
            resolve_credentials(ref, policy=_policy(secrets_dir))
        text = str(info.value)
        assert ref in text and "outside" in text and PASSWORD not in text


def test_dot_dot_and_non_regular_files_are_refused(secrets_dir: Path) -> None:
    with pytest.raises(CredentialsError, match=r"'\.\.'"):
        resolve_credentials(f"file:{secrets_dir}/../outside", policy=_policy(secrets_dir))
    (secrets_dir / "dir").mkdir()
    with pytest.raises(CredentialsError, match="not a regular file"):
        resolve_credentials(f"file:{secrets_dir}/dir", policy=_policy(secrets_dir))
    os.mkfifo(secrets_dir / "fifo")
    with pytest.raises(CredentialsError, match="not a regular file"):
        resolve_credentials(f"file:{secrets_dir}/fifo", policy=_policy(secrets_dir))


def test_a_huge_first_line_is_refused(secrets_dir: Path) -> None:
    (secrets_dir / "big").write_text("a:" + "x" * 100_000, encoding="utf-8")
    with pytest.raises(CredentialsError, match="longer than"):
        resolve_credentials(f"file:{secrets_dir}/big", policy=_policy(secrets_dir))


def test_orchestrator_variables_are_refused_even_without_a_policy() -> None:
    environ = {"ORCHESTRATOR_DATABASE_URL": SECRET}
    for ref in ("env:ORCHESTRATOR_DATABASE_URL", "env:Orchestrator_Database_Url"):
        with pytest.raises(CredentialsError) as info:
            resolve_credentials(ref, environ=environ)
        assert ref in str(info.value) and PASSWORD not in str(info.value)


def test_policy_refuses_variables_without_the_prefix() -> None:
    environ = {"PGPASSWORD": f"x:{PASSWORD}", "APPLIANCE_OK": "admin:pw"}
    with pytest.raises(CredentialsError) as info:
        resolve_credentials("env:PGPASSWORD", environ=environ, policy=STRICT_POLICY)
    assert "APPLIANCE_" in str(info.value) and PASSWORD not in str(info.value)
    assert resolve_credentials("env:APPLIANCE_OK", environ=environ,
                               policy=STRICT_POLICY).username == "admin"


async def test_client_build_rechecks_a_stored_reference() -> None:
    environ = {"ORCHESTRATOR_DATABASE_URL": SECRET, "HOME_CREDS": f"a:{PASSWORD}"}
    async with ApplianceHttp(Settings(), environ=environ) as http:
        for ref in ("env:ORCHESTRATOR_DATABASE_URL", "env:HOME_CREDS",
                    "file:/etc/shadow"):
            target = ApplianceTarget("vr-1", "https://vr-1.example.net/api",
                                     credentials_ref=ref)
            with pytest.raises(CredentialsError) as info:
                guarded_client(http, target, STRICT_POLICY)
            assert ref in str(info.value) and PASSWORD not in str(info.value)


async def test_engine_fails_a_stored_bad_reference_without_sending_anything(
    pool: asyncpg.Pool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row written behind the inventory's back (SQL, an older version) is not trusted:
    the task fails CREDENTIALS and the appliance never hears of the database URL."""
    monkeypatch.setenv("ORCHESTRATOR_DATABASE_URL", SECRET)
    async with fleet(pool, db_url, appliances=2, sites=1) as f:
        await pool.execute("UPDATE appliances SET credentials_ref = "
                           "'env:ORCHESTRATOR_DATABASE_URL'")
        before = f.sim.stats(include_appliances=False)["requests"]
        rid = await create(pool)
        environ = {"ORCHESTRATOR_DATABASE_URL": SECRET, "APPLIANCE_SIM_CREDENTIALS": "a:b"}
        async with engine(f, http=http_client(environ=environ)):
            await wait_until_terminal(pool, rid)
        rows = await pool.fetch("SELECT state, error_code, error_message FROM tasks "
                                "WHERE rollout_id = $1", rid)
        assert [(r["state"], r["error_code"]) for r in rows] == [("FAILED", "CREDENTIALS")] * 2
        assert all("ORCHESTRATOR_DATABASE_URL" in r["error_message"] for r in rows)
        assert all(PASSWORD not in r["error_message"] for r in rows)
        assert f.sim.stats(include_appliances=False)["requests"] == before


# ------------------------------------------------------------------ CLI and API
def test_cli_import_refuses_a_settings_variable(tmp_path: Path, db_url: str) -> None:
    inventory = tmp_path / "fleet.csv"
    inventory.write_text("name,base_url,site,credentials_ref\n"
                         "vr-1,https://vr-1.example.net/api,ams,env:ORCHESTRATOR_DATABASE_URL\n")
    result = run_cli("appliances", "import", str(inventory), env=cli_env(db_url))
    assert result.returncode == 1, result.stderr
    assert "env:ORCHESTRATOR_DATABASE_URL" in result.stderr
    assert "allowed: env:APPLIANCE_NAME" in result.stderr
    assert db_url not in result.stderr + result.stdout


@pytest.fixture
async def api(pool: asyncpg.Pool) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    tokens = await tokens_by_role(pool)
    app = create_app(pool, Settings())
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client, tokens["admin"]
    finally:
        await client.close()


async def test_api_create_and_update_refuse_bad_references(
    api: tuple[TestClient[Any, Any], str]
) -> None:
    client, token = api
    new = {"name": "vr-1", "base_url": "https://vr-1.example.net/api", "site": "ams",
           "credentials_ref": "env:ORCHESTRATOR_DATABASE_URL"}
    async with client.post("/api/v1/appliances", json=new, headers=auth(token)) as resp:
        body = await resp.json()
        assert resp.status == 422, body
        assert "env:ORCHESTRATOR_DATABASE_URL" in body["detail"]
        assert body["errors"][0]["field"] == "body.credentials_ref"
    new["credentials_ref"] = "env:APPLIANCE_CREDENTIALS"
    async with client.post("/api/v1/appliances", json=new, headers=auth(token)) as resp:
        assert resp.status == 201
    for ref in ("file:/etc/shadow", "env:HOME"):
        async with client.patch("/api/v1/appliances/vr-1", json={"credentials_ref": ref},
                                headers=auth(token)) as resp:
            body = await resp.json()
            assert resp.status == 422 and ref in body["detail"], body


async def test_host_change_needs_the_credentials_ref_again(
    api: tuple[TestClient[Any, Any], str], pool: asyncpg.Pool
) -> None:
    client, token = api
    new = {"name": "vr-1", "base_url": "https://vr-1.example.net/api", "site": "ams",
           "credentials_ref": "env:APPLIANCE_CREDENTIALS"}
    async with client.post("/api/v1/appliances", json=new, headers=auth(token)) as resp:
        assert resp.status == 201
    # PATCH: another host without credentials_ref is refused, naming the appliance
    moved = {"base_url": "https://attacker.example.org/api"}
    async with client.patch("/api/v1/appliances/vr-1", json=moved,
                            headers=auth(token)) as resp:
        body = await resp.json()
        assert resp.status == 409, body  # a valid body; the stored host refuses it
        assert "'vr-1'" in body["detail"] and "credentials_ref" in body["detail"]
        assert "attacker.example.org" in body["detail"]
    row = await appliance_store.get_appliance(pool, "vr-1")
    assert row is not None and row.base_url == "https://vr-1.example.net/api"
    # the same host (another path, port, case) needs nothing
    async with client.patch("/api/v1/appliances/vr-1",
                            json={"base_url": "https://VR-1.example.net:8443/api/v2"},
                            headers=auth(token)) as resp:
        assert resp.status == 200
    # naming it again (even unchanged) allows the move
    async with client.patch("/api/v1/appliances/vr-1",
                            json={**moved, "credentials_ref": "env:APPLIANCE_CREDENTIALS"},
                            headers=auth(token)) as resp:
        assert resp.status == 200
    # an import row without credentials_ref that moves the host: refused, nothing written
    csv_body = ("name,base_url,site,credentials_ref\n"
                "vr-2,https://vr-2.example.net/api,ams,\n"
                "vr-1,https://elsewhere.example.org/api,ams,\n")
    async with client.post("/api/v1/appliances:import", data=csv_body,
                           headers={**auth(token), "Content-Type": "text/csv"}) as resp:
        body = await resp.json()
        assert resp.status == 409, body
        assert "'vr-1'" in body["detail"] and "elsewhere.example.org" in body["detail"]
    assert await appliance_store.get_appliance(pool, "vr-2") is None
    # the same import naming the credentials_ref passes
    csv_body = csv_body.replace("/api,ams,\n", "/api,ams,env:APPLIANCE_CREDENTIALS\n")
    async with client.post("/api/v1/appliances:import", data=csv_body,
                           headers={**auth(token), "Content-Type": "text/csv"}) as resp:
        assert resp.status == 200, await resp.text()


def test_cli_import_refuses_a_host_change_without_credentials_ref(
    tmp_path: Path, db_url: str
) -> None:
    env = cli_env(db_url)
    first = tmp_path / "first.json"
    first.write_text(json.dumps([{"name": "vr-1", "base_url": "https://vr-1.example.net/api",
                                  "site": "ams", "credentials_ref": "env:APPLIANCE_C"}]))
    assert run_cli("appliances", "import", str(first), env=env).returncode == 0
    moved = tmp_path / "moved.json"
    moved.write_text(json.dumps([{"name": "vr-1", "site": "ams",
                                  "base_url": "https://evil.example.org/api"}]))
    result = run_cli("appliances", "import", str(moved), env=env)
    assert result.returncode == 1
    assert "'vr-1'" in result.stderr and "credentials_ref" in result.stderr
    assert "nothing imported" in result.stderr


def test_simulator_inventory_uses_an_allowed_name() -> None:
    from orchestrator.simulator.server import DEFAULT_CREDENTIALS_REF

    assert DEFAULT_CREDENTIALS_REF == "env:APPLIANCE_SIM_CREDENTIALS"
    assert check_credentials_ref(DEFAULT_CREDENTIALS_REF, LAB_POLICY)
