"""What an appliance error tells a runner: how an install POST ended, whether a restart
shows.

Pure functions over the appliance client's typed errors (`orchestrator.appliance`), in
the vocabulary of `domain.outcome` (`Answer`). They read no runner state, so they live
here as plain functions rather than in `TaskRunner` (engine/runner.py), which calls them
when it acts on an answer.
"""

from __future__ import annotations

from orchestrator.appliance import (
    ApplianceError,
    ApplianceTimeout,
    BadRequest,
    Forbidden,
    MalformedResponse,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    Unreachable,
)
from orchestrator.domain.outcome import Answer


def signals_restart(exc: ApplianceError) -> bool:
    """Whether an error looks like the appliance restarting (not a passing 5xx or a slow
    answer): refused or reset connections, connect timeouts, 503, a session it forgot."""
    return isinstance(exc, Unreachable | ApplianceTimeout | ServiceUnavailable | Unauthorized)


def answer_of(exc: ApplianceError) -> Answer:
    """How an install POST that raised `exc` ended (see `outcome.Answer`)."""
    if isinstance(exc, Unauthorized):
        return Answer.UNAUTHORIZED
    if isinstance(exc, Forbidden):
        return Answer.FORBIDDEN
    if isinstance(exc, NotFound):
        return Answer.NOT_FOUND
    if isinstance(exc, BadRequest):
        return Answer.IN_PROGRESS if says_in_progress(exc) else Answer.BAD_REQUEST
    if isinstance(exc, ServiceUnavailable):
        return Answer.UNAVAILABLE
    if isinstance(exc, MalformedResponse) and exc.status is not None \
            and 200 <= exc.status < 300:
        return Answer.OK  # any 2xx is acceptance, whatever its body
    if not exc.request_sent:
        return Answer.NOT_SENT
    if isinstance(exc, Unreachable | ApplianceTimeout):
        return Answer.NO_ANSWER
    return Answer.SERVER_ERROR


def says_in_progress(exc: BadRequest) -> bool:
    """Whether a 400 says that an update is being installed already. Error codes are not
    documented: read both the code and the message; a miss only costs a later retry."""
    text = f"{exc.error_code or ''} {exc.message or ''}".lower()
    return "progress" in text or "running" in text or "busy" in text
