"""Reliability: real worker processes on a real broker, killed, restarted, cut off from the
broker, flooded, left running and fed poison; what was lost, applied twice, found or missed.

``python -m benchmarks.reliability [--quick] [--only kill_loop,membership,...] [--seed 1]``

Scenarios (each bounded in time; ``--quick`` is the CI size, a few minutes, the default the
full run, 30+ minutes):

- ``kill_loop``: the ``demo`` scenario (20 minutes of event time, every fault kind) fed live
  at ``speed`` times real time to three workers of one application. Every 20-60 s (quick:
  20-30 s) one worker, picked at random, gets SIGKILL and is restarted at once, as a
  supervisor would; every third restart is on an empty data directory (state from the
  changelog only). Afterwards one uninterrupted worker of another application reads the same
  input as a backlog: the reference.
- ``membership``: the same feed into fresh topics, read by one worker, scaled to three, every
  worker restarted in turn (SIGTERM, then a new process on its data directory), and scaled back
  to one, all under load.
- ``outage``: a second broker of its own; one worker with a live feed; the broker is stopped
  for 60 s (full run: also 5 minutes) and started again.
- ``floods``: high-cardinality valid telemetry beside a canary fault (``benchmarks.floods``).
- ``soak``: the ``healthy`` scenario fed at real time for 30 minutes (quick: 1): resident
  memory over time.
- ``poison``: the demo backlog with every bad-input case interleaved (the dead-letter corpus,
  mismatched histograms, bad exemplar ids, metrics with no points, NaN and +-Inf values) and a
  plug-in detector that raises on every batch.

How loss and duplication are counted: the workers run two ledger detectors
(``benchmarks.probes``) beside the built-in ones. After a run settles, the ledgers are read
back from the state changelog exactly as a restarting worker would restore them, and compared
with the same ledgers built in process from the input topics. ``records_lost`` and
``records_applied_twice`` are counted in items (spans and metric points), the unit the state
keeps. ``findings_missing`` / ``findings_extra`` compare the (kind, fingerprint, status) of the
published findings with the reference run's.

Output: progress on stderr, a table, then one JSON object as the last line of stdout. The exit
status is 1 if any scenario lost or doubled an item, missed or added a finding, lost a worker
or missed its canary; 2 if a run could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from benchmarks import harness, probes
from benchmarks.harness import RunNames, Worker, log
from pipeline import otlp
from pipeline.engine import PartitionEngine
from pipeline.simulate import build_scenario, iter_records
from pipeline.simulate.scenarios import Scenario
from pipeline.simulate.writer import WriteStats, write_records

CACHE = harness.ROOT / ".cache" / "bench" / "reliability"
SCENARIOS = ("kill_loop", "membership", "outage", "floods", "soak", "poison")
STREAMS = ("spans", "metrics", "traces")
PARTITIONS = 8  # routed partitions (PIPELINE_PARTITIONS): enough to share among 3 workers
INPUT_PARTITIONS = 4


@dataclass(frozen=True)
class Profile:
    speed: float  # live feed, times real time (the demo scenario is 20 minutes of event time)
    kill_every_s: tuple[float, float]
    min_kills: int
    outages_s: tuple[float, ...]
    soak_s: float
    flood_scale: float
    demo_s: float = 1200.0  # event time of the demo scenario fed (its faults end at 20 min)
    demo_rate: float | None = None  # its entry requests per second (None: the preset's 50)
    timeout_s: float = 900.0


QUICK = Profile(speed=15.0, kill_every_s=(20.0, 30.0), min_kills=3, outages_s=(60.0,),
                soak_s=60.0, flood_scale=0.02, demo_rate=20.0)
FULL = Profile(speed=3.0, kill_every_s=(20.0, 60.0), min_kills=6, outages_s=(60.0, 300.0),
               soak_s=1800.0, flood_scale=1.0)

#: Worker settings for every run: REPLAY_END closes the windows once a finite feed has ended;
#: a short session timeout so the group notices a killed worker in 10 s, not 30.
BASE_ENV = {**harness.REPLAY_END, "PIPELINE_PARTITIONS": str(PARTITIONS),
            "KAFKA_SESSION_TIMEOUT_S": "10", "LOG_LEVEL": "INFO"}


# ---------------------------------------------------------------------------------------------
# A group of worker processes of one application


@dataclass
class Group:
    """Worker processes of one application id; restarts keep (or not) the data directory."""

    name: str
    names: RunNames
    bootstrap: str
    env: dict[str, str]
    detectors: str = probes.DETECTORS
    slots: dict[int, Worker] = field(default_factory=dict)
    generation: Counter = field(default_factory=Counter)
    logs: list[Path] = field(default_factory=list)
    restarts: int = 0
    empty_restarts: int = 0
    peak_rss_kb: int = 0

    def start(self, slot: int, data_dir: str | None = None) -> Worker:
        self.generation[slot] += 1
        path = CACHE / self.names.tag / f"{self.name}-{slot}-{self.generation[slot]}.log"
        self.logs.append(path)
        w = Worker({**self.names.worker_env(self.name), **BASE_ENV, **self.env}, self.bootstrap,
                   path, detectors=self.detectors, data_dir=data_dir).start()
        self.slots[slot] = w
        return w

    def kill_and_restart(self, slot: int, empty: bool) -> None:
        old = self.slots[slot]
        old.kill()
        self._note_rss(old)
        if empty:
            shutil.rmtree(old.data_dir, ignore_errors=True)
            self.empty_restarts += 1
        self.restarts += 1
        self.start(slot, None if empty else old.data_dir)

    def stop(self, slot: int, keep_dir: bool = False) -> None:
        w = self.slots.pop(slot)
        if keep_dir:  # a rolling restart: SIGTERM, the same directory for the next process
            data_dir, w.data_dir = w.data_dir, tempfile.mkdtemp(prefix="bench-unused-")
            w.stop()
            self._note_rss(w)
            self.restarts += 1
            self.start(slot, data_dir)
        else:
            w.stop()
            self._note_rss(w)

    def stop_all(self) -> None:
        for slot in list(self.slots):
            self.stop(slot)

    def _note_rss(self, w: Worker) -> None:
        self.peak_rss_kb = max(self.peak_rss_kb, w.peak_rss_kb)

    def check_alive(self) -> None:
        for slot, w in self.slots.items():
            if not w.alive():
                raise harness.BenchError(f"{self.name} worker {slot} exited with code "
                                         f"{w.proc.returncode}; log tail:\n{w.log_tail()}")  # type: ignore[union-attr]

    def scrapes(self) -> list[harness.Samples] | None:
        out = []
        for w in self.slots.values():
            w.sample_memory()
            s = w.scrape()
            if s is None:
                return None
            out.append(s)
        return out

    def total(self, scrapes: list[harness.Samples], name: str, **labels: str) -> float:
        return sum(s.get_value(name, **labels) for s in scrapes)

    def owned_complete(self, scrapes: list[harness.Samples]) -> bool:
        return all(self.total(scrapes, "anomaly_pipeline_owned_partitions", stream=st)
                   == PARTITIONS for st in STREAMS)

    def ended(self, scrapes: list[harness.Samples]) -> bool:
        return self.owned_complete(scrapes) and all(
            self.total(scrapes, "anomaly_pipeline_end_of_input_partitions", stream=st)
            == PARTITIONS for st in ("spans", "metrics"))

    def rebalances(self) -> int:
        """Rebalances of the application's ingest group, from the generations its members
        logged (every worker joins it and the detection group together)."""
        pattern = re.compile(r"ingest: group generation (\d+)")
        gens = [0]
        for path in self.logs:
            with contextlib.suppress(OSError):
                gens += [int(g) for g in pattern.findall(path.read_text(errors="replace"))]
        return max(0, max(gens) - 1)

    def log_lines(self, pattern: str) -> int:
        rx = re.compile(pattern)
        n = 0
        for path in self.logs:
            with contextlib.suppress(OSError):
                n += sum(1 for line in path.read_text(errors="replace").splitlines()
                         if rx.search(line))
        return n

    def peak_rss_mb(self) -> float:
        for w in self.slots.values():
            w.sample_memory()
            self._note_rss(w)
        return round(self.peak_rss_kb / 1024, 1)


async def wait_for(group: Group, ok: Callable[[list[harness.Samples]], bool], what: str,
                   timeout_s: float, poll_s: float = 1.0) -> float:
    """Poll the group's /metrics until ``ok``; returns the seconds it took."""
    t0 = time.monotonic()
    while True:
        group.check_alive()
        scrapes = group.scrapes()
        if scrapes is not None and ok(scrapes):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise harness.BenchError(f"{group.name}: {what} did not happen in {timeout_s:.0f} s")
        await asyncio.sleep(poll_s)


