from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.planning import (
    PlanItem,
    order_items,
    plan_waves,
    resolve_max_concurrency,
    wave_sizes,
)
from orchestrator.domain.strategy import ORDERS, Size, parse_size

DEFAULT_WAVES = [parse_size(v) for v in (1, "10%", "50%", "100%")]


def fleet(spec: dict[str, int]) -> list[PlanItem]:
    """`count` appliances per site, named <site>-<nn>, ids in creation order."""
    items: list[PlanItem] = []
    for site, count in spec.items():
        for n in range(count):
            items.append(PlanItem(len(items) + 1, f"{site}-{n:02d}", site))
    return items


def names(waves: list[list[PlanItem]]) -> list[list[str]]:
    return [[item.name for item in wave] for wave in waves]


# --- examples ---------------------------------------------------------------------------


def test_spread_round_robins_sites_in_name_order() -> None:
    items = fleet({"nyc": 2, "ams": 3, "sfo": 1})
    random.Random(1).shuffle(items)
    assert [i.name for i in order_items(items, "spread")] == [
        "ams-00", "nyc-00", "sfo-00", "ams-01", "nyc-01", "ams-02",
    ]


def test_site_by_site() -> None:
    items = fleet({"nyc": 2, "ams": 2})
    assert [i.name for i in order_items(items, "site-by-site")] == [
        "ams-00", "ams-01", "nyc-00", "nyc-01",
    ]


def test_site_by_site_sorts_by_name_inside_a_site() -> None:
    items = [PlanItem(1, "b", "s"), PlanItem(2, "a", "s"), PlanItem(3, "c", "r")]
    assert [i.name for i in order_items(items, "site-by-site")] == ["c", "a", "b"]


def test_name_order_breaks_ties_by_id() -> None:
    items = [PlanItem(3, "b", "x"), PlanItem(2, "a", "y"), PlanItem(1, "b", "z")]
    assert [i.appliance_id for i in order_items(items, "name")] == [2, 1, 3]


def test_random_is_a_seeded_shuffle_of_the_name_order() -> None:
    items = fleet({"ams": 10, "nyc": 10})
    first = order_items(items, "random", seed=7)
    assert order_items(list(reversed(items)), "random", seed=7) == first
    assert sorted(first, key=lambda i: i.name) == sorted(items, key=lambda i: i.name)
    assert order_items(items, "random", seed=8) != first
    expected = sorted(items, key=lambda i: (i.name, i.appliance_id))
    random.Random(7).shuffle(expected)
    assert first == expected


def test_default_waves_on_100() -> None:
    waves = plan_waves(fleet({"a": 50, "b": 50}), DEFAULT_WAVES, "spread")
    assert [len(w) for w in waves] == [1, 10, 50, 39]


def test_default_waves_on_small_fleets() -> None:
    assert wave_sizes(1, DEFAULT_WAVES) == [1]
    assert wave_sizes(2, DEFAULT_WAVES) == [1, 1]
    assert wave_sizes(3, DEFAULT_WAVES) == [1, 1, 1]
    assert wave_sizes(4, DEFAULT_WAVES) == [1, 1, 2]
    assert wave_sizes(10, DEFAULT_WAVES) == [1, 1, 5, 3]


def test_last_size_repeats() -> None:
    assert wave_sizes(10, [Size.of_count(1), Size.of_count(3)]) == [1, 3, 3, 3]
    assert wave_sizes(10, [Size.of_percent("25")]) == [3, 3, 3, 1]


def test_percentages_are_of_the_total_not_cumulative() -> None:
    sizes = [Size.of_percent("50"), Size.of_percent("50")]
    assert wave_sizes(10, sizes) == [5, 5]
    assert wave_sizes(1000, [Size.of_percent("2.5"), Size.of_percent("100")]) == [25, 975]


def test_no_items_no_waves() -> None:
    assert plan_waves([], DEFAULT_WAVES, "spread") == []
    assert wave_sizes(0, DEFAULT_WAVES) == []


