"""Real sockets, the real kernel, the real broker and worker: a client that stops reusing its
connections becomes a ``time_wait_buildup`` finding for its host; one that keeps reusing them,
at the same request rate, does not.

Two trivial request/response servers listen on 127.0.0.1 (ephemeral ports), one per case, and
two clients call them at the same rate. During the warm-up both send 5 requests/s over one
kept-alive connection, plus one health check a connection every 2 s: a small, real TIME_WAIT
baseline (~30 sockets), steady once the clients have run for 60 s, which is when the scrapes
begin (a TIME_WAIT count still ramping up would be the detector's baseline minute). Once the
detector has completed that minute (the first scrape of the next event-time minute is
published), both go to 100 requests/s for at most 80 s: client A ("loopback-noreuse") opens
a new connection per request and closes it first, so each request leaves a client socket in
TIME_WAIT for the kernel's 60 s; client B ("loopback-reuse") sends the same requests over its
one connection. Every connection is counted and capped (8,500 per client); everything stays
on loopback and stops by itself (hard timeout 240 s; 2.3-3.1 minutes in all, depending on
where the minute boundary falls).

Every 5 s of wall clock the test reads the kernel's socket table (``/proc/net/tcp`` and
``/proc/net/tcp6``, which is what the hostmetrics receiver reads through gopsutil) and publishes
for each case what the receiver publishes: resource ``host.name``, ``system.network.connections``
(``{connections}``, a non-monotonic cumulative Sum since boot), one point per TCP state
(``protocol=tcp``, ``state``; every state of the receiver's list, 0 when absent), stamped with
the real measurement time, as protobuf ``ExportMetricsServiceRequest`` records on the metrics
topic (the Collector's kafka exporter, ``otlp_proto``, unkeyed). The worker runs the built-in
detectors only, with the TIME_WAIT detector's warm-up cut to one minute and its sustain to 20 s
(its factor and minimum excess over the expected count stay at their defaults).

What it proves: the TIME_WAIT the kernel really holds for a client without reuse, published as
the hostmetrics receiver publishes it, reaches the detector through ingest, routing and event
time, and opens a firing finding for that host only (valid against the finding schema, keyed by
fingerprint, ``time_wait`` exactly the count published at ``detected_at``, after the sustain);
the same request rate with reuse opens nothing within 30 s more of load.

Why per-port counting: the socket table is the machine's, shared with the broker, the worker
and anything else running here. Each case counts only sockets on 127.0.0.1 whose remote port
(client side) or local port (server side, its listener) is that case's server port: the
per-destination view of the host, as ``ss state time-wait dport = :PORT`` would show it. The
published metric is what hostmetrics publishes for a whole host; here each "host" is the
traffic to one local server, so that the counts are ours alone and both cases share one kernel.

Why one input partition: the worker's event-time watermark for a routed partition waits for
every input partition of the metrics topic. A Collector's unkeyed records land on whichever
partition its producer picks; with two scrapes every 5 s, a one-partition metrics topic
(``PIPELINE_PARTITIONS=1``) lets every scrape move the watermark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import socketserver
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from pipeline.detectors.timewait import KIND
from pipeline.findings import rfc3339
from pipeline.settings import Settings
from tests.integration.conftest import consume, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())

NS = 10**9
MINUTE_NS = 60 * NS
HOSTS = {False: "loopback-noreuse", True: "loopback-reuse"}  # by reuse
SCRAPE_S = 5.0  # the receiver's collection_interval
WARMUP_RATE, LOAD_RATE = 5.0, 100.0  # requests per second, each client
HEALTH_EVERY_S = 2.0  # both clients: a health check on its own connection (the baseline)
LOAD_MAX_S = 80.0  # the load stops by itself after this
MAX_CONNECTIONS = 8_500  # per client, whole test: 80 s x 100/s + health checks + warm-up
PREWARM_S = 61.0  # health checks this long before the first scrape: TIME_WAIT is steady
MARGIN_S = 30.0  # after the finding: the reuse case must still have none
HARD_TIMEOUT_S = 240.0
DETECTOR_ENV = {"TIME_WAIT_WARMUP_S": "60", "TIME_WAIT_SUSTAIN_S": "20"}
SUSTAIN_NS = 20 * NS
FACTOR, MIN_EXCESS = Settings().time_wait_factor, Settings().time_wait_min_excess

# /proc/net/tcp state codes, named as gopsutil names them (the hostmetrics receiver counts
# connections by these names).
PROC_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK",
    "0A": "LISTEN", "0B": "CLOSING",
}
# The networkscraper's allTCPStates (Linux): each is sent, 0 when no socket is in it.
HOSTMETRICS_STATES = (
    "CLOSE_WAIT", "CLOSE", "CLOSING", "DELETE", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2",
    "LAST_ACK", "LISTEN", "SYN_SENT", "SYN_RECV", "TIME_WAIT",
)
NETWORK_SCRAPER = ("github.com/open-telemetry/opentelemetry-collector-contrib/receiver/"
                   "hostmetricsreceiver/internal/scraper/networkscraper")
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::ffff:127.0.0.1


# -- the kernel's socket table -----------------------------------------------------------------
def socket_counts(ports: dict[bool, int]) -> dict[bool, Counter[str]]:
    """Sockets by state, per case: those on 127.0.0.1 whose remote or local port is the case's
    server port (client and server side of its connections, and its listener)."""
    by_port = {port: reuse for reuse, port in ports.items()}
    out: dict[bool, Counter[str]] = {reuse: Counter() for reuse in ports}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            next(f, None)  # header
            for line in f:
                fields = line.split()
                if len(fields) < 4:
                    continue
                local_addr, _, local_port = fields[1].partition(":")
                remote_addr, _, remote_port = fields[2].partition(":")
                if local_addr not in LOOPBACK:
                    continue
                reuse = by_port.get(int(remote_port, 16), by_port.get(int(local_port, 16)))
                if reuse is not None and (remote_addr in LOOPBACK or fields[3] == "0A"):
                    out[reuse][PROC_STATES.get(fields[3], "UNKNOWN")] += 1
    return out


def boot_time_ns() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1]) * NS
    return 0


def hostmetrics_request(host: str, t_ns: int, start_ns: int, counts: Counter[str]) -> bytes:
    """``system.network.connections`` as the hostmetrics receiver's network scraper sends it."""
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    for key, value in (("host.name", host), ("os.type", "linux")):
        kv = rm.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    sm = rm.scope_metrics.add()
    sm.scope.name = NETWORK_SCRAPER
    m = sm.metrics.add()
    m.name, m.unit, m.description = (
        "system.network.connections", "{connections}", "The number of connections.")
    m.sum.aggregation_temporality, m.sum.is_monotonic = 2, False  # cumulative, not monotonic
    states = dict.fromkeys(HOSTMETRICS_STATES, 0)
    states.update(counts)
    for state, n in states.items():
        dp = m.sum.data_points.add()
        dp.start_time_unix_nano, dp.time_unix_nano, dp.as_int = start_ns, t_ns, n
        for key, value in (("protocol", "tcp"), ("state", state)):
            kv = dp.attributes.add()
            kv.key, kv.value.string_value = key, value
    return req.SerializeToString()


