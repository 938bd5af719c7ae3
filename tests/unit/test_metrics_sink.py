"""The state gauges a scrape sees: one ``finding_active`` series per firing finding with the
labels alert rules use, consumer lag per topic, and detectors' per-finding gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.findings import fingerprint
from pipeline.sinks.metrics import PipelineMetrics, StreamState


def scrape(view: dict[str, StreamState], lag: dict[str, int]) -> dict[str, list]:
    registry = CollectorRegistry()
    PipelineMetrics(registry).watch_state(lambda: view, lambda: lag)
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_one_finding_active_series_per_firing_finding() -> None:
    leak = {"service": "cart", "instance": "cart-1"}
    tw = {"host": "node-2"}
    fp_leak, fp_tw = fingerprint("memory_leak", leak), fingerprint("time_wait_buildup", tw)
    metrics = StreamState(firing=[("memory_leak", "critical", fp_leak, leak)])
    # A second partition briefly reporting the same finding (a rebalance) is one series.
    metrics_again = StreamState(firing=[
        ("memory_leak", "critical", fp_leak, leak), ("time_wait_buildup", "info", fp_tw, tw),
    ])
    samples = scrape({"metrics": metrics, "traces": metrics_again}, {})
    series = {tuple(sorted(s.labels.items())): s.value
              for s in samples["anomaly_pipeline_finding_active"]}
    assert series == {
        tuple(sorted({"kind": "memory_leak", "severity": "critical", "service_name": "cart",
                      "operation": "", "service_instance": "cart-1", "host": "",
                      "fingerprint": fp_leak}.items())): 1.0,
        tuple(sorted({"kind": "time_wait_buildup", "severity": "info", "service_name": "",
                      "operation": "", "service_instance": "", "host": "node-2",
                      "fingerprint": fp_tw}.items())): 1.0,
    }


def test_no_findings_no_series() -> None:
    samples = scrape({"spans": StreamState()}, {})
    assert samples["anomaly_pipeline_finding_active"] == []
    assert samples["anomaly_pipeline_consumer_lag_records"] == []


def test_consumer_lag_per_topic_and_detector_gauges() -> None:
    gauge = ("anomaly_pipeline_memory_leak_slope_bytes_per_second",
             (("service_name", "cart"), ("service_instance", "cart-1")))
    samples = scrape({"metrics": StreamState(gauges={gauge: 1234.5})},
                     {"otlp_spans": 17, "app-metrics-routed": 0})
    assert {s.labels["topic"]: s.value
            for s in samples["anomaly_pipeline_consumer_lag_records"]} == {
        "otlp_spans": 17, "app-metrics-routed": 0}
    (slope,) = samples["anomaly_pipeline_memory_leak_slope_bytes_per_second"]
    assert slope.labels == {"service_name": "cart", "service_instance": "cart-1"}
    assert slope.value == 1234.5
