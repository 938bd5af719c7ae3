"""Compact span and metric-point records, and their wire form between pipeline stages.

The decoder (``pipeline.otlp``) turns OTLP requests into these records; the router ships them to
the detection stage as one orjson document per (read batch, destination partition)
(``encode_batch``), with each resource written once and referenced by index, so that the
shuffle costs little more than the decode it follows. The document holds each source record's
items as a segment naming that record (topic, partition, offset, chunk): after a crash the
router may send a source record again, and the detection stage uses this to apply it only once.
A source record too large to share a message goes alone (``encode_spans`` / ``encode_points``,
one source), split into chunks numbered in order if its items for one partition would make a
message over the broker's limit (``split_encode``).

Every data message also states its source's watermark (``pipeline.clock``), and *heartbeats*
(``encode_heartbeat``) carry every source's watermark and idleness to each routed partition,
so a partition that gets no records from a source still learns how far that source has got.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from pipeline.connections import HOST_METRICS, host_key, host_of

UNKNOWN_SERVICE = "unknown_service"

# Span kinds, as in opentelemetry.proto.trace.v1.Span.SpanKind.
SPAN_KIND_UNSPECIFIED, SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 0, 1, 2, 3
SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 4, 5
# Status codes, as in opentelemetry.proto.trace.v1.Status.StatusCode.
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
# Aggregation temporality, as in opentelemetry.proto.metrics.v1.AggregationTemporality.
TEMPORALITY_UNSPECIFIED, TEMPORALITY_DELTA, TEMPORALITY_CUMULATIVE = 0, 1, 2


@dataclass(slots=True)
class Resource:
    """The identity of what emitted the telemetry.

    ``instance`` is the most specific identity available: ``service.instance.id``, else the
    Kubernetes pod (``namespace/pod``), else ``host:pid``, else the host, else ``""``.
    """

    service: str
    instance: str
    host: str
    pod: str
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Routing and state key: every record of one emitter lands in one partition."""
        return f"{self.service}|{self.instance}"

    def to_wire(self) -> list[Any]:
        return [self.service, self.instance, self.host, self.pod, self.attrs]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Resource:
        return cls(w[0], w[1], w[2], w[3], w[4])


@dataclass(slots=True)
class Span:
    """One span, with only the attributes detectors use (see ``pipeline.otlp.SPAN_ATTRIBUTES``)."""

    trace_id: str  # 32 lowercase hex characters
    span_id: str  # 16 lowercase hex characters
    parent_id: str  # "" for a root span
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status: int
    attrs: dict[str, Any]
    resource: Resource

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def event_time_ns(self) -> int:
        return self.end_ns


@dataclass(slots=True)
class MetricPoint:
    """One data point of a Gauge, Sum, Histogram, ExponentialHistogram or Summary metric.

    ``value`` holds Gauge and Sum values; histogram-like points carry ``count`` and ``sum`` and,
    for explicit-bucket histograms, ``bounds`` and ``bucket_counts``.
    """

    name: str
    type: str  # gauge | sum | histogram | exponential_histogram | summary
    unit: str
    temporality: int
    monotonic: bool
    time_ns: int
    start_ns: int
    value: float | None
    attrs: dict[str, Any]
    resource: Resource
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bounds: list[float] | None = None
    bucket_counts: list[int] | None = None

    @property
    def event_time_ns(self) -> int:
        return self.time_ns


def span_partition(span: Span, partitions: int) -> int:
    """Partition of a span's trace. Uses the trace id's right half: W3C puts the randomness
    there, and some producers (AWS X-Ray ids) encode a timestamp in the left half."""
    return int(span.trace_id[-8:], 16) % partitions


def point_partition(point: MetricPoint, partitions: int) -> int:
    """Partition of a metric point's emitter (service + instance); a host's connection metrics
    (``pipeline.connections.HOST_METRICS``) go by host instead, so that one partition sees the
    hostmetrics receiver's and node_exporter's view of a host and the client calls made from it
    (``HostCalls``)."""
    if point.name in HOST_METRICS:
        return zlib.crc32(host_key(host_of(point.resource)).encode()) % partitions
    return zlib.crc32(point.resource.key.encode()) % partitions


# topic, partition, offset of the record the items came from, and the chunk of that record's
# items for this partition (0 unless they were split to stay under the message size limit)
Source = tuple[str, int, int, int]


class TooLarge(ValueError):
    """One item alone encodes over the message size limit: it cannot be routed."""


