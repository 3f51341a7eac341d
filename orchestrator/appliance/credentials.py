"""Appliance credentials and where to find them.

The inventory stores a *reference* to the credentials of each appliance, never the secret:

* `env:VAR`   -- the environment variable VAR holds `username:password`
* `file:/path` -- the first line of the file holds `username:password` (`~` is expanded)

The password may contain colons; the username may not. Error messages name the reference
and the problem, never the secret.

A `TargetPolicy` (from the settings) limits what a reference may read: environment
variables with its prefix (`APPLIANCE_` by default) and regular files whose real path
(symbolic links and `..` resolved) lies inside its secrets directory. `env:ORCHESTRATOR_*`
(the settings, the database URL among them) is refused with or without a policy.

`resolve_secret` reads a webhook's signing secret by the same rules: the variable's value
or the file's first line, whole (no `username:password`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.domain.errors import OrchestratorError
from orchestrator.domain.inventory import (
    FORBIDDEN_ENV_PREFIX,
    TargetPolicy,
    credentials_ref_refusal,
    path_inside,
)

_MASK = "********"
_MAX_LINE = 4096  # a credentials line is short; a larger read is refused


class CredentialsError(OrchestratorError):
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
    policy: TargetPolicy | None = None,
) -> Credentials:
    """Resolve an `env:VAR` or `file:/path` reference; `None` or "" gives `default`.

    With a `policy`, a reference it does not allow raises CredentialsError saying what is
    allowed, and a file must be a regular file whose real path is inside its secrets
    directory. `env:ORCHESTRATOR_*` is refused always."""
    if ref is None or not ref.strip():
        if default is None:
            raise CredentialsError(
                "no credentials reference (credentials_ref) and no default credentials"
            )
        return default
    ref = ref.strip()
    first = _first_line(ref, environ=environ, policy=policy, label="credentials reference",
                        serves="appliance credentials")
    return parse_credentials(first, source=f"credentials reference {ref!r}")


def resolve_secret(
    ref: str,
    *,
    environ: Mapping[str, str] | None = None,
    policy: TargetPolicy | None = None,
) -> str:
    """The secret an `env:VAR` or `file:/path` reference names (a webhook's signing
    secret): the variable's value or the file's first line, stripped, with the same rules
    as `resolve_credentials` (the policy, `env:ORCHESTRATOR_*` refused, a regular file
    inside the secrets directory) but no `username:password` to parse. Raises
    CredentialsError naming the reference, never the secret."""
    if not ref or not ref.strip():
        raise CredentialsError("no secret reference (secret_ref)")
    return _first_line(ref.strip(), environ=environ, policy=policy, label="secret reference",
                       serves="secrets")


def _first_line(
    ref: str,
    *,
    environ: Mapping[str, str] | None,
    policy: TargetPolicy | None,
    label: str,
    serves: str,
) -> str:
    """The stripped value (env:) or first line (file:) a reference names, checked as the
    module docstring says; `label` and `serves` word the errors."""
    scheme, sep, rest = ref.partition(":")
    if not sep or not rest:
        raise CredentialsError(
            f"{label} {ref!r}: expected 'env:VARIABLE' or 'file:/path'"
        )
    if scheme == "env" and rest.upper().startswith(FORBIDDEN_ENV_PREFIX):
        raise CredentialsError(
            f"{label} {ref!r}: the orchestrator's own settings "
            f"({FORBIDDEN_ENV_PREFIX}*) never serve as {serves}"
        )
    if policy is not None:
        reason = credentials_ref_refusal(ref, policy)
        if reason:
            raise CredentialsError(f"{label} {ref!r} {reason}")
        if scheme == "file":
            return _read_secret_file(ref, rest, policy, label)
    if scheme == "env":
        env = os.environ if environ is None else environ
        value = env.get(rest)
        if value is None:
            raise CredentialsError(
                f"{label} {ref!r}: environment variable {rest} is not set"
            )
        if not value.strip():
            raise CredentialsError(
                f"{label} {ref!r}: environment variable {rest} is empty"
            )
        return value.strip()
    if scheme == "file":
        path = Path(rest).expanduser()
        try:
            with path.open(encoding="utf-8") as fh:
                first = fh.readline()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise CredentialsError(
                f"{label} {ref!r}: cannot read {path}: {reason}"
            ) from None
        except UnicodeDecodeError:
            raise CredentialsError(
                f"{label} {ref!r}: {path} is not UTF-8 text"
            ) from None
        first = first.strip()
        if not first:
            raise CredentialsError(f"{label} {ref!r}: the first line is empty")
        return first
    raise CredentialsError(
        f"{label} {ref!r}: unknown scheme {scheme!r} (use 'env:' or 'file:')"
    )


def _read_secret_file(ref: str, rest: str, policy: TargetPolicy, label: str) -> str:
    """The first line of a file reference the policy allows lexically: its real path must
    also be inside the (real) secrets directory, and it must be a regular file."""
    assert policy.secrets_dir is not None
    real_dir = os.path.realpath(policy.secrets_dir)
    real = os.path.realpath(rest)
    if not path_inside(real, real_dir):
        raise CredentialsError(
            f"{label} {ref!r}: the file resolves (through a symbolic link) "
            f"outside {policy.secrets_dir}; {policy.allowed_refs()}"
        )
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise CredentialsError(f"{label} {ref!r}: cannot read it: {reason}") \
            from None
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        if regular:
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.readline(_MAX_LINE + 1)
    finally:
        os.close(fd)
    if not regular:
        raise CredentialsError(f"{label} {ref!r}: not a regular file")
    if len(data) > _MAX_LINE:
        raise CredentialsError(
            f"{label} {ref!r}: the first line is longer than {_MAX_LINE} bytes")
    try:
        first = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialsError(f"{label} {ref!r}: not UTF-8 text") from None
    if not first:
        raise CredentialsError(f"{label} {ref!r}: the first line is empty")
    return first


__all__ = [
    "Credentials", "CredentialsError", "parse_credentials", "resolve_credentials",
    "resolve_secret",
]
