"""The monitoring shipped in deploy/ (Prometheus's alerts and scrape configuration, Grafana's
dashboard and provisioning), read as files against the metrics the code really exports: a
renamed metric, or a query naming one that never existed, fails here rather than leaving an
alert that can never fire or a panel that stays empty."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

import worker.metrics
from webhooks.metrics import edge_metrics
from worker.metrics import STORE_GAUGES
from worker.tasks.metrics_endpoint import StoreCollector

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS / "crmhook.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"

# Where docker-compose.yml mounts the files, as the configurations refer to them.
MOUNTS = {
    "prometheus": {
        "deploy/prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
        "deploy/prometheus/alerts.yml": "/etc/prometheus/alerts.yml",
    },
    "grafana": {
        "deploy/grafana/provisioning/datasources/prometheus.yml": (
            "/etc/grafana/provisioning/datasources/prometheus.yml"
        ),
        "deploy/grafana/provisioning/dashboards/crmhook.yml": (
            "/etc/grafana/provisioning/dashboards/crmhook.yml"
        ),
        "deploy/grafana/dashboards/crmhook.json": "/var/lib/grafana/dashboards/crmhook.json",
    },
}
# The port each scraped compose service serves /metrics on, by the variable compose sets.
METRICS_PORT_VARIABLE = {"web": "PORT", "worker": "WORKER_METRICS_PORT"}

# The samples each kind of family exposes (prometheus-client names a counter's family without
# its `_total`).
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
# Names a PromQL expression may use: ours, and the `up` Prometheus writes for every scrape.
METRIC_NAME = re.compile(r"\b(crmhook_[a-z_]+|up)\b")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# What may take a gauge read from Redis: every worker instance reports the same value, so
# `max` (or `absent`, or a `max_over_time` of a `max`), never a `sum`.
TAKEN_AS_ONE = re.compile(r"(?:\bmax\s*(?:by\s*\([^()]*\)\s*)?|\babsent\s*)\(\s*$")
DURATION = re.compile(r"^(?:\d+[smhd])+$")
SEVERITIES = {"critical", "warning"}


# --- what the code exports -------------------------------------------------------------------


def exported_families() -> list[Metric]:
    """The families of the web's registry, the worker's counters and histograms, and the
    gauges the worker reads from Redis (described without asking Redis)."""
    web = list(edge_metrics().registry.collect())
    counted = [
        family
        for value in vars(worker.metrics).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    ]
    store = list(StoreCollector(None).describe())  # describe() never touches the runtime
    return web + counted + store


def exported_samples() -> dict[str, str]:
    """Every sample name the code exports, to the family it belongs to."""
    return {
        family.name + suffix: family.name
        for family in exported_families()
        for suffix in SAMPLE_SUFFIXES[family.type]
    }


# --- what the files say ----------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queried_panels() -> list[dict[str, Any]]:
    return [panel for panel in all_panels(dashboard()["panels"]) if panel["type"] != "row"]


def panel_exprs(panel: dict[str, Any]) -> list[str]:
    return [target["expr"] for target in panel.get("targets", []) if target.get("expr")]


def every_expr() -> list[str]:
    return [rule["expr"] for rule in alerts()] + [
        expr for panel in queried_panels() for expr in panel_exprs(panel)
    ]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (label values, in quotes, are not names)."""
    return set(METRIC_NAME.findall(STRING.sub('""', expr)))


def scraped_jobs(expr: str) -> set[str]:
    """The jobs an expression's `up{job=...}` selectors name (`=~"a|b"` names both)."""
    jobs: set[str] = set()
    for matchers in re.findall(r"\bup\s*\{([^}]*)\}", expr):
        for operator, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', matchers):
            jobs.update(value.split("|") if operator == "=~" else [value])
    return jobs


def balanced(expr: str) -> bool:
    closing = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in closing and (not stack or stack.pop() != closing[char]):
            return False
    return not stack


