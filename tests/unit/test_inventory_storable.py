"""Inventory values PostgreSQL cannot store are refused by name, before any write, from
the CLI's files and the API alike; a CSV the csv module cannot read is an InventoryError,
not a crash."""

from __future__ import annotations

import pytest

from orchestrator.inventory import InventoryError, parse_inventory

HEADER = "name,base_url,site,tags\n"


@pytest.mark.parametrize(("row", "expected"), [
    ("vr\x00,https://vr.example.net/api,ams,\n", "name: 'vr\\x00' contains the NUL character"),
    ("vr,https://vr.example.net/api,am\ud800s,\n", "site: 'am\\ud800s' is not valid Unicode"),
    ("vr,https://vr.example.net/api,ams,prod;la\x00b\n", "tags: 'la\\x00b' contains the NUL"),
])
def test_unstorable_text_is_refused_naming_field_and_value(row: str, expected: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(HEADER + row, "csv")
    assert expected in str(caught.value)
    assert "nothing imported" in str(caught.value)


def test_json_inventory_with_a_surrogate_is_refused() -> None:
    text = '[{"name": "vr", "base_url": "https://vr.example.net/api", "site": "\\ud800"}]'
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "json")
    assert "site:" in str(caught.value) and "unpaired surrogate" in str(caught.value)


def test_a_csv_field_beyond_the_csv_limit_is_an_inventory_error() -> None:
    text = HEADER + '"' + "x" * 200_000 + '",https://vr.example.net/api,ams,\n'
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, "csv")
    assert "unreadable CSV" in str(caught.value) and "field limit" in str(caught.value)
