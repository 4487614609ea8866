"""The Flask extension end to end with the libraries' own doubles."""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys

import pytest
from flask import Flask, abort, jsonify
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from helpers.doubles import Doubles
from mlmonitor import ConfigError, Monitor

IRIS_V1 = {"model_name": "iris", "model_version": "v1"}


class Harness(Doubles):
    """A monitored app with a fresh registry, an in-memory exporter and a log buffer."""

    def __init__(self, **options):
        super().__init__()
        self.app = Flask(__name__)
        self.monitor = Monitor(self.app, model_name="iris", model_version="v1",
                               **self.monitor_options, **options)
        self.client = self.app.test_client()

    def request(self, method, path, **kwargs):
        # buffered: the body is read and closed, which is when mlmonitor records
        return self.client.open(path, method=method, buffered=True, **kwargs)

    def value(self, name, labels=None):
        return self.registry.get_sample_value(name, labels or {})

    def lines(self):
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]

    def spans(self):
        return self.exporter.get_finished_spans()

    def series(self):
        text = self.request("GET", "/metrics").get_data(as_text=True)
        return {(s.name, tuple(sorted(s.labels.items())))
                for fam in text_string_to_metric_families(text) for s in fam.samples}


def make(**options):
    h = Harness(**options)
    m = h.monitor

    @h.app.post("/predict")
    @m.prediction
    def predict():
        with m.stage("preprocess"):
            pass
        with m.stage("inference"):
            m.tag(segment="gold", api_key="hunter2")
        return jsonify(label="setosa")

    @h.app.post("/models/<name>/predict")
    @m.prediction(model_name="wine", model_version=lambda name: "v7")
    def predict_named(name):
        return jsonify(name=name)

    @h.app.post("/boom")
    @m.prediction
    def boom():
        raise ValueError("model exploded password=opensesame")

    @h.app.post("/invalid")
    @m.prediction
    def invalid():
        abort(400, "bad features")

    @h.app.post("/canary")
    @m.prediction
    def canary():
        m.set_model_version("v2")
        return jsonify(ok=True)

    @h.app.get("/items/<int:item>")
    def item(item):
        return jsonify(item=item)

    return h


def test_prediction_counted_per_model_version():
    h = make()
    for _ in range(3):
        assert h.request("POST", "/predict", json={}).status_code == 200
    assert h.value("mlmonitor_predictions_total", IRIS_V1) == 3
    assert h.value("mlmonitor_prediction_duration_seconds_count", IRIS_V1) == 3
    assert h.value("mlmonitor_http_requests_total",
                   {"method": "POST", "route": "/predict", "status": "200"}) == 3
    assert h.value("mlmonitor_stage_duration_seconds_count", {**IRIS_V1, "stage": "inference"}) == 3
    assert h.value("mlmonitor_model_info", {**IRIS_V1, "run_id": "", "model_id": ""}) == 1


def test_route_label_is_the_url_rule_template():
    h = make()
    for i in range(5):
        h.request("GET", f"/items/{i}")
    assert h.value("mlmonitor_http_requests_total",
                   {"method": "GET", "route": "/items/<int:item>", "status": "200"}) == 5


def test_per_view_model_and_callable_version():
    h = make()
    h.request("POST", "/models/x/predict")
    assert h.value("mlmonitor_predictions_total", {"model_name": "wine", "model_version": "v7"}) == 1


def test_version_set_per_request():
    h = make()
    h.request("POST", "/canary")
    assert h.value("mlmonitor_predictions_total", {"model_name": "iris", "model_version": "v2"}) == 1
    assert h.value("mlmonitor_model_info", {"model_name": "iris", "model_version": "v2",
                                            "run_id": "", "model_id": ""}) == 1


def test_view_exception_gives_the_apps_500_counted_logged_and_traced_once():
    h = make()
    response = h.request("POST", "/boom")
    assert response.status_code == 500  # Flask's own error handling answered
    assert h.value("mlmonitor_prediction_errors_total", {**IRIS_V1, "error_type": "ValueError"}) == 1
    assert h.value("mlmonitor_predictions_total", IRIS_V1) == 1
    [line] = h.lines()
    assert line["status"] == 500 and line["error_type"] == "ValueError"
    assert "Traceback" in line["stack"] and "opensesame" not in json.dumps(line)
    [span] = h.spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.events[0].name == "exception"
    assert "opensesame" not in span.events[0].attributes["exception.message"]


