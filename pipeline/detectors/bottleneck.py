"""Bottleneck spans and service-wide latency regressions, from trace samples. Pure.

Input: ``TraceSample`` records (one per completed trace and service, from
``pipeline.detectors.trace_assembly``), routed by service so that one partition sees every
operation of a service. For each (service, operation) and each tumbling event-time window
(``window_s``, default 30 s) the detector collects the operation's *exclusive time on the
critical path* per trace, the share of the trace's latency that is, and whether the operation
was the trace's largest contributor.

**Operations and edges.** An operation is (service, span name, detail): the detail refines a
generic name — the route, the database, and for an outgoing call its destination
(``trace_assembly.operation_of``), so a caller's ``HTTP GET`` to six services is six operations,
each with its own baseline: the service dependency map, one baseline per edge. A call's finding
names the service it calls in ``entity.peer_service``: the callee whose server span is the call's
child in the traces (exact behind a proxy), else ``peer.service``, else the destination address.
Its evidence says where the time is: ``between`` the two (the call's own time, outside the
callee's server span, grew: network, proxy, connection pool, queueing), or ``unknown`` when the
callee sends no spans. Time inside the callee shows as the callee's own operations.

**The callee named.** Trace assembly copies each caller's calls into an instrumented callee into
the callee's sample (operation ``INBOUND``, detail the caller), so the callee's partition judges
every caller's calls into it, each against its own baseline, by the bottleneck rule. When two or
more callers' calls are bottlenecks in one window, a ``bottleneck_span`` opens on the callee
itself (``{"service": callee, "operation": INBOUND}``) with each caller's evidence: the time is
between them and the callee (a shared proxy or network path, its accept queue). These copies are
never the callee's own operations: they take no part in its bottlenecks or regressions.

**Baselines.** Per operation, the medians and 95th percentiles of its last ``baseline_windows``
normal windows (default 60) and the calls each held; the baseline is their median, and the
spread their median absolute deviation (MAD): robust to the odd slow window and to outliers
inside a window. A window is judged on at least ``min_samples`` (8) traces: an operation with
fewer in a window carries them over to its next windows and is judged on them together, up to
``max_window_s`` (10 minutes: an operation with one call a minute is still judged; its samples
older than that are dropped, counted ``sparse_dropped``). Detection starts once the baseline
holds ``warmup_windows`` windows (default 20) and ``warmup_calls`` calls (default 100).
Windows judged anomalous do not enter the baseline, so a lasting fault is not learnt as normal —
up to ``freeze_max_windows`` in a row (default 240), after which the new level is accepted. A
baseline is kept through ``operation_ttl_s`` of silence (default 7 days; setting
``BOTTLENECK_BASELINE_TTL_S``) and saved with the partition's state. There is no daily
seasonality: the baseline follows a daily load curve's slow drift.

**Verdicts per window.** An operation is a *bottleneck* when all of these hold:

- its median critical-path time exceeds the baseline median by at least ``rel_threshold`` of it
  (default 50%), ``mad_k`` (default 4) scaled MADs and ``min_excess_ms`` (default 10 ms,
  ``BOTTLENECK_MIN_EXCESS_MS``: on the real corpus a CPU-starved handler's +9 ms and a query's
  passing +2 ms were the only false bottlenecks; every real fault added 20 ms or more);
- a meaningful share of its traces is slow: at least ``affected_min`` (default 25%) of them above
  the baseline's 95th percentile;
- it dominates those traces: it is the largest critical-path contributor in at least
  ``dominance_min`` (default 25%) of them, or its median share of their latency is that high.

**A service-wide slowdown is one finding, not N; a knock-on is not a second one.** Exclusive
time isolates a slow span: a slow database query does not make its callers' exclusive time
slower. An operation is *slower* when it is ``regression_rel`` (20%), 3 MADs and 0.5 ms over its
baseline. A bottleneck *stands* when it is slower against its own baseline than the service's
other slower operations are against theirs (at least twice their median ratio): the operations
slowed with it (CPU starved by the dropped index's full scans, say) are listed under it as
``knock_on``, and no service-wide finding replaces it. Otherwise, when two or more of the
service's judged operations are slower together, carry at least half of its baseline time
per trace (every operation counts, by its baseline median: sub-millisecond calls weigh next to
nothing) and add at least ``regression_min_added_ms`` (2 ms) per trace, it is a
``latency_regression`` of the service
(CPU throttling, a bad deploy, a noisy neighbour), with each operation's baseline, observed and
added milliseconds as evidence, and its operations raise no ``bottleneck_span`` in that window.

Findings open after ``open_after`` anomalous windows (default 2) and resolve after
``resolve_after`` normal ones (default 3), through ``pipeline.findings.Lifecycle``.

**Bounded state.** At most ``max_operations`` operations per partition (the least recently
seen one without a firing finding is evicted to make room, counted ``evicted_operations``); an
operation unseen for ``operation_ttl_s`` of event time expires (``expired_operations``); at most
``reservoir`` samples per operation and window are kept (deterministic replacement, counted
``samples_folded``: the traces of the smallest trace-id hashes are kept, whatever order they
come in). Baselines (``o``), open windows (``w``, format 3: the first release saved them as
bare lists, the second kept no hashes) and findings (``lb``, ``lr``) are
``pipeline.state.Keyed`` maps.
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.detectors.trace_assembly import (
    CALL,
    CALLEE,
    DB_KEYS,
    INBOUND,
    destination_of,
    op_entity,
    op_key,
    op_name,
    split_op,
)
from pipeline.findings import Finding, Lifecycle, Verdict, rfc3339
from pipeline.records import TraceSample
from pipeline.state import State

BOTTLENECK = "bottleneck_span"
REGRESSION = "latency_regression"
EXCESS_GAUGE = "anomaly_pipeline_bottleneck_excess_latency_seconds"
RATIO_GAUGE = "anomaly_pipeline_latency_regression_ratio"
MS = 1_000_000
PEER_KEYS = ("peer.service", "server.address", "net.peer.name", "rpc.service")


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted, non-empty sequence.

    >>> quantile([1, 2, 3, 4], 0.5), quantile([5], 0.95), quantile([0, 10], 0.95)
    (2.5, 5, 9.5)
    """
    n = len(sorted_values)
    if n == 1:
        return sorted_values[0]
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _ratio(st: Mapping[str, Any]) -> float:
    """An operation's window median over its baseline median (a baseline of 0 ns, all calls
    under the clock's resolution, counts as 1 ns)."""
    return float(st["p50"] / max(st["baseline"]["b50"], 1.0))


