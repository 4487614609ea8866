"""Spans shaped for MLflow and model lineage, with in-memory doubles (no MLflow needed)."""
import io
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from flask import Flask, jsonify, request
from opentelemetry.trace import SpanKind

from mlmonitor import Monitor
from mlmonitor import lineage as lin
from mlmonitor import mlflow as mlm
from mlmonitor.config import ConfigError, resolve
from mlmonitor.testing import capture


@pytest.fixture(autouse=True)
def _no_lineage_leaks():
    yield
    lin._LINEAGE.clear()


def make(**options):
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="1.10", **options)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("inference"):
            body = request.get_json()
        return jsonify(label="setosa", echo=body)

    @app.post("/plain")
    def plain():
        return jsonify(ok=True)

    return app, monitor


def server_span(monitored):
    return [s for s in monitored.spans() if s.kind == SpanKind.SERVER][0]


def test_mlflow_shape_named_from_the_start_with_tags_and_type():
    names_at_start = []
    with capture() as monitored:
        from opentelemetry.sdk.trace.export import SpanProcessor

        class AtStart(SpanProcessor):  # what MLflow's processor reads: the name at on_start
            def on_start(self, span, parent_context=None):
                names_at_start.append((span.name, dict(span.attributes)))

        monitored.provider.add_span_processor(AtStart())
        app, _ = make(mlflow=True)
        assert app.test_client().post("/predict", json={"x": [1, 2]}).status_code == 200
    span = server_span(monitored)
    assert span.name == "POST /predict"
    name, attributes = [n for n in names_at_start if n[0].startswith("POST")][0]
    assert name == "POST /predict"
    assert json.loads(attributes["mlflow.traceTag.mlflow.traceName"]) == "POST /predict"
    assert span.attributes["mlflow.spanType"] == '"CHAIN"'
    # JSON-encoded: MLflow json-decodes string attributes ("1.10" would show as 1.1)
    assert json.loads(span.attributes["mlflow.traceTag.ml.model.version"]) == "1.10"
    assert json.loads(span.attributes["mlflow.traceTag.ml.model.name"]) == "iris"
    assert span.attributes["ml.model.version"] == "1.10"
    # never previews by default
    assert "mlflow.spanInputs" not in span.attributes
    assert "mlflow.spanOutputs" not in span.attributes


def test_no_mlflow_attributes_by_default(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raising=False)
    with capture() as monitored:
        app, _ = make()
        app.test_client().post("/predict", json={})
    assert not [k for k in server_span(monitored).attributes if k.startswith("mlflow.")]


