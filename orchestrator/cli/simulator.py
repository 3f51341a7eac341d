"""Command line of the simulator: `orchestrator simulate ...` / `python -m orchestrator.simulator`.

Runs until SIGINT/SIGTERM. Prints one line with the URL; never prints the credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from typing import TYPE_CHECKING, Any

from orchestrator.simulator.config import (
    API_PREFIX,
    DUPLICATE_INSTALL,
    REBOOT_MODES,
    SERVICES_STARTING_MODES,
    TASK_AFTER_REBOOT,
    SimulatorConfig,
    SimulatorConfigError,
)
from orchestrator.simulator.faults import FAULTS, FaultParams, FaultProfile, FaultProfileError
from orchestrator.simulator.server import DEFAULT_BACKLOG, DEFAULT_CREDENTIALS_REF, Simulator

if TYPE_CHECKING:
    from orchestrator.settings import Settings

DEFAULT_PORT = 9450


def add_command(sub: Any) -> None:
    """`simulate ...`: the same options as `python -m orchestrator.simulator`."""
    simulate = sub.add_parser("simulate", help="serve a simulated appliance fleet")
    add_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)


def cmd_simulate(_settings: Settings, args: argparse.Namespace) -> int:
    return run(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to `parser`."""
    d = SimulatorConfig()
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--appliances", type=int, default=d.appliances, metavar="N",
                       help=f"number of appliances (default {d.appliances})")
    fleet.add_argument("--sites", type=int, default=d.sites, metavar="S",
                       help=f"sites, assigned round-robin (default {d.sites})")
    fleet.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    fleet.add_argument("--port", type=int, default=DEFAULT_PORT,
                       help=f"listen port, 0 for any free port (default {DEFAULT_PORT})")
    fleet.add_argument("--backlog", type=int, default=DEFAULT_BACKLOG,
                       help=f"listen backlog (default {DEFAULT_BACKLOG})")
    fleet.add_argument("--seed", type=int, default=d.seed,
                       help=f"seed of every random choice (default {d.seed})")
    fleet.add_argument("--credentials", metavar="USER:PASS",
                       help=f"the appliances' login (default {d.username}:{d.password})")
    fleet.add_argument("--credentials-env", metavar="VAR",
                       help="read USER:PASS from this environment variable instead")
    fleet.add_argument("--initial-version", default=d.initial_version,
                       help=f"version every appliance starts on (default {d.initial_version})")
    fleet.add_argument("--available-version", action="append", metavar="VERSION",
                       dest="available_versions",
                       help="an offered update version (repeatable; default "
                            f"{', '.join(d.available_versions)})")
    fleet.add_argument("--write-inventory", metavar="FILE.csv",
                       help="write a CSV inventory of the fleet for `appliances import`")
    fleet.add_argument("--inventory-credentials-ref", default=DEFAULT_CREDENTIALS_REF,
                       metavar="REF",
                       help=f"credentials_ref column of the inventory "
                            f"(default {DEFAULT_CREDENTIALS_REF})")

    life = parser.add_argument_group("install lifecycle")
    life.add_argument("--queued-seconds", type=float, default=d.queued_seconds,
                      help=f"time an install task stays QUEUED (default {d.queued_seconds})")
    life.add_argument("--install-seconds", type=float, default=d.install_seconds,
                      help=f"mean RUNNING time of an install (default {d.install_seconds})")
    life.add_argument("--install-jitter", type=float, default=d.install_jitter,
                      help=f"+- fraction of install time (default {d.install_jitter})")
    life.add_argument("--no-reboot", action="store_true",
                      help="updates switch the version in place, without a reboot")
    life.add_argument("--reboot-seconds", type=float, default=d.reboot_seconds,
                      help=f"reboot length after an install (default {d.reboot_seconds})")
    life.add_argument("--reboot-mode", choices=REBOOT_MODES, default=d.reboot_mode,
                      help="during a reboot: drop connections or answer 503 "
                           f"(default {d.reboot_mode})")
    life.add_argument("--task-after-reboot", choices=TASK_AFTER_REBOOT,
                      default=d.task_after_reboot,
                      help=f"the install task after a reboot (default {d.task_after_reboot})")
    life.add_argument("--services-starting-seconds", type=float,
                      default=d.services_starting_seconds,
                      help="after a reboot, key services are still starting this long "
                           f"(default {d.services_starting_seconds})")
    life.add_argument("--services-starting-mode", choices=SERVICES_STARTING_MODES,
                      default=d.services_starting_mode,
                      help="while services start: is_running false, or the API answers 503 "
                           f"(default {d.services_starting_mode})")
    life.add_argument("--retrieve-seconds", type=float, default=d.retrieve_seconds,
                      help=f"retrieve-updates task duration (default {d.retrieve_seconds})")
    life.add_argument("--duplicate-install", choices=DUPLICATE_INSTALL,
                      default=d.duplicate_install,
                      help="install while one runs / of the installed version: reject with "
                           f"400 or accept (default {d.duplicate_install})")
    life.add_argument("--reconfigure-fraction", type=float, default=d.reconfigure_fraction,
                      help="fraction of upgrades after which reconfigure-required is true "
                           f"(default {d.reconfigure_fraction})")

    faults = parser.add_argument_group("faults")
    faults.add_argument("--profile", metavar="FILE|mixed",
                        help="fault profile: a JSON/TOML file or a built-in name (mixed, none)")
    faults.add_argument("--fault", action="append", default=[], metavar="FAULT=RATE",
                        help=f"add a fault rate (repeatable); faults: {', '.join(FAULTS)}")
    faults.add_argument("--fault-appliance", action="append", default=[],
                        metavar="NAME=FAULT[,FAULT]",
                        help="give an appliance these faults (repeatable)")
    faults.add_argument("--fault-param", action="append", default=[], metavar="KEY=VALUE",
                        help="set a fault parameter, e.g. slow_seconds=2 (repeatable)")
    faults.add_argument("--fault-site", action="append", default=[],
                        metavar="SITE:FAULT=RATE",
                        help="add a fault rate for the appliances of one site, on top of "
                             "the others (a bad batch of sites; repeatable)")


