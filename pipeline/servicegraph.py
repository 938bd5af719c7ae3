"""Who calls whom: the edges of the service dependency map in one trace, and the latency
histogram they are measured with. Pure: no Kafka, no clock.

An edge is (client, server, connection type), named as the OpenTelemetry Collector's
``servicegraph`` connector and Tempo's service graphs name them, so that Grafana's service graph
view reads the metrics built from them unchanged:

- a CLIENT span whose child is another service's SERVER span (a PRODUCER and its CONSUMER:
  ``connection_type="messaging_system"``): client and server are the two services; its
  client time is the client span's duration, its server time the server span's;
- a CLIENT or PRODUCER span with no such child, whose callee sends no spans (a database, a
  cache, a third-party API): the server is a *virtual node* named from the span's attributes
  (``trace_assembly.destination_of``: the database, ``peer.service``, the address...), with
  ``connection_type="database"`` when ``db.system`` is set, ``"messaging_system"`` for a
  messaging destination, else ``"virtual_node"``; both times are the client span's (the only
  one measured);
- a root SERVER span (the request came from outside the traced system): client ``user``,
  ``connection_type="virtual_node"``, as Tempo names the uninstrumented caller.

A call *failed* when the client or the server span is in error (``traces.in_error``: a client's
4xx is not a failure of the callee).

Latencies go into ``BUCKETS``: the connector's default histogram bounds merged with a finer
grid of 25 % steps, so that the Prometheus histogram has exactly the connector's buckets (sums
of fine ones) while percentiles for the ``service_map`` topic come from the fine grid.

>>> from pipeline.records import Resource, Span
>>> def sp(svc, i, parent, kind, s, e, **attrs):
...     return Span("t" * 32, i, parent, "op", kind, s, e, 0, attrs, Resource(svc, "", "", "", {}))
>>> from pipeline.traces import analyze
>>> from pipeline.detectors.trace_assembly import destination_of
>>> a = analyze([sp("web", "1", "", 2, 0, 100), sp("web", "2", "1", 3, 10, 90),
...              sp("api", "3", "2", 2, 20, 80), sp("api", "4", "3", 3, 30, 40,
...                                                   **{"db.system": "postgresql"})])
>>> sorted(trace_edges(a, destination_of))
[('api', 'postgresql', 'database'), ('user', 'web', 'virtual_node'), ('web', 'api', '')]
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.records import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_CONSUMER,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
)
from pipeline.traces import TraceAnalysis

USER = "user"
VIRTUAL, DATABASE, MESSAGING = "virtual_node", "database", "messaging_system"
#: The OpenTelemetry Collector servicegraph connector's default latency buckets, in seconds.
PROM_BOUNDS_S = (0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0,
                 5.0, 10.0, 15.0)


def _grid() -> tuple[float, ...]:
    fine, b = set(PROM_BOUNDS_S), 0.0001
    while b < 60.0:
        fine.add(round(b, 7))
        b *= 1.25
    return tuple(sorted(fine))


#: Upper bounds (seconds) of the fine buckets; one more bucket holds what is above the last.
BUCKETS = _grid()
BUCKET_NS = tuple(int(round(b * 1e9)) for b in BUCKETS)
#: For each Prometheus bound, how many fine buckets fall at or under it.
PROM_CUTS = tuple(BUCKETS.index(b) + 1 for b in PROM_BOUNDS_S)

Edge = tuple[str, str, str]  # client, server, connection type


def bucket(ns: int) -> int:
    """Index of the fine bucket holding a duration (upper bounds are inclusive, as ``le``)."""
    return bisect.bisect_left(BUCKET_NS, ns)


def answered(a: TraceAnalysis) -> dict[int, list[int]]:
    """Each CLIENT or PRODUCER span (index) that another service's SERVER or CONSUMER span
    answered, and those spans, in span order: a call whose callee is in the trace."""
    spans, parent = a.spans, a.parent
    out: dict[int, list[int]] = {}
    for i, s in enumerate(spans):
        if (s.kind == SPAN_KIND_SERVER or s.kind == SPAN_KIND_CONSUMER) and s.parent_id:
            p = parent[i]  # (an orphan hangs under the root: its parent is not the root)
            if p >= 0 and spans[p].span_id == s.parent_id and (
                    spans[p].kind == SPAN_KIND_CLIENT or spans[p].kind == SPAN_KIND_PRODUCER
            ) and spans[p].resource.service != s.resource.service:
                out.setdefault(p, []).append(i)
    return out


def trace_edges(a: TraceAnalysis, destination: Callable[[Mapping[str, Any]], str],
                failed: Sequence[bool] | None = None,
                calls: Mapping[int, list[int]] | None = None) -> dict[Edge, list[Any]]:
    """The calls of one trace by edge: ``[calls, failed, {client bucket: n}, {server bucket:
    n}, client ns summed, server ns summed, owner]``, the owner being the service whose spans
    made the call (the client; the server for a request from outside). ``destination``:
    names an uninstrumented callee from a client span's attributes
    (``trace_assembly.destination_of``); ``failed``: ``in_error`` per span, if known (without
    it no call is counted failed); ``calls``: ``answered(a)``, if computed already."""
    spans = a.spans
    out: dict[Edge, list[Any]] = {}
    if calls is None:
        calls = answered(a)
    for i, s in enumerate(spans):
        if s.kind == SPAN_KIND_SERVER and not s.parent_id:
            d = a.end_ns[i] - a.start_ns[i]
            _add(out, (USER, s.resource.service, VIRTUAL), d, d,
                 bool(failed and failed[i]), s.resource.service)
            continue
        if s.kind != SPAN_KIND_CLIENT and s.kind != SPAN_KIND_PRODUCER:
            continue
        client_ns = a.end_ns[i] - a.start_ns[i]
        fail_c = bool(failed and failed[i])
        servers = calls.get(i)
        if servers:
            for j in servers:
                t = s.kind == SPAN_KIND_PRODUCER and MESSAGING or ""
                _add(out, (s.resource.service, spans[j].resource.service, t), client_ns,
                     a.end_ns[j] - a.start_ns[j], fail_c or bool(failed and failed[j]),
                     s.resource.service)
            continue
        attrs = s.attrs
        dest = destination(attrs)
        if not dest:
            # Nothing names the callee: not on the map, as Tempo does (the connector names
            # such a callee "unknown", one node lumping unrelated dependencies together).
            continue
        if "db.system" in attrs or "db.system.name" in attrs:
            t = DATABASE
        elif "messaging.system" in attrs or s.kind == SPAN_KIND_PRODUCER:
            t = MESSAGING
        else:
            t = VIRTUAL
        _add(out, (s.resource.service, dest, t), client_ns, client_ns, fail_c,
             s.resource.service)
    return out


def _add(out: dict[Edge, list[Any]], edge: Edge, client_ns: int, server_ns: int,
         failed: bool, owner: str) -> None:
    acc = out.get(edge)
    if acc is None:
        acc = out[edge] = [0, 0, {}, {}, 0, 0, owner]
    acc[0] += 1
    acc[1] += failed
    cb, sb = bucket(client_ns), bucket(server_ns)
    acc[2][cb] = acc[2].get(cb, 0) + 1
    acc[3][sb] = acc[3].get(sb, 0) + 1
    acc[4] += client_ns
    acc[5] += server_ns


def flat(buckets: Mapping[int, int]) -> list[int]:
    """A sparse histogram as its wire form: ``[bucket, n, bucket, n, ...]``, by bucket."""
    return [x for b in sorted(buckets) for x in (b, buckets[b])]


def add_flat(into: dict[str, int], pairs: Sequence[int]) -> None:
    """Add a histogram's wire form to a sparse one keyed by bucket (as a string: JSON)."""
    for i in range(0, len(pairs), 2):
        k = str(pairs[i])
        into[k] = into.get(k, 0) + pairs[i + 1]


