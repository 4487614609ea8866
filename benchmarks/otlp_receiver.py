"""A live OTLP/HTTP trace receiver for the benchmarks: accepts and discards, in its own process.

It reads each ``POST /v1/traces`` body whole and answers 200 with an empty
``ExportTraceServiceResponse`` (zero bytes), over keep-alive connections, without
parsing: on a 2-core machine a receiver that decodes every span (as the test
helper ``tests/helpers/otlp.py`` does, to check what arrived) would take CPU from
the server being measured. ``GET /stats`` answers the requests and bytes received
so far, so a benchmark can check that spans really left the workers.

Run: python benchmarks/otlp_receiver.py  (prints the port it bound on 127.0.0.1, then serves)
"""
from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_stats = {"requests": 0, "bytes": 0}
_lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the exporters' requests.Session reuses it

    def do_POST(self) -> None:  # noqa: N802
        size = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(size)
        with _lock:
            _stats["requests"] += 1
            _stats["bytes"] += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        with _lock:
            body = json.dumps(_stats).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