def median(values: Sequence[float]) -> float:
    return quantile(sorted(values), 0.5)


class _Judged(NamedTuple):
    """One operation's verdict in one window."""

    key: str
    slower: bool  # anomalous by the soft (service-wide) or the strict (bottleneck) rule
    strict: bool  # a bottleneck, unless a stronger service-wide slowdown explains it


class _Op:
    """One operation's baseline (persisted) — rings of normal windows' p50 and p95 (ns) and
    the calls each window held — and the samples of its last windows while they are too few
    to judge (``carry``: an ``_Acc`` document and the index of its first window)."""

    __slots__ = ("p50", "p95", "n", "attrs", "seen_ns", "run", "carry")

    def __init__(self) -> None:
        self.p50: list[float] = []
        self.p95: list[float] = []
        self.n: list[int] = []
        self.attrs: dict[str, Any] = {}
        self.seen_ns = 0
        self.run = 0  # consecutive anomalous windows (baseline frozen)
        self.carry: dict[str, Any] | None = None

    @property
    def calls(self) -> int:
        return sum(self.n)

    def to_doc(self) -> dict[str, Any]:
        return {"p50": self.p50, "p95": self.p95, "n": self.n, "attrs": self.attrs,
                "seen": self.seen_ns, "run": self.run, "carry": self.carry}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> _Op:
        op = cls()
        op.p50, op.p95, op.attrs = list(doc["p50"]), list(doc["p95"]), dict(doc["attrs"])
        op.seen_ns, op.run = doc["seen"], doc["run"]
        # Releases before calls were counted kept windows of at least 8 traces each.
        op.n = list(doc.get("n") or [8] * len(op.p50))
        op.carry = doc.get("carry")
        return op


