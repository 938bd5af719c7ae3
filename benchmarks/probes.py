"""Ledger detectors: plug-ins that count every item the detection stage applies, so a benchmark
can tell, from the saved state alone, whether each input item was applied exactly once.

``PIPELINE_DETECTORS=benchmarks.probes:SpanLedger,benchmarks.probes:PointLedger`` runs them
beside the built-in detectors on the same routed streams and state store. Each keeps, per
(resource, 10 s of event time), the number of items applied and a checksum of their
identities (CRC-32 of trace and span id, or of a point's name, time and attributes, summed
modulo 2**32). The same ledger built in process from the input topics is what the worker's
should equal: a key with fewer items lost some, a key with more applied some twice, and a key
with the right count and the wrong checksum did both.

They emit no findings and keep at most ``MAX_KEYS`` keys (a benchmark's input is bounded; a
ledger over the cap counts what it refused, and ``compare`` reports it).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding

BUCKET_NS = 10 * 10**9
MAX_KEYS = 200_000
_MASK = 0xFFFFFFFF


def span_identity(span: Any) -> bytes:
    return f"{span.trace_id}{span.span_id}".encode()


def point_identity(point: Any) -> bytes:
    return f"{point.name}|{point.time_ns}|{sorted(point.attrs.items())}".encode()


class _Ledger(Detector):
    version = "1"
    kinds = ()
    _identity = staticmethod(span_identity)
    _time = staticmethod(lambda item: item.end_ns)

    def __init__(self) -> None:
        self.entries: dict[str, list[int]] = {}
        self.refused = 0
        self._dirty: set[str] = set()

    def update(self, records: Sequence[Any]) -> None:
        for item in records:
            key = f"{item.resource.key}|{self._time(item) // BUCKET_NS}"
            entry = self.entries.get(key)
            if entry is None:
                if len(self.entries) >= MAX_KEYS:
                    self.refused += 1
                    continue
                entry = self.entries[key] = [0, 0]
            entry[0] += 1
            entry[1] = (entry[1] + zlib.crc32(self._identity(item))) & _MASK
            self._dirty.add(key)

    def advance(self, watermark_ns: int) -> list[Finding]:
        return []

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        keys = self._dirty if changed_only else self.entries.keys()
        out: dict[str, Any] = {k: self.entries[k] for k in keys}
        out["__refused__"] = self.refused
        self._dirty = set()
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            if k == "__refused__":
                self.refused = int(v)
            elif v is not None:
                self.entries[k] = [int(v[0]), int(v[1])]

    def stats(self) -> DetectorStats:
        return DetectorStats(tracked=len(self.entries))


class SpanLedger(_Ledger):
    name = "bench_span_ledger"
    signal = "spans"


class PointLedger(_Ledger):
    name = "bench_point_ledger"
    signal = "metrics"
    _identity = staticmethod(point_identity)
    _time = staticmethod(lambda item: item.time_ns)


DETECTORS = "benchmarks.probes:SpanLedger,benchmarks.probes:PointLedger"


@dataclass
class Comparison:
    """A worker's ledger against the expected one, in items."""

    expected: int = 0
    applied: int = 0
    lost: int = 0  # expected items never applied
    twice: int = 0  # items applied more than once
    keys_mixed: int = 0  # right count, wrong checksum: some lost and as many applied twice
    refused: int = 0
    lost_keys: list[str] = field(default_factory=list)  # a few, to look at

    def add(self, other: Comparison) -> Comparison:
        return Comparison(*(a + b for a, b in zip(self.astuple(), other.astuple(), strict=True)),
                          lost_keys=(self.lost_keys + other.lost_keys)[:10])

    def astuple(self) -> tuple[int, ...]:
        return (self.expected, self.applied, self.lost, self.twice, self.keys_mixed,
                self.refused)


def compare(expected: _Ledger, got: _Ledger) -> Comparison:
    """How ``got`` (restored from a worker's saved state) differs from ``expected``."""
    out = Comparison(refused=got.refused + expected.refused)
    for key in expected.entries.keys() | got.entries.keys():
        n_exp, sum_exp = expected.entries.get(key, (0, 0))
        n_got, sum_got = got.entries.get(key, (0, 0))
        out.expected += n_exp
        out.applied += n_got
        if n_got < n_exp:
            out.lost += n_exp - n_got
            if len(out.lost_keys) < 10:
                out.lost_keys.append(f"{key} ({n_exp - n_got} of {n_exp})")
        elif n_got > n_exp:
            out.twice += n_got - n_exp
        elif sum_got != sum_exp:
            out.keys_mixed += 1
    return out


def merged(ledgers: Iterable[_Ledger], cls: type[_Ledger]) -> _Ledger:
    """One ledger holding every partition's entries (keys never span partitions: a resource's
    items are routed to one partition; the same key in two is counted as the sum)."""
    out = cls()
    for ledger in ledgers:
        out.refused += ledger.refused
        for k, (n, s) in ledger.entries.items():
            entry = out.entries.setdefault(k, [0, 0])
            entry[0] += n
            entry[1] = (entry[1] + s) & _MASK
    return out
