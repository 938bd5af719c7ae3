"""What both benchmarks share: fresh topics, a scenario replay, a worker subprocess, clean-up.

A run owns everything whose name starts with its *tag* (``bench-<8 hex>``): the input, findings
and dead-letter topics, the worker's application id (hence its consumer group and internal
topics). ``cleanup`` deletes exactly those, so runs never see each other's data and the broker
does not fill up.

Input topics are created here, before producing, with time and size retention switched off: the
replay stamps records with their *event* time (a fixed start in the past, for reproducible
bytes), and the local broker's 24 h retention would otherwise delete them within a minute.

Progress goes to stderr; the benchmarks keep stdout for their table and final JSON line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord
from prometheus_client.parser import text_string_to_metric_families

from pipeline import topics
from pipeline.settings import Settings
from pipeline.simulate import SimRecord, iter_records
from pipeline.simulate.scenarios import Scenario
from pipeline.simulate.writer import write_records

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
SIGNALS = ("spans", "metrics")
METRIC_CONSUMED = "anomaly_pipeline_records_consumed_total"
METRIC_DECODED = "anomaly_pipeline_items_decoded_total"
METRIC_DETECTED = "anomaly_pipeline_items_detected_total"
METRIC_DERIVED = "anomaly_pipeline_items_derived_total"
METRIC_DEADLETTERS = "anomaly_pipeline_deadletter_records_total"
METRIC_STAGE_SECONDS = "anomaly_pipeline_processing_seconds_sum"
# The worker's consumers fetch up to this much per partition; the raw consumer gets the same
# so fetch size is not a difference.
WORKER_FETCH_BYTES = topics.FETCH_BYTES_PER_PARTITION
T = TypeVar("T")


class BenchError(RuntimeError):
    """A run cannot go on (the worker died, or did not finish in time); the message says why."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bootstrap_servers() -> str:
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP


def client_kwargs(bootstrap: str) -> dict[str, Any]:
    """aiokafka connection arguments (SASL/TLS from the same settings the worker reads)."""
    return Settings.from_env(kafka_bootstrap_servers=bootstrap).aiokafka_kwargs()


