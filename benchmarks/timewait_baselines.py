"""Baselines for ``time_wait_buildup``: the static thresholds on a host's TIME_WAIT count that
public alert-rule sets carry, evaluated as Prometheus evaluates alerting rules. Pure.

Each baseline is a ``benchmarks.accuracy.Baseline``: ``(scenario) -> (kind, [(entity,
fired_at_ns), ...])`` with entity ``{"host": <host.name>}`` (the key ``time_wait_buildup``
labels and findings use), one alert per host and alert episode. ``BUILTIN`` maps their names to
them; ``benchmarks.accuracy`` registers it into its ``BASELINES``.

Rules (each alone in a group, evaluated every ``interval_s`` = 15 s)::

    tw_static_5000_1m    node_sockstat_TCP_tw > 5000    for: 1m
    tw_static_1000_10m   node_sockstat_TCP_tw > 1000    for: 10m
    tw_static_20000_2m   node_sockstat_TCP_tw > 20000   for: 2m

These are the threshold/``for`` pairs of rules published for node_exporter (``> 5000`` /
``>= 5000`` for 1m, ``> 1000`` for 10m, ``> 20000`` for 2m "port exhaustion risk"); a user picks
one and applies it to every host.

Data: the same data the detector gets. A host scraped by node_exporter (``metrics_style``
``prometheus`` or ``both``) has ``node_sockstat_TCP_tw`` (every 10 s); a host with the
Collector's hostmetrics receiver only has ``system.network.connections{protocol="tcp",
state="TIME_WAIT"}`` (``system_network_connections`` in Prometheus), the count of the same
sockets, and the same rule is written on it. A host with both uses node_exporter's series. The
points come from the simulator's model (``Simulator``) of the scenario with ``emit_spans`` off:
connections draw from their own random stream, so every TIME_WAIT point is the one the worker
sees in the full run (``tests/unit/test_timewait_baselines.py`` checks it), in a fraction of the
time. Timestamps are truncated to milliseconds; a sample is usable from its own timestamp on
(scrape and evaluation delays ignored: the rules' delays are lower bounds).

Semantics (Prometheus 2.42, ``rules/alerting.go``, ``promql/engine.go``; the helpers are
``benchmarks.memory_baselines``'):

- Evaluations at absolute multiples of the interval within the run (a real group is offset
  inside its interval by a hash of its name: the same < 15 s shift for every evaluation). The
  rules are loaded at the run's start: a static threshold learns nothing, so it needs no
  warm-up.
- ``node_sockstat_TCP_tw`` at ``t``: the latest sample with ``t - 5m <= ts <= t`` (the
  lookback); none: no result, which counts as the condition not holding.
- ``for``: a host whose condition holds goes pending (``active_at`` = that evaluation), fires at
  the first evaluation with ``t - active_at >= for`` (``fired_at``), and the alert is dropped
  (pending) or resolved (firing) at the first evaluation where the condition does not hold; a
  later episode fires again (``keep_firing_for`` 0).

>>> rule = StaticRule("tw_static_5000_1m", 5000, 60)
>>> t = np.arange(0, 400_001, 10_000)  # a sample every 10 s, above 5000 from 100 s on
>>> host = HostTimeWait("node-9", "node_sockstat_TCP_tw",
...                     mb.Series((), t, np.where(t >= 100_000, 6000.0, 80.0)))
>>> [(e["host"], at // NS) for e, at in rule.alerts([host], 0, 400 * NS)]  # pending at 105 s
[('node-9', 165)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np

from benchmarks import memory_baselines as mb
from pipeline.simulate.model import Simulator
from pipeline.simulate.scenarios import Scenario

KIND = "time_wait_buildup"
NS = 1_000_000_000
MS = 1_000_000  # ns per ms

NODE_EXPORTER = "node_sockstat_TCP_tw"
HOSTMETRICS = "system.network.connections"  # {protocol="tcp", state="TIME_WAIT"}
HOSTMETRICS_PROM = "system_network_connections"

Alerts = list[tuple[dict[str, str], int]]


@dataclass
class HostTimeWait:
    """The TIME_WAIT series a host's rule reads, and under which name."""

    host: str
    metric: str
    series: mb.Series

    @property
    def entity(self) -> dict[str, str]:
        return {"host": self.host}


def time_wait_table(scenario: Scenario) -> list[HostTimeWait]:
    """Each host's TIME_WAIT series (module docstring), by host name; memoised for the last
    scenario object."""
    global _LAST
    if _LAST is not None and _LAST[0] is scenario:
        return _LAST[1]
    styles = {h.name: h.metrics_style for h in scenario.topology.hosts}
    prom = {h for h, style in styles.items() if style in ("prometheus", "both")}
    raw: dict[str, tuple[list[int], list[float]]] = {h: ([], []) for h in styles}
    for tick in Simulator(replace(scenario, emit_spans=False)).ticks():
        for m in tick.metrics:
            if m.name == NODE_EXPORTER:
                host = dict(m.resource.attributes).get("host.name")
                if host not in prom:
                    continue
            elif m.name == HOSTMETRICS and {("protocol", "tcp"), ("state", "TIME_WAIT")} <= set(
                m.attributes
            ):
                host = dict(m.resource.attributes).get("host.name")
                if host in prom:
                    continue
            else:
                continue
            ts, vs = raw[str(host)]
            ts.append(m.time_ns // MS)
            vs.append(float(m.value))
    table = [
        HostTimeWait(h, NODE_EXPORTER if h in prom else HOSTMETRICS_PROM,
                     mb.finish_series((), *raw[h]))
        for h in sorted(styles)
    ]
    _LAST = (scenario, table)
    return table


_LAST: tuple[Scenario, list[HostTimeWait]] | None = None


@dataclass(frozen=True)
class StaticRule:
    """``<TIME_WAIT count> > threshold`` held ``for_s``, evaluated every ``interval_s``."""

    name: str
    threshold: float
    for_s: float
    interval_s: float = 15.0

    @property
    def expr(self) -> str:
        return f"{NODE_EXPORTER} > {self.threshold:g}"

    def alerts(self, hosts: Iterable[HostTimeWait], start_ns: int, end_ns: int) -> Alerts:
        """One ``(entity, fired_at_ns)`` per host and firing episode, in time order."""
        evals = mb.eval_grid(start_ns, end_ns, self.interval_s)
        out: Alerts = []
        for h in hosts:
            with np.errstate(invalid="ignore"):
                holds = mb.instant(h.series, evals) > self.threshold  # no sample: NaN, False
            for at_ms in mb.alert_episodes(evals, holds, self.for_s, self.interval_s):
                out.append((h.entity, at_ms * MS))
        return sorted(out, key=lambda a: (a[1], a[0]["host"]))

    def __call__(self, scenario: Scenario) -> tuple[str, Alerts]:
        return KIND, self.alerts(time_wait_table(scenario), scenario.start_ns, scenario.end_ns)


RULES: tuple[StaticRule, ...] = (
    StaticRule("tw_static_5000_1m", 5000.0, 60.0),
    StaticRule("tw_static_1000_10m", 1000.0, 600.0),
    StaticRule("tw_static_20000_2m", 20000.0, 120.0),
)

BUILTIN: dict[str, Callable[[Scenario], tuple[str, Alerts]]] = {r.name: r for r in RULES}
