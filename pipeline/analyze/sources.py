"""Where ``analyze`` reads telemetry: a time range of the input topics, or files the
OpenTelemetry Collector's file exporter wrote. I/O only; never writes anywhere.

**Files** (``read_files``), as the Collector's ``file`` exporter writes them
(opentelemetry-collector-contrib ``exporter/fileexporter``: ``file_writer.go``):

- ``format: json`` (its default): one OTLP/JSON ``ExportTraceServiceRequest`` or
  ``ExportMetricsServiceRequest`` per line (``{"resourceSpans": ...}``), as the OTLP file
  exporter specification's JSON lines;
- ``format: proto``: each request as protobuf bytes preceded by its length, a 4-byte big-endian
  unsigned integer;
- a file compressed as a whole with gzip is read as is; ``compression: zstd`` is not (no zstd
  decoder here): the error says to decompress it first.

One exporter in several pipelines writes traces and metrics to the same file, so each request's
signal is found from its content. Files are merged in event time (each request's newest item),
as a Collector writes them in about that order.

**Kafka** (``KafkaRange``): the input topics' records whose timestamps fall in the range, found
with ``offsets_for_times``, up to the end offsets seen at the start, read by a consumer with no
group (manual assignment, nothing committed: no consumer group's offsets are touched), merged
across partitions by timestamp so that event time moves as it does for the worker.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pipeline import otlp

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
_LEN = struct.Struct(">I")
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a longer "length" means the file is not this format


class SourceError(Exception):
    """The input cannot be read: the message says why and what to do."""


@dataclass(slots=True)
class InputRecord:
    """One export request: which signal, its bytes and encoding, its time (ms: the Kafka
    timestamp, or a file request's newest item) and where it came from."""

    signal: str  # "spans" | "metrics"
    value: bytes | None
    encoding: str
    timestamp_ms: int | None
    partition: int = 0
    offset: int = 0
    size: int = 0  # bytes of input it took (progress)


@dataclass
class FileStats:
    requests: int = 0
    skipped_out_of_range: int = 0
    empty: int = 0
    unreadable: dict[str, int] = field(default_factory=dict)  # reason -> requests


def _open(path: Path) -> BinaryIO:
    f = path.open("rb")
    head = f.read(4)
    f.seek(0)
    if head[:2] == GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return f


def _zstd_error(path: Path) -> SourceError:
    return SourceError(
        f"{path} is compressed with zstd (the file exporter's `compression: zstd`), which this "
        f"command cannot decompress: decompress it first (`zstd -d {path}` for a file "
        "compressed whole), or export with no compression")


def read_messages(path: Path) -> Iterator[tuple[str, bytes, int]]:
    """(encoding, request bytes, bytes of file taken) for each request of a file-exporter file.
    """
    with _open(path) as f:
        head = f.read(8)
        f.seek(0)
        if head[:4] == ZSTD_MAGIC or head[4:8] == ZSTD_MAGIC:
            raise _zstd_error(path)
        if head.lstrip()[:1] in (b"{", b""):
            for line in f:
                text = line.strip()
                if text:
                    yield otlp.OTLP_JSON, text, len(line)
            return
        pos = 0
        while True:
            prefix = f.read(4)
            if not prefix:
                return
            if len(prefix) < 4:
                raise SourceError(f"{path}: truncated at byte {pos} (a length prefix cut short)")
            (n,) = _LEN.unpack(prefix)
            if n > MAX_MESSAGE_BYTES:
                raise SourceError(
                    f"{path}: at byte {pos} a message of {n:,} bytes: not a Collector file "
                    "exporter file (JSON lines, or `format: proto`: 4-byte big-endian length "
                    "then an OTLP export request)")
            data = f.read(n)
            if len(data) < n:
                raise SourceError(f"{path}: truncated at byte {pos} (message of {n} bytes, "
                                  f"{len(data)} left)")
            if data[:4] == ZSTD_MAGIC:
                raise _zstd_error(path)
            yield otlp.OTLP_PROTO, data, 4 + n
            pos += 4 + n


def classify(value: bytes, encoding: str) -> tuple[str, int, int] | str:
    """The signal of one request and its items' event-time range (ns), or why it is
    unreadable (a dead-letter reason; ``"empty"`` for a request with no items)."""
    reason = "empty"
    rejected = False
    for signal, decode in (("spans", otlp.decode_spans), ("metrics", otlp.decode_metrics)):
        try:
            out = decode(value, encoding)
        except otlp.DecodeError as exc:
            if exc.reason != "wrong_signal" and reason == "empty":
                reason = exc.reason
            continue
        if out.items:
            times = [it.event_time_ns for it in out.items]
            return signal, min(times), max(times)
        if out.rejected and not rejected:  # (a metrics request read as spans has bad ids)
            rejected = True
            assert out.first_error is not None
            reason = out.first_error.reason
    return reason


def read_files(paths: Iterable[Path], from_ns: int | None, to_ns: int | None,
               stats: FileStats) -> Iterator[InputRecord]:
    """The requests of ``paths`` that have items in ``[from_ns, to_ns)``, merged by time."""

    def one(path: Path) -> Iterator[InputRecord]:
        for encoding, value, size in read_messages(path):
            stats.requests += 1
            got = classify(value, encoding)
            if isinstance(got, str):
                if got == "empty":
                    stats.empty += 1
                else:
                    stats.unreadable[got] = stats.unreadable.get(got, 0) + 1
                continue
            signal, lo, hi = got
            if (from_ns is not None and hi < from_ns) or (to_ns is not None and lo >= to_ns):
                stats.skipped_out_of_range += 1
                continue
            yield InputRecord(signal, value, encoding, hi // 1_000_000, size=size)

    return heapq.merge(*(one(Path(p)) for p in paths), key=lambda r: r.timestamp_ms or 0)


class KafkaRange:
    """The records of ``topics`` (topic -> signal) with timestamps in ``[from_ms, to_ms)``.

    ``open`` plans each partition's offsets (``planned`` records in all; ``finished`` holds the
    partitions with nothing more to read, from the start for those with nothing in range);
    ``records`` yields them merged by timestamp. Reads only: no group, no commits."""

    def __init__(self, client_kwargs: dict[str, Any], topics: dict[str, str],
                 from_ms: int | None, to_ms: int | None, stall_s: float = 60.0) -> None:
        self.kwargs, self.topics = client_kwargs, topics
        self.from_ms, self.to_ms, self.stall_s = from_ms, to_ms, stall_s
        self.partitions: dict[str, int] = {}
        self.start: dict[Any, int] = {}
        self.stop: dict[Any, int] = {}
        self.finished: set[tuple[str, int]] = set()
        self.skipped_out_of_range = 0
        self._consumer: Any = None

    @property
    def planned(self) -> int:
        return sum(self.stop[tp] - self.start[tp] for tp in self.stop)

    async def open(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.structs import TopicPartition

        c = self._consumer = AIOKafkaConsumer(
            **self.kwargs, group_id=None, enable_auto_commit=False,
            client_id="otel-anomaly-analyze", metadata_max_age_ms=5000)
        await c.start()
        tps = []
        # (``topics()`` returns names without updating the client's metadata: ask it directly)
        await c._client.force_metadata_update()
        for topic in self.topics:
            parts = c.partitions_for_topic(topic)
            if not parts:
                raise SourceError(f"topic {topic!r} does not exist on the broker (set "
                                  "OTLP_SPANS_TOPIC / OTLP_METRICS_TOPIC to your input topics)")
            self.partitions[topic] = len(parts)
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        first = await c.beginning_offsets(tps)
        ends = await c.end_offsets(tps)
        starts = (await c.offsets_for_times({tp: self.from_ms for tp in tps})
                  if self.from_ms is not None else {})
        stops = (await c.offsets_for_times({tp: self.to_ms for tp in tps})
                 if self.to_ms is not None else {})
        for tp in tps:
            if self.from_ms is None:
                lo = first[tp]
            else:
                lo = starts[tp].offset if starts.get(tp) is not None else ends[tp]
            hi = stops[tp].offset if stops.get(tp) is not None else ends[tp]
            hi = min(hi, ends[tp])
            self.start[tp], self.stop[tp] = lo, max(lo, hi)
            if hi <= lo:
                self.finished.add((tp.topic, tp.partition))
        active = [tp for tp in tps if self.stop[tp] > self.start[tp]]
        c.assign(active)
        for tp in active:
            c.seek(tp, self.start[tp])

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def _in_range(self, ts: int) -> bool:
        return (self.from_ms is None or ts >= self.from_ms) and (
            self.to_ms is None or ts < self.to_ms)

    async def records(self) -> AsyncIterator[tuple[str, InputRecord]]:
        """(topic, record) in timestamp order across partitions."""
        c = self._consumer
        active = {tp for tp in self.stop if (tp.topic, tp.partition) not in self.finished}
        buffers: dict[Any, deque[Any]] = {tp: deque() for tp in active}
        while True:
            quiet_since = time.monotonic()
            while True:
                for tp in [tp for tp in active if not buffers[tp]]:
                    if await c.position(tp) >= self.stop[tp]:
                        active.discard(tp)
                        self.finished.add((tp.topic, tp.partition))
                need = [tp for tp in active if not buffers[tp]]
                if not need:
                    break
                batch = await c.getmany(*need, timeout_ms=500, max_records=10_000)
                for tp, recs in batch.items():
                    buffers[tp].extend(r for r in recs if r.offset < self.stop[tp])
                if any(batch.values()):
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > self.stall_s:
                    left = ", ".join(f"{tp.topic}[{tp.partition}] at {await c.position(tp)} "
                                     f"of {self.stop[tp]}" for tp in need)
                    raise SourceError(f"no records for {self.stall_s:.0f} s while reading "
                                      f"{left}: is the broker reachable?")
                await asyncio.sleep(0)
            ready = [tp for tp in buffers if buffers[tp]]
            if not ready:
                return
            tp = min(ready, key=lambda tp: (buffers[tp][0].timestamp, tp.topic, tp.partition))
            r = buffers[tp].popleft()
            if not self._in_range(r.timestamp):
                self.skipped_out_of_range += 1
                continue
            yield tp.topic, InputRecord(
                self.topics[tp.topic], r.value, "", r.timestamp, tp.partition, r.offset,
                len(r.value or b""))
