"""A small real detector used to test the contract, the engine and the Faust wiring.

It counts records per resource (state that must survive restarts exactly) and reports a
``latency_regression`` for any service named ``canary*`` while that service keeps sending, and
resolves it once the service goes quiet for a window: enough to drive the whole findings path
(lifecycle, topic, schema, metrics) without depending on a production detector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding, Lifecycle, Verdict

WINDOW_NS = 10 * 10**9


class _Counter(Detector):
    version = "test"
    kinds = ("latency_regression",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.window_counts: dict[str, int] = {}
        self.window_end = 0
        self._dirty: set[str] = set()
        self.lifecycle = Lifecycle(
            "latency_regression", self.name, self.version, open_after=1, resolve_after=1
        )

    def update(self, records: Sequence[Any]) -> None:
        for r in records:
            key = r.resource.key
            self.counts[key] = self.counts.get(key, 0) + 1
            self.window_counts[r.resource.service] = self.window_counts.get(
                r.resource.service, 0) + 1
            self._dirty.add(key)

    def advance(self, watermark_ns: int) -> list[Finding]:
        if not self.window_end:
            self.window_end = (watermark_ns // WINDOW_NS + 1) * WINDOW_NS
            return []
        out = []
        while watermark_ns >= self.window_end:
            canaries = {k for k in self.window_counts if k.startswith("canary")}
            for fp_state in self.lifecycle.active():
                canaries.add(fp_state["entity"]["service"])
            for service in sorted(canaries):
                n = self.window_counts.get(service, 0)
                verdict = Verdict(
                    "warning", f"{service} sent {n} records in the window",
                    {"baseline": {"records": 0}, "observed": {"records": n}},
                    ["Nothing to do: this is a test detector."],
                ) if n else None
                f = self.lifecycle.observe({"service": service}, self.window_end, verdict)
                if f is not None:
                    out.append(f)
            self.window_counts = {}
            self.window_end += WINDOW_NS
            self._dirty.add("__window__")
        return out

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        keys = set(self._dirty) if changed_only else set(self.counts) | {"__window__"}
        out: dict[str, Any] = {}
        for k in keys:
            if k == "__window__":
                out[k] = {"end": self.window_end, "counts": self.window_counts}
            else:
                out["c:" + k] = self.counts[k]
        for fp, st in self.lifecycle.snapshot(changed_only).items():
            out["f:" + fp] = st
        if changed_only:
            self._dirty.clear()
            self._dirty.add("__window__")  # cheap, and keeps window counts exact
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        lifecycle = {}
        for k, v in state.items():
            if k == "__window__":
                self.window_end, self.window_counts = v["end"], dict(v["counts"])
            elif k.startswith("c:"):
                self.counts[k[2:]] = v
            elif k.startswith("f:"):
                lifecycle[k[2:]] = v
        self.lifecycle.restore(lifecycle)

    def stats(self) -> DetectorStats:
        active: dict[tuple[str, str], int] = {}
        for st in self.lifecycle.active():
            key = ("latency_regression", st["severity"])
            active[key] = active.get(key, 0) + 1
        return DetectorStats(tracked=len(self.counts), active=active)


class SpanCounter(_Counter):
    name = "test_span_counter"
    signal = "spans"


class PointCounter(_Counter):
    name = "test_point_counter"
    signal = "metrics"
