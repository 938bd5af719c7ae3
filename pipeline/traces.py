"""Exclusive (self) time and the critical path of one assembled trace. Pure: no Kafka, no clock.

``analyze(spans)`` takes every span of one trace and returns, per span, its *exclusive* time
(its duration minus the union of its children's intervals clipped to it) and its *critical-path*
time (the part of the trace's end-to-end latency that was spent in that span itself, walking
back from the root's end through the child that finished last, as in Jaeger's critical-path
view). Real traces are untidy, and each untidiness has a rule:

- **parallel and overlapping children**: the union of their intervals, so overlapping time is
  not subtracted twice; on the critical path, the child that ends last is followed first and an
  overlapping earlier child takes over only where the later one had not started;
- **children that outlive their parent** (async work, fire-and-forget): clipped to the parent;
  the time after the parent ended belongs to nobody on the path;
- **missing parents** (head sampling, lost spans): the orphan hangs under the root, so its time
  still comes off the root's exclusive time; counted in ``orphans``;
- **clock skew between services**: a child from a *different* service reported outside its
  parent's bounds is shifted (with its subtree) to start or end inside the parent, as Jaeger's
  skew adjustment does; the same service's children are never shifted (one clock), and
  producer/consumer links are left alone (a consumer legitimately runs after its producer);
- **no root**: nothing to measure end-to-end latency against; ``root`` is ``None``.

Examples (times in ms for readability):

>>> from pipeline.records import Resource, Span
>>> r = Resource("api", "api-1", "h", "", {})
>>> def sp(i, parent, s, e, name="op", res=r):
...     return Span("t" * 32, i, parent, name, 1, s, e, 0, {}, res)
>>> a = analyze([sp("root", "", 0, 100), sp("a", "root", 10, 60), sp("b", "root", 40, 90)])
>>> a.self_ns, a.cp_ns
([20, 50, 50], [20, 30, 50])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.records import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_CONSUMER,
    SPAN_KIND_PRODUCER,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    STATUS_OK,
    Span,
)

#: Deeper subtrees are attributed to the span at this depth (bounded recursion).
MAX_DEPTH = 256


@dataclass(slots=True)
class TraceAnalysis:
    spans: list[Span]
    root: int | None  # index of the root span in ``spans``
    start_ns: list[int]  # skew-adjusted
    end_ns: list[int]
    self_ns: list[int] = field(default_factory=list)
    cp_ns: list[int] = field(default_factory=list)
    orphans: int = 0  # spans whose parent is not in the trace (hung under the root)
    skew_adjusted: int = 0  # subtrees shifted into their parent's bounds
    clipped: int = 0  # children reaching outside their parent (async), clipped
    duplicates: int = 0  # spans with an id already seen (ignored)
    parent: list[int] = field(default_factory=list)  # index of each span's parent; -1: root

    @property
    def duration_ns(self) -> int:
        return 0 if self.root is None else self.end_ns[self.root] - self.start_ns[self.root]


def analyze(spans: Sequence[Span]) -> TraceAnalysis:
    """Exclusive and critical-path time of every span of one trace (see the module docstring)."""
    uniq: list[Span] = []
    index: dict[str, int] = {}
    duplicates = 0
    for s in spans:
        if s.span_id in index:
            duplicates += 1
            continue
        index[s.span_id] = len(uniq)
        uniq.append(s)
    n = len(uniq)
    out = TraceAnalysis(
        uniq, None, [s.start_ns for s in uniq], [max(s.end_ns, s.start_ns) for s in uniq],
        [0] * n, [0] * n, duplicates=duplicates,
    )
    root = _pick_root(uniq)
    if root is None:
        for i in range(n):
            out.self_ns[i] = out.end_ns[i] - out.start_ns[i]
        return out
    out.root = root
    parent = [root] * n
    for i, s in enumerate(uniq):
        if i == root:
            continue
        p = index.get(s.parent_id) if s.parent_id else None
        if p is None or p == i:
            out.orphans += 1
            p = root
        parent[i] = p
    children: list[list[int]] = [[] for _ in range(n)]
    out.parent = parent
    for i in range(n):
        if i != root:
            children[parent[i]].append(i)
    # Spans caught in a parent cycle are not reachable from the root: hang them under it.
    reached = [False] * n
    _walk(root, children, reached)
    cut = [i for i in range(n) if not reached[i]]
    if cut:
        out.orphans += len(cut)
        for i in cut:
            children[parent[i]].remove(i)
            children[root].append(i)
            parent[i] = root
    parent[root] = -1
    _adjust_skew(out, root, children)
    _exclusive(out, children)
    _critical_path(out, root, children)
    return out


def _pick_root(spans: list[Span]) -> int | None:
    """The span without a parent; of several, the longest (the others are orphans)."""
    best = None
    for i, s in enumerate(spans):
        if not s.parent_id and (best is None or s.duration_ns > spans[best].duration_ns):
            best = i
    return best


def _walk(start: int, children: list[list[int]], reached: list[bool]) -> None:
    stack = [start]
    while stack:
        i = stack.pop()
        if reached[i]:
            continue
        reached[i] = True
        stack.extend(children[i])


def _adjust_skew(out: TraceAnalysis, root: int, children: list[list[int]]) -> None:
    spans, start, end = out.spans, out.start_ns, out.end_ns
    stack = [root]
    while stack:
        p = stack.pop()
        ps, pe = start[p], end[p]
        parent = spans[p]
        for c in children[p]:
            child = spans[c]
            shift = 0
            if (
                child.resource.service != parent.resource.service
                and parent.kind != SPAN_KIND_PRODUCER
                and child.kind != SPAN_KIND_CONSUMER
                and (start[c] < ps or end[c] > pe)
            ):
                if end[c] - start[c] >= pe - ps or start[c] < ps:
                    shift = ps - start[c]  # align the start (or fit a longer child from it)
                else:
                    shift = pe - end[c]  # ends late: pull it back inside
            if shift:
                out.skew_adjusted += 1
                _shift_subtree(c, shift, children, start, end)
            if start[c] < ps or end[c] > pe:
                out.clipped += 1
            stack.append(c)


def _shift_subtree(
    top: int, shift: int, children: list[list[int]], start: list[int], end: list[int]
) -> None:
    stack = [top]
    while stack:
        i = stack.pop()
        start[i] += shift
        end[i] += shift
        stack.extend(children[i])


def _exclusive(out: TraceAnalysis, children: list[list[int]]) -> None:
    start, end = out.start_ns, out.end_ns
    for p in range(len(out.spans)):
        ps, pe = start[p], end[p]
        covered = 0
        kids = children[p]
        if kids:
            intervals = sorted(
                (max(start[c], ps), min(end[c], pe)) for c in kids if start[c] < pe and end[c] > ps
            )
            cur_s, cur_e = None, None
            for s, e in intervals:
                if cur_e is None or s > cur_e:
                    if cur_e is not None:
                        covered += cur_e - cur_s
                    cur_s, cur_e = s, e
                elif e > cur_e:
                    cur_e = e
            if cur_e is not None:
                covered += cur_e - cur_s
        out.self_ns[p] = (pe - ps) - covered


def _critical_path(out: TraceAnalysis, root: int, children: list[list[int]]) -> None:
    start, end, cp = out.start_ns, out.end_ns, out.cp_ns
    by_end = [sorted(kids, key=lambda c: end[c], reverse=True) for kids in children]

    def visit(p: int, lo: int, hi: int, depth: int) -> None:
        cursor = hi
        if depth < MAX_DEPTH:
            for c in by_end[p]:
                if cursor <= lo:
                    break
                cs, ce = max(start[c], lo), min(end[c], cursor)
                if cs >= ce:
                    continue  # starts after the cursor (overlapped by a later child) or empty
                cp[p] += cursor - ce  # the parent itself ran between this child and the next
                visit(c, cs, ce, depth + 1)
                cursor = cs
        if cursor > lo:
            cp[p] += cursor - lo

    visit(root, start[root], end[root], 0)


# ---------------------------------------------------------------------------------------------
# Where failures start

#: gRPC status codes that are a server's failure (the semantic conventions' list for server
#: spans); the others (NOT_FOUND, INVALID_ARGUMENT...) are the caller's and not an error there.
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
HTTP_STATUS_KEYS = ("http.response.status_code", "http.status_code")


def status_code(span: Span) -> int | None:
    """The HTTP status code a span records (current or older conventions), if any."""
    attrs = span.attrs
    for key in HTTP_STATUS_KEYS:
        code = attrs.get(key)
        if code is not None:
            try:
                return int(code)
            except (TypeError, ValueError):
                return None
    return None


def in_error(span: Span) -> bool:
    """Whether a span failed, as the semantic conventions define it, from what the SDKs send:

    - status ERROR, except an outgoing call (CLIENT span) whose response was a 4xx or a gRPC
      status that is not a server's failure (NOT_FOUND, INVALID_ARGUMENT...): the callee
      refused the request; the caller's error, handled or not by it, is judged on the
      caller's own spans, and the callee did not fail;
    - a SERVER span with an HTTP 5xx or a gRPC status that is a server's failure, whatever
      its status says (older instrumentations leave it unset);
    - an ``exception`` event on a span whose status is not OK (the event alone: some
      instrumentations record the exception and leave the status unset).

    >>> from pipeline.records import Resource
    >>> r = Resource("api", "", "", "", {})
    >>> def sp(kind, status, **attrs):
    ...     return Span("t", "s", "", "GET", kind, 0, 1, status, attrs, r)
    >>> in_error(sp(SPAN_KIND_CLIENT, STATUS_ERROR, **{"http.response.status_code": 404}))
    False
    >>> in_error(sp(SPAN_KIND_SERVER, 0, **{"http.response.status_code": 503}))
    True
    >>> in_error(sp(SPAN_KIND_SERVER, 0, **{"http.response.status_code": 404}))
    False
    >>> in_error(sp(SPAN_KIND_SERVER, 0, **{"rpc.grpc.status_code": 14}))
    True
    >>> in_error(sp(SPAN_KIND_CLIENT, STATUS_ERROR, **{"rpc.grpc.status_code": 5}))  # NOT_FOUND
    False
    >>> in_error(sp(SPAN_KIND_SERVER, 0, **{"rpc.grpc.status_code": [14]}))  # not a code
    False
    >>> in_error(sp(1, 0, **{"exception.type": "KeyError"})), in_error(sp(1, STATUS_OK))
    (True, False)
    """
    status = span.status
    if status == STATUS_ERROR:
        if span.kind == SPAN_KIND_CLIENT:
            code = status_code(span)
            if code is not None and 400 <= code < 500:
                return False
            grpc = _grpc_code(span)
            if grpc is not None and grpc and grpc not in GRPC_SERVER_ERRORS:
                return False  # NOT_FOUND, INVALID_ARGUMENT...: the gRPC client's "4xx"
        return True
    if status == STATUS_OK:
        return False
    if span.kind == SPAN_KIND_SERVER:
        code = status_code(span)
        if code is not None and code >= 500:
            return True
        if _grpc_code(span) in GRPC_SERVER_ERRORS:
            return True
    return "exception.type" in span.attrs


def _grpc_code(span: Span) -> int | None:
    """``rpc.grpc.status_code`` as an int, or None (absent, or not a number)."""
    v = span.attrs.get("rpc.grpc.status_code")
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.isdigit():
        return int(v)
    return None


@dataclass(slots=True)
class ErrorOrigin:
    """A span where a failure started: ``chain`` is its index, then each erroring ancestor its
    failure explains, up to the root when it reached it (``surfaced``) or to the last erroring
    ancestor; ``absorbed_by`` is the ancestor that did not fail though it waited for the
    chain's top (a retry that succeeded, a fallback), or None."""

    index: int
    chain: list[int]
    surfaced: bool
    absorbed_by: int | None = None


