"""Real broker, real worker, the real ``feedback`` command: a memory leak fires; the on-call
mutes its fingerprint; within seconds the worker leaves it out of the gauge the alert rules
fire on (and counts it muted), and publishes it again with ``muted: true`` (same id) on the
findings topic. A ``confirm`` of that occurrence is then read back by the operator-judged
scoring (``benchmarks.feedback_labels``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest

from benchmarks.feedback_labels import read_and_score
from pipeline.detectors.memory import LEAK
from pipeline.settings import Settings
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import MEMORY_LEAK
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START
from pipeline.simulate.writer import write_records
from tests.integration.conftest import ROOT, consume, wait_for

pytestmark = pytest.mark.integration
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "finding.schema.json").read_text())
M = 60.0
SLOT = {"service": "user-service", "instance": "user-service#0"}  # a Go instance


def feedback(env: dict[str, str], *argv: str) -> str:
    """Run ``python -m pipeline feedback`` as the on-call would; its output."""
    out = subprocess.run([sys.executable, "-m", "pipeline", "feedback", *argv], cwd=ROOT,
                         env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def active(worker, fp: str) -> bool:
    return any(name == "anomaly_pipeline_finding_active" and ("fingerprint", fp) in labels
               for name, labels in worker.metrics())


async def test_a_mute_reaches_the_worker_and_a_confirm_the_scoring(
    names: dict[str, str], workers, bootstrap: str
) -> None:
    # The leak runs to the end of the input, so its finding is still firing when muted.
    scenario = build_scenario(
        "healthy", seed=4, duration="28m", start=DEFAULT_REPLAY_START, emit_spans=False,
        faults=[Fault(MEMORY_LEAK, SLOT, 5 * M, 28 * M, {"rate_pct_limit_per_hour": 60.0})],
        spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
    )
    env = {**names, "PIPELINE_DETECTORS": "", "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    worker = workers(env)
    await write_records(list(iter_records(scenario)), {"bootstrap_servers": bootstrap},
                        mode="replay", spans_topic=scenario.spans_topic,
                        progress=lambda line: None)

    def leak_firing(recs: list) -> bool:
        return any(r.value and orjson.loads(r.value)["kind"] == LEAK for r in recs)

    out = await consume(bootstrap, names["FINDINGS_TOPIC"], leak_firing, timeout=240)
    fired = next((orjson.loads(r.value) for r in out
                  if r.value and orjson.loads(r.value)["kind"] == LEAK), None)
    assert fired is not None, worker.log()[-3000:]
    assert fired["status"] == "firing" and "muted" not in fired
    fp = fired["fingerprint"]
    await wait_for(lambda: active(worker, fp), timeout=60, what="the finding on the gauge")

    said = feedback(env, "mute", "--fingerprint", fp, "--for", "2h", "--reason", "known leak",
                    "--by", "oncall")
    assert f"mute fingerprint {fp}" in said and "by oncall" in said
    # Left out of the alerting gauge (the view is rebuilt as the word is applied), counted.
    await wait_for(lambda: not active(worker, fp), timeout=60, what="the mute honoured")
    assert worker.metric("anomaly_pipeline_findings_muted", kind=LEAK) == 1
    assert worker.metric("anomaly_pipeline_feedback_applied_total", action="mute") == 1

    def muted_record(recs: list) -> bool:
        return any(r.key == fp.encode() and r.value and orjson.loads(r.value).get("muted")
                   for r in recs)

    out = await consume(bootstrap, names["FINDINGS_TOPIC"], muted_record, timeout=60)
    ours = [orjson.loads(r.value) for r in out if r.key == fp.encode() and r.value]
    for doc in ours:
        jsonschema.validate(doc, SCHEMA)
    again = next(doc for doc in ours if doc.get("muted"))
    # The same occurrence, still firing, now marked; and the latest record of the key says so.
    assert (again["id"], again["status"]) == (fired["id"], "firing")
    assert ours[-1].get("muted") is True

    # A bad record on the topic is counted and skipped; the worker goes on.
    from tests.integration.conftest import produce
    await produce(bootstrap, [(names["FEEDBACK_TOPIC"], b"mute:fp:" + fp.encode(), b"{", 0)])
    await wait_for(lambda: worker.metric("anomaly_pipeline_feedback_rejected_total",
                                         reason="invalid_json") == 1, timeout=60,
                   what="the bad record counted")
    assert worker.alive() and not active(worker, fp)

    feedback(env, "confirm", "--id", fired["id"], "--reason", "leak confirmed in pprof")
    listed = [orjson.loads(line) for line in feedback(env, "list", "--json").splitlines()]
    assert {(w["key"], w["action"]) for w in listed} == {
        (f"mute:fp:{fp}", "mute"), (f"label:id:{fired['id']}", "confirm")}
    settings = Settings.from_env({**env})
    scores = await asyncio.wait_for(read_and_score(settings), 120)
    assert scores[LEAK]["findings"] == 1
    assert scores[LEAK]["confirmed"] == 1 and scores[LEAK]["precision"] == 1.0
    assert scores[LEAK]["muted"] == 1
