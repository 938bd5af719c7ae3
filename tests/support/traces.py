"""Small seeded trace and trace-sample streams for detector tests (no simulator, no Kafka).

``shop_trace`` builds one request: ``web`` serves ``GET /checkout``, calls ``api`` over HTTP,
whose server span runs ``SELECT users`` on postgres and a little local work. ``samples``
builds the bottleneck detector's input directly, with optional faults per phase.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pipeline.detectors.trace_assembly import INBOUND
from pipeline.records import OpTime, Resource, Span, TraceSample

S = 10**9
MS = 10**6
T0 = 1_767_600_000 * S
WEB = Resource("web", "web-1", "h1", "", {})
API = Resource("api", "api-1", "h2", "", {})


def shop_trace(
    rng: random.Random, start_ns: int, db_added_ms: float = 0.0, api_skew_ms: float = 0.0,
    db_fails: bool = False,
) -> list[Span]:
    tid = f"{rng.getrandbits(128):032x}"
    ids = iter(f"{rng.getrandbits(64):016x}" for _ in range(8))
    root, client, server, db, work = (next(ids) for _ in range(5))
    skew = int(api_skew_ms * MS)
    t = start_ns
    db_ms = 5 * rng.lognormvariate(0, 0.2) + db_added_ms
    work_ms = 3 * rng.lognormvariate(0, 0.2)
    s_start = t + 3 * MS
    db_start = s_start + 1 * MS
    db_end = db_start + int(db_ms * MS)
    w_end = db_end + int(work_ms * MS)
    s_end = w_end + 1 * MS
    c_end = s_end + 1 * MS
    end = c_end + int(8 * rng.lognormvariate(0, 0.2) * MS)
    # A failing query fails the request all the way up, as the SDKs record it: the query's
    # span has the exception, each HTTP span the 500.
    st, e500 = (2, {"http.response.status_code": 500}) if db_fails else (0, {})
    db_err = {"exception.type": "psycopg.errors.UndefinedTable",
              "exception.message": 'relation "users" does not exist'} if db_fails else {}
    return [
        Span(tid, server, client, "GET /users/{id}", 2, s_start + skew, s_end + skew, st,
             {"http.route": "/users/{id}", **e500}, API),
        Span(tid, db, server, "SELECT users", 3, db_start + skew, db_end + skew, st,
             {"db.system": "postgresql", "db.name": "users", **db_err}, API),
        Span(tid, work, server, "render", 1, db_end + skew, w_end + skew, 0, {}, API),
        Span(tid, client, root, "GET /users/{id}", 3, t + 2 * MS, c_end, st,
             {"peer.service": "api", **e500}, WEB),
        Span(tid, root, "", "GET /checkout", 2, t, end, st, {"http.route": "/checkout", **e500},
             WEB),
    ]


def error_samples(
    minutes: float = 40, per_s: float = 2, seed: int = 11,
    fail_rate: Callable[[float], float] = lambda minute: 0.0,
) -> list[list[TraceSample]]:
    """Trace samples of ``shop_trace`` requests whose query fails with probability
    ``fail_rate(minute)``, through the real trace assembly, in batches of 10 s."""
    from pipeline.detectors.trace_assembly import TraceAssembler

    rng = random.Random(seed)
    asm = TraceAssembler(quiet_s=1.0, max_age_s=30.0)
    batches: list[list[TraceSample]] = []
    n = int(minutes * 60 * per_s)
    step = max(1, int(10 * per_s))
    for i0 in range(0, n, step):
        spans: list[Span] = []
        for i in range(i0, min(n, i0 + step)):
            minute = i / per_s / 60
            spans += shop_trace(rng, T0 + int(i * S / per_s),
                                db_fails=rng.random() < fail_rate(minute))
        asm.update(spans)
        asm.advance(T0 + int(min(n, i0 + step) * S / per_s))
        batches.append(asm.drain())
    return [b for b in batches if b]


def span_batches(
    minutes: float = 3, per_s: float = 4, seed: int = 3, slow_after_s: float | None = None
) -> list[list[Span]]:
    """Batches of 5 s of traces (spans of one trace may straddle two batches); with
    ``slow_after_s``, the query takes 80 ms longer from then on."""
    rng = random.Random(seed)
    spans: list[Span] = []
    n = int(minutes * 60 * per_s)
    for i in range(n):
        slow = slow_after_s is not None and i / per_s >= slow_after_s
        spans.extend(shop_trace(rng, T0 + int(i * S / per_s), db_added_ms=80.0 if slow else 0.0))
    spans.sort(key=lambda s: s.end_ns)
    batches: list[list[Span]] = [[]]
    edge = T0 + 5 * S
    for s in spans:
        if s.end_ns >= edge:
            batches.append([])
            edge += 5 * S
        batches[-1].append(s)
    return [b for b in batches if b]


#: (service, operation, median ms of critical-path time)
OPS = {
    "api": [("GET /users/{id}", 4.0), ("SELECT users", 6.0), ("render", 3.0)],
    "web": [("GET /checkout", 10.0), ("GET /users/{id}", 1.0), ("encode", 5.0)],
}
Fault = Callable[[str, str, float], float]  # (service, operation, minute) -> factor on ms


def samples(
    minutes: float = 30,
    per_s: float = 2,
    seed: int = 5,
    fault: Fault | None = None,
    added_ms: Callable[[str, str, float], float] | None = None,
    services: dict[str, list[tuple[str, float]]] | None = None,
) -> list[list[TraceSample]]:
    """Trace samples for both services (or ``services``, shaped like ``OPS``; an operation
    named ``name|detail`` is refined by the detail, and ``INBOUND|caller`` is a caller's calls
    into the service), in batches of 10 s of event time."""
    rng = random.Random(seed)
    batches: list[list[TraceSample]] = []
    n = int(minutes * 60 * per_s)
    for i in range(n):
        t = T0 + int(i * S / per_s)
        minute = (t - T0) / S / 60
        tid = f"{rng.getrandbits(128):032x}"
        ops: dict[str, list[OpTime]] = {}
        total = 0
        best = (0, "")
        for service, service_ops in (services or OPS).items():
            for op, ms in service_ops:
                v = ms * rng.lognormvariate(0, 0.25)
                if fault is not None:
                    v *= fault(service, op, minute)
                if added_ms is not None:
                    v += added_ms(service, op, minute)
                cp = int(v * MS)
                name, _, detail = op.partition("|")  # "name|detail": a refined operation
                if name != INBOUND:  # a copy of a caller's time, not more of the trace's
                    total += cp
                    best = max(best, (cp, f"{service}|{name}|{detail}"))
                attrs = {"caller.service": detail} if name == INBOUND else {}
                ops.setdefault(service, []).append(OpTime(name, detail, cp, cp, 1, attrs))
        if i % int(10 * per_s) == 0:
            batches.append([])
        for service, op_times in ops.items():
            batches[-1].append(TraceSample(tid, service, t + total, total, best[1], op_times))
    return batches
