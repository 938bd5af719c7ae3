"""Scale-out: the same backlog read by one worker, then by two workers of one application.

``python -m benchmarks.scaling [--duration 10m] [--keying keyed|unkeyed] [--partitions 8]
[--poll 0.5]``

One scenario (``healthy``, seeded) is replayed into fresh input topics once. Then, for 1 and 2
workers in turn, a fresh application id (its own consumer groups, routed topics and state)
reads it all: the workers are started together, and the run is timed from the first poll at
which any worker has consumed a record to the first poll at which the workers together have
applied every span and metric point and every trace sample derived from them (polls every
``--poll`` seconds; counts of items applied twice after a rebalance, before a flush, would make
the sum reach the total early: the detection stage skips what it has applied, but a partition
handed over before its flush is applied again by its new owner).

Reported per run: wall seconds, the workers' CPU seconds over that interval (user + system),
items per second and per CPU-second; and ``speedup`` = one worker's wall time / two workers'.
On this machine (2 cores, the broker on the same cores) two workers cannot reach 2x: the
figure says how much of the second core the second worker gets. The last line of stdout is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from benchmarks import harness
from benchmarks.harness import SIGNALS, RunNames, log
from pipeline.simulate import build_scenario
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START

CACHE = harness.ROOT / ".cache" / "bench" / "scaling"


async def timed_run(bootstrap: str, names: RunNames, n: int, produced: harness.Produced,
                    poll_s: float, timeout_s: float) -> dict[str, Any]:
    env = names.worker_env(f"scale{n}")
    workers = [harness.Worker(env, bootstrap, CACHE / f"worker-{n}-{i}.log").start()
               for i in range(n)]
    total = sum(produced.items[s] for s in SIGNALS)
    first: float | None = None
    cpu0: float = 0.0
    try:
        deadline = time.perf_counter() + timeout_s
        while True:
            await asyncio.sleep(poll_s)
            now = time.perf_counter()
            for w in workers:
                if not w.alive():
                    raise harness.BenchError(f"a worker exited; log tail:\n{w.log_tail()}")
            scrapes = [w.scrape() for w in workers]
            if any(s is None for s in scrapes):
                continue
            consumed = sum(s.get_value(harness.METRIC_CONSUMED, topic=names.topic(sig))
                           for s in scrapes for sig in SIGNALS)
            if first is None and consumed > 0:
                first = now
                cpu0 = sum(w.cpu_seconds() or 0.0 for w in workers)
            applied = sum(s.get_value(harness.METRIC_DETECTED, signal=sig)
                          for s in scrapes for sig in SIGNALS)
            derived = sum(s.get_value("anomaly_pipeline_items_derived_total", signal="traces")
                          for s in scrapes)
            samples = sum(s.get_value(harness.METRIC_DETECTED, signal="traces") for s in scrapes)
            if first is not None and applied >= total and samples >= derived:
                cpu = sum(w.cpu_seconds() or 0.0 for w in workers) - cpu0
                wall = now - first
                owned = [s.get_value("anomaly_pipeline_owned_partitions", stream="spans")
                         for s in scrapes]
                return {"workers": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                        "items": total, "items_per_s": round(total / wall),
                        "items_per_cpu_s": round(total / cpu) if cpu else None,
                        "applied": int(applied), "span_partitions_owned": owned}
            if now > deadline:
                raise harness.BenchError(f"{n} workers did not finish in {timeout_s:.0f} s")
    finally:
        for w in workers:
            w.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bootstrap = harness.bootstrap_servers()
    names = RunNames.fresh("bench-sc")
    scenario = build_scenario("healthy", args.seed, duration=args.duration,
                              start=DEFAULT_REPLAY_START, keying=args.keying,
                              spans_topic=names.spans, metrics_topic=names.metrics)
    try:
        await harness.create_input_topics(bootstrap, names, args.partitions)
        produced = await harness.replay(scenario, bootstrap)
        log(f"replay: {produced.items['spans']:,} spans, {produced.items['metrics']:,} metric "
            f"points in {produced.total_records:,} records")
        runs = []
        for n in (1, 2):
            r = await timed_run(bootstrap, names, n, produced, args.poll, args.timeout)
            log(f"{n} worker(s): {r}")
            runs.append(r)
    finally:
        await harness.cleanup_logged(bootstrap, names.tag)
    one, two = runs
    return {"scenario": "healthy", "duration": args.duration, "keying": args.keying,
            "partitions": args.partitions, "runs": runs,
            "speedup": round(one["wall_s"] / two["wall_s"], 2),
            "cpu_ratio": round(two["cpu_s"] / one["cpu_s"], 2) if one["cpu_s"] else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scaling", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", default="10m", help="event time to replay (default 10m)")
    parser.add_argument("--keying", choices=("keyed", "unkeyed"), default="keyed")
    parser.add_argument("--partitions", type=int, default=8,
                        help="partitions of the input topics (default 8)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds to wait for each run (default 1200)")
    args = parser.parse_args(argv)
    result = harness.run_main("scaling", run(args))
    r1, r2 = result["runs"]
    print(f"Scaling: {r1['items']:,} items ({args.keying}, {args.partitions} input partitions)",
          file=sys.stderr)
    for r in (r1, r2):
        print(f"  {r['workers']} worker(s): {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} CPU-s, "
              f"{r['items_per_s']:,} items/s, {r['items_per_cpu_s'] or 0:,} items/CPU-s",
              file=sys.stderr)
    print(f"  speedup {result['speedup']}x, CPU {result['cpu_ratio']}x", file=sys.stderr)
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
