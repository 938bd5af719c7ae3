"""The corpus's real programs, instrumented with the official OpenTelemetry Python SDK.

Run under the corpus's own virtualenv (``requirements.txt``: the SDK, its OTLP/HTTP exporter and
the contrib instrumentations, from PyPI), never the worker's. Configuration comes the way a
deployment gives it: ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` (host, process and
service instance detectors: ``host.name``, ``process.pid``, a random ``service.instance.id``).

    python programs.py ROLE [args]

Roles:
- ``frontend PORT ORDERS CATALOG PRICING``: WSGI server; ``GET /checkout`` calls orders, pricing
  and catalog, ``GET /browse[?item=N]`` calls catalog twice and pricing (urllib: generic client
  spans). An unknown item (catalog answers 404) is the client's mistake: ``/browse`` answers 404
  itself. A failed call (an ``HTTPError`` for a 5xx) is not caught: the request fails with a
  500 (wsgiref's error page). Calls to catalog are retried once on a 503, as a client library
  with a retry policy does.
- ``orders PORT DB CATALOG``: WSGI; ``POST /order`` runs an indexed SQLite query (the fault
  injector drops the index from outside), reads the ``loyalty`` table for a third of the
  customers (the injector renames the table away from outside: a real
  ``sqlite3.OperationalError``, not caught) and asks catalog for stock.
- ``catalog PORT``: WSGI; a small SQLite read of the asked item, 404 when there is none.
- ``pricing PORT``: WSGI; a little arithmetic.

Fault flags: the fault injector writes a number into a file of the directory ``CORPUS_CONTROL``
(``control``), read on every request: ``pricing_error_share`` (the share of pricing's requests
that fail with a 500: its rate feed is down) and ``catalog_down_every`` (N: catalog routes its
requests round-robin over N replicas and one of them is down, so every N-th request gets a 503).
- ``leaky MB_PER_MIN START_S``: grows the heap by MB_PER_MIN from START_S on; ``steady``:
  allocates and frees the same amount each second; ``cachewarm MB``: fills a cache to MB over
  five minutes, then replaces entries (flat).
- ``churn PORT RATE``: a plain TCP client that opens, uses and closes one connection per
  request at RATE per second against a plain server on PORT (closed first by the client, so the
  TIME_WAIT sockets are its own); runs until killed.
- ``echo PORT``: the plain server ``churn`` talks to (not instrumented).
"""

from __future__ import annotations

import os
import random
import socket
import socketserver
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


def control(name: str) -> float:
    """The fault injector's flag ``name``: the number in the file ``name`` of the directory
    ``CORPUS_CONTROL``; 0 when there is no such directory, file or number."""
    directory = os.environ.get("CORPUS_CONTROL")
    if not directory:
        return 0.0
    try:
        with open(os.path.join(directory, name)) as fh:
            return float(fh.read().strip() or 0)
    except (OSError, ValueError):
        return 0.0


def setup_otel(traces: bool = True) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # runs OTEL_EXPERIMENTAL_RESOURCE_DETECTORS
    if traces:
        tp = TracerProvider(resource=resource)
        tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tp)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter())
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader]))
    SystemMetricsInstrumentor().instrument()


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(port: int, app) -> None:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    make_server("127.0.0.1", port, OpenTelemetryMiddleware(app),
                server_class=ThreadingWSGIServer, handler_class=QuietHandler).serve_forever()


def call(url: str, data: bytes | None = None, retries: int = 0) -> bytes:
    """One request; a 503 is retried up to ``retries`` times (each attempt its own client
    span), any other error status raises ``urllib.error.HTTPError``."""
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(url, data=data, timeout=10) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            e.close()
            if e.code != 503 or attempt == retries:
                raise
            time.sleep(0.005)
    raise AssertionError("unreachable")


