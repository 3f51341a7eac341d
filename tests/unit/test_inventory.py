from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.inventory import InventoryError, parse_inventory, read_inventory

HEADER = "name,base_url,site,tags,timezone,credentials_ref,tls_ca_file,tls_thumbprint\n"
GOOD = "a1,https://a1.example.net/api/rest/configure/v1,ams,vr;prod,Europe/Berlin,env:APPLIANCE_CREDS,,\n"
THUMB = "AB:" * 31 + "CD"


def errors_of(text: str, fmt: str = "csv") -> list[str]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, fmt)
    return [str(e) for e in info.value.errors]


def test_good_csv_normalises() -> None:
    text = HEADER + GOOD + f"a2,https://10.0.0.2:8443/x/,nyc,,,file:/etc/orchestrator/secrets/s,/ca.pem,{THUMB}\n"
    specs = parse_inventory(text, "csv").specs
    assert [s.name for s in specs] == ["a1", "a2"]
    assert specs[0].tags == ("vr", "prod")
    assert specs[0].timezone == "Europe/Berlin"
    assert specs[1].base_url == "https://10.0.0.2:8443/x"
    assert specs[1].tls_thumbprint == ("ab" * 31 + "cd")
    assert specs[1].tags == ()


def test_only_required_columns() -> None:
    specs = parse_inventory("name,base_url,site\nx,https://x/api,s1\n", "csv").specs
    assert specs[0].credentials_ref is None


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("b,ftp://b.example.net/api,ams,,,,,", "is not an http(s) URL"),
        ("b,not a url,ams,,,,,", "base_url"),
        ("b,https://,ams,,,,,", "has no host"),
        ("b,https://admin:pw@b/api,ams,,,,,", "credentials do not belong in the URL"),
        ("b,https://b:99999/api,ams,,,,,", "invalid port"),
        (",https://b/api,ams,,,,,", "name: required field is missing"),
        ("b,,ams,,,,,", "base_url: required field is missing"),
        ("b,https://b/api,,,,,,", "site: required field is missing"),
        ("b,https://b/api,ams,,Mars/Olympus,,,", "'Mars/Olympus' is not a known IANA time zone"),
        ("b,https://b/api,ams,,,,,abc123", "is not a SHA-256 thumbprint"),
        ("b,https://b/api,ams,,,vault:x,,", "must be env:VARIABLE or file:/absolute/path"),
        ("b c,https://b/api,ams,,,,,", "name: 'b c' must be"),
        ("b,https://b/api,ams", "row has 3 cells, the header has 8"),
    ],
)
def test_each_kind_of_bad_row_names_line_and_reason(row: str, reason: str) -> None:
    errors = errors_of(HEADER + GOOD + row + "\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith("line 3: ")
    assert reason in errors[0]


def test_unknown_and_missing_columns() -> None:
    (err,) = errors_of("name,base_url,site,colour\na,https://a/x,s,red\n")
    assert err.startswith("line 1:") and "unknown column(s) 'colour'" in err
    (err,) = errors_of("name,site\na,s\n")
    assert "missing required column(s) base_url" in err


def test_duplicate_names_inside_file() -> None:
    errors = errors_of(HEADER + GOOD + GOOD.replace("ams,", "nyc,", 1))
    assert errors == ["line 3: name: 'a1' duplicates line 2"]


def test_every_bad_row_listed_not_only_the_first() -> None:
    text = HEADER + GOOD + "b,ftp://b/x,ams,,,,,\n" + "c,https://c/x,,,,,,\n" + "d,https://d/x,s,,,,,zz\n"
    errors = errors_of(text)
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 4", "line 5"]


def test_quoted_multiline_cell_keeps_line_numbers() -> None:
    text = HEADER + 'a1,https://a1/x,"ams",,,,,\n' + 'a2,https://a2/x,"multi\nline",,,,,\n' + "a3,ftp://a3,s,,,,,\n"
    site_err, url_err = errors_of(text)
    # a line break is a control character, refused in a site as the API refuses it
    assert site_err.startswith("line 3: site:") and "control characters" in site_err
    assert url_err.startswith("line 5:")


def test_empty_file() -> None:
    assert errors_of(HEADER) == ["line 1: the file lists no appliances"]


def test_json_inventory_with_line_numbers() -> None:
    good = {"name": "a1", "base_url": "https://a1/x", "site": "s", "tags": ["x", "y"]}
    specs = parse_inventory(json.dumps([good]), "json").specs
    assert specs[0].tags == ("x", "y")
    text = json.dumps([good, {"name": "a2", "site": "s", "colour": 1}], indent=2)
    errors = errors_of(text, "json")
    start = text.index('"name": "a2"')
    expected_line = text.count("\n", 0, text.rfind("{", 0, start)) + 1
    assert all(e.startswith(f"line {expected_line}:") for e in errors)
    assert any("unknown column(s) 'colour'" in e for e in errors)
    assert any("base_url: required field is missing" in e for e in errors)


def test_json_wrong_types() -> None:
    errors = errors_of(json.dumps([{"name": 5, "base_url": "https://a/x", "site": "s"}]), "json")
    assert "name: must be text, got int 5" in errors[0]
    errors = errors_of(json.dumps([{"name": "a", "base_url": "https://a/x", "site": "s",
                                    "tags": [1]}]), "json")
    assert "tags:" in errors[0]
    errors = errors_of(json.dumps([[1, 2]]), "json")
    assert "expected an object" in errors[0]
    errors = errors_of('[{"name": "a",', "json")
    assert "invalid JSON" in errors[0]


def test_read_inventory_picks_format_and_reports_path(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("x")
    with pytest.raises(InventoryError, match="unknown format 'yaml'"):
        read_inventory(path)
    path = tmp_path / "fleet.csv"
    path.write_text(HEADER + GOOD)
    assert len(read_inventory(path).specs) == 1


def test_example_inventory_is_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    specs = read_inventory(root / "config" / "example-inventory.csv").specs
    assert len(specs) >= 5
