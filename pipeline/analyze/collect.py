"""What the report needs from a run of the worker's stages, kept bounded. Pure.

The stages derive one ``TraceSample`` per (trace, service) with each operation's exclusive and
critical-path time, the failures that started in it (``errors``, ``absorbed``, ``error``) and
the trace's calls on the service map (``edges``). ``Collector`` folds those of the range asked
into per-operation and per-edge aggregates, and notes which instances and hosts each service
runs on (from span and metric resources). ``detector_classes`` plugs it into
``pipeline.local.LocalPipeline`` as three detectors that only read.

Bounded: at most ``max_operations`` operations, ``max_edges`` edges and ``max_names``
instances or hosts per service; per operation a reservoir of ``reservoir`` per-trace times for
the percentiles and the ``EXEMPLARS`` slowest traces. What does not fit is counted
(``overflow``), never kept.

    >>> from pipeline.records import OpTime, TraceSample
    >>> c = Collector(service="api", threshold_ns=100)
    >>> c.add_samples([TraceSample("t1", "api", 10, 150, "api|GET|", [
    ...     OpTime("GET", "", 120, 100, 1, {}, errors=1, error={"exception.type": "E"})])])
    >>> op = c.ops[("api", "GET", "")]
    >>> op.calls, op.errors, c.traces, c.slow_traces, op.cp.quantile(0.5)
    (1, 1, 1, 1, 120.0)
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.connections import host_of
from pipeline.detectors.base import Detector
from pipeline.detectors.bottleneck import quantile
from pipeline.detectors.trace_assembly import INBOUND
from pipeline.findings import Finding
from pipeline.records import MetricPoint, Resource, Span, TraceSample
from pipeline.servicegraph import add_flat

EXEMPLARS = 5  # slowest traces kept per operation and table, failing traces per origin
MAX_CAUSES = 5  # distinct exception types / messages counted per origin (the rest: "other")
RECENT_TRACES = 20_000  # trace ids remembered to count a trace once over its services' samples


class Reservoir:
    """A uniform sample of at most ``cap`` values (Vitter's algorithm R), seeded so that the
    same input gives the same report; quantiles over it (linear between order statistics).

    >>> r = Reservoir(cap=100)
    >>> for v in range(1, 1001):
    ...     r.add(v)
    >>> r.seen, len(r.values), 300 < r.quantile(0.5) < 700
    (1000, 100, True)
    """

    __slots__ = ("cap", "seen", "values", "_rng")

    def __init__(self, cap: int = 512, seed: int = 0) -> None:
        self.cap, self.seen, self.values = cap, 0, []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(value)
            return
        j = self._rng.randrange(self.seen)
        if j < self.cap:
            self.values[j] = value

    def quantile(self, q: float) -> float | None:
        return float(quantile(sorted(self.values), q)) if self.values else None


def _top(heap: list[tuple[int, str]], value: int, trace_id: str, k: int = EXEMPLARS) -> None:
    """Keep the ``k`` largest (value, trace id) in a min-heap."""
    if len(heap) < k:
        heapq.heappush(heap, (value, trace_id))
    elif value > heap[0][0]:
        heapq.heapreplace(heap, (value, trace_id))


def slowest(heap: list[tuple[int, str]]) -> list[str]:
    return [t for _, t in sorted(heap, reverse=True)]


def cause_of(error: Mapping[str, Any]) -> str:
    """One line naming what a failure says: its exception, else its status message or code."""
    if error.get("exception.type"):
        msg = error.get("exception.message")
        return f"{error['exception.type']}: {msg}" if msg else str(error["exception.type"])
    if error.get("status.message"):
        return str(error["status.message"])
    if error.get("http.status_code") is not None:
        return f"HTTP {error['http.status_code']}"
    if error.get("rpc.grpc.status_code") is not None:
        return f"gRPC status {error['rpc.grpc.status_code']}"
    return "error status"


@dataclass(slots=True)
class OpStats:
    """One operation (service, span name, detail) over the range."""

    calls: int = 0  # spans
    traces: int = 0
    cp_ns: int = 0
    self_ns: int = 0
    cp: Reservoir = field(default_factory=Reservoir)  # per-trace critical-path time
    excl: Reservoir = field(default_factory=Reservoir)  # per-trace exclusive time
    slow_cp_ns: int = 0  # critical-path time in traces over the latency threshold
    slow_traces: int = 0
    slowest_cp: list[tuple[int, str]] = field(default_factory=list)
    slowest_self: list[tuple[int, str]] = field(default_factory=list)
    errors: int = 0  # failures that started here and reached the request's result
    absorbed: int = 0  # failures that started here and a caller handled
    error_traces: list[str] = field(default_factory=list)
    evidence: dict[str, Any] | None = None  # what the first surfaced (else absorbed) says
    causes: dict[str, int] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


class Collector:
    """Folds trace samples and resources of one range (``[from_ns, to_ns)`` by the trace's
    event time; None: open) and, if ``service`` is given, of that service only (edges are
    kept for every service: the map reaches past the service's own calls)."""

    def __init__(self, service: str | None = None, from_ns: int | None = None,
                 to_ns: int | None = None, threshold_ns: int | None = None,
                 max_operations: int = 2_000, max_edges: int = 5_000, max_names: int = 200,
                 reservoir: int = 512) -> None:
        self.service, self.from_ns, self.to_ns = service, from_ns, to_ns
        self.threshold_ns = threshold_ns
        self.max_operations, self.max_edges, self.max_names = max_operations, max_edges, max_names
        self.reservoir = reservoir
        self.ops: dict[tuple[str, str, str], OpStats] = {}
        # (client, server, connection type) -> [calls, failed, {client bucket: n},
        # {server bucket: n}]
        self.edges: dict[tuple[str, str, str], list[Any]] = {}
        self.instances: dict[str, set[str]] = {}
        self.hosts: dict[str, set[str]] = {}
        self.traces = self.slow_traces = self.failed_traces = 0
        self.slow_duration_ns = 0
        self.durations = Reservoir(reservoir, seed=1)
        self.slowest_traces: list[tuple[int, str]] = []
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.samples = 0
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.overflow: dict[str, int] = {
            "samples_before_range": 0, "samples_after_range": 0,
            "operations_not_tracked": 0, "edges_not_tracked": 0, "names_not_tracked": 0,
        }

    # -- input ------------------------------------------------------------------------------
    def in_range(self, ns: int) -> str | None:
        if self.from_ns is not None and ns < self.from_ns:
            return "samples_before_range"
        if self.to_ns is not None and ns >= self.to_ns:
            return "samples_after_range"
        return None

    def add_samples(self, samples: Iterable[TraceSample]) -> None:
        for s in samples:
            out = self.in_range(s.end_ns)
            if out is not None:
                self.overflow[out] += 1
                continue
            self._edges(s)
            if self.service is not None and s.service != self.service:
                continue
            self.samples += 1
            self.first_ns = s.end_ns if self.first_ns is None else min(self.first_ns, s.end_ns)
            self.last_ns = s.end_ns if self.last_ns is None else max(self.last_ns, s.end_ns)
            slow = self.threshold_ns is not None and s.duration_ns > self.threshold_ns
            self._trace(s, slow)
            for o in s.ops:
                if o.operation != INBOUND:  # copies of callers' calls, counted on their side
                    self._op(s, o, slow)

    def _trace(self, s: TraceSample, slow: bool) -> None:
        failed = any(o.errors for o in s.ops)
        recent = self._recent
        if s.trace_id in recent:  # another service's sample of a trace already counted
            if failed and recent[s.trace_id] is None:
                self.failed_traces += 1
                recent[s.trace_id] = True
            return
        recent[s.trace_id] = True if failed else None
        if len(recent) > RECENT_TRACES:
            recent.popitem(last=False)
        self.traces += 1
        self.failed_traces += failed
        self.durations.add(s.duration_ns)
        _top(self.slowest_traces, s.duration_ns, s.trace_id)
        if slow:
            self.slow_traces += 1
            self.slow_duration_ns += s.duration_ns

    def _op(self, s: TraceSample, o: Any, slow: bool) -> None:
        key = (s.service, o.operation, o.detail)
        st = self.ops.get(key)
        if st is None:
            if len(self.ops) >= self.max_operations:
                self.overflow["operations_not_tracked"] += 1
                return
            seed = zlib.crc32("|".join(key).encode())
            st = self.ops[key] = OpStats(cp=Reservoir(self.reservoir, seed),
                                         excl=Reservoir(self.reservoir, seed + 1))
        if o.attrs and not st.attrs:
            st.attrs = dict(o.attrs)
        st.calls += o.spans
        st.traces += 1
        st.cp_ns += o.cp_ns
        st.self_ns += o.self_ns
        st.cp.add(o.cp_ns)
        st.excl.add(o.self_ns)
        _top(st.slowest_cp, o.cp_ns, s.trace_id)
        _top(st.slowest_self, o.self_ns, s.trace_id)
        if slow:
            st.slow_cp_ns += o.cp_ns
            st.slow_traces += 1
        if o.errors or o.absorbed:
            st.errors += o.errors
            st.absorbed += o.absorbed
            if o.errors and len(st.error_traces) < EXEMPLARS:
                st.error_traces.append(s.trace_id)
            if o.error:
                if st.evidence is None or (o.errors and not st.evidence.get("_surfaced")):
                    st.evidence = {**o.error, "_surfaced": bool(o.errors)}
                cause = cause_of(o.error)
                n = o.errors + o.absorbed
                if cause in st.causes or len(st.causes) < MAX_CAUSES:
                    st.causes[cause] = st.causes.get(cause, 0) + n
                else:
                    st.causes["(other)"] = st.causes.get("(other)", 0) + n

    def _edges(self, s: TraceSample) -> None:
        for client, server, ctype, n, nf, cb, sb, _cs, _ss in s.edges:
            key = (client, server, ctype)
            e = self.edges.get(key)
            if e is None:
                if len(self.edges) >= self.max_edges:
                    self.overflow["edges_not_tracked"] += n
                    continue
                e = self.edges[key] = [0, 0, {}, {}]
            e[0] += n
            e[1] += nf
            add_flat(e[2], cb)
            add_flat(e[3], sb)

    def add_resources(self, resources: Iterable[Resource]) -> None:
        for r in resources:
            if self.service is not None and r.service != self.service:
                continue
            for names, value in ((self.instances, r.instance), (self.hosts, host_of(r))):
                if not value:
                    continue
                have = names.get(r.service)
                if have is None:
                    if len(names) >= self.max_names:
                        self.overflow["names_not_tracked"] += 1
                        continue
                    have = names[r.service] = set()
                if value not in have:
                    if len(have) >= self.max_names:
                        self.overflow["names_not_tracked"] += 1
                        continue
                    have.add(value)


def detector_classes(collector: Collector) -> list[type[Detector]]:
    """Three read-only detectors that hand ``collector`` the trace samples (``traces``) and the
    span and metric resources (``spans``, ``metrics``); they find nothing and keep no state."""

    class _Reader(Detector):
        version = "1"
        kinds = ()

        def advance(self, watermark_ns: int) -> list[Finding]:
            return []

        def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
            return {}

        def restore(self, state: Mapping[str, Any]) -> None:
            pass

    class TraceReport(_Reader):
        name = "analyze_traces"
        signal = "traces"

        def update(self, records: Sequence[TraceSample]) -> None:
            collector.add_samples(records)

    class SpanResources(_Reader):
        name = "analyze_span_resources"
        signal = "spans"

        def update(self, records: Sequence[Span]) -> None:
            collector.add_resources({id(r.resource): r.resource for r in records}.values())

    class MetricResources(_Reader):
        name = "analyze_metric_resources"
        signal = "metrics"

        def update(self, records: Sequence[MetricPoint]) -> None:
            collector.add_resources({id(r.resource): r.resource for r in records}.values())

    return [TraceReport, SpanResources, MetricResources]
