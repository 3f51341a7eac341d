"""Rollout reports of a real rollout with mixed outcomes (the simulator with faults, the
engine in-process): every figure of the JSON report against the database, recomputed here
independently from the raw `tasks` and `task_events` rows; the CSV rows against the tasks;
the CLI and the HTTP helper end to end."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import os
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.reports import ReportFormatError, render, write_reports
from orchestrator.reports.csv_report import COLUMNS
from orchestrator.reports.http import report_response
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.db import create_pool
from orchestrator.store.rollouts import RolloutNotFound
from tests.fleet import ACTOR, TARGET, create, engine, fleet, wait_until_terminal
from tests.helpers import ROOT, VENV_BIN, cli_env, url_with_database

TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELLED")
FAULTS = {
    "sim-00002": "install_error",
    "sim-00003": "silent_failure",
    "sim-00004": "long_reboot",
    "sim-00005": "bad_credentials",
}


@dataclass
class Mixed:
    pool: asyncpg.Pool
    db_url: str
    rollout_id: int
    other_rollout_id: int


@pytest.fixture(scope="module")
async def mixed(pg_server_url: str, template_db: str) -> AsyncIterator[Mixed]:
    """One rollout with every outcome: wave 0 (8 appliances by name) meets the faults,
    one appliance is at the target already (SKIPPED), then the rollout is cancelled at the
    approval gate, so wave 1 ends CANCELLED. Windows are added afterwards (the report
    lists those covering the targeted appliances)."""
    name = f"orch_report_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = url_with_database(pg_server_url, name)
    try:
        async with create_pool(url, min_size=1, max_size=10) as pool:
            async with fleet(pool, url, appliances=12, sites=3) as f:
                for appliance, fault in FAULTS.items():
                    f.sim.set_faults(appliance, [fault])
                async with engine(f):
                    other = await create(pool, selector={"names": ["sim-00006"]})
                    await wait_until_terminal(pool, other)
                    rid = await create(pool, {
                        "waves": [8, "100%"], "order": "name", "approval": "after-canary",
                        "reboot_grace": 1.5, "max_concurrency": 4,
                        # the faults are the point of this wave: the canary rule may not stop it
                        "canary_max_failures": 8,
                    })
                    for _ in range(600):
                        counts = await rollout_store.rollout_counts(pool, rid)
                        if counts.waves[0]["state"] == "AWAITING_APPROVAL":
                            break
                        await asyncio.sleep(0.05)
                    assert counts.waves[0]["state"] == "AWAITING_APPROVAL", counts
                    await rollout_store.cancel_rollout(pool, rid, ACTOR)
                    await wait_until_terminal(pool, rid)
                site_1 = f.sim.site_of("sim-00001")
            await pool.execute(
                "UPDATE appliances SET tags = tags || '{dc-east}' WHERE name = ANY($1)",
                ["sim-00010", "sim-00011"],
            )
            await pool.execute(
                """INSERT INTO maintenance_windows (name, cron, duration_s, timezone, sites, tags)
                   VALUES ('by-site', '0 2 * * *', 7200, 'UTC', $1, '{}'),
                          ('by-tag', '0 3 * * 6', 3600, 'Europe/Paris', '{}', '{dc-east}'),
                          ('elsewhere', '0 4 * * *', 3600, 'UTC', '{nowhere}', '{nothing}')""",
                [site_1],
            )
            yield Mixed(pool, url, rid, other)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def json_report(pool: asyncpg.Pool, rollout_id: int) -> dict[str, Any]:
    content_type, body = await render(pool, rollout_id, "json")
    assert content_type == "application/json"
    assert isinstance(body, bytes)
    report: dict[str, Any] = json.loads(body)
    return report


async def csv_text(pool: asyncpg.Pool, rollout_id: int) -> str:
    content_type, body = await render(pool, rollout_id, "csv")
    assert content_type.startswith("text/csv")
    assert not isinstance(body, bytes)
    return b"".join([chunk async for chunk in body]).decode()


# ------------------------------------------------------------------ the oracle
def percentile(values: list[float], p: float) -> float | None:
    """percentile_cont: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def stats(values: list[float]) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 3)

    return {"count": len(values), "p50_s": r(percentile(values, 0.5)),
            "p95_s": r(percentile(values, 0.95)), "max_s": r(max(values) if values else None)}


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def outcome_counts(rows: list[asyncpg.Record]) -> dict[str, Any]:
    states = Counter(r["state"] for r in rows)
    finished = [r["finished_at"] for r in rows]
    started = [r["dispatched_at"] for r in rows if r["dispatched_at"]]
    end = max(finished) if rows and all(finished) else None
    start = min(started) if started else None
    return {
        "targeted": len(rows), "succeeded": states["SUCCEEDED"], "failed": states["FAILED"],
        "timed_out": states["TIMED_OUT"], "skipped": states["SKIPPED"],
        "cancelled": states["CANCELLED"], "pending": states["PENDING"],
        "in_flight": states["DISPATCHING"] + states["INSTALLING"] + states["VERIFYING"],
        "started_at": iso(start), "finished_at": iso(end),
        "duration_s": round((end - start).total_seconds(), 3) if start and end else None,
    }


