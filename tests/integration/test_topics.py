"""Real broker: the pipeline creates its topics itself, with the partitions and settings users
depend on (a compacted findings topic), before anything subscribes or produces."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.settings import Settings
from pipeline.topics import changelog_topic, ensure_topics, routed_topic

pytestmark = pytest.mark.integration


async def test_topics_are_created_with_their_settings(names: dict[str, str],
                                                      bootstrap: str) -> None:
    env = {**names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    settings = Settings.from_env(env)
    created = await ensure_topics(settings)
    routed = [routed_topic(settings, s) for s in ("spans", "metrics", "traces")]
    changelogs = [changelog_topic(settings, s) for s in ("spans", "metrics", "traces")]
    assert set(created) == {names["OTLP_SPANS_TOPIC"], names["OTLP_METRICS_TOPIC"],
                            names["FINDINGS_TOPIC"], names["DEADLETTER_TOPIC"], *routed,
                            *changelogs}
    assert await ensure_topics(settings) == []  # idempotent: existing topics are left alone
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"])
                     for t in await admin.describe_topics(created)}
        assert described[names["FINDINGS_TOPIC"]] == int(names["OUTPUT_PARTITIONS"])
        assert all(described[t] == int(names["PIPELINE_PARTITIONS"])
                   for t in routed + changelogs)
        for topic in (names["FINDINGS_TOPIC"], *changelogs):
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            configs = {c[0]: c[1] for c in resp.resources[0][4]}
            assert configs["cleanup.policy"] == "compact", topic
        for topic in routed:  # time-based only: a broker's size cap must not delete unread
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            configs = {c[0]: c[1] for c in resp.resources[0][4]}
            assert (configs["retention.bytes"], configs["retention.ms"]) == (
                "-1", str(24 * 3600 * 1000)), topic
    finally:
        await admin.close()