def test_the_otlp_header_turns_the_mlflow_shape_on(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-mlflow-experiment-id=7")
    with capture() as monitored:
        app, _ = make()
        app.test_client().post("/plain", json={})
    span = server_span(monitored)
    assert span.name == "POST /plain"
    assert json.loads(span.attributes["mlflow.traceTag.mlflow.traceName"]) == "POST /plain"
    assert "mlflow.traceTag.ml.model.name" not in span.attributes  # not a prediction


def test_capture_io_previews_are_redacted_and_capped():
    with capture() as monitored:
        app, _ = make(mlflow=True, capture_io=True)
        client = app.test_client()
        client.post("/predict", json={"x": [1, 2], "api_key": "s3cr3t-value"})
        client.post("/predict", json={"x": list(range(2000))})
    first, second = [s for s in monitored.spans() if s.kind == SpanKind.SERVER]
    inputs = json.loads(first.attributes["mlflow.spanInputs"])
    assert inputs["x"] == [1, 2] and inputs["api_key"] != "s3cr3t-value"
    assert "s3cr3t-value" not in first.attributes["mlflow.spanOutputs"]
    assert json.loads(first.attributes["mlflow.spanOutputs"])["label"] == "setosa"
    cut = second.attributes["mlflow.spanInputs"]
    assert len(cut) <= 1024 and isinstance(json.loads(cut), str)  # still JSON: a string head


def test_incoming_traceparent_new_root_links_the_caller():
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    header = {"traceparent": f"00-{trace_id}-{parent}-01"}
    with capture() as monitored:
        app, _ = make(mlflow=True, mlflow_new_root=True)
        app.test_client().post("/predict", json={}, headers=header)
        logs = monitored.logs()
    span = server_span(monitored)
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != trace_id
    assert [format(link.context.span_id, "016x") for link in span.links] == [parent]
    assert logs[0]["trace_id"] == format(span.context.trace_id, "032x")
    with capture() as monitored:  # the default: the caller's trace is continued
        app, _ = make(mlflow=True)
        app.test_client().post("/predict", json={}, headers=header)
    assert format(server_span(monitored).context.trace_id, "032x") == trace_id


@pytest.mark.parametrize("uri,parts", [
    ("models:/iris-clf/1", dict(name="iris-clf", version="1")),
    ("models:/iris-clf@champion", dict(name="iris-clf", alias="champion")),
    ("runs:/0123abcd/model", dict(run_id="0123abcd")),
    ("models:/m-0123abcd", dict(model_id="m-0123abcd")),
])
def test_model_uri_forms(uri, parts):
    found = {k: v for k, v in lin.parse_model_uri(uri).items() if v is not None}
    assert found == parts


@pytest.mark.parametrize("uri", ["s3://bucket/model", "models:/", "models:/x/latest", "runs:/"])
def test_bad_model_uri_is_a_config_error(uri):
    with pytest.raises(ConfigError, match="model_uri"):
        resolve({"model_uri": uri})


def test_alias_without_a_registry_is_a_clear_config_error(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConfigError, match="alias|MLflow"):
        resolve({"model_uri": "models:/iris-clf@champion"})


def test_lineage_reaches_model_info_spans_and_logs():
    with capture() as monitored:
        app = Flask(__name__)
        monitor = Monitor(app, model_uri="models:/iris-clf/3", model_run_id="0a1b2c3d",
                          model_id="m-77ab")

        @app.post("/predict")
        @monitor.prediction
        def predict():
            return jsonify(ok=True)

        @app.post("/other")
        @monitor.prediction(model_uri="runs:/feedbeef/model", model_name="wine",
                            model_version="v2")
        def other():
            return jsonify(ok=True)

        client = app.test_client()
        client.post("/predict", json={})
        client.post("/other", json={})
        logs = monitored.logs()
    assert monitored.value("mlmonitor_model_info", model_name="iris-clf", model_version="3",
                           run_id="0a1b2c3d", model_id="m-77ab") == 1
    assert monitored.value("mlmonitor_model_info", model_name="wine", model_version="v2",
                           run_id="feedbeef", model_id="") == 1
    # the other families keep their two model labels
    assert monitored.value("mlmonitor_predictions_total", model_name="iris-clf",
                           model_version="3") == 1
    spans = {s.name: s for s in monitored.spans() if s.kind == SpanKind.SERVER}
    assert spans["POST /predict"].attributes["ml.model.run_id"] == "0a1b2c3d"
    assert spans["POST /predict"].attributes["ml.model.id"] == "m-77ab"
    assert spans["POST /other"].attributes["ml.model.run_id"] == "feedbeef"
    assert (logs[0]["model_run_id"], logs[0]["model_id"]) == ("0a1b2c3d", "m-77ab")
    assert (logs[1]["model_run_id"], logs[1]["model_id"]) == ("feedbeef", "")


def test_lineage_ids_are_checked_at_start_up():
    with pytest.raises(ConfigError, match="model_run_id"):
        resolve({"model_run_id": "a b"})
    with pytest.raises(ConfigError, match="model_id"):
        Monitor(Flask(__name__), model_id="x" * 65, log_stream=io.StringIO())


def test_connected_mode_without_mlflow(monkeypatch):
    """``enable()`` says what to install; ``mlflow=True`` without MLflow only shapes the spans."""
    import importlib.util
    import os
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "mlflow" else real(name, *args))
    monkeypatch.delenv("MLFLOW_USE_DEFAULT_TRACER_PROVIDER", raising=False)
    with pytest.raises(ConfigError, match=r"mlmonitor-serving\[mlflow\]"):
        mlm.enable()
    assert mlm.enable(required=False) is None
    assert "MLFLOW_USE_DEFAULT_TRACER_PROVIDER" not in os.environ  # nothing changed


