"""Write the Grafana dashboard (dashboards/anomaly-pipeline.json) from the panel list below.

The panels are declared here rather than edited as JSON so that ids and grid positions stay
consistent, every query carries the same ``job`` / ``instance`` filter, and a review reads the
PromQL, not Grafana's layout. Run it after changing a panel (``tests/deploy/
test_grafana_dashboard.py`` fails while the JSON differs from this output):

    python deploy/grafana/gen_dashboard.py           # rewrite dashboards/anomaly-pipeline.json
    python deploy/grafana/gen_dashboard.py --check   # exit 1 if it is out of date

A dashboard edited in Grafana's UI can be exported and diffed against the file, but the change
belongs here. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards" / "anomaly-pipeline.json"
UID = "anomaly-pipeline"
#: Every query goes through the datasource variable, so the dashboard works with any
#: Prometheus data source, not only the one the Compose stack provisions.
DS = {"type": "prometheus", "uid": "${datasource}"}
#: The scrape job of deploy/prometheus/prometheus.yml and deploy/compose/prometheus.yml (the
#: Kubernetes ServiceMonitor's job has the same name).
JOB = "anomaly-pipeline"
#: Selector of every worker series: the chosen job and worker instances.
SEL = 'job=~"$job", instance=~"$instance"'
#: A metric that every worker exports from its start (one series per detection stream), used
#: for the variables' values.
WORKER_METRIC = "anomaly_pipeline_owned_partitions"
WIDTH = 24  # Grafana's grid


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    target: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": expr}
    if instant:  # a table of the current values
        target |= {"instant": True, "range": False, "format": "table"}
    else:
        target |= {"instant": False, "range": True, "legendFormat": legend or "__auto"}
    return target


def timeseries(title: str, description: str, targets: list[dict[str, Any]], unit: str,
               stack: bool = False, w: int = 8, h: int = 8) -> dict[str, Any]:
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DS,
        "targets": targets, "_w": w, "_h": h,
        "fieldConfig": {
            "defaults": {
                "unit": unit, "min": 0,
                "custom": {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if stack else 0,
                           "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                           "showPoints": "never", "spanNulls": False},
            },
            "overrides": [],
        },
        "options": {"legend": {"displayMode": "table", "placement": "right", "showLegend": True,
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


def stat(title: str, description: str, expr: str, unit: str = "short",
         red_above: float | None = 1, w: int = 4, h: int = 4) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_above is not None:
        steps.append({"color": "red", "value": red_above})
    return {
        "type": "stat", "title": title, "description": description, "datasource": DS,
        "targets": [q(expr)], "_w": w, "_h": h,
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute",
                                                                  "steps": steps}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "value"},
    }


def table(title: str, description: str, targets: list[dict[str, Any]],
          transformations: list[dict[str, Any]], overrides: list[dict[str, Any]] | None = None,
          w: int = WIDTH, h: int = 8) -> dict[str, Any]:
    return {
        "type": "table", "title": title, "description": description, "datasource": DS,
        "targets": targets, "transformations": transformations, "_w": w, "_h": h,
        "fieldConfig": {"defaults": {"custom": {"filterable": True}},
                        "overrides": overrides or []},
        "options": {"showHeader": True, "cellHeight": "sm"},
    }


def organize(exclude: list[str], rename: dict[str, str] | None = None) -> dict[str, Any]:
    return {"id": "organize", "options": {"excludeByName": {k: True for k in exclude},
                                          "renameByName": rename or {}}}


def unit_of(column: str, unit: str, decimals: int | None = None) -> dict[str, Any]:
    props = [{"id": "unit", "value": unit}]
    if decimals is not None:
        props.append({"id": "decimals", "value": decimals})
    return {"matcher": {"id": "byName", "options": column}, "properties": props}


SEVERITY_COLOURS = {
    "matcher": {"id": "byName", "options": "severity"},
    "properties": [
        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
        {"id": "mappings", "value": [{"type": "value", "options": {
            "critical": {"color": "red", "index": 0},
            "warning": {"color": "orange", "index": 1},
            "info": {"color": "blue", "index": 2},
        }}]},
    ],
}


def rate(metric: str, by: str) -> str:
    return f"sum by ({by}) (rate({metric}{{{SEL}}}[$__rate_interval]))"


def p95(metric: str, by: str) -> str:
    return (f"histogram_quantile(0.95, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{SEL}}}[$__rate_interval])))")


FINDING_COLUMNS = "kind, severity, service_name, operation, service_instance, host, fingerprint"
INCIDENT_COLUMNS = "incident, root, root_kind, severity"
EDGE = "client, server, connection_type"
SG = "traces_service_graph_request"

ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Findings & incidents", [
        stat("Firing findings (total)", "Findings firing now, over all workers.",
             f"sum(anomaly_pipeline_active_findings{{{SEL}}}) or vector(0)", w=4, h=8),
        stat("Open incidents (total)", "Incidents open now (findings grouped by probable root).",
             f"sum(anomaly_pipeline_active_incidents{{{SEL}}}) or vector(0)", w=4, h=8),
        timeseries("Active findings by kind and severity",
                   "anomaly_pipeline_active_findings summed over the workers.",
                   [q(f"sum by (kind, severity) (anomaly_pipeline_active_findings{{{SEL}}})",
                      "{{kind}} {{severity}}")], "short", stack=True, w=10, h=8),
        timeseries("Open incidents by severity",
                   "anomaly_pipeline_active_incidents summed over the workers.",
                   [q(f"sum by (severity) (anomaly_pipeline_active_incidents{{{SEL}}})",
                      "{{severity}}")], "short", stack=True, w=6, h=8),
        table("Firing findings",
              "One row per firing finding (anomaly_pipeline_finding_active). The fingerprint "
              "is the key of its records on the anomaly_findings topic: `python -m pipeline "
              "tail` shows their evidence and next steps.",
              [q(f"max by ({FINDING_COLUMNS}) (anomaly_pipeline_finding_active{{{SEL}}})",
                 instant=True)],
              [organize(["Time", "Value"])], [SEVERITY_COLOURS], w=14, h=9),
        table("Open incidents",
              "One row per open incident (anomaly_pipeline_incident_active): its probable root "
              "entity and severity. Its member findings are on the anomaly_incidents topic.",
              [q(f"max by ({INCIDENT_COLUMNS}) (anomaly_pipeline_incident_active{{{SEL}}})",
                 instant=True)],
              [organize(["Time", "Value"])], [SEVERITY_COLOURS], w=10, h=9),
        timeseries("Finding transitions published",
                   "Findings published to anomaly_findings per second, by kind and status "
                   "(firing, resolved).",
                   [q(rate("anomaly_pipeline_findings_total", "kind, status"),
                      "{{kind}} {{status}}")], "cps", w=24, h=7),
    ]),
    ("Service graph", [
        table("Service graph edges",
              "Caller → callee edges from traces (traces_service_graph_* metrics, the "
              "OpenTelemetry servicegraph connector's names): requests per second, share "
              "failed, and the 95th percentile latency as the server saw it, over the last "
              "rate interval.",
              [q(rate(f"{SG}_total", EDGE), ref="A", instant=True),
               q(f"{rate(f'{SG}_failed_total', EDGE)} / {rate(f'{SG}_total', EDGE)}",
                 ref="B", instant=True),
               q(p95(f"{SG}_server_seconds", EDGE), ref="C", instant=True)],
              [{"id": "merge", "options": {}},
               organize(["Time"], {"Value #A": "requests/s", "Value #B": "failed",
                                   "Value #C": "p95 server latency"})],
              [unit_of("requests/s", "reqps", 2), unit_of("failed", "percentunit", 1),
               unit_of("p95 server latency", "s", 3)], w=24, h=9),
        timeseries("Requests per edge", "Calls per second from client to server.",
                   [q(rate(f"{SG}_total", "client, server"), "{{client}} → {{server}}")],
                   "reqps"),
        timeseries("Failed requests per edge", "Failed calls per second from client to server.",
                   [q(rate(f"{SG}_failed_total", "client, server"),
                      "{{client}} → {{server}}")], "reqps"),
        timeseries("p95 server latency per edge",
                   "95th percentile of the server-side latency of each edge.",
                   [q(p95(f"{SG}_server_seconds", "client, server"),
                      "{{client}} → {{server}}")], "s"),
    ]),
    ("Pipeline health", [
        stat("Workers scraped", "Worker targets Prometheus scraped successfully (`up`).",
             f"sum(up{{{SEL}}})", red_above=None, w=4, h=8),
        timeseries("Consumer lag by topic",
                   "Records between the workers' positions and the end of each topic they "
                   "consume (input and routed topics), summed over the workers.",
                   [q(f"sum by (topic) (anomaly_pipeline_consumer_lag_records{{{SEL}}})",
                      "{{topic}}")], "short", w=10),
        timeseries("Event-time lag by stream",
                   "Wall clock minus the slowest owned partition's event-time watermark (the "
                   "worst worker). Large during a replay of old telemetry, by design.",
                   [q(f"max by (stream) (anomaly_pipeline_event_time_lag_seconds{{{SEL}}})",
                      "{{stream}}")], "s", w=10),
        timeseries("Records consumed by topic", "Kafka records consumed per second.",
                   [q(rate("anomaly_pipeline_records_consumed_total", "topic"), "{{topic}}")],
                   "cps"),
        timeseries("Dead letters by topic and reason",
                   "Records written to anomaly_deadletter per second (headers there say why).",
                   [q(rate("anomaly_pipeline_deadletter_records_total", "topic, reason"),
                      "{{topic}} {{reason}}")], "cps"),
        timeseries("Decode errors by topic and reason",
                   "Records or items that failed to decode, per second.",
                   [q(rate("anomaly_pipeline_decode_errors_total", "topic, reason"),
                      "{{topic}} {{reason}}")], "cps"),
        timeseries("Late items per stream",
                   "Items older than the watermark when they arrived, over the owned "
                   "partitions' lifetime (a gauge: it moves with the partitions).",
                   [q(f"sum by (stream) (anomaly_pipeline_partition_late_items{{{SEL}}})",
                      "{{stream}}")], "short"),
        timeseries("Processing time per stage",
                   "Per Kafka record: 95th percentile and mean, by stage.",
                   [q(p95("anomaly_pipeline_processing_seconds", "stage"), "p95 {{stage}}"),
                    q(f"{rate('anomaly_pipeline_processing_seconds_sum', 'stage')} / "
                      f"{rate('anomaly_pipeline_processing_seconds_count', 'stage')}",
                      "mean {{stage}}", ref="B")], "s"),
        timeseries("Detector errors and quarantines",
                   "Exceptions raised by detectors per second, and owned partitions where a "
                   "detector is quarantined.",
                   [q(rate("anomaly_pipeline_detector_errors_total", "detector"),
                      "errors/s {{detector}}"),
                    q(f"sum by (detector) (anomaly_pipeline_detector_quarantined{{{SEL}}})",
                      "quarantined {{detector}}", ref="B")], "short"),
    ]),
    ("State", [
        timeseries("Tracked entries by detector", "Per-key entries held in detector state.",
                   [q(f"sum by (detector) (anomaly_pipeline_tracked_entries{{{SEL}}})",
                      "{{detector}}")], "short"),
        timeseries("Evictions by detector and reason",
                   "Per-key entries evicted or folded at the caps, over the owned partitions' "
                   "lifetime.",
                   [q(f"sum by (detector, reason) "
                      f"(anomaly_pipeline_partition_state_evictions{{{SEL}}})",
                      "{{detector}} {{reason}}")], "short"),
        timeseries("State entries lost",
                   "Saved state entries not kept (unreadable on restore, or too large to save).",
                   [q(f"sum by (stream, reason) (anomaly_pipeline_state_entries_lost{{{SEL}}})",
                      "{{stream}} {{reason}}")], "short"),
        timeseries("Worker resident memory",
                   "Resident memory of each worker process (prometheus_client's process "
                   "collector), which includes the state store's memory.",
                   [q(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")], "bytes"),
        timeseries("State store memory",
                   "Memory the owned partitions' RocksDB databases hold, by worker and kind.",
                   [q(f"sum by (instance, kind) "
                      f"(anomaly_pipeline_state_store_memory_bytes{{{SEL}}})",
                      "{{instance}} {{kind}}")], "bytes", stack=True),
        timeseries("Owned partitions per worker", "Routed partitions each worker detects on.",
                   [q(f"sum by (instance, stream) (anomaly_pipeline_owned_partitions{{{SEL}}})",
                      "{{instance}} {{stream}}")], "short"),
    ]),
]


def variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "definition": query, "query": {"query": query, "refId": f"{name}-values"},
                "refresh": 2, "sort": 1, "hide": 0, "regex": "", **extra}

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0, "refresh": 1, "regex": ""},
        query_var("job", "Job", f"label_values({WORKER_METRIC}, job)",
                  current={"text": JOB, "value": JOB}, multi=False, includeAll=False),
        query_var("instance", "Worker", f'label_values({WORKER_METRIC}{{job=~"$job"}}, instance)',
                  current={"text": "All", "value": "$__all"}, multi=True, includeAll=True,
                  allValue=".*"),
    ]


def layout() -> list[dict[str, Any]]:
    """Rows and their panels in order, with ids and grid positions (left to right, wrapping
    at the grid's width)."""
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for title, members in ROWS:
        panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                       "panels": [], "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}})
        next_id += 1
        y += 1
        x, row_h = 0, 0
        for member in members:
            panel = dict(member)
            w, h = panel.pop("_w"), panel.pop("_h")
            if x + w > WIDTH:
                x, y, row_h = 0, y + row_h, 0
            panel["id"] = next_id
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            next_id += 1
            panels.append(panel)
            x += w
            row_h = max(row_h, h)
        y += row_h
    return panels


def dashboard() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "Anomaly pipeline",
        "description": "Findings and incidents, the service graph, and the health and state of "
                       "the otel-anomaly-pipeline workers. Generated by "
                       "deploy/grafana/gen_dashboard.py.",
        "tags": ["anomaly-pipeline", "opentelemetry"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [],
        "templating": {"list": variables()},
        "panels": layout(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the output is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default {OUTPUT}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
