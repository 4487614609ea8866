"""configure_logging(): the app's own structlog and stdlib lines as JSON, with the request's context.

Secrets in the app's messages, fields and tracebacks are hidden as in mlmonitor's own lines.
"""
from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from flask import Flask, jsonify
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from mlmonitor import Monitor, configure_logging


@pytest.fixture
def app_logs():
    """configure_logging() into a buffer; the global logging and structlog set-up restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging(stream=stream, redact=["customer_email"])
    yield stream
    structlog.reset_defaults()
    root.handlers[:], level = saved
    root.setLevel(level)


def strict_lines(text: str) -> list:
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
            for line in text.splitlines()]


def test_app_lines_carry_the_request_context_and_hide_secrets(app_logs):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    request_lines = io.StringIO()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="v1", registry=CollectorRegistry(),
                      tracer_provider=provider, log_stream=request_lines)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        logging.getLogger("app.model").warning("scoring with api_key=SECRET-ONE")
        structlog.get_logger().info("inference", token="SECRET-TWO", customer_email="a@b.c",
                                    rows=3)
        return jsonify(ok=True)

    @app.post("/fail")
    def fail():
        raise RuntimeError("database refused password=SECRET-THREE")

    client = app.test_client()
    assert client.post("/predict", json={}, buffered=True).status_code == 200
    assert client.post("/fail", json={}, buffered=True).status_code == 500

    output = app_logs.getvalue()
    for secret in ("SECRET-ONE", "SECRET-TWO", "SECRET-THREE", "a@b.c"):
        assert secret not in output
    stdlib_line, structlog_line, flask_line = strict_lines(output)
    predict_request, fail_request = strict_lines(request_lines.getvalue())

    assert stdlib_line["event"] == "scoring with api_key=[REDACTED]"
    assert stdlib_line["level"] == "warning"
    assert structlog_line["token"] == "[REDACTED]" and structlog_line["customer_email"] == "[REDACTED]"
    assert structlog_line["rows"] == 3
    for line in (stdlib_line, structlog_line):
        assert line["request_id"] == predict_request["request_id"]
        assert line["trace_id"] == predict_request["trace_id"] and len(line["trace_id"]) == 32
        assert (line["model_name"], line["model_version"]) == ("iris", "v1")

    # Flask's own "Exception on /fail [POST]" record, traceback included, through the same chain
    assert flask_line["level"] == "error" and "/fail" in flask_line["event"]
    assert "RuntimeError: database refused password=[REDACTED]" in flask_line["exception"]
    assert flask_line["request_id"] == fail_request["request_id"]
    assert "model_name" not in flask_line


def test_lines_outside_a_request_have_no_request_fields(app_logs):
    structlog.get_logger().info("started", secret="s3cr3t")
    line, = strict_lines(app_logs.getvalue())
    assert line["event"] == "started" and line["secret"] == "[REDACTED]"
    assert "request_id" not in line and "trace_id" not in line
