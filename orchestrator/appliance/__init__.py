"""Client of the appliance configuration REST API (sessions, install, tasks, typed errors).

See `client.py` for the session and retry rules, `http.py` for the shared transport. This
package imports nothing from the engine, the store or the REST API.
"""

from orchestrator.appliance.client import SESSION_HEADER, ApplianceClient
from orchestrator.appliance.credentials import (
    Credentials,
    CredentialsError,
    parse_credentials,
    resolve_credentials,
)
from orchestrator.appliance.errors import (
    ApplianceError,
    ApplianceHttpError,
    ApplianceTimeout,
    BadRequest,
    Forbidden,
    MalformedResponse,
    NotFound,
    ServerError,
    ServiceUnavailable,
    TlsError,
    Unauthorized,
    Unreachable,
)
from orchestrator.appliance.http import ApplianceHttp, ApplianceTarget
from orchestrator.appliance.models import (
    ApplianceInfo,
    Service,
    Task,
    TaskStatus,
    UpdateInfo,
    parse_appliance,
    parse_service,
    parse_task,
    parse_time,
    parse_updates,
)

__all__ = [
    "SESSION_HEADER",
    "ApplianceClient",
    "ApplianceError",
    "ApplianceHttp",
    "ApplianceHttpError",
    "ApplianceInfo",
    "ApplianceTarget",
    "ApplianceTimeout",
    "BadRequest",
    "Credentials",
    "CredentialsError",
    "Forbidden",
    "MalformedResponse",
    "NotFound",
    "ServerError",
    "Service",
    "ServiceUnavailable",
    "Task",
    "TaskStatus",
    "TlsError",
    "Unauthorized",
    "Unreachable",
    "UpdateInfo",
    "parse_appliance",
    "parse_credentials",
    "parse_service",
    "parse_task",
    "parse_time",
    "parse_updates",
    "resolve_credentials",
]
