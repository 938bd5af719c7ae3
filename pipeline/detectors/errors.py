"""Where failures start: ``error_origin`` findings, from trace samples. Pure.

Input: ``TraceSample`` records (one per completed trace and service), routed by service, whose
operations count the failures that *started* in them (``OpTime.errors``): trace assembly finds,
in each trace, the deepest erroring span whose error no erroring child explains
(``pipeline.traces.error_origins``; what counts as an error is ``traces.in_error``: status
ERROR, a server's 5xx or gRPC failure, an exception event — not a client's 4xx). A failure that
propagates up the call chain is counted once, at its origin; its callers' failing spans are
not counted again. Failures a caller absorbed (a retry that succeeded, a fallback) are counted
apart (``OpTime.absorbed``): evidence, never a finding, since the request's result was fine.

**Rates and baselines.** Per operation (service, span name, detail: as the bottleneck detector
names them, so an outgoing call is one operation per destination) and tumbling event-time
window (``window_s``, 30 s): calls (its spans) and the failures that started there. The
baseline is an exponentially weighted count of failures and calls over the normal windows
(``baseline_windows``, 120: about an hour at 30 s), with a prior of ``prior_calls`` calls at
``prior_rate`` (50 at 1 %), so that an operation with little history is judged against a low
but not zero rate, and a steady background rate is learnt. Windows judged anomalous do not
enter the baseline (up to ``freeze_max_windows`` in a row).

**Sparse traffic**, as in the latency baselines: a window with fewer than ``min_calls`` calls
(20) carries them over to the operation's next windows, judged together once they are enough or
``max_window_s`` (10 minutes) has passed.

**Verdict.** A window is anomalous when at least ``min_errors`` (3) failures started in the
operation, its rate is at least ``rel_threshold`` (3) times the baseline and ``min_excess``
(2 percentage points) over it, and the binomial tail probability of that many failures at the
baseline rate is under ``alpha`` (1e-6): a rare failure on a busy operation does not fire, a
burst does. Findings open after ``open_after`` anomalous windows (2) and resolve after
``resolve_after`` normal ones (3); an operation with no calls counts as normal.

**Evidence.** Baseline and observed rates, calls, failures (and absorbed ones), the p-value, up
to five exemplar trace ids, the exception type and bounded message recorded on the origin (or
the nearest span of its chain that recorded one), the HTTP / gRPC status, the chain of spans the
failure went through up to the root, the callers that saw it, and safe next steps.

**Bounded state.** At most ``max_operations`` operations per partition (the least recently
seen one without a firing finding goes first, counted ``evicted_operations``), each expiring
after ``operation_ttl_s`` unseen (``expired_operations``); windows hold at most five exemplars.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from scipy.stats import binom

from pipeline.detectors.base import Detector, DetectorStats
from pipeline.detectors.trace_assembly import (
    CALL,
    CALLEE,
    DB_KEYS,
    INBOUND,
    destination_of,
    op_entity,
    op_key,
    op_name,
    split_op,
)
from pipeline.findings import Finding, Lifecycle, Verdict, rfc3339
from pipeline.records import TraceSample
from pipeline.state import State

ERROR_ORIGIN = "error_origin"
RATE_GAUGE = "anomaly_pipeline_error_origin_rate"
ABSORBED_COUNTER = "anomaly_pipeline_error_origin_absorbed"


class _Op:
    """One operation: its baseline (weighted failures and calls), the window it was last
    judged in, its current window's and its carried counts, and what names it."""

    __slots__ = ("bad", "calls", "judged", "run", "attrs", "seen_ns", "acc", "open", "ent")

    def __init__(self) -> None:
        self.bad = 0.0  # weighted failures of normal windows
        self.calls = 0.0  # weighted calls of normal windows
        self.judged = -1  # index of the window last judged (decay is by windows since)
        self.run = 0  # anomalous windows in a row (the baseline freezes while they last)
        self.attrs: dict[str, Any] = {}
        self.seen_ns = 0
        # [first window, calls, failures, absorbed, exemplars ([hash, trace id], the five of
        # smallest hash), evidence ([absorbed?, hash, what the origin said]: of the surfaced
        # failure of smallest hash, else the absorbed one's)] of the closed windows
        # not yet judged (carried over), or None; and the same of each window still open
        # (by window index, as a string: a JSON key)
        self.acc: list[Any] | None = None
        self.open: dict[str, list[Any]] = {}
        self.ent: dict[str, str] | None = None  # the entity of its firing finding

    def to_doc(self) -> dict[str, Any]:
        return {"b": self.bad, "c": self.calls, "j": self.judged, "r": self.run,
                "a": self.attrs, "s": self.seen_ns, "w": self.acc, "o": self.open,
                "e": self.ent}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> _Op:
        op = cls()
        op.bad, op.calls, op.judged, op.run = doc["b"], doc["c"], doc["j"], doc["r"]
        op.attrs, op.seen_ns, op.acc = dict(doc["a"]), doc["s"], doc["w"]
        op.open, op.ent = dict(doc["o"]), doc["e"]
        return op


