from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.domain.selector import (
    SELECTOR_KEYS,
    Selector,
    SelectorError,
    matches,
    parse_selector,
)


def error_of(data: Any) -> SelectorError:
    with pytest.raises(SelectorError) as info:
        parse_selector(data)
    return info.value


def test_empty_selector_selects_everything() -> None:
    assert parse_selector({}) == Selector()
    assert parse_selector(None) == Selector()
    assert Selector().to_dict() == {}
    assert matches(Selector(), "a1", "ams", [], None)


def test_parse_and_normalise() -> None:
    selector = parse_selector({
        "sites": ["ams", "nyc", "ams"],
        "tags": ["prod"],
        "names": ["a1", "a2"],
        "current_versions": ["9.0.0-1"],
    })
    assert selector == Selector(
        sites=("ams", "nyc"), tags=("prod",), names=("a1", "a2"), current_versions=("9.0.0-1",)
    )
    assert selector.to_dict() == {
        "sites": ["ams", "nyc"], "tags": ["prod"], "names": ["a1", "a2"],
        "current_versions": ["9.0.0-1"],
    }


def test_to_dict_leaves_out_fields_that_do_not_filter() -> None:
    assert parse_selector({"tags": ["vr"]}).to_dict() == {"tags": ["vr"]}


_values = st.lists(st.text(alphabet="abz09.-_", min_size=1, max_size=5), min_size=1, max_size=4)


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(SELECTOR_KEYS), _values))
def test_round_trip(data: dict[str, list[str]]) -> None:
    selector = parse_selector(data)
    assert parse_selector(selector.to_dict()) == selector
    assert set(selector.to_dict()) == set(data)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sites": "ams"}, "selector.sites: 'ams' is not a list of strings"),
        ({"tags": None}, "selector.tags: None is not a list of strings"),
        ({"names": {"a": 1}}, "selector.names: {'a': 1} is not a list of strings"),
        ({"sites": []},
         "selector.sites: [] selects nothing: leave the key out to not filter on it"),
        ({"sites": ["ams", ""]}, "selector.sites[1]: '' is not a non-empty string"),
        ({"tags": ["  "]}, "selector.tags[0]: '  ' is not a non-empty string"),
        ({"names": [3]}, "selector.names[0]: 3 is not a non-empty string"),
        ({"current_versions": [None]},
         "selector.current_versions[0]: None is not a non-empty string"),
        ({"sites": [" ams"]}, "selector.sites[0]: ' ams' has leading or trailing blanks"),
        ("sites", "selector: 'sites' is not an object"),
    ],
)
def test_errors_name_the_field(data: Any, message: str) -> None:
    error = error_of(data)
    assert str(error) == message
    field, _, why = message.partition(": ")
    assert (error.field, error.message) == (field, why)
    assert isinstance(error, ValueError)


def test_unknown_keys_are_named() -> None:
    known = "sites, tags, names, current_versions"
    assert str(error_of({"site": ["ams"]})) == (
        f"selector.site: unknown key (known keys: {known})"
    )
    assert str(error_of({"site": ["ams"], "tag": ["x"], "enabled": True})) == (
        f"selector.enabled: unknown key; also unknown: 'site', 'tag' (known keys: {known})"
    )


SEL = Selector(sites=("ams", "nyc"), tags=("prod", "vr"))


@pytest.mark.parametrize(
    ("selector", "name", "site", "tags", "version", "expected"),
    [
        (SEL, "a1", "ams", ["prod"], "9.0", True),
        (SEL, "a1", "nyc", ["vr", "x"], None, True),  # OR within tags: any one of them
        (SEL, "a1", "sfo", ["prod"], "9.0", False),  # AND across fields
        (SEL, "a1", "ams", ["test"], "9.0", False),
        (SEL, "a1", "ams", [], "9.0", False),
        (Selector(names=("a1",)), "a1", "x", [], None, True),
        (Selector(names=("a1",)), "A1", "x", [], None, False),  # exact, case-sensitive
        (Selector(current_versions=("9.0", "9.1")), "a", "s", [], "9.1", True),
        (Selector(current_versions=("9.0",)), "a", "s", [], "9.0.1", False),
        (Selector(current_versions=("9.0",)), "a", "s", [], None, False),  # unknown version
        (Selector(sites=("ams",), names=("a1", "a2"), current_versions=("9.0",)),
         "a2", "ams", ["x"], "9.0", True),
        (Selector(sites=("ams",), names=("a1", "a2"), current_versions=("9.0",)),
         "a3", "ams", ["x"], "9.0", False),
    ],
)
def test_matches(
    selector: Selector, name: str, site: str, tags: list[str], version: str | None,
    expected: bool,
) -> None:
    assert matches(selector, name, site, tags, version) is expected


def test_matches_accepts_any_iterable_of_tags() -> None:
    assert matches(Selector(tags=("vr",)), "a", "s", iter(["x", "vr"]), None)
    assert matches(Selector(tags=("vr",)), "a", "s", ("vr",), None)
