"""A worker restores the state an earlier release wrote and goes on as if never stopped.

Each file in ``tests/golden/state/`` is the tables a release left after the first 13 minutes
of the demo scenario (``tests/support/state_capture.py``; ``v1`` is the first, unversioned,
format). Restored with the current code and fed the scenario again from a minute before the
cut (what was applied is skipped, as after a restart), the findings from then on are those of
an uninterrupted run, and nothing saved is dropped. Keep every fixture: a release must read
its predecessor's state.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.findings import Finding
from pipeline.local import LocalPipeline
from tests.support.state_capture import pipeline, scenario

FIXTURES = sorted((Path(__file__).parents[1] / "golden" / "state").glob("*.json.gz"))


def feed(lp: LocalPipeline, from_ns: int = 0) -> list[Finding]:
    out: list[Finding] = []
    for i, rec in enumerate(REC):
        if rec.timestamp_ms * 1_000_000 < from_ns:
            continue
        out += lp.feed(rec.topic, 0, i, rec.value, rec.timestamp_ms)
        out += lp.heartbeat(topics=[rec.topic])
    return out + lp.end_of_input()


def key(f: Finding) -> tuple[Any, ...]:
    return (f.kind, f.status, f.id, f.severity, f.detected_at_ns, f.resolved_at_ns)


REC: list[Any] = []


@pytest.fixture(scope="module")
def uninterrupted() -> list[Finding]:
    from pipeline.simulate import iter_records

    REC[:] = list(iter_records(scenario()))
    return feed(pipeline())


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_state_of_an_earlier_release_restores_and_goes_on(
    path: Path, uninterrupted: list[Finding]
) -> None:
    with gzip.open(path) as fh:
        doc = orjson.loads(fh.read())
    lp = pipeline()
    tables = {sig: {k: v.encode() for k, v in t.items()} for sig, t in doc["tables"].items()}
    assert lp.restore(tables) == sum(len(t) for t in tables.values())
    dropped = {sig: sum(e.counters.state_dropped for e in by_p.values())
               for sig, by_p in lp.engines.items()}
    assert dropped == {"spans": 0, "metrics": 0, "traces": 0}
    # What the release had open comes back: open traces, baselines, instances, hosts.
    tracked = {d.name: 0 for by_p in lp.engines.values() for e in by_p.values()
               for d in e.detectors}
    for by_p in lp.engines.values():
        for e in by_p.values():
            for d in e.detectors:
                tracked[d.name] += d.stats().tracked
    assert all(tracked[n] > 0 for n in ("trace_assembly", "bottleneck", "memory", "timewait"))
    # The two findings firing at minute 13 are still firing: they resolve, not open again.
    firing = {f["id"] for f in doc["findings"] if f["status"] == "firing"}
    assert len(firing) == 2
    cut = scenario().start_ns + int(doc["scenario"]["until_min"] * 60e9)
    # From a minute before the cut: what was applied then is skipped (by source offset).
    after = feed(lp, from_ns=cut - 60 * 10**9)
    assert sum(e.counters.duplicate_messages for e in lp.engines["spans"].values()) > 0
    want = [key(f) for f in uninterrupted
            if (f.resolved_at_ns or f.detected_at_ns) > cut]
    assert sorted(map(key, after)) == sorted(want)
    assert {f.id for f in after if f.status == "resolved"} >= firing
    assert "memory_leak" in {f.kind for f in after}  # the floors' history came back
    errors = {sig: {p: e.counters.errors for p, e in by_p.items() if e.counters.errors}
              for sig, by_p in lp.engines.items()}
    assert errors == {"spans": {}, "metrics": {}, "traces": {}}  # no detector raised on it