# --- every metric named is exported ----------------------------------------------------------


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_metric_an_alert_names_is_exported(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, "an alert over no metric"
    assert balanced(rule["expr"])
    unknown = names - exported_samples().keys() - {"up"}
    assert not unknown, f"not exported by the code: {sorted(unknown)}"


@pytest.mark.parametrize("panel", queried_panels(), ids=lambda panel: panel["title"])
def test_every_metric_a_panel_queries_is_exported(panel: dict[str, Any]) -> None:
    exprs = panel_exprs(panel)
    assert exprs, "a panel with no query"
    for expr in exprs:
        assert metric_names(expr), expr
        assert balanced(expr), expr
        unknown = metric_names(expr) - exported_samples().keys() - {"up"}
        assert not unknown, f"not exported by the code: {sorted(unknown)}"


def test_the_dashboard_shows_every_metric_the_code_exports() -> None:
    samples = exported_samples()
    shown = {
        samples[name]
        for panel in queried_panels()
        for expr in panel_exprs(panel)
        for name in metric_names(expr)
        if name in samples
    }
    missing = {family.name for family in exported_families()} - shown
    assert not missing, f"no panel shows {sorted(missing)}"


def test_the_families_are_read_from_every_part_of_the_code() -> None:
    """The check above is only as good as this list: the web's, the worker's and the
    store's families are all in it, each with the samples of its type."""
    samples = exported_samples()
    assert samples["crmhook_requests_total"] == "crmhook_requests"  # web counter
    assert samples["crmhook_enqueue_seconds_bucket"] == "crmhook_enqueue_seconds"  # web
    assert samples["crmhook_operations_total"] == "crmhook_operations"  # worker counter
    assert samples["crmhook_chilipiper_call_seconds_count"] == "crmhook_chilipiper_call_seconds"
    assert set(STORE_GAUGES) <= samples.keys()  # gauges: the family's name is the sample's
    assert "crmhook_requests" not in samples  # a counter has no sample without `_total`
    assert "crmhook_dead_letters_total" not in samples


@pytest.mark.parametrize("expr", every_expr())
def test_gauges_read_from_redis_are_taken_with_max_never_summed(expr: str) -> None:
    for match in re.finditer(r"\b(crmhook_[a-z_]+)\b", expr):
        if match.group(1) in STORE_GAUGES:
            before = expr[: match.start()]
            assert TAKEN_AS_ONE.search(before), f"{match.group(1)} not under max() in {expr}"


def test_the_max_rule_refuses_a_sum() -> None:
    """The rule above, on expressions it must refuse and accept."""
    assert not TAKEN_AS_ONE.search("sum(")
    assert not TAKEN_AS_ONE.search("sum by (action) (")
    assert not TAKEN_AS_ONE.search("max(rate(")
    assert TAKEN_AS_ONE.search("max by (action) (")
    assert TAKEN_AS_ONE.search("x or absent(")


# --- alerts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_every_alert_says_how_long_how_bad_and_what_to_do(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"Crmhook[A-Za-z]+", rule["alert"])
    assert DURATION.match(str(rule["for"])), rule.get("for")
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    runbook = annotations["runbook"]
    assert runbook.startswith("README.md#operating-it: ")
    assert len(runbook) > len("README.md#operating-it: ") + 10  # a step, not only the anchor


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))


def test_the_alerts_cover_what_an_operator_must_act_on() -> None:
    """One alert at least over each of these."""
    watched = {name for rule in alerts() for name in metric_names(rule["expr"])}
    assert {
        "crmhook_dead_letters",
        "crmhook_circuit_state",
        "crmhook_queue_depth",
        "crmhook_oldest_pending_seconds",
        "crmhook_redis_persistence_warnings",
        "crmhook_store_up",
        "crmhook_chilipiper_call_seconds_count",
        "crmhook_irreversible_paused",
        "crmhook_held_operations",
        "up",
    } <= watched


# --- dashboard -------------------------------------------------------------------------------


def provisioned_datasource() -> dict[str, Any]:
    [source] = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    return dict(source)


