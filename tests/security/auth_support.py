"""Helpers of the token, duty and header tests (no tests here): the app on 127.0.0.1 with
chosen settings."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import create_app
from orchestrator.settings import Settings


@contextlib.asynccontextmanager
async def api_client(pool: asyncpg.Pool, **settings: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """The app on 127.0.0.1 with `settings` over the defaults."""
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(pool, Settings(**settings)), host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()
