"""The browser of the browser tests: the system's Chromium (Debian's `chromium` package;
`make test` installs it when it may), driven by Playwright (`playwright` from PyPI, which
never downloads a browser here: it is given this one).

Without Chromium these tests skip, saying so, on a developer's machine, and FAIL under CI
(the `CI` environment variable set to anything but "" / "0" / "false", as CI services do,
or `REQUIRE_CHROMIUM=1`): a CI run must not pass with its browser tests quietly skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = find_chromium()


def chromium_required() -> bool:
    """True under CI (or when asked): a missing Chromium is then a failure, not a skip."""
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
               for name in ("CI", "REQUIRE_CHROMIUM"))


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        reason = ("no Chromium installed (looked for /usr/bin/chromium and "
                  f"{', '.join(CHROMIUM_NAMES)} on PATH); `apt-get install -y chromium` "
                  "enables this test")
        if chromium_required():
            pytest.fail(f"{reason}; required under CI (CI / REQUIRE_CHROMIUM is set)")
        pytest.skip(reason)
    return CHROMIUM


@dataclass
class Watched:
    """What a page did that a user would call broken: console errors (CSP violations and
    uncaught exceptions included), failed requests, and answers >= 400."""

    console_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    error_answers: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on("console", lambda m: m.type == "error"
                and self.console_errors.append(f"{m.text} ({m.location})"))
        page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self.failed_requests.append(
            f"{r.method} {r.url}: {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.error_answers.append(
            f"{r.request.method} {r.url}: {r.status}"))

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.failed_requests == [], self.failed_requests
        assert self.error_answers == [], self.error_answers


@contextlib.asynccontextmanager
async def browser(executable: str) -> AsyncIterator[Any]:
    """A headless Chromium under Playwright: `async with browser(chromium) as b`."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking",
                                          "--disable-component-update"])
        try:
            yield b
        finally:
            await b.close()