def test_wave_sizes_refuses_no_sizes_and_zero_counts() -> None:
    with pytest.raises(ValueError, match="at least one wave size"):
        wave_sizes(3, [])
    with pytest.raises(ValueError, match="wave size 0 is not a count >= 1"):
        wave_sizes(3, [Size.of_count(0)])


def test_unknown_order() -> None:
    with pytest.raises(ValueError, match="unknown plan order 'zigzag'"):
        plan_waves(fleet({"a": 1}), DEFAULT_WAVES, "zigzag")


def test_duplicate_appliance() -> None:
    items = [PlanItem(1, "a", "s"), PlanItem(1, "b", "s")]
    with pytest.raises(ValueError, match="appliance 1 is listed more than once"):
        plan_waves(items, DEFAULT_WAVES, "name")


def test_canary_of_spread_is_the_first_site() -> None:
    waves = plan_waves(fleet({"nyc": 3, "ams": 3}), [Size.of_count(1), Size.of_count(2)], "spread")
    assert names(waves) == [["ams-00"], ["nyc-00", "ams-01"], ["nyc-01", "ams-02"], ["nyc-02"]]


@pytest.mark.parametrize(
    ("size", "targeted", "expected"),
    [
        (Size.of_count(10), 3, 10),
        (Size.of_count(10), 0, 10),
        (Size.of_percent("10"), 1000, 100),
        (Size.of_percent("10"), 5, 1),
        (Size.of_percent("10"), 0, 1),
        (Size.of_percent("33"), 10, 4),
        (Size.of_percent("100"), 7, 7),
    ],
)
def test_resolve_max_concurrency(size: Size, targeted: int, expected: int) -> None:
    assert resolve_max_concurrency(size, targeted) == expected


# --- properties -------------------------------------------------------------------------

SITES = ["ams", "fra", "lon", "nyc", "sfo", "sin", "syd"]


@st.composite
def plan_items(draw: st.DrawFn, max_size: int = 60) -> list[PlanItem]:
    count = draw(st.integers(min_value=0, max_value=max_size))
    sites = draw(st.lists(st.sampled_from(SITES), min_size=count, max_size=count))
    item_names = draw(st.lists(
        st.text(alphabet="abcxyz0189-", min_size=1, max_size=6), min_size=count, max_size=count,
    ))
    ids = draw(st.lists(
        st.integers(min_value=1, max_value=10**6), min_size=count, max_size=count, unique=True,
    ))
    return [PlanItem(i, n, s) for i, n, s in zip(ids, item_names, sites, strict=True)]


sizes = st.one_of(
    st.integers(min_value=1, max_value=20).map(Size.of_count),
    st.decimals(min_value=Decimal("0.5"), max_value=Decimal(100), places=1).map(Size.of_percent),
)
wave_specs = st.lists(sizes, min_size=1, max_size=5)


@settings(max_examples=200)
@given(plan_items(), wave_specs, st.sampled_from(ORDERS), st.integers(0, 2**32))
def test_every_item_in_exactly_one_wave(
    items: list[PlanItem], waves: list[Size], order: str, seed: int
) -> None:
    plan = plan_waves(items, waves, order, seed)
    planned = [item for wave in plan for item in wave]
    assert Counter(planned) == Counter(items)
    assert all(plan), "no empty wave"
    assert (plan == []) == (items == [])


@settings(max_examples=200)
@given(plan_items(), wave_specs, st.sampled_from(ORDERS))
def test_wave_sizes_honour_the_spec(items: list[PlanItem], waves: list[Size], order: str) -> None:
    plan = plan_waves(items, waves, order)
    total = len(items)
    remaining = total
    for k, wave in enumerate(plan):
        size = waves[min(k, len(waves) - 1)]
        resolved = size.resolve(total)
        assert resolved >= 1
        assert len(wave) == min(resolved, remaining)
        remaining -= len(wave)
    assert remaining == 0


