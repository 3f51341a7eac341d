"""The HTML report in a real browser: headless Chromium opens the file, the chart is drawn
(one line with points per wave) and the console stays silent.

Without Chromium (`apt-get install -y chromium` on Debian; `make test` installs it when it
may) these tests skip, saying so, on a developer's machine, and FAIL under CI (the `CI`
environment variable set to anything but "" / "0" / "false", as CI services do, or
`REQUIRE_CHROMIUM=1`): a CI run must not pass with its browser tests quietly skipped.
Console messages are read from Chromium's log on stderr (`--enable-logging=stderr`
writes every console message, errors and uncaught exceptions included, as a `CONSOLE`
line); `test_console_errors_are_detected` proves that this catches a failing script.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path

import asyncpg
import pytest

from orchestrator.reports import write_reports
from tests.browser import CHROMIUM, chromium  # noqa: F401 (the fixture)
from tests.fleet import create, engine, fleet, wait_until_terminal
from tests.helpers import cli_env, drop_database, run_cli

needs_chromium = pytest.mark.usefixtures("chromium")


class Page(HTMLParser):
    """What the test looks for in the DOM Chromium dumps."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str | None] = []  # ids of the open <svg> elements
        self.wave_paths: list[dict[str, str]] = []
        self.site_bars = 0
        self.title = ""
        self._in_title = False
        self.meta_charset = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "meta" and "charset" in a:
            self.meta_charset = True
        if tag == "title" and not self.stack:
            self._in_title = True
        if tag == "svg":
            self.stack.append(a.get("id"))
        inside = [s for s in self.stack if s]
        if tag == "path" and inside and inside[-1] == "progress-chart" \
                and "wave-line" in a.get("class", ""):
            self.wave_paths.append(a)
        if tag == "rect" and inside and inside[-1] == "site-chart":
            self.site_bars += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.stack:
            self.stack.pop()
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def open_in_chromium(html: Path, profile: Path) -> tuple[Page, list[str]]:
    """Load `html` in headless Chromium: (the rendered DOM, its console log lines)."""
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=2000", "--dump-dom", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = [line for line in result.stderr.splitlines()
               if ":CONSOLE" in line or "Uncaught" in line]
    page = Page()
    page.feed(result.stdout)
    return page, console


def check_report_page(html: Path, profile: Path, waves: int) -> Page:
    page, console = open_in_chromium(html, profile)
    assert console == [], "console messages:\n" + "\n".join(console)
    assert page.meta_charset
    assert page.title.startswith("Rollout ")
    assert len(page.wave_paths) == waves
    for path in page.wave_paths:
        d = path["d"]
        assert d.startswith("M") and d.count(" L") >= 1, d  # at least two points
        assert path.get("data-wave", "").isdigit()
    assert page.site_bars > 0
    return page


@needs_chromium
def test_console_errors_are_detected(tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><meta charset="utf-8"><title>x</title>'
                      "<script>notDefinedAnywhere();</script>")
    _, console = open_in_chromium(broken, tmp_path / "profile")
    assert any("Uncaught ReferenceError" in line for line in console), console


@needs_chromium
async def test_report_of_a_rollout_in_chromium(
    pool: asyncpg.Pool, db_url: str, tmp_path: Path
) -> None:
    async with fleet(pool, db_url, appliances=10, sites=3) as f:
        f.sim.set_faults("sim-00003", ["install_error"])
        f.sim.set_faults("sim-00007", ["long_reboot"])
        await pool.execute(
            "UPDATE appliances SET name = '<b>' || name || '</b>' WHERE name = 'sim-00003'")
        async with engine(f):
            rid = await create(pool, {"waves": [2, "100%"], "reboot_grace": 1.5,
                                      "max_concurrency": 4})
            await wait_until_terminal(pool, rid)
    paths = await write_reports(pool, rid, tmp_path / "reports")
    page = await asyncio.to_thread(check_report_page, paths["html"], tmp_path / "profile", 2)
    assert {p["data-wave"] for p in page.wave_paths} == {"0", "1"}


@needs_chromium
@pytest.mark.slow  # a whole (small) demo, then the browser
@pytest.mark.timeout(360)  # the demo's 240 s deadline, Chromium's 120 s
def test_demo_report_in_chromium(pg_server_url: str, tmp_path: Path) -> None:
    """The demo's own HTML report (`orchestrator demo --report-dir DIR`)."""
    name = f"demo_report_{uuid.uuid4().hex[:8]}"
    reports = tmp_path / "reports"
    try:
        result = run_cli(
            "demo", "--json", "--appliances", "40", "--install-seconds", "0.5",
            "--reboot-seconds", "0.3", "--database-name", name, "--report-dir", str(reports),
            env=cli_env(pg_server_url), timeout=240,
        )
    finally:
        asyncio.run(drop_database(pg_server_url, name))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    files = {fmt: Path(p) for fmt, p in summary["reports"].items()}
    assert set(files) == {"html", "csv", "json"}
    report = json.loads(files["json"].read_text())
    assert report["rollout"]["id"] == summary["rollout_id"]
    states = {k: v for k, v in {
        "SUCCEEDED": report["summary"]["succeeded"], "FAILED": report["summary"]["failed"],
        "TIMED_OUT": report["summary"]["timed_out"], "SKIPPED": report["summary"]["skipped"],
        "CANCELLED": report["summary"]["cancelled"]}.items() if v}
    assert states == summary["tasks"]
    assert files["csv"].read_bytes().count(b"\r\n") == 41
    check_report_page(files["html"], tmp_path / "profile", len(report["waves"]))
