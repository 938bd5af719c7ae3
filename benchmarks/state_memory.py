"""Memory and changelog-entry size of detector state, per entry. Pure: no Kafka, no worker.

``python -m benchmarks.state_memory [--quick] [--seed 1]``

Measures, with ``tracemalloc``, what the two trace-stage detectors hold per key:

**Open traces** (``TraceAssembler``). Traces of the ``healthy`` scenario (the simulator's keyed
records: one trace per record), each record decoded with ``pipeline.otlp.decode_spans`` and then
sent through the routing wire form (``pipeline.records.encode_spans`` /
``decode_spans_wire``), so the spans, attribute dicts and ``Resource`` objects are built exactly
as the detection stage builds them. N traces are fed without ever advancing the watermark, so
all stay open; every 100 traces a ``snapshot(changed_only=True)`` stands in for the engine's
state flush (it moves trace ids from the dirty set to the persisted set, as in the worker).
``bytes_per_open_trace`` = traced-memory delta (after ``gc.collect()``) / N, for two N, to show
it is linear. Then the watermark is advanced past every trace: what is left is the set of
recently completed trace ids the assembler remembers to count late spans, plus the capacity the
emptied open-trace dict and sets keep (``bytes_per_completed_trace_id`` = that / ids remembered,
from a run whose ids all stay remembered, i.e. spanning less than ``max_age``; at most ``4 *
max_open`` ids are kept). A run with ``max_open``
set below N shows the cap: the open count stays at the cap, and every trace over it is counted
in ``evicted_open``.

**Operations** (``BottleneckDetector``). Synthetic ``TraceSample`` records (shape of
``tests/support/traces.py``) for K distinct (service, operation) keys, four per service (an HTTP
route, a SQL statement, a redis command, a client call, each with its resource-naming
attributes), ``min_samples`` (8) traces per service and 30 s window, window after window until
every operation's baseline ring is full (60 windows, read from the snapshot; a window the
detector judges suspicious is not learnt, so this takes a few more than 60).
``bytes_per_operation`` = delta / K with no window open (the baseline alone). An open window
adds an accumulator per operation: measured at 8 samples and at the reservoir cap (64 rows;
more samples are folded). A run with ``max_operations`` below K shows the cap.

**Tracked series** (``MemoryDetector`` per instance, ``TimeWaitDetector`` per host). The metric
records of the simulator's ``leak`` preset (JVM, Go, Python and Node runtimes; metrics only)
and of the ``timewait`` preset's metrics (hostmetrics and node_exporter connection counts, no
client calls), decoded with ``pipeline.otlp.decode_metrics``, each record fed ``copies`` times
with the instance and host renamed per copy (so K = copies x the preset's series), the
watermark 5 s behind; hours of event time, so the floor history (6 h) and the TIME_WAIT
baseline (60 minutes) fill as in a long-running worker. ``bytes_per_instance`` and
``bytes_per_host`` = traced-memory delta / tracked keys, for two ``copies``.

**Changelog entries.** Each key's snapshot document is serialised as the engine does
(``orjson.dumps``), with its table key (``<partition>/<detector>/<key>``). The engine writes
each changed entry twice per flush (in the flush bundle and under its own key); a bundle chunk
holding one entry is that entry plus ~60 bytes, so an entry must stay well below Kafka's default
1 MB message limit. The largest trace entry is measured for a trace at the ``max_spans`` cap
(1000 spans; 1200 are fed, 200 counted in ``span_cap``), in three layouts: each service's
resource shared by all its spans (the trace came in one record); one resource object per source
record, as the simulator's traces arrive (``as_routed``); and one resource object per span (every
span came in its own message: the worst case, since the document stores each distinct resource
object once). ``max_trace_entry_bytes`` is the worst case.

``tracemalloc`` counts the bytes Python's allocators hand out (object sizes), not pymalloc's
arena overhead or fragmentation, so process RSS per entry is somewhat higher.

The last line of stdout is one JSON object with these figures; the table comes before it.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from pipeline import otlp
from pipeline.detectors.bottleneck import BottleneckDetector
from pipeline.detectors.memory import MemoryDetector
from pipeline.detectors.timewait import TimeWaitDetector
from pipeline.detectors.trace_assembly import TraceAssembler
from pipeline.records import (
    MetricPoint,
    OpTime,
    Resource,
    Span,
    TraceSample,
    decode_spans_wire,
    encode_spans,
)
from pipeline.simulate import build_scenario, iter_records
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START

S = 1_000_000_000
MS = 1_000_000
KAFKA_DEFAULT_MAX_MESSAGE = 1_048_588  # broker message.max.bytes default
PARTITION = 7  # a one-digit partition number in table keys, as in most deployments
FLUSH_EVERY = 100  # traces between stand-in state flushes

#: (trace sizes, trace-cap run (max_open, traces), operations, operation-cap run (cap, ops))
#: series: (event time of the leak preset, of the timewait preset, copies small, large)
FULL = {"traces": (2_000, 20_000), "trace_cap": (2_000, 20_000), "ops": (500, 2_000),
        "op_cap": (1_000, 3_000), "series": ("6h", "2h", 2, 8)}
QUICK = {"traces": (500, 2_000), "trace_cap": (500, 2_000), "ops": (100, 200),
         "op_cap": (100, 300), "series": ("1h", "70m", 1, 3)}


# ---------------------------------------------------------------------------------------------
# Measuring


@contextmanager
def traced() -> Iterator[None]:
    """tracemalloc on for the block (left on if it already was)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def entry_bytes(detector: str, key: str, doc: Any) -> int:
    """Table key + serialised value, as ``PartitionEngine.changes`` writes them."""
    return len(f"{PARTITION}/{detector}/{key}".encode()) + len(orjson.dumps(doc))


