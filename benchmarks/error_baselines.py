"""A baseline for ``error_origin``: the error-rate rule a user would otherwise write. Pure.

``error_rate_alerts`` is what the OpenTelemetry Collector's spanmetrics connector plus a
Prometheus rule give::

    sum by (service_name, span_name) (rate(calls_total{status_code="STATUS_CODE_ERROR"}[1m]))
      / sum by (service_name, span_name) (rate(calls_total[1m])) > 0.05      for: 1m

per (service, span name), in one-minute event-time windows of span ends from the first span: a
window is over when at least ``min_errors`` spans in it have status ERROR and they are at least
``min_rate`` of its spans; ``for_windows`` such windows in a row fire one alert (entity
``{"service", "operation": span name}``), and a window under the threshold ends the episode. It
sees every span that failed, wherever the failure started, so a failure that propagates fires
on every caller it passed through, and a client's 4xx or a retried 503 fires on the client's
span.

    >>> rows = [("web", "GET /", 2 if i % 4 == 0 else 0, i * 10**9) for i in range(300)]
    >>> [(e["service"], round(t / 1e9)) for e, t in error_rate_alerts(rows)]
    [('web', 120)]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from pipeline.records import STATUS_ERROR

MINUTE_NS = 60 * 10**9


def error_rate_alerts(
    spans: Iterable[tuple[str, str, int, int]], min_rate: float = 0.05, min_errors: int = 3,
    for_windows: int = 2,
) -> list[tuple[dict[str, Any], int]]:
    """``spans``: (service, span name, status code, end ns). Alerts as (entity, fired at)."""
    rows = list(spans)
    if not rows:
        return []
    t0 = min(r[3] for r in rows)
    counts: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(dict)
    for service, name, status, end in rows:
        w = (end - t0) // MINUTE_NS
        c = counts[(service, name)].setdefault(w, [0, 0])
        c[0] += 1
        c[1] += status == STATUS_ERROR
    out = []
    for (service, name), windows in sorted(counts.items()):
        run = 0
        for w in range(min(windows), max(windows) + 1):
            calls, errors = windows.get(w, (0, 0))
            over = errors >= min_errors and errors >= min_rate * calls
            run = run + 1 if over else 0
            if run == for_windows:
                out.append(({"service": service, "operation": name},
                            t0 + (w + 1) * MINUTE_NS))
    return out
