"""Span attributes are cut to the provider's limit before they are set (issue 25, 6b).

Before, each FastAPI 5xx printed OpenTelemetry's "String attribute value exceeds max length"
warning on stderr: the exception event's stack was cut to 4,000 characters against a 1,024 limit
(and the SDK then kept its head, not the most recent frames).
"""
from __future__ import annotations

import logging

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from mlmonitor import Monitor
from mlmonitor import Monitor as AsgiMonitor
from mlmonitor.trace_provider import MAX_ATTRIBUTE_LENGTH


def provider(limit):
    exporter = InMemorySpanExporter()
    built = TracerProvider(span_limits=SpanLimits(max_attribute_length=limit))
    built.add_span_processor(SimpleSpanProcessor(exporter))
    return built, exporter


def deep_failure(depth: int, message: str):
    if depth:
        return deep_failure(depth - 1, message)
    raise ValueError(message)


def fastapi_app(tracer_provider):
    app = FastAPI()
    monitor = AsgiMonitor(app, model_name="m", tracer_provider=tracer_provider,
                          registry=CollectorRegistry(), mlflow=True, capture_io=True)

    @app.post("/predict")
    @monitor.prediction
    def predict(body: dict):
        monitor.tag(note="pwd=a " * 300)  # redaction makes this cut text longer than it was
        deep_failure(30, "bad input " * 300)

    return app


def flask_app(tracer_provider):
    app = Flask(__name__)
    monitor = Monitor(app, model_name="m", tracer_provider=tracer_provider,
                      registry=CollectorRegistry())

    @app.post("/predict/<path:rest>")
    @monitor.prediction
    def predict(rest):
        monitor.tag(note="pwd=a " * 300)
        deep_failure(30, "bad input " * 300)

    return app


def post(app, framework):
    path = "/predict/" + "token=x/" * 200 if framework == "flask" else "/predict"
    if framework == "flask":
        return app.test_client().post(path, json={"x": 1}).status_code
    with TestClient(app, raise_server_exceptions=False) as client:
        return client.post(path, json={"x": 1}).status_code


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
@pytest.mark.parametrize("limit", [MAX_ATTRIBUTE_LENGTH, 300])
def test_a_5xx_sets_no_attribute_over_the_limit_and_logs_no_warning(framework, limit, caplog):
    built, exporter = provider(limit)
    app = (fastapi_app if framework == "fastapi" else flask_app)(built)
    caplog.set_level(logging.WARNING, logger="opentelemetry")
    assert post(app, framework) == 500
    warned = [r.getMessage() for r in caplog.records if "exceeds max length" in r.getMessage()]
    assert warned == []
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    texts = [v for v in span.attributes.values() if isinstance(v, str)]
    (event,) = [e for e in span.events if e.name == "exception"]
    texts += [v for v in event.attributes.values() if isinstance(v, str)]
    assert texts and max(len(t) for t in texts) <= limit
    stack = event.attributes["exception.stacktrace"]
    assert stack.rstrip().endswith("bad input")  # the most recent part: the exception's own line
    assert "pwd=[REDACTED]" in span.attributes["ml.tag.note"]
