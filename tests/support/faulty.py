"""A plug-in detector with a bug, for the isolation tests: every update raises."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.detectors.base import Detector
from pipeline.findings import Finding


class Raising(Detector):
    name = "raising"
    version = "test"
    signal = "spans"
    kinds = ()

    def update(self, records: Sequence[Any]) -> None:
        raise RuntimeError("a plug-in bug: this detector raises on every batch")

    def advance(self, watermark_ns: int) -> list[Finding]:
        return []

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        pass