@settings(max_examples=200)
@given(plan_items(), wave_specs, st.sampled_from(ORDERS), st.integers(0, 2**32))
def test_waves_are_cuts_of_the_order(
    items: list[PlanItem], waves: list[Size], order: str, seed: int
) -> None:
    plan = plan_waves(items, waves, order, seed)
    assert [item for wave in plan for item in wave] == order_items(items, order, seed)


@settings(max_examples=200)
@given(plan_items(), st.integers(min_value=1, max_value=10))
def test_spread_first_wave_covers_as_many_sites_as_possible(
    items: list[PlanItem], first: int
) -> None:
    plan = plan_waves(items, [Size.of_count(first), Size.of_percent("100")], "spread")
    if items:
        n_sites = len({item.site for item in items})
        assert len({item.site for item in plan[0]}) == min(first, n_sites, len(items))


@settings(max_examples=200)
@given(plan_items())
def test_spread_prefixes_are_balanced(items: list[PlanItem]) -> None:
    """In every prefix, a site that still has appliances left is never more than one behind
    any other site."""
    ordered = order_items(items, "spread")
    left = Counter(item.site for item in items)
    taken: Counter[str] = Counter()
    for item in ordered:
        taken[item.site] += 1
        left[item.site] -= 1
        active = [site for site, n in left.items() if n > 0]
        most = max(taken.values())
        for site in active:
            assert most - taken[site] <= 1, (site, taken, left)


@settings(max_examples=200)
@given(plan_items())
def test_spread_and_site_by_site_keep_name_order_inside_a_site(items: list[PlanItem]) -> None:
    for order in ("spread", "site-by-site"):
        ordered = order_items(items, order)
        for site in {item.site for item in items}:
            mine = [(i.name, i.appliance_id) for i in ordered if i.site == site]
            assert mine == sorted(mine)


@settings(max_examples=200)
@given(plan_items())
def test_site_by_site_groups_sites_in_name_order(items: list[PlanItem]) -> None:
    sites = [item.site for item in order_items(items, "site-by-site")]
    assert sites == sorted(sites)


@settings(max_examples=200)
@given(plan_items(), wave_specs, st.sampled_from(ORDERS), st.integers(0, 2**32), st.randoms())
def test_plans_are_deterministic_whatever_the_input_order(
    items: list[PlanItem], waves: list[Size], order: str, seed: int, rnd: random.Random
) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert plan_waves(shuffled, waves, order, seed) == plan_waves(items, waves, order, seed)


# added with `make mutation` (tools/mutation.sh): mutants of planning.py the tests above let live


def test_random_order_without_a_seed_is_the_seed_0_shuffle() -> None:
    """A random plan made without a seed is reproducible: the same as seed 0."""
    items = fleet({"ams": 6, "nyc": 6})
    assert order_items(items, "random") == order_items(items, "random", seed=0)
    assert plan_waves(items, DEFAULT_WAVES, "random") == plan_waves(items, DEFAULT_WAVES,
                                                                     "random", seed=0)


def test_plan_errors_as_the_operator_reads_them() -> None:
    """The whole sentence, not just a part of it."""
    items = [PlanItem(4, "a", "s"), PlanItem(4, "b", "s")]
    with pytest.raises(ValueError) as duplicate:
        plan_waves(items, DEFAULT_WAVES, "name")
    assert str(duplicate.value) == "appliance 4 is listed more than once in the plan"
    with pytest.raises(ValueError) as unknown:
        order_items(fleet({"a": 1}), "zigzag")
    assert str(unknown.value) == (f"unknown plan order 'zigzag' (known: {', '.join(ORDERS)})")


def test_wave_size_errors_as_the_operator_reads_them() -> None:
    with pytest.raises(ValueError) as empty:
        wave_sizes(5, [])
    assert str(empty.value) == "a plan needs at least one wave size"
    with pytest.raises(ValueError) as zero:
        wave_sizes(5, [parse_size(1), Size(count=0)])
    assert str(zero.value) == "wave size 0 is not a count >= 1"
