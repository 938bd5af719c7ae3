"""Stage 1, ingest: input topics → decode → dead letters or routed topics, with plain aiokafka.

Why not a Faust agent: faust-streaming's consumer can jump its position in an input partition
across a restart and commit past the records in between (faust-streaming/faust#216, #221, #312);
the SIGKILL test lost 1-60 of 400 records in about one restart in five. Its per-event machinery
was also two thirds of the worker's CPU. This stage consumes in batches with its own consumer
group (``<app id>-ingest``), sends every routed and dead-letter message of a batch (the routed
ones packed per destination partition, ``records.encode_batch``), waits until
the broker has acknowledged all of them, and only then commits the batch's offsets. A crash
redoes at most the uncommitted batch; the detection stage applies each source record once
(``PartitionEngine`` keeps the last source offset per source partition).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from aiokafka.structs import ConsumerRecord, TopicPartition

from pipeline import otlp, records, topics
from pipeline.clock import SourceClock
from pipeline.lagview import LagReading, last_fetched
from pipeline.loglimit import forget
from pipeline.records import Mark
from pipeline.settings import Settings
from pipeline.sinks.deadletter import dead_letter
from pipeline.sinks.metrics import PipelineMetrics
from pipeline.slices import TimeSlice

log = logging.getLogger("pipeline.ingest")

MAX_BATCH = 200  # records per read: also the step at which partitions are kept aligned
# A source record larger than this fraction of the routed message limit is routed alone, split
# into chunks as needed (and dead-lettered if one item cannot fit), before the batch is sent;
# smaller ones share one message per (read batch, routed partition).
ALONE_FRACTION = 0.25
FIRST_READ = 20  # records per read while some input partition has not been read yet
STARVE_S = 5.0  # processing seconds the chosen partitions may return nothing before all are read
COMMIT_S = 1.0  # at most this long between offset commits while records flow
# Input partitions read more than this far ahead (record timestamps) of the slowest partition
# of the same topic that still has records waiting are paused until it catches up, as Kafka
# Streams chooses the record with the lowest timestamp: a backlog is then read in event-time
# step across partitions instead of one partition first, which would leave the others'
# records behind the detection stage's watermark.
ALIGN_MS = 30_000
HEARTBEAT_S = 1.0  # how often every routed partition hears every owned input partition's mark
# A source record whose routed or dead-letter messages fail this many times with an error
# that is neither a lost connection nor a timeout is dead-lettered as ``unroutable``.
MAX_ROUTE_ATTEMPTS = 3
MAX_TRACKED_FAILURES = 10_000  # source records whose failures are remembered (oldest dropped)


SIZE_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError,
               InvalidTimestampError, CorruptRecordException)


@dataclass(slots=True)
class Pending:
    """A message sent for one or more source records, not yet acknowledged by the broker."""

    future: Awaitable[Any]
    records: list[tuple[ConsumerRecord, str]]  # each with its "topic:partition:offset"


@dataclass(slots=True)
class Outgoing:
    """What one source record routes to one partition, waiting for the read batch's messages:
    its items (a ``records.encode_batch`` part) or, for a record too large to batch, its
    messages already encoded."""

    record: ConsumerRecord
    ident: str
    part: records.BatchPart | None = None
    before: int | None = None  # the source's watermark before the record
    encoded: list[bytes] | None = None
    # Input keyed by trace id: the record forwarded undecoded (``records.encode_forwarded``),
    # or, too large for that, decoded here: its Kafka timestamp (the receiver keeps the
    # source's clock) and how many input partitions its routed partition hears from.
    raw: records.SourceRecord | None = None
    record_ns: int | None = None
    sources: int | None = None


class RouteError(Exception):
    """A source record's routed messages could not be delivered (raised to restart ingest
    from its last commit; ``cause`` is the broker's or producer's error)."""

    def __init__(self, cause: BaseException, record: str) -> None:
        super().__init__(f"{type(cause).__name__}: {cause} (routing {record})")
        self.cause = cause


def failed_send(error: BaseException) -> asyncio.Future[Any]:
    """A send the producer refused before sending, as the failed delivery it amounts to (the
    commit or flush that waits for it sees the failure)."""
    fut = asyncio.get_running_loop().create_future()
    fut.set_exception(error)
    return fut


def transient(error: BaseException) -> bool:
    """A lost connection, a leader change, a timeout: trying again later can succeed."""
    return isinstance(error, KafkaTimeoutError) or bool(getattr(error, "retriable", False))


class RateLimitedLog:
    """At most one log line per reason per ``every_s``; says how many it held back."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = defaultdict(int)

    def warning(self, reason: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.every_s:
            self._held[reason] += 1
            return
        held = self._held.pop(reason, 0)
        self._last[reason] = now
        suffix = f" ({held} more like this since the last report)" if held else ""
        self.logger.warning(msg + suffix, *args, exc_info=exc_info)


def choose_partitions(
    assigned: Iterable[TopicPartition],
    highwater: Mapping[TopicPartition, int | None],
    next_offset: Mapping[TopicPartition, int],
    last_ts: Mapping[TopicPartition, int],
) -> list[TopicPartition]:
    """The input partitions to read next, as Kafka Streams picks the lowest timestamp: per
    topic, those whose last read record is not ``ALIGN_MS`` ahead of the slowest partition that
    still has records waiting; partitions with records waiting but none read yet go first.
    Partitions whose end is unknown (not fetched yet) hold nobody back.

    >>> a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    >>> choose_partitions([a, b], {a: 100, b: 100}, {a: 50, b: 10}, {a: 90_000, b: 20_000})
    [TopicPartition(topic='t', partition=1)]
    >>> choose_partitions([a, b], {a: 100, b: 100}, {a: 50, b: 100}, {a: 90_000, b: 20_000})
    [TopicPartition(topic='t', partition=0), TopicPartition(topic='t', partition=1)]
    """
    by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in sorted(assigned):
        by_topic[tp.topic].append(tp)
    chosen: list[TopicPartition] = []
    for tps in by_topic.values():
        waiting = [tp for tp in tps
                   if highwater.get(tp) is not None and next_offset.get(tp, 0) < highwater[tp]]
        unread = [tp for tp in waiting if tp not in last_ts]
        if unread:  # nothing read from these yet: their first records come first
            chosen += unread
            continue
        if not waiting:
            chosen += tps
            continue
        floor = min(last_ts[tp] for tp in waiting)
        chosen += [tp for tp in tps if last_ts.get(tp, floor) <= floor + ALIGN_MS]
    return chosen


async def read_fairly(consumer: Any, chosen: Sequence[TopicPartition],
                      steps: Mapping[str, int], timeout_ms: int = 500
                      ) -> dict[TopicPartition, list[Any]]:
    """Up to ``steps[topic]`` fetched records of each topic's chosen partitions; waits up to
    ``timeout_ms`` only when none has any. One read of them all would not do: the consumer
    hands out its fetched records partition after partition up to the count asked, so a
    backlog on one topic (a flood of metrics) would leave the other's records (live spans)
    behind for as long as its fetched data lasts (issue 16: spans stalled ~50 s)."""
    by_topic: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in chosen:
        by_topic[tp.topic].append(tp)
    if len(by_topic) <= 1:
        return await consumer.getmany(*chosen, timeout_ms=timeout_ms,
                                      max_records=min(steps.values(), default=MAX_BATCH))
    out: dict[TopicPartition, list[Any]] = {}
    for topic in sorted(by_topic):
        out.update(await consumer.getmany(*by_topic[topic], timeout_ms=0,
                                          max_records=steps[topic]))
    if out:
        return out
    return await consumer.getmany(*chosen, timeout_ms=timeout_ms,
                                  max_records=min(steps.values()))


def forget_unassigned(
    assigned: Collection[TopicPartition], *per_partition: dict[TopicPartition, Any]
) -> None:
    """Drop what is known of partitions no longer assigned (position, last record time, record
    density): one that comes back, after another worker may have read it, starts afresh from
    the consumer's position and is read first again as not read yet (``choose_partitions``).

    >>> a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    >>> positions, times = {a: 5, b: 7}, {b: 1_000}
    >>> forget_unassigned({a}, positions, times)
    >>> positions, times
    ({TopicPartition(topic='t', partition=0): 5}, {})
    """
    for known in per_partition:
        for tp in [tp for tp in known if tp not in assigned]:
            del known[tp]


RESTART_S = 2.0  # ingest restarts from the last commit this long after a failure


class _Handover(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance: before partitions are revoked, finish their work and commit it, so the
    next owner starts where this worker stopped (instead of a failed commit, a restart of
    ingest and a second rebalance)."""

    def __init__(self, ingest: Ingest, consumer: AIOKafkaConsumer) -> None:
        self.ingest, self.consumer = ingest, consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.ingest.assignment_known = False  # until the rebalance assigns partitions again
        if revoked:
            await self.ingest.hand_over(self.consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.ingest.assignment_known = True
        # One line per rebalance: the generation tells how many the group has had.
        generation = getattr(getattr(self.consumer, "_coordinator", None), "generation", None)
        log.info("ingest: group generation %s, %d input partitions assigned", generation,
                 len(assigned))


class Ingest:
    def __init__(
        self, settings: Settings, metrics: PipelineMetrics, routed_topics: dict[str, str]
    ) -> None:
        s = self.settings = settings
        self.metrics = metrics
        self.routed_topics = routed_topics
        self._dlq_log = RateLimitedLog(log)
        self._error_log = RateLimitedLog(log, every_s=30.0)
        # Per input topic: signal, encoding, decoder, partitioner, wire encoder.
        self.by_topic: dict[str, tuple[str, str, Callable[..., otlp.Decoded], Any, Any]] = {
            s.otlp_spans_topic: ("spans", s.otlp_spans_encoding, otlp.decode_spans,
                                 records.span_partition, records.encode_spans),
            s.otlp_metrics_topic: ("metrics", s.otlp_metrics_encoding, otlp.decode_metrics,
                                   records.point_partition, records.encode_points),
        }
        self.producer: AIOKafkaProducer | None = None
        # Input keyed by trace id: span records are forwarded whole (``_forward``).
        self.keyed_spans = s.otlp_spans_keying == "trace_id"
        # Partitions of each input topic, once known: heartbeats tell the detection stage how
        # many sources to wait for.
        self.input_partitions: dict[str, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        # The consumer's assignment is the group's (False while it starts, rejoins or is cut
        # off from the broker: then its empty assignment says nothing about what it owns).
        self.assignment_known = False
        self._next_offset: dict[TopicPartition, int] = {}
        # Event-time progress of each assigned input partition, and since when (processing
        # time) it has been read to its end with nothing new.
        self.clocks: dict[TopicPartition, SourceClock] = {}
        self._quiet_since: dict[TopicPartition, float] = {}
        self._heartbeat_at = 0.0
        # Largest message worth sending to each output topic (its max.message.bytes).
        self.limits: dict[str, int] = {}
        # Failed routing attempts per source record ("topic:partition:offset"), kept across
        # restarts of the consume loop: a record that cannot be routed is dead-lettered, not
        # retried for ever.
        self._attempts: dict[str, int] = {}
        # Routed messages of the read batch, per (routed topic, partition), in order.
        self._outbox: dict[tuple[str, int], list[Outgoing]] = {}
        # Messages in flight and offsets to commit (the consume loop's, also finished by a
        # rebalance); the lock keeps a rebalance from cutting into a read batch's routing.
        self._pending: list[Pending] = []
        self._offsets: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self.handovers = 0  # rebalances that committed revoked partitions' work
        self._failed: BaseException | None = None  # by a hand-over: restart from the commit
        # After a batch message failed for a reason of its own: each record is sent alone until
        # the next commit, so the failure is pinned on the record that causes it.
        self._alone = False
        self._slice = TimeSlice()

    def lag(self) -> dict[str, int]:
        """Records behind the end of each input topic, over this worker's assigned partitions
        (partitions whose end or position is not known yet are left out). Never raises: it is
        read by a timer, possibly while the consumer is being rebalanced or stopped."""
        out: dict[str, int] = {}
        consumer = self._consumer
        if consumer is None:
            return out
        try:
            assigned = list(consumer.assignment())
        except Exception:  # stopping
            return out
        for tp in assigned:
            pos = self._next_offset.get(tp)
            if pos is None:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # revoked since assignment() was read
                continue
            if high is not None:
                out[tp.topic] = out.get(tp.topic, 0) + max(0, high - pos)
        return out

    def lag_reading(self) -> LagReading:
        """``lag()`` with the time of the broker's last fetch answer per input topic, and the
        topics whose last known lag stands meanwhile (``lagview``): every input topic while
        the consumer is restarting or rejoining, else those it has a partition of."""
        consumer = self._consumer
        assigned: list[TopicPartition] | None = None
        if consumer is not None:
            try:
                assigned = list(consumer.assignment())
            except Exception:  # stopping
                assigned = None
        fetched = last_fetched(assigned or (), consumer.last_poll_timestamp) if consumer else {}
        if assigned is None or not self.assignment_known:
            keep: Collection[str] = tuple(self.by_topic)
        else:
            keep = {tp.topic for tp in assigned}
        return LagReading(self.lag(), fetched, keep)

    # -- lifecycle ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until cancelled; Kafka errors are logged and the loop restarts from the
        last commit."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # the worker is stopping
                # A cancellation from inside the Kafka client (a connection closed under a
                # request after a broker outage), not of this task: ingest would end silently
                # and the worker would live on reading nothing.
                self._error_log.warning("cancelled", "ingest: a Kafka client request was "
                                        "cancelled; restarting from the last commit in 2 s")
                await asyncio.sleep(RESTART_S)
            except RouteError as exc:
                self._error_log.warning(
                    "route", "ingest could not deliver routed messages (%s); restarting from "
                    "the last commit in 2 s", exc, exc_info=not transient(exc.cause))
                await asyncio.sleep(RESTART_S)
            except KafkaError as exc:
                self._error_log.warning(
                    "kafka", "ingest: Kafka error (%s: %s); restarting from the last commit "
                    "in 2 s", type(exc).__name__, exc)
                await asyncio.sleep(RESTART_S)
            except Exception as exc:  # never leave ingest stopped while the worker lives on
                self._error_log.warning(
                    "other", "ingest failed (%s: %s); restarting from the last commit in 2 s",
                    type(exc).__name__, exc, exc_info=True)
                await asyncio.sleep(RESTART_S)

    async def _run_once(self) -> None:
        s = self.settings
        kwargs = s.aiokafka_kwargs()
        # Reading restarts from the last commit: the clocks restart with it (records read
        # since, and counted in the clocks, are read again).
        self.clocks.clear()
        self._quiet_since.clear()
        self._outbox.clear()
        await topics.ensure_topics(s)  # again after a lost connection: cheap, idempotent
        consumer = AIOKafkaConsumer(
            group_id=f"{s.pipeline_app_id}-ingest",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=topics.FETCH_BYTES_PER_PARTITION,
            fetch_max_bytes=max(50 * 1024 * 1024, s.max_record_bytes + 1024 * 1024),
            session_timeout_ms=int(s.kafka_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.kafka_session_timeout_s * 100),
            metadata_max_age_ms=30_000,
            **kwargs,
        )
        producer = self.producer = AIOKafkaProducer(
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=s.max_record_bytes + 1024 * 1024,
            acks="all",
            **kwargs,
        )
        try:  # stopped in finally even when the broker is still down: none left per retry
            await producer.start()
            consumer.subscribe(list(self.by_topic), listener=_Handover(self, consumer))
            await consumer.start()
            for topic in self.by_topic:
                if n := len(consumer.partitions_for_topic(topic) or ()):
                    self.input_partitions[topic] = n
            self.limits = await topics.message_limits(
                s, [*self.routed_topics.values(), s.deadletter_topic])
            last_ts: dict[TopicPartition, int] = {}
            next_offset: dict[TopicPartition, int] = {}
            self._consumer, self._next_offset = consumer, next_offset
            waiting_since: float | None = None  # when the chosen partitions last returned nothing
            per_ms: dict[TopicPartition, float] = {}
            pending, offsets = self._pending, self._offsets
            pending.clear()
            offsets.clear()
            since_commit, committed_at = 0, time.monotonic()
            while True:
                assigned = consumer.assignment()
                # A partition revoked (and maybe read by another worker since) must not keep
                # its old position: lag() and choose_partitions would use it until it is read.
                forget_unassigned(assigned, next_offset, last_ts, per_ms, self.clocks,
                                  self._quiet_since)
                high = {tp: consumer.highwater(tp) for tp in assigned}
                for tp in assigned:
                    if tp not in next_offset and high[tp] is not None:
                        next_offset[tp] = await consumer.position(tp)
                await self._heartbeats(assigned, high, next_offset)
                chosen = (
                    list(assigned)
                    if waiting_since is not None and time.monotonic() - waiting_since > STARVE_S
                    else choose_partitions(assigned, high, next_offset, last_ts)
                )
                # Read about ALIGN_MS of event time per step: partitions not read yet (or of
                # unknown end) a few records at a time, so that every one has been seen before
                # any runs far ahead (the watermark's idle rule would give up on them), the
                # others by their records' observed density (a few per step for metric batches
                # seconds apart, up to MAX_BATCH for dense span records).
                steps: dict[str, int] = {}
                for tp in chosen:
                    step = steps.get(tp.topic, MAX_BATCH)
                    if tp not in last_ts and (high.get(tp) is None
                                              or next_offset.get(tp, 0) < high[tp]):
                        step = FIRST_READ
                    elif tp in per_ms:
                        step = min(step, max(FIRST_READ, int(per_ms[tp] * ALIGN_MS)))
                    steps[tp.topic] = step
                batches = await read_fairly(consumer, chosen, steps)
                # Nothing from the chosen ones for STARVE_S of processing time (a partition
                # that cannot be fetched now): read every partition rather than wait on it.
                if batches or len(chosen) == len(assigned):
                    waiting_since = None
                elif waiting_since is None:
                    waiting_since = time.monotonic()
                async with self._lock:
                    if self._failed is not None:  # nothing after the last commit is safe
                        failed, self._failed = self._failed, None
                        raise failed
                    if not batches:
                        if pending:
                            await self._commit(consumer, pending, offsets)
                        continue
                    # Records of partitions revoked since the read are the new owner's now.
                    assigned = consumer.assignment()
                    for tp, recs in batches.items():
                        if tp not in assigned:
                            continue
                        self._quiet_since.pop(tp, None)
                        for rec in recs:
                            await self._ingest(rec, pending)
                            if self._alone:
                                await self._send_outbox(pending)
                            await self._slice.pause()  # a long batch lets detection run
                        offsets[tp] = next_offset[tp] = recs[-1].offset + 1
                        span_ms = recs[-1].timestamp - (last_ts.get(tp) or recs[0].timestamp)
                        if span_ms > 0:  # records per millisecond of record time
                            per_ms[tp] = len(recs) / span_ms
                        last_ts[tp] = recs[-1].timestamp
                        since_commit += len(recs)
                    # Before the next heartbeat, which states the clocks these records moved.
                    await self._send_outbox(pending)
                    # Small reads, batched commits: every MAX_BATCH records or COMMIT_S.
                    if since_commit >= MAX_BATCH or time.monotonic() - committed_at >= COMMIT_S:
                        await self._commit(consumer, pending, offsets)
                        since_commit, committed_at = 0, time.monotonic()
        finally:
            self._consumer, self.assignment_known = None, False
            for stopped in await asyncio.gather(consumer.stop(), producer.stop(),
                                                return_exceptions=True):
                if isinstance(stopped, Exception):
                    log.debug("ingest: stopping a Kafka client failed: %r", stopped)

    async def _commit(self, consumer: AIOKafkaConsumer, pending: list[Pending],
                      offsets: dict[TopicPartition, int]) -> None:
        """Commit only what the broker has acknowledged (routed and dead letters).

        A record whose messages failed for a reason of its own (over the broker's size limit,
        invalid) is dead-lettered as ``unroutable`` with that reason, and the batch commits; a
        lost connection or timeout restarts ingest from the last commit (nothing is lost); any
        other failure does too, until the same record has failed ``MAX_ROUTE_ATTEMPTS`` times,
        when it is dead-lettered: no record can stop ingest."""
        results = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        failed: dict[str, tuple[ConsumerRecord, BaseException]] = {}
        delivered: set[str] = set()  # records with at least one message the broker took
        shared: BaseException | None = None  # a failed message of several records
        for p, result in zip(pending, results, strict=True):
            for rec, ident in p.records:
                if isinstance(result, BaseException):
                    failed.setdefault(ident, (rec, result))
                else:
                    delivered.add(ident)
            if (isinstance(result, BaseException) and len(p.records) > 1
                    and not transient(result)):
                shared = result
        if shared is not None:
            # Which of the records is to blame is not known: send each alone from the last
            # commit, where a failure counts against its own record.
            pending.clear()
            self._alone = True
            first = next(iter(failed.values()))[0]
            raise RouteError(shared, f"a batch from {first.topic}[{first.partition}]@"
                                     f"{first.offset}")
        for ident in delivered - failed.keys():
            self._attempts.pop(ident, None)  # delivered whole: earlier failures forgiven
        pending.clear()
        if failed:
            retry: tuple[ConsumerRecord, BaseException] | None = None
            for ident, (rec, error) in failed.items():
                action, count = route_decision(error, self._attempts.get(ident, 0))
                if count:
                    self._attempts[ident] = count
                    while len(self._attempts) > MAX_TRACKED_FAILURES:
                        del self._attempts[next(iter(self._attempts))]
                if action == "retry":
                    retry = retry or (rec, error)
            if retry is not None:
                raise RouteError(retry[1], f"{retry[0].topic}[{retry[0].partition}]@"
                                           f"{retry[0].offset}")
            for ident, (rec, error) in failed.items():
                await self._dead_letter(rec, error, "unroutable", pending,
                                        partial=ident in delivered)
                self._attempts.pop(ident, None)
            results = await asyncio.gather(*(p.future for p in pending),
                                           return_exceptions=True)
            pending.clear()
            for result in results:
                if isinstance(result, BaseException):  # a dead letter the broker refused
                    raise RouteError(result, "a dead letter")
        self._alone = False
        assigned = consumer.assignment()
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        offsets.clear()  # a revoked partition's offset is its new owner's to commit
        if mine:
            try:
                await consumer.commit(mine)
            except CommitFailedError as exc:
                # The group is rebalancing: these records were routed and are read again by
                # whoever owns their partitions next (the detection stage skips them).
                log.info("ingest: offsets not committed during a rebalance (%s); the records "
                         "since the last commit are read again, and applied once", exc)

    async def hand_over(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Before ``revoked`` go to another worker: send what was read, wait until the
        broker has it, and commit (called by the rebalance listener)."""
        async with self._lock:
            try:
                await self._send_outbox(self._pending)
                await self._commit(consumer, self._pending, self._offsets)
                self.handovers += 1
                log.info("ingest: handed over %d input partitions, their work committed",
                         len(revoked))
            except Exception as exc:  # the rebalance goes on; ingest restarts after it
                self._pending.clear()
                self._offsets.clear()
                self._failed = exc if isinstance(exc, RouteError | KafkaError) else RouteError(
                    exc, "the work of revoked partitions")
                log.warning("ingest: could not finish the work of revoked partitions (%s: %s); "
                            "restarting from the last commit", type(exc).__name__, exc)

    # -- heartbeats ---------------------------------------------------------------------------
    def marks(self, assigned: Iterable[TopicPartition], high: Mapping[TopicPartition, int | None],
              next_offset: Mapping[TopicPartition, int], now: float) -> dict[str, list[Mark]]:
        """Each signal's marks: for every assigned input partition, its watermark and how long
        it has been idle (read to its end with nothing new; 0 while records are waiting)."""
        out: dict[str, list[Mark]] = {}
        idle_after = self.settings.source_idle_s
        for tp in sorted(assigned):
            signal = self.by_topic[tp.topic][0]
            h, pos = high.get(tp), next_offset.get(tp)
            if h is not None and pos is not None and pos >= h:
                idle = now - self._quiet_since.setdefault(tp, now)
            else:
                self._quiet_since.pop(tp, None)
                idle = 0.0
            clock = self._clock(tp)
            if idle >= idle_after:
                clock.release()
            out.setdefault(signal, []).append(Mark(tp.topic, tp.partition, clock.watermark_ns,
                                                   idle))
        return out

    async def _heartbeats(self, assigned: Iterable[TopicPartition],
                          high: Mapping[TopicPartition, int | None],
                          next_offset: Mapping[TopicPartition, int]) -> None:
        """Every ``HEARTBEAT_S``, send every routed partition the marks of the input partitions
        this worker reads (not awaited: a lost heartbeat is replaced by the next)."""
        now = time.monotonic()
        if now - self._heartbeat_at < HEARTBEAT_S:
            return
        self._heartbeat_at = now
        assert self.producer is not None
        parts = self.settings.pipeline_partitions
        for signal, marks in self.marks(assigned, high, next_offset, now).items():
            topic = marks[0].topic
            name = self.routed_topics[signal]
            if signal == "spans" and self.keyed_spans:
                # Each input partition is heard from by its own routed partition only; the
                # mark says how long it has been idle (that partition keeps its clock).
                by_dest: dict[int, list[Mark]] = defaultdict(list)
                for mark in marks:
                    by_dest[mark.partition % parts].append(mark)
                for p, mine in sorted(by_dest.items()):
                    forget(await self.producer.send(
                        name, records.encode_heartbeat(mine, self._keyed_counts(topic, p)),
                        partition=p))
                continue
            # The partition count, once known (this worker may read only some of them).
            n = self.input_partitions.get(topic, 0)
            value = records.encode_heartbeat(marks, {topic: n} if n else {})
            for p in range(parts):
                forget(await self.producer.send(name, value, partition=p))

    def _clock(self, tp: TopicPartition) -> SourceClock:
        clock = self.clocks.get(tp)
        if clock is None:
            clock = self.clocks[tp] = SourceClock.from_settings(self.settings)
        return clock

    # -- one record ---------------------------------------------------------------------------
    async def _ingest(self, rec: ConsumerRecord, pending: list[Pending]) -> None:
        started = time.perf_counter()
        s, m = self.settings, self.metrics
        signal, encoding, decode, partition_of, encode = self.by_topic[rec.topic]
        m.records_consumed.labels(rec.topic).inc()
        ident = f"{rec.topic}:{rec.partition}:{rec.offset}"
        if self._attempts.get(ident, 0) >= MAX_ROUTE_ATTEMPTS:
            # It failed every time: dead-letter it instead (this happens after a restart that
            # the last failure caused, when the record is read again).
            self._attempts.pop(ident, None)
            await self._dead_letter(rec, RuntimeError(
                f"its routed messages failed {MAX_ROUTE_ATTEMPTS} times"), "unroutable", pending)
            return
        keyed = self.keyed_spans and signal == "spans"
        if keyed and self._forward(rec, ident):
            m.processing.labels(f"ingest_{signal}").observe(time.perf_counter() - started)
            return
        record_ns = rec.timestamp * 1_000_000 if rec.timestamp and rec.timestamp > 0 else None
        limits = otlp.Limits(
            max_record_bytes=s.max_record_bytes,
            max_future_skew_ns=int(s.max_future_skew_s * 1e9),
            reference_time_ns=record_ns,
        )
        try:
            decoded = decode(rec.value, encoding, limits)
        except otlp.DecodeError as exc:
            await self._dead_letter(rec, exc, exc.reason, pending)
            return
        except Exception as exc:  # a decoder bug must not stop the worker or lose the record
            log.exception("unexpected error decoding %s[%d]@%d", rec.topic, rec.partition,
                          rec.offset)
            await self._dead_letter(rec, exc, "internal_error", pending)
            return
        if decoded.rejected:
            err = decoded.first_error
            assert err is not None
            await self._dead_letter(rec, err, err.reason, pending, rejected=decoded.rejected)
        for reason, n in decoded.dropped.items():
            m.items_dropped.labels(signal, reason).inc(n)
        items = decoded.items
        m.items_decoded.labels(signal).inc(len(items))
        if items and keyed:  # too large to forward: decoded here, alone to the same partition
            name = self.routed_topics[signal]
            dest = rec.partition % s.pipeline_partitions
            out = Outgoing(rec, ident, part=(items, (rec.topic, rec.partition, rec.offset, 0),
                                             None), record_ns=record_ns,
                           sources=records.keyed_sources(
                               self.input_partitions.get(rec.topic, 0), s.pipeline_partitions,
                               dest))
            try:
                out.encoded = self._chunks(name, out)
            except records.TooLarge as exc:
                await self._dead_letter(rec, exc, "unroutable", pending)
                return
            self._outbox.setdefault((name, dest), []).append(out)
        elif items:
            tp = TopicPartition(rec.topic, rec.partition)
            clock = self._clock(tp)
            counts, wm_before = dict(clock.counts), clock.watermark_ns
            clock.observe((it.event_time_ns for it in items), record_ns)
            for reason, n in clock.counts.items():
                if n != counts[reason]:
                    m.clock_adjustments.labels(rec.topic, reason).inc(n - counts[reason])
            wm_after = clock.watermark_ns
            parts = s.pipeline_partitions
            name = self.routed_topics[signal]
            groups: dict[int, list[Any]] = defaultdict(list)
            for item in items:
                groups[partition_of(item, parts)].append(item)
            outs = [(p, Outgoing(rec, ident, part=(group, (rec.topic, rec.partition, rec.offset,
                                                            0), wm_after), before=wm_before))
                    for p, group in sorted(groups.items())]
            if len(rec.value) > ALONE_FRACTION * self._limit(name):
                # Routed alone, in chunks; nothing of it goes if one item cannot.
                try:
                    for _, out in outs:
                        out.encoded = self._chunks(name, out)
                except records.TooLarge as exc:
                    await self._dead_letter(rec, exc, "unroutable", pending)
                    return
                except Exception as exc:  # e.g. a JSON value the wire form cannot carry
                    log.exception("cannot route %s[%d]@%d", rec.topic, rec.partition,
                                  rec.offset)
                    await self._dead_letter(rec, exc, "internal_error", pending)
                    return
            for p, out in outs:
                self._outbox.setdefault((name, p), []).append(out)
        m.processing.labels(f"ingest_{signal}").observe(time.perf_counter() - started)

    def _keyed_counts(self, topic: str, dest: int) -> dict[str, int]:
        """The input partitions routed partition ``dest`` hears from, input keyed by trace id,
        as a message states them (none while the topic's partition count is not known)."""
        return records.keyed_counts(topic, self.input_partitions.get(topic, 0),
                                    self.settings.pipeline_partitions, dest)

    def _forward(self, rec: ConsumerRecord, ident: str) -> bool:
        """Input keyed by trace id: queue the span record whole and undecoded for routed
        partition ``input partition % PIPELINE_PARTITIONS`` (its partition holds whole traces,
        so nothing is regrouped); the span stage decodes it, and dead-letters it if it must.
        False if it would not fit in a routed message (then it is decoded here)."""
        name = self.routed_topics["spans"]
        headers = list(rec.headers or ())
        # An upper bound of its share of the message: the value, and base64 key and headers
        # in a JSON header.
        size = (len(rec.value or b"") + 2 * len(rec.key or b"") + len(rec.topic) + 128
                + sum(len(k) + 2 * len(v or b"") + 16 for k, v in headers))
        limit = self._limit(name)
        if size > limit:
            return False
        src = records.SourceRecord(
            rec.topic, rec.partition, rec.offset,
            rec.timestamp if rec.timestamp and rec.timestamp > 0 else None,
            rec.value, rec.key, [(k, v or b"") for k, v in headers])
        dest = rec.partition % self.settings.pipeline_partitions
        out = Outgoing(rec, ident, raw=src)
        if size > ALONE_FRACTION * limit:  # goes alone, as a large record does
            out.encoded = [records.encode_forwarded([src], self._keyed_counts(rec.topic, dest))]
        self._outbox.setdefault((name, dest), []).append(out)
        return True

    def _limit(self, topic: str) -> int:
        return self.limits.get(topic, topics.DEFAULT_MESSAGE_BYTES - topics.FRAMING_BYTES)

    def _chunks(self, name: str, out: Outgoing) -> list[bytes]:
        """One record's items for one partition as messages of its own (chunked under the
        limit; the chunks before the last state the watermark from before the record). Raises
        ``records.TooLarge`` if one item alone is over."""
        assert out.part is not None
        items, src, wm = out.part
        encode = self.by_topic[src[0]][4]
        keyed = out.sources is not None  # input keyed by trace id: the receiver keeps the clock
        n = (out.sources if keyed else self.input_partitions.get(src[0])) or None
        return records.split_encode(
            items, lambda xs, chunk, final: encode(
                xs, (src[0], src[1], src[2], chunk), wm if final else out.before, n,
                **({"record_ns": out.record_ns, "partial": not final} if keyed else {})),
            self._limit(name))

    async def _send_outbox(self, pending: list[Pending]) -> None:
        """Send the read batch's routed messages: per routed partition, the records' items in
        order, as few messages as fit under the topic's limit (``records.encode_batch``)."""
        outbox, self._outbox = self._outbox, {}
        for (name, p), outgoing in sorted(outbox.items()):
            run: list[Outgoing] = []
            for out in outgoing:
                if out.encoded is None:
                    run.append(out)
                    continue
                await self._send_parts(name, p, run, pending)
                run = []
                for payload in out.encoded:
                    await self._send(name, p, payload, [(out.record, out.ident)], pending)
            await self._send_parts(name, p, run, pending)

    async def _send_parts(self, name: str, p: int, run: list[Outgoing],
                          pending: list[Pending]) -> None:
        """``run`` as one batch message, or halves of it while over the limit (or while it
        cannot be encoded); a record alone over the limit is split into chunks, and
        dead-lettered if one item cannot fit or it cannot be encoded."""
        todo = [run] if run else []
        while todo:
            group = todo.pop(0)
            try:
                payload: bytes | None
                if group[0].raw is not None:  # forwarded records (input keyed by trace id)
                    payload = records.encode_forwarded(
                        [o.raw for o in group if o.raw], self._keyed_counts(group[0].raw.topic, p))
                else:
                    payload = records.encode_batch(
                        [o.part for o in group if o.part], self.input_partitions)
            except Exception as exc:  # e.g. a JSON value the wire form cannot carry
                payload, error = None, exc
            if payload is not None and len(payload) <= self._limit(name):
                await self._send(name, p, payload, [(o.record, o.ident) for o in group],
                                 pending)
            elif len(group) > 1:
                half = len(group) // 2
                todo[:0] = [group[:half], group[half:]]
            elif payload is None:
                log.error("cannot route %s: %s", group[0].ident, error, exc_info=error)
                await self._dead_letter(group[0].record, error, "internal_error", pending,
                                        partial=True)
            elif group[0].raw is not None:  # (``_forward`` keeps them under the limit)
                await self._dead_letter(group[0].record, records.TooLarge(
                    f"forwarded, it makes a {len(payload)}-byte message"), "unroutable",
                    pending, partial=True)
            else:
                try:
                    chunks = self._chunks(name, group[0])
                except records.TooLarge as exc:
                    await self._dead_letter(group[0].record, exc, "unroutable", pending,
                                            partial=True)
                    continue
                for chunk in chunks:
                    await self._send(name, p, chunk, [(group[0].record, group[0].ident)],
                                     pending)

    async def _send(self, name: str, p: int, payload: bytes,
                    recs: list[tuple[ConsumerRecord, str]], pending: list[Pending]) -> None:
        assert self.producer is not None
        try:
            fut = await self.producer.send(name, payload, partition=p)
        except KafkaError as exc:  # refused before sending (over max_request_size)
            fut = failed_send(exc)
        pending.append(Pending(fut, recs))

    async def _dead_letter(
        self, rec: ConsumerRecord, error: BaseException, reason: str,
        pending: list[Pending], rejected: int | None = None, partial: bool = False,
    ) -> None:
        limit = self.limits.get(self.settings.deadletter_topic,
                                topics.DEFAULT_MESSAGE_BYTES - topics.FRAMING_BYTES)
        dl = dead_letter(
            key=rec.key, value=rec.value, headers=list(rec.headers or ()), topic=rec.topic,
            partition=rec.partition, offset=rec.offset,
            timestamp_ms=rec.timestamp if rec.timestamp and rec.timestamp > 0 else None,
            error=error, reason=reason, rejected_items=rejected, max_value_bytes=limit,
            partial=partial,
        )
        assert self.producer is not None
        fut = await self.producer.send(
            self.settings.deadletter_topic, dl.value, key=dl.key, headers=dl.headers,
        )
        pending.append(Pending(fut, [(rec, f"dlq:{rec.topic}:{rec.partition}:{rec.offset}")]))
        self.metrics.decode_errors.labels(rec.topic, reason).inc()
        self.metrics.deadletters.labels(rec.topic, reason).inc()
        what = f"{rejected} items of " if rejected else ""
        self._dlq_log.warning(
            reason, "dead-lettered %srecord %s[%d]@%d: %s: %s", what, rec.topic, rec.partition,
            rec.offset, reason, error,
        )


def route_decision(error: BaseException, failures: int) -> tuple[str, int]:
    """What to do with a source record whose routed message failed with ``error``, after
    ``failures`` earlier failures that were neither transient nor permanent: ``("retry", n)``
    or ``("dead_letter", n)``, ``n`` the failures counted so far.

    A lost connection, a leader change or a timeout is retried without counting (an outage
    must not turn good records into dead letters); an error about the message itself is
    dead-lettered at once; anything else is retried until it has failed
    ``MAX_ROUTE_ATTEMPTS`` times."""
    if transient(error):
        return "retry", failures
    if permanent(error):
        return "dead_letter", failures
    failures += 1
    return ("dead_letter" if failures >= MAX_ROUTE_ATTEMPTS else "retry"), failures


def permanent(error: BaseException) -> bool:
    """An error about the message itself (too large, invalid): sending it again fails again."""
    return isinstance(error, SIZE_ERRORS)
