"""Local state tables are used again only after a clean stop; after any other end they are
removed, so that Faust restores them from the changelog."""

from __future__ import annotations

from pipeline.datadir import claim_tables, mark_clean


def test_tables_are_kept_after_a_clean_stop_and_discarded_after_a_kill(tmp_path) -> None:
    tables = tmp_path / "v1" / "tables"
    assert claim_tables(tables) == "empty"  # the first start
    (tables / "spans-state-backups").mkdir(parents=True)  # Faust makes these on any start
    assert claim_tables(tables) == "empty"
    (tables / "spans-state-0.db").mkdir(parents=True)
    (tables / "spans-state-0.db" / "CURRENT").write_text("x")
    mark_clean(tables)
    assert claim_tables(tables) == "kept"
    assert (tables / "spans-state-0.db" / "CURRENT").exists()
    # Running now: the mark is gone, so a kill leaves none and the next start discards.
    assert claim_tables(tables) == "discarded"
    assert not (tables / "spans-state-0.db").exists()
    assert (tables / "spans-state-backups").is_dir()
    assert claim_tables(tables) == "empty"


def test_a_mark_on_an_empty_directory_is_harmless(tmp_path) -> None:
    mark_clean(tmp_path / "tables")
    assert claim_tables(tmp_path / "tables") == "kept"
    assert claim_tables(tmp_path / "tables") == "empty"