async def settle(group: Group, timeout_s: float) -> None:
    """Until every partition of both input-fed streams has passed the end of the input, then
    until the saved ledgers stop changing (every flush made)."""
    await wait_for(group, group.ended, "the end of the input", timeout_s)
    previous = None
    for _ in range(30):
        await asyncio.sleep(4)
        now = await saved_ledgers(group.bootstrap, group.names.app_id(group.name))
        key = tuple(ledger.entries.__len__() + sum(e[0] for e in ledger.entries.values())
                    for ledger in now)
        if key == previous:
            return
        previous = key
    log(f"{group.name}: the saved state was still changing after 2 minutes")


# ---------------------------------------------------------------------------------------------
# Ledgers, findings, input


async def saved_ledgers(bootstrap: str, app_id: str) -> tuple[probes._Ledger, probes._Ledger]:
    """The ledgers as a worker restoring the application's state would load them."""
    out = []
    for signal, cls in (("spans", probes.SpanLedger), ("metrics", probes.PointLedger)):
        records = await harness.read_topic(bootstrap, f"{app_id}-{signal}-state-changelog")
        latest: dict[str, bytes | None] = {}
        for r in records:
            latest[r.key.decode()] = r.value
        by_partition: dict[int, list[tuple[str, bytes | None]]] = {}
        for k, v in latest.items():
            by_partition.setdefault(int(k.split("/", 1)[0]), []).append((k, v))
        ledgers = []
        for p, items in by_partition.items():
            ledger = cls()
            PartitionEngine(p, [ledger], 0).restore(items)
            ledgers.append(ledger)
        out.append(probes.merged(ledgers, cls))
    return out[0], out[1]


