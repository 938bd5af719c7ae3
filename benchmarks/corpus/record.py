"""Record the real-telemetry corpus: real programs, real faults, labels from the injector.

    benchmarks/corpus/fetch.sh          # the OTel Python SDK venv and the Java agent jar
    python -m benchmarks.corpus.record [--minutes 45] [--out .cache/corpus/run] [--schedule a]
    python -m benchmarks.corpus.record --schedule errors --out .cache/corpus/errors  # 20 min

Starts an OTLP/HTTP recorder (``recorder.py``) on 127.0.0.1 and, exporting to it, real programs
instrumented with the official OpenTelemetry SDKs and agents (``programs.py`` under the Python
SDK; ``Leak.java`` on a JVM under the Java agent), a bursty load generator and two delaying TCP
proxies. Then it injects the schedule's faults for real and writes each fault's label, with the
times it actually started and ended, to ``labels.jsonl`` (the scoring format of
``benchmarks.scoring``; ``entity_any`` lists alternative entities that each count as naming the
fault). Every process it starts stops when it ends (and after ``--minutes`` at the latest).

The services (Python SDK 1.45, contrib instrumentations 0.66b1, as they come):
``frontend`` -> ``orders`` (SQLite, indexed query) -> ``catalog``; ``frontend`` -> ``catalog``
and ``pricing``, each through a proxy (``catalog-proxy``, ``pricing-proxy``) that the injector
can slow; the client spans are urllib's generic ``GET``/``POST``. Runtime programs: a Python
leak, a steady and a cache-warming control, a Java leak and a Java GC-pressure program (the agent's
default 60 s export interval; the Python programs export every 15 s).

The ``errors`` schedule (``ERROR_FAULTS``): real errors, toggled at run time through the
programs' fault flags (files in ``<out>/control``, ``programs.control``) or from outside:
pricing answering 500 to a share of its requests (its callers fail with it), a table of orders'
database renamed away (a real ``sqlite3.OperationalError``, unhandled), and two hard negatives:
the load generator asking for items that do not exist (catalog's 404, handled by the frontend)
and a catalog replica that is down (503s its callers hide with one retry).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from benchmarks.corpus import programs
from benchmarks.corpus.recorder import Recording, serve

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = Path(os.environ.get("CORPUS_CACHE", ROOT / ".cache" / "corpus"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The delaying TCP proxy (the "slow downstream" fault: time between caller and callee)


class DelayProxy:
    """Forwards 127.0.0.1:listen to 127.0.0.1:target; ``delay_s`` is added before each chunk
    of the callee's reply reaches the caller, so the caller's client spans grow while the
    callee's own server spans do not."""

    def __init__(self, listen: int, target: int) -> None:
        self.listen, self.target, self.delay_s = listen, target, 0.0

    async def _pipe(self, reader, writer, delayed: bool) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, creader, cwriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(self._pipe(creader, uwriter, False),
                             self._pipe(ureader, cwriter, True))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.listen, backlog=512), loop
        ).result(10)

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


# ---------------------------------------------------------------------------------------------
# The run


