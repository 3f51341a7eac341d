"""Releasing appliance clients (`ApplianceHttp.hold` / `release` / `release_soon` /
`release_queued` / `using`): once its last user is done, a client leaves the cache and its
session is logged out, best effort: a failed logout never raises and is logged without the
session id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs

from orchestrator.appliance import ApplianceClient, ApplianceHttp, ApplianceTarget, Unreachable
from orchestrator.appliance import http as http_module
from orchestrator.appliance.client import SESSION_HEADER
from orchestrator.appliance.http import LOGOUT_TIMEOUT, LOGOUT_WORKERS
from tests.helpers import eventually
from tests.unit.test_appliance_client import (
    APPLIANCE,
    BASE,
    INSTALL,
    NAME,
    SECRETS,
    SID,
    SID2,
    TASK_V2,
    CompatAioresponses,
    calls,
    connector_error,
    login_ok,
    make_http,
    sent,
    url,
)

TARGET = ApplianceTarget(NAME, BASE)
V2 = "9.0.1-20020"
SID3 = "SESSION-ID-third-7c6d"


@pytest.fixture
def mock() -> Iterator[aioresponses]:
    with CompatAioresponses() as m:
        yield m


@pytest.fixture
async def http() -> AsyncIterator[ApplianceHttp]:
    async with make_http() as h:
        yield h


async def logged_in(mock: aioresponses, http: ApplianceHttp) -> ApplianceClient:
    client = http.client(TARGET)
    login_ok(mock)
    await client.login()
    assert client.has_session and http.cached_clients == 1
    return client


def deletes(mock: aioresponses) -> int:
    return len(calls(mock, "DELETE", "/session"))


async def test_release_logs_out_and_forgets(mock: aioresponses, http: ApplianceHttp) -> None:
    client = await logged_in(mock, http)
    http.hold(client)
    mock.delete(url("/session"), status=204)
    await http.release(client)
    assert not client.has_session and http.cached_clients == 0
    [delete] = calls(mock, "DELETE", "/session")
    assert sent(delete) == {SESSION_HEADER: SID}
    assert delete.kwargs["timeout"].total == LOGOUT_TIMEOUT  # short, whatever the setting
    assert http.client(TARGET) is not client  # a later user gets a fresh client


async def test_release_without_session_sends_nothing(mock: aioresponses,
                                                     http: ApplianceHttp) -> None:
    client = http.client(TARGET)
    http.hold(client)
    await http.release(client)
    assert http.cached_clients == 0 and deletes(mock) == 0


@pytest.mark.parametrize(("failure", "error"), [
    ({"exception": connector_error()}, "Unreachable"),
    ({"status": 500}, "ServerError"),
])
async def test_failed_logout_never_raises_and_logs_no_session_id(
    mock: aioresponses, http: ApplianceHttp, failure: dict[str, object], error: str
) -> None:
    client = await logged_in(mock, http)
    http.hold(client)
    mock.delete(url("/session"), **failure)  # type: ignore[arg-type]
    with capture_logs() as logs:
        await http.release(client)  # no exception
    assert deletes(mock) == 1  # tried once, never retried
    assert not client.has_session and http.cached_clients == 0
    [entry] = [e for e in logs if e["event"] == "appliance_logout_failed"]
    assert (entry["log_level"], entry["appliance"], entry["error"]) == ("debug", NAME, error)
    for secret in SECRETS:
        assert secret not in repr(entry)


async def test_release_after_close_never_raises(mock: aioresponses) -> None:
    http = make_http()
    async with http:
        client = await logged_in(mock, http)
        http.hold(client)
    await http.release(client)  # the transport is closed: nothing sent, nothing raised
    assert deletes(mock) == 0 and not client.has_session


async def test_a_client_held_twice_stays_until_its_last_user_is_done(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    client = await logged_in(mock, http)
    http.hold(client)  # a task runner
    http.hold(http.client(TARGET))  # a look at a held slot: the same client
    await http.release(client)
    assert client.has_session and http.client(TARGET) is client and deletes(mock) == 0
    mock.delete(url("/session"), status=204)
    await http.release(client)
    assert not client.has_session and http.cached_clients == 0 and deletes(mock) == 1


async def test_release_of_a_replaced_client_keeps_the_new_one(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    old = await logged_in(mock, http)
    http.hold(old)
    moved = ApplianceTarget(NAME, BASE, tls_thumbprint="0" * 64)  # the inventory changed
    new = http.client(moved)
    assert new is not old
    mock.delete(url("/session"), status=204)
    await http.release(old)
    assert deletes(mock) == 1 and not old.has_session
    assert http.cached_clients == 1 and http.client(moved) is new


async def test_using_releases_after_an_error_before_it_propagates(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    client = await logged_in(mock, http)
    mock.delete(url("/session"), status=204)
    with pytest.raises(ZeroDivisionError):
        async with http.using(client):
            raise ZeroDivisionError
    assert deletes(mock) == 1 and http.cached_clients == 0


async def test_cancelled_user_releases_without_waiting(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    client = await logged_in(mock, http)
    inside = asyncio.Event()

    async def user() -> None:
        async with http.using(client):
            inside.set()
            await asyncio.Event().wait()

    mock.delete(url("/session"), status=204)
    task = asyncio.create_task(user())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert http.cached_clients == 0  # out of the cache at once
    await eventually(lambda: asyncio.sleep(0, deletes(mock)), lambda n: n == 1)
    assert not client.has_session


async def test_close_cancels_the_background_logouts(mock: aioresponses) -> None:
    http = make_http()
    async with http:
        client = await logged_in(mock, http)
        http.hold(client)
        http.release_soon(client)  # not started yet when the transport closes
    assert http.cached_clients == 0 and deletes(mock) == 0
    assert client.has_session  # never logged out: shutdown does not wait on appliances


# ------------------------------------------------------------------ queued logouts
async def test_a_queued_release_leaves_the_cache_at_once_and_logs_out_later(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    client = await logged_in(mock, http)
    mock.delete(url("/session"), status=204)
    async with http.using(client, queue_logout=True):
        pass
    assert http.cached_clients == 0 and deletes(mock) == 0  # queued, not sent yet
    assert http.queued_logouts == 1
    assert await http.drain_logouts() == 0
    assert deletes(mock) == 1 and not client.has_session and http.queued_logouts == 0


async def test_queued_logouts_run_a_few_at_a_time_in_release_order(
    monkeypatch: pytest.MonkeyPatch, http: ApplianceHttp
) -> None:
    """Planted logouts that take a while: never more than LOGOUT_WORKERS at once, every one
    sent, in the order of the releases."""
    running, most, order = 0, 0, []

    async def slow_logout(self: ApplianceClient, **kwargs: object) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        order.append(self.name)
        await asyncio.sleep(0.01)
        running -= 1

    monkeypatch.setattr(ApplianceClient, "logout", slow_logout)
    monkeypatch.setattr(ApplianceClient, "has_session", property(lambda self: True))
    names = [f"vr{i:02d}" for i in range(3 * LOGOUT_WORKERS + 1)]
    for name in names:
        client = http.client(ApplianceTarget(name, BASE))
        http.hold(client)
        await http.release_queued(client)
    assert http.cached_clients == 0
    assert await http.drain_logouts() == 0
    assert order == names and most == LOGOUT_WORKERS


async def test_close_sends_the_queued_logouts(mock: aioresponses) -> None:
    http = make_http()
    async with http:
        client = await logged_in(mock, http)
        http.hold(client)
        mock.delete(url("/session"), status=204)
        await http.release_queued(client)
    assert deletes(mock) == 1 and not client.has_session


async def test_a_drain_gives_up_on_logouts_that_do_not_end(
    monkeypatch: pytest.MonkeyPatch, http: ApplianceHttp
) -> None:
    """A logout that never ends (its timeout planted away): the drain returns after its
    own timeout, counts what was left and says so in the log."""
    async def hanging_logout(self: ApplianceClient, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(ApplianceClient, "logout", hanging_logout)
    monkeypatch.setattr(ApplianceClient, "has_session", property(lambda self: True))
    for name in ("vr01", "vr02"):
        client = http.client(ApplianceTarget(name, BASE))
        http.hold(client)
        await http.release_queued(client)
    with capture_logs() as logs:
        assert await http.drain_logouts(within=0.2) == 2
    assert http.queued_logouts == 0
    assert [e["count"] for e in logs if e["event"] == "appliance_logouts_left"] == [2]


def recording_logouts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Logouts planted to record the appliance's name (every client has a session)."""
    sent_for: list[str] = []

    async def logout(self: ApplianceClient, **kwargs: object) -> None:
        sent_for.append(self.name)

    monkeypatch.setattr(ApplianceClient, "logout", logout)
    monkeypatch.setattr(ApplianceClient, "has_session", property(lambda self: True))
    return sent_for