def test_capture_io_previews_for_a_fastapi_view_are_its_body_and_result_redacted():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from pydantic import BaseModel

    from mlmonitor import Monitor as AsgiMonitor

    class Query(BaseModel):
        x: list
        api_key: str = ""

    with capture() as monitored:
        app = FastAPI()
        monitor = AsgiMonitor(app, model_name="iris", mlflow=True, capture_io=True)

        @app.post("/predict")
        @monitor.prediction
        async def predict(query: Query):
            return {"label": "setosa", "n": len(query.x)}

        with TestClient(app) as client:
            client.post("/predict", json={"x": [1, 2], "api_key": "s3cr3t-value"})
    span = server_span(monitored)
    inputs = json.loads(span.attributes["mlflow.spanInputs"])
    assert inputs["query"]["x"] == [1, 2] and "s3cr3t-value" not in span.attributes["mlflow.spanInputs"]
    assert json.loads(span.attributes["mlflow.spanOutputs"]) == {"label": "setosa", "n": 2}


def test_capture_io_on_json_nested_too_deep_is_no_preview_and_no_fault():
    with capture() as monitored:
        app, _ = make(mlflow=True, capture_io=True)
        response = app.test_client().post("/predict", data="[" * 30000 + "]" * 30000,
                                          content_type="application/json")
        assert response.status_code in (400, 500)  # the app's own answer
        assert monitored.value("mlmonitor_internal_errors_total", component="flask") == 0
    assert "mlflow.spanInputs" not in server_span(monitored).attributes


@pytest.mark.parametrize("version", ["3.1.0", "3.5.1", "3.6.0"])
def test_enable_refuses_an_mlflow_older_than_the_connected_mode_needs(monkeypatch, version):
    """Found on the real wheels: 3.1-3.4 refuse the destination, 3.5 keeps its own provider (no
    trace arrives), 3.6 leaves the trace unfinished. The error names the version, before any
    MLFLOW_* variable is set."""
    import importlib.util
    from importlib import metadata
    real_spec, real_version = importlib.util.find_spec, metadata.version
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "mlflow" else real_spec(name, *a))
    monkeypatch.setattr(metadata, "version",
                        lambda dist: version if dist == "mlflow-skinny" else real_version(dist))
    monkeypatch.delenv("MLFLOW_USE_DEFAULT_TRACER_PROVIDER", raising=False)
    with pytest.raises(ConfigError, match=rf"MLflow >= 3.7 \(installed: {version}\)"):
        mlm.enable()
    assert "MLFLOW_USE_DEFAULT_TRACER_PROVIDER" not in os.environ
    for ok in ("3.7.0", "3.17.2", "4.0.0rc1"):
        mlm._check_version(ok)  # no error
    mlm._check_version(None)  # a source checkout without metadata: not refused


def test_a_large_body_is_read_no_further_than_its_preview():
    """A 60 KB JSON body: only about the 1 KiB its preview can show is copied and redacted
    (before, the whole body was, ~10 ms a request), secrets in that head still hidden."""
    from mlmonitor.previews import PREVIEW_CHARS, _head
    budget = [PREVIEW_CHARS]
    head = _head(list(range(1_000_000)), budget)
    assert budget[0] < 0 and 50 < len(head) <= PREVIEW_CHARS // 8
    body = {f"k{i}": [i, "v" * 5, {"password": "hunter2"}] for i in range(1200)}  # ~56 KB
    budget = [PREVIEW_CHARS]
    assert len(_head(body, budget)) < 40 and budget[0] < 0
    with capture() as monitored:
        app, _ = make(mlflow=True, capture_io=True)
        app.test_client().post("/predict", json=body)
    preview = server_span(monitored).attributes["mlflow.spanInputs"]
    text = json.loads(preview)  # a cut preview is a JSON string of the head
    assert isinstance(text, str) and text.startswith('{"k0": [0, "vvvvv", {"password": "[REDACTED]"}]')
    assert len(preview) <= PREVIEW_CHARS and "hunter2" not in preview


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=400),
                    lambda inner: st.lists(inner, max_size=8)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=8), max_leaves=60))