async def expected_report(pool: asyncpg.Pool, rid: int) -> dict[str, Any]:
    """The report recomputed in Python from the raw rows."""
    rollout = await pool.fetchrow("SELECT * FROM rollouts WHERE id = $1", rid)
    assert rollout is not None
    tasks = await pool.fetch(
        """SELECT t.*, a.name, a.tags FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.rollout_id = $1 ORDER BY t.position""", rid)
    events = await pool.fetch(
        "SELECT * FROM task_events WHERE rollout_id = $1 ORDER BY task_id, id", rid)
    by_task: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for ev in events:
        by_task[ev["task_id"]].append(ev)
    wave_of = {t["id"]: t["wave"] for t in tasks}

    installs: list[float] = []
    reboots: list[float] = []
    for evs in by_task.values():
        entered: dict[str, datetime] = {}
        for ev in evs:
            if ev["from_state"] == ev["to_state"]:
                continue  # a lease take-over, not a transition
            if ev["from_state"] == "INSTALLING" and ev["to_state"] == "VERIFYING" \
                    and "INSTALLING" in entered:
                installs.append((ev["at"] - entered["INSTALLING"]).total_seconds())
            if ev["from_state"] == "VERIFYING" and ev["to_state"] in TERMINAL \
                    and "VERIFYING" in entered:
                reboots.append((ev["at"] - entered["VERIFYING"]).total_seconds())
            entered[ev["to_state"]] = ev["at"]
    whole = [(t["finished_at"] - t["dispatched_at"]).total_seconds() for t in tasks
             if t["state"] in ("SUCCEEDED", "FAILED", "TIMED_OUT") and t["dispatched_at"]]

    def versions(column: str) -> list[dict[str, Any]]:
        counts = Counter(t[column] for t in tasks)
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
        return [{"version": v, "count": n} for v, n in ordered]

    windows = []
    for w in await pool.fetch("SELECT * FROM maintenance_windows ORDER BY name"):
        covered = [t for t in tasks
                   if t["site"] in w["sites"] or set(t["tags"]) & set(w["tags"])]
        if covered:
            windows.append({"id": w["id"], "name": w["name"], "cron": w["cron"],
                            "duration_s": w["duration_s"], "timezone": w["timezone"],
                            "cutoff_s": w["cutoff_s"], "sites": list(w["sites"]),
                            "tags": list(w["tags"]), "appliances": len(covered)})

    failures: dict[tuple[str | None, str | None], list[asyncpg.Record]] = defaultdict(list)
    for t in tasks:
        if t["state"] in ("FAILED", "TIMED_OUT"):
            message = t["error_message"]
            if message is not None and len(t["name"]) >= 4:
                message = message.replace(t["name"], "{appliance}")
            failures[(t["error_code"], message)].append(t)
    remaining: dict[str, list[str]] = defaultdict(list)
    for t in tasks:
        if t["state"] in ("FAILED", "TIMED_OUT", "CANCELLED"):
            remaining[t["state"]].append(t["name"])

    all_counts = outcome_counts(list(tasks))
    waves = []
    for w in await pool.fetch(
            "SELECT * FROM rollout_waves WHERE rollout_id = $1 ORDER BY number", rid):
        waves.append({"number": w["number"], "planned_size": w["planned_size"],
                      "state": w["state"], "requires_approval": w["requires_approval"],
                      "approved_by": w["approved_by"],
                      **outcome_counts([t for t in tasks if t["wave"] == w["number"]])})
    sites = [{"site": s, **outcome_counts([t for t in tasks if t["site"] == s])}
             for s in sorted({t["site"] for t in tasks})]
    # timeline: when each task became terminal (no retries in this rollout)
    finished_at_event = {
        task_id: next(ev["at"] for ev in evs if ev["to_state"] in TERMINAL)
        for task_id, evs in by_task.items() if any(ev["to_state"] in TERMINAL for ev in evs)
    }
    transitions = [ev["at"] for ev in events if ev["from_state"] is not None
                   and ev["from_state"] != ev["to_state"]]
    start = min([*transitions, *([rollout["started_at"]] if rollout["started_at"] else [])])
    return {
        "rollout": rollout, "tasks": tasks,
        "summary": {
            **{k: v for k, v in all_counts.items()
               if k not in ("started_at", "finished_at", "duration_s")},
            "started_at": iso(rollout["started_at"]), "finished_at": iso(rollout["finished_at"]),
            "duration_s": round((rollout["finished_at"] - rollout["started_at"])
                                .total_seconds(), 3),
            "versions_before": versions("from_version"),
            "versions_after": versions("final_version"),
            "windows_mode": "auto", "windows": windows,
        },
        "waves": waves, "sites": sites,
        "durations": {"install": stats(installs), "reboot": stats(reboots),
                      "task": stats(whole)},
        "failures": failures, "remaining": remaining,
        "timeline": {"start": start, "end": max(transitions), "finished": finished_at_event,
                     "wave_of": wave_of},
    }