def _synchronous(a: TraceAnalysis, child: int, parent: int) -> bool:
    """Whether the parent waited for the child: not a message's consumer (it runs after its
    producer), and done within the parent (fire-and-forget work outlives it; times are
    skew-adjusted, so another service's child reported outside its parent was fitted in)."""
    c, p = a.spans[child], a.spans[parent]
    if c.kind == SPAN_KIND_CONSUMER or p.kind == SPAN_KIND_PRODUCER:
        return False
    return a.start_ns[child] < a.end_ns[parent] and a.end_ns[child] <= a.end_ns[parent]


def _retried(a: TraceAnalysis, err: Sequence[bool]) -> list[bool]:
    """Failing spans that a sibling of the same operation (same service, name and kind: a
    retry) started after, and that did not fail: their failure was handled by the retry."""
    spans, parent = a.spans, a.parent
    failing: dict[tuple[int, str, str, int], list[int]] = {}
    for i, e in enumerate(err):
        if e and parent[i] >= 0:
            s = spans[i]
            failing.setdefault((parent[i], s.resource.service, s.name, s.kind), []).append(i)
    out = [False] * len(spans)
    if not failing:
        return out
    for j, s in enumerate(spans):
        if err[j] or parent[j] < 0:
            continue
        for i in failing.get((parent[j], s.resource.service, s.name, s.kind), ()):
            if a.start_ns[j] >= a.end_ns[i]:
                out[i] = True
    return out