def dense(sparse: Mapping[Any, int]) -> list[int]:
    """A sparse histogram (bucket, as int or string -> n) as counts of every bucket."""
    out = [0] * (len(BUCKETS) + 1)
    for k, n in sparse.items():
        out[int(k)] += n
    return out


def percentile_ms(counts: Sequence[int], q: float) -> float | None:
    """A quantile of a fine-bucket histogram (dense counts, ``len(BUCKETS) + 1``), in ms,
    interpolated inside its bucket; None when empty.

    >>> c = [0] * (len(BUCKETS) + 1)
    >>> c[bucket(5_000_000)] = 10
    >>> 4.0 < percentile_ms(c, 0.5) <= 5.0
    True
    """
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            lo = BUCKETS[i - 1] if i else 0.0
            hi = BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
            return round((lo + (hi - lo) * ((rank - seen) / n)) * 1000, 3)
        seen += n
    return round(BUCKETS[-1] * 1000, 3)


def prometheus_buckets(counts: Sequence[int]) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` at the connector's bounds, then ``+Inf``."""
    out, running, prev = [], 0, 0
    for bound, cut in zip(PROM_BOUNDS_S, PROM_CUTS, strict=True):
        running += sum(counts[prev:cut])
        prev = cut
        out.append((repr(float(bound)), running))
    out.append(("+Inf", running + sum(counts[prev:])))
    return out
