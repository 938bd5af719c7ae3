"""Check the PromQL port in ``benchmarks.memory_baselines`` against a real Prometheus.

``python -m benchmarks.promql_check [--scenario leak] [--duration 2h] [--seed 1] [--port 19090]``

1. Builds the scenario (default: the ``leak`` preset cut to 2 h) and collects the series the
   memory rules read (``memory_baselines.memory_table``).
2. Writes them as OpenMetrics (``job`` = namespace/service, ``instance`` = service.instance.id,
   point attributes as labels; millisecond timestamps written as exact decimal seconds) and
   backfills them with ``promtool tsdb create-blocks-from openmetrics`` into a temporary TSDB.
3. Starts ``prometheus`` (no scrape targets) on ``127.0.0.1:<port>`` with that TSDB, a 100-year
   retention and the default 5 m lookback, and waits for ``/-/ready``.
4. Queries ``/api/v1/query_range`` over the scenario, step = the rule interval (30 s, so the
   evaluation times are the rules' absolute multiples of 30 s), for each runtime:
   ``predict_linear(heap[1h], 14400)``, ``deriv(heap[10m])``, the GC time
   ``sum by (job, instance) (rate(<gc>_sum[5m]))``, and the full alert conditions
   (``predict_linear(...) > on(job, instance) <limit>``, ``deriv(...) > <threshold>``,
   ``... > 0.1``). A summed ``heap`` is the subquery ``sum by (job, instance) (...)[<r>:30s]``.
5. Compares with the port at the same evaluation times: the maximum relative error
   ``|port - prom| / max(|prom|, 1e-300)`` per expression, evaluations where only one side has a
   value, the times where the conditions disagree, and the alert firing times (``for:`` applied
   to both sides' condition series from the rule load time on) that differ.
6. Stops Prometheus (SIGTERM, then SIGKILL after 20 s) and removes the temporary directory,
   whatever happened.

``--left-open`` is a negative control: the port then selects ranges as Prometheus 3.x does, and
the comparison with 2.42 must show differences.

Prints a table, then one JSON line. Exit status 1 if any value differs by more than
``--tolerance`` (default 1e-9 relative) or any alert time differs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import memory_baselines as mb
from pipeline.simulate import build_scenario
from pipeline.simulate.timefmt import DEFAULT_REPLAY_START


def _label_value(v: object) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _prom_labels(im: mb.InstanceMemory, attrs: mb.Attrs) -> str:
    pairs = [("job", im.job), ("instance", im.instance)] + [
        (k.replace(".", "_"), v) for k, v in attrs]
    return ",".join(f'{k}="{_label_value(v)}"' for k, v in pairs)


def _ts(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


def _num(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def write_openmetrics(table: mb.MemoryTable, path: Path) -> int:
    """Every series of ``table`` as one OpenMetrics file (families grouped); returns samples."""
    families: dict[str, list[tuple[mb.InstanceMemory, mb.Series]]] = {}
    for im in table.instances:
        for s in im.heap:
            families.setdefault(mb.HEAP[im.runtime][2], []).append((im, s))
        if im.limit is not None:
            families.setdefault(mb.LIMIT[im.runtime][2], []).append((im, im.limit))
        for s in im.gc:
            families.setdefault(mb.GC_TIME[im.runtime][1], []).append((im, s))
    n = 0
    with path.open("w") as fh:
        for name, members in sorted(families.items()):
            fh.write(f"# TYPE {name} gauge\n")
            for im, s in members:
                lbl = _prom_labels(im, s.labels)
                for t, v in zip(s.t.tolist(), s.v.tolist(), strict=True):
                    fh.write(f"{name}{{{lbl}}} {_num(v)} {_ts(t)}\n")
                    n += 1
        fh.write("# EOF\n")
    return n


def heap_expr(runtime: str, range_s: int, step_s: int) -> str:
    _, attrs, name, summed = mb.HEAP[runtime]
    sel = name + ("{" + ",".join(f'{k.replace(".", "_")}="{v}"' for k, v in attrs.items()) + "}"
                  if attrs else "")
    if summed:
        return f"sum by (job, instance) ({sel})[{range_s}s:{step_s}s]"
    return f"{sel}[{range_s}s]"


def limit_expr(runtime: str, limit_const: float | None) -> str:
    if runtime not in mb.LIMIT:
        return repr(float(limit_const or 0))
    _, attrs, name = mb.LIMIT[runtime]
    sel = ",".join(f'{k.replace(".", "_")}="{v}"' for k, v in attrs.items())
    return f"on (job, instance) {name}{{{sel}}}" if sel else f"on (job, instance) {name}"


class Prometheus:
    def __init__(self, tsdb: Path, port: int, log: Path) -> None:
        config = tsdb.parent / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1m\n")
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             "--storage.tsdb.retention.time=36500d", f"--web.listen-address=127.0.0.1:{port}",
             "--query.lookback-delta=5m"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError("prometheus not ready in time")

    def query_range(self, expr: str, start_ms: int, end_ms: int, step_s: int
                    ) -> dict[tuple[str, str], dict[int, float]]:
        q = urllib.parse.urlencode({"query": expr, "start": _ts(start_ms), "end": _ts(end_ms),
                                    "step": f"{step_s}s"})
        with urllib.request.urlopen(f"{self.url}/api/v1/query_range?{q}", timeout=120) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{expr}: {body}")
        out: dict[tuple[str, str], dict[int, float]] = {}
        for res in body["data"]["result"]:
            key = (res["metric"].get("job", ""), res["metric"].get("instance", ""))
            out[key] = {int(round(float(t) * 1000)): float(v) for t, v in res["values"]}
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def compare(port: np.ndarray, prom: dict[int, float], evals: np.ndarray) -> dict[str, Any]:
    max_rel, only_port, only_prom, n = 0.0, 0, 0, 0
    for k, t in enumerate(evals.tolist()):
        a, b = float(port[k]), prom.get(t)
        if math.isnan(a) and b is None:
            continue
        if math.isnan(a) or b is None:
            only_port += b is None
            only_prom += math.isnan(a)
            continue
        n += 1
        max_rel = max(max_rel, abs(a - b) / max(abs(b), 1e-300))
    return {"n": n, "max_rel": max_rel, "only_port": only_port, "only_prom": only_prom}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not shutil.which("prometheus") or not shutil.which("promtool"):
        raise SystemExit("needs prometheus and promtool on PATH (apt-get install prometheus)")
    version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True
                             ).stdout.splitlines()[0]
    scenario = build_scenario(args.scenario, args.seed, duration=args.duration,
                              start=DEFAULT_REPLAY_START)
    table = mb.memory_table(scenario)
    cfg = mb.RuleSettings(left_open=args.left_open)
    step = int(cfg.interval_s)
    grid = mb.eval_grid(table.start_ns, table.end_ns, cfg.interval_s)
    load_ms = (table.start_ns + int(cfg.warmup_s * mb.NS)) // mb.MS
    thresholds = mb.deriv_thresholds(table, cfg)
    tmp = Path(tempfile.mkdtemp(prefix="promql-check-"))
    prom: Prometheus | None = None
    try:
        om = tmp / "series.om"
        samples = write_openmetrics(table, om)
        tsdb = tmp / "tsdb"
        t0 = time.perf_counter()
        cb = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om),
                             str(tsdb)], capture_output=True, text=True)
        if cb.returncode:
            raise RuntimeError(f"promtool failed: {cb.stderr[-2000:]}")
        backfill_s = time.perf_counter() - t0
        prom = Prometheus(tsdb, args.port, tmp / "prometheus.log")
        prom.wait_ready()
        rows: list[dict[str, Any]] = []
        alert_diffs: list[dict[str, Any]] = []
        alerts_agreed = 0
        rules = {"predict_linear": cfg.pl_for_s, "deriv": cfg.deriv_for_s, "gc_time": cfg.gc_for_s}
        for runtime in sorted({im.runtime for im in table.instances}):
            ims = [im for im in table.instances if im.runtime == runtime]
            pl_q = f"predict_linear({heap_expr(runtime, int(cfg.pl_range_s), step)}, " \
                   f"{cfg.pl_horizon_s:g})"
            d_q = f"deriv({heap_expr(runtime, int(cfg.deriv_range_s), step)})"
            exprs: dict[str, tuple[str, str | None]] = {
                "predict_linear": (pl_q, f"{pl_q} > {limit_expr(runtime, ims[0].limit_const)}"),
                "deriv": (d_q, f"{d_q} > {thresholds[runtime]!r}" if runtime in thresholds
                          else None),
            }
            if runtime in mb.GC_TIME:
                g_q = f"sum by (job, instance) (rate({mb.GC_TIME[runtime][1]}" \
                      f"[{int(cfg.gc_range_s)}s]))"
                exprs["gc_time"] = (g_q, f"{g_q} > {cfg.gc_threshold!r}")
            for what, (value_q, cond_q) in exprs.items():
                values = prom.query_range(value_q, int(grid[0]), int(grid[-1]), step)
                conds = prom.query_range(cond_q, int(grid[0]), int(grid[-1]), step) \
                    if cond_q else {}
                agg = {"n": 0, "max_rel": 0.0, "only_port": 0, "only_prom": 0}
                cond_diff = 0
                for im in ims:
                    heap = mb.heap_series(im, grid)
                    if what == "predict_linear":
                        port = mb.predict_linear(heap, grid, int(cfg.pl_range_s * 1000),
                                                 cfg.pl_horizon_s, cfg.left_open)
                        with np.errstate(invalid="ignore"):
                            holds = port > mb.limit_at(im, grid)
                    elif what == "deriv":
                        port = mb.deriv(heap, grid, int(cfg.deriv_range_s * 1000),
                                        cfg.left_open)
                        with np.errstate(invalid="ignore"):
                            holds = port > thresholds.get(runtime, math.inf)
                    else:
                        port = mb.gc_time(im, grid, cfg)
                        with np.errstate(invalid="ignore"):
                            holds = port > cfg.gc_threshold
                    c = compare(port, values.get((im.job, im.instance), {}), grid)
                    agg["n"] += c["n"]
                    agg["max_rel"] = max(agg["max_rel"], c["max_rel"])
                    agg["only_port"] += c["only_port"]
                    agg["only_prom"] += c["only_prom"]
                    if cond_q is None:
                        continue
                    prom_cond = conds.get((im.job, im.instance), {})
                    prom_holds = np.array([t in prom_cond for t in grid.tolist()])
                    cond_diff += int((prom_holds != holds).sum())
                    live = grid >= load_ms
                    a = mb.alert_episodes(grid[live], holds[live], rules[what], cfg.interval_s)
                    b = mb.alert_episodes(grid[live], prom_holds[live], rules[what],
                                          cfg.interval_s)
                    alerts_agreed += len(set(a) & set(b))
                    if a != b:
                        alert_diffs.append({"rule": what, "instance": im.instance,
                                            "port": a, "prometheus": b})
                rows.append({"runtime": runtime, "expr": what, "query": value_q,
                             "condition": cond_q, **agg, "condition_diffs": cond_diff})
    finally:
        if prom is not None:
            prom.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    worst = max((r["max_rel"] for r in rows), default=0.0)
    mismatched = sum(r["only_port"] + r["only_prom"] + r["condition_diffs"] for r in rows)
    result = {
        "prometheus": version, "scenario": scenario.name, "seed": scenario.seed,
        "duration_s": scenario.duration_s, "instances": len(table.instances),
        "samples": samples, "backfill_s": round(backfill_s, 2),
        "evaluations": int(grid.size), "step_s": step, "compared": sum(r["n"] for r in rows),
        "max_rel_error": worst, "presence_or_condition_mismatches": mismatched,
        "alerts_agreed": alerts_agreed,
        "alert_time_differences": alert_diffs, "deriv_thresholds": thresholds, "rows": rows,
        "ok": worst <= args.tolerance and not alert_diffs and not mismatched,
    }
    print(f"PromQL check: {version}; {scenario.name} seed {scenario.seed}, "
          f"{scenario.duration_s / 3600:.1f} h, {len(table.instances)} instances, {samples:,} "
          f"samples backfilled in {backfill_s:.1f} s; {grid.size} evaluations every {step} s",
          file=sys.stderr)
    print(f"  {'runtime':8s} {'expr':15s} {'compared':>8s} {'max rel err':>12s} "
          f"{'only port':>9s} {'only prom':>9s} {'cond diffs':>10s}", file=sys.stderr)
    for r in rows:
        print(f"  {r['runtime']:8s} {r['expr']:15s} {r['n']:8d} {r['max_rel']:12.3g} "
              f"{r['only_port']:9d} {r['only_prom']:9d} {r['condition_diffs']:10d}",
              file=sys.stderr)
    print(f"  alert firing times (rules loaded after the {cfg.warmup_s / 60:.0f} min warm-up): "
          f"{alerts_agreed} identical, {len(alert_diffs)} series with a difference",
          file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.promql_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="leak")
    p.add_argument("--duration", default="2h")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=19090)
    p.add_argument("--tolerance", type=float, default=1e-9)
    p.add_argument("--left-open", action="store_true",
                   help="negative control: evaluate the port with Prometheus 3.x range selection "
                   "((t - r, t]); against 2.42 the check should then fail")
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}
                     | {"rows": [{k: v for k, v in r.items() if k not in ("query", "condition")}
                                 for r in result["rows"]]}))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
