"""The report: one document (``build``) printed as JSON for tools or as text for a person
(``render``, from the document alone, so both say the same). Pure.

Sections: the range and what was read; the traces; the slowest operations by critical-path and
by exclusive time; where failures start; the dependency map; the instances and hosts seen;
and the findings of the range, grouped (error origins, latency, the service's runtime memory
and GC, its hosts' connections, every other).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipeline.analyze.collect import Collector, OpStats, slowest
from pipeline.findings import Finding, rfc3339
from pipeline.servicegraph import USER as USER_NODE
from pipeline.servicegraph import dense, percentile_ms

SCHEMA = "analyze/1"
LATENCY_KINDS = ("bottleneck_span", "latency_regression")
RUNTIME_KINDS = ("memory_leak", "gc_pressure")
MAX_DEPTH = 3  # levels of callers above and callees below the service in the text tree
WIDTH = 100  # columns of the text report


def _ms(ns: float | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def _name(service: str, operation: str, detail: str) -> dict[str, Any]:
    out = {"service": service, "operation": operation}
    if detail:
        out["detail"] = detail
    return out


def _op_row(key: tuple[str, str, str], st: OpStats, slow_total_ns: int, by: str
            ) -> dict[str, Any]:
    res, heap = (st.cp, st.slowest_cp) if by == "cp" else (st.excl, st.slowest_self)
    row = {
        **_name(*key),
        "calls": st.calls, "traces": st.traces,
        "total_ms": _ms(st.cp_ns if by == "cp" else st.self_ns),
        "p50_ms": _ms(res.quantile(0.5)), "p95_ms": _ms(res.quantile(0.95)),
        "max_ms": _ms(heap and max(heap)[0]),
        "exemplar_trace_ids": slowest(heap),
    }
    if slow_total_ns:
        row["share_of_slow_trace_time"] = round(st.slow_cp_ns / slow_total_ns, 4)
        row["slow_traces"] = st.slow_traces
    return row


def _origin_row(key: tuple[str, str, str], st: OpStats) -> dict[str, Any]:
    ev = dict(st.evidence or {})
    row: dict[str, Any] = {
        **_name(*key),
        "errors": st.errors, "absorbed": st.absorbed, "calls": st.calls,
        "error_rate": round(st.errors / st.calls, 5) if st.calls else None,
        "causes": dict(sorted(st.causes.items(), key=lambda kv: -kv[1])),
        "exemplar_trace_ids": list(st.error_traces),
        "chain": ev.get("chain", []),
        "reached_root": ev.get("reached_root"),
    }
    if ev.get("exception.type"):
        row["exception"] = {"type": ev["exception.type"],
                            "message": ev.get("exception.message")}
    if ev.get("status.message"):
        row["status_message"] = ev["status.message"]
    for k in ("http.status_code", "rpc.grpc.status_code", "absorbed_by"):
        if ev.get(k) is not None:
            row[k.replace(".", "_")] = ev[k]
    return row


def _edge_rows(col: Collector, minutes: float) -> list[dict[str, Any]]:
    rows = []
    for (client, server, ctype), (calls, failed, cb, sb) in col.edges.items():
        rows.append({
            "client": client, "server": server, "connection_type": ctype,
            "calls": calls, "calls_per_minute": round(calls / minutes, 2),
            "failed": failed, "error_rate": round(failed / calls, 5) if calls else 0.0,
            "client_p95_ms": percentile_ms(dense(cb), 0.95),
            "server_p95_ms": percentile_ms(dense(sb), 0.95),
        })
    rows.sort(key=lambda r: (-r["calls"], r["client"], r["server"]))
    return rows


def _in_range(f: Finding, from_ns: int | None, to_ns: int | None) -> bool:
    if to_ns is not None and f.started_at_ns >= to_ns:
        return False
    return not (from_ns is not None and f.resolved_at_ns is not None
                and f.resolved_at_ns < from_ns)


def select_findings(findings: Iterable[Finding], service: str | None, hosts: set[str],
                    from_ns: int | None, to_ns: int | None) -> dict[str, list[dict[str, Any]]]:
    """The findings of the range (each finding's last state, by id), grouped: error origins
    and latency findings of ``service`` (as the service, or the callee a caller's finding
    names), its runtime findings, connection findings of the hosts it runs on, and the rest."""
    last: dict[str, Finding] = {}
    for f in findings:
        last[f.id] = f
    out: dict[str, list[dict[str, Any]]] = {
        "error_origin": [], "latency": [], "runtime": [], "connections": [], "other": []}
    for f in sorted(last.values(), key=lambda f: (f.started_at_ns, f.kind, f.fingerprint)):
        if not _in_range(f, from_ns, to_ns):
            continue
        e = f.entity
        mine = service is None or service in (e.get("service"), e.get("peer_service"))
        if f.kind == "error_origin" and mine:
            group = "error_origin"
        elif f.kind in LATENCY_KINDS and mine:
            group = "latency"
        elif f.kind in RUNTIME_KINDS and (service is None or e.get("service") == service):
            group = "runtime"
        elif f.kind == "time_wait_buildup" and (service is None or e.get("host") in hosts):
            group = "connections"
        else:
            group = "other"
        out[group].append(f.to_dict())
    return out


def build(col: Collector, findings: Sequence[Finding], *, top: int = 10,
          query: Mapping[str, Any] | None = None, run: Mapping[str, Any] | None = None
          ) -> dict[str, Any]:
    """The report document. ``query``: what was asked (shown as given); ``run``: what was
    read and how the run went (records, dead letters, stopped early...)."""
    lo, hi = col.from_ns, col.to_ns
    span_lo = lo if lo is not None else col.first_ns
    span_hi = hi if hi is not None else col.last_ns
    minutes = max(1.0, (span_hi - span_lo) / 60e9) if span_lo and span_hi else 1.0
    slow_total = col.slow_duration_ns if col.threshold_ns is not None else 0
    ops = col.ops.items()
    by_cp = sorted(ops, key=lambda kv: (-kv[1].cp_ns, kv[0]))[:top]
    by_self = sorted(ops, key=lambda kv: (-kv[1].self_ns, kv[0]))[:top]
    origins = sorted(((k, st) for k, st in ops if st.errors or st.absorbed),
                     key=lambda kv: (-kv[1].errors, -kv[1].absorbed, kv[0]))
    hosts = set().union(*col.hosts.values()) if col.hosts else set()
    edges = _edge_rows(col, minutes)
    svc = col.service
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "query": dict(query or {}),
        "range": {"from": rfc3339(lo), "to": rfc3339(hi), "first_trace": rfc3339(col.first_ns),
                  "last_trace": rfc3339(col.last_ns), "minutes": round(minutes, 2)},
        "service": svc,
        "run": dict(run or {}),
        "traces": {
            "count": col.traces, "with_failure_origin": col.failed_traces,
            "duration_ms": {"p50": _ms(col.durations.quantile(0.5)),
                            "p95": _ms(col.durations.quantile(0.95)),
                            "max": _ms(col.slowest_traces and max(col.slowest_traces)[0])},
            "slowest_trace_ids": slowest(col.slowest_traces),
        },
        "slowest_by_critical_path": [_op_row(k, st, slow_total, "cp") for k, st in by_cp],
        "slowest_by_exclusive_time": [_op_row(k, st, slow_total, "self") for k, st in by_self],
        "error_origins": [_origin_row(k, st) for k, st in origins[:top]],
        "dependencies": {
            "callers": [e for e in edges if svc is not None and e["server"] == svc],
            "callees": [e for e in edges if svc is not None and e["client"] == svc],
            "edges": edges,
        },
        "instances": {s: sorted(v) for s, v in sorted(col.instances.items())},
        "hosts": {s: sorted(v) for s, v in sorted(col.hosts.items())},
        "findings": select_findings(findings, svc, hosts, lo, hi),
        "limits": {"operations": len(col.ops), "operations_shown": min(top, len(col.ops)),
                   "error_origins": len(origins), "edges": len(col.edges),
                   **{k: v for k, v in col.overflow.items() if v}},
    }
    if col.threshold_ns is not None:
        doc["traces"]["latency_threshold_ms"] = _ms(col.threshold_ns)
        doc["traces"]["over_threshold"] = col.slow_traces
    return doc


# -- text ------------------------------------------------------------------------------------
def _fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v / 1000:.1f} s"
    if v >= 100:
        return f"{v:.0f} ms"
    return f"{v:.1f} ms"


def _op_label(row: Mapping[str, Any], with_service: bool) -> str:
    name = f"{row['operation']} {row['detail']}" if row.get("detail") else row["operation"]
    return f"{row['service']}: {name}" if with_service else name


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _wrap(text: str, indent: str, max_lines: int = 3) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ",
                         max_lines=max_lines, placeholder=" …", break_on_hyphens=False)


def _op_table(title: str, rows: list[dict[str, Any]], with_service: bool, slow: bool
              ) -> list[str]:
    out = _wrap(title, "")
    if not rows:
        return [*out, "  (no traces in range)", ""]
    head = f"  {'operation':<44} {'calls':>7} {'total':>9} {'p50':>9} {'p95':>9}"
    out.append(head + (f" {'slow %':>7}" if slow else ""))
    for r in rows:
        line = (f"  {_cut(_op_label(r, with_service), 44):<44} {r['calls']:>7} "
                f"{_fmt_ms(r['total_ms']):>9} {_fmt_ms(r['p50_ms']):>9} "
                f"{_fmt_ms(r['p95_ms']):>9}")
        if slow:
            line += f" {100 * r.get('share_of_slow_trace_time', 0):>6.1f}%"
        out.append(line)
        if r["exemplar_trace_ids"]:
            out.append(f"      slowest: {', '.join(r['exemplar_trace_ids'][:2])}")
    return [*out, ""]


def _edge_text(e: Mapping[str, Any]) -> str:
    rate = f"{100 * e['error_rate']:.1f}%"
    return f"{e['calls_per_minute']:>8.1f}/min  err {rate:>6}  p95 {_fmt_ms(e['client_p95_ms']):>9}"


def _node(name: str, ctype: str) -> str:
    return f"{name} ({ctype.replace('_system', '').replace('_', ' ')})" if ctype else name


def _tree(edges: list[dict[str, Any]], root: str, up: bool, depth: int, prefix: str,
          seen: set[str], top: int) -> list[str]:
    """Callees (or callers, ``up``) of ``root`` as tree lines, busiest first."""
    mine = [e for e in edges if (e["server"] if up else e["client"]) == root]
    out = []
    for i, e in enumerate(mine[:top]):
        last = i == min(len(mine), top) - 1 and len(mine) <= top
        other = e["client"] if up else e["server"]
        label = _node(other, "" if up else e["connection_type"])
        arrow = "└─ " if last else "├─ "
        out.append(f"{prefix}{arrow}{_cut(label, 46 - len(prefix)):<{49 - len(prefix)}}"
                   f"{_edge_text(e)}")
        if depth > 1 and other not in seen and other != USER_NODE:
            out += _tree(edges, other, up, depth - 1, prefix + ("   " if last else "│  "),
                         seen | {other}, top)
    if len(mine) > top:
        out.append(f"{prefix}└─ … {len(mine) - top} more")
    return out


def _map_lines(doc: Mapping[str, Any], top: int) -> list[str]:
    edges = doc["dependencies"]["edges"]
    svc = doc["service"]
    out = ["Dependency map (calls/min, error rate and p95 as each caller sees the call)"]
    if not edges:
        return [*out, "  (no calls between services in range)", ""]
    if svc is not None:
        callers = _tree(edges, svc, True, MAX_DEPTH, "  ", {svc}, top)
        out += ["  called by:", *callers] if callers else ["  called by: (nothing traced)"]
        out.append(f"  {svc}")
        callees = _tree(edges, svc, False, MAX_DEPTH, "  ", {svc}, top)
        return [*out, *(callees or ["  (calls nothing traced)"]), ""]
    servers = {e["server"] for e in edges}
    roots = [USER_NODE] if any(e["client"] == USER_NODE for e in edges) else []
    roots += sorted({e["client"] for e in edges} - servers - {USER_NODE})
    for r in roots or sorted({e["client"] for e in edges})[:1]:
        out.append(f"  {r}")
        out += _tree(edges, r, False, MAX_DEPTH + 1, "  ", {r}, top)
    return [*out, ""]


def _finding_lines(title: str, items: list[dict[str, Any]], top: int) -> list[str]:
    if not items:
        return []
    out = [title]
    for f in items[:top]:
        when = f["started_at"] + (f" → {f['resolved_at']}" if f.get("resolved_at") else "")
        out.append(f"  [{f['status']} {f['severity']}] {f['kind']}  {when}")
        out += _wrap(f["summary"], "    ")
        ex = f.get("evidence", {}).get("exemplar_trace_ids")
        if ex:
            out.append(f"    traces: {', '.join(ex[:2])}")
    if len(items) > top:
        out.append(f"  … {len(items) - top} more (--json has them all)")
    return [*out, ""]


def render(doc: Mapping[str, Any], top: int = 10) -> str:
    """The report as text for a terminal (100 columns)."""
    svc = doc["service"]
    rng = doc["range"]
    run = doc["run"]
    tr = doc["traces"]
    lines = [f"Analysis of {svc or 'all services'}: {rng['from'] or rng['first_trace'] or '?'} "
             f"→ {rng['to'] or rng['last_trace'] or '?'} ({rng['minutes']:g} min)"]
    src = run.get("source", "")
    lines += _wrap(f"read {run.get('records', 0):,} records ({src}): {run.get('spans', 0):,} "
                   f"spans, {run.get('points', 0):,} metric points"
                   + (f"; {sum(run['dead_letters'].values()):,} unreadable "
                      f"({', '.join(f'{k} {v}' for k, v in run['dead_letters'].items())})"
                      if run.get("dead_letters") else ""), "  ")
    if run.get("stopped_early"):
        lines += _wrap(f"STOPPED EARLY: {run['stopped_early']}", "  ")
    for note in run.get("notes", []):
        lines += _wrap(f"note: {note}", "  ")
    d = tr["duration_ms"]
    line = (f"  {tr['count']:,} traces, p50 {_fmt_ms(d['p50'])}, p95 {_fmt_ms(d['p95'])}, "
            f"max {_fmt_ms(d['max'])}; {tr['with_failure_origin']:,} with a failure starting "
            f"{'in ' + svc if svc else 'in them'}")
    if "latency_threshold_ms" in tr:
        line += f"; {tr['over_threshold']:,} over {_fmt_ms(tr['latency_threshold_ms'])}"
    lines += [*_wrap(line.strip(), "  "), ""]
    slow = "latency_threshold_ms" in tr
    many = svc is None
    lines += _op_table("Slowest operations by critical-path time (time the request waited on "
                       "them; slow %: share of the time of traces over the threshold)"
                       if slow else "Slowest operations by critical-path time (time the "
                       "request waited on them)", doc["slowest_by_critical_path"], many, slow)
    lines += _op_table("Slowest operations by exclusive time (their own time, children "
                       "excluded)", doc["slowest_by_exclusive_time"], many, slow)
    lines += _wrap("Where failures start (origin: the deepest failing span; absorbed: a caller "
                   "handled it)", "")
    if not doc["error_origins"]:
        lines.append("  (no failures)")
    for o in doc["error_origins"]:
        rate = f"{100 * o['error_rate']:.2f}%" if o["error_rate"] is not None else "-"
        lines.append(f"  {_cut(_op_label(o, True), 46):<46} {o['errors']:>6} failed "
                     f"{o['absorbed']:>6} absorbed  {rate:>7} of {o['calls']}")
        for cause, n in list(o["causes"].items())[:3]:
            lines.append(f"      {n:>6} × {_cut(cause, 80)}")
        if o["chain"]:
            lines.append(f"      chain: {_cut(' ← '.join(o['chain']), 86)}")
        if o["exemplar_trace_ids"]:
            lines.append(f"      traces: {', '.join(o['exemplar_trace_ids'][:2])}")
    lines.append("")
    lines += _map_lines(doc, top)
    if svc is not None:
        inst = doc["instances"].get(svc, [])
        hosts = doc["hosts"].get(svc, [])
        lines += _wrap(f"Instances of {svc}: {len(inst)} ({', '.join(inst[:6])}"
                       f"{', …' if len(inst) > 6 else ''}); hosts: {len(hosts)} "
                       f"({', '.join(hosts[:6])}{', …' if len(hosts) > 6 else ''})", "")
        lines.append("")
    fs = doc["findings"]
    lines += _finding_lines("Findings: where failures start (error_origin)",
                            fs["error_origin"], top)
    lines += _finding_lines("Findings: latency", fs["latency"], top)
    lines += _finding_lines("Findings: memory and GC of its instances" if svc else
                            "Findings: memory and GC", fs["runtime"], top)
    lines += _finding_lines("Findings: connections (TIME_WAIT) on its hosts" if svc else
                            "Findings: connections (TIME_WAIT)", fs["connections"], top)
    lines += _finding_lines("Other findings in range", fs["other"], top)
    if not any(fs.values()):
        lines += ["Findings: none in range", ""]
    lim = doc["limits"]
    dropped = {k: v for k, v in lim.items() if k.endswith("not_tracked")}
    if dropped:
        lines += _wrap("Limits reached (not in the report): "
                       + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in dropped.items()), "")
    return "\n".join(lines).rstrip() + "\n"
