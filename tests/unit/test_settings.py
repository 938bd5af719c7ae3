"""Settings: defaults work locally; each bad value fails at start with a fix-it message."""

from __future__ import annotations

import pytest

from pipeline.detectors import load_detectors
from pipeline.settings import ConfigError, Settings


def test_defaults_point_at_the_local_broker() -> None:
    s = Settings.from_env({})
    assert s.bootstrap_list == ["127.0.0.1:9092"]
    assert (s.otlp_spans_topic, s.otlp_metrics_topic) == ("otlp_spans", "otlp_metrics")
    assert (s.findings_topic, s.deadletter_topic) == ("anomaly_findings", "anomaly_deadletter")
    assert s.otlp_spans_encoding == "otlp_proto"
    # the metrics endpoint is not exposed beyond this machine unless asked (the container
    # image and the manifests set METRICS_HOST=0.0.0.0: tests/deploy)
    assert s.metrics_host == "127.0.0.1"


def test_environment_and_overrides() -> None:
    s = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "k1:9092, k2:9093", "OTLP_METRICS_ENCODING": "otlp_json",
         "PIPELINE_PARTITIONS": "32"},
        metrics_port=9999,
    )
    assert s.bootstrap_list == ["k1:9092", "k2:9093"]
    assert (s.otlp_metrics_encoding, s.pipeline_partitions, s.metrics_port) == (
        "otlp_json", 32, 9999)


def test_sasl_settings_reach_the_clients() -> None:
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "s3cret-pw"})
    kw = s.aiokafka_kwargs()
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512" and kw["sasl_plain_username"] == "u"
    assert "s3cret-pw" not in repr(s)  # the password never reaches logs


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "not host:port"),
        ({"OTLP_SPANS_ENCODING": "protobuf"}, "otlp_proto, otlp_json"),
        ({"OTLP_SPANS_KEYING": "traceid"},
         "OTLP_SPANS_KEYING='traceid' is not valid: use one of any, trace_id"),
        ({"PIPELINE_PARTITIONS": "eight"}, "not a whole number"),
        ({"PIPELINE_PARTITIONS": "0"}, "greater than 0"),
        ({"MAX_RECORD_BYTES": "-1"}, "MAX_RECORD_BYTES"),
        ({"FINDINGS_TOPIC": "otlp_spans"}, "must all differ"),
        ({"FEEDBACK_TOPIC": "anomaly_findings"}, "FEEDBACK_TOPIC must all differ"),
        ({"FEEDBACK_TOPIC": "mute words"}, "FEEDBACK_TOPIC='mute words' is not a valid Kafka"),
        ({"FEEDBACK_MAX_WORDS": "0"}, "FEEDBACK_MAX_WORDS=0 must be greater than 0"),
        ({"DEADLETTER_TOPIC": "dead letters"}, "not a valid Kafka topic name"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "PLAINTEXT, SSL"),
        ({"KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "no such file"),
        ({"PIPELINE_STORE": "redis"}, "memory, rocksdb"),
        ({"METRICS_PORT": "70000"}, "not a TCP port"),
        ({"ALLOWED_LATENESS_S": "-5"}, ">= 0"),
        ({"SOURCE_IDLE_S": "0"}, "SOURCE_IDLE_S=0.0 must be greater than 0"),
        ({"END_OF_INPUT_S": "-1"}, "END_OF_INPUT_S"),
        ({"END_OF_INPUT_ADVANCE_S": "-60"}, "0 never closes windows"),
        ({"CLOCK_AHEAD_TOLERANCE_S": "nan"}, "is not a finite number"),
        ({"SOURCE_JUMP_S": "0"}, "SOURCE_JUMP_S"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"RUNBOOK_BASE_URL": "https://wiki.example.com/runbooks"}, "ending with '/'"),
        ({"RUNBOOK_BASE_URL": "/runbooks/"}, "http(s) URL"),
        ({"RUNBOOK_BASE_URL": "file:///srv/runbooks/"}, "http(s) URL"),
    ],
)
def test_bad_configuration_says_what_and_how(env: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert words in str(err.value)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nomodule", "package.module:ClassName"),
        ("pipeline.nothing:X", "cannot be loaded"),
        ("pipeline.settings:Settings", "not a Detector subclass"),
        ("tests.support.counting:SpanCounter,tests.support.counting:SpanCounter", "share a name"),
    ],
)
def test_bad_detector_plugins_fail_at_start(spec: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_detectors(spec)
    assert words in str(err.value)


def test_runbook_url_per_kind() -> None:
    assert Settings().runbook_url("memory_leak").endswith("/docs/runbooks/memory_leak.md")
    custom = Settings.from_env({"RUNBOOK_BASE_URL": "https://wiki.example.com/rb/"})
    assert custom.runbook_url("gc_pressure") == "https://wiki.example.com/rb/gc_pressure.md"
