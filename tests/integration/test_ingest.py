"""Real broker: valid OTLP (proto and JSON, keyed and unkeyed) is counted; every bad record lands
in the dead-letter topic with its reason and original bytes; the worker stays up and goes on."""

from __future__ import annotations

import os

import pytest

from pipeline import otlp
from pipeline.sinks import deadletter as dl
from tests.integration.conftest import consume, produce, wait_for
from tests.support import corpus
from tests.support.otlp_build import T0, metric_request, span_request, to_otlp_json

pytestmark = pytest.mark.integration
MAX_BYTES = 64 * 1024
TS_MS = T0 // 10**6


def good_spans(encoding: str, n_records: int, first: int = 0) -> list[tuple]:
    """n_records records of 20 spans; even ones keyed by trace id, odd ones unkeyed batches."""
    out = []
    for i in range(first, first + n_records):
        keyed = i % 2 == 0
        spans = []
        for j in range(20):
            trace = (i * 1000 + (0 if keyed else j) + 1).to_bytes(16, "big")
            spans.append({"trace_id": trace, "span_id": (j + 1).to_bytes(8, "big"),
                          "start": T0 + i * 10**9, "end": T0 + i * 10**9 + 10**8})
        req = span_request(spans, {"service.name": f"svc-{i % 3}"})
        value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
        key = trace.hex().encode() if keyed else None
        out.append((key, value))
    return out


def good_metrics(encoding: str, n_records: int) -> list[tuple]:
    out = []
    for i in range(n_records):
        req = metric_request({"service.name": "cart", "service.instance.id": f"cart-{i}"})
        value = req.SerializeToString() if encoding == otlp.OTLP_PROTO else to_otlp_json(req)
        out.append((None, value))
    return out


@pytest.mark.parametrize(
    ("spans_encoding", "metrics_encoding"),
    [("otlp_proto", "otlp_json"), ("otlp_json", "otlp_proto")],
)
async def test_bad_records_dead_lettered_good_ones_counted(
    bootstrap: str, names: dict, workers, spans_encoding: str, metrics_encoding: str
) -> None:
    env = {**names, "OTLP_SPANS_ENCODING": spans_encoding,
           "OTLP_METRICS_ENCODING": metrics_encoding, "MAX_RECORD_BYTES": str(MAX_BYTES)}
    worker = workers(env)
    topics = {"spans": names["OTLP_SPANS_TOPIC"], "metrics": names["OTLP_METRICS_TOPIC"]}
    encodings = {"spans": spans_encoding, "metrics": metrics_encoding}
    bad = [c for c in corpus.cases(MAX_BYTES) if encodings[c.signal] == c.encoding]
    assert len(bad) >= 8

    spans = good_spans(spans_encoding, 10)
    points = good_metrics(metrics_encoding, 5)
    # Valid items inside partially bad records are processed too (OTLP partial success).
    partial_items = {"spans": 0, "metrics": 0}
    for c in bad:
        if c.partial:
            decode = otlp.decode_spans if c.signal == "spans" else otlp.decode_metrics
            limits = otlp.Limits(max_record_bytes=MAX_BYTES,
                                 reference_time_ns=c.timestamp_ms * 10**6)
            partial_items[c.signal] += len(decode(c.value, c.encoding, limits).items)
    records = [(topics["spans"], k, v, TS_MS) for k, v in spans[:5]]
    records += [(topics[c.signal], c.key, c.value, c.timestamp_ms) for c in bad]
    records += [(topics["spans"], k, v, TS_MS) for k, v in spans[5:]]
    records += [(topics["metrics"], k, v, TS_MS) for k, v in points]
    await produce(bootstrap, records)

    letters = await consume(bootstrap, names["DEADLETTER_TOPIC"], lambda r: len(r) >= len(bad))
    assert len(letters) == len(bad), worker.log()[-3000:]
    by_value = {}
    for rec in letters:
        h = {k: v.decode() for k, v in rec.headers}
        assert h[dl.HEADER_TOPIC] in topics.values()
        assert int(h[dl.HEADER_PARTITION]) >= 0 and int(h[dl.HEADER_OFFSET]) >= 0
        assert h[dl.HEADER_ERROR_CLASS] and h[dl.HEADER_ERROR_MESSAGE]
        by_value.setdefault(rec.value, []).append(h)
        if rec.value is None:
            assert rec.key == b"cart-1"  # the original key travels with the dead letter
    for c in bad:
        matches = [h for h in by_value[c.value] if h[dl.HEADER_ERROR_REASON] == c.reason]
        assert len(matches) == 1, c.name
        h = matches[0]
        assert h[dl.HEADER_TOPIC] == topics[c.signal], c.name
        assert (h.get(dl.HEADER_PARTIAL) == "true") == c.partial, c.name

    expected_spans = 10 * 20 + partial_items["spans"]
    expected_points = 5 * 4 + partial_items["metrics"]
    await wait_for(lambda: worker.metric("anomaly_pipeline_items_detected_total",
                                         signal="spans") >= expected_spans,
                   what=f"{expected_spans} spans")
    await wait_for(lambda: worker.metric("anomaly_pipeline_items_detected_total",
                                         signal="metrics") >= expected_points, what="points")
    assert worker.metric("anomaly_pipeline_items_detected_total", signal="spans") == expected_spans
    assert worker.metric("anomaly_pipeline_items_detected_total",
                         signal="metrics") == expected_points
    dead = sum(worker.metric("anomaly_pipeline_deadletter_records_total", topic=topics[c.signal],
                             reason=c.reason) for c in {(c.signal, c.reason): c for c in bad}
               .values())
    assert dead == len(bad)

    # Still up, still consuming.
    assert worker.alive()
    more = good_spans(spans_encoding, 4, first=100)
    await produce(bootstrap, [(topics["spans"], k, v, TS_MS) for k, v in more])
    await wait_for(lambda: worker.metric("anomaly_pipeline_items_detected_total",
                                         signal="spans") == expected_spans + 80, what="more")
    assert worker.alive()
    assert os.path.exists(worker.log_path)