async def release_queued(http: ApplianceHttp, name: str) -> None:
    client = http.client(ApplianceTarget(name, BASE))
    http.hold(client)
    await http.release_queued(client)


async def test_queued_logouts_wait_while_the_process_is_busy(
    monkeypatch: pytest.MonkeyPatch, http: ApplianceHttp
) -> None:
    """While `busy()` says so (the engine: a burst of task ends and starts), no queued
    logout is sent; once it passes, all are, in release order."""
    sent_for = recording_logouts(monkeypatch)
    busy = True
    http.busy = lambda: busy
    await release_queued(http, "vr01")
    await release_queued(http, "vr02")
    await asyncio.sleep(5 * http_module.LOGOUT_BUSY_POLL)
    assert sent_for == [] and http.queued_logouts == 2  # held back all that time
    busy = False
    await eventually(lambda: asyncio.sleep(0, list(sent_for)),
                     lambda names: names == ["vr01", "vr02"])
    assert http.queued_logouts == 0


async def test_a_queued_logout_waits_for_a_busy_process_at_most_the_deferral_limit(
    monkeypatch: pytest.MonkeyPatch, http: ApplianceHttp
) -> None:
    """A process that stays busy does not keep sessions open for ever: each logout goes
    LOGOUT_DEFER_MAX after its release however busy it is."""
    monkeypatch.setattr(http_module, "LOGOUT_DEFER_MAX", 0.3)
    sent_for = recording_logouts(monkeypatch)
    http.busy = lambda: True
    loop = asyncio.get_running_loop()
    released = loop.time()
    await release_queued(http, "vr01")
    await eventually(lambda: asyncio.sleep(0, list(sent_for)), lambda names: names == ["vr01"])
    assert loop.time() - released >= 0.3


