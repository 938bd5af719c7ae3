"""Baselines for ``bottleneck_span``: what a user would otherwise alert on. Pure: no Kafka.

Each baseline is a ``benchmarks.accuracy.Baseline``: ``(scenario) -> ("bottleneck_span",
[(entity, fired_at_ns), ...])`` with entity ``{"service": <service.name>, "operation": <span
name>}``, one alert per operation and alert episode. ``BUILTIN`` maps their names to them;
``benchmarks.accuracy`` registers it into its ``BASELINES``.

Spans come straight from the simulator's model (``Simulator(scenario).ticks()``): the very spans
``iter_records`` encodes, so the ones the worker saw (sampling and lost spans happen in the model),
without the OTLP encoding. A span is *seen* at the end of the tick that emitted its trace (the
Kafka record's timestamp), which is when a Collector's connector would count it; its duration is
``end - start`` (clock skew shifts both ends alike). All windows are in event time, aligned to
the scenario start. Both baselines learn "normal" from a warm-up (default the first 15 minutes)
and never alert inside it.

``p99_static``
    The spanmetrics connector + Prometheus rule a user would write::

        histogram_quantile(0.99,
          sum by (service_name, span_name, le) (rate(duration_milliseconds_bucket[5m])))
          > <threshold>        for: 2m, evaluated every 30 s

    One latency histogram per (service.name, span name) with the connector's default buckets
    (``SPANMETRICS_BUCKETS_MS``; upper-inclusive like the connector and ``le``), summed over span
    kind and status code. ``histogram_quantile`` follows Prometheus (``promql/quantile.go``):
    linear interpolation inside the bucket, 0 as the lower edge of the first bucket, and the
    highest finite bound when the rank falls in the ``+Inf`` bucket; no data gives NaN, and a
    NaN comparison is false. ``rate(...[5m])`` is taken as the exact increase over ``(t - 5m,
    t]`` (a common factor of every bucket of a series, which the quantile does not see);
    connector flush and scrape delays are ignored, so the rule sees data at once (its delays
    are a lower bound). The static threshold per operation is ``factor`` (1.5) x the p99
    measured the same way over the whole warm-up (the ``histogram_quantile`` of the warm-up's
    ``increase``): what a user sets after watching a dashboard of normal traffic, with
    headroom. Operations without warm-up traffic get no rule. The rule is loaded at the end of
    the warm-up; Prometheus' alerting states follow: a series above threshold goes pending, fires
    once it has been so for ``for`` (``fired_at`` = that evaluation), and resolves the first time
    it is not (``keep_firing_for`` 0); a later episode fires again.

``halfspacetrees``
    river's ``anomaly.HalfSpaceTrees`` per operation, on 30 s windows of that operation's spans:
    p50 and p99 of duration (log ms) and the span count, each min-max normalised with the
    operation's warm-up range. One model per operation (default) rather than one shared model
    with the operation one-hot encoded: latencies differ by orders of magnitude between
    operations, and a shared forest would spend most of its random splits on the one-hot
    columns (``shared=True`` feeds one model every operation's normalised windows without
    one-hot; it scored worse on the ``bottleneck`` preset). Each window with spans is scored with
    ``score_one``, then learned with ``learn_one``; a window without spans is skipped (no latency
    to score). HST scores 0 until its first reference window (``window_size`` observations) has
    filled, so ``window_size`` is 10 windows (5 min; river's default of 250 would be two hours
    of windows), which leaves 10 minutes of the warm-up to calibrate on. ``n_trees`` 25 (Tan et
    al.'s default), ``height`` 8 (river's).

    Headroom (``margin``, default 0.5): HST cuts each feature's ``limits`` (river's default [0,
    1]) at random points away from the edges, so with the warm-up range mapped onto exactly [0,
    1] a p99 ten times the warm-up's maximum follows the same path as that maximum and scores no
    higher: on synthetic data (8 seeds) a 12x latency jump was never flagged. The trees' limits are
    therefore ``[-margin, 1 + margin]``: the warm-up range fills the middle half of the space
    and values beyond it can be isolated (the same as scaling the warm-up range to [0.25,
    0.75] under the default limits). ``margin=0`` gives the literal variant.

    The alert threshold is the ``quantile`` (0.99) of all operations' warm-up scores pooled
    (features are normalised per operation, so scores are comparable, and a per-operation
    quantile of ~20 scores would be its maximum); an operation alerts when ``consecutive`` (2)
    consecutive windows score above it, at the close of the last one, and again only after a
    window that does not (or has no spans).
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from river import anomaly

from pipeline.simulate.model import Simulator
from pipeline.simulate.scenarios import Scenario

KIND = "bottleneck_span"
NS = 1_000_000_000
#: The spanmetrics connector's default explicit buckets for ``duration`` (unit ms).
SPANMETRICS_BUCKETS_MS: tuple[float, ...] = (
    2, 4, 6, 8, 10, 50, 100, 200, 400, 800, 1000, 1400, 2000, 5000, 10000, 15000,
)
#: Prometheus' ``smallDeltaTolerance`` in ``promql/quantile.go``.
SMALL_DELTA_TOLERANCE = 1e-12
_MIN_NORMAL = 2.2250738585072014e-308

Alerts = list[tuple[dict[str, str], int]]


# ---------------------------------------------------------------------------------------------
# Spans


@dataclass(frozen=True)
class SpanTable:
    """Spans as columns: operation index, when the pipeline saw the span, its duration."""

    operations: tuple[tuple[str, str], ...]  # (service.name, span name) by operation index
    op: np.ndarray  # int32, one per span
    seen_ns: np.ndarray  # int64: event time at which the span reached the pipeline
    duration_ns: np.ndarray  # int64: end - start
    start_ns: int  # the run's event-time range
    end_ns: int

    @classmethod
    def from_spans(
        cls, spans: Iterable[Sequence[Any]], start_ns: int, end_ns: int
    ) -> SpanTable:
        """From ``(service, span name, start_ns, end_ns[, seen_ns])`` rows; ``seen_ns`` defaults
        to the span's end."""
        index: dict[tuple[str, str], int] = {}
        op, seen, dur = array("i"), array("q"), array("q")
        for row in spans:
            service, name, s, e = row[0], row[1], int(row[2]), int(row[3])
            key = (str(service), str(name))
            op.append(index.setdefault(key, len(index)))
            seen.append(int(row[4]) if len(row) > 4 else e)
            dur.append(e - s)
        return cls(
            tuple(index), np.frombuffer(op, np.int32).copy(), np.frombuffer(seen, np.int64).copy(),
            np.frombuffer(dur, np.int64).copy(), int(start_ns), int(end_ns),
        )

    def entity(self, i: int) -> dict[str, str]:
        service, name = self.operations[i]
        return {"service": service, "operation": name}


