"""configure_logging(): the app's own structlog and stdlib lines as JSON, with the request's context.

Secrets in the app's messages, fields and tracebacks are hidden as in mlmonitor's own lines, and in
what the server's and framework's own loggers print (redact_server_logs(), issue 25 item 3; the real
servers are in tests/test_server_log_redaction.py).
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

from mlmonitor import Monitor, configure_logging, redact_server_logs
from mlmonitor.app_logging import SERVER_LOGGERS, RedactRecords


def remove_redaction():
    from flask.logging import default_handler
    for target in [logging.getLogger(n) for n in SERVER_LOGGERS + ("tests.own",)] + [default_handler]:
        for found in [f for f in target.filters if isinstance(f, RedactRecords)]:
            target.removeFilter(found)


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
    remove_redaction()


@pytest.fixture
def server_logger():
    """A server logger of its own (as uvicorn's and gunicorn's are: own handler, no propagation)
    writing to a buffer, redaction removed after."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("uvicorn.error")
    saved = logger.handlers[:], logger.propagate, logger.level
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.handlers[:], logger.propagate, level = saved
    logger.setLevel(level)
    remove_redaction()


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


def raised(exc):
    try:
        raise exc
    except Exception as caught:
        return caught


def test_the_server_logs_exception_line_hides_secrets_in_message_arguments_and_traceback(server_logger):
    """uvicorn's "Exception in ASGI application", gunicorn's "Error handling request": the
    traceback's last line and source lines hold the exception's text."""
    logger, stream = server_logger
    logger.error("Exception in ASGI application\n", exc_info=raised(ValueError({"password": "hunter2-secret"})))
    logger.error("Error handling request %s", "/key?api_key=sk-live-0123")
    logger.warning("retrying with %s", "password=pw-in-an-argument", stack_info=True)
    assert "hunter2-secret" in stream.getvalue()  # before: the raw text, as the issue saw
    stream.seek(0), stream.truncate()

    redact_server_logs()
    logger.error("Exception in ASGI application\n", exc_info=raised(ValueError({"password": "hunter2-secret"})))
    logger.error("Error handling request %s", "/key?api_key=sk-live-0123")
    logger.warning("retrying with %s", "password=pw-in-an-argument", stack_info=True)
    logger.info("Started server process [%d]", 1234)
    text = stream.getvalue()
    for secret in ("hunter2-secret", "sk-live-0123", "pw-in-an-argument"):
        assert secret not in text
    assert "ERROR Exception in ASGI application\nTraceback (most recent call last):" in text
    assert "ValueError: {'password': '[REDACTED]'}" in text
    assert "ERROR Error handling request /key?api_key=[REDACTED]" in text
    assert "WARNING retrying with password=[REDACTED]\nStack (most recent call last):" in text
    assert "INFO Started server process [1234]" in text


def test_arguments_keep_their_shape_when_hiding_them_one_by_one_is_enough(server_logger):
    """uvicorn's access formatter unpacks five arguments; gunicorn's access line formats a mapping."""
    logger, stream = server_logger
    chosen = redact_server_logs("tests.own")
    access = logging.makeLogRecord({"name": "uvicorn.access", "msg": '%s - "%s %s HTTP/%s" %d',
                                    "args": ("127.0.0.1:5000", "GET", "/p?token=abc-secret", "1.1", 200)})
    assert chosen.filter(access) and access.args == ("127.0.0.1:5000", "GET", "/p?token=[REDACTED]", "1.1", 200)
    mapping = logging.makeLogRecord({"msg": "%(r)s %(s)s", "args": {"r": "GET /?token=abc-secret", "s": 200}})
    assert chosen.filter(mapping) and mapping.getMessage() == "GET /?token=[REDACTED] 200"
    split = logging.makeLogRecord({"msg": "password=%s", "args": ("abc-secret",), "color_message": "x %s"})
    assert chosen.filter(split) and split.getMessage() == "password=[REDACTED]"
    assert not hasattr(split, "color_message")  # uvicorn would format it with no arguments
    plain = logging.makeLogRecord({"msg": "Booting worker with pid: %s", "args": (42,)})
    assert chosen.filter(plain) and plain.args == (42,)
    broken = logging.makeLogRecord({"msg": "token=abc-secret %d", "args": ("not a number",)})
    assert chosen.filter(broken) and "abc-secret" not in broken.getMessage()
    logging.getLogger("tests.own").error("own logger: token=abc-secret")  # a name given to it
    assert chosen in logging.getLogger("tests.own").filters and "abc-secret" not in stream.getvalue()


def test_configure_logging_turns_it_on_and_a_propagated_traceback_keeps_its_redacted_text(app_logs):
    """django.request has no handler of its own: its record reaches configure_logging's JSON
    handler with the traceback already turned into redacted text."""
    assert any(isinstance(f, RedactRecords) for f in logging.getLogger("gunicorn.error").filters)
    django_request = logging.getLogger("django.request")
    level = django_request.level  # a Django project's LOGGING set up by another test may raise it
    django_request.setLevel(logging.NOTSET)
    try:
        django_request.error("Internal Server Error: /predict",
                             exc_info=raised(RuntimeError("api_key=sk-live-0123")))
    finally:
        django_request.setLevel(level)
    line, = strict_lines(app_logs.getvalue())
    assert line["event"] == "Internal Server Error: /predict" and "sk-live-0123" not in json.dumps(line)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("RuntimeError: api_key=[REDACTED]")


def test_flask_default_handler_and_dict_config_take_the_filter(tmp_path):
    """Flask's app.logger (named after the app) prints through flask.logging.default_handler;
    a dictConfig names the filter class."""
    from flask.logging import default_handler
    import logging.config
    try:
        redact_server_logs()
        assert any(isinstance(f, RedactRecords) for f in default_handler.filters)
        logging.config.dictConfig({
            "version": 1, "disable_existing_loggers": False,
            "filters": {"redact": {"()": "mlmonitor.app_logging.RedactRecords", "names": ["customer_id"]}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(tmp_path / "log"),
                                  "filters": ["redact"]}},
            "loggers": {"tests.dictconfig": {"handlers": ["file"], "propagate": False},
                        "uvicorn.error": {"level": "INFO"}},
        })
        logging.getLogger("tests.dictconfig").error("customer_id=C-123 token=abc-secret")
        assert any(isinstance(f, RedactRecords) for f in logging.getLogger("uvicorn.error").filters)
    finally:
        for handler in logging.getLogger("tests.dictconfig").handlers[:]:
            handler.close()
            logging.getLogger("tests.dictconfig").removeHandler(handler)
        remove_redaction()
    assert (tmp_path / "log").read_text() == "customer_id=[REDACTED] token=[REDACTED]\n"


def test_names_come_from_mlmonitor_redact_too(monkeypatch):
    """Under gunicorn's hooks no Settings is at hand: MLMONITOR_REDACT names the app's own fields."""
    record = logging.makeLogRecord({"msg": "customer_ssn=123-45-6789 token=abc-secret"})
    monkeypatch.setenv("MLMONITOR_REDACT", "customer_ssn")
    assert RedactRecords().filter(record) and record.getMessage() == "customer_ssn=[REDACTED] token=[REDACTED]"
