"""`orchestrator demo`: a whole rollout on a simulated fleet, on this machine, in about a minute.

It starts (or joins) the embedded PostgreSQL, creates a fresh `orchestrator_demo` database,
serves a simulated fleet with a realistic mix of faults, imports it, creates a rollout with a
canary and three more waves under a global and a per-site limit, runs the engine, shows live
progress per wave and ends with a summary whose figures come from the database and from the
simulator's ground truth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.appliance import ApplianceHttp
from orchestrator.cli.common import UsageError
from orchestrator.cli.rollout import wave_line
from orchestrator.domain.inventory import TargetPolicy
from orchestrator.domain.preflight import summary_line
from orchestrator.domain.states import TERMINAL_TASK_STATES
from orchestrator.domain.strategy import parse_strategy
from orchestrator.engine.engine import Engine, EngineConfig
from orchestrator.engine.notifier import Notifier, NotifierConfig
from orchestrator.inventory import read_inventory, target_policy
from orchestrator.logs import configure_logging
from orchestrator.reports import write_reports
from orchestrator.settings import Settings
from orchestrator.simulator import FaultProfile, Simulator, SimulatorConfig, run_simulator
from orchestrator.simulator.faults import (
    BAD_CREDENTIALS,
    FAULTS,
    NO_REPOSITORY,
    RECONFIGURE_PENDING,
    REPO_UNREACHABLE,
    SERVICES_DOWN,
    VERSION_NOT_OFFERED,
)
from orchestrator.store import appliances as appliance_store
from orchestrator.store import migrations, webhooks
from orchestrator.store import preflight as preflight_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store import tasks as task_store
from orchestrator.store.audit import Actor
from orchestrator.store.db import (
    connect,
    create_pool,
    database_of,
    database_url,
    recreate_database,
    with_database,
)

DEMO_DATABASE = "orchestrator_demo"
TARGET = "9.0.1-20020"
NEXT_VERSION = "9.0.2-20030"  # what the fleet also offers with --serve
ACTOR = Actor(name="demo", via="cli")
# the pre-flight problems the built-in `mixed` mix plants, one appliance each, on the last
# appliances of the fleet (one per site with 6 sites; the last wave, never the canary)
PLANTED: tuple[str, ...] = (BAD_CREDENTIALS, NO_REPOSITORY, REPO_UNREACHABLE,
                            VERSION_NOT_OFFERED, SERVICES_DOWN, RECONFIGURE_PENDING)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--appliances", type=int, default=300)
    p.add_argument("--sites", type=int, default=6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--profile", default="mixed",
                   help="fault profile: mixed (default), none, or a JSON/TOML file")
    p.add_argument("--canary-fault", metavar="FAULT",
                   help="inject this fault (e.g. install_error) into every canary appliance "
                        "to watch the failure policy stop the rollout")
    p.add_argument("--install-seconds", type=float, default=2.5)
    p.add_argument("--reboot-seconds", type=float, default=1.5)
    p.add_argument("--waves", default="5,10%,40%,100%",
                   help="wave sizes: the canary, then three more waves")
    p.add_argument("--max-concurrency", type=int, default=40)
    p.add_argument("--per-site-concurrency", type=int, default=8)
    p.add_argument("--max-failures", default="25%")
    p.add_argument("--canary-max-failures", type=int, default=2,
                   help="failed canary tasks tolerated before the rollout stops (the demo's "
                        "fault mix fails a few appliances on purpose; a real rollout's "
                        "default is 0)")
    p.add_argument("--min-executed", type=int, default=20,
                   help="executed tasks before a percentage max_failures can trip")
    p.add_argument("--reboot-grace", type=float, default=20.0)
    p.add_argument("--long-reboot-seconds", type=float, default=12.0,
                   help="how long the profile's long reboots last (longer than "
                        "--reboot-grace: those tasks end TIMED_OUT)")
    p.add_argument("--database-name", default=DEMO_DATABASE,
                   help="the database the demo recreates on the server (default %(default)s)")
    p.add_argument("--report-dir", metavar="DIR", default="reports",
                   help="where the rollout's reports (JSON, CSV, HTML) are written "
                        "(default %(default)s)")
    p.add_argument("--webhook-url", metavar="URL",
                   help="deliver the demo rollout's events (docs/notifications.md) to this "
                        "http(s) URL, unsigned; the demo waits up to 15 s after the rollout "
                        "for the last ones")
    p.add_argument("--webhook-format", choices=("json", "slack"), default="json",
                   help="the webhook's format (default %(default)s)")
    p.add_argument("--serve", action="store_true",
                   help="after the rollout, keep the simulated fleet and serve the API (with "
                        "its interactive docs) and the engine on the demo's database until "
                        f"Ctrl-C: create a second rollout (e.g. to {NEXT_VERSION}) and watch it")
    p.add_argument("--port", type=int, default=None,
                   help="with --serve: the API's port (default: the api_port setting, 8080)")
    p.add_argument("--preflight", choices=("off", "warn", "required"), default="warn",
                   help="the rollout's pre-flight (docs/preflight.md): warn (default) checks "
                        "every appliance before the first install and installs anyway; "
                        "required leaves the failing ones out (SKIPPED)")
    p.add_argument("--json", action="store_true",
                   help="print only the summary, as one JSON object")
    p.add_argument("--verbose", action="store_true",
                   help="also print the log lines (at the log_level setting, at least info); "
                        "without it only errors are logged")


def _size(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isdigit() else text


def demo_config(args: argparse.Namespace) -> SimulatorConfig:
    """The simulated fleet the arguments describe (SimulatorConfigError, FaultProfileError
    or UsageError naming a bad value)."""
    try:
        loaded = FaultProfile.load(args.profile)
    except OSError as exc:
        raise UsageError(f"--profile {args.profile}: cannot read: {exc.strerror}") from None
    profile = loaded.with_changes(
        params=dataclasses.replace(loaded.params, long_reboot_seconds=args.long_reboot_seconds),
        appliances={**loaded.appliances, **planted_problems(args)},
    )
    return SimulatorConfig(
        appliances=args.appliances, sites=args.sites, seed=args.seed,
        install_seconds=args.install_seconds, install_jitter=0.3,
        reboot_seconds=args.reboot_seconds, services_starting_seconds=0.5,
        profile=profile, duplicate_install="accept",  # count, do not refuse, a 2nd install
        # with --serve, a second version to roll out after the demo's
        available_versions=(TARGET, NEXT_VERSION) if args.serve else (TARGET,),
    )


def planted_problems(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """With the built-in `mixed` profile (the default) and a fleet of at least 24: one
    appliance per pre-flight problem (PLANTED), the last ones of the fleet."""
    if args.profile != "mixed" or args.appliances < 4 * len(PLANTED):
        return {}
    first = args.appliances - len(PLANTED)
    return {f"sim-{first + i + 1:05d}": (fault,) for i, fault in enumerate(PLANTED)}


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad values before any database or simulator starts (one line naming each)."""
    demo_config(args)
    parse_strategy(demo_strategy(args))
    if args.canary_fault and args.canary_fault not in FAULTS:
        raise UsageError(f"--canary-fault {args.canary_fault!r}: unknown fault (known: "
                         f"{', '.join(FAULTS)})")
    if args.webhook_url is not None:
        try:
            webhooks.check_url(args.webhook_url)
        except webhooks.WebhookError as exc:
            raise UsageError(f"--webhook-url: {exc.message.removeprefix('url: ')}") from None
    if not args.database_name.replace("_", "").isalnum():
        raise UsageError(f"--database-name {args.database_name!r}: letters, digits and '_' "
                         "only")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number (1-65535)")
    if args.port is not None and not args.serve:
        raise UsageError("--port: only with --serve")