class _Acc:
    """One operation's samples in one window: [cp, trace duration, self, hash of the trace id]
    per trace, at most ``reservoir`` of them: those of the smallest hashes (a bottom-k sample,
    the same whatever order the traces arrive in)."""

    __slots__ = ("rows", "n", "top", "exemplars", "_heap", "first_w")

    def __init__(self) -> None:
        self.first_w = 0  # the first window of its samples (set when judged; not saved)
        self.rows: list[list[int]] = []
        self.n = 0  # traces seen (rows holds at most ``reservoir`` of them)
        self.top = 0  # traces in which this operation had the most critical-path time
        self.exemplars: list[list[Any]] = []  # [[cp_ns, trace_id], ...], the 5 slowest
        # once full: (-hash, index) of the rows, the largest hash first (not saved: rebuilt)
        self._heap: list[tuple[int, int]] | None = None

    def keep(self, row: list[int], cap: int) -> bool:
        """Add ``row`` to the sample; False when it is full (the row replaced the one of the
        largest hash if its own is smaller: the sample holds the ``cap`` smallest hashes)."""
        rows = self.rows
        if len(rows) < cap:
            rows.append(row)
            return True
        heap = self._heap
        if heap is None:
            heap = self._heap = [(-r[3], i) for i, r in enumerate(rows)]
            heapq.heapify(heap)
        neg, i = heap[0]
        if row[3] < -neg:
            rows[i] = row
            heapq.heapreplace(heap, (-row[3], i))
        return False

    def merge(self, other: _Acc, cap: int) -> None:
        """Add the samples of ``other`` (earlier windows of the same operation): the result
        is the bottom-k sample of both, whatever order they are merged in."""
        rows = sorted(self.rows + other.rows, key=lambda r: (r[3], r))
        self.rows = rows[:cap]
        self._heap = None
        self.n += other.n
        self.top += other.top
        ex = sorted(self.exemplars + other.exemplars, key=lambda e: (-e[0], e[1]))
        self.exemplars = ex[:5]

    def to_doc(self) -> dict[str, Any]:
        return {"rows": self.rows, "n": self.n, "top": self.top, "ex": self.exemplars}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> _Acc:
        acc = cls()
        acc.rows, acc.n, acc.top = [list(r) for r in doc["rows"]], doc["n"], doc["top"]
        acc.exemplars = [list(e) for e in doc["ex"]]
        return acc

    @staticmethod
    def migrate(doc: Any, version: int) -> dict[str, Any]:
        """Format 1 (the first release): ``[rows, n, top, exemplars]``; formats 1 and 2 keep
        no hash per row (given the largest: they are the first to be replaced)."""
        if version == 1:
            rows, n, top, ex = doc
            doc = {"rows": rows, "n": n, "top": top, "ex": ex}
        doc["rows"] = [[*r[:3], 2**32] for r in doc["rows"]]
        return doc


