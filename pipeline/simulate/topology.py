"""The simulated system: services, their endpoints and calls, runtimes, hosts (pure data).

A topology is plain frozen data so that a scenario can swap it whole and a test can build a tiny
one. The default is a small shop: ``frontend`` (Node.js) fans out to ``user-service`` (Go,
PostgreSQL), ``cart`` (Python, Redis), ``catalog`` (Java, Redis + PostgreSQL) and ``checkout``
(Java), which calls ``payment`` (Go), which calls a third-party payment API. Span names and
attributes follow the OpenTelemetry semantic conventions so that detectors see what real
instrumentation sends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Span kinds, as in opentelemetry.proto.trace.v1.Span.SpanKind.
SPAN_KIND_INTERNAL, SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 1, 2, 3

AttrValue = str | int | float | bool
Attrs = tuple[tuple[str, AttrValue], ...]

MIB = 1024 * 1024

#: Host metric styles: the Collector's hostmetrics receiver, node_exporter scraped by the
#: Prometheus receiver, or both (a host that runs both, as migrations do).
HOST_STYLES = ("hostmetrics", "prometheus", "both")


@dataclass(frozen=True, slots=True)
class LeafCall:
    """A CLIENT span to something that is not traced itself: a database, a cache, a vendor API.

    ``name`` is the span name, which is the ``operation`` a bottleneck finding carries.
    ``address``/``port`` identify the connection pool the call uses (its TCP destination).
    An HTTP call to an untraced vendor (``http.request.method`` in ``attributes``) reports
    ``http.response.status_code``: 200, or ``error_status`` when it fails (no exception: the
    caller's code raises on reading the response). Other calls fail with the driver's exception
    (``simulate.errors``) and ``error_message`` as the span's status description.
    """

    name: str
    address: str
    port: int
    latency_ms: float
    sigma: float = 0.35
    error_rate: float = 0.001
    error_message: str = "timeout"
    probability: float = 1.0
    attributes: Attrs = ()
    error_status: int = 502

    @property
    def destination(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class HttpCall:
    """A CLIENT span to another simulated service; the callee's SERVER span is its child."""

    service: str
    endpoint: str  # the callee's endpoint name, e.g. "GET /users/{id}"
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Work:
    """An INTERNAL span: in-process work that instrumentation (or a developer) wraps in a span."""

    name: str
    latency_ms: float
    sigma: float = 0.3


Call = LeafCall | HttpCall | Work
#: One step of an endpoint; the calls of a step with more than one call run in parallel.
Step = tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A SERVER operation: its own (self) time, then its steps in order.

    ``weight`` is the share of entry traffic for endpoints of an entry service (0 elsewhere).
    """

    method: str
    route: str
    self_ms: float
    sigma: float = 0.3
    error_rate: float = 0.002
    steps: tuple[Step, ...] = ()
    weight: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}"


@dataclass(frozen=True, slots=True)
class RuntimeProfile:
    """How a language runtime manages memory and names itself (one per runtime).

    The heap model is generational for every runtime: allocation fills a young area (Java eden,
    V8 new space; Go and CPython treat all allocation as "young"), a minor collection empties it
    and promotes ``promote_fraction`` of it to the old area, and a major collection shrinks the
    old area back to the live set when it reaches ``major_trigger_fraction`` of the limit (Java
    IHOP, V8's growing old-space limit) or ``gc_goal_factor`` x the last post-GC heap (Go's GOGC).
    """

    runtime: str  # java | go | python | nodejs
    sdk_language: str  # telemetry.sdk.language
    runtime_name: str  # process.runtime.name
    runtime_version: str
    limit_bytes: int
    base_live_fraction: float
    alloc_bytes_per_request: float
    young_bytes: float
    promote_fraction: float
    major_trigger_fraction: float
    gc_goal_factor: float
    minor_gc_ms: float
    major_gc_ms: float
    overhead_bytes: float  # non-heap resident memory: code, threads, metaspace, interpreter
    scope: str  # instrumentation scope of runtime metrics
    server_scope: str
    http_client_scope: str
    db_scope: str
    cache_scope: str


RUNTIMES: dict[str, RuntimeProfile] = {
    "java": RuntimeProfile(
        runtime="java",
        sdk_language="java",
        runtime_name="OpenJDK Runtime Environment",
        runtime_version="21.0.5+11-LTS",
        limit_bytes=1024 * MIB,
        base_live_fraction=0.27,
        alloc_bytes_per_request=1.6 * MIB,
        young_bytes=120 * MIB,
        promote_fraction=0.06,
        major_trigger_fraction=0.45,
        gc_goal_factor=0.0,
        minor_gc_ms=9.0,
        major_gc_ms=120.0,
        overhead_bytes=180 * MIB,
        scope="io.opentelemetry.runtime-telemetry-java17",
        server_scope="io.opentelemetry.tomcat-10.0",
        http_client_scope="io.opentelemetry.java-http-client",
        db_scope="io.opentelemetry.jdbc",
        cache_scope="io.opentelemetry.lettuce-5.1",
    ),
    "go": RuntimeProfile(
        runtime="go",
        sdk_language="go",
        runtime_name="go",
        runtime_version="go1.23.4",
        limit_bytes=512 * MIB,
        base_live_fraction=0.25,
        alloc_bytes_per_request=0.9 * MIB,
        young_bytes=0.0,
        promote_fraction=0.0,
        major_trigger_fraction=0.0,
        gc_goal_factor=2.0,
        minor_gc_ms=0.0,
        major_gc_ms=1.5,
        overhead_bytes=24 * MIB,
        scope="go.opentelemetry.io/contrib/instrumentation/runtime",
        server_scope="go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
        http_client_scope="go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
        db_scope="github.com/exaring/otelpgx",
        cache_scope="github.com/redis/go-redis/extra/redisotel",
    ),
    "python": RuntimeProfile(
        runtime="python",
        sdk_language="python",
        runtime_name="cpython",
        runtime_version="3.12.8",
        limit_bytes=512 * MIB,
        base_live_fraction=0.28,
        alloc_bytes_per_request=0.5 * MIB,
        young_bytes=0.0,
        promote_fraction=0.02,
        major_trigger_fraction=0.0,
        gc_goal_factor=0.0,
        minor_gc_ms=0.3,
        major_gc_ms=25.0,
        overhead_bytes=40 * MIB,
        scope="opentelemetry.instrumentation.system_metrics",
        server_scope="opentelemetry.instrumentation.flask",
        http_client_scope="opentelemetry.instrumentation.requests",
        db_scope="opentelemetry.instrumentation.psycopg",
        cache_scope="opentelemetry.instrumentation.redis",
    ),
    "nodejs": RuntimeProfile(
        runtime="nodejs",
        sdk_language="nodejs",
        runtime_name="nodejs",
        runtime_version="22.12.0",
        limit_bytes=1024 * MIB,
        base_live_fraction=0.22,
        alloc_bytes_per_request=1.2 * MIB,
        young_bytes=16 * MIB,
        promote_fraction=0.08,
        major_trigger_fraction=0.0,
        gc_goal_factor=1.6,
        minor_gc_ms=1.2,
        major_gc_ms=60.0,
        overhead_bytes=60 * MIB,
        scope="@opentelemetry/instrumentation-runtime-node",
        server_scope="@opentelemetry/instrumentation-http",
        http_client_scope="@opentelemetry/instrumentation-http",
        db_scope="@opentelemetry/instrumentation-pg",
        cache_scope="@opentelemetry/instrumentation-ioredis",
    ),
}


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A deployed service: ``instances`` replicas of one runtime, serving ``endpoints``."""

    name: str
    runtime: str
    version: str
    instances: int
    endpoints: tuple[Endpoint, ...]
    port: int = 8080
    entry: bool = False  # receives the external traffic

    def endpoint(self, name: str) -> Endpoint:
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        known = ", ".join(ep.name for ep in self.endpoints)
        raise KeyError(f"service {self.name!r} has no endpoint {name!r} (known: {known})")


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A Kubernetes node. ``baseline_established`` covers kubelet, sshd, agents and the like."""

    name: str
    metrics_style: str = "hostmetrics"
    baseline_established: int = 24
    baseline_listen: int = 9


@dataclass(frozen=True, slots=True)
class Topology:
    """Services and hosts; instances are placed round-robin over hosts in service order."""

    services: tuple[ServiceSpec, ...]
    hosts: tuple[HostSpec, ...]
    namespace: str = "shop"
    environment: str = "prod"
    extra_resource: Attrs = field(default=())

    def __post_init__(self) -> None:
        names = [s.name for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        if not any(s.entry for s in self.services):
            raise ValueError("topology needs at least one entry service (entry=True)")
        for h in self.hosts:
            if h.metrics_style not in HOST_STYLES:
                raise ValueError(f"host {h.name}: metrics_style must be one of {HOST_STYLES}")
        for s in self.services:
            if s.runtime not in RUNTIMES:
                raise ValueError(f"service {s.name}: runtime must be one of {sorted(RUNTIMES)}")
            for ep in s.endpoints:
                for step in ep.steps:
                    for call in step:
                        if isinstance(call, HttpCall):
                            self.service(call.service).endpoint(call.endpoint)

    def service(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(f"no service {name!r} (known: {', '.join(s.name for s in self.services)})")

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} (known: {', '.join(h.name for h in self.hosts)})")

    def slots(self) -> Iterator[tuple[str, int, str]]:
        """(service, replica index, host) for every replica; placement is round-robin."""
        i = 0
        for s in self.services:
            for r in range(s.instances):
                yield s.name, r, self.hosts[i % len(self.hosts)].name
                i += 1

    def operations(self) -> list[tuple[str, str]]:
        """Every (service, span name) a span can carry: the entities a bottleneck can be on."""
        ops: dict[tuple[str, str], None] = {}
        for s in self.services:
            for ep in s.endpoints:
                ops[(s.name, ep.name)] = None
                for step in ep.steps:
                    for call in step:
                        ops[(s.name, call_span_name(call))] = None
        return list(ops)

    def leaf_operations(self) -> list[tuple[str, str]]:
        """(service, span name) of every untraced downstream call: where bottlenecks go."""
        return [
            (s.name, call.name)
            for s in self.services
            for ep in s.endpoints
            for step in ep.steps
            for call in step
            if isinstance(call, LeafCall)
        ]


def call_span_name(call: Call) -> str:
    """Span name of the caller-side span of ``call`` (HTTP client spans use the route template,
    as semantic conventions allow when ``url.template`` is known, so names stay distinct)."""
    return call.endpoint if isinstance(call, HttpCall) else call.name


def call_destination(topology: Topology, call: Call) -> str | None:
    """TCP destination (``address:port``) of a call, or None for in-process work."""
    if isinstance(call, LeafCall):
        return call.destination
    if isinstance(call, HttpCall):
        return f"{call.service}:{topology.service(call.service).port}"
    return None


def _pg(db: str, op: str, table: str, statement: str, ms: float, **kw: object) -> LeafCall:
    return LeafCall(
        name=f"{op} {table}",
        address="postgres",
        port=5432,
        latency_ms=ms,
        error_message="canceling statement due to statement timeout",
        attributes=(
            ("db.system", "postgresql"),
            ("db.name", db),
            ("db.operation", op),
            ("db.sql.table", table),
            ("db.statement", statement),
            ("server.address", "postgres"),
            ("server.port", 5432),
        ),
        **kw,  # type: ignore[arg-type]
    )


def _redis(op: str, statement: str, ms: float, **kw: object) -> LeafCall:
    return LeafCall(
        name=op,
        address="redis",
        port=6379,
        latency_ms=ms,
        sigma=0.3,
        error_rate=0.0005,
        error_message="ConnectionError: Error while reading from socket",
        attributes=(
            ("db.system", "redis"),
            ("db.operation", op),
            ("db.statement", statement),
            ("db.redis.database_index", 0),
            ("server.address", "redis"),
            ("server.port", 6379),
        ),
        **kw,  # type: ignore[arg-type]
    )


def default_topology() -> Topology:
    """Six services, 14 instances on 4 hosts, four runtimes (see the module docstring)."""
    users = _pg("users", "SELECT", "users", "SELECT id, email, name FROM users WHERE id = $1", 2.5)
    products = _pg(
        "catalog",
        "SELECT",
        "products",
        "SELECT id, title, price FROM products WHERE id = ANY($1)",
        4.0,
        probability=0.25,
    )
    orders = _pg("orders", "INSERT", "orders", "INSERT INTO orders VALUES ($1, $2, $3, $4)", 6.0)
    payments = _pg(
        "payments", "INSERT", "payments", "INSERT INTO payments VALUES ($1, $2, $3)", 5.0
    )
    charge = LeafCall(
        name="POST /v1/charges",
        address="api.payments.example",
        port=443,
        latency_ms=180.0,
        sigma=0.45,
        error_rate=0.01,
        error_message="502 Bad Gateway",
        attributes=(
            ("http.request.method", "POST"),
            ("server.address", "api.payments.example"),
            ("server.port", 443),
            ("url.full", "https://api.payments.example/v1/charges"),
            ("url.template", "/v1/charges"),
            ("peer.service", "payment-gateway"),
        ),
    )
    services = (
        ServiceSpec(
            "frontend",
            "nodejs",
            "2.14.0",
            3,
            entry=True,
            endpoints=(
                Endpoint(
                    "GET",
                    "/",
                    4.0,
                    weight=0.45,
                    steps=(
                        (
                            HttpCall("user-service", "GET /users/{id}"),
                            HttpCall("cart", "GET /cart"),
                            HttpCall("catalog", "GET /products"),
                        ),
                        (Work("render home", 6.0),),
                    ),
                ),
                Endpoint(
                    "GET",
                    "/api/products/{id}",
                    2.0,
                    weight=0.25,
                    steps=((HttpCall("catalog", "GET /products/{id}"),),),
                ),
                Endpoint(
                    "POST",
                    "/api/checkout",
                    3.0,
                    weight=0.10,
                    steps=((HttpCall("checkout", "POST /checkout"),),),
                ),
                Endpoint(
                    "POST",
                    "/api/cart",
                    2.0,
                    weight=0.20,
                    steps=((HttpCall("cart", "POST /cart/items"),),),
                ),
            ),
        ),
        ServiceSpec(
            "catalog",
            "java",
            "5.3.1",
            2,
            endpoints=(
                Endpoint(
                    "GET",
                    "/products",
                    3.0,
                    steps=(
                        (_redis("GET", "GET products:featured", 0.6),),
                        (products,),
                    ),
                ),
                Endpoint(
                    "GET",
                    "/products/{id}",
                    2.0,
                    steps=(
                        (_redis("GET", "GET products:featured", 0.6),),
                        (products,),
                    ),
                ),
            ),
        ),
        ServiceSpec(
            "user-service",
            "go",
            "1.9.2",
            3,
            endpoints=(Endpoint("GET", "/users/{id}", 1.0, error_rate=0.001, steps=((users,),)),),
        ),
        ServiceSpec(
            "checkout",
            "java",
            "3.2.0",
            2,
            endpoints=(
                Endpoint(
                    "POST",
                    "/checkout",
                    5.0,
                    error_rate=0.004,
                    steps=(
                        (
                            HttpCall("user-service", "GET /users/{id}"),
                            HttpCall("cart", "GET /cart"),
                        ),
                        (Work("price order", 3.0),),
                        (orders,),
                        (HttpCall("payment", "POST /charge"),),
                    ),
                ),
            ),
        ),
        ServiceSpec(
            "cart",
            "python",
            "0.18.3",
            2,
            endpoints=(
                Endpoint("GET", "/cart", 2.0, steps=((_redis("HGETALL", "HGETALL cart:?", 0.8),),)),
                Endpoint(
                    "POST",
                    "/cart/items",
                    3.0,
                    steps=(
                        (_redis("HSET", "HSET cart:? ? ?", 0.7),),
                        (_redis("EXPIRE", "EXPIRE cart:? ?", 0.4),),
                    ),
                ),
            ),
        ),
        ServiceSpec(
            "payment",
            "go",
            "4.0.7",
            2,
            endpoints=(
                Endpoint("POST", "/charge", 2.0, error_rate=0.003, steps=((charge,), (payments,))),
            ),
        ),
    )
    hosts = (
        HostSpec("node-1", "hostmetrics"),
        HostSpec("node-2", "hostmetrics"),
        HostSpec("node-3", "both"),
        HostSpec("node-4", "prometheus"),
    )
    return Topology(services=services, hosts=hosts)