@dataclass(slots=True)
class HostCalls:
    """Client calls made from one host in one minute, by calling service and destination:
    what the span stage derives (``pipeline.detectors.client_calls``) for the TIME_WAIT
    detector, routed by host like the host's connection metrics."""

    host: str
    minute_ns: int  # start of the minute (event time)
    service: str
    destination: str
    calls: int

    @property
    def event_time_ns(self) -> int:
        return self.minute_ns


def calls_partition(item: HostCalls, partitions: int) -> int:
    return zlib.crc32(host_key(item.host).encode()) % partitions


def encode_calls(items: list[HostCalls], source: Source | None = None,
                 watermark_ns: int | None = None) -> bytes:
    """Client calls, a side input: ``watermark_ns`` says how far the sender's calls are
    complete (every minute ending at or before it has been sent)."""
    rows = [[c.host, c.minute_ns, c.service, c.destination, c.calls] for c in items]
    return orjson.dumps({"src": source, "wm": watermark_ns, "c": rows})


@dataclass(slots=True)
class Mark:
    """What a heartbeat says of one source: how far it has got, and for how many seconds of
    processing time it has been idle (read to its end with nothing new; 0 while active)."""

    topic: str
    partition: int
    watermark_ns: int
    idle_s: float = 0.0


@dataclass(slots=True)
class Routed:
    """One routed message: its source record and its items, or a heartbeat."""

    source: Source | None
    items: list[Any]
    # The source's event-time watermark once this message's items are in: the ingest stage's
    # ``SourceClock`` for input records, the sending partition's output watermark for records
    # one detection stage derives for the next. The receiver's watermark is the minimum over
    # its sources.
    watermark_ns: int | None = None
    # Side input (``HostCalls`` on the metrics stream): applied once, but moves no watermark.
    side: bool = False
    # A heartbeat: no items, the marks of the sender's sources.
    marks: list[Mark] | None = None
    # The partition count of each source topic (how many sources the receiver must hear
    # from), on heartbeats and on data messages.
    partitions: dict[str, int] | None = None
    # A batch (``encode_batch``): the items of several source records in order, each
    # record's share a ``Segment``; ``source`` and ``watermark_ns`` are then None.
    segments: list[Segment] | None = None
    # The source record's Kafka timestamp, when the message states no watermark: the
    # receiver keeps the source's clock (input keyed by trace id, ``encode_forwarded``).
    record_ns: int | None = None
    # A chunk before the last of a record whose receiver keeps the source's clock: its items
    # move the clock only with the last chunk (later chunks may hold older items).
    partial: bool = False


@dataclass(slots=True)
class Segment:
    """One source record's items in a batch: how many (the next ``count`` items of the
    message) and the watermark its source states once they are in."""

    source: Source
    count: int
    watermark_ns: int | None
    record_ns: int | None = None  # as ``Routed.record_ns``


def encode_heartbeat(marks: list[Mark], partitions: dict[str, int], side: bool = False
                     ) -> bytes:
    """A heartbeat; ``side``: the marks of a side input's senders (they move no watermark)."""
    doc: dict[str, Any] = {
        "hb": [[m.topic, m.partition, m.watermark_ns, round(m.idle_s, 3)] for m in marks],
        "n": partitions,
    }
    if side:
        doc["side"] = True
    return orjson.dumps(doc)


def _heartbeat(doc: dict[str, Any]) -> Routed:
    side = bool(doc.get("side"))
    return Routed(None, [], marks=[Mark(*m) for m in doc["hb"]],
                  partitions=None if side else dict(doc["n"]), side=side)


def split_encode(
    items: list[Any], encode: Callable[[list[Any], int, bool], bytes], max_bytes: int
) -> list[bytes]:
    """``encode(items, chunk, final)`` as one message, or as several in order (chunks 0, 1,
    ...), each at most ``max_bytes``; raises ``TooLarge`` if one item alone is over.

    Only the final chunk is encoded with ``final=True``: a message states the watermark that
    holds for everything after it from the same source, and the chunks after it may hold
    older items, so earlier chunks state the watermark from before the record. (Sizes are
    measured with ``final=True``, which must not encode smaller than ``final=False``.)

    >>> enc = lambda xs, c, final: orjson.dumps({"c": c, "f": final, "x": xs})
    >>> [(len(m), orjson.loads(m)["f"]) for m in split_encode(list(range(100)), enc, 200)]
    [(163, False), (172, True)]
    >>> split_encode(["x" * 300], enc, 200)
    Traceback (most recent call last):
    pipeline.records.TooLarge: one item encodes to 325 bytes, over the 200-byte message limit
    """
    whole = encode(items, 0, True)
    if len(whole) <= max_bytes:
        return [whole]
    groups: list[list[Any]] = []
    pending = [items]
    while pending:
        part = pending.pop(0)
        data = encode(part, len(groups), True)
        if len(data) <= max_bytes:
            groups.append(part)
        elif len(part) == 1:
            raise TooLarge(
                f"one item encodes to {len(data)} bytes, over the {max_bytes}-byte message "
                "limit"
            )
        else:
            half = len(part) // 2
            pending[:0] = [part[:half], part[half:]]
    return [encode(g, i, i == len(groups) - 1) for i, g in enumerate(groups)]


