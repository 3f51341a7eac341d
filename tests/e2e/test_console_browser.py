"""The operator console (`/`) in a real browser, against the real API, a simulated fleet
and an engine running in the test's process.

- An operator signs in by pasting a token, opens a rollout, starts it and sees its progress
  change without reloading (the live event stream); the stream is cut and the console
  reconnects with a new ticket after the last event it saw: every transition shows once,
  none is missing. Pause and resume change the rollout's state in the database, a control
  the state forbids shows the server's refusal as written, approve lets it finish, a report
  downloads, and a rollout created from the form (after its plan preview, with a refusal
  shown next to its field first) exists afterwards.
- Screenshots of the rollout page at 1,280 px and 390 px are written under tmp_path, and its
  main elements are visible and inside the viewport's width, with no horizontal overflow.
- A viewer sees no controls and no create form, and a control request forged from its page
  with its token is refused (403) and changes nothing.
- The pre-flight panel shows the counts of the start's pre-flight (as the database has
  them); an operator runs one more from it (after the confirmation step) and sees the
  appliance with a planted fault fail with its code once the run has finished; a viewer
  sees the panel without its button. An adaptive rollout shows its pace, and a change of
  the pace without reloading.
- Throughout: no console error, no failed request, no error answer but those the test
  provokes; the token never appears in a URL, a cookie or the browser's storage, and nothing
  is loaded from elsewhere.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from orchestrator.api.app import create_app
from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.settings import Settings
from orchestrator.store import appliances as appliance_store
from orchestrator.store import pace as pace_store
from orchestrator.store import preflight as preflight_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from tests.browser import Watched, browser, chromium  # noqa: F401 (the fixture)
from tests.fleet import ACTOR, FAST_STRATEGY, TARGET, engine, fleet

pytestmark = pytest.mark.timeout(240)

WAIT_MS = 30_000  # the longest any single step may take before the test fails
STREAM = re.compile(r"/api/v1/rollouts/[0-9]+/events\?")


class Browsing:
    """One page of the console and everything it did: every request URL, the answers the
    test expects to be errors, and the event streams the test itself cut."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.watched = Watched()
        self.watched.attach(page)
        self.urls: list[str] = []
        self.outside: list[str] = []
        self.streams: list[str] = []
        self.answers: dict[str, Any] = {}
        page.on("request", self._request)
        page.on("response", lambda r: self.answers.__setitem__(f"{r.request.method} {r.url}", r))

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)
        if not request.url.startswith((self.base, "data:", "blob:")):
            self.outside.append(request.url)
        if STREAM.search(request.url):
            self.streams.append(request.url)

    def expect_error(self, method: str, path: str, status: int) -> None:
        """An error answer the test provoked on purpose (taken out of `watched`)."""
        wanted = f"{method} {self.base}{path}: {status}"
        assert wanted in self.watched.error_answers, (wanted, self.watched.error_answers)
        self.watched.error_answers.remove(wanted)
        # and Chrome's own console line about it ("Failed to load resource: the server
        # responded with a status of 409 (Conflict)")
        said = f"the server responded with a status of {status} "
        self._forget_console(lambda line: said in line and f"'url': '{self.base}{path}'" in line)

    def _forget_console(self, expected: Callable[[str], bool]) -> None:
        lines = self.watched.console_errors
        for line in [line for line in lines if expected(line)][:1]:
            lines.remove(line)

    def assert_clean(self, cut_streams: Collection[str] = ()) -> None:
        """No console error, failed request or error answer, except: event streams the page
        closed itself when leaving a rollout (an aborted request, by design), and those the
        test cut."""
        for cut in cut_streams:  # Chrome says so on the console too
            self._forget_console(functools.partial(cut_on_console, cut))
        failed = []
        for line in self.watched.failed_requests:
            url = line.split(" ", 1)[1].rsplit(": ", 1)[0]
            if STREAM.search(url) and (url in cut_streams or line.endswith("net::ERR_ABORTED")):
                continue
            failed.append(line)
        self.watched.failed_requests = failed
        self.watched.assert_clean()
        assert self.outside == [], "loaded from elsewhere than the orchestrator"


