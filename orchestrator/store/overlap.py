"""Overlapping rollouts: which other active rollouts hold an unfinished task for some
appliances, the lock that serialises that check, and the text of the refusal.

The refusal itself (`OverlapError`) and the check in create, start and retry-failed are
in `store/rollouts.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from orchestrator.domain.states import IN_FLIGHT_TASK_STATES
from orchestrator.store.db import DB

# A rollout is refused (OverlapError) when it becomes active while some of its appliances
# have an unfinished task in another rollout in one of these states, unless its strategy
# says after_overlapping. The check runs under OVERLAP_LOCK (a transaction-scoped advisory
# lock) in create, start and retry-failed, so two of them cannot both pass it.
OVERLAP_ROLLOUT_STATES: Final = ("SCHEDULED", "RUNNING", "PAUSED", "WAITING_WINDOW")
UNFINISHED_TASK_STATES: Final = ("PENDING", *sorted(str(s) for s in IN_FLIGHT_TASK_STATES))
OVERLAP_LOCK: Final = "rollout-overlap"
OVERLAP_NAMES_SHOWN: Final = 20


@dataclass(frozen=True)
class OverlappingRollout:
    id: int
    name: str
    state: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "state": self.state}


async def lock_overlap_check(conn: DB) -> None:
    """Serialise the overlap checks (held until the transaction ends)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", OVERLAP_LOCK)


async def find_overlaps(
    conn: DB, appliance_ids: Sequence[int], exclude_rollout: int | None = None
) -> tuple[list[OverlappingRollout], list[str]]:
    """The other active rollouts holding an unfinished task for one of `appliance_ids`
    (by id), and those appliances' names (sorted)."""
    if not appliance_ids:
        return [], []
    rows = await conn.fetch(
        """SELECT r.id, r.name, r.state, a.name AS appliance
           FROM tasks t
           JOIN rollouts r ON r.id = t.rollout_id
           JOIN appliances a ON a.id = t.appliance_id
           WHERE t.appliance_id = ANY($1::bigint[])
             AND ($2::bigint IS NULL OR t.rollout_id <> $2)
             AND t.state = ANY($3::text[]) AND r.state = ANY($4::text[])
           ORDER BY r.id, a.name""",
        list(appliance_ids), exclude_rollout, list(UNFINISHED_TASK_STATES),
        list(OVERLAP_ROLLOUT_STATES),
    )
    rollouts: dict[int, OverlappingRollout] = {}
    names: set[str] = set()
    for r in rows:
        rollouts.setdefault(r["id"], OverlappingRollout(r["id"], r["name"], r["state"]))
        names.add(r["appliance"])
    return list(rollouts.values()), sorted(names)


def overlap_message(
    action: str, rollouts: Sequence[OverlappingRollout], appliances: Sequence[str],
    remedy: str,
) -> str:
    """The text of an overlap refusal: `action` ("cannot start rollout 7") names what was
    refused; then the other rollouts, the appliances (at most OVERLAP_NAMES_SHOWN) and
    `remedy` (its `{it}` and `{has}` agree with the number of rollouts)."""
    others = ", ".join(f"{r.id} {r.name!r} ({r.state})" for r in rollouts)
    plural = len(rollouts) != 1
    shown = ", ".join(appliances[:OVERLAP_NAMES_SHOWN])
    if len(appliances) > OVERLAP_NAMES_SHOWN:
        shown += f" and {len(appliances) - OVERLAP_NAMES_SHOWN} more"
    count = len(appliances)
    return (
        f"{action}: {count} of its appliance{'s' if count != 1 else ''} "
        f"{'have' if count != 1 else 'has'} an unfinished task in active "
        f"rollout{'s' if plural else ''} {others}: {shown}; "
        + remedy.format(it="them" if plural else "it", has="have" if plural else "has")
    )


__all__ = [
    "OVERLAP_LOCK",
    "OVERLAP_NAMES_SHOWN",
    "OVERLAP_ROLLOUT_STATES",
    "UNFINISHED_TASK_STATES",
    "OverlappingRollout",
    "find_overlaps",
    "lock_overlap_check",
    "overlap_message",
]