def respond(start_response, body: bytes = b"ok", status: str = "200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def frontend(port: str, orders: str, catalog: str, pricing: str) -> None:
    setup_otel()
    from opentelemetry.instrumentation.urllib import URLLibInstrumentor

    URLLibInstrumentor().instrument()

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        item = random.randrange(1000)
        if path == "/checkout":
            call(f"http://127.0.0.1:{orders}/order", data=f"customer={item}".encode())
            call(f"http://127.0.0.1:{pricing}/price?item={item}")
            call(f"http://127.0.0.1:{catalog}/item?id={item}", retries=1)
        elif path == "/browse":
            asked = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("item")
            if asked and asked[0].isdigit():
                item = int(asked[0])
            try:
                call(f"http://127.0.0.1:{catalog}/item?id={item}", retries=1)
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
                return respond(start_response, b"no such item", "404 Not Found")
            call(f"http://127.0.0.1:{catalog}/item?id={(item + 1) % 1000}", retries=1)
            call(f"http://127.0.0.1:{pricing}/price?item={item}")
        else:
            return respond(start_response, b"not found", "404 Not Found")
        return respond(start_response)

    serve(int(port), app)


def make_orders_db(path: str, rows: int = 400_000) -> None:
    """The orders table and its index (run once by the recorder, before the services)."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, amount REAL)")
    rnd = random.Random(7)
    db.executemany("INSERT INTO orders (customer, amount) VALUES (?, ?)",
                   ((rnd.randrange(20_000), rnd.random() * 100) for _ in range(rows)))
    db.execute("CREATE INDEX orders_customer ON orders (customer)")
    db.execute("CREATE TABLE loyalty (customer INTEGER PRIMARY KEY, points INTEGER)")
    db.executemany("INSERT INTO loyalty VALUES (?, ?)",
                   ((c, rnd.randrange(500)) for c in range(0, 20_000, 3)))
    db.commit()
    db.close()


def orders(port: str, db_path: str, catalog: str) -> None:
    setup_otel()
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
    from opentelemetry.instrumentation.urllib import URLLibInstrumentor

    SQLite3Instrumentor().instrument()
    URLLibInstrumentor().instrument()
    local = threading.local()

    def app(environ, start_response):
        if environ["PATH_INFO"] != "/order":
            return respond(start_response, b"not found", "404 Not Found")
        size = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(size)
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(db_path, check_same_thread=False)
        cur = local.db.cursor()
        customer = random.randrange(20_000)
        cur.execute("SELECT count(*), sum(amount) FROM orders WHERE customer = ?", (customer,))
        cur.fetchall()
        if customer % 3 == 0:  # a loyalty member: the points (raises if the table is gone)
            cur.execute("SELECT points FROM loyalty WHERE customer = ?", (customer,))
            cur.fetchall()
        call(f"http://127.0.0.1:{catalog}/item?id={random.randrange(1000)}", retries=1)
        return respond(start_response)

    serve(int(port), app)


def catalog(port: str) -> None:
    setup_otel()
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    SQLite3Instrumentor().instrument()
    local = threading.local()
    lock = threading.Lock()
    served = [0]

    def app(environ, start_response):
        with lock:
            n = served[0] = served[0] + 1
        every = int(control("catalog_down_every"))
        if every > 0 and n % every == 0:  # the request went to the replica that is down
            return respond(start_response, b"replica unavailable", "503 Service Unavailable")
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(":memory:", check_same_thread=False)
            local.db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
            local.db.executemany("INSERT INTO items VALUES (?, ?)",
                                 ((i, f"item {i}") for i in range(1000)))
        asked = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("id")
        item = int(asked[0]) if asked and asked[0].isdigit() else random.randrange(1000)
        cur = local.db.cursor()
        cur.execute("SELECT name FROM items WHERE id = ?", (item,))
        if not cur.fetchall():
            return respond(start_response, b"no such item", "404 Not Found")
        return respond(start_response)

    serve(int(port), app)


def pricing(port: str) -> None:
    setup_otel()

    def app(environ, start_response):
        if random.random() < control("pricing_error_share"):  # its rate feed is down
            return respond(start_response, b"rate feed unavailable",
                           "500 Internal Server Error")
        total = sum(i * i for i in range(2000))
        return respond(start_response, str(total).encode())

    serve(int(port), app)


def leaky(mb_per_min: str, start_s: str) -> None:
    setup_otel(traces=False)
    rate = float(mb_per_min) * 1024 * 1024 / 60
    start = time.monotonic() + float(start_s)
    kept: list[bytes] = []
    while True:
        churn = [bytes(1024) for _ in range(2000)]  # short-lived garbage, as a service makes
        del churn
        if time.monotonic() >= start:
            kept.append(os.urandom(int(rate)))  # touched pages: the leak is resident
        time.sleep(1.0)


def steady() -> None:
    setup_otel(traces=False)
    while True:
        buf = [os.urandom(65536) for _ in range(64)]
        del buf
        time.sleep(1.0)


def cachewarm(mb: str) -> None:
    setup_otel(traces=False)
    cap = int(float(mb) * 16)  # entries of 64 KiB
    per_s = max(1, cap // 300)
    cache: dict[int, bytes] = {}
    key = 0
    while True:
        for _ in range(per_s):
            cache[key] = os.urandom(65536)
            key += 1
            if len(cache) > cap:
                cache.pop(next(iter(cache)))
        time.sleep(1.0)


def echo(port: str) -> None:
    class H(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data = self.request.recv(64)
            self.request.sendall(data)
            self.request.recv(64)  # wait for the client's close: the client closes first

    class S(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 1024

    S(("127.0.0.1", int(port)), H).serve_forever()


def churn(port: str, rate: str) -> None:
    gap = 1.0 / float(rate)
    nxt = time.monotonic()
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", int(port)), timeout=5)
            s.sendall(b"ping")
            s.recv(64)
            s.close()
        except OSError:  # EADDRNOTAVAIL once the ports run out: keep trying, as a client would
            time.sleep(0.01)
        nxt += gap
        time.sleep(max(0.0, nxt - time.monotonic()))


ROLES = {f.__name__: f for f in (frontend, orders, catalog, pricing, leaky, steady, cachewarm,
                                 echo, churn)}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
