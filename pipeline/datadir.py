"""Whether a worker may start from the state tables on its local disk. Pure (no Faust).

Faust writes a table entry to the local store (RocksDB) at once and sends it to the changelog
topic later, from a buffer, and records how far the changelog was acknowledged. A worker
killed in between (SIGKILL, OOM, a node lost) leaves a local store that holds writes the
changelog never got. Restarted on that directory, the worker would restore from the local
store, go on past those writes, and leave a hole in the changelog: whoever restores the
partition from the changelog next (another worker after a rebalance, a restart on an empty
disk) comes back to the state before the hole, and what the worker applied after it is
missing from the saved state until the next full snapshot.

So the local tables are trusted only after a clean stop, as Kafka Streams does with its
checkpoint file: the worker marks its table directory when it has stopped cleanly (its
producer flushed), and removes the mark when it starts. A start without the mark after an
earlier run discards the local tables, and Faust restores them from the changelog, the
state every other worker would see.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path
from typing import IO

CLEAN_MARK = "stopped-cleanly"
LOCK = "worker.lock"


class DataDirInUse(RuntimeError):
    """Another live worker holds this table directory."""


def lock_tables(tabledir: Path) -> IO[str]:
    """Take the table directory for this worker, before ``claim_tables``: two workers on one
    directory would remove or overwrite each other's open databases. The lock (``flock`` on
    ``worker.lock``) is held as long as the returned file stays open, and the kernel drops it
    when the process ends, however it ends, so a killed worker never leaves it behind."""
    tabledir.mkdir(parents=True, exist_ok=True)
    fh = open(tabledir / LOCK, "a+")  # noqa: SIM115 - held open for the worker's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise DataDirInUse(
            f"{tabledir} is in use by another worker (pid {holder}): give every worker its "
            f"own PIPELINE_DATA_DIR (each needs its own local state)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def claim_tables(tabledir: Path) -> str:
    """Before the worker opens its tables: ``"kept"`` (the last run stopped cleanly),
    ``"discarded"`` (it did not: its databases, ``<table>-<partition>.db``, are removed) or
    ``"empty"`` (there are none; other files, such as Faust's empty backup directories made
    when the worker is built, are left alone)."""
    mark = tabledir / CLEAN_MARK
    if mark.exists():
        mark.unlink()
        return "kept"
    databases = sorted(tabledir.glob("*.db")) if tabledir.is_dir() else []
    for db in databases:
        shutil.rmtree(db)
    return "discarded" if databases else "empty"


def mark_clean(tabledir: Path) -> None:
    """After a clean stop: the next start may use the local tables."""
    tabledir.mkdir(parents=True, exist_ok=True)
    (tabledir / CLEAN_MARK).touch()