# ---------------------------------------------------------------------------------------------
# Open traces


def trace_messages(n: int, seed: int = 1) -> list[bytes]:
    """``n`` traces of the ``healthy`` scenario, each as the routed wire message the detection
    stage receives (one keyed source record holds one whole trace)."""
    duration_s = n / 30 + 60  # ~45 kept traces/s at the preset's 50 requests/s
    scenario = build_scenario("healthy", seed, duration=duration_s, start=DEFAULT_REPLAY_START)
    if scenario.keying != "keyed":
        raise RuntimeError("the healthy preset is expected to key span records by trace id")
    out: list[bytes] = []
    for rec in iter_records(scenario):
        if rec.topic != scenario.spans_topic:
            continue
        limits = otlp.Limits(reference_time_ns=rec.timestamp_ms * 1_000_000)
        spans = otlp.decode_spans(rec.value, scenario.encoding, limits).items
        if spans:
            out.append(encode_spans(spans))
            if len(out) == n:
                return out
    raise RuntimeError(f"the scenario yielded {len(out)} traces, wanted {n}")


def measure_open_traces(messages: list[bytes], max_open: int | None = None) -> dict[str, Any]:
    """Feed every message without advancing the watermark; memory and entries per open trace.

    With ``max_open`` below ``len(messages)`` the oldest traces are completed early (evicted);
    per-trace figures then divide by the open count."""
    cap = max_open if max_open is not None else max(len(messages), 20_000)
    with traced():
        base = traced_now()
        asm = TraceAssembler(max_open=cap)
        spans = 0
        newest = 0
        for i, msg in enumerate(messages, 1):
            items = decode_spans_wire(msg).items
            spans += len(items)
            newest = max(newest, max(s.end_ns for s in items))
            asm.update(items)
            if i % FLUSH_EVERY == 0:
                asm.snapshot(changed_only=True)
                asm.drain()
        asm.snapshot(changed_only=True)
        asm.drain()
        held = traced_now() - base
        st = asm.stats()
        open_spans = sum(len(_doc(doc)["s"]) for k, doc in asm.snapshot().items()
                         if k != "meta")
        sizes = [entry_bytes(asm.name, k, doc) for k, doc in asm.snapshot().items()
                 if k.startswith("t/")]
        result: dict[str, Any] = {
            "traces_fed": len(messages),
            "spans_fed": spans,
            "max_open": cap,
            "open": st.tracked,
            "open_spans": open_spans,
            "evicted_open": st.evicted["evicted_open"],
            "bytes": held,
            "bytes_per_open_trace": held / st.tracked,
            "bytes_per_open_span": held / open_spans,
            "entry_bytes_mean": sum(sizes) / len(sizes),
            "entry_bytes_max": max(sizes),
        }
        if max_open is None:
            # Complete every trace (root + quiet period passed): what remains is the memory of
            # recently completed ids kept to count late spans.
            asm.advance(newest + asm.quiet_ns + S)
            asm.drain()
            asm.snapshot(changed_only=True)
            remembered = len(asm._closed)  # no public count; read for the division only
            left = traced_now() - base
            result["completed_ids"] = remembered
            result["bytes_after_completion"] = left
            result["bytes_per_completed_trace_id"] = left / remembered if remembered else None
    return result


