"""One typed settings object, read from the environment and validated at start.

Every setting has an environment variable (listed in the README's configuration reference) and a
default that works against the local broker. ``Settings.from_env`` fails at start with a
``ConfigError`` naming the variable, the bad value and how to fix it, rather than letting a typo
surface later as a stalled consumer.
"""

from __future__ import annotations

import ast
import inspect
import io
import math
import os
import ssl
import textwrap
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

ENCODINGS = ("otlp_proto", "otlp_json")
SPAN_KEYINGS = ("any", "trace_id")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
STORES = ("memory", "rocksdb")
#: The project's runbooks (docs/runbooks/ in this repository), as published.
RUNBOOK_BASE_URL = (
    "https://github.com/otel-anomaly-pipeline/otel-anomaly-pipeline/blob/main/docs/runbooks/"
)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message says which and how to fix it."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration. Field names match the environment variables, lower-cased."""

    kafka_bootstrap_servers: str = "127.0.0.1:9092"  # host:port[,host:port...]
    kafka_security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    kafka_sasl_mechanism: str = "PLAIN"  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    kafka_sasl_username: str = ""  # for SASL_PLAINTEXT / SASL_SSL
    kafka_sasl_password: str = field(default="", repr=False)  # secret: shown masked
    kafka_ssl_cafile: str = ""  # CA bundle (PEM) for SSL / SASL_SSL; empty: system CAs
    kafka_ssl_certfile: str = ""  # client certificate (PEM), for mutual TLS
    kafka_ssl_keyfile: str = ""  # its private key (PEM)

    pipeline_app_id: str = "otel-anomaly-pipeline"  # consumer group; prefixes internal topics
    otlp_spans_topic: str = "otlp_spans"  # the Collector kafka exporter's default topics
    otlp_metrics_topic: str = "otlp_metrics"
    otlp_spans_encoding: str = "otlp_proto"  # otlp_proto or otlp_json, per topic
    otlp_metrics_encoding: str = "otlp_proto"
    # "trace_id": every span of a trace is in one otlp_spans partition (the Collector's kafka
    # exporter with partition_traces_by_id: true). Span records then go whole and undecoded to
    # routed partition <input partition> % PIPELINE_PARTITIONS, and are decoded and assembled
    # there: no regrouping of spans by trace id. "any" (default): spans are regrouped.
    otlp_spans_keying: str = "any"
    findings_topic: str = "anomaly_findings"  # compacted; key = fingerprint
    deadletter_topic: str = "anomaly_deadletter"  # undecodable records, bytes untouched
    # Compacted: one record per edge of the service dependency map (pipeline.detectors.servicemap)
    service_map_topic: str = "service_map"
    # Compacted: one record per incident (findings that share a cause; pipeline.incidents)
    incidents_topic: str = "anomaly_incidents"
    # Compacted control topic of feedback words (mute / ack / confirm / reject; pipeline.feedback)
    # that every worker reads whole.
    feedback_topic: str = "anomaly_feedback"
    feedback_max_words: int = 10_000  # feedback words a worker holds (more refused, counted)

    # Partitions of the internal routing topics and state tables: the most workers that can share
    # the detection work. Fixed once the app has run: a worker with another count refuses to
    # start. 16 costs one worker what 8 did; 32 about 1.3 times as much (benchmarks/RESULTS.md).
    pipeline_partitions: int = 16
    # Replication factor of the topics this app creates (internal, changelog, outputs). Use 3 on
    # a production cluster.
    pipeline_replication_factor: int = 1
    # Partitions of anomaly_findings / anomaly_deadletter when this app creates them.
    output_partitions: int = 3

    # Records over this many bytes are dead-lettered unread (the collector's kafka exporter
    # defaults to 1 MB messages; this leaves room for larger broker limits).
    max_record_bytes: int = 8 * 1024 * 1024
    # Telemetry timestamps more than this far ahead of the Kafka record's own timestamp are
    # rejected as far-future (a broken clock would otherwise drag every watermark forward).
    max_future_skew_s: float = 3600.0
    # Event-time watermark = newest event time seen in a partition minus this lateness.
    allowed_lateness_s: float = 5.0
    # Event time (pipeline.clock, pipeline.engine). An input partition read to its end with no
    # new record for SOURCE_IDLE_S (processing time) is idle: it stops holding the watermark
    # back. When every input partition has been idle END_OF_INPUT_S longer, the input has ended
    # (for now): the watermark moves END_OF_INPUT_ADVANCE_S past the newest event, so the last
    # windows and traces close. Keep the advance <= SOURCE_IDLE_S + END_OF_INPUT_S for live
    # input (records after a pause that long are at least that much newer).
    source_idle_s: float = 10.0
    end_of_input_s: float = 60.0
    end_of_input_advance_s: float = 60.0
    # Items more than this past their Kafka record's timestamp (a host with a bad clock) are
    # processed but do not move the watermark.
    clock_ahead_tolerance_s: float = 60.0
    # A record this far past its input partition's progress (and no record timestamp to
    # judge it by) moves it only once the next record confirms the jump.
    source_jump_s: float = 300.0

    # Trace assembly (per routed span partition): a trace is complete when its root has arrived
    # and no span for TRACE_QUIET_S of event time, or TRACE_MAX_AGE_S after its first span.
    trace_quiet_s: float = 5.0
    trace_max_age_s: float = 120.0
    trace_max_open: int = 5_000  # open traces per partition (~13 KB each); oldest completes early
    trace_max_spans: int = 1_000  # spans kept per trace (bounds memory and state entries)
    # Bottleneck detection (per routed trace-sample partition).
    bottleneck_window_s: float = 30.0  # event-time window an operation is judged in
    bottleneck_warmup_windows: int = 20  # baseline windows before an operation is judged
    bottleneck_warmup_calls: int = 100  # ... and calls in them (sparse operations: more windows)
    # An operation with fewer than 8 calls in a window is judged on several windows together,
    # up to this long (a few calls a minute are still judged); longer, its samples are dropped.
    bottleneck_max_window_s: float = 600.0
    bottleneck_baseline_ttl_s: float = 7 * 86400.0  # an operation's baseline survives silence
    bottleneck_max_operations: int = 5_000  # (service, operation) baselines per partition
    regression_min_added_ms: float = 2.0  # a service-wide regression adds at least this
    bottleneck_min_excess_ms: float = 10.0  # a bottleneck adds at least this per trace
    service_map_max_edges: int = 10_000  # edges (client -> server) per partition
    # Incidents (pipeline.incidents): findings whose active spans are within INCIDENT_GAP_S of
    # each other (event time) and that explain one another are one incident.
    incident_gap_s: float = 60.0
    incident_max_open: int = 1_000  # incidents held (open, or resolved in the last hour)
    # How far back a worker that takes the correlation over replays its input to rebuild it.
    incident_history_s: float = 24 * 3600.0
    # Memory leaks and GC pressure (per routed metric partition).
    memory_limits: str = ""  # "service=512Mi,*=1Gi": limits for runtimes that send none
    memory_metrics: str = ""  # extra metric -> role rules: inline JSON or a JSON file path
    memory_oom_fraction: float = 0.9  # time to OOM counts to this fraction of the limit
    memory_min_growth_pct_per_hour: float = 0.25  # slower floor growth is not reported
    # With no limit known, floor growth slower than this (bytes/hour; Ki/Mi/Gi suffixes) is not
    # reported either: a small process growing a few hundred KiB an hour is not a leak (0: off).
    memory_min_growth_bytes_per_hour: str = "64Mi"
    memory_max_instances: int = 2_000  # instances per partition (~60 KB each with 6 h of history)
    gc_pressure_min_fraction: float = 0.10  # GC time share below this is never pressure
    # TIME_WAIT buildup (per routed metric partition, by host).
    time_wait_port_ranges: str = ""  # "32768-60999" or "node-7=1024-65535,*=32768-60999"
    time_wait_factor: float = 2.0  # TIME_WAIT this many times what the host's load expects
    time_wait_min_excess: float = 100.0  # ... and at least this many sockets over it
    time_wait_sustain_s: float = 75.0  # elevated this long (event time) before a finding
    time_wait_warmup_s: float = 300.0  # baseline learnt per host before it is judged
    # client calls held ahead of a host's samples (the span stage running ahead of metrics)
    time_wait_calls_ahead_s: float = 7200.0
    time_wait_max_hosts: int = 5_000  # hosts per partition (~20 KB each)

    pipeline_store: str = "rocksdb"  # table store: rocksdb or memory
    pipeline_data_dir: str = ".cache/state"  # local table store (one per worker)
    # How often detector state is written to the changelog-backed table (processing cadence,
    # not detection time): also the upper bound on work repeated after a crash.
    state_flush_interval_s: float = 1.0
    state_flush_records: int = 2000  # ... or after this many records, whichever is first

    # Extra detectors, comma-separated ``package.module:ClassName`` (built-ins always run).
    pipeline_detectors: str = ""

    # Consumer-group session timeout: how long a dead worker keeps its partitions before the
    # group hands them (and their state) to the others.
    kafka_session_timeout_s: float = 30.0

    # Where findings (``runbook_url``) and the shipped alert rules point for each kind's runbook:
    # <base><kind>.md. Point it at wherever your team hosts docs/runbooks/.
    runbook_base_url: str = RUNBOOK_BASE_URL

    # Where the Prometheus endpoint listens: the loopback by default (`make run`, a laptop); the
    # container image and the Kubernetes and compose manifests set 0.0.0.0 to be scraped.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464  # 0 disables the endpoint
    log_level: str = "info"  # debug, info, warning, error

    # ----------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``) plus explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name.upper()
            if f.name in overrides and overrides[f.name] is not None:
                raw: Any = overrides[f.name]
            elif name in environ and environ[name] != "":
                raw = environ[name]
            else:
                continue
            values[f.name] = _coerce(name, raw, type(f.default))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ``ConfigError`` with a fix-it message for the first bad setting."""
        if not self.kafka_bootstrap_servers.strip():
            raise ConfigError(
                "KAFKA_BOOTSTRAP_SERVERS is empty: set it to host:port[,host:port...], "
                "e.g. 127.0.0.1:9092"
            )
        for server in self.bootstrap_list:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(
                    f"KAFKA_BOOTSTRAP_SERVERS entry {server!r} is not host:port "
                    "(e.g. 127.0.0.1:9092; separate several with commas)"
                )
        _choice("KAFKA_SECURITY_PROTOCOL", self.kafka_security_protocol, SECURITY_PROTOCOLS)
        if self.kafka_security_protocol.startswith("SASL"):
            _choice("KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism, SASL_MECHANISMS)
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                raise ConfigError(
                    f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
                )
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path and not os.path.isfile(path):
                raise ConfigError(f"{name.upper()}={path!r}: no such file")
        _choice("OTLP_SPANS_ENCODING", self.otlp_spans_encoding, ENCODINGS)
        _choice("OTLP_SPANS_KEYING", self.otlp_spans_keying, SPAN_KEYINGS)
        _choice("OTLP_METRICS_ENCODING", self.otlp_metrics_encoding, ENCODINGS)
        _choice("PIPELINE_STORE", self.pipeline_store, STORES)
        topics = {
            "OTLP_SPANS_TOPIC": self.otlp_spans_topic,
            "OTLP_METRICS_TOPIC": self.otlp_metrics_topic,
            "FINDINGS_TOPIC": self.findings_topic,
            "DEADLETTER_TOPIC": self.deadletter_topic,
            "SERVICE_MAP_TOPIC": self.service_map_topic,
            "INCIDENTS_TOPIC": self.incidents_topic,
            "FEEDBACK_TOPIC": self.feedback_topic,
        }
        for name, topic in topics.items():
            if not topic or len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic):
                raise ConfigError(
                    f"{name}={topic!r} is not a valid Kafka topic name "
                    "(1-249 characters from a-z, A-Z, 0-9, '.', '_', '-')"
                )
        if len(set(topics.values())) != len(topics):
            raise ConfigError(
                "OTLP_SPANS_TOPIC, OTLP_METRICS_TOPIC, FINDINGS_TOPIC, DEADLETTER_TOPIC, "
                "SERVICE_MAP_TOPIC, INCIDENTS_TOPIC and FEEDBACK_TOPIC must all differ, got "
                f"{topics}"
            )
        if len(self.pipeline_app_id) > 150:
            raise ConfigError(
                f"PIPELINE_APP_ID is {len(self.pipeline_app_id)} characters: keep it to 150 so "
                "the internal topic names stay under Kafka's 249"
            )
        if not self.pipeline_app_id or not all(
            c.isalnum() or c in "._-" for c in self.pipeline_app_id
        ):
            raise ConfigError(
                f"PIPELINE_APP_ID={self.pipeline_app_id!r}: use letters, digits, '.', '_', '-' "
                "(it names the consumer group and internal topics)"
            )
        _positive("PIPELINE_PARTITIONS", self.pipeline_partitions, upper=1024)
        _positive("PIPELINE_REPLICATION_FACTOR", self.pipeline_replication_factor, upper=16)
        _positive("OUTPUT_PARTITIONS", self.output_partitions, upper=1024)
        _positive("FEEDBACK_MAX_WORDS", self.feedback_max_words, upper=10_000_000)
        _positive("MAX_RECORD_BYTES", self.max_record_bytes)
        _positive("MAX_FUTURE_SKEW_S", self.max_future_skew_s)
        if not 6 <= self.kafka_session_timeout_s <= 1800:
            raise ConfigError(
                f"KAFKA_SESSION_TIMEOUT_S={self.kafka_session_timeout_s} must be between 6 and "
                "1800 seconds (the broker's group.min/max.session.timeout.ms defaults)"
            )
        _positive("STATE_FLUSH_INTERVAL_S", self.state_flush_interval_s)
        _positive("STATE_FLUSH_RECORDS", self.state_flush_records)
        if self.allowed_lateness_s < 0:
            raise ConfigError(
                f"ALLOWED_LATENESS_S={self.allowed_lateness_s} must be >= 0 (seconds)"
            )
        _positive("SOURCE_IDLE_S", self.source_idle_s, upper=86400)
        _positive("END_OF_INPUT_S", self.end_of_input_s, upper=7 * 86400)
        if self.end_of_input_advance_s < 0:
            raise ConfigError(
                f"END_OF_INPUT_ADVANCE_S={self.end_of_input_advance_s} must be >= 0 (seconds of "
                "event time; 0 never closes windows at the end of the input)"
            )
        _positive("CLOCK_AHEAD_TOLERANCE_S", self.clock_ahead_tolerance_s)
        _positive("SOURCE_JUMP_S", self.source_jump_s)
        _positive("TRACE_QUIET_S", self.trace_quiet_s, upper=3600)
        if self.trace_max_age_s <= self.trace_quiet_s:
            raise ConfigError(
                f"TRACE_MAX_AGE_S={self.trace_max_age_s} must be greater than "
                f"TRACE_QUIET_S={self.trace_quiet_s} (a trace waits at most its max age)"
            )
        _positive("TRACE_MAX_OPEN", self.trace_max_open)
        # A trace is one state entry (~250 B per span): keep it well under Kafka's 1 MB.
        _positive("TRACE_MAX_SPANS", self.trace_max_spans, upper=3_000)
        _positive("BOTTLENECK_WINDOW_S", self.bottleneck_window_s, upper=3600)
        if not 1 <= self.bottleneck_warmup_windows <= 60:
            raise ConfigError(
                f"BOTTLENECK_WARMUP_WINDOWS={self.bottleneck_warmup_windows} must be between 1 "
                "and 60 (the baseline holds 60 windows)"
            )
        _positive("BOTTLENECK_MAX_OPERATIONS", self.bottleneck_max_operations)
        _positive("SERVICE_MAP_MAX_EDGES", self.service_map_max_edges)
        _positive("INCIDENT_GAP_S", self.incident_gap_s, upper=3600)
        _positive("INCIDENT_MAX_OPEN", self.incident_max_open, upper=1_000_000)
        if not 3600 <= self.incident_history_s <= 7 * 86400:
            raise ConfigError(
                f"INCIDENT_HISTORY_S={self.incident_history_s:g}: use 3600 to 604800 (1 hour to "
                "7 days); it is the retention of the correlation's input topic, replayed by a "
                "worker that takes the correlation over")
        _positive("BOTTLENECK_WARMUP_CALLS", self.bottleneck_warmup_calls, upper=100_000)
        if not self.bottleneck_window_s <= self.bottleneck_max_window_s <= 86400:
            raise ConfigError(
                f"BOTTLENECK_MAX_WINDOW_S={self.bottleneck_max_window_s} must be at least "
                f"BOTTLENECK_WINDOW_S={self.bottleneck_window_s} and at most 86400 (a day)"
            )
        _positive("BOTTLENECK_BASELINE_TTL_S", self.bottleneck_baseline_ttl_s,
                  upper=366 * 86400)
        _positive("REGRESSION_MIN_ADDED_MS", self.regression_min_added_ms, upper=3_600_000)
        _positive("BOTTLENECK_MIN_EXCESS_MS", self.bottleneck_min_excess_ms, upper=3_600_000)
        from pipeline.runtime_metrics import (  # (imports settings)
            load_rules,
            parse_limits,
            parse_min_growth,
        )

        parse_limits(self.memory_limits)
        parse_min_growth(self.memory_min_growth_bytes_per_hour)
        load_rules(self.memory_metrics)
        if not 0 < self.memory_oom_fraction <= 1:
            raise ConfigError(
                f"MEMORY_OOM_FRACTION={self.memory_oom_fraction} must be in (0, 1]: the share "
                "of the memory limit at which a process is taken as out of memory (e.g. 0.9)"
            )
        _positive("MEMORY_MIN_GROWTH_PCT_PER_HOUR", self.memory_min_growth_pct_per_hour,
                  upper=1000)
        _positive("MEMORY_MAX_INSTANCES", self.memory_max_instances)
        if not 0 < self.gc_pressure_min_fraction < 1:
            raise ConfigError(
                f"GC_PRESSURE_MIN_FRACTION={self.gc_pressure_min_fraction} must be between 0 "
                "and 1 (a share of time, e.g. 0.05 for 5%)"
            )
        from pipeline.connections import parse_port_ranges

        try:
            parse_port_ranges(self.time_wait_port_ranges)
        except ValueError as exc:
            raise ConfigError(f"TIME_WAIT_PORT_RANGES: {exc}") from None
        if self.time_wait_factor <= 1:
            raise ConfigError(
                f"TIME_WAIT_FACTOR={self.time_wait_factor} must be > 1: how many times the "
                "TIME_WAIT count the host's load explains counts as a buildup (e.g. 2)"
            )
        if self.time_wait_min_excess < 0:
            raise ConfigError(
                f"TIME_WAIT_MIN_EXCESS={self.time_wait_min_excess} must be >= 0 (sockets)"
            )
        _positive("TIME_WAIT_SUSTAIN_S", self.time_wait_sustain_s, upper=3600)
        _positive("TIME_WAIT_WARMUP_S", self.time_wait_warmup_s, upper=86400)
        _positive("TIME_WAIT_CALLS_AHEAD_S", self.time_wait_calls_ahead_s, upper=7 * 86400)
        _positive("TIME_WAIT_MAX_HOSTS", self.time_wait_max_hosts)
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"METRICS_PORT={self.metrics_port} is not a TCP port (0-65535; 0 disables)"
            )
        _choice("LOG_LEVEL", self.log_level.lower(), ("debug", "info", "warning", "error"))
        url = urlsplit(self.runbook_base_url)
        if url.scheme not in ("http", "https") or not url.netloc or not url.path.endswith("/"):
            raise ConfigError(
                f"RUNBOOK_BASE_URL={self.runbook_base_url!r} must be an http(s) URL ending with "
                "'/': runbooks are found at <base><kind>.md "
                "(e.g. https://git.example.com/team/runbooks/)"
            )

    # ----------------------------------------------------------------------------------------
    def runbook_url(self, kind: str) -> str:
        return f"{self.runbook_base_url}{kind}.md"

    @property
    def bootstrap_list(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL / SASL_SSL, else ``None``."""
        if self.kafka_security_protocol not in ("SSL", "SASL_SSL"):
            return None
        ctx = ssl.create_default_context(cafile=self.kafka_ssl_cafile or None)
        if self.kafka_ssl_certfile:
            ctx.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile or None)
        return ctx

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Connection arguments for plain aiokafka clients (simulator, tail, benchmarks)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_list,
            "security_protocol": self.kafka_security_protocol,
        }
        ctx = self.ssl_context()
        if ctx is not None:
            kwargs["ssl_context"] = ctx
        if self.kafka_security_protocol.startswith("SASL"):
            kwargs.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        return kwargs


