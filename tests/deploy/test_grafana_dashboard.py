"""The Grafana dashboard (deploy/grafana/) and its provisioning in the Compose stack.

- The JSON is what deploy/grafana/gen_dashboard.py writes, valid, with unique panel ids, panels
  inside the grid and not overlapping, and every query on the ``${datasource}`` variable.
- Every query (panel targets and the variables' ``label_values`` selectors), with Grafana's
  variables replaced by values of the right form, parses as PromQL: ``promtool check rules``
  on a rule file with one recording rule per query.
- Every metric name a query reads is one the worker exports: the names are taken from the
  registry a worker builds (``Pipeline`` with a fresh registry, its state view filled so that
  the families only present with data appear too, plus prometheus_client's default process,
  platform and GC collectors, which the worker serves from the default registry), not from a
  list kept by hand. ``up``, which Prometheus writes for every scrape target, is the one
  other series allowed.
- Every selector filters on the ``job`` variable, whose default is the scrape job of the
  shipped Prometheus configurations.
- The Compose file runs Grafana with the provisioning and the dashboard mounted where the
  provisioning files look for them, and a data source pointing at the stack's Prometheus.
- Negative controls: a query with a syntax error, one with an unknown metric name and one with
  an unknown variable are each caught.

Needs promtool (Debian's ``prometheus`` package; deploy/local/test-tools.sh installs it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from pipeline.sinks.metrics import GAUGE_HELP
from tests.deploy.test_manifests import bind_mounts
from tests.support import tools
from tests.support.dashboard import (
    DASHBOARD,
    GRAFANA,
    JOB,
    all_panels,
    exported_names,
    metric_names,
    queries,
    substitute,
    unexported,
)
from tests.support.dashboard import load as dashboard
from tests.support.tools import load_yaml, run

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = GRAFANA / "provisioning"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
PROMETHEUS_CONFIGS = (ROOT / "deploy" / "prometheus" / "prometheus.yml",
                      COMPOSE_DIR / "prometheus.yml")


# ------------------------------------------------------------------------------------------
# helpers


def promtool() -> str:
    return tools.tool("promtool", install="`apt-get install -y prometheus` (Debian; "
                      "deploy/local/test-tools.sh does this when it can)")


def generator():
    return tools.load_script(GRAFANA / "gen_dashboard.py")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    return exported_names()


def check_rules(tmp_path: Path, exprs: list[tuple[str, str]]) -> Any:
    """promtool check rules on one recording rule per expression."""
    rules = [{"record": f"dashboard:query_{i}", "expr": substitute(expr)}
             for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return run([promtool(), "check", "rules", str(path)])


# ------------------------------------------------------------------------------------------
# the dashboard


def test_dashboard_is_the_generator_output():
    assert DASHBOARD.read_text(encoding="utf-8") == generator().render(), (
        "deploy/grafana/dashboards/anomaly-pipeline.json differs from what "
        "deploy/grafana/gen_dashboard.py writes: change the generator and run it"
    )


def test_dashboard_json_is_valid_with_unique_panel_ids():
    board = dashboard()
    assert board["uid"] and board["title"]
    assert 39 <= board["schemaVersion"] < 45
    panels = all_panels(board["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: dict[tuple[int, int], int] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = p["id"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ds = {"type": "prometheus", "uid": "${datasource}"}
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == ds, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == ds and t["expr"].strip(), p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == ds


def test_dashboard_has_the_rows_and_panels_asked_for():
    board = dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Findings & incidents", "Service graph", "Pipeline health", "State"]
    read = set().union(*(metric_names(substitute(e)) for _, e in queries(board)))
    for name in (
        "anomaly_pipeline_active_findings", "anomaly_pipeline_finding_active",
        "anomaly_pipeline_active_incidents", "anomaly_pipeline_incident_active",
        "traces_service_graph_request_total", "traces_service_graph_request_failed_total",
        "traces_service_graph_request_server_seconds_bucket",
        "anomaly_pipeline_consumer_lag_records", "anomaly_pipeline_event_time_lag_seconds",
        "anomaly_pipeline_deadletter_records_total", "anomaly_pipeline_partition_late_items",
        "anomaly_pipeline_decode_errors_total", "anomaly_pipeline_processing_seconds_bucket",
        "anomaly_pipeline_tracked_entries", "anomaly_pipeline_partition_state_evictions",
        "anomaly_pipeline_state_store_memory_bytes", "process_resident_memory_bytes",
    ):
        assert name in read, f"no panel reads {name}"
    tables = {p["title"]: p for p in all_panels(board["panels"]) if p["type"] == "table"}
    for title in ("Firing findings", "Open incidents", "Service graph edges"):
        assert all(t.get("format") == "table" and t.get("instant") for t in
                   tables[title]["targets"]), title


def test_every_query_parses_as_promql(tmp_path):
    exprs = queries(dashboard())
    proc = check_rules(tmp_path, exprs)
    names = "\n".join(f"  dashboard:query_{i} is {where}" for i, (where, _) in enumerate(exprs))
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{names}"
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout, proc.stdout + proc.stderr


def test_every_query_reads_only_metrics_the_worker_exports(exported):
    missing = unexported(queries(dashboard()), exported)
    assert not missing, "metrics the worker does not export:\n" + "\n".join(
        f"  {where}: {sorted(names)}" for where, names in missing.items())


def test_every_selector_filters_on_the_job():
    for where, expr in queries(dashboard()):
        if where == "variable job":  # lists the jobs to choose from
            continue
        names = metric_names(substitute(expr))
        selectors = re.findall(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", expr)
        assert {n for n, _ in selectors} >= names, f"{where}: a metric without a selector"
        for name, matchers in selectors:
            assert 'job=~"$job"' in matchers, f"{where}: {name} not filtered on $job"


def test_job_variable_defaults_to_the_shipped_scrape_job():
    job = next(v for v in dashboard()["templating"]["list"] if v["name"] == "job")
    assert job["current"]["value"] == JOB
    for path in PROMETHEUS_CONFIGS:
        assert JOB in [j["job_name"] for j in load_yaml(path)["scrape_configs"]], path


def test_exported_names_come_from_the_worker(exported):
    """The derivation sees what the code exports, process metrics included."""
    assert "anomaly_pipeline_consumer_lag_records" in exported
    assert "anomaly_pipeline_records_consumed_total" in exported
    assert "traces_service_graph_request_server_seconds_bucket" in exported
    assert "anomaly_pipeline_finding_active" in exported
    assert set(GAUGE_HELP) <= exported
    assert "process_resident_memory_bytes" in exported
    assert "anomaly_pipeline_no_such_metric" not in exported
    # What the worker serves: the default registry, with the process collector on Linux.
    assert REGISTRY.get_sample_value("process_resident_memory_bytes") is not None


# ------------------------------------------------------------------------------------------
# negative controls: the checks above can fail


def test_a_broken_query_fails_promtool(tmp_path):
    good = ("good", 'sum by (topic) (anomaly_pipeline_consumer_lag_records{job=~"$job"})')
    assert check_rules(tmp_path, [good]).returncode == 0
    for bad in ('sum by (topic) (anomaly_pipeline_consumer_lag_records{job=~"$job"}',
                'rate(anomaly_pipeline_records_consumed_total{job=~"$job"})',
                'anomaly_pipeline_consumer_lag_records{job=~"$job"} +'):
        proc = check_rules(tmp_path, [good, ("bad", bad)])
        assert proc.returncode != 0, f"promtool accepted {bad!r}"


def test_an_unknown_metric_is_flagged(exported):
    exprs = [("good", 'anomaly_pipeline_consumer_lag_records{job=~"$job"}'),
             ("typo", 'sum(rate(anomaly_pipeline_record_consumed_total{job=~"$job"}[5m]))'),
             ("no _total", 'rate(anomaly_pipeline_deadletter_records{job=~"$job"}[5m])')]
    assert unexported(exprs, exported) == {
        "typo": {"anomaly_pipeline_record_consumed_total"},
        "no _total": {"anomaly_pipeline_deadletter_records"},
    }


def test_an_unknown_variable_is_flagged():
    assert substitute("rate(x[$__rate_interval])") == "rate(x[1m])"
    with pytest.raises(KeyError, match=r"\$cluster"):
        substitute('x{cluster=~"$cluster"}')


# ------------------------------------------------------------------------------------------
# provisioning in the Compose stack


def test_compose_provisions_the_dashboard():
    services = load_yaml(COMPOSE)["services"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    for target, source in mounts.items():
        assert source.exists(), f"grafana mounts {source} at {target}: no such path"
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "anomaly-pipeline.yml")["providers"]
    assert provider["type"] == "file"
    in_container = provider["options"]["path"]
    assert mounts[in_container] == DASHBOARD.parent, f"{in_container} is not the dashboards"
    assert (mounts[in_container] / DASHBOARD.name).exists()
    env = grafana["environment"]
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{in_container}/{DASHBOARD.name}"
    # Local use only: anonymous visitors may look, not edit; the port is on loopback only.
    if str(env.get("GF_AUTH_ANONYMOUS_ENABLED")).lower() == "true":
        assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert all(str(p).startswith("127.0.0.1:") for p in grafana["ports"])
    assert "prometheus" in grafana["depends_on"]


def test_datasource_is_the_stacks_prometheus():
    (ds,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy"
    m = re.fullmatch(r"http://([\w-]+):(\d+)/?", ds["url"])
    assert m, ds["url"]
    services = load_yaml(COMPOSE)["services"]
    assert m.group(1) in services and m.group(1) == "prometheus"
    assert f"{m.group(2)}:{m.group(2)}" in services["prometheus"]["ports"]
    scrape = load_yaml(COMPOSE_DIR / "prometheus.yml")["global"]["scrape_interval"]
    assert ds["jsonData"]["timeInterval"] == scrape
