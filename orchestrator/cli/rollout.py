"""`orchestrator rollout ...` and `orchestrator run`: the CLI side of the rollout engine."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from orchestrator.cli import preflight as preflight_cli
from orchestrator.cli.common import UsageError, cli_actor, positive_int, run_with_database
from orchestrator.domain.states import RolloutState
from orchestrator.domain.strategy import add_strategy_flags, strategy_from_flags
from orchestrator.settings import Settings
from orchestrator.store import engines as engine_store
from orchestrator.store import pace as pace_store
from orchestrator.store import preflight as preflight_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.forecast import rollout_forecast

TERMINAL_ROLLOUT = ("SUCCEEDED", "COMPLETED_WITH_FAILURES", "FAILED", "CANCELLED")
TASK_STATES = ("PENDING", "DISPATCHING", "INSTALLING", "VERIFYING", "SUCCEEDED", "FAILED",
               "TIMED_OUT", "SKIPPED", "CANCELLED")


# ------------------------------------------------------------------ arguments
def add_command(sub: Any) -> None:
    """`rollout ACTION ...`."""
    rollout = sub.add_parser("rollout", help="plan, start and steer rollouts")
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    create = rsub.add_parser("create", help="create a rollout (DRAFT) with its plan")
    create.add_argument("--name", required=True)
    add_selector_and_strategy(create)
    create.add_argument("--schedule-at", help="ISO 8601 time with zone: start no earlier")
    create.add_argument("--start", action="store_true", help="start it right away")
    create.add_argument("--json", action="store_true")
    plan = rsub.add_parser("plan", help="preview the plan: nothing is written")
    add_selector_and_strategy(plan)
    plan.add_argument("--json", action="store_true")
    for name, text in (
        ("start", "start a DRAFT rollout (or a SCHEDULED one now)"),
        ("pause", "stop new installs; accepted ones finish"),
        ("resume", "resume a paused rollout"),
        ("cancel", "cancel: never-started tasks are cancelled"),
        ("approve", "approve the next wave's gate"),
        ("retry-failed", "put failed, timed-out and cancelled tasks back to pending"),
        ("watch", "live progress per wave until the rollout ends"),
    ):
        p = rsub.add_parser(name, help=text)
        p.add_argument("id", type=int)
    rsub.choices["start"].add_argument(
        "--schedule-at", help="ISO 8601 time with zone: a DRAFT rollout starts no earlier "
                              "(SCHEDULED until then)")
    preflight_cli.add_parser(rsub)
    show = rsub.add_parser("show", help="state, counts and waves of a rollout")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    lst = rsub.add_parser("list", help="recent rollouts")
    lst.add_argument("--state", action="append", default=[], type=str.upper,
                     choices=[str(s) for s in RolloutState], metavar="STATE",
                     help="repeatable: " + ", ".join(s.lower() for s in RolloutState))
    lst.add_argument("--limit", type=positive_int, default=50)
    lst.add_argument("--json", action="store_true")
    rollout.set_defaults(func=cmd_rollout)


def add_run_command(sub: Any) -> None:
    """`run [--until-idle]`."""
    run = sub.add_parser("run", help="run the rollout engine until SIGTERM")
    run.add_argument("--until-idle", action="store_true",
                     help="exit once no rollout is scheduled, running or waiting for "
                          "its window and no task runs here (a paused one does not count)")
    run.set_defaults(func=cmd_run)


def add_selector_and_strategy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", dest="target_version", required=True,
                   help="the version to install, e.g. 9.0.1-20020")
    sel = p.add_argument_group("selector (AND across options, OR within one)")
    sel.add_argument("--site", action="append", default=[], help="repeatable")
    sel.add_argument("--tag", action="append", default=[], help="repeatable")
    sel.add_argument("--appliance", action="append", default=[], help="by name, repeatable")
    sel.add_argument("--current-version", action="append", default=[],
                     help="only appliances last seen on this version, repeatable")
    st = p.add_argument_group("strategy (see README: Rollout strategy)")
    st.add_argument("--strategy", metavar="FILE", help="a JSON file with the strategy object")
    add_strategy_flags(st)


def selector_from(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, attr in (("sites", "site"), ("tags", "tag"), ("names", "appliance"),
                      ("current_versions", "current_version")):
        if getattr(args, attr):
            out[key] = list(getattr(args, attr))
    return out


def strategy_from(args: argparse.Namespace) -> dict[str, Any]:
    strategy: dict[str, Any] = {}
    if args.strategy:
        path = Path(args.strategy)
        try:
            loaded = json.loads(path.read_text())
        except OSError as exc:
            raise UsageError(f"--strategy {path}: cannot read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"--strategy {path}: not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--strategy {path}: must hold a JSON object")
        strategy.update(loaded)
    strategy.update(strategy_from_flags(args))
    return strategy


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--schedule-at {text!r}: not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise UsageError(f"--schedule-at {text!r}: give a time zone, e.g. {text}+00:00")
    return value


# ------------------------------------------------------------------ output
def print_plan(plan: rollout_store.Plan, *, limit: int = 20) -> None:
    print(f"plan: {plan.target_version} on {plan.targeted} appliance(s) in "
          f"{len(plan.waves)} wave(s) (nothing was written)")
    for wave in plan.waves:
        names = [a.name for a in wave.appliances]
        sites = sorted({a.site for a in wave.appliances})
        gate = " - then waits for approval" if wave.requires_approval else ""
        shown = ", ".join(names[:limit]) + (f", ... (+{len(names) - limit})"
                                            if len(names) > limit else "")
        print(f"  wave {wave.number}: {len(names)} appliance(s) across {len(sites)} site(s)"
              f"{gate}\n    {shown}")


# how a wave's finished tasks ended, in the order they are listed
_WAVE_OUTCOMES = (("SUCCEEDED", "succeeded"), ("FAILED", "failed"), ("TIMED_OUT", "timed out"),
                  ("SKIPPED", "skipped"), ("CANCELLED", "cancelled"))
_IN_FLIGHT = ("DISPATCHING", "INSTALLING", "VERIFYING")


def wave_progress(counts: Mapping[str, int], planned: int) -> str:
    """`30/30 done (28 succeeded, 2 failed)`: a wave's finished tasks out of its size and
    how they ended (failures named as failures), then `; 3 in flight` while installs run."""
    done = sum(counts.get(state, 0) for state, _ in _WAVE_OUTCOMES)
    parts = ", ".join(f"{counts[state]} {label}" for state, label in _WAVE_OUTCOMES
                      if counts.get(state, 0))
    busy = sum(counts.get(state, 0) for state in _IN_FLIGHT)
    if busy:
        parts = f"{parts}; {busy} in flight" if parts else f"{busy} in flight"
    return f"{done}/{planned} done" + (f" ({parts})" if parts else "")


def wave_gate(wave: Mapping[str, Any]) -> str:
    """What the approval gate AFTER this wave says ("" when it has none)."""
    if not wave["requires_approval"] or wave["state"] in ("FAILED", "CANCELLED"):
        return ""
    if wave["approved_by"]:
        return f"approved by {wave['approved_by']}"
    if wave["state"] == "AWAITING_APPROVAL":
        return "waiting for approval (rollout approve)"
    return "approval needed after this wave"


def wave_line(wave: Mapping[str, Any], counts: Mapping[str, int]) -> str:
    """`SUCCEEDED         30/30 done (28 succeeded, 2 failed)`, then the gate if any."""
    gate = wave_gate(wave)
    return (f"{wave['state']:<17} {wave_progress(counts, wave['planned_size'])}"
            + (f"; {gate}" if gate else ""))


def pace_line(pace: pace_store.PaceState) -> str:
    """`pace: 15 installs at once (adaptive): healthy (...)`: the adaptive pace now."""
    why = f": {pace.reason}" if pace.reason else ""
    return f"pace: {pace.concurrency} installs at once (adaptive){why}"


def rollout_summary(rollout: rollout_store.Rollout, counts: rollout_store.RolloutCounts,
                    pace: pace_store.PaceState | None = None) -> str:
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.by_state.items()))
    where = "not started" if rollout.current_wave is None else f"wave {rollout.current_wave}"
    lines = [
        f"rollout {rollout.id} {rollout.name!r}: {rollout.state} - {rollout.target_version} on "
        f"{rollout.targeted} appliance(s); {where}",
        f"  tasks: {states}",
    ]
    if rollout.abort_reason:
        lines.append(f"  reason: {rollout.abort_reason}")
    if pace is not None:
        lines.append(f"  {pace_line(pace)}")
    if rollout.pruned_at:
        lines.append(f"  pruned on {rollout.pruned_at:%Y-%m-%d}: its tasks and events were "
                     "deleted (orchestrator prune); the counts are its summary")
    for w in counts.waves:
        lines.append(f"  wave {w['number']}: {wave_line(w, counts.by_wave.get(w['number'], {}))}")
    return "\n".join(lines)


# ------------------------------------------------------------------ commands
def cmd_rollout(settings: Settings, args: argparse.Namespace) -> int:
    action = args.rollout_command
    actor = cli_actor()

    async def body(pool: asyncpg.Pool) -> int:
        if action == "plan":
            plan = await rollout_store.preview_plan(
                pool, args.target_version, selector_from(args), strategy_from(args)
            )
            if args.json:
                print(json.dumps(plan.to_dict(), indent=2))
            else:
                print_plan(plan)
            return 0
        if action == "create":
            rollout, _ = await rollout_store.create_rollout(
                pool, name=args.name, target_version=args.target_version,
                selector=selector_from(args), strategy=strategy_from(args), actor=actor,
                schedule_at=_parse_time(args.schedule_at),
            )
            message = f"created rollout {rollout.id} ({rollout.targeted} appliance(s), DRAFT)"
            if args.start:
                result = await rollout_store.start_rollout(pool, rollout.id, actor)
                rollout, message = result.rollout, message + "; " + result.message
            if args.json:
                print(json.dumps(rollout.to_dict(), indent=2))
            else:
                print(message)
            await warn_if_no_engine(pool, rollout.state)
            return 0
        if action in ("show", "watch"):
            if action == "watch":
                return await watch(pool, args.id)
            rollout = await rollout_store.get_rollout(pool, args.id)
            counts = await rollout_store.rollout_counts(pool, args.id)
            engine = await engine_store.engine_status(pool)
            forecast = await rollout_forecast(pool, args.id, datetime.now(UTC),
                                              settings.eta_task_seconds, engine=engine)
            pace = await pace_store.pace_state(pool, args.id)
            preflight = await preflight_store.summary(pool, args.id)
            if args.json:
                print(json.dumps({**rollout.to_dict(), "counts": counts.to_dict(),
                                  "forecast": forecast.to_dict(),
                                  "engine": engine.to_dict(),
                                  "pace": pace.to_dict() if pace else None,
                                  "preflight": preflight.to_dict() if preflight else None},
                                 indent=2))
            else:
                print(rollout_summary(rollout, counts, pace))
                print("\n".join(preflight_cli.summary_lines(preflight)))
                blocked = await engine_store.blocked_reason(pool, rollout.state, engine)
                if blocked:
                    print("  eta: none: nothing progresses while no engine runs")
                    print(f"warning: {blocked}")
                elif rollout.state not in TERMINAL_ROLLOUT and forecast.eta:
                    print(f"  eta: {forecast.eta:%Y-%m-%d %H:%M:%S} UTC ({forecast.basis})")
            return 0
        if action == "list":
            items = await rollout_store.list_rollouts(
                pool, states=[s.upper() for s in args.state] or None, limit=args.limit
            )
            if args.json:
                print(json.dumps([r.to_dict() for r in items], indent=2))
            else:
                for r in items:
                    print(f"{r.id:>6}  {r.state:<15} {r.target_version:<16} "
                          f"{r.targeted:>6} appliance(s)  {r.name}")
            return 0
        operations = {
            "start": rollout_store.start_rollout, "pause": rollout_store.pause_rollout,
            "resume": rollout_store.resume_rollout, "cancel": rollout_store.cancel_rollout,
            "approve": rollout_store.approve_rollout,
            "retry-failed": rollout_store.retry_failed,
        }
        if action == "start" and getattr(args, "schedule_at", None):
            result = await rollout_store.start_rollout(
                pool, args.id, actor, schedule_at=_parse_time(args.schedule_at))
        else:
            result = await operations[action](pool, args.id, actor)
        print(result.message)
        await warn_if_no_engine(pool, result.rollout.state)
        return 0

    return run_with_database(settings, body)


async def warn_if_no_engine(pool: asyncpg.Pool, rollout_state: str) -> None:
    """On stderr, when a rollout in `rollout_state` needs an engine and none is live."""
    blocked = await engine_store.blocked_reason(pool, rollout_state)
    if blocked:
        print(f"warning: {blocked}", file=sys.stderr)


async def watch(pool: asyncpg.Pool, rollout_id: int, *, interval: float = 0.5) -> int:
    """Live progress bars per wave until the rollout ends.

    Text from the database (rollout, appliance, site and approver names, abort reasons)
    reaches rich only escaped or with markup off: a name like `[/]` or `[bold]x` is shown
    as written, never read as markup."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(stderr=False)
    rollout = await rollout_store.get_rollout(pool, rollout_id)
    counts = await rollout_store.rollout_counts(pool, rollout_id)
    columns = (
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.fields[detail]}", markup=False),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        bars = {
            w["number"]: progress.add_task(escape(f"wave {w['number']}"),
                                           total=w["planned_size"], detail="")
            for w in counts.waves
        }
        warned = False  # whether the last line said that no engine is running
        pace: pace_store.PaceState | None = None  # the adaptive pace, each change printed
        while True:
            rollout = await rollout_store.get_rollout(pool, rollout_id)
            counts = await rollout_store.rollout_counts(pool, rollout_id)
            if rollout.strategy.pace == "adaptive":
                now = await pace_store.pace_state(pool, rollout_id)
                if now is not None and (pace is None or now.changed_at != pace.changed_at):
                    progress.console.print(pace_line(now), markup=False, highlight=False,
                                           soft_wrap=True)
                pace = now
            for w in counts.waves:
                c = counts.by_wave.get(w["number"], {})
                done = sum(c.get(s, 0) for s, _ in _WAVE_OUTCOMES)
                progress.update(bars[w["number"]], completed=done, detail=wave_line(w, c))
            blocked = await engine_store.blocked_reason(pool, rollout.state)
            if blocked and not warned:
                progress.console.print(f"warning: {blocked}", markup=False, highlight=False,
                                       soft_wrap=True)
            elif warned and not blocked and rollout.state in engine_store.NEEDS_ENGINE:
                progress.console.print("an engine is running now: the rollout progresses",
                                       markup=False, highlight=False, soft_wrap=True)
            warned = bool(blocked)
            if rollout.state in TERMINAL_ROLLOUT or rollout.state == "DRAFT":
                break
            await asyncio.sleep(interval)
    console.print(escape(rollout_summary(rollout, counts, pace)))
    return 0 if rollout.state == "SUCCEEDED" else 1


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    # imported here: every other command starts faster without the engine and the HTTP
    # client (about half of the CLI's start-up)
    from orchestrator.appliance import ApplianceHttp
    from orchestrator.engine.engine import (
        Engine,
        EngineConfig,
        EngineFailure,
        tune_gc_for_engine,
    )

    url_holder: list[str] = []

    async def body(pool: asyncpg.Pool) -> int:
        async with ApplianceHttp(settings) as http:
            engine = Engine(pool, http, EngineConfig.from_settings(settings),
                            database_url=url_holder[0])
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, engine.stop)
            print(f"engine {engine.owner} running (SIGTERM or Ctrl-C stops it)",
                  file=sys.stderr)
            tune_gc_for_engine()
            try:
                await engine.run(until_idle=args.until_idle)
            except EngineFailure as exc:  # drained and handed its tasks over already
                print(f"orchestrator: {exc}", file=sys.stderr)
                return 1
        return 0

    return run_with_database(settings, body, url_holder)
