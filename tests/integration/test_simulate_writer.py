"""Real broker: the simulator counts what the broker took, not what it sent. Records the broker
refuses are counted as not written (and make ``simulate`` exit non-zero), never as written."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.simulate.otlp_encode import SimRecord
from pipeline.simulate.writer import write_records
from tests.integration.conftest import read_to_end

pytestmark = pytest.mark.integration


async def test_refused_records_are_counted_as_not_written(
        names: dict[str, str], bootstrap: str) -> None:
    topic = names["OTLP_SPANS_TOPIC"]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:  # a topic that refuses records over 2 KB
        await admin.create_topics([NewTopic(topic, 1, 1,
                                            topic_configs={"max.message.bytes": "2048"})])
    finally:
        await admin.close()
    sizes = [100, 5000, 100, 5000, 100]
    records = [SimRecord(topic, None, b"x" * n, 1_767_600_000_000 + i, items=1)
               for i, n in enumerate(sizes)]
    stats = await write_records(records, {"bootstrap_servers": bootstrap},
                                spans_topic=topic, progress=lambda line: None)
    # A refused batch takes the small records sent with it: what counts is that the counts say
    # what the topic holds.
    assert stats.records + stats.failed == 5 and stats.failed >= 2
    assert "NOT written" in stats.line() and "TooLarge" in stats.line()
    written = await read_to_end(bootstrap, topic)
    assert len(written) == stats.records == stats.spans
    assert sum(len(r.value) for r in written) == stats.bytes
