"""Typed errors of the appliance API client.

Every error is an `ApplianceError` carrying the appliance's name (`appliance`), a short
`kind` string for metrics, the operation that failed (`op`, e.g. "install of 9.0.1") and,
when the appliance answered, the HTTP `status`. Errors built from a ResponseError body
(`{"error_code", "message", "op_id"}`) carry those three fields too.

Messages are one short human line, e.g.
`sim-00001: install of 9.0.1 refused (400 UPDATE_ALREADY_INSTALLED: already installed)`.
They never contain credentials, session ids or request headers: the client builds them
only from the appliance name, the operation, the status and the appliance's own
error_code/message.

`transient` is True for failures worth trying again later (the appliance was unreachable,
did not answer in time, or answered 5xx). Whether it is *safe* to repeat a call is another
matter: see `ApplianceClient.install`.
"""

from __future__ import annotations

from orchestrator.domain.errors import OrchestratorError

_MAX_TEXT = 300


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."


class ApplianceError(OrchestratorError):
    """Base class of every error raised by the appliance client."""

    kind: str = "error"
    _transient: bool = False

    def __init__(
        self,
        appliance: str,
        message: str,
        *,
        op: str | None = None,
        status: int | None = None,
        request_sent: bool = True,
    ) -> None:
        super().__init__(f"{appliance}: {message}")
        self.appliance = appliance
        self.detail = message  # the message without the appliance name
        self.op = op
        self.status = status
        # False only when the request certainly never left this process (the connection
        # could not be opened): such a failure is safe to retry even for an install.
        self.request_sent = request_sent

    @property
    def transient(self) -> bool:
        """True for failures worth trying again (unreachable, timeout, 5xx)."""
        return self._transient


class Unreachable(ApplianceError):
    """Connection refused, reset or closed, DNS failure, server disconnected."""

    kind = "unreachable"
    _transient = True


class ApplianceTimeout(ApplianceError):
    """The connection or the whole call took longer than its timeout."""

    kind = "timeout"
    _transient = True


class TlsError(ApplianceError):
    """Certificate verification failed or the certificate thumbprint does not match."""

    kind = "tls"


class MalformedResponse(ApplianceError):
    """The body is not JSON, or lacks (or mistypes) a field the caller needs."""

    kind = "malformed_response"


class ApplianceHttpError(ApplianceError):
    """The appliance answered with an error status (`status`); the fields of a
    ResponseError body, when it had one, are in `error_code`, `message`, `op_id`."""

    status: int

    def __init__(
        self,
        appliance: str,
        message: str,
        *,
        op: str | None = None,
        status: int,
        error_code: str | None = None,
        error_message: str | None = None,
        op_id: str | None = None,
    ) -> None:
        super().__init__(appliance, message, op=op, status=status)
        self.error_code = error_code
        # the appliance's own message (ResponseError.message); str(exc) is the full line
        self.message = error_message
        self.op_id = op_id


class Unauthorized(ApplianceHttpError):
    """401: wrong credentials, or the session was refused again right after a re-login."""

    kind = "unauthorized"


class Forbidden(ApplianceHttpError):
    """403: the user lacks the rights for this call."""

    kind = "forbidden"


class NotFound(ApplianceHttpError):
    """404: unknown update version, task id (tasks are lost on reboot) or service."""

    kind = "not_found"


class BadRequest(ApplianceHttpError):
    """400 (and any other 4xx without a class of its own; see `status`)."""

    kind = "bad_request"


class ServerError(ApplianceHttpError):
    """5xx."""

    kind = "server_error"
    _transient = True


class ServiceUnavailable(ServerError):
    """503: typically the appliance's services are restarting."""

    kind = "service_unavailable"


def response_error(
    cls: type[ApplianceHttpError],
    appliance: str,
    op: str,
    status: int,
    what: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    op_id: str | None = None,
) -> ApplianceHttpError:
    """Build `<op> <what> (<status> <error_code>: <message>)` errors."""
    error_message = _short(error_message)
    detail = str(status)
    if error_code:
        detail += f" {_short(error_code)}"
    if error_message:
        detail += f": {error_message}"
    return cls(
        appliance,
        f"{op} {what} ({detail})",
        op=op,
        status=status,
        error_code=error_code,
        error_message=error_message,
        op_id=op_id,
    )


__all__ = [
    "ApplianceError",
    "ApplianceHttpError",
    "ApplianceTimeout",
    "BadRequest",
    "Forbidden",
    "MalformedResponse",
    "NotFound",
    "ServerError",
    "ServiceUnavailable",
    "TlsError",
    "Unauthorized",
    "Unreachable",
]
