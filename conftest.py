"""Test scheduling only (no fixtures): the longest test files start first.

``make test`` runs three pytest-xdist processes, a file each at a time (``--dist loadfile``).
By default xdist queues the files with the most tests first, which left the few long
end-to-end files (one test of minutes each) for last and the run waiting on them
(``deploy/local/test.sh`` passes ``--no-loadscope-reorder`` so this order is kept)."""

from __future__ import annotations

from typing import Any

#: Files that take a minute or more, longest first (``make test --durations=20``, 2026-12-04).
LONG_FIRST = (
    "tests/integration/test_alerting.py",
    "tests/integration/test_timewait_sockets.py",
    "tests/integration/test_eventtime.py",
    "tests/unit/test_replay_speed.py",
    "tests/integration/test_hostile_input.py",
    "tests/integration/test_timewait.py",
    "tests/integration/test_restart.py",
    "tests/integration/test_scaleout.py",
    "tests/integration/test_bottleneck.py",
    "tests/unit/test_state_upgrade.py",
    "tests/unit/test_keyed_spans.py",
    "tests/integration/test_workers.py",
    "tests/integration/test_memory.py",
)


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