def _encode(
    resources: list[Resource], rows: list[list[Any]], tag: str, source: Source | None,
    watermark_ns: int | None, partitions: int | None, record_ns: int | None = None,
    partial: bool | None = None,
) -> bytes:
    doc = {"src": source, "wm": watermark_ns, "n": partitions,
           "r": [r.to_wire() for r in resources], tag: rows}
    if record_ns is not None:
        doc["rt"] = record_ns
    if partial is not None:  # (written either way: chunks are sized as the last one)
        doc["pc"] = partial
    return orjson.dumps(doc)


def _partitions(doc: dict[str, Any]) -> dict[str, int] | None:
    n, src = doc.get("n"), doc.get("src")
    return {src[0]: n} if n and src else None


def _source(doc: dict[str, Any]) -> Source | None:
    src = doc.get("src")
    if src is None:
        return None
    return (src[0], src[1], src[2], src[3] if len(src) > 3 else 0)


def _resource_index(items: list[Any]) -> tuple[list[Resource], dict[int, int]]:
    """The distinct resources of ``items`` (decoded records share one object per OTLP
    resource) and each one's position, by object identity."""
    index: dict[int, int] = {}
    resources: list[Resource] = []
    for item in items:
        if id(item.resource) not in index:
            index[id(item.resource)] = len(resources)
            resources.append(item.resource)
    return resources, index


def _span_rows(spans: list[Span], index: dict[int, int]) -> list[list[Any]]:
    return [[s.trace_id, s.span_id, s.parent_id, s.name, s.kind, s.start_ns, s.end_ns, s.status,
             s.attrs, index[id(s.resource)]] for s in spans]


def _point_rows(points: list[MetricPoint], index: dict[int, int]) -> list[list[Any]]:
    return [[p.name, p.type, p.unit, p.temporality, p.monotonic, p.time_ns, p.start_ns, p.value,
             p.attrs, index[id(p.resource)],
             None if p.count is None else [p.count, p.sum, p.min, p.max, p.bounds,
                                           p.bucket_counts]]
            for p in points]


def encode_spans(spans: list[Span], source: Source | None = None,
                 watermark_ns: int | None = None, partitions: int | None = None,
                 record_ns: int | None = None, partial: bool | None = None) -> bytes:
    """Wire form of spans for the routing topic (resources written once); ``partitions`` is
    the source topic's partition count (how many sources the receiver waits for);
    ``record_ns`` as ``Routed.record_ns``."""
    resources, index = _resource_index(spans)
    return _encode(resources, _span_rows(spans, index), "s", source, watermark_ns, partitions,
                   record_ns, partial)


#: One source record's share of a batch: its items, its source and the watermark stated after.
BatchPart = tuple[list[Any], Source, int | None]


def encode_batch(parts: list[BatchPart], partitions: Mapping[str, int]) -> bytes:
    """Several source records' items for one routed partition as one message: what ingest
    sends per (read batch, destination partition). Items keep their order; each record's share
    is a segment naming its source and the watermark it states, so the receiver applies and
    deduplicates each record as if it had come alone. Resources are written once per message.
    ``partitions``: the partition count of source topics, where known (the message states
    those of its own sources). Spans or metric points, not both."""
    items = [it for part in parts for it in part[0]]
    resources, index = _resource_index(items)
    spans = bool(items) and isinstance(items[0], Span)
    rows = _span_rows(items, index) if spans else _point_rows(items, index)
    counts = {src[0]: partitions[src[0]] for _, src, _ in parts if partitions.get(src[0])}
    return orjson.dumps({
        "b": [[*src, len(its), wm] for its, src, wm in parts], "n": counts or None,
        "r": [r.to_wire() for r in resources], "s" if spans else "p": rows,
    })