def demo_strategy(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "waves": [_size(x) for x in args.waves.split(",")],
        "max_concurrency": args.max_concurrency,
        "per_site_concurrency": args.per_site_concurrency,
        "max_failures": _size(args.max_failures),
        "min_executed": args.min_executed,
        "canary_max_failures": args.canary_max_failures,
        "reboot_grace": args.reboot_grace,
        "task_timeout": max(60.0, args.reboot_grace * 4),
        "dispatch_retries": 1,
        "preflight": args.preflight,
    }


@contextlib.asynccontextmanager
async def demo_database(server_url: str, name: str) -> AsyncIterator[str]:
    """A fresh, migrated database for the demo (the configured one if we may not create)."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"--database-name {name!r}: letters, digits and '_' only")
    admin = await asyncpg.connect(server_url)
    try:
        await recreate_database(admin, name)
        url = with_database(server_url, name)
    except asyncpg.InsufficientPrivilegeError:
        url = server_url
    finally:
        await admin.close()
    conn = await connect(url)
    try:
        await migrations.migrate(conn)
    finally:
        await conn.close()
    yield url


async def truth_mismatches(pool: asyncpg.Pool, rollout_id: int,
                           versions: dict[str, str], target: str) -> list[dict[str, Any]]:
    """Appliances whose recorded outcome disagrees with the simulator's final version."""
    rows = await task_store.task_outcomes(pool, rollout_id)
    bad = []
    for r in rows:
        actual = versions.get(r["name"])
        # SKIPPED without a final version: a pre-flight left it out, nothing was installed
        left_out = r["state"] == "SKIPPED" and r["final_version"] is None
        wrong = (
            (left_out and actual == target)
            or (r["state"] in ("SUCCEEDED", "SKIPPED") and not left_out and actual != target)
            or (r["state"] in ("FAILED", "CANCELLED") and actual == target)
            or (r["final_version"] is not None and r["state"] != "TIMED_OUT"
                and r["final_version"] != actual)
        )
        if wrong:
            bad.append({"appliance": r["name"], "recorded": r["state"],
                        "final_version": r["final_version"], "simulator_version": actual})
    return bad