class ErrorOriginDetector(Detector):
    name = "error_origin"
    version = "1"
    signal = "traces"
    kinds = (ERROR_ORIGIN,)

    def __init__(
        self,
        window_s: float = 30.0,
        baseline_windows: int = 120,
        prior_calls: float = 50.0,
        prior_rate: float = 0.01,
        min_calls: int = 20,
        max_window_s: float = 600.0,
        min_errors: int = 3,
        rel_threshold: float = 3.0,
        min_excess: float = 0.02,
        alpha: float = 1e-6,
        open_after: int = 2,
        resolve_after: int = 3,
        freeze_max_windows: int = 240,
        max_operations: int = 5_000,
        operation_ttl_s: float = 7 * 86400.0,
    ) -> None:
        if window_s <= 0 or max_window_s < window_s or baseline_windows < 1:
            raise ValueError("need window_s > 0, max_window_s >= window_s, baseline_windows >= 1")
        if not 0 < prior_rate < 1 or prior_calls <= 0 or min_errors < 1 or min_calls < 1:
            raise ValueError("need 0 < prior_rate < 1, prior_calls > 0, min_errors/calls >= 1")
        self.window_ns = int(window_s * 1e9)
        self.decay = 1.0 - 1.0 / baseline_windows
        self.prior_calls, self.prior_rate = prior_calls, prior_rate
        self.min_calls, self.min_errors = min_calls, min_errors
        self.max_carry = max(1, int(max_window_s // window_s))
        self.rel_threshold, self.min_excess, self.alpha = rel_threshold, min_excess, alpha
        self.freeze_max = freeze_max_windows
        self.max_operations = max_operations
        self.ttl_ns = int(operation_ttl_s * 1e9)
        self.state = State()
        self.lifecycle = Lifecycle(ERROR_ORIGIN, self.name, self.version, open_after,
                                   resolve_after, max_operations, prefix="l")
        self.state.add(self.lifecycle.store)
        self._ops = self.state.keyed("o", encode=_Op.to_doc,
                                     decode=lambda doc, key: _Op.from_doc(doc),
                                     cap=max_operations)
        self._meta = self.state.cell("meta", {
            "counts": {"evicted_operations": 0, "expired_operations": 0, "late_samples": 0},
            "closed_until": -1,
        })
        self._absorbed = 0  # since this object was created (a counter's increase, not state)

    @classmethod
    def from_settings(cls, settings: Any) -> ErrorOriginDetector:
        return cls(
            window_s=settings.bottleneck_window_s,
            max_window_s=settings.bottleneck_max_window_s,
            max_operations=settings.bottleneck_max_operations,
            operation_ttl_s=settings.bottleneck_baseline_ttl_s,
        )

    # -- the work --------------------------------------------------------------------------
    def update(self, records: Sequence[TraceSample]) -> None:
        closed_until = self._meta["closed_until"]
        ops = self._ops
        for sample in records:
            w = sample.end_ns // self.window_ns
            if w <= closed_until:
                self._count("late_samples")
                continue
            for o in sample.ops:
                if o.operation == INBOUND:
                    continue  # copies of callers' calls, counted on the callers' side
                key = f"{sample.service}|{o.operation}|{o.detail}"
                op = ops.get(key)
                if op is None:
                    if not ops.make_room(evict=self._evicted,
                                         protect=lambda k, _op: self._firing(k)):
                        continue
                    op = _Op()
                    op.judged = w - 1
                    ops.put(key, op)
                if o.attrs and (not op.attrs or (CALLEE in o.attrs
                                                 and op.attrs.get(CALLEE) != o.attrs[CALLEE])):
                    op.attrs = dict(o.attrs)
                op.seen_ns = max(op.seen_ns, sample.end_ns)
                acc = op.open.get(str(w))
                if acc is None:
                    acc = op.open[str(w)] = [w, 0, 0, 0, [], None]
                acc[1] += o.spans
                if o.errors or o.absorbed:
                    # Which traces are kept does not depend on the order they come in (the
                    # same findings from any partitioning or pace): the smallest hashes.
                    h = zlib.crc32(sample.trace_id.encode())
                    _merged(acc, [w, 0, o.errors, o.absorbed,
                                  [[h, sample.trace_id]] if o.errors else [],
                                  [0 if o.errors else 1, h, o.error] if o.error else None])
                ops.changed(key)

    def advance(self, watermark_ns: int) -> list[Finding]:
        """Judge every window the watermark has passed, one at a time and in order, whether
        it passed them one by one or many at once (a backlog, the end of the input): the same
        findings at any pace."""
        meta = self._meta
        last = watermark_ns // self.window_ns - 1  # windows ending at or before the watermark
        prev = meta["closed_until"]
        if last <= prev:
            return []
        meta["closed_until"] = last
        meta.changed()
        end_ns = (last + 1) * self.window_ns
        out: list[tuple[int, str, Finding]] = []
        expired = []
        for key, op in list(self._ops.items()):
            if op.seen_ns + self.ttl_ns < end_ns and not self._firing(key):
                expired.append(key)
                continue
            closing = sorted(int(w) for w in op.open if int(w) <= last)
            if not closing and op.acc is None and not self._firing(key):
                continue
            cursor = prev + 1
            for w in [*closing, None]:
                quiet_to = last if w is None else w - 1
                if cursor <= quiet_to:  # windows without calls
                    self._quiet(key, op, cursor, quiet_to, out)
                if w is None:
                    break
                op.acc = _merged(op.acc, op.open.pop(str(w)))
                self._try_judge(key, op, w, out)
                cursor = w + 1
            self._ops.changed(key)
        for key in expired:
            self._ops.pop(key)
            self._count("expired_operations")
        out.sort(key=lambda x: (x[0], x[1]))
        return [f for _, _, f in out]

    def _try_judge(self, key: str, op: _Op, w: int, out: list[Any]) -> None:
        """Judge the carried windows at window ``w``, unless they have too few calls, or
        failures above the baseline that are not yet significant, and may wait longer."""
        acc = op.acc
        assert acc is not None
        carried = w - acc[0] + 1
        if carried < self.max_carry and (
                (acc[1] < self.min_calls and acc[2] < self.min_errors)
                or self._undecided(op, acc, w)):
            return
        op.acc = None
        self._observe(key, op, w, self._judge(key, op, acc, w), out)

    def _quiet(self, key: str, op: _Op, first: int, last: int, out: list[Any]) -> None:
        """Windows ``first``..``last`` held no call: carried calls that have waited their
        longest are judged; a firing finding counts them as normal (it resolves)."""
        if op.acc is not None:
            due = op.acc[0] + self.max_carry - 1
            if due > last:
                return
            due = max(first, due)
            self._try_judge(key, op, due, out)
            first = due + 1
        for w in range(first, min(last, first + self.lifecycle.resolve_after - 1) + 1):
            if not self._firing(key):
                break
            self._observe(key, op, w, None, out)

    def _observe(self, key: str, op: _Op, w: int, verdict: Verdict | None,
                 out: list[Any]) -> None:
        # The entity of a firing finding is kept until it resolves (the callee the traces
        # name may change meanwhile: a failing call has no server span answering it).
        entity = op.ent or _entity(key, op.attrs)
        # (severity only rises while a finding fires: pipeline.findings.Lifecycle sees to it)
        f = self.lifecycle.observe(entity, (w + 1) * self.window_ns, verdict)
        if f is not None:
            out.append((w, key, f))
            op.ent = entity if f.status == "firing" else None

    def _baseline(self, op: _Op, last: int) -> tuple[float, float, float]:
        """The baseline's failures and calls decayed to window ``last``, and its rate."""
        weight = self.decay ** max(1, last - op.judged)
        bad, calls = op.bad * weight, op.calls * weight
        p0 = (bad + self.prior_rate * self.prior_calls) / (calls + self.prior_calls)
        return bad, calls, p0

    def _suspicious(self, bad: int, calls: int, p0: float) -> bool:
        rate = bad / calls if calls else 0.0
        return (bad >= self.min_errors and rate >= self.rel_threshold * p0
                and rate - p0 >= self.min_excess)

    def _undecided(self, op: _Op, acc: list[Any], last: int) -> bool:
        """Failures above the baseline but not yet significant: rather than learn them as
        normal, wait for the next windows' calls (sparse traffic, a slow start)."""
        p0 = self._baseline(op, last)[2]
        return self._suspicious(acc[2], acc[1], p0) and float(
            binom.sf(acc[2] - 1, acc[1], p0)) > self.alpha

    def _judge(self, key: str, op: _Op, acc: list[Any], last: int) -> Verdict | None:
        _, calls, bad, absorbed, kept, best = acc
        exemplars = [tid for _, tid in kept]
        evidence = best[2] if best else None
        self._absorbed += absorbed
        # Decay the baseline by the windows since it was last judged, then judge against it.
        base_bad, base_calls, p0 = self._baseline(op, last)
        op.judged = last
        rate = bad / calls if calls else 0.0
        anomalous = self._suspicious(bad, calls, p0)
        p_value = float(binom.sf(bad - 1, calls, p0)) if anomalous else 1.0
        anomalous = anomalous and p_value <= self.alpha
        if anomalous and op.run < self.freeze_max:
            op.run += 1
            op.bad, op.calls = base_bad, base_calls  # the fault is not learnt as normal
        else:
            op.run = 0
            op.bad, op.calls = base_bad + bad, base_calls + calls
        if not anomalous:
            return None
        service, operation, detail = split_op(key)
        ev = dict(evidence or {})
        chain = ev.pop("chain", [])
        reached = ev.pop("reached_root", None)
        exc_type = ev.get("exception.type")
        exc_msg = ev.get("exception.message")
        name = op_name(key)
        peer = _peer(op.attrs, detail)
        callers = []
        for step in chain[1:]:
            svc = step.split(":", 1)[0]
            if svc != service and svc not in callers:
                callers.append(svc)
        cause = f": {exc_type}" + (f": {exc_msg}" if exc_msg else "") if exc_type else (
            f": {ev['status.message']}" if ev.get("status.message") else "")
        via = f", reaching {' <- '.join(callers[:3])}" if callers else ""
        summary = (f"{service}: {name} is where failures start: {rate:.1%} of {calls} calls "
                   f"failed here (baseline {p0:.2%}){cause}{via}")
        # Failures users see (they reached the request's result) are critical.
        severity = "critical" if reached else "warning"
        evidence_doc = {
            "baseline": {"error_rate": round(p0, 5), "calls": round(base_calls, 1)},
            "observed": {"error_rate": round(rate, 5), "calls": calls, "errors": bad,
                         "absorbed": absorbed},
            "window": {"start": rfc3339(acc[0] * self.window_ns),
                       "end": rfc3339((last + 1) * self.window_ns)},
            "p_value": p_value,
            "exemplar_trace_ids": list(exemplars),
            "origin": {"service": service, "operation": operation, "detail": detail,
                       **({"peer_service": peer} if peer else {})},
            "chain": chain,
            "reached_root": reached,
            "callers": callers,
        }
        if exc_type:
            evidence_doc["exception"] = {"type": exc_type, "message": exc_msg,
                                         "recorded_by": ev.get("exception.recorded_by")}
        elif ev.get("status.message"):
            evidence_doc["status_message"] = ev["status.message"]
        if "http.status_code" in ev:
            evidence_doc["http_status_code"] = ev["http.status_code"]
        if "rpc.grpc.status_code" in ev:
            evidence_doc["grpc_status_code"] = ev["rpc.grpc.status_code"]
        return Verdict(severity, summary, evidence_doc,
                       _next_steps(service, name, list(exemplars), peer, op.attrs))

    def _firing(self, key: str) -> bool:
        op = self._ops.get(key)
        if op is None:
            return False
        return self.lifecycle.is_firing(op.ent or _entity(key, op.attrs))

    def _evicted(self, key: str, _op: _Op) -> None:
        self._count("evicted_operations")

    def _count(self, reason: str, n: int = 1) -> None:
        self._meta["counts"][reason] += n
        self._meta.changed()

    def stats(self) -> DetectorStats:
        counts = dict(self._meta["counts"])
        counts["findings_evicted"] = self.lifecycle.evicted
        out = DetectorStats(tracked=len(self._ops), evicted=counts,
                            firing=self.lifecycle.firing())
        out.counters[(ABSORBED_COUNTER, ())] = self._absorbed
        for st in self.lifecycle.active():
            k = (ERROR_ORIGIN, st["severity"])
            out.active[k] = out.active.get(k, 0) + 1
            e = st["entity"]
            rate = st["last"][2].get("observed", {}).get("error_rate")
            if rate is not None:
                out.gauges[(RATE_GAUGE, (("service_name", e["service"]),
                                         ("operation", op_name(op_key(e)))))] = float(rate)
        return out


def _keep(exemplars: list[list[Any]], ex: list[Any]) -> None:
    """Keep the five exemplars of smallest hash, sorted."""
    if ex in exemplars or (len(exemplars) >= 5 and ex >= exemplars[-1]):
        return
    exemplars.append(ex)
    exemplars.sort()
    del exemplars[5:]


def _merged(acc: list[Any] | None, window: list[Any]) -> list[Any]:
    """Counts plus one more window's, or one more trace's (exemplars: the five of smallest
    hash; evidence: of the surfaced failure of smallest hash, else the absorbed one's)."""
    if acc is None:
        return window
    acc[1] += window[1]
    acc[2] += window[2]
    acc[3] += window[3]
    for ex in window[4]:
        _keep(acc[4], ex)
    if window[5] is not None and (acc[5] is None or window[5][:2] < acc[5][:2]):
        acc[5] = window[5]
    return acc


def _peer(attrs: Mapping[str, Any], detail: str) -> str:
    """The service an outgoing call goes to: the callee whose server spans answered it in the
    traces, else what the span names; "" for an operation that is not a call."""
    if CALLEE in attrs:
        return str(attrs[CALLEE])
    if attrs.get(CALL) or any(k in attrs for k in DB_KEYS):
        return destination_of(attrs) or detail
    return ""


def _entity(key: str, attrs: Mapping[str, Any]) -> dict[str, str]:
    entity = op_entity(key)
    peer = _peer(attrs, entity.get("operation_detail", ""))
    if peer:
        entity["peer_service"] = peer
    return entity


def _next_steps(service: str, name: str, exemplars: list[str], peer: str,
                attrs: Mapping[str, Any]) -> list[str]:
    ids = ", ".join(exemplars[:3]) or "the exemplar traces"
    steps = [
        f"Open the exemplar traces ({ids}) and read the failing span's events: the "
        "exception and its stack trace are recorded there.",
        f"Read {service}'s logs for those trace ids (filter on trace_id) around the window's "
        "start.",
        f"Check what changed in {service} when the failures started: deploys "
        "(service.version), configuration and feature flags.",
    ]
    if peer:
        what = "database" if any(k in attrs for k in DB_KEYS) else "dependency"
        steps.append(
            f"The failures start at {service}'s calls to the {what} {peer}: check {peer}'s "
            "own health, errors and limits (connections, quotas) from its dashboards; "
            "its server side sends no spans.")
    else:
        steps.append(f"Compare {name} with its callers' errors: they fail because of it, so "
                     "fix here first; a caller's retries will not help.")
    return steps