def simulated_spans(scenario: Scenario) -> SpanTable:
    """Every span the scenario emits, from the model (no encoding); memoised for the last
    scenario object, so that several baselines on one scenario simulate it once."""
    global _LAST
    if _LAST is not None and _LAST[0] is scenario:
        return _LAST[1]
    ops: dict[object, int] = {}  # (resource, template) objects -> operation index
    names: dict[tuple[str, str], int] = {}
    op, dur = array("i"), array("q")
    tick_ns, per_tick = array("q"), array("q")
    for tick in Simulator(scenario).ticks():
        n0 = len(op)
        for trace in tick.traces:
            for sp in trace:
                key = (sp.resource, sp.template)
                i = ops.get(key)
                if i is None:
                    service = dict(sp.resource.attributes).get("service.name", sp.template.service)
                    i = ops[key] = names.setdefault((str(service), sp.template.name), len(names))
                op.append(i)
                dur.append(sp.end_ns - sp.start_ns)
        tick_ns.append(tick.time_ns)
        per_tick.append(len(op) - n0)
    table = SpanTable(
        tuple(names), np.frombuffer(op, np.int32).copy(),
        np.repeat(np.frombuffer(tick_ns, np.int64), np.frombuffer(per_tick, np.int64)),
        np.frombuffer(dur, np.int64).copy(), scenario.start_ns, scenario.end_ns,
    )
    _LAST = (scenario, table)
    return table


_LAST: tuple[Scenario, SpanTable] | None = None


# ---------------------------------------------------------------------------------------------
# Prometheus histogram_quantile


