"""The Grafana dashboard's queries as Prometheus receives them, the metric names they read, and
the names a worker exports. For tests/deploy/test_grafana_dashboard.py (static checks) and
tests/integration/test_grafana_dashboard.py (the queries against a real Prometheus scraping a
real worker)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)

from pipeline.lagview import TopicLag
from pipeline.sinks.metrics import GAUGE_HELP, StreamState

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "anomaly-pipeline.json"
JOB = "anomaly-pipeline"

#: Values of the right form for Grafana's variables, so the query parses as Prometheus would
#: receive it. Multi-value variables are sent as regular expressions (``a|b``).
VARIABLES = {
    "job": JOB,
    "instance": "worker-1:9464|worker-2:9464",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}
#: Series Prometheus itself writes for every target it scrapes.
SCRAPE_SERIES = {"up"}

#: PromQL words that look like metric names: aggregations, keywords and the values of numbers.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring",
    "group_left", "group_right", "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan",
    "start", "end",
}


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels with those inside collapsed rows."""
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's series selector."""
    out = []
    for panel in all_panels(board["panels"]):
        for target in panel.get("targets", []):
            out.append((f"panel {panel['id']} {panel['title']!r} {target['refId']}",
                        target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
            assert m, f"variable {var['name']}: {query!r} is not label_values(selector, label)"
            out.append((f"variable {var['name']}", m.group(1)))
    return out


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """The query with Grafana's ``$name`` / ``${name}`` / ``${name:format}`` replaced by
    ``variables`` (default ``VARIABLES``); an unknown variable raises KeyError."""
    values = VARIABLES if variables is None else variables

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)
    assert "$" not in out, out
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names an (already valid) PromQL expression reads.

    >>> sorted(metric_names('sum by (a) (rate(x_total{job=~"j|k", b="{c}"}[5m] offset 1m)) '
    ...                     '/ on (a) group_left (c) y * 1e3 > bool 0.5 or vector(0)'))
    ['x_total', 'y']
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subquery steps
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1",
                  text)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def sample_names(name: str, typ: str) -> set[str]:
    """Names of the series a metric family of this type is exposed as."""
    return {
        "counter": {f"{name}_total", f"{name}_created"},
        "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"},
        "gaugehistogram": {f"{name}_bucket", f"{name}_gsum", f"{name}_gcount"},
        "summary": {name, f"{name}_sum", f"{name}_count", f"{name}_created"},
        "info": {f"{name}_info"},
    }.get(typ, {name})


def exported_names() -> set[str]:
    """Every series name a worker exports, from the registry a worker builds: ``Pipeline`` on a
    fresh registry, its state view filled so that the families only present with data appear
    too, plus the collectors prometheus_client puts on its default registry (the worker builds
    ``Pipeline(settings)`` on that registry and serves it)."""
    from pipeline.app import Pipeline
    from pipeline.incident_stage import IncidentView
    from pipeline.settings import Settings

    registry = CollectorRegistry()
    for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        type(default)(registry=registry)
    pipeline = Pipeline(Settings(), registry=registry)
    state = StreamState(
        watermark_ns=time.time_ns(), tracked={"d": 1}, evicted={("d", "cap"): 1},
        late_items=1, active={("memory_leak", "warning"): 1}, partitions=1,
        gauges={(name, (("service_name", "s"),)): 1.0 for name in GAUGE_HELP},
        firing=[("memory_leak", "warning", "fp", {"service": "s"})], quarantined={"d": 1},
        lost={"unreadable": 1}, store_bytes={"memtables": 1},
        edges=[("a", "b", "", 1, 0, [], [], 0, 0)])
    pipeline._state_view = {"spans": state, "metrics": state}
    pipeline._lag_view = {"otlp_spans": TopicLag(records=1, fetched_at=time.time())}
    pipeline._view_built_at = time.time()
    pipeline._incident_view = IncidentView(  # as on the worker that runs the correlation
        open=[("i", "service:s", "service", "warning", ("fp", "fp2"), False, 2)],
        counts={"evicted_incidents": 1})
    names: set[str] = set()
    for family in registry.collect():
        names |= {s.name for s in family.samples} | sample_names(family.name, family.type)
    return names


def unexported(exprs: list[tuple[str, str]], exported: set[str]) -> dict[str, set[str]]:
    """where -> the metric names its query reads that ``exported`` lacks."""
    out = {}
    for where, expr in exprs:
        missing = metric_names(substitute(expr)) - exported - SCRAPE_SERIES
        if missing:
            out[where] = missing
    return out
