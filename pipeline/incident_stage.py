"""The incident stage's wiring: what goes into the correlation, and who runs it.

Every worker forwards each finding it publishes, and now and then each service-map edge its
partitions saw, to the one-partition ``<app id>-incident-input`` topic. Whichever worker owns
that partition runs the ``Correlator`` (``pipeline.incidents``) and publishes incidents to the
compacted incidents topic. A worker taking the partition over (a rebalance, a restart) first
rebuilds the correlator by replaying the topic from its beginning (its retention is
INCIDENT_HISTORY_S) up to where it takes over, publishing nothing, then publishes the current
state of every open incident once and goes on. The same records in the same order give the
same incidents, so which worker runs it, and how often it changed hands, changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson

from pipeline import incidents
from pipeline.incidents import Correlator, Incident
from pipeline.settings import Settings
from pipeline.topics import read_all

log = logging.getLogger("pipeline.incidents")

#: An edge is forwarded again once its last_seen moved this far (event time) past the last
#: forwarded one: the correlator keeps edges for an hour, and the input stays small.
EDGE_REFRESH_NS = 600 * 1_000_000_000
MAX_FORWARDED_EDGES = 20_000
REBUILD_TIMEOUT_S = 300.0  # to read the input to its end (INCIDENT_HISTORY_S of it)


def finding_record(finding_json: bytes) -> bytes:
    return b'{"finding":' + finding_json + b"}"


@dataclass(slots=True)
class IncidentView:
    """What the metrics need, copied out of the correlator on the event loop."""

    # (incident id, root node, root type, severity, firing member fingerprints, muted, members
    # ever)
    open: list[tuple[str, str, str, str, tuple[str, ...], bool, int]] = field(
        default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    edges: int = 0


class IncidentStage:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.correlator: Correlator | None = None
        self.next_offset = 0  # the next input offset the correlator has not applied
        # Bumped when the input partition goes: a rebuild that was under way then is dropped.
        self.generation = 0
        self._edges_sent: dict[bytes, int] = {}

    # -- the forwarding side (every worker) -----------------------------------------------------

    def edge_record(self, key: bytes, value: bytes | None) -> bytes | None:
        """The correlation input for a service-map record, or None when the edge was forwarded
        recently enough (or is a tombstone: the correlator lets edges age out itself)."""
        if value is None:
            return None
        try:
            doc = orjson.loads(value)
            seen = incidents.parse_ns(doc.get("last_seen")) or 0
            edge = {"client": str(doc["client"]), "server": str(doc["server"]),
                    "seen_at": doc.get("last_seen")}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None  # not an edge record: nothing for the correlation
        last = self._edges_sent.get(key)
        if last is not None and seen - last < EDGE_REFRESH_NS:
            return None
        if len(self._edges_sent) >= MAX_FORWARDED_EDGES:
            self._edges_sent.clear()  # forwarding again early is harmless
        self._edges_sent[key] = seen
        return orjson.dumps({"edge": edge})

    # -- the correlating side (the owner of the input partition) --------------------------------

    def new_correlator(self) -> Correlator:
        s = self.settings
        return Correlator(gap_s=s.incident_gap_s, max_incidents=s.incident_max_open)

    def drop(self) -> None:
        """The input partition went to another worker (or is being reassigned)."""
        self.correlator = None
        self.next_offset = 0
        self.generation += 1

    async def rebuild(self, topic: str, upto: int | None) -> list[Incident]:
        """Replay the input from its first offset to ``upto`` (exclusive; None: its end now)
        into a new correlator; return every incident it holds (open, or resolved and kept), to
        publish once: the previous owner may have stopped before publishing some."""
        c = self.new_correlator()
        generation = self.generation
        records = await read_all(self.settings, topic, timeout_s=REBUILD_TIMEOUT_S)
        if upto is None:
            upto = records[-1].offset + 1 if records else 0
        applied = 0
        for rec in records:
            if rec.offset < upto:
                self.apply(c, rec.value)
                applied += 1
        if generation != self.generation:  # the partition went meanwhile
            log.info("incident rebuild dropped: the input partition was reassigned")
            return []
        self.correlator, self.next_offset = c, upto
        log.info("incident correlation taken over: %d input records replayed up to offset %d, "
                 "%d open incidents", applied, upto, len(c.open_incidents()))
        c.take_merged()  # published by the owner that merged them
        return sorted(c.incidents.values(), key=lambda i: (i.opened_ns, i.id))

    @staticmethod
    def apply(c: Correlator, value: bytes | None) -> list[Incident]:
        if not value:
            return []
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            c.counts["unreadable"] += 1
            return []
        if not isinstance(record, dict):
            c.counts["unreadable"] += 1
            return []
        try:
            return c.apply(record)
        except Exception:  # a record the correlator cannot take must not stop it for good
            log.warning("incident correlation skipped an input record", exc_info=True)
            c.counts["unreadable"] += 1
            return []

    def take(self, offset: int, value: bytes | None) -> list[tuple[bytes, bytes]]:
        """Apply the input record at ``offset`` (once); the incident records to publish."""
        c = self.correlator
        if c is None or offset < self.next_offset:
            return []
        self.next_offset = offset + 1
        out = self.records(self.apply(c, value))
        for old, new in sorted(c.take_merged().items()):
            out.append((old.encode(), orjson.dumps({
                "schema_version": incidents.SCHEMA_VERSION, "id": old, "status": "merged",
                "merged_into": new})))
        return out

    def records(self, found: Iterable[Incident]) -> list[tuple[bytes, bytes]]:
        return [(i.id.encode(), incidents.to_json(i)) for i in found]

    def view(self) -> IncidentView | None:
        c = self.correlator
        if c is None:
            return None
        out = IncidentView(counts=dict(c.counts), edges=len(c.edges))
        for inc in c.open_incidents():
            root_type, _ = incidents.node_label(inc.root.node)
            out.open.append((inc.id, inc.root.node, root_type, inc.severity,
                             tuple(sorted(m.fingerprint for m in inc.firing_members())),
                             inc.muted, len(inc.members)))
        return out

