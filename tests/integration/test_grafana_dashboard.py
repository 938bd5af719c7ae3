"""The Grafana dashboard's queries on real components: simulated telemetry with a slow query
(a bottleneck) and a few undecodable records through the real broker into a worker, a real
Prometheus (Debian package) scraping it, and every query of deploy/grafana/ asked of that
Prometheus as Grafana would send it (its variables replaced by this worker's job and instance).

Parsing (tests/deploy/test_grafana_dashboard.py) cannot see a query that groups by a label the
metric lacks or joins series that never match: here each query must return series, except the
panels listed in ``MAY_BE_EMPTY`` with the reason this traffic leaves them empty, and every
series must carry the labels its legend shows. The firing findings table must hold the
injected bottleneck, the service graph table the traffic's edges in each of its three
queries, and the dead-letter panel the spans topic.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import BOTTLENECK_SPAN
from pipeline.simulate.writer import write_records
from tests.integration.conftest import produce, wait_for
from tests.support import promstack
from tests.support.dashboard import (
    JOB,
    all_panels,
    exported_names,
    load,
    queries,
    substitute,
    unexported,
)

pytestmark = pytest.mark.integration
M = 60.0
TARGET = {"service": "user-service", "operation": "SELECT users"}
SPEED = 12.0  # event seconds per wall second: 20 minutes of traffic in 100 s
GARBAGE = 3  # undecodable records written to the spans topic
#: Panels this traffic leaves without series (a title matches every query of the panel).
MAY_BE_EMPTY = {
    # A counter with labels has no series before its first event, and no detector fails here.
    "Detector errors and quarantines",
    # Nothing is evicted or lost at these volumes; the families have no series until then.
    "Evictions by detector and reason",
    "State entries lost",
    # One finding need not open an incident; until the incidents work is merged the incident
    # metrics do not exist at all.
    "Open incidents by severity", "Open incidents",
}


async def test_every_dashboard_query_answers_on_a_worker(
    names: dict[str, str], workers, bootstrap: str, tmp_path: Path,
) -> None:
    worker = workers({**names, "PIPELINE_DETECTORS": ""})
    prom_proc, prometheus = promstack.start_prometheus(
        tmp_path, [f"127.0.0.1:{worker.port}"], None)
    writing: asyncio.Task[None] | None = None
    try:
        await wait_for(lambda: worker.metrics() or not worker.alive(), timeout=120,
                       what="the worker's /metrics")
        assert worker.alive(), worker.log()[-3000:]
        now_ms = int(time.time() * 1000)
        await produce(bootstrap, [(names["OTLP_SPANS_TOPIC"], b"garbage", b"\xff\x00 not otlp",
                                   now_ms) for _ in range(GARBAGE)])
        # Live: event time follows the wall clock x SPEED, ending about now.
        start_ns = time.time_ns() - int(20 * M * 1e9) + int(20 * M / SPEED * 1e9)
        scenario = build_scenario(
            "healthy", seed=7, duration="20m", rate=15, start=start_ns,
            faults=[Fault(BOTTLENECK_SPAN, TARGET, 8 * M, 20 * M, {"added_ms": 120.0})],
            spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
        )
        writing = asyncio.create_task(write_records(
            iter_records(scenario), {"bootstrap_servers": bootstrap}, mode="live", speed=SPEED,
            spans_topic=scenario.spans_topic, progress=lambda line: None,
        ))

        def q(expr: str) -> list[dict]:
            return promstack.query(prometheus, expr)

        def firing() -> list[dict]:
            return q(f'anomaly_pipeline_finding_active{{kind="{BOTTLENECK_SPAN}"}}')

        await wait_for(lambda: firing() or writing.done() or not worker.alive(), timeout=400,
                       what="the bottleneck finding scraped, or all traffic written")
        if not firing():
            await wait_for(lambda: firing() or not worker.alive(), timeout=180,
                           what="the bottleneck finding scraped")
        assert worker.alive(), worker.log()[-3000:]
        # Every counter has two scrapes in the rate window by now.
        # (The findings counter appears with the finding: a query at once can find one
        # sample of it, no rate.)
        await wait_for(lambda: q(f"anomaly_pipeline_deadletter_records_total{{job='{JOB}'}}")
                       and q("rate(traces_service_graph_request_total[30s]) > 0")
                       and q("rate(anomaly_pipeline_findings_total[30s])"), timeout=60,
                       what="dead letters, service-graph traffic and findings scraped")

        variables = {"job": JOB, "instance": f"127.0.0.1:{worker.port}",
                     "__rate_interval": "30s", "__interval": "5s", "__range": "5m"}
        board = load()
        # (panel title, refId) -> the series its query returns now
        answers = {(panel["title"], t["refId"]): q(substitute(t["expr"], variables))
                   for panel in all_panels(board["panels"]) for t in panel.get("targets", [])}
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                selector = var["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]
                answers[(f"variable {var['name']}", "")] = q(substitute(selector, variables))
        empty = sorted(k for k, series in answers.items()
                       if not series and k[0] not in MAY_BE_EMPTY)
        absent = unexported(queries(board), exported_names())
        assert not empty, f"queries without series: {empty}; not exported here: {absent}"

        # A legend names each series by labels the query must keep (a grouping by a label the
        # metric lacks returns one unlabelled series, not none).
        for panel in all_panels(board["panels"]):
            for t in panel.get("targets", []):
                for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                    unnamed = [r["metric"] for r in answers[(panel["title"], t["refId"])]
                               if not r["metric"].get(label)]
                    assert not unnamed, (panel["title"], t["refId"], label, unnamed)

        # The tables' rows: the finding with its entity, and the traffic's edges.
        rows = answers[("Firing findings", "A")]
        assert (BOTTLENECK_SPAN, TARGET["service"], TARGET["operation"]) in {
            (r["metric"]["kind"], r["metric"]["service_name"], r["metric"]["operation"])
            for r in rows}, rows
        edges = {ref: {(e["metric"]["client"], e["metric"]["server"])
                       for e in answers[("Service graph edges", ref)]} for ref in "ABC"}
        assert edges["B"] == edges["A"] and edges["C"] <= edges["A"], edges
        assert any(TARGET["service"] in edge for edge in edges["A"]), edges["A"]
        assert float(answers[("Firing findings (total)", "A")][0]["value"][1]) >= 1
        dead = answers[("Dead letters by topic and reason", "A")]
        assert {d["metric"]["topic"] for d in dead} == {names["OTLP_SPANS_TOPIC"]}, dead
    finally:
        if writing is not None:
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
        prom_proc.stop()