def cut_on_console(url: str, line: str) -> bool:
    """Chrome's console line about a request cut by the network."""
    return line.startswith("Failed to load resource: net::") and f"'url': '{url}'" in line


async def sign_in(page: Any, base: str, token: str) -> None:
    from playwright.async_api import expect

    await page.goto(f"{base}/")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#nav")).to_be_visible(timeout=WAIT_MS)


async def confirm(page: Any, button: str) -> None:
    """Click a control, then confirm it in the dialog (the step before anything is sent)."""
    from playwright.async_api import expect

    await page.locator(".control-buttons").get_by_role("button", name=button, exact=True).click()
    dialog = page.locator("dialog#confirm")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name=button, exact=True).click()
    await expect(dialog).to_be_hidden()


async def eventually(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool],
                     what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
    while True:
        value = await probe()
        if done(value):
            return value
        assert asyncio.get_running_loop().time() < deadline, f"{what}: still {value!r}"
        await asyncio.sleep(0.1)


async def event_ids(pool: asyncpg.Pool, rollout_id: int) -> list[int]:
    rows = await pool.fetch("SELECT id FROM task_events WHERE rollout_id = $1 ORDER BY id",
                            rollout_id)
    return [r["id"] for r in rows]


async def assert_token_kept_nowhere(context: Any, page: Any, token: str,
                                    urls: list[str]) -> None:
    assert not any(token in url for url in urls), "the token went into a URL"
    assert await context.cookies() == []
    kept = await page.evaluate(
        "JSON.stringify([document.cookie, Object.entries(localStorage), "
        "Object.entries(sessionStorage)])")
    assert token not in kept
    assert json.loads(kept) == ["", [], []]


# the first element a selector matches: its box in the viewport and whether it is shown
BOX = """(selector) => {
    const element = document.querySelector(selector);
    if (!element) return null;
    const rect = element.getBoundingClientRect();
    const style = getComputedStyle(element);
    return {x: rect.x, y: rect.y, width: rect.width, height: rect.height,
            shown: style.display !== "none" && style.visibility !== "hidden"};
}"""


async def check_layout(page: Any, path: Path, selectors: list[str]) -> None:
    """A screenshot, and the main elements visible and inside the viewport's width."""
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    width = await page.evaluate("innerWidth")
    scroll = await page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{path.name}: the page is {scroll} px wide in {width} px"
    for selector in selectors:
        # read in one script run: the live page may re-render the element (a progress
        # event) between two separate reads, which would then see a detached node
        box = await page.evaluate(BOX, selector)
        assert box is not None, f"{path.name}: no {selector}"
        assert box["shown"] and box["width"] > 0 and box["height"] > 0, \
            f"{path.name}: {selector} is not visible: {box}"
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, \
            f"{path.name}: {selector} leaves the viewport: {box} in {width} px"


async def expect_preflight_counts(page: Any, pool: asyncpg.Pool, rollout_id: int) -> None:
    """The pre-flight panel counts the appliances per result as the database does."""
    from playwright.async_api import expect

    summary = await preflight_store.summary(pool, rollout_id)
    assert summary is not None
    for result in ("ok", "warn", "fail", "skip"):
        await expect(page.locator(f"#preflight-counts [data-result='{result}'] .count")
                     ).to_have_text(str(summary.counts.get(result, 0)))


