"""Real Prometheus and Alertmanager (the Debian packages' binaries) on loopback ports, and a
webhook receiver that records what Alertmanager delivers. For the end-to-end alerting tests.

Alertmanager runs the shipped ``deploy/alertmanager/alertmanager.yml`` with two changes only:
every receiver's webhook points at the test's receiver (path = receiver name, so a test sees
which route delivered), and the timers are seconds instead of minutes. Prometheus evaluates the
shipped rule file unchanged.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.support.tools import free_port, tool

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "anomaly-pipeline.rules.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
INSTALL = ("install them with `apt-get install prometheus prometheus-alertmanager` (Debian; "
           "`.ci/run` and `make test` do this when they can)")


class Webhook:
    """Records each Alertmanager notification (the webhook JSON payload) with its path."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        lock = self._lock = threading.Lock()
        payloads = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                doc = json.loads(body)
                doc["_path"] = self.path
                with lock:
                    payloads.append(doc)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def notifications(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.payloads)

    def alerts(self, **labels: str) -> list[tuple[str, dict[str, Any]]]:
        """(receiver, alert) for every delivered alert whose labels include ``labels``."""
        return [(n["receiver"], a) for n in self.notifications() for a in n["alerts"]
                if all(a["labels"].get(k) == v for k, v in labels.items())]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def alertmanager_config(webhook_url: str, timer_s: int = 1) -> dict[str, Any]:
    """The shipped configuration, delivering to ``webhook_url/<receiver>``, on short timers."""
    cfg = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for receiver in cfg["receivers"]:
        configs = [k for k in receiver if k.endswith("_configs")]
        assert configs, f"receiver {receiver['name']} has no integration"
        for key in configs:
            del receiver[key]
        receiver["webhook_configs"] = [
            {"url": f"{webhook_url}/{receiver['name']}", "send_resolved": True}
        ]

    def shorten(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = f"{timer_s}s"
        if "repeat_interval" in route:
            route["repeat_interval"] = "1h"
        for child in route.get("routes", []):
            shorten(child)

    cfg["route"].update(group_wait=f"{timer_s}s", group_interval=f"{timer_s}s")
    shorten(cfg["route"])
    return cfg


class Process:
    def __init__(self, argv: list[str], log_path: Path, ready_url: str) -> None:
        self.log_path, self.ready_url = log_path, ready_url
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.proc.args[0]} exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.proc.args[0]} not ready in {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)
        self._log.close()


def start_alertmanager(tmp: Path, webhook_url: str) -> tuple[Process, str]:
    port = free_port()
    config = tmp / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook_url)))
    (tmp / "am-data").mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    proc = Process(
        [tool("prometheus-alertmanager", "alertmanager", install=INSTALL),
         f"--config.file={config}",
         f"--storage.path={tmp / 'am-data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address=",  # no gossip port: a single instance
         "--log.level=warn"],
        tmp / "alertmanager.log", f"{url}/-/ready",
    )
    proc.wait_ready()
    return proc, url


def start_prometheus(tmp: Path, targets: list[str], alertmanager: str | None,
                     finding_for: str | None = None) -> tuple[Process, str]:
    """Prometheus scraping ``targets`` as job ``anomaly-pipeline`` every second and evaluating
    the shipped rules every second (sending alerts to ``alertmanager``, if there is one).

    ``finding_for``: the finding rules' ``for`` (1m, the time the incident correlation gets)
    in a copy of the rules, for a test whose traffic runs faster than real time and whose
    findings therefore last only seconds."""
    port = free_port()
    config = tmp / "prometheus.yml"
    rules = RULES
    if finding_for is not None:
        text = RULES.read_text()
        marker = "        for: 1m\n        keep_firing_for: 2m\n"
        if marker not in text:
            raise AssertionError("the finding rules no longer wait `for: 1m`: update this")
        rules = tmp / RULES.name
        rules.write_text(text.replace(marker, marker.replace("1m", finding_for, 1)))
    cfg: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "anomaly-pipeline", "static_configs": [{"targets": targets}]}
        ],
    }
    if alertmanager is not None:
        cfg["alerting"] = {"alertmanagers": [
            {"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}
        ]}
    config.write_text(yaml.safe_dump(cfg))
    url = f"http://127.0.0.1:{port}"
    proc = Process(
        [tool("prometheus", install=INSTALL), f"--config.file={config}",
         f"--storage.tsdb.path={tmp / 'prom-data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        tmp / "prometheus.log", f"{url}/-/ready",
    )
    proc.wait_ready()
    return proc, url


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def post_alerts(alertmanager: str, alerts: list[dict[str, Any]]) -> None:
    req = urllib.request.Request(
        f"{alertmanager}/api/v2/alerts", data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200, r.status


def prometheus_alerts(prometheus: str, name: str) -> list[dict[str, Any]]:
    doc = get_json(f"{prometheus}/api/v1/alerts")
    return [a for a in doc["data"]["alerts"] if a["labels"].get("alertname") == name]


def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant PromQL query (at ``at``, Unix seconds, else now): the result vector."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    doc = get_json(f"{prometheus}/api/v1/query?{urllib.parse.urlencode(params)}")
    assert doc["status"] == "success", doc
    return doc["data"]["result"]
