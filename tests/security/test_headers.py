"""Security headers (issue 14, finding 12): every answer has `X-Content-Type-Options:
nosniff`; the HTML answers (the docs page, the HTML report) have a Content-Security-Policy
that allows their one inline `<style>` by its hash, and nothing else: no script, no inline
style attribute, no other source. The two pages that run script (Swagger UI at /api/docs,
the operator console at /) have policies of their own: scripts of this origin only."""

from __future__ import annotations

import re

import asyncpg

from orchestrator.api.headers import style_hash
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tokens as token_store
from orchestrator.store.audit import Actor
from tests.integration.test_api_support import auth
from tests.security.auth_support import api_client

CSV = "name,base_url,site,tags\nvr-1,https://vr-1.example.net/api,ams,prod\n"


def check_html(html: str, policy: str) -> None:
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"
    assert "script-src" not in directives  # default-src 'none': no script at all
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert styles, "the page has its inline style"
    for css in styles:
        assert style_hash(css) in directives["style-src"].split()
    # nothing the policy would block: no script, no inline style attribute, no handler
    assert "<script" not in html.lower()
    assert not re.search(r"\sstyle\s*=", html, re.I)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)
    assert not re.search(r"<link[^>]+stylesheet", html, re.I)


async def test_docs_page_and_report_have_a_strict_csp(pool: asyncpg.Pool) -> None:
    _, admin = await token_store.create_token(pool, "admin", "admin")
    async with api_client(pool) as client:
        async with client.get("/api/reference") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["Referrer-Policy"] == "no-referrer"
            check_html(await resp.text(), resp.headers["Content-Security-Policy"])
        async with client.post("/api/v1/appliances:import", data=CSV,
                               headers={**auth(admin), "Content-Type": "text/csv"}) as resp:
            assert resp.status == 200
        rollout, _ = await rollout_store.create_rollout(
            pool, name="<b>r</b>", target_version="9.0.1-20020", actor=Actor("setup"))
        async with client.get(f"/api/v1/rollouts/{rollout.id}/report?format=html",
                              headers=auth(admin)) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            check_html(await resp.text(), resp.headers["Content-Security-Policy"])
        # every other answer: nosniff, and no CSP needed
        for url, headers in ((f"/api/v1/rollouts/{rollout.id}/report?format=csv",
                              auth(admin)),
                             (f"/api/v1/rollouts/{rollout.id}/report?format=json",
                              auth(admin)),
                             ("/api/v1/openapi.json", {}), ("/healthz", {}),
                             ("/metrics", {}), ("/api/v1/audit", {}),
                             ("/no/such/path", {})):
            async with client.get(url, headers=headers) as resp:
                await resp.read()
                assert resp.headers.get("X-Content-Type-Options") == "nosniff", url
                assert "Content-Security-Policy" not in resp.headers, url


async def test_interactive_docs_load_only_files_of_their_own_origin(pool: asyncpg.Pool) -> None:
    """/api/docs (Swagger UI): scripts only from the orchestrator itself (no inline script,
    no eval, nothing from a CDN); every file the page names is served, with its type."""
    async with api_client(pool) as client:
        async with client.get("/api/docs") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
            policy = resp.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe-eval" not in policy
        assert "unsafe-inline" not in directives["script-src"]
        # every script is a file: none inline, no handler attribute, nothing off-site
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
        assert scripts and all(body.strip() == "" for _, body in scripts)
        assert not re.search(r"\son[a-z]+\s*=", page, re.I)
        urls = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert urls and all(u.startswith("/api/") for u in urls), urls
        types = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        for url in (u for u in urls if u.startswith("/api/docs/assets/")):
            async with client.get(url) as resp:
                body = await resp.read()
                assert resp.status == 200, url
                assert resp.content_type == types[url[url.rindex("."):]], url
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert len(body) > 500, url
        # the page's own script: the document of this server, and no token kept anywhere
        async with client.get("/api/docs/assets/docs.js") as resp:
            script = await resp.text()
        assert 'url: "/api/v1/openapi.json"' in script
        assert "persistAuthorization: false" in script and "validatorUrl: null" in script
        async with client.get("/api/docs/assets/..%2Fdocs.js") as resp:
            assert resp.status in (400, 404)
        async with client.get("/api/docs/assets/swagger-ui.js.map") as resp:
            assert resp.status in (400, 404)  # only the files the page needs


async def test_console_page_runs_no_inline_code(pool: asyncpg.Pool) -> None:
    """/ (the operator console): its own policy, scripts and styles of the orchestrator's
    origin only, none inline (the policy would block them: a test finds them first)."""
    async with api_client(pool) as client:
        async with client.get("/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            page = await resp.text()
            policy = resp.headers["Content-Security-Policy"]
            assert resp.headers["Referrer-Policy"] == "no-referrer"
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == directives["base-uri"] == "'none'"
    assert "unsafe" not in policy
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all(body.strip() == "" and "src=" in attrs for attrs, body in scripts)
    assert "<style" not in page.lower()
    assert not re.search(r"\sstyle\s*=", page, re.I)
    assert not re.search(r"\son[a-z]+\s*=", page, re.I)
