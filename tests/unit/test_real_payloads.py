"""Trace assembly on what the official Python SDK really sends (tests/golden/real/).

A minute of the corpus services' trace exports: urllib's client spans are named just ``GET``
and ``POST`` and name no service; behind the corpus's proxies only the port tells catalog and
pricing apart, and only the callee's server span (the client span's child) names them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmarks.corpus.recorder import Recording
from pipeline import otlp
from pipeline.detectors.trace_assembly import CALL, CALLEE, TraceAssembler

GOLDEN = Path(__file__).parents[1] / "golden" / "real" / "python-sdk-spans.bin"


def test_generic_client_spans_become_one_operation_per_edge() -> None:
    asm = TraceAssembler()
    newest = 0
    for _, signal, body in Recording(GOLDEN):
        assert signal == "spans"
        spans = otlp.decode_spans(body, "otlp_proto").items
        asm.update(spans)
        newest = max([newest, *(s.end_ns for s in spans)])
    asm.advance(newest + 300 * 10**9)  # past every trace's max age: all complete
    samples = asm.drain()
    assert len(samples) > 100
    callees: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for sample in samples:
        for op in sample.ops:
            if op.attrs.get(CALL):
                callees[(sample.service, op.operation, op.detail)].add(op.attrs.get(CALLEE, ""))
    # Generic names, told apart by destination (127.0.0.1:<port>)...
    assert {name for _, name, _ in callees} == {"GET", "POST"}
    assert all(detail.startswith("127.0.0.1:") for _, _, detail in callees), callees
    # ...each destination answered by exactly one service, found by trace context.
    assert all(len(c) == 1 and "" not in c for c in callees.values()), callees
    edges = {(caller, next(iter(c))) for (caller, _, _), c in callees.items()}
    assert edges == {("frontend", "catalog"), ("frontend", "pricing"), ("frontend", "orders"),
                     ("orders", "catalog")}
    # frontend calls catalog and pricing with the same span name: two operations.
    frontend_gets = {d for (svc, name, d) in callees if svc == "frontend" and name == "GET"}
    assert len(frontend_gets) == 2
