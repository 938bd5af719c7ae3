"""TIME_WAIT buildup and ephemeral-port exhaustion risk, per host. Pure: no Faust, no Kafka.

Input: a host's connection metrics (``pipeline.connections``: the hostmetrics receiver's
``system.network.connections``, node_exporter's ``node_sockstat_TCP_tw``,
``node_netstat_Tcp_CurrEstab``, ``node_netstat_Tcp_ActiveOpens``, the port-range sysctl), routed
by host, and as a side input the client calls the host's services made (``HostCalls``, derived
from their CLIENT spans by ``pipeline.detectors.client_calls``). Everything runs in event time: a
host's samples are folded in time order once the watermark has passed them.

**Why relative to load.** The side that closes a TCP connection first holds it in TIME_WAIT for
60 s, so a host closing ``r`` connections a second holds about ``60·r``. With pooled keep-alive
connections ``r`` is small and grows a little with traffic; when a client stops reusing
connections, ``r`` becomes its call rate. So TIME_WAIT is judged against the host's load:
the calls its services make (client spans) and the connections it holds open (ESTABLISHED,
which pools size to concurrency), each as a ratio learned per host over its last
``baseline_minutes`` normal minutes (median of per-minute medians, after ``warmup_s``). A
sample is *elevated* when TIME_WAIT is at least ``factor`` (2) times what *every* available
load measure expects and at least ``min_excess`` (100) sockets over it: a traffic spike or the
daily curve moves load and TIME_WAIT together; a loss of reuse moves TIME_WAIT alone.

**Sustained, not a blip.** A finding opens when samples have been elevated for ``sustain_s``
(75 s) without a break and the excess is still at least ``hold_fraction`` of its peak in that
episode. A reconnect storm after a deploy (every client reopening its pool at once) raises
TIME_WAIT for about a minute and then drains 60 s later: by the time it has lasted 75 s it is
draining, so it opens nothing. A finding resolves after ``resolve_s`` (120 s) without an
elevated sample. Elevated samples never enter the baseline.

**Time to exhaustion.** Ports run out for one destination (address and port) when its TIME_WAIT
sockets fill the ephemeral range (``PORT_RANGES``, or the host's
``node_sysctl_net_ipv4_ip_local_port_range``; Linux default 32768–60999, 28,232 ports). With a
steady close rate ``r`` TIME_WAIT levels off at ``60·r``: if that plateau is over the range the
ports run out in ``(ports − TIME_WAIT) / r``, else they do not run out at this rate. When the
rate itself grows (TIME_WAIT climbing over its last four samples at 0.6–1.6 times the slope
of the four before: a steady climb, not the 60 s ramp of a step that is levelling off), the
estimate is ``(ports − TIME_WAIT) / slope``. The close rate is the
host's connection-open rate (``ActiveOpens``) where sent, else ``max(TIME_WAIT/60, slope)``.
The host's whole TIME_WAIT count is compared with the range, as if the churn went to one
destination (the usual case: one client, one peer); the evidence says so.

**Attribution.** From the client calls of the last minutes: each (service, destination) pair's
call rate against the extra closes per second. A pair whose call rate matches the extra closes
(0.6–1.5x) is opening a connection per call (no keep-alive, or a client built per request);
more closes than calls means several connections per call; far fewer means connections last
a few calls each (a pool too small for the load, or a short idle timeout). A per-destination
breakdown in the connection metrics, where sent, names the destinations directly.

**Bounded state.** At most ``max_hosts`` hosts per partition (the least recently updated one
that has no firing finding is evicted, counted), a host silent for ``host_ttl_s`` expires (its
finding resolves); hosts and findings are ``pipeline.state.Keyed`` maps; per host, the last
``recent_s`` of samples, ``baseline_minutes`` minute summaries, and the client calls of the
last ``calls_minutes`` minutes and of up to ``calls_ahead_s`` ahead of the host's samples
(``max_pairs`` pairs a minute).

**The two stages need not keep pace.** The span stage may run far ahead of this one (reading
a backlog, spans are cheaper per second of traffic than metrics) or behind it. Samples wait
for the calls of their minutes (the side watermark; at most ``MAX_PENDING_SAMPLES``), and
calls that arrive ahead wait for their samples (up to ``calls_ahead_s``). A sample whose
calls are known to be missing (dropped beyond ``calls_ahead_s``, or not waited for) is not
judged on the connections alone when the host's baseline uses its calls: it would judge the
load-driven TIME_WAIT of a busy minute against an idle baseline. It is counted
(``calls_unknown``) and skipped, so what is found does not depend on which stage ran ahead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from pipeline import connections as conn
from pipeline.detectors.base import Detector, DetectorStats
from pipeline.findings import Finding, Lifecycle, Verdict, rfc3339
from pipeline.records import HostCalls, MetricPoint
from pipeline.state import DueKeys, State

KIND = "time_wait_buildup"
TTE_GAUGE = "anomaly_pipeline_time_wait_time_to_exhaustion_seconds"
COUNT_GAUGE = "anomaly_pipeline_time_wait_sockets"
NS = 1_000_000_000
MINUTE_NS = 60 * NS
TICK_TOLERANCE_NS = NS  # points of one host less than this apart are one sample
# Samples one host may hold while they wait for the span stage's client calls (an hour at
# the usual 10 s interval); past this the oldest are judged without waiting (counted).
MAX_PENDING_SAMPLES = 360
SOURCE_STALE_NS = 300 * NS  # a host's TIME_WAIT source silent this long gives way to another
CALLS_MAX_AGE_NS = 4 * MINUTE_NS  # client calls older than this say nothing about load now
MIN_CALLS_PER_S = 0.5  # below this the call rate is no load measure
SEVERITY_ORDER = ("info", "warning", "critical")
TIE_LOG_RATIO = 0.2  # candidates whose fit is within this (natural log) of the best are tied
#: A traced client needing more new connections per call than this to explain the churn does
#: not explain it (on the real corpus an untraced client's 235 closes/s were put on a traced
#: service making 7 calls/s: 28 per call).
MAX_CONNECTIONS_PER_CALL = 8.0


class _Host:
    __slots__ = (
        "host", "src", "src_seen", "pending", "last_t", "est", "opens", "ports", "recent",
        "minutes", "cur", "calls", "episode", "seen_ns", "dests", "lost",
    )

    def __init__(self, host: str) -> None:
        self.host = host
        self.src = ""  # the emitter whose TIME_WAIT and ESTABLISHED counts are used
        self.src_seen = 0
        self.pending: dict[int, dict[str, Any]] = {}  # t -> role -> value, waiting for wm
        self.last_t = 0
        self.est: float | None = None  # ESTABLISHED now
        self.opens: list[float] | None = None  # [t_ns, counter, rate per s or -1]
        self.ports: int | None = None  # from the port-range metric
        self.recent: list[list[float]] = []  # [t_ns, time_wait, open rate or -1]
        # normal minutes, oldest first: [minute, TIME_WAIT/ESTABLISHED, TIME_WAIT/calls per s
        # or None, TIME_WAIT]
        self.minutes: list[list[Any]] = []
        self.cur: list[Any] | None = None  # this minute's normal samples: [minute, [...]...]
        self.calls: dict[str, dict[str, int]] = {}  # minute -> "service\x1fdest" -> calls
        self.episode: dict[str, Any] | None = None  # the current run of elevated samples
        self.seen_ns = 0
        self.dests: dict[str, float] = {}  # TIME_WAIT per destination, where metrics say
        # [first, last] minute of client calls dropped (too far ahead of the samples): the
        # samples that would be judged on them are not
        self.lost: list[int] | None = None

    def to_doc(self) -> dict[str, Any]:
        return {
            "h": self.host, "s": self.src, "ss": self.src_seen,
            "p": [[t, v] for t, v in sorted(self.pending.items())], "lt": self.last_t,
            "e": self.est, "o": self.opens, "po": self.ports, "r": self.recent,
            "m": self.minutes, "c": self.cur, "ca": self.calls, "ep": self.episode,
            "sn": self.seen_ns, "d": self.dests, "l": self.lost,
        }

    @classmethod
    def from_doc(cls, d: Mapping[str, Any]) -> _Host:
        x = cls(d["h"])
        x.src, x.src_seen = d["s"], d["ss"]
        x.pending = {int(t): dict(v) for t, v in d["p"]}
        x.last_t, x.est, x.opens, x.ports = d["lt"], d["e"], d["o"], d["po"]
        x.recent, x.minutes, x.cur = list(d["r"]), list(d["m"]), d["c"]
        x.calls = {k: dict(v) for k, v in d["ca"].items()}
        x.episode, x.seen_ns, x.dests = d["ep"], d["sn"], dict(d["d"])
        x.lost = d.get("l")  # (absent from state saved before it existed)
        return x


class TimeWaitDetector(Detector):
    name = "timewait"
    version = "1"
    signal = "metrics"
    kinds = (KIND,)

    def __init__(
        self,
        port_ranges: Mapping[str, int] | None = None,
        factor: float = 2.0,
        min_excess: float = 100.0,
        sustain_s: float = 75.0,
        hold_fraction: float = 0.7,
        resolve_s: float = 120.0,
        warmup_s: float = 300.0,
        baseline_minutes: int = 60,
        recent_s: float = 300.0,
        calls_minutes: int = 10,
        calls_ahead_s: float = 7200.0,
        max_pairs: int = 50,
        max_hosts: int = 5_000,
        host_ttl_s: float = 1800.0,
    ) -> None:
        if factor <= 1 or min_excess < 0 or sustain_s < 0 or not 0 < hold_fraction <= 1:
            raise ValueError("need factor > 1, min_excess >= 0, sustain_s >= 0, "
                             "0 < hold_fraction <= 1")
        self.port_ranges = dict(port_ranges or {})
        self.default_ports = self.port_ranges.get(
            "*", conn.LINUX_PORT_RANGE[1] - conn.LINUX_PORT_RANGE[0] + 1
        )
        self.factor, self.min_excess = factor, min_excess
        self.sustain_ns, self.hold_fraction = int(sustain_s * NS), hold_fraction
        self.resolve_ns = int(resolve_s * NS)
        self.warmup_minutes = max(1, math.ceil(warmup_s / 60))
        self.baseline_minutes = baseline_minutes
        self.recent_ns = int(recent_s * NS)
        self.calls_minutes, self.max_pairs = calls_minutes, max_pairs
        self.calls_ahead_ns = int(calls_ahead_s * NS)
        self.max_hosts, self.ttl_ns = max_hosts, int(host_ttl_s * NS)
        self.state = State()
        self.lc = Lifecycle(KIND, self.name, self.version, 1, 1, max_hosts, prefix="lc")
        self.state.add(self.lc.store)
        self._hosts = self.state.keyed(
            "h", encode=_Host.to_doc, decode=lambda doc, name: _Host.from_doc(doc),
            cap=max_hosts)
        # hosts with pending samples, by when the watermark reaches the first
        self._waiting = DueKeys()
        self._meta = self.state.cell("meta", {
            "counts": {"evicted_hosts": 0, "expired_hosts": 0, "late_points": 0,
                       "other_sources": 0, "calls_dropped": 0, "side_wait_exceeded": 0,
                       "calls_unknown": 0},
            "exp": 0,  # when hosts were last expired
        })

    @classmethod
    def from_settings(cls, settings: Any) -> TimeWaitDetector:
        return cls(
            port_ranges=conn.parse_port_ranges(settings.time_wait_port_ranges),
            factor=settings.time_wait_factor,
            min_excess=settings.time_wait_min_excess,
            sustain_s=settings.time_wait_sustain_s,
            warmup_s=settings.time_wait_warmup_s,
            calls_ahead_s=settings.time_wait_calls_ahead_s,
            max_hosts=settings.time_wait_max_hosts,
        )

    # -- folding ------------------------------------------------------------------------------
    def update(self, records: Sequence[MetricPoint]) -> None:
        with self._hosts.batch():  # a host's change recorded once per batch
            self._update(records)

    def _update(self, records: Sequence[MetricPoint]) -> None:
        for p in records:
            if p.name not in conn.HOST_METRICS or p.value is None:
                continue
            role = conn.classify(p.name, p.attrs)
            if role is None:
                continue
            name = conn.host_of(p.resource)
            if not name:
                continue
            h = self._host(name, p.time_ns)
            if h is None:
                continue
            t = p.time_ns
            if t <= h.last_t:
                self._count("late_points")
                continue
            self._hosts.changed(name)
            self._waiting.touch(name)
            if t > h.seen_ns:
                h.seen_ns = t
            tick = h.pending.get(t)
            if tick is None:
                near = [k for k in h.pending if abs(k - t) < TICK_TOLERANCE_NS]
                tick = h.pending[near[0]] if near else h.pending.setdefault(t, {})
            value = float(p.value)
            if role in (conn.TIME_WAIT, conn.ESTABLISHED):
                # Kept per emitter: one is chosen when the sample is folded, in event time
                # (hostmetrics and the Python instrumentation in every process would each
                # report the same host-wide count; which arrives first depends on the read).
                src = f"{p.name.split('_')[0]}|{p.resource.key}"
                by = tick.setdefault("by", {}).setdefault(src, {})
                by[role] = by.get(role, 0.0) + value  # families, processes, destinations
                dest = conn.destination(p.attrs) if role == conn.TIME_WAIT else ""
                if dest:
                    d = by.setdefault("d", {})
                    d[dest] = d.get(dest, 0.0) + value
            else:
                tick[role] = value

    def update_side(self, records: Sequence[Any]) -> None:
        for c in records:
            if not isinstance(c, HostCalls):
                continue
            h = self._host(c.host, c.minute_ns)
            if h is None:
                continue
            self._hosts.changed(c.host)
            m = c.minute_ns
            # Held from the host's newest sample (or, before its first, its oldest calls)
            # up to calls_ahead_s; beyond that dropped, and the minute remembered as lost.
            ref = h.last_t or min((int(k) for k in h.calls), default=m)
            if m > ref + self.calls_ahead_ns:
                h.lost = [min(h.lost[0], m), max(h.lost[1], m)] if h.lost else [m, m]
                self._count("calls_dropped")
                continue
            bucket = h.calls.setdefault(str(m), {})
            pair = f"{c.service}\x1f{c.destination}"
            if pair in bucket or len(bucket) < self.max_pairs:
                bucket[pair] = bucket.get(pair, 0) + c.calls
            self._prune_calls(h)

    def _prune_calls(self, h: _Host) -> None:
        """Drop the minutes no sample of the host will need again (older than
        ``calls_minutes`` before its newest)."""
        horizon = h.last_t - self.calls_minutes * MINUTE_NS
        for k in [k for k in h.calls if int(k) < horizon]:
            del h.calls[k]

    def _host(self, name: str, t: int) -> _Host | None:
        h = self._hosts.get(name)
        if h is None:
            if not self._hosts.make_room(
                protect=lambda k, _h: self.lc.is_firing({"host": k}), evict=self._evicted
            ):
                return None
            h = _Host(name)
            h.seen_ns = t
            self._hosts.put(name, h)
        return h

    def _evicted(self, name: str, h: _Host) -> None:
        self._waiting.discard(name)
        self._count("evicted_hosts")

    def _count(self, reason: str, n: int = 1) -> None:
        self._meta["counts"][reason] += n
        self._meta.changed()

    # -- judging -----------------------------------------------------------------------------
    def advance(self, watermark_ns: int) -> list[Finding]:
        out: list[Finding] = []
        # A sample at t is judged against the client calls of the minutes that ended before
        # it: it waits until the span stage has sent them all (its side watermark past t),
        # so what is judged does not depend on which stage ran ahead.
        side = self.side_watermark_ns
        limit = watermark_ns if side is None else min(watermark_ns, side)
        # Only the hosts this limit can move, or whose samples changed: a scan of every waiting
        # host per record is O(hosts) per record under a flood of hosts.
        for name in self._waiting.take(limit):
            h = self._hosts.get(name)
            if h is None:
                continue
            ready = sorted(t for t in h.pending if t <= limit)
            waited = len(ready)
            over = len(h.pending) - waited - MAX_PENDING_SAMPLES
            if over > 0:  # the span stage is far behind: stop waiting for the oldest
                ready = sorted(h.pending)[:waited + over]
                self._count("side_wait_exceeded", over)
            for i, t in enumerate(ready):
                out.extend(self._fold(h, t, h.pending.pop(t), calls_known=i < waited))
            if h.pending:
                self._waiting.wait(name, min(h.pending))
        out.extend(self._late_attribution())
        if watermark_ns - self._meta["exp"] >= MINUTE_NS:
            self._meta["exp"] = watermark_ns
            horizon = watermark_ns - self.ttl_ns  # the watermark: one host ahead expires none
            for name in sorted(k for k, h in self._hosts.items() if h.seen_ns < horizon):
                self._hosts.pop(name)
                self._waiting.discard(name)
                self._count("expired_hosts")
                done = self.lc.resolve({"host": name}, watermark_ns, "the host stopped reporting")
                if done is not None:
                    out.append(done)
        return out

    def _emitter(self, h: _Host, t: int, by: Mapping[str, Any]) -> Mapping[str, Any]:
        """The counts of the host's one emitter in this sample: the one already chosen, else
        (none yet, or it has been silent for SOURCE_STALE_NS) the first by name. The others
        are counted, not summed."""
        if h.src not in by and (not h.src or t - h.src_seen >= SOURCE_STALE_NS):
            h.src = min(by)
        chosen = by.get(h.src)
        if chosen is not None:
            h.src_seen = t
        others = len(by) - (chosen is not None)
        if others:
            self._count("other_sources", others)
        return chosen or {}

    def _fold(self, h: _Host, t: int, tick: Mapping[str, Any],
              calls_known: bool = True) -> list[Finding]:
        h.last_t = t
        self._hosts.changed(h.host)
        if h.lost is not None:
            if h.lost[1] < t - CALLS_MAX_AGE_NS:  # past every sample they would serve
                h.lost = None
            elif h.lost[0] <= t - MINUTE_NS:
                calls_known = False
        if "by" in tick:
            tick = {**tick, **self._emitter(h, t, tick["by"])}
        if conn.PORT_LOW in tick and conn.PORT_HIGH in tick:
            h.ports = int(tick[conn.PORT_HIGH] - tick[conn.PORT_LOW] + 1)
        if conn.OPENS in tick:
            value = float(tick[conn.OPENS])
            rate = -1.0
            if h.opens is not None and value >= h.opens[1] and t > h.opens[0]:
                rate = (value - h.opens[1]) * NS / (t - h.opens[0])
            h.opens = [t, value, rate]
        if conn.ESTABLISHED in tick:
            h.est = float(tick[conn.ESTABLISHED])
        if conn.TIME_WAIT not in tick:
            return []
        tw = float(tick[conn.TIME_WAIT])
        h.dests = dict(tick.get("d", {}))
        open_rate = h.opens[2] if h.opens is not None and t - h.opens[0] <= 2 * MINUTE_NS else -1
        h.recent.append([t, tw, open_rate])
        while h.recent and h.recent[0][0] < t - self.recent_ns:
            h.recent.pop(0)
        return self._judge(h, t, tw, calls_known)

    def _calls_rate(self, h: _Host, t: int) -> float | None:
        """Client calls per second from the host in the newest complete minute before ``t``,
        or None when no recent minute is known (or too few calls to measure load by)."""
        minutes = _recent_minutes(h, t)
        if not minutes:
            return None
        rate = sum(h.calls[str(minutes[0])].values()) / 60.0
        return rate if rate >= MIN_CALLS_PER_S else None

    def _judge(self, h: _Host, t: int, tw: float, calls_known: bool = True) -> list[Finding]:
        est = max(h.est or 0.0, 1.0)
        calls = self._calls_rate(h, t)
        ratio_est = tw / est
        ratio_calls = None if calls is None else tw / calls
        ready = len(h.minutes) >= self.warmup_minutes
        expected = 0.0
        base_calls = [m[2] for m in h.minutes if m[2] is not None]
        if not calls_known and len(base_calls) >= self.warmup_minutes:
            self._count("calls_unknown")  # its load is unknown: neither judged nor learnt
            return []
        if ready:
            base_est = float(np.median([m[1] for m in h.minutes]))
            expected = base_est * est
            if calls is not None and len(base_calls) >= self.warmup_minutes:
                expected = max(expected, float(np.median(base_calls)) * calls)
        excess = tw - expected
        elevated = ready and tw >= self.factor * expected and excess >= self.min_excess
        entity = {"host": h.host}
        firing = self.lc.is_firing(entity)
        if not elevated:
            # Clearly normal (close to what the load explains, or only a few sockets over it):
            # part of the baseline, which so follows a host whose usual level drifts.
            if not ready or tw <= 1.5 * expected or tw - expected < 0.5 * self.min_excess:
                self._baseline_sample(h, t, ratio_est, ratio_calls, tw)
            if not firing:
                h.episode = None
                return []
            if h.episode is None:
                h.episode = {"t0": t, "max": 0.0, "last": t}
            if t - h.episode["last"] < self.resolve_ns:
                return []
            h.episode = None
            done = self.lc.observe(entity, t, None)
            return [done] if done is not None else []
        ep = h.episode
        if ep is None:
            ep = h.episode = {"t0": t, "max": excess, "last": t}
        ep["max"], ep["last"] = max(ep["max"], excess), t
        if not firing and not (
            t - ep["t0"] >= self.sustain_ns and excess >= self.hold_fraction * ep["max"]
        ):
            return []
        verdict = self._verdict(h, t, tw, expected, est, calls)
        done = self.lc.observe(entity, t, verdict)
        return [done] if done is not None else []

    def _baseline_sample(
        self, h: _Host, t: int, ratio_est: float, ratio_calls: float | None, tw: float
    ) -> None:
        minute = t - t % MINUTE_NS
        cur = h.cur
        if cur is not None and cur[0] != minute:
            h.minutes.append([
                cur[0], float(np.median(cur[1])),
                float(np.median(cur[2])) if cur[2] else None, float(np.median(cur[3])),
            ])
            if len(h.minutes) > self.baseline_minutes:
                del h.minutes[: len(h.minutes) - self.baseline_minutes]
            cur = None
        if cur is None:
            cur = h.cur = [minute, [], [], []]
        cur[1].append(ratio_est)
        if ratio_calls is not None:
            cur[2].append(ratio_calls)
        cur[3].append(tw)

    # -- the finding ---------------------------------------------------------------------------
    def _verdict(
        self, h: _Host, t: int, tw: float, expected: float, est: float, calls: float | None
    ) -> Verdict:
        ports = self.port_ranges.get(h.host) or h.ports or self.default_ports
        ports_from = (
            "PORT_RANGES" if h.host in self.port_ranges
            else "node_sysctl_net_ipv4_ip_local_port_range" if h.ports
            else "PORT_RANGES" if "*" in self.port_ranges else "Linux default 32768-60999"
        )
        s_short, s_prev = _slope(h.recent[-4:]), _slope(h.recent[-8:-3])
        open_rate = h.recent[-1][2] if h.recent and h.recent[-1][2] >= 0 else None
        close_rate = open_rate if open_rate is not None else max(
            tw / conn.TIME_WAIT_S, s_short or 0.0
        )
        plateau = conn.TIME_WAIT_S * close_rate
        # Still climbing as fast as before, and already climbing a minute ago: the close rate
        # itself grows. A step up in the close rate climbs for 60 s only (then levels off), so
        # a climb that was not under way a minute ago is such a step, not a trend.
        s_before = _slope([r for r in h.recent if t - 75 * NS <= r[0] <= t - 45 * NS])
        # The climb must also stand out of the count's own noise (five Poisson standard
        # deviations over a minute): a flat level's wobble is no trend.
        growing = (
            s_short is not None and s_prev is not None and s_before is not None
            and s_short > 0 and s_prev > 0 and 0.6 <= s_short / s_prev <= 1.6
            and s_before >= 0.3 * s_short and s_short * 60 >= max(0.1 * tw, 5 * math.sqrt(tw))
        )
        tte: float | None = None
        if plateau >= ports:
            tte = max(0.0, (ports - tw) / max(close_rate, s_short or 0.0, 1e-9))
        elif growing and s_short:
            tte = max(0.0, (ports - tw) / s_short)
        base_tw = float(np.median([m[3] for m in h.minutes])) if h.minutes else None
        excess_rate = max(tw - expected, 0.0) / conn.TIME_WAIT_S
        ep = h.episode if h.episode is not None else {"t0": t}
        if "who" in ep:  # named when the finding opened: a draining tail must not rename it
            pairs, cause = ep["who"]
        else:
            pairs, cause = self._attribute(h, t, excess_rate)
            if h.episode is not None:
                if pairs:
                    h.episode["who"] = [pairs, cause]
                elif "at" not in h.episode:  # calls may still come (see ``_late_attribution``)
                    h.episode["at"], h.episode["rate"] = t, excess_rate
        # info: reuse lost, ports far from running out (a ticket, not a page); warning: the
        # level reaches 5% of the range or a time to exhaustion is known; critical: within an
        # hour of exhaustion or settling at half the range. It escalates, never back (the
        # lifecycle's rule for every finding).
        rank = 2 if (tte is not None and tte <= 3600) or plateau >= 0.5 * ports else (
            1 if tte is not None or plateau >= 0.05 * ports else 0)
        severity = SEVERITY_ORDER[rank]
        evidence: dict[str, Any] = {
            "host": h.host,
            "time_wait": round(tw),
            "baseline_time_wait": None if base_tw is None else round(base_tw, 1),
            "expected_time_wait": round(expected, 1),
            "ratio_to_expected": round(tw / expected, 2) if expected > 0 else None,
            "established": round(est),
            "client_calls_per_s": None if calls is None else round(calls, 2),
            "open_rate_per_s": None if open_rate is None else round(open_rate, 2),
            # ~60 s when every opened connection ends in TIME_WAIT here (Linux holds it 60 s)
            "time_wait_per_open_rate_s": (
                round(tw / open_rate, 1) if open_rate else None
            ),
            "close_rate_per_s": round(close_rate, 2),
            "extra_closes_per_s": round(excess_rate, 2),
            "slope_per_s": None if s_short is None else round(s_short, 3),
            "plateau_time_wait": round(plateau),
            "ephemeral_ports": ports,
            "ephemeral_ports_from": ports_from,
            "plateau_share_of_ports": round(plateau / ports, 4),
            "time_to_exhaustion_s": None if tte is None else round(tte, 1),
            "exhaustion_assumes": "the churn goes to one destination (ports are per "
                                  "destination address and port)",
            "elevated_since": _iso(ep["t0"]),
            "top_destinations": (
                [{"destination": d, "time_wait": round(v)} for d, v in
                 sorted(h.dests.items(), key=lambda kv: -kv[1])[:5]]
                if h.dests else [p["destination"] for p in pairs[:3]]
            ),
            "top_services": list(dict.fromkeys(p["service"] for p in pairs))[:3],
            "candidates": pairs[:5],
            "likely_cause": cause,
        }
        who = _who(pairs) if pairs else "no client spans from this host"
        when = (
            f"ports run out in ~{_duration(tte)}" if tte is not None
            else f"levels off near {round(plateau)} of {ports} ports at this rate"
        )
        summary = (
            f"TIME_WAIT on {h.host} {round(tw)} vs {round(expected)} expected for its load "
            f"({_ratio(evidence['ratio_to_expected'])}, {round(close_rate, 1)} closes/s); "
            f"{when}; "
            f"likely {who}"
        )
        return Verdict(severity, summary, evidence, _next_steps(h.host, pairs))

    def _late_attribution(self) -> list[Finding]:
        """A finding that opened before the span stage had sent the client calls of its
        minutes (the span stage runs behind when a backlog is replayed) is published again,
        same id, once they are in, naming the client."""
        out = []
        for st in sorted(self.lc.active(), key=lambda st: st["entity"]["host"]):
            h = self._hosts.get(st["entity"]["host"])
            ep = h.episode if h is not None else None
            if h is None or ep is None or "who" in ep or "at" not in ep:
                continue
            pairs, cause = self._attribute(h, ep["at"], ep["rate"])
            if not pairs:
                continue
            ep["who"] = [pairs, cause]
            self._hosts.changed(h.host)
            _, summary, evidence, _ = st["last"]
            evidence = {**evidence, "top_services": list(
                dict.fromkeys(p["service"] for p in pairs))[:3],
                "candidates": pairs[:5], "likely_cause": cause}
            if not h.dests:
                evidence["top_destinations"] = [p["destination"] for p in pairs[:3]]
            summary = summary.replace(
                "likely no client spans from this host",
                f"likely {_who(pairs)}")
            done = self.lc.amend(st["entity"], Verdict(
                st["severity"], summary, evidence, _next_steps(h.host, pairs)))
            if done is not None:
                out.append(done)
        return out

    def _attribute(
        self, h: _Host, t: int, excess_rate: float
    ) -> tuple[list[dict[str, Any]], str]:
        """Client (service, destination) pairs ranked by how well their call rate explains
        the extra closes per second, and the likely cause for the best one."""
        minutes = _recent_minutes(h, t)[:2]
        if not minutes or excess_rate <= 0:
            return [], (
                "unknown: no client spans from this host in the last minutes (send the "
                "services' traces with host.name to name the client)"
            )
        totals: dict[str, float] = {}
        for m in minutes:
            for pair, n in h.calls[str(m)].items():
                totals[pair] = totals.get(pair, 0.0) + n / (60.0 * len(minutes))
        pairs = []
        for pair, rate in totals.items():
            if rate <= 0:
                continue
            service, _, dest = pair.partition("\x1f")
            k = excess_rate / rate
            pairs.append({
                "service": service, "destination": dest or "(unknown)",
                "calls_per_s": round(rate, 2), "extra_closes_per_call": round(k, 2),
                "_fit": abs(math.log(k)) if k > 0 else math.inf,
            })
        pairs.sort(key=lambda p: (p["_fit"], -p["calls_per_s"]))
        # Call rates within ~20% of each other explain the extra closes about as well: the
        # spans cannot tell those clients apart, so all of them are named (``tied``).
        for p in pairs:
            p["tied"] = p["_fit"] - pairs[0]["_fit"] <= TIE_LOG_RATIO
        for p in pairs:
            del p["_fit"]
        if not pairs:
            return [], "unknown: no client calls recorded"
        k = pairs[0]["extra_closes_per_call"]
        pair = _named(pairs)
        if k > MAX_CONNECTIONS_PER_CALL:
            cause = (f"no traced client explains the extra closes (the closest, {pair}, would "
                     f"need {k:.0f} new connections per call): churn from a process that sends "
                     "no traces, or inbound connections this host closes")
        elif 0.6 <= k <= 1.5:
            cause = (f"{pair}: about one new connection per call (no keep-alive, a client or "
                     "connection created per request)")
        elif k > 1.5:
            cause = (f"{pair}: about {k:.1f} new connections per call (a connection per "
                     "sub-request or retries, no reuse)")
        elif k >= 0.1:
            cause = (f"{pair}: connections last only a few calls each (a pool too small for "
                     "the load, or a short idle timeout / max-requests-per-connection)")
        else:
            cause = ("no client call rate on this host explains the extra closes (churn from "
                     "a process without traces, or inbound connections this host closes)")
        return pairs, cause

    # -- state ---------------------------------------------------------------------------------
    def restored(self) -> None:
        self._waiting = DueKeys()
        for name, h in self._hosts.items():
            if h.pending:
                self._waiting.touch(name)

    def stats(self) -> DetectorStats:
        active: dict[tuple[str, str], int] = {}
        gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for st in self.lc.active():
            k = (KIND, st["severity"])
            active[k] = active.get(k, 0) + 1
            labels = (("host", st["entity"]["host"]),)
            ev = st["last"][2]
            gauges[(COUNT_GAUGE, labels)] = float(ev["time_wait"])
            if ev.get("time_to_exhaustion_s") is not None:
                gauges[(TTE_GAUGE, labels)] = float(ev["time_to_exhaustion_s"])
        evicted = dict(self._meta["counts"])
        evicted["findings_evicted"] = self.lc.evicted
        return DetectorStats(tracked=len(self._hosts), evicted=evicted, active=active,
                             gauges=gauges, firing=self.lc.firing())


# -- helpers ------------------------------------------------------------------------------------
def _slope(rows: Sequence[Sequence[float]]) -> float | None:
    """Theil–Sen slope of TIME_WAIT (sockets per second) over ``rows`` (at least 2)."""
    if len(rows) < 2:
        return None
    x = np.array([(r[0] - rows[0][0]) / NS for r in rows])
    if x[-1] <= 0:
        return None
    return float(stats.theilslopes([r[1] for r in rows], x).slope)


def _recent_minutes(h: _Host, t: int) -> list[int]:
    """Starts of the host's client-call minutes that ended before ``t`` and are at most
    ``CALLS_MAX_AGE_NS`` old, newest first."""
    return sorted(
        (int(m) for m in h.calls if t - CALLS_MAX_AGE_NS <= int(m) <= t - MINUTE_NS),
        reverse=True,
    )


def _who(pairs: list[dict[str, Any]]) -> str:
    """Who the summary names: the tied best candidates, unless even the best would need more
    than ``MAX_CONNECTIONS_PER_CALL`` new connections per call."""
    if pairs[0]["extra_closes_per_call"] > MAX_CONNECTIONS_PER_CALL:
        return "a process without traces"
    return _named(pairs)


def _named(pairs: Sequence[Mapping[str, Any]]) -> str:
    """The tied best candidates, as "service -> destination or ..."."""
    return " or ".join(f"{p['service']} -> {p['destination']}" for p in pairs[:3] if p["tied"])


def _ratio(r: float | None) -> str:
    return "none expected" if r is None else f"{r}x"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{round(seconds)} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _iso(ns: int) -> str:
    return rfc3339(ns) or ""


def _next_steps(host: str, pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    tied = [p for p in pairs[:3] if p.get("tied", True)]
    client = " / ".join(dict.fromkeys(p["service"] for p in tied)) or (
        "the client service on this host")
    dest = " / ".join(dict.fromkeys(p["destination"] for p in tied)) or "the destination"
    return [
        f"On {host} (read-only), count TIME_WAIT by peer (it tells apart clients whose call "
        "rates the spans cannot): "
        "timeout 10 ss -Htan state time-wait | awk '{print $4}' | sort | uniq -c | "
        "sort -rn | head",
        f"Check keep-alive and connection-pool settings of {client} for {dest}: "
        "a client or connection created per request, Connection: close, pool max size / "
        "max idle per host, idle timeout, max requests per connection",
        "Compare with the service's client-span rate to that destination: about one new "
        "connection per call means no reuse at all",
        "Do not turn on net.ipv4.tcp_tw_reuse or shorten timeouts blindly: they hide the "
        "churn rather than fix it; restore connection reuse first, then widen "
        "net.ipv4.ip_local_port_range if the load needs it",
    ]