async def test_operator_follows_steers_and_creates_rollouts(
    pool: asyncpg.Pool, db_url: str, chromium: str, tmp_path: Path  # noqa: F811
) -> None:
    from playwright.async_api import expect

    _, token = await token_store.create_token(pool, "console-operator", "operator")
    async with fleet(pool, db_url, appliances=8, sites=2) as f:
        # the canary, then a gate that waits for an operator: the rollout stays RUNNING,
        # waiting, for as long as the test needs (no race with the engine)
        rollout, _ = await rollout_store.create_rollout(
            pool, name="console canary", target_version=TARGET, actor=ACTOR,
            strategy={**FAST_STRATEGY, "waves": [1, "100%"], "approval": "after-canary",
                      "max_concurrency": 2})
        rid = rollout.id
        app = create_app(pool, Settings())
        open_streams: list[web.Request] = []

        @web.middleware
        async def remember_streams(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.path.endswith("/events"):
                open_streams.append(request)
            return await handler(request)  # type: ignore[no-any-return]

        app.middlewares.append(remember_streams)  # to cut the connections on purpose
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        try:
            base = str(server.make_url("")).rstrip("/")
            async with engine(f), browser(chromium) as b:
                context = await b.new_context(viewport={"width": 1280, "height": 900},
                                              accept_downloads=True)
                page = await context.new_page()
                seen = Browsing(page, base)

                # ---------------------------------------------------- sign in, open it
                await sign_in(page, base, token)
                nav = page.locator("#nav")
                await expect(nav.get_by_role("link", name="New rollout")).to_be_visible()
                await expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)
                await expect(page.locator("#who")).to_contain_text("console-operator")
                await page.get_by_role("link", name=f"#{rid} console canary").click()
                await expect(page.locator("#rollout-title")).to_have_text(
                    f"#{rid} console canary", timeout=WAIT_MS)
                await expect(page.locator("#rollout-state")).to_have_text("DRAFT")
                count = page.locator("#overall-progress .progress-count")
                await expect(count).to_have_text("0 / 8 done")
                await page.evaluate("document.body.dataset.sameDocument = 'yes'")

                # ---------------------------------------------------- a dialog first
                # nothing is sent before the confirmation; Escape (or Back) sends nothing
                await page.locator(".control-buttons").get_by_role(
                    "button", name="Pause", exact=True).click()
                dialog = page.locator("dialog#confirm")
                await expect(dialog).to_be_visible()
                await expect(dialog.get_by_role("button", name="Back")).to_be_focused()
                await page.keyboard.press("Escape")
                await expect(dialog).to_be_hidden()
                await expect(page.locator(".control-buttons").get_by_role(
                    "button", name="Pause", exact=True)).to_be_focused()
                assert not any(url.endswith("/pause") for url in seen.urls)

                # ---------------------------------------------------- start; live progress
                await confirm(page, "Start")
                await expect(page.locator(".control-result")).to_contain_text(
                    f"rollout {rid}", timeout=WAIT_MS)
                assert await rollout_store.rollout_state(pool, rid) == "RUNNING"
                await expect(count).to_have_text("1 / 8 done", timeout=WAIT_MS)
                await expect(page.locator("#wave-list [data-wave='0'] .state")).to_have_text(
                    "AWAITING APPROVAL", timeout=WAIT_MS)
                feed = page.locator(".feed [data-event-id]")
                await expect(feed.filter(has_text="sim-00001").first).to_be_visible()
                assert await page.evaluate("document.body.dataset.sameDocument") == "yes", \
                    "the page was reloaded"
                # the start's pre-flight (preflight: warn, the default) ended before the
                # first install: the panel, which polled it while it ran, counts it
                start = await preflight_store.latest_run(pool, rid)
                assert start is not None and start.trigger == "start" and start.finished_at
                await expect(page.locator("#preflight .preflight-status")).to_contain_text(
                    f"Run {start.id} (at the start by ", timeout=WAIT_MS)
                await expect(page.locator("#preflight .preflight-status")).to_contain_text(
                    "finished")
                await expect_preflight_counts(page, pool, rid)
                await expect(page.locator("#preflight-counts [data-result='ok'] .count")
                             ).to_have_text("8")
                await expect(page.locator("#pace-line")).to_have_count(0)  # pace: off

                # ---------------------------------------------------- the stream drops
                # every transition so far is in the feed; then the connection is cut, as a
                # proxy or a network would: the console gets a new ticket and resumes after
                # the last event it saw
                before = await event_ids(pool, rid)
                await expect(feed).to_have_count(len(before), timeout=WAIT_MS)
                cut = list(seen.streams)
                assert cut, "the event stream never opened"
                for request in open_streams:
                    if request.transport is not None:
                        request.transport.close()

                async def streams_opened() -> int:
                    return len(seen.streams)

                await eventually(streams_opened, lambda n: n > len(cut),
                                 "the console never reconnected")
                resumed = parse_qs(urlsplit(seen.streams[len(cut)]).query)
                assert resumed["last_event_id"] == [str(max(before))]
                assert resumed["ticket"] != parse_qs(urlsplit(cut[-1]).query)["ticket"]
                await expect(page.locator(".stream-status")).to_have_text("live",
                                                                         timeout=WAIT_MS)

                # ---------------------------------------------------- pause, resume, refusal
                result = page.locator(".control-result")
                await confirm(page, "Pause")
                await expect(result).to_contain_text(f"rollout {rid} paused", timeout=WAIT_MS)
                assert await rollout_store.rollout_state(pool, rid) == "PAUSED"
                await expect(page.locator("#rollout-state")).to_have_text("PAUSED")
                await confirm(page, "Resume")
                await expect(result).to_contain_text(f"rollout {rid}", timeout=WAIT_MS)
                await expect(page.locator("#rollout-state")).to_have_text("RUNNING")
                assert await rollout_store.rollout_state(pool, rid) == "RUNNING"

                await confirm(page, "Resume")  # the state machine forbids it now
                refusal = result.locator("[role=alert] .problem-detail")
                await expect(refusal).to_be_visible(timeout=WAIT_MS)
                answer = seen.answers[f"POST {base}/api/v1/rollouts/{rid}/resume"]
                assert answer.status == 409
                detail = (await answer.json())["detail"]
                assert detail.startswith("cannot resume rollout"), detail
                assert await refusal.inner_text() == detail  # exactly as the server wrote it
                seen.expect_error("POST", f"/api/v1/rollouts/{rid}/resume", 409)
                assert await rollout_store.rollout_state(pool, rid) == "RUNNING"

                # ---------------------------------------------------- how it looks
                main = ["#rollout-title", "#rollout-state", "#overall-progress", "#wave-list",
                        ".control-buttons", "#preflight", "#run-preflight"]
                await check_layout(page, tmp_path / "rollout-1280.png", main)
                await page.set_viewport_size({"width": 390, "height": 844})
                await check_layout(page, tmp_path / "rollout-390.png", main)
                await page.set_viewport_size({"width": 1280, "height": 900})

                # ---------------------------------------------------- approve: to the end
                await confirm(page, "Approve next wave")
                await expect(count).to_have_text("8 / 8 done", timeout=WAIT_MS)
                await expect(page.locator("#rollout-state")).to_have_text("SUCCEEDED",
                                                                          timeout=WAIT_MS)
                await expect(page.locator(".stream-status")).to_contain_text(
                    "ended", timeout=WAIT_MS)
                assert await rollout_store.rollout_state(pool, rid) == "SUCCEEDED"
                every = await event_ids(pool, rid)
                await expect(feed).to_have_count(len(every), timeout=WAIT_MS)
                shown = await feed.evaluate_all(
                    "items => items.map(li => Number(li.dataset.eventId))")
                assert sorted(shown) == every, "an event is missing or shown twice"

                # ---------------------------------------------------- a report downloads
                async with page.expect_download() as info:
                    await page.locator("[data-report='csv']").click()
                download = await info.value
                assert download.suggested_filename == f"rollout-{rid}-report.csv"
                saved = tmp_path / download.suggested_filename
                await download.save_as(saved)
                assert "sim-00001" in saved.read_text()

                # ---------------------------------------------------- create from the form
                await nav.get_by_role("link", name="New rollout").click()
                await page.get_by_label("Name", exact=True).fill("from the form")
                await page.get_by_label("Target version", exact=True).fill(TARGET)
                await page.get_by_label("site-01 (4 appliances)").check()
                create = page.get_by_role("button", name="Create rollout")
                preview = page.get_by_role("button", name="Preview plan")
                await expect(create).to_be_disabled()  # not before a preview
                concurrency = page.get_by_label("max_concurrency", exact=True)
                await expect(concurrency).to_have_value("10")  # the API's default
                await concurrency.fill("0")
                await preview.click()
                error = page.locator("[data-field='strategy.max_concurrency'] .field-error")
                await expect(error).to_be_visible(timeout=WAIT_MS)
                problem = await seen.answers[f"POST {base}/api/v1/rollouts/plan"].json()
                said = [e["message"] for e in problem["errors"]
                        if e["field"] == "body.strategy.max_concurrency"]
                assert said, problem
                await expect(error).to_have_text(said[0])
                await expect(concurrency).to_have_attribute("aria-invalid", "true")
                seen.expect_error("POST", "/api/v1/rollouts/plan", 422)
                await expect(create).to_be_disabled()

                await concurrency.fill("3")
                await page.get_by_label("waves", exact=True).fill("1, 100%")
                await preview.click()
                await expect(page.locator("#plan-waves > li")).to_have_count(2,
                                                                             timeout=WAIT_MS)
                await expect(page.locator("#plan-waves")).to_contain_text("sim-00003")
                await expect(error).to_be_hidden()
                await expect(create).to_be_enabled()
                await create.click()
                await expect(page.locator("#rollout-title")).to_contain_text(
                    "from the form", timeout=WAIT_MS)
                found = re.search(r"#/rollouts/([0-9]+)$", page.url)
                assert found, page.url
                made = await rollout_store.get_rollout(pool, int(found.group(1)))
                assert (made.name, str(made.state), made.created_by, made.targeted) == (
                    "from the form", "DRAFT", "console-operator", 4)
                strategy = made.strategy.to_dict()
                assert (strategy["waves"], strategy["max_concurrency"]) == ([1, "100%"], 3)
                assert made.selector.to_dict()["sites"] == ["site-01"]

                await assert_token_kept_nowhere(context, page, token, seen.urls)
                seen.assert_clean(set(cut))
            await context.close()
        finally:
            await server.close()


