"""Per-key detector state: the one structure every detector keeps its entities in. Pure.

A detector's state is a few maps of entities (operations, instances, hosts, open traces,
findings) and a few single values (counters, the last closed window). ``Keyed`` is such a map,
after quix-streams' transactional ``State``: it knows what changed since the last snapshot (only
that is written to the changelog), keeps its entries in least-recently-changed order so that a
cap evicts the stalest one in O(1) (counting what overflows), and reads and writes *versioned*
documents: every saved entry carries its format version, and one written by an older release
is migrated on restore (``migrate``); one that cannot be read is dropped and counted
(``dropped``), never a crash. ``State`` holds a detector's maps and values and gives it
``snapshot``/``restore`` for the engine.

    >>> st = State()
    >>> ops = st.keyed("o", encode=lambda v: {"n": v}, decode=lambda d, key: d["n"], cap=2)
    >>> ops.put("a", 1); ops.put("b", 2)
    >>> sorted(st.snapshot(changed_only=True))
    ['o/a', 'o/b']
    >>> ops.changed("a")  # a is the most recently changed now: b goes to make room
    >>> ops.make_room(), list(ops), ops.evicted
    (True, ['a'], 1)
    >>> saved = st.snapshot(changed_only=True)
    >>> sorted(saved.items())
    [('o/a', {'n': 1, '_v': 1, '_t': 3}), ('o/b', None)]
    >>> again = State(); back = again.keyed("o", lambda v: {"n": v}, lambda d, key: d["n"])
    >>> again.restore({"o/a": saved["o/a"], "o/c": {"_v": 9}}); dict(back.items()), again.dropped
    ({'a': 1}, 1)
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

log = logging.getLogger("pipeline.state")

V = TypeVar("V")
VERSION_KEY, TICK_KEY = "_v", "_t"


class StateError(ValueError):
    """A saved entry this release cannot read (a newer format, or no migration from it)."""


class Keyed(Generic[V]):
    """Entities by key, least recently changed first; see the module docstring.

    ``encode(value) -> dict`` and ``decode(dict, key) -> value`` convert an entry to and from
    its saved document (the version and change order are added and removed here);
    ``migrate(doc, version) -> doc`` brings a document of an older ``version`` (an older
    release wrote it; 1 when it carries none) to the current one. ``cap`` bounds the entries
    (``make_room``). Entries are mutated in place by the detector, which then calls
    ``changed``.
    """

    def __init__(
        self,
        prefix: str,
        encode: Callable[[V], dict[str, Any]],
        decode: Callable[[dict[str, Any], str], V],
        *,
        version: int = 1,
        migrate: Callable[[Any, int], dict[str, Any]] | None = None,
        cap: int | None = None,
    ) -> None:
        self.prefix = prefix
        self._encode, self._decode, self._migrate = encode, decode, migrate
        self.version, self.cap = version, cap
        self._items: OrderedDict[str, V] = OrderedDict()
        self._ticks: dict[str, int] = {}  # key -> when it last changed (its place in the order)
        self._tick = 0
        self._dirty: set[str] = set()
        self._batch: dict[str, None] | None = None  # keys changed inside ``batch()``, in order
        self._saved: set[str] = set()  # keys written at least once (a delete needs a tombstone)
        self.evicted = 0  # entries dropped to make room
        self.refused = 0  # new entries not taken: every entry was protected
        self.dropped = 0  # saved entries that could not be read

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        """Keys, least recently changed first."""
        return iter(self._items)

    def __getitem__(self, key: str) -> V:
        return self._items[key]

    def get(self, key: str, default: V | None = None) -> V | None:
        return self._items.get(key, default)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(self._items.items())

    def values(self) -> Iterator[V]:
        return iter(self._items.values())

    def tick(self, key: str) -> int:
        """Where ``key`` stands in the change order (larger: changed later)."""
        return self._ticks.get(key, 0)

    def oldest(self) -> tuple[str, V] | None:
        """The least recently changed entry."""
        for item in self._items.items():
            return item
        return None

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, value: V) -> None:
        self._items[key] = value
        self._touch(key)

    def changed(self, key: str) -> None:
        """``key``'s value changed (in place): it is saved at the next snapshot and becomes the
        most recently changed entry (inside ``batch()``, when the batch ends)."""
        batch = self._batch
        if batch is not None:
            batch.pop(key, None)
            batch[key] = None
            return
        self._touch(key)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Defer ``changed`` to the end of the block: each key changed in it is moved once, in
        the order of its last change (keys removed meanwhile are skipped). For update loops
        that touch the same key for many points of one batch."""
        self._batch = {}
        try:
            yield
        finally:
            keys, self._batch = self._batch, None
            for key in keys:
                if key in self._items:
                    self._touch(key)

    def _touch(self, key: str) -> None:
        self._items.move_to_end(key)
        self._tick += 1
        self._ticks[key] = self._tick
        self._dirty.add(key)

    def dirty(self, key: str) -> None:
        """``key``'s value changed in place, to be saved at the next snapshot, without moving
        it in the change order (cheaper than ``changed``, for maps whose order nothing uses:
        no cap)."""
        self._dirty.add(key)

    def pop(self, key: str, default: V | None = None) -> V | None:
        value = self._items.pop(key, None)
        if value is None:
            return default
        self._ticks.pop(key, None)
        self._dirty.add(key)
        return value

    def clear(self) -> None:
        for key in list(self._items):
            self.pop(key)

    @property
    def at_cap(self) -> bool:
        """Whether a new key needs ``make_room`` first."""
        return self.cap is not None and len(self._items) >= self.cap

    def make_room(self, protect: Callable[[str, V], bool] | None = None,
                  evict: Callable[[str, V], None] | None = None) -> bool:
        """Make room for one more entry under the cap: drop the least recently changed one
        that ``protect`` does not keep (``evict`` is told first; counted in ``evicted``).
        False when every entry is protected (counted in ``refused``)."""
        if not self.at_cap:
            return True
        # From the stalest entry on, stopping at the first unprotected one: O(1) plus the
        # protected entries before it (no copy of the keys: this runs for every new entry of
        # a flood at the cap).
        victim = None
        for key, value in self._items.items():
            if protect is None or not protect(key, value):
                victim = key, value
                break
        if victim is None:
            self.refused += 1
            return False
        if evict is not None:
            evict(*victim)
        self.pop(victim[0])
        self.evicted += 1
        return True

    # -- persistence -----------------------------------------------------------------------
    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        keys = self._dirty if changed_only else self._items.keys()
        out: dict[str, Any] = {}
        for key in sorted(keys):
            value = self._items.get(key)
            if value is None:
                if key in self._saved:
                    out[self._name(key)] = None
                    self._saved.discard(key)
                continue
            doc = self._encode(value)
            doc[VERSION_KEY] = self.version
            doc[TICK_KEY] = self._ticks.get(key, 0)
            out[self._name(key)] = doc
            self._saved.add(key)
        if changed_only:
            self._dirty = set()
        return out

    def restore(self, docs: Mapping[str, Any]) -> None:
        """Load saved entries (keys without the prefix; ``None`` deletes), in their saved
        change order. What cannot be read is dropped and counted."""
        loaded: list[tuple[int, str, V]] = []
        for key, doc in docs.items():
            if doc is None:
                self._items.pop(key, None)
                self._ticks.pop(key, None)
                self._saved.discard(key)
                continue
            try:
                tick, value = self._read(doc, key)
            except Exception as exc:
                self.dropped += 1
                log.error("state entry %s cannot be read (%s: %s); dropped", self._name(key),
                          type(exc).__name__, exc)
                continue
            loaded.append((tick, key, value))
            self._saved.add(key)
        for tick, key, value in sorted(loaded, key=lambda x: x[0]):
            self._items[key] = value
            self._items.move_to_end(key)
            self._ticks[key] = tick
            self._tick = max(self._tick, tick)
        self._items = OrderedDict(sorted(self._items.items(),
                                         key=lambda kv: self._ticks.get(kv[0], 0)))

    def _read(self, doc: Any, key: str) -> tuple[int, V]:
        if isinstance(doc, dict):
            doc = dict(doc)
            version = doc.pop(VERSION_KEY, 1)
            tick = int(doc.pop(TICK_KEY, 0))
        else:  # the first release saved some entries as bare lists
            version, tick = 1, 0
        if version != self.version:
            if version > self.version or self._migrate is None:
                raise StateError(
                    f"format version {version}, this release reads {self.version}"
                    + (" (a newer release wrote it)" if version > self.version else "")
                )
            doc = self._migrate(doc, version)
        return tick, self._decode(doc, key)


