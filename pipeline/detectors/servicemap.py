"""The service dependency map: calls per edge (client -> server), from trace samples. Pure.

Trace assembly names each trace's calls by edge (``pipeline.servicegraph.trace_edges``: paired
CLIENT/SERVER and PRODUCER/CONSUMER spans, a client span's attributes for a callee that sends no
spans, ``user`` for requests from outside) and sends them with the client service's sample, so
one partition sees every call of an edge. Per edge this keeps:

- **totals** since the edge was first seen in this partition's state: calls, failed calls,
  and the client and server latency histograms — exported as the OpenTelemetry Collector's
  ``servicegraph`` connector and Tempo name them (``traces_service_graph_request_total``,
  ``..._request_failed_total``, ``..._request_server_seconds``, ``..._request_client_seconds``;
  ``pipeline.sinks.metrics``), so Grafana's service graph view works on them unchanged. They
  are saved with the partition's state, so they stay monotonic across restarts and moves;
- **the last ``window_s``** (5 minutes) of event time by minute, published every minute of
  event time to the compacted ``service_map`` topic, one record per edge (key: the JSON array
  ``[client, server, connection_type]``): calls, calls per minute, failed calls and the error
  rate, client and server latency percentiles. An edge unseen for ``edge_ttl_s`` (an hour) is
  dropped and a tombstone (null value) is published for it.

Bounded: at most ``max_edges`` edges per partition (the least recently seen goes first,
counted ``evicted_edges``); histograms are sparse over ``servicegraph.BUCKETS``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding, rfc3339
from pipeline.records import TraceSample
from pipeline.servicegraph import add_flat, dense, percentile_ms
from pipeline.state import State

MINUTE_NS = 60 * 10**9
SCHEMA_VERSION = "1.0"


class ServiceMapDetector(Detector):
    name = "service_map"
    version = "1"
    signal = "traces"
    kinds = ()
    publishes = "service_map"

    def __init__(self, window_s: float = 300.0, max_edges: int = 10_000,
                 edge_ttl_s: float = 3600.0) -> None:
        if window_s < 60 or max_edges < 1 or edge_ttl_s < window_s:
            raise ValueError("need window_s >= 60, max_edges >= 1, edge_ttl_s >= window_s")
        self.minutes = int(window_s // 60)
        self.ttl_ns = int(edge_ttl_s * 1e9)
        self.state = State()
        # "client|server|type" -> {"e": [client, server, type], "t": totals, "m": {minute:
        # [calls, failed, client buckets, server buckets]}, "s": last seen (ns)}; totals are
        # [calls, failed, client buckets, server buckets, client ns, server ns]
        self._edges = self.state.keyed("e", encode=dict, decode=lambda doc, key: doc,
                                       cap=max_edges)
        self._meta = self.state.cell("meta", {
            "counts": {"evicted_edges": 0, "late_calls": 0}, "reported": -1})
        self._out: list[tuple[bytes, bytes | None]] = []

    @classmethod
    def from_settings(cls, settings: Any) -> ServiceMapDetector:
        return cls(max_edges=settings.service_map_max_edges)

    def update(self, records: Sequence[TraceSample]) -> None:
        reported = self._meta["reported"]
        edges = self._edges
        for sample in records:
            if not sample.edges:
                continue
            minute = sample.end_ns // MINUTE_NS
            for client, server, ctype, n, nf, cb, sb, cs, ss in sample.edges:
                key = f"{client}|{server}|{ctype}"
                doc = edges.get(key)
                if doc is None:
                    edges.make_room(evict=self._evicted)
                    doc = {"e": [client, server, ctype], "t": [0, 0, {}, {}, 0, 0], "m": {},
                           "s": 0, "f": minute}
                    edges.put(key, doc)
                t = doc["t"]
                t[0] += n
                t[1] += nf
                add_flat(t[2], cb)
                add_flat(t[3], sb)
                t[4] += cs
                t[5] += ss
                doc["s"] = max(doc["s"], sample.end_ns)
                if minute < doc["f"]:
                    doc["f"] = minute
                if minute <= reported:
                    self._meta["counts"]["late_calls"] += n
                    self._meta.changed()
                else:
                    m = doc["m"].setdefault(str(minute), [0, 0, {}, {}])
                    m[0] += n
                    m[1] += nf
                    add_flat(m[2], cb)
                    add_flat(m[3], sb)
                edges.changed(key)

    def advance(self, watermark_ns: int) -> list[Finding]:
        meta = self._meta
        last = watermark_ns // MINUTE_NS - 1  # the last minute the watermark has passed
        before = meta["reported"]
        if last <= before:
            return []
        meta["reported"] = last
        meta.changed()
        end_ns = (last + 1) * MINUTE_NS
        first = last - self.minutes + 1
        gone = []
        for key, doc in sorted(self._edges.items()):
            if doc["s"] + self.ttl_ns < end_ns:
                gone.append(key)
                continue
            minutes = doc["m"]
            if not minutes:
                continue
            stale = [m for m in minutes if int(m) < first]
            for m in stale:
                del minutes[m]
            window = [minutes[m] for m in sorted(minutes, key=int) if int(m) <= last]
            if stale or window:
                self._edges.changed(key)
            # Published when a minute it has calls in closed since the last advance: the
            # watermark can pass several minutes at once (a backlog, a pause, the end of the
            # input), and the calls of a minute before the last must not go unpublished.
            if stale or any(before < int(m) <= last for m in minutes):
                self._out.append(self._record(doc, window, first, end_ns))
        for key in gone:
            doc = self._edges.pop(key)
            if doc is not None:
                self._out.append((orjson.dumps(doc["e"]), None))
        return []

    def _record(self, doc: Mapping[str, Any], window: list[list[Any]], first: int,
                end_ns: int) -> tuple[bytes, bytes]:
        client, server, ctype = doc["e"]
        # An edge first seen inside the window is measured from its first minute on.
        first = min(max(first, doc["f"]), end_ns // MINUTE_NS - 1)
        minutes = end_ns // MINUTE_NS - first
        calls = sum(m[0] for m in window)
        failed = sum(m[1] for m in window)
        cb: dict[str, int] = {}
        sb: dict[str, int] = {}
        for m in window:
            for k, n in m[2].items():
                cb[k] = cb.get(k, 0) + n
            for k, n in m[3].items():
                sb[k] = sb.get(k, 0) + n
        cd, sd = dense(cb), dense(sb)
        rec = {
            "schema_version": SCHEMA_VERSION,
            "client": client, "server": server, "connection_type": ctype,
            "window": {"start": rfc3339(first * MINUTE_NS), "end": rfc3339(end_ns),
                       "seconds": minutes * 60},
            "calls": calls,
            "calls_per_minute": round(calls / minutes, 3),
            "failed": failed,
            "error_rate": round(failed / calls, 5) if calls else 0.0,
            "latency_ms": {
                side: {f"p{int(q * 100)}": percentile_ms(d, q) for q in (0.5, 0.95, 0.99)}
                for side, d in (("client", cd), ("server", sd))
            },
            "last_seen": rfc3339(doc["s"]),
        }
        return orjson.dumps(doc["e"]), orjson.dumps(rec)

    def published(self) -> list[tuple[bytes, bytes | None]]:
        """Records for the ``service_map`` topic since the last call: (key, value or None)."""
        out, self._out = self._out, []
        return out

    def edge_totals(self) -> list[tuple[str, str, str, int, int, list[int], list[int], int, int]]:
        """Every edge's totals, for the servicegraph metrics: client, server, connection type,
        calls, failed, client and server bucket counts (dense), client and server ns."""
        out = []
        for doc in self._edges.values():
            calls, failed, cb, sb, cs, ss = doc["t"]
            out.append((*doc["e"], calls, failed, dense(cb), dense(sb), cs, ss))
        return out

    def _evicted(self, key: str, doc: Mapping[str, Any]) -> None:
        self._meta["counts"]["evicted_edges"] += 1
        self._meta.changed()
        self._out.append((orjson.dumps(doc["e"]), None))

    def stats(self) -> DetectorStats:
        return DetectorStats(tracked=len(self._edges), evicted=dict(self._meta["counts"]))