async def test_a_viewer_sees_no_controls_and_a_forged_control_is_refused(
    pool: asyncpg.Pool, chromium: str  # noqa: F811
) -> None:
    from playwright.async_api import expect

    _, viewer = await token_store.create_token(pool, "console-viewer", "viewer")
    _, admin = await token_store.create_token(pool, "console-admin", "admin")
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec(f"vr-{i}", f"https://vr-{i}.example.net/api", "ams") for i in range(3)])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="watched only", target_version=TARGET, actor=ACTOR)
    rid = rollout.id
    await rollout_store.start_rollout(pool, rid, ACTOR)  # no engine: it stays RUNNING
    server = TestServer(create_app(pool, Settings()), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        async with browser(chromium) as b:
            context = await b.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            seen = Browsing(page, base)
            # with the keyboard: the token field has the focus, Enter signs in
            await page.goto(f"{base}/")
            await expect(page.get_by_label("Token")).to_be_focused()
            await page.keyboard.type(viewer)
            await page.keyboard.press("Enter")
            await expect(page.locator("#nav")).to_be_visible(timeout=WAIT_MS)
            nav = page.locator("#nav")
            await expect(nav.get_by_role("link", name="Rollouts")).to_be_visible()
            await expect(nav.get_by_role("link", name="New rollout")).to_have_count(0)
            await expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)
            await expect(page.get_by_role("link", name="New rollout")).to_have_count(0)

            await page.get_by_role("link", name=f"#{rid} watched only").click()
            await expect(page.locator("#rollout-title")).to_have_text(f"#{rid} watched only",
                                                                      timeout=WAIT_MS)
            await expect(page.locator("#overall-progress .progress-count")).to_have_text(
                "0 / 3 done")
            await expect(page.locator(".stream-status")).to_have_text("live",
                                                                     timeout=WAIT_MS)
            await expect(page.locator("[data-control]")).to_have_count(0)
            await expect(page.locator("section.controls")).to_be_hidden()
            # the pre-flight panel, never checked (no engine ran one), and no button
            await expect(page.locator("#preflight .preflight-status")).to_have_text(
                "Never checked: no pre-flight of this rollout has run.")
            await expect(page.get_by_role("button", name="Run pre-flight")).to_have_count(0)
            await expect(page.locator("[data-report='html']")).to_be_visible()

            # a control request forged from the page, with the viewer's own token
            status, problem = await page.evaluate(
                """async ([id, token]) => {
                    const r = await fetch(`/api/v1/rollouts/${id}/pause`, {
                        method: "POST", headers: {Authorization: `Bearer ${token}`}});
                    return [r.status, await r.json()];
                }""", [rid, viewer])
            assert status == 403, problem
            assert "operator" in problem["detail"], problem
            seen.expect_error("POST", f"/api/v1/rollouts/{rid}/pause", 403)
            assert await rollout_store.rollout_state(pool, rid) == "RUNNING"
            assert await pool.fetchval(
                "SELECT count(*) FROM audit_log WHERE action = 'rollout.pause'") == 0

            # the create form is not offered, even by its address
            await page.evaluate("location.hash = '#/new'")
            await expect(page.locator("#view h1")).to_have_text("Not for this token")
            await expect(page.locator("form.create-form")).to_have_count(0)
            await assert_token_kept_nowhere(context, page, viewer, seen.urls)

            # signing out forgets the token; an admin also has the audit log
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.get_by_label("Token")).to_be_visible()
            await expect(nav).to_be_hidden()
            await page.get_by_label("Token").fill(admin)
            await page.get_by_role("button", name="Sign in").click()
            await nav.get_by_role("link", name="Audit log").click()
            await expect(page.locator("table.grid")).to_contain_text("rollout.start",
                                                                     timeout=WAIT_MS)
            await assert_token_kept_nowhere(context, page, admin, seen.urls)
            seen.assert_clean()
            await context.close()
    finally:
        await server.close()


