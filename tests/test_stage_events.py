"""Issue 19, item 3: ``stage_spans="events"`` records stages as events on the server span
(one span per request) instead of child spans; the default stays child spans."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from flask import Flask
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry

from mlmonitor import ConfigError, Monitor
from mlmonitor.config import resolve
from tests.helpers.otlp import OTLPReceiver


def make_app(sampler=None, **options):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream = io.StringIO()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", registry=CollectorRegistry(), tracer_provider=provider,
                      log_stream=stream, **options)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("preprocess"):
            pass
        with monitor.stage("inference"):
            sum(range(1000))
        try:
            with monitor.stage("postprocess"):
                raise KeyError("handled by the view")
        except KeyError:
            pass
        return {"prediction": "setosa"}

    return app, exporter, stream


def test_events_mode_exports_one_span_with_an_event_per_stage():
    app, exporter, stream = make_app(stage_spans="events")
    response = app.test_client().post("/predict", json={})
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["POST /predict"]
    server = spans[0]
    events = list(server.events)
    assert [e.name for e in events] == ["preprocess", "inference", "postprocess"]
    assert [e.attributes["ml.stage"] for e in events] == ["preprocess", "inference", "postprocess"]
    assert "error.type" not in events[0].attributes and "error.type" not in events[1].attributes
    assert events[2].attributes["error.type"] == "KeyError"
    # the same durations the log line reports, in milliseconds
    line = json.loads(stream.getvalue().splitlines()[-1])
    for event in events:
        assert event.attributes["ml.stage.duration_ms"] == pytest.approx(
            line["stages_ms"][event.name], abs=0.01)
    # stamped at each stage's start, on the span's clock: in order, inside the span
    stamps = [e.timestamp for e in events]
    assert server.start_time <= stamps[0] <= stamps[1] <= stamps[2] <= server.end_time
    for event, following in zip(events, stamps[1:] + [server.end_time]):
        end = event.timestamp + event.attributes["ml.stage.duration_ms"] * 1e6
        assert end <= following + 1e5  # a stage ends before the next begins (0.1 ms rounding)


def test_default_stays_child_spans():
    app, exporter, _ = make_app()
    app.test_client().post("/predict", json={})
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"POST /predict", "preprocess", "inference", "postprocess"}
    server = spans["POST /predict"]
    assert not server.events
    for name in ("preprocess", "inference", "postprocess"):
        assert spans[name].parent.span_id == server.context.span_id
        assert spans[name].attributes["ml.stage"] == name


def test_unsampled_request_gets_no_events_and_no_fault():
    app, exporter, stream = make_app(sampler=ALWAYS_OFF, stage_spans="events")
    assert app.test_client().post("/predict", json={}).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert set(json.loads(stream.getvalue().splitlines()[-1])["stages_ms"]) == {
        "preprocess", "inference", "postprocess"}


def test_setting_resolves_from_keyword_flask_config_and_environment():
    assert resolve({}).stage_spans == "children"
    assert resolve({}, environ={"MLMONITOR_STAGE_SPANS": "events"}).stage_spans == "events"
    assert resolve({}, {"MLMONITOR_STAGE_SPANS": "events"},
                   {"MLMONITOR_STAGE_SPANS": "children"}).stage_spans == "events"
    assert resolve({"stage_spans": "children"}, {"MLMONITOR_STAGE_SPANS": "events"}).stage_spans \
        == "children"


@pytest.mark.parametrize("value", ["event", "span", "", "EVENTS", 1])
def test_bad_value_stops_start_up_with_one_line_naming_the_setting(value):
    with pytest.raises(ConfigError) as info:
        resolve({"stage_spans": value})
    message = str(info.value)
    assert "stage_spans" in message and "\n" not in message
    with pytest.raises(ConfigError) as info:
        resolve({}, environ={"MLMONITOR_STAGE_SPANS": "sideways"})
    assert "stage_spans" in str(info.value)


SCRIPT = textwrap.dedent("""
    from tests.apps.simple_app import create_app
    import mlmonitor.trace_provider
    client = create_app().test_client()
    for i in range(4):
        client.post("/predict", json={})
    client.post("/predict", json={}, headers={"X-Fail": "1"})
    mlmonitor.trace_provider.shutdown()