def _almost_equal(a: float, b: float, eps: float) -> bool:
    """Prometheus ``util/almost.Equal``."""
    if a == b:
        return True
    abs_sum, diff = abs(a) + abs(b), abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < eps * _MIN_NORMAL
    return diff / min(abs_sum, 1.7976931348623157e308) < eps


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float:
    """PromQL ``histogram_quantile`` of one classic histogram, given as ``(le, cumulative
    count)`` samples in any order (Prometheus' ``BucketQuantile``).

    >>> histogram_quantile(0.5, [(1, 2), (2, 6), (float("inf"), 8)])  # rank 4: half-way in (1, 2]
    1.5
    >>> histogram_quantile(0.99, [(1, 2), (2, 6), (float("inf"), 8)])  # in +Inf: last finite le
    2.0
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bs = sorted((float(le), float(c)) for le, c in buckets)
    if not bs or bs[-1][0] != math.inf:
        return math.nan
    merged: list[list[float]] = []  # coalesceBuckets: same upper bound -> one bucket
    for le, c in bs:
        if merged and merged[-1][0] == le:
            merged[-1][1] += c
        else:
            merged.append([le, c])
    prev = merged[0][1]  # ensureMonotonicAndIgnoreSmallDeltas
    for b in merged[1:]:
        cur = b[1]
        if cur == prev:
            continue
        if _almost_equal(prev, cur, SMALL_DELTA_TOLERANCE) or cur < prev:
            b[1] = prev
            continue
        prev = cur
    if len(merged) < 2:
        return math.nan
    observations = merged[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    b = next((i for i in range(len(merged) - 1) if merged[i][1] >= rank), len(merged) - 1)
    if b == len(merged) - 1:
        return merged[-2][0]
    if b == 0 and merged[0][0] <= 0:
        return merged[0][0]
    start, end, count = 0.0, merged[b][0], merged[b][1]
    if b > 0:
        start = merged[b - 1][0]
        count -= merged[b - 1][1]
        rank -= merged[b - 1][1]
    if count == 0:  # only when rank == 0 falls in an empty bucket: 0/0 in Go
        return math.nan
    return start + (end - start) * (rank / count)


def histogram_quantiles(q: float, bounds: Sequence[float], counts: np.ndarray) -> np.ndarray:
    """``histogram_quantile`` of many histograms at once: ``counts[..., i]`` is the number of
    observations in bucket ``i`` (not cumulative) for ascending finite upper ``bounds`` plus a
    last ``+Inf`` bucket (``len(bounds) + 1`` buckets). Same results as ``histogram_quantile``
    (counts are exact, so its monotonicity fixes never apply)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    ub = np.asarray(bounds, dtype=float)
    nb = len(ub)
    if counts.shape[-1] != nb + 1:
        raise ValueError(f"expected {nb + 1} buckets (the last +Inf), got {counts.shape[-1]}")
    if nb == 0:  # only the +Inf bucket: fewer than 2 buckets
        return np.full(counts.shape[:-1], np.nan)
    cum = np.cumsum(counts, axis=-1, dtype=float)
    total = cum[..., -1]
    rank = q * total
    ge = cum[..., :-1] >= rank[..., None]
    b = np.where(ge.any(axis=-1), ge.argmax(axis=-1), nb)
    prev = np.where(b > 0, np.take_along_axis(cum, np.maximum(b - 1, 0)[..., None], -1)[..., 0],
                    0.0)
    cnt = np.take_along_axis(cum, b[..., None], -1)[..., 0] - prev
    lower = np.concatenate(([0.0], ub))[b]
    upper = np.concatenate((ub, [ub[-1]]))[b]  # +Inf bucket: replaced below
    with np.errstate(invalid="ignore", divide="ignore"):
        val = lower + (upper - lower) * ((rank - prev) / cnt)
    val = np.where(b == nb, ub[-1], val)
    if nb and ub[0] <= 0:
        val = np.where(b == 0, ub[0], val)
    return np.where(total == 0, np.nan, val)


# ---------------------------------------------------------------------------------------------
# p99_static


def _steps(seconds: float, step_s: float, what: str) -> int:
    n = seconds / step_s
    if n < 0 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"{what} ({seconds} s) must be a whole number of {step_s} s steps")
    return int(round(n))


