"""pipeline.state: change tracking, O(1) LRU caps with counted overflow, versioned documents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.state import Keyed, State


def box(cap: int | None = None, version: int = 1, migrate: Any = None) -> Keyed[dict]:
    return Keyed("x", encode=lambda v: dict(v), decode=lambda d, k: d, cap=cap,
                 version=version, migrate=migrate)


def test_snapshot_holds_what_changed_and_tombstones_only_what_was_saved() -> None:
    k = box()
    k.put("a", {"n": 1})
    k.put("b", {"n": 2})
    assert set(k.snapshot(changed_only=True)) == {"x/a", "x/b"}
    assert k.snapshot(changed_only=True) == {}
    k["a"]["n"] = 5
    k.changed("a")
    k.put("c", {"n": 3})
    k.pop("c")  # never saved: no tombstone needed
    k.pop("b")
    snap = k.snapshot(changed_only=True)
    assert snap.keys() == {"x/a", "x/b"} and snap["x/b"] is None and snap["x/a"]["n"] == 5


def test_cap_evicts_the_least_recently_changed_unprotected_entry() -> None:
    k = box(cap=3)
    for name in "abc":
        k.put(name, {"firing": name == "a"})
    k.changed("b")  # order now: a, c, b
    evicted: list[str] = []
    assert k.make_room(protect=lambda key, v: v["firing"],
                       evict=lambda key, v: evicted.append(key))
    assert evicted == ["c"] and list(k) == ["a", "b"] and k.evicted == 1
    k.put("d", {"firing": True})
    assert k.make_room(protect=lambda key, v: v["firing"])  # b goes
    k.put("e", {"firing": True})
    assert list(k) == ["a", "d", "e"] and k.evicted == 2
    assert not k.make_room(protect=lambda key, v: v["firing"])  # all protected
    assert k.refused == 1 and len(k) == 3


def test_restore_keeps_the_change_order_of_the_saved_state() -> None:
    st = State()
    k = st.keyed("x", encode=lambda v: dict(v), decode=lambda d, key: d, cap=3)
    for name in "abc":
        k.put(name, {})
    k.changed("a")
    saved = orjson.loads(orjson.dumps(st.snapshot()))
    again = State()
    back = again.keyed("x", encode=lambda v: dict(v), decode=lambda d, key: d, cap=3)
    again.restore(dict(reversed(list(saved.items()))))
    assert list(back) == ["b", "c", "a"]  # b is evicted first, as before the restart
    assert back.make_room()
    back.put("d", {})
    assert list(back) == ["c", "a", "d"]


def test_documents_of_an_older_version_are_migrated_newer_or_bad_ones_dropped() -> None:
    def migrate(doc: Any, version: int) -> dict:
        assert version == 1
        return {"rows": doc}  # v1 saved bare lists

    k = box(version=2, migrate=migrate)
    k.restore({"old": [[1, 2]], "new": {"rows": [[3]], "_v": 2, "_t": 4},
               "future": {"rows": [], "_v": 3}, "broken": {"_v": 2, "_t": "x"}})
    assert dict(k.items()) == {"old": {"rows": [[1, 2]]}, "new": {"rows": [[3]]}}
    assert k.dropped == 2


def test_a_state_without_migration_drops_old_documents() -> None:
    k = box(version=2)
    k.restore({"old": {"n": 1}})
    assert len(k) == 0 and k.dropped == 1


def test_cells_are_written_first_then_when_changed() -> None:
    st = State()
    meta = st.cell("meta", {"n": 0})
    assert st.snapshot(changed_only=True) == {"meta": {"n": 0, "_v": 1}}
    assert st.snapshot(changed_only=True) == {}
    meta["n"] = 3
    assert st.snapshot(changed_only=True) == {"meta": {"n": 3, "_v": 1}}
    other = State()
    back = other.cell("meta", {"n": 0, "m": 7})
    other.restore({"meta": {"n": 3, "_v": 1}, "stray/key": 1})
    assert back.value == {"n": 3, "m": 7}


def test_counters_added_since_a_cell_was_saved_keep_their_defaults() -> None:
    st = State()
    meta = st.cell("meta", {"counts": {"late": 0, "added_later": 0}, "exp": 0})
    st.restore({"meta": {"counts": {"late": 4}, "exp": 9, "_v": 1}})
    assert meta.value == {"counts": {"late": 4, "added_later": 0}, "exp": 9}
    meta["counts"]["added_later"] += 1  # what a detector does with a new counter


def test_names_must_be_distinct() -> None:
    st = State()
    st.keyed("a", dict, lambda d, k: d)
    with pytest.raises(ValueError):
        st.cell("a")
    with pytest.raises(ValueError):
        st.keyed("b/c", dict, lambda d, k: d)


def test_a_batch_moves_each_changed_key_once_in_the_order_of_its_last_change() -> None:
    k = box()
    for key in "abc":
        k.put(key, {"n": 0})
    k.snapshot(changed_only=True)
    with k.batch():
        k.changed("a")
        k.changed("b")
        k.changed("a")
        assert list(k) == ["a", "b", "c"]  # not moved yet
        k.pop("b")
    assert list(k) == ["c", "a"]
    snap = k.snapshot(changed_only=True)
    assert snap.keys() == {"x/a", "x/b"} and snap["x/b"] is None  # a saved, b deleted