async def _progress(pool: asyncpg.Pool, rollout_id: int, done: asyncio.Event) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    counts = await rollout_store.rollout_counts(pool, rollout_id)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.fields[detail]}", markup=False),
                  console=Console(stderr=True)) as bars:
        check = bars.add_task("pre-flight".ljust(7), total=None, detail="")
        ids = {w["number"]: bars.add_task(
            ("canary" if w["number"] == 0 else f"wave {w['number']}").ljust(7),
            total=w["planned_size"], detail="") for w in counts.waves}
        while True:
            run = await preflight_store.latest_run(pool, rollout_id)
            if run is not None:
                bars.update(check, total=run.total or None, completed=run.done,
                            detail=summary_line(run.counts) if run.state == "finished"
                            else run.state)
            counts = await rollout_store.rollout_counts(pool, rollout_id)
            for w in counts.waves:
                c = counts.by_wave.get(w["number"], {})
                finished = sum(c.get(s, 0) for s in TERMINAL_TASK_STATES)
                # "30/30 done (28 succeeded, 2 failed)", like `rollout watch`
                bars.update(ids[w["number"]], completed=finished, detail=wave_line(w, c))
            if done.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.25)


async def run_demo(settings: Settings, args: argparse.Namespace, server_url: str) -> int:
    started = time.monotonic()
    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr)

    config = demo_config(args)
    profile = config.profile
    # the simulated appliances answer on http://127.0.0.1: a lab, allowed for the demo only
    settings = settings.model_copy(update={"appliance_allow_http": True,
                                           "appliance_allow_local_addresses": True})
    policy = target_policy(settings)
    strategy = demo_strategy(args)
    async with (
        demo_database(server_url, args.database_name) as url,
        create_pool(url, settings) as pool,
        run_simulator(config, host="127.0.0.1", port=0) as sim,
    ):
        say(f"simulated fleet: {args.appliances} appliances over {args.sites} sites at "
            f"{sim.url} (fault profile {profile.name!r})")
        total = await _import_fleet(pool, sim, policy)
        say(f"imported {total} appliances into the database")
        if args.webhook_url:
            await webhooks.add_webhook(pool, name="demo", url=args.webhook_url, actor=ACTOR,
                                       format=args.webhook_format)
            say(f"webhook 'demo': the rollout's events go to {args.webhook_url}")
        rollout_id = await _start_demo_rollout(pool, sim, args, strategy, say)
        await _run_engine(pool, url, settings, config, policy, args, rollout_id)
        result = await _result(pool, sim, args, strategy, rollout_id, started)
        result["explore"] = explore_commands(
            database_setting(url, server_url), rollout_id,
            base_url=f"http://{settings.api_host}:{settings.api_port}")
        if args.webhook_url:
            result["webhook"] = await _drain_webhook(pool, settings)
        if args.serve:
            return await _serve_demo(pool, url, server_url, settings, config, args, result)
    if args.json:
        print(json.dumps(result))
    else:
        print_summary(result)
    return 0