async def test_preflight_panel_runs_a_preflight_and_the_pace_shows_live(
    pool: asyncpg.Pool, db_url: str, chromium: str, tmp_path: Path  # noqa: F811
) -> None:
    from playwright.async_api import expect

    _, operator = await token_store.create_token(pool, "console-checker", "operator")
    _, viewer = await token_store.create_token(pool, "console-reader", "viewer")
    async with fleet(pool, db_url, appliances=6, sites=2) as f:
        # adaptive pace; the canary's gate waits for an operator, so the rollout stays
        # RUNNING for as long as the test needs; an interval of an hour: the pace holds
        # where it started unless the test changes it
        rollout, _ = await rollout_store.create_rollout(
            pool, name="paced", target_version=TARGET, actor=ACTOR,
            strategy={**FAST_STRATEGY, "waves": [1, "100%"], "approval": "after-canary",
                      "max_concurrency": 2, "pace": "adaptive", "pace_max_concurrency": 6,
                      "pace_interval_seconds": 3600})
        rid = rollout.id
        await rollout_store.start_rollout(pool, rid, ACTOR)
        server = TestServer(create_app(pool, Settings()), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            base = str(server.make_url("")).rstrip("/")
            async with engine(f), browser(chromium) as b:
                # the start's pre-flight checked every appliance, the canary installed and
                # the gate waits; the pace started at max_concurrency
                await eventually(
                    lambda: pool.fetchval("SELECT state FROM rollout_waves WHERE "
                                          "rollout_id = $1 AND number = 0", rid),
                    lambda state: state == "AWAITING_APPROVAL", "the canary never ended")
                pace = await pace_store.pace_state(pool, rid)
                assert pace is not None and pace.concurrency == 2, pace
                start = await preflight_store.latest_run(pool, rid)
                assert start is not None and start.trigger == "start" and start.finished_at

                context = await b.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                seen = Browsing(page, base)
                await sign_in(page, base, operator)
                await page.get_by_role("link", name=f"#{rid} paced").click()
                await expect(page.locator("#rollout-title")).to_have_text(f"#{rid} paced",
                                                                          timeout=WAIT_MS)
                await expect(page.locator(".stream-status")).to_have_text("live",
                                                                         timeout=WAIT_MS)
                await page.evaluate("document.body.dataset.sameDocument = 'yes'")

                # ---------------------------------------------------- the pace
                line = page.locator("#pace-line .pace-text")
                await expect(line).to_have_text(
                    f"pace: 2 installs at once — {pace.reason}", timeout=WAIT_MS)
                # a change, written as the engine writes one (the row, a task event, an
                # audit row): the page shows it without reloading
                canary = await pool.fetchrow(
                    "SELECT id, state FROM tasks WHERE rollout_id = $1 AND wave = 0", rid)
                async with pool.acquire() as conn, conn.transaction():
                    await pace_store.record_pace_change(
                        conn, rid, previous=2, concurrency=3, reason="healthy (the test)",
                        task_id=canary["id"], task_state=canary["state"], detail={},
                        owner="test")
                await expect(line).to_have_text("pace: 3 installs at once — healthy (the test)",
                                                timeout=WAIT_MS)
                assert await page.evaluate("document.body.dataset.sameDocument") == "yes"

                # ---------------------------------------------------- the start's results
                panel = page.locator("#preflight")
                status = panel.locator(".preflight-status")
                await expect(status).to_contain_text(f"Run {start.id} (at the start by ")
                await expect_preflight_counts(page, pool, rid)
                await expect(panel.locator("#preflight-counts [data-result='ok'] .count")
                             ).to_have_text("6")
                await expect(panel).to_contain_text("None: no appliance fails or warns.")

                # ---------------------------------------------------- run one more
                faulty = await pool.fetchval(
                    "SELECT a.name FROM tasks t JOIN appliances a ON a.id = t.appliance_id "
                    "WHERE t.rollout_id = $1 AND t.state = 'PENDING' ORDER BY a.name LIMIT 1",
                    rid)
                f.sim.set_faults(faulty, ["reconfigure_pending"])
                button = panel.get_by_role("button", name="Run pre-flight")
                await button.click()
                dialog = page.locator("dialog#confirm")
                await expect(dialog).to_be_visible()
                await expect(dialog).to_contain_text("Nothing is installed.")
                await page.keyboard.press("Escape")  # Back: nothing is sent
                await expect(dialog).to_be_hidden()
                await expect(button).to_be_focused()
                assert not any(url.endswith("/preflight") for url in seen.urls)
                await page.keyboard.press("Enter")  # the focused button, by keyboard
                await expect(dialog).to_be_visible()
                await dialog.get_by_role("button", name="Run pre-flight").click()
                await expect(dialog).to_be_hidden()
                note = panel.locator(".preflight-result")
                await expect(note).to_contain_text("asked for", timeout=WAIT_MS)
                answer = seen.answers[f"POST {base}/api/v1/rollouts/{rid}/preflight"]
                assert answer.status == 202
                asked = await answer.json()
                await expect(note).to_have_text(asked["message"])
                run_id = asked["run"]["id"]
                # no event tells the page: it reads the results again until the run is over
                await expect(status).to_contain_text(
                    f"Run {run_id} (asked for by console-checker) finished", timeout=WAIT_MS)
                run = await preflight_store.get_run(pool, run_id)
                assert run is not None and run.finished_at is not None
                problem = panel.locator(f"#preflight-problems [data-appliance='{faulty}']")
                await expect(problem.locator(".state")).to_have_text("fail")
                await expect(problem.locator("code")).to_have_text("RECONFIGURE_PENDING")
                await expect(panel.locator("#preflight-problems > li")).to_have_count(1)
                summary = await preflight_store.summary(pool, rid)
                assert summary is not None and summary.counts == {"ok": 5, "fail": 1}
                await expect_preflight_counts(page, pool, rid)

                # ---------------------------------------------------- how it looks
                main = ["#preflight", "#preflight-counts", "#preflight-problems",
                        "#run-preflight", "#pace-line"]
                await check_layout(page, tmp_path / "preflight-1280.png", main)
                await page.set_viewport_size({"width": 390, "height": 844})
                await check_layout(page, tmp_path / "preflight-390.png", main)
                await assert_token_kept_nowhere(context, page, operator, seen.urls)

                # ---------------------------------------------------- a viewer
                await page.get_by_role("button", name="Sign out").click()
                await page.get_by_label("Token").fill(viewer)
                await page.get_by_role("button", name="Sign in").click()
                await expect(page.locator("#who")).to_contain_text("console-reader",
                                                                  timeout=WAIT_MS)
                await expect(page.locator("#rollout-title")).to_have_text(f"#{rid} paced",
                                                                          timeout=WAIT_MS)
                await expect(problem.locator("code")).to_have_text("RECONFIGURE_PENDING",
                                                                   timeout=WAIT_MS)
                await expect_preflight_counts(page, pool, rid)
                await expect(line).to_have_text("pace: 3 installs at once — healthy (the test)")
                await expect(page.get_by_role("button", name="Run pre-flight")).to_have_count(0)
                await assert_token_kept_nowhere(context, page, viewer, seen.urls)
                seen.assert_clean()
                await context.close()
        finally:
            await server.close()
