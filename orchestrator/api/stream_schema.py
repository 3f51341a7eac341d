"""The documented schema of one event of `GET /api/v1/rollouts/{id}/events` (api/events.py).

OpenAPI 3.1 has no keyword for the items of a stream; 3.2 describes a text/event-stream
answer by its `itemSchema`: one event as an SSE parser hands it over, an object with
`event`, `data`, `id` (and `retry`). Tools that read 3.1 documents (schemathesis among
them) take the media type's `schema` of a text/event-stream answer as that per-event schema,
so the document gives it there: a `oneOf` over the four event types, each `data` a JSON text
(`contentMediaType: application/json`) whose `contentSchema` is its object. Comments
(`: keep-alive`) and the opening `retry:` line carry no data: they are no events.

An SSE parser keeps the last `id:` it saw for every later event (the Last-Event-ID it sends
when it reconnects), so `id` may appear on every event; `event: task` always has its own.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.api.schemas import ref
from orchestrator.domain.states import TERMINAL_ROLLOUT_STATES

TerminalState = Literal["SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED"]
if set(get_args(TerminalState)) != {str(s) for s in TERMINAL_ROLLOUT_STATES}:
    raise AssertionError("TerminalState must list domain.states.TERMINAL_ROLLOUT_STATES")


class StreamEnd(BaseModel):
    """`event: end` data: the rollout is terminal, nothing is in flight and every event was
    sent; the server closes the stream."""

    model_config = ConfigDict(extra="forbid")
    rollout: int
    state: TerminalState
    last_event_id: int = Field(description="The id of the last `event: task` sent (0: none).")


class StreamUnauthorized(BaseModel):
    """`event: unauthorized` data: the token was revoked or expired while the stream was
    open; the server closes the stream (a reconnection gets 401)."""

    model_config = ConfigDict(extra="forbid")
    detail: str
    last_event_id: int = Field(description="Resume after this id with a valid token.")


def _data(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _event(name: str, data: dict[str, Any], description: str, *,
           own_id: bool = False) -> dict[str, Any]:
    required = ["event", "data", "id"] if own_id else ["event", "data"]
    return {
        "type": "object", "title": f"event: {name}", "description": description,
        "required": required, "additionalProperties": False,
        "properties": {
            "event": {"const": name},
            "id": {"type": "string", "pattern": "^[0-9]{1,19}$", "description": (
                "The task_events id of this transition." if own_id else
                "The id of the last `event: task` before it, if any (SSE keeps it).")},
            "retry": {"type": "integer", "minimum": 0},
            "data": _data(data),
        },
    }


def _inline(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


STREAM_EVENT: Final[dict[str, Any]] = {
    "description": "One server-sent event, as an SSE parser gives it (`event`, `data`, "
                   "`id`): the per-event schema of the stream (OpenAPI 3.2's itemSchema).",
    "oneOf": [
        _event("task", ref("TaskEvent"), "One task transition, in id order, each once.",
               own_id=True),
        _event("progress", ref("Progress"), "The rollout's state, task counts and pace: "
               "first, after each batch of transitions and when the state changes."),
        _event("end", _inline(StreamEnd), "The last event of a finished rollout."),
        _event("unauthorized", _inline(StreamUnauthorized),
               "The token no longer works: the last event."),
    ],
}
