"""End to end on real components: simulated telemetry through the real broker into a worker;
real Prometheus (Debian package) scraping it and evaluating the shipped rules; real
Alertmanager with the shipped routing delivering to a webhook in this test. A slow query fires
``BottleneckSpan`` to the latency team's receiver, and the alert resolves after the fault ends.

Also, on a real Alertmanager with the shipped configuration: grouping, the critical route that
continues to the owning team, and inhibition (a memory leak silences the GC pressure it causes
on the same instance, and only there).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest

from pipeline.findings import fingerprint
from pipeline.simulate import Fault, build_scenario, iter_records
from pipeline.simulate.faults import BOTTLENECK_SPAN
from pipeline.simulate.writer import write_records
from tests.integration.conftest import consume, wait_for
from tests.support import promstack

pytestmark = pytest.mark.integration
M = 60.0
TARGET = {"service": "user-service", "operation": "SELECT users"}
SPEED = 12.0  # event seconds per wall second: 20 minutes of traffic in 100 s


@pytest.fixture
def webhook():
    hook = promstack.Webhook()
    yield hook
    hook.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: promstack.Webhook):
    proc, url = promstack.start_alertmanager(tmp_path, webhook.url)
    yield url
    proc.stop()


async def test_injected_bottleneck_fires_the_alert_and_it_resolves(
    names: dict[str, str], workers, bootstrap: str, tmp_path: Path,
    webhook: promstack.Webhook, alertmanager: str,
) -> None:
    worker = workers({**names, "PIPELINE_DETECTORS": ""})
    # The traffic runs at SPEED x real time, so the finding lasts seconds: the finding rules'
    # wait for the incident correlation (for: 1m of real time) is cut by as much.
    prom_proc, prometheus = promstack.start_prometheus(
        tmp_path, [f"127.0.0.1:{worker.port}"], alertmanager, finding_for=f"{60 / SPEED:g}s"
    )
    try:
        # Live: event time follows the wall clock x SPEED, ending about now, so the finding
        # is a series Prometheus scrapes for a while, then goes away.
        start_ns = time.time_ns() - int(20 * M * 1e9) + int(20 * M / SPEED * 1e9)
        scenario = build_scenario(
            "healthy", seed=7, duration="20m", rate=15, start=start_ns,
            faults=[Fault(BOTTLENECK_SPAN, TARGET, 11 * M, 14 * M, {"added_ms": 120.0})],
            spans_topic=names["OTLP_SPANS_TOPIC"], metrics_topic=names["OTLP_METRICS_TOPIC"],
        )
        writing = asyncio.create_task(write_records(
            iter_records(scenario), {"bootstrap_servers": bootstrap}, mode="live", speed=SPEED,
            spans_topic=scenario.spans_topic, progress=lambda line: None,
        ))

        def fired() -> list:
            return webhook.alerts(alertname="BottleneckSpan", **TARGET)

        # Routed spans are read in the worker's own consumer group.
        routed = f"{names['PIPELINE_APP_ID']}-spans-routed"

        def lag(topic: str) -> float | None:
            return worker.metrics().get(
                ("anomaly_pipeline_consumer_lag_records", (("topic", topic),)))

        # How long detection takes depends on how fast a loaded machine lets the worker read
        # (CI runs this beside other tests' workers), so the alert's deadline counts from the
        # moment the worker has read everything written, not from the start.
        await wait_for(lambda: fired() or writing.done() or not worker.alive(),
                       timeout=300, what="BottleneckSpan delivered or all traffic written")
        if not fired() and worker.alive() and not writing.exception():
            await wait_for(lambda: lag(scenario.spans_topic) == 0 and lag(routed) == 0
                           or fired() or not worker.alive(), timeout=300,
                           what="the worker to read everything written")
            try:
                await wait_for(lambda: fired() or not worker.alive(), timeout=120,
                               what="BottleneckSpan delivered")
            except AssertionError as exc:  # what the worker had found, and its log, by then
                raise AssertionError(f"{exc}; active findings: {active(worker)}\n"
                                     f"{worker.log()[-3000:]}") from None
        if writing.done() and writing.exception():
            raise writing.exception()
        assert worker.alive(), worker.log()[-3000:]
        receiver, alert = fired()[0]
        assert alert["status"] == "firing"
        # Routed by kind to the latency team; the labels carry what the finding is about.
        assert receiver == "service-latency"
        fp = fingerprint(BOTTLENECK_SPAN, TARGET)
        assert alert["labels"] == {
            "alertname": "BottleneckSpan", "source": "anomaly-pipeline",
            "kind": BOTTLENECK_SPAN, "severity": "warning",
            "service": TARGET["service"], "operation": TARGET["operation"], "fingerprint": fp,
        }
        ann = alert["annotations"]
        assert ann["runbook_url"].endswith("/docs/runbooks/bottleneck_span.md")
        assert Path(promstack.ROOT / "docs/runbooks/bottleneck_span.md").exists()
        assert "an unknown amount" not in ann["description"], ann["description"]
        assert "ms per" in ann["description"] and fp in ann["description"], ann["description"]
        # No other operation is alerted as a bottleneck.
        assert {a["labels"]["operation"] for _, a in webhook.alerts(alertname="BottleneckSpan")
                } == {TARGET["operation"]}

        await writing
        # Consumer lag is exported per consumed topic and drains to 0 once everything is read.
        await wait_for(lambda: lag(scenario.spans_topic) == 0 and lag(routed) == 0,
                       timeout=60, what="consumer lag 0 on the input and routed topics")
        # The fault ended at 14 min of 20: the finding resolves, its series goes, and after
        # the rule's keep_firing_for (2 min) the alert resolves and Alertmanager says so.
        await wait_for(
            lambda: any(a["status"] == "resolved" for _, a in fired()), timeout=240,
            what="BottleneckSpan resolved notification",
        )
        assert not promstack.prometheus_alerts(prometheus, "BottleneckSpan")

        # The finding on the topic is the one the alert names.
        def resolved(recs: list) -> bool:
            return any(orjson.loads(r.value)["status"] == "resolved"
                       and orjson.loads(r.value)["kind"] == BOTTLENECK_SPAN for r in recs)

        out = await consume(bootstrap, names["FINDINGS_TOPIC"], resolved, timeout=30)
        findings = [orjson.loads(r.value) for r in out if orjson.loads(r.value)["kind"]
                    == BOTTLENECK_SPAN]
        assert {f["fingerprint"] for f in findings} == {fp}
        assert {f["runbook_url"] for f in findings} == {ann["runbook_url"]}
    finally:
        prom_proc.stop()


def active(worker) -> list:
    """The findings a worker exports as active, for a timeout's message."""
    return [dict(labels) for (name, labels), value in worker.metrics().items()
            if name == "anomaly_pipeline_finding_active" and value]