async def input_ledgers(bootstrap: str, names: RunNames, max_record_bytes: int | None = None
                        ) -> tuple[probes._Ledger, probes._Ledger]:
    """The ledgers of every item on the input topics, decoded here with the worker's limits
    (its record size limit, and far-future times bounded by each record's timestamp)."""
    spans, points = probes.SpanLedger(), probes.PointLedger()
    size = max_record_bytes or otlp.DEFAULT_LIMITS.max_record_bytes
    for topic, decode, ledger in ((names.spans, otlp.decode_spans, spans),
                                  (names.metrics, otlp.decode_metrics, points)):
        for r in await harness.read_topic(bootstrap, topic, timeout_s=300):
            limits = otlp.Limits(max_record_bytes=size, reference_time_ns=r.timestamp * 10**6)
            with contextlib.suppress(otlp.DecodeError):
                ledger.update(decode(r.value, limits=limits).items)
    return spans, points


async def ledger_check(group: Group, expected: tuple[probes._Ledger, probes._Ledger]
                       ) -> probes.Comparison:
    got = await saved_ledgers(group.bootstrap, group.names.app_id(group.name))
    return probes.compare(expected[0], got[0]).add(probes.compare(expected[1], got[1]))


async def findings(bootstrap: str, topic: str) -> set[tuple[str, str, str]]:
    out = set()
    for r in await harness.read_topic(bootstrap, topic):
        doc = orjson.loads(r.value)
        out.add((doc["kind"], doc["fingerprint"], doc["status"]))
    return out


def findings_topic(names: RunNames, app: str) -> str:
    return f"{names.findings}-{app}"


def new_group(name: str, names: RunNames, bootstrap: str, **env: str) -> Group:
    return Group(name, names, bootstrap, {"FINDINGS_TOPIC": findings_topic(names, name), **env})


def demo(names: RunNames, duration_s: float, name: str = "demo", seed: int = 1,
         rate: float | None = None) -> Scenario:
    return build_scenario(name, seed, duration=duration_s, rate=rate, spans_topic=names.spans,
                          metrics_topic=names.metrics)


async def feed(scenario: Scenario, bootstrap: str, speed: float | None) -> WriteStats:
    """Write the scenario paced at ``speed`` times real time (None: as fast as it goes)."""
    return await write_records(iter_records(scenario), harness.client_kwargs(bootstrap),
                               mode="replay" if speed is None else "live", speed=speed or 1.0,
                               spans_topic=scenario.spans_topic, progress=lambda m: None)


async def feed_demo(ctx: Context, names: RunNames, speed: float | None) -> WriteStats:
    return await feed(demo(names, ctx.profile.demo_s, rate=ctx.profile.demo_rate), ctx.bootstrap,
                      speed)


async def reference(bootstrap: str, names: RunNames, timeout_s: float
                    ) -> tuple[set[tuple[str, str, str]], probes.Comparison]:
    """One uninterrupted worker reads the input as a backlog."""
    group = new_group("ref", names, bootstrap)
    group.start(0)
    try:
        await settle(group, timeout_s)
        expected = await input_ledgers(bootstrap, names)
        check = await ledger_check(group, expected)
        return await findings(bootstrap, findings_topic(names, "ref")), check
    finally:
        group.stop_all()


def finding_diff(got: set, ref: set) -> dict[str, Any]:
    missing, extra = sorted(ref - got), sorted(got - ref)
    return {"findings": len(got), "findings_missing": len(missing),
            "findings_extra": len(extra),
            "findings_diff": [list(x) for x in missing[:5]] + [list(x) for x in extra[:5]]}


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Context:
    bootstrap: str
    profile: Profile
    rng: random.Random
    reference: dict[str, Any] = field(default_factory=dict)