def error_origins(a: TraceAnalysis, failed: Sequence[bool] | None = None) -> list[ErrorOrigin]:
    """The origins of a trace's failures: each erroring span none of whose synchronous
    children is in error (the deepest erroring span), with the chain its failure explains.

    A failure that propagates upward is attributed to its origin once, not again to every
    caller it passed through. An erroring child does not explain an asynchronous parent's
    error (a consumer, a fire-and-forget task: the parent did not wait for it), so both are
    origins. A chain that ends below a span that did not fail is *absorbed*: the failure did
    not reach the request's result (a retry succeeded, a fallback answered); one that reaches
    the root, or an asynchronous boundary (nobody waited for it), *surfaced*. A failed call
    that a later call of the same operation retried successfully is absorbed by its parent
    even when the parent fails for another reason (then the parent is an origin of its own).

    ``failed``: ``in_error`` of each span of ``a.spans``, if computed already. Needs ``a``
    with a root; returns [] without one.
    """
    spans = a.spans
    if a.root is None:
        return []
    err = failed if failed is not None else [in_error(s) for s in spans]
    if not any(err):
        return []
    parent = a.parent
    retried = _retried(a, err)
    explained = [False] * len(spans)
    for i, e in enumerate(err):
        p = parent[i]
        if e and p >= 0 and err[p] and not retried[i] and _synchronous(a, i, p):
            explained[p] = True
    out = []
    for i, e in enumerate(err):
        if not e or explained[i]:
            continue
        chain, cur = [i], i
        surfaced, absorbed_by = False, None
        for _ in range(MAX_DEPTH):
            p = parent[cur]
            if p < 0 or not _synchronous(a, cur, p):
                surfaced = True
                break
            if not err[p] or retried[cur]:  # handled: the parent did not fail, or it retried
                absorbed_by = p
                break
            chain.append(p)
            cur = p
        out.append(ErrorOrigin(i, chain, surfaced, absorbed_by))
    return out
