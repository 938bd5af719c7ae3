"""Replay speed: does how fast (and by how many workers) the input is read change what is found?

``python -m benchmarks.replay_speed [--quick] [--partitions 1,4,8] [--keying keyed,unkeyed]
[--speed 40] [--rate 10] [--no-join]``

The ``bursty`` scenario (traffic in 4-minute bursts with 4-minute quiet gaps, 40 minutes of
event time: a bottleneck, a TIME_WAIT buildup and a memory leak among its faults), for each
number of input partitions and keying, written three ways into fresh topics, each read by its
own worker(s) on the real broker:

- ``fast``: the whole scenario written first, then one worker reads the backlog at full speed;
- ``paced``: the records written live at ``--speed`` times event time while a worker reads
  them (partitions go quiet in the gaps: processing-time idleness);
- ``join``: the backlog read at full speed by one worker, with a second joining 25 s in (a
  rebalance mid-backlog; the issue that asked for this saw 72 % of spans late).

Each worker runs with ``harness.REPLAY_END`` (the input ends 5 s after the last record and the
last windows close). Reported per run: items applied, items that arrived behind their
partition's watermark (``partition_late_items``: spans, metric points, trace samples) and trace
samples the bottleneck stage dropped as late; the late share (all late items over all items);
the findings, and how many differ from the ``fast`` run's (whole published documents but for
``runbook_url``; target: none, and at most 0.5 % late).

Output: a table, then as the last line one JSON object ``{"configs": [...], "max_late_share",
"all_identical", "quick"}``. ``--quick`` (CI-sized): 4 partitions, keyed, ``fast`` and
``paced`` only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import orjson

from benchmarks import harness
from benchmarks.harness import RunNames, log
from pipeline.simulate import build_scenario, iter_records
from pipeline.simulate.writer import write_records

STREAMS = ("spans", "metrics", "traces")
JOIN_AFTER_S = 25.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.replay_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 partitions, keyed, fast and paced")
    p.add_argument("--partitions", default="1,4,8", help="input partitions to try (1,4,8)")
    p.add_argument("--keying", default="keyed,unkeyed", help="keyed, unkeyed or both")
    p.add_argument("--speed", type=float, default=40.0, help="pace of the paced run (40x)")
    p.add_argument("--rate", type=float, default=10.0, help="requests/s in a burst (10)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--no-join", action="store_true", help="skip the two-worker run")
    p.add_argument("--timeout", type=float, default=600.0, help="per run, seconds")
    args = p.parse_args(argv)
    if args.quick:
        args.partitions, args.keying, args.no_join = "4", "keyed", True
    return args


def scenario(names: RunNames, args: argparse.Namespace, keying: str) -> Any:
    return build_scenario("bursty", seed=args.seed, rate=args.rate, keying=keying,
                          spans_topic=names.spans, metrics_topic=names.metrics)


def key(doc: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in doc.items() if k != "runbook_url"},
                        option=orjson.OPT_SORT_KEYS)


async def one_run(mode: str, partitions: int, keying: str, args: argparse.Namespace,
                  bootstrap: str) -> dict[str, Any]:
    names = RunNames.fresh(f"speed-{mode}")
    out = harness.ROOT / ".cache" / "bench" / "replay_speed" / f"{partitions}-{keying}-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    env = {**names.worker_env(), **harness.REPLAY_END}
    workers: list[harness.Worker] = []
    wall0 = time.perf_counter()
    try:
        await harness.create_input_topics(bootstrap, names, partitions)
        sc = scenario(names, args, keying)
        kwargs = harness.client_kwargs(bootstrap)
        if mode == "paced":
            workers.append(harness.Worker(env, bootstrap, out / "worker-0.log").start())
            await write_records(iter_records(sc), kwargs, mode="live", speed=args.speed,
                                spans_topic=names.spans, progress=lambda line: None)
        else:
            await write_records(iter_records(sc), kwargs, mode="replay",
                                spans_topic=names.spans, progress=lambda line: None)
            workers.append(harness.Worker(env, bootstrap, out / "worker-0.log").start())
            if mode == "join":
                await asyncio.sleep(JOIN_AFTER_S)
                workers.append(harness.Worker(env, bootstrap, out / "worker-1.log").start())
        deadline = time.perf_counter() + args.timeout
        for w in workers:
            if not await harness.wait_until_ended(w, max(1.0, deadline - time.perf_counter())):
                raise harness.BenchError(f"{mode}: a worker did not reach the end of the input "
                                         f"in {args.timeout:.0f} s (log: {w.log_path})")
        samples = [w.scrape() or harness.Samples() for w in workers]
        docs = [orjson.loads(r.value) for r in await harness.read_topic(
            bootstrap, names.findings) if r.value]
    finally:
        for w in workers:
            w.stop()
        await harness.cleanup_logged(bootstrap, names.tag)

    def total(name: str, **labels: str) -> float:
        return sum(s.get_value(name, **labels) for s in samples)

    items = {s: total(harness.METRIC_DETECTED, signal=s) for s in STREAMS}
    late = {s: total("anomaly_pipeline_partition_late_items", stream=s) for s in STREAMS}
    late["late_samples"] = total("anomaly_pipeline_partition_state_evictions",
                                 detector="bottleneck", reason="late_samples")
    all_items = sum(items.values())
    return {
        "mode": mode, "partitions": partitions, "keying": keying, "items": items,
        "late": late, "late_share": round(sum(late.values()) / all_items, 6) if all_items else 0,
        "findings": sorted({key(d) for d in docs}), "wall_s": round(time.perf_counter() - wall0, 1),
    }


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    bootstrap = harness.bootstrap_servers()
    configs = []
    for partitions in (int(x) for x in args.partitions.split(",")):
        for keying in args.keying.split(","):
            log(f"replay_speed: {partitions} partitions, {keying}: fast and paced "
                f"({args.speed:g}x) side by side")
            fast, paced = await asyncio.gather(
                one_run("fast", partitions, keying, args, bootstrap),
                one_run("paced", partitions, keying, args, bootstrap))
            runs = [fast, paced]
            if not args.no_join:
                log(f"replay_speed: {partitions} partitions, {keying}: two workers, the second "
                    f"joining {JOIN_AFTER_S:.0f} s in")
                runs.append(await one_run("join", partitions, keying, args, bootstrap))
            ref = set(fast["findings"])
            for r in runs:
                got = set(r["findings"])
                r["findings_diff"] = len(got ^ ref)
                r["kinds"] = sorted({orjson.loads(d)["kind"] for d in got})
                r["n_findings"] = len(got)
            configs.append(runs)
    print_table(configs, args)
    flat = [r for runs in configs for r in runs]
    result = {
        "configs": [{k: v for k, v in r.items() if k != "findings"} for r in flat],
        "max_late_share": max(r["late_share"] for r in flat),
        "all_identical": all(r["findings_diff"] == 0 for r in flat),
        "speed": args.speed, "rate": args.rate, "quick": args.quick,
    }
    print(orjson.dumps(result).decode())
    return result


def print_table(configs: list[list[dict[str, Any]]], args: argparse.Namespace) -> None:
    print(f"Replay speed: bursty scenario (rate {args.rate:g}/s in bursts), paced at "
          f"{args.speed:g}x; late = items behind their partition's watermark")
    print(f"  {'parts':>5} {'keying':8} {'mode':6} {'spans':>8} {'points':>7} {'samples':>8} "
          f"{'late sp':>7} {'late pt':>7} {'late tr':>7} {'late %':>7} {'findings':>8} "
          f"{'diff':>5} {'wall s':>7}")
    for runs in configs:
        for r in runs:
            i, lt = r["items"], r["late"]
            print(f"  {r['partitions']:>5} {r['keying']:8} {r['mode']:6} {i['spans']:>8,.0f} "
                  f"{i['metrics']:>7,.0f} {i['traces']:>8,.0f} {lt['spans']:>7,.0f} "
                  f"{lt['metrics']:>7,.0f} {lt['traces'] + lt['late_samples']:>7,.0f} "
                  f"{100 * r['late_share']:>6.2f}% {r['n_findings']:>8} "
                  f"{r['findings_diff']:>5} {r['wall_s']:>7.0f}")
    print(f"  finding kinds: {sorted({k for runs in configs for r in runs for k in r['kinds']})}")
    sys.stdout.flush()


if __name__ == "__main__":
    harness.run_main("replay_speed", main())
