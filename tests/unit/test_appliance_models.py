"""parse_task and friends: API 2.0 and 1.0.0 bodies, wrong types, arbitrary JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.appliance import (
    ApplianceError,
    MalformedResponse,
    Task,
    TaskStatus,
    parse_appliance,
    parse_service,
    parse_task,
    parse_time,
    parse_updates,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
TASK_KEYS = [
    "id",
    "status",
    "progress",
    "description",
    "type",
    "start_time",
    "complete_time",
    "error",
    "result",
]
time_like = (
    json_values
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.from_regex(r"\d{1,25}", fullmatch=True)
    | st.datetimes().map(lambda d: d.isoformat())
    | st.sampled_from(
        [
            "Wed Mar 06 12:34:56 UTC 2024",
            "Wed Feb 31 12:34:56 UTC 2024",
            "Tue, 15 Nov 1994 08:12:31 GMT",
            "2024-13-45",
            "9999-12-31T23:59:59-23:59",
            "0001-01-01T00:00:00+23:59",
        ]
    )
)
task_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "status": st.sampled_from([*TaskStatus.__members__, "paused", ""]) | json_values,
        "progress": json_values | st.from_regex(r"-?\d{1,30}(\.\d*)?", fullmatch=True),
        "description": json_values,
        "type": json_values,
        "start_time": time_like,
        "complete_time": time_like,
        "error": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                "message": json_values,
                "localized_message": json_values,
                "details": json_values,
                "cause": json_values,
                "stack_trace": json_values,
            },
        ),
        "result": json_values,
    },
)


def check_task(body: Any) -> None:
    try:
        task = parse_task(body, appliance="sim")
    except MalformedResponse as exc:
        assert exc.appliance == "sim"
        return
    assert isinstance(task, Task)
    assert isinstance(task.status, TaskStatus)
    assert task.progress is None or 0 <= task.progress <= 100
    for value in (task.start_time, task.complete_time):
        assert value is None or value.tzinfo is not None
    for text in (task.id, task.description, task.type, task.error_message, task.error_details):
        assert text is None or isinstance(text, str)
    assert task.result is None or isinstance(task.result, dict)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_parse_task_arbitrary_json_only_malformed(body: Any) -> None:
    check_task(body)


@settings(max_examples=400, deadline=None)
@given(task_like)
def test_parse_task_task_like_only_malformed(body: Any) -> None:
    check_task(body)
    # and through a JSON round trip (what the client really parses)
    try:
        text = json.dumps(body)
    except (ValueError, OverflowError):
        return
    check_task(json.loads(text))


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_other_parsers_only_malformed(body: Any) -> None:
    for parse in (parse_appliance, parse_service):
        try:
            parse(body, appliance="sim")
        except MalformedResponse:
            pass
    assert isinstance(parse_updates(body), list)
    parse_time(body)


@settings(max_examples=300, deadline=None)
@given(time_like)
def test_parse_time_never_raises(value: Any) -> None:
    result = parse_time(value)
    assert result is None or result.tzinfo is not None


def test_api_v2_task() -> None:
    task = parse_task(
        {
            "id": "t1",
            "description": "Install",
            "type": "INSTALL",
            "status": "SUCCESS",
            "progress": 100,
            "start_time": 1_700_000_000_000,
            "complete_time": 1_700_000_060_000,
            "error": None,
            "result": {"ok": True},
            "_meta": {"errors": []},
        }
    )
    assert task == Task(
        id="t1",
        status=TaskStatus.SUCCESS,
        progress=100,
        description="Install",
        type="INSTALL",
        start_time=datetime.fromtimestamp(1_700_000_000, UTC),
        complete_time=datetime.fromtimestamp(1_700_000_060, UTC),
        error_message=None,
        error_details=None,
        result={"ok": True},
    )
    assert task.status.is_terminal


def test_api_v2_error() -> None:
    task = parse_task(
        {"status": "ERROR", "error": {"message": "Disk full", "details": "/storage at 100%"}}
    )
    assert task.error_message == "Disk full"
    assert task.error_details == "/storage at 100%"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        ({"message": "Top", "localized_message": "Loc"}, "Top"),
        ({"message": None, "localized_message": "Localized"}, "Localized"),
        (
            {"message": "", "localized_message": "", "cause": {"message": "From cause"}},
            "From cause",
        ),
        ({"cause": {"cause": {"localized_message": "Deep"}}}, "Deep"),
        ({"stack_trace": [], "suppressed": []}, None),
        ("plain string error", "plain string error"),
    ],
)
def test_api_v1_java_exception(error: Any, message: str | None) -> None:
    task = parse_task({"status": "ERROR", "error": error})
    assert task.error_message == message


def test_api_v1_java_exception_details_from_causes() -> None:
    task = parse_task(
        {
            "status": "ERROR",
            "error": {
                "message": "Install failed",
                "localized_message": "Install failed",
                "stack_trace": [{"declaring_class": "com.vmware.X", "line_number": 10}],
                "cause": {"message": "Checksum mismatch", "cause": {"message": "IO error"}},
                "suppressed": [],
            },
        }
    )
    assert task.error_message == "Install failed"
    assert task.error_details == "caused by: Checksum mismatch; caused by: IO error"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_709_728_496_000, datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        ("1709728496000", datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        (1_709_728_496, datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),  # seconds
        ("2024-03-06T12:34:56Z", datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        ("2024-03-06T13:34:56+01:00", datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        ("2024-03-06T12:34:56.789", datetime(2024, 3, 6, 12, 34, 56, 789000, tzinfo=UTC)),
        ("2024-03-06 12:34:56", datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        ("Wed Mar 06 12:34:56 UTC 2024", datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        ("Wed, 06 Mar 2024 12:34:56 GMT", datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)),
        (0, None),
        ("0", None),
        (-5, None),
        (None, None),
        (True, None),
        ("soon", None),
        ("", None),
        (10**40, None),
        (float("nan"), None),
        ([], None),
    ],
)
def test_parse_time(value: Any, expected: datetime | None) -> None:
    assert parse_time(value) == expected


def test_api_v1_task_times_as_strings() -> None:
    task = parse_task(
        {
            "status": "SUCCESS",
            "start_time": "2024-03-06T12:00:00Z",
            "complete_time": "Wed Mar 06 12:34:56 UTC 2024",
        }
    )
    assert task.start_time == datetime(2024, 3, 6, 12, tzinfo=UTC)
    assert task.complete_time == datetime(2024, 3, 6, 12, 34, 56, tzinfo=UTC)


@pytest.mark.parametrize(
    ("progress", "expected"),
    [(50, 50), ("50", 50), ("fifty", None), (49.7, 49), (150, 100), (-3, 0), (True, None)],
)
def test_progress(progress: Any, expected: int | None) -> None:
    assert parse_task({"status": "RUNNING", "progress": progress}).progress == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("RUNNING", TaskStatus.RUNNING),
        ("success", TaskStatus.SUCCESS),
        ("WEIRD", TaskStatus.UNKNOWN),
    ],
)
def test_status(status: str, expected: TaskStatus) -> None:
    assert parse_task({"status": status}).status is expected


@pytest.mark.parametrize("body", [{"status": 7}, {}, {"status": None}, [], "RUNNING", None])
def test_status_is_required(body: Any) -> None:
    with pytest.raises(MalformedResponse) as info:
        parse_task(body, appliance="sim-00001")
    assert str(info.value).startswith("sim-00001: task")
    assert isinstance(info.value, ApplianceError)
    assert not info.value.transient


def test_result_list_is_wrapped() -> None:
    task = parse_task({"status": "SUCCESS", "result": [{"version": "9.0.1"}]})
    assert task.result == {"list": [{"version": "9.0.1"}]}


def test_parse_updates_shapes() -> None:
    entry = {
        "version": "9.0.1-20020",
        "type": "UPDATE",
        "release_date": "2024-03-01",
        "reboot_required": True,
        "severity": "critical",
        "summary": "Fixes",
    }
    for result in (
        [entry],
        {"list": [entry]},
        {"updates": [entry]},
        {"available_updates": [entry]},
    ):
        [update] = parse_updates(result)
        assert update.version == "9.0.1-20020"
        assert update.reboot_required is True
        assert update.severity == "critical"
    assert [u.version for u in parse_updates(["9.0.1", {"x": 1}, 5, {"name": "9.0.2"}])] == [
        "9.0.1",
        "9.0.2",
    ]
    assert parse_updates(None) == []
    assert parse_updates({"list": "x"}) == []


def test_parse_appliance() -> None:
    info = parse_appliance(
        {
            "hostname": "h",
            "product_name": "p",
            "product_build_number": 1,
            "appliance_version": " 9.0.0-10010 ",
            "appliance_build_number": "10010",
        }
    )
    assert info.appliance_version == "9.0.0-10010"
    assert info.product_build_number == "1"
    with pytest.raises(MalformedResponse):
        parse_appliance({"appliance_version": ""})


def test_parse_service() -> None:
    service = parse_service(
        {"id": "hms", "name": "HMS", "is_running": "true", "startup_type": "AUTO"}
    )
    assert service.is_running is True
    assert service.startup_type == "AUTO"
    with pytest.raises(MalformedResponse):
        parse_service({"id": None})
