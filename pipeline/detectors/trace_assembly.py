"""Trace assembly: spans in, one ``TraceSample`` per (completed trace, service) out. Pure.

Spans reach this stage routed by trace id, so every span of a trace lands in one partition
whichever way the producer keyed them. Open traces wait in a bounded buffer in event time. A
trace is *complete* when its root span has arrived and the watermark has passed its newest span
by ``quiet`` (no span for a quiet period; a span that arrives behind the watermark counts from
the watermark at its arrival, so a late batch does not complete its trace at once), or when the
watermark has passed its first span by ``max_age`` (a trace whose root never comes). A complete
trace is analysed (``pipeline.traces.analyze``: exclusive and critical-path time per span) and
summarised per service and operation; the summaries go, routed by service, to the bottleneck
detector.

Nothing is lost silently; every case is counted (``stats().evicted``, exported as
``anomaly_pipeline_partition_state_evictions{detector="trace_assembly", reason=...}``):

- ``late_spans``: a span of a trace already completed (it is not re-analysed);
- ``no_root``: a trace that reached ``max_age`` without a root span (not analysed: there is no
  end-to-end latency to measure against, as with head-sampled or partially lost traces);
- ``evicted_open``: the buffer was full, so the oldest open trace was completed early (analysed
  if it has its root);
- ``span_cap``: spans beyond ``max_spans`` of one trace (bounding memory and state entries);
- ``orphans`` and ``skew_adjusted`` count spans with a missing parent (hung under the root) and
  subtrees shifted into their parent's bounds (clock skew) — analysed, counted for visibility.

Open traces are saved with the partition's state (``pipeline.state.Keyed``, prefix ``t``, in
the order spans last arrived: the cap completes the least recently active trace first), so a
restarted worker completes them. The set of recently completed trace ids (for ``late_spans``)
is not: after a restart, a straggler of a trace completed before it opens a new trace without
its root, counted in ``no_root``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.records import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
    OpTime,
    Resource,
    Span,
    TraceSample,
)
from pipeline.servicegraph import answered, flat, trace_edges
from pipeline.state import State
from pipeline.traces import TraceAnalysis, analyze, error_origins, in_error, status_code

#: Span attributes that name the resource an operation uses (carried as evidence).
RESOURCE_NAMING = (
    "db.system", "db.system.name", "db.name", "db.namespace", "db.operation",
    "peer.service", "server.address", "server.port", "net.peer.name", "net.peer.port",
    "http.route", "rpc.service",
    "messaging.system", "messaging.destination.name",
)
#: Set on a client operation's attributes: the service whose server span answered the call in
#: the trace (the callee, by trace context: exact even behind a proxy or a load balancer).
CALLEE = "callee.service"
#: Set on the attributes of an outgoing call that is not a database's (a CLIENT or PRODUCER
#: span): the operation's finding names the service it calls.
CALL = "call"
#: The operation name of a callee's incoming calls from one caller (the detail is the caller):
#: the time of the caller's calls into it outside its own server spans (network, proxies,
#: queueing), carried in the callee's sample so that the callee's partition sees every
#: caller's calls into it at once (``pipeline.detectors.bottleneck``).
INBOUND = "(incoming calls)"
#: Attributes of a database or cache call (they name the database an operation's finding blames).
DB_KEYS = ("db.system", "db.system.name", "db.name", "db.namespace")
MAX_INTERNED = 10_000  # distinct resources whose wire form open traces share
SCAN_NS = 100_000_000  # open traces are checked for completion every 100 ms of event time
COUNTERS = ("late_spans", "no_root", "evicted_open", "span_cap", "orphans", "skew_adjusted")


def operation_of(span: Span) -> tuple[str, str]:
    """The operation a span measures: its name, and the detail that refines a generic name —
    ``http.route`` when the name lacks it (older HTTP instrumentations name server spans just
    ``GET``), the database when the name is a bare verb (``GET`` on redis, ``SELECT``), and for
    any other outgoing call (``CLIENT`` or ``PRODUCER`` span) its destination
    (``destination_of``), so one generic ``HTTP GET`` to six services is six operations, one
    per edge (caller -> callee).

    >>> from pipeline.records import Resource
    >>> r = Resource("api", "", "", "", {})
    >>> operation_of(Span("t", "s", "", "GET", 2, 0, 1, 0, {"http.route": "/u/{id}"}, r))
    ('GET', '/u/{id}')
    >>> operation_of(Span("t", "s", "", "GET", 3, 0, 1, 0, {"db.system": "redis"}, r))
    ('GET', 'redis')
    >>> operation_of(Span("t", "s", "", "SELECT users", 3, 0, 1, 0, {"db.system": "x"}, r))
    ('SELECT users', '')
    >>> operation_of(Span("t", "s", "", "GET", 3, 0, 1, 0,
    ...                   {"http.url": "http://cart:8080/c?id=1"}, r))
    ('GET', 'cart:8080')
    """
    name, attrs = span.name, span.attrs
    route = attrs.get("http.route")
    if route and isinstance(route, str) and route not in name:
        return name, route
    db = attrs.get("db.namespace") or attrs.get("db.name") or attrs.get("db.system") or (
        attrs.get("db.system.name")
    )
    if db:  # a database call: its name says the statement; the database refines a bare verb
        if " " not in name and isinstance(db, str) and db not in name:
            return name, db
        return name, ""
    if span.kind == SPAN_KIND_CLIENT or span.kind == SPAN_KIND_PRODUCER:
        dest = destination_of(attrs)
        return (name, dest) if dest and dest not in name else (name, "")
    return name, ""


def split_op(key: str) -> tuple[str, str, str]:
    """"service|operation|detail" (the key detectors keep operations by) -> its parts (a
    service name holds no "|")."""
    service, _, rest = key.partition("|")
    op, _, detail = rest.rpartition("|")
    return service, op, detail


def op_entity(key: str) -> dict[str, str]:
    """An operation's key as a finding's entity: ``service``, ``operation`` and, when there
    is one, ``operation_detail``."""
    service, op, detail = split_op(key)
    entity = {"service": service, "operation": op}
    if detail:
        entity["operation_detail"] = detail
    return entity


def op_key(entity: Mapping[str, Any]) -> str:
    """The key of the operation a finding's entity names (``op_entity``'s inverse)."""
    return f"{entity['service']}|{entity['operation']}|{entity.get('operation_detail', '')}"


def op_name(key: str) -> str:
    """How an operation is shown: its name and detail, ``GET /u/{id}``."""
    _, op, detail = split_op(key)
    return f"{op} {detail}" if detail else op


def destination_of(attrs: Mapping[str, Any]) -> str:
    """Where an outgoing call goes, from the attributes the instrumentations set: a database's
    namespace, else ``peer.service``, the server address and port (current and older semantic
    conventions), the host of the URL, the messaging destination, the RPC service, the database
    system; "" if none.

    >>> destination_of({"server.address": "db", "server.port": 5432, "db.namespace": "shop"})
    'shop'
    >>> destination_of({"peer.service": "cart", "server.address": "10.0.0.7"})
    'cart'
    >>> destination_of({"url.full": "https://pay.example:8443/v1/charge"})
    'pay.example:8443'
    >>> destination_of({"net.peer.name": "stock", "net.peer.port": 9000})
    'stock:9000'
    """
    db = attrs.get("db.namespace") or attrs.get("db.name")
    if db:
        return str(db)
    peer = attrs.get("peer.service")
    if peer:
        return str(peer)
    for host_key, port_key in (("server.address", "server.port"),
                               ("net.peer.name", "net.peer.port")):
        host = attrs.get(host_key)
        if host:
            port = attrs.get(port_key)
            return f"{host}:{port}" if port else str(host)
    url = attrs.get("url.full") or attrs.get("http.url")
    if url and isinstance(url, str):
        netloc = urlsplit(url).netloc.rpartition("@")[2]
        if netloc:
            return netloc
    for key in ("messaging.destination.name", "messaging.destination", "rpc.service",
                "db.system", "db.system.name"):
        value = attrs.get(key)
        if value:
            return str(value)
    return ""


def naming_attrs(span: Span) -> dict[str, Any]:
    a = span.attrs
    out = {k: a[k] for k in RESOURCE_NAMING if k in a}
    if (span.kind == SPAN_KIND_CLIENT or span.kind == SPAN_KIND_PRODUCER) and not (
        "db.system" in a or "db.system.name" in a
    ):
        out[CALL] = True  # a call to another service: its detail is where it goes
    return out


class _Open:
    """An open trace, kept compact: its spans as the JSON rows its state entry holds (about
    200 bytes a span, where span objects took about 1,400), each distinct resource once.
    Span objects are built again when the trace completes."""

    __slots__ = ("seq", "rows", "pending", "count", "resources", "first_ns", "last_ns",
                 "has_root")

    def __init__(self, seq: int, first_ns: int) -> None:
        self.seq = seq  # arrival order: restored traces keep it, so a replay completes the same
        # The spans' rows, comma-separated: [span id, parent id, name, kind, start, end,
        # status, attributes, resource index]; and the resources' wire form, as JSON.
        self.rows = bytearray()
        self.pending: list[list[Any]] | None = None  # rows of the current batch (``_settle``)
        self.count = 0
        self.resources: list[bytes] = []
        self.first_ns = first_ns  # earliest span start
        # The trace's time: its newest span end, or the watermark when its last span arrived if
        # that is later (a span that arrived late). Completion waits a quiet period past it,
        # and the trace's samples carry it, so they are never late for the next stage.
        self.last_ns = first_ns
        self.has_root = False


class TraceAssembler(Detector):
    name = "trace_assembly"
    version = "1"
    signal = "spans"
    emits = "traces"
    kinds = ()

    def __init__(
        self,
        quiet_s: float = 5.0,
        max_age_s: float = 120.0,
        max_open: int = 5_000,
        max_spans: int = 1_000,
    ) -> None:
        if quiet_s <= 0 or max_age_s <= quiet_s or max_open < 1 or max_spans < 1:
            raise ValueError("need quiet_s > 0, max_age_s > quiet_s, max_open/max_spans >= 1")
        self.quiet_ns = int(quiet_s * 1e9)
        self.max_age_ns = int(max_age_s * 1e9)
        self.max_open, self.max_spans = max_open, max_spans
        self.state = State()
        self._open = self.state.keyed("t", encode=_trace_doc, decode=_trace_from_doc,
                                      cap=max_open)
        self._closed: dict[str, int] = {}  # recently completed trace id -> when (late spans)
        # Deadline order, so that completion looks only at traces that are due: (deadline, id)
        # pushed whenever a trace's deadline moves (stale entries are skipped when popped),
        # and (when, id) of the closed ones. Derived from the state: rebuilt after a restore.
        self._deadlines: list[tuple[int, str]] = []
        self._closing: list[tuple[int, str]] = []
        self._out: list[TraceSample] = []
        self._wires: dict[bytes, bytes] = {}  # interned resource wire forms (``_intern``)
        self._resources: dict[bytes, Resource] = {}  # and their objects, for completed traces
        # counts; the last completion scan; traces opened so far; the last watermark given to
        # ``advance`` (a replay must complete the same)
        self._meta = self.state.cell("meta", {
            "counts": dict.fromkeys(COUNTERS, 0), "scanned_ns": 0, "seq": 0, "watermark_ns": 0,
        })

    @classmethod
    def from_settings(cls, settings: Any) -> TraceAssembler:
        return cls(
            quiet_s=settings.trace_quiet_s, max_age_s=settings.trace_max_age_s,
            max_open=settings.trace_max_open, max_spans=settings.trace_max_spans,
        )

    # -- the work --------------------------------------------------------------------------
    def update(self, records: Sequence[Span]) -> None:
        open_, closed, meta = self._open, self._closed, self._meta.value
        watermark = meta["watermark_ns"]
        touched: dict[str, _Open] = {}
        wires: dict[int, bytes] = {}  # resource object -> its wire form (decoded per message)
        dumps = orjson.dumps
        # A trace is recorded as changed once per batch, in the order of its last span.
        with open_.batch():
            for s in records:
                tid = s.trace_id
                o = open_.get(tid)
                if o is None:
                    if tid in closed:
                        self._count("late_spans")
                        continue
                    open_.make_room(evict=self._evict)
                    meta["seq"] += 1
                    o = _Open(meta["seq"], s.start_ns)
                    open_.put(tid, o)
                if o.count >= self.max_spans:
                    self._count("span_cap")
                    continue
                # Resources compared by value: the spans of one trace arrive in many routed
                # messages, each decoding its own copy.
                wire = wires.get(id(s.resource))
                if wire is None:
                    wire = wires[id(s.resource)] = self._intern(dumps(s.resource.to_wire()))
                try:
                    ri = o.resources.index(wire)
                except ValueError:
                    ri = len(o.resources)
                    o.resources.append(wire)
                rows = o.pending
                if rows is None:
                    rows = o.pending = []
                rows.append([s.span_id, s.parent_id, s.name, s.kind, s.start_ns, s.end_ns,
                             s.status, s.attrs, ri])
                o.count += 1
                if s.start_ns < o.first_ns:
                    o.first_ns = s.start_ns
                t = s.end_ns if s.end_ns > watermark else watermark
                if t > o.last_ns:
                    o.last_ns = t
                if not s.parent_id:
                    o.has_root = True
                open_.changed(tid)
                touched[tid] = o
        for tid, o in touched.items():
            _settle(o)  # one encode per trace and batch
            heapq.heappush(self._deadlines, (self._deadline(o), tid))
        self._meta.changed()

    def _intern(self, wire: bytes) -> bytes:
        """One copy of each resource's wire form, shared by the open traces that have spans
        of it (bounded: forgotten when ``MAX_INTERNED`` are held). The copy is exact-sized:
        orjson's output keeps a 4 KiB allocation however short it is."""
        interned = self._wires
        canon = interned.get(wire)
        if canon is None:
            if len(interned) >= MAX_INTERNED:
                interned.clear()
                self._resources.clear()
            canon = bytes(bytearray(wire))
            interned[canon] = canon
        return canon

    def _spans(self, tid: str, o: _Open) -> list[Span]:
        """An open trace's spans, as span objects (resources shared, never changed)."""
        _settle(o)
        cache = self._resources
        resources = []
        for wire in o.resources:
            r = cache.get(wire)
            if r is None:
                r = Resource.from_wire(orjson.loads(wire))
                if wire in self._wires:  # (interned: bounded with them)
                    cache[wire] = r
            resources.append(r)
        return [Span(tid, *row[:8], resources[row[8]])
                for row in orjson.loads(b"[" + o.rows + b"]")]

    def _deadline(self, o: _Open) -> int:
        """The watermark at which a trace completes: a quiet period after its newest span once
        its root has arrived, and at most its maximum age after its first."""
        age = o.first_ns + self.max_age_ns
        if o.has_root and o.last_ns + self.quiet_ns < age:
            return o.last_ns + self.quiet_ns
        return age

    def restored(self) -> None:
        self._deadlines = [(self._deadline(o), tid) for tid, o in self._open.items()]
        heapq.heapify(self._deadlines)

    def _evict(self, tid: str, o: _Open) -> None:
        """The buffer is full: the least recently active trace completes early."""
        self._count("evicted_open")
        self._complete(tid, o)

    def advance(self, watermark_ns: int) -> list[Any]:
        meta = self._meta
        if watermark_ns > meta["watermark_ns"]:
            meta["watermark_ns"] = watermark_ns
        # Scan at most once per 100 ms of event time: completion is judged in whole seconds.
        if watermark_ns - meta["scanned_ns"] < SCAN_NS:
            return []
        meta["scanned_ns"] = watermark_ns  # persisted: a replay must complete the same
        heap, open_ = self._deadlines, self._open
        due: dict[str, _Open] = {}
        while heap and heap[0][0] <= watermark_ns:
            _, tid = heapq.heappop(heap)
            o = open_.get(tid)
            # Skipped: a trace completed already, or whose deadline has moved on since.
            if o is not None and tid not in due and self._deadline(o) <= watermark_ns:
                due[tid] = o
        if len(heap) > 2 * len(open_) + 1024:  # mostly stale entries: start afresh
            self.restored()
        # In the order the traces last changed, as a scan of the open traces would find them.
        for tid in sorted(due, key=open_.tick):
            open_.pop(tid)
            self._complete(tid, due[tid])
        closing, closed = self._closing, self._closed
        age_before = watermark_ns - self.max_age_ns
        while closing and closing[0][0] <= age_before:
            at, tid = heapq.heappop(closing)
            if closed.get(tid) == at:
                del closed[tid]
        return []

    def output_watermark(self, watermark_ns: int) -> int:
        # A trace completes a quiet period after its newest span (checked every 100 ms), and
        # its samples carry that span's time: they trail the watermark by the quiet period.
        # Traces completed early (evicted at the cap) can still arrive late downstream.
        return watermark_ns - self.quiet_ns - SCAN_NS

    def drain(self) -> list[TraceSample]:
        out, self._out = self._out, []
        return out

    def _complete(self, tid: str, o: _Open) -> None:
        self._closed[tid] = o.last_ns
        heapq.heappush(self._closing, (o.last_ns, tid))
        if len(self._closed) > 4 * self.max_open:
            self._closed.pop(next(iter(self._closed)))
        if len(self._closing) > 8 * self.max_open:  # mostly entries of traces dropped above
            self._closing = [(at, t) for t, at in self._closed.items()]
            heapq.heapify(self._closing)
        if not o.has_root:
            self._count("no_root")
            return
        a = analyze(self._spans(tid, o))
        if a.root is None:  # has_root guarantees one; kept for safety
            self._count("no_root")
            return
        if a.orphans:
            self._count("orphans", a.orphans)
        if a.skew_adjusted:
            self._count("skew_adjusted", a.skew_adjusted)
        calls = answered(a)
        callee = _callees(a.spans, calls)
        failed = [in_error(sp) for sp in a.spans]
        origins = error_origins(a, failed)
        keys = [(span.resource.service, *operation_of(span)) for span in a.spans]
        per_op: dict[tuple[str, str, str], list[Any]] = {}
        for i, span in enumerate(a.spans):
            key = keys[i]
            acc = per_op.get(key)
            if acc is None:
                acc = per_op[key] = [a.cp_ns[i], a.self_ns[i], 1, naming_attrs(span)]
            else:
                acc[0] += a.cp_ns[i]
                acc[1] += a.self_ns[i]
                acc[2] += 1
                if not acc[3]:
                    acc[3] = naming_attrs(span)
            served_by = callee.get(span.span_id)
            if served_by is not None and CALLEE not in acc[3]:
                acc[3] = {**acc[3], CALLEE: served_by}
        errs: dict[tuple[str, str, str], list[Any]] = {}  # key -> [surfaced, absorbed, evidence]
        # The evidence of an operation's failures in this trace: of its surfaced origin that
        # started first (not the first to arrive: the same evidence whatever the span order).
        best: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        for origin in origins:
            key = keys[origin.index]
            acc_e = errs.setdefault(key, [0, 0, None])
            acc_e[0 if origin.surfaced else 1] += 1
            span = a.spans[origin.index]
            rank = (not origin.surfaced, a.start_ns[origin.index], span.span_id)
            if key not in best or rank < best[key][0]:
                best[key] = (rank, origin)
        for key, (_, origin) in best.items():
            errs[key][2] = error_evidence(a, origin, keys)
        top = max(per_op.items(), key=lambda kv: (kv[1][0], kv[0]))[0]
        top_key = "|".join(top)
        root = a.root
        # Event time is the trace's newest span: never after the watermark that completed it,
        # so the next stage (whose watermark follows this one) never sees it late.
        end = o.last_ns
        duration = a.end_ns[root] - a.start_ns[root]
        by_service: dict[str, list[OpTime]] = {}
        inbound: dict[tuple[str, str], list[int]] = {}
        for key, (cp, self_ns, n, attrs) in sorted(per_op.items()):
            service, op, detail = key
            e = errs.get(key)
            by_service.setdefault(service, []).append(
                OpTime(op, detail, cp, self_ns, n, attrs) if e is None
                else OpTime(op, detail, cp, self_ns, n, attrs, e[0], e[1], e[2]))
            callee_svc = attrs.get(CALLEE)
            if callee_svc:
                acc_in = inbound.setdefault((callee_svc, service), [0, 0, 0])
                acc_in[0] += cp
                acc_in[1] += self_ns
                acc_in[2] += n
        for (callee_svc, caller), (cp, self_ns, n) in sorted(inbound.items()):
            ops = by_service.get(callee_svc)
            if ops is not None:  # the callee's own spans are in the trace
                ops.append(OpTime(INBOUND, caller, cp, self_ns, n, {"caller.service": caller}))
        edges: dict[str, list[list[Any]]] = {}
        for (client, server, ctype), (n, nf, cb, sb, cs, ss, owner) in sorted(
                trace_edges(a, destination_of, failed, calls).items()):
            edges.setdefault(owner, []).append(
                [client, server, ctype, n, nf, flat(cb), flat(sb), cs, ss])
        for service, ops in by_service.items():
            self._out.append(TraceSample(tid, service, end, duration, top_key, ops,
                                         edges.get(service, [])))

    def _count(self, reason: str, n: int = 1) -> None:
        self._meta["counts"][reason] += n
        self._meta.changed()

    def stats(self) -> DetectorStats:
        return DetectorStats(tracked=len(self._open), evicted=dict(self._meta["counts"]))


