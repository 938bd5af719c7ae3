"""The pipeline's own health as Prometheus metrics.

Counters are updated on the hot path; everything derived from detector state (tracked entries,
active findings, watermarks) is built fresh at scrape time by ``StateCollector`` from a callback,
as client_python recommends for state owned elsewhere. Label values come from small fixed sets
(topics, reasons, kinds, severities, detector names), so series stay bounded.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from pipeline.lagview import TopicLag
from pipeline.servicegraph import prometheus_buckets

NS = "anomaly_pipeline"
#: Help text of the per-finding gauges detectors report (``DetectorStats.gauges``).
GAUGE_HELP = {
    f"{NS}_bottleneck_excess_latency_seconds":
        "Latency a firing bottleneck span adds per trace over its baseline (one series per "
        "firing bottleneck_span finding; bounded by the detector's cap on operations).",
    f"{NS}_latency_regression_ratio":
        "Median ratio of a service's slower operations to their baselines, while its "
        "latency_regression finding fires.",
    f"{NS}_memory_leak_slope_bytes_per_second":
        "Growth of the post-GC memory floor of an instance with a firing memory_leak finding.",
    f"{NS}_memory_leak_time_to_oom_seconds":
        "Estimated time until a leaking instance's floor reaches MEMORY_OOM_FRACTION of its "
        "limit (one series per firing memory_leak finding with a known limit).",
    f"{NS}_error_origin_rate":
        "Share of an operation's calls where failures started, while its error_origin finding "
        "fires (one series per firing finding).",
    f"{NS}_gc_time_fraction":
        "Share of time in garbage collection of an instance with a firing gc_pressure finding.",
    f"{NS}_time_wait_sockets":
        "TIME_WAIT sockets of a host with a firing time_wait_buildup finding.",
    f"{NS}_time_wait_time_to_exhaustion_seconds":
        "Estimated time until a host's TIME_WAIT sockets fill its ephemeral port range (one "
        "series per firing time_wait_buildup finding with an estimate).",
}


#: Counters detectors report (``DetectorStats.counters``): name -> (help, label names). Created
#: at start, so that /metrics lists them before their first event.
COUNTER_HELP = {
    f"{NS}_error_origin_absorbed": (
        "Failures that started in an operation but did not reach the request's result: a "
        "caller absorbed them (a retry that succeeded, a fallback). Never an error_origin "
        "finding; a rise means a dependency fails more while its callers hide it.",
        (),
    ),
    f"{NS}_memory_instance_restarts": (
        "Process restarts the memory detector saw, by service: a new process.pid or "
        "service.version, or a cumulative counter with a new start time (or one that went back "
        "with no start time). Each restart starts the instance's memory floor history afresh.",
        ("service_name",),
    ),
}


@dataclass(slots=True)
class StreamState:
    """What the collector needs from one detection stream (spans or metrics) at scrape time."""

    watermark_ns: int = 0
    tracked: dict[str, int] = field(default_factory=dict)  # detector -> entries
    evicted: dict[tuple[str, str], int] = field(default_factory=dict)  # (detector, reason) -> n
    late_items: int = 0
    active: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, severity) -> n
    partitions: int = 0
    # Per-finding gauges from detectors: (metric name, ((label, value), ...)) -> value.
    gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    # Firing findings that are not muted: (kind, severity, fingerprint, entity).
    firing: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    muted: dict[str, int] = field(default_factory=dict)  # kind -> firing findings muted
    quarantined: dict[str, int] = field(default_factory=dict)  # detector -> partitions
    behind_ns: int = 0  # how far the newest input is behind saved state (0: it is not)
    idle_s: float = 0.0  # how long every source of every owned partition has been idle
    ended: int = 0  # owned partitions whose watermark moved past the end of the input
    lost: dict[str, int] = field(default_factory=dict)  # reason -> state entries not kept
    store_bytes: dict[str, int] = field(default_factory=dict)  # RocksDB memory by kind
    # Service map edges' totals (``ServiceMapDetector.edge_totals``): client, server,
    # connection type, calls, failed, client and server fine-bucket counts, client and
    # server ns.
    edges: list[tuple[Any, ...]] = field(default_factory=list)


#: Labels of ``anomaly_pipeline_finding_active``: what alert rules route and group on. The
#: entity's ``service`` and ``instance`` are exported as ``service_name`` and
#: ``service_instance`` (OpenTelemetry's service.name, service.instance.id): Prometheus sets
#: ``instance`` to the scrape target, and the Prometheus Operator sets ``service`` to the
#: Kubernetes Service it scraped, renaming ours to ``exported_*``. The shipped rules put them
#: back as the alerts' ``service`` and ``instance``.
FINDING_LABELS = ("kind", "severity", "service_name", "operation", "service_instance", "host",
                  "fingerprint")
_ENTITY_LABELS = (("service", "service_name"), ("operation", "operation"),
                  ("instance", "service_instance"), ("host", "host"))


def finding_labels(kind: str, severity: str, fp: str, entity: dict[str, Any]) -> list[str]:
    """Label values of a firing finding's ``finding_active`` series ("" where the kind's entity
    has no such key, which Prometheus treats as an absent label).

    >>> finding_labels("memory_leak", "critical", "ab", {"service": "cart", "instance": "c-1"})
    ['memory_leak', 'critical', 'cart', '', 'c-1', '', 'ab']
    >>> finding_labels("bottleneck_span", "warning", "cd",
    ...                {"service": "api", "operation": "GET", "operation_detail": "/u/{id}"})[3]
    'GET /u/{id}'
    """
    by_label = {label: str(entity.get(key, "")) for key, label in _ENTITY_LABELS}
    if entity.get("operation_detail"):  # "GET" + "/u/{id}": as the bottleneck gauges name it
        by_label["operation"] += f" {entity['operation_detail']}"
    return [kind, severity, by_label["service_name"], by_label["operation"],
            by_label["service_instance"], by_label["host"], fp]


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records_consumed = Counter(
            f"{NS}_records_consumed", "Kafka records consumed from input topics.", ["topic"],
            registry=registry,
        )
        self.items_decoded = Counter(
            f"{NS}_items_decoded", "Spans or metric points decoded.", ["signal"],
            registry=registry,
        )
        self.items_detected = Counter(
            f"{NS}_items_detected", "Routed spans or metric points applied to detectors.",
            ["signal"], registry=registry,
        )
        self.duplicates = Counter(
            f"{NS}_duplicate_messages",
            "Routed messages skipped because saved state already held them (after a crash).",
            ["signal"], registry=registry,
        )
        self.routed_gaps = Counter(
            f"{NS}_routed_gaps",
            "Times the consumer skipped routed messages; each was sought back to and applied.",
            ["signal"], registry=registry,
        )
        self.routed_lost = Counter(
            f"{NS}_routed_lost_messages",
            "Routed messages skipped and gone: deleted before they were read, or not delivered "
            "again within 60 s of seeking.",
            ["signal"], registry=registry,
        )
        self.decode_errors = Counter(
            f"{NS}_decode_errors", "Records or items that failed to decode, by reason.",
            ["topic", "reason"], registry=registry,
        )
        self.deadletters = Counter(
            f"{NS}_deadletter_records", "Records written to the dead-letter topic, by reason.",
            ["topic", "reason"], registry=registry,
        )
        self.findings = Counter(
            f"{NS}_findings", "Findings published, by kind, severity and status.",
            ["kind", "severity", "status"], registry=registry,
        )
        self.processing = Histogram(
            f"{NS}_processing_seconds", "Processing time per Kafka record, by stage.", ["stage"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 1.0),
            registry=registry,
        )
        self.derived = Counter(
            f"{NS}_items_derived",
            "Records a detection stage derived for the next (trace samples from completed "
            "traces; client calls per host for the metrics stream), by signal.", ["signal"],
            registry=registry,
        )
        self.state_flushes = Counter(
            f"{NS}_state_flushes", "Detector state flushes to the changelog-backed table.",
            ["stream"], registry=registry,
        )
        self.items_dropped = Counter(
            f"{NS}_items_dropped",
            "Valid metric points left out at decode, by reason (no_recorded_value: the "
            "staleness marker; non_finite: NaN or infinite values); their records are kept.",
            ["signal", "reason"], registry=registry,
        )
        self.clock_adjustments = Counter(
            f"{NS}_clock_adjustments",
            "Items or records kept from moving an input partition's event-time progress, by "
            "reason (clock_ahead: items past their record's timestamp; jump_held: records far "
            "ahead held for the next one; jump_discarded: held records the next contradicted).",
            ["topic", "reason"], registry=registry,
        )
        self.detector_errors = Counter(
            f"{NS}_detector_errors",
            "Exceptions raised by a detector (the others go on; one that keeps failing in a "
            "partition is quarantined there).", ["detector"], registry=registry,
        )
        self.feedback_applied = Counter(
            f"{NS}_feedback_applied",
            "Feedback records applied from the feedback topic, by action (mute, ack, confirm, "
            "reject; unmute and clear for tombstones). Every worker applies every record.",
            ["action"], registry=registry,
        )
        self.feedback_rejected = Counter(
            f"{NS}_feedback_rejected",
            "Feedback records skipped, by reason (invalid_key, invalid_json, invalid_record, "
            "key_mismatch, over_cap: FEEDBACK_MAX_WORDS words held).", ["reason"],
            registry=registry,
        )
        self.state_writes = Counter(
            f"{NS}_state_writes", "Table entries written (or deleted) by state flushes.",
            ["stream"], registry=registry,
        )

        self._counters = {
            name: Counter(name, help_text, list(labels), registry=registry)
            for name, (help_text, labels) in COUNTER_HELP.items()
        }
        # detector object -> what it had counted when last seen (counts start at 0 with it)
        self._counted: weakref.WeakKeyDictionary[Any, dict[Any, float]] = (
            weakref.WeakKeyDictionary())

    def add_counts(
        self, source: Any,
        counters: Mapping[tuple[str, tuple[tuple[str, str], ...]], float],
    ) -> None:
        """Add to the Prometheus counters what ``source`` (one detector object) counted since
        the last call: its counts are cumulative since it was created, so a partition revoked
        from this worker takes nothing back from these counters."""
        seen = self._counted.get(source)
        if seen is None:
            seen = self._counted[source] = {}
        for key, n in counters.items():
            name, labels = key
            inc = n - seen.get(key, 0.0)
            seen[key] = n
            if inc <= 0:
                continue
            try:
                c = self._counters.get(name)
                if c is None:
                    c = self._counters[name] = Counter(
                        name, "Detector counter.", [k for k, _ in labels],
                        registry=self.registry)
                (c.labels(*(v for _, v in labels)) if labels else c).inc(inc)
            except ValueError:  # a name taken, or labels unlike the counter's: not exported
                continue

    def watch_state(
        self,
        snapshot: Callable[[], dict[str, StreamState]],
        lag: Callable[[], Mapping[str, TopicLag]] = dict,
        built_at: Callable[[], float] | None = None,
    ) -> None:
        self.registry.register(StateCollector(snapshot, lag, built_at))


    def watch_incidents(self, view: Callable[[], Any]) -> None:
        """``view``: the incident stage's ``IncidentView``, or None on a worker that does not
        run the correlation (it then exports no incident series)."""
        self.registry.register(IncidentCollector(view))


class IncidentCollector(Collector):
    """Incident gauges, from the worker that owns the correlation (one at a time)."""

    def __init__(self, view: Callable[[], Any]) -> None:
        self._view = view

    def collect(self) -> Iterable[GaugeMetricFamily]:
        view = self._view()
        if view is None:
            return
        active = GaugeMetricFamily(
            f"{NS}_incident_active",
            "1 for each open incident (findings that share a cause), labelled with its id, its "
            "probable root (\"service:<name>\" or \"host:<name>\"), the root's type and the "
            "incident's severity. Muted incidents (every firing member muted) are left out.",
            labels=["incident", "root", "root_kind", "severity"],
        )
        grouped = GaugeMetricFamily(
            f"{NS}_incident_grouped",
            "1 for each firing finding of an open incident that has grouped two or more "
            "findings: the shipped rules alert on the incident instead of on each of them (to "
            "the end of the incident, its last finding included).",
            labels=["incident", "fingerprint"],
        )
        count = GaugeMetricFamily(
            f"{NS}_active_incidents", "Open incidents, by severity (muted ones included).",
            labels=["severity"],
        )
        dropped = GaugeMetricFamily(
            f"{NS}_incident_state_dropped",
            "What the correlation left out since this worker rebuilt it, by reason: incidents "
            "evicted at INCIDENT_MAX_OPEN, findings a full incident could not take, edges "
            "evicted, input records it could not read.", labels=["reason"],
        )
        by_severity: dict[str, int] = {}
        for inc_id, root, root_kind, severity, firing, muted, members in view.open:
            by_severity[severity] = by_severity.get(severity, 0) + 1
            if muted:
                continue
            active.add_metric([inc_id, root, root_kind, severity], 1.0)
            if members >= 2:
                for fp in firing:
                    grouped.add_metric([inc_id, fp], 1.0)
        for severity in ("info", "warning", "critical"):
            count.add_metric([severity], by_severity.get(severity, 0))
        for reason, key in (("evicted_incidents", "evicted_incidents"),
                            ("members_left_out", "members_left_out"),
                            ("evicted_edges", "evicted_edges"), ("unreadable", "unreadable")):
            dropped.add_metric([reason], view.counts.get(key, 0))
        yield active
        yield grouped
        yield count
        yield dropped


#: A state view older than this means the event loop is stuck: scrapes fail (see
#: ``StateCollector``). The loop rebuilds it every 5 s.
STALE_VIEW_S = 90.0


class StaleStateError(RuntimeError):
    """The event loop has not refreshed the state view: the worker is hung."""


class StateCollector(Collector):
    """Builds the state gauges at scrape time from views the event loop swaps in whole (the
    HTTP server's thread must not iterate structures the loop is changing).

    The HTTP server runs in its own thread, so it would go on serving the last view of a worker
    whose event loop is stuck, findings included, for ever. When ``built_at`` (the wall time of
    the last view) is older than ``stale_after_s``, collecting raises instead: the scrape fails
    (HTTP 500), Prometheus records ``up == 0`` (AnomalyPipelineWorkerDown), the finding series
    go stale, and a liveness probe on /metrics restarts the worker.
    """

    def __init__(
        self,
        snapshot: Callable[[], dict[str, StreamState]],
        lag: Callable[[], Mapping[str, TopicLag]] = dict,
        built_at: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.time,
        stale_after_s: float = STALE_VIEW_S,
    ) -> None:
        self._snapshot = snapshot
        self._lag = lag
        self._built_at = built_at
        self._clock = clock
        self._stale_after_s = stale_after_s

    def collect(self) -> Iterable[GaugeMetricFamily]:
        now = self._clock()
        if self._built_at is not None:
            age = max(0.0, now - self._built_at())
            if age > self._stale_after_s:
                raise StaleStateError(
                    f"state view is {age:.0f} s old (refreshed every 5 s): the worker's event "
                    "loop is stuck; failing the scrape rather than serving stale findings"
                )
            view_age = GaugeMetricFamily(
                f"{NS}_state_view_age_seconds",
                "Age of the state these gauges come from (rebuilt every 5 s by the event loop; "
                f"scrapes fail once it is over {self._stale_after_s:.0f} s).",
            )
            view_age.add_metric([], age)
            yield view_age
        streams = self._snapshot()
        consumer_lag = GaugeMetricFamily(
            f"{NS}_consumer_lag_records",
            "Records between this worker's position and the end of each topic it consumes "
            "(input topics and routed topics), over the partitions it owns; while the broker "
            "cannot be reached, the last known value.", labels=["topic"],
        )
        fetched = GaugeMetricFamily(
            f"{NS}_consumer_last_fetch_timestamp_seconds",
            "Unix time of the broker's newest fetch answer for the partitions of each topic "
            "this worker owns: the consumer lag of the topic is as of then. It stops while the "
            "broker cannot be reached (the lag then keeps its last known value).",
            labels=["topic"],
        )
        for topic, lag_of in sorted(self._lag().items()):
            consumer_lag.add_metric([topic], lag_of.records)
            if lag_of.fetched_at is not None:
                fetched.add_metric([topic], lag_of.fetched_at)
        yield consumer_lag
        yield fetched
        finding = GaugeMetricFamily(
            f"{NS}_finding_active",
            "1 for each firing finding that is not muted, labelled with its kind, severity, "
            "entity and fingerprint (the Kafka key of its records on the findings topic): what "
            "alert rules fire on.",
            labels=list(FINDING_LABELS),
        )
        muted = GaugeMetricFamily(
            f"{NS}_findings_muted",
            "Firing findings muted from the feedback topic (left out of "
            f"{NS}_finding_active, so they do not alert), by kind.", labels=["kind"],
        )
        muted_by_kind: dict[str, int] = {}
        for st in streams.values():
            for kind, n in st.muted.items():
                muted_by_kind[kind] = muted_by_kind.get(kind, 0) + n
        for kind, n in sorted(muted_by_kind.items()):
            muted.add_metric([kind], n)
        yield muted
        seen: set[str] = set()
        for st in streams.values():
            for kind, severity, fp, entity in sorted(st.firing, key=lambda f: f[2]):
                if fp not in seen:  # an entity's finding lives in one partition
                    seen.add(fp)
                    finding.add_metric(finding_labels(kind, severity, fp, entity), 1.0)
        yield finding
        lag = GaugeMetricFamily(
            f"{NS}_event_time_lag_seconds",
            "Wall clock minus the slowest owned partition's event-time watermark.",
            labels=["stream"],
        )
        watermark = GaugeMetricFamily(
            f"{NS}_watermark_timestamp_seconds",
            "Slowest owned partition's event-time watermark (Unix seconds).", labels=["stream"],
        )
        partitions = GaugeMetricFamily(
            f"{NS}_owned_partitions", "Routed partitions this worker detects on.",
            labels=["stream"],
        )
        tracked = GaugeMetricFamily(
            f"{NS}_tracked_entries", "Per-key entries held in detector state.",
            labels=["detector"],
        )
        # Both live in partition state, which moves between workers with its partitions: they
        # are gauges of the owned partitions' totals, not counters (a counter must not go down).
        evicted = GaugeMetricFamily(
            f"{NS}_partition_state_evictions",
            "Per-key entries evicted or folded, by reason, over the owned partitions' lifetime.",
            labels=["detector", "reason"],
        )
        late = GaugeMetricFamily(
            f"{NS}_partition_late_items",
            "Items older than the watermark when they arrived, over the owned partitions' "
            "lifetime.", labels=["stream"],
        )
        active = GaugeMetricFamily(
            f"{NS}_active_findings", "Findings currently firing.", labels=["kind", "severity"],
        )
        quarantined = GaugeMetricFamily(
            f"{NS}_detector_quarantined",
            "Owned partitions where a detector is quarantined (it kept raising; it is no longer "
            "called there until the worker restarts).", labels=["detector"],
        )
        behind = GaugeMetricFamily(
            f"{NS}_input_behind_state_seconds",
            "How far the newest records arriving are behind the saved state's watermark (a "
            "rerun or replay into old state: they are late). 0 when they are not.",
            labels=["stream"],
        )
        idle = GaugeMetricFamily(
            f"{NS}_input_idle_seconds",
            "Processing seconds every input partition has been read to its end with nothing "
            "new, as the owned partitions know (0 while records flow).", labels=["stream"],
        )
        ended = GaugeMetricFamily(
            f"{NS}_end_of_input_partitions",
            "Owned partitions whose watermark moved past the end of a quiet input "
            "(END_OF_INPUT_S), closing their last windows.", labels=["stream"],
        )
        lost = GaugeMetricFamily(
            f"{NS}_state_entries_lost",
            "Saved state entries not kept, over the owned partitions' lifetime: unreadable on "
            "restore (dropped, never a crash) or too large to save.", labels=["stream", "reason"],
        )
        store = GaugeMetricFamily(
            f"{NS}_state_store_memory_bytes",
            "Memory the owned partitions' RocksDB databases hold, by kind (memtables: writes "
            "not yet flushed to disk; block_cache: blocks read by restores and deletes), as "
            "RocksDB counts it. Part of the worker's resident memory.", labels=["stream", "kind"],
        )
        for stream, st in sorted(streams.items()):
            for kind, n in sorted(st.store_bytes.items()):
                store.add_metric([stream, kind], n)
            behind.add_metric([stream], st.behind_ns / 1e9)
            idle.add_metric([stream], st.idle_s)
            ended.add_metric([stream], st.ended)
            for reason, n in sorted(st.lost.items()):
                lost.add_metric([stream, reason], n)
            for name, n in sorted(st.quarantined.items()):
                quarantined.add_metric([name], n)
            partitions.add_metric([stream], st.partitions)
            late.add_metric([stream], st.late_items)
            if st.watermark_ns:
                watermark.add_metric([stream], st.watermark_ns / 1e9)
                lag.add_metric([stream], max(0.0, now - st.watermark_ns / 1e9))
            for name, n in st.tracked.items():
                tracked.add_metric([name], n)
            for (name, reason), n in st.evicted.items():
                evicted.add_metric([name, reason], n)
            for (kind, severity), n in st.active.items():
                active.add_metric([kind, severity], n)
        yield from (lag, watermark, partitions, tracked, evicted, late, active, quarantined,
                    behind, idle, ended, lost, store)
        families: dict[str, GaugeMetricFamily] = {}
        for st in streams.values():
            for (name, labels), value in sorted(st.gauges.items()):
                fam = families.get(name)
                if fam is None:
                    fam = families[name] = GaugeMetricFamily(
                        name, GAUGE_HELP.get(name, "Detector gauge."),
                        labels=[k for k, _ in labels],
                    )
                fam.add_metric([v for _, v in labels], value)
        yield from families.values()
        yield from servicegraph_families(e for st in streams.values() for e in st.edges)


#: Label names of the servicegraph metrics, as the Collector's connector and Tempo write them.
SERVICEGRAPH_LABELS = ["client", "server", "connection_type"]


def servicegraph_families(edges: Iterable[tuple[Any, ...]]) -> list[Any]:
    """The service map as the OpenTelemetry Collector's ``servicegraph`` connector exports it
    (Tempo's metrics generator uses the same names), so Grafana's service graph view reads it
    unchanged: request and failed-request counters and the server- and client-side latency
    histograms (the connector's default buckets), per edge."""
    total = CounterMetricFamily(
        "traces_service_graph_request", "Total count of requests between two nodes.",
        labels=SERVICEGRAPH_LABELS)
    failed = CounterMetricFamily(
        "traces_service_graph_request_failed",
        "Total count of failed requests between two nodes.", labels=SERVICEGRAPH_LABELS)
    server = HistogramMetricFamily(
        "traces_service_graph_request_server_seconds",
        "Time for a request between two nodes as seen from the server.",
        labels=SERVICEGRAPH_LABELS)
    client = HistogramMetricFamily(
        "traces_service_graph_request_client_seconds",
        "Time for a request between two nodes as seen from the client.",
        labels=SERVICEGRAPH_LABELS)
    for c, sv, ctype, calls, nf, cb, sb, cs, ss in edges:
        labels = [c, sv, ctype]
        total.add_metric(labels, calls)
        failed.add_metric(labels, nf)
        server.add_metric(labels, prometheus_buckets(sb), ss / 1e9)
        client.add_metric(labels, prometheus_buckets(cb), cs / 1e9)
    return [total, failed, server, client]
