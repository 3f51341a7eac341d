"""Pre-flight decisions (domain/preflight.py) as tables: the answers of an appliance, the
verdict (result, reason code) an operator reads. And the client call the pre-flight adds
(`GET /appliance/update-manager/repository`)."""

from __future__ import annotations

from typing import Any

import pytest
from aioresponses import aioresponses

from orchestrator.appliance import ApplianceClient, MalformedResponse, NotFound
from orchestrator.domain.preflight import (
    CODES,
    Answers,
    CallError,
    Result,
    decide,
    excluded_from_forecast,
    leaves_out,
    offered_versions,
    summary_line,
    task_error,
)
from tests.unit.test_appliance_client import client, expect, http, login_ok, mock, url

__all__ = ["client", "http", "mock"]  # the client tests' fixtures, used here

TARGET = "9.0.1-20020"
OFFERED = {"updates": [{"version": "9.0.1-20020", "type": "UPDATE"},
                       {"version": "9.0.2-20030"}]}


def healthy(**changes: Any) -> Answers:
    """The answers of an appliance ready for the install, with `changes`."""
    values: dict[str, Any] = {
        "target_version": TARGET, "version": "9.0.0-10010",
        "services": {"hms": True, "drrest": True, "envoy": True},
        "reconfigure_required": False,
        "repository": {"url": "https://updates.example.net/vr/", "mounted_iso": False},
        "retrieve_status": "SUCCESS", "retrieve_result": OFFERED,
    }
    values.update(changes)
    return Answers(**values)


def err(kind: str, message: str = "the appliance's words", status: int | None = None
        ) -> CallError:
    return CallError(kind, message, status)


