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

from pipeline.records import SPAN_KIND_CONSUMER, SPAN_KIND_PRODUCER, Span

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
