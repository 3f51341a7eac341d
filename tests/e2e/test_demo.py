"""`orchestrator demo` as a user runs it (a real process)."""

from __future__ import annotations

import asyncio
import json
import uuid

from tests.helpers import cli_env, drop_database, run_cli


def run_demo(pg_server_url: str, *args: str) -> dict[str, object]:
    name = f"demo_{uuid.uuid4().hex[:8]}"
    try:
        result = run_cli("demo", "--json", "--database-name", name, *args,
                         env=cli_env(pg_server_url), timeout=400)
    finally:
        asyncio.run(drop_database(pg_server_url, name))
    assert result.returncode == 0, result.stderr[-3000:]
    summary: dict[str, object] = json.loads(result.stdout)
    return summary


def test_default_demo_holds_every_promise(pg_server_url: str) -> None:
    """The demo exactly as `make demo` runs it: 300 appliances, 6 sites, the mixed faults."""
    r = run_demo(pg_server_url)
    tasks = r["tasks"]
    assert isinstance(tasks, dict)
    assert sum(tasks.values()) == 300
    assert not set(tasks) & {"PENDING", "DISPATCHING", "INSTALLING", "VERIFYING"}
    # the faults show: some tasks fail, so the rollout does not read as a full success
    assert r["state"] == "COMPLETED_WITH_FAILURES"
    assert tasks["SUCCEEDED"] > 200 and tasks.get("FAILED", 0) > 0
    assert r["duplicate_installs"] == 0
    assert r["truth_mismatches"] == 0
    assert 0 < r["max_in_flight"] <= r["max_concurrency"]  # type: ignore[operator]
    by_site = r["max_in_flight_by_site"]
    assert isinstance(by_site, dict) and len(by_site) == 6
    assert max(by_site.values()) <= r["per_site_concurrency"]  # type: ignore[operator]
    assert r["waves"] == [5, 30, 120, 145]


def test_failing_canary_stops_the_rollout(pg_server_url: str) -> None:
    r = run_demo(pg_server_url, "--appliances", "60", "--canary-fault", "install_error",
                 "--install-seconds", "0.5", "--reboot-seconds", "0.3")
    assert r["state"] == "FAILED"
    assert "canary wave failed" in str(r["abort_reason"])
    assert r["tasks"] == {"FAILED": 5, "CANCELLED": 55}
    assert r["installs_accepted"] == 5, "no later wave started"
    assert r["truth_mismatches"] == 0