def p99_static_alerts(
    spans: SpanTable,
    *,
    quantile: float = 0.99,
    factor: float = 1.5,
    warmup_s: float = 900.0,
    interval_s: float = 30.0,
    rate_window_s: float = 300.0,
    for_s: float = 120.0,
    buckets_ms: Sequence[float] = SPANMETRICS_BUCKETS_MS,
) -> Alerts:
    """Alerts of the spanmetrics + ``histogram_quantile`` rule (module docstring)."""
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    window = _steps(rate_window_s, interval_s, "rate_window_s")
    warm = _steps(warmup_s, interval_s, "warmup_s")
    hold = math.ceil(for_s / interval_s - 1e-9)  # evaluations after the first one
    n_ops, nbk = len(spans.operations), len(buckets_ms) + 1
    step = int(round(interval_s * NS))
    # Slot j holds the spans seen in (start + (j-1) step, start + j step]; an evaluation at
    # start + j step sees slots j-window+1 .. j.
    n_slots = -(-(spans.end_ns - spans.start_ns) // step) + 1
    if n_ops == 0 or warm >= n_slots:
        return []
    slot = np.clip(-((spans.start_ns - spans.seen_ns) // step), 0, n_slots - 1)
    bucket = np.searchsorted(np.asarray(buckets_ms, float), spans.duration_ns / 1e6, "left")
    flat = (spans.op.astype(np.int64) * n_slots + slot) * nbk + bucket
    counts = np.bincount(flat, minlength=n_ops * n_slots * nbk).reshape(n_ops, n_slots, nbk)
    cum = np.zeros((n_ops, n_slots + 1, nbk), np.int64)  # cum[:, j] = slots < j
    np.cumsum(counts, axis=1, out=cum[:, 1:])
    threshold = factor * histogram_quantiles(quantile, buckets_ms, cum[:, warm + 1] - cum[:, 0])
    last = (spans.end_ns - spans.start_ns) // step  # the last evaluation at or before the end
    evals = np.arange(warm, last + 1)
    in_window = cum[:, evals + 1] - cum[:, np.maximum(evals + 1 - window, 0)]
    value = histogram_quantiles(quantile, buckets_ms, in_window)
    with np.errstate(invalid="ignore"):
        above = value > threshold[:, None]  # NaN on either side: no series, no alert
    alerts: Alerts = []
    for i in range(n_ops):
        active_since: int | None = None
        fired = False
        for k, on in enumerate(above[i].tolist()):
            if not on:
                active_since, fired = None, False
                continue
            if active_since is None:
                active_since = k
            if not fired and k - active_since >= hold:
                fired = True
                alerts.append((spans.entity(i), spans.start_ns + int(evals[k]) * step))
    return sorted(alerts, key=lambda a: (a[1], a[0]["service"], a[0]["operation"]))


# ---------------------------------------------------------------------------------------------
# halfspacetrees


FEATURES = ("p50", "p99", "count")


@dataclass(frozen=True)
class WindowStats:
    """Per (operation, window) stats: window indices, span counts, p50 and p99 in ms."""

    op: np.ndarray
    window: np.ndarray
    count: np.ndarray
    p50_ms: np.ndarray
    p99_ms: np.ndarray


def window_stats(spans: SpanTable, window_s: float = 30.0) -> WindowStats:
    """Stats of each operation's spans seen in window ``w`` = ``(start + w W, start + (w+1) W]``,
    for every window with spans that closes by the run's end (quantiles interpolate linearly,
    as ``numpy.quantile``)."""
    width = int(round(window_s * NS))
    n_win = (spans.end_ns - spans.start_ns) // width
    w = np.maximum((spans.seen_ns - spans.start_ns - 1) // width, 0)
    keep = w < n_win
    g = spans.op[keep].astype(np.int64) * max(n_win, 1) + w[keep]
    d = spans.duration_ns[keep] / 1e6
    order = np.lexsort((d, g))
    g, d = g[order], d[order]
    groups, first, count = np.unique(g, return_index=True, return_counts=True)

    def q(p: float) -> np.ndarray:
        pos = first + p * (count - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, first + count - 1)
        return d[lo] + (pos - lo) * (d[hi] - d[lo])

    return WindowStats(
        (groups // max(n_win, 1)).astype(np.int64), groups % max(n_win, 1), count, q(0.5), q(0.99)
    )


def _seed_for(seed: int, operation: tuple[str, str]) -> int:
    return (seed * 1_000_003 + zlib.crc32("\0".join(operation).encode())) % 2**32


def halfspacetrees_alerts(
    spans: SpanTable,
    *,
    warmup_s: float = 900.0,
    window_s: float = 30.0,
    quantile: float = 0.99,
    consecutive: int = 2,
    n_trees: int = 25,
    height: int = 8,
    window_size: int = 10,
    shared: bool = False,
    margin: float = 0.5,
    seed: int = 7,
    scores: dict[tuple[str, str], list[tuple[int, float]]] | None = None,
) -> Alerts:
    """Alerts of HalfSpaceTrees on per-operation window features (module docstring).

    ``window_size`` is in windows of one operation: with ``shared`` (one model fed every
    operation's normalised windows, in time order), the model's ``window_size`` is that times the
    number of modelled operations, so its reference still spans the same event time. ``margin``
    sets the trees' feature limits to ``[-margin, 1 + margin]`` (0: river's default ``[0, 1]``,
    exactly the warm-up range). ``scores``, if given, receives each operation's ``(window close ns,
    score)`` once its model has a reference window."""
    width = int(round(window_s * NS))
    warm = _steps(warmup_s, window_s, "warmup_s")  # windows 0 .. warm-1 close in the warm-up
    st = window_stats(spans, window_s)  # rows sorted by operation, then window
    raw = np.column_stack((
        np.log(np.maximum(st.p50_ms, 1e-6)), np.log(np.maximum(st.p99_ms, 1e-6)),
        st.count.astype(float),
    ))
    n_ops = len(spans.operations)
    in_warm = st.window < warm
    lo = np.full((n_ops, 3), np.inf)
    hi = np.full((n_ops, 3), -np.inf)
    np.minimum.at(lo, st.op[in_warm], raw[in_warm])
    np.maximum.at(hi, st.op[in_warm], raw[in_warm])
    modelled = np.isfinite(lo[:, 0])  # no warm-up traffic, nothing to normalise with: no model
    rows = np.flatnonzero(modelled[st.op])
    if rows.size == 0:
        return []
    width_f = np.where(hi > lo, hi - lo, 1.0)
    norm = (raw - lo[st.op]) / width_f[st.op]  # rows of unmodelled operations: inf/nan, unused
    limits = {f: (-margin, 1.0 + margin) for f in FEATURES} if margin else None
    size = window_size * (int(modelled.sum()) if shared else 1)
    models: dict[int, anomaly.HalfSpaceTrees] = {}
    learned: dict[int, int] = {}
    score = np.full(len(st.op), np.nan)
    if shared:
        rows = rows[np.lexsort((st.op[rows], st.window[rows]))]  # time order, then operation
    ops, wins, feats = st.op.tolist(), st.window.tolist(), norm.tolist()
    for r in rows.tolist():
        key = -1 if shared else ops[r]
        model = models.get(key)
        if model is None:
            op_seed = seed if shared else _seed_for(seed, spans.operations[key])
            model = models[key] = anomaly.HalfSpaceTrees(
                n_trees=n_trees, height=height, window_size=size, limits=limits, seed=op_seed
            )
            learned[key] = 0
        x = dict(zip(FEATURES, feats[r], strict=True))
        if learned[key] >= size:  # before that HST scores 0: it has no reference mass yet
            score[r] = model.score_one(x)
        model.learn_one(x)
        learned[key] += 1
    scored = ~np.isnan(score)
    if scores is not None:
        for r in np.flatnonzero(scored).tolist():
            scores.setdefault(spans.operations[ops[r]], []).append(
                (spans.start_ns + (wins[r] + 1) * width, float(score[r])))
    warm_scores = score[scored & in_warm]
    if warm_scores.size == 0:
        return []
    threshold = float(np.quantile(warm_scores, quantile))
    alerts: Alerts = []
    run_op, run_end, run_len, fired = -1, -1, 0, False
    for r in np.flatnonzero(scored & ~in_warm).tolist():  # by operation, windows ascending
        i, w = ops[r], wins[r]
        if score[r] <= threshold:
            run_len = 0
            continue
        if i == run_op and w == run_end + 1 and run_len:
            run_len += 1
        else:
            run_len, fired = 1, False
        run_op, run_end = i, w
        if run_len >= consecutive and not fired:
            fired = True
            alerts.append((spans.entity(i), spans.start_ns + (w + 1) * width))
    return sorted(alerts, key=lambda a: (a[1], a[0]["service"], a[0]["operation"]))


# ---------------------------------------------------------------------------------------------
# Registered baselines


def p99_static(scenario: Scenario) -> tuple[str, Alerts]:
    return KIND, p99_static_alerts(simulated_spans(scenario))


def halfspacetrees(scenario: Scenario) -> tuple[str, Alerts]:
    return KIND, halfspacetrees_alerts(simulated_spans(scenario))


BUILTIN: dict[str, Callable[[Scenario], tuple[str, Alerts]]] = {
    "p99_static": p99_static,
    "halfspacetrees": halfspacetrees,
}
