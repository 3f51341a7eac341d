"""Records shared across layers (frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Appliance:
    id: int
    name: str
    base_url: str
    site: str
    tags: tuple[str, ...]
    timezone: str | None
    credentials_ref: str | None
    tls_ca_file: str | None
    tls_thumbprint: str | None
    current_version: str | None
    last_seen_at: datetime | None
    enabled: bool