#: At most this many spans of a failure's chain are named in its evidence (origin first).
MAX_CHAIN = 8


def _named(key: tuple[str, str, str]) -> str:
    return f"{key[0]}: {op_name('|'.join(key))}"


def error_evidence(a: TraceAnalysis, origin: Any, keys: Sequence[tuple[str, str, str]]
                   ) -> dict[str, Any]:
    """What a failure's origin says of it: the exception (type and bounded message) recorded
    on the origin, else on the nearest span of its chain that recorded one, else the status
    message; the HTTP or gRPC status; and the chain from the origin up to the root (or to the
    span that absorbed it), as "service: operation" names."""
    spans = a.spans
    out: dict[str, Any] = {}
    for i in origin.chain:
        attrs = spans[i].attrs
        if "exception.type" in attrs:
            out["exception.type"] = attrs["exception.type"]
            if "exception.message" in attrs:
                out["exception.message"] = attrs["exception.message"]
            if i != origin.index:
                out["exception.recorded_by"] = _named(keys[i])
            break
    else:
        msg = spans[origin.index].attrs.get("status.message")
        if msg:
            out["status.message"] = msg
    s = spans[origin.index]
    code = status_code(s)
    if code is not None:
        out["http.status_code"] = code
    grpc = s.attrs.get("rpc.grpc.status_code")
    if grpc is not None:
        out["rpc.grpc.status_code"] = grpc
    chain = origin.chain
    names = [_named(keys[i]) for i in chain[:MAX_CHAIN]]
    if len(chain) > MAX_CHAIN:
        names.append(f"... {len(chain) - MAX_CHAIN} more")
    out["chain"] = names
    out["reached_root"] = bool(origin.surfaced and a.parent[chain[-1]] < 0)
    if origin.absorbed_by is not None:
        out["absorbed_by"] = _named(keys[origin.absorbed_by])
    return out


