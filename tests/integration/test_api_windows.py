"""`/api/v1/maintenance-windows` as a dashboard uses it: the same validation as
`orchestrator windows create`, errors naming the field and the value, openings in local time
and UTC, every change audited with the token's name; every response checked against the
document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from orchestrator.store import windows as window_store
from orchestrator.store.audit import list_audit
from tests.integration.test_api import _api
from tests.integration.test_api_support import api_client, tokens_by_role

BASE = "/api/v1/maintenance-windows"
ITEM = BASE + "/{window}"
AMS = {"name": "nightly-ams", "cron": "0 22 * * *", "duration": "4h",
       "timezone": "Europe/Amsterdam", "cutoff": "30m", "sites": ["ams"]}


async def test_window_lifecycle_and_openings(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        status, body = await api.call("POST", BASE, json=AMS)
        assert status == 201, body
        assert {k: body[k] for k in ("name", "cron", "duration", "cutoff", "sites", "tags")} \
            == {"name": "nightly-ams", "cron": "0 22 * * *", "duration": 14400,
                "cutoff": 1800, "sites": ["ams"], "tags": []}
        # the next openings: 22:00 on Amsterdam's wall clock, 4 h long, soonest first
        assert len(body["next"]) == 3
        for opening in body["next"]:
            local = datetime.fromisoformat(opening["opens_local"])
            assert (local.hour, local.minute) == (22, 0)
            opens = datetime.fromisoformat(opening["opens"])
            assert opens.utcoffset() == timedelta(0)
            assert datetime.fromisoformat(opening["closes"]) - opens == timedelta(hours=4)
            # the window open right now (22:00-02:00 Amsterdam time) is listed first
            assert datetime.fromisoformat(opening["closes"]) > datetime.now(UTC)
        # the store (and so the CLI and the engine) sees the same window
        stored = await window_store.get_window(pool, "nightly-ams")
        assert stored.spec.cutoff == timedelta(minutes=30)

        # a second window on the same site, on New York time, covering a tag too
        status, nyc = await api.call("POST", BASE, json={
            "name": "weekend", "cron": "0 2 * * 6", "duration": 7200,
            "timezone": "America/New_York", "sites": ["ams"], "tags": ["lab"]})
        assert status == 201, nyc

        status, listed = await api.call("GET", f"{BASE}?site=ams", token=tokens["viewer"])
        assert [w["name"] for w in listed["items"]] == ["nightly-ams", "weekend"]
        status, listed = await api.call("GET", f"{BASE}?tag=lab", BASE)
        assert [w["name"] for w in listed["items"]] == ["weekend"]

        # next openings for the site: both windows merged, soonest first, count respected
        status, nxt = await api.call("GET", f"{BASE}:next?site=ams&count=8", f"{BASE}:next",
                                     token=tokens["viewer"])
        assert status == 200 and nxt["covered"] is True
        opens = [datetime.fromisoformat(o["opens"]) for o in nxt["items"]]
        assert len(opens) == 8 and opens == sorted(opens)
        assert {o["window"] for o in nxt["items"]} == {"nightly-ams", "weekend"}
        # an appliance's own zone overrides the window's: 22:00 on Tokyo's clock
        status, tokyo = await api.call(
            "GET", f"{BASE}:next?site=nowhere&tag=lab&timezone=Asia/Tokyo&count=1",
            f"{BASE}:next")
        assert tokyo["items"][0]["window"] == "weekend"
        assert datetime.fromisoformat(tokyo["items"][0]["opens_local"]).hour == 2
        assert tokyo["items"][0]["timezone"] == "Asia/Tokyo"
        status, none = await api.call("GET", f"{BASE}:next?site=fra", f"{BASE}:next")
        assert (status, none["covered"], none["items"]) == (200, False, [])

        # change: validated as a whole; by name or by id
        status, changed = await api.call("PATCH", f"{BASE}/nightly-ams", ITEM,
                                         json={"duration": "5h", "cutoff": 3600})
        assert status == 200 and (changed["duration"], changed["cutoff"]) == (18000, 3600)
        status, got = await api.call("GET", f"{BASE}/{changed['id']}", ITEM)
        assert status == 200 and got["name"] == "nightly-ams"

        status, _ = await api.call("DELETE", f"{BASE}/weekend", ITEM)
        assert status == 204
        status, problem = await api.call("GET", f"{BASE}/weekend", ITEM)
        assert status == 404 and "weekend" in problem["detail"]

    audit = await list_audit(pool, limit=50)
    mine = [(e.action, e.actor, e.via) for e in audit if e.target_type == "maintenance_window"]
    assert sorted(mine) == sorted([
        ("window.create", "admin-token", "api"), ("window.create", "admin-token", "api"),
        ("window.update", "admin-token", "api"), ("window.delete", "admin-token", "api"),
    ])


async def test_bad_windows_are_refused_naming_the_field_and_value(pool: asyncpg.Pool) -> None:
    tokens = await tokens_by_role(pool)
    bad: list[tuple[dict[str, Any], str, str]] = [
        ({**AMS, "cron": "61 22 * * *"}, "body.cron", "61"),
        ({**AMS, "cron": "0 0 31 2 *"}, "body.cron", "never occurs"),
        ({**AMS, "timezone": "Mars/Olympus_Mons"}, "body.timezone", "Mars/Olympus_Mons"),
        ({**AMS, "cutoff": "4h"}, "body.cutoff", "4h"),
        ({**AMS, "duration": "8d"}, "body.duration", "8d"),
        ({**AMS, "duration": 0}, "body.duration", "0"),
        ({**AMS, "sites": []}, "body.sites", "empty"),
        ({**AMS, "colour": "blue"}, "colour", "colour"),
        ({k: v for k, v in AMS.items() if k != "cron"}, "cron", "cron"),
    ]
    async with api_client(pool) as client:
        api = await _api(client, tokens["admin"])
        for body, field, shown in bad:
            status, problem = await api.call("POST", BASE, json=body)
            assert status in (400, 422), (body, status, problem)
            assert field in problem["detail"] and shown in problem["detail"], (body, problem)
            assert any(field in e["field"] for e in problem["errors"]), problem
        assert await window_store.list_windows(pool) == []

        status, _ = await api.call("POST", BASE, json=AMS)
        assert status == 201
        status, problem = await api.call("POST", BASE, json=AMS)
        assert status == 409 and "nightly-ams" in problem["detail"]
        # a change that breaks the window as a whole is refused and changes nothing
        status, problem = await api.call("PATCH", f"{BASE}/nightly-ams", ITEM,
                                         json={"duration": "20m"})
        assert status == 422 and "body.cutoff" in problem["detail"]
        status, problem = await api.call("PATCH", f"{BASE}/nightly-ams", ITEM,
                                         json={"cron": None})
        assert status == 422 and "cron" in problem["detail"]
        assert (await window_store.get_window(pool, "nightly-ams")).spec.duration \
            == timedelta(hours=4)
        status, problem = await api.call("PATCH", f"{BASE}/nowhere", ITEM,
                                         json={"cutoff": 0})
        assert status == 404
        status, problem = await api.call("GET", f"{BASE}:next?site=ams&timezone=Mars/Base",
                                         f"{BASE}:next")
        assert status == 400 and "Mars/Base" in problem["detail"]
        # viewers read, only admins write
        status, _ = await api.call("DELETE", f"{BASE}/nightly-ams", ITEM,
                                   token=tokens["operator"])
        assert status == 403
