"""Reports of rollouts written straight into the database, for what a real run cannot
produce on demand: exact durations, retries and lease take-overs in the history, hostile
names and messages, thousands of rows."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from orchestrator.cli import report as report_cli
from orchestrator.reports import build_report, render
from orchestrator.reports.csv_report import COLUMNS, csv_chunks, neutralise
from orchestrator.reports.html_report import render_html
from orchestrator.reports.model import MAX_POINTS, bucket_seconds_for
from orchestrator.settings import Settings

T0 = datetime(2026, 3, 1, 2, 0, 0, tzinfo=UTC)
OLD, NEW = "9.0.0-10010", "9.0.1-20020"
Event = tuple[str | None, str, float]  # from_state, to_state, seconds after T0


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def make_rollout(conn: Any, waves: list[int], *, state: str = "SUCCEEDED",
                       started: float | None = 0.0, finished: float | None = 600.0,
                       strategy: dict[str, Any] | None = None) -> int:
    rid: int = await conn.fetchval(
        """INSERT INTO rollouts (name, target_version, strategy, state, created_by,
                                 created_at, started_at, finished_at)
           VALUES ('synthetic', $1, $2, $3, 'test', $4, $5, $6) RETURNING id""",
        NEW, strategy or {"waves": waves}, state, at(-60),
        at(started) if started is not None else None,
        at(finished) if finished is not None else None,
    )
    for number, size in enumerate(waves):
        await conn.execute(
            "INSERT INTO rollout_waves (rollout_id, number, planned_size, state) "
            "VALUES ($1, $2, $3, 'SUCCEEDED')", rid, number, size)
    return rid


async def add_task(conn: Any, rid: int, name: str, *, wave: int = 0, site: str = "s1",
                   events: list[Event], error_code: str | None = None,
                   error_message: str | None = None, from_version: str | None = OLD,
                   final_version: str | None = None) -> int:
    """An appliance and its task, whose state and times follow from `events`."""
    appliance = await conn.fetchval(
        "INSERT INTO appliances (name, base_url, site) VALUES ($1, 'https://a.example', $2) "
        "RETURNING id", name, site)
    position = await conn.fetchval(
        "SELECT coalesce(max(position) + 1, 0) FROM tasks WHERE rollout_id = $1", rid)
    state = events[-1][1]
    dispatched = [s for f, t, s in events if t == "DISPATCHING"]
    accepted = [s for f, t, s in events if t == "INSTALLING" and f != t]
    terminal = state in ("SUCCEEDED", "FAILED", "TIMED_OUT", "SKIPPED", "CANCELLED")
    task_id: int = await conn.fetchval(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state,
                              from_version, final_version, error_code, error_message,
                              created_at, dispatched_at, accepted_at, finished_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
           RETURNING id""",
        rid, appliance, wave, position, site, state, from_version, final_version,
        error_code, error_message, at(-60),
        at(dispatched[-1]) if dispatched else None,
        at(accepted[-1]) if accepted else None,
        at(events[-1][2]) if terminal else None,
    )
    await conn.executemany(
        "INSERT INTO task_events (task_id, rollout_id, from_state, to_state, at) "
        "VALUES ($1, $2, $3, $4, $5)",
        [(task_id, rid, None, "PENDING", at(-60))]
        + [(task_id, rid, f, t, at(s)) for f, t, s in events],
    )
    return task_id


def happy(start: float, install: float, reboot: float) -> list[Event]:
    return [("PENDING", "DISPATCHING", start), ("DISPATCHING", "INSTALLING", start + 1),
            ("INSTALLING", "VERIFYING", start + 1 + install),
            ("VERIFYING", "SUCCEEDED", start + 1 + install + reboot)]


async def csv_rows(pool: asyncpg.Pool, rid: int) -> list[dict[str, str]]:
    _, body = await render(pool, rid, "csv")
    assert not isinstance(body, bytes)
    text = b"".join([c async for c in body]).decode()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert tuple(rows[0]) == COLUMNS
    return [dict(zip(COLUMNS, r, strict=True)) for r in rows[1:]]


