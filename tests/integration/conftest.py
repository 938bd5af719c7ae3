"""Integration fixtures: the real Kafka broker (KAFKA_BOOTSTRAP_SERVERS), real worker processes.

Each test gets its own topics and application id, so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import cleanup
from tests.support.tools import free_port

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def bootstrap() -> str:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.fail(
            "integration tests need a real broker: run `make test` (starts the local one) or set "
            "KAFKA_BOOTSTRAP_SERVERS"
        )
    return servers


class Worker:
    """A ``python -m pipeline worker`` process with its own metrics port and log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {**os.environ, **self.env, "METRICS_PORT": str(self.port),
               "PYTHONPATH": str(ROOT), "METRICS_HOST": "127.0.0.1"}
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "worker"], cwd=ROOT, env=env,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self._log.close()

    def stop(self) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def names(bootstrap: str) -> Iterator[dict[str, str]]:
    """Fresh topic names and application id for one test; its topics and consumer groups are
    deleted afterwards (a broker that keeps every test's topics starts ever more slowly)."""
    tag = f"it-{uuid.uuid4().hex[:10]}"
    yield {
        "PIPELINE_APP_ID": tag,
        "OTLP_SPANS_TOPIC": f"{tag}.spans",
        "OTLP_METRICS_TOPIC": f"{tag}.metrics",
        "FINDINGS_TOPIC": f"{tag}.findings",
        "DEADLETTER_TOPIC": f"{tag}.deadletter",
        "SERVICE_MAP_TOPIC": f"{tag}.service_map",
        "INCIDENTS_TOPIC": f"{tag}.incidents",
        "FEEDBACK_TOPIC": f"{tag}.feedback",
        "PIPELINE_PARTITIONS": "4",
        "OUTPUT_PARTITIONS": "2",
        "STATE_FLUSH_INTERVAL_S": "0.5",
        "PIPELINE_DETECTORS": (
            "tests.support.counting:SpanCounter,tests.support.counting:PointCounter"
        ),
    }
    try:
        asyncio.run(cleanup(bootstrap, tag))
    except Exception as exc:  # the broker may be gone already; the test result stands
        print(f"cleanup: could not delete the topics under {tag}: {exc}", file=sys.stderr)


@pytest.fixture
def workers(tmp_path: Path, bootstrap: str, names: dict[str, str]
            ) -> Iterator[Callable[..., Worker]]:
    # ``names`` is set up before, so torn down after, the workers: topics go once they stop.
    started: list[Worker] = []

    def make(env: dict[str, str], data_dir: str = "state") -> Worker:
        w = Worker(
            {**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
             "PIPELINE_DATA_DIR": str(tmp_path / data_dir)},
            tmp_path / f"worker-{len(started)}.log",
        )
        started.append(w.start())
        return w

    yield make
    for w in started:
        w.stop()


async def produce(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None, int]],
                  max_request_size: int = 8 * 1024 * 1024) -> None:
    """records: (topic, key, value, timestamp_ms)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=max_request_size)
    await producer.start()
    try:
        for topic, key, value, ts in records:
            await producer.send(topic, value=value, key=key, timestamp_ms=ts)
        await producer.flush()
    finally:
        await producer.stop()


async def consume(bootstrap: str, topic: str, until: Callable[[list[ConsumerRecord]], bool],
                  timeout: float = 90.0) -> list[ConsumerRecord]:
    """Read ``topic`` from the start until ``until(records)`` holds or ``timeout`` passes."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
        metadata_max_age_ms=2000,
    )
    await consumer.start()
    out: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            batches = await consumer.getmany(timeout_ms=500)
            for recs in batches.values():
                out.extend(recs)
    finally:
        await consumer.stop()
    return out


async def read_to_end(bootstrap: str, topic: str, timeout: float = 90.0) -> list[ConsumerRecord]:
    """Every record ``topic`` holds now: each partition from its start to its end offset as of
    the call. Fails if that is not reached within ``timeout`` (a read for a fixed time can stop
    short on a loaded machine and look like data lost)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, metadata_max_age_ms=2000)
    await consumer.start()
    out: list[ConsumerRecord] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            await consumer.topics()  # a metadata request
            parts = consumer.partitions_for_topic(topic)
            if parts or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert parts, f"topic {topic} not found"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
            if not left:
                break
            assert time.monotonic() < deadline, (
                f"read {len(out)} records of {topic} in {timeout:.0f} s, not to its end: "
                + ", ".join(f"{tp.partition}: at {await consumer.position(tp)} of {ends[tp]}"
                            for tp in sorted(left)))
            batches = await consumer.getmany(*left, timeout_ms=500)
            for tp, recs in batches.items():
                out.extend(r for r in recs if r.offset < ends[tp])
    finally:
        await consumer.stop()
    return out


async def wait_for(predicate: Callable[[], Any], timeout: float = 90.0, what: str = "") -> Any:
    """Poll ``predicate`` (a function, or a coroutine function) until it is true."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what or predicate}: last {value!r}"
    )
