"""Settings: `config/orchestrator.toml`, overridden by `ORCHESTRATOR_*` environment variables.

Every key of the TOML file is also an environment variable: `database_url` is
`ORCHESTRATOR_DATABASE_URL`, `log_format` is `ORCHESTRATOR_LOG_FORMAT`, and so on. The file
is chosen by `--config`, else `ORCHESTRATOR_CONFIG`, else `./config/orchestrator.toml` when
it exists; without a file the defaults below apply.

A bad value raises `SettingsError` with one line naming the key and the reason; the CLI turns
it into exit code 2.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orchestrator.domain.errors import OrchestratorError

ENV_PREFIX = "ORCHESTRATOR_"
DEFAULT_CONFIG_PATH = Path("config/orchestrator.toml")
MASK = "********"


USER_DATA_DIR = Path("~/.local/share/orchestrator")
# As root the embedded server runs as its own system user, which must traverse every
# ancestor of the data directory: a directory under /var/lib needs no change, one under
# /root would open /root (store/embedded.py).
ROOT_DATA_DIR = Path("/var/lib/orchestrator")


def default_data_dir(euid: int | None = None) -> Path:
    """The data directory when none is set: `/var/lib/orchestrator` for root, else
    `~/.local/share/orchestrator`."""
    if (os.geteuid() if euid is None else euid) == 0:
        return ROOT_DATA_DIR
    return USER_DATA_DIR.expanduser()


# prune_older_than, `orchestrator prune --older-than`: one or more <number><unit> parts,
# units w (weeks), d (days), h (hours), m (minutes): "90d", "12h", "2w", "1d12h"
_AGE = re.compile(r"^(?:[0-9]{1,6}[wdhm])+$")
_AGE_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60}
MAX_AGE = timedelta(days=36_500)


def parse_age(text: str) -> timedelta:
    """`90d`, `12h`, `30m`, `2w`, `1d12h`: an age of at least one minute. Raises
    ValueError saying what is wrong with `text` (the caller names the key or option)."""
    value = text.strip().lower()
    if not _AGE.match(value):
        raise ValueError(f"{text!r} is not a duration such as 90d, 12h, 30m, 2w or 1d12h "
                         "(units w, d, h, m)")
    age = timedelta(seconds=sum(int(n) * _AGE_UNITS[u]
                                for n, u in re.findall(r"([0-9]+)([wdhm])", value)))
    if not timedelta(minutes=1) <= age <= MAX_AGE:
        raise ValueError(f"{text!r} is out of range (1 minute to 36500 days)")
    return age


class SettingsError(OrchestratorError):
    """A setting is missing, unknown or invalid. The message is one line naming the key."""


# keys that existed once: a file or a variable that still names one gets a clear error
REMOVED_SETTINGS = {
    "appliance_http_client": "aiohttp is the only HTTP client now (the stream pool is "
    "gone); delete this setting",
}


class Settings(BaseModel):
    """Effective settings. Keep `config/orchestrator.toml` in step with this class."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- database -----------------------------------------------------------------
    database_url: str | None = None
    # the database on that server (or on the embedded one) when not the URL's own (the
    # embedded server's default is `orchestrator`): e.g. orchestrator_demo, the database
    # `orchestrator demo` fills, to look at the demo's rollout afterwards
    database_name: str | None = None
    db_pool_min_size: int = Field(default=2, ge=0, le=100)
    db_pool_max_size: int = Field(default=10, ge=1, le=500)
    db_command_timeout: float = Field(default=30.0, gt=0, le=3600)
    # ~/.local/share/orchestrator; as root /var/lib/orchestrator (store/embedded.py)
    data_dir: Path = Field(default_factory=default_data_dir)

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
    # HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc for the proxy's credentials) apply
    appliance_trust_env: bool = True
    # where credentials_ref may point and where credentials may go (domain/inventory.py)
    appliance_credentials_env_prefix: str = Field(
        default="APPLIANCE_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    appliance_secrets_dir: Path | None = Path("/etc/orchestrator/secrets")
    appliance_allow_http: bool = False
    appliance_allow_local_addresses: bool = False
    appliance_allowed_networks: list[str] = []
    appliance_allowed_domains: list[str] = []
    appliance_import_max_rows: int = Field(default=200_000, ge=1, le=10_000_000)

    # --- engine ---------------------------------------------------------------------
    engine_lease_seconds: float = Field(default=30.0, ge=2, le=3600)
    engine_poll_interval: float = Field(default=2.0, gt=0, le=300)
    engine_shutdown_deadline: float = Field(default=20.0, ge=0, le=3600)
    eta_task_seconds: float = Field(default=900.0, gt=0, le=86_400)
    engine_max_tasks: int = Field(default=2000, ge=1, le=100_000)
    # how often an appliance holding a timed-out install's slot is looked at again
    engine_held_slot_interval: float = Field(default=15.0, gt=0, le=3600)

    # --- webhooks (engine/notifier.py) ------------------------------------------------
    # seconds between two looks for deliveries due when none was sent; requests in flight
    # at once per engine; a request's connect and total timeouts (and the lease of a
    # delivery being sent); attempts and age
    # (seconds since the event) after which a retryable answer fails the delivery; the
    # exponential back-off with jitter between attempts (base and cap, seconds); at most
    # one task.failed batch per webhook every webhook_batch_seconds
    webhook_poll_interval: float = Field(default=1.0, gt=0, le=300)
    webhook_concurrency: int = Field(default=8, ge=1, le=1000)
    webhook_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    webhook_request_timeout: float = Field(default=10.0, gt=0, le=300)
    # seconds a claimed delivery stays with its engine; then (the engine died) another
    # engine sends it again: longer than a request
    webhook_lease_seconds: float = Field(default=60.0, ge=2, le=3600)
    webhook_max_attempts: int = Field(default=10, ge=1, le=1000)
    webhook_max_age: float = Field(default=86_400.0, ge=60, le=30 * 86_400)
    webhook_backoff_base: float = Field(default=2.0, gt=0, le=3600)
    webhook_backoff_cap: float = Field(default=300.0, gt=0, le=86_400)
    webhook_batch_seconds: float = Field(default=30.0, ge=0, le=86_400)

    # --- retention ------------------------------------------------------------------
    # the engine deletes the tasks and events of rollouts that ended longer ago than this
    # ("90d"; unset: never, `orchestrator prune` does it by hand), every prune_interval s
    prune_older_than: str | None = None
    prune_interval: float = Field(default=86_400.0, ge=60, le=30 * 86_400)

    # --- REST API -------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    # HTTPS: a PEM certificate (chain) and its private key; both or neither
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    # seconds a token lookup is reused (a revoked token works at most this long after)
    api_token_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    # failed authentications (a bad, revoked or expired token) per client address and
    # minute before it gets 429 with Retry-After
    api_auth_failures_per_minute: int = Field(default=60, ge=1, le=100_000)
    # true: the token that created a rollout may not approve its waves (403)
    api_forbid_self_approval: bool = False
    # unauthenticated load (api/metrics.py, api/events.py, store/db.py): seconds the
    # database figures of /metrics are reused; a bearer token /metrics requires (the
    # token, or env:NAME / file:PATH naming where it is; unset: no token); open event
    # streams per token and in all; seconds between two checks of a stream's token; and
    # seconds a request waits for a database connection before its 503
    api_metrics_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    api_metrics_token: str | None = None
    api_sse_max_streams_per_token: int = Field(default=10, ge=1, le=10_000)
    api_sse_max_streams: int = Field(default=200, ge=1, le=100_000)
    api_sse_token_recheck_seconds: float = Field(default=5.0, gt=0, le=300)
    api_db_acquire_timeout: float = Field(default=10.0, gt=0, le=300)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("database_name")
    @classmethod
    def _check_database_name(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
            raise ValueError("letters, digits and '_' only, not starting with a digit, "
                             "at most 63 characters")
        return value

    @field_validator("prune_older_than")
    @classmethod
    def _check_prune_older_than(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_age(value)
        return value.strip().lower()

    @property
    def prune_age(self) -> timedelta | None:
        """prune_older_than as a timedelta; None: the engine does not prune."""
        return None if self.prune_older_than is None else parse_age(self.prune_older_than)

    @field_validator("api_metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        scheme, sep, rest = value.partition(":")
        if sep and scheme in ("env", "file"):
            if not rest.strip():
                raise ValueError(f"{scheme}: names nothing (env:NAME or file:PATH)")
        elif len(value) < 16:
            raise ValueError("a metrics token must have at least 16 characters")
        return value

    @field_validator("api_tls_cert", "api_tls_key", mode="before")
    @classmethod
    def _empty_path_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.api_tls_cert is None) != (self.api_tls_key is None):
            given, missing = (("api_tls_cert", "api_tls_key") if self.api_tls_cert
                              else ("api_tls_key", "api_tls_cert"))
            raise ValueError(f"{given} is set but {missing} is not: HTTPS needs both the "
                             "certificate and its private key")
        return self

    @field_validator("appliance_credentials_env_prefix")
    @classmethod
    def _check_env_prefix(cls, value: str) -> str:
        if value.upper().startswith(ENV_PREFIX[: len(value)]):
            raise ValueError(f"must not be a prefix of {ENV_PREFIX} (the settings' own "
                             "variables never hold appliance credentials)")
        return value

    @field_validator("appliance_secrets_dir", mode="before")
    @classmethod
    def _check_secrets_dir(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or value == "":
            return None
        path = Path(str(value)).expanduser()
        if not path.is_absolute() or path == Path("/"):
            raise ValueError("must be an absolute directory other than /")
        data_dir = info.data.get("data_dir")
        if isinstance(data_dir, Path) and data_dir.expanduser().is_relative_to(path):
            raise ValueError(f"holds data_dir ({data_dir}), whose files (the database's "
                             "password among them) are no appliance credentials")
        return path

    @field_validator("appliance_allowed_networks", "appliance_allowed_domains",
                     mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):  # from an environment variable: comma-separated
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("appliance_allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network such as 10.20.0.0/16") from None
        return [str(ipaddress.ip_network(item, strict=False)) for item in value]

    @field_validator("appliance_allowed_domains")
    @classmethod
    def _check_domains(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            domain = item.strip().lstrip("*").strip(".").lower()
            if not re.fullmatch(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", domain):
                raise ValueError(f"{item!r} is not a domain suffix such as example.net")
            out.append(domain)
        return out

    @model_validator(mode="after")
    def _check_pool(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"db_pool_min_size ({self.db_pool_min_size}) is larger than db_pool_max_size "
                f"({self.db_pool_max_size})"
            )
        return self

    @field_validator("webhook_lease_seconds")
    @classmethod
    def _check_webhook_lease(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("webhook_request_timeout")
        if timeout is not None and value < timeout + 1:
            raise ValueError(f"must be at least webhook_request_timeout + 1 s "
                             f"({timeout + 1:g}): a lease must outlast its request")
        return value

    @field_validator("webhook_backoff_cap")
    @classmethod
    def _check_webhook_backoff(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("webhook_backoff_base")
        if base is not None and value < base:
            raise ValueError(f"is smaller than webhook_backoff_base ({base:g}): the back-off "
                             "between two webhook attempts grows from the base to the cap")
        return value

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
            elif key == "api_metrics_token" and value and \
                    not value.startswith(("env:", "file:")):
                value = MASK
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
        if key in REMOVED_SETTINGS:
            raise SettingsError(
                f"{key} (in {path}): this setting was removed: {REMOVED_SETTINGS[key]}"
            )
        if key not in known:
            raise SettingsError(f"{key}: unknown setting in {path}")
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in REMOVED_SETTINGS:
            raise SettingsError(
                f"{name}: the setting {key} was removed: {REMOVED_SETTINGS[key]}"
            )
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
        elif key == "api_metrics_token":
            shown = MASK
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise SettingsError(f"{key} (from {where}): {msg}; got {shown!r}") from None


def setting_default(name: str) -> Any:
    """The default of setting `name`: the configurations built from the settings
    (EngineConfig, NotifierConfig) take it as their own field's default (one definition)."""
    return Settings.model_fields[name].default
