"""Capture the detector state a release writes, as the table holds it, for upgrade tests.

Run once per release whose state later releases must restore:

    python -m tests.support.state_v1_capture tests/golden/state/<name>.json.gz

It replays the first minutes of the ``demo`` scenario (at a lower rate, to keep the file small)
through in-process ``PartitionEngine``s wired like the worker (spans by trace id, trace samples
by service, metric points by emitter or host, client calls as a side input), applies every
``changes()`` write to a dict as the changelog-backed table would, and writes the table.

This file is the capture script of the first (unversioned) state format: it uses that release's
engine API and is kept as it ran.
"""

from __future__ import annotations

import gzip
import sys
from collections import defaultdict
from typing import Any

import orjson

from pipeline import otlp, records
from pipeline.detectors import BUILTIN
from pipeline.engine import PartitionEngine
from pipeline.settings import Settings
from pipeline.simulate import build_scenario, iter_records

PARTITIONS = 2
CAPTURE_MIN = 13.0


def capture(until_min: float = CAPTURE_MIN) -> dict[str, Any]:
    s = Settings()
    sc = build_scenario("demo", seed=1, rate=10.0, duration="20m")
    stop_ns = sc.start_ns + int(until_min * 60e9)
    engines: dict[str, dict[int, PartitionEngine]] = {}
    for signal in ("spans", "metrics", "traces"):
        classes = [c for c in BUILTIN if c.signal == signal]
        engines[signal] = {
            p: PartitionEngine(p, [c.from_settings(s) for c in classes],
                               int(s.allowed_lateness_s * 1e9), expected_sources=1)
            for p in range(PARTITIONS)
        }
    table: dict[str, dict[str, bytes]] = {sig: {} for sig in engines}
    offsets = defaultdict(int)  # routed offsets per (signal, partition)
    findings: list[dict[str, Any]] = []

    def deliver(signal: str, p: int, items: list[Any], source: Any, wm: int | None,
                side: bool = False) -> None:
        offsets[(signal, p)] += 1
        e = engines[signal][p]
        for f in e.process(items, offsets[(signal, p)], source, wm, side):
            findings.append({"kind": f.kind, "status": f.status, "id": f.id})
        for sig, dest, derived, seq in e.drain_outbox(partitioner):
            src = (f"{signal}-routed", p, seq)
            if sig == "traces":
                deliver("traces", dest, derived, src, e.output_watermark_ns(sig))
            else:
                deliver("metrics", dest, derived, src, None, side=True)

    def partitioner(signal: str, item: Any) -> int:
        if signal == "metrics":
            return records.calls_partition(item, PARTITIONS)
        return records.sample_partition(item, PARTITIONS)

    n = 0
    for i, rec in enumerate(iter_records(sc)):
        if rec.timestamp_ms * 1_000_000 > stop_ns:
            break
        spans = rec.topic == sc.spans_topic
        decoded = (otlp.decode_spans if spans else otlp.decode_metrics)(rec.value)
        signal = "spans" if spans else "metrics"
        part = records.span_partition if spans else records.point_partition
        groups: dict[int, list[Any]] = defaultdict(list)
        for item in decoded.items:
            groups[part(item, PARTITIONS)].append(item)
        for p, items in sorted(groups.items()):
            deliver(signal, p, items, (sc.spans_topic if spans else sc.metrics_topic, 0, i),
                    None)
        n += 1
        if n % 50 == 0:
            for sig, by_p in engines.items():
                for e in by_p.values():
                    for k, v in e.changes():
                        if v is None:
                            table[sig].pop(k, None)
                        else:
                            table[sig][k] = v
    for sig, by_p in engines.items():
        for e in by_p.values():
            for k, v in e.changes():
                if v is None:
                    table[sig].pop(k, None)
                else:
                    table[sig][k] = v
    return {
        "about": "state of the first (unversioned) release, commit 687beee, demo scenario at "
                 f"rate 10 for {until_min} min, {PARTITIONS} partitions per stream",
        "partitions": PARTITIONS,
        "scenario": {"name": "demo", "seed": 1, "rate": 10.0, "duration": "20m",
                     "until_min": until_min},
        "findings": findings,
        "tables": {sig: {k: v.decode() for k, v in sorted(t.items())}
                   for sig, t in table.items()},
    }


def main(path: str) -> None:
    doc = capture()
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(orjson.dumps(doc))
    sizes = {sig: len(t) for sig, t in doc["tables"].items()}
    print(f"wrote {path}: {sizes} entries, {len(doc['findings'])} findings", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