def _callees(spans: Sequence[Span], calls: Mapping[int, list[int]]) -> dict[str, str]:
    """Client span id -> the service of the server span that is its child in the trace (the
    call's callee), for calls answered by another instrumented service (``calls``:
    ``servicegraph.answered``; the last server span, if several answered)."""
    out: dict[str, str] = {}
    for c, servers in calls.items():
        if spans[c].kind == SPAN_KIND_CLIENT:
            for j in servers:
                if spans[j].kind == SPAN_KIND_SERVER:
                    out[spans[c].span_id] = spans[j].resource.service
    return out


def _settle(o: _Open) -> None:
    """Append the rows of the current batch, encoded at once."""
    if o.pending:
        encoded = orjson.dumps(o.pending)
        if o.rows:
            o.rows += b","
        o.rows += memoryview(encoded)[1:-1]
    o.pending = None


def _trace_doc(o: _Open) -> dict[str, Any]:
    """An open trace as a state entry: its rows and resources as they are kept (no encoding).
    ``"r"``: the distinct resources' wire form; ``"s"``: the spans' rows."""
    _settle(o)
    return {"q": o.seq, "f": o.first_ns, "l": o.last_ns,
            "r": orjson.Fragment(b"[" + b",".join(o.resources) + b"]"),
            "s": orjson.Fragment(b"[" + o.rows + b"]")}


def _trace_from_doc(doc: Mapping[str, Any], tid: str) -> _Open:
    o = _Open(doc["q"], doc["f"])
    o.last_ns = doc["l"]
    o.resources = [bytes(bytearray(orjson.dumps(r))) for r in doc["r"]]
    rows = doc["s"]
    o.rows = bytearray(b",".join(orjson.dumps(row) for row in rows))
    o.count = len(rows)
    o.has_root = any(not row[1] for row in rows)
    return o