def trace_at_span_cap(messages: list[bytes], max_spans: int = 1_000) -> dict[str, Any]:
    """One trace of ``max_spans * 1.2`` simulated spans (relabelled into one trace id), at the
    cap: its changelog entry in the three resource layouts (see the module doc)."""
    want = max_spans + max_spans // 5
    routed: list[Span] = []
    for msg in messages:
        routed.extend(decode_spans_wire(msg).items)
        if len(routed) >= want:
            break
    if len(routed) < want:
        raise RuntimeError(f"need {want} spans, got {len(routed)}")
    routed = routed[:want]
    tid = routed[0].trace_id
    canonical: dict[tuple[str, str, str, str], Resource] = {}
    layouts: dict[str, list[Span]] = {
        "shared_resources": [
            _with(s, tid, canonical.setdefault(
                (s.resource.service, s.resource.instance, s.resource.host, s.resource.pod),
                s.resource))
            for s in routed
        ],
        "as_routed": [_with(s, tid, s.resource) for s in routed],
        "resource_per_span": [
            _with(s, tid, Resource.from_wire(orjson.loads(orjson.dumps(s.resource.to_wire()))))
            for s in routed
        ],
    }
    out: dict[str, Any] = {"spans_fed": want, "max_spans": max_spans}
    for name, spans in layouts.items():
        asm = TraceAssembler(max_spans=max_spans)
        asm.update(spans)
        doc = _doc(asm.snapshot()[f"t/{tid}"])
        out[name] = {
            "spans_kept": len(doc["s"]),
            "span_cap_counted": asm.stats().evicted["span_cap"],
            "resources_in_entry": len(doc["r"]),
            "entry_bytes": entry_bytes(asm.name, f"t/{tid}", doc),
        }
    return out


def _doc(doc: dict[str, Any]) -> dict[str, Any]:
    """A state entry as a restore reads it (rows kept encoded are read back)."""
    return orjson.loads(orjson.dumps(doc))


def _with(s: Span, trace_id: str, resource: Resource) -> Span:
    return Span(trace_id, s.span_id, s.parent_id, s.name, s.kind, s.start_ns, s.end_ns, s.status,
                dict(s.attrs), resource)


# ---------------------------------------------------------------------------------------------
# Operations

T0 = 1_767_600_000 * S
WINDOW_S = 30


#: One service's operations: (span name, detail, resource-naming attributes), as
#: ``trace_assembly.operation_of`` / ``naming_attrs`` derive them.
SERVICE_OPS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("GET", "/api/v1/orders/{order_id}/items", {"http.route": "/api/v1/orders/{order_id}/items"}),
    ("SELECT orders", "", {"db.system": "postgresql", "db.name": "orders",
                           "db.operation": "SELECT", "server.address": "orders-db"}),
    ("HGET", "redis", {"db.system": "redis", "db.operation": "HGET", "server.address": "redis"}),
    ("POST /v2/charge", "", {"peer.service": "payments", "server.address": "payments.internal"}),
)


