"""The contract every detector keeps (after river's test_estimators): snapshot/restore
round-trips through JSON, runs are deterministic, and batching does not change results.

Every built-in detector is checked, plus the test counters that exercise the contract itself.
``CONTRACT_INPUTS`` holds, per detector name, record batches that make it emit findings (or,
for a detector that derives records for another stream, derive them); otherwise a detector may
provide ``contract_inputs()`` (a classmethod), else a generic stream of its signal is used.
What a detector derives (``drain``) is checked like its findings.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.detectors import BUILTIN
from pipeline.detectors.base import SIGNALS, Detector
from pipeline.records import MetricPoint, Resource, Span
from tests.support import heaps, tcp, traces
from tests.support.counting import PointCounter, SpanCounter

S = 10**9
T0 = 1_767_600_000 * S
DETECTORS = [*BUILTIN, SpanCounter, PointCounter]


def generic_inputs(signal: str) -> list[list[Any]]:
    batches = []
    for b in range(30):
        service = "canary" if b < 15 else "steady"
        res = Resource(service, f"{service}-1", "h", "", {})
        t = T0 + b * 5 * S
        if signal == "spans":
            batch = [Span(f"{b:016x}{i:016x}", f"{i + 1:016x}", "", "op", 2, t + i * S // 10,
                          t + i * S // 10 + S // 100, 0, {}, res) for i in range(20)]
        else:
            batch = [MetricPoint("process.memory.usage", "gauge", "By", 0, False,
                                 t + i * S // 10, 0, 1e8 + i, {}, res) for i in range(20)]
        batches.append(batch)
    return batches


def _slow_query(service: str, op: str, minute: float) -> float:
    return 80.0 if (service, op) == ("api", "SELECT users") and 15 <= minute < 20 else 0.0


def _memory_batches() -> list[list[Any]]:
    """A Java leak with a burst of GC pressure and a restart, beside a healthy Go instance."""
    leak = heaps.batches(
        "java", 70, heaps.leak(0.3 * heaps.GIB, 60, heaps.GIB, onset_s=1800),
        gc_fraction=lambda t: 0.2 if 2400 <= t < 3000 else 0.01, restart_at=3900,
    )
    calm = heaps.batches("go", 70, heaps.flat(0.2 * heaps.GIB), service="calm", instance="c-1")
    return [a + b for a, b in zip(leak, calm, strict=True)]


CONTRACT_INPUTS = {
    "trace_assembly": lambda: traces.span_batches(minutes=2),
    "bottleneck": lambda: traces.samples(minutes=25, added_ms=_slow_query),
    "memory": _memory_batches,
    # reuse lost on one host (1.5 -> 30 closes/s) for 8 minutes, beside a steady host
    "timewait": lambda: [a + b for a, b in zip(
        tcp.host_batches(24, closes=tcp.step(1.5, 30.0, 600, 1080)),
        tcp.host_batches(24, style="node", host="node-8", seed=2), strict=True)],
    "client_calls": lambda: traces.span_batches(minutes=3),
    # 1.5 % of queries fail, then 40 % for five minutes, then back
    "error_origin": lambda: traces.error_samples(
        minutes=30, fail_rate=lambda m: 0.4 if 20 <= m < 25 else 0.015),
    "service_map": lambda: traces.error_samples(
        minutes=12, fail_rate=lambda m: 0.4 if 5 <= m < 8 else 0.015),
}


def inputs(cls: type[Detector]) -> list[list[Any]]:
    if cls.name in CONTRACT_INPUTS:
        return CONTRACT_INPUTS[cls.name]()
    make = getattr(cls, "contract_inputs", None)
    return make() if make else generic_inputs(cls.signal)


def outputs(d: Detector, wm: int) -> list[Any]:
    out: list[Any] = [f.to_dict() for f in d.advance(wm)]
    return out + [repr(r) for r in d.drain()] + [repr(r) for r in d.published()]


def drive(d: Detector, batches: list[list[Any]]) -> list[Any]:
    out = []
    for batch in batches:
        d.update(batch)
        out += outputs(d, max(r.event_time_ns for r in batch) - 5 * S)
    return out


@pytest.fixture(params=DETECTORS, ids=lambda c: c.name)
def cls(request: pytest.FixtureRequest) -> type[Detector]:
    return request.param


def test_declares_its_contract(cls: type[Detector]) -> None:
    assert cls.signal in SIGNALS
    assert cls.name and cls.version and (cls.kinds or cls.emits in SIGNALS or cls.publishes)


def test_deterministic(cls: type[Detector]) -> None:
    a, b = drive(cls(), inputs(cls)), drive(cls(), inputs(cls))
    assert a == b
    assert a, "contract inputs should make the detector emit findings (or derive records)"


def test_snapshot_restore_roundtrip_mid_stream(cls: type[Detector]) -> None:
    batches = inputs(cls)
    whole = drive(cls(), batches)
    half = len(batches) // 2
    first = cls()
    out = drive(first, batches[:half])
    resumed = cls()
    resumed.restore(orjson.loads(orjson.dumps(first.snapshot(), option=orjson.OPT_SERIALIZE_NUMPY)))
    out += drive(resumed, batches[half:])
    assert out == whole
    assert orjson.dumps(resumed.snapshot()) == orjson.dumps(cls_after(cls, batches).snapshot())


def cls_after(cls: type[Detector], batches: list[list[Any]]) -> Detector:
    d = cls()
    drive(d, batches)
    return d


def test_incremental_snapshots_compose_to_the_full_one(cls: type[Detector]) -> None:
    d = cls()
    merged: dict[str, Any] = {}
    for batch in inputs(cls):
        drive(d, [batch])
        for k, v in d.snapshot(changed_only=True).items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
    assert orjson.dumps(dict(sorted(merged.items()))) == orjson.dumps(
        dict(sorted(d.snapshot().items())))


def test_batching_does_not_change_results(cls: type[Detector]) -> None:
    """Records given in one update or several (between the same watermarks) give the same."""
    batches = inputs(cls)
    a = drive(cls(), batches)
    d, b = cls(), []
    for batch in batches:
        for i in range(0, len(batch), 3):
            d.update(batch[i:i + 3])
        b += outputs(d, max(r.event_time_ns for r in batch) - 5 * S)
    assert b == a
