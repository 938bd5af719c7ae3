"""Baselines for ``memory_leak`` and ``gc_pressure``: the Prometheus rules users write today,
evaluated faithfully (a port of Prometheus 2.42's PromQL) on the simulated runtime metrics. Pure.

Each baseline is a ``benchmarks.accuracy.Baseline``: ``(scenario) -> (kind, [(entity,
fired_at_ns), ...])`` with entity ``{"service": <service.name>, "instance":
<service.instance.id>}`` (the keys ``memory_leak`` labels and findings use), one alert per
instance and alert episode. ``BUILTIN`` maps their names to them; ``benchmarks.accuracy``
registers it into its ``BASELINES``. ``python -m benchmarks.promql_check`` checks this port
against a real Prometheus 2.42 on the same series (``benchmarks/RESULTS.md``, issue 4).

Data. Metric points come straight from the simulator's model (``Simulator(scenario).ticks()``,
the very points ``iter_records`` encodes), one series per (``service.name``,
``service.instance.id``, metric, point attributes): what the OTLP -> Prometheus translation
gives (``job`` = namespace/service, ``instance`` = ``service.instance.id``; the id survives an
OOM kill, so a leaking instance's series continues through it). Timestamps are truncated to
milliseconds, as Prometheus stores them; a sample is usable from its own timestamp on (scrape,
export and rule-evaluation delays are ignored, so the rules' delays are lower bounds). Samples
that do not advance a series' time are dropped (Prometheus rejects them as out of order).

``heap`` per runtime (what a user plots as "heap used")::

    java    sum by (job, instance) (jvm_memory_used_bytes{jvm_memory_type="heap"})  (3 G1 pools)
    go      sum by (job, instance) (go_memory_used_bytes)                            (other + stack)
    nodejs  sum by (job, instance) (v8js_memory_heap_used_bytes)                     (4 spaces)
    python  process_runtime_cpython_memory_bytes{type="rss"}                         (one series)

``limit`` per runtime: ``jvm_memory_limit_bytes`` (G1 Old Gen, the -Xmx), ``go_memory_limit_bytes``
(GOMEMLIMIT), ``v8js_memory_heap_limit_bytes{v8js_heap_space_name="old_space"}``, and for Python
the container's memory limit as configured (``python_limit_bytes``: the simulator's
``configured_limits``, i.e. ``RuntimeProfile.limit_bytes``; a constant in the rule).

A summed ``heap`` cannot be given a range directly, so it is a recording rule in the same group,
evaluated just before the alerting rule at every evaluation (identical to a subquery
``[<range>:30s]``: both evaluate the sum at absolute multiples of 30 s, each component being its
latest sample no older than the 5-minute lookback). Python's single series is used raw (10 s
samples).

Rules (one group, evaluated every ``interval_s`` = 30 s at absolute multiples of 30 s; a real
group is offset inside its interval by a hash of its name, which would shift every evaluation by
the same < 30 s; loaded at the end of the warm-up, ``warmup_s`` = 15 min like the other
baselines, and never alerting before)::

    predict_linear   predict_linear(heap[1h], 4 * 3600) > on (job, instance) limit      for: 30m
    deriv            deriv(heap[10m]) > <threshold of the runtime>                      for: 10m
    gc_time          sum by (job, instance) (rate(jvm_gc_duration_seconds_sum[5m])) > 0.1
                     (and v8js_gc_duration_seconds_sum for Node; Go and CPython export no GC
                     time)                                                               for: 5m

``for:``: the predictive fill-up alerts of the kubernetes-mixin and node-mixin
(``KubePersistentVolumeFillingUp``, ``NodeFilesystemSpaceFillingUp``) use ``for: 1h`` with a 6 h
range; with a 1 h range half of that, 30 min. The short-window ``deriv`` rule uses 10 min, the
GC-time rule 5 min (the usual for "more than 10 % of the time in GC" rules). The ``deriv``
threshold is set as a user sets a static one after watching healthy traffic: ``factor`` (1.5) x
the largest ``deriv(heap[10m])`` of any instance of that runtime over the warm-up, counting only
evaluations whose 10-minute window lies entirely after the series' first sample (one fixed
bytes/s per runtime: instances of one runtime share one limit here). A runtime with no such
value gets no rule.

Semantics ported from Prometheus 2.42 (``promql/engine.go``, ``promql/functions.go``):

- Range selection ``x[r]`` at ``t`` holds the samples with ``t - r <= ts <= t``: *closed on both
  ends* in 2.x (``matrixIterSlice``: ``t >= mint``, ``mint = maxt - range``); Prometheus 3.0
  made it left-open ``(t - r, t]``. ``left_open=True`` gives the 3.x behaviour.
- An instant selector at ``t``: the latest sample with ``ts <= t`` and ``ts >= t - 5m``.
- ``deriv`` and ``predict_linear``: ``linearRegression`` (least squares with Neumaier-Kahan
  compensated sums of x, y, xy, x^2; x in seconds from the intercept time; a constant series
  gives slope 0). ``deriv`` takes the intercept at the window's first sample (only the slope
  is used); ``predict_linear(v, d)`` = slope * d + the intercept *at the evaluation time*
  (not at the last sample). Fewer than 2 samples: no result.
- ``rate``: ``extrapolatedRate`` (counter resets, extrapolation to the window edges by at most
  half an average sample interval unless within 1.1 intervals, not below a zero count).
- ``sum``: plain float addition (2.42 has no Kahan summation in aggregations).
- Alerting: a series whose condition holds goes pending, fires once it has held for ``for``
  (``fired_at`` = that evaluation), resolves at the first evaluation where it does not (no
  result counts as not holding; ``keep_firing_for`` 0); a later episode fires again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.simulate.model import Simulator
from pipeline.simulate.scenarios import Scenario
from pipeline.simulate.topology import RUNTIMES

LEAK = "memory_leak"
GC = "gc_pressure"
NS = 1_000_000_000
MS = 1_000_000  # ns per ms
LOOKBACK_MS = 300_000  # --query.lookback-delta default

Alerts = list[tuple[dict[str, str], int]]
Attrs = tuple[tuple[str, object], ...]

#: runtime -> (OTel metric, point attributes to match, Prometheus name, whether summed).
HEAP: dict[str, tuple[str, dict[str, str], str, bool]] = {
    "java": ("jvm.memory.used", {"jvm.memory.type": "heap"}, "jvm_memory_used_bytes", True),
    "go": ("go.memory.used", {}, "go_memory_used_bytes", True),
    "nodejs": ("v8js.memory.heap.used", {}, "v8js_memory_heap_used_bytes", True),
    "python": ("process.runtime.cpython.memory", {"type": "rss"},
               "process_runtime_cpython_memory_bytes", False),
}
LIMIT: dict[str, tuple[str, dict[str, str], str]] = {
    "java": ("jvm.memory.limit", {"jvm.memory.type": "heap"}, "jvm_memory_limit_bytes"),
    "go": ("go.memory.limit", {}, "go_memory_limit_bytes"),
    "nodejs": ("v8js.memory.heap.limit", {"v8js.heap.space.name": "old_space"},
               "v8js_memory_heap_limit_bytes"),
}
GC_TIME: dict[str, tuple[str, str]] = {
    "java": ("jvm.gc.duration", "jvm_gc_duration_seconds_sum"),
    "nodejs": ("v8js.gc.duration", "v8js_gc_duration_seconds_sum"),
}
_WANTED = {v[0] for v in HEAP.values()} | {v[0] for v in LIMIT.values()} | {
    v[0] for v in GC_TIME.values()}


def python_limit_bytes(service: str, scenario: Scenario | None = None) -> float:
    """The container memory limit a Python service's rule compares with (a constant in the
    rule): the simulator's ``configured_limits(scenario)`` (what the run line carries and the
    leak labels' ``limit_bytes`` use), else the runtime profile's ``limit_bytes``."""
    if scenario is not None:
        try:
            from pipeline.simulate.labels import configured_limits
        except ImportError:  # a simulator without it: the profile's limit is the same number
            configured_limits = None
        if configured_limits is not None:
            limits = configured_limits(scenario)
            if service in limits:
                return float(limits[service])
    return float(RUNTIMES["python"].limit_bytes)


# ---------------------------------------------------------------------------------------------
# Series


@dataclass
class Series:
    """One Prometheus series: sorted int64 ms timestamps and float64 values."""

    labels: Attrs
    t: np.ndarray
    v: np.ndarray


@dataclass
class InstanceMemory:
    """The series the rules read for one instance (service.name, service.instance.id)."""

    service: str
    instance: str
    job: str
    runtime: str
    heap: list[Series] = field(default_factory=list)  # components, sorted by labels
    limit: Series | None = None
    limit_const: float | None = None  # python: the configured container limit
    gc: list[Series] = field(default_factory=list)  # GC-time histogram _sum series

    @property
    def entity(self) -> dict[str, str]:
        return {"service": self.service, "instance": self.instance}


@dataclass
class MemoryTable:
    instances: list[InstanceMemory]
    start_ns: int
    end_ns: int


def finish_series(labels: Attrs, ts: list[int], vs: list[float]) -> Series:
    """A series as Prometheus stores it: samples that do not advance time are dropped."""
    t = np.asarray(ts, np.int64)
    v = np.asarray(vs, np.float64)
    if t.size > 1:  # drop samples that do not advance time (Prometheus: out of order/duplicate)
        keep = np.ones(t.size, bool)
        keep[1:] = t[1:] > np.maximum.accumulate(t)[:-1]
        t, v = t[keep], v[keep]
    return Series(labels, t, v)


def memory_table(scenario: Scenario) -> MemoryTable:
    """The rules' series of every instance (see module docstring); memoised for the last
    scenario object."""
    global _LAST
    if _LAST is not None and _LAST[0] is scenario:
        return _LAST[1]
    raw: dict[tuple[str, str, str, Attrs], tuple[list[int], list[float]]] = {}
    meta: dict[tuple[str, str], tuple[str, str]] = {}  # -> (runtime, job)
    res_cache: dict[int, tuple[str, str, str, str]] = {}
    for tick in Simulator(scenario).ticks():
        for m in tick.metrics:
            if m.name not in _WANTED:
                continue
            r = res_cache.get(id(m.resource))
            if r is None:
                a = dict(m.resource.attributes)
                service = str(a.get("service.name", ""))
                ns = a.get("service.namespace")
                r = res_cache[id(m.resource)] = (
                    service, str(a.get("service.instance.id", "")),
                    str(a.get("telemetry.sdk.language", "")),
                    f"{ns}/{service}" if ns else service,
                )
            service, instance, runtime, job = r
            meta.setdefault((service, instance), (runtime, job))
            key = (service, instance, m.name, tuple(m.attributes))
            ts, vs = raw.setdefault(key, ([], []))
            ts.append(m.time_ns // MS)
            vs.append(float(m.total) if m.kind == "histogram" else float(m.value))
    out: list[InstanceMemory] = []
    for (service, instance), (runtime, job) in sorted(meta.items()):
        if runtime not in HEAP:
            continue
        im = InstanceMemory(service, instance, job, runtime)
        hname, hattrs, _, _ = HEAP[runtime]
        lim = LIMIT.get(runtime)
        gname = GC_TIME.get(runtime, ("", ""))[0]
        for (s, i, name, attrs), (ts, vs) in sorted(raw.items(), key=lambda kv: str(kv[0])):
            if (s, i) != (service, instance):
                continue
            d = {k: str(v) for k, v in attrs}
            if name == hname and all(d.get(k) == v for k, v in hattrs.items()):
                im.heap.append(finish_series(attrs, ts, vs))
            elif lim and name == lim[0] and all(d.get(k) == v for k, v in lim[1].items()):
                im.limit = finish_series(attrs, ts, vs)
            elif name == gname:
                im.gc.append(finish_series(attrs, ts, vs))
        if runtime == "python":
            im.limit_const = python_limit_bytes(service, scenario)
        out.append(im)
    table = MemoryTable(out, scenario.start_ns, scenario.end_ns)
    _LAST = (scenario, table)
    return table


_LAST: tuple[Scenario, MemoryTable] | None = None


# ---------------------------------------------------------------------------------------------
# PromQL 2.42


def kahan_sum_inc(inc: float, s: float, c: float) -> tuple[float, float]:
    """``kahanSumInc`` (Neumaier's improvement)."""
    t = s + inc
    if abs(s) >= abs(inc):
        c += (s - t) + inc
    else:
        c += (inc - t) + s
    return t, c


def linear_regression(
    ts_ms: Sequence[int], vs: Sequence[float], intercept_ms: int
) -> tuple[float, float]:
    """``linearRegression``: (slope per second, value at ``intercept_ms``). Reference version,
    one window at a time.

    >>> linear_regression([0, 10_000, 20_000], [1.0, 2.0, 3.0], 20_000)
    (0.1, 3.0)
    >>> linear_regression([0, 10_000], [5.0, 5.0], 99_000)  # constant: slope 0, value as is
    (0, 5.0)
    """
    n = 0.0
    sx = cx = sy = cy = sxy = cxy = sx2 = cx2 = 0.0
    init_y = float(vs[0])
    const_y = True
    for i, (t, y) in enumerate(zip(ts_ms, vs, strict=True)):
        y = float(y)
        if const_y and i > 0 and y != init_y:
            const_y = False
        n += 1.0
        x = float(int(t) - int(intercept_ms)) / 1e3
        sx, cx = kahan_sum_inc(x, sx, cx)
        sy, cy = kahan_sum_inc(y, sy, cy)
        sxy, cxy = kahan_sum_inc(x * y, sxy, cxy)
        sx2, cx2 = kahan_sum_inc(x * x, sx2, cx2)
    if const_y:
        if math.isinf(init_y):
            return math.nan, math.nan
        return 0, init_y
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    cov = sxy - sx * sy / n
    var = sx2 - sx * sx / n
    slope = cov / var
    return slope, sy / n - slope * sx / n


def range_bounds(
    t: np.ndarray, evals_ms: np.ndarray, range_ms: int, left_open: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Index bounds ``[lo, hi)`` of ``x[range]`` at each evaluation: ``[t - r, t]`` (2.x), or
    ``(t - r, t]`` with ``left_open`` (3.x)."""
    lo = np.searchsorted(t, evals_ms - range_ms, "right" if left_open else "left")
    hi = np.searchsorted(t, evals_ms, "right")
    return lo, hi


def _kahan_vec(inc: np.ndarray, s: np.ndarray, c: np.ndarray, m: np.ndarray) -> None:
    t = s + inc
    dc = np.where(np.abs(s) >= np.abs(inc), (s - t) + inc, (inc - t) + s)
    np.copyto(c, c + dc, where=m)
    np.copyto(s, t, where=m)


def regressions(
    t: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, intercept_ms: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``linearRegression`` over many windows ``t[lo:hi]`` at once (same floating-point
    operations in the same order as the reference; NaN where a window has < 2 samples)."""
    k = lo.size
    slope = np.full(k, np.nan)
    icpt = np.full(k, np.nan)
    ok = (hi - lo) >= 2
    if not ok.any():
        return slope, icpt
    lo, hi, ic = lo[ok], hi[ok], intercept_ms[ok]
    z = lambda: np.zeros(lo.size)  # noqa: E731
    n, sx, cx, sy, cy, sxy, cxy, sx2, cx2 = (z() for _ in range(9))
    y0 = v[lo]
    const = np.ones(lo.size, bool)
    for j in range(int((hi - lo).max())):
        idx = lo + j
        m = idx < hi
        idx = np.minimum(idx, t.size - 1)
        y = v[idx]
        if j:
            const &= ~(m & (y != y0))
        n += m
        x = (t[idx] - ic).astype(np.float64) / 1e3
        _kahan_vec(x, sx, cx, m)
        _kahan_vec(y, sy, cy, m)
        _kahan_vec(x * y, sxy, cxy, m)
        _kahan_vec(x * x, sx2, cx2, m)
    sx, sy, sxy, sx2 = sx + cx, sy + cy, sxy + cxy, sx2 + cx2
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        var = sx2 - sx * sx / n
        s = cov / var
        b = sy / n - s * sx / n
    s = np.where(const, np.where(np.isinf(y0), np.nan, 0.0), s)
    b = np.where(const, np.where(np.isinf(y0), np.nan, y0), b)
    slope[ok], icpt[ok] = s, b
    return slope, icpt


def deriv(series: Series, evals_ms: np.ndarray, range_ms: int,
          left_open: bool = False) -> np.ndarray:
    """``deriv(x[range])`` at each evaluation (NaN: no result)."""
    lo, hi = range_bounds(series.t, evals_ms, range_ms, left_open)
    first = series.t[np.minimum(lo, max(series.t.size - 1, 0))] if series.t.size else lo
    return regressions(series.t, series.v, lo, hi, first)[0]


def predict_linear(series: Series, evals_ms: np.ndarray, range_ms: int, horizon_s: float,
                   left_open: bool = False) -> np.ndarray:
    """``predict_linear(x[range], horizon_s)`` at each evaluation (NaN: no result)."""
    lo, hi = range_bounds(series.t, evals_ms, range_ms, left_open)
    slope, icpt = regressions(series.t, series.v, lo, hi, evals_ms)
    return slope * horizon_s + icpt


def rate(series: Series, evals_ms: np.ndarray, range_ms: int,
         left_open: bool = False) -> np.ndarray:
    """``rate(x[range])`` (``extrapolatedRate`` with isCounter, isRate) at each evaluation."""
    lo, hi = range_bounds(series.t, evals_ms, range_ms, left_open)
    out = np.full(evals_ms.size, np.nan)
    t, v = series.t, series.v
    for k in np.flatnonzero(hi - lo >= 2).tolist():
        a, b = int(lo[k]), int(hi[k])
        pts = v[a:b].tolist()
        result = pts[-1] - pts[0]
        prev = pts[0]
        for cur in pts[1:]:
            if cur < prev:
                result += prev
            prev = cur
        range_start = int(evals_ms[k]) - range_ms
        range_end = int(evals_ms[k])
        to_start = float(int(t[a]) - range_start) / 1000
        to_end = float(range_end - int(t[b - 1])) / 1000
        sampled = float(int(t[b - 1]) - int(t[a])) / 1000
        avg = sampled / float(b - a - 1)
        if result > 0 and pts[0] >= 0:
            to_zero = sampled * (pts[0] / result)
            if to_zero < to_start:
                to_start = to_zero
        threshold = avg * 1.1
        interval = sampled
        interval += to_start if to_start < threshold else avg / 2
        interval += to_end if to_end < threshold else avg / 2
        factor = interval / sampled
        factor /= range_ms / 1000
        out[k] = result * factor
    return out


def instant(series: Series, evals_ms: np.ndarray, lookback_ms: int = LOOKBACK_MS) -> np.ndarray:
    """An instant selector at each evaluation: the latest sample in ``[t - lookback, t]``."""
    if series.t.size == 0:
        return np.full(evals_ms.size, np.nan)
    idx = np.searchsorted(series.t, evals_ms, "right") - 1
    at = series.t[np.maximum(idx, 0)]
    ok = (idx >= 0) & (at >= evals_ms - lookback_ms)
    return np.where(ok, series.v[np.maximum(idx, 0)], np.nan)


def sum_present(columns: Iterable[np.ndarray]) -> np.ndarray:
    """``sum``: plain addition in series order over the present values; NaN if none."""
    total: np.ndarray | None = None
    for col in columns:
        if total is None:
            total = col.copy()
        else:
            total = np.where(np.isnan(total), col, np.where(np.isnan(col), total, total + col))
    if total is None:
        raise ValueError("sum of no series")
    return total


def recorded(components: Sequence[Series], grid_ms: np.ndarray,
             lookback_ms: int = LOOKBACK_MS) -> Series:
    """A recording rule ``sum(components)`` evaluated at ``grid_ms``: a sample where any
    component is present (also what a ``[range:step]`` subquery evaluates)."""
    total = sum_present(instant(c, grid_ms, lookback_ms) for c in components)
    keep = ~np.isnan(total)
    return Series((), grid_ms[keep], total[keep])


def eval_grid(start_ns: int, end_ns: int, interval_s: float) -> np.ndarray:
    """Evaluation times in ms: absolute multiples of the interval within [start, end]."""
    step = int(round(interval_s * 1000))
    first = -(-(start_ns // MS) // step) * step
    return np.arange(first, end_ns // MS + 1, step, dtype=np.int64)


def alert_episodes(evals_ms: np.ndarray, holds: np.ndarray, for_s: float,
                   interval_s: float) -> list[int]:
    """Firing times (ms) of one series: pending at the first evaluation that holds, firing once
    ``evaluation - active_at >= for``, reset at the first evaluation that does not hold."""
    for_ms = int(round(for_s * 1000))
    out: list[int] = []
    active_at: int | None = None
    fired = False
    for t, on in zip(evals_ms.tolist(), holds.tolist(), strict=True):
        if not on:
            active_at, fired = None, False
            continue
        if active_at is None:
            active_at = t
        if not fired and t - active_at >= for_ms:
            fired = True
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# The rules


@dataclass(frozen=True)
class RuleSettings:
    interval_s: float = 30.0
    warmup_s: float = 900.0
    left_open: bool = False  # True: Prometheus 3.x range selection
    # predict_linear
    pl_range_s: float = 3600.0
    pl_horizon_s: float = 4 * 3600.0
    pl_for_s: float = 1800.0
    # deriv
    deriv_range_s: float = 600.0
    deriv_for_s: float = 600.0
    deriv_factor: float = 1.5
    # gc time
    gc_range_s: float = 300.0
    gc_threshold: float = 0.1
    gc_for_s: float = 300.0


def heap_series(im: InstanceMemory, grid_ms: np.ndarray) -> Series | None:
    """``heap`` as the rules see it: the recording rule's series, or Python's raw series."""
    if not im.heap:
        return None
    if HEAP[im.runtime][3]:
        return recorded(im.heap, grid_ms)
    return im.heap[0]


def limit_at(im: InstanceMemory, evals_ms: np.ndarray) -> np.ndarray:
    if im.limit_const is not None:
        return np.full(evals_ms.size, float(im.limit_const))
    if im.limit is None:
        return np.full(evals_ms.size, np.nan)
    return instant(im.limit, evals_ms)


def _alerts(table: MemoryTable, per_instance: Callable[[InstanceMemory], np.ndarray | None],
            evals_ms: np.ndarray, for_s: float, cfg: RuleSettings) -> Alerts:
    alerts: Alerts = []
    for im in table.instances:
        with np.errstate(invalid="ignore"):
            holds = per_instance(im)
        if holds is None:
            continue
        for at_ms in alert_episodes(evals_ms, holds, for_s, cfg.interval_s):
            alerts.append((im.entity, at_ms * MS))
    return sorted(alerts, key=lambda a: (a[1], a[0]["service"], a[0]["instance"]))


def _rule_evals(table: MemoryTable, cfg: RuleSettings) -> tuple[np.ndarray, np.ndarray]:
    grid = eval_grid(table.start_ns, table.end_ns, cfg.interval_s)
    load_ms = (table.start_ns + int(cfg.warmup_s * NS)) // MS
    return grid, grid[grid >= load_ms]


def predict_linear_alerts(table: MemoryTable, cfg: RuleSettings = RuleSettings()) -> Alerts:
    grid, evals = _rule_evals(table, cfg)

    def holds(im: InstanceMemory) -> np.ndarray | None:
        heap = heap_series(im, grid)
        if heap is None:
            return None
        pl = predict_linear(heap, evals, int(cfg.pl_range_s * 1000), cfg.pl_horizon_s,
                            cfg.left_open)
        return pl > limit_at(im, evals)

    return _alerts(table, holds, evals, cfg.pl_for_s, cfg)


def deriv_thresholds(table: MemoryTable, cfg: RuleSettings = RuleSettings()) -> dict[str, float]:
    """Per runtime: ``deriv_factor`` x the largest full-window ``deriv(heap[range])`` of its
    instances over the warm-up (module docstring)."""
    grid, _ = _rule_evals(table, cfg)
    warm = grid[grid <= (table.start_ns + int(cfg.warmup_s * NS)) // MS]
    rng = int(cfg.deriv_range_s * 1000)
    best: dict[str, float] = {}
    for im in table.instances:
        heap = heap_series(im, grid)
        if heap is None or heap.t.size < 2:
            continue
        evals = warm[warm - rng >= heap.t[0]]
        if evals.size == 0:
            continue
        d = deriv(heap, evals, rng, cfg.left_open)
        d = d[~np.isnan(d)]
        if d.size:
            best[im.runtime] = max(best.get(im.runtime, -math.inf), float(d.max()))
    return {rt: cfg.deriv_factor * v for rt, v in best.items()}


def deriv_alerts(table: MemoryTable, cfg: RuleSettings = RuleSettings(),
                 thresholds: dict[str, float] | None = None) -> Alerts:
    grid, evals = _rule_evals(table, cfg)
    th = deriv_thresholds(table, cfg) if thresholds is None else thresholds

    def holds(im: InstanceMemory) -> np.ndarray | None:
        heap = heap_series(im, grid)
        if heap is None or im.runtime not in th:
            return None
        return deriv(heap, evals, int(cfg.deriv_range_s * 1000), cfg.left_open) > th[im.runtime]

    return _alerts(table, holds, evals, cfg.deriv_for_s, cfg)


def gc_time(im: InstanceMemory, evals_ms: np.ndarray, cfg: RuleSettings) -> np.ndarray | None:
    """``sum by (job, instance) (rate(<gc>_sum[5m]))``: seconds of GC per second."""
    if not im.gc:
        return None
    return sum_present(rate(s, evals_ms, int(cfg.gc_range_s * 1000), cfg.left_open)
                       for s in im.gc)


def gc_time_alerts(table: MemoryTable, cfg: RuleSettings = RuleSettings()) -> Alerts:
    _, evals = _rule_evals(table, cfg)

    def holds(im: InstanceMemory) -> np.ndarray | None:
        g = gc_time(im, evals, cfg)
        return None if g is None else g > cfg.gc_threshold

    return _alerts(table, holds, evals, cfg.gc_for_s, cfg)


# ---------------------------------------------------------------------------------------------
# Registered baselines


def leak_predict_linear(scenario: Scenario) -> tuple[str, Alerts]:
    return LEAK, predict_linear_alerts(memory_table(scenario))


def leak_deriv(scenario: Scenario) -> tuple[str, Alerts]:
    return LEAK, deriv_alerts(memory_table(scenario))


def gc_time_ratio(scenario: Scenario) -> tuple[str, Alerts]:
    return GC, gc_time_alerts(memory_table(scenario))


BUILTIN: dict[str, Callable[[Scenario], tuple[str, Alerts]]] = {
    "predict_linear": leak_predict_linear,
    "deriv": leak_deriv,
    "gc_time": gc_time_ratio,
}
