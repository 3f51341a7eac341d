"""`orchestrator demo --webhook-url URL` as a user runs it (a real process): a receiver on
127.0.0.1 gets the demo rollout's events, each once, in order, as docs/notifications.md
documents them, and the summary's delivery figures agree with what arrived."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from tests.helpers import ROOT, VENV_BIN, cli_env, drop_database
from tests.webhook_receiver import receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


async def test_the_demo_delivers_its_rollouts_events_to_a_webhook(pg_server_url: str,
                                                                  tmp_path: Path) -> None:
    name = f"demo_{uuid.uuid4().hex[:8]}"
    async with receiver("/demo-hook") as rx:
        try:
            proc = await asyncio.create_subprocess_exec(
                str(VENV_BIN / "orchestrator"), "demo", "--json", "--database-name", name,
                "--appliances", "20", "--sites", "2", "--profile", "none",
                "--waves", "2,50%,100%", "--install-seconds", "0.5", "--reboot-seconds", "0.3",
                "--report-dir", str(tmp_path / "reports"), "--webhook-url", rx.url,
                env=cli_env(pg_server_url), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 300)
        finally:
            await drop_database(pg_server_url, name)
    assert proc.returncode == 0, err.decode()[-3000:]
    summary = json.loads(out)
    assert summary["state"] == "SUCCEEDED", summary
    rollout_id = summary["rollout_id"]

    received = [r.json for r in rx.delivered]
    types = [e["type"] for e in received]
    # exactly the documented events of a three-wave rollout that succeeds, in order
    assert types == ["rollout.started",
                     "wave.started", "wave.finished",
                     "wave.started", "wave.finished",
                     "wave.started", "wave.finished",
                     "rollout.finished"], (types, summary.get("webhook"))
    assert [e["data"]["wave"] for e in received if e["type"] == "wave.started"] == [0, 1, 2]
    assert all(e["rollout"]["id"] == rollout_id for e in received)
    # each event once (the demo's receiver answered 200 at once: no repeat), ids ascending
    ids = [r.event_id for r in rx.delivered]
    assert len(set(ids)) == len(ids) == len(rx.requests)
    assert ids == sorted(ids, key=int)
    assert [r.headers["X-Orchestrator-Event"] for r in rx.delivered] == types
    # unsigned (the demo gives no secret)
    assert all("X-Orchestrator-Signature" not in r.headers for r in rx.delivered)

    started = received[0]["data"]
    assert (started["waves"], started["appliances"]) == (3, 20)
    finished = received[-1]["data"]
    assert finished["state"] == "SUCCEEDED"
    assert finished["counts"] == {"SUCCEEDED": 20}
    assert finished["reports"]["html"] == f"/api/v1/rollouts/{rollout_id}/report?format=html"
    # the demo's summary says what was delivered, and nothing is left pending or failed
    assert summary["webhook"] == {"delivered": len(received)}, summary["webhook"]