def operations(k: int) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``k`` distinct (service, operation, detail, attrs): services of four operations each."""
    n = len(SERVICE_OPS)
    return [(f"service-{i // n:04d}", *SERVICE_OPS[i % n]) for i in range(k)]


def samples_for_window(
    ops: list[tuple[str, str, str, dict[str, Any]]], w: int, per_service: int, rng: random.Random
) -> list[TraceSample]:
    """``per_service`` trace samples per service in window ``w``, each with all the service's
    operations (log-normal critical-path times around 2-8 ms)."""
    by_service: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for svc, op, detail, attrs in ops:
        by_service.setdefault(svc, []).append((op, detail, attrs))
    out = []
    w0 = T0 + w * WINDOW_S * S
    for n in range(per_service):
        for svc, svc_ops in by_service.items():
            cps = [int((2 + 2 * j) * MS * rng.lognormvariate(0, 0.25))
                   for j in range(len(svc_ops))]
            times = [OpTime(op, detail, cp, cp, 1, attrs)
                     for cp, (op, detail, attrs) in zip(cps, svc_ops, strict=True)]
            total = sum(t.cp_ns for t in times) + 5 * MS
            top = max(times, key=lambda t: t.cp_ns)
            end = w0 + int((n + 0.5) * WINDOW_S * S / per_service)
            out.append(TraceSample(f"{rng.getrandbits(128):032x}", svc, end, total,
                                   f"{svc}|{top.operation}|{top.detail}", times))
    return out


def measure_operations(k: int, seed: int = 1, max_operations: int | None = None
                       ) -> dict[str, Any]:
    """Fill ``k`` operations' baselines (windows of ``min_samples`` traces each, until every
    ring holds ``baseline_windows``), then open one more window up to the reservoir cap and
    beyond; memory and entries."""
    rng = random.Random(seed)
    ops = operations(k)
    cap = max_operations if max_operations is not None else max(k, 5_000)
    with traced():
        base = traced_now()
        det = BottleneckDetector(max_operations=cap)
        w = 0
        while True:
            det.update(samples_for_window(ops, w, det.min_samples, rng))
            det.advance(T0 + (w + 1) * WINDOW_S * S)  # closes window w
            det.snapshot(changed_only=True)
            w += 1
            # A window judged suspicious is not learnt: go on until every ring is full.
            if w >= det.baseline_windows and (
                min(_rings(det)) >= det.baseline_windows or w >= 3 * det.baseline_windows
            ):
                break
        windows = w
        held = traced_now() - base
        st = det.stats()
        full = det.snapshot()
        rings = _rings(det)
        op_sizes = [entry_bytes(det.name, key, doc) for key, doc in full.items()
                    if key.startswith("o/")]
        result: dict[str, Any] = {
            "operations_fed": k,
            "max_operations": cap,
            "tracked": st.tracked,
            "evicted_operations": st.evicted["evicted_operations"],
            "windows": windows,
            "baseline_windows_min": min(rings) if rings else 0,
            "bytes": held,
            "bytes_per_operation": held / st.tracked,
            "op_entry_bytes_mean": sum(op_sizes) / len(op_sizes),
            "op_entry_bytes_max": max(op_sizes),
        }
        # One more window, left open: an accumulator per operation, at 8 samples, then at the
        # reservoir cap (and beyond it: folded, no more rows).
        acc: dict[str, Any] = {}
        for label, n in (("8", det.min_samples), ("reservoir", det.reservoir - det.min_samples),
                         ("folded", det.reservoir)):
            det.update(samples_for_window(ops, w, n, rng))
            det.snapshot(changed_only=True)
            acc[label] = (traced_now() - base - held) / st.tracked
        acc_sizes = [entry_bytes(det.name, key, doc) for key, doc in det.snapshot().items()
                     if key.startswith("w/")]
        result.update({
            "bytes_per_operation_window_8_samples": acc["8"],
            "bytes_per_operation_window_reservoir": acc["reservoir"],
            "bytes_per_operation_window_folded": acc["folded"],
            "samples_folded": det.stats().evicted["samples_folded"],
            "window_entry_bytes_max": max(acc_sizes),
        })
    return result


# ---------------------------------------------------------------------------------------------
# Tracked series


def metric_batches(preset: str, duration: str, seed: int = 1) -> list[list[MetricPoint]]:
    """The preset's metric records, decoded (one list of points per record)."""
    sc = build_scenario(preset, seed, duration=duration, emit_spans=False,
                        start=DEFAULT_REPLAY_START)
    return [otlp.decode_metrics(r.value).items for r in iter_records(sc)
            if r.topic == sc.metrics_topic]


