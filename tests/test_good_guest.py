"""mlmonitor as a guest in a user's own app and test suite, tested as that user would (issue 15).

The Flask test client here is used without ``buffered=True``, the way users write their tests.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile

import pytest
from flask import Flask, Response, abort, jsonify, request
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from mlmonitor import Monitor
from mlmonitor.testing import capture

IRIS = {"model_name": "iris", "model_version": "v1"}


def make_app(**options):
    registry, exporter, logs = CollectorRegistry(), InMemorySpanExporter(), io.StringIO()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Flask(__name__)
    return app, registry, exporter, logs, dict(registry=registry, tracer_provider=provider,
                                               log_stream=logs, **IRIS, **options)


def log_lines(logs):
    return [json.loads(line) for line in logs.getvalue().splitlines()]


# -- 1. counted without close where nothing is left to run ---------------------------------
def test_test_client_without_buffered_counts_logs_and_traces_a_prediction(mlmonitor_capture):
    app = Flask(__name__)
    monitor = Monitor(app, **IRIS)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("inference"):
            pass
        return jsonify(label="setosa")

    response = app.test_client().post("/predict", json={"x": 1})
    assert response.status_code == 200
    monitored = mlmonitor_capture
    assert monitored.value("mlmonitor_http_requests_total", method="POST", route="/predict",
                           status="200") == 1
    assert monitored.value("mlmonitor_predictions_total", **IRIS) == 1
    assert monitored.value("mlmonitor_stage_duration_seconds_count", **IRIS, stage="inference") == 1
    assert monitored.registry.get_sample_value("mlmonitor_http_requests_in_progress",
                                               {"method": "POST", "route": "/predict"}) == 0
    [line] = monitored.logs()
    assert line["route"] == "/predict" and line["status"] == 200
    assert line["request_id"] == response.headers["X-Request-ID"]
    servers = [s for s in monitored.spans() if s.kind.name == "SERVER"]
    assert len(servers) == 1 and servers[0].name == "POST /predict"
    assert format(servers[0].context.trace_id, "032x") == line["trace_id"]


def test_materialised_response_closed_later_is_counted_once():
    app, registry, exporter, logs, options = make_app()
    Monitor(app, **options)
    app.get("/healthz")(lambda: "ok")
    response = app.test_client().get("/healthz")
    response.close()  # the close after the record: nothing counted twice
    app.test_client().get("/healthz", buffered=True)
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    assert registry.get_sample_value("mlmonitor_http_requests_total", labels) == 2
    assert len(log_lines(logs)) == 2
    assert len(exporter.get_finished_spans()) == 2


def test_a_streamed_response_is_still_recorded_at_close():
    app, registry, exporter, logs, options = make_app()
    monitor = Monitor(app, **options)

    @app.get("/stream")
    @monitor.prediction
    def stream():
        def chunks():
            yield "a"
            with monitor.stage("generate"):
                yield "b"
        return Response(chunks())

    response = app.test_client().get("/stream")
    labels = {"method": "GET", "route": "/stream", "status": "200"}
    assert registry.get_sample_value("mlmonitor_http_requests_total", labels) in (None, 0)
    assert response.get_data() == b"ab"
    response.close()
    assert registry.get_sample_value("mlmonitor_http_requests_total", labels) == 1
    assert registry.get_sample_value("mlmonitor_stage_duration_seconds_count",
                                     {**IRIS, "stage": "generate"}) == 1
    assert len(log_lines(logs)) == 1


def test_an_unhandled_exception_without_buffered_is_counted_as_a_failed_prediction():
    with capture() as monitored:
        app = Flask(__name__)
        monitor = Monitor(app, **IRIS)

        @app.post("/predict")
        @monitor.prediction
        def predict():
            raise ValueError("bad model")

        assert app.test_client().post("/predict", json={}).status_code == 500
    assert monitored.value("mlmonitor_prediction_errors_total", **IRIS, error_type="ValueError") == 1
    assert [line["error_type"] for line in monitored.logs()] == ["ValueError"]


# -- 2. the app's own before_request hooks ---------------------------------------------------
def test_auth_hook_registered_before_monitor_that_answers_401_keeps_the_route(mlmonitor_capture):
    app = Flask(__name__)

    @app.before_request
    def require_token():
        if request.headers.get("Authorization") != "Bearer ok":
            abort(401)

    monitor = Monitor(app, **IRIS)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return jsonify(ok=True)

    client = app.test_client()
    assert client.post("/predict", json={}).status_code == 401
    assert client.post("/predict", json={}, headers={"Authorization": "Bearer ok"}).status_code == 200
    monitored = mlmonitor_capture
    for status in ("401", "200"):
        assert monitored.value("mlmonitor_http_requests_total", method="POST", route="/predict",
                               status=status) == 1
    assert monitored.value("mlmonitor_http_requests_total", method="POST", route="<unmatched>",
                           status="401") == 0
    assert [line["route"] for line in monitored.logs()] == ["/predict", "/predict"]


def test_a_hook_put_first_afterwards_still_gets_the_route(mlmonitor_capture):
    """mlmonitor reads the route before any before_request hook runs, even one put first by hand."""
    app = Flask(__name__)
    Monitor(app, **IRIS)

    def deny():
        abort(403)

    app.before_request_funcs.setdefault(None, []).insert(0, deny)  # the first hook: it answers
    app.get("/items/<int:item>")(lambda item: "ok")
    assert app.test_client().get("/items/3").status_code == 403
    assert mlmonitor_capture.value("mlmonitor_http_requests_total", method="GET",
                                   route="/items/<int:item>", status="403") == 1


# -- 3. async views ----------------------------------------------------------------------------
def test_async_prediction_view_is_timed_and_labelled_like_a_sync_one():
    import asgiref  # noqa: F401  Flask's async extra (in mlmonitor[test]): fails, never skips
    app, registry, exporter, logs, options = make_app()
    monitor = Monitor(app, **options)

    @app.post("/predict")
    @monitor.prediction(model_name="llm", model_version="v7")
    async def predict():
        with monitor.stage("inference"):
            pass
        monitor.tag(batch="3")
        return jsonify(ok=True)

    response = app.test_client().post("/predict", json={})
    assert response.status_code == 200, response.get_data()
    llm = {"model_name": "llm", "model_version": "v7"}
    assert registry.get_sample_value("mlmonitor_predictions_total", llm) == 1
    assert registry.get_sample_value("mlmonitor_prediction_duration_seconds_count", llm) == 1
    assert registry.get_sample_value("mlmonitor_stage_duration_seconds_count",
                                     {**llm, "stage": "inference"}) == 1
    server = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"][0]
    stage = [s for s in exporter.get_finished_spans() if s.name == "inference"][0]
    assert stage.parent.span_id == server.context.span_id
    assert server.attributes["ml.model.name"] == "llm"


def test_async_view_failure_reaches_flask_and_is_counted():
    import asgiref  # noqa: F401
    app, registry, exporter, logs, options = make_app()
    monitor = Monitor(app, **options)

    @app.post("/predict")
    @monitor.prediction
    async def predict():
        raise KeyError("x")

    assert app.test_client().post("/predict", json={}).status_code == 500
    assert registry.get_sample_value("mlmonitor_prediction_errors_total",
                                     {**IRIS, "error_type": "KeyError"}) == 1


# -- 4. no global side effects ---------------------------------------------------------------
_APP_SETS_PROVIDER = """
import io, sys
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from mlmonitor import Monitor

