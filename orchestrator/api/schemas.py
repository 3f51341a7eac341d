"""The response components of the OpenAPI document, by name: the JSON Schemas of the
response models of api/responses.py (one class per shape; a new shape is a class there,
listed in its RESPONSE_MODELS, never a schema written here)."""

from __future__ import annotations

from typing import Any, Final

from orchestrator.api.responses import component_schemas
from orchestrator.domain.states import RolloutState, TaskState

# the enums of the `state` query parameters (a list filters by these)
ROLLOUT_STATES: Final = [str(s) for s in RolloutState]
TASK_STATES: Final = [str(s) for s in TaskState]

SCHEMAS: Final[dict[str, dict[str, Any]]] = component_schemas()


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}
