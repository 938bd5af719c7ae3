"""Every topic the pipeline reads or writes, created up front with the right settings.

The worker calls ``ensure_topics`` before Faust starts, and ``tail`` and ``simulate`` call it
before they subscribe or produce, so no topic is left to the broker's auto-creation (which would
make the findings topic uncompacted and give topics the broker's default partition count), and
Faust never joins its group before its routed topics and its tables' changelogs exist
(faust-streaming skips a topic missing from its metadata at assignment and never reads it, and a
changelog auto-created by a racing metadata request gets the broker's default partition count,
which crashes the table's agent). Existing topics are left as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline.settings import ConfigError, Settings

#: The internal routed streams (``<app id>-<signal>-routed``).
ROUTED_SIGNALS = ("spans", "metrics", "traces")
DAY_MS = 24 * 3600 * 1000
#: The broker's default message size limit (message.max.bytes, and max.message.bytes of a
#: topic that does not set it), used when a topic's own limit cannot be read.
DEFAULT_MESSAGE_BYTES = 1_048_588
# Room left under a topic's limit for the record batch framing, key and headers.
FRAMING_BYTES = 16 * 1024
#: How much a consumer asks of each partition per fetch (Kafka's default,
#: max.partition.fetch.bytes). A record batch larger than this still comes whole, as the first
#: of its fetch (KIP-74), so it need not exceed MAX_RECORD_BYTES; a larger value only lets a
#: worker that is behind hold more fetched and not yet handled (issue 16: 6-7 % of the peak
#: resident memory in a 30k-instance flood, at 9 MiB).
FETCH_BYTES_PER_PARTITION = 1024 * 1024

log = logging.getLogger("pipeline.topics")
ROUTED_RETENTION_S = 24 * 3600  # routed messages carry their routing time, not event time
ROUTED_CONFIGS = {"retention.ms": str(ROUTED_RETENTION_S * 1000), "retention.bytes": "-1"}


def routed_topic(settings: Settings, signal: str) -> str:
    return f"{settings.pipeline_app_id}-{signal}-routed"


def incident_input_topic(settings: Settings) -> str:
    """The correlation's input: every finding and (now and then) every service-map edge, in one
    partition so that one worker sees them in one order (``pipeline.incidents``)."""
    return f"{settings.pipeline_app_id}-incident-input"


def changelog_topic(settings: Settings, signal: str) -> str:
    """The changelog of the ``<signal>-state`` table (Faust's naming)."""
    return f"{settings.pipeline_app_id}-{signal}-state-changelog"


def wanted_topics(settings: Settings, internal: bool = True) -> list[NewTopic]:
    s = settings
    out = [
        NewTopic(s.otlp_spans_topic, s.pipeline_partitions, s.pipeline_replication_factor),
        NewTopic(s.otlp_metrics_topic, s.pipeline_partitions, s.pipeline_replication_factor),
        NewTopic(s.deadletter_topic, s.output_partitions, s.pipeline_replication_factor,
                 topic_configs={"retention.ms": str(7 * DAY_MS)}),
        # Compacted: the latest state of every finding stays (key = fingerprint).
        NewTopic(s.findings_topic, s.output_partitions, s.pipeline_replication_factor,
                 topic_configs={"cleanup.policy": "compact"}),
        # Compacted: the latest state of every edge of the service map (key = the edge).
        NewTopic(s.service_map_topic, s.output_partitions, s.pipeline_replication_factor,
                 topic_configs={"cleanup.policy": "compact"}),
        # Compacted: the latest state of every incident (key = incident id).
        NewTopic(s.incidents_topic, s.output_partitions, s.pipeline_replication_factor,
                 topic_configs={"cleanup.policy": "compact"}),
        # Compacted: the latest feedback word per slot and target (key = "<slot>:<target>").
        NewTopic(s.feedback_topic, s.output_partitions, s.pipeline_replication_factor,
                 topic_configs={"cleanup.policy": "compact"}),
    ]
    if internal:
        # Routed messages carry the time they were routed (not event time), so time-based
        # retention is safe even when old telemetry is replayed. No size cap: a broker's
        # log.retention.bytes (the local stack's 256 MiB) deleted the oldest segments of a
        # routed partition while a backlog was still being read, a silent loss.
        out += [
            NewTopic(routed_topic(s, signal), s.pipeline_partitions,
                     s.pipeline_replication_factor, topic_configs=ROUTED_CONFIGS)
            for signal in ROUTED_SIGNALS
        ]
        # One partition: the correlation is one ordered stream (findings are few). Its
        # retention is the history a new owner replays to rebuild the incidents.
        # (Segments of an hour at most, so that retention deletes about when it should; every
        # firing finding is sent again each quarter of it, see app.Pipeline.)
        history_ms = int(s.incident_history_s * 1000)
        out.append(NewTopic(incident_input_topic(s), 1, s.pipeline_replication_factor,
                            topic_configs={"retention.ms": str(history_ms),
                                           "retention.bytes": "-1",
                                           "segment.ms": str(min(history_ms // 4, 3_600_000))}))
        # The state tables' changelogs, compacted, one partition per routed partition. Left to
        # Faust, a metadata request racing its creation can auto-create one with the broker's
        # default partition count, and the table's agent then crashes on the mismatch.
        out += [
            NewTopic(changelog_topic(s, signal), s.pipeline_partitions,
                     s.pipeline_replication_factor,
                     topic_configs={"cleanup.policy": "compact"})
            for signal in ROUTED_SIGNALS
        ]
    return out


async def ensure_topics(settings: Settings, internal: bool = True) -> list[str]:
    """Create what is missing; return the names created. Waits until the broker lists them."""
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        wanted = wanted_topics(settings, internal)
        existing = set(await admin.list_topics())
        new = [t for t in wanted if t.name not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
            names = {t.name for t in new}
            for _ in range(100):  # creation is asynchronous on the broker side
                if names <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.1)
        return [t.name for t in new]
    finally:
        await admin.close()


async def partition_counts(settings: Settings) -> dict[str, int]:
    """The partition count of the input topics; and a ``ConfigError`` if this application's
    routed topics or changelogs exist with another count than ``PIPELINE_PARTITIONS`` (it ran
    with another count: its state is laid out by it, and Faust would fail on the mismatch)."""
    s = settings
    internal = [t.name for t in wanted_topics(s) if t.name.startswith(f"{s.pipeline_app_id}-")
                and t.name != incident_input_topic(s)]  # one partition whatever the count
    admin = AIOKafkaAdminClient(**s.aiokafka_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics(
            [s.otlp_spans_topic, s.otlp_metrics_topic, *internal])
    finally:
        await admin.close()
    counts = {d["topic"]: len(d["partitions"]) for d in described
              if d.get("error_code") == 0 and d.get("partitions")}
    wrong = sorted({n for name, n in counts.items()
                    if name in internal and n != s.pipeline_partitions})
    if wrong:
        raise ConfigError(
            f"PIPELINE_PARTITIONS={s.pipeline_partitions}, but application "
            f"{s.pipeline_app_id!r} ran with {' or '.join(map(str, wrong))} partitions (its "
            f"topics {s.pipeline_app_id}-*-routed and *-changelog have that many, and its "
            f"saved state is laid out by it). Set PIPELINE_PARTITIONS={wrong[0]}, or change "
            "the count as the README says (Changing the partition count).")
    return {t: counts[t] for t in (s.otlp_spans_topic, s.otlp_metrics_topic) if t in counts}


async def message_limits(settings: Settings, names: list[str]) -> dict[str, int]:
    """The largest value worth sending to each topic: its ``max.message.bytes`` less room for
    framing, key and headers (the broker default when it cannot be read)."""
    out = dict.fromkeys(names, DEFAULT_MESSAGE_BYTES - FRAMING_BYTES)
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        responses = await admin.describe_configs([
            ConfigResource(ConfigResourceType.TOPIC, name, configs={"max.message.bytes": None})
            for name in names
        ])
        for response in responses:
            for error, _msg, _type, name, entries in response.resources:
                for entry in entries if not error else ():
                    if entry[0] == "max.message.bytes" and str(entry[1]).isdigit():
                        out[name] = max(int(entry[1]) - FRAMING_BYTES, 64 * 1024)
    except Exception as exc:  # keep the default: smaller messages are always accepted
        log.warning("cannot read max.message.bytes of %s (%s); assuming the broker default",
                    names, exc)
    finally:
        await admin.close()
    return out


# ---------------------------------------------------------------------------------------------
# Reading a whole topic (no group, no commits)


async def wait_partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> list[int]:
    """The partitions of ``topic`` once the broker lists it (empty after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await consumer.topics()  # a metadata request
        parts = consumer.partitions_for_topic(topic)
        if parts or time.monotonic() > deadline:
            return sorted(parts or ())
        await asyncio.sleep(0.5)


def plain_consumer(settings: Settings, what: str) -> AIOKafkaConsumer:
    """A consumer with no group and no commits, reading from the earliest offset."""
    return AIOKafkaConsumer(
        group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        client_id=f"pipeline-{what}-{uuid.uuid4().hex[:8]}", metadata_max_age_ms=5000,
        **settings.aiokafka_kwargs())


async def read_all(settings: Settings, topic: str,
                   timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record ``topic`` holds now, partition by partition in offset order.
    ``TimeoutError`` if its end is not reached within ``timeout_s``."""
    consumer = plain_consumer(settings, "read")
    out: list[ConsumerRecord] = []
    try:
        await consumer.start()
        parts = await wait_partitions(consumer, topic, min(timeout_s, 10.0))
        if not parts:
            return out
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(out)} records of {topic} in {timeout_s:.0f} s, "
                                   "not to its end")
            batches = await consumer.getmany(*left, timeout_ms=500)
            for tp, recs in batches.items():
                out.extend(r for r in recs if r.offset < ends[tp])
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))
