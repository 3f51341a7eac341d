"""The simulator's configuration: fleet shape, timings, inferred behaviours, faults."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from orchestrator.simulator.faults import FaultProfile

RebootMode = Literal["drop", "503"]
TaskAfterReboot = Literal["lost", "kept"]
ServicesStartingMode = Literal["not_running", "503"]
DuplicateInstall = Literal["reject", "accept"]

REBOOT_MODES: tuple[str, ...] = ("drop", "503")
TASK_AFTER_REBOOT: tuple[str, ...] = ("lost", "kept")
SERVICES_STARTING_MODES: tuple[str, ...] = ("not_running", "503")
DUPLICATE_INSTALL: tuple[str, ...] = ("reject", "accept")

API_PREFIX = "/api/rest/configure/v1"


class SimulatorConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the simulated fleet does. `SimulatorConfig()` is a small, quick fleet.

    Durations are floats in seconds, so tests can use sub-second timings.
    """

    appliances: int = 20
    sites: int = 2
    seed: int = 0
    # --- install lifecycle -------------------------------------------------------------
    queued_seconds: float = 0.1
    """An install task is QUEUED this long, then RUNNING."""
    install_seconds: float = 10.0
    """Mean RUNNING time of an install."""
    install_jitter: float = 0.2
    """Each install runs install_seconds * (1 +- jitter), uniform, seeded per appliance."""
    reboot_required: bool = True
    """Whether the offered updates reboot the appliance (False: version switches in place)."""
    reboot_seconds: float = 5.0
    reboot_mode: RebootMode = "drop"
    """During a reboot: `drop` closes connections without an answer; `503` answers 503."""
    task_after_reboot: TaskAfterReboot = "lost"
    """After a reboot the old task id answers 404 (`lost`) or keeps SUCCESS (`kept`)."""
    services_starting_seconds: float = 2.0
    services_starting_mode: ServicesStartingMode = "not_running"
    """After a reboot: key services report is_running false (`not_running`) or the whole
    API answers 503 (`503`) for services_starting_seconds."""
    retrieve_seconds: float = 0.2
    """How long a retrieve-updates task runs before SUCCESS."""
    duplicate_install: DuplicateInstall = "reject"
    """`reject`: install while one runs -> 400 UPDATE_IN_PROGRESS, install of the installed
    version -> 400 UPDATE_ALREADY_INSTALLED. `accept`: both accepted (and counted as
    duplicate_installs), to model appliances that do not guard against it."""
    reconfigure_fraction: float = 0.0
    """Fraction of successful upgrades after which reconfigure-required answers true."""
    # --- identity ------------------------------------------------------------------------
    username: str = "admin"
    password: str = field(default="admin", repr=False)
    initial_version: str = "9.0.0-10010"
    available_versions: tuple[str, ...] = ("9.0.1-20020",)
    product_name: str = "vSphere Replication Appliance"
    # --- limits ----------------------------------------------------------------------------
    max_sessions_per_appliance: int = 64
    max_tasks_per_appliance: int = 64
    # --- faults ----------------------------------------------------------------------------
    profile: FaultProfile = field(default_factory=FaultProfile)

    def __post_init__(self) -> None:
        if isinstance(self.available_versions, str):
            object.__setattr__(self, "available_versions", (self.available_versions,))
        else:
            object.__setattr__(self, "available_versions", tuple(self.available_versions))
        if self.appliances < 1:
            raise SimulatorConfigError(f"appliances: must be >= 1, got {self.appliances}")
        if self.sites < 1:
            raise SimulatorConfigError(f"sites: must be >= 1, got {self.sites}")
        for name in ("queued_seconds", "install_seconds", "reboot_seconds",
                     "services_starting_seconds", "retrieve_seconds"):
            if getattr(self, name) < 0:
                raise SimulatorConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.install_jitter <= 1.0:
            raise SimulatorConfigError(
                f"install_jitter: must be between 0 and 1, got {self.install_jitter}")
        if not 0.0 <= self.reconfigure_fraction <= 1.0:
            raise SimulatorConfigError(
                f"reconfigure_fraction: must be between 0 and 1, got {self.reconfigure_fraction}")
        choices: dict[str, tuple[str, ...]] = {
            "reboot_mode": REBOOT_MODES,
            "task_after_reboot": TASK_AFTER_REBOOT,
            "services_starting_mode": SERVICES_STARTING_MODES,
            "duplicate_install": DUPLICATE_INSTALL,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SimulatorConfigError(
                    f"{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        if not self.username or ":" in self.username:
            raise SimulatorConfigError("username: must be non-empty, without ':'")
        if not self.password:
            raise SimulatorConfigError("password: must be non-empty")
        if not self.initial_version:
            raise SimulatorConfigError("initial_version: must be non-empty")
        if any(not v or "/" in v for v in self.available_versions):
            raise SimulatorConfigError("available_versions: versions must be non-empty, no '/'")
        if self.max_sessions_per_appliance < 1 or self.max_tasks_per_appliance < 1:
            raise SimulatorConfigError("max_sessions/tasks_per_appliance: must be >= 1")
        if not isinstance(self.profile, FaultProfile):
            raise SimulatorConfigError("profile: expected a FaultProfile")
        known = {self.site_name(i) for i in range(min(self.sites, self.appliances))}
        unknown = sorted(set(self.profile.site_rates) - known)
        if unknown:
            raise SimulatorConfigError(
                f"profile site_rates: no site {unknown[0]!r} in this fleet (its sites are "
                f"{self.site_name(0)} .. {self.site_name(min(self.sites, self.appliances) - 1)})"
            )

    def with_changes(self, **changes: Any) -> SimulatorConfig:
        return replace(self, **changes)

    def appliance_name(self, index: int) -> str:
        """The name of appliance `index` (0-based): sim-00001, sim-00002, ..."""
        return f"sim-{index + 1:05d}"

    def site_name(self, index: int) -> str:
        """The site of appliance `index` (0-based): round-robin over site-01 .. site-SS."""
        return f"site-{index % self.sites + 1:02d}"
