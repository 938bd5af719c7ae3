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
``max_buckets`` open (host, minute) buckets (beyond that, the oldest is sent early).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.connections import destination, host_of
from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding
from pipeline.records import SPAN_KIND_CLIENT, HostCalls, Span

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
        # "host\x1fminute" -> {"service\x1fdestination": calls}
        self._open: dict[str, dict[str, int]] = {}
        self._dirty: set[str] = set()
        self._out: list[HostCalls] = []
        self._counts = {"folded_pairs": 0, "sent_early": 0}

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
                if len(opened) >= self.max_buckets:
                    self._send(min(opened, key=_minute))
                    self._counts["sent_early"] += 1
                bucket = opened[key] = {}
            pair = f"{s.resource.service}\x1f{destination(s.attrs)}"
            if pair not in bucket and len(bucket) >= self.max_pairs:
                pair = f"{s.resource.service}\x1f{OTHER}"
                self._counts["folded_pairs"] += 1
            bucket[pair] = bucket.get(pair, 0) + 1
            self._dirty.add(key)

    def advance(self, watermark_ns: int) -> list[Finding]:
        for key in sorted(self._open, key=_minute):
            if _minute(key) + MINUTE_NS <= watermark_ns:
                self._send(key)
        return []

    def drain(self) -> list[HostCalls]:
        out, self._out = self._out, []
        return out

    def _send(self, key: str) -> None:
        host, _, minute = key.partition("\x1f")
        for pair, n in sorted(self._open.pop(key).items()):
            service, _, dest = pair.partition("\x1f")
            self._out.append(HostCalls(host, int(minute), service, dest, n))
        self._dirty.add(key)

    # -- state ------------------------------------------------------------------------------
    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        keys = self._dirty if changed_only else self._open.keys()
        out = {f"b/{k}": self._open.get(k) for k in keys}
        if changed_only:
            self._dirty = set()
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if key.startswith("b/"):
                if value is None:
                    self._open.pop(key[2:], None)
                else:
                    self._open[key[2:]] = dict(value)

    def stats(self) -> DetectorStats:
        return DetectorStats(tracked=len(self._open), evicted=dict(self._counts))


def _minute(key: str) -> int:
    return int(key.rpartition("\x1f")[2])