class Run:
    def __init__(self, out: Path, minutes: float, seed: int, schedule: str = "a") -> None:
        self.out, self.minutes, self.rnd = out, minutes, random.Random(seed)
        self.schedule = schedule
        self.control = out / "control"  # the programs' fault flags (``programs.control``)
        self.control.mkdir(exist_ok=True)
        self.missing_share = 0.0  # share of browsing that asks for items that do not exist
        self.load_rates: tuple[float, ...] = SCHEDULES[schedule].get("load_rates", LOAD_RATES)
        self.procs: dict[str, subprocess.Popen] = {}
        self.labels: list[dict[str, Any]] = []
        self.t0 = time.time_ns()
        self.host = socket.gethostname()
        self.stop = threading.Event()
        self.port = free_port()
        self.recording = Recording(out / "otlp.bin")
        self.ports = {n: free_port() for n in (
            "frontend", "orders", "catalog", "pricing", "catalog-proxy", "pricing-proxy", "echo")}
        self.venv_py = str(CACHE / "venv" / "bin" / "python")
        self.agent = str(CACHE / "opentelemetry-javaagent.jar")

    def env(self, service: str, interval_ms: int = 15000) -> dict[str, str]:
        return {
            **os.environ,
            "OTEL_SERVICE_NAME": service,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
            "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "otel,host,process,service_instance",
            "OTEL_SEMCONV_STABILITY_OPT_IN": "",
            "CORPUS_CONTROL": str(self.control),
        }

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with open(self.out / f"{name}.log", "wb") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                argv, env=env or os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def py(self, name: str, role: str, *args: Any, service: str | None = None) -> None:
        self.spawn(name, [self.venv_py, str(HERE / "programs.py"), role, *map(str, args)],
                   self.env(service or name))

    def java(self, name: str, *args: Any, xmx: str = "256m") -> None:
        env = self.env(name)
        env.pop("OTEL_METRIC_EXPORT_INTERVAL")  # the agent's default: 60 s
        classes = self.out / "classes"
        if not (classes / "Leak.class").exists():  # the agent stays off under the source launcher
            subprocess.run(["javac", "-d", str(classes), str(HERE / "Leak.java")], check=True)
        self.spawn(name, ["java", f"-Xmx{xmx}", "-XX:+UseG1GC", f"-javaagent:{self.agent}",
                          "-Dotel.logs.exporter=none", "-cp", str(classes), "Leak",
                          *map(str, args)], env)

    def label(self, kind: str, entity: dict[str, str], start_ns: int, end_ns: int,
              **extra: Any) -> None:
        self.labels.append({"type": "label", "kind": kind, "negative": False,
                            "entity": entity, "start_unix_nano": start_ns,
                            "end_unix_nano": end_ns, **extra})

    def flag(self, name: str, value: float) -> None:
        """Set the programs' fault flag ``name`` (read on their next request)."""
        tmp = self.control / f".{name}.tmp"
        tmp.write_text(f"{value:g}")
        os.replace(tmp, self.control / name)

    def at(self, minute: float) -> None:
        """Sleep until ``minute`` after the start (or until stopped)."""
        self.stop.wait(max(0.0, self.t0 / 1e9 + minute * 60 - time.time()))

    # -- load ------------------------------------------------------------------------------

    def load(self) -> None:
        """Bursty browsing and checkouts: phases of 0.3-6 requests a second (the schedule's
        ``load_rates``), a minute or two each, every request on a new connection (urllib's
        default). While ``missing_share`` is set, that share of browsing asks for an item that
        does not exist (ids from 1000 on)."""
        base = f"http://127.0.0.1:{self.ports['frontend']}"
        while not self.stop.is_set():
            rate = self.rnd.choice(self.load_rates)
            until = time.time() + self.rnd.uniform(60, 150)
            while time.time() < until and not self.stop.is_set():
                path = "/checkout" if self.rnd.random() < 0.4 else "/browse"
                if path == "/browse" and self.rnd.random() < self.missing_share:
                    path += f"?item={1000 + self.rnd.randrange(1000)}"
                threading.Thread(target=self._get, args=(base + path,), daemon=True).start()
                self.stop.wait(self.rnd.expovariate(rate))

    @staticmethod
    def _get(url: str) -> None:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=30) as r:
            r.read()

    # -- faults ----------------------------------------------------------------------------

    def slow_query(self, start: float, end: float) -> None:
        self.at(start)
        db = programs.sqlite3.connect(self.out / "orders.db")
        db.execute("DROP INDEX orders_customer")
        db.commit()
        t1 = time.time_ns()
        self.at(end)
        db.execute("CREATE INDEX orders_customer ON orders (customer)")
        db.commit()
        db.close()
        self.label("bottleneck_span", {"service": "orders"}, t1, time.time_ns(),
                   fault="slow_query", note="index orders_customer dropped")

    def slow_downstream(self, proxy: DelayProxy, callee: str, delay_s: float,
                        start: float, end: float) -> None:
        self.at(start)
        proxy.delay_s = delay_s
        t1 = time.time_ns()
        self.at(end)
        proxy.delay_s = 0.0
        self.label("bottleneck_span", {"peer_service": callee}, t1, time.time_ns(),
                   entity_any=[{"peer_service": callee}, {"service": callee}],
                   fault="slow_downstream", truth={"downstream": callee},
                   magnitude={"delay_ms": delay_s * 1e3},
                   note=f"{delay_s * 1e3:.0f} ms added by the proxy in front of {callee}")

    def churn(self, rate: float, start: float, end: float) -> None:
        self.at(start)
        t1 = time.time_ns()
        for i in range(2):
            self.py(f"churn{i}", "churn", self.ports["echo"], rate / 2)
        self.at(end)
        for i in range(2):
            self.kill(f"churn{i}")
        self.label("time_wait_buildup", {"host": self.host}, t1, time.time_ns(),
                   fault="connection_churn", magnitude={"close_rate_per_s": rate},
                   note=f"{rate:.0f} new connections a second without keep-alive")

    def cpu_starvation(self, start: float, end: float) -> None:
        self.at(start)
        t1 = time.time_ns()
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                    start_new_session=True) for _ in range(3)]
        self.at(end)
        for b in burners:
            b.kill()
        self.label("latency_regression", {}, t1, time.time_ns(), fault="cpu_starvation",
                   note="3 busy processes on the 2 cores of the host")

    def pricing_errors(self, share: float, start: float, end: float) -> None:
        self.at(start)
        self.flag("pricing_error_share", share)
        t1 = time.time_ns()
        self.at(end)
        self.flag("pricing_error_share", 0)
        self.labels.append(error_label("pricing_errors", t1, time.time_ns(), share=share))

    def orders_exception(self, start: float, end: float) -> None:
        """A migration renames the table orders reads for loyalty members away, and back."""
        self.at(start)
        db = programs.sqlite3.connect(self.out / "orders.db", timeout=30)
        db.execute("ALTER TABLE loyalty RENAME TO loyalty_migrating")
        db.commit()
        t1 = time.time_ns()
        self.at(end)
        db.execute("ALTER TABLE loyalty_migrating RENAME TO loyalty")
        db.commit()
        db.close()
        self.labels.append(error_label("orders_exception", t1, time.time_ns(), share=1 / 3))

    def client_404(self, share: float, start: float, end: float) -> None:
        self.at(start)
        self.missing_share = share
        t1 = time.time_ns()
        self.at(end)
        self.missing_share = 0.0
        self.labels.append(error_label("client_404", t1, time.time_ns(), share=share))

    def catalog_flaky(self, every: int, start: float, end: float) -> None:
        self.at(start)
        self.flag("catalog_down_every", every)
        t1 = time.time_ns()
        self.at(end)
        self.flag("catalog_down_every", 0)
        self.labels.append(error_label("catalog_flaky", t1, time.time_ns(), share=1 / every))

    def kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p and p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)

    # -- the whole run ---------------------------------------------------------------------

    def node(self, name: str, *args: Any) -> None:
        env = self.env(name)
        env["NODE_PATH"] = str(CACHE / "node" / "node_modules")
        self.spawn(name, ["node", str(HERE / "node" / "programs.js"), *map(str, args)], env)

    def run(self) -> None:
        sc = SCHEDULES[self.schedule]
        server = serve(self.recording, self.port)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        p = self.ports
        apps = sc.get("apps", True)  # the traced services, their load and faults
        if apps:
            programs.make_orders_db(str(self.out / "orders.db"))
            cproxy = DelayProxy(p["catalog-proxy"], p["catalog"])
            pproxy = DelayProxy(p["pricing-proxy"], p["pricing"])
            cproxy.start(loop)
            pproxy.start(loop)
            self.py("catalog", "catalog", p["catalog"])
            if sc["pricing"] == "node":
                self.node("pricing", "pricing", p["pricing"])
            else:
                self.py("pricing", "pricing", p["pricing"])
            self.py("orders", "orders", p["orders"], self.out / "orders.db", p["catalog-proxy"])
            self.py("frontend", "frontend", p["frontend"], p["orders"], p["catalog-proxy"],
                    p["pricing-proxy"])
            self.py("echo", "echo", p["echo"])
        m = self.minutes
        leaks: list[tuple[str, float, float, dict[str, Any]]] = []  # service, MB/min, start
        for name, runtime, mb, start in sc["leaks"]:
            if runtime == "python":
                self.py(name, "leaky", mb, start * m * 60)
                leaks.append((name, mb, start, {}))
            elif runtime == "java":
                self.java(name, "leak", start * m * 60, 10**9, mb)
                leaks.append((name, mb, start, {"limit_mb": 256}))
            else:
                self.node(name, "leak", mb, start * m * 60)
                leaks.append((name, mb, start, {}))
        runtimes = sc.get("runtime_controls", True)  # the memory controls beside the leaks
        controls = ["steady-java", "ttl-java"] if runtimes else []
        if apps and runtimes:
            self.py("steady-py", "steady")
            self.py("cachewarm-py", "cachewarm", 40)
            controls += ["steady-py", "cachewarm-py"]
        gc = sc["gc_pressure"]  # (start, end) as fractions of the run, or None
        if gc:
            self.java("gc-java", "gcpressure", gc[0] * m * 60, gc[1] * m * 60, xmx="192m")
        if runtimes:
            self.java("steady-java", "steady", 10**9, 10**9)
            # objects kept 3 minutes: the old generation climbs until G1 marks it, with no leak
            self.java("ttl-java", "ttl", 0, 10**9, 3, 180)
        if sc["pricing"] == "node":
            self.node("steady-node", "steady")
            controls.append("steady-node")
        if apps:
            controls += ["catalog", "pricing", "orders", "frontend"]
        time.sleep(5)
        if apps:
            threading.Thread(target=self.load, daemon=True).start()
            proxies = {"catalog": cproxy, "pricing": pproxy}
        faults = []
        for kind, *args in sc["faults"]:
            if kind == "slow_query":
                faults.append(threading.Thread(target=self.slow_query,
                                               args=(args[0] * m, args[1] * m)))
            elif kind == "slow_downstream":
                callee, delay_s, a, b = args
                faults.append(threading.Thread(target=self.slow_downstream, args=(
                    proxies[callee], callee, delay_s, a * m, b * m)))
            elif kind == "churn":
                faults.append(threading.Thread(target=self.churn,
                                               args=(args[0], args[1] * m, args[2] * m)))
            elif kind == "cpu_starvation":
                faults.append(threading.Thread(target=self.cpu_starvation,
                                               args=(args[0] * m, args[1] * m)))
            elif kind in ERROR_FAULTS:  # (the fault's parameter, if any), start, end
                *param, a, b = args
                faults.append(threading.Thread(target=getattr(self, kind),
                                               args=(*param, a * m, b * m)))
            else:
                raise ValueError(f"unknown fault {kind!r}")
        for f in faults:
            f.start()
        try:
            self.at(m)
        finally:
            self.stop.set()
            for f in faults:
                f.join(timeout=5)
            end = time.time_ns()
            for name, mb, start, extra in leaks:
                self.label("memory_leak", {"service": name}, self.t0 + int(start * m * 60e9),
                           end, fault="leak", magnitude={"mb_per_min": mb, **extra})
            if gc:
                self.label("gc_pressure", {"service": "gc-java"}, self.t0 + int(gc[0] * m * 60e9),
                           self.t0 + int(gc[1] * m * 60e9), fault="gc_pressure")
            for name in list(self.procs):
                self.kill(name)
            time.sleep(1)
            server.shutdown()
            run = {"type": "run", "scenario": self.out.name, "start_unix_nano": self.t0,
                   "end_unix_nano": end, "duration_s": (end - self.t0) / 1e9,
                   "schedule": self.schedule,
                   "recorded": {"spans_requests": self.recording.counts[0],
                                "metrics_requests": self.recording.counts[1]},
                   "controls": controls}
            with open(self.out / "labels.jsonl", "wb") as fh:
                for line in [run, *sorted(self.labels, key=lambda x: x["start_unix_nano"])]:
                    fh.write(orjson.dumps(line) + b"\n")


