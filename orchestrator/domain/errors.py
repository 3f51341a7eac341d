"""The one base of the orchestrator's own exceptions.

Lives in the domain layer, which imports nothing else of the project, so that every layer
(domain, store, appliance, engine, reports, API, CLI) can derive from it.
"""

from __future__ import annotations

__all__ = ["OrchestratorError"]


class OrchestratorError(Exception):
    """The base of every error the orchestrator raises on purpose: catching it catches them
    all (and nothing else: not a bug's `KeyError`, not a library's own error).

    Each family keeps its other bases (`ValueError`, `RuntimeError`, `TimeoutError`, ...),
    so that an `except` naming one of those still catches it. The families:

    - domain: `InvalidTransition`, `OperationNotAllowed` (states), `StrategyError`,
      `SelectorError`, `WindowError`, `TooManyRows` (inventory parsing);
    - settings and inventory: `SettingsError`, `InventoryError` (`InventoryFileError`);
    - store: `AcquireTimeout`, `MigrationError`, `EmbeddedPostgresError`, `RolloutError`
      (`RolloutNotFound`, `IdempotencyConflict`, `OverlapError`), `SiteError`
      (`SiteNotFound`), `TokenError` (`TokenExists`, `TokenNotFound`), `WindowStoreError`,
      `HostChangeError`;
    - appliance: `ApplianceError` (`Unreachable`, `ApplianceTimeout`, `TlsError`,
      `MalformedResponse`, `ApplianceHttpError` and its statuses), `CredentialsError`,
      `TargetRefused`;
    - engine: `EngineFailure`, `FailpointSpecError`, `InjectedFault` (a test's failpoint),
      and the runner's signals `TaskLost`, `DeadlinePassed`;
    - reports: `ReportFormatError`;
    - API: `Problem` (an HTTP error answer), `TlsError` (api.tls), `MetricsTokenError`,
      `ListenError`;
    - CLI: `CommandError`, `UsageError`.

    `tests/unit/test_errors.py` checks that every exception class of the package derives
    from it. The simulator (`orchestrator.simulator`) is a program of its own that imports
    nothing of the orchestrator: its errors stay outside.
    """