# ------------------------------------------------------------------ durations, timeline
async def test_exact_durations_retries_and_lease_takeovers(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [3])
    # A: install 10 s, reboot 5 s
    await add_task(pool, rid, "a", events=happy(0, 10, 5), final_version=NEW)
    # B: an install that ended in error went back to PENDING (install_retries); the second
    # one took 30 s, with a lease take-over in the middle (not a transition); reboot 7 s
    await add_task(pool, rid, "b", final_version=NEW, events=[
        ("PENDING", "DISPATCHING", 0), ("DISPATCHING", "INSTALLING", 1),
        ("INSTALLING", "PENDING", 21), ("PENDING", "DISPATCHING", 30),
        ("DISPATCHING", "INSTALLING", 31), ("INSTALLING", "INSTALLING", 45),
        ("INSTALLING", "VERIFYING", 61), ("VERIFYING", "SUCCEEDED", 68),
    ])
    # C: FAILED (install error), put back by retry-failed, then install 12 s, reboot 4 s
    await add_task(pool, rid, "c", final_version=NEW, events=[
        ("PENDING", "DISPATCHING", 0), ("DISPATCHING", "INSTALLING", 1),
        ("INSTALLING", "FAILED", 9), ("FAILED", "PENDING", 100),
        *happy(110, 12, 4),
    ])
    report = json.loads((await render(pool, rid, "json"))[1])  # type: ignore[arg-type]
    d = report["durations"]
    # samples: install [10, 30, 12], reboot [5, 7, 4]; percentile_cont interpolates
    assert d["install"] == {"count": 3, "p50_s": 12.0, "p95_s": 28.2, "max_s": 30.0}
    assert d["reboot"] == {"count": 3, "p50_s": 5.0, "p95_s": 6.8, "max_s": 7.0}
    # whole task: from the dispatch of the attempt that produced the outcome
    assert d["task"] == {"count": 3, "p50_s": 17.0, "p95_s": 35.9, "max_s": 38.0}

    tl = report["timeline"]
    assert tl["start"] == at(0).isoformat()  # the rollout's start
    assert tl["end"] == at(127).isoformat()  # C's outcome, the last transition
    assert tl["bucket_seconds"] == 1.0
    finished = tl["waves"][0]["finished"]
    assert len(finished) == len(tl["times"]) == 129
    # point i counts the outcomes before start + i s
    assert finished[9] == 0 and finished[10] == 1  # C failed at 9 s
    assert finished[16] == 1 and finished[17] == 2  # A succeeded at 16 s
    assert finished[69] == 3  # B at 68 s
    assert finished[101] == 2  # C left FAILED at 100 s (retry-failed)
    assert finished[-1] == 3  # C succeeded at 127 s: counted once
    assert all(n >= 0 for n in finished)

    s = report["summary"]
    assert (s["targeted"], s["succeeded"], s["failed"]) == (3, 3, 0)
    assert report["waves"][0]["started_at"] == at(0).isoformat()
    assert report["waves"][0]["finished_at"] == at(127).isoformat()
    rows = {r["appliance"]: r for r in await csv_rows(pool, rid)}
    assert rows["b"]["started_at"] == at(30).isoformat()  # the second dispatch
    assert rows["c"]["duration_s"] == "17.000"


async def test_a_draft_rollout_reports_nothing_done(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [2], state="DRAFT", started=None, finished=None)
    await pool.execute("UPDATE rollout_waves SET state = 'PENDING' WHERE rollout_id = $1", rid)
    for name in ("x", "y"):
        appliance = await pool.fetchval(
            "INSERT INTO appliances (name, base_url, site) VALUES ($1, 'https://x', 's') "
            "RETURNING id", name)
        await pool.execute(
            "INSERT INTO tasks (rollout_id, appliance_id, wave, position, site) "
            "VALUES ($1, $2, 0, $3, 's')", rid, appliance, 0 if name == "x" else 1)
    report = (await build_report(pool, rid)).to_dict()
    assert report["summary"]["targeted"] == report["summary"]["pending"] == 2
    assert report["summary"]["duration_s"] is None
    assert report["waves"][0]["started_at"] is None
    assert report["waves"][0]["finished_at"] is None
    assert report["durations"]["install"] == {"count": 0, "p50_s": None, "p95_s": None,
                                              "max_s": None}
    assert report["timeline"]["times"] == [] and report["timeline"]["waves"] == []
    assert report["remaining"] == {"retryable": 0, "not_finished": 2, "command": None,
                                   "by_outcome": []}
    _, html = await render(pool, rid, "html")
    assert isinstance(html, bytes)
    assert b'<svg id="progress-chart"' in html and b"no task has started yet" in html
    rows = await csv_rows(pool, rid)
    assert [(r["appliance"], r["outcome"], r["finished_at"]) for r in rows] == \
        [("x", "PENDING", ""), ("y", "PENDING", "")]
    # the ETA of a rollout that has not ended: the CLI asks the forecast for it
    eta = await report_cli._eta(pool, rid, Settings())
    assert eta is not None
    report = (await build_report(pool, rid, eta=eta)).to_dict()
    assert report["eta"] == eta.isoformat()
    _, html = await render(pool, rid, "html", eta=eta)
    assert isinstance(html, bytes) and b"forecast completion (ETA)" in html


