from __future__ import annotations

import io
import json

import structlog

from orchestrator.logs import REDACTED, bind_context, configure_logging, get_logger


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_when_not_a_terminal_with_bound_context() -> None:
    out = io.StringIO()
    configure_logging("auto", "info", stream=out)
    log = get_logger()
    with bind_context(rollout=7, task=42, appliance="sim-00001"):
        log.info("install accepted", remote_task_id="t-1")
    log.info("outside")
    first, second = _lines(out)
    assert first["event"] == "install accepted"
    assert (first["rollout"], first["task"], first["appliance"]) == (7, 42, "sim-00001")
    assert "rollout" not in second
    assert first["level"] == "info" and "timestamp" in first


def test_secrets_redacted() -> None:
    out = io.StringIO()
    configure_logging("json", "debug", stream=out)
    get_logger().info(
        "login",
        password="hunter2",
        token="abc",
        Authorization="Basic YWRtaW46aHVudGVyMg==",
        session_id="s3cr3t",
        headers={"x-dr-session": "s3cr3t", "accept": "json"},
        url="postgresql://u:hunter2@db/x",
        note="sent Basic YWRtaW46aHVudGVyMg== to host",
        credentials_ref="env:APPLIANCE_CREDENTIALS",
    )
    text = out.getvalue()
    for secret in ("hunter2", "abc\"", "s3cr3t", "YWRtaW46aHVudGVyMg"):
        assert secret not in text
    (line,) = _lines(out)
    assert line["password"] == REDACTED
    assert line["headers"] == {"x-dr-session": REDACTED, "accept": "json"}
    assert line["url"] == f"postgresql://u:{REDACTED}@db/x"
    assert line["credentials_ref"] == "env:APPLIANCE_CREDENTIALS"


def test_console_format_is_readable() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    get_logger().info("hello", appliance="a1", password="pw")
    text = out.getvalue()
    assert "hello" in text and "a1" in text and "pw'" not in text and "=pw" not in text
    structlog.reset_defaults()


def test_level_filter() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    get_logger().info("quiet")
    get_logger().warning("loud")
    assert [line["event"] for line in _lines(out)] == ["loud"]