def measure_series(make: Any, batches: list[list[MetricPoint]], copies: int
                   ) -> dict[str, Any]:
    """Feed ``batches`` ``copies`` times (instance and host renamed per copy), the watermark
    5 s behind the newest point; the detector's memory per tracked key, and its entries."""
    renamed: dict[tuple[int, int], Resource] = {}

    def copy(p: MetricPoint, i: int) -> MetricPoint:
        key = (id(p.resource), i)
        r = renamed.get(key)
        if r is None:
            o = p.resource
            r = renamed[key] = Resource(o.service, f"{o.instance}#{i}", f"{o.host}#{i}",
                                        o.pod, o.attrs)
        return dataclasses.replace(p, resource=r)

    with traced():
        base = traced_now()
        det = make()
        newest = 0
        for n, batch in enumerate(batches):
            for i in range(copies):
                det.update([copy(p, i) for p in batch])
            newest = max(newest, max((p.time_ns for p in batch), default=0))
            det.advance(newest - 5 * S)
            if n % FLUSH_EVERY == 0:
                det.snapshot(changed_only=True)
        det.snapshot(changed_only=True)
        renamed.clear()
        held = traced_now() - base
        st = det.stats()
        sizes = sorted(entry_bytes(det.name, k, doc) for k, doc in det.snapshot().items())
    return {"copies": copies, "points_fed": copies * sum(map(len, batches)),
            "tracked": st.tracked, "bytes": held,
            "bytes_per_key": held / max(st.tracked, 1),
            "entry_bytes_max": sizes[-1] if sizes else 0}


def _rings(det: BottleneckDetector) -> list[int]:
    """Baseline windows held per operation (from the snapshot: no public count)."""
    return [len(doc["p50"]) for key, doc in det.snapshot().items() if key.startswith("o/")]


def operation_cap(cap: int, k: int, seed: int = 1) -> dict[str, Any]:
    """``k`` operations into a detector capped at ``cap``: tracked and evictions (no memory)."""
    det = BottleneckDetector(max_operations=cap)
    det.update(samples_for_window(operations(k), 0, 1, random.Random(seed)))
    det.advance(T0 + WINDOW_S * S)
    st = det.stats()
    return {"operations_fed": k, "max_operations": cap, "tracked": st.tracked,
            "evicted_operations": st.evicted["evicted_operations"]}


# ---------------------------------------------------------------------------------------------
# The run


