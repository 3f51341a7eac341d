"""The Grafana dashboards and the monitoring files under deploy/ against the code.

Every metric a dashboard panel queries is one the orchestrator's `/metrics` exports, and
every label a panel filters or groups by is one that metric carries: the exported names and
labels come from scraping `/metrics` of the API app with an engine that ran a small rollout
(one appliance fine, one whose install is refused with a 500, one whose install fails) on a
real database. The dashboards' PromQL is parsed with `promql-parser` (the Prometheus
grammar, not regular expressions). The Compose file's `monitoring` profile mounts files
that exist, Prometheus scrapes the orchestrator service on its API port, and the
dashboards use the datasource Grafana is given (by uid).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import promql_parser
import yaml
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.engine.engine import Engine
from orchestrator.simulator import FaultProfile
from tests.fleet import create, fast_engine_config, fleet, http_client, wait_until_terminal
from tests.helpers import ROOT
from tests.integration.test_api_support import api_client

COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources"
PROVIDERS = GRAFANA / "provisioning" / "dashboards"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
MONITORING = ("prometheus", "grafana")

# Grafana's built-in variables, replaced by a value of their kind before parsing; any other
# `$` left in a query is reported (the dashboards define no variables of their own).
GRAFANA_VARIABLES = {
    "${__rate_interval}": "1m", "$__rate_interval": "1m",
    "${__interval}": "15s", "$__interval": "15s",
    "${__range}": "6h", "$__range": "6h",
}
# Prometheus attaches these to every series it scrapes.
TARGET_LABELS = frozenset({"instance", "job", "__name__"})
# Series a family of each type exports (prometheus_client, text format 0.0.4).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


# ------------------------------------------------------------------ what /metrics exports
class Exported(dict[str, set[str]]):
    """Every series name a scrape offers (a histogram's `_bucket`, `_sum`, `_count`, a
    counter's `_total`, ...) with the label names its samples carry; `family[series]` is
    the metric family the series belongs to."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.family: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            names = [family.name + suffix for suffix in SUFFIXES[family.type]]
            for sample in family.samples:
                names.append(sample.name)
                self.setdefault(sample.name, set()).update(sample.labels)
            # the text format writes a `_created` series as a gauge family of its own
            owner = family.name.removesuffix("_created")
            for name in names:
                self.setdefault(name, set())
                self.family[name] = owner


# ------------------------------------------------------------------ what dashboards query
def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside (collapsed) rows included."""
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, refId, PromQL) of every query of a dashboard: panel targets and the
    queries of template variables."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('title')!r}", target.get("refId", "?"), target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            yield f"variable {variable.get('name')!r}", "query", query


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names) of every series selector of a PromQL expression: the
    labels its matchers name and those the aggregations around it group by."""
    found: list[tuple[str, set[str]]] = []
    grouping: list[set[str]] = []

    def enter(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            grouping.append(set(node.modifier.labels) if node.modifier is not None else set())
        elif isinstance(node, promql_parser.VectorSelector):
            matchers = node.matchers.matchers + [
                m for group in node.matchers.or_matchers for m in group]
            name = node.name or next(
                (m.value for m in matchers
                 if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal), None)
            if name is None:
                raise ValueError(f"a selector without a metric name: {node}")
            labels = {m.name for m in matchers} - {"__name__"}
            for group in grouping:
                labels |= group
            found.append((name, labels))

    def leave(node: Any) -> None:
        if isinstance(node, promql_parser.AggregateExpr):
            grouping.pop()

    promql_parser.walk(promql_parser.parse(expr), enter, leave)
    return found


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def problems(dashboard: dict[str, Any], exported: Exported) -> list[str]:
    """What in `dashboard` queries a series or a label that `exported` lacks (or cannot be
    parsed); empty when every query is sound."""
    found = []
    for where, ref, raw in queries(dashboard):
        expr = substitute(raw)
        if "$" in expr:
            found.append(f"{where} ({ref}): an unknown variable in {raw!r}")
            continue
        try:
            used = selectors(expr)
        except ValueError as exc:
            found.append(f"{where} ({ref}): {raw!r} does not parse: {exc}")
            continue
        for name, labels in used:
            if name not in exported:
                found.append(f"{where} ({ref}): {name} is not exported by /metrics")
                continue
            unknown = labels - exported[name] - TARGET_LABELS
            if unknown:
                found.append(f"{where} ({ref}): {name} has no label "
                             f"{', '.join(sorted(unknown))} "
                             f"(its labels: {', '.join(sorted(exported[name])) or 'none'})")
    return found


def dashboard_files() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in DASHBOARDS]


# ------------------------------------------------------------------ the scrape
FAULTS = FaultProfile(appliances={"sim-00002": ("install_500",),
                                  "sim-00003": ("install_error",)})


async def scrape_after_a_rollout(pool: asyncpg.Pool, db_url: str) -> str:
    """`/metrics` of the API app whose in-process engine ran a rollout to its end."""
    async with fleet(pool, db_url, appliances=3, sites=1, profile=FAULTS), \
            http_client() as http:
        engine = Engine(pool, http, fast_engine_config(), database_url=db_url)
        async with api_client(pool, engine=engine, http=http) as client:
            run = asyncio.create_task(engine.run())
            try:
                rollout_id = await create(pool, {"dispatch_retries": 0})
                await wait_until_terminal(pool, rollout_id)
            finally:
                engine.stop()
                await asyncio.wait_for(run, 30)
            async with client.get("/api/v1/rollouts") as resp:
                assert resp.status == 401  # an API request with its status and route
            async with client.get("/metrics") as resp:
                assert resp.status == 200
                return await resp.text()


async def test_every_dashboard_query_uses_exported_metrics_and_labels(
        pool: asyncpg.Pool, db_url: str) -> None:
    exported = Exported(await scrape_after_a_rollout(pool, db_url))
    # the scrape saw what the dashboards' labels are checked against
    assert {"to_state"} <= exported["orchestrator_task_transitions_total"]
    assert {"kind"} <= exported["orchestrator_appliance_api_errors_total"]
    assert {"method", "route", "status"} <= exported["orchestrator_api_requests_total"]
    assert DASHBOARDS, "no dashboard under deploy/grafana/dashboards"
    queried: set[str] = set()
    for path, dashboard in dashboard_files():
        assert problems(dashboard, exported) == [], path.name
        for _, _, expr in queries(dashboard):
            queried |= {name for name, _ in selectors(substitute(expr))}
    # and the dashboards show every family the orchestrator exports
    families = {f for f in exported.family.values() if f.startswith("orchestrator_")}
    shown = {exported.family[name] for name in queried}
    assert families - shown == set(), "exported, but on no dashboard"

    # the check fails where it must: a planted unknown metric, label or series
    planted = copy.deepcopy(dashboard_files()[0][1])
    planted["panels"].append({"type": "row", "title": "planted", "panels": [
        {"type": "timeseries", "title": "planted", "targets": [
            {"refId": "A", "expr": "sum(rate(orchestrator_not_exported_total[5m]))"},
            {"refId": "B", "expr": 'max by (site) (orchestrator_tasks{state="FAILED"})'},
            {"refId": "C", "expr": "orchestrator_held_slots_bucket"},
            {"refId": "D", "expr": "orchestrator_install_duration_seconds"},
            {"refId": "E", "expr": "rate(orchestrator_tasks[$unknown])"},
            {"refId": "F", "expr": "sum(rate(orchestrator_api_requests_total[5m]"},
        ]}]})
    assert problems(planted, exported) == [
        "panel 'planted' (A): orchestrator_not_exported_total is not exported by /metrics",
        "panel 'planted' (B): orchestrator_tasks has no label site (its labels: state)",
        "panel 'planted' (C): orchestrator_held_slots_bucket is not exported by /metrics",
        "panel 'planted' (D): orchestrator_install_duration_seconds is not exported by "
        "/metrics",
        "panel 'planted' (E): an unknown variable in 'rate(orchestrator_tasks[$unknown])'",
        "panel 'planted' (F): 'sum(rate(orchestrator_api_requests_total[5m]' does not "
        "parse: unclosed left parenthesis",
    ]


# ------------------------------------------------------------------ the files
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (relative to the file)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def yaml_file(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def test_monitoring_services_are_behind_a_profile_and_mount_files_that_exist() -> None:
    data = compose()
    services = data["services"]
    for name, service in services.items():
        if name in MONITORING:
            assert service.get("profiles") == ["monitoring"], name
            # pinned: a tag naming a whole version, never `latest` or a moving `3`
            image, _, tag = service["image"].rpartition(":")
            assert image and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), service["image"]
            mounts = bind_mounts(service)
            assert mounts, f"{name} mounts nothing from deploy/"
            for target, source in mounts.items():
                assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"
                assert source.is_relative_to(DEPLOY.resolve()), source
            for volume in service.get("volumes", []):
                named = str(volume).split(":")[0]
                assert named.startswith((".", "/")) or named in data["volumes"], volume
            # published on the loopback address only
            assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name
        else:  # `docker compose up` without the profile starts what it always started
            assert "profiles" not in service, name
    assert bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"] == \
        PROMETHEUS.resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = bind_mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    # the dashboard provider reads the folder the dashboards are mounted at
    (provider,) = yaml_file(PROVIDERS / "orchestrator.yml")["providers"]
    assert provider["type"] == "file"
    assert grafana[provider["options"]["path"]] == (GRAFANA / "dashboards").resolve()
    env = services["grafana"]["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_dir, _, home_file = home.rpartition("/")
    assert (grafana[home_dir] / home_file).is_file(), home
    # anonymous visitors may only view; the admin password comes from the environment
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")


def test_prometheus_scrapes_the_orchestrator_service() -> None:
    services = compose()["services"]
    orchestrator = services["orchestrator"]
    port = orchestrator["environment"]["ORCHESTRATOR_API_PORT"]
    assert f"--port {port}" in " ".join(shlex.split(" ".join(orchestrator["command"])))
    config = yaml_file(PROMETHEUS)
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["scheme"] == "http"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"orchestrator:{port}"]
    # the token's place is shown (commented): a file, never the token itself
    text = PROMETHEUS.read_text()
    assert "#   credentials_file: /run/secrets/metrics-token" in text
    assert "ORCHESTRATOR_API_METRICS_TOKEN: file:/run/secrets/metrics-token" in text
    assert "# ORCHESTRATOR_API_METRICS_TOKEN: file:/run/secrets/metrics-token" in \
        COMPOSE.read_text()
    # Grafana's datasource is that Prometheus, and knows its scrape interval
    (datasource,) = yaml_file(DATASOURCES / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


def test_dashboards_use_the_provisioned_datasource() -> None:
    (datasource,) = yaml_file(DATASOURCES / "prometheus.yml")["datasources"]
    provisioned = {"type": datasource["type"], "uid": datasource["uid"]}
    assert DASHBOARDS
    uids = set()
    for path, dashboard in dashboard_files():
        assert dashboard["uid"] not in uids, path.name
        uids.add(dashboard["uid"])
        assert dashboard.get("templating", {}).get("list", []) == [] or all(
            v.get("type") != "datasource" for v in dashboard["templating"]["list"])
        for panel in panels(dashboard):
            if panel.get("type") == "row":
                continue
            assert panel["datasource"] == provisioned, (path.name, panel.get("title"))
            assert panel["targets"], (path.name, panel.get("title"))
            for target in panel["targets"]:
                assert target["datasource"] == provisioned, (path.name, panel["title"])
