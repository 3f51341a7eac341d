"""/api/docs in a real browser: Swagger UI renders every operation of the document from
files the orchestrator serves itself, "Authorize" takes a bearer token, and "Try it out"
sends it: the request reaches the API with the token and its answer is shown. Nothing is
loaded from the network, the console stays silent, and the token is kept nowhere but in
the page's memory (no cookie, no storage, not in the URL)."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestServer

from orchestrator.api.app import OPERATIONS, create_app
from orchestrator.domain.inventory import ApplianceSpec
from orchestrator.settings import Settings
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import Actor
from tests.browser import Watched, browser, chromium  # noqa: F401 (the fixture)


async def test_swagger_ui_renders_and_tries_an_operation_with_a_token(
    pool: asyncpg.Pool, chromium: str  # noqa: F811
) -> None:
    _, token = await token_store.create_token(pool, "docs-reader", "viewer")
    await appliance_store.upsert_appliances(pool, [
        ApplianceSpec("vr-1", "https://vr-1.example.net/api", "ams")])
    rollout, _ = await rollout_store.create_rollout(
        pool, name="seen through swagger", target_version="9.0.1-20020", actor=Actor("t"))
    server = TestServer(create_app(pool, Settings()), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        async with browser(chromium) as b:
            context = await b.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            watched = Watched()
            watched.attach(page)
            sent: list[dict[str, str]] = []
            page.on("request", lambda r: "/api/v1/rollouts" in r.url and sent.append(
                {"url": r.url, **r.headers}))
            outside: list[str] = []
            page.on("request", lambda r: not r.url.startswith(base) and outside.append(r.url))

            await page.goto(f"{base}/api/docs")
            await page.wait_for_selector(".opblock", timeout=30_000)
            rendered = await page.locator(".opblock").count()
            assert rendered == len(OPERATIONS)
            assert "Fleet update orchestrator" in await page.locator(".info .title").inner_text()

            # Authorize: the bearer scheme of the document
            await page.locator("button.authorize").first.click()
            await page.locator(".modal-ux input").fill(token)
            await page.locator(".modal-ux button.authorize").click()
            await page.locator(".modal-ux button.btn-done").click()

            # Try it out: GET /api/v1/rollouts
            op = page.locator("#operations-rollouts-listRollouts")
            await op.locator(".opblock-summary").click()
            await op.locator("button.try-out__btn").click()
            await op.locator("button.execute").click()
            status = op.locator(".live-responses-table tr.response .response-col_status").first
            await status.wait_for(timeout=30_000)
            assert (await status.inner_text()).strip() == "200"
            body = await op.locator(".live-responses-table .microlight").first.inner_text()
            assert "seen through swagger" in body
            assert sent and sent[-1].get("authorization") == f"Bearer {token}"

            # the token lives in the page's memory only
            assert token not in page.url
            assert await context.cookies() == []
            stored = await page.evaluate(
                "JSON.stringify([Object.entries(localStorage), "
                "Object.entries(sessionStorage)])")
            assert token not in stored
            assert outside == [], "loaded from elsewhere than the orchestrator"
            watched.assert_clean()
            await context.close()
    finally:
        await server.close()
    assert rollout.id
