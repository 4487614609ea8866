"""FastOTLPSpanExporter against a real OTLP/HTTP receiver: it delivers what the SDK's exporter delivers.

Everything but the encoding is the SDK's (endpoint and per-signal variables,
headers, gzip, retries, shutdown); these tests send the same spans through both
exporters to receivers that parse with opentelemetry-proto.
"""
from __future__ import annotations

import logging
import math
import sys
from operator import itemgetter

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (Link, SpanContext, SpanKind, Status, StatusCode, TraceState,
                                 set_span_in_context)

import mlmonitor.otlp
from mlmonitor.otlp import SLICE, FastOTLPSpanExporter, _export_with_fast_encoder
from tests.helpers.otlp import OTLPReceiver
from tests.helpers.spans import flattened


def provider_spans(requests: int) -> list:
    """Server and stage spans as mlmonitor makes them (attributes from traces.py), via a real provider."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "iris", "process.pid": 42}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("mlmonitor", "0.1.0")
    for index in range(requests):
        server = tracer.start_span("POST", kind=SpanKind.SERVER)
        stage = tracer.start_span("inference", context=set_span_in_context(server),
                                  attributes={"ml.stage": "inference"})
        stage.end()
        code = 500 if index % 7 == 0 else 200
        server.set_attributes({
            "http.request.method": "POST", "url.path": "/predict", "url.scheme": "http",
            "client.address": "127.0.0.1", "ml.model.name": "iris", "ml.model.version": f"v{index % 3}",
            "http.response.status_code": code, "http.route": "/predict", "ml.tag.batch": index})
        if code == 500:
            server.add_event("exception", {"exception.type": "ValueError",
                                           "exception.message": "bad input ü"})
            server.set_status(Status(StatusCode.ERROR, "bad input"))
        server.update_name("POST /predict")
        server.end()
    provider.shutdown()
    return list(exporter.get_finished_spans())


def odd_spans() -> list:
    """Spans of other resources and scopes, with links, trace state, remote parents and odd values."""
    remote = SpanContext(5, 6, is_remote=True, trace_state=TraceState([("vendor", "x1")]))
    other = Resource({"service.name": "other", "bytes": b"\x00\x01", "list": (1.5, math.inf)},
                     schema_url="https://schema/1")
    return [ReadableSpan(name="consume", context=SpanContext(7, 8 + i, False, trace_state=remote.trace_state),
                         parent=remote, resource=other, kind=SpanKind.CONSUMER,
                         attributes={"n": -(1 << 63), "arr": ("a", "b"), "none": None, "map": {"k": (1, 2)}},
                         events=[Event("e", {"i": i}, timestamp=10)], links=[Link(remote, {"why": "batch"})],
                         start_time=1, end_time=2 + i)
            for i in range(3)]


def export_both(spans, make_exporter):
    """The same spans through the SDK's exporter and mlmonitor's; each receiver's requests."""
    delivered = []
    for cls in (OTLPSpanExporter, FastOTLPSpanExporter):
        with OTLPReceiver() as receiver:
            exporter = make_exporter(cls, receiver)
            assert exporter.export(spans) == SpanExportResult.SUCCESS
            exporter.shutdown()
            delivered.append(receiver)
    return delivered


def rows(receiver) -> list:
    return sorted(row for request in receiver.requests for row in flattened(request))


def test_fast_exporter_delivers_exactly_what_the_sdk_exporter_delivers():
    spans = provider_spans(100) + odd_spans()
    sdk, fast = export_both(spans, lambda cls, r: cls(endpoint=r.endpoint + "/v1/traces"))
    assert len(rows(fast)) == len(spans)
    assert rows(fast) == rows(sdk)
    by_id = itemgetter("span_id")
    assert sorted(fast.spans, key=by_id) == sorted(sdk.spans, key=by_id)
    # one request, its 203 spans encoded in slices of 64: each slice its own ResourceSpans entries
    assert len(fast.requests) == 1
    assert len(fast.requests[0].resource_spans) > len(sdk.requests[0].resource_spans)
    assert len(spans) > 3 * SLICE


def test_gzip_from_the_compression_argument():
    spans = provider_spans(10)
    sdk, fast = export_both(spans, lambda cls, r: cls(endpoint=r.endpoint + "/v1/traces",
                                                       compression=Compression.Gzip))
    assert fast.headers_seen[0].get("Content-Encoding") == "gzip"
    assert rows(fast) == rows(sdk) and len(rows(fast)) == 20


def test_endpoint_headers_and_gzip_from_the_environment(monkeypatch):
    spans = provider_spans(5)

    def from_environment(cls, receiver):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint + "/v1/traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=s3cret")
        return cls()

    sdk, fast = export_both(spans, from_environment)
    headers = {k.lower(): v for k, v in fast.headers_seen[0].items()}
    assert headers["content-encoding"] == "gzip" and headers["x-api-key"] == "s3cret"
    assert headers["content-type"] == "application/x-protobuf"
    assert rows(fast) == rows(sdk) and len(rows(fast)) == 10


def test_retryable_failures_are_retried_and_shutdown_stops_exports():
    spans = provider_spans(3)
    with OTLPReceiver() as receiver:
        receiver.fail_next = 2  # 503 with Retry-After: 0, twice
        exporter = FastOTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces", timeout=10)
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        assert len(receiver.spans) == 6 and receiver.fail_next == 0
        exporter.shutdown()
        assert exporter.export(spans) == SpanExportResult.FAILURE
        assert len(receiver.spans) == 6


def test_an_unreachable_endpoint_is_a_failed_export_not_an_exception():
    with OTLPReceiver() as receiver:
        endpoint = receiver.endpoint + "/v1/traces"
    exporter = FastOTLPSpanExporter(endpoint=endpoint, timeout=1)
    assert exporter.export(provider_spans(1)) == SpanExportResult.FAILURE
    exporter.shutdown()


def test_an_sdk_whose_export_cannot_take_the_encoder_gets_the_sdk_exporter_with_one_warning(
        monkeypatch, caplog):
    def export(self, spans):  # an export() that never calls encode_spans
        return SpanExportResult.SUCCESS

    assert _export_with_fast_encoder(export) is None
    monkeypatch.setattr(OTLPSpanExporter, "export", export)
    monkeypatch.setattr(mlmonitor.otlp, "_exporter_class", [])
    with caplog.at_level(logging.WARNING, logger="mlmonitor"):
        first = mlmonitor.otlp.FastOTLPSpanExporter
        assert mlmonitor.otlp.FastOTLPSpanExporter is first
    assert issubclass(first, OTLPSpanExporter) and first.export is export
    assert len([r for r in caplog.records if "encoder" in r.getMessage()]) == 1


def test_without_the_http_exporter_installed_the_class_is_an_import_error(monkeypatch):
    """What traces.py turns into its 'pip install mlmonitor[otlp]' ConfigError."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    monkeypatch.setattr(mlmonitor.otlp, "_exporter_class", [])
    with pytest.raises(ImportError):
        from mlmonitor.otlp import FastOTLPSpanExporter  # noqa: F401


def test_the_fast_export_is_the_sdk_code_with_mlmonitor_encoder():
    export = FastOTLPSpanExporter.export
    assert export.__code__ is OTLPSpanExporter.export.__code__
    assert export.__globals__["encode_spans"] is mlmonitor.otlp._encode_for_export
    assert OTLPSpanExporter.export.__globals__["encode_spans"] is not mlmonitor.otlp._encode_for_export
