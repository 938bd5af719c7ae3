"""Real broker: ``python -m pipeline workers --count 2`` runs two workers on this host that share
the work (each its own metrics port and table directory), starts again one that dies, and
stops both when it is stopped."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, Worker, produce, wait_for
from tests.integration.test_restart import N_RECORDS, SPANS_PER_RECORD, records

pytestmark = pytest.mark.integration


def two_free_ports() -> int:
    """A port p with p and p + 1 both free."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


async def test_one_worker_per_core_share_the_work_and_stop_together(
    names: dict[str, str], bootstrap: str, tmp_path: Path
) -> None:
    port = two_free_ports()
    env = {**os.environ, **names, "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
           "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1",
           "PIPELINE_DATA_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT),
           "KAFKA_SESSION_TIMEOUT_S": "6"}
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log:
        sup = subprocess.Popen([sys.executable, "-m", "pipeline", "workers", "--count", "2"],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    views = []
    for i in range(2):
        w = Worker({}, log_path)
        w.port = port + i
        views.append(w)
    try:
        batch, _ = records(names["OTLP_SPANS_TOPIC"])
        await produce(bootstrap, batch)
        total = N_RECORDS * SPANS_PER_RECORD

        def shared() -> bool:
            owned = [w.metric("anomaly_pipeline_owned_partitions", stream="spans")
                     for w in views]
            done = sum(w.metric("anomaly_pipeline_items_detected_total", signal="spans")
                       for w in views)
            return min(owned) >= 1 and sum(owned) == 4 and done >= total

        await wait_for(lambda: shared() or sup.poll() is not None, timeout=180,
                       what="two workers sharing the span partitions, every span applied")
        assert sup.poll() is None, log_path.read_text()[-3000:]
        assert sorted(os.listdir(tmp_path / "state")) == ["worker-0", "worker-1"]

        # One worker dies: it is started again (and the group shares the work again).
        text = log_path.read_text()
        pids = [int(p) for p in text.split("started (pids ", 1)[1].split(")", 1)[0].split(", ")]
        os.kill(pids[1], signal.SIGKILL)
        await wait_for(lambda: "worker 1 (pid" in log_path.read_text()
                       and "starting it again" in log_path.read_text(), timeout=30,
                       what="the dead worker noticed")
        await wait_for(lambda: views[1].metric("anomaly_pipeline_owned_partitions",
                                               stream="spans") >= 1, timeout=120,
                       what="the restarted worker back in the group")
    finally:
        sup.send_signal(signal.SIGTERM)
        code = sup.wait(timeout=90)
    assert code == 0, log_path.read_text()[-3000:]
    for pid in pids:  # the first two are gone, and nothing serves the ports any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for w in views:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", w.port), 1):
            pass