def measure(quick: bool = True, seed: int = 1, sizes: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Every measurement; ``sizes`` overrides ``QUICK`` / ``FULL`` (keys as there)."""
    sz = dict(QUICK if quick else FULL) | (sizes or {})
    t0 = time.perf_counter()
    n_msgs = max(*sz["traces"], sz["trace_cap"][1])
    messages = trace_messages(n_msgs, seed)
    traces = [measure_open_traces(messages[:n]) for n in sz["traces"]]
    capped = measure_open_traces(messages[: sz["trace_cap"][1]], max_open=sz["trace_cap"][0])
    big = trace_at_span_cap(messages)
    ops = [measure_operations(k, seed) for k in sz["ops"]]
    ops_cap = operation_cap(*sz["op_cap"], seed=seed)
    leak_for, tw_for, *copies = sz["series"]
    leak, tw = metric_batches("leak", leak_for, seed), metric_batches("timewait", tw_for, seed)
    instances = [measure_series(MemoryDetector, leak, c) for c in copies]
    hosts = [measure_series(TimeWaitDetector, tw, c) for c in copies]
    del leak, tw
    largest_trace, largest_ops = traces[-1], ops[-1]
    # Completed ids: from a run whose ids all stayed remembered (its event time spans less than
    # max_age), so the leftover capacity of the emptied containers is spread over all of them.
    whole = next((t for t in traces if t["completed_ids"] == t["traces_fed"]), traces[0])
    worst = max(big[k]["entry_bytes"] for k in ("shared_resources", "as_routed",
                                                "resource_per_span"))
    defaults = TraceAssembler(), BottleneckDetector()
    return {
        "bytes_per_open_trace": round(largest_trace["bytes_per_open_trace"], 1),
        "bytes_per_operation": round(largest_ops["bytes_per_operation"], 1),
        "max_trace_entry_bytes": worst,
        "bytes_per_instance": round(instances[-1]["bytes_per_key"], 1),
        "bytes_per_host": round(hosts[-1]["bytes_per_key"], 1),
        "series_event_time": {"leak": leak_for, "timewait": tw_for},
        "instances": [_round(x) for x in instances],
        "hosts": [_round(x) for x in hosts],
        "bytes_per_open_span": round(largest_trace["bytes_per_open_span"], 1),
        "bytes_per_completed_trace_id": _r(whole["bytes_per_completed_trace_id"]),
        "bytes_per_operation_window": round(largest_ops["bytes_per_operation_window_reservoir"],
                                            1),
        "trace_entry_bytes_mean": round(largest_trace["entry_bytes_mean"], 1),
        "trace_entry_bytes_max_simulated": largest_trace["entry_bytes_max"],
        "op_entry_bytes_max": largest_ops["op_entry_bytes_max"],
        "window_entry_bytes_max": largest_ops["window_entry_bytes_max"],
        "kafka_max_message_bytes": KAFKA_DEFAULT_MAX_MESSAGE,
        # Per-partition bounds at the default caps, computed from the per-entry figures.
        "default_max_open": defaults[0].max_open,
        "default_max_operations": defaults[1].max_operations,
        "open_traces_mb_at_default_cap": round(
            defaults[0].max_open * largest_trace["bytes_per_open_trace"] / 1e6, 1),
        "completed_ids_mb_at_default_cap": round(
            4 * defaults[0].max_open * (whole["bytes_per_completed_trace_id"] or 0) / 1e6,
            1),
        "operations_mb_at_default_cap": round(
            defaults[1].max_operations * largest_ops["bytes_per_operation"] / 1e6, 1),
        "traces": [_round(t) for t in traces],
        "trace_cap": _round(capped),
        "trace_at_span_cap": big,
        "operations": [_round(o) for o in ops],
        "operation_cap": ops_cap,
        "linear_trace_ratio": round(traces[-1]["bytes_per_open_trace"]
                                    / traces[0]["bytes_per_open_trace"], 3),
        "linear_operation_ratio": round(ops[-1]["bytes_per_operation"]
                                        / ops[0]["bytes_per_operation"], 3),
        "seed": seed,
        "quick": quick,
        "python": sys.version.split()[0],
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in d.items()}


def table(r: dict[str, Any]) -> str:
    lines = [
        f"State memory (tracemalloc, Python {r['python']}, seed {r['seed']}"
        f"{', quick' if r['quick'] else ''}): healthy-scenario traces, synthetic trace samples",
        "",
        "  TraceAssembler, watermark held (every trace open)",
        f"  {'traces':>8s} {'spans':>9s} {'open':>8s} {'evicted':>8s} {'MB held':>9s} "
        f"{'B/trace':>9s} {'B/span':>8s} {'entry B mean':>13s} {'max':>7s}",
    ]
    for t in [*r["traces"], r["trace_cap"]]:
        cap = f"   (max_open {t['max_open']:,})" if t["evicted_open"] else ""
        lines.append(
            f"  {t['traces_fed']:>8,} {t['spans_fed']:>9,} {t['open']:>8,} "
            f"{t['evicted_open']:>8,} {t['bytes'] / 1e6:>9.2f} {t['bytes_per_open_trace']:>9,.0f} "
            f"{t['bytes_per_open_span']:>8,.0f} {t['entry_bytes_mean']:>13,.0f} "
            f"{t['entry_bytes_max']:>7,}{cap}"
        )
    whole = next((t for t in r["traces"] if t["completed_ids"] == t["traces_fed"]),
                 r["traces"][0])
    lines += [
        f"  per-trace ratio, largest/smallest N: {r['linear_trace_ratio']:.3f} (1.0 = linear)",
        f"  after completing all {whole['traces_fed']:,}: {whole['completed_ids']:,} completed "
        f"ids remembered, {r['bytes_per_completed_trace_id'] or 0:,.0f} B each, emptied "
        "containers' capacity included (at most 4 x max_open ids)",
        "",
        f"  one trace at the span cap ({r['trace_at_span_cap']['spans_fed']:,} spans fed, "
        f"max_spans {r['trace_at_span_cap']['max_spans']:,}):",
    ]
    for layout in ("shared_resources", "as_routed", "resource_per_span"):
        b = r["trace_at_span_cap"][layout]
        lines.append(
            f"    {layout:18s} kept {b['spans_kept']:,}, span_cap {b['span_cap_counted']}, "
            f"{b['resources_in_entry']:>5,} resources, entry {b['entry_bytes']:>9,} B "
            f"({b['entry_bytes'] / KAFKA_DEFAULT_MAX_MESSAGE:.0%} of 1 MB)"
        )
    lines += [
        "",
        f"  BottleneckDetector, baseline rings full "
        f"({min(o['baseline_windows_min'] for o in r['operations'])} windows), no window open; "
        "then one window open (8 samples, 64 = reservoir cap, 128 = folded)",
        f"  {'ops':>8s} {'tracked':>8s} {'evicted':>8s} {'MB held':>9s} {'B/op':>9s} "
        f"{'+window 8':>10s} {'+64':>9s} {'+128':>8s} {'o/ entry':>9s} {'w/ entry':>9s}",
    ]
    for o in r["operations"]:
        lines.append(
            f"  {o['operations_fed']:>8,} {o['tracked']:>8,} {o['evicted_operations']:>8,} "
            f"{o['bytes'] / 1e6:>9.2f} {o['bytes_per_operation']:>9,.0f} "
            f"{o['bytes_per_operation_window_8_samples']:>10,.0f} "
            f"{o['bytes_per_operation_window_reservoir']:>9,.0f} "
            f"{o['bytes_per_operation_window_folded']:>8,.0f} {o['op_entry_bytes_max']:>9,} "
            f"{o['window_entry_bytes_max']:>9,}"
        )
    oc = r["operation_cap"]
    lines += [
        f"  per-op ratio, largest/smallest K: {r['linear_operation_ratio']:.3f}; windows run: "
        + ", ".join(str(o["windows"]) for o in r["operations"]),
        f"  cap: {oc['operations_fed']:,} ops into max_operations {oc['max_operations']:,} -> "
        f"tracked {oc['tracked']:,}, evicted_operations {oc['evicted_operations']:,}",
        "",
        f"  Tracked series: leak preset ({r['series_event_time']['leak']}) into "
        f"MemoryDetector, timewait preset ({r['series_event_time']['timewait']}) into "
        "TimeWaitDetector, each series copied",
        f"  {'detector':>16s} {'copies':>7s} {'points':>10s} {'tracked':>8s} {'MB held':>9s} "
        f"{'B/key':>9s} {'entry max':>10s}",
        *[f"  {name:>16s} {x['copies']:>7,} {x['points_fed']:>10,} {x['tracked']:>8,} "
          f"{x['bytes'] / 1e6:>9.2f} {x['bytes_per_key']:>9,.0f} {x['entry_bytes_max']:>10,}"
          for name, xs in (("memory/instance", r["instances"]), ("timewait/host", r["hosts"]))
          for x in xs],
        "",
        f"  at the default caps, per partition (computed): {r['default_max_open']:,} open traces "
        f"{r['open_traces_mb_at_default_cap']} MB + {4 * r['default_max_open']:,} completed ids "
        f"{r['completed_ids_mb_at_default_cap']} MB; {r['default_max_operations']:,} operations "
        f"{r['operations_mb_at_default_cap']} MB (+ open windows' accumulators)",
        f"  whole run {r['wall_s']:.1f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.state_memory", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true",
                        help="CI size: 500 and 2,000 traces, 100 and 200 operations")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result = measure(quick=args.quick, seed=args.seed)
    print(table(result))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