class BottleneckDetector(Detector):
    name = "bottleneck"
    version = "1"
    signal = "traces"
    kinds = (BOTTLENECK, REGRESSION)

    def __init__(
        self,
        window_s: float = 30.0,
        baseline_windows: int = 60,
        warmup_windows: int = 20,
        warmup_calls: int = 100,
        min_samples: int = 8,
        max_window_s: float = 600.0,
        rel_threshold: float = 0.5,
        mad_k: float = 4.0,
        min_excess_ms: float = 10.0,
        affected_min: float = 0.25,
        dominance_min: float = 0.25,
        open_after: int = 2,
        resolve_after: int = 3,
        freeze_max_windows: int = 240,
        max_operations: int = 5_000,
        operation_ttl_s: float = 7 * 86400.0,
        reservoir: int = 64,
        regression_rel: float = 0.2,
        regression_min_added_ms: float = 2.0,
    ) -> None:
        if window_s <= 0 or not 1 <= warmup_windows <= baseline_windows or min_samples < 1:
            raise ValueError(
                "need window_s > 0, 1 <= warmup_windows <= baseline_windows, min_samples >= 1"
            )
        if max_window_s < window_s:
            raise ValueError("need max_window_s >= window_s")
        self.window_ns = int(window_s * 1e9)
        self.baseline_windows, self.warmup_windows = baseline_windows, warmup_windows
        self.warmup_calls = warmup_calls
        self.min_samples = min_samples
        self.max_carry = max(1, int(max_window_s // window_s))
        self.regression_rel = regression_rel
        self.regression_min_added_ns = regression_min_added_ms * MS
        self.rel_threshold, self.mad_k = rel_threshold, mad_k
        self.min_excess_ns = min_excess_ms * MS
        self.affected_min, self.dominance_min = affected_min, dominance_min
        self.freeze_max = freeze_max_windows
        self.max_operations = max_operations
        self.ttl_ns = int(operation_ttl_s * 1e9)
        self.reservoir = reservoir
        self.state = State()
        self.lc_bottleneck = Lifecycle(
            BOTTLENECK, self.name, self.version, open_after, resolve_after, max_operations,
            prefix="lb",
        )
        self.lc_regression = Lifecycle(
            REGRESSION, self.name, self.version, open_after, resolve_after, max_operations,
            prefix="lr",
        )
        self.state.add(self.lc_bottleneck.store)
        self.state.add(self.lc_regression.store)
        # "service|operation|detail" -> baseline
        self._ops = self.state.keyed("o", encode=_Op.to_doc,
                                     decode=lambda doc, key: _Op.from_doc(doc),
                                     cap=max_operations)
        # "<window index>/<op key>" -> samples, and the same by window (not saved: rebuilt)
        self._accs = self.state.keyed("w", encode=_Acc.to_doc,
                                      decode=lambda doc, key: _Acc.from_doc(doc),
                                      version=3, migrate=_Acc.migrate)
        self._windows: dict[int, dict[str, _Acc]] = {}
        self._meta = self.state.cell("meta", {
            "counts": {"evicted_operations": 0, "expired_operations": 0, "samples_folded": 0,
                       "late_samples": 0, "sparse_dropped": 0},
            "closed_until": -1,  # every window index <= this is closed
        })

    @classmethod
    def from_settings(cls, settings: Any) -> BottleneckDetector:
        return cls(
            window_s=settings.bottleneck_window_s,
            warmup_windows=settings.bottleneck_warmup_windows,
            warmup_calls=settings.bottleneck_warmup_calls,
            max_window_s=settings.bottleneck_max_window_s,
            max_operations=settings.bottleneck_max_operations,
            operation_ttl_s=settings.bottleneck_baseline_ttl_s,
            regression_min_added_ms=settings.regression_min_added_ms,
            min_excess_ms=settings.bottleneck_min_excess_ms,
        )

    # -- the work --------------------------------------------------------------------------
    def update(self, records: Sequence[TraceSample]) -> None:
        closed_until = self._meta["closed_until"]
        for sample in records:
            w = sample.end_ns // self.window_ns
            if w <= closed_until:
                self._count("late_samples")
                continue
            window = self._windows.get(w)
            if window is None:
                window = self._windows[w] = {}
            for op in sample.ops:
                key = f"{sample.service}|{op.operation}|{op.detail}"
                base = self._ops.get(key)
                if base is None:
                    if not self._make_room():
                        continue
                    base = _Op()
                    base.attrs = dict(op.attrs)
                    base.seen_ns = (w + 1) * self.window_ns
                    self._ops.put(key, base)
                elif CALLEE in op.attrs and base.attrs.get(CALLEE) != op.attrs[CALLEE]:
                    base.attrs = dict(op.attrs)  # the callee, as the traces now show it
                    self._ops.changed(key)
                acc = window.get(key)
                if acc is None:
                    acc = window[key] = _Acc()
                    self._accs.put(f"{w}/{key}", acc)
                self._add(acc, sample, op.cp_ns, op.self_ns, key)
                self._accs.dirty(f"{w}/{key}")

    def _add(self, acc: _Acc, sample: TraceSample, cp: int, self_ns: int, key: str) -> None:
        acc.n += 1
        if sample.top == key:
            acc.top += 1
        row = [cp, sample.duration_ns, self_ns, zlib.crc32(sample.trace_id.encode())]
        if not acc.keep(row, self.reservoir):
            self._count("samples_folded")
        ex = acc.exemplars
        if len(ex) < 5 or cp > ex[-1][0]:
            ex.append([cp, sample.trace_id])
            ex.sort(key=lambda e: (-e[0], e[1]))
            del ex[5:]

    def advance(self, watermark_ns: int) -> list[Finding]:
        findings: list[Finding] = []
        last_closable = watermark_ns // self.window_ns - 1  # windows ending at or before wm
        if last_closable <= self._meta["closed_until"]:
            return findings
        for w in sorted(k for k in self._windows if k <= last_closable):
            findings.extend(self._close(w, self._windows.pop(w)))
        self._meta["closed_until"] = last_closable
        end_ns = (last_closable + 1) * self.window_ns
        findings.extend(self._expire(end_ns))
        return findings

    def _close(self, w: int, window: dict[str, _Acc]) -> list[Finding]:
        end_ns = (w + 1) * self.window_ns
        for key in window:
            self._accs.pop(f"{w}/{key}")
            base = self._ops.get(key)
            if base is not None and base.seen_ns < end_ns:
                base.seen_ns = end_ns  # last window with traffic (changes once per window)
                self._ops.changed(key)
        evaluated: dict[str, list[_Judged]] = {}
        incoming: dict[str, list[_Judged]] = {}  # callee -> its callers' calls into it
        stats_by_key: dict[str, dict[str, Any]] = {}
        for key in sorted(window):
            base = self._ops.get(key)
            if base is None:
                continue
            acc = window[key]
            if not self._with_carry(w, key, base, acc):
                continue
            st = self._window_stats(acc)
            st["windows"] = w - acc.first_w + 1
            stats_by_key[key] = st
            if len(base.p50) < self.warmup_windows or base.calls < self.warmup_calls:
                self._learn(key, base, st, acc.n)
                continue
            b50 = median(base.p50)
            mad = median([abs(x - b50) for x in base.p50])
            b95 = median(base.p95)
            excess = st["p50"] - b50
            affected = sum(1 for r in acc.rows if r[0] > b95) / len(acc.rows)
            soft = (st["p50"] >= (1 + self.regression_rel) * b50
                    and excess >= max(3 * 1.4826 * mad, 0.5 * MS))
            strict = (
                excess >= max(self.rel_threshold * b50, self.mad_k * 1.4826 * mad,
                              self.min_excess_ns)
                and affected >= self.affected_min
                and (acc.top / acc.n >= self.dominance_min
                     or st["share"] >= self.dominance_min)
            )
            st["baseline"] = {"b50": b50, "b95": b95, "mad": mad, "excess": excess,
                              "affected": affected}
            service, name, _ = split_op(key)
            (incoming if name == INBOUND else evaluated).setdefault(service, []).append(
                _Judged(key, strict or soft, strict))
        findings: list[Finding] = []
        for service, rows in evaluated.items():
            slower = [r for r in rows if r.slower]
            strict = [r for r in rows if r.strict]
            excess = {r.key: max(0.0, stats_by_key[r.key]["baseline"]["excess"]) for r in slower}
            added = sum(excess.values())
            # A bottleneck stands when it is slower against its own baseline than the other
            # slower operations are against theirs (twice their median ratio): what slowed
            # with it is a knock-on, reported under it. A service-wide regression needs two
            # or more operations slower together by similar ratios, most of the service's
            # time among them, and milliseconds added, not only ratios.
            ratio = {r.key: _ratio(stats_by_key[r.key]) for r in slower}
            stands = {
                r.key for r in strict
                if ratio[r.key] >= 2 * median([ratio[x.key] for x in slower if x.key != r.key]
                                              or [0.0])
            }
            # Every judged operation counts by its baseline time per trace: a service is
            # slower as a whole when the operations that slowed carry at least half of it
            # (sub-millisecond calls that cannot pass the 0.5 ms floor weigh next to nothing).
            total = sum(stats_by_key[r.key]["baseline"]["b50"] for r in rows)
            share = (sum(stats_by_key[r.key]["baseline"]["b50"] for r in slower) / total
                     if total > 0 else 1.0)
            regression = (
                not stands
                and len(slower) >= 2 and share >= 0.5
                and added >= self.regression_min_added_ns
            )
            verdict = (
                self._regression_verdict(service, slower, len(rows), share, stats_by_key,
                                         excess, end_ns)
                if regression else None
            )
            f = self.lc_regression.observe({"service": service}, end_ns, verdict)
            if f is not None:
                findings.append(f)
            for r in rows:
                base = self._ops[r.key]
                v = None
                if r.key in stands:
                    knock_on = [k for k in excess if k not in stands]
                    v = self._bottleneck_verdict(r.key, base, window[r.key], stats_by_key[r.key],
                                                 end_ns, knock_on, stats_by_key)
                f = self.lc_bottleneck.observe(self._entity(r.key, base), end_ns, v)
                if f is not None:
                    findings.append(f)
                self._judged(r, base, stats_by_key[r.key], window[r.key].n)
        # A callee into which several callers' calls are slow at once, outside its server
        # spans: one finding under the callee's name (each call also stands on its own).
        for callee, rows in incoming.items():
            slow = [r for r in rows if r.strict]
            verdict = (
                self._callee_verdict(callee, slow, len(rows), window, stats_by_key, end_ns)
                if len(slow) >= 2 else None
            )
            f = self.lc_bottleneck.observe({"service": callee, "operation": INBOUND}, end_ns,
                                           verdict)
            if f is not None:
                findings.append(f)
            for r in rows:
                self._judged(r, self._ops[r.key], stats_by_key[r.key], window[r.key].n)
        return findings

    def _judged(self, r: _Judged, base: _Op, st: Mapping[str, Any], calls: int) -> None:
        """After a verdict: a normal window enters the baseline; a slower one freezes it, up to
        ``freeze_max`` windows in a row (then the new level is accepted)."""
        if not r.slower:
            self._learn(r.key, base, st, calls)
        else:
            base.run += 1
            self._ops.changed(r.key)
            if base.run > self.freeze_max:
                self._learn(r.key, base, st, calls)

    def _with_carry(self, w: int, key: str, base: _Op, acc: _Acc) -> bool:
        """Add to ``acc`` (window ``w``'s samples of ``key``) those carried from the
        operation's earlier windows while they were too few (sparse traffic: an operation with
        a few calls a minute is judged on several windows together, at most ``max_window_s``
        of them); whether it now holds ``min_samples`` to judge, else it is carried on."""
        carry = base.carry
        first = w
        if carry is not None:
            base.carry = None
            self._ops.changed(key)
            if w - carry["w0"] < self.max_carry:
                acc.merge(_Acc.from_doc(carry["acc"]), self.reservoir)
                first = carry["w0"]
            else:
                self._count("sparse_dropped")
        if acc.n >= self.min_samples:
            acc.first_w = first
            return True
        if w - first + 1 < self.max_carry:
            base.carry = {"w0": first, "acc": acc.to_doc()}
            self._ops.changed(key)
        else:
            self._count("sparse_dropped")
        return False

    def _window_stats(self, acc: _Acc) -> dict[str, Any]:
        cps = sorted(r[0] for r in acc.rows)
        shares = sorted(r[0] / r[1] if r[1] > 0 else 0.0 for r in acc.rows)
        return {
            "p50": quantile(cps, 0.5),
            "p95": quantile(cps, 0.95),
            "share": quantile(shares, 0.5),
            "trace_p50": median([r[1] for r in acc.rows]),
            "self_p50": median([r[2] for r in acc.rows]),
        }

    def _learn(self, key: str, base: _Op, st: Mapping[str, Any], calls: int) -> None:
        base.run = 0
        base.p50.append(st["p50"])
        base.p95.append(st["p95"])
        base.n.append(calls)
        del base.p50[: -self.baseline_windows]
        del base.p95[: -self.baseline_windows]
        del base.n[: -self.baseline_windows]
        self._ops.changed(key)

    def _entity(self, key: str, base: _Op) -> dict[str, str]:
        """The finding's entity: the operation, and for an outgoing call the service it calls
        (``peer_service``: the callee whose server spans answer it in the traces, else the
        ``peer.service`` attribute, else the destination address)."""
        entity = op_entity(key)
        peer = _peer(base.attrs, entity.get("operation_detail", ""))
        if peer:
            entity["peer_service"] = peer
        return entity

    # -- explanations ------------------------------------------------------------------------
    def _bottleneck_verdict(
        self, key: str, base: _Op, acc: _Acc, st: Mapping[str, Any], end_ns: int,
        knock_on: Sequence[str] = (), stats: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Verdict:
        service, _, detail = split_op(key)
        op = op_name(key)
        b = st["baseline"]
        excess_ms = b["excess"] / MS
        severity = "critical" if excess_ms >= 1000 else "warning"
        evidence: dict[str, Any] = {
            "baseline": {
                "p50_ms": _ms(b["b50"]), "p95_ms": _ms(b["b95"]), "mad_ms": _ms(b["mad"]),
                "windows": len(base.p50), "calls": base.calls,
            },
            "observed": {
                "p50_ms": _ms(st["p50"]), "p95_ms": _ms(st["p95"]),
                "exclusive_p50_ms": _ms(st["self_p50"]), "traces": acc.n,
                "window_s": st["windows"] * self.window_ns / 1e9,
                "window_end": rfc3339(end_ns),
            },
            "trace_duration_p50_ms": _ms(st["trace_p50"]),
            "share_of_trace_latency": round(st["share"], 3),
            "dominant_in_share_of_traces": round(acc.top / acc.n, 3),
            "share_of_traces_affected": round(b["affected"], 3),
            "added_latency_ms_per_trace": round(excess_ms, 3),
            "exemplar_trace_ids": [e[1] for e in acc.exemplars],
            "resource": base.attrs,
        }
        peer = _peer(base.attrs, detail)
        where = ""
        if peer:
            callee = base.attrs.get(CALLEE)
            evidence["downstream"] = {
                "service": peer,
                "destination": detail,
                "callee_instrumented": bool(callee),
                "time": "between" if callee else "unknown",
            }
            where = (
                f" calling {peer}: the time is between {service} and {peer} (network, a proxy "
                f"or load balancer, connection pool or queueing), not in {peer}'s own server "
                "spans" if callee else
                f" calling {peer} ({peer} sends no spans in these traces: the time is inside it "
                "or on the way to it)"
            )
        if knock_on and stats is not None:
            evidence["knock_on"] = [
                {"operation": op_name(k), "baseline_p50_ms": _ms(stats[k]["baseline"]["b50"]),
                 "observed_p50_ms": _ms(stats[k]["p50"]),
                 "added_ms": _ms(stats[k]["baseline"]["excess"])}
                for k in sorted(knock_on, key=lambda k: -stats[k]["baseline"]["excess"])[:5]
            ]
        # A call that ran beside a longer one had no critical-path time at baseline: say so,
        # rather than "baseline 0 ms" for a span that took milliseconds.
        baseline = (f"baseline {_ms(b['b50']):g} ms" if _ms(b["b50"]) > 0 else
                    f"at baseline off the critical path, p95 {_ms(b['b95']):g} ms")
        summary = (
            f"{op} in {service}{where}: {_ms(st['p50']):g} ms of {_ms(st['trace_p50']):g} ms "
            f"traces on the critical path ({baseline}, slow in "
            f"{b['affected']:.0%} of its traces) ← BOTTLENECK"
        )
        if knock_on:
            summary += f"; {len(knock_on)} other operation(s) of {service} slower with it"
        return Verdict(severity, summary, evidence, _next_steps(service, op, base.attrs, peer))

    def _callee_verdict(
        self, callee: str, slow: list[_Judged], n_callers: int, window: Mapping[str, _Acc],
        stats: Mapping[str, Mapping[str, Any]], end_ns: int,
    ) -> Verdict:
        rows = sorted(slow, key=lambda r: (-stats[r.key]["baseline"]["excess"], r.key))
        callers = []
        for r in rows:
            st, acc = stats[r.key], window[r.key]
            b = st["baseline"]
            callers.append({
                "service": split_op(r.key)[2],
                "baseline_p50_ms": _ms(b["b50"]), "observed_p50_ms": _ms(st["p50"]),
                "added_ms": _ms(b["excess"]), "traces": acc.n,
                "share_of_traces_affected": round(b["affected"], 3),
                "exemplar_trace_ids": [e[1] for e in acc.exemplars[:3]],
            })
        added = median([c["added_ms"] for c in callers])
        exemplars = sorted(
            (e for r in rows for e in window[r.key].exemplars), key=lambda e: (-e[0], e[1])
        )
        evidence = {
            "callers": callers,
            "callers_slow": len(callers),
            "callers_judged": n_callers,
            "added_latency_ms_per_trace": added,
            "downstream": {"service": callee, "callee_instrumented": True, "time": "between"},
            "exemplar_trace_ids": list(dict.fromkeys(e[1] for e in exemplars))[:5],
            "window_end": rfc3339(end_ns),
        }
        listed = ", ".join(f"{c['service']} +{c['added_ms']:g} ms" for c in callers[:4])
        summary = (
            f"{callee}: calls into it from {len(callers)} services slow at once ({listed} per "
            f"trace), outside {callee}'s server spans: the time is between its callers and "
            f"{callee} (network, a proxy or load balancer, connection pools, {callee}'s accept "
            "queue) ← BOTTLENECK"
        )
        steps = [
            f"Open the exemplar traces: the gap is between each caller's client span and "
            f"{callee}'s server span.",
            f"Check what the callers share on the way to {callee}: a proxy, sidecar, load "
            f"balancer or network path in front of it, and {callee}'s accept queue and worker "
            "pool (requests waiting before they are read).",
            f"{callee}'s own operations are not slower (else they show as its own findings): "
            "the time is lost before its server spans start.",
            f"Do not restart {callee} or change its routing while diagnosing.",
        ]
        severity = "critical" if added >= 1000 else "warning"
        return Verdict(severity, summary, evidence, steps)

    def _regression_verdict(
        self,
        service: str,
        slower: list[_Judged],
        n_judged: int,
        share: float,
        stats: Mapping[str, Mapping[str, Any]],
        excess: Mapping[str, float],
        end_ns: int,
    ) -> Verdict:
        rows = sorted(
            ((excess[r.key], _ratio(stats[r.key]), r.key) for r in slower),
            reverse=True,
        )
        median_ratio = median([r for _, r, _ in rows])
        added_ms = sum(excess.values()) / MS
        evidence = {
            "operations_slower": len(slower),
            "operations_evaluated": n_judged,
            "slower_share_of_baseline_ms": round(share, 3),
            "median_ratio_to_baseline": round(median_ratio, 3),
            "added_ms_per_trace": round(added_ms, 3),
            "slowest_operations": [
                {"operation": op_name(k), "ratio_to_baseline": round(r, 3),
                 "baseline_p50_ms": _ms(stats[k]["baseline"]["b50"]),
                 "observed_p50_ms": _ms(stats[k]["p50"]), "added_ms": _ms(e)}
                for e, r, k in rows[:5]
            ],
            "window_end": rfc3339(end_ns),
        }
        summary = (
            f"{service}: {len(slower)} of {n_judged} operations slower together, "
            f"{added_ms:.1f} ms added (median x{median_ratio:.2f} their own exclusive time): "
            "a service-wide latency regression, not one bottleneck span"
        )
        steps = [
            f"Check what changed for {service} at the start: a deploy or configuration change, "
            "a new version, or a scaling event (compare service.version across its instances).",
            f"Check CPU saturation and throttling of {service}'s pods or hosts, and its "
            "gc_pressure findings: time lost inside the process slows every operation.",
            "Look for a noisy neighbour on the same nodes; compare with other services' findings.",
        ]
        return Verdict("warning", summary, evidence, steps)

    # -- bounds ----------------------------------------------------------------------------
    def _make_room(self) -> bool:
        if not self._ops.at_cap:  # the firing set only when something must go
            return True
        firing = {op_key(st["entity"]) for st in self.lc_bottleneck.active()}
        return self._ops.make_room(protect=lambda key, _op: key in firing,
                                   evict=self._evicted)

    def _evicted(self, key: str, _op: _Op) -> None:
        self._drop_accs(key)
        self._count("evicted_operations")

    def _drop_accs(self, key: str) -> None:
        for w, window in self._windows.items():
            if window.pop(key, None) is not None:
                self._accs.pop(f"{w}/{key}")

    def _expire(self, now_ns: int) -> list[Finding]:
        stale = [k for k, op in self._ops.items() if now_ns - op.seen_ns >= self.ttl_ns]
        for key in stale:
            self._ops.pop(key)
            self._drop_accs(key)
            self._count("expired_operations")
        # A firing finding whose operation stopped appearing resolves after 10 windows.
        idle = 10 * self.window_ns
        return self.lc_bottleneck.expire(now_ns, idle) + self.lc_regression.expire(now_ns, idle)

    def _count(self, reason: str) -> None:
        self._meta["counts"][reason] += 1
        self._meta.changed()

    # -- state -----------------------------------------------------------------------------
    def restored(self) -> None:
        self._windows = {}
        for name, acc in self._accs.items():
            w, _, key = name.partition("/")
            self._windows.setdefault(int(w), {})[key] = acc
        self._rekey_calls()

    def _rekey_calls(self) -> None:
        """State of releases that named an outgoing call by its span name alone: move each
        call's baseline and open windows to the operation the call is now (name and
        destination). A call is told by its saved attributes: a destination, no database and
        no ``http.route`` (which server spans carry)."""
        for key, op in list(self._ops.items()):
            service, name, detail = split_op(key)
            a = op.attrs
            if (detail or CALL in a or "http.route" in a or any(k in a for k in DB_KEYS)
                    or not any(k in a for k in PEER_KEYS)):
                continue
            dest = destination_of(a)
            new = f"{service}|{name}|{dest}"
            if not dest or dest in name or new in self._ops:
                continue
            op.attrs = {**a, CALL: True}
            self._ops.pop(key)
            self._ops.put(new, op)
            for w, window in self._windows.items():
                acc = window.pop(key, None)
                if acc is not None:
                    window[new] = acc
                    self._accs.pop(f"{w}/{key}")
                    self._accs.put(f"{w}/{new}", acc)

    def stats(self) -> DetectorStats:
        active: dict[tuple[str, str], int] = {}
        gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for kind, lc in ((BOTTLENECK, self.lc_bottleneck), (REGRESSION, self.lc_regression)):
            for st in lc.active():
                k = (kind, st["severity"])
                active[k] = active.get(k, 0) + 1
                if kind == BOTTLENECK:
                    key = op_key(st["entity"])
                    labels = (("service_name", split_op(key)[0]), ("operation", op_name(key)))
                    gauges[(EXCESS_GAUGE, labels)] = (
                        st["last"][2].get("added_latency_ms_per_trace", 0.0) / 1000.0
                    )
                elif st["last"][2].get("median_ratio_to_baseline") is not None:
                    labels = (("service_name", st["entity"]["service"]),)
                    gauges[(RATIO_GAUGE, labels)] = float(
                        st["last"][2]["median_ratio_to_baseline"]
                    )
        evicted = dict(self._meta["counts"])
        evicted["findings_evicted"] = self.lc_bottleneck.evicted + self.lc_regression.evicted
        return DetectorStats(tracked=len(self._ops), evicted=evicted, active=active,
                             gauges=gauges,
                             firing=self.lc_bottleneck.firing() + self.lc_regression.firing())


def _ms(ns: float) -> float:
    return round(ns / MS, 3)


def _peer(attrs: Mapping[str, Any], detail: str) -> str:
    """The service an outgoing call goes to ("" for anything else)."""
    if not attrs.get(CALL) or any(k in attrs for k in DB_KEYS):
        return ""
    return str(attrs.get(CALLEE) or attrs.get("peer.service") or detail)


def _next_steps(service: str, op: str, attrs: Mapping[str, Any], peer: str = "") -> list[str]:
    steps = [
        f"Open the exemplar traces and confirm {op} is the long span on the critical path."
    ]
    db = next((str(attrs[k]) for k in DB_KEYS if k in attrs), None)
    peer = peer or next((str(attrs[k]) for k in PEER_KEYS if k in attrs), "") or ""
    if peer and attrs.get(CALLEE):
        return steps + [
            f"The time is spent between {service} and {peer}, outside {peer}'s server spans: "
            f"check the network path, any proxy, sidecar or load balancer in front of {peer}, "
            f"and {service}'s connection pool to it (waiting for a connection).",
            f"Compare {peer}'s server-side latency with {service}'s client-side latency for "
            "the same calls in the exemplar traces; if other callers of it are slow too, the "
            f"problem is at {peer}'s end.",
            f"Do not restart {peer} or change its routing while diagnosing.",
        ]
    if db is not None:
        name = attrs.get("db.name") or attrs.get("db.namespace") or db
        steps += [
            f"Check the slow-query log or statement statistics of {name} ({db}) for this "
            "statement since the onset (e.g. pg_stat_statements, performance_schema).",
            "Compare its plan with EXPLAIN on a read replica, not the primary (no EXPLAIN "
            "ANALYZE of writes); look for lock waits, a missing index or a changed plan.",
            "Do not kill sessions or change indexes on the primary while diagnosing.",
        ]
    elif peer:
        steps += [
            f"The time is spent waiting on {peer}: check its own findings and its server spans "
            "in the exemplar traces.",
            f"Check the connection pool, timeouts and retries of {service}'s client for {peer}.",
        ]
    else:
        steps += [
            f"Profile one replica of {service} with a sampling profiler and a time limit "
            "(py-spy, async-profiler or pprof for 30 s), not every instance.",
            f"Check recent deploys of {service} that touched {op}.",
        ]
    return steps
