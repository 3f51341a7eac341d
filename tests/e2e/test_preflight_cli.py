"""`orchestrator rollout preflight ID` as an operator runs it: a real process against the
simulator, its progress bar on stderr, its results on stdout (text and --json), its exit
code, and `rollout show` and `orchestrator report` showing what it found."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from pathlib import Path

from orchestrator.simulator import SimulatorConfig, run_simulator
from tests.helpers import cli_env, run_cli

ENV = {"APPLIANCE_SIM_CREDENTIALS": "admin:admin", "ORCHESTRATOR_LOG_LEVEL": "warning",
       "ORCHESTRATOR_APPLIANCE_REQUEST_TIMEOUT": "5"}


async def test_preflight_command_show_and_report(db_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(appliances=6, sites=2)
    async with run_simulator(config, host="127.0.0.1", port=0) as sim:
        sim.set_faults("sim-00002", ["bad_credentials"])
        sim.set_faults("sim-00005", ["reconfigure_pending"])
        inventory = tmp_path / "fleet.csv"
        sim.write_inventory(inventory)
        env = cli_env(db_url, **ENV)
        loop = asyncio.get_running_loop()

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return await loop.run_in_executor(None, lambda: run_cli(*args, env=env))

        assert (await cli("appliances", "import", str(inventory))).returncode == 0
        created = await cli("rollout", "create", "--name", "pf", "--version", "9.0.1-20020",
                            "--preflight", "required", "--json")
        assert created.returncode == 0, created.stderr
        rid = str(json.loads(created.stdout)["id"])
        assert json.loads(created.stdout)["strategy"]["preflight"] == "required"
        shown = await cli("rollout", "show", rid)
        assert "pre-flight: not run" in shown.stdout

        checked = await cli("rollout", "preflight", rid)
        assert checked.returncode == 1, checked.stderr  # some appliances fail
        assert "pre-flight of rollout" in checked.stderr and "6/6" in checked.stderr
        assert f"pre-flight of rollout {rid}: 6 appliance(s) checked: 4 ok, 2 fail" \
            in checked.stdout
        lines = checked.stdout.splitlines()
        assert any("sim-00002" in x and "CREDENTIALS" in x for x in lines)
        assert any("sim-00005" in x and "RECONFIGURE_PENDING" in x for x in lines)
        assert not any("sim-00001" in x for x in lines), "only the problems are listed"

        sim.set_faults("sim-00002", [])
        again = await cli("rollout", "preflight", rid, "--json")
        assert again.returncode == 1
        body = json.loads(again.stdout)
        assert body["run"]["counts"] == {"ok": 5, "warn": 0, "fail": 1, "skip": 0}
        assert len(body["items"]) == 6
        by_name = {i["appliance"]: i for i in body["items"]}
        assert by_name["sim-00002"]["result"] == "ok"
        assert by_name["sim-00005"]["code"] == "RECONFIGURE_PENDING"

        text = (await cli("rollout", "show", rid)).stdout
        assert "pre-flight: 5 ok, 1 fail (run 2, operator" in text
        assert "problems: RECONFIGURE_PENDING 1" in text
        as_json = json.loads((await cli("rollout", "show", rid, "--json")).stdout)
        assert as_json["preflight"]["counts"]["fail"] == 1

        report = json.loads((await cli("report", rid)).stdout)
        assert report["preflight"]["counts"] == {"ok": 5, "warn": 0, "fail": 1, "skip": 0}
        assert report["preflight"]["problems"][0]["code"] == "RECONFIGURE_PENDING"
        table = list(csv.DictReader(io.StringIO(
            (await cli("report", rid, "--format", "csv")).stdout)))
        rows = {r["appliance"]: r for r in table}
        assert (rows["sim-00005"]["preflight"], rows["sim-00005"]["preflight_code"]) == \
            ("fail", "RECONFIGURE_PENDING")
        assert (rows["sim-00001"]["preflight"], rows["sim-00001"]["preflight_code"]) == \
            ("ok", "")
        html = (await cli("report", rid, "--format", "html")).stdout
        assert 'id="preflight"' in html and "RECONFIGURE_PENDING" in html

        missing = await cli("rollout", "preflight", "999")
        assert missing.returncode == 1 and "999" in missing.stderr
