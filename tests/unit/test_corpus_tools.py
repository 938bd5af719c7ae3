"""The corpus recorder's own parts on real loopback sockets: the OTLP/HTTP receiver (with and
without chunked bodies, gzip) and the delaying TCP proxy the slow-downstream fault uses."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import socket
import threading
import time
from pathlib import Path

from benchmarks.corpus.record import DelayProxy, free_port
from benchmarks.corpus.recorder import Recording, serve


def test_recorder_keeps_every_body_as_sent(tmp_path: Path) -> None:
    rec = Recording(tmp_path / "otlp.bin")
    port = free_port()
    server = serve(rec, port)
    try:
        bodies = [b"\x0a\x02spans", b"metrics" * 1000, b"gz" * 50]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v1/traces", body=bodies[0],
                     headers={"Content-Type": "application/x-protobuf"})
        assert conn.getresponse().status == 200
        conn.close()
        # chunked, as the JS SDK's exporters send it
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v1/metrics", body=iter([bodies[1][:3000], bodies[1][3000:]]),
                     headers={"Content-Type": "application/x-protobuf"},
                     encode_chunked=True)
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/v1/metrics", body=gzip.compress(bodies[2]),
                     headers={"Content-Encoding": "gzip"})
        assert conn.getresponse().status == 200
        conn.request("POST", "/v1/logs", body=b"x")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        server.shutdown()
    got = list(rec)
    assert [(sig, body) for _, sig, body in got] == [
        ("spans", bodies[0]), ("metrics", bodies[1]), ("metrics", bodies[2])]
    assert got[0][0] <= got[1][0] <= got[2][0] <= time.time_ns()
    # a torn tail (killed mid-write) ends the recording, it does not break it
    with open(tmp_path / "otlp.bin", "ab") as fh:
        fh.write(b"\x00\x01")
    assert len(list(Recording(tmp_path / "otlp.bin"))) == 3


def _echo_server() -> int:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)

    def serve_forever() -> None:
        while True:
            conn, _ = srv.accept()
            conn.sendall(conn.recv(64))
            conn.close()

    threading.Thread(target=serve_forever, daemon=True).start()
    return srv.getsockname()[1]


def _round_trip(port: int) -> float:
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(64) == b"ping"
    return time.perf_counter() - t


def test_delay_proxy_delays_only_while_told() -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    proxy = DelayProxy(free_port(), _echo_server())
    proxy.start(loop)
    fast = _round_trip(proxy.listen)
    proxy.delay_s = 0.2
    slow = _round_trip(proxy.listen)
    proxy.delay_s = 0.0
    again = _round_trip(proxy.listen)
    asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    runner.join(5)
    loop.close()
    assert slow >= 0.2 > fast
    assert again < 0.2
