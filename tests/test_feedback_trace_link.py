"""Issue 29, items 1, 3 and 4: ground truth on the trace, in any OTel backend.

The id of a traced, sampled prediction carries its trace and span ids under the HMAC; the
feedback request's span links to that span and carries the outcome, and its log line the
prediction's trace id. An unsampled prediction's id stays as short as before, old ids are
still accepted, and a forged or replayed id links nothing.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from prometheus_client import CollectorRegistry

from mlmonitor import Monitor
from mlmonitor.tokens import MAX_TOKEN_LEN, InvalidFeedback, sign_prediction, verify_prediction
from mlmonitor.tools.profiling import build_profile
from tests.helpers.gunicorn_proc import GunicornProcess
from tests.helpers.otlp import OTLPReceiver

SECRET = "trace-link-secret-0123456789abcdef"
TRACE, SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


def regression_profile():
    return build_profile({"a": [float(i) for i in range(40)]}, predictions=[float(i) for i in range(40)],
                         labels=[float(i) + 1.0 for i in range(40)], task="regression")


def flask_app(sampler=None, regression=False):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream = io.StringIO()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="house" if regression else "iris", registry=CollectorRegistry(),
                      tracer_provider=provider, log_stream=stream, feedback_secret=SECRET)
    if regression:
        monitor.set_reference("house", regression_profile())

    @app.post("/predict")
    @monitor.prediction
    def predict():
        value = 3.5 if regression else "setosa"
        return {"prediction": value, "id": monitor.prediction_id(value)}

    @app.post("/feedback")
    def feedback():
        from flask import request  # noqa: PLC0415 (the view's own import)
        body = request.get_json()
        time.sleep(float(request.args.get("sleep", 0)))  # holds this worker: the next goes to the other
        try:
            return {"result": monitor.record_feedback(body["id"], body["label"])}
        except InvalidFeedback as exc:
            return {"refused": exc.reason}, 400

    client = app.test_client()

    def post(path, body):
        resp = client.post(path, json=body)
        return resp.status_code, resp.get_json()

    return post, exporter, stream


def fastapi_app(sampler=None, regression=False):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stream = io.StringIO()
    app = FastAPI()
    monitor = Monitor(app, model_name="house" if regression else "iris", registry=CollectorRegistry(),
                      tracer_provider=provider, log_stream=stream, feedback_secret=SECRET)
    if regression:
        monitor.set_reference("house", regression_profile())

    @app.post("/predict")
    @monitor.prediction
    async def predict():
        value = 3.5 if regression else "setosa"
        return {"prediction": value, "id": monitor.prediction_id(value)}

    @app.post("/feedback")
    async def feedback(body: dict):
        try:
            return {"result": monitor.record_feedback(body["id"], body["label"])}
        except InvalidFeedback as exc:
            from fastapi.responses import JSONResponse  # noqa: PLC0415 (the view's own import)
            return JSONResponse({"refused": exc.reason}, status_code=400)

    client = TestClient(app)

    def post(path, body):
        resp = client.post(path, json=body)
        return resp.status_code, resp.json()

    return post, exporter, stream


APPS = pytest.mark.parametrize("make", [flask_app, fastapi_app], ids=["flask", "fastapi"])


def server_span(exporter, path):
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith(path)]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[-1]


def log_lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@APPS
@pytest.mark.parametrize(("regression", "label", "attribute", "expected"), [
    (False, "setosa", "ml.feedback.outcome", "correct"),
    (False, "virginica", "ml.feedback.outcome", "incorrect"),
    (True, 5.0, "ml.feedback.absolute_error", 1.5),
], ids=["correct", "incorrect", "regression"])
def test_the_feedback_span_links_to_the_prediction_span_with_the_outcome(make, regression, label,
                                                                          attribute, expected):
    post, exporter, stream = make(regression=regression)
    status, body = post("/predict", {})
    assert status == 200
    prediction = server_span(exporter, "/predict")
    facts = verify_prediction(SECRET, body["id"], 60)
    assert facts.trace_id == f"{prediction.context.trace_id:032x}"
    assert facts.span_id == f"{prediction.context.span_id:016x}"

    status, result = post("/feedback", {"id": body["id"], "label": label})
    assert status == 200, result
    assert result["result"] == expected
    feedback = server_span(exporter, "/feedback")
    assert [(link.context.trace_id, link.context.span_id) for link in feedback.links] == [
        (prediction.context.trace_id, prediction.context.span_id)]
    assert feedback.attributes[attribute] == expected
    assert feedback.context.trace_id != prediction.context.trace_id
    lines = log_lines(stream)
    assert lines[1]["trace_id"] == f"{feedback.context.trace_id:032x}"
    assert lines[1]["prediction_trace_id"] == facts.trace_id
    assert "prediction_trace_id" not in lines[0]


@APPS
def test_an_unsampled_prediction_keeps_a_short_id_and_its_feedback_links_nothing(make):
    post, exporter, stream = make(sampler=ALWAYS_OFF)
    status, body = post("/predict", {})
    assert status == 200
    facts = verify_prediction(SECRET, body["id"], 60)
    assert (facts.trace_id, facts.span_id) == ("", "")
    # as long as an id minted without any trace context (the nonce is random, its length fixed)
    assert len(body["id"]) == len(sign_prediction(SECRET, "iris", facts.model_version, "setosa", ts=facts.ts))
    status, result = post("/feedback", {"id": body["id"], "label": "setosa"})
    assert (status, result) == (200, {"result": "correct"})
    assert exporter.get_finished_spans() == ()
    assert "prediction_trace_id" not in log_lines(stream)[1]


@APPS
def test_an_id_minted_before_trace_context_is_still_accepted(make):
    post, exporter, stream = make()
    old = sign_prediction(SECRET, "iris", "unknown", "setosa")  # the six-field id of earlier versions
    assert len(json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))) == 6
    status, result = post("/feedback", {"id": old, "label": "versicolor"})
    assert (status, result) == (200, {"result": "incorrect"})
    feedback = server_span(exporter, "/feedback")
    assert list(feedback.links) == []
    assert feedback.attributes["ml.feedback.outcome"] == "incorrect"
    assert "prediction_trace_id" not in log_lines(stream)[0]


@APPS
def test_a_forged_or_replayed_id_links_nothing(make):
    post, exporter, stream = make()
    _, body = post("/predict", {})
    payload, tag = body["id"].split(".")
    forged = sign_prediction("another-secret-0123456789abcdef", "iris", "unknown", "setosa",
                             trace_context=(TRACE, SPAN))
    tampered = f"{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{tag}"
    for bad in (forged, tampered):
        assert post("/feedback", {"id": bad, "label": "setosa"}) == (400, {"refused": "bad_signature"})
    assert post("/feedback", {"id": body["id"], "label": "setosa"})[0] == 200
    assert post("/feedback", {"id": body["id"], "label": "setosa"}) == (400, {"refused": "duplicate"})
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith("/feedback")]
    assert [len(s.links) for s in spans] == [0, 0, 1, 0]
    assert ["ml.feedback.outcome" in s.attributes for s in spans] == [False, False, True, False]
    assert ["prediction_trace_id" in line for line in log_lines(stream)[1:]] == [False, False, True, False]


def test_the_trace_context_is_signed_bounded_and_checked():
    long_name = "\u2028" * 128  # JSON-escaped to 6 bytes a character: the longest fields
    longest = sign_prediction(SECRET, long_name, long_name, "\u2028" * 42, trace_context=(TRACE, SPAN))
    assert len(longest) <= MAX_TOKEN_LEN
    short = sign_prediction(SECRET, "iris", "1", "setosa", ts=0)
    traced = sign_prediction(SECRET, "iris", "1", "setosa", ts=0, trace_context=(TRACE, SPAN))
    assert len(traced) - len(short) <= 48
    assert all(c.isalnum() or c in "-_." for c in traced)
    facts = verify_prediction(SECRET, traced, 60, now=1)
    assert (facts.trace_id, facts.span_id) == (TRACE, SPAN)
    for bad in (("0" * 32, SPAN), (TRACE, "0" * 16), (TRACE[:-2], SPAN), ("zz" * 16, SPAN)):
        with pytest.raises(ValueError, match="trace"):
            sign_prediction(SECRET, "iris", "1", "setosa", trace_context=bad)
    # a signed payload whose seventh field is not a trace context is malformed, not trusted
    import hashlib  # noqa: PLC0415 (only this test signs by hand)
    import hmac  # noqa: PLC0415 (as above)
    for seventh in ("short", 7, "A" * 32, ["x"]):
        body = json.dumps([1, "iris", "1", "setosa", 0, "nonce123", seventh]).encode()
        payload = base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        tag = hmac.new(SECRET.encode(), b"mlmonitor.feedback." + payload.encode(), hashlib.sha256).digest()[:16]
        token = f"{payload}.{base64.urlsafe_b64encode(tag).rstrip(b'=').decode()}"
        with pytest.raises(InvalidFeedback, match="malformed"):
            verify_prediction(SECRET, token, 60, now=1)


APP_SOURCE = textwrap.dedent('''
    import os
    import time
    from flask import Flask, request
    from mlmonitor import Monitor
    from mlmonitor.tokens import InvalidFeedback

    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return {"id": monitor.prediction_id("setosa"), "pid": os.getpid()}

    @app.post("/feedback")
    def feedback():
        body = request.get_json()
        time.sleep(float(request.args.get("sleep", 0)))  # holds this worker: the next goes to the other
        try:
            return {"result": monitor.record_feedback(body["id"], body["label"]), "pid": os.getpid()}
        except InvalidFeedback as exc:
            return {"refused": exc.reason, "pid": os.getpid()}, 400

    @app.get("/healthz")
    def healthz():
        return "ok"
''')


def post(port, path, body):
    """One request on its own connection, so that either worker may take it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json",
                                                      "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_under_gunicorn_feedback_on_another_worker_links_to_the_prediction_span(tmp_path):
    (tmp_path / "trace_link_app.py").write_text(APP_SOURCE)
    with OTLPReceiver() as receiver:
        env = {"PYTHONPATH": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
               "MLMONITOR_FEEDBACK_SECRET": SECRET, "MLMONITOR_TRACES": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with GunicornProcess(app="trace_link_app:app", config="python:mlmonitor.gunicorn", workers=2,
                             env=env) as server:
            predictions = [post(server.port, "/predict", {}) for _ in range(20)]
            assert all(status == 200 for status, _ in predictions)
            crossed = None
            deadline = time.monotonic() + 120
            with ThreadPoolExecutor(2) as pool:  # two at a time, each holding its worker a while
                for pair in zip(predictions[::2], predictions[1::2]):
                    answers = list(pool.map(lambda item: (item[1], post(
                        server.port, "/feedback?sleep=0.3", {"id": item[1]["id"], "label": "setosa"})), pair))
                    for body, (status, result) in answers:
                        assert (status, result["result"]) == (200, "correct")
                        if result["pid"] != body["pid"]:
                            crossed = body
                    if crossed is not None or time.monotonic() > deadline:
                        break
            assert crossed is not None, "no feedback reached the other worker"
            facts = verify_prediction(SECRET, crossed["id"], 600)
            target = (facts.trace_id, facts.span_id)
            deadline = time.monotonic() + 60
            while not (linked := [s for s in received(receiver) if target in s["links"]]):
                assert time.monotonic() < deadline, "the feedback span did not arrive"
                time.sleep(0.05)
            while not (prediction := [s for s in received(receiver) if (s["trace_id"], s["span_id"]) == target]):
                assert time.monotonic() < deadline, "the prediction span did not arrive"
                time.sleep(0.05)
    assert len(prediction) == 1 and prediction[0]["name"] == "POST /predict"
    assert len(linked) == 1 and linked[0]["name"] == "POST /feedback"
    assert linked[0]["attributes"]["ml.feedback.outcome"] == "correct"


def received(receiver):
    """The receiver's spans with their links, (trace id, span id) pairs in hex."""
    with receiver.lock:
        requests = list(receiver.requests)
    return [{"trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(), "name": span.name,
             "attributes": {a.key: a.value.string_value for a in span.attributes},
             "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links]}
            for request in requests for rs in request.resource_spans for ss in rs.scope_spans
            for span in ss.spans]


def test_prediction_trace_id_is_a_reserved_log_field():
    from mlmonitor import ConfigError  # noqa: PLC0415 (only this test needs it)
    with pytest.raises(ConfigError, match="tags"):
        Monitor(Flask(__name__), registry=CollectorRegistry(), tags={"prediction_trace_id": "x"})
