"""The target policy applied again when a client is built: stored rows are not trusted.

The inventory checks every row at import and at the API's create and update
(`domain/inventory.py`). The engine (`engine/runner.py`, `engine/held.py`) builds its
clients through `guarded_client`, which checks the stored `base_url` and
`credentials_ref` against the settings' policy once more (a row written before the rules
existed, by hand in SQL, or under looser settings is refused) and resolves the
credentials under the same policy (a file's real path must lie inside the secrets
directory) before anything is sent.
"""

from __future__ import annotations

from orchestrator.appliance.client import ApplianceClient
from orchestrator.appliance.credentials import resolve_credentials
from orchestrator.appliance.http import ApplianceHttp, ApplianceTarget
from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import TargetPolicy, check_base_url


class TargetRefused(OrchestratorError, ValueError):
    """The stored base_url of an appliance breaks the target policy: nothing is sent."""


def guarded_client(
    http: ApplianceHttp, target: ApplianceTarget, policy: TargetPolicy
) -> ApplianceClient:
    """The client of `target` once its base_url and credentials pass `policy`.

    Raises TargetRefused (the base_url) or CredentialsError (the reference or its
    secret); neither message holds the secret."""
    try:
        check_base_url(target.base_url, policy)
    except ValueError as exc:
        raise TargetRefused(f"appliance {target.name!r}: {exc}") from None
    credentials = resolve_credentials(
        target.credentials_ref, environ=http.environ, default=http.default_credentials,
        policy=policy,
    )
    return http.client(target, credentials)


__all__ = ["TargetRefused", "guarded_client"]