def test_alertmanager_routes_groups_and_inhibits(alertmanager: str,
                                                 webhook: promstack.Webhook) -> None:
    def alert(name: str, severity: str, source: str = "anomaly-pipeline", **labels: str) -> dict:
        kind = {"MemoryLeak": "memory_leak", "GcPressure": "gc_pressure"}[name]
        out = {"labels": {"alertname": name, "kind": kind, "severity": severity,
                          "service": "cart", "fingerprint": f"{name}-{labels['instance']}",
                          **labels},
               "annotations": {"summary": f"{name} {labels}"}}
        if source:
            out["labels"]["source"] = source
        return out

    promstack.post_alerts(alertmanager, [
        alert("MemoryLeak", "critical", instance="cart-1"),
        alert("GcPressure", "warning", instance="cart-1"),  # explained by the leak
        alert("GcPressure", "warning", instance="cart-2"),  # no leak there
        # A finding whose severity rose: the old, lower one is silenced.
        alert("MemoryLeak", "warning", instance="cart-3"),
        alert("MemoryLeak", "critical", instance="cart-3"),
        # Another team's alerts with the same names: not the pipeline's to route or inhibit.
        alert("MemoryLeak", "critical", source="", instance="vm-1"),
        alert("GcPressure", "warning", source="", instance="vm-1"),
    ])
    promstack.until(lambda: webhook.alerts(alertname="GcPressure") and len(
        webhook.alerts(alertname="MemoryLeak")) >= 5, 30, "notifications")
    time.sleep(3)  # a few more group intervals: anything inhibited would have arrived by now
    ours = [(r, a) for r, a in webhook.alerts(source="anomaly-pipeline")]
    leak = [(r, a["labels"]["instance"], a["labels"]["severity"]) for r, a in ours
            if a["labels"]["alertname"] == "MemoryLeak"]
    # Critical pages and continues to the owning team; cart-3's warning is inhibited.
    assert sorted(leak) == [
        ("findings-pager", "cart-1", "critical"), ("findings-pager", "cart-3", "critical"),
        ("service-runtime", "cart-1", "critical"), ("service-runtime", "cart-3", "critical"),
    ]
    gc = [(r, a["labels"]["instance"]) for r, a in ours
          if a["labels"]["alertname"] == "GcPressure"]
    assert gc == [("service-runtime", "cart-2")]
    # Grouped by alertname and service: one notification per group and receiver.
    groups = {(n["receiver"], n["groupLabels"].get("alertname")) for n in
              webhook.notifications() if n["receiver"] != "default"}
    assert groups == {("findings-pager", "MemoryLeak"), ("service-runtime", "MemoryLeak"),
                      ("service-runtime", "GcPressure")}
    # The other team's alerts go to the root receiver, both of them.
    foreign = {(r, a["labels"]["alertname"]) for r, a in webhook.alerts(instance="vm-1")}
    assert foreign == {("default", "MemoryLeak"), ("default", "GcPressure")}
