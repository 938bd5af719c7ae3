"""Detectors: one file each, all implementing ``pipeline.detectors.base.Detector``.

``BUILTIN`` lists the detectors every worker runs. ``load_detectors`` adds user-supplied ones
named as ``package.module:ClassName`` (setting ``PIPELINE_DETECTORS``), so a team can run its own
detector on the same routed streams, state store and findings sinks.
"""

from __future__ import annotations

import importlib

from pipeline.detectors.base import SIGNALS, Detector
from pipeline.detectors.bottleneck import BottleneckDetector
from pipeline.detectors.client_calls import ClientCallCounter
from pipeline.detectors.errors import ErrorOriginDetector
from pipeline.detectors.memory import MemoryDetector
from pipeline.detectors.servicemap import ServiceMapDetector
from pipeline.detectors.timewait import TimeWaitDetector
from pipeline.detectors.trace_assembly import TraceAssembler
from pipeline.settings import ConfigError

BUILTIN: list[type[Detector]] = [
    TraceAssembler, ClientCallCounter, BottleneckDetector, ErrorOriginDetector,
    ServiceMapDetector, MemoryDetector, TimeWaitDetector,
]


def load_detectors(extra: str = "") -> list[type[Detector]]:
    """The built-in detector classes plus those named in ``extra`` (comma-separated)."""
    classes = list(BUILTIN)
    for spec in filter(None, (s.strip() for s in extra.split(","))):
        module_name, _, class_name = spec.partition(":")
        if not module_name or not class_name:
            raise ConfigError(
                f"PIPELINE_DETECTORS entry {spec!r} must look like package.module:ClassName"
            )
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"PIPELINE_DETECTORS entry {spec!r} cannot be loaded: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise ConfigError(f"PIPELINE_DETECTORS entry {spec!r} is not a Detector subclass")
        if getattr(cls, "signal", None) not in SIGNALS:
            raise ConfigError(f"detector {spec!r} must set signal to one of {SIGNALS}")
        classes.append(cls)
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ConfigError(f"two detectors share a name: {sorted(names)}")
    return classes