#: The load generator's request rates (per second), one drawn per phase.
LOAD_RATES = (0.3, 1.0, 2.0, 4.0, 6.0)

#: The error faults (``Run.<name>``) and their labels (``error_label``): the kind, entity
#: and hard-negative fields of each, from the names the SDK gives the spans (the WSGI server
#: span ``METHOD PATH``, the sqlite3 instrumentation's ``SELECT``).
ERROR_FAULTS: dict[str, dict[str, Any]] = {
    # pricing answers 500 (its rate feed is down); frontend's urllib raises HTTPError and the
    # request fails with a 500: the origin is pricing's server span.
    "pricing_errors": {
        "kind": "error_origin",
        "entity": {"service": "pricing", "operation": "GET /price"},
        "note": "pricing answers 500 to a share of its requests; its callers fail with it",
    },
    # orders' read of the renamed table raises sqlite3.OperationalError in the sqlite3 client
    # span, unhandled: orders' server span ends in error too (and frontend's, with a 500).
    "orders_exception": {
        "kind": "error_origin",
        "entity": {"service": "orders", "operation": "SELECT"},
        "entity_any": [{"service": "orders", "operation": "SELECT"},
                       {"service": "orders", "operation": "POST /order"}],
        "note": "table loyalty renamed away: sqlite3.OperationalError for loyalty members",
    },
    # the client's mistake: catalog's 404, handled by the frontend (which answers 404)
    "client_404": {
        "kind": "client_4xx",
        "negative": True,
        "must_not_trigger": ["error_origin"],
        "entity": {"service": "catalog"},
        "entity_any": [{"service": "catalog"}, {"service": "frontend"}],
        "note": "the load generator asks for items that do not exist: catalog answers 404",
    },
    # every N-th catalog request fails with a 503; its callers retry once and succeed
    "catalog_flaky": {
        "kind": "retried_errors",
        "negative": True,
        "must_not_trigger": ["error_origin"],
        "entity": {"service": "catalog"},
        "entity_any": [{"service": "catalog"}, {"service": "frontend"}, {"service": "orders"}],
        "note": "a catalog replica is down (503); frontend and orders retry once and succeed",
    },
}