def test_every_preview_is_whole_json_within_the_attribute_limit(value):
    """Cut or not, escaped or not: what MLflow gets parses as JSON and is never cut again by
    the SDK's attribute limit."""
    from mlmonitor.previews import PREVIEW_CHARS
    from mlmonitor.traces import TraceSink
    sink = TraceSink.__new__(TraceSink)
    from mlmonitor.redact import redactor
    sink.redactor = redactor(())
    preview = sink.preview(value)
    assert len(preview) <= PREVIEW_CHARS
    json.loads(preview)


def test_mlflow_tracing_that_cannot_start_is_one_config_error(monkeypatch):
    """mlflow-skinny 3.18 without MLFLOW_TRACKING_URI picks a sqlite store it cannot open and
    raises from ``mlflow.tracing.enable()``: start-up stops with one ConfigError that says what
    to set, no MLflow traceback chained to it, a URI's password hidden."""
    import importlib.util
    import sys
    import types
    from opentelemetry import trace

    def refuse():
        raise RuntimeError("Model registry functionality is unavailable; got unsupported URI\n"
                           "'sqlite:///mlflow.db' (was https://user:pa55word@mlflow.example)")

    fake = types.ModuleType("mlflow")
    fake.tracing = types.SimpleNamespace(enable=refuse, set_destination=lambda where: None)
    location = types.ModuleType("mlflow.entities.trace_location")
    location.MlflowExperimentLocation = lambda experiment_id: experiment_id
    for name, module in {"mlflow": fake, "mlflow.entities": types.ModuleType("mlflow.entities"),
                         "mlflow.entities.trace_location": location}.items():
        monkeypatch.setitem(sys.modules, name, module)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "mlflow" else real(name, *a))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: "the app's provider")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_USE_DEFAULT_TRACER_PROVIDER", "MLFLOW_ENABLE_OTLP_EXPORTER",
                 "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                 "MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.setenv(name, "restored after the test")
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as raised:
        Monitor(Flask(__name__), mlflow=True, log_stream=io.StringIO())
    message = str(raised.value)
    assert message.startswith("mlmonitor.mlflow.enable(): MLflow's tracing did not start "
                              "(MLFLOW_TRACKING_URI is not set")
    assert "unsupported URI 'sqlite:///mlflow.db'" in message and "set MLFLOW_TRACKING_URI" in message
    assert "\n" not in message and "pa55word" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert mlm._enabled == []  # not marked enabled: a later call tries again


@pytest.mark.slow
def test_real_mlflow_refusing_its_tracking_uri_stops_start_up_with_one_config_error(tmp_path):
    """The same with the real MLflow of .venv-mlflow: a store it cannot use (mlflow-skinny 3.18's
    default sqlite store without SQLAlchemy fails the same way) gives one ConfigError line."""
    import subprocess

    from tests.test_mlflow_server import REPO, mlflow_tool
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OTEL_"))}
    env.update(MLFLOW_TRACKING_URI="nosuchstore://user:pa55word@host", PYTHONPATH=str(REPO))
    code = ("from flask import Flask\nfrom mlmonitor import Monitor\n"
            "Monitor(Flask(__name__), mlflow=True)\nprint('started')\n")
    out = subprocess.run([mlflow_tool("python"), "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 1 and "started" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("mlmonitor.config.ConfigError: mlmonitor.mlflow.enable(): MLflow's tracing "
                           "did not start (MLFLOW_TRACKING_URI='nosuchstore://user:[REDACTED]@host')"), last
    assert "MlflowTracingException" in last and "pa55word" not in out.stderr
    assert "The above exception was the direct cause" not in out.stderr
