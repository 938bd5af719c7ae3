"""The contract every detector implements. Pure: no Faust, no Kafka, no wall clock.

A detector is a state machine over one partition's records in event time:

- ``update(records)`` folds a batch of decoded records (spans or metric points) into its state;
- ``advance(watermark_ns)`` closes whatever windows the event-time watermark has passed and
  returns the findings that changed state (through a ``pipeline.findings.Lifecycle``);
- ``snapshot(changed_only)`` / ``restore(state)`` move its state in and out as a mapping of
  string keys to JSON-able values; ``None`` means "deleted". The engine stores these in a Faust
  table backed by a changelog topic, so a restarted worker resumes where it left off. A
  detector that keeps its state in a ``pipeline.state.State`` (``self.state``: per-key maps
  with change tracking, LRU caps and versioned documents) gets both for free;
- ``stats()`` reports how much it tracks and what it evicted, and what it counted (exported as
  metrics).

Every per-key structure must have a cap and an expiry, and count what it drops.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.findings import Finding, Lifecycle
from pipeline.state import State

#: Routed streams: decoded spans and metric points, and the trace samples the trace stage
#: derives from completed traces (see ``emits``).
SIGNALS = ("spans", "metrics", "traces")


@dataclass(slots=True)
class DetectorStats:
    tracked: int = 0  # live per-key entries (operations, traces, instances, hosts...)
    evicted: dict[str, int] = field(default_factory=dict)  # reason -> count, cumulative
    # (kind, severity) -> findings currently firing
    active: dict[tuple[str, str], int] = field(default_factory=dict)
    # Per-finding gauges: (metric name, ((label, value), ...)) -> value; bounded by the
    # detector's cap on firing findings.
    gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    # Firing findings: (kind, severity, fingerprint, entity), from ``Lifecycle.firing()``.
    firing: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    # Events counted by this detector object since it was created (in memory, not in saved
    # state), by (metric name, ((label, value), ...)): the worker adds their increases to
    # Prometheus counters (``PipelineMetrics.add_counts``). Keep label values bounded.
    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


class Detector(ABC):
    """Base class: subclasses set ``name``, ``version`` and ``signal`` and implement the rest."""

    name: ClassVar[str]
    version: ClassVar[str]
    signal: ClassVar[str]  # one of SIGNALS: which routed stream feeds it
    kinds: ClassVar[tuple[str, ...]]  # finding kinds it can emit (benchmarks score these)
    emits: ClassVar[str | None] = None  # signal of the records ``drain`` returns, if any
    #: Output topic of the records ``published`` returns, if any (``"service_map"``): the
    #: worker publishes them as they come, like findings (keyed, at least once).
    publishes: ClassVar[str | None] = None
    #: Where the detector keeps its state, if it uses the shared type (``snapshot``,
    #: ``restore`` and ``dropped_on_restore`` then come from it).
    state: State | None = None
    #: How far the side inputs of this stream are complete (set by the engine before each
    #: ``advance``; None: no constraint). A detector that joins a side input waits for it.
    side_watermark_ns: int | None = None
    #: True while the watermark is past the end of a quiet input (set by the engine before
    #: each ``advance``): nothing more is coming, so whatever waits for more data can go.
    input_ended: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> Detector:
        """Build one instance per partition from ``pipeline.settings.Settings``."""
        return cls()

    @abstractmethod
    def update(self, records: Sequence[Any]) -> None:
        """Fold records (all of this detector's signal) into state."""

    def update_side(self, records: Sequence[Any]) -> None:  # noqa: B027 (optional hook)
        """Fold side-input records another stage derived for this stream (they move no
        watermark; see ``PartitionEngine.process``). Ignored unless a detector uses them."""

    @abstractmethod
    def advance(self, watermark_ns: int) -> list[Finding]:
        """Act on everything the watermark has passed; return findings that changed state."""

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        """State as {key: JSON-able value or None (deleted)}; all of it, or what changed since
        the last ``changed_only`` call."""
        if self.state is None:
            raise NotImplementedError(f"{type(self).__name__} keeps no pipeline.state.State: "
                                      "implement snapshot and restore")
        return self.state.snapshot(changed_only)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Load state written by ``snapshot`` (possibly merged from several snapshots)."""
        if self.state is None:
            raise NotImplementedError(f"{type(self).__name__} keeps no pipeline.state.State: "
                                      "implement snapshot and restore")
        self.state.restore(state)
        self.restored()

    def restored(self) -> None:  # noqa: B027 (optional hook)
        """Called after ``restore``: rebuild what is derived from the restored state."""

    def drain(self) -> list[Any]:
        """Records derived for another stream (signal ``emits``) since the last call, in a
        deterministic order: replaying the same input after a crash must derive the same."""
        return []

    def published(self) -> list[tuple[bytes, bytes | None]]:
        """Records for the ``publishes`` topic since the last call: (key, value or None for a
        tombstone), in a deterministic order."""
        return []

    def output_watermark(self, watermark_ns: int) -> int:
        """How far the records ``drain`` returns are complete in event time: none derived later
        will be older than this (the next stage's watermark follows it)."""
        return watermark_ns

    @property
    def dropped_on_restore(self) -> int:
        """Saved entries ``restore`` could not read and dropped (state of an unknown version,
        or corrupt): counted by the engine, never a crash."""
        return self.state.dropped if self.state is not None else 0

    def stats(self) -> DetectorStats:
        return DetectorStats()

    def open_findings(self) -> list[Finding]:
        """The firing findings of the detector's ``Lifecycle`` attributes, as they stand now:
        published again when feedback about them changes (a mute, an ack). A detector that
        keeps its lifecycles elsewhere overrides this."""
        return [f for lc in vars(self).values() if isinstance(lc, Lifecycle)
                for f in lc.open_findings()]