def test_app_error_handler_still_decides_the_response():
    h = make()

    @h.app.errorhandler(ValueError)
    def handled(exc):
        return jsonify(error="handled"), 503

    response = h.request("POST", "/boom")
    assert response.status_code == 503 and response.get_json() == {"error": "handled"}
    assert h.value("mlmonitor_prediction_errors_total", {**IRIS_V1, "error_type": "ValueError"}) == 1


def test_client_error_counts_as_invalid_input_and_leaves_span_status_unset():
    h = make()
    response = h.request("POST", "/invalid")
    assert response.status_code == 400 and b"bad features" in response.data
    assert h.value("mlmonitor_prediction_errors_total",
                   {**IRIS_V1, "error_type": "invalid_input"}) == 1
    [span] = h.spans()
    assert span.status.status_code == StatusCode.UNSET


def test_log_line_fields_and_request_id_echo():
    h = make()
    response = h.request("POST", "/predict", json={}, headers={"X-Request-ID": "req-123"})
    assert response.headers["X-Request-ID"] == "req-123"
    [line] = h.lines()
    for key in ("timestamp", "level", "event", "method", "route", "status", "duration_ms",
                "model_name", "model_version", "request_id", "trace_id", "span_id"):
        assert key in line, key
    assert line["request_id"] == "req-123" and line["model_version"] == "v1"
    assert line["tags"] == {"segment": "gold", "api_key": "[REDACTED]"}
    [server] = [s for s in h.spans() if s.name == "POST /predict"]
    assert line["trace_id"] == format(server.context.trace_id, "032x")
    assert line["span_id"] == format(server.context.span_id, "016x")


