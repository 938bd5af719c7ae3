"""Dead-letter records: the original key and value untouched, headers saying where and why.

Header names follow the ``dlq.*`` pattern (Kafka Connect's dead-letter queue uses the same idea
under ``__connect.errors.*``). Original headers are kept after ours.
"""

from __future__ import annotations

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
MAX_MESSAGE_CHARS = 1000


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
) -> DeadLetter:
    """Build the dead-letter record for a source record that failed with ``error``."""
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
    original = [
        (k, v if v is None or isinstance(v, bytes) else str(v).encode()) for k, v in headers or ()
    ]
    return DeadLetter(key=key, value=value, headers=ours + original)