""")


def test_a_real_otlp_receiver_gets_one_span_per_request_with_its_stage_events():
    """mlmonitor builds its provider from OTEL_* (its fast encoder), the setting from the environment."""
    with OTLPReceiver() as receiver:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "MLMONITOR_STAGE_SPANS": "events"}
        result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                                timeout=60, env=env, cwd=os.getcwd())
        assert result.returncode == 0, result.stderr
        spans = receiver.wait_for(5)
        raw = [span for request in receiver.requests for resource_spans in request.resource_spans
               for scope_spans in resource_spans.scope_spans for span in scope_spans.spans]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 5 and len(spans) == 5  # no stage spans
    assert all(s["name"] == "POST /predict" for s in spans)
    by_trace = {s["trace_id"]: s for s in spans}
    for line in lines:
        span = by_trace[line["trace_id"]]
        [event] = [e for e in span["events"] if e["name"] != "exception"]  # a 500 has that one too
        assert event["name"] == "inference" and event["attributes"]["ml.stage"] == "inference"
        assert event["attributes"]["ml.stage.duration_ms"] == pytest.approx(
            line["stages_ms"]["inference"], abs=0.01)
        assert ("error.type" in event["attributes"]) == (line["status"] == 500)
    failed = [s for s in spans if s["attributes"]["http.response.status_code"] == 500]
    assert [e["attributes"]["error.type"] for e in failed[0]["events"]
            if e["name"] == "inference"] == ["RuntimeError"]
    for span in raw:
        for event in span.events:
            assert span.start_time_unix_nano <= event.time_unix_nano <= span.end_time_unix_nano


def test_stage_events_benchmark_quick_counts_one_span_a_request_with_events(tmp_path):
    """benchmarks/bench_stage_events.py: what each mode sends (no timing asserted)."""
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    out = tmp_path / "stage_events.json"
    proc = subprocess.run([sys.executable, os.path.join(bench, "bench_stage_events.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert results["children"]["spans_per_request"] == 2 and results["children"]["events_per_request"] == 0
    assert results["events"]["spans_per_request"] == 1 and results["events"]["events_per_request"] == 1
    assert 0 < results["events"]["bytes_per_request"] < results["children"]["bytes_per_request"]


def test_with_flask_instrumentor_the_events_go_on_its_server_span():
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Flask(__name__)
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    monitor = Monitor(app, model_name="iris", registry=CollectorRegistry(), tracer_provider=provider,
                      log_stream=io.StringIO(), stage_spans="events")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("inference"):
            return {"prediction": "setosa"}

    try:
        assert app.test_client().post("/predict", json={}).status_code == 200
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    [server] = exporter.get_finished_spans()
    assert server.kind == SpanKind.SERVER
    assert [(e.name, e.attributes["ml.stage"]) for e in server.events] == [("inference", "inference")]


# -- issue 25, item 5: a stage entered several times -------------------------------------------

def decoding_app(tagged, **options):
    """A text generator's view as the README's LLM example: one ``decode`` stage per token."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream, registry = io.StringIO(), CollectorRegistry()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="gen", model_version="v1", registry=registry, tracer_provider=provider,
                      log_stream=stream, **options)

    @app.post("/generate")
    @monitor.prediction
    def generate():
        if tagged:
            monitor.tag(tenant="a")  # a line with tags takes the general render path
        with monitor.stage("prefill"):
            time.sleep(0.002)
        for token in range(5):
            with monitor.stage("decode"):
                time.sleep(0.002 * (token + 1))
        return {"text": "hello"}

    return app, exporter, stream, registry


@pytest.mark.parametrize("tagged", [False, True], ids=["plain-line", "line-with-tags"])
@pytest.mark.parametrize("stage_spans", ["children", "events"])
def test_a_repeated_stage_logs_and_spans_its_sum_and_count_as_the_histogram_holds(tagged, stage_spans):
    app, exporter, stream, registry = decoding_app(tagged, stage_spans=stage_spans)
    assert app.test_client().post("/generate", json={}).status_code == 200

    def histogram(stage, suffix):
        return registry.get_sample_value(f"mlmonitor_stage_duration_seconds_{suffix}",
                                         {"model_name": "gen", "model_version": "v1",
                                          "stage": stage})
    assert histogram("decode", "count") == 5 and histogram("prefill", "count") == 1
    decode_ms, prefill_ms = histogram("decode", "sum") * 1000, histogram("prefill", "sum") * 1000

    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert ("tags" in line) is tagged
    assert list(line["stages_ms"]) == ["prefill", "decode"]
    assert line["stages_ms"]["decode"] == pytest.approx(decode_ms, abs=0.0006)  # 3 decimals
    assert line["stages_ms"]["prefill"] == pytest.approx(prefill_ms, abs=0.0006)
    assert line["stage_counts"] == {"decode": 5}  # only the stage that repeated

    spans = exporter.get_finished_spans()
    [server] = [s for s in spans if s.name == "POST /generate"]
    assert server.attributes["ml.stages_ms.decode"] == pytest.approx(decode_ms, rel=1e-12)
    assert server.attributes["ml.stages_ms.prefill"] == pytest.approx(prefill_ms, rel=1e-12)
    assert server.attributes["ml.stage_counts.decode"] == 5
    assert "ml.stage_counts.prefill" not in server.attributes
    if stage_spans == "events":  # one event per block, as the histogram has one observation each
        blocks = [e.attributes["ml.stage.duration_ms"] for e in server.events if e.name == "decode"]
    else:
        blocks = [(s.end_time - s.start_time) / 1e6 for s in spans if s.name == "decode"]
    assert len(blocks) == 5


def test_a_stage_entered_once_logs_no_counts():
    app, _, stream = make_app()
    app.test_client().post("/predict", json={})
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert set(line["stages_ms"]) == {"preprocess", "inference", "postprocess"}
    assert "stage_counts" not in line