def test_generated_request_id_when_missing_or_hostile():
    h = make()
    response = h.request("POST", "/predict", json={}, headers={"X-Request-ID": "x\" y" * 100})
    generated = response.headers["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()


def test_server_span_semantic_conventions_and_child_stages():
    h = make()
    h.request("POST", "/predict?api_key=abc&q=1", json={})
    spans = {s.name: s for s in h.spans()}
    server = spans["POST /predict"]
    assert server.kind.name == "SERVER"
    attrs = server.attributes
    assert attrs["http.request.method"] == "POST" and attrs["http.route"] == "/predict"
    assert attrs["http.response.status_code"] == 200
    assert attrs["ml.model.name"] == "iris" and attrs["ml.model.version"] == "v1"
    assert attrs["ml.tag.segment"] == "gold" and attrs["ml.tag.api_key"] == "[REDACTED]"
    assert "abc" not in attrs["url.query"] and "q=1" in attrs["url.query"]
    assert spans["inference"].parent.span_id == server.context.span_id


def test_incoming_traceparent_is_honoured():
    h = make()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    h.request("POST", "/predict", json={},
              headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    server = [s for s in h.spans() if s.name == "POST /predict"][0]
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert h.lines()[0]["trace_id"] == trace_id


@pytest.mark.parametrize("instrumented_first", [True, False])
def test_flask_instrumentor_app_keeps_one_server_span(instrumented_first):
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    registry, exporter = CollectorRegistry(), InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Flask(__name__)
    if instrumented_first:
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    logs = io.StringIO()
    monitor = Monitor(app, model_name="iris", model_version="v1", registry=registry,
                      tracer_provider=provider, log_stream=logs)
    if not instrumented_first:  # its before_request hook then runs after mlmonitor's
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return jsonify(ok=True)

    @app.get("/healthz")
    def healthz():
        return jsonify(ok=True)

    try:
        client = app.test_client()
        client.post("/predict", json={}, buffered=True)
        client.get("/healthz", buffered=True)
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    servers = [s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]
    assert len(servers) == 2
    predict_span, health_span = servers
    assert predict_span.attributes["ml.model.version"] == "v1"
    assert "ml.model.version" not in health_span.attributes
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    assert [line["trace_id"] for line in lines] == [
        format(span.context.trace_id, "032x") for span in servers]
    assert [line["span_id"] for line in lines] == [
        format(span.context.span_id, "016x") for span in servers]


def test_unknown_paths_and_methods_add_no_series():
    h = make()
    h.request("GET", "/does-not-exist")
    h.request("BREW", "/does-not-exist")
    before = h.series()
    rng = random.Random(7)
    for _ in range(10_000):
        path = "/x" + "".join(rng.choice("abcdefgh/%-_.") for _ in range(rng.randint(1, 20)))
        method = rng.choice(["GET", "BREW", "PURGE", "X" * rng.randint(1, 9)])
        h.request(method, path)
    assert h.series() == before
    span_names = {s.name for s in h.spans()}
    assert span_names <= {"GET", "other"}


def test_versions_beyond_the_cap_collapse_to_other():
    h = make(max_label_values=3)

    @h.app.post("/any/<version>")
    @h.monitor.prediction
    def any_version(version):
        h.monitor.set_model_version(version)
        return "ok"

    for i in range(10):
        h.request("POST", f"/any/v{i}")
    versions = {labels for name, labels in h.series() if name == "mlmonitor_predictions_total"}
    assert len(versions) == 4  # the configured v1, the first two others, and "other"
    assert h.value("mlmonitor_predictions_total", {"model_name": "iris", "model_version": "other"}) == 7


def test_metrics_can_be_protected_by_token():
    h = make(metrics_token="s3cret-token")
    assert h.request("GET", "/metrics").status_code == 401
    assert h.request("GET", "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = h.request("GET", "/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200 and b"mlmonitor_http_requests_total" in ok.data


def test_metrics_can_be_protected_by_basic_auth():
    import base64
    h = make(metrics_basic_auth="prom:pa55")
    assert h.request("GET", "/metrics").status_code == 401
    good = "Basic " + base64.b64encode(b"prom:pa55").decode()
    assert h.request("GET", "/metrics", headers={"Authorization": good}).status_code == 200


def test_metrics_path_can_move_or_be_turned_off():
    h = make(metrics_path="/internal/metrics")
    assert h.request("GET", "/internal/metrics").status_code == 200
    assert h.request("GET", "/metrics").status_code == 404
    off = make(metrics_path="")
    assert off.request("GET", "/metrics").status_code == 404


def test_signals_switch_off_one_by_one():
    h = make(logs=False, traces=False)
    h.request("POST", "/predict", json={})
    assert h.logs.getvalue() == "" and h.spans() == ()
    assert h.value("mlmonitor_predictions_total", IRIS_V1) == 1
    quiet = make(metrics=False)
    quiet.request("POST", "/predict", json={})
    assert quiet.request("GET", "/metrics").status_code == 404
    assert [line["route"] for line in quiet.lines()] == ["/predict", "<unmatched>"]


def test_successes_are_sampled_but_errors_always_logged():
    h = make(log_sample_rate=0.0)
    for _ in range(5):
        h.request("POST", "/predict", json={})
    h.request("POST", "/boom")
    h.request("POST", "/invalid")
    assert [line["status"] for line in h.lines()] == [500, 400]


def test_exemplars_carry_the_trace_and_span_id_in_openmetrics():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
    h = make()
    h.request("POST", "/predict", json={})
    text = h.request("GET", "/metrics",
                     headers={"Accept": "application/openmetrics-text; version=1.0.0"}).get_data(as_text=True)
    line = h.lines()[0]
    found = [s.exemplar.labels for f in openmetrics_families(text) for s in f.samples if s.exemplar]
    assert found and all(e == {"trace_id": line["trace_id"], "span_id": line["span_id"]} for e in found)


def test_init_app_pattern_and_double_registration():
    monitor = Monitor(model_name="iris", registry=CollectorRegistry(), log_stream=io.StringIO())
    app = Flask(__name__)
    monitor.init_app(app, model_version="v9")
    assert app.extensions["mlmonitor"].settings.model_version == "v9"
    with pytest.raises(RuntimeError, match="already registered"):
        monitor.init_app(app)


def test_flask_config_keys_are_read():
    app = Flask(__name__)
    app.config["MLMONITOR_MODEL_VERSION"] = "from-config"
    Monitor(app, registry=CollectorRegistry(), log_stream=io.StringIO())
    assert app.extensions["mlmonitor"].settings.model_version == "from-config"


def test_bad_setting_fails_at_start_up_naming_it(monkeypatch):
    monkeypatch.setenv("MLMONITOR_LOG_SAMPLE_RATE", "often")
    with pytest.raises(ConfigError, match="MLMONITOR_LOG_SAMPLE_RATE"):
        Monitor(Flask(__name__), registry=CollectorRegistry())


def test_middleware_module_imports_no_flask():
    code = "import sys, mlmonitor.middleware; assert 'flask' not in sys.modules, 'flask imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_package_does_not_import_prometheus_client():
    code = ("import sys, mlmonitor, mlmonitor.gunicorn; "
            "assert 'prometheus_client' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={"PROMETHEUS_MULTIPROC_DIR": "", "PATH": "/usr/bin:/bin"})
