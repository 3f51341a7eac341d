"""Credentials references: env:VAR and file:/path; errors never show the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.appliance import (
    Credentials,
    CredentialsError,
    parse_credentials,
    resolve_credentials,
)

SECRET = "Sup3r:S3cret!pw"


def assert_hidden(text: str) -> None:
    assert SECRET not in text
    assert "S3cret" not in text


def test_repr_and_str_hide_password() -> None:
    creds = Credentials("admin", SECRET)
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds])):
        assert_hidden(text)
        assert "admin" in text
    assert creds.password == SECRET


def test_frozen() -> None:
    creds = Credentials("admin", SECRET)
    with pytest.raises(AttributeError):
        creds.password = "x"  # type: ignore[misc]


def test_env_reference() -> None:
    creds = resolve_credentials("env:VR_CREDS", environ={"VR_CREDS": f"admin:{SECRET}\n"})
    assert creds == Credentials("admin", SECRET)  # password keeps its colon


def test_env_reference_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_TEST_APPLIANCE_CREDS", "root:pw")
    assert resolve_credentials("env:ORCH_TEST_APPLIANCE_CREDS") == Credentials("root", "pw")
    assert "ORCH_TEST_APPLIANCE_CREDS" in os.environ


def test_file_reference(tmp_path: Path) -> None:
    path = tmp_path / "vr01.creds"
    path.write_text(f"  admin:{SECRET}  \nsecond line ignored\n", encoding="utf-8")
    assert resolve_credentials(f"file:{path}") == Credentials("admin", SECRET)


def test_file_reference_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "c.txt").write_text("admin:pw\n", encoding="utf-8")
    assert resolve_credentials("file:~/c.txt") == Credentials("admin", "pw")


def test_none_uses_default() -> None:
    default = Credentials("admin", SECRET)
    assert resolve_credentials(None, default=default) is default
    assert resolve_credentials("  ", default=default) is default
    with pytest.raises(CredentialsError, match="no credentials reference"):
        resolve_credentials(None)


def _error(ref: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(CredentialsError) as info:
        resolve_credentials(ref, environ=environ if environ is not None else {})
    text = str(info.value)
    assert_hidden(text)
    assert_hidden(repr(info.value))
    assert info.value.__cause__ is None
    return text


def test_error_variable_unset() -> None:
    text = _error("env:VR_CREDS")
    assert "env:VR_CREDS" in text and "not set" in text


def test_error_variable_empty() -> None:
    assert "empty" in _error("env:VR_CREDS", {"VR_CREDS": "  "})


def test_error_no_colon_does_not_show_value() -> None:
    text = _error("env:VR_CREDS", {"VR_CREDS": "Sup3rS3cretNoColon"})
    assert "no colon" in text
    assert "Sup3rS3cretNoColon" not in text


def test_error_empty_username_or_password() -> None:
    assert "username" in _error("env:V", {"V": f":{SECRET}"})
    assert "password" in _error("env:V", {"V": "admin:"})


def test_error_file_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    text = _error(f"file:{missing}")
    assert str(missing) in text and "cannot read" in text
    text = _error(f"file:{tmp_path}")  # a directory
    assert "cannot read" in text


def test_error_file_without_colon(tmp_path: Path) -> None:
    path = tmp_path / "c"
    path.write_text("Sup3rS3cretNoColon\n", encoding="utf-8")
    text = _error(f"file:{path}")
    assert "no colon" in text and "Sup3rS3cretNoColon" not in text
    path.write_text("\nadmin:pw\n", encoding="utf-8")
    assert "first line is empty" in _error(f"file:{path}")


def test_error_file_not_text(tmp_path: Path) -> None:
    path = tmp_path / "bin"
    path.write_bytes(b"admin:\xff\xfeS3cret")
    assert "UTF-8" in _error(f"file:{path}")


@pytest.mark.parametrize("ref", ["vault:x", "env:", "plain", "file:"])
def test_error_bad_reference(ref: str) -> None:
    text = _error(ref)
    assert repr(ref.strip()) in text


def test_parse_credentials_source_in_message() -> None:
    with pytest.raises(CredentialsError, match="inventory row 3"):
        parse_credentials("x", source="inventory row 3")
