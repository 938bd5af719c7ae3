"""An OTLP/HTTP receiver that writes every request body as it came, for replay. Stdlib only.

The corpus programs export with the official SDKs' and agents' OTLP/HTTP (protobuf) exporters
to this receiver, which answers 200 with an empty ``Export*ServiceResponse`` and appends
``(receive time ns, signal, body)`` to one file per run. A body is exactly the
``ExportTraceServiceRequest`` / ``ExportMetricsServiceRequest`` the Collector's kafka exporter
writes as one record with ``encoding: otlp_proto``, so the replay produces each body as one
record on ``otlp_spans`` or ``otlp_metrics`` with the receive time as its Kafka timestamp.

File format (``Recording``): per request a 17-byte header ``>QBQ`` (receive ns, signal 0 = spans
/ 1 = metrics, body length) then the body. gzip-encoded bodies are inflated before writing;
chunked bodies (the JS SDK's exporters) are joined.
"""

from __future__ import annotations

import gzip
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HEADER = struct.Struct(">QBQ")
SIGNALS = {"/v1/traces": 0, "/v1/metrics": 1}
SIGNAL_NAMES = ("spans", "metrics")


class Recording:
    """Append-only writer and reader of recorded OTLP request bodies."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.counts = [0, 0]

    def append(self, recv_ns: int, signal: int, body: bytes) -> None:
        with self._lock, open(self.path, "ab") as fh:
            fh.write(HEADER.pack(recv_ns, signal, len(body)) + body)
            self.counts[signal] += 1

    def __iter__(self) -> Iterator[tuple[int, str, bytes]]:
        with open(self.path, "rb") as fh:
            while head := fh.read(HEADER.size):
                if len(head) < HEADER.size:
                    return  # a torn tail (the recorder was killed mid-write)
                recv_ns, signal, size = HEADER.unpack(head)
                body = fh.read(size)
                if len(body) < size:
                    return
                yield recv_ns, SIGNAL_NAMES[signal], body


def serve(recording: Recording, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            signal = SIGNALS.get(self.path)
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                body = self._chunked()  # the JS SDK's exporters send no Content-Length
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if signal is None:
                self.send_response(404)
                self.end_headers()
                return
            recording.append(time.time_ns(), signal, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _chunked(self) -> bytes:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="otlp-recorder").start()
    return server
