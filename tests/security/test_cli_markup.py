"""Names from the database never act as rich markup in `rollout watch` (issue 14, finding 9):
a rollout named `[/]` used to crash it (MarkupError), `[bold]x` to lose its brackets."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from orchestrator.cli.rollout import watch
from orchestrator.inventory import read_inventory
from orchestrator.store import appliances as appliance_store
from orchestrator.store import rollouts as rollout_store
from orchestrator.store.audit import Actor

CSV = ("name,base_url,site,tags\n"
       "vr-1,https://vr-1.example.net/api,ams,prod\n"
       "vr-2,https://vr-2.example.net/api,nyc,prod\n")


@pytest.mark.parametrize("name", ["[/]", "[bold]x", "[red]a[/red] [link=http://x]b",
                                  "\\[/] [/ ]"])
async def test_watch_prints_names_as_written(
    pool: asyncpg.Pool, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    inventory = tmp_path / "fleet.csv"
    inventory.write_text(CSV)
    await appliance_store.upsert_appliances(pool, read_inventory(inventory).specs)
    rollout, _ = await rollout_store.create_rollout(
        pool, name=name, target_version="9.0.1-20020",
        strategy={"waves": [1, "100%"], "approval": "after-canary"}, actor=Actor(name),
    )
    reason = f"stopped by {name} at [/]"
    await pool.execute("UPDATE rollouts SET abort_reason = $2 WHERE id = $1", rollout.id,
                       reason)
    await pool.execute("UPDATE rollout_waves SET approved_by = $2, approved_at = now() "
                       "WHERE rollout_id = $1 AND requires_approval", rollout.id, name)
    # DRAFT: watch draws the bars once, prints the summary and returns
    assert await watch(pool, rollout.id, interval=0.01) == 1
    out = capsys.readouterr().out
    assert f"rollout {rollout.id} {name!r}: DRAFT" in out, out
    assert f"reason: {reason}" in out, out
    assert f"approved by {name}" in out, out