async def kill_loop(ctx: Context) -> dict[str, Any]:
    names = RunNames.fresh("bench-rel-kill")
    await harness.create_input_topics(ctx.bootstrap, names, INPUT_PARTITIONS)
    group = new_group("kill", names, ctx.bootstrap)
    try:
        for slot in range(3):
            group.start(slot)
        await wait_for(group, group.owned_complete, "three workers owning every partition", 180)
        feeding = asyncio.create_task(feed_demo(ctx, names, ctx.profile.speed))
        kills, recoveries = 0, []
        while True:
            wait_s = ctx.rng.uniform(*ctx.profile.kill_every_s)
            done, _ = await asyncio.wait({feeding}, timeout=wait_s)
            if done and kills >= ctx.profile.min_kills:  # else kill while the backlog is read
                break
            slot = ctx.rng.randrange(3)
            kills += 1
            empty = kills % 3 == 0
            log(f"kill_loop: SIGKILL worker {slot} (kill {kills}; restart on "
                f"{'an empty' if empty else 'its'} data dir)")
            t_kill = time.monotonic()
            group.kill_and_restart(slot, empty)
            recoveries.append(await recovered(group, t_kill, ctx.profile.timeout_s))
            log(f"kill_loop: recovered in {recoveries[-1]:.1f} s")
        stats = feeding.result()
        await settle(group, ctx.profile.timeout_s)
        expected = await input_ledgers(ctx.bootstrap, names)
        check = await ledger_check(group, expected)
        got = await findings(ctx.bootstrap, findings_topic(names, "kill"))
        # Items dropped as late by the workers alive at the end (a killed one's count is gone).
        late = sum(group.total(group.scrapes() or [], "anomaly_pipeline_partition_late_items",
                               stream=st) for st in STREAMS)
        rebalances = group.rebalances()
        peak = group.peak_rss_mb()
        group.stop_all()
        ref_findings, ref_check = await reference(ctx.bootstrap, names, ctx.profile.timeout_s)
        ctx.reference = {"findings": ref_findings}
        return {
            "workers": 3, "fed_records": stats.records, "kills": kills,
            "restarts_empty_dir": group.empty_restarts,
            "items": check.expected, "records_lost": check.lost,
            "records_applied_twice": check.twice, "keys_mixed": check.keys_mixed,
            "lost_keys": check.lost_keys, "late_items": late,
            **finding_diff(got, ref_findings),
            "reference_lost": ref_check.lost, "reference_twice": ref_check.twice,
            "rebalances": rebalances,
            "max_recovery_s": round(max(recoveries), 1) if recoveries else None,
            "peak_rss_mb": peak,
        }
    finally:
        group.stop_all()
        await harness.cleanup_logged(ctx.bootstrap, names.tag)


async def recovered(group: Group, t0: float, timeout_s: float) -> float:
    """Seconds from ``t0`` until every routed partition is owned again by a live worker and
    the span stream applies items again (or, once the feed has ended and all was read, every
    partition is past the end of the input again)."""
    last: dict[int, float] = {}
    while True:
        await asyncio.sleep(0.5)
        group.check_alive()
        scrapes = group.scrapes()
        if scrapes is None:
            continue
        moved = False
        for slot, s in zip(group.slots, scrapes, strict=True):
            n = s.get_value(harness.METRIC_DETECTED, signal="spans")
            moved |= slot in last and n > last[slot]
            last[slot] = n
        if (moved and group.owned_complete(scrapes)) or group.ended(scrapes):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise harness.BenchError(f"{group.name}: no recovery {timeout_s:.0f} s after a kill")


async def membership(ctx: Context) -> dict[str, Any]:
    names = RunNames.fresh("bench-rel-member")
    await harness.create_input_topics(ctx.bootstrap, names, INPUT_PARTITIONS)
    group = new_group("member", names, ctx.bootstrap)
    wall = ctx.profile.demo_s / ctx.profile.speed
    try:
        group.start(0)
        await wait_for(group, group.owned_complete, "one worker owning every partition", 180)
        feeding = asyncio.create_task(feed_demo(ctx, names, ctx.profile.speed))
        steps: list[tuple[str, float]] = []
        t0 = time.monotonic()

        async def at(fraction: float) -> None:
            await asyncio.sleep(max(0.0, t0 + fraction * wall - time.monotonic()))

        await at(0.15)
        group.start(1)
        group.start(2)
        steps.append(("scale 1 -> 3", await wait_for(
            group, lambda s: group.owned_complete(s) and all(
                x.get_value("anomaly_pipeline_owned_partitions", stream="spans") > 0 for x in s),
            "three workers sharing", ctx.profile.timeout_s)))
        await at(0.35)
        for slot in range(3):  # rolling restart
            group.stop(slot, keep_dir=True)
            steps.append((f"restart {slot}", await wait_for(
                group, group.owned_complete, "every partition owned", ctx.profile.timeout_s)))
        await at(0.75)
        group.stop(1)
        group.stop(2)
        steps.append(("scale 3 -> 1", await wait_for(
            group, group.owned_complete, "one worker owning all", ctx.profile.timeout_s)))
        stats = await feeding
        await settle(group, ctx.profile.timeout_s)
        expected = await input_ledgers(ctx.bootstrap, names)
        check = await ledger_check(group, expected)
        got = await findings(ctx.bootstrap, findings_topic(names, "member"))
        return {
            "fed_records": stats.records, "restarts": group.restarts,
            "items": check.expected, "records_lost": check.lost,
            "records_applied_twice": check.twice, "keys_mixed": check.keys_mixed,
            **(finding_diff(got, ctx.reference["findings"]) if ctx.reference else
               {"findings": len(got)}),
            "rebalances": group.rebalances(),
            "max_recovery_s": round(max(s for _, s in steps), 1),
            "steps": {k: round(v, 1) for k, v in steps},
            "peak_rss_mb": group.peak_rss_mb(),
        }
    finally:
        group.stop_all()
        await harness.cleanup_logged(ctx.bootstrap, names.tag)