# ------------------------------------------------------------------ tests
async def test_the_rollout_has_every_outcome(mixed: Mixed) -> None:
    states = {r["state"]: r["n"] for r in await mixed.pool.fetch(
        "SELECT state, count(*) AS n FROM tasks WHERE rollout_id = $1 GROUP BY state",
        mixed.rollout_id)}
    assert states == {"SUCCEEDED": 3, "FAILED": 3, "TIMED_OUT": 1, "SKIPPED": 1,
                      "CANCELLED": 4}


async def test_every_number_of_the_json_report(mixed: Mixed) -> None:
    pool, rid = mixed.pool, mixed.rollout_id
    report = await json_report(pool, rid)
    want = await expected_report(pool, rid)

    assert report["report_version"] == 1
    r = want["rollout"]
    assert report["rollout"]["id"] == rid
    assert report["rollout"]["state"] == r["state"] == "CANCELLED"
    assert report["rollout"]["target_version"] == TARGET
    assert report["rollout"]["abort_reason"] == r["abort_reason"]
    assert report["eta"] is None

    assert report["summary"] == want["summary"]
    assert report["summary"]["targeted"] == 12
    assert [w["name"] for w in report["summary"]["windows"]] == ["by-site", "by-tag"]
    assert report["waves"] == want["waves"]
    assert [w["cancelled"] for w in report["waves"]] == [0, 4]
    assert report["sites"] == want["sites"]
    assert report["durations"] == want["durations"]
    assert report["durations"]["install"]["count"] >= 4
    assert report["durations"]["reboot"]["count"] >= 4

    # failures: grouped by code and message, every appliance listed (under the cap)
    got = {(f["error_code"], f["message"]): f for f in report["failures"]}
    assert set(got) == set(want["failures"])
    for key, rows in want["failures"].items():
        group = got[key]
        assert group["count"] == len(rows)
        assert group["appliances"] == sorted(t["name"] for t in rows)
        assert group["appliances_not_listed"] == 0
        assert group["outcomes"] == sorted({t["state"] for t in rows})
    codes = {f["error_code"] for f in report["failures"]}
    assert {"INSTALL_ERROR", "VERSION_MISMATCH", "UNAUTHORIZED"} <= codes
    assert report["failures_not_listed"] == {"groups": 0, "appliances": 0}
    counts = [f["count"] for f in report["failures"]]
    assert counts == sorted(counts, reverse=True)

    rem = report["remaining"]
    assert rem["command"] == f"orchestrator rollout retry-failed {rid}"
    assert rem["retryable"] == sum(len(v) for v in want["remaining"].values()) == 8
    assert rem["not_finished"] == 0
    assert {g["outcome"]: sorted(g["appliances"]) for g in rem["by_outcome"]} == \
        {k: sorted(v) for k, v in want["remaining"].items()}
    assert {g["outcome"]: g["count"] for g in rem["by_outcome"]} == \
        {k: len(v) for k, v in want["remaining"].items()}

    # timeline: every point of every wave recomputed from the terminal events
    tl = report["timeline"]
    exp = want["timeline"]
    assert tl["start"] == exp["start"].isoformat()
    assert tl["end"] == exp["end"].isoformat()
    width = tl["bucket_seconds"]
    assert len(tl["times"]) <= 201
    assert math.floor((exp["end"] - exp["start"]).total_seconds() / width) + 1 \
        == len(tl["times"]) - 1
    assert [w["wave"] for w in tl["waves"]] == [0, 1]
    for series in tl["waves"]:
        wave = series["wave"]
        assert series["size"] == sum(1 for t in want["tasks"] if t["wave"] == wave)
        assert len(series["finished"]) == len(tl["times"])
        buckets = [math.floor((at - exp["start"]).total_seconds() / width)
                   for task_id, at in exp["finished"].items() if exp["wave_of"][task_id] == wave]
        expected = [sum(1 for b in buckets if b < i) for i in range(len(tl["times"]))]
        assert series["finished"] == expected
        assert series["finished"][-1] == series["size"]


