"""Every exception the orchestrator defines derives from `OrchestratorError`, and the
database-error tuples keep their members."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import asyncpg
import pytest

import orchestrator
from orchestrator.api.problems import problem_middleware
from orchestrator.domain.errors import OrchestratorError
from orchestrator.store import db

# The simulator is a program of its own that imports nothing of the orchestrator: its
# errors (SimulatorConfigError, FaultProfileError) stay outside.
SKIPPED_PACKAGES = ("orchestrator.simulator",)

# Exception classes of the package that must stay outside `OrchestratorError`, each with
# its reason. None today.
ALLOWED_OUTSIDE: frozenset[str] = frozenset()


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        if any(info.name == p or info.name.startswith(p + ".") for p in SKIPPED_PACKAGES):
            continue
        names.append(info.name)
    return names


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in _modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                obj.__module__.startswith("orchestrator.")
                and not obj.__module__.startswith(SKIPPED_PACKAGES)
                and issubclass(obj, BaseException)
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_the_walk_finds_the_known_families() -> None:
    found = _exception_classes()
    # the walk reaches every layer (a walk that found nothing would pass the next test)
    for name in (
        "orchestrator.appliance.errors.ApplianceError",
        "orchestrator.store.rollouts.RolloutError",
        "orchestrator.domain.strategy.StrategyError",
        "orchestrator.engine.runner.TaskLost",
        "orchestrator.api.problems.Problem",
        "orchestrator.cli.common.CommandError",
        "orchestrator.settings.SettingsError",
    ):
        assert name in found
    assert len(found) >= 45


def test_every_exception_of_the_orchestrator_derives_from_orchestrator_error() -> None:
    outside = sorted(
        name for name, cls in _exception_classes().items()
        if not issubclass(cls, OrchestratorError) and name not in ALLOWED_OUTSIDE
    )
    assert outside == [], f"not derived from OrchestratorError: {outside}"


@pytest.mark.parametrize(
    ("name", "other_base"),
    [
        ("orchestrator.domain.strategy.StrategyError", ValueError),
        ("orchestrator.domain.selector.SelectorError", ValueError),
        ("orchestrator.domain.windows.WindowError", ValueError),
        ("orchestrator.appliance.guard.TargetRefused", ValueError),
        ("orchestrator.engine.failpoints.FailpointSpecError", ValueError),
        ("orchestrator.reports.render.ReportFormatError", ValueError),
        ("orchestrator.store.embedded.EmbeddedPostgresError", RuntimeError),
        ("orchestrator.store.migrations.MigrationError", RuntimeError),
        ("orchestrator.store.db.AcquireTimeout", TimeoutError),
    ],
)
def test_the_other_bases_are_kept(name: str, other_base: type[BaseException]) -> None:
    assert issubclass(_exception_classes()[name], other_base)


def test_the_simulator_stays_outside() -> None:
    from orchestrator.simulator.config import SimulatorConfigError
    from orchestrator.simulator.faults import FaultProfileError

    assert not issubclass(SimulatorConfigError, OrchestratorError)
    assert not issubclass(FaultProfileError, OrchestratorError)


def _members(errors: tuple[type[BaseException], ...]) -> set[type[BaseException]]:
    return set(errors)


def test_db_transient_is_what_the_engine_retried() -> None:
    assert _members(db.DB_TRANSIENT) == {
        OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
        asyncpg.exceptions.OperatorInterventionError,
        asyncpg.exceptions._base.InternalClientError,
        asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError,
    }


def test_db_unavailable_is_what_the_api_answered_503() -> None:
    assert _members(db.DB_UNAVAILABLE) == {
        OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
        asyncpg.QueryCanceledError,
    }
    # a deadlock or a serialization failure is retried by the engine but stays a 500 in
    # the API; too many connections is a 503 but not retried by the engine
    assert not issubclass(asyncpg.exceptions.DeadlockDetectedError, db.DB_UNAVAILABLE)
    assert not issubclass(asyncpg.TooManyConnectionsError, db.DB_TRANSIENT)


def test_db_errors_cover_every_database_failure() -> None:
    for exc in (asyncpg.PostgresError, asyncpg.InterfaceError, OSError,
                asyncpg.exceptions._base.InternalClientError, *db.DB_TRANSIENT,
                *db.DB_UNAVAILABLE):
        assert issubclass(exc, db.DB_ERRORS)
    assert not issubclass(OrchestratorError, db.DB_ERRORS)


def test_the_api_middleware_uses_the_one_definition() -> None:
    assert problem_middleware.__globals__["DB_UNAVAILABLE"] is db.DB_UNAVAILABLE