def set_up_otel():
    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "the app's provider did not take effect"
    return exporter

app = Flask(__name__)
if sys.argv[1] == "before":
    exporter = set_up_otel()
Monitor(app, model_name="iris", model_version="v1", log_stream=io.StringIO())
app.get("/")(lambda: "ok")
if sys.argv[1] == "after":
    app.test_client().get("/")
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), "global was set"
    exporter = set_up_otel()
app.test_client().get("/")
print([s.name for s in exporter.get_finished_spans()])
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_the_apps_own_tracer_provider_works_set_before_or_after_monitor(when):
    result = subprocess.run([sys.executable, "-c", _APP_SETS_PROVIDER, when],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "", "OTEL_TRACES_EXPORTER": "none"})
    assert result.returncode == 0, result.stderr
    assert "Overriding of current TracerProvider is not allowed" not in result.stderr
    assert result.stdout.strip() == "['GET /']"


_INSTRUMENTED_WITHOUT_PROVIDER = """
import io
from flask import Flask
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from mlmonitor import Monitor
app = Flask(__name__)
FlaskInstrumentor().instrument_app(app)  # no provider anywhere: mlmonitor's own from OTEL_*
Monitor(app, model_name="iris", model_version="v1", log_stream=io.StringIO())
app.get("/")(lambda: "ok")
app.test_client().get("/")
"""


