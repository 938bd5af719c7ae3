"""Client calls per host, minute, calling service and destination, from spans. Pure.

The span stage sees spans by trace; the TIME_WAIT detector sees a host's connection metrics by
host. This detector joins them the way the Collector's spanmetrics connector turns spans into
metrics: it counts ``CLIENT`` spans by (``host.name``, minute, ``service.name``, destination:
``server.address`` / ``net.peer.name`` / ``network.peer.address`` / ``peer.service``), and once
the watermark has passed a minute, derives one ``HostCalls`` record per (service, destination)
for the metrics stream, routed by host. There they are a side input: they enrich the TIME_WAIT
detector (the call rate the host's services make is the load that TIME_WAIT is judged against,
and names who drives the churn) but never hold back its watermark.

A span arriving after its minute was sent is counted into a new record for that minute (the
receiver adds them up), so none is lost. Bounded: at most ``max_pairs`` (service, destination)
pairs per host and minute (the rest are summed under destination ``(other)``) and at most
``max_buckets`` open (host, minute) buckets (beyond that, the least recently counted is sent
early). State: the open buckets (``pipeline.state.Keyed``, prefix ``b``; format 2 — the first
release saved the pairs bare) and the counters.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.connections import destination, host_of
from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding
from pipeline.records import SPAN_KIND_CLIENT, HostCalls, Span
from pipeline.state import State

MINUTE_NS = 60 * 1_000_000_000
OTHER = "(other)"


class ClientCallCounter(Detector):
    name = "client_calls"
    version = "1"
    signal = "spans"
    kinds = ()
    emits = "metrics"

    def __init__(self, max_pairs: int = 50, max_buckets: int = 5_000) -> None:
        self.max_pairs, self.max_buckets = max_pairs, max_buckets
        self.state = State()
        # "host\x1fminute" -> {"service\x1fdestination": calls}
        self._open = self.state.keyed(
            "b", encode=lambda pairs: {"pairs": pairs}, decode=lambda d, key: dict(d["pairs"]),
            version=2, migrate=lambda doc, v: {"pairs": doc}, cap=max_buckets,
        )
        self._out: list[HostCalls] = []
        self._counts = self.state.cell("meta", {"folded_pairs": 0, "sent_early": 0})

    def update(self, records: Sequence[Span]) -> None:
        opened = self._open
        for s in records:
            if s.kind != SPAN_KIND_CLIENT:
                continue
            host = host_of(s.resource)
            if not host:
                continue
            key = f"{host}\x1f{s.start_ns - s.start_ns % MINUTE_NS}"
            bucket = opened.get(key)
            if bucket is None:
                opened.make_room(evict=self._send_early)
                bucket = {}
                opened.put(key, bucket)
            pair = f"{s.resource.service}\x1f{destination(s.attrs)}"
            if pair not in bucket and len(bucket) >= self.max_pairs:
                pair = f"{s.resource.service}\x1f{OTHER}"
                self._counts["folded_pairs"] += 1
            bucket[pair] = bucket.get(pair, 0) + 1
            opened.changed(key)

    def advance(self, watermark_ns: int) -> list[Finding]:
        for key in sorted(self._open, key=_minute):
            if _minute(key) + MINUTE_NS <= watermark_ns:
                self._send(key)
        return []

    def drain(self) -> list[HostCalls]:
        out, self._out = self._out, []
        return out

    def _send(self, key: str) -> None:
        bucket = self._open.pop(key)
        if bucket is not None:
            self._emit(key, bucket)

    def _send_early(self, key: str, bucket: dict[str, int]) -> None:
        """Too many open buckets: this one goes now (the cap evicts it)."""
        self._emit(key, bucket)
        self._counts["sent_early"] += 1

    def _emit(self, key: str, bucket: dict[str, int]) -> None:
        host, _, minute = key.partition("\x1f")
        for pair, n in sorted(bucket.items()):
            service, _, dest = pair.partition("\x1f")
            self._out.append(HostCalls(host, int(minute), service, dest, n))

    def stats(self) -> DetectorStats:
        return DetectorStats(tracked=len(self._open), evicted=dict(self._counts.value))


def _minute(key: str) -> int:
    return int(key.rpartition("\x1f")[2])
