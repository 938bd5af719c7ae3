"""Simulated OpenTelemetry traffic with labelled faults, written to Kafka like a Collector would.

A pure core (``topology``, ``lifecycle``, ``model``, ``scenarios``, ``labels``, ``otlp_encode``)
generates deterministic OTLP records and ground-truth labels from a scenario and a seed; a thin
writer (``writer``, the only Kafka-aware module) produces them live or as a fast replay.

>>> sc = build_scenario("healthy", seed=3, duration="30s", rate=5)
>>> recs = list(iter_records(sc))
>>> sorted({r.topic for r in recs}), all(r.timestamp_ms > sc.start_ns // 10**6 for r in recs)
(['otlp_metrics', 'otlp_spans'], True)
"""

from pipeline.simulate.cli import add_arguments, run, scenario_from_args
from pipeline.simulate.faults import ALL_KINDS, FAULT_KINDS, NEGATIVE_KINDS, Fault, parse_fault
from pipeline.simulate.labels import configured_limits, label_lines, write_labels
from pipeline.simulate.model import Simulator
from pipeline.simulate.otlp_encode import Encoder, SimRecord, iter_records
from pipeline.simulate.scenarios import PRESETS, Scenario, build_scenario
from pipeline.simulate.topology import Topology, default_topology

__all__ = [
    "ALL_KINDS",
    "FAULT_KINDS",
    "NEGATIVE_KINDS",
    "PRESETS",
    "Encoder",
    "Fault",
    "Scenario",
    "SimRecord",
    "Simulator",
    "Topology",
    "add_arguments",
    "build_scenario",
    "configured_limits",
    "default_topology",
    "iter_records",
    "label_lines",
    "parse_fault",
    "run",
    "scenario_from_args",
    "write_labels",
]
