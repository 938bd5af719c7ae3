"""Capture the detector state this release writes, as the tables hold it, for upgrade tests.

Run once per release whose state later releases must restore (the file name says the state
format it holds):

    python -m tests.support.state_capture tests/golden/state/v<N>-demo-13min.json.gz

It replays the first 13 minutes of the ``demo`` scenario (rate 10, to keep the file small)
through ``pipeline.local.LocalPipeline`` (one input partition per topic, two routed partitions
per stream, routed topics named ``<signal>-routed``: the layout of the first fixture), and
writes every stream's table as the changelog would hold it (the last value of each key).
``tests/unit/test_state_upgrade.py`` restores each fixture with the current code and checks
that the rest of the scenario gives the findings an uninterrupted run gives.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from typing import Any

import orjson

from pipeline.local import LocalPipeline
from pipeline.settings import Settings
from pipeline.simulate import build_scenario, iter_records

PARTITIONS = 2
CAPTURE_MIN = 13.0
SCENARIO = {"name": "demo", "seed": 1, "rate": 10.0, "duration": "20m"}


def scenario() -> Any:
    return build_scenario(SCENARIO["name"], seed=SCENARIO["seed"], rate=SCENARIO["rate"],
                          duration=SCENARIO["duration"])


def pipeline() -> LocalPipeline:
    sc = scenario()
    return LocalPipeline(Settings(), {sc.spans_topic: 1, sc.metrics_topic: 1},
                         partitions=PARTITIONS, routed_prefix="")


def capture(until_min: float = CAPTURE_MIN) -> dict[str, Any]:
    sc = scenario()
    stop_ns = sc.start_ns + int(until_min * 60e9)
    lp = pipeline()
    tables: dict[str, dict[str, bytes]] = {sig: {} for sig in lp.engines}
    findings = []

    def flush() -> None:
        for sig, writes in lp.changes().items():
            for k, v in writes:
                if v is None:
                    tables[sig].pop(k, None)
                else:
                    tables[sig][k] = v

    for i, rec in enumerate(iter_records(sc)):
        if rec.timestamp_ms * 1_000_000 > stop_ns:
            break
        # global record index as offset: the layout of the first fixture
        found = lp.feed(rec.topic, 0, i, rec.value, rec.timestamp_ms)
        found += lp.heartbeat(topics=[rec.topic])
        findings += [{"kind": f.kind, "status": f.status, "id": f.id} for f in found]
        if i % 50 == 49:
            flush()
    flush()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {
        "about": f"state written at commit {commit} (working tree), demo scenario at rate 10 "
                 f"for {until_min} min, {PARTITIONS} partitions per stream",
        "partitions": PARTITIONS,
        "scenario": {**SCENARIO, "until_min": until_min},
        "findings": findings,
        "tables": {sig: {k: v.decode() for k, v in sorted(t.items())}
                   for sig, t in tables.items()},
    }


def main(path: str) -> None:
    doc = capture()
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(orjson.dumps(doc))
    sizes = {sig: len(t) for sig, t in doc["tables"].items()}
    print(f"wrote {path}: {sizes} entries, {len(doc['findings'])} findings", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
