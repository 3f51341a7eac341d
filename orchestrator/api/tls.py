"""HTTPS for the API, and the rule that bearer tokens do not cross a network in clear text.

`api_tls_cert` and `api_tls_key` (PEM files) make `orchestrator serve` answer HTTPS only
(TLS 1.2 or newer). Without them it serves plain HTTP, which is refused on any address but
a loopback one unless `--insecure-http` says that something else protects the traffic (a
reverse proxy on the same host, a private network you trust).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from pathlib import Path
from typing import Final

from orchestrator.domain.errors import OrchestratorError
from orchestrator.settings import Settings

LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class TlsError(OrchestratorError):
    """The certificate or key cannot be used; the message names the file and the reason."""


def is_loopback(host: str) -> bool:
    """True when `host` only accepts connections from this machine. Wildcards (`0.0.0.0`,
    `::`, empty) and every other name are not: they may face a network."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _readable(setting: str, path: Path) -> None:
    if not path.is_file():
        raise TlsError(f"{setting}: {path}: no such file")
    if not os.access(path, os.R_OK):
        raise TlsError(f"{setting}: {path}: cannot be read (permission denied)")


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The SSLContext of the API, or None when TLS is not configured. Raises TlsError naming
    the setting and the file (missing, unreadable, not PEM, key not matching)."""
    cert, key = settings.api_tls_cert, settings.api_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:  # Settings refuses it; kept for a hand-made Settings
        given = "api_tls_cert" if cert is not None else "api_tls_key"
        raise TlsError(f"{given} is set but not its pair: HTTPS needs both api_tls_cert "
                       "and api_tls_key")
    _readable("api_tls_cert", cert)
    _readable("api_tls_key", key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsError(
            f"api_tls_cert {cert} / api_tls_key {key}: not a PEM certificate and its "
            f"matching private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise TlsError(f"api_tls_cert {cert} / api_tls_key {key}: {exc.strerror or exc}") \
            from None
    return context
