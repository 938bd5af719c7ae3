"""Dead-letter records: the original key and value untouched, headers saying where and why.

Header names follow the ``dlq.*`` pattern (Kafka Connect's dead-letter queue uses the same idea
under ``__connect.errors.*``). Original headers are kept after ours.

A value too large for the dead-letter topic (a 20 MB record rejected as ``record_too_large``)
cannot be written whole: the dead letter carries its first ``max_value_bytes`` and says so, with
the original size and SHA-256 (``dlq.value.*`` headers), so the record can be found and checked
at its source offset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

HEADER_TOPIC = "dlq.source.topic"
HEADER_PARTITION = "dlq.source.partition"
HEADER_OFFSET = "dlq.source.offset"
HEADER_TIMESTAMP = "dlq.source.timestamp"
HEADER_ERROR_CLASS = "dlq.error.class"
HEADER_ERROR_REASON = "dlq.error.reason"
HEADER_ERROR_MESSAGE = "dlq.error.message"
HEADER_PARTIAL = "dlq.partial"  # "true": valid items of the record were processed
HEADER_REJECTED = "dlq.rejected.items"
HEADER_TRUNCATED = "dlq.value.truncated"  # "true": the value is a prefix of the original
HEADER_SIZE = "dlq.value.size"  # the original value's size in bytes
HEADER_SHA256 = "dlq.value.sha256"  # hex SHA-256 of the original value
MAX_MESSAGE_CHARS = 1000
#: What a dead letter keeps of a value too large for the dead-letter topic.
PREFIX_BYTES = 64 * 1024


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes | None]] | None,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    error: BaseException,
    reason: str,
    rejected_items: int | None = None,
    max_value_bytes: int | None = None,
    partial: bool = False,
) -> DeadLetter:
    """Build the dead-letter record for a source record that failed with ``error``; a value
    over ``max_value_bytes`` is cut to ``PREFIX_BYTES`` (size and checksum in headers).

    >>> dl = dead_letter(key=None, value=b"x" * 100, headers=None, topic="t", partition=0,
    ...                  offset=7, timestamp_ms=None, error=ValueError("big"),
    ...                  reason="record_too_large", max_value_bytes=50)
    >>> len(dl.value), dict(dl.headers)["dlq.value.size"], dict(dl.headers)["dlq.value.truncated"]
    (50, b'100', b'true')
    """
    ours = [
        (HEADER_TOPIC, topic.encode()),
        (HEADER_PARTITION, str(partition).encode()),
        (HEADER_OFFSET, str(offset).encode()),
        (HEADER_ERROR_CLASS, type(error).__name__.encode()),
        (HEADER_ERROR_REASON, reason.encode()),
        (HEADER_ERROR_MESSAGE, str(error)[:MAX_MESSAGE_CHARS].encode()),
    ]
    if timestamp_ms is not None:
        ours.append((HEADER_TIMESTAMP, str(timestamp_ms).encode()))
    if rejected_items is not None:
        ours += [(HEADER_PARTIAL, b"true"), (HEADER_REJECTED, str(rejected_items).encode())]
    elif partial:  # some of its routed messages may have been delivered and processed
        ours.append((HEADER_PARTIAL, b"true"))
    if value is not None and max_value_bytes is not None and len(value) > max_value_bytes:
        ours += [
            (HEADER_TRUNCATED, b"true"),
            (HEADER_SIZE, str(len(value)).encode()),
            (HEADER_SHA256, hashlib.sha256(value).hexdigest().encode()),
        ]
        value = value[:min(PREFIX_BYTES, max_value_bytes)]
    original = [
        (k, v if v is None or isinstance(v, bytes) else str(v).encode()) for k, v in headers or ()
    ]
    return DeadLetter(key=key, value=value, headers=ours + original)
