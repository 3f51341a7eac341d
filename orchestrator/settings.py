"""Settings: `config/orchestrator.toml`, overridden by `ORCHESTRATOR_*` environment variables.

Every key of the TOML file is also an environment variable: `database_url` is
`ORCHESTRATOR_DATABASE_URL`, `log_format` is `ORCHESTRATOR_LOG_FORMAT`, and so on. The file
is chosen by `--config`, else `ORCHESTRATOR_CONFIG`, else `./config/orchestrator.toml` when
it exists; without a file the defaults below apply.

A bad value raises `SettingsError` with one line naming the key and the reason; the CLI turns
it into exit code 2.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_CONFIG_PATH = Path("config/orchestrator.toml")
MASK = "********"


class SettingsError(Exception):
    """A setting is missing, unknown or invalid. The message is one line naming the key."""


class Settings(BaseModel):
    """Effective settings. Keep `config/orchestrator.toml` in step with this class."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- database -----------------------------------------------------------------
    database_url: str | None = None
    db_pool_min_size: int = Field(default=2, ge=0, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)
    db_command_timeout: float = Field(default=30.0, gt=0, le=3600)
    data_dir: Path = Path("~/.local/share/orchestrator")

    # --- logging --------------------------------------------------------------------
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- appliance API client ---------------------------------------------------------
    appliance_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    appliance_request_timeout: float = Field(default=30.0, gt=0, le=3600)
    appliance_max_connections: int = Field(default=1000, ge=1, le=100_000)
    appliance_max_connections_per_host: int = Field(default=4, ge=0, le=1000)
    appliance_retries: int = Field(default=2, ge=0, le=10)
    appliance_session_max_age: float = Field(default=300.0, gt=0, le=86_400)
    appliance_verify_tls: bool = True
    # "stream": the lean keep-alive HTTP/1.1 pool of orchestrator/appliance/transport.py
    # (about half the CPU per request); "aiohttp": aiohttp's ClientSession
    appliance_http_client: Literal["stream", "aiohttp"] = "stream"

    # --- engine ---------------------------------------------------------------------
    engine_lease_seconds: float = Field(default=30.0, ge=2, le=3600)
    engine_poll_interval: float = Field(default=2.0, gt=0, le=300)
    engine_shutdown_deadline: float = Field(default=20.0, ge=0, le=3600)
    eta_task_seconds: float = Field(default=900.0, gt=0, le=86_400)
    engine_max_tasks: int = Field(default=2000, ge=1, le=100_000)
    # how often an appliance holding a timed-out install's slot is looked at again
    engine_held_slot_interval: float = Field(default=15.0, gt=0, le=3600)

    # --- REST API -------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"db_pool_min_size ({self.db_pool_min_size}) is larger than db_pool_max_size "
                f"({self.db_pool_max_size})"
            )
        return self

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: Path) -> Path:
        return value.expanduser()

    def effective_log_format(self, is_tty: bool) -> Literal["json", "console"]:
        if self.log_format == "auto":
            return "console" if is_tty else "json"
        return self.log_format

    def masked(self) -> dict[str, Any]:
        """The settings as plain values with every secret masked."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            if key == "database_url" and value:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value)
            out[key] = value
        return out


def mask_url(url: str) -> str:
    """Replace the password of a URL (and any `password=` query value) with a mask."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{host}"
    query = "&".join(
        f"{k}={MASK}" if k.lower() in ("password", "sslpassword") else f"{k}={v}"
        for k, _, v in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise SettingsError(f"config file {path}: not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise SettingsError(f"config file {path}: cannot be read: {exc.strerror}") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            raise SettingsError(
                f"{key}: tables are not used in {path}; write the keys at the top level"
            )
        flat[key] = value
    return flat


def _config_path(explicit: str | os.PathLike[str] | None, env: dict[str, str]) -> Path | None:
    if explicit:
        return Path(explicit)
    from_env = env.get(ENV_PREFIX + "CONFIG")
    if from_env:
        return Path(from_env)
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    return None


def load_settings(
    config_path: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read the TOML file, apply environment overrides, validate.

    Raises SettingsError naming the first bad key.
    """
    env = dict(os.environ if environ is None else environ)
    path = _config_path(config_path, env)
    values: dict[str, Any] = _read_toml(path) if path else {}
    source: dict[str, str] = {key: str(path) for key in values}
    known = set(Settings.model_fields)
    for key in values:
        if key not in known:
            raise SettingsError(f"{key}: unknown setting in {path}")
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in known:
            raise SettingsError(f"{name}: unknown setting (known: {', '.join(sorted(known))})")
        values[key] = raw
        source[key] = name
    try:
        return Settings(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "db_pool_min_size"
        where = source.get(key, "default")
        shown = err.get("input")
        if key == "database_url" and isinstance(shown, str):
            shown = mask_url(shown)
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{key} (from {where}): {msg}; got {shown!r}") from None
