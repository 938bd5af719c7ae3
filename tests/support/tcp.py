"""Golden host connection series for the TIME_WAIT detector, in event time.

``host_batches(minutes, closes=..., established=...)`` returns one list of ``MetricPoint`` per
scrape (``interval_s``), as the hostmetrics receiver (``style="hostmetrics"``:
``system.network.connections`` by protocol and state) or node_exporter through the prometheus
receiver (``style="node"``: ``node_sockstat_TCP_tw``, ``node_netstat_Tcp_CurrEstab``,
``node_netstat_Tcp_ActiveOpens``) name them. ``closes(t_s)`` is the host's active closes per
second; each second's closes (Poisson, seeded) sit in TIME_WAIT for 60 s, as in Linux, so the
TIME_WAIT count is the sum of the last 60 seconds' closes. ``established(t_s)`` is the ESTABLISHED
count (pools sized to concurrency). ``calls(minutes, rate)`` gives the ``HostCalls`` the span
stage derives for the same host.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from pipeline.records import TEMPORALITY_CUMULATIVE, HostCalls, MetricPoint, Resource

S = 10**9
T0 = 1_767_600_000 * S
STATES = ("ESTABLISHED", "LISTEN", "TIME_WAIT", "CLOSE_WAIT", "FIN_WAIT_2")


def const(v: float) -> Callable[[float], float]:
    return lambda t: v


def step(base: float, high: float, start_s: float, end_s: float = 1e12) -> Callable[
        [float], float]:
    return lambda t: high if start_s <= t < end_s else base


def host_batches(
    minutes: float,
    closes: Callable[[float], float] | None = None,  # default: 1.5 closes/s
    established: Callable[[float], float] | None = None,  # default: 60
    style: str = "hostmetrics",
    host: str = "node-9",
    interval_s: int = 10,
    seed: int = 1,
    state_case: str = "upper",
) -> list[list[MetricPoint]]:
    closes = closes or const(1.5)
    established = established or const(60.0)
    rng = np.random.default_rng(seed)
    window: deque[int] = deque([0] * 60, maxlen=60)
    tw = 0
    opens = 1_000_000
    if style == "hostmetrics":
        res = Resource("unknown_service", host, host, "", {})
    else:
        res = Resource("node-exporter", f"{host}:9100", "", "", {"server.address": host})
    out: list[list[MetricPoint]] = []
    for second in range(int(minutes * 60)):
        n = int(rng.poisson(max(closes(second), 0.0)))
        tw += n - window[0]
        window.append(n)
        opens += n
        if second % interval_s:
            continue
        t = T0 + second * S
        est = float(rng.poisson(max(established(second), 0.0)))
        if style == "hostmetrics":
            counts = {"ESTABLISHED": est, "LISTEN": 12.0, "TIME_WAIT": float(tw),
                      "CLOSE_WAIT": 1.0, "FIN_WAIT_2": 0.0}
            batch = []
            for state, v in counts.items():
                name = state.lower() if state_case == "lower" else state
                batch.append(MetricPoint(
                    "system.network.connections", "sum", "{connections}",
                    TEMPORALITY_CUMULATIVE, False, t, T0 - 3600 * S, v,
                    {"protocol": "tcp", "state": name}, res,
                ))
            batch.append(MetricPoint(  # UDP has no TIME_WAIT: ignored
                "system.network.connections", "sum", "{connections}", TEMPORALITY_CUMULATIVE,
                False, t, T0 - 3600 * S, 5.0, {"protocol": "udp", "state": ""}, res,
            ))
        else:
            batch = [
                MetricPoint("node_sockstat_TCP_tw", "gauge", "", 0, False, t, 0, float(tw), {},
                            res),
                MetricPoint("node_netstat_Tcp_CurrEstab", "gauge", "", 0, False, t, 0, est, {},
                            res),
                MetricPoint("node_netstat_Tcp_ActiveOpens", "sum", "", TEMPORALITY_CUMULATIVE,
                            True, t, T0 - 3600 * S, float(opens), {}, res),
            ]
        out.append(batch)
    return out


def calls(
    minutes: float, rate: Callable[[float], float], host: str = "node-9",
    service: str = "checkout", destination: str = "redis",
) -> list[HostCalls]:
    """One ``HostCalls`` per minute: ``rate(t_s)`` calls per second from the host."""
    return [
        HostCalls(host, T0 + m * 60 * S, service, destination, int(rate(m * 60) * 60))
        for m in range(int(minutes))
    ]
