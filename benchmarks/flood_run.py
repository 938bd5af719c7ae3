"""A flood against a real worker: its RSS over time and the span stream's longest stall.

``python -m benchmarks.flood_run --flood instances --n 100000 [--root DIR]``

Writes, to fresh topics, one flood of ``benchmarks.floods`` merged in event-time order with
the memory-leak canary, then starts one ``python -m pipeline worker`` on that backlog
(``--root``: the checkout to run it from, e.g. an export of an older commit, for a
before/after) while a healthy span stream is written live, a record a second. Every
``--every`` seconds it samples the worker's resident memory and the spans and metric points
detected; it stops when the flood has been read (and its spans detected) and the metric
points detected have not moved for ``--settle`` seconds (or at ``--timeout``). Prints a
table and, last, one JSON line: peak RSS, the RSS slope over the last minute (after the
flood: does it plateau), the longest time the live span stream went without progress, how far
behind it fell (the age of its oldest record not yet applied; not for span floods, whose
spans count with the live ones), and whether the canary leak was found.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks import floods
from benchmarks.harness import (
    METRIC_CONSUMED,
    METRIC_DETECTED,
    ROOT,
    RunNames,
    bootstrap_servers,
    cleanup_logged,
    client_kwargs,
    create_input_topics,
    free_port,
    log,
    read_topic,
    scrape,
)
from pipeline.simulate import SimRecord
from pipeline.simulate.writer import write_records


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (y per x) of ``points``; 0 with fewer than two."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else 0.0


def records(flood: str, n: int, canary_s: float) -> list[floods.FloodRecord]:
    """The flood and the canary leak, in timestamp order."""
    parts = [floods.FLOODS[flood](n)]
    if canary_s > 0:
        parts.append(floods.canary(duration_s=canary_s))
    return list(heapq.merge(*parts, key=lambda r: r[2]))


async def produce(recs: list[floods.FloodRecord], names: RunNames, bootstrap: str) -> None:
    sims = (SimRecord(names.topic(sig), None, value, ts) for sig, value, ts in recs)
    stats = await write_records(sims, {**client_kwargs(bootstrap),
                                       "max_request_size": 10 * 1024 * 1024},
                                mode="replay", spans_topic=names.spans, progress=log)
    if stats.failed:
        raise RuntimeError(f"{stats.failed} records not written ({stats.first_error})")


LIVE_SPANS = 20  # spans per live record: ten two-span traces (``floods.canary_steady``)


class LiveSpans(threading.Thread):
    """A healthy span stream written live, one record a second stamped with the wall clock
    (``canary_steady``), for as long as the run lasts: the stream watched for stalls."""

    def __init__(self, topic: str, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.topic, self.bootstrap = topic, bootstrap
        self.stop = threading.Event()
        self.sent = 0
        self.written: list[float] = []  # when each record was acknowledged (monotonic)

    def run(self) -> None:
        asyncio.run(self._run())

    def lag_s(self, detected: float, now: float) -> float:
        """How long the oldest live record not yet applied has waited (0 if none waits): how
        far the span stream is behind. Each record is ``LIVE_SPANS`` spans."""
        applied = int(detected // LIVE_SPANS)
        written = self.written[:]  # (appended to by the writer thread)
        return now - written[applied] if applied < len(written) else 0.0

    async def _run(self) -> None:
        producer = AIOKafkaProducer(**client_kwargs(self.bootstrap), linger_ms=5)
        await producer.start()
        try:
            while not self.stop.is_set():
                now = time.time_ns()
                for _, value, ts in floods.canary_steady(start_ns=now - 10**9, duration_s=1,
                                                         first=10 * self.sent):
                    await producer.send_and_wait(self.topic, value, timestamp_ms=ts)
                    self.written.append(time.monotonic())
                    self.sent += 1
                await asyncio.sleep(max(0.0, 1 - (time.time_ns() - now) / 1e9))
        finally:
            await producer.stop()


def run(args: argparse.Namespace) -> dict[str, object]:
    bootstrap = bootstrap_servers()
    names = RunNames.fresh("flood")
    recs = records(args.flood, args.n, args.canary_s)
    counts = {s: sum(1 for r in recs if r[0] == s) for s in ("spans", "metrics")}
    signal = recs[0][0] if args.canary_s <= 0 else max(counts, key=lambda s: counts[s])
    # a span flood is done once its spans are detected (the live ones come on top)
    flood_spans = sum(len(ss.spans) for sig, value, _ in recs if sig == "spans"
                      for rs in ExportTraceServiceRequest.FromString(value).resource_spans
                      for ss in rs.scope_spans)
    log(f"flood_run: {args.flood} n={args.n}: {len(recs):,} records {counts}")

    async def setup(recs: list[floods.FloodRecord]) -> None:
        await create_input_topics(bootstrap, names, args.input_partitions,
                                  max_message_bytes=10 * 1024 * 1024)
        await produce(recs, names, bootstrap)

    asyncio.run(setup(recs))
    del recs
    root = Path(args.root).resolve() if args.root else ROOT
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="flood-state-")
    env = {**os.environ, **names.worker_env(), "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "PIPELINE_DATA_DIR": data_dir, "METRICS_PORT": str(port),
           "METRICS_HOST": "127.0.0.1", "PYTHONPATH": str(root)}
    log_path = Path(args.log or f"/tmp/{names.tag}.log")
    series: list[dict[str, float]] = []
    found = False
    live = LiveSpans(names.spans, bootstrap)
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "worker"], cwd=root,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
        live.start()
        t0 = time.monotonic()
        last_move, last_key = t0, None
        try:
            while proc.poll() is None and time.monotonic() - t0 < args.timeout:
                time.sleep(args.every)
                now = time.monotonic() - t0
                s = scrape(port)
                row = {"t": now, "rss_mb": _rss_mb(proc.pid), "spans": -1.0, "metrics": -1.0,
                       "consumed": -1.0}
                if s is not None:
                    row["spans"] = s.get_value(METRIC_DETECTED, signal="spans")
                    if not flood_spans:  # then every span detected is a live one
                        row["span_lag_s"] = live.lag_s(row["spans"], time.monotonic())
                    row["metrics"] = s.get_value(METRIC_DETECTED, signal="metrics")
                    # the flood's own topic (the live spans add to the spans topic's count)
                    row["consumed"] = s.get_value(METRIC_CONSUMED, topic=names.topic(signal))
                series.append(row)
                key = (row["metrics"], row["consumed"] >= counts[signal]
                       and row["spans"] >= flood_spans)
                if key != last_key:  # the metrics detected, and the flood read to its end
                    last_key, last_move = key, time.monotonic()
                elif key[1] and time.monotonic() - last_move > args.settle:
                    break
        finally:
            live.stop.set()
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            live.join(timeout=10)
    try:
        findings = asyncio.run(read_topic(bootstrap, names.findings, timeout_s=20))
        for rec in findings:
            doc = json.loads(rec.value) if rec.value else {}
            if doc.get("kind") == "memory_leak" and doc.get("entity", {}).get(
                    "service") == "canary":
                found = True
    finally:
        asyncio.run(cleanup_logged(bootstrap, names.tag))
    rss = [(r["t"], r["rss_mb"]) for r in series if r["rss_mb"] > 0]
    # the live span stream's longest stall, from its first progress on
    moves = [r["t"] for i, r in enumerate(series)
             if r["spans"] > 0 and (i == 0 or r["spans"] != series[i - 1]["spans"])]
    moves.append(series[-1]["t"] if series else 0.0)
    stall = max((b - a for a, b in zip(moves, moves[1:], strict=False)), default=0.0)
    busy = [r["t"] for r in series if r["consumed"] < counts[signal]]
    done_t = max(busy, default=0.0)
    last_min = [p for p in rss if p[0] >= rss[-1][0] - 60] if rss else []
    for r in series[:: max(1, len(series) // 25)]:
        print(f"{r['t']:7.1f} s  rss {r['rss_mb']:7.1f} MB  spans {r['spans']:>9.0f}  "
              f"metrics {r['metrics']:>10.0f}  consumed {r['consumed']:>7.0f}  "
              f"span lag {r.get('span_lag_s', float('nan')):5.1f} s")
    return {
        "flood": args.flood, "n": args.n, "root": str(root), "records": counts,
        "seconds": round(series[-1]["t"], 1) if series else 0,
        "flood_read_s": round(done_t, 1),
        "peak_rss_mb": round(max((p[1] for p in rss), default=0.0), 1),
        "end_rss_mb": round(rss[-1][1], 1) if rss else 0,
        "rss_slope_mb_per_min_last_60s": round(60 * _slope(last_min), 2),
        "max_span_stall_s": round(stall, 1),
        # (the stall alone hid a stream applied at half its rate: 5 s stalls, 33 s behind)
        "max_span_lag_s": (round(max(lags), 1) if (lags := [r["span_lag_s"] for r in series
                                                           if "span_lag_s" in r]) else None),
        "live_span_records": live.sent,
        "canary_found": found, "log": str(log_path),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flood", choices=sorted(floods.FLOODS), required=True)
    ap.add_argument("--n", type=int, default=0, help="flood size (default: the full size)")
    ap.add_argument("--canary-s", type=float, default=1800.0)
    ap.add_argument("--input-partitions", type=int, default=4)
    ap.add_argument("--root", default="", help="checkout to run the worker from")
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--settle", type=float, default=100.0)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--log", default="")
    args = ap.parse_args()
    args.n = args.n or floods.FULL_SIZES[args.flood]
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
