"""What a webhook request says and what its answer means (domain/notifications.py): the
signature a receiver checks (replay window, a tampered body), the verdict of every kind of
answer, the back-off between attempts (Retry-After included), the Slack line of every
event type and the body of a task.failed batch."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.appliance.credentials import CredentialsError, resolve_secret
from orchestrator.domain.inventory import TargetPolicy
from orchestrator.domain.notifications import (
    classify,
    envelope,
    parse_retry_after,
    retry_delay,
    sign,
    slack_message,
    verify,
)
from orchestrator.engine.notifier import NotifierConfig, shown_url
from orchestrator.settings import SettingsError, load_settings
from orchestrator.store.webhooks import EVENT_TYPES

SECRET = b"s3cret-webhook-key"
BODY = b'{"id":"1","type":"ping"}'
NOW = 1_790_000_000
AT = datetime(2026, 11, 30, 7, 30, tzinfo=UTC)
ROLLOUT = {"id": 12, "name": "spring-update", "target_version": "5.2.1"}


# ------------------------------------------------------------------ signatures
def test_a_signature_verifies_with_its_secret_and_body() -> None:
    header = sign(SECRET, NOW, BODY)
    assert header.startswith(f"t={NOW},v1=")
    assert len(header.rpartition("v1=")[2]) == 64
    assert verify(header, SECRET, BODY, now=NOW + 10)


def test_the_signature_is_an_hmac_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == f"t={NOW},v1={expected}"


@pytest.mark.parametrize("change", ["body", "secret", "timestamp", "digest"])
def test_a_tampered_request_is_refused(change: str) -> None:
    header = sign(SECRET, NOW, BODY)
    body, secret = BODY, SECRET
    if change == "body":
        body = BODY.replace(b"ping", b"pong")
    elif change == "secret":
        secret = b"another"
    elif change == "timestamp":  # a later timestamp with the old digest
        header = header.replace(f"t={NOW}", f"t={NOW + 1}")
    else:
        header = header[:-1] + ("0" if header[-1] != "0" else "1")
    assert not verify(header, secret, body, now=NOW)


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (300, True), (-300, True),
                                             (301, False), (-301, False), (86_400, False)])
def test_replay_window(offset: int, ok: bool) -> None:
    """A request replayed (or signed by a clock) more than 5 minutes away is refused."""
    header = sign(SECRET, NOW, BODY)
    assert verify(header, SECRET, BODY, now=NOW + offset) is ok
    assert verify(header, SECRET, BODY, now=NOW + offset, tolerance=86_400)


@pytest.mark.parametrize("header", [None, "", "v1=abc", f"t={NOW}", "t=soon,v1=ab",
                                    "garbage"])
def test_malformed_headers_are_refused(header: str | None) -> None:
    assert not verify(header, SECRET, BODY, now=NOW)


def test_any_of_several_signatures_may_match() -> None:
    """A receiver rotating its secret: one of the v1 values matches."""
    good = sign(SECRET, NOW, BODY).rpartition("v1=")[2]
    assert verify(f"t={NOW},v1={'0' * 64},v1={good}", SECRET, BODY, now=NOW)


# ------------------------------------------------------------------ answers
@pytest.mark.parametrize(("status", "outcome"), [
    (200, "delivered"), (201, "delivered"), (202, "delivered"), (204, "delivered"),
    (None, "retry"), (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"),
    (503, "retry"), (504, "retry"), (599, "retry"),
    (301, "failed"), (302, "failed"), (307, "failed"), (400, "failed"), (401, "failed"),
    (403, "failed"), (404, "failed"), (410, "failed"), (413, "failed"), (100, "failed"),
])
def test_classify(status: int | None, outcome: str) -> None:
    assert classify(status, "connection refused" if status is None else None) == outcome


# ------------------------------------------------------------------ retries
def test_retry_delay_grows_with_full_jitter_and_stays_under_the_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
        delays = [retry_delay(attempt, 2.0, 300.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # full jitter: spread over the whole range, not bunched at the top
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_retry_after_is_honoured_up_to_the_cap() -> None:
    rng = random.Random(1)
    assert all(retry_delay(1, 0.05, 300.0, rng, retry_after=7.0) == 7.0 for _ in range(50))
    assert retry_delay(1, 0.05, 60.0, rng, retry_after=3600.0) == 60.0
    # a Retry-After shorter than the back-off does not shorten it
    assert all(retry_delay(20, 2.0, 300.0, random.Random(s), retry_after=0.0) >= 0.0
               for s in range(20))


def test_parse_retry_after() -> None:
    now = datetime(2026, 10, 21, 7, 28, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 120 ", now) == 120.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:28:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2026 07:00:00 GMT", now) == 0.0  # in the past
    for bad in (None, "", "-5", "soon", "1.5e3x", "Wed, 99 Foo 2026"):
        assert parse_retry_after(bad, now) is None


# ------------------------------------------------------------------ bodies
def _event(event_id: int, event_type: str, data: dict[str, Any],
           rollout: dict[str, Any] | None = ROLLOUT, at: datetime = AT) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "at": at, "rollout": rollout, "data": data}


def test_envelope_of_one_event() -> None:
    body = envelope([_event(41, "approval.required", {"wave": 2})], attempt=3)
    assert body == {
        "id": "41", "type": "approval.required", "at": "2026-11-30T07:30:00Z",
        "rollout": ROLLOUT, "data": {"wave": 2}, "delivery": {"attempt": 3},
    }
    json.dumps(body)  # serialisable as it is
    ping = envelope([_event(5, "ping", {"webhook": "ops"}, rollout=None)], attempt=1)
    assert ping["rollout"] is None


def _failure(n: int, appliance: str | None = None) -> dict[str, Any]:
    return {"task_id": 100 + n, "appliance": appliance or f"vr-{n:02d}", "site": "paris",
            "state": "FAILED" if n % 2 else "TIMED_OUT", "error_code": f"E{n}",
            "message": f"install failed ({n})", "wave": 1}


def test_a_task_failed_batch_is_one_body_listing_every_failure() -> None:
    events = [_event(10 + n, "task.failed", _failure(n), at=AT + timedelta(seconds=n))
              for n in range(5)]
    body = envelope(events, attempt=1)
    assert body["id"] == "10" and body["type"] == "task.failed"
    assert body["at"] == "2026-11-30T07:30:00Z"
    assert body["rollout"] == ROLLOUT
    assert body["data"]["count"] == 5
    failures = body["data"]["failures"]
    assert [f["appliance"] for f in failures] == [f"vr-{n:02d}" for n in range(5)]
    assert failures[3] == {**_failure(3), "at": "2026-11-30T07:30:03Z", "rollout": ROLLOUT}


def test_a_batch_across_rollouts_names_each_failures_rollout() -> None:
    other = {"id": 13, "name": "hotfix", "target_version": "5.2.2"}
    body = envelope([_event(1, "task.failed", _failure(1)),
                     _event(2, "task.failed", _failure(2), rollout=other)], attempt=1)
    assert body["rollout"] is None
    assert [f["rollout"]["id"] for f in body["data"]["failures"]] == [12, 13]


def test_only_task_failed_is_batched() -> None:
    with pytest.raises(ValueError, match=r"only task\.failed"):
        envelope([_event(1, "wave.started", {}), _event(2, "wave.started", {})], attempt=1)


# one example of every event type's data (as docs/notifications.md shows them), and what
# its Slack line must say
SLACK_EXAMPLES: dict[str, tuple[dict[str, Any], list[str]]] = {
    "rollout.started": ({"reason": "started by alice", "waves": 3, "appliances": 300},
                        ["started (300 appliances in 3 waves)"]),
    "rollout.scheduled": ({"schedule_at": "2026-12-01T01:00:00+00:00", "by": "alice"},
                          ["scheduled to start at 2026-12-01T01:00:00+00:00 by alice"]),
    "wave.started": ({"wave": 1, "last_wave": 2, "size": 30,
                      "requires_approval_after": True}, ["wave 1 started (30 appliances)"]),
    "wave.finished": ({"wave": 1, "last_wave": 2, "size": 30, "state": "FAILED",
                       "counts": {"SUCCEEDED": 29, "FAILED": 1}},
                      ["wave 1 finished FAILED: 29 succeeded, 1 failed"]),
    "approval.required": ({"wave": 1, "next_wave": 2, "reason": "wave 1 done",
                           "counts": {"PENDING": 265, "SUCCEEDED": 35},
                           "approve": "orchestrator rollout approve 12"},
                          ["wave 2 awaits approval"]),
    "rollout.paused": ({"by": "alice", "from_state": "RUNNING", "in_flight": 12},
                       ["paused by alice"]),
    "rollout.resumed": ({"by": "bob"}, ["resumed by bob"]),
    "policy.tripped": ({"wave": 2, "reason": "3 of 10 executed tasks failed, more than "
                        "max_failures 2", "cancelled": 250, "in_flight": 6,
                        "counts": {"FAILED": 3, "SUCCEEDED": 7},
                        "failed": [{"appliance": f"vr-0{n}", "error_code": "E"}
                                   for n in (1, 2, 3)]},
                       ["failure policy tripped: 3 of 10 executed tasks failed",
                        "failed: vr-01, vr-02, vr-03"]),
    "window.closed": ({"started": True, "pending": 12, "cancelled": 0,
                       "next_opening": "2026-12-01T22:00:00+00:00"},
                      ["window closed", "12 appliance(s) left", "2026-12-01T22:00:00"]),
    "rollout.finished": ({"state": "SUCCEEDED", "reason": None,
                          "counts": {"SUCCEEDED": 98, "FAILED": 2}, "in_flight": 0,
                          "reports": {"json": "/api/v1/rollouts/12/report?format=json"}},
                         ["finished SUCCEEDED: 98 succeeded, 2 failed"]),
    "task.failed": ({}, ["2 task(s) failed", "vr-01 (E1)", "vr-02 (E2)"]),
    "ping": ({"webhook": "ops", "requested_by": "alice"}, ["ping", "ops", "alice"]),
}


def test_policy_tripped_with_bare_figures() -> None:
    body = envelope([_event(1, "policy.tripped", {"failed": 3, "total": 10})], attempt=1)
    assert "failure policy tripped: 3 of 10 failed" in slack_message(body)["text"]


def test_every_event_type_has_a_slack_example() -> None:
    assert set(SLACK_EXAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(SLACK_EXAMPLES))
def test_slack_message_of_every_type(event_type: str) -> None:
    data, expected = SLACK_EXAMPLES[event_type]
    rollout = None if event_type == "ping" else ROLLOUT
    if event_type == "task.failed":
        events = [_event(1, event_type, _failure(1)), _event(2, event_type, _failure(2))]
    else:
        events = [_event(1, event_type, data, rollout=rollout)]
    message = slack_message(envelope(events, attempt=1))
    assert list(message) == ["text"]
    text = message["text"]
    assert "\n" not in text and len(text) < 400
    for part in expected:
        assert part in text, f"{part!r} not in {text!r}"
    if rollout is not None:
        assert "spring-update" in text and "#12" in text and "5.2.1" in text


@pytest.mark.parametrize("event_type", [*EVENT_TYPES, "something.new"])
@pytest.mark.parametrize("data", [{}, {"wave": None, "counts": "odd", "failures": 3,
                                       "state": ["x"], "by": {"a": 1}}])
def test_slack_message_survives_missing_and_odd_fields(event_type: str,
                                                       data: dict[str, Any]) -> None:
    body = {"id": "1", "type": event_type, "at": None, "rollout": None, "data": data}
    text = slack_message(body)["text"]
    assert text and "\n" not in text
    assert slack_message({})["text"]


def test_slack_text_is_one_escaped_line_and_names_few_appliances() -> None:
    events = [_event(n, "task.failed", _failure(n, appliance=f"<vr&{n}>\nx"))
              for n in range(12)]
    text = slack_message(envelope(events, attempt=1))["text"]
    assert "\n" not in text and "<" not in text and "&lt;vr&amp;0&gt; x" in text
    assert "12 task(s) failed" in text and "and 7 more" in text


# ------------------------------------------------------------------ secrets, settings
def test_resolve_secret_follows_the_credentials_rules(tmp_path: Any) -> None:
    env = {"APPLIANCE_HOOK": "  the-secret:with:colons \n", "ORCHESTRATOR_DATABASE_URL": "x",
           "OTHER_HOOK": "s"}
    policy = TargetPolicy(secrets_dir=str(tmp_path))
    assert resolve_secret("env:APPLIANCE_HOOK", environ=env, policy=policy) == \
        "the-secret:with:colons"
    (tmp_path / "hook").write_text("file-secret\nsecond line\n")
    assert resolve_secret(f"file:{tmp_path}/hook", policy=policy) == "file-secret"
    for ref, reason in (("env:OTHER_HOOK", "prefix APPLIANCE_"),
                        ("env:ORCHESTRATOR_DATABASE_URL", "orchestrator's own settings"),
                        ("env:APPLIANCE_MISSING", "is not set"),
                        ("file:/etc/passwd", "outside"),
                        ("http://x", "env:VARIABLE")):
        with pytest.raises(CredentialsError) as info:
            resolve_secret(ref, environ=env, policy=policy)
        assert reason in str(info.value) and "secret reference" in str(info.value)
        assert "the-secret" not in str(info.value)


def test_webhook_settings_and_the_notifier_config(tmp_path: Any) -> None:
    settings = load_settings(None, environ={"ORCHESTRATOR_WEBHOOK_CONCURRENCY": "3",
                                            "ORCHESTRATOR_WEBHOOK_REQUEST_TIMEOUT": "30",
                                            "ORCHESTRATOR_WEBHOOK_LEASE_SECONDS": "90",
                                            "ORCHESTRATOR_WEBHOOK_MAX_AGE": "3600"})
    config = NotifierConfig.from_settings(settings)
    assert config.concurrency == 3 and config.request_timeout == 30
    assert config.max_age_seconds == 3600 and config.lease == 90
    assert config.policy.env_prefix == settings.appliance_credentials_env_prefix
    for env, key in (({"ORCHESTRATOR_WEBHOOK_CONCURRENCY": "0"}, "webhook_concurrency"),
                     ({"ORCHESTRATOR_WEBHOOK_BACKOFF_BASE": "10",
                       "ORCHESTRATOR_WEBHOOK_BACKOFF_CAP": "5"}, "webhook_backoff_cap"),
                     ({"ORCHESTRATOR_WEBHOOK_MAX_ATTEMPTS": "0"}, "webhook_max_attempts"),
                     ({"ORCHESTRATOR_WEBHOOK_REQUEST_TIMEOUT": "100"},
                      "webhook_lease_seconds")):
        with pytest.raises(SettingsError, match=key):
            load_settings(None, environ=env)
    with pytest.raises(ValueError, match="lease_seconds"):
        NotifierConfig(lease_seconds=10, request_timeout=10)
    assert NotifierConfig(lease_seconds=5, request_timeout=3).lease == 5
    assert NotifierConfig(request_timeout=60).lease == 240
    assert NotifierConfig().lease == 60


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com"),
    ("http://127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080"),
    ("https://[::1]:9/x", "https://[::1]:9"),
])
def test_logged_urls_show_only_scheme_and_host(url: str, shown: str) -> None:
    assert shown_url(url) == shown