def _split(text: str, flag: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise FaultProfileError(f"{flag} {text!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def build_profile(args: argparse.Namespace) -> FaultProfile:
    profile = FaultProfile.load(args.profile or "none")
    rates = dict(profile.rates)
    for item in args.fault:
        fault, rate = _split(item, "--fault")
        try:
            rates[fault] = float(rate)
        except ValueError:
            raise FaultProfileError(f"--fault {item!r}: the rate is not a number") from None
    appliances = dict(profile.appliances)
    for item in args.fault_appliance:
        name, faults = _split(item, "--fault-appliance")
        appliances[name] = tuple(f.strip() for f in faults.split(",") if f.strip())
    params: dict[str, Any] = dict(vars(profile.params))
    for item in args.fault_param:
        key, value = _split(item, "--fault-param")
        params[key] = value
    site_rates = {site: dict(r) for site, r in profile.site_rates.items()}
    fault_site: list[str] = getattr(args, "fault_site", None) or []
    for item in fault_site:
        where, rate = _split(item, "--fault-site")
        site, sep, fault = where.partition(":")
        if not sep or not site.strip() or not fault.strip():
            raise FaultProfileError(f"--fault-site {item!r}: expected SITE:FAULT=RATE")
        try:
            site_rates.setdefault(site.strip(), {})[fault.strip()] = float(rate)
        except ValueError:
            raise FaultProfileError(f"--fault-site {item!r}: the rate is not a number") from None
    if not (args.fault or args.fault_appliance or args.fault_param or fault_site):
        return profile
    return profile.with_changes(
        rates=rates, appliances=appliances, params=FaultParams.from_dict(params),
        site_rates=site_rates,
    )


def _credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    text: str | None = args.credentials
    if args.credentials_env:
        text = os.environ.get(args.credentials_env)
        if not text:
            raise SimulatorConfigError(f"--credentials-env: {args.credentials_env} is not set")
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        # never echo the value: it holds a password
        raise SimulatorConfigError("credentials: expected USER:PASS")
    return user, password


def build_config(args: argparse.Namespace) -> SimulatorConfig:
    """The SimulatorConfig the parsed arguments describe (raises ValueError subclasses)."""
    values: dict[str, Any] = {
        "appliances": args.appliances,
        "sites": args.sites,
        "seed": args.seed,
        "queued_seconds": args.queued_seconds,
        "install_seconds": args.install_seconds,
        "install_jitter": args.install_jitter,
        "reboot_required": not args.no_reboot,
        "reboot_seconds": args.reboot_seconds,
        "reboot_mode": args.reboot_mode,
        "task_after_reboot": args.task_after_reboot,
        "services_starting_seconds": args.services_starting_seconds,
        "services_starting_mode": args.services_starting_mode,
        "retrieve_seconds": args.retrieve_seconds,
        "duplicate_install": args.duplicate_install,
        "reconfigure_fraction": args.reconfigure_fraction,
        "initial_version": args.initial_version,
        "profile": build_profile(args),
    }
    if args.available_versions:
        values["available_versions"] = tuple(args.available_versions)
    creds = _credentials(args)
    if creds is not None:
        values["username"], values["password"] = creds
    config = SimulatorConfig(**values)
    check_fault_appliances(config, {_split(item, "--fault-appliance")[0]
                                    for item in args.fault_appliance})
    return config


_SIM_NAME = re.compile(r"^sim-(\d{5,})$")


def check_fault_appliances(config: SimulatorConfig, from_flags: set[str]) -> None:
    """Refuse faults given to appliances the fleet does not have (SimulatorConfigError
    naming the first such appliance and the fleet's names); `from_flags`: the names given
    with --fault-appliance (the others come from the profile)."""
    def known(name: str) -> bool:
        match = _SIM_NAME.match(name)
        return match is not None and 1 <= int(match.group(1)) <= config.appliances \
            and name == config.appliance_name(int(match.group(1)) - 1)

    unknown = sorted(name for name in config.profile.appliances if not known(name))
    if not unknown:
        return
    first = unknown[0]
    source = "--fault-appliance" if first in from_flags else "profile appliances"
    also = f" (also unknown: {', '.join(unknown[1:])})" if unknown[1:] else ""
    raise SimulatorConfigError(
        f"{source}: no appliance {first!r} in a fleet of {config.appliances}: the names "
        f"are {config.appliance_name(0)} .. {config.appliance_name(config.appliances - 1)}"
        f"{also}"
    )


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) after."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1_048_576
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    for candidate in (target, 1_048_576, 65_536):
        if candidate <= soft or candidate > target:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


async def _serve(config: SimulatorConfig, args: argparse.Namespace) -> int:
    sim = Simulator(config)
    try:
        await sim.start(args.host, args.port, backlog=args.backlog)
    except OSError as exc:
        print(f"simulator: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if args.write_inventory:
            sim.write_inventory(args.write_inventory,
                                credentials_ref=args.inventory_credentials_ref)
        inventory = f"; inventory {args.write_inventory}" if args.write_inventory else ""
        print(
            f"simulator: {config.appliances} appliance(s) on {config.sites} site(s) at "
            f"{sim.url} (base URL {sim.url}/<name>{API_PREFIX}, e.g. "
            f"{sim.base_url(sim.names[0])}; stats {sim.url}/_sim/stats; "
            f"profile {config.profile.name}{inventory})",
            flush=True,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sim.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the simulator until SIGINT/SIGTERM. 0 on a clean stop, 1 failure, 2 bad usage."""
    if not 0 <= args.port <= 65535:
        print(f"simulator: --port {args.port} is not a port number (0-65535)", file=sys.stderr)
        return 2
    try:
        config = build_config(args)
    except (ValueError, OSError) as exc:  # config/profile errors; unreadable profile file
        print(f"simulator: {exc}", file=sys.stderr)
        return 2
    raise_open_files_limit()
    try:
        return asyncio.run(_serve(config, args))
    except OSError as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator.simulator",
        description="Serve a simulated appliance fleet on one port.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