async def test_a_drain_sends_the_queued_logouts_without_waiting_for_a_busy_process(
    monkeypatch: pytest.MonkeyPatch, http: ApplianceHttp
) -> None:
    """The engine stopping: what is queued goes now, busy or not (the drain's own bound
    is far shorter than the deferral's), and later releases wait for `busy` again."""
    sent_for = recording_logouts(monkeypatch)
    http.busy = lambda: True
    await release_queued(http, "vr01")
    await release_queued(http, "vr02")
    assert await http.drain_logouts(within=2.0) == 0
    assert sent_for == ["vr01", "vr02"]
    await release_queued(http, "vr03")
    await asyncio.sleep(3 * http_module.LOGOUT_BUSY_POLL)
    assert sent_for == ["vr01", "vr02"] and http.queued_logouts == 1


# ------------------------------------------------------------------ sessions dropped on the way
def deleted_sids(mock: aioresponses) -> list[str]:
    return [sent(c)[SESSION_HEADER] for c in calls(mock, "DELETE", "/session")]


async def test_a_forgotten_session_is_logged_out_unless_a_restart_is_proven(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    """`forget_session` (a restart seems to be under way) stops using the session; if
    nothing proves the restart, the logout ends it too: it may still be open."""
    client = await logged_in(mock, http)
    client.forget_session()
    assert client.has_session  # something is left to log out
    login_ok(mock, SID2)
    mock.get(url("/appliance"), payload=APPLIANCE)
    await client.get_appliance()  # logs in anew
    mock.delete(url("/session"), status=204, repeat=True)
    await client.logout()
    assert deleted_sids(mock) == [SID2, SID] and not client.has_session


async def test_a_session_a_proven_restart_ended_is_left_alone(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    """The session that sent the install is older than the restart the install caused:
    once the restart is proven, the logout leaves it alone."""
    client = await logged_in(mock, http)
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    await client.install(V2)
    client.forget_session()
    login_ok(mock, SID2)
    mock.get(url("/appliance"), payload=APPLIANCE)
    await client.get_appliance()
    client.restart_proven()
    assert client.forgotten_sessions == 0
    mock.delete(url("/session"), status=204, repeat=True)
    await client.logout()
    assert deleted_sids(mock) == [SID2]


async def test_a_session_opened_after_the_install_outlives_a_proven_restart(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    """Logged in again after the install (the appliance came back, say), then that session
    is forgotten on a wrong sign of a restart: the restart the new version proves may have
    come before it, so it is still logged out (seen on a loaded machine: two sessions left
    open on the appliances after a rollout)."""
    client = await logged_in(mock, http)
    mock.post(url(INSTALL), status=202, payload=TASK_V2)
    await client.install(V2)
    client.forget_session()  # the install's session: the restart ends it
    login_ok(mock, SID2)
    mock.get(url("/appliance"), payload=APPLIANCE, repeat=True)
    await client.get_appliance()  # SID2, opened after the install was accepted
    client.forget_session()
    login_ok(mock, SID3)
    await client.get_appliance()  # SID3
    client.restart_proven()
    assert client.forgotten_sessions == 1
    mock.delete(url("/session"), status=204, repeat=True)
    await client.logout()
    assert deleted_sids(mock) == [SID3, SID2]


async def test_without_its_own_install_a_client_proves_no_session_over(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    """A task taken over from another engine: this client sent no install, so no session
    of its own is known to be older than the restart, and each is logged out."""
    client = await logged_in(mock, http)
    client.forget_session()
    login_ok(mock, SID2)
    mock.get(url("/appliance"), payload=APPLIANCE)
    await client.get_appliance()
    client.restart_proven()
    mock.delete(url("/session"), status=204, repeat=True)
    await client.logout()
    assert deleted_sids(mock) == [SID2, SID]


async def test_a_session_replaced_for_its_age_is_logged_out_and_a_refused_one_is_not(
    mock: aioresponses
) -> None:
    """Renewed at `appliance_session_max_age`: the old session was never refused, so it is
    still open and the logout ends it. Renewed after a 401: the refused one is over."""
    now = [0.0]
    async with make_http(session_max_age=10.0, clock=lambda: now[0]) as http:
        client = await logged_in(mock, http)
        now[0] = 11.0  # older than the max age
        login_ok(mock, SID2)
        mock.get(url("/appliance"), payload=APPLIANCE)
        await client.get_appliance()
        mock.delete(url("/session"), status=204, repeat=True)
        await client.logout()
        assert deleted_sids(mock) == [SID2, SID]

        other = http.client(ApplianceTarget(NAME, BASE))
        login_ok(mock, "SESSION-ID-third")
        await other.login()
        mock.get(url("/appliance"), status=401)  # the session is refused
        login_ok(mock, "SESSION-ID-fourth")
        mock.get(url("/appliance"), payload=APPLIANCE)
        await other.get_appliance()
        await other.logout()
        assert deleted_sids(mock)[2:] == ["SESSION-ID-fourth"]


async def test_a_failed_logout_still_tries_every_session(
    mock: aioresponses, http: ApplianceHttp
) -> None:
    client = await logged_in(mock, http)
    client.forget_session()
    login_ok(mock, SID2)
    mock.get(url("/appliance"), payload=APPLIANCE)
    await client.get_appliance()
    mock.delete(url("/session"), exception=connector_error())
    mock.delete(url("/session"), status=204)
    with pytest.raises(Unreachable):
        await client.logout()
    assert deleted_sids(mock) == [SID2, SID] and not client.has_session