def run_main(prog: str, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` with the expected failures (no broker, worker died or timed out) as one
    message and exit status 2 instead of a traceback."""
    try:
        return asyncio.run(coro)
    except KafkaConnectionError as exc:
        log(f"{prog}: cannot reach Kafka ({exc}); start the local broker (make kafka-up) or set "
            "KAFKA_BOOTSTRAP_SERVERS")
    except BenchError as exc:
        log(f"{prog}: {exc}")
    sys.exit(2)


def detector_classes(extra: str = "") -> list[type]:
    """The classes a worker with ``PIPELINE_DETECTORS=extra`` runs (built-ins first)."""
    from pipeline.detectors import load_detectors
    from pipeline.settings import ConfigError

    try:
        return list(load_detectors(extra))
    except ConfigError as exc:
        raise BenchError(f"--detectors: {exc}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True)
class RunNames:
    """Topic names and application ids of one run, all under ``tag``."""

    tag: str

    @classmethod
    def fresh(cls, prefix: str = "bench") -> RunNames:
        return cls(f"{prefix}-{uuid.uuid4().hex[:8]}")

    @property
    def spans(self) -> str:
        return f"{self.tag}.spans"

    @property
    def metrics(self) -> str:
        return f"{self.tag}.metrics"

    @property
    def findings(self) -> str:
        return f"{self.tag}.findings"

    @property
    def deadletter(self) -> str:
        return f"{self.tag}.deadletter"

    @property
    def service_map(self) -> str:
        return f"{self.tag}.service_map"

    @property
    def incidents(self) -> str:
        return f"{self.tag}.incidents"

    @property
    def feedback(self) -> str:
        return f"{self.tag}.feedback"

    def topic(self, signal: str) -> str:
        return self.spans if signal == "spans" else self.metrics

    def app_id(self, suffix: str = "worker") -> str:
        return f"{self.tag}-{suffix}"

    def worker_env(self, app_suffix: str = "worker") -> dict[str, str]:
        return {
            "PIPELINE_APP_ID": self.app_id(app_suffix),
            "OTLP_SPANS_TOPIC": self.spans,
            "OTLP_METRICS_TOPIC": self.metrics,
            "FINDINGS_TOPIC": self.findings,
            "DEADLETTER_TOPIC": self.deadletter,
            "SERVICE_MAP_TOPIC": self.service_map,
            "INCIDENTS_TOPIC": self.incidents,
            "FEEDBACK_TOPIC": self.feedback,
        }


# ---------------------------------------------------------------------------------------------
# Topics


async def create_input_topics(bootstrap: str, names: RunNames, partitions: int,
                              max_message_bytes: int | None = None) -> None:
    """Create the spans and metrics topics with ``partitions`` partitions and no retention
    (and, if given, the broker's ``max.message.bytes`` for them)."""
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    await admin.start()
    try:
        config = {"retention.ms": "-1", "retention.bytes": "-1"}
        if max_message_bytes:
            config["max.message.bytes"] = str(max_message_bytes)
        await admin.create_topics(
            [NewTopic(t, partitions, 1, topic_configs=config) for t in (names.spans,
                                                                         names.metrics)]
        )
    finally:
        await admin.close()


async def cleanup(bootstrap: str, tag: str) -> list[str]:
    """Delete every topic and consumer group whose name starts with ``tag``; returns topics."""
    admin = AIOKafkaAdminClient(**client_kwargs(bootstrap))
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if t.startswith(tag))
        if topics:
            await admin.delete_topics(topics)
        with contextlib.suppress(Exception):  # best effort: empty groups also expire by themselves
            await _delete_groups(admin, tag)
        return topics
    finally:
        await admin.close()


async def cleanup_logged(bootstrap: str, tag: str) -> None:
    """``cleanup`` for a ``finally:`` block: reports instead of raising over the first error."""
    try:
        deleted = await cleanup(bootstrap, tag)
        log(f"cleanup: deleted {len(deleted)} topics under {tag}")
    except Exception as exc:
        log(f"cleanup: could not delete the topics under {tag}: {type(exc).__name__}: {exc}")


async def _delete_groups(admin: AIOKafkaAdminClient, tag: str) -> None:
    # aiokafka's admin client has no delete_consumer_groups; send the request ourselves.
    from aiokafka.protocol.admin import DeleteGroupsRequest

    groups = [g[0] for g in await admin.list_consumer_groups() if str(g[0]).startswith(tag)]
    for group in groups:
        node = await admin.find_coordinator(group)
        await admin._send_request_to_node(node, DeleteGroupsRequest([group]))


async def end_offsets(consumer: AIOKafkaConsumer, topics: Iterable[str]) -> dict[TopicPartition,
                                                                                 int]:
    tps = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    return await consumer.end_offsets(tps) if tps else {}


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning to its current end (no consumer group)."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(bootstrap), group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=WORKER_FETCH_BYTES,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        ends = {tp: n for tp, n in (await end_offsets(consumer, [topic])).items() if n > 0}
        if not ends:
            return out
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for tp, recs in (await consumer.getmany(timeout_ms=500)).items():
                out.extend(recs)
                if recs and recs[-1].offset + 1 >= ends.get(tp, 0):
                    ends.pop(tp, None)
        if ends:
            log(f"harness: reading {topic} timed out with {len(ends)} partitions unfinished")
    finally:
        await consumer.stop()
    return out


# ---------------------------------------------------------------------------------------------
# Replay


@dataclass
class Produced:
    """What a replay wrote: Kafka records and items (spans / metric points) per signal."""

    records: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    items: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SIGNALS, 0))
    bytes: int = 0
    seconds: float = 0.0

    @property
    def total_records(self) -> int:
        return sum(self.records.values())


async def replay(
    scenario: Scenario, bootstrap: str, progress: Callable[[str], None] = log,
    signals: tuple[str, ...] = SIGNALS, max_request_size: int | None = None,
) -> Produced:
    """Produce every record of ``scenario`` (already pointed at the run's topics) as fast as the
    broker takes it, each with its event time as Kafka timestamp; count what was sent. Records
    of signals not in ``signals`` are skipped (not produced, not counted)."""
    produced = Produced()
    signal_of = {scenario.spans_topic: "spans", scenario.metrics_topic: "metrics"}

    def counted(records: Iterable[SimRecord]) -> Iterator[SimRecord]:
        for rec in records:
            s = signal_of[rec.topic]
            if s not in signals:
                continue
            produced.records[s] += 1
            produced.items[s] += rec.items
            produced.bytes += len(rec.value)
            yield rec

    stats = await write_records(
        counted(iter_records(scenario)),
        {**client_kwargs(bootstrap),
         **({"max_request_size": max_request_size} if max_request_size else {})},
        mode="replay",
        spans_topic=scenario.spans_topic, progress=progress,
    )
    produced.seconds = stats.seconds
    if stats.failed:
        raise BenchError(f"replay: {stats.failed:,} records were not written ({stats.first_error})")
    return produced


# ---------------------------------------------------------------------------------------------
# Worker


class Samples(dict):
    """One /metrics scrape: {(sample name, sorted label items): value}."""

    def get_value(self, name: str, **labels: str) -> float:
        return self.get((name, tuple(sorted(labels.items()))), 0.0)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """Values of ``name`` summed by one label (the other labels folded)."""
        out: dict[str, float] = {}
        for (sample, labels), v in self.items():
            if sample == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


def scrape(port: int, timeout_s: float = 2.0) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = Samples()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class Worker:
    """A ``python -m pipeline worker`` subprocess with its own metrics port, data dir and log."""

    def __init__(self, env: Mapping[str, str], bootstrap: str, log_path: Path,
                 detectors: str = "", data_dir: str | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="bench-state-")
        self.log_path = log_path
        self.env = {
            **os.environ, **env,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PIPELINE_DATA_DIR": self.data_dir,
            "METRICS_PORT": str(self.port),
            "METRICS_HOST": "127.0.0.1",
            "PIPELINE_DETECTORS": detectors,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_rss_kb = 0
        self.started_at = 0.0

    def start(self) -> Worker:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"], cwd=ROOT, env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def scrape(self) -> Samples | None:
        return scrape(self.port)

    def sample_memory(self) -> None:
        """Fold the kernel's high-water mark of resident memory (VmHWM) into ``peak_rss_kb``."""
        if self.alive():
            self.peak_rss_kb = max(self.peak_rss_kb, _peak_rss_kb(self.proc.pid))  # type: ignore[union-attr]

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the worker has used so far."""
        return _cpu_seconds(self.proc.pid) if self.alive() else None  # type: ignore[union-attr]

    def kill(self) -> int | None:
        """SIGKILL: no shutdown at all. The data directory stays, for a restart that reuses it
        (``Worker(..., data_dir=old.data_dir)``)."""
        if self.proc is None:
            return None
        self.sample_memory()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode

    def rss_kb(self) -> int:
        """Resident memory now (VmRSS), 0 if the worker is not running."""
        if not self.alive():
            return 0
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:  # type: ignore[union-attr]
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (the worker flushes its producer), then SIGKILL after ``timeout_s``."""
        if self.proc is None:
            return None
        self.sample_memory()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log(f"harness: worker did not stop {timeout_s:.0f} s after SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait(timeout=30)
        if not self._log.closed:
            self._log.close()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        return self.proc.returncode

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _peak_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    try:  # not Linux: the current RSS, sampled, is the best we have
        import psutil

        return psutil.Process(pid).memory_info().rss // 1024
    except Exception:
        return 0


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return None


@dataclass
class Timeline:
    """When (``time.perf_counter()``) the worker first consumed each input topic and when it had
    applied every produced item of each signal to its detectors, as seen by polling /metrics."""

    metrics_up: float | None = None
    first_consumed: dict[str, float] = field(default_factory=dict)
    first_detected: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    cpu_at_first: float | None = None
    cpu_at_done: float | None = None
    last: Samples = field(default_factory=Samples)
    timed_out: bool = False
    polls: int = 0

    def elapsed(self, signal: str | None = None) -> float | None:
        """Seconds from first consume to all detected, for one signal or (None) for both."""
        if signal is not None:
            t0, t1 = self.first_consumed.get(signal), self.done.get(signal)
            return None if t0 is None or t1 is None else t1 - t0
        if len(self.done) < len(SIGNALS) or not self.first_consumed:
            return None
        return max(self.done.values()) - min(self.first_consumed.values())


async def wait_until_detected(
    worker: Worker,
    names: RunNames,
    expected: Mapping[str, int],
    timeout_s: float,
    poll_s: float = 0.1,
    progress_every_s: float = 5.0,
) -> Timeline:
    """Poll the worker's /metrics until ``items_detected{signal}`` reaches ``expected[signal]``
    for every signal and the trace samples derived from them are applied too (or
    ``timeout_s`` passes, or the worker dies); report progress."""
    tl = Timeline()
    deadline = time.perf_counter() + timeout_s
    next_progress = time.perf_counter() + progress_every_s
    while True:
        await asyncio.sleep(poll_s)
        now = time.perf_counter()
        if not worker.alive():
            raise BenchError(
                f"worker exited with code {worker.proc.returncode}; log tail:\n"  # type: ignore[union-attr]
                + worker.log_tail()
            )
        samples = worker.scrape()
        worker.sample_memory()
        if samples is None:
            if now > deadline:
                tl.timed_out = True
                return tl
            continue
        tl.polls += 1
        tl.last = samples
        if tl.metrics_up is None:
            tl.metrics_up = now
        for s in SIGNALS:
            if s not in tl.first_consumed and samples.get_value(
                METRIC_CONSUMED, topic=names.topic(s)
            ) > 0:
                tl.first_consumed[s] = now
                if tl.cpu_at_first is None:
                    tl.cpu_at_first = worker.cpu_seconds()
            detected = samples.get_value(METRIC_DETECTED, signal=s)
            if s not in tl.first_detected and detected > 0:
                tl.first_detected[s] = now
            if s not in tl.done and detected >= expected[s]:
                tl.done[s] = now
        if len(tl.done) == len(SIGNALS):
            # Records a stage derived for the next (trace samples) must be applied too: the
            # span stage has applied everything, so what it derived is final.
            derived = samples.get_value(METRIC_DERIVED, signal="traces")
            if samples.get_value(METRIC_DETECTED, signal="traces") >= derived:
                tl.done.setdefault("derived", now)
                tl.cpu_at_done = worker.cpu_seconds()
                return tl
        if now >= next_progress:
            log("worker: " + progress_line(samples, names, expected, now - worker.started_at))
            next_progress = now + progress_every_s
        if now > deadline:
            tl.timed_out = True
            return tl


#: Settings for a worker on a finite replay: its partitions count as idle 2 s after they were
#: read to the end and the input as ended 3 s later, when the watermark moves 2 minutes past
#: the last event (closing every window and bucket). 2 minutes is within what 5 s of quiet is
#: at 40x (a replay paced at 40x pauses 5 s and more only in gaps longer than that).
REPLAY_END = {"SOURCE_IDLE_S": "2", "END_OF_INPUT_S": "3", "END_OF_INPUT_ADVANCE_S": "120"}


async def wait_until_ended(worker: Worker, timeout_s: float, poll_s: float = 0.5,
                           settle_s: float = 3.0) -> bool:
    """Poll until every owned partition of both input-fed streams has moved past the end of
    the input (``REPLAY_END``), then give the trace stage ``settle_s`` to follow; False if
    ``timeout_s`` passes first."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if not worker.alive():
            raise BenchError(f"worker exited with code {worker.proc.returncode}; log tail:\n"  # type: ignore[union-attr]
                             + worker.log_tail())
        samples = worker.scrape()
        if samples is not None and all(
            0 < samples.get_value("anomaly_pipeline_owned_partitions", stream=s)
            == samples.get_value("anomaly_pipeline_end_of_input_partitions", stream=s)
            for s in SIGNALS
        ):
            await asyncio.sleep(settle_s)
            return True
        await asyncio.sleep(poll_s)
    return False


def progress_line(samples: Samples, names: RunNames, expected: Mapping[str, int],
                  since_start_s: float) -> str:
    parts = []
    for s in SIGNALS:
        consumed = samples.get_value(METRIC_CONSUMED, topic=names.topic(s))
        detected = samples.get_value(METRIC_DETECTED, signal=s)
        parts.append(f"{s} {consumed:,.0f} records consumed, {detected:,.0f}/{expected[s]:,} "
                     "detected")
    dead = sum(samples.by_label(METRIC_DEADLETTERS, "topic").values())
    tail = f", {dead:,.0f} dead letters" if dead else ""
    return f"t+{since_start_s:.0f}s: " + "; ".join(parts) + tail


def stage_seconds(samples: Samples) -> dict[str, float]:
    """Seconds spent inside each stage's per-record handler (processing_seconds_sum)."""
    return dict(sorted(samples.by_label(METRIC_STAGE_SECONDS, "stage").items()))