# (what differs from a healthy appliance, result, code)
TABLE: list[tuple[str, dict[str, Any], Result, str | None]] = [
    ("healthy", {}, Result.OK, None),
    ("refused connection", {"login_error": err("unreachable")}, Result.FAIL, "UNREACHABLE"),
    ("no answer in time", {"login_error": err("timeout")}, Result.FAIL, "UNREACHABLE"),
    ("the check's deadline at login", {"login_error": err("deadline")}, Result.FAIL,
     "UNREACHABLE"),
    ("certificate refused", {"login_error": err("tls")}, Result.FAIL, "TLS"),
    ("wrong password", {"login_error": err("unauthorized", status=401)}, Result.FAIL,
     "CREDENTIALS"),
    ("no rights", {"login_error": err("forbidden", status=403)}, Result.FAIL, "CREDENTIALS"),
    ("unreadable secret", {"login_error": err("credentials_ref")}, Result.FAIL,
     "CREDENTIALS"),
    ("base_url against the policy", {"login_error": err("target_refused")}, Result.FAIL,
     "TARGET_REFUSED"),
    ("login answers 500", {"login_error": err("server_error", status=500)}, Result.FAIL,
     "APPLIANCE_ERROR"),
    ("at the target", {"version": TARGET}, Result.SKIP, "ALREADY_AT_TARGET"),
    ("at the target, other case and blanks", {"version": " 9.0.1-20020 "}, Result.SKIP,
     "ALREADY_AT_TARGET"),
    ("at the target, services down too", {"version": TARGET, "services": {"hms": False}},
     Result.SKIP, "ALREADY_AT_TARGET"),
    ("version unreadable: the rest decides",
     {"version": None, "version_error": err("malformed_response")}, Result.WARN,
     "CHECK_INCOMPLETE"),
    ("version call unreachable", {"version": None, "version_error": err("unreachable")},
     Result.FAIL, "UNREACHABLE"),
    ("hms down", {"services": {"hms": False, "drrest": True}}, Result.FAIL, "SERVICES_DOWN"),
    ("srm instead of hms", {"services": {"srm": True, "drrest": True}}, Result.OK, None),
    ("drrest missing", {"services": {"hms": True}}, Result.FAIL, "SERVICES_DOWN"),
    ("services unreadable", {"services": None, "services_error": err("server_error")},
     Result.WARN, "CHECK_INCOMPLETE"),
    ("reconfigure pending", {"reconfigure_required": True}, Result.FAIL,
     "RECONFIGURE_PENDING"),
    ("reconfigure-required unknown (old API)",
     {"reconfigure_required": None, "reconfigure_error": err("not_found", status=404)},
     Result.WARN, "CHECK_INCOMPLETE"),
    ("no repository URL",
     {"repository": {"url": "", "mounted_iso": False}, "retrieve_status": "ERROR",
      "retrieve_message": "No update repository is configured.", "retrieve_result": None},
     Result.FAIL, "NO_REPOSITORY"),
    ("blank URL but a mounted ISO", {"repository": {"url": " ", "mounted_iso": True}},
     Result.OK, None),
    ("repository call 404, retrieve fails",
     {"repository": None, "repository_error": err("not_found", status=404),
      "retrieve_status": "ERROR", "retrieve_result": None}, Result.FAIL, "NO_REPOSITORY"),
    ("repository call 404, updates retrieved (old API)",
     {"repository": None, "repository_error": err("not_found", status=404)}, Result.OK,
     None),
    ("repository unreadable, retrieve still running",
     {"repository": None, "repository_error": err("malformed_response"),
      "retrieve_status": "RUNNING"}, Result.WARN, "CHECK_INCOMPLETE"),
    ("repository unreachable from the appliance",
     {"retrieve_status": "ERROR", "retrieve_message": "Cannot reach the update repository",
      "retrieve_result": None}, Result.FAIL, "REPOSITORY_UNREACHABLE"),
    ("retrieve task cancelled", {"retrieve_status": "CANCELLED"}, Result.FAIL,
     "REPOSITORY_UNREACHABLE"),
    ("retrieve-updates refused with 500", {"retrieve_status": None,
                                           "retrieve_error": err("server_error", status=500)},
     Result.FAIL, "REPOSITORY_UNREACHABLE"),
    ("retrieve-updates timed out", {"retrieve_status": None,
                                    "retrieve_error": err("timeout")},
     Result.WARN, "CHECK_INCOMPLETE"),
    ("retrieve task not over", {"retrieve_status": "RUNNING"}, Result.WARN,
     "CHECK_INCOMPLETE"),
    ("target not offered", {"retrieve_result": {"updates": [{"version": "9.0.2-20030"}]}},
     Result.FAIL, "VERSION_NOT_OFFERED"),
    ("nothing offered", {"retrieve_result": {"updates": []}}, Result.FAIL,
     "VERSION_NOT_OFFERED"),
    ("a result nobody can read", {"retrieve_result": {"weird": 1}}, Result.WARN,
     "CHECK_INCOMPLETE"),
    ("no result at all", {"retrieve_result": None}, Result.WARN, "CHECK_INCOMPLETE"),
    ("the deadline passed after the checks that fail nothing", {"deadline_passed": True},
     Result.WARN, "CHECK_INCOMPLETE"),
    ("two problems: the first fail is the code",
     {"reconfigure_required": True, "services": {"hms": False, "drrest": True}},
     Result.FAIL, "SERVICES_DOWN"),
    ("a warning and a failure: the failure", {"services": None,
                                             "services_error": err("timeout"),
                                             "reconfigure_required": True},
     Result.FAIL, "RECONFIGURE_PENDING"),
]


@pytest.mark.parametrize(("case", "changes", "result", "code"), TABLE,
                         ids=[row[0] for row in TABLE])
def test_decide(case: str, changes: dict[str, Any], result: Result, code: str | None) -> None:
    verdict = decide(healthy(**changes))
    assert (verdict.result, verdict.code) == (result, code), verdict
    assert verdict.message
    if code is not None:
        assert CODES[code].result == result


def test_the_appliance_words_and_the_other_problems_are_in_the_message() -> None:
    verdict = decide(healthy(login_error=err("unauthorized", "login refused: wrong "
                                             "credentials (401)")))
    assert verdict.message == "login refused: wrong credentials (401)"
    both = decide(healthy(reconfigure_required=True, services={"hms": False, "drrest": True},
                          retrieve_status="ERROR", retrieve_message="Cannot reach it."))
    assert both.code == "SERVICES_DOWN"
    assert both.message == ("not running: hms|srm; also RECONFIGURE_PENDING, "
                            "REPOSITORY_UNREACHABLE")
    missing = decide(healthy(retrieve_result={"updates": [{"version": f"9.0.{n}"}
                                                          for n in range(2, 10)]}))
    assert missing.message == ("9.0.1-20020 is not offered: it offers 9.0.2, 9.0.3, 9.0.4, "
                               "9.0.5, 9.0.6 and 3 more")
    assert decide(healthy()).current_version == "9.0.0-10010"