def test_flask_instrumentor_app_without_a_provider_still_gets_one_server_span():
    result = subprocess.run([sys.executable, "-c", _INSTRUMENTED_WITHOUT_PROVIDER],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "", "OTEL_TRACES_EXPORTER": "console"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"kind": "SpanKind.SERVER"') == 1, result.stdout


_CONFIGURE_TRACING = """
import io
from flask import Flask
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from mlmonitor import Monitor
from mlmonitor.trace_provider import configure_tracing
provider = configure_tracing("iris-server")  # opt-in: the global provider from OTEL_*
assert trace.get_tracer_provider() is provider
app = Flask(__name__)
FlaskInstrumentor().instrument_app(app)
Monitor(app, model_name="iris", model_version="v1", log_stream=io.StringIO())
app.get("/")(lambda: "ok")
app.test_client().get("/")
"""


def test_configure_tracing_sets_the_global_provider_only_when_asked():
    result = subprocess.run([sys.executable, "-c", _CONFIGURE_TRACING],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "", "OTEL_TRACES_EXPORTER": "console"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"kind": "SpanKind.SERVER"') == 1, result.stdout
    assert '"service.name": "iris-server"' in result.stdout


_CONFIGURED_THEN_FORKED = """
import io, os
from flask import Flask
from opentelemetry import trace
import mlmonitor
from mlmonitor import gunicorn as hooks  # noqa: F401  (what a gunicorn config imports)
from mlmonitor.trace_provider import configure_tracing
provider = configure_tracing("iris-server")
app = Flask(__name__)
Monitor = mlmonitor.Monitor
Monitor(app, model_name="iris", model_version="v1", log_stream=io.StringIO())
app.get("/")(lambda: "ok")
pid = os.fork()
if pid == 0:  # a --preload worker: the post_fork hook, then a request
    class Worker: mlmonitor_slot = 0
    class Server: log = None
    hooks.post_fork(Server(), Worker())
    app.test_client().get("/")
    hooks.worker_exit(Server(), Worker())  # flushes the global provider's batch
    os._exit(0)
_, status = os.waitpid(pid, 0)
assert status == 0, status
"""


def test_a_forked_worker_keeps_the_global_provider_configure_tracing_set():
    """gunicorn --preload: OpenTelemetry sets the global provider once per process, so the
    worker's mlmonitor spans go through it (with the app's other instrumentation and MLflow's
    connected mode), and the worker flushes it on exit."""
    result = subprocess.run([sys.executable, "-c", _CONFIGURED_THEN_FORKED],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "", "OTEL_TRACES_EXPORTER": "console",
                                 "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp()})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"kind": "SpanKind.SERVER"') == 1, result.stdout
    assert '"service.name": "iris-server"' in result.stdout
