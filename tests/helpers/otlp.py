"""A real OTLP/HTTP trace receiver on 127.0.0.1, decoding with opentelemetry-proto."""
from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class OTLPReceiver:
    """Collects spans as dicts: trace_id, span_id, parent_span_id, name, kind, status, attributes, resource.

    ``requests`` keeps every parsed request whole; ``fail_next`` answers that many
    requests 503 with ``Retry-After: 0`` (a retryable failure) before accepting any.
    """

    def __init__(self) -> None:
        self.spans: List[Dict[str, Any]] = []
        self.requests: List[ExportTraceServiceRequest] = []
        self.fail_next = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    refuse = receiver.fail_next > 0
                    if refuse:
                        receiver.fail_next -= 1
                if refuse:
                    self.send_response(503)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request, dict(self.headers))
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.headers_seen: List[Dict[str, str]] = []

    def _add(self, request: ExportTraceServiceRequest, headers: Dict[str, str]) -> None:
        with self.lock:
            self.headers_seen.append(headers)
            self.requests.append(request)
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append({
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "status": span.status.code,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                            "events": [{"name": e.name, "attributes": {a.key: _value(a.value) for a in e.attributes}}
                                       for e in span.events],
                            "resource": resource,
                        })

    def wait_for(self, count: int, timeout: float = 60.0) -> List[Dict[str, Any]]:
        """The spans once ``count`` arrived, or those there are at ``timeout`` (a deadline for a
        loaded machine: it returns as soon as they are in)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    break
            time.sleep(0.05)
        with self.lock:
            return list(self.spans)

    def __enter__(self) -> "OTLPReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
