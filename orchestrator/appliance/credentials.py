"""Appliance credentials and where to find them.

The inventory stores a *reference* to the credentials of each appliance, never the secret:

* `env:VAR`   -- the environment variable VAR holds `username:password`
* `file:/path` -- the first line of the file holds `username:password` (`~` is expanded)

The password may contain colons; the username may not. Error messages name the reference
and the problem, never the secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_MASK = "********"


class CredentialsError(Exception):
    """A credentials reference cannot be resolved. The message never holds the secret."""


@dataclass(frozen=True, repr=False)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password={_MASK!r})"

    __str__ = __repr__


def parse_credentials(text: str, *, source: str) -> Credentials:
    """Parse `username:password`; `source` names where the text came from (for errors)."""
    if ":" not in text:
        raise CredentialsError(f"{source}: expected 'username:password' (no colon found)")
    username, password = text.split(":", 1)
    username = username.strip()
    if not username:
        raise CredentialsError(f"{source}: the username before the colon is empty")
    if not password:
        raise CredentialsError(f"{source}: the password after the colon is empty")
    return Credentials(username, password)


def resolve_credentials(
    ref: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    default: Credentials | None = None,
) -> Credentials:
    """Resolve an `env:VAR` or `file:/path` reference; `None` or "" gives `default`."""
    if ref is None or not ref.strip():
        if default is None:
            raise CredentialsError(
                "no credentials reference (credentials_ref) and no default credentials"
            )
        return default
    ref = ref.strip()
    scheme, sep, rest = ref.partition(":")
    if not sep or not rest:
        raise CredentialsError(
            f"credentials reference {ref!r}: expected 'env:VARIABLE' or 'file:/path'"
        )
    if scheme == "env":
        env = os.environ if environ is None else environ
        value = env.get(rest)
        if value is None:
            raise CredentialsError(
                f"credentials reference {ref!r}: environment variable {rest} is not set"
            )
        if not value.strip():
            raise CredentialsError(
                f"credentials reference {ref!r}: environment variable {rest} is empty"
            )
        return parse_credentials(value.strip(), source=f"credentials reference {ref!r}")
    if scheme == "file":
        path = Path(rest).expanduser()
        try:
            with path.open(encoding="utf-8") as fh:
                first = fh.readline()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CredentialsError(
                f"credentials reference {ref!r}: cannot read {path}: {reason}"
            ) from None
        except UnicodeDecodeError:
            raise CredentialsError(
                f"credentials reference {ref!r}: {path} is not UTF-8 text"
            ) from None
        first = first.strip()
        if not first:
            raise CredentialsError(f"credentials reference {ref!r}: the first line is empty")
        return parse_credentials(first, source=f"credentials reference {ref!r}")
    raise CredentialsError(
        f"credentials reference {ref!r}: unknown scheme {scheme!r} (use 'env:' or 'file:')"
    )


__all__ = ["Credentials", "CredentialsError", "parse_credentials", "resolve_credentials"]
