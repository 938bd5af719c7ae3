"""The command line as an operator meets it: help that lists every setting, the effective
configuration with secrets masked, and one clear line instead of a traceback when Kafka cannot
be reached."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pipeline.__main__ import main
from pipeline.settings import Settings, setting_docs
from tests.support.tools import free_port

ROOT = Path(__file__).parents[2]
SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "pipeline",
        "KAFKA_SASL_PASSWORD": "hunter2-secret"}


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code, message = 0, ""
    try:
        main(argv)
    except SystemExit as exc:  # sys.exit("message") prints it at exit, on stderr
        code = exc.code if isinstance(exc.code, int) else 1
        message = exc.code if isinstance(exc.code, str) else ""
    out, err = capsys.readouterr()
    return code, out, err + message


@pytest.mark.parametrize("command", ["worker", "workers"])
def test_worker_help_lists_every_setting_with_its_default(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0
    for f in dataclasses.fields(Settings):
        default = '""' if f.default == "" else f.default
        assert f"  {f.name.upper()} (default {default})" in out, f.name
    # with what each does, from the comments beside the fields
    assert "spans are regrouped" in out and "END_OF_INPUT_S (default 60.0)\n      see " in out
    assert max(len(line) for line in out.splitlines() if line.startswith(" " * 6)) <= 100


def test_every_setting_is_explained_or_self_explaining() -> None:
    undocumented = {d.env for d in setting_docs() if not d.doc}
    # (named like the spans' topic and encoding, which are explained)
    assert undocumented <= {"OTLP_METRICS_TOPIC", "OTLP_METRICS_ENCODING"}


def test_config_prints_the_effective_configuration_with_secrets_masked(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env(monkeypatch)
    for k, v in {**SASL, "PIPELINE_PARTITIONS": "32"}.items():
        monkeypatch.setenv(k, v)
    code, out, _ = run_main(["config"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(dataclasses.fields(Settings))
    assert "hunter2" not in out and "KAFKA_SASL_PASSWORD=***" in lines
    assert {"PIPELINE_PARTITIONS=32", "KAFKA_SASL_USERNAME=pipeline",
            "FINDINGS_TOPIC=anomaly_findings", "METRICS_HOST=127.0.0.1"} <= set(lines)

    code, out, _ = run_main(["config", "--changed"], capsys)
    assert sorted(out.splitlines()) == sorted([
        "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT", "KAFKA_SASL_USERNAME=pipeline",
        "KAFKA_SASL_PASSWORD=***", "PIPELINE_PARTITIONS=32"])

    code, out, _ = run_main(["config", "--json"], capsys)
    doc = orjson.loads(out)
    assert doc["KAFKA_SASL_PASSWORD"] == "***" and doc["PIPELINE_PARTITIONS"] == "32"
    assert "hunter2" not in out


def test_config_shows_an_unset_secret_as_empty_and_reports_bad_settings(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    clean_env(monkeypatch)
    code, out, _ = run_main(["config"], capsys)
    assert code == 0 and "KAFKA_SASL_PASSWORD=" in out.splitlines()
    monkeypatch.setenv("PIPELINE_PARTITIONS", "many")
    code, out, err = run_main(["config"], capsys)
    assert code == 1 and "PIPELINE_PARTITIONS='many' is not a whole number" in err


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", [["tail"], ["tail", "--json", "--deadletters"],
                                     ["simulate", "--duration", "30s"]])
def test_a_dead_broker_is_one_line_on_stderr(command: list[str]) -> None:
    """Nothing listens on the port: a non-zero exit and one line saying what to do, not
    aiokafka's log lines and traceback."""
    port = free_port()
    p = cli(*command, "--bootstrap", f"127.0.0.1:{port}")
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in lines[0]
    assert "make kafka-up" in lines[0] and "Traceback" not in p.stderr


def test_time_order_needs_from_beginning(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["tail", "--time-order"], capsys)
    assert code == 1 and "use it with --from-beginning" in err


def test_status_line_shows_consumer_lag_and_every_streams_lag() -> None:
    """The spans stream caught up (0.0 s) says nothing of the others: the line sums the
    records not yet read over every topic and names each stream's event-time lag."""
    from pipeline.tail import status_line

    page = "\n".join([
        "# TYPE anomaly_pipeline_consumer_lag_records gauge",
        'anomaly_pipeline_consumer_lag_records{topic="otlp_spans"} 1200.0',
        'anomaly_pipeline_consumer_lag_records{topic="app-metrics-routed"} 34.0',
        "# TYPE anomaly_pipeline_event_time_lag_seconds gauge",
        'anomaly_pipeline_event_time_lag_seconds{stream="spans"} 0.0',
        'anomaly_pipeline_event_time_lag_seconds{stream="traces"} 12.5',
        'anomaly_pipeline_event_time_lag_seconds{stream="metrics"} 215.0',
        "",
    ])
    line = status_line(page)
    assert "1234 records behind" in line
    assert "event-time lag metrics 3m35s, spans 0.0s, traces 12.5s" in line
