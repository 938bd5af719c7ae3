"""Real broker: the pipeline creates its topics itself, with the partitions and settings users
depend on (a compacted findings topic), before anything subscribes or produces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.settings import Settings
from pipeline.topics import (
    changelog_topic,
    ensure_topics,
    incident_input_topic,
    partition_counts,
    routed_topic,
)

pytestmark = pytest.mark.integration


async def test_topics_are_created_with_their_settings(names: dict[str, str],
                                                      bootstrap: str) -> None:
    env = {**names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    settings = Settings.from_env(env)
    created = await ensure_topics(settings)
    routed = [routed_topic(settings, s) for s in ("spans", "metrics", "traces")]
    changelogs = [changelog_topic(settings, s) for s in ("spans", "metrics", "traces")]
    incident_input = incident_input_topic(settings)
    assert set(created) == {names["OTLP_SPANS_TOPIC"], names["OTLP_METRICS_TOPIC"],
                            names["FINDINGS_TOPIC"], names["DEADLETTER_TOPIC"],
                            names["SERVICE_MAP_TOPIC"], names["FEEDBACK_TOPIC"],
                            names["INCIDENTS_TOPIC"], incident_input, *routed, *changelogs}
    assert await ensure_topics(settings) == []  # idempotent: existing topics are left alone
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"])
                     for t in await admin.describe_topics(created)}
        assert described[names["FINDINGS_TOPIC"]] == int(names["OUTPUT_PARTITIONS"])
        assert all(described[t] == int(names["PIPELINE_PARTITIONS"])
                   for t in routed + changelogs)
        assert described[incident_input] == 1  # one ordered stream for the correlation
        for topic in (names["FINDINGS_TOPIC"], names["SERVICE_MAP_TOPIC"],
                      names["FEEDBACK_TOPIC"], names["INCIDENTS_TOPIC"], *changelogs):
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            configs = {c[0]: c[1] for c in resp.resources[0][4]}
            assert configs["cleanup.policy"] == "compact", topic
        # Time-based only: a broker's size cap must not delete what is unread (or, for the
        # correlation's input, what a new owner replays).
        for topic in [*routed, incident_input]:
            (resp,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic)]
            )
            configs = {c[0]: c[1] for c in resp.resources[0][4]}
            assert (configs["retention.bytes"], configs["retention.ms"]) == (
                "-1", str(24 * 3600 * 1000)), topic
    finally:
        await admin.close()


async def test_a_changed_partition_count_fails_at_start_and_says_how_to_fix_it(
        names: dict[str, str], bootstrap: str, tmp_path: Path) -> None:
    env = {**names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    settings = Settings.from_env(env)
    await ensure_topics(settings)
    assert await partition_counts(settings) == {
        names["OTLP_SPANS_TOPIC"]: int(names["PIPELINE_PARTITIONS"]),
        names["OTLP_METRICS_TOPIC"]: int(names["PIPELINE_PARTITIONS"])}
    # The same application id started again with another count: refused before Faust starts.
    changed = {**os.environ, **env, "PIPELINE_PARTITIONS": "8", "METRICS_PORT": "0",
               "PIPELINE_DATA_DIR": str(tmp_path / "state")}
    proc = subprocess.run([sys.executable, "-m", "pipeline", "worker"], env=changed,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert (f"configuration error: PIPELINE_PARTITIONS=8, but application "
            f"'{names['PIPELINE_APP_ID']}' ran with {names['PIPELINE_PARTITIONS']} partitions"
            ) in proc.stderr, proc.stderr[-2000:]
    assert f"Set PIPELINE_PARTITIONS={names['PIPELINE_PARTITIONS']}" in proc.stderr
