"""benchmarks.state_memory on small sizes: positive per-entry figures and the caps holding."""

from __future__ import annotations

import pytest

from benchmarks import state_memory


@pytest.fixture(scope="module")
def messages() -> list[bytes]:
    return state_memory.trace_messages(120, seed=2)


def test_open_traces_cost_memory_and_entries(messages: list[bytes]) -> None:
    r = state_memory.measure_open_traces(messages[:100])
    assert r["open"] == 100 and r["evicted_open"] == 0
    assert r["bytes_per_open_trace"] > 0 and r["bytes_per_open_span"] > 0
    assert 0 < r["entry_bytes_mean"] <= r["entry_bytes_max"]
    assert r["completed_ids"] == 100 and r["bytes_per_completed_trace_id"] > 0


def test_max_open_caps_the_open_traces(messages: list[bytes]) -> None:
    r = state_memory.measure_open_traces(messages, max_open=30)
    assert r["open"] == 30
    assert r["evicted_open"] == len(messages) - 30
    assert r["bytes_per_open_trace"] > 0


def test_trace_at_span_cap_keeps_max_spans(messages: list[bytes]) -> None:
    r = state_memory.trace_at_span_cap(messages, max_spans=200)
    for layout in ("shared_resources", "as_routed", "resource_per_span"):
        assert r[layout]["spans_kept"] == 200
        assert r[layout]["span_cap_counted"] == 40
    assert (
        0 < r["shared_resources"]["entry_bytes"] <= r["as_routed"]["entry_bytes"]
        <= r["resource_per_span"]["entry_bytes"]
    )


def test_operations_fill_baselines_and_respect_the_cap() -> None:
    r = state_memory.measure_operations(8)
    assert r["tracked"] == 8 and r["baseline_windows_min"] == 60
    assert r["bytes_per_operation"] > 0
    assert r["bytes_per_operation_window_reservoir"] > r["bytes_per_operation_window_8_samples"] > 0
    assert r["op_entry_bytes_max"] > 0 and r["window_entry_bytes_max"] > 0
    cap = state_memory.operation_cap(10, 25)
    assert cap["tracked"] == 10 and cap["evicted_operations"] == 15


def test_tracked_series_are_counted_per_copy() -> None:
    from pipeline.detectors.memory import MemoryDetector
    from pipeline.detectors.timewait import TimeWaitDetector

    for preset, make in (("leak", MemoryDetector), ("timewait", TimeWaitDetector)):
        batches = state_memory.metric_batches(preset, "3m")
        one, two = (state_memory.measure_series(make, batches, c) for c in (1, 2))
        assert one["tracked"] > 0 and two["tracked"] == 2 * one["tracked"], preset
        assert two["points_fed"] == 2 * one["points_fed"]
        assert one["bytes_per_key"] > 0 and one["entry_bytes_max"] > 0