def _segments(doc: dict[str, Any]) -> list[Segment]:
    return [Segment((b[0], b[1], b[2], b[3]), b[4], b[5]) for b in doc["b"]]


def decode_spans_wire(data: bytes) -> Routed:
    doc = orjson.loads(data)
    if "hb" in doc:
        return _heartbeat(doc)
    resources = [Resource.from_wire(r) for r in doc["r"]]
    spans = [Span(*row[:9], resources[row[9]]) for row in doc["s"]]
    if "b" in doc:
        return Routed(None, spans, None, partitions=doc["n"], segments=_segments(doc))
    return Routed(_source(doc), spans, doc.get("wm"), partitions=_partitions(doc),
                  record_ns=doc.get("rt"), partial=bool(doc.get("pc")))


# -- input keyed by trace id: source records forwarded whole ---------------------------------
#: The first bytes of a forwarded-records message (routed JSON starts with "{", ticks "t").
FORWARDED_MAGIC = b"\x00F1"
_HEADER_LEN = struct.Struct(">I")


@dataclass(slots=True)
class SourceRecord:
    """An input record as read, forwarded undecoded to the span stage when the input is keyed
    by trace id (its partition then holds whole traces): the span stage decodes it, and
    dead-letters it with everything a dead letter keeps."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def encode_forwarded(recs: list[SourceRecord], partitions: Mapping[str, int]) -> bytes:
    """Source records as one routed message: a header (each record's coordinates, key and
    headers; the partition count of each source topic this receiver hears from) and the values
    back to back, copied as they are (no decode, no per-item work).

    >>> r = SourceRecord("otlp_spans", 3, 7, 1_700_000_000_000, b"ab", b"k", [("h", b"v")])
    >>> data = encode_forwarded([r, SourceRecord("otlp_spans", 3, 8, None, None)],
    ...                         {"otlp_spans": 1})
    >>> is_forwarded(data), decode_forwarded(data) == ([r, SourceRecord(
    ...     "otlp_spans", 3, 8, None, None)], {"otlp_spans": 1})
    (True, True)
    """
    header = orjson.dumps({
        "f": [[r.topic, r.partition, r.offset, r.timestamp_ms,
               -1 if r.value is None else len(r.value), _b64(r.key),
               [[k, _b64(v)] for k, v in r.headers] or None] for r in recs],
        "n": dict(partitions) or None,
    })
    return b"".join([FORWARDED_MAGIC, _HEADER_LEN.pack(len(header)), header,
                     *(r.value for r in recs if r.value is not None)])


def is_forwarded(data: bytes | None) -> bool:
    return data is not None and data[:3] == FORWARDED_MAGIC


def decode_forwarded(data: bytes) -> tuple[list[SourceRecord], dict[str, int]]:
    """The source records of an ``encode_forwarded`` message, and its partition counts."""
    start = len(FORWARDED_MAGIC) + _HEADER_LEN.size
    (size,) = _HEADER_LEN.unpack_from(data, len(FORWARDED_MAGIC))
    doc = orjson.loads(data[start:start + size])
    pos = start + size
    view = memoryview(data)
    out = []
    for topic, partition, offset, ts, length, key, headers in doc["f"]:
        value = None
        if length >= 0:
            value = bytes(view[pos:pos + length])
            pos += length
        out.append(SourceRecord(topic, partition, offset, ts, value, _unb64(key),
                                [(k, _unb64(v) or b"") for k, v in headers or ()]))
    return out, dict(doc["n"] or {})


def keyed_sources(input_partitions: int, partitions: int, partition: int) -> int:
    """How many input partitions one routed partition hears from when the input is keyed by
    trace id (input partition ``i`` goes whole to routed partition ``i % partitions``).

    >>> [keyed_sources(8, 32, p) for p in (0, 7, 8)], [keyed_sources(12, 8, p) for p in (3, 4)]
    ([1, 1, 0], [2, 1])
    """
    return len(range(partition, input_partitions, partitions))


def keyed_counts(topic: str, input_partitions: int, partitions: int, partition: int
                 ) -> dict[str, int]:
    """``keyed_sources`` as the partition counts a message states (none while unknown)."""
    n = keyed_sources(input_partitions, partitions, partition)
    return {topic: n} if n else {}


def span_senders(keyed: bool, input_partitions: int, partitions: int) -> int:
    """How many span-stage partitions feed the next stages: every routed partition, or, with
    input keyed by trace id, those an input partition goes to (0 while that is unknown).

    >>> span_senders(False, 8, 16), span_senders(True, 8, 16), span_senders(True, 32, 16)
    (16, 8, 16)
    """
    return min(input_partitions, partitions) if keyed else partitions


def encode_points(points: list[MetricPoint], source: Source | None = None,
                  watermark_ns: int | None = None, partitions: int | None = None) -> bytes:
    """Wire form of metric points for the routing topic (resources written once)."""
    resources, index = _resource_index(points)
    return _encode(resources, _point_rows(points, index), "p", source, watermark_ns, partitions)


def decode_points_wire(data: bytes) -> Routed:
    """Metric points, or the client calls the span stage derives (a side input)."""
    doc = orjson.loads(data)
    if "hb" in doc:
        return _heartbeat(doc)
    if "c" in doc:
        return Routed(_source(doc), [HostCalls(*row) for row in doc["c"]], doc.get("wm"),
                      side=True)
    resources = [Resource.from_wire(r) for r in doc["r"]]
    out = []
    for row in doc["p"]:
        point = MetricPoint(*row[:9], resources[row[9]])
        hist = row[10]
        if hist is not None:
            point.count, point.sum, point.min, point.max, point.bounds, point.bucket_counts = hist
        out.append(point)
    if "b" in doc:
        return Routed(None, out, None, partitions=doc["n"], segments=_segments(doc))
    return Routed(_source(doc), out, doc.get("wm"), partitions=_partitions(doc))


@dataclass(slots=True)
class OpTime:
    """One operation's time in one trace: summed over its spans in that trace."""

    operation: str  # the span name
    detail: str  # what refines a generic name: the http.route or the database, else ""
    cp_ns: int  # exclusive time on the critical path
    self_ns: int  # exclusive time, on the path or not
    spans: int
    attrs: dict[str, Any]  # the attributes naming the resource (db.system, peer.service...)
    # Failures that started in this operation's spans (``traces.error_origins``): those that
    # reached the request's result, and those a caller absorbed (a retry, a fallback); and
    # what the first of them says (``trace_assembly.error_evidence``), or None.
    errors: int = 0
    absorbed: int = 0
    error: dict[str, Any] | None = None

    def to_wire(self) -> list[Any]:
        w = [self.operation, self.detail, self.cp_ns, self.self_ns, self.spans, self.attrs]
        if self.errors or self.absorbed:
            w += [self.errors, self.absorbed, self.error]
        return w


