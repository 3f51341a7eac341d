"""Helpers shared by the API tests (no tests here): the app served on 127.0.0.1 over a test
database, tokens of each role, and a check of responses against the OpenAPI document."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import jsonschema_rs
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.api.app import create_app
from orchestrator.settings import Settings
from orchestrator.store import tokens as token_store

ROLES = ("viewer", "operator", "admin")


@contextlib.asynccontextmanager
async def api_client(pool: asyncpg.Pool, **kwargs: Any) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(pool, Settings(), **kwargs)
    client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def tokens_by_role(pool: asyncpg.Pool) -> dict[str, str]:
    out = {}
    for role in ROLES:
        _, out[role] = await token_store.create_token(pool, f"{role}-token", role)
    return out


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class DocumentChecker:
    """Validates responses against the schemas the document declares for them."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document

    def schema_for(self, path: str, method: str, status: int, media: str) -> Any:
        op = self.document["paths"][path][method.lower()]
        response = op["responses"].get(str(status))
        assert response is not None, f"{method} {path}: status {status} is not documented"
        content = response.get("content")
        if content is None:
            return None
        assert media in content, f"{method} {path} {status}: {media} not in {list(content)}"
        return content[media]["schema"]

    async def check(self, resp: ClientResponse, path: str, method: str) -> Any:
        media = resp.headers.get("Content-Type", "").split(";")[0]
        schema = self.schema_for(path, method, resp.status, media)
        if schema is None:
            return None
        if media.endswith("json"):
            body = await resp.json(content_type=None)
            wrapped = {**schema, "components": self.document["components"]}
            validator = jsonschema_rs.Draft202012Validator(wrapped)
            errors = [str(e) for e in validator.iter_errors(body)]
            assert not errors, f"{method} {path} {resp.status}: {errors[:3]} in {body!r:.500}"
            return body
        return await resp.text()


def dumps(value: Any) -> str:
    return json.dumps(value)
