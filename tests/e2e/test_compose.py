"""docker-compose.yml and the Dockerfile against the code (Docker itself is not needed):
every `orchestrator` command they run parses with the real CLI parser, every
`ORCHESTRATOR_*` variable is a setting (and its value is valid), and the services have the
health checks and the named volume docs/api.md describes."""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
import yaml

from orchestrator.cli.app import build_parser
from orchestrator.settings import ENV_PREFIX, Settings, load_settings
from tests.helpers import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SHELL_SEPARATORS = ("&&", "||", ";", "|")


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def orchestrator_invocations(entrypoint: list[str], command: list[str]) -> list[list[str]]:
    """The argument lists given to `orchestrator`, for an image whose entrypoint is
    `orchestrator`, or through `sh -c "..."` scripts."""
    argv = entrypoint + command
    if not argv:
        return []
    if argv[0] == "orchestrator":
        return [argv[1:]]
    if argv[0] in ("sh", "bash", "/bin/sh") and "-c" in argv:
        script = " ".join(argv[argv.index("-c") + 1:])
        found: list[list[str]] = []
        words: list[str] = []
        for word in [*shlex.split(script), ";"]:
            if word in SHELL_SEPARATORS:
                if words and words[0] == "exec":
                    words = words[1:]
                if words and words[0] == "orchestrator":
                    found.append(words[1:])
                words = []
            else:
                words.append(word)
        return found
    return []


def dockerfile_entrypoint() -> list[str]:
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            return _as_list(yaml.safe_load(line.split(None, 1)[1]))
    return []


def dockerfile_cmd() -> list[str]:
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("CMD"):
            return _as_list(yaml.safe_load(line.split(None, 1)[1]))
    return []


def services_of_our_image() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if "build" in svc or str(svc.get("image", "")).startswith("orchestrator")}


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_orchestrator_command_exists_in_the_cli() -> None:
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    seen = []
    for name, svc in services_of_our_image().items():
        entrypoint = _as_list(svc["entrypoint"]) if "entrypoint" in svc \
            else dockerfile_entrypoint()
        command = _as_list(svc["command"]) if "command" in svc else dockerfile_cmd()
        invocations = orchestrator_invocations(entrypoint, command)
        assert invocations, f"service {name} runs no orchestrator command"
        for args in invocations:
            assert args[0] in commands, f"service {name}: no command {args[0]!r}"
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                pytest.fail(f"service {name}: `orchestrator {shlex.join(args)}` does not "
                            f"parse (exit {exc.code})")
            seen.append(args[0])
    # the image's default command too
    parser.parse_args(dockerfile_cmd())
    assert {"migrate", "serve", "simulate"} <= set(seen)


def test_every_orchestrator_variable_is_a_setting() -> None:
    known = set(Settings.model_fields)
    texts = [DOCKERFILE.read_text()]
    for name, svc in compose()["services"].items():
        env = environment(svc)
        ours = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        for key in ours:
            setting = key[len(ENV_PREFIX):].lower()
            assert key == ENV_PREFIX + "CONFIG" or setting in known, \
                f"service {name}: {key} is not a setting (known: {sorted(known)})"
        if ours:
            load_settings(environ=ours)  # the values are valid too (SettingsError if not)
        texts.append(COMPOSE.read_text())
    # any other mention (the Dockerfile's ENV, comments) names a setting too
    for text in texts:
        for key in re.findall(rf"{ENV_PREFIX}[A-Z0-9_]+", text):
            assert key[len(ENV_PREFIX):].lower() in known or key == ENV_PREFIX + "CONFIG", key


def test_services_health_checks_and_volume() -> None:
    data = compose()
    services = data["services"]
    assert {"postgres", "orchestrator", "fleet"} <= set(services)
    for name in ("postgres", "orchestrator", "fleet"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no health check"
    assert "readyz" in str(services["orchestrator"]["healthcheck"]["test"])
    assert services["orchestrator"]["depends_on"]["postgres"]["condition"] == \
        "service_healthy"
    volumes = data["volumes"]
    assert "pgdata" in volumes
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    url = environment(services["orchestrator"])["ORCHESTRATOR_DATABASE_URL"]
    assert "@postgres:5432/" in url
    # the orchestrator's command migrates before it serves
    script = " ".join(_as_list(services["orchestrator"]["command"]))
    assert script.index("migrate") < script.index("serve")


def test_docs_explain_compose() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    assert "docker compose up" in text
    assert "real appliances" in text
