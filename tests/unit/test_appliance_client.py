"""ApplianceClient against aioresponses: every status and body variant of every call."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from orchestrator.appliance import (
    SESSION_HEADER,
    ApplianceClient,
    ApplianceError,
    ApplianceHttp,
    ApplianceHttpError,
    ApplianceTarget,
    ApplianceTimeout,
    BadRequest,
    Credentials,
    CredentialsError,
    Forbidden,
    MalformedResponse,
    NotFound,
    ServerError,
    ServiceUnavailable,
    TaskStatus,
    TlsError,
    Unauthorized,
    Unreachable,
)
from orchestrator.settings import Settings

BASE = "https://vr01.test/api/rest/configure/v1"
NAME = "vr01"
PASSWORD = "s3cr3t-PassW0rd:with-colon"
CREDS = Credentials("admin", PASSWORD)
SID = "SESSION-ID-0f1e2d3c"
SID2 = "SESSION-ID-second-9a8b"
BASIC = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, SID, SID2, BASIC, "s3cr3t")

INSTALL = "/appliance/update-manager/updates/9.0.1-20020/actions/install"
RETRIEVE = "/appliance/update-manager/actions/retrieve-updates"
RECONF = "/appliance/configuration-manager/reconfigure-required"

TASK_V2 = {
    "id": "task-1",
    "description": "Install update 9.0.1",
    "type": "UPDATE_INSTALL",
    "status": "RUNNING",
    "progress": 40,
    "start_time": 1_700_000_000_000,
    "complete_time": 0,
    "_meta": {"errors": []},
}
TASK_V1 = {
    "id": "task-2",
    "status": "ERROR",
    "progress": "100",
    "start_time": "2024-03-06T12:00:00Z",
    "complete_time": "1709726500000",
    "error": {
        "message": None,
        "localized_message": None,
        "stack_trace": [{"class_name": "x.Y", "method_name": "z", "line_number": 1}],
        "cause": {"message": "Checksum mismatch for package vr-core", "cause": None},
        "suppressed": [],
    },
}
ERR_BODY = {
    "error_code": "UPDATE_ALREADY_INSTALLED",
    "message": "Update 9.0.1-20020 is already installed",
    "op_id": "5a0b7c1e-0000-4000-8000-000000000001",
}
APPLIANCE = {
    "hostname": "vr01.test",
    "product_name": "vSphere Replication Appliance",
    "product_build_number": "20020",
    "appliance_version": "9.0.0-10010",
    "appliance_build_number": 10010,
    "system_information": {},
}

E = TypeVar("E", bound=ApplianceError)


def url(path: str) -> str:
    return BASE + path


def calls(mock: aioresponses, method: str, path: str) -> list[Any]:
    return list(mock.requests.get((method, URL(url(path))), []))


def sent(call: Any) -> dict[str, str]:
    """The headers a request carried, without the session-wide Accept and User-Agent."""
    return {k: v for k, v in call.kwargs["headers"].items() if k not in ("Accept", "User-Agent")}


def assert_no_secret(exc: BaseException) -> None:
    """No password, session id or Authorization value anywhere in the error or its causes."""
    seen: BaseException | None = exc
    while seen is not None:
        texts = [str(seen), repr(seen), *(repr(a) for a in seen.args), repr(vars(seen))]
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} leaked in {text!r}"
        seen = seen.__cause__ or seen.__context__


async def expect(exc_type: type[E], awaitable: Awaitable[Any]) -> E:
    """Await, assert the exact error type, and check that it leaks no secret."""
    with pytest.raises(exc_type) as info:
        await awaitable
    exc = info.value
    assert type(exc) is exc_type, f"expected {exc_type.__name__}, got {type(exc).__name__}"
    assert exc.appliance == NAME
    assert str(exc).startswith(f"{NAME}: ")
    assert_no_secret(exc)
    return exc


def login_ok(mock: aioresponses, sid: str = SID, repeat: bool = False) -> None:
    mock.post(url("/session"), status=200, payload={"session_id": sid}, repeat=repeat)


def connector_error() -> aiohttp.ClientConnectorError:
    key = ConnectionKey("vr01.test", 443, True, True, None, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


class _StreamWriterStub:
    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds ClientResponse without aiohttp 3.14's `stream_writer`."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _StreamWriterStub())
        super().__init__(method, url, **kwargs)


class CompatAioresponses(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(*args, **kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with CompatAioresponses() as m:
        yield m


def make_http(**overrides: Any) -> ApplianceHttp:
    options: dict[str, Any] = {
        "retries": 2,
        "backoff_base": 0.001,
        "backoff_cap": 0.002,
        "default_credentials": CREDS,
        "trust_env": False,
    }
    options.update(overrides)
    return ApplianceHttp(Settings(), **options)


@pytest.fixture
async def http() -> AsyncIterator[ApplianceHttp]:
    async with make_http() as h:
        yield h


@pytest.fixture
def client(http: ApplianceHttp) -> ApplianceClient:
    return http.client(ApplianceTarget(NAME, BASE))


# --- sessions -----------------------------------------------------------------------------


async def test_login_uses_basic_auth_then_session_header(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), payload=APPLIANCE, repeat=True)
    info = await client.get_appliance()
    await client.get_appliance()
    assert info.appliance_version == "9.0.0-10010"
    assert info.appliance_build_number == "10010"
    assert info.hostname == "vr01.test"
    [login] = calls(mock, "POST", "/session")
    assert sent(login) == {"Authorization": f"Basic {BASIC}"}
    gets = calls(mock, "GET", "/appliance")
    assert len(gets) == 2
    for get in gets:
        assert sent(get) == {SESSION_HEADER: SID}
    assert client.logins == 1
    assert "admin" not in repr(client) and PASSWORD not in repr(client)


async def test_explicit_login_and_logout(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    await client.login()
    assert client.has_session
    mock.delete(url("/session"), status=204)
    await client.logout()
    assert not client.has_session
    [delete] = calls(mock, "DELETE", "/session")
    assert sent(delete) == {SESSION_HEADER: SID}
    await client.logout()  # no session: no request
    assert len(calls(mock, "DELETE", "/session")) == 1


async def test_logout_ignores_gone_session(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    await client.login()
    mock.delete(url("/session"), status=401)
    await client.logout()
    assert not client.has_session


async def test_wrong_credentials_on_login_not_retried(
    mock: aioresponses, client: ApplianceClient
) -> None:
    mock.post(url("/session"), status=401, repeat=True)
    exc = await expect(Unauthorized, client.get_appliance())
    assert "wrong credentials" in str(exc)
    assert exc.status == 401
    assert not exc.transient
    assert len(calls(mock, "POST", "/session")) == 1
    assert calls(mock, "GET", "/appliance") == []


async def test_login_answer_without_session_id(mock: aioresponses, client: ApplianceClient) -> None:
    mock.post(url("/session"), status=200, payload={"token": "x"})
    await expect(MalformedResponse, client.login())


async def test_login_retried_on_503(mock: aioresponses, client: ApplianceClient) -> None:
    mock.post(url("/session"), status=503)
    login_ok(mock)
    await client.login()
    assert len(calls(mock, "POST", "/session")) == 2


async def test_401_then_relogin_success(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock, SID)
    login_ok(mock, SID2)
    mock.get(url("/tasks/task-1"), status=401)
    mock.get(url("/tasks/task-1"), payload=TASK_V2)
    task = await client.get_task("task-1")
    assert task.status is TaskStatus.RUNNING
    gets = calls(mock, "GET", "/tasks/task-1")
    assert [g.kwargs["headers"][SESSION_HEADER] for g in gets] == [SID, SID2]
    assert client.logins == 2


async def test_401_twice_is_unauthorized(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock, SID)
    login_ok(mock, SID2)
    mock.get(url("/appliance"), status=401, repeat=True)
    exc = await expect(Unauthorized, client.get_appliance())
    assert exc.status == 401
    assert len(calls(mock, "GET", "/appliance")) == 2
    assert len(calls(mock, "POST", "/session")) == 2


async def test_install_401_relogin_then_install(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock, SID)
    login_ok(mock, SID2)
    mock.post(url(INSTALL), status=401)
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    task = await client.install("9.0.1-20020")
    assert task.id == "task-1"
    assert len(calls(mock, "POST", INSTALL)) == 2


async def test_session_renewed_after_max_age(mock: aioresponses) -> None:
    clock = FakeClock()
    async with make_http(clock=clock, session_max_age=300) as http:
        client = http.client(ApplianceTarget(NAME, BASE))
        login_ok(mock, SID)
        login_ok(mock, SID2)
        mock.get(url("/appliance"), payload=APPLIANCE, repeat=True)
        await client.get_appliance()
        clock.now += 299
        await client.get_appliance()
        assert client.logins == 1
        clock.now += 2  # now 301 s after the login
        await client.get_appliance()
        assert client.logins == 2
        sids = [g.kwargs["headers"][SESSION_HEADER] for g in calls(mock, "GET", "/appliance")]
        assert sids == [SID, SID, SID2]


async def test_concurrent_callers_share_one_login(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock, repeat=True)
    mock.get(url("/appliance"), payload=APPLIANCE, repeat=True)
    results = await asyncio.gather(*(client.get_appliance() for _ in range(8)))
    assert len(results) == 8
    assert len(calls(mock, "POST", "/session")) == 1


async def test_concurrent_401s_share_one_relogin(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock, SID)
    await client.login()
    login_ok(mock, SID2)

    def by_session(_url: URL, **kwargs: Any) -> Any:
        if kwargs["headers"][SESSION_HEADER] == SID:
            return CallbackResult(status=401, response_class=_CompatResponse)
        return CallbackResult(status=200, payload=APPLIANCE, response_class=_CompatResponse)

    mock.get(url("/appliance"), callback=by_session, repeat=True)
    await asyncio.gather(*(client.get_appliance() for _ in range(5)))
    assert len(calls(mock, "POST", "/session")) == 2  # the first login and ONE re-login


# --- install ----------------------------------------------------------------------------


async def test_install_202_api_v2_task(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    task = await client.install("9.0.1-20020")
    assert task.id == "task-1"
    assert task.status is TaskStatus.RUNNING
    assert task.progress == 40
    assert task.type == "UPDATE_INSTALL"
    assert task.start_time == datetime.fromtimestamp(1_700_000_000, UTC)
    assert task.complete_time is None
    [post] = calls(mock, "POST", INSTALL)
    assert sent(post) == {SESSION_HEADER: SID}


async def test_install_202_api_v1_task(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=202, payload=TASK_V1)
    task = await client.install("9.0.1-20020")
    assert task.status is TaskStatus.ERROR
    assert task.progress == 100
    assert task.error_message == "Checksum mismatch for package vr-core"
    assert task.start_time == datetime(2024, 3, 6, 12, 0, tzinfo=UTC)
    assert task.complete_time == datetime.fromtimestamp(1709726500, UTC)


async def test_install_version_is_path_quoted(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url("/appliance/update-manager/updates/9.0%2F1/actions/install"), payload=TASK_V2)
    await client.install("9.0/1")


@pytest.mark.parametrize(
    ("status", "exc_type", "word"),
    [
        (400, BadRequest, "refused"),
        (403, Forbidden, "forbidden"),
        (500, ServerError, "failed on the appliance"),
    ],
)
async def test_install_response_error_reaches_exception(
    mock: aioresponses,
    client: ApplianceClient,
    status: int,
    exc_type: type[ApplianceHttpError],
    word: str,
) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=status, payload=ERR_BODY, repeat=True)
    exc = await expect(exc_type, client.install("9.0.1-20020"))
    assert exc.status == status
    assert exc.error_code == "UPDATE_ALREADY_INSTALLED"
    assert exc.message == "Update 9.0.1-20020 is already installed"
    assert exc.op_id == ERR_BODY["op_id"]
    assert str(exc) == (
        f"vr01: install of 9.0.1-20020 {word} ({status} UPDATE_ALREADY_INSTALLED: "
        "Update 9.0.1-20020 is already installed)"
    )
    assert exc.op == "install of 9.0.1-20020"
    assert len(calls(mock, "POST", INSTALL)) == 1  # never repeated, not even a 500


@pytest.mark.parametrize("body", ["", "<html>Internal Server Error</html>", "[1, 2]", "{"])
@pytest.mark.parametrize(("status", "exc_type"), [(400, BadRequest), (500, ServerError)])
async def test_error_without_response_error_body_still_typed(
    mock: aioresponses,
    client: ApplianceClient,
    status: int,
    exc_type: type[ApplianceHttpError],
    body: str,
) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=status, body=body, content_type="text/html")
    exc = await expect(exc_type, client.install("9.0.1-20020"))
    assert exc.status == status
    assert exc.error_code is None
    assert exc.message is None


async def test_install_404_unknown_version(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=404)
    exc = await expect(NotFound, client.install("9.0.1-20020"))
    assert exc.status == 404
    assert not exc.transient


async def test_install_503_not_retried(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=503, repeat=True)
    exc = await expect(ServiceUnavailable, client.install("9.0.1-20020"))
    assert exc.transient
    assert isinstance(exc, ServerError)
    assert len(calls(mock, "POST", INSTALL)) == 1


@pytest.mark.parametrize(
    "error",
    [aiohttp.ServerDisconnectedError(), TimeoutError(), aiohttp.ClientOSError(104, "x")],
    ids=["disconnect", "timeout", "reset"],
)
async def test_install_not_retried_once_sent(
    mock: aioresponses, client: ApplianceClient, error: Exception
) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), exception=error, repeat=True)
    exc = await expect(
        ApplianceTimeout if isinstance(error, TimeoutError) else Unreachable,
        client.install("9.0.1-20020"),
    )
    assert exc.request_sent
    assert exc.transient
    assert len(calls(mock, "POST", INSTALL)) == 1


async def test_install_retried_when_connection_failed(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), exception=connector_error())
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    task = await client.install("9.0.1-20020")
    assert task.id == "task-1"
    assert len(calls(mock, "POST", INSTALL)) == 2


async def test_install_retried_when_login_failed(
    mock: aioresponses, client: ApplianceClient
) -> None:
    mock.post(url("/session"), exception=aiohttp.ServerDisconnectedError())
    login_ok(mock)
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    await client.install("9.0.1-20020")
    assert len(calls(mock, "POST", INSTALL)) == 1


async def test_install_connection_failures_exhaust_retries(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), exception=connector_error(), repeat=True)
    exc = await expect(Unreachable, client.install("9.0.1-20020"))
    assert not exc.request_sent
    assert "Connection refused" in str(exc)
    assert len(calls(mock, "POST", INSTALL)) == 3


async def test_install_malformed_body(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=202, body="not json", content_type="text/plain")
    exc = await expect(MalformedResponse, client.install("9.0.1-20020"))
    assert exc.status == 202
    assert len(calls(mock, "POST", INSTALL)) == 1


async def test_install_task_without_status(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), status=202, payload={"id": "t", "status": 7})
    exc = await expect(MalformedResponse, client.install("9.0.1-20020"))
    assert "status" in str(exc)


# --- retrieve-updates -------------------------------------------------------------------


async def test_retrieve_updates(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.post(url(RETRIEVE), status=202, payload={"id": "t9", "status": "QUEUED"})
    task = await client.retrieve_updates()
    assert task.status is TaskStatus.QUEUED


async def test_retrieve_updates_not_retried_on_503(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.post(url(RETRIEVE), status=503, repeat=True)
    await expect(ServiceUnavailable, client.retrieve_updates())
    assert len(calls(mock, "POST", RETRIEVE)) == 1


# --- tasks ----------------------------------------------------------------------------


async def test_get_task_404_lost_after_reboot(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/tasks/task-1"), status=404)
    exc = await expect(NotFound, client.get_task("task-1"))
    assert exc.op == "task task-1"


async def test_get_task_503_retried_then_success(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.get(url("/tasks/task-1"), status=503)
    mock.get(url("/tasks/task-1"), status=500, payload=ERR_BODY)
    mock.get(url("/tasks/task-1"), payload=TASK_V2)
    task = await client.get_task("task-1")
    assert task.progress == 40
    assert len(calls(mock, "GET", "/tasks/task-1")) == 3


async def test_get_task_503_exhausts_retries(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/tasks/task-1"), status=503, repeat=True)
    exc = await expect(ServiceUnavailable, client.get_task("task-1"))
    assert exc.status == 503
    assert len(calls(mock, "GET", "/tasks/task-1")) == 3  # 1 + retries=2


async def test_get_task_wrong_types(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(
        url("/tasks/t"),
        payload={
            "id": 12,
            "status": "running",
            "progress": "fifty",
            "start_time": "yesterday",
            "complete_time": [],
            "error": 5,
            "result": "done",
            "description": {"x": 1},
        },
    )
    task = await client.get_task("t")
    assert task.id == "12"
    assert task.status is TaskStatus.RUNNING
    assert task.progress is None
    assert task.start_time is None and task.complete_time is None
    assert task.error_message is None
    assert task.result is None
    assert task.description is None


async def test_get_task_unknown_status(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/tasks/t"), payload={"status": "PAUSED"})
    task = await client.get_task("t")
    assert task.status is TaskStatus.UNKNOWN
    assert task.raw_status == "PAUSED"
    assert task.id is None


@pytest.mark.parametrize("body", ["{oops", "", "[]", '"RUNNING"', "null"])
async def test_get_task_malformed(mock: aioresponses, client: ApplianceClient, body: str) -> None:
    login_ok(mock)
    mock.get(url("/tasks/t"), body=body)
    await expect(MalformedResponse, client.get_task("t"))
    assert len(calls(mock, "GET", "/tasks/t")) == 1  # not transient: not retried


@pytest.mark.parametrize(
    "body",
    [
        {"list": [TASK_V2, TASK_V1], "_meta": {"total": 2}},
        [TASK_V2, TASK_V1],
        {"items": [TASK_V2, TASK_V1]},
    ],
    ids=["envelope", "bare", "items"],
)
async def test_list_tasks_shapes(mock: aioresponses, client: ApplianceClient, body: Any) -> None:
    login_ok(mock)
    mock.get(re.compile(r".*/tasks\?.*"), payload=body)
    tasks = await client.list_tasks(
        filter_property="type", filter="UPDATE_INSTALL", sort_by="start_time", order_by="desc"
    )
    assert [t.id for t in tasks] == ["task-1", "task-2"]
    [(key, [_call])] = list(mock.requests.items())[1:]
    assert key[0] == "GET"
    assert dict(key[1].query) == {
        "limit": "100",
        "offset": "0",
        "filter_property": "type",
        "filter": "UPDATE_INSTALL",
        "sort_by": "start_time",
        "order_by": "desc",
    }


async def test_list_tasks_default_params(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/tasks?limit=5&offset=10"), payload={"list": []})
    assert await client.list_tasks(limit=5, offset=10) == []


@pytest.mark.parametrize("body", [{"list": "x"}, {"list": [1]}, {"list": [{"id": "no status"}]}, 3])
async def test_list_tasks_malformed(mock: aioresponses, client: ApplianceClient, body: Any) -> None:
    login_ok(mock)
    mock.get(url("/tasks?limit=100&offset=0"), payload=body)
    await expect(MalformedResponse, client.list_tasks())


# --- appliance, services, reconfigure ----------------------------------------------------------


@pytest.mark.parametrize(
    "body", [{**APPLIANCE, "appliance_version": 9}, {"hostname": "x"}, [APPLIANCE], {}]
)
async def test_get_appliance_wrong_shape(
    mock: aioresponses, client: ApplianceClient, body: Any
) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), payload=body)
    exc = await expect(MalformedResponse, client.get_appliance())
    assert "appliance" in str(exc)


async def test_get_appliance_tolerates_optional_types(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), payload={"appliance_version": "9.0.1-20020", "hostname": 5})
    info = await client.get_appliance()
    assert info.appliance_version == "9.0.1-20020"
    assert info.hostname == "5"
    assert info.product_name is None


async def test_get_appliance_503_retried_then_success(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), status=503)
    mock.get(url("/appliance"), exception=connector_error())
    mock.get(url("/appliance"), payload=APPLIANCE)
    info = await client.get_appliance()
    assert info.appliance_version == "9.0.0-10010"


async def test_get_appliance_unreachable(mock: aioresponses, client: ApplianceClient) -> None:
    mock.post(url("/session"), exception=connector_error(), repeat=True)
    exc = await expect(Unreachable, client.get_appliance())
    assert exc.transient
    assert len(calls(mock, "POST", "/session")) == 3


async def test_get_appliance_timeout(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), exception=TimeoutError(), repeat=True)
    exc = await expect(ApplianceTimeout, client.get_appliance())
    assert exc.transient
    assert len(calls(mock, "GET", "/appliance")) == 3


async def test_connect_timeout_is_timeout_not_sent(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.post(url(INSTALL), exception=aiohttp.ConnectionTimeoutError("slow"))
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    await client.install("9.0.1-20020")
    assert len(calls(mock, "POST", INSTALL)) == 2


async def test_server_disconnect_on_get_is_unreachable(mock: aioresponses) -> None:
    async with make_http(retries=0) as http:
        client = http.client(ApplianceTarget(NAME, BASE))
        login_ok(mock)
        mock.get(url("/appliance"), exception=aiohttp.ServerDisconnectedError())
        exc = await expect(Unreachable, client.get_appliance())
        assert "disconnected" in str(exc)


async def test_fingerprint_mismatch_is_tls_error(
    mock: aioresponses, client: ApplianceClient
) -> None:
    mock.post(
        url("/session"),
        exception=aiohttp.ServerFingerprintMismatch(b"a" * 32, b"b" * 32, "vr01.test", 443),
    )
    exc = await expect(TlsError, client.login())
    assert not exc.transient
    assert len(calls(mock, "POST", "/session")) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"list": [{"id": "hms", "name": "HMS", "is_running": True}, {"id": "drrest"}]},
        [{"id": "hms", "name": "HMS", "is_running": True}, {"id": "drrest"}],
    ],
)
async def test_get_services(mock: aioresponses, client: ApplianceClient, body: Any) -> None:
    login_ok(mock)
    mock.get(url("/services"), payload=body)
    services = await client.get_services()
    assert [(s.id, s.is_running) for s in services] == [("hms", True), ("drrest", None)]


async def test_get_services_wrong_types(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(
        url("/services"),
        payload=[{"id": "hms", "is_running": "false"}, {"id": "x", "is_running": 3}],
    )
    services = await client.get_services()
    assert [s.is_running for s in services] == [False, None]
    mock.get(url("/services"), payload=[{"name": "no id"}])
    await expect(MalformedResponse, client.get_services())


async def test_get_service(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/services/hms"), payload={"id": "hms", "is_running": False})
    service = await client.get_service("hms")
    assert service.is_running is False
    mock.get(url("/services/nope"), status=404)
    await expect(NotFound, client.get_service("nope"))


@pytest.mark.parametrize(("body", "expected"), [({"value": True}, True), ({"value": False}, False)])
async def test_reconfigure_required(
    mock: aioresponses, client: ApplianceClient, body: Any, expected: bool
) -> None:
    login_ok(mock)
    mock.get(url(RECONF), payload=body)
    assert await client.reconfigure_required() is expected


@pytest.mark.parametrize("body", [{"value": "yes"}, {}, [True]])
async def test_reconfigure_required_malformed(
    mock: aioresponses, client: ApplianceClient, body: Any
) -> None:
    login_ok(mock)
    mock.get(url(RECONF), payload=body)
    await expect(MalformedResponse, client.reconfigure_required())


async def test_forbidden_on_get(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url(RECONF), status=403, payload={"error_code": "NO_RIGHTS"})
    exc = await expect(Forbidden, client.reconfigure_required())
    assert exc.error_code == "NO_RIGHTS"
    assert exc.message is None
    assert len(calls(mock, "GET", RECONF)) == 1


async def test_unexpected_status(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), status=302, headers={"Location": "https://elsewhere.test/"})
    exc = await expect(MalformedResponse, client.get_appliance())
    assert "302" in str(exc)


async def test_other_4xx_is_bad_request(mock: aioresponses, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), status=409, payload=ERR_BODY)
    exc = await expect(BadRequest, client.get_appliance())
    assert exc.status == 409


# --- counters, options, clients ----------------------------------------------------------------


async def test_counters(mock: aioresponses, http: ApplianceHttp, client: ApplianceClient) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), status=503)
    mock.get(url("/appliance"), exception=TimeoutError())
    mock.get(url("/appliance"), payload=APPLIANCE)
    await client.get_appliance()
    assert http.requests == 4
    assert client.requests == 4
    assert http.retried == 2
    assert http.errors_by_kind == {"service_unavailable": 1, "timeout": 1}
    assert client.errors_by_kind == http.errors_by_kind


async def test_per_call_request_timeout_is_passed(
    mock: aioresponses, client: ApplianceClient
) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), payload=APPLIANCE)
    await client.get_appliance(request_timeout=1.5)
    [get] = calls(mock, "GET", "/appliance")
    assert get.kwargs["timeout"].total == 1.5
    assert get.kwargs["timeout"].sock_connect == 1.5
    [login] = calls(mock, "POST", "/session")
    assert login.kwargs["timeout"].total == 1.5


async def test_settings_reach_the_connector() -> None:
    settings = Settings(
        appliance_connect_timeout=3,
        appliance_request_timeout=7,
        appliance_max_connections=55,
        appliance_max_connections_per_host=3,
    )
    async with ApplianceHttp(settings) as http:
        session = http.session
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        assert connector.limit == 55
        assert connector.limit_per_host == 3
        assert session.timeout.total == 7
        assert session.timeout.sock_connect == 3
    with pytest.raises(RuntimeError):
        _ = http.session


async def test_client_cache_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"VR01_CREDS": f"admin:{PASSWORD}"}
    async with ApplianceHttp(Settings(), environ=environ) as http:
        target = ApplianceTarget(NAME, BASE, credentials_ref="env:VR01_CREDS")
        client = http.client(target)
        assert client.credentials == CREDS
        assert http.client(target) is client
        other = Credentials("root", "other-secret")
        assert http.client(target, other) is not client
        assert http.client(target, other).credentials == other
        moved = ApplianceTarget(NAME, "https://vr01b.test/api", credentials_ref="env:VR01_CREDS")
        assert http.client(moved).target == moved
        http.forget(NAME)
        assert http.client(target) is not client
        with pytest.raises(CredentialsError) as info:
            http.client(ApplianceTarget("vr02", BASE, credentials_ref="env:MISSING"))
        assert "MISSING" in str(info.value)
        with pytest.raises(CredentialsError):
            http.client(ApplianceTarget("vr03", BASE))  # no ref, no default


def test_target_validation() -> None:
    thumb = "AB:" * 31 + "AB"
    target = ApplianceTarget(NAME, BASE + "/", tls_thumbprint=thumb)
    assert target.tls_thumbprint == "ab" * 32
    assert target.base_url == BASE
    with pytest.raises(ValueError, match="thumbprint"):
        ApplianceTarget(NAME, BASE, tls_thumbprint="abcd")
    with pytest.raises(ValueError, match="credentials"):
        ApplianceTarget(NAME, f"https://admin:{PASSWORD}@vr01.test/api")
    with pytest.raises(ValueError, match="http"):
        ApplianceTarget(NAME, "ftp://vr01.test/")


async def test_ssl_settings_per_target(tmp_path: Any) -> None:
    async with make_http(verify_tls=False) as http:
        assert http.ssl_for(ApplianceTarget(NAME, BASE)) is False
        pinned = http.ssl_for(ApplianceTarget(NAME, BASE, tls_thumbprint="0" * 64))
        assert isinstance(pinned, aiohttp.Fingerprint)
        assert pinned.fingerprint == bytes(32)
        with pytest.raises(TlsError, match="CA file"):
            http.ssl_for(ApplianceTarget(NAME, BASE, tls_ca_file=str(tmp_path / "missing.pem")))
    async with make_http() as http:
        assert http.ssl_for(ApplianceTarget(NAME, BASE)) is True


async def test_logout_all_is_best_effort(mock: aioresponses, http: ApplianceHttp) -> None:
    a = http.client(ApplianceTarget("a", "https://a.test/api"))
    b = http.client(ApplianceTarget("b", "https://b.test/api"))
    mock.post("https://a.test/api/session", payload={"session_id": SID})
    mock.post("https://b.test/api/session", payload={"session_id": SID2})
    await a.login()
    await b.login()
    mock.delete("https://a.test/api/session", status=204)
    mock.delete("https://b.test/api/session", exception=connector_error())
    await http.logout_all()
    assert not a.has_session and not b.has_session


# --- redirects --------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_is_a_clear_error_and_never_followed(
    mock: aioresponses, client: ApplianceClient, status: int
) -> None:
    login_ok(mock)
    mock.get(url("/appliance"), status=status,
             headers={"Location": "https://elsewhere.test/api/appliance"})
    exc = await expect(MalformedResponse, client.get_appliance())
    assert exc.status == status
    assert f"redirected ({status} to https://elsewhere.test/api/appliance)" in str(exc)
    assert "base_url" in str(exc)
    [get] = calls(mock, "GET", "/appliance")
    assert get.kwargs["allow_redirects"] is False


async def test_redirect_without_location(mock: aioresponses, client: ApplianceClient) -> None:
    mock.post(url("/session"), status=302)
    exc = await expect(MalformedResponse, client.login())
    assert "redirected (302 without a Location)" in str(exc)
    assert not exc.transient


# the 4 MiB answer cap: tests/unit/test_appliance_http.py (aioresponses cannot feed it)