def test_the_dashboard_is_the_one_provisioned() -> None:
    board = dashboard()
    assert board["uid"] == "crmhook"
    assert board["title"] == "crmhook"
    assert board["schemaVersion"] >= 39
    ids = [panel["id"] for panel in all_panels(board["panels"])]
    assert len(ids) == len(set(ids))
    for panel in all_panels(board["panels"]):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_every_query_reads_the_provisioned_prometheus() -> None:
    uid = provisioned_datasource()["uid"]
    variables = {
        f"${{{variable['name']}}}": variable["current"]["value"]
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "datasource"
    }
    for panel in queried_panels():
        sources = [panel["datasource"]] + [target["datasource"] for target in panel["targets"]]
        for source in sources:
            assert source["type"] == "prometheus", panel["title"]
            assert variables.get(source["uid"], source["uid"]) == uid, panel["title"]


def test_grafana_reads_compose_prometheus_at_its_scrape_interval() -> None:
    source = provisioned_datasource()
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    # $__rate_interval is built on it: it must be the interval Prometheus scrapes at.
    assert source["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS)["global"]["scrape_interval"]


def test_grafana_loads_dashboards_from_where_compose_mounts_them() -> None:
    [provider] = load_yaml(PROVISIONING / "dashboards" / "crmhook.yml")["providers"]
    assert provider["type"] == "file"
    directory = PurePosixPath(provider["options"]["path"])
    assert mounted("grafana", DASHBOARD).parent == directory


# --- Prometheus and compose ------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")["services"]
    return services


def mounted(service: str, path: Path) -> PurePosixPath:
    """Where `service`'s bind mounts put the repository's `path` in its container."""
    relative = PurePosixPath(path.relative_to(ROOT).as_posix())
    for volume in compose_services()[service].get("volumes", []):
        if isinstance(volume, dict):
            source, target = volume.get("source", ""), volume.get("target", "")
        else:
            source, target = str(volume).split(":")[:2]
        if not source.startswith("./"):
            continue  # a named volume
        host = PurePosixPath(source.removeprefix("./"))
        if relative == host or host in relative.parents:
            return PurePosixPath(target) / relative.relative_to(host)
    raise AssertionError(f"{service} does not mount {relative}")


@pytest.mark.parametrize(
    ("service", "path", "inside"),
    [
        (service, path, inside)
        for service, paths in MOUNTS.items()
        for path, inside in paths.items()
    ],
)
def test_compose_mounts_each_file_where_the_configurations_look(
    service: str, path: str, inside: str
) -> None:
    assert (ROOT / path).is_file()
    assert mounted(service, ROOT / path) == PurePosixPath(inside)


def test_prometheus_loads_the_alerts_where_compose_mounts_them() -> None:
    assert load_yaml(PROMETHEUS)["rule_files"] == [str(mounted("prometheus", ALERTS))]


def test_prometheus_scrapes_the_jobs_the_alerts_and_panels_watch() -> None:
    configured = {job["job_name"] for job in load_yaml(PROMETHEUS)["scrape_configs"]}
    alerted = {job for rule in alerts() for job in scraped_jobs(rule["expr"])}
    shown = {job for expr in every_expr() for job in scraped_jobs(expr)}
    assert configured == alerted == {"crmhook-web", "crmhook-worker"}
    assert shown <= configured


def test_prometheus_scrapes_each_compose_service_on_its_metrics_port() -> None:
    services = compose_services()
    scraped: dict[str, str] = {}
    for job in load_yaml(PROMETHEUS)["scrape_configs"]:
        assert job["metrics_path"] == "/metrics"
        for discovery in job["dns_sd_configs"]:
            assert discovery["type"] == "A"
            for name in discovery["names"]:
                scraped[name] = str(discovery["port"])
    assert scraped == {
        name: str(services[name]["environment"][variable])
        for name, variable in METRICS_PORT_VARIABLE.items()
    }


def test_every_alert_has_its_row_in_the_readme_runbook() -> None:
    """README's "Operating it" says what each alert means and what to do, alert by alert."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Operating it", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(Crmhook\w+)`", section, re.M))
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert rows == alerts