class DueKeys:
    """The keys of a map that wait for event time (samples to fold, a bucket to close), so that
    a watermark's advance looks at the keys it can move and not at every waiting one: a flood of
    new keys waiting at once costs O(log n) per key, not O(n) per record.

    ``touch(key)``: look at it at the next ``take`` whatever the time (its data changed);
    ``wait(key, due)``: look at it once the time reaches ``due`` (a lower bound is enough:
    looking early does nothing). ``take(now)`` returns, sorted, the keys touched or due by
    ``now`` and forgets them: the caller ``wait``s again those still waiting. Not saved: a
    restored detector touches every key that waits.

        >>> q = DueKeys(); q.wait("a", 10); q.wait("b", 5); q.touch("c")
        >>> q.take(7), q.take(7), sorted(q), q.take(float("inf"))
        (['b', 'c'], [], ['a'], ['a'])
    """

    def __init__(self) -> None:
        self._now: set[str] = set()
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (due, key), stale entries skipped

    def __len__(self) -> int:
        return len(self._now | self._due.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._now or key in self._due

    def __iter__(self) -> Iterator[str]:
        return iter(self._now | self._due.keys())

    def touch(self, key: str) -> None:
        self._now.add(key)

    def wait(self, key: str, due: float) -> None:
        if self._due.get(key) == due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        if len(self._heap) > 2 * len(self._due) + 1024:  # mostly stale entries
            self._heap = [(d, k) for k, d in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        self._now.discard(key)
        self._due.pop(key, None)

    def take(self, now: float) -> list[str]:
        keys, self._now = self._now, set()
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= now:
            d, key = heapq.heappop(heap)
            if due.get(key) == d:
                del due[key]
                keys.add(key)
        for key in keys:
            due.pop(key, None)
        return sorted(keys)


class Cell:
    """One saved value (a detector's counters, the last window it closed): a dict, written
    when ``changed``."""

    def __init__(self, name: str, value: dict[str, Any] | None = None, *, version: int = 1,
                 migrate: Callable[[dict[str, Any], int], dict[str, Any]] | None = None) -> None:
        self.name, self.version, self._migrate = name, version, migrate
        self.value: dict[str, Any] = dict(value or {})
        self._dirty = True  # written at the first snapshot, so incremental ones compose
        self.dropped = 0

    def changed(self) -> None:
        self._dirty = True

    def __getitem__(self, key: str) -> Any:
        return self.value[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.value[key] = value
        self._dirty = True

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        if changed_only and not self._dirty:
            return {}
        self._dirty = False
        return {self.name: {**self.value, VERSION_KEY: self.version}}

    def restore(self, doc: Any) -> None:
        if doc is None:
            return
        try:
            doc = dict(doc)
            version = doc.pop(VERSION_KEY, 1)
            doc.pop(TICK_KEY, None)
            if version != self.version:
                if version > self.version or self._migrate is None:
                    raise StateError(f"format version {version}, this release reads "
                                     f"{self.version}")
                doc = self._migrate(doc, version)
        except Exception as exc:
            self.dropped += 1
            log.error("state entry %s cannot be read (%s: %s); dropped", self.name,
                      type(exc).__name__, exc)
            return
        for key, value in doc.items():
            default = self.value.get(key)
            if isinstance(default, dict) and isinstance(value, dict):
                # Counters added since the state was written keep their defaults.
                value = {**default, **value}
            self.value[key] = value
        self._dirty = False


class State:
    """A detector's maps and values, saved and restored together (keys ``<prefix>/<key>``
    for maps, the cell's name for values)."""

    def __init__(self) -> None:
        self.maps: dict[str, Keyed[Any]] = {}
        self.cells: dict[str, Cell] = {}

    def keyed(self, prefix: str, encode: Callable[[Any], dict[str, Any]],
              decode: Callable[[dict[str, Any], str], Any], **kwargs: Any) -> Keyed[Any]:
        if "/" in prefix or prefix in self.maps or prefix in self.cells:
            raise ValueError(f"state prefix {prefix!r} is taken or has a '/'")
        k: Keyed[Any] = Keyed(prefix, encode, decode, **kwargs)
        self.maps[prefix] = k
        return k

    def add(self, keyed: Keyed[Any]) -> Keyed[Any]:
        """Save and restore an existing map with this state (a ``Lifecycle``'s)."""
        if keyed.prefix in self.maps or not keyed.prefix:
            raise ValueError(f"state prefix {keyed.prefix!r} is taken or empty")
        self.maps[keyed.prefix] = keyed
        return keyed

    def cell(self, name: str, value: dict[str, Any] | None = None, **kwargs: Any) -> Cell:
        if "/" in name or name in self.maps or name in self.cells:
            raise ValueError(f"state name {name!r} is taken or has a '/'")
        c = self.cells[name] = Cell(name, value, **kwargs)
        return c

    @property
    def dropped(self) -> int:
        return (sum(k.dropped for k in self.maps.values())
                + sum(c.dropped for c in self.cells.values()))

    def snapshot(self, changed_only: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.maps.values():
            out.update(k.snapshot(changed_only))
        for c in self.cells.values():
            out.update(c.snapshot(changed_only))
        return out

    def restore(self, state: Mapping[str, Any]) -> None:
        by_prefix: dict[str, dict[str, Any]] = {p: {} for p in self.maps}
        for key, doc in state.items():
            prefix, sep, rest = key.partition("/")
            if sep and prefix in by_prefix:
                by_prefix[prefix][rest] = doc
            elif key in self.cells:
                self.cells[key].restore(doc)
            else:
                log.warning("state entry %s belongs to nothing this release keeps; ignored",
                            key)
        for prefix, docs in by_prefix.items():
            if docs:
                self.maps[prefix].restore(docs)
