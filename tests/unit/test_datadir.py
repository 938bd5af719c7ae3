"""Local state tables are used again only after a clean stop; after any other end they are
removed, so that Faust restores them from the changelog."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipeline.datadir import DataDirInUse, claim_tables, lock_tables, mark_clean


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


def test_a_second_worker_on_the_same_directory_is_refused_until_the_first_ends(tmp_path) -> None:
    tables = tmp_path / "v1" / "tables"
    held = lock_tables(tables)
    with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}.*PIPELINE_DATA_DIR"):
        lock_tables(tables)
    held.close()  # the first worker ended
    lock_tables(tables).close()


def test_a_killed_worker_leaves_no_lock_behind(tmp_path) -> None:
    tables = tmp_path / "tables"
    code = ("import sys, time; from pathlib import Path; from pipeline.datadir import "
            "lock_tables; fh = lock_tables(Path(sys.argv[1])); print('locked', flush=True); "
            "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tables)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(DataDirInUse, match=f"pid {proc.pid}"):
            lock_tables(tables)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    lock_tables(tables).close()