def test_no_repository_is_said_once() -> None:
    verdict = decide(healthy(repository={"url": ""}, retrieve_status="ERROR",
                             retrieve_message="No update repository is configured.",
                             retrieve_result=None))
    assert verdict.code == "NO_REPOSITORY"
    assert "also" not in verdict.message
    assert "No update repository is configured." in verdict.message


@pytest.mark.parametrize(("result", "versions"), [
    ({"updates": [{"version": "9.0.1-20020"}]}, ["9.0.1-20020"]),
    ({"list": ["9.0.1-20020", " 9.0.2 "]}, ["9.0.1-20020", "9.0.2"]),
    ({"items": [{"update_version": "9.0.1"}]}, ["9.0.1"]),
    ({"available_updates": [{"name": "9.0.1"}]}, ["9.0.1"]),
    ({"versions": ["9.0.1"]}, ["9.0.1"]),
    (["9.0.1", {"id": "9.0.2"}], ["9.0.1", "9.0.2"]),
    ({"updates": [{"version": "9.0.1", "build": "20020"}]}, ["9.0.1", "9.0.1-20020"]),
    ({"updates": [{"version": "9.0.1", "build_number": 20020}]}, ["9.0.1", "9.0.1-20020"]),
    ({"updates": [{"version": "9.0.1-20020", "build": "20020"}]}, ["9.0.1-20020"]),
    ({"version": "9.0.1-20020", "summary": "one update, not in a list"}, ["9.0.1-20020"]),
    ({"updates": [{"summary": "no version"}, 7, None, "", {"version": "9.0.1"}]}, ["9.0.1"]),
    ({}, []),
    ({"updates": []}, []),
    ({"weird": 1}, None),
    ("9.0.1", None),
    (None, None),
])
def test_offered_versions_is_liberal(result: Any, versions: list[str] | None) -> None:
    assert offered_versions(result) == versions


def test_an_offer_with_a_separate_build_matches_the_target() -> None:
    verdict = decide(healthy(retrieve_result={"updates": [{"version": "9.0.1",
                                                           "build": "20020"}]}))
    assert verdict.result == Result.OK


def test_helpers() -> None:
    assert task_error("CREDENTIALS", "login refused") == (
        "PREFLIGHT_CREDENTIALS", "pre-flight CREDENTIALS: login refused")
    assert leaves_out("fail") and not leaves_out("warn") and not leaves_out("skip")
    assert excluded_from_forecast("fail") and excluded_from_forecast("skip")
    assert not excluded_from_forecast("warn") and not excluded_from_forecast("ok")
    assert summary_line({"ok": 290, "fail": 5, "warn": 3, "skip": 2}) == \
        "290 ok, 3 warn, 5 fail, 2 skip"
    assert summary_line({}) == "none"
    long = decide(healthy(login_error=err("unreachable", "x" * 2000)))
    assert len(long.message) == 500 and long.message.endswith("...")


# --- the client call -----------------------------------------------------------------------
REPO = "/appliance/update-manager/repository"


async def test_get_repository(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url(REPO), payload={"url": "https://updates.example.net/", "mounted_iso": False,
                                 "username": ""})
    assert await client.get_repository() == {
        "url": "https://updates.example.net/", "mounted_iso": False, "username": ""}


async def test_get_repository_errors(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock, repeat=True)
    mock.get(url(REPO), payload=["not", "an", "object"])
    await expect(MalformedResponse, client.get_repository())
    mock.get(url(REPO), status=404)
    exc = await expect(NotFound, client.get_repository())
    assert exc.op == "update repository"


def test_the_checks_run_under_the_rollout_s_limits() -> None:
    from orchestrator.domain.strategy import parse_strategy
    from orchestrator.engine.preflight import _limits

    overall, per_site = _limits(parse_strategy({"max_concurrency": "10%",
                                                "per_site_concurrency": 3}),
                                200, {"ams": 2, "nyc": 5})
    assert overall == 20
    assert (per_site("ams"), per_site("nyc"), per_site("fra")) == (2, 3, 3)
    overall, per_site = _limits(parse_strategy({}), 50, {"ams": 4})
    assert overall == 10 and per_site("ams") == 4 and per_site("fra") is None