async def test_the_other_rollout_is_not_mixed_in(mixed: Mixed) -> None:
    report = await json_report(mixed.pool, mixed.other_rollout_id)
    assert report["summary"]["targeted"] == 1
    assert report["summary"]["succeeded"] == 1
    assert report["failures"] == []
    assert report["remaining"] == {"retryable": 0, "not_finished": 0, "command": None,
                                   "by_outcome": []}
    assert all(w["appliances"] == 1 for w in report["summary"]["windows"])
    assert {w["name"] for w in report["summary"]["windows"]} <= {"by-site"}


async def test_csv_rows_are_the_tasks(mixed: Mixed) -> None:
    pool, rid = mixed.pool, mixed.rollout_id
    text = await csv_text(pool, rid)
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")  # RFC 4180 line ends only
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == COLUMNS
    tasks = await pool.fetch(
        """SELECT a.name, t.* FROM tasks t JOIN appliances a ON a.id = t.appliance_id
           WHERE t.rollout_id = $1 ORDER BY t.position""", rid)
    assert len(rows) == 1 + len(tasks)
    for row, t in zip(rows[1:], tasks, strict=True):
        cell = dict(zip(COLUMNS, row, strict=True))
        assert cell["appliance"] == t["name"]
        assert cell["site"] == t["site"]
        assert int(cell["wave"]) == t["wave"]
        assert cell["from_version"] == (t["from_version"] or "")
        assert cell["final_version"] == (t["final_version"] or "")
        assert cell["outcome"] == t["state"]
        assert cell["error_code"] == (t["error_code"] or "")
        assert cell["error_message"] == (t["error_message"] or "")
        assert cell["started_at"] == (t["dispatched_at"].isoformat() if t["dispatched_at"]
                                      else "")
        assert datetime.fromisoformat(cell["finished_at"]) == t["finished_at"]
        if t["dispatched_at"]:
            seconds = (t["finished_at"] - t["dispatched_at"]).total_seconds()
            assert float(cell["duration_s"]) == pytest.approx(seconds, abs=0.0005)
        else:
            assert cell["duration_s"] == ""
    outcomes = Counter(r[COLUMNS.index("outcome")] for r in rows[1:])
    assert outcomes == {"SUCCEEDED": 3, "FAILED": 3, "TIMED_OUT": 1, "SKIPPED": 1,
                        "CANCELLED": 4}


async def test_html_report_escapes_and_holds_the_charts(mixed: Mixed) -> None:
    content_type, body = await render(mixed.pool, mixed.rollout_id, "html")
    assert content_type == "text/html; charset=utf-8"
    assert isinstance(body, bytes)
    page = body.decode()
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in page
    assert f"<title>Rollout {mixed.rollout_id} " in page
    assert '<svg id="progress-chart"' in page and page.count('class="wave-line"') == 2
    assert '<svg id="site-chart"' in page
    for code in ("INSTALL_ERROR", "VERSION_MISMATCH", "UNAUTHORIZED"):
        assert code in page
    assert f"orchestrator rollout retry-failed {mixed.rollout_id}" in page
    # self-contained: nothing is fetched
    for outside in ("<script", "<link", "src=", "url(", "@import", "href="):
        assert outside not in page


