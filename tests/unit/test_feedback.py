"""Feedback words: parsing and validation (bad records give a reason, never a crash), matching
by fingerprint, id and entity pattern, mute expiry in event time, the cap, what a finding's
record says, the command's words, the alerting gauge, and the operator-judged scoring."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.feedback_labels import labels_from, score_labels
from pipeline.detectors.memory import MemoryDetector
from pipeline.feedback import (
    FeedbackError,
    FeedbackState,
    Target,
    finding_event_ns,
    make_word,
    parse_time,
)
from pipeline.feedback_cli import add_arguments, build
from pipeline.findings import Finding, Lifecycle, Verdict, fingerprint, rfc3339
from pipeline.sinks.metrics import PipelineMetrics, StreamState

ROOT = Path(__file__).parents[2]


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((ROOT / "schemas" / name).read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


WORD_SCHEMA, FINDING_SCHEMA = validator("feedback.schema.json"), validator("finding.schema.json")
S = 10**9
H = 3600 * S
T0 = parse_time("2026-01-05T08:00:00Z")
CART = {"service": "cart", "instance": "cart-1"}
FP = fingerprint("memory_leak", CART)


def word(action: str = "mute", target: Target | None = None, created: int = T0,
         expires: int | None = T0 + 2 * H, by: str = "ana"):
    return make_word(action, target or Target(fingerprint=FP), by=by, reason="r",
                     created_at_ns=created, expires_at_ns=expires if action == "mute" else None)


def put(state: FeedbackState, *words) -> None:
    for w in words:
        state.apply(w.key.encode(), w.to_json())


def finding(entity: dict = CART, kind: str = "memory_leak", status: str = "firing",
            detected: int = T0 + H) -> Finding:
    return Finding(kind=kind, status=status, severity="warning", entity=dict(entity),
                   started_at_ns=detected - 60 * S, detected_at_ns=detected,
                   resolved_at_ns=detected + 60 * S if status == "resolved" else None,
                   summary="heap floor rising", evidence={}, next_steps=["look"],
                   detector="memory", detector_version="1")


# -- parsing ------------------------------------------------------------------------------------
def test_a_word_round_trips_and_matches_its_schema() -> None:
    for w in (word(), word("ack"), word("confirm", Target(id="1" * 32)),
              word("reject", Target(kind="memory_*", entity=(("service", "cart*"),)))):
        doc = orjson.loads(w.to_json())
        WORD_SCHEMA.validate(doc)
        state = FeedbackState()
        applied = state.apply(w.key.encode(), w.to_json())
        assert (applied.action, applied.target) == (w.action, w.target)
        assert state.words[w.key] == w


def _rec(doc: dict) -> bytes:
    return orjson.dumps(doc)


GOOD = orjson.loads(word().to_json())
GOOD_KEY = word().key.encode()


@pytest.mark.parametrize(("key", "value", "reason"), [
    (b"", _rec(GOOD), "invalid_key"),
    (None, None, "invalid_key"),
    (b"silence:fp:" + FP.encode(), _rec(GOOD), "invalid_key"),
    (b"mute:" + FP.encode(), _rec(GOOD), "invalid_key"),
    (b"\xff\xfe", _rec(GOOD), "invalid_key"),
    (GOOD_KEY, b"{not json", "invalid_json"),
    (GOOD_KEY, b"[1, 2]", "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "schema_version": "2.0"}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "action": "snooze"}), "invalid_record"),
    (GOOD_KEY, _rec({k: v for k, v in GOOD.items() if k != "expires_at"}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "expires_at": GOOD["created_at"]}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "expires_at": "tomorrow"}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "created_at": "2026-01-05T08:00:00"}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "target": {"fingerprint": "XYZ"}}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "target": {"entity": {}}}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "target": {"fingerprint": FP, "entity": {"a": "b"}}}),
     "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "target": {"id": FP}}), "invalid_record"),  # a mute of one id
    (GOOD_KEY, _rec({**GOOD, "by": 7}), "invalid_record"),
    (GOOD_KEY, _rec({**GOOD, "by": ""}), "invalid_record"),
    (b"mute:fp:" + b"0" * 32, _rec(GOOD), "key_mismatch"),
    (b"ack:fp:" + FP.encode(), _rec(GOOD), "key_mismatch"),
])
def test_bad_records_are_refused_with_a_reason_and_change_nothing(
        key: bytes | None, value: bytes | None, reason: str) -> None:
    state = FeedbackState()
    put(state, word("ack"))
    before = dict(state.words)
    with pytest.raises(FeedbackError) as err:
        state.apply(key, value)
    assert err.value.reason == reason, str(err.value)
    assert state.words == before


def test_parse_time_needs_a_zone() -> None:
    assert parse_time("2026-01-05T09:00:00+01:00") == T0
    with pytest.raises(ValueError):
        parse_time("2026-01-05 08:00")


# -- matching and expiry ------------------------------------------------------------------------
def test_a_mute_holds_until_its_expiry_in_event_time_and_a_tombstone_lifts_it() -> None:
    state = FeedbackState()
    w = word(expires=T0 + 2 * H)
    put(state, w)
    assert state.mute(FP, "memory_leak", CART, T0 + H) == w
    assert state.mute(FP, "memory_leak", CART, T0 + 2 * H) is None  # expired at its end
    assert state.mute(fingerprint("memory_leak", {"service": "x"}), "memory_leak", {}, T0) is None
    applied = state.apply(w.key.encode(), None)
    assert (applied.action, applied.target) == ("unmute", w.target)
    assert state.mute(FP, "memory_leak", CART, T0 + H) is None
    # a tombstone for a key not held changes nothing, and says so
    assert state.apply(w.key.encode(), None).target is None


@pytest.mark.parametrize(("pattern", "kind", "matches"), [
    ({"service": "cart"}, None, True),
    ({"service": "car*"}, None, True),
    ({"service": "Cart"}, None, False),  # case-sensitive
    ({"service": "cart", "instance": "cart-[0-9]"}, None, True),
    ({"service": "cart", "host": "*"}, None, False),  # the finding has no host
    ({"service": "cart"}, "memory_*", True),
    ({"service": "cart"}, "gc_pressure", False),
])
def test_entity_patterns_match_every_key_by_glob(pattern: dict, kind: str | None,
                                                 matches: bool) -> None:
    state = FeedbackState()
    put(state, word(target=Target.from_dict({"entity": pattern, **({"kind": kind} if kind
                                                                    else {})})))
    assert bool(state.mute(FP, "memory_leak", CART, T0)) is matches


def test_acks_and_labels_take_the_most_specific_word() -> None:
    state = FeedbackState()
    f = finding()
    pattern = Target(entity=(("service", "cart"),))
    put(state, word("confirm", pattern, created=T0), word("reject", Target(fingerprint=FP),
                                                          created=T0 - H))
    assert state.label(FP, f.kind, f.entity, f.id).action == "reject"  # fp over pattern
    put(state, word("confirm", Target(id=f.id)))
    assert state.label(FP, f.kind, f.entity, f.id).action == "confirm"  # id over fp
    assert state.label(FP, f.kind, f.entity, "2" * 32).action == "reject"  # another occurrence
    # confirm and reject share a slot: the later word replaces the earlier
    put(state, word("reject", Target(id=f.id)))
    assert state.label(FP, f.kind, f.entity, f.id).action == "reject"
    assert len(state) == 3
    put(state, word("ack", pattern, by="bo", created=T0 + 5 * S))
    ack = state.ack(FP, f.kind, f.entity, f.id)
    assert (ack.by, ack.created_at_ns) == ("bo", T0 + 5 * S)


def test_the_cap_refuses_new_words_counts_them_and_frees_room_on_a_tombstone() -> None:
    state = FeedbackState(max_words=2)
    a, b = word(), word("ack")
    put(state, a, b)
    c = word("confirm")
    with pytest.raises(FeedbackError) as err:
        put(state, c)
    assert err.value.reason == "over_cap" and state.overflow == 1 and len(state) == 2
    put(state, word(expires=T0 + 3 * H))  # replacing a held word is not a new one
    assert state.words[a.key].expires_at_ns == T0 + 3 * H and state.overflow == 1
    state.apply(b.key.encode(), None)
    put(state, c)
    assert set(state.words) == {a.key, c.key}


# -- what findings say -------------------------------------------------------------------------
def test_a_muted_acked_finding_says_so_and_validates_as_1_3() -> None:
    state = FeedbackState()
    put(state, word(expires=T0 + 2 * H), word("ack", by="bo"))
    f = finding(detected=T0 + H)
    state.annotate(f, finding_event_ns(f))
    doc = orjson.loads(f.to_json())
    FINDING_SCHEMA.validate(doc)
    assert doc["schema_version"] == "1.3"
    assert doc["muted"] is True and doc["acknowledged"] == {"by": "bo", "at": rfc3339(T0)}
    # resolved after the mute's end: judged at its resolved_at, so not muted (ack stays)
    late = finding(status="resolved", detected=T0 + 2 * H - 30 * S)
    state.annotate(late, finding_event_ns(late))
    doc = orjson.loads(late.to_json())
    FINDING_SCHEMA.validate(doc)
    assert "muted" not in doc and doc["acknowledged"]["by"] == "bo"
    # published again later: the partition's watermark is the record's event time
    again = finding(detected=T0 + H)
    state.annotate(again, finding_event_ns(again, watermark_ns=T0 + 3 * H))
    assert not again.muted
    plain = finding()
    FeedbackState().annotate(plain, T0)
    assert {"muted", "acknowledged"}.isdisjoint(orjson.loads(plain.to_json()))


def test_open_findings_are_what_a_detector_would_publish_for_its_firing_lifecycles() -> None:
    d = MemoryDetector()
    assert d.open_findings() == []
    lc = d.lc_leak
    v = Verdict("warning", "heap floor rising", {"observed": 1}, ["pprof"])
    fired = [lc.observe(CART, T0 + i * 60 * S, v) for i in range(lc.open_after)][-1]
    assert fired is not None and fired.status == "firing"
    again = d.open_findings()
    assert [(f.id, f.fingerprint, f.status, f.detected_at_ns) for f in again] == [
        (fired.id, fired.fingerprint, "firing", fired.detected_at_ns)]
    assert isinstance(Lifecycle.open_findings(lc)[0], Finding)


# -- the alerting gauge -------------------------------------------------------------------------
def test_muted_findings_leave_the_alerting_gauge_and_are_counted_by_kind() -> None:
    registry = CollectorRegistry()
    view = {"metrics": StreamState(
        firing=[("memory_leak", "warning", "a" * 32, {"service": "cart"})],
        muted={"memory_leak": 2, "gc_pressure": 1})}
    PipelineMetrics(registry).watch_state(lambda: view)
    get = registry.get_sample_value
    assert get("anomaly_pipeline_finding_active", {
        "kind": "memory_leak", "severity": "warning", "service_name": "cart", "operation": "",
        "service_instance": "", "host": "", "fingerprint": "a" * 32}) == 1
    assert get("anomaly_pipeline_findings_muted", {"kind": "memory_leak"}) == 2
    assert get("anomaly_pipeline_findings_muted", {"kind": "gc_pressure"}) == 1


# -- the command ---------------------------------------------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_the_command_builds_the_words_the_workers_read() -> None:
    key, w = build(parse("mute", "--fingerprint", FP.upper(), "--for", "2h", "--by", "ana"), T0)
    assert key == f"mute:fp:{FP}" and w.expires_at_ns == T0 + 2 * H and w.by == "ana"
    key, w = build(parse("mute", "--entity", "service=cart*", "--entity", "host=n-1", "--kind",
                         "gc_*", "--until", "2026-01-05T18:00:00Z"), T0)
    assert w.target == Target(kind="gc_*", entity=(("host", "n-1"), ("service", "cart*")))
    assert w.expires_at_ns == T0 + 10 * H
    state = FeedbackState()
    state.apply(key.encode(), w.to_json())
    unkey, tomb = build(parse("unmute", "--entity", "host=n-1", "--entity", "service=cart*",
                              "--kind", "gc_*"), T0)
    assert (unkey, tomb) == (key, None)  # the same key, whatever the order of --entity
    key, w = build(parse("confirm", "--id", "1" * 32, "--reason", "real"), T0)
    assert key == "label:id:" + "1" * 32 and w.action == "confirm"
    assert build(parse("clear", "label", "--id", "1" * 32), T0) == (key, None)


@pytest.mark.parametrize("argv", [
    ("mute", "--fingerprint", FP, "--for", "soon"),
    ("mute", "--fingerprint", FP, "--until", "2025-01-01T00:00:00Z"),  # before now
    ("mute", "--entity", "service", "--for", "1h"),
    ("mute", "--fingerprint", FP, "--entity", "service=cart", "--for", "1h"),
    ("mute", "--kind", "memory_leak", "--for", "1h"),
    ("ack",),
    ("ack", "--fingerprint", "nothex"),
    ("ack", "--fingerprint", FP, "--by", ""),
])
def test_the_command_refuses_bad_words(argv: tuple[str, ...]) -> None:
    with pytest.raises(FeedbackError):
        build(parse(*argv), T0)


def test_a_mute_without_an_expiry_is_refused_by_the_command_line() -> None:
    with pytest.raises(SystemExit):
        parse("mute", "--fingerprint", FP)


def test_a_dead_broker_is_one_clear_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "feedback", "ack", "--fingerprint", FP],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
             "PYTHONPATH": str(ROOT)})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka at 127.0.0.1:1" in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout


# -- the operator-judged score -----------------------------------------------------------------
def test_findings_are_scored_against_the_labels_per_kind_and_occurrence() -> None:
    leak = finding()
    leak2 = finding(detected=T0 + 5 * H)  # the same fingerprint, another occurrence
    gc = finding({"service": "cart", "instance": "cart-9"}, kind="gc_pressure")
    tw = finding({"host": "n-1"}, kind="time_wait_buildup")
    words = [word("confirm", Target(fingerprint=FP)),
             word("reject", Target(id=leak2.id)),
             word("reject", Target(kind="gc_*", entity=(("service", "cart"),))),
             word("confirm", Target(fingerprint="f" * 32))]  # about nothing here
    records = [(w.key.encode(), w.to_json()) for w in words] + [(b"junk", b"{")]
    docs = [orjson.loads(f.to_json()) for f in (leak, leak2, gc, tw)]
    docs.append({**docs[0], "status": "resolved", "muted": True})  # the latest record counts
    scores = score_labels(docs, labels_from(records))
    assert scores["memory_leak"] == {"findings": 2, "confirmed": 1, "rejected": 1,
                                     "unlabelled": 0, "muted": 1, "precision": 0.5,
                                     "labelled_share": 1.0}
    assert scores["gc_pressure"]["rejected"] == 1 and scores["gc_pressure"]["precision"] == 0
    assert scores["time_wait_buildup"]["unlabelled"] == 1
    assert scores["time_wait_buildup"]["precision"] is None
    # a label cleared (tombstone) no longer counts
    cleared = labels_from(records + [(words[0].key.encode(), None)])
    assert score_labels(docs, cleared)["memory_leak"]["confirmed"] == 0