@pytest.mark.parametrize("span", [0, 0.05, 3, 19.9, 20, 119, 3600, 9 * 3600, 86400,
                                  40 * 86400, 400 * 86400])
def test_timeline_buckets_stay_under_the_cap(span: float) -> None:
    width = bucket_seconds_for(span)
    assert int(span // width) + 1 <= MAX_POINTS


# ------------------------------------------------------------------ CSV
async def test_csv_neutralises_formula_cells(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [6])
    hostile = {
        "=cmd|' /C calc'!A0": ("=HYPERLINK(\"https://evil.example\",\"click\")", "=X"),
        "+plus": ("+1+2", "+CODE"),
        "-minus": ("-2+3", "-CODE"),
        "@at": ("@SUM(A1:A9)", "@CODE"),
        "tab": ("\tstarts with a tab", "TAB"),
        "cr": ("\rstarts with a carriage return", "CR"),
    }
    for i, (name, (message, code)) in enumerate(hostile.items()):
        await add_task(pool, rid, name, site="-site" if i == 0 else "s1",
                       events=[("PENDING", "DISPATCHING", i), ("DISPATCHING", "FAILED", i + 1)],
                       error_code=code, error_message=message)
    rows = {r["appliance"]: r for r in await csv_rows(pool, rid)}
    assert set(rows) == {"'=cmd|' /C calc'!A0", "'+plus", "'-minus", "'@at", "tab", "cr"}
    for name, (message, code) in hostile.items():
        row = rows[neutralise(name)]
        assert row["error_message"] == "'" + message
        assert row["error_code"] == neutralise(code)
        # the raw text comes back by stripping the one apostrophe
        assert row["error_message"][1:] == message
    assert rows["'=cmd|' /C calc'!A0"]["site"] == "'-site"
    assert rows["tab"]["error_code"] == "TAB"  # only a leading character counts
    for row in rows.values():  # numbers and times are never touched
        assert row["wave"] == "0"
        assert not row["duration_s"].startswith("'")
    assert neutralise("-") == "'-" and neutralise("") == "" and neutralise("a=b") == "a=b"


async def test_csv_is_streamed_in_batches(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [2500])
    await pool.execute(
        """INSERT INTO appliances (name, base_url, site)
           SELECT format('n-%s', lpad(i::text, 5, '0')), 'https://x', 's' || i % 7
           FROM generate_series(1, 2500) i""")
    await pool.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state,
                              dispatched_at, finished_at, final_version)
           SELECT $1, a.id, 0, row_number() OVER (ORDER BY a.name) - 1, a.site, 'SUCCEEDED',
                  $2::timestamptz, $2::timestamptz + interval '90 s', $3
           FROM appliances a WHERE a.name LIKE 'n-%'""", rid, T0, NEW)
    async with pool.acquire() as conn:
        chunks = [c async for c in csv_chunks(conn, rid, batch_size=1000)]
    assert len(chunks) == 3
    lines = [c.decode().count("\r\n") for c in chunks]
    assert lines == [1001, 1000, 500]  # the header rides with the first batch
    rows = list(csv.reader(io.StringIO(b"".join(chunks).decode(), newline="")))
    assert [r[0] for r in rows[1:]] == [f"n-{i:05d}" for i in range(1, 2501)]
    assert {r[COLUMNS.index("duration_s")] for r in rows[1:]} == {"90.000"}
    # an abandoned stream gives its connection back
    _, body = await render(pool, rid, "csv")
    assert not isinstance(body, bytes)
    iterator = aiter(body)
    await anext(iterator)
    await iterator.aclose()  # type: ignore[attr-defined]
    assert pool.get_idle_size() == pool.get_size()


# ------------------------------------------------------------------ caps, escaping
async def test_failure_names_are_capped_with_a_count(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [130], state="FAILED")
    await pool.execute(
        """INSERT INTO appliances (name, base_url, site)
           SELECT format('f-%s', lpad(i::text, 3, '0')), 'https://x', 's'
           FROM generate_series(1, 130) i""")
    await pool.execute(
        """INSERT INTO tasks (rollout_id, appliance_id, wave, position, site, state,
                              error_code, error_message, dispatched_at, finished_at)
           SELECT $1, a.id, 0, row_number() OVER (ORDER BY a.name) - 1, 's',
                  CASE WHEN a.name <= 'f-120' THEN 'FAILED' ELSE 'CANCELLED' END,
                  CASE WHEN a.name <= 'f-120' THEN 'INSTALL_ERROR' ELSE 'CANCELLED' END,
                  'same reason', $2::timestamptz, $2::timestamptz + interval '1 s'
           FROM appliances a WHERE a.name LIKE 'f-%'""", rid, T0)
    report = (await build_report(pool, rid)).to_dict()
    [group] = report["failures"]
    assert group["count"] == 120 and len(group["appliances"]) == 50
    assert group["appliances"] == [f"f-{i:03d}" for i in range(1, 51)]
    assert group["appliances_not_listed"] == 70
    rem = {g["outcome"]: g for g in report["remaining"]["by_outcome"]}
    assert rem["FAILED"]["count"] == 120 and rem["FAILED"]["appliances_not_listed"] == 70
    assert rem["CANCELLED"]["count"] == 10 and rem["CANCELLED"]["appliances_not_listed"] == 0
    assert report["remaining"]["retryable"] == 130
    _, html = await render(pool, rid, "html")
    assert isinstance(html, bytes)
    assert "and 70 more" in html.decode()


async def test_failures_group_across_appliance_names(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [9], state="FAILED")
    failed = [("PENDING", "DISPATCHING", 0), ("DISPATCHING", "FAILED", 1)]
    for i in range(1, 5):  # one failure, the appliance's name inside the message
        name = f"node-{i}"
        await add_task(pool, rid, name, events=failed, error_code="DISPATCH_FAILED",
                       error_message=f"install not sent: {name}: login: no answer within 4 s")
    for i, code in enumerate(("A", "B", "C", "D", "E")):
        await add_task(pool, rid, f"other-{i}", events=failed, error_code=code,
                       error_message=f"reason {code}")
    report = (await build_report(pool, rid, groups_cap=3)).to_dict()
    first = report["failures"][0]
    assert first["message"] == "install not sent: {appliance}: login: no answer within 4 s"
    assert first["count"] == 4
    assert first["appliances"] == ["node-1", "node-2", "node-3", "node-4"]
    assert [f["error_code"] for f in report["failures"]] == ["DISPATCH_FAILED", "A", "B"]
    assert report["failures_not_listed"] == {"groups": 3, "appliances": 3}
    _, html = await render(pool, rid, "html")
    assert isinstance(html, bytes) and b"{appliance}" in html
    page = render_html(await build_report(pool, rid, groups_cap=3))
    assert "and 3 more group(s) of 3 appliance(s)" in page
    rows = {r["appliance"]: r for r in await csv_rows(pool, rid)}  # the raw message
    assert rows["node-2"]["error_message"] == "install not sent: node-2: login: no answer " \
        "within 4 s"


async def test_html_escapes_names_messages_and_sites(pool: asyncpg.Pool) -> None:
    rid = await make_rollout(pool, [2], state="FAILED", strategy={
        "waves": [2], "windows": "ignore"})
    await add_task(pool, rid, "<script>alert(1)</script>", site="<b>site</b>",
                   events=[("PENDING", "DISPATCHING", 0), ("DISPATCHING", "FAILED", 1)],
                   error_code="<i>CODE</i>",
                   error_message="<img src=x onerror=alert(2)> & \"quotes\" 'too'")
    await add_task(pool, rid, "ok", site="x&y", events=happy(0, 3, 2), final_version=NEW)
    _, body = await render(pool, rid, "html")
    assert isinstance(body, bytes)
    page = body.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; &quot;quotes&quot; &#x27;too&#x27;" in page
    assert "&lt;b&gt;site&lt;/b&gt;" in page and "&lt;i&gt;CODE&lt;/i&gt;" in page
    assert "x&amp;y" in page
    for raw in ("<script", "<img", "<b>site", "<i>CODE", "x&y"):
        assert raw not in page
    assert "ignores maintenance windows" in page
    report = (await build_report(pool, rid)).to_dict()
    assert report["summary"]["windows_mode"] == "ignore"
    assert report["summary"]["windows"] == []