async def test_unknown_rollout_and_format(mixed: Mixed) -> None:
    for fmt in ("json", "csv", "html"):
        with pytest.raises(RolloutNotFound):
            await render(mixed.pool, 999_999, fmt)
    with pytest.raises(ReportFormatError, match="xml"):
        await render(mixed.pool, mixed.rollout_id, "xml")


async def test_write_reports_writes_three_files(mixed: Mixed, tmp_path: Path) -> None:
    paths = await write_reports(mixed.pool, mixed.rollout_id, tmp_path / "reports")
    assert set(paths) == {"json", "csv", "html"}
    for fmt, path in paths.items():
        assert path.is_file() and path.suffix == f".{fmt}"
        assert path.name == f"rollout-{mixed.rollout_id}-report.{fmt}"
    assert json.loads(paths["json"].read_text())["summary"]["targeted"] == 12
    assert paths["csv"].read_bytes().count(b"\r\n") == 13
    assert "progress-chart" in paths["html"].read_text()
    assert not [p for p in paths["csv"].parent.iterdir() if p.name.startswith(".")]


async def test_http_helper_streams_the_csv(mixed: Mixed) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        fmt = request.query.get("format", "json")
        try:
            return await report_response(request, mixed.pool,
                                         int(request.match_info["id"]), fmt)
        except RolloutNotFound as exc:
            raise web.HTTPNotFound(text=str(exc)) from None
        except ReportFormatError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    app = web.Application()
    app.router.add_get("/api/v1/rollouts/{id}/report", handler)
    async with TestClient(TestServer(app)) as client:
        url = f"/api/v1/rollouts/{mixed.rollout_id}/report"
        resp = await client.get(url, params={"format": "csv"})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert "attachment" in resp.headers["Content-Disposition"]
        assert resp.headers.get("Transfer-Encoding") == "chunked"
        assert (await resp.text()).count("\r\n") == 13
        resp = await client.get(url, params={"format": "json"})
        assert resp.status == 200
        assert (await resp.json())["rollout"]["id"] == mixed.rollout_id
        resp = await client.get(url, params={"format": "html"})
        assert resp.status == 200 and "progress-chart" in await resp.text()
        assert (await client.get(url, params={"format": "pdf"})).status == 400
        missing = "/api/v1/rollouts/999999/report"
        assert (await client.get(missing, params={"format": "csv"})).status == 404


def _run_report_cli(db_url: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`orchestrator report ...` once it is wired into the CLI; until then the same
    function through a stand-in parser (what cli.py will call)."""
    env = cli_env(db_url)
    wired = subprocess.run([str(VENV_BIN / "orchestrator"), "report", "--help"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    if wired.returncode == 0:
        command = [str(VENV_BIN / "orchestrator"), "report", *args]
    else:
        shim = (
            "import argparse, sys\n"
            "from orchestrator.cli import report as cli\n"
            "from orchestrator.settings import load_settings\n"
            "p = argparse.ArgumentParser(prog='orchestrator report')\n"
            "cli.add_arguments(p)\n"
            "a = p.parse_args(sys.argv[1:])\n"
            "sys.exit(cli.cmd_report(load_settings(None), a))\n"
        )
        command = [sys.executable, "-c", shim, *args]
    return subprocess.run(command, env={**env, "PYTHONPATH": str(ROOT)}, cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


async def test_cli_writes_each_format(mixed: Mixed, tmp_path: Path) -> None:
    rid = str(mixed.rollout_id)
    result = _run_report_cli(mixed.db_url, rid, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["targeted"] == 12
    out = tmp_path / "r.csv"
    result = _run_report_cli(mixed.db_url, rid, "--format", "csv", "-o", str(out),
                             cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().count(b"\r\n") == 13
    assert str(out) in result.stderr
    result = _run_report_cli(mixed.db_url, rid, "--format", "html", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'id="progress-chart"' in result.stdout
    result = _run_report_cli(mixed.db_url, "999999", cwd=tmp_path)
    assert result.returncode == 1
    assert "no rollout 999999" in result.stderr
    assert os.listdir(tmp_path) == ["r.csv"]