@dataclass(frozen=True, slots=True)
class SettingDoc:
    """One setting as the help and ``python -m pipeline config`` show it."""

    env: str  # the environment variable
    default: Any
    doc: str  # the comments beside the field in ``Settings`` ("" if none)
    secret: bool  # shown masked (``repr=False`` on the field)


def setting_docs() -> list[SettingDoc]:
    """Every setting of ``Settings``, in order, with its default and the comments written beside
    it in this module's source (the comment lines right above a field, then the one after it on
    its line), so the help cannot drift from the settings object."""
    source = inspect.getsource(Settings)
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, alone on its line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            alone = not tok.line[: tok.start[1]].strip()
            comments[tok.start[0]] = (text, alone)
    lines = source.splitlines()
    field_lines = {
        node.target.id: node.lineno
        for node in ast.parse(source).body[0].body  # type: ignore[attr-defined]
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    out = []
    for f in fields(Settings):
        line = field_lines[f.name]
        above: list[str] = []
        prev = line - 1
        while prev in comments and comments[prev][1] and lines[prev - 1].strip():
            above.insert(0, comments[prev][0])
            prev -= 1
        text = " ".join(t for t in above if t.strip("-"))
        if line in comments and not comments[line][1]:
            text = f"{text} {comments[line][0]}".strip()
        if not text:  # explained with an earlier setting ("... END_OF_INPUT_S longer ...")
            text = next((f"see {d.env}" for d in out if f.name.upper() in d.doc), "")
        out.append(SettingDoc(f.name.upper(), f.default, text, not f.repr))
    return out


def settings_help(width: int = 100) -> str:
    """The settings reference of ``worker --help``: each environment variable, its default and
    what it does."""
    out = ["settings (environment variables; a flag above overrides its own):"]
    for d in setting_docs():
        default = '""' if d.default == "" else d.default
        out.append(f"  {d.env} (default {default})")
        if d.doc:
            out.extend(textwrap.wrap(d.doc, width, initial_indent=" " * 6,
                                     subsequent_indent=" " * 6))
    return "\n".join(out)


def effective(settings: Settings) -> list[tuple[str, str, bool]]:
    """``(variable, value as shown, whether it is the default)`` for every setting, secrets
    masked: a set secret shows as ``***`` (its length is not shown either)."""
    out = []
    for d in setting_docs():
        value = getattr(settings, d.env.lower())
        shown = ("***" if value else "") if d.secret else str(value)
        out.append((d.env, shown, value == d.default))
    return out


def _coerce(name: str, raw: Any, typ: type) -> Any:
    if isinstance(raw, typ):
        return raw
    text = str(raw).strip()
    try:
        if typ is int:
            return int(text)
        if typ is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
    except ValueError:
        kind = "a whole number" if typ is int else "a finite number"
        raise ConfigError(f"{name}={text!r} is not {kind}") from None
    return text


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not valid: use one of {', '.join(allowed)}")


def _positive(name: str, value: float, upper: float | None = None) -> None:
    if value <= 0 or (upper is not None and value > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise ConfigError(f"{name}={value} must be greater than 0{bound}")
