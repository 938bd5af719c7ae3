"""Faust wiring: topics, tables and agents. The only module that imports Faust.

Three stages run in every worker, each scaled by Kafka's consumer groups:

1. *ingest* (``pipeline.ingest``, plain aiokafka, group ``<app id>-ingest``) reads
   ``otlp_spans`` / ``otlp_metrics`` (keyed by trace id or unkeyed, as the collector wrote them),
   decodes, dead-letters what is bad, and routes the records by entity to internal topics: spans
   by trace id, metric points by resource (service + instance). One message per (read batch,
   destination partition), each source record a segment of it, keeps the shuffle cheap. It
   runs as a task of this app.
2. *detect* agents read the routed topics. Each owned partition has a ``PartitionEngine`` whose
   state is written to a changelog-backed table every ``STATE_FLUSH_INTERVAL_S`` (or
   ``STATE_FLUSH_RECORDS``); messages are acknowledged only after the flush that covers them, so
   a restarted or rebalanced worker resumes from saved state without skipping or re-counting.
3. Detectors may derive records for another stream (``Detector.emits``): trace assembly on
   the spans stream turns each completed trace into per-service samples, routed by service to
   ``<app id>-traces-routed``, where the bottleneck detector sees all of a service's
   operations. Each derived message names its sending partition and a sequence number kept in
   that partition's state, so messages a replay after a crash derives again are skipped, and
   carries the sender's watermark (the receiver's watermark is the minimum over its senders).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faust.types import TP, EventT, StreamT
from prometheus_client import REGISTRY, CollectorRegistry

from pipeline import feedback_topic, otlp, records, topics
from pipeline.clock import SourceClock
from pipeline.detectors import load_detectors
from pipeline.detectors.base import Detector
from pipeline.engine import MAX_DERIVED_BYTES, PartitionEngine, keyed_layout
from pipeline.feedback import FeedbackError, FeedbackState, Target, finding_event_ns
from pipeline.findings import Finding
from pipeline.incident_stage import IncidentStage, finding_record
from pipeline.ingest import HEARTBEAT_S, Ingest, RateLimitedLog, failed_send, transient
from pipeline.lagview import LagReading, TopicLag, carry_lag, last_fetched
from pipeline.loglimit import forget, install
from pipeline.offsets import OffsetGuard
from pipeline.settings import Settings
from pipeline.sinks.deadletter import dead_letter
from pipeline.sinks.metrics import PipelineMetrics, StreamState
from pipeline.slices import TimeSlice

log = logging.getLogger("pipeline")

RAW = {"key_serializer": "raw", "value_serializer": "raw"}
# A routed message with this value carries no records: it makes an idle partition flush.
TICK = b"tick"
#: RocksDB options of each state table partition (one database per table and partition: 3 x
#: PIPELINE_PARTITIONS on a worker that owns them all). Faust's defaults (64 MiB write buffers,
#: up to 3 of them, and a 2 GiB block cache, per database) let a flood of state writes grow
#: the worker by gigabytes (issue 16: 150 MB -> 1.31 GB, no plateau). The tables are written
#: once a flush and read only on restore (and by the existence checks of deletes), so small
#: buffers cost little. A memtable grows to its write buffer size before it is flushed, so a
#: steady trickle of writes fills every database's in turn: with 2 MiB buffers, 48 databases
#: held about 90 MB of memtables once all had filled (a slow climb in a soak); with 256 KiB,
#: about 12 MB. The block cache fills the same way (38 MB after a 30-minute soak with 2 MiB
#: caches). At most 2 x 256 KiB + 256 KiB per database: 36 MiB for 48.
ROCKSDB_OPTIONS = {"write_buffer_size": 256 * 1024, "max_write_buffer_number": 2,
                   "block_cache_size": 256 * 1024}
#: RocksDB's own figures for what a database holds in memory, summed over the open ones.
STORE_MEMORY_PROPERTIES = {"memtables": "rocksdb.cur-size-all-mem-tables",
                           "block_cache": "rocksdb.block-cache-usage"}


#: How long a partition retries sending its derived and dead-letter messages while the errors
#: are transient (a broker outage, a leader election) before the worker gives up and exits to
#: restart from its last saved state.
DELIVERY_RETRY_S = 900.0
# Faust sends every table write to the changelog from one buffer, and its conductor, which
# hands every routed message of every stage to its stream, waits before each one while that
# buffer holds more than 100 messages (``ProducerBuffer.wait_until_ebb``), one event-loop turn
# per message sent. In a 30k-instance metrics flood the metrics stage's flushes kept it there:
# 0.2-3.8 s before each message delivered, live spans included (issue 16). Instead the
# conductor's limit is moved out of the way and the stage that filled the buffer waits after
# its own flush, until the buffer is no fuller than the flush found it, or than
# CHANGELOG_BUFFER_HIGH: each stage waits for its own writes only, and the buffer stays within
# CHANGELOG_BUFFER_HIGH plus one flush per stage.
CHANGELOG_BUFFER_HIGH = 100  # messages of up to CHUNK_BYTES (256 KiB) each, as Faust has it
CONDUCTOR_BUFFER_LIMIT = 1_000_000  # Faust's own check, kept only as a last resort
#: How long the first findings after a start wait for the feedback topic to be read to its
#: end (so a muted finding is not published unmuted by a worker that just started).
FEEDBACK_START_WAIT_S = 10.0


def _written_key(fut: Any) -> str:
    """The table key of a changelog send (Faust's ``FutureMessage``), or ``""``."""
    key = getattr(getattr(fut, "message", None), "key", None)
    return bytes(key or b"").decode(errors="replace")


def store_memory(table: Any) -> dict[str, int]:
    """What the table's open RocksDB databases hold in memory, by kind (empty for the
    in-memory store). Faust keeps a store's databases in ``_dbs``, with no public accessor."""
    dbs = getattr(table.data, "_dbs", None)
    if not dbs:
        return {}
    out = dict.fromkeys(STORE_MEMORY_PROPERTIES, 0)
    for db in list(dbs.values()):
        for kind, prop in STORE_MEMORY_PROPERTIES.items():
            try:
                out[kind] += db.property_int_value(prop) or 0
            except Exception:  # a database closed under us (Faust does not close them today)
                continue
    return out


class SavedTable(faust.Table):
    """A Faust table that keeps the changelog sends of its writes, which ``table[k] = v``
    does not return: a flush acknowledges its routed messages only once the broker has the
    state they made. Faust commits acknowledged offsets after flushing its producer, but that
    flush gives up after 0.1 s without a message sent; a commit ahead of the saved state loses
    those messages' effects when the worker dies, and a partition with no state saved at all
    looked new to the next owner, which resumed at the commit."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[asyncio.Future[Any]] = []

    def send_changelog(self, *args: Any, **kwargs: Any) -> Any:
        fut = super().send_changelog(*args, **kwargs)
        self.sent.append(fut)
        return fut

    def take_sent(self) -> list[asyncio.Future[Any]]:
        """The sends since the last call (only the flushes write to these tables)."""
        sent, self.sent = self.sent, []
        return sent


@dataclass(slots=True)
class _Send:
    """A message sent for a partition and not yet acknowledged: enough to send it again."""

    fut: asyncio.Future[Any]
    topic: str
    value: bytes
    partition: int | None = None
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] | None = None


@dataclass
class _Stream:
    """One detection stream (spans or metrics): its routed topic, table and engines."""

    signal: str
    topic: Any
    table: Any
    decode_wire: Callable[[bytes], records.Routed]
    detector_classes: list[type[Detector]]
    engines: dict[int, PartitionEngine] = field(default_factory=dict)
    pending: dict[int, list[EventT]] = field(default_factory=lambda: defaultdict(list))
    last_flush: dict[int, float] = field(default_factory=dict)
    ticked: set[int] = field(default_factory=set)  # partitions with a flush tick in flight
    # Derived messages sent and not yet acknowledged by the broker, per partition: a flush
    # waits for them (they leave the state it writes).
    sending: dict[int, list[_Send]] = field(default_factory=lambda: defaultdict(list))
    # Partitions between applying a message and sending what it derived: their output
    # watermark already covers records not sent yet, so no heartbeat states it meanwhile.
    busy: set[int] = field(default_factory=set)
    # No routed message skipped; its ``next`` is each partition's next offset to process.
    guard: OffsetGuard = field(default_factory=OffsetGuard)
    slice: TimeSlice = field(default_factory=TimeSlice)  # hands the event loop over
    # Acknowledgements after saves (``Pipeline._ack_when_saved``), per partition: flushes
    # numbered, the last one's task (the next waits for it), and after a failed save the
    # number below which flushes are not acknowledged (chained after the log missing).
    flushes: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    redo_below: dict[int, int] = field(default_factory=dict)


POSITION_TIMEOUT_S = 1.0  # the lag view's wait for a consumer position


async def routed_lag(
    assigned: Iterable[TP],
    processed: Mapping[str, Mapping[int, int]],
    highwater: Callable[[TP], int | None],
    committed: Callable[[TP], int | None],
    position: Callable[[TP], Awaitable[int | None]],
) -> dict[str, int]:
    """Records behind the end of each routed topic, over the assigned partitions of the topics
    in ``processed`` (routed topic → partition → next offset to process). A partition that
    has processed nothing here yet (just assigned, still recovering its state, or its backlog
    not reached) counts from its committed offset, else the consumer's position. Partitions
    whose end or position is unknown, or whose look-up fails, are left out."""
    lag: dict[str, int] = {}
    unknown: list[tuple[TP, int]] = []
    for tp in assigned:
        offsets = processed.get(tp.topic)
        if offsets is None:  # not a routed topic (a changelog, say)
            continue
        try:
            high = highwater(tp)
            pos = offsets.get(tp.partition)
            if pos is None:
                pos = committed(tp)
        except Exception:  # revoked since the assignment was read
            continue
        if high is None:
            continue
        if pos is None:
            unknown.append((tp, high))
        else:
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - pos)
    if unknown:
        found = await asyncio.gather(
            *(asyncio.wait_for(position(tp), POSITION_TIMEOUT_S) for tp, _ in unknown),
            return_exceptions=True,
        )
        for (tp, high), pos in zip(unknown, found, strict=True):
            if isinstance(pos, int):
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - pos)
    return lag


def _polled_ms(consumer: Any) -> Callable[[TP], int | None]:
    """aiokafka's ``last_poll_timestamp`` (Unix ms of the partition's last fetch answer) of
    the consumer inside Faust's consumer thread: a read of the partition's state, as Faust's
    own ``highwater()`` does from this thread."""
    inner = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    return inner.last_poll_timestamp if inner is not None else lambda tp: None


class Pipeline:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = s = settings
        self._state_view: dict[str, StreamState] = {}
        self._lag_view: dict[str, TopicLag] = {}
        self._lag_log = RateLimitedLog(log, every_s=60.0)
        self._detector_log = RateLimitedLog(log, every_s=30.0)
        self._behind_log = RateLimitedLog(log, every_s=60.0)
        self._gap_log = RateLimitedLog(log, every_s=10.0)
        self._dlq_log = RateLimitedLog(log)
        self._send_log = RateLimitedLog(log, every_s=30.0)
        self._feedback_log = RateLimitedLog(log, every_s=30.0)
        # The feedback words (``pipeline.feedback``): every worker follows the whole topic.
        self.feedback = FeedbackState(s.feedback_max_words)
        self._feedback_read = False  # read to the end offsets seen at the start
        self._feedback_waited = False  # the first publication has waited for that
        self._producer: AIOKafkaProducer | None = None  # derived records (started on first use)
        self.metrics = PipelineMetrics(registry or REGISTRY)
        self._view_built_at = time.time()  # wall clock: the HTTP thread compares it with now
        # Routed partitions this worker owns: an event of one it no longer owns (buffered
        # before a rebalance) is not processed, so a revoked partition's state is never
        # written here again while its new owner works on it.
        self._owned: set[TP] = set()
        self._acking: set[asyncio.Future[None]] = set()  # acknowledgements awaiting saves
        self.metrics.watch_state(lambda: self._state_view, lambda: self._lag_view,
                                 lambda: self._view_built_at)
        detector_classes = load_detectors(s.pipeline_detectors)

        self.app = app = faust.App(
            s.pipeline_app_id,
            broker=[f"kafka://{server}" for server in s.bootstrap_list],
            broker_credentials=self._credentials(),
            store="rocksdb://" if s.pipeline_store == "rocksdb" else "memory://",
            datadir=s.pipeline_data_dir,
            topic_partitions=s.pipeline_partitions,
            topic_replication_factor=s.pipeline_replication_factor,
            producer_max_request_size=s.max_record_bytes + 1024 * 1024,
            consumer_max_fetch_size=topics.FETCH_BYTES_PER_PARTITION,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            stream_wait_empty=False,
            table_standby_replicas=0,
            broker_session_timeout=s.kafka_session_timeout_s,
            broker_heartbeat_interval=s.kafka_session_timeout_s / 10,
        )
        app.producer.buffer.max_messages = CONDUCTOR_BUFFER_LIMIT  # see CHANGELOG_BUFFER_HIGH
        parts = s.pipeline_partitions
        self.findings_out = app.topic(
            s.findings_topic, partitions=s.output_partitions, internal=True, compacting=True,
            **RAW,
        )
        # Output topics of detectors that publish records (``Detector.publishes``).
        self.outputs = {"service_map": app.topic(
            s.service_map_topic, partitions=s.output_partitions, internal=True, compacting=True,
            **RAW,
        )}
        self.incidents_out = app.topic(
            s.incidents_topic, partitions=s.output_partitions, internal=True, compacting=True,
            **RAW,
        )
        # Created by topics.ensure_topics (one partition, INCIDENT_HISTORY_S retention).
        self.incident_input = app.topic(
            topics.incident_input_topic(s), partitions=1, internal=True, deleting=True, **RAW,
        )
        self.incident_stage = IncidentStage(s)
        self._incident_lock = asyncio.Lock()
        self._incident_view = None
        self.metrics.watch_incidents(lambda: self._incident_view)
        self.streams: dict[str, _Stream] = {}
        for signal, decode_wire in (
            ("spans", records.decode_spans_wire),
            ("metrics", records.decode_points_wire),
            ("traces", records.decode_samples_wire),
        ):
            # Created by topics.ensure_topics (time-based retention only: routed messages
            # carry the time they were routed); the same settings if Faust ever creates one.
            routed = app.topic(
                topics.routed_topic(s, signal), partitions=parts, internal=True,
                deleting=True, config=dict(topics.ROUTED_CONFIGS), **RAW,
            )
            table = app.tables.add(SavedTable(  # as app.Table makes one
                app, name=f"{signal}-state", beacon=app.tables.beacon, partitions=parts,
                default=None, key_type=bytes, value_type=bytes, options=dict(ROCKSDB_OPTIONS),
            ))
            classes = [c for c in detector_classes if c.signal == signal]
            self.streams[signal] = _Stream(signal, routed, table, decode_wire, classes)

        self.ingest = Ingest(
            s, self.metrics,
            {sig: st.topic.get_topic_name() for sig, st in self.streams.items()
             if sig in ("spans", "metrics")},
        )
        self._define_agents()

    # -- construction -------------------------------------------------------------------------
    def _credentials(self) -> Any:
        s = self.settings
        ctx = s.ssl_context()
        if s.kafka_security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                mechanism=s.kafka_sasl_mechanism, ssl_context=ctx,
            )
        return faust.SSLCredentials(ctx) if ctx is not None else None

    def _define_agents(self) -> None:
        app, s = self.app, self.settings

        @app.task
        async def run_ingest() -> None:
            await self.ingest.run()

        @app.task
        async def follow_feedback() -> None:
            await feedback_topic.follow(s, self._apply_feedback, self._feedback_caught_up)

        @app.task
        async def limit_library_logs() -> None:
            # (Faust has set up logging by now.) A broker outage must not flood the log.
            install()

        @app.agent(self.streams["spans"].topic, name="detect-spans")
        async def detect_spans(stream: StreamT) -> None:
            await self._detect(stream, self.streams["spans"])

        @app.agent(self.streams["metrics"].topic, name="detect-metrics")
        async def detect_metrics(stream: StreamT) -> None:
            await self._detect(stream, self.streams["metrics"])

        @app.agent(self.streams["traces"].topic, name="detect-traces")
        async def detect_traces(stream: StreamT) -> None:
            await self._detect(stream, self.streams["traces"])

        @app.agent(self.incident_input, name="correlate-incidents")
        async def correlate_incidents(stream: StreamT) -> None:
            async for event in stream.events():
                await self._correlate(event.message.tp, event.message.offset,
                                      event.message.value)

        @app.on_partitions_revoked.connect
        async def on_revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            self._owned.difference_update(revoked)
            self._drop_partitions(revoked)
            if any(tp.topic == self.incident_input.get_topic_name() for tp in revoked):
                self.incident_stage.drop()

        @app.on_partitions_assigned.connect
        async def on_assigned(sender: Any, assigned: set[TP], **kwargs: Any) -> None:
            self._owned.update(assigned)

        # Processing time (housekeeping, not detection): a quarter of the input's retention.
        @app.timer(interval=s.incident_history_s / 4)
        async def refresh_incident_input() -> None:
            await self._refresh_incident_input()

        @app.timer(interval=5.0)
        async def take_correlation_over() -> None:  # (not in the state view's timer: a
            await self._take_correlation_over()    # rebuild may take a while)

        @app.timer(interval=5.0)
        async def refresh_state_view() -> None:
            tp = TP(self.incident_input.get_topic_name(), 0)
            self._incident_view = self.incident_stage.view() if tp in self._owned else None
            self._state_view = self._build_state_view()
            self._view_built_at = time.time()
            try:
                self._lag_view = await self._build_lag_view()
            except Exception:  # the timer must live on; the last view stands, its fetch
                # times saying how old it is
                self._lag_log.warning("lag", "cannot compute consumer lag", exc_info=True)

        @app.timer(interval=s.state_flush_interval_s)
        async def tick_idle_partitions() -> None:
            await self._tick_idle_partitions()

        @app.timer(interval=1.0)
        async def reseek_skipped() -> None:
            await self._reseek()

        @app.timer(interval=HEARTBEAT_S)
        async def stage_heartbeats() -> None:
            await self._stage_heartbeats()


    # -- stage 2: detect ----------------------------------------------------------------------
    async def _detect(self, stream: StreamT, st: _Stream) -> None:
        s, m = self.settings, self.metrics
        async for event in stream.noack().events():
            # A backlog's messages come without a pause: let the other stages run between
            # them (before the ownership check, which a rebalance meanwhile can change).
            await st.slice.pause()
            started = time.perf_counter()
            msg = event.message
            p = msg.partition
            if msg.tp not in self._owned:
                continue
            engine = st.engines.get(p)
            if engine is None:
                engine = self._open_engine(st, p)
            if not await self._in_order(st, msg):
                continue
            if msg.tp not in self._owned or st.engines.get(p) is not engine:
                continue  # revoked while it looked an offset up
            if msg.value == TICK:
                st.ticked.discard(p)
                # applied too: the state flushed next resumes after it, as the commit will
                engine.offset = max(engine.offset, msg.offset)
            else:
                c = engine.counters
                items, duplicates = c.items, c.duplicate_messages
                st.busy.add(p)
                try:
                    try:
                        if st.signal == "spans" and records.is_forwarded(msg.value):
                            routed = await self._decode_forwarded(st, p, engine, msg)
                            adjusted = engine.clock_counts()
                            findings = await self._apply_stepwise(st, engine, routed,
                                                                  msg.offset)
                            self._count_adjustments(adjusted, engine.clock_counts())
                        else:
                            findings = await self._apply_stepwise(
                                st, engine, st.decode_wire(msg.value), msg.offset)
                    except Exception:  # one bad message must not stop detection for everyone
                        log.exception("skipped routed message %s[%d]@%d", msg.topic, p,
                                      msg.offset)
                        m.decode_errors.labels(msg.topic, "internal_error").inc()
                        engine.offset = max(engine.offset, msg.offset)
                        findings = []
                    if st.engines.get(p) is not engine:
                        # Revoked while it let others run: the new owner redoes the message
                        # from the saved state; nothing of it is published or saved here.
                        continue
                    for finding in findings:
                        await self._publish(finding, engine.watermark_ns)
                    for out, key, value in engine.take_published():
                        await self.outputs[out].send(key=key, value=value)
                        edge = self.incident_stage.edge_record(key, value)
                        if edge is not None:
                            await self.incident_input.send(key=key, value=edge)
                    await self._send_derived(st, p, engine)
                finally:
                    st.busy.discard(p)
                if engine.behind_ns:
                    self._behind_log.warning(
                        st.signal, "%s partition %d: records arrive %.0f s behind the saved "
                        "state's watermark: the input went back in time (a rerun or a replay "
                        "into old state), so they are late and the detectors drop them. To "
                        "start clean: make kafka-reset (local), or a new PIPELINE_APP_ID.",
                        st.signal, p, engine.behind_ns / 1e9)
                m.items_detected.labels(st.signal).inc(c.items - items)
                if c.duplicate_messages != duplicates:
                    m.duplicates.labels(st.signal).inc()
            pending = st.pending[p]
            pending.append(event)
            now = time.monotonic()
            if (
                len(pending) >= s.state_flush_records
                or now - st.last_flush.get(p, 0.0) >= s.state_flush_interval_s
            ):
                await self._await_derived(st, p)
                found = self.app.producer.buffer.size
                writes = 0
                for key, value in engine.changes():
                    kb = key.encode()
                    if value is not None:
                        st.table[kb] = value
                    elif kb in st.table:
                        del st.table[kb]
                    else:  # not in the local store (restored elsewhere): delete it anyway
                        st.table.send_changelog(p, kb, None, key_serializer="raw",
                                                value_serializer="raw")
                    writes += 1
                m.state_flushes.labels(st.signal).inc()
                m.state_writes.labels(st.signal).inc(writes)
                self._ack_when_saved(stream, st, p, list(pending))
                pending.clear()
                st.last_flush[p] = now
                await self._changelog_ebb(found)
            m.processing.labels(f"detect_{st.signal}").observe(time.perf_counter() - started)

    def _ack_when_saved(self, stream: StreamT, st: _Stream, p: int,
                        events: list[EventT]) -> None:
        """Acknowledge ``events`` once the changelog writes of the flush that covers them are
        on the broker: in a task, so the stage goes on meanwhile, and after the partition's
        previous flush's (Faust commits up to the first offset not acknowledged, but not with no
        commit yet, nor past a hole of one offset)."""
        st.flushes[p] += 1
        task = asyncio.ensure_future(self._acknowledge(
            stream, st, p, st.flushes[p], st.table.take_sent(), events, st.acks.get(p)))
        st.acks[p] = task
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _acknowledge(self, stream: StreamT, st: _Stream, p: int, number: int,
                           saved: list[asyncio.Future[Any]], events: list[EventT],
                           previous: asyncio.Future[None] | None) -> None:
        """If a write failed, the messages stay unacknowledged (the commit stops before them),
        and so do those of the flushes already made after it, whose logs restore would not
        reach: back on the partition's pending list, for its next flush, which writes the whole
        state (again into the slot of a base that failed)."""
        if previous is not None:
            await asyncio.wait([previous])
        results = await asyncio.gather(*saved, return_exceptions=True)
        failed = [(f, r) for f, r in zip(saved, results, strict=True)
                  if isinstance(r, BaseException)]
        if not failed and number >= st.redo_below.get(p, 0):
            for event in events:
                await stream.ack(event)
            return
        engine = st.engines.get(p)  # (revoked: the new owner redoes them from its state)
        if failed:
            error = failed[0][1]
            self._send_log.warning(
                "changelog", "%s partition %d: %d state writes failed (%s: %s); their "
                "messages stay unacknowledged until the next flush saves the whole state%s",
                st.signal, p, len(failed), type(error).__name__, error,
                "" if engine is None or not engine.quarantined else
                " (not while a detector is quarantined: a restart applies them again)")
            if engine is not None:
                engine.rebase(_written_key(f) for f, _ in failed)
                st.redo_below[p] = st.flushes[p] + 1
        if engine is not None:
            st.pending[p][:0] = events

    async def _changelog_ebb(self, found: int) -> None:
        """After a flush: wait until Faust's changelog buffer is no fuller than the flush found
        it, or ``CHANGELOG_BUFFER_HIGH`` (see there). While the broker is away this waits too,
        which is the back-pressure the buffer needs."""
        buffer = self.app.producer.buffer
        limit = max(found, CHANGELOG_BUFFER_HIGH)
        since = time.monotonic()
        while buffer.size > limit:
            await asyncio.sleep(0.01)
            if time.monotonic() - since > 30:
                self._send_log.warning(
                    "changelog", "%d state writes have waited over 30 s to be sent to the "
                    "changelog (is the broker reachable?); this stage waits for them",
                    buffer.size)

    @staticmethod
    async def _apply_stepwise(st: _Stream, engine: PartitionEngine, routed: records.Routed,
                              offset: int) -> list[Finding]:
        """Apply one routed message a source record at a time, letting the other stages and
        the consumer's delivery run between records once this stage has had its slice: a
        batch of flood records takes a second or more, and every routed message fetched
        behind it (live spans) would wait that long for each one delivered."""
        findings: list[Finding] = []
        for step in engine.process_steps(routed, offset):
            findings += step
            await st.slice.pause()
        return findings

    async def _decode_forwarded(self, st: _Stream, p: int, engine: PartitionEngine,
                                msg: Any) -> records.Routed:
        """Input keyed by trace id: decode the span records ingest forwarded whole, and
        dead-letter what cannot be (the flush that acknowledges them waits for the dead
        letters, as for derived records). Records applied already are skipped."""
        s, m = self.settings, self.metrics
        if msg.offset <= engine.offset:  # the engine skips it whole
            return records.Routed(None, [], None, segments=[])
        out = otlp.decode_forwarded_spans(
            msg.value, s.otlp_spans_encoding, s.max_record_bytes,
            int(s.max_future_skew_s * 1e9), seen=engine.seen)
        m.items_decoded.labels("spans").inc(len(out.routed.items))
        for reason, n in out.dropped.items():
            m.items_dropped.labels("spans", reason).inc(n)
        if not out.failures:
            return out.routed
        producer = await self._derived_producer()
        dlq = s.deadletter_topic
        limit = self.ingest.limits.get(dlq, topics.DEFAULT_MESSAGE_BYTES - topics.FRAMING_BYTES)
        for f in out.failures:
            r = f.record
            if f.reason == "internal_error":
                log.error("unexpected error decoding %s[%d]@%d", r.topic, r.partition, r.offset,
                          exc_info=f.error)
            dl = dead_letter(
                key=r.key, value=r.value, headers=r.headers, topic=r.topic,
                partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp_ms,
                error=f.error, reason=f.reason, rejected_items=f.rejected,
                max_value_bytes=limit)
            # The flush that would acknowledge this message waits for the dead letter
            # (``_await_derived``: sent again while the broker is away).
            st.sending[p].append(await self._send(_Send(
                None, dlq, dl.value, key=dl.key, headers=dl.headers), producer))  # type: ignore[arg-type]
            m.decode_errors.labels(r.topic, f.reason).inc()
            m.deadletters.labels(r.topic, f.reason).inc()
            what = f"{f.rejected} items of " if f.rejected else ""
            self._dlq_log.warning(f.reason, "dead-lettered %srecord %s[%d]@%d: %s: %s", what,
                                  r.topic, r.partition, r.offset, f.reason, f.error)
        return out.routed

    def _count_adjustments(self, before: dict[str, int], after: dict[str, int]) -> None:
        for reason, n in after.items():
            if n != before.get(reason, 0):
                self.metrics.clock_adjustments.labels(
                    self.settings.otlp_spans_topic, reason).inc(n - before.get(reason, 0))

    def span_senders(self) -> int:
        s = self.settings
        return records.span_senders(s.otlp_spans_keying == "trace_id",
                                    self.ingest.input_partitions.get(s.otlp_spans_topic, 0),
                                    s.pipeline_partitions)

    async def _in_order(self, st: _Stream, msg: Any) -> bool:
        """Whether to process this routed message now. One past the next expected offset
        means the consumer skipped messages (``pipeline.offsets``): seek back to the first
        one missing and skip what comes until it does."""
        g = st.guard
        gaps, lost = g.gaps, g.lost
        first: int | None = None
        if msg.partition in g.unstarted:
            first = await self._first_offset(msg.tp)
            if msg.partition not in g.unstarted:  # revoked meanwhile
                return False
            if first is None:  # this message again, and the lookup with it
                self._gap_log.warning("unstarted", "%s partition %d: cannot look up its first "
                                      "offset; trying again", st.signal, msg.partition)
                await self._seek(msg.tp, msg.offset)
                return False
            g.start(msg.partition, first)
            if msg.offset > first:
                self._gap_log.warning(
                    "unsaved", "%s partition %d has no saved state, yet the consumer starts it "
                    "at offset %d, past messages nothing applied (faust-streaming's consumer "
                    "does so after a restart; or the state topic was deleted): applying from "
                    "offset %d",
                    st.signal, msg.partition, msg.offset, first)
        now = time.monotonic()
        action, to = g.check(msg.partition, msg.offset, now)
        if g.gaps != gaps:
            self.metrics.routed_gaps.labels(st.signal).inc(g.gaps - gaps)
            self._gap_log.warning(
                st.signal, "%s partition %d: the consumer skipped routed messages %d..%d; "
                "seeking back to %d (nothing is acknowledged past it until they are applied)",
                st.signal, msg.partition, to, msg.offset - 1, to)
            if first is None:  # (unknown: seek and wait, gone after give_up_s)
                first = await self._first_offset(msg.tp)
            if first is not None:
                action, to = g.gone(msg.partition, first, msg.offset, now)
        if g.lost != lost:
            self.metrics.routed_lost.labels(st.signal).inc(g.lost - lost)
            log.error("%s partition %d: %d routed messages before offset %d were deleted "
                      "before this worker read them (or never came back after %.0f s of "
                      "seeking): LOST. Check retention.ms/retention.bytes of %s: routed topics "
                      "need time-based retention only, longer than any backlog.",
                      st.signal, msg.partition, g.lost - lost, to, g.give_up_s, msg.topic)
        if action == "seek":
            await self._seek(msg.tp, to)
        return action == "process"

    async def _first_offset(self, tp: TP) -> int | None:
        """The partition's first available offset, or None if it cannot be looked up."""
        try:
            return (await self.app.consumer.earliest_offsets(tp)).get(tp)
        except Exception:
            return None

    async def _seek(self, tp: TP, offset: int) -> None:
        # seek_wait runs in the consumer's own thread and resets Faust's read position (a
        # plain seek from this thread did not take effect in the corpus replay)
        try:
            await self.app.consumer.seek_wait({tp: offset})
        except Exception:  # revoked meanwhile, or a timeout: the timer seeks again
            self._gap_log.warning("seek", "cannot seek %s to %d", tp, offset, exc_info=True)

    async def _reseek(self) -> None:
        """Seek again the partitions still waiting for a skipped message."""
        now = time.monotonic()
        for st in self.streams.values():
            for partition, offset in st.guard.due(now):
                await self._seek(TP(st.topic.get_topic_name(), partition), offset)

    async def _send_derived(self, st: _Stream, partition: int, engine: PartitionEngine) -> None:
        """Send what the engine derived for the next stage. A plain aiokafka producer (as in
        ingest) gives one delivery future per message, awaited before the flush that drops the
        derived records from this partition's state."""
        outbox = engine.drain_outbox(self._partitioner)
        if not outbox:
            return
        producer = await self._derived_producer()
        source_topic = st.topic.get_topic_name()
        for d in outbox:
            encode = d.encoder(source_topic, partition)
            for value in records.split_encode(d.items, encode, MAX_DERIVED_BYTES):
                st.sending[partition].append(await self._send(_Send(
                    None, self.streams[d.signal].topic.get_topic_name(), value,  # type: ignore[arg-type]
                    partition=d.partition), producer))
            self.metrics.derived.labels(d.signal).inc(len(d.items))

    async def _derived_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                linger_ms=5, max_batch_size=1024 * 1024, acks="all",
                max_request_size=self.settings.max_record_bytes + 1024 * 1024,
                **self.settings.aiokafka_kwargs(),
            )
            await self._producer.start()
        return self._producer

    async def _stage_heartbeats(self) -> None:
        """Every ``HEARTBEAT_S``, tell every partition of the next stage how far this worker's
        partitions of a deriving stage have got: one message per next-stage partition holding
        the marks of all of them whose output watermark moved (a receiver that gets no derived
        records from a partition still learns how far it is). One message per worker, not per
        partition: with P partitions that is P messages a second, not P squared.

        The span stage's client calls are a side input of the metrics stream; its marks there
        also say whether the span input is idle, which data messages do not carry. A mark is
        sent on the producer that sends the derived records, after them (per-partition order),
        and never for a partition between applying a message and sending what it derived."""
        now = time.monotonic()
        n = self.span_senders()  # (only the span stage derives)
        for st in self.streams.values():
            source_topic = st.topic.get_topic_name()
            for signal in sorted({c.emits for c in st.detector_classes if c.emits}):
                side = signal == "metrics"
                marks = [
                    mark for p, engine in sorted(st.engines.items())  # (only owned ones)
                    if p not in st.busy
                    # (half the interval: the timer's own jitter must not skip a beat)
                    and (mark := engine.heartbeat(signal, source_topic, now, HEARTBEAT_S / 2,
                                                  side=side))
                ]
                if not marks:
                    continue
                value = records.encode_heartbeat(marks, {source_topic: n} if n else {},
                                                 side=side)
                producer = await self._derived_producer()
                topic = self.streams[signal].topic.get_topic_name()
                for dest in range(self.settings.pipeline_partitions):
                    forget(await producer.send(topic, value=value, partition=dest))

    async def _send(self, msg: _Send, producer: AIOKafkaProducer | None = None) -> _Send:
        """Send (or send again) ``msg``; a send refused at once becomes a failed delivery."""
        producer = producer or await self._derived_producer()
        try:
            msg.fut = await producer.send(msg.topic, msg.value, key=msg.key,
                                          headers=msg.headers, partition=msg.partition)
        except KafkaError as exc:  # refused before sending (broker down, too large)
            msg.fut = failed_send(exc)
        return msg

    async def _await_derived(self, st: _Stream, partition: int) -> None:
        """Wait until the broker has every derived and dead-letter message of ``partition``
        (the flush that follows drops them from its state). While it fails for a transient
        reason (an outage), send again after a back-off: per destination partition, from the
        first failed message on and in order, so the receiver, which skips what it has
        applied, misses nothing. A lasting or permanent failure exits the worker, which
        restarts from its last saved state and derives the same messages again."""
        sending = st.sending.pop(partition, None)
        deadline, delay = time.monotonic() + DELIVERY_RETRY_S, 1.0
        while sending:
            results = await asyncio.gather(*(m.fut for m in sending), return_exceptions=True)
            first: dict[tuple[str, int | None], int] = {}
            errors = []
            for i, (m, r) in enumerate(zip(sending, results, strict=True)):
                if isinstance(r, BaseException):
                    first.setdefault((m.topic, m.partition), i)
                    errors.append(r)
            if not errors:
                return
            if not all(transient(e) for e in errors) or time.monotonic() > deadline:
                # Derived records left this partition's state when they were derived: acking
                # now would lose them.
                log.critical("could not deliver %d derived or dead-letter messages (%s: %s); "
                             "exiting so the worker restarts from its last saved state",
                             len(errors), type(errors[0]).__name__, errors[0])
                os._exit(70)
            self._send_log.warning(
                "derived", "could not deliver %d derived or dead-letter messages yet (%s); "
                "sending them again in %.0f s", len(errors), type(errors[0]).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            sending = [await self._send(m) for i, m in enumerate(sending)
                       if i >= first.get((m.topic, m.partition), len(sending))]

    def _partitioner(self, signal: str, item: Any) -> int:
        if signal == "metrics":
            return records.calls_partition(item, self.settings.pipeline_partitions)
        return records.sample_partition(item, self.settings.pipeline_partitions)

    async def _tick_idle_partitions(self) -> None:
        """State is written from inside the stream (Faust tables take the changelog partition
        from the current event), so a partition that went quiet with unflushed work gets a tick
        message on its routed topic; processing it flushes and acknowledges that work."""
        now = time.monotonic()
        for st in self.streams.values():
            for p, pending in list(st.pending.items()):
                if (
                    pending and p not in st.ticked
                    and now - st.last_flush.get(p, now) >= self.settings.state_flush_interval_s
                ):
                    st.ticked.add(p)
                    await st.topic.send(value=TICK, partition=p)

    def _open_engine(self, st: _Stream, partition: int) -> PartitionEngine:
        s = self.settings
        spans_routed = self.streams["spans"].topic.get_topic_name()
        senders = self.span_senders()
        keyed = st.signal == "spans" and s.otlp_spans_keying == "trace_id"
        if st.signal == "traces":  # fed by the span-routed partitions
            expected = {spans_routed: senders} if senders else {}
        else:  # the input topic's partitions (heartbeats say how many; saved with the state)
            topic = s.otlp_spans_topic if st.signal == "spans" else s.otlp_metrics_topic
            n = self.ingest.input_partitions.get(topic, 0)
            expected = (records.keyed_counts(topic, n, s.pipeline_partitions, partition)
                        if keyed else {topic: n} if n else {})  # keyed: those forwarded here
        # Side inputs: what the span stage derives for this stream (client calls for metrics).
        side = {spans_routed: senders} if senders and any(
            c.emits == st.signal for c in self.streams["spans"].detector_classes) else {}
        engine = PartitionEngine(
            partition, [cls.from_settings(s) for cls in st.detector_classes],
            int(s.allowed_lateness_s * 1e9), expected=expected, idle_s=s.source_idle_s,
            end_of_input_s=s.end_of_input_s,
            # Streams fed by ingest close their last windows at the end of the input; the
            # trace stage follows the span stage's watermark, which already did.
            end_advance_ns=0 if st.signal == "traces" else int(s.end_of_input_advance_s * 1e9),
            on_error=self._detector_error, rebuild=lambda d: type(d).from_settings(s),
            side_expected=side,
            # input keyed by trace id: the span stage keeps its sources' clocks
            clock=(lambda: SourceClock.from_settings(s)) if keyed else None,
        )
        prefix = f"{partition}/".encode()
        loaded = engine.restore(
            (k.decode(), v) for k, v in st.table.items() if k.startswith(prefix)
        )
        n_spans = self.ingest.input_partitions.get(s.otlp_spans_topic, 0)
        if s.otlp_spans_keying == "trace_id" and n_spans:  # the state may be saved with "any"
            keyed_layout(engine, st.signal, s.otlp_spans_topic, spans_routed, n_spans,
                         s.pipeline_partitions)
        if loaded:
            log.info(
                "restored %s partition %d: %d state entries, resuming after offset %d",
                st.signal, partition, loaded, engine.offset,
            )
        if engine.offset >= 0:
            st.guard.expect(partition, engine.offset + 1)
        elif not engine.tracked():  # nothing restored (else an unreadable marker: logged)
            st.guard.expect_first(partition)
        st.engines[partition] = engine
        st.last_flush[partition] = time.monotonic()
        return engine

    def _drop_partitions(self, revoked: set[TP]) -> None:
        for st in self.streams.values():
            for tp in revoked:
                if tp.topic == st.topic.get_topic_name():
                    engine = st.engines.get(tp.partition)
                    if engine is not None:  # what its detectors counted since the last view
                        self._export_counts(engine)
                    # Unflushed work is not acknowledged: the new owner redoes it from the table.
                    st.engines.pop(tp.partition, None)
                    st.pending.pop(tp.partition, None)
                    st.last_flush.pop(tp.partition, None)
                    st.ticked.discard(tp.partition)
                    st.sending.pop(tp.partition, None)
                    st.busy.discard(tp.partition)
                    st.guard.forget(tp.partition)
                    st.acks.pop(tp.partition, None)  # (its tasks finish on their own)

    def _export_counts(self, engine: PartitionEngine) -> None:
        for d in engine.detectors:
            if d.name in engine.quarantined:
                continue
            try:
                self.metrics.add_counts(d, d.stats().counters)
            except Exception:  # a broken detector must not break the metrics
                continue

    def _detector_error(self, detector: str, what: str, exc: BaseException) -> None:
        self.metrics.detector_errors.labels(detector).inc()
        self._detector_log.warning(
            detector, "detector %s raised in %s: %s: %s (the other detectors go on; after "
            "repeated failures it is quarantined in that partition)", detector, what,
            type(exc).__name__, exc, exc_info=True)

    async def _publish(self, finding: Finding, watermark_ns: int = 0) -> None:
        finding.runbook_url = self.settings.runbook_url(finding.kind)
        if not self._feedback_waited:  # just started: let the words held on the topic in
            self._feedback_waited = True
            deadline = time.monotonic() + FEEDBACK_START_WAIT_S
            while not self._feedback_read and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        self.feedback.annotate(finding, finding_event_ns(finding, watermark_ns))
        value = finding.to_json()
        await self.findings_out.send(key=finding.fingerprint.encode(), value=value)
        await self.incident_input.send(key=finding.fingerprint.encode(),
                                       value=finding_record(value))
        self.metrics.findings.labels(finding.kind, finding.severity, finding.status).inc()
        log.info("finding %s %s %s: %s", finding.status, finding.kind, finding.entity,
                 finding.summary)

    # -- incidents ----------------------------------------------------------------------------
    async def _correlate(self, tp: TP, offset: int, value: bytes | None) -> None:
        """One record of the correlation's input, on the worker that owns its partition."""
        async with self._incident_lock:
            if tp not in self._owned:
                return
            try:
                if self.incident_stage.correlator is None:
                    await self._rebuild_incidents(offset)
                out = self.incident_stage.take(offset, value)
            except Exception:  # never stop the agent: the next rebuild replays this record
                self._detector_log.warning(
                    "incidents", "incident correlation failed at input offset %d; it is "
                    "rebuilt from its input topic", offset, exc_info=True)
                self.metrics.detector_errors.labels("incident_correlator").inc()
                self.incident_stage.drop()
                return
            for key, doc in out:
                if tp not in self._owned:
                    return  # revoked while sending: the new owner republishes
                await self.incidents_out.send(key=key, value=doc)

    async def _take_correlation_over(self) -> None:
        """Take the correlation over as soon as its partition is ours, not at its next input
        record (findings are rare): the incident gauges are back within seconds."""
        tp = TP(self.incident_input.get_topic_name(), 0)
        if tp in self._owned and self.incident_stage.correlator is None:
            async with self._incident_lock:
                if tp in self._owned and self.incident_stage.correlator is None:
                    try:
                        await self._rebuild_incidents(None)
                    except Exception:  # the next input record (or the next tick) tries again
                        log.warning("cannot rebuild the incidents yet", exc_info=True)

    async def _rebuild_incidents(self, upto: int | None) -> None:
        found = await self.incident_stage.rebuild(self.incident_input.get_topic_name(), upto)
        for key, doc in self.incident_stage.records(found):
            await self.incidents_out.send(key=key, value=doc)

    # -- feedback -----------------------------------------------------------------------------
    def _feedback_caught_up(self) -> None:
        self._feedback_read = True
        log.info("feedback topic %s read: %d words", self.settings.feedback_topic,
                 len(self.feedback))

    async def _apply_feedback(self, batch: list[Any]) -> None:
        """Apply feedback records; a bad one is logged, counted and skipped (not dead-lettered:
        every worker reads every record, at every start). When a mute or an ack changed, the
        firing findings it is about are published again with it, and the state view (the
        alerting gauge) is rebuilt at once."""
        changed: list[Target] = []
        for r in batch:
            try:
                applied = self.feedback.apply(r.key, r.value)
            except FeedbackError as exc:
                self.metrics.feedback_rejected.labels(exc.reason).inc()
                self._feedback_log.warning(
                    exc.reason, "skipped feedback record %s[%d]@%d: %s: %s", r.topic,
                    r.partition, r.offset, exc.reason, exc)
                continue
            self.metrics.feedback_applied.labels(applied.action).inc()
            if applied.target is not None and applied.slot in ("mute", "ack"):
                changed.append(applied.target)
        if changed and self._feedback_read:  # (at a start, nothing was published meanwhile)
            await self._republish(changed)
            self._state_view = self._build_state_view()
            self._view_built_at = time.time()

    async def _republish(self, targets: list[Target]) -> None:
        """Publish again the firing findings of owned partitions that ``targets`` are about,
        with their current mute and ack (a finding's records on the compacted topic then say
        so; its id stays)."""
        for st, p, engine, finding in self._open_findings():
            if st.engines.get(p) is not engine:
                continue  # revoked meanwhile: its new owner has the findings
            if any(t.matches(finding.fingerprint, finding.kind, finding.entity,
                             finding.id) for t in targets):
                await self._publish(finding, engine.watermark_ns)

    def _open_findings(self) -> list[tuple[_Stream, int, PartitionEngine, Finding]]:
        """Every firing finding of the owned partitions, as it stands now."""
        out = []
        for st in self.streams.values():
            for p, engine in list(st.engines.items()):
                for d in engine.detectors:
                    if d.name in engine.quarantined:
                        continue
                    try:
                        out += [(st, p, engine, f) for f in d.open_findings()]
                    except Exception:  # a broken detector must not stop the others
                        continue
        return out

    async def _refresh_incident_input(self) -> None:
        """Send every firing finding to the correlation's input again (the same record, so the
        correlation changes nothing): a finding that fires for longer than the input's
        retention is still there for a worker that rebuilds the correlation."""
        for st, p, engine, finding in self._open_findings():
            if st.engines.get(p) is not engine:
                continue
            finding.runbook_url = self.settings.runbook_url(finding.kind)
            self.feedback.annotate(finding, finding_event_ns(finding, engine.watermark_ns))
            await self.incident_input.send(key=finding.fingerprint.encode(),
                                           value=finding_record(finding.to_json()))

    def _build_state_view(self) -> dict[str, StreamState]:
        view = {}
        for name, st in self.streams.items():
            sv = StreamState(partitions=len(st.engines))
            watermarks = [e.watermark_ns for e in st.engines.values() if e.watermark_ns]
            sv.watermark_ns = min(watermarks) if watermarks else 0
            idles = []
            for engine in st.engines.values():
                sv.late_items += engine.counters.late_items
                sv.behind_ns = max(sv.behind_ns, engine.behind_ns)
                sv.ended += engine.ended
                idles.append(engine.idle_since_s())
                for reason, n in (("unreadable", engine.counters.state_dropped),
                                  ("too_large", engine.counters.state_too_large)):
                    sv.lost[reason] = sv.lost.get(reason, 0) + n
                for d in engine.detectors:
                    sv.quarantined[d.name] = (sv.quarantined.get(d.name, 0)
                                              + (d.name in engine.quarantined))
                    if d.name in engine.quarantined:
                        continue
                    try:
                        stats = d.stats()
                    except Exception:  # a broken detector must not break the metrics
                        continue
                    sv.tracked[d.name] = sv.tracked.get(d.name, 0) + stats.tracked
                    for reason, n in stats.evicted.items():
                        key = (d.name, reason)
                        sv.evicted[key] = sv.evicted.get(key, 0) + n
                    for key, n in stats.active.items():
                        sv.active[key] = sv.active.get(key, 0) + n
                    sv.gauges.update(stats.gauges)
                    for firing in stats.firing:  # muted: left out of the alerting gauge
                        kind, _, fp, entity = firing
                        if self.feedback.mute(fp, kind, entity, engine.watermark_ns):
                            sv.muted[kind] = sv.muted.get(kind, 0) + 1
                        else:
                            sv.firing.append(firing)
                    edge_totals = getattr(d, "edge_totals", None)
                    if edge_totals is not None:
                        sv.edges.extend(edge_totals())
                    self.metrics.add_counts(d, stats.counters)
            sv.idle_s = min(idles) if idles else 0.0
            sv.store_bytes = store_memory(st.table)
            view[name] = sv
        return view

    async def _build_lag_view(self) -> dict[str, TopicLag]:
        """Records behind the end of each consumed topic, over the partitions this worker owns:
        the input topics (ingest) and the routed topics (detection), every assigned partition
        of these, processed here yet or not (see ``routed_lag``); each topic's last known lag
        kept while its consumer cannot tell which partitions it owns (``lagview``)."""
        return carry_lag(self._lag_view, self.ingest.lag_reading(), await self._routed_reading())

    async def _routed_reading(self) -> LagReading:
        names = [st.topic.get_topic_name() for st in self.streams.values()]
        consumer = self.app.consumer
        try:
            assigned = consumer.assignment()
        except Exception:  # consumer not started (or stopped)
            return LagReading({}, {}, names)
        # Faust's record of the committed offsets (read at assignment, updated on commit):
        # a dict look-up, where asking the broker would be a round trip per partition.
        committed_offsets = getattr(consumer, "_committed_offset", None) or {}
        lag = await routed_lag(
            assigned,
            {st.topic.get_topic_name(): dict(st.guard.next) for st in self.streams.values()},
            consumer.highwater,
            lambda tp: committed_offsets.get(tp),
            consumer.position,
        )
        routed = [tp for tp in assigned if tp.topic in names]
        # While Faust rebalances (as it does when the broker is lost) its assignment is empty.
        keep = names if getattr(self.app, "rebalancing", False) else {tp.topic for tp in routed}
        return LagReading(lag, last_fetched(routed, _polled_ms(consumer)), keep)

