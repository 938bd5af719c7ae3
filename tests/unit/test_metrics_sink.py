"""The state gauges a scrape sees: one ``finding_active`` series per firing finding with the
labels alert rules use, consumer lag per topic, and detectors' per-finding gauges."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.findings import fingerprint
from pipeline.lagview import TopicLag
from pipeline.sinks.metrics import PipelineMetrics, StreamState


def scrape(view: dict[str, StreamState], lag: dict[str, TopicLag]) -> dict[str, list]:
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
    assert samples["anomaly_pipeline_consumer_last_fetch_timestamp_seconds"] == []


def test_consumer_lag_per_topic_and_detector_gauges() -> None:
    gauge = ("anomaly_pipeline_memory_leak_slope_bytes_per_second",
             (("service_name", "cart"), ("service_instance", "cart-1")))
    samples = scrape({"metrics": StreamState(gauges={gauge: 1234.5})},
                     {"otlp_spans": TopicLag(17, 1_700_000_000.5),
                      "app-metrics-routed": TopicLag(0, None)})
    assert {s.labels["topic"]: s.value
            for s in samples["anomaly_pipeline_consumer_lag_records"]} == {
        "otlp_spans": 17, "app-metrics-routed": 0}
    # The time the lag is as of; none for a topic whose partitions were never fetched.
    assert {s.labels["topic"]: s.value
            for s in samples["anomaly_pipeline_consumer_last_fetch_timestamp_seconds"]} == {
        "otlp_spans": 1_700_000_000.5}
    (slope,) = samples["anomaly_pipeline_memory_leak_slope_bytes_per_second"]
    assert slope.labels == {"service_name": "cart", "service_instance": "cart-1"}
    assert slope.value == 1234.5


def test_a_stuck_event_loop_fails_the_scrape() -> None:
    """The HTTP thread must not serve a hung worker's last findings for ever: past
    STALE_VIEW_S the scrape fails (Prometheus: up == 0; a liveness probe restarts it)."""
    import urllib.error
    import urllib.request

    from prometheus_client import start_http_server

    from pipeline.sinks.metrics import STALE_VIEW_S, StaleStateError, StateCollector

    clock = [1000.0]
    built = [1000.0]
    collector = StateCollector(dict, dict, lambda: built[0], clock=lambda: clock[0])
    clock[0] += 30
    (age, *_) = list(collector.collect())
    assert age.name == "anomaly_pipeline_state_view_age_seconds"
    assert age.samples[0].value == 30
    clock[0] = built[0] + STALE_VIEW_S + 1
    try:
        list(collector.collect())
        raise AssertionError("a stale view was served")
    except StaleStateError as exc:
        assert "stuck" in str(exc)

    registry = CollectorRegistry()
    registry.register(collector)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        try:
            urllib.request.urlopen(url, timeout=5)
            raise AssertionError("a stale view was served over HTTP")
        except urllib.error.HTTPError as exc:
            assert exc.code == 500
        built[0] = clock[0]  # the loop comes back
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_state_store_memory_is_rocksdb_own_count_summed_over_open_databases(tmp_path) -> None:
    import rocksdict

    from pipeline.app import store_memory

    class Store:  # what faust's RocksDB store keeps: open databases by partition
        _dbs = {p: rocksdict.Rdict(str(tmp_path / f"p{p}")) for p in range(2)}

    class Table:
        data = Store()

    empty = store_memory(Table())
    for i in range(2000):
        Store._dbs[i % 2][i.to_bytes(4, "big")] = b"x" * 500
    written = store_memory(Table())
    assert set(written) == {"memtables", "block_cache"}
    assert written["memtables"] > empty["memtables"] + 1_000_000  # 1 MB written, unflushed
    Store._dbs[0].close()  # a closed database is skipped: the other still counts
    assert 0 < store_memory(Table())["memtables"] < written["memtables"]
    Store._dbs[1].close()

    class MemoryTable:  # the in-memory store has no databases
        data: dict = {}
    assert store_memory(MemoryTable()) == {}

    samples = scrape({"spans": StreamState(store_bytes=written)}, {})
    assert {s.labels["kind"]: s.value
            for s in samples["anomaly_pipeline_state_store_memory_bytes"]} == written


def test_detector_counters_without_labels_are_exported() -> None:
    """A detector's unlabelled counter (failures callers absorbed) goes up by what it counted
    since the last view; a new detector object (a partition restored elsewhere) starts at 0."""
    reg = CollectorRegistry()
    m = PipelineMetrics(reg)

    class Source:
        pass

    a, b = Source(), Source()
    key = ("anomaly_pipeline_error_origin_absorbed", ())
    m.add_counts(a, {key: 3})
    m.add_counts(a, {key: 5})
    m.add_counts(b, {key: 2})
    assert reg.get_sample_value("anomaly_pipeline_error_origin_absorbed_total") == 7
