"""Wave planning: order the targeted appliances, then cut the order into waves.

The plan is a snapshot (README: "A rollout against your own inventory"): the engine
stores one task per planned item, with its wave number and its position in the flattened
plan order, so a dry run shows exactly what will run. Everything here is deterministic:
the same items (in any input order), sizes, order and seed give the same plan.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.domain.strategy import ORDERS, Size


@dataclass(frozen=True)
class PlanItem:
    """One targeted appliance, as the planner sees it."""

    appliance_id: int
    name: str
    site: str


def _by_name(item: PlanItem) -> tuple[str, int]:
    return (item.name, item.appliance_id)


def _by_site(items: Sequence[PlanItem]) -> list[list[PlanItem]]:
    """The items grouped per site, sites in name order, each group sorted by name."""
    groups: dict[str, list[PlanItem]] = defaultdict(list)
    for item in items:
        groups[item.site].append(item)
    return [sorted(groups[site], key=_by_name) for site in sorted(groups)]


def order_items(items: Sequence[PlanItem], order: str, seed: int = 0) -> list[PlanItem]:
    """The items in plan order.

    spread: round-robin across sites (sites in name order, appliances inside a site by
        name): the first of every site, then the second of every site that has one, and so
        on. Every prefix is balanced: a site that still has appliances left is never more
        than one behind any other site.
    site-by-site: all of the first site (by name), then the next; by name inside a site.
    name: by appliance name (ties by appliance_id).
    random: a shuffle by `random.Random(seed)` of the items sorted by name, so the result
        depends only on the set of items and the seed.
    Raises ValueError for an unknown order or for an appliance_id listed twice.
    """
    twice = [i for i, n in Counter(item.appliance_id for item in items).items() if n > 1]
    if twice:
        raise ValueError(f"appliance {twice[0]} is listed more than once in the plan")
    if order == "spread":
        groups = _by_site(items)
        depth = max((len(group) for group in groups), default=0)
        return [group[rank] for rank in range(depth) for group in groups if rank < len(group)]
    if order == "site-by-site":
        return [item for group in _by_site(items) for item in group]
    if order == "name":
        return sorted(items, key=_by_name)
    if order == "random":
        shuffled = sorted(items, key=_by_name)
        random.Random(seed).shuffle(shuffled)
        return shuffled
    raise ValueError(f"unknown plan order {order!r} (known: {', '.join(ORDERS)})")


def wave_sizes(total: int, waves: Sequence[Size]) -> list[int]:
    """The size of every wave for `total` targeted appliances.

    Wave k has min(resolve(size k), remaining) appliances, where size k is `waves[k]`, or
    the last size for k beyond the list, and percentages are of `total` (not of the
    remaining appliances, and not cumulative). Every wave has at least one appliance; the
    sizes add up to `total`; no total, no waves. Raises ValueError for an empty `waves` or a
    count below 1.
    """
    if not waves:
        raise ValueError("a plan needs at least one wave size")
    for size in waves:
        if size.count is not None and size.count < 1:
            raise ValueError(f"wave size {size} is not a count >= 1")
    sizes: list[int] = []
    remaining = total
    while remaining > 0:
        size = waves[min(len(sizes), len(waves) - 1)]
        taken = min(max(1, size.resolve(total)), remaining)
        sizes.append(taken)
        remaining -= taken
    return sizes


def plan_waves(
    items: Sequence[PlanItem], waves: Sequence[Size], order: str, seed: int = 0
) -> list[list[PlanItem]]:
    """Order `items` (see `order_items`) and cut the order into waves (see `wave_sizes`).

    Every item lands in exactly one wave; waves are never empty; empty input gives no
    waves. Wave numbers are the list indexes (0 is the canary); a task's position is its
    index in the concatenation of the waves.
    """
    ordered = order_items(items, order, seed)
    plan: list[list[PlanItem]] = []
    start = 0
    for size in wave_sizes(len(ordered), waves):
        plan.append(ordered[start:start + size])
        start += size
    return plan


def resolve_max_concurrency(max_concurrency: Size, targeted: int) -> int:
    """The rollout-wide limit of installs in flight at once.

    A count is used as is; a percentage is of all targeted appliances of the rollout (not
    of the current wave), rounded up. Never below 1, so a rollout can always progress.
    """
    return max(1, max_concurrency.resolve(targeted))