async def _serve_demo(pool: asyncpg.Pool, url: str, server_url: str, settings: Settings,
                      config: SimulatorConfig, args: argparse.Namespace,
                      result: dict[str, Any]) -> int:
    """--serve: the summary, then the API and the engine over the demo's database (the
    simulated fleet still answering) until Ctrl-C or SIGTERM."""
    from orchestrator.cli.serve import serve

    host, port = settings.api_host, args.port or settings.api_port
    exe, setting = program(), database_setting(url, server_url)
    env = f"{setting} " if setting else ""
    result["serving"] = f"http://{host}:{port}"
    # this process serves: the command that would serve again is left out
    result["explore"] = [c for c in result["explore"] if not c.startswith(f"{exe} serve")]
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print_summary(result)
        print("\n".join([
            "",
            f"Serving the demo at http://{host}:{port} (Ctrl-C stops it; the simulated fleet "
            "keeps answering, and its appliances also offer " + NEXT_VERSION + "):",
            f"  the console:                http://{host}:{port}/ (sign in with a token; "
            "create a rollout from its form and watch it)",
            f"  interactive API docs:       http://{host}:{port}/api/docs",
            f"  a token (another terminal): {env}{exe} tokens create --name explorer "
            "--role admin",
            f"  a second rollout:           {env}{exe} rollout create --name second "
            f"--version {NEXT_VERSION} --max-concurrency 20 --start",
            f"  watch it:                   {env}{exe} rollout watch 2",
        ]), flush=True)
    return await serve(pool, settings, host=host, port=port, database_url=url,
                       environ=sim_credentials(config))


async def _drain_webhook(pool: asyncpg.Pool, settings: Settings,
                         within: float = 15.0) -> dict[str, int]:
    """Deliver what the engine left pending (its last events) for up to `within` seconds:
    the demo's deliveries per state."""
    notifier = Notifier(pool, owner="demo", config=NotifierConfig.from_settings(settings))
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not await webhooks.any_pending(pool):
                break
            if not await notifier.deliver_once():
                await asyncio.sleep(0.2)
    finally:
        await notifier.aclose()
    return await webhooks.delivery_states(pool)


async def _import_fleet(pool: asyncpg.Pool, sim: Simulator, policy: TargetPolicy) -> int:
    """Import the simulated fleet's inventory (a CSV file, as an operator would): how many
    appliances."""
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "fleet.csv"
        sim.write_inventory(inventory)
        summary = await appliance_store.upsert_appliances(
            pool, read_inventory(inventory, policy=policy).specs
        )
    return summary.total


async def _start_demo_rollout(
    pool: asyncpg.Pool, sim: Simulator, args: argparse.Namespace, strategy: dict[str, Any],
    say: Callable[[str], None],
) -> int:
    """Create and start the demo rollout (with --canary-fault, its canary appliances get
    that fault first): its id."""
    rollout, _ = await rollout_store.create_rollout(
        pool, name="demo rollout", target_version=TARGET, strategy=strategy, actor=ACTOR,
    )
    plan = await rollout_store.preview_plan(pool, TARGET, {}, strategy)
    if args.canary_fault:
        for item in plan.waves[0].appliances:
            sim.set_faults(item.name, [args.canary_fault])
    say(f"rollout {rollout.id}: {TARGET} in waves of "
        f"{', '.join(str(len(w.appliances)) for w in plan.waves)} "
        f"(canary first), max_concurrency {strategy['max_concurrency']}, "
        f"per_site_concurrency {strategy['per_site_concurrency']}, "
        f"max_failures {strategy['max_failures']}")
    await rollout_store.start_rollout(pool, rollout.id, ACTOR)
    return rollout.id