# -- servers and clients -----------------------------------------------------------------------
class _Handler(socketserver.StreamRequestHandler):
    timeout = 10  # a stuck client cannot hold a handler thread for long

    def handle(self) -> None:
        for _request in self.rfile:  # until the client closes: the client closes first
            self.wfile.write(b"OK\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128


class Client(threading.Thread):
    """One service calling its server: one kept-alive connection, plus a health check on its
    own short connection every ``HEALTH_EVERY_S``; while ``load_until`` is ahead, ``LOAD_RATE``
    requests/s, each on a new connection it closes itself when it does not reuse them."""

    def __init__(self, port: int, reuse: bool, stop: threading.Event) -> None:
        super().__init__(name=f"client-{HOSTS[reuse]}", daemon=True)
        self.port, self.reuse, self.stop = port, reuse, stop
        self.load_until = 0.0  # time.monotonic() until which the load runs
        self.opened = self.requests = 0
        self.errors: list[str] = []
        self._conn: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.opened >= MAX_CONNECTIONS:
            raise RuntimeError(f"connection cap {MAX_CONNECTIONS} reached")
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.opened += 1
        return s

    @staticmethod
    def _call(s: socket.socket) -> None:
        s.sendall(b"GET /\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError("server closed the connection")
            reply += chunk

    def run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # reported by the test
            self.errors.append(repr(exc))
        finally:
            if self._conn is not None:
                self._conn.close()

    def _loop(self) -> None:
        next_call = next_health = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_health:
                with self._connect() as s:  # closed here first: TIME_WAIT on this side
                    self._call(s)
                next_health += HEALTH_EVERY_S
            loaded = now < self.load_until
            if loaded and not self.reuse:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                with self._connect() as s:
                    self._call(s)
            else:
                if self._conn is None:
                    self._conn = self._connect()
                self._call(self._conn)
            self.requests += 1
            next_call += 1.0 / (LOAD_RATE if loaded else WARMUP_RATE)
            delay = next_call - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1.0:  # fell behind: go on at the rate, no burst
                next_call = time.monotonic()


# -- the scrapes ---------------------------------------------------------------------------------
class Scraper:
    """Every ``SCRAPE_S``: read the socket table, publish one record per case."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, ports: dict[bool, int]) -> None:
        self.producer, self.topic, self.ports = producer, topic, ports
        self.start_ns = boot_time_ns()
        self.samples: list[tuple[int, dict[bool, Counter[str]]]] = []

    async def run(self) -> None:
        next_at = time.monotonic()
        while True:
            t_ns = time.time_ns()  # the measurement time is the event time
            counts = await asyncio.to_thread(socket_counts, self.ports)
            for reuse, host in HOSTS.items():
                value = hostmetrics_request(host, t_ns, self.start_ns, counts[reuse])
                await self.producer.send_and_wait(self.topic, value,
                                                  timestamp_ms=t_ns // 1_000_000)
            self.samples.append((t_ns, counts))
            next_at += SCRAPE_S
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def series(self, t0_ns: int) -> str:
        rows = [f"{(t - t0_ns) / NS:+7.1f}s " + "  ".join(
            f"{HOSTS[r]} TW={c['TIME_WAIT']} EST={c['ESTABLISHED']}" for r, c in counts.items())
            for t, counts in self.samples]
        return "\n".join(rows)


async def topic_exists(bootstrap: str, topic: str, timeout: float) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while topic not in await admin.list_topics():
            assert time.monotonic() < deadline, f"the worker did not create {topic}"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


# -- the test ------------------------------------------------------------------------------------
async def test_no_reuse_on_real_sockets_is_a_time_wait_buildup_reuse_is_not(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    env = {**names, "PIPELINE_DETECTORS": "", "PIPELINE_PARTITIONS": "1", **DETECTOR_ENV}
    stop = threading.Event()
    servers = {reuse: _Server(("127.0.0.1", 0), _Handler) for reuse in HOSTS}
    for s in servers.values():
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()
    ports = {reuse: s.server_address[1] for reuse, s in servers.items()}
    clients = {reuse: Client(ports[reuse], reuse, stop) for reuse in HOSTS}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    scraper = Scraper(producer, names["OTLP_METRICS_TOPIC"], ports)
    scrapes: asyncio.Task[None] | None = None
    worker = workers(env)
    t0_ns = time.time_ns()
    state: dict[str, Any] = {}

    def report() -> str:
        log = worker.log()
        lines = [x for x in log.splitlines() if "finding" in x or "rror" in x][-20:]
        load_s = (state["load_ns"] - t0_ns) / NS if "load_ns" in state else None
        return (f"ports {ports}; load from {load_s} s\n"
                f"clients: " + "; ".join(
                    f"{c.name} opened={c.opened} requests={c.requests} errors={c.errors}"
                    for c in clients.values())
                + f"\npublished (seconds from start):\n{scraper.series(t0_ns)}\n"
                + "worker log:\n" + "\n".join(lines) + "\n" + log[-2000:])

    try:
        async with asyncio.timeout(HARD_TIMEOUT_S):
            for c in clients.values():
                c.start()
            prewarmed = time.monotonic() + PREWARM_S
            await topic_exists(bootstrap, names["OTLP_METRICS_TOPIC"], timeout=60)
            await producer.start()
            await asyncio.sleep(max(0.0, prewarmed - time.monotonic()))
            scrapes = asyncio.create_task(scraper.run())

            # The baseline: steady quiet scrapes to the end of the first event-time minute,
            # then one scrape of the next minute (the detector has its baseline minute then).
            await wait_for(lambda: scraper.samples or scrapes.done(), timeout=30,
                           what="the first scrape")
            first_ns = scraper.samples[0][0]
            boundary = (first_ns // MINUTE_NS + 1) * MINUTE_NS
            await wait_for(lambda: scraper.samples[-1][0] >= boundary or scrapes.done(),
                           timeout=75, what="the baseline minute")
            assert not scrapes.done(), scrapes.exception()
            quiet = scraper.samples[-1][1]
            assert all(c.is_alive() for c in clients.values()), report()

            # The load: same request rate on both, reuse on one only.
            state["load_ns"] = load_ns = time.time_ns()
            until = time.monotonic() + LOAD_MAX_S
            for c in clients.values():
                c.load_until = until

            def noreuse_fired(recs: list) -> bool:
                return any(
                    f["kind"] == KIND and f["status"] == "firing"
                    and f["entity"] == {"host": HOSTS[False]}
                    for f in (orjson.loads(r.value) for r in recs))

            out = await consume(bootstrap, names["FINDINGS_TOPIC"], noreuse_fired,
                                timeout=LOAD_MAX_S)
            assert noreuse_fired(out), f"no finding for {HOSTS[False]}\n{report()}"
            arrived = time.monotonic()
            # Load and scrapes go on: by now plus the margin the reuse case has none either.
            out = await consume(bootstrap, names["FINDINGS_TOPIC"],
                                lambda _: time.monotonic() >= arrived + MARGIN_S,
                                timeout=MARGIN_S + 15)
            assert not scrapes.done(), scrapes.exception()
            assert time.monotonic() < until, "the load stopped before the margin was over"
    except TimeoutError:
        pytest.fail(f"not done within {HARD_TIMEOUT_S:.0f} s\n{report()}")
    finally:
        stop.set()
        if scrapes is not None:
            scrapes.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await scrapes
        for c in clients.values():
            if c.is_alive():
                c.join(timeout=10)
        for s in servers.values():
            s.shutdown()
            s.server_close()
        await producer.stop()

    print(f"\npublished (seconds from start, load at "
          f"{(load_ns - t0_ns) / NS:.1f} s):\n{scraper.series(t0_ns)}")
    assert all(not c.errors for c in clients.values()), report()
    findings = [orjson.loads(r.value) for r in out]
    for r, f in zip(out, findings, strict=True):
        jsonschema.validate(f, SCHEMA)
        assert r.key == f["fingerprint"].encode()
    ours = [f for f in findings if f["kind"] == KIND]
    assert {f["entity"]["host"] for f in ours} == {HOSTS[False]}, (
        f"with reuse there must be no finding: {ours}\n{report()}")
    fired = next(f for f in ours if f["status"] == "firing")
    print(f"finding ({fired['severity']}, detected {fired['detected_at']}): {fired['summary']}"
          f"\nevidence: {fired['evidence']}")

    # The count the detector reports is exactly the kernel's, as published at detected_at.
    published = {rfc3339(t): counts for t, counts in scraper.samples}
    at = published[fired["detected_at"]]
    ev = fired["evidence"]
    assert ev["host"] == HOSTS[False]
    assert ev["time_wait"] == at[False]["TIME_WAIT"] >= MIN_EXCESS
    assert ev["time_wait"] >= FACTOR * ev["expected_time_wait"]
    assert ev["time_wait"] - ev["expected_time_wait"] >= MIN_EXCESS
    assert ev["established"] == max(at[False]["ESTABLISHED"], 1)
    # The baseline is the quiet minute's real count (health checks only).
    baseline = [c[False]["TIME_WAIT"] for t, c in scraper.samples if t < boundary]
    assert min(baseline) <= ev["baseline_time_wait"] <= max(baseline)
    # Sustained for SUSTAIN_NS of event time after the load began, not at its first scrape.
    assert fired["detected_at"] >= rfc3339(load_ns + SUSTAIN_NS)
    assert fired["started_at"] >= rfc3339(load_ns)
    # The kernel really held them: the no-reuse case piled up TIME_WAIT, the reuse case did
    # not (same requests), and before the load both were alike and small.
    during = [c for t, c in scraper.samples if t > load_ns]
    assert max(c[False]["TIME_WAIT"] for c in during) >= 1000
    assert max(c[True]["TIME_WAIT"] for c in during) < 2 * quiet[True]["TIME_WAIT"] + 10
    assert all(15 <= quiet[r]["TIME_WAIT"] <= 45 and quiet[r]["LISTEN"] == 1 for r in HOSTS)
    assert clients[False].opened > 10 * clients[True].opened
    assert clients[False].opened <= MAX_CONNECTIONS
