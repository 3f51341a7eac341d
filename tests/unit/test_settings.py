from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.settings import SettingsError, load_settings, mask_url


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(environ={})
    assert s.database_url is None
    assert s.log_format == "auto"
    # as root the default is outside /root (the embedded server's user must traverse it)
    home = "/var/lib/orchestrator" if os.geteuid() == 0 else "~/.local/share/orchestrator"
    assert s.data_dir == Path(home).expanduser()


def test_shipped_config_file_is_valid_and_lists_every_setting() -> None:
    root = Path(__file__).resolve().parents[2]
    path = root / "config" / "orchestrator.toml"
    s = load_settings(path, environ={})
    text = path.read_text()
    for key in type(s).model_fields:
        assert f"{key} =" in text, f"{key} is not documented in config/orchestrator.toml"


def test_environment_overrides_file(tmp_path: Path) -> None:
    cfg = tmp_path / "o.toml"
    cfg.write_text('log_format = "console"\napi_port = 9000\n')
    s = load_settings(cfg, environ={"ORCHESTRATOR_LOG_FORMAT": "json"})
    assert s.log_format == "json"
    assert s.api_port == 9000


def test_config_path_from_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "o.toml"
    cfg.write_text("api_port = 9001\n")
    s = load_settings(environ={"ORCHESTRATOR_CONFIG": str(cfg)})
    assert s.api_port == 9001


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ORCHESTRATOR_LOG_FORMAT": "xml"}, "log_format (from ORCHESTRATOR_LOG_FORMAT)"),
        ({"ORCHESTRATOR_API_PORT": "70000"}, "api_port (from ORCHESTRATOR_API_PORT)"),
        ({"ORCHESTRATOR_DB_POOL_MAX_SIZE": "many"}, "db_pool_max_size"),
        ({"ORCHESTRATOR_DATABASE_URL": "mysql://x/y"}, "database_url"),
        ({"ORCHESTRATOR_DATABASE_NAME": "demo; DROP"}, "database_name"),
        ({"ORCHESTRATOR_DATABASE_NAME": "1st"}, "database_name"),
        ({"ORCHESTRATOR_NO_SUCH_THING": "1"}, "ORCHESTRATOR_NO_SUCH_THING: unknown setting"),
        ({"ORCHESTRATOR_DB_POOL_MIN_SIZE": "50", "ORCHESTRATOR_DB_POOL_MAX_SIZE": "5"},
         "db_pool_min_size (50) is larger than db_pool_max_size (5)"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, environ=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_bad_file(tmp_path: Path) -> None:
    cfg = tmp_path / "o.toml"
    cfg.write_text("api_port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(cfg, environ={})
    cfg.write_text("colour = 'blue'\n")
    with pytest.raises(SettingsError, match="colour: unknown setting"):
        load_settings(cfg, environ={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_secret_never_in_error_or_masked_view() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={"ORCHESTRATOR_DATABASE_URL": "mysql://u:hunter2@h/db"})
    assert "hunter2" not in str(info.value)
    s = load_settings(environ={"ORCHESTRATOR_DATABASE_URL": "postgresql://u:hunter2@h:5/db"})
    assert "hunter2" not in str(s.masked())
    assert s.masked()["database_url"] == "postgresql://u:********@h:5/db"


def test_mask_url_query_password() -> None:
    assert mask_url("postgresql://h/db?password=x&sslmode=require") == (
        "postgresql://h/db?password=********&sslmode=require"
    )


def test_removed_http_client_setting_is_named_in_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "o.toml"
    cfg.write_text('appliance_http_client = "stream"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(cfg, environ={})
    message = str(info.value)
    assert message.startswith(f"appliance_http_client (in {cfg}): this setting was removed")
    assert "aiohttp is the only HTTP client" in message


def test_removed_http_client_setting_is_named_in_the_environment(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(None, environ={"ORCHESTRATOR_APPLIANCE_HTTP_CLIENT": "aiohttp"})
    message = str(info.value)
    assert message.startswith("ORCHESTRATOR_APPLIANCE_HTTP_CLIENT: the setting "
                              "appliance_http_client was removed")
    assert "aiohttp is the only HTTP client" in message


def test_trust_env_setting(tmp_path: Path) -> None:
    assert load_settings(None, environ={}).appliance_trust_env is True
    s = load_settings(None, environ={"ORCHESTRATOR_APPLIANCE_TRUST_ENV": "false"})
    assert s.appliance_trust_env is False


def test_the_engine_runs_with_the_settings_it_was_given() -> None:
    """`orchestrator run`, `serve` and the demo build the engine's configuration from the
    settings (`EngineConfig.from_settings`); its defaults are the settings' defaults."""
    from orchestrator.engine.engine import EngineConfig

    s = load_settings(None, environ={
        "ORCHESTRATOR_ENGINE_LEASE_SECONDS": "45", "ORCHESTRATOR_ENGINE_POLL_INTERVAL": "3",
        "ORCHESTRATOR_ENGINE_SHUTDOWN_DEADLINE": "7", "ORCHESTRATOR_ENGINE_MAX_TASKS": "12",
        "ORCHESTRATOR_ENGINE_HELD_SLOT_INTERVAL": "9",
        "ORCHESTRATOR_APPLIANCE_ALLOW_HTTP": "true",
    })
    config = EngineConfig.from_settings(s, min_poll=0.25)
    assert (config.lease_seconds, config.poll_interval, config.shutdown_deadline,
            config.max_tasks, config.held_slot_interval, config.min_poll) == (
        45.0, 3.0, 7.0, 12, 9.0, 0.25)
    assert (config.target_policy.allow_http, config.target_policy.allow_local) == (True, False)
    defaults, plain = EngineConfig.from_settings(load_settings(None, environ={})), EngineConfig()
    assert (defaults.lease_seconds, defaults.poll_interval, defaults.shutdown_deadline,
            defaults.max_tasks, defaults.held_slot_interval) == (
        plain.lease_seconds, plain.poll_interval, plain.shutdown_deadline, plain.max_tasks,
        plain.held_slot_interval)


def test_database_name_replaces_the_database_of_the_url() -> None:
    """`database_name` names another database on the same server; the URL's credentials,
    host, port and options stay (the demo's printed commands use it)."""
    from orchestrator.store.db import database_of, database_url

    s = load_settings(None, environ={
        "ORCHESTRATOR_DATABASE_URL": "postgresql://u:pw@db.example:5433/prod?sslmode=require",
        "ORCHESTRATOR_DATABASE_NAME": "orchestrator_demo"})
    with database_url(s) as url:
        assert url == "postgresql://u:pw@db.example:5433/orchestrator_demo?sslmode=require"
        assert database_of(url) == "orchestrator_demo"
    plain = load_settings(None, environ={"ORCHESTRATOR_DATABASE_URL": "postgresql://h/prod"})
    with database_url(plain) as url:
        assert url == "postgresql://h/prod"
