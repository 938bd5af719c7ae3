"""Several workers on one host: one process per core (``python -m pipeline workers``).

A worker is one Python process, so it uses one core. This starts ``count`` of them (default:
the cores this process may use). They are ordinary members of the application's consumer
groups, as workers on other hosts are. Each gets its own Prometheus port
(``METRICS_PORT + i``) and its own table directory (``<PIPELINE_DATA_DIR>/worker-<i>``). Their
output is passed on with a ``[w<i>]`` prefix.

A worker that exits on its own is started again after ``RESTART_S``. It exits on purpose
when it must restart from its saved state, for instance after derived records could not be
delivered. One that exits ``MAX_QUICK_EXITS`` times in a row within ``QUICK_EXIT_S`` of its
start (a configuration the worker refuses, Kafka unreachable) stops them all, with its
status. Stopping this process (SIGTERM, SIGINT) stops every worker and waits for them.
Pure process management: no Faust, no Kafka.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

RESTART_S = 2.0
STOP_TIMEOUT_S = 30.0
QUICK_EXIT_S = 20.0
MAX_QUICK_EXITS = 3


def default_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def worker_env(base: Mapping[str, str], index: int) -> dict[str, str]:
    """The environment of worker ``index``: its own metrics port and table directory.

    >>> e = worker_env({"METRICS_PORT": "9464", "PIPELINE_DATA_DIR": "/var/lib/p"}, 2)
    >>> e["METRICS_PORT"], e["PIPELINE_DATA_DIR"]
    ('9466', '/var/lib/p/worker-2')
    >>> worker_env({"METRICS_PORT": "0"}, 1)["METRICS_PORT"]
    '0'
    """
    env = dict(base)
    port = int(env.get("METRICS_PORT") or 9464)
    env["METRICS_PORT"] = str(port + index if port else 0)
    env["PIPELINE_DATA_DIR"] = str(Path(env.get("PIPELINE_DATA_DIR") or ".cache/state")
                                   / f"worker-{index}")
    return env


class Supervisor:
    def __init__(self, count: int, env: Mapping[str, str] | None = None,
                 command: list[str] | None = None) -> None:
        if count < 1:
            raise ValueError("need at least one worker")
        self.count = count
        self.env = dict(os.environ if env is None else env)
        self.command = command or [sys.executable, "-m", "pipeline", "worker"]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.started: dict[int, float] = {}
        self.quick_exits: dict[int, int] = {}
        self.restarts = 0
        self._stopping = threading.Event()

    def _start(self, i: int) -> None:
        env = worker_env(self.env, i)
        Path(env["PIPELINE_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(self.command, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs[i] = proc
        self.started[i] = time.monotonic()
        threading.Thread(target=self._relay, args=(i, proc), daemon=True).start()

    @staticmethod
    def _relay(i: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(f"[w{i}] {line.decode(errors='replace')}")
            sys.stdout.flush()

    def run(self) -> int:
        """Start the workers and keep them running until ``stop``; the exit status."""
        for i in range(self.count):
            self._start(i)
        print(f"workers: {self.count} started (pids "
              f"{', '.join(str(p.pid) for p in self.procs.values())})", flush=True)
        while not self._stopping.wait(0.5):
            for i, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None or self._stopping.is_set():
                    continue
                quick = time.monotonic() - self.started[i] < QUICK_EXIT_S
                self.quick_exits[i] = self.quick_exits.get(i, 0) + 1 if quick else 0
                if self.quick_exits[i] >= MAX_QUICK_EXITS:
                    print(f"workers: worker {i} exited {MAX_QUICK_EXITS} times in a row within "
                          f"{QUICK_EXIT_S:.0f} s of its start (status {code}); stopping all "
                          "(see its output above)", flush=True)
                    self._stop_all()
                    return code or 1
                print(f"workers: worker {i} (pid {proc.pid}) exited with status {code}; "
                      f"starting it again in {RESTART_S:.0f} s", flush=True)
                self.restarts += 1
                time.sleep(RESTART_S)
                if not self._stopping.is_set():
                    self._start(i)
        return self._stop_all()

    def stop(self, *_: object) -> None:
        self._stopping.set()

    def _stop_all(self) -> int:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0


def main(count: int | None) -> int:
    sup = Supervisor(count or default_count())
    signal.signal(signal.SIGTERM, sup.stop)
    signal.signal(signal.SIGINT, sup.stop)
    return sup.run()