# --- outage: a broker of its own


class Broker:
    """A second local broker (deploy/kafka/kafka.sh) in a temporary directory, on free ports,
    sharing the fetched jars."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-broker-"))
        libs = sorted((harness.ROOT / ".cache" / "kafka").glob("libs-*"))
        if not libs:
            raise harness.BenchError("no Kafka jars in .cache/kafka: run make kafka-up once")
        for lib in libs:
            (self.dir / lib.name).symlink_to(lib)
        self.port, self.controller = harness.free_port(), harness.free_port()
        self.env = {**os.environ, "KAFKA_CACHE_DIR": str(self.dir),
                    "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.controller)}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def run(self, action: str) -> None:
        subprocess.run(["bash", str(harness.ROOT / "deploy" / "kafka" / "kafka.sh"), action],
                       env=self.env, check=True, stdout=subprocess.DEVNULL)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.run("down")
        shutil.rmtree(self.dir, ignore_errors=True)


async def outage(ctx: Context) -> dict[str, Any]:
    broker = Broker()
    out: dict[str, Any] = {}
    try:
        await asyncio.to_thread(broker.run, "up")
        for seconds in ctx.profile.outages_s:
            out[f"{seconds:.0f}s"] = await one_outage(ctx, broker, seconds)
    finally:
        await asyncio.to_thread(broker.remove)
    return out


async def one_outage(ctx: Context, broker: Broker, outage_s: float) -> dict[str, Any]:
    names = RunNames.fresh("bench-rel-out")
    bootstrap = broker.bootstrap
    await harness.create_input_topics(bootstrap, names, INPUT_PARTITIONS)
    group = new_group("out", names, bootstrap)
    speed = 2.0
    before_s, after_s = (30.0, 45.0) if ctx.profile.flood_scale < 1 else (45.0, 75.0)
    duration = (before_s + outage_s + after_s) * speed
    try:
        w = group.start(0)
        await wait_for(group, group.owned_complete, "the worker owning every partition", 180)
        # A producer as a Collector would be: it retries through the outage (delivery timeout
        # longer than the outage) instead of dropping.
        feeding = asyncio.create_task(feed(demo(names, duration), bootstrap, speed))
        await asyncio.sleep(before_s)
        before = w.scrape() or harness.Samples()
        lines_before = count_lines(w.log_path)
        t_down = time.monotonic()
        await asyncio.to_thread(broker.run, "down")
        lag_seen: list[float] = []
        while time.monotonic() - t_down < outage_s:
            await asyncio.sleep(5)
            s = w.scrape()
            if s is not None:
                lag_seen.append(sum(s.by_label("anomaly_pipeline_consumer_lag_records",
                                               "topic").values()))
        await asyncio.to_thread(broker.run, "up")
        t_up = time.monotonic()
        lines_outage = count_lines(w.log_path) - lines_before
        detected_at_up = (w.scrape() or harness.Samples()).get_value(
            harness.METRIC_DETECTED, signal="spans")
        recovery = None
        while recovery is None and time.monotonic() - t_up < ctx.profile.timeout_s:
            await asyncio.sleep(0.5)
            group.check_alive()
            s = w.scrape()
            if s is not None and s.get_value(harness.METRIC_DETECTED,
                                             signal="spans") > detected_at_up:
                recovery = time.monotonic() - t_up
        stats = await feeding
        await settle(group, ctx.profile.timeout_s)
        expected = await input_ledgers(bootstrap, names)
        check = await ledger_check(group, expected)
        return {
            "outage_s": outage_s, "outage_recovery_s": round(recovery, 1) if recovery else None,
            "fed_records": stats.records, "producer_failed": stats.failed,
            "items": check.expected, "records_lost": check.lost,
            "records_applied_twice": check.twice,
            "log_lines_per_min": round(lines_outage / (outage_s / 60), 1),
            "lag_before": sum(before.by_label("anomaly_pipeline_consumer_lag_records",
                                              "topic").values()),
            "lag_during_outage": lag_seen,
            "worker_restarts": 0,
        }
    finally:
        group.stop_all()
        with contextlib.suppress(Exception):
            await harness.cleanup(bootstrap, names.tag)


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


# --- soak


async def soak(ctx: Context) -> dict[str, Any]:
    names = RunNames.fresh("bench-rel-soak")
    await harness.create_input_topics(ctx.bootstrap, names, INPUT_PARTITIONS)
    group = new_group("soak", names, ctx.bootstrap)
    seconds = ctx.profile.soak_s
    try:
        w = group.start(0)
        await wait_for(group, group.owned_complete, "the worker owning every partition", 180)
        scenario = build_scenario("healthy", 1, duration=f"{int(seconds)}s",
                                  spans_topic=names.spans, metrics_topic=names.metrics)
        feeding = asyncio.create_task(feed(scenario, ctx.bootstrap, 1.0))
        t0 = time.monotonic()
        series: list[tuple[float, float]] = []
        store: list[tuple[float, float]] = []  # RocksDB's memory (memtables, block cache)
        tracked: list[tuple[float, dict[str, float]]] = []  # state entries, by detector
        while not feeding.done():
            group.check_alive()
            t = time.monotonic() - t0
            series.append((t, w.rss_kb() / 1024))
            scrape = w.scrape()
            if scrape is not None:
                mem = scrape.by_label("anomaly_pipeline_state_store_memory_bytes", "kind")
                store.append((t, sum(mem.values()) / 2**20))
                # (the benchmark's own ledgers, bench_*, grow with the run by design)
                tracked.append((t, scrape.by_label("anomaly_pipeline_tracked_entries",
                                                   "detector")))
            await asyncio.wait({feeding}, timeout=10)
        stats = feeding.result()
        await settle(group, ctx.profile.timeout_s)
        expected = await input_ledgers(ctx.bootstrap, names)
        check = await ledger_check(group, expected)
        return {"seconds": round(seconds), "fed_records": stats.records, "items": check.expected,
                "records_lost": check.lost, "records_applied_twice": check.twice,
                **memory_summary(series), "peak_rss_mb": group.peak_rss_mb(),
                **memory_summary(store, "store"),
                "tracked_entries_per_10min": [{k: round(n) for k, n in sorted(v.items())}
                                              for _, v in coarse(tracked)]}
    finally:
        group.stop_all()
        await harness.cleanup_logged(ctx.bootstrap, names.tag)


def memory_summary(series: list[tuple[float, float]], what: str = "rss") -> dict[str, Any]:
    """First and last value (MB) of a memory series, and its slope (least squares) over the
    second half of the run, after the baselines have filled, in MB per hour."""
    import numpy as np

    if len(series) < 4:
        return {f"{what}_mb_start": None, f"{what}_mb_end": None, f"{what}_mb_per_h": None}
    half = series[len(series) // 2:]
    t, m = np.array([x for x, _ in half]), np.array([y for _, y in half])
    slope = float(np.polyfit(t, m, 1)[0]) * 3600
    return {f"{what}_mb_start": round(series[0][1], 1), f"{what}_mb_end": round(series[-1][1], 1),
            f"{what}_mb_per_h": round(slope, 1),
            f"{what}_mb_per_10min": [round(v, 1) for _, v in coarse(series)]}


def coarse(series: list[tuple[float, Any]], step_s: float = 600) -> list[tuple[float, Any]]:
    """The last sample of each ``step_s`` of a series, so a long soak shows a plateau or not."""
    last: dict[int, tuple[float, Any]] = {}
    for t, v in series:
        last[int(t // step_s)] = (t, v)
    return list(last.values())


# --- poison


async def poison(ctx: Context) -> dict[str, Any]:
    from tests.support import corpus

    names = RunNames.fresh("bench-rel-poison")
    await harness.create_input_topics(ctx.bootstrap, names, INPUT_PARTITIONS,
                                      max_message_bytes=4 * 1024 * 1024)
    limit = 256 * 1024
    group = new_group("poison", names, ctx.bootstrap, MAX_RECORD_BYTES=str(limit))
    group.detectors = probes.DETECTORS + ",tests.support.faulty:Raising"
    cases = [c for c in corpus.cases(max_record_bytes=limit) + poison_cases()
             if c.encoding == "otlp_proto"]
    try:
        group.start(0)
        await wait_for(group, group.owned_complete, "the worker owning every partition", 180)
        producer = AIOKafkaProducer(**harness.client_kwargs(ctx.bootstrap),
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            for c in cases:
                await producer.send_and_wait(names.topic(c.signal), c.value, key=c.key,
                                             timestamp_ms=c.timestamp_ms)
        finally:
            await producer.stop()
        stats = await feed_demo(ctx, names, None)  # the demo as a backlog
        log(f"poison: {len(cases)} bad records, then {stats.records:,} demo records")
        await settle(group, ctx.profile.timeout_s)
        expected = await input_ledgers(ctx.bootstrap, names, limit)
        check = await ledger_check(group, expected)
        dead, truncated = Counter(), 0
        for r in await harness.read_topic(ctx.bootstrap, names.deadletter):
            headers = dict(r.headers)
            dead[headers.get("dlq.error.reason", b"").decode()] += 1
            truncated += "dlq.value.truncated" in headers
        want = Counter(c.reason for c in cases if c.reason)
        s = group.scrapes() or [harness.Samples()]
        got = await findings(ctx.bootstrap, findings_topic(names, "poison"))
        return {
            "cases": len(cases), "dead_letters": sum(dead.values()),
            "dead_letters_truncated": truncated,
            "dead_letter_reasons_missing": sorted((want - dead).elements()),
            "dead_letter_reasons_extra": sorted((dead - want).elements()),
            "items": check.expected, "records_lost": check.lost,
            "records_applied_twice": check.twice,
            "quarantined_partitions": group.total(s, "anomaly_pipeline_detector_quarantined",
                                                  detector="raising"),
            "worker_alive": all(w.alive() for w in group.slots.values()),
            **(finding_diff(got, ctx.reference["findings"]) if ctx.reference else
               {"findings": len(got)}),
        }
    finally:
        group.stop_all()
        await harness.cleanup_logged(ctx.bootstrap, names.tag)


def poison_cases() -> list[Any]:
    """The cases beyond the dead-letter corpus: histogram shapes, exemplars, non-finite values.
    ``reason`` is what the record is dead-lettered for ("" for none: exemplars are not read, a
    gauge with an empty list of points carries nothing to reject, and a non-finite point is
    dropped and counted, not dead-lettered)."""
    from tests.support.corpus import Case
    from tests.support.otlp_build import T0, metric_request, span_request

    def variant(change: Callable[[Any], None]) -> bytes:
        req = metric_request({"service.name": "poison", "service.instance.id": "poison-1"})
        change(req.resource_metrics[0].scope_metrics[0].metrics)
        return req.SerializeToString()

    def mismatched(ms: Any) -> None:
        ms[3].histogram.data_points[0].bucket_counts.append(5)

    def bad_exemplar(ms: Any) -> None:
        ex = ms[3].histogram.data_points[0].exemplars.add()
        ex.trace_id, ex.span_id, ex.as_double = b"\x01\x02\x03", b"\x09", 0.1

    def no_points(ms: Any) -> None:
        ms[0].gauge.ClearField("data_points")

    def nan(ms: Any) -> None:
        ms[0].gauge.data_points[0].as_double = float("nan")

    def inf(ms: Any) -> None:
        ms[2].sum.data_points[0].as_double = float("inf")

    def neg_inf(ms: Any) -> None:
        ms[3].histogram.data_points[0].sum = float("-inf")

    big = span_request([{"span_id": b"\x07" * 8, "start": T0, "end": T0 + 10**8,
                         "name": "y" * (3 * 1024 * 1024)}]).SerializeToString()
    return [
        # Its dead letter is cut to a prefix (size and checksum in headers): whole, it would
        # be over the dead-letter topic's 1 MB limit and refused.
        Case("3 MB record over the size limit", "spans", "otlp_proto", big, "record_too_large"),
        Case("histogram with a count too many", "metrics", "otlp_proto", variant(mismatched),
             "invalid_metric", partial=True),
        Case("exemplar with 3-byte trace id", "metrics", "otlp_proto", variant(bad_exemplar), ""),
        Case("gauge with no points", "metrics", "otlp_proto", variant(no_points), ""),
        Case("NaN gauge", "metrics", "otlp_proto", variant(nan), ""),
        Case("+Inf sum", "metrics", "otlp_proto", variant(inf), ""),
        Case("-Inf histogram sum", "metrics", "otlp_proto", variant(neg_inf), ""),
    ]


# --- floods


#: Each flood's size in the full run (``benchmarks.floods.FULL_SIZES``, plus a 15k-span trace
#: beside the 100k one); the quick run takes ``flood_scale`` of each (at least the floor).
FLOOD_RUNS = [("span_names", None), ("services", None), ("instances", None), ("hosts", None),
              ("huge_records", None), ("big_trace", 15_000), ("big_trace", None)]
FLOOR = {"huge_records": 3, "big_trace": 15_000}


async def floods(ctx: Context) -> dict[str, Any]:
    """Each flood beside the memory-leak canary, one worker each (``benchmarks.flood_run``):
    peak RSS, its slope over the last minute, the live span stream's longest stall and how
    far behind it fell, and whether the canary leak was still found."""
    from benchmarks import flood_run
    from benchmarks import floods as gen

    out: dict[str, Any] = {}
    quick = ctx.profile.flood_scale < 1
    CACHE.mkdir(parents=True, exist_ok=True)  # flood_run writes its worker's log there
    for kind, size in FLOOD_RUNS:
        n = size or gen.FULL_SIZES[kind]
        if quick:
            if kind == "big_trace" and size is None:
                continue  # the 15k-span trace stands for both
            n = max(FLOOR.get(kind, 100), int(n * ctx.profile.flood_scale))
        args = argparse.Namespace(
            flood=kind, n=n, canary_s=1800.0, input_partitions=INPUT_PARTITIONS, root="",
            every=1.0, settle=10.0 if quick else 60.0, timeout=ctx.profile.timeout_s,
            log=str(CACHE / f"flood-{kind}-{n}.log"))
        log(f"floods: {kind} n={n:,}")
        with contextlib.redirect_stdout(sys.stderr):  # its table: stdout is for ours
            r = await asyncio.to_thread(flood_run.run, args)
        out[f"{kind} {n}"] = {k: r[k] for k in (
            "peak_rss_mb", "end_rss_mb", "rss_slope_mb_per_min_last_60s", "max_span_stall_s",
            "max_span_lag_s", "metrics_read_s", "canary_found") if k in r}
    return out


# ---------------------------------------------------------------------------------------------
# Main


RUNNERS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "kill_loop": kill_loop, "membership": membership, "outage": outage, "floods": floods,
    "soak": soak, "poison": poison,
}


def failures(name: str, r: dict[str, Any]) -> list[str]:
    """What makes a scenario fail: loss, duplication, a finding missed or added, no canary."""
    out = []
    rows = r.values() if name in ("outage", "floods") and "error" not in r else [r]
    for row in rows:
        if not isinstance(row, dict):
            continue
        for k in ("records_lost", "records_applied_twice", "keys_mixed", "findings_missing",
                  "findings_extra"):
            if row.get(k):
                out.append(f"{name}: {k} = {row[k]}")
        if row.get("error"):
            out.append(f"{name}: {row['error']}")
        if row.get("canary_found") is False:
            out.append(f"{name}: the canary fault was not found")
        if row.get("dead_letter_reasons_missing") or row.get("dead_letter_reasons_extra"):
            out.append(f"{name}: dead letters differ from the cases")
        if row.get("worker_alive") is False:
            out.append(f"{name}: the worker died")
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| scenario | result |", "| --- | --- |"]
    for name, r in results.items():
        rows = ([(k, v) for k, v in r.items() if isinstance(v, dict)]
                if name in ("outage", "floods") and "error" not in r else [("", r)])
        for sub, row in rows:
            shown = ", ".join(f"{k} {v}" for k, v in row.items()
                              if k not in ("findings_diff", "lag_during_outage", "lost_keys"))
            lines.append(f"| {name} {sub} | {shown} |".replace("  ", " "))
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    profile = QUICK if args.quick else FULL
    if args.flood_scale is not None:
        profile = dataclasses.replace(profile, flood_scale=args.flood_scale)
    if args.soak_minutes is not None:
        profile = dataclasses.replace(profile, soak_s=args.soak_minutes * 60)
    ctx = Context(harness.bootstrap_servers(), profile, random.Random(args.seed))
    results: dict[str, Any] = {}
    for name in args.only:
        log(f"--- {name}")
        t0 = time.monotonic()
        try:
            results[name] = await RUNNERS[name](ctx)
        except harness.BenchError as exc:
            results[name] = {"error": str(exc)[:2000]}
        results[name]["wall_s"] = round(time.monotonic() - t0)
        log(f"{name}: {orjson.dumps(results[name]).decode()}")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reliability", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CI size: a few minutes")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--seed", type=int, default=1, help="kill timing and victims")
    parser.add_argument("--flood-scale", type=float, default=None,
                        help="fraction of each flood's full size (default: 1, quick 0.02)")
    parser.add_argument("--soak-minutes", type=float, default=None,
                        help="length of the soak (default: 30, quick 1)")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    # The benchmark's own producers and consumers: an outage is the point of one scenario, and
    # their connection errors (hundreds a second) are not worth a line each.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    t0 = time.monotonic()
    results = harness.run_main("reliability", run(args))
    problems = [p for name, r in results.items() for p in failures(name, r)]
    print(table(results))
    summary = {"profile": "quick" if args.quick else "full", "seed": args.seed,
               "wall_s": round(time.monotonic() - t0), "failures": problems, **results}
    print(orjson.dumps(summary).decode())
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