def sim_credentials(config: SimulatorConfig) -> dict[str, str]:
    """What the demo's `env:` credential references read (never the process environment)."""
    return {"APPLIANCE_SIM_CREDENTIALS": f"{config.username}:{config.password}"}


async def _run_engine(
    pool: asyncpg.Pool, url: str, settings: Settings, config: SimulatorConfig,
    policy: TargetPolicy, args: argparse.Namespace, rollout_id: int,
) -> None:
    """Run an engine until no rollout is active, with a progress line unless --json."""
    http = ApplianceHttp(settings, request_timeout=4.0, connect_timeout=1.0, retries=1,
                         environ=sim_credentials(config))
    async with http:
        engine = Engine(pool, http, EngineConfig.from_settings(
            settings, poll_interval=1.0, install_estimate=args.install_seconds,
            min_poll=0.25, max_poll=5.0, target_policy=policy,
        ), database_url=url)
        runner = asyncio.create_task(engine.run(until_idle=True))
        done = asyncio.Event()
        progress = None if args.json else asyncio.create_task(
            _progress(pool, rollout_id, done))
        await runner
        done.set()
        if progress:
            await progress


async def _result(
    pool: asyncpg.Pool, sim: Simulator, args: argparse.Namespace, strategy: dict[str, Any],
    rollout_id: int, started: float,
) -> dict[str, Any]:
    """What the demo shows: the rollout's outcome, the simulator's own counts, and the
    appliances whose recorded outcome disagrees with their true version."""
    final = await rollout_store.get_rollout(pool, rollout_id)
    counts = await rollout_store.rollout_counts(pool, rollout_id)
    stats = sim.stats(include_appliances=True)
    versions = {name: a["version"] for name, a in stats["appliances"].items()}
    mismatches = await truth_mismatches(pool, rollout_id, versions, TARGET)
    failures = await task_store.failures_by_code(pool, rollout_id)
    result = {
        "rollout_id": rollout_id,
        "state": str(final.state),
        "abort_reason": final.abort_reason,
        "appliances": args.appliances,
        "sites": args.sites,
        "waves": [w["planned_size"] for w in counts.waves],
        "tasks": counts.by_state,
        "failures_by_code": failures,
        "max_concurrency": strategy["max_concurrency"],
        "per_site_concurrency": strategy["per_site_concurrency"],
        "duplicate_installs": stats["duplicate_installs"],
        "installs_accepted": stats["installs_accepted"],
        "max_in_flight": stats["max_in_flight"],
        "max_in_flight_by_site": stats["max_in_flight_by_site"],
        "truth_mismatches": len(mismatches),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    if mismatches:
        result["mismatched"] = mismatches[:20]
    result["preflight"] = await _preflight_result(pool, rollout_id, args.preflight)
    if args.report_dir:
        paths = await write_reports(pool, rollout_id, Path(args.report_dir))
        result["reports"] = {fmt: str(path.resolve()) for fmt, path in paths.items()}
    return result


async def _preflight_result(pool: asyncpg.Pool, rollout_id: int,
                            mode: str) -> dict[str, Any] | None:
    """The pre-flight the engine ran at the start: its counts, its problems by code, how
    many it left out, and whether it ended before the first install."""
    checked = await preflight_store.summary(pool, rollout_id)
    if checked is None or checked.run is None:
        return None
    return {
        "mode": mode, "counts": checked.run.counts,
        "problems": {code: n for _, code, n in checked.codes},
        "left_out": checked.run.left_out,
        "before_first_install": await preflight_store.before_installs(pool, checked.run),
    }


def preflight_text(pre: dict[str, Any] | None) -> str:
    """The summary's pre-flight line."""
    if pre is None:
        return "not run (--preflight off)"
    when = "before the first install" if pre["before_first_install"] else "during the rollout"
    problems = ", ".join(f"{code} {n}" for code, n in pre["problems"].items()
                         if code != "ALREADY_AT_TARGET")
    text = f"{summary_line(pre['counts'])} ({when})"
    if problems:
        text += f"; {problems}"
    if pre["left_out"]:
        text += f"; {pre['left_out']} left out (SKIPPED)"
    elif pre["mode"] == "warn" and pre["counts"].get("fail"):
        text += "; installed anyway (--preflight required leaves them out)"
    return text


def print_summary(r: dict[str, Any]) -> None:
    tasks = ", ".join(f"{k.lower()} {v}" for k, v in sorted(r["tasks"].items()))
    fails = ", ".join(f"{k} {v}" for k, v in r["failures_by_code"].items()) or "none"
    sites = ", ".join(f"{k} {v}" for k, v in sorted(r["max_in_flight_by_site"].items()))
    lines = [
        "",
        f"rollout {r['rollout_id']}: {r['state']} in {r['wall_seconds']} s"
        + (f" - {r['abort_reason']}" if r["abort_reason"] else ""),
        f"  tasks:            {tasks}",
        f"  failures:         {fails}",
        f"  pre-flight:       {preflight_text(r.get('preflight'))}",
        f"  waves:            {', '.join(map(str, r['waves']))} appliances",
        f"  in flight (max):  {r['max_in_flight']} of max_concurrency {r['max_concurrency']}",
        f"  per site (max):   {sites} (limit {r['per_site_concurrency']})",
        f"  ground truth:     {r['installs_accepted']} installs accepted, "
        f"{r['duplicate_installs']} duplicates, {r['truth_mismatches']} outcomes that "
        "disagree with the appliances",
    ]
    if "webhook" in r:
        lines.append("  webhook:          " + ", ".join(
            f"{n} {state}" for state, n in sorted(r["webhook"].items())))
    for fmt, path in r.get("reports", {}).items():
        lines.append(f"  report ({fmt}):".ljust(20) + path)
    if r.get("explore"):
        lines += ["", "Look at it again (the demo's database stays until the next demo):"]
        lines += [f"  {command}" for command in r["explore"]]
    print("\n".join(lines))


def program() -> str:
    """How the user reaches this program from where they are: `.venv/bin/orchestrator`
    after `make demo`, `orchestrator` when it is on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "orchestrator":
        return "orchestrator"
    on_path = shutil.which("orchestrator")
    if on_path and Path(on_path).resolve() == argv0.resolve():
        return "orchestrator"
    try:
        return str(argv0.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(argv0.resolve())


def database_setting(url: str, server_url: str) -> str | None:
    """`ORCHESTRATOR_DATABASE_NAME=<the demo's database>`, or None when the settings already
    name it (the demo could not create a database of its own)."""
    database = database_of(url)
    return None if database == database_of(server_url) else \
        f"ORCHESTRATOR_DATABASE_NAME={database}"


def explore_commands(setting: str | None, rollout_id: int, *, base_url: str) -> list[str]:
    """Commands that work as printed after the demo: they name the demo's database through
    `setting` (see `database_setting`). A token is never printed here: `tokens create`
    prints one, once, when the user asks."""
    exe = program()
    lines = [f"export {setting}"] if setting else []
    lines += [
        f"{exe} rollout show {rollout_id}",
        f"{exe} report {rollout_id} --format html -o rollout-{rollout_id}.html",
        f"{exe} tokens create --name explorer --role admin   # prints a token, once",
        f"{exe} serve   # the console at {base_url}/ (sign in with the token), "
        f"API docs at {base_url}/api/docs",
    ]
    return lines


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    # the live progress and the summary are the demo's output: log lines only when asked
    # (--verbose), else only errors
    level = ("debug" if settings.log_level == "debug" else "info") if args.verbose \
        else "error"
    configure_logging(settings.log_format, level)
    check_arguments(args)
    # the server's own database to administer from (database_name may name the demo's,
    # which the demo drops and creates again)
    with database_url(settings.model_copy(update={"database_name": None})) as server_url:
        return asyncio.run(run_demo(settings, args, server_url))


def add_command(sub: Any) -> None:
    """`demo [...]`."""
    parser = sub.add_parser(
        "demo", help="a whole rollout on a simulated fleet with faults, in about a minute"
    )
    add_arguments(parser)
    parser.set_defaults(func=cmd_demo)