def error_label(fault: str, start_ns: int, end_ns: int, **magnitude: float) -> dict[str, Any]:
    """The label of the error fault ``fault`` (``ERROR_FAULTS``) that ran from ``start_ns`` to
    ``end_ns``, in the scoring format of ``benchmarks.scoring``."""
    spec = ERROR_FAULTS[fault]
    label: dict[str, Any] = {
        "type": "label", "kind": spec["kind"], "negative": spec.get("negative", False),
        "entity": dict(spec["entity"]), "start_unix_nano": start_ns, "end_unix_nano": end_ns,
        "fault": fault, "note": spec["note"],
    }
    if "entity_any" in spec:
        label["entity_any"] = [dict(e) for e in spec["entity_any"]]
    if "must_not_trigger" in spec:
        label["must_not_trigger"] = list(spec["must_not_trigger"])
    if magnitude:
        label["magnitude"] = dict(magnitude)
    return label


#: Fault schedules, as fractions of the run's length. ``a``: the first recording (Python
#: pricing); ``b``: Node.js pricing and a Node leak, other sizes and times; ``c``: below.
SCHEDULES: dict[str, dict[str, Any]] = {
    "a": {
        "pricing": "python",
        "leaks": [("leaky-py", "python", 8, 0.12), ("leaky-java", "java", 3, 0.22)],
        "gc_pressure": (0.45, 0.62),
        "faults": [
            ("slow_query", 0.27, 0.36),
            ("slow_downstream", "catalog", 0.15, 0.42, 0.51),
            ("churn", 420, 0.56, 0.64),
            ("cpu_starvation", 0.69, 0.76),
            ("slow_downstream", "pricing", 0.08, 0.82, 0.91),
        ],
    },
    "b": {
        "pricing": "node",
        "leaks": [("leaky-py", "python", 4, 0.30), ("leaky-java", "java", 2, 0.10),
                  ("leaky-node", "node", 4, 0.20)],
        "gc_pressure": (0.70, 0.85),
        "faults": [
            ("slow_downstream", "pricing", 0.20, 0.30, 0.38),
            ("cpu_starvation", 0.42, 0.48),
            ("slow_query", 0.52, 0.60),
            ("churn", 600, 0.64, 0.72),
            ("slow_downstream", "catalog", 0.06, 0.78, 0.88),
        ],
    },
    # ``c``: a long run for slow leaks. A JVM on G1 reports its old generation's post-GC size
    # only after an old-generation collection, which a 256 MB heap first needs some 50 minutes
    # into a 3 MB/min leak; the other faults again, at other times.
    "c": {
        "pricing": "node",
        "leaks": [("leaky-java", "java", 3, 0.05), ("leaky-node", "node", 3, 0.15),
                  ("leaky-py", "python", 3, 0.25)],
        "gc_pressure": (0.55, 0.65),
        "faults": [
            ("slow_query", 0.20, 0.26),
            ("slow_downstream", "pricing", 0.10, 0.35, 0.40),
            ("cpu_starvation", 0.45, 0.49),
            ("churn", 500, 0.70, 0.75),
            ("slow_downstream", "catalog", 0.05, 0.80, 0.86),
        ],
    },
    # ``errors``: real errors and their look-alikes (``ERROR_FAULTS``), 2-3 minutes each in a
    # 20-minute run, the first after 5 minutes of normal traffic, none overlapping; traced
    # services only (no leaks, no JVMs), and no load phase slower than one request a second.
    "errors": {
        "pricing": "python",
        "minutes": 20.0,
        "runtime_controls": False,
        "load_rates": (1.0, 2.0, 4.0, 6.0),
        "leaks": [],
        "gc_pressure": None,
        "faults": [
            ("pricing_errors", 0.3, 0.27, 0.39),
            ("client_404", 0.4, 0.44, 0.54),
            ("orders_exception", 0.60, 0.72),
            ("catalog_flaky", 4, 0.77, 0.88),
        ],
    },
    # ``errors-long``: the same faults, repeated at other shares, for more than two positives:
    # six real error origins and four look-alikes in 50 minutes.
    "errors-long": {
        "pricing": "python",
        "minutes": 50.0,
        "runtime_controls": False,
        "load_rates": (1.0, 2.0, 4.0, 6.0),
        "leaks": [],
        "gc_pressure": None,
        "faults": [
            ("pricing_errors", 0.3, 0.10, 0.15),
            ("client_404", 0.4, 0.18, 0.23),
            ("orders_exception", 0.26, 0.31),
            ("catalog_flaky", 4, 0.34, 0.39),
            ("pricing_errors", 0.1, 0.42, 0.47),
            ("catalog_flaky", 3, 0.50, 0.55),
            ("orders_exception", 0.58, 0.62),
            ("client_404", 0.2, 0.66, 0.71),
            ("pricing_errors", 0.15, 0.74, 0.79),
            ("pricing_errors", 0.5, 0.86, 0.89),
        ],
    },
    # ``j``: JVMs only (no traced services, no load): a G1 leak beside a control whose
    # old generation climbs with objects that die there (``ttl-java``), to tell the two apart.
    "j": {
        "pricing": "python",
        "apps": False,
        "leaks": [("leaky-java", "java", 2, 0.10)],
        "gc_pressure": None,
        "faults": [],
    },
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None,
                    help="the run's length (default: the schedule's, else 45)")
    ap.add_argument("--out", type=Path, default=CACHE / "run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="a")
    args = ap.parse_args(argv)
    if args.minutes is None:
        args.minutes = SCHEDULES[args.schedule].get("minutes", 45.0)
    if not Path(CACHE / "venv" / "bin" / "python").exists():
        sys.exit("run benchmarks/corpus/fetch.sh first (the SDK venv, the Java agent, the JS SDK)")
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    run = Run(args.out, args.minutes, args.seed, args.schedule)
    signal.signal(signal.SIGTERM, lambda *_: run.stop.set())
    print(f"recording {args.minutes:g} min into {args.out} (OTLP on 127.0.0.1:{run.port})",
          flush=True)
    run.run()
    print(f"recorded {run.recording.counts[0]} span and {run.recording.counts[1]} metric "
          f"requests; {len(run.labels)} labels", flush=True)


if __name__ == "__main__":
    main()
