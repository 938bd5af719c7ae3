"""The command-line tools against the real broker, as an operator runs them: ``tail --json`` in
a pipe, ``tail --from-beginning --time-order``, Ctrl-C in ``simulate``, and a worker's /metrics
without ``_created`` series."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from pipeline.findings import rfc3339
from pipeline.settings import Settings
from pipeline.topics import ensure_topics
from tests.integration.conftest import consume

ROOT = Path(__file__).parents[2]
T0 = 1_767_600_000 * 10**9  # 2026-01-05T08:00:00Z
S = 10**9


def finding(n: int, at_s: int, status: str = "firing") -> dict[str, Any]:
    return {
        "schema_version": "1.2", "id": f"{n:032x}", "fingerprint": f"{n:032x}",
        "kind": "memory_leak", "status": status, "severity": "warning",
        "entity": {"service": "cart", "instance": f"cart-{n}"},
        "started_at": rfc3339(T0), "detected_at": rfc3339(T0 + at_s * S),
        "resolved_at": rfc3339(T0 + (at_s + 5) * S) if status == "resolved" else None,
        "summary": f"finding {n}", "evidence": {}, "next_steps": [],
        "detector": {"name": "memory", "version": "1"},
    }


async def publish(settings: Settings, by_partition: dict[int, list[dict[str, Any]]]) -> None:
    await ensure_topics(settings, internal=False)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for partition, docs in by_partition.items():
            for doc in docs:
                await producer.send(settings.findings_topic, orjson.dumps(doc),
                                    key=doc["fingerprint"].encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def env_for(bootstrap: str, names: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PYTHONPATH": str(ROOT)}


def event_time(doc: dict[str, Any]) -> str:
    return doc["resolved_at"] if doc["status"] == "resolved" else doc["detected_at"]


def test_tail_json_stdout_is_only_json_lines_and_time_order_sorts_the_backlog(
        bootstrap: str, names: dict[str, str]) -> None:
    settings = Settings.from_env({**names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    # Partition 0 holds the early and late findings, partition 1 those in between: partition
    # order is not time order. (The resolved one's time is when it resolved.)
    p0 = [finding(1, 10), finding(2, 50), finding(3, 90)]
    p1 = [finding(4, 30), finding(5, 60, "resolved"), finding(6, 70)]
    asyncio.run(publish(settings, {0: p0, 1: p1}))
    env = env_for(bootstrap, names)
    # An unreachable worker's status line, asked for at every turn: it must not reach stdout.
    common = [sys.executable, "-m", "pipeline", "tail", "--json", "--from-beginning",
              "--metrics-url", "http://127.0.0.1:9/metrics", "--status-every", "0",
              "--timeout", "3"]
    p = subprocess.run([*common, "--time-order"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    docs = [orjson.loads(line) for line in p.stdout.splitlines()]  # every line is JSON
    assert [d["summary"] for d in docs] == [f"finding {n}" for n in (1, 4, 2, 5, 6, 3)]
    assert [event_time(d) for d in docs] == sorted(event_time(d) for d in docs)
    assert "tailing" in p.stderr and "in event-time order" in p.stderr
    assert "worker metrics not reachable" in p.stderr  # the status went to stderr

    p = subprocess.run(common, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    docs = [orjson.loads(line) for line in p.stdout.splitlines()]
    assert sorted(d["summary"] for d in docs) == [f"finding {n}" for n in range(1, 7)]
    for part in (p0, p1):  # without --time-order: each partition in its own order
        mine = [d["summary"] for d in docs if d in part]
        assert mine == [d["summary"] for d in part]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_ctrl_c_in_simulate_is_one_line(bootstrap: str, names: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "simulate", "--mode", "live", "--speed", "10",
         "--duration", "30m", "--spans-topic", names["OTLP_SPANS_TOPIC"],
         "--metrics-topic", names["OTLP_METRICS_TOPIC"]],
        cwd=ROOT, env=env_for(bootstrap, names), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        # (a child of a non-interactive shell may inherit SIGINT ignored)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        first = asyncio.run(consume(bootstrap, names["OTLP_SPANS_TOPIC"], until=bool,
                                    timeout=120))
        assert first and proc.poll() is None, "the simulator wrote nothing, or stopped"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert err.splitlines() == [
        "simulate: interrupted; the records sent so far stay in Kafka"], err
    assert out.startswith("simulate: scenario demo")


def test_worker_metrics_have_no_created_series(workers: Callable[..., Any],
                                               names: dict[str, str]) -> None:
    w = workers(names)
    wait_for(lambda: not w.alive() or any(k[0].endswith("_total") for k in w.metrics()), 180,
             "the worker's /metrics")
    series = w.metrics()
    assert any(k[0].endswith("_total") for k in series), w.log()[-3000:]
    created = sorted({k[0] for k in series if k[0].endswith("_created")})
    assert created == []