@dataclass(slots=True)
class TraceSample:
    """One service's share of one completed trace: what the trace stage sends the bottleneck
    detector, routed by service so that one partition sees all of a service's operations."""

    trace_id: str
    service: str
    end_ns: int  # the newest span end (skew-adjusted): the trace's event time
    duration_ns: int  # the root span's duration: the trace's end-to-end latency
    top: str  # "service|operation|detail" with the most critical-path time in the whole trace
    ops: list[OpTime]
    # The trace's calls on the service map whose client is this service (or, for calls from
    # outside, ``user``, whose server is): ``[client, server, connection type, calls, failed,
    # client buckets, server buckets, client ns, server ns]``, buckets as flat ``[bucket, n,
    # ...]`` pairs of ``pipeline.servicegraph.BUCKETS``.
    edges: list[list[Any]] = field(default_factory=list)

    @property
    def event_time_ns(self) -> int:
        return self.end_ns


def sample_partition(sample: TraceSample, partitions: int) -> int:
    """Partition of a service's trace samples."""
    return zlib.crc32(sample.service.encode()) % partitions


def encode_samples(
    samples: list[TraceSample], source: Source | None = None, watermark_ns: int | None = None
) -> bytes:
    rows = []
    for s in samples:
        row = [s.trace_id, s.service, s.end_ns, s.duration_ns, s.top, [o.to_wire() for o in s.ops]]
        if s.edges:
            row.append(s.edges)
        rows.append(row)
    return orjson.dumps({"src": source, "wm": watermark_ns, "t": rows})


def decode_samples_wire(data: bytes) -> Routed:
    doc = orjson.loads(data)
    if "hb" in doc:
        return _heartbeat(doc)
    return Routed(
        _source(doc),
        [TraceSample(*row[:5], [OpTime(*o) for o in row[5]], row[6] if len(row) > 6 else [])
         for row in doc["t"]],
        doc.get("wm"),
    )
