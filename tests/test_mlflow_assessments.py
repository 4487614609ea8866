"""Issue 29, item 2: feedback lands in MLflow as assessments on the prediction's own trace.

With a real ``mlflow server`` (the fixture of tests/test_mlflow_server.py) and gunicorn with two
workers, over OTLP and in the connected mode: a prediction served by one worker and its feedback
recorded by the other end as an expectation and a judgement on that prediction's trace, read back
through MLflow's client; a forged id and a replayed one leave nothing. Without a server: a down
MLflow never fails nor holds a feedback request, drops are counted and logged once, the queue is
bounded, and a forked child sends with a thread of its own.
"""
from __future__ import annotations

import http.server
import io
import json
import logging
import os
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask, request
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mlmonitor import Monitor, assessments
from mlmonitor.config import DEFAULT_REDACT
from mlmonitor.previews import PREVIEW_CHARS
from mlmonitor.redact import redactor
from mlmonitor.tokens import InvalidFeedback, sign_prediction, verify_prediction
from tests.helpers.gunicorn_proc import GunicornProcess, free_port, post_json
from tests.helpers.promstack import wait_for
from tests.test_mlflow_server import (MLFLOW_LOWEST, MLFLOW_VENV, REPO, call, mlflow_server,  # noqa: F401 (a fixture)
                                      mlflow_tool)

SECRET = "assessments-secret-0123456789abcdef"
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_TRACES_EXPORTER",
                  "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")

APP_SOURCE = '''
import os
import time
from flask import Flask, request
from mlmonitor import Monitor
from mlmonitor.tokens import InvalidFeedback
from mlmonitor.tools.profiling import build_profile

app = Flask(__name__)
monitor = Monitor(app, model_name="iris")
HOUSE = build_profile({"a": [float(i) for i in range(40)]}, predictions=[float(i) for i in range(40)],
                      labels=[float(i) + 1.0 for i in range(40)], task="regression")


@app.post("/predict/iris")
@monitor.prediction
def iris():
    return {"id": monitor.prediction_id("setosa"), "pid": os.getpid()}


@app.post("/predict/house")
@monitor.prediction(model_name="house", reference=HOUSE)
def house():
    return {"id": monitor.prediction_id(3.5), "pid": os.getpid()}


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
'''


def held(server, otel_trace_id):
    """The assessments MLflow holds on a trace (its REST API: cheap to poll)."""
    info = call(f"{server.url}/api/3.0/mlflow/traces/tr-{otel_trace_id}", timeout=30)["trace"]["trace_info"]
    return info.get("assessments") or []


def wait_held(server, otel_trace_ids, count=2):
    def landed():
        found = {t: held(server, t) for t in otel_trace_ids}
        return found if all(len(a) >= count for a in found.values()) else None
    return wait_for(landed, 120, what=f"{count} assessments on each of {len(otel_trace_ids)} traces")


READ_BACK = """
import json, sys, mlflow
mlflow.set_tracking_uri(sys.argv[1])
out = {}
for otel_id in sys.argv[2].split(","):
    info = mlflow.get_trace("tr-" + otel_id).info
    out[otel_id] = sorted([a.name, type(a).__name__, a.value, a.source.source_type, a.source.source_id]
                          for a in info.assessments)
print(json.dumps(out))
"""


def read_back(server, otel_trace_ids, venv=MLFLOW_VENV):
    """``mlflow.get_trace(id).info.assessments`` of each trace, through MLflow's own client."""
    out = subprocess.run([mlflow_tool("python", venv), "-c", READ_BACK, server.url, ",".join(otel_trace_ids)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def crossed_feedback(url, predictions, label_of):
    """Feedback for every prediction, two at a time, each holding its worker a while so that
    the other worker takes the next: [(prediction, label, status, answer)]."""
    answers = []
    with ThreadPoolExecutor(2) as pool:
        for pair in zip(predictions[::2], predictions[1::2]):
            answers += pool.map(lambda p: (p, label_of(p), *post_json(
                url + "/feedback?sleep=0.3", {"id": p["id"], "label": label_of(p)})), pair)
    return answers


def otel_ids(prediction):
    return verify_prediction(SECRET, prediction["id"], 3600).trace_id


def server_env(server, extra):
    for name in OTEL_VARIABLES:
        server.env.pop(name, None)
    server.env.update(extra)


@pytest.mark.slow
def test_under_gunicorn_feedback_on_the_other_worker_lands_on_the_prediction_trace(mlflow_server, tmp_path):
    """OTLP to MLflow (the OTLP path needs no MLflow installed: our venv, gunicorn 27). The spans
    leave every 2 s, so most feedback comes before its trace: written once it arrives."""
    (tmp_path / "assess_app.py").write_text(APP_SOURCE)
    server = GunicornProcess(app="assess_app:app", config="python:mlmonitor.gunicorn", workers=2)
    server_env(server, {
        "PYTHONPATH": str(tmp_path), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        "MLMONITOR_FEEDBACK_SECRET": SECRET, "OTEL_BSP_SCHEDULE_DELAY": "2000",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": mlflow_server.url + "/v1/traces",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-mlflow-experiment-id={mlflow_server.experiment_id}"})
    (tmp_path / "prom").mkdir()
    with server:
        predictions = {model: [post_json(f"{server.url}/predict/{model}", {})[1] for _ in range(12)]
                       for model in ("iris", "house")}
        iris = crossed_feedback(server.url, predictions["iris"],
                                lambda p: "setosa" if predictions["iris"].index(p) % 3 else "virginica")
        house = crossed_feedback(server.url, predictions["house"], lambda p: 5.0)
        for answers, expected in ((iris, None), (house, 1.5)):
            assert all(status == 200 for _, _, status, _ in answers), answers
            assert any(p["pid"] != a["pid"] for p, _, _, a in answers), "no feedback reached the other worker"
            if expected is not None:
                assert {a["result"] for _, _, _, a in answers} == {expected}
        # hostile: a forged id carrying a real prediction's trace context, and a replayed id
        spared = post_json(server.url + "/predict/iris", {})[1]
        facts = verify_prediction(SECRET, spared["id"], 60)
        forged = sign_prediction("another-secret-0123456789abcdef", "iris", "unknown", "setosa",
                                 trace_context=(facts.trace_id, facts.span_id))
        assert post_json(server.url + "/feedback", {"id": forged, "label": "setosa"})[1]["refused"] == "bad_signature"
        replayed = iris[0][0]
        wait_held(mlflow_server, [otel_ids(replayed)])  # written once; now sent again to both workers
        again = crossed_feedback(server.url, [replayed, replayed], lambda p: "virginica")
        assert "duplicate" in [a.get("refused") for _, _, _, a in again]  # the worker that counted it
        # then feedback seen by both workers: each wrote (or dropped) the replay before it
        markers, pids = [], set()
        for _ in range(10):
            fresh = [post_json(server.url + "/predict/iris", {})[1] for _ in range(2)]
            markers += crossed_feedback(server.url, fresh, lambda p: "setosa")
            pids |= {a["pid"] for _, _, _, a in markers}
            if len(pids) == 2:
                break
        assert len(pids) == 2
        wait_held(mlflow_server, [otel_ids(p) for p, _, _, _ in markers])

    iris_ids = {otel_ids(p): label for p, label, _, _ in iris}
    house_ids = [otel_ids(p) for p, _, _, _ in house]
    wait_held(mlflow_server, [*iris_ids, *house_ids])
    seen = read_back(mlflow_server, [*iris_ids, *house_ids, facts.trace_id])
    for trace_id, label in iris_ids.items():
        assert seen[trace_id] == [["correct", "Feedback", label == "setosa", "CODE", "mlmonitor"],
                                  ["ground_truth", "Expectation", label, "CODE", "mlmonitor"]]
    for trace_id in house_ids:
        assert seen[trace_id] == [["absolute_error", "Feedback", 1.5, "CODE", "mlmonitor"],
                                  ["ground_truth", "Expectation", 5.0, "CODE", "mlmonitor"]]
    assert seen[facts.trace_id] == []  # forged: nothing
    assert len(seen[otel_ids(replayed)]) == 2  # replayed: nothing more
    assert any(line.get("prediction_trace_id") for line in server.json_lines())
    # the README's queries, with the latest MLflow client and the lowest allowed
    wrong = sorted(t for t, label in iris_ids.items() if label != "setosa")
    assert wrong
    for venv in (MLFLOW_VENV, MLFLOW_LOWEST):
        assert search(mlflow_server, "feedback.correct = 'false'", venv) == sorted(f"tr-{t}" for t in wrong)
        assert search(mlflow_server, "feedback.absolute_error > 1", venv) == sorted(f"tr-{t}" for t in house_ids)


SEARCH = """
import json, sys
import mlflow

mlflow.set_tracking_uri(sys.argv[1])
traces = mlflow.search_traces(locations=[sys.argv[2]], filter_string=sys.argv[3], return_type="list")
print(json.dumps(sorted(t.info.trace_id for t in traces)))
"""


def search(server, filter_string, venv):
    out = subprocess.run([mlflow_tool("python", venv), "-c", SEARCH, server.url, server.experiment_id,
                          filter_string], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_connected_mode_under_gunicorn_feedback_on_the_other_worker_lands_on_the_trace(mlflow_server, tmp_path):
    """``Monitor(app, mlflow=True)`` with ``@mlflow.trace`` (tests/helpers/mlflow_app.py), from
    .venv-mlflow: the tracking server of MLflow's own client gets the assessments."""
    server = GunicornProcess(app="tests.helpers.mlflow_app:app", workers=2)
    server.command[0] = mlflow_tool("python")  # gunicorn<27 with mlflow, from .venv-mlflow
    server_env(server, {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_ID": mlflow_server.experiment_id,
                        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO),
                        "MLMONITOR_FEEDBACK_SECRET": SECRET})
    with server:
        predictions = [post_json(server.url + "/predict", {"x": [i]})[1] for i in range(8)]
        answers = crossed_feedback(server.url, predictions, lambda p: p["y"][0] if p["y"][0] % 4 else -1)
        assert all(status == 200 for _, _, status, _ in answers), answers
        assert any(p["pid"] != a["pid"] for p, _, _, a in answers), "no feedback reached the other worker"
    labels = {otel_ids(p): label for p, label, _, _ in answers}
    wait_held(mlflow_server, list(labels))
    seen = read_back(mlflow_server, list(labels))
    for trace_id, label in labels.items():
        assert seen[trace_id] == [["correct", "Feedback", label != -1, "CODE", "mlmonitor"],
                                  ["ground_truth", "Expectation", label, "CODE", "mlmonitor"]]


# -- without a server ---------------------------------------------------------------------------

def feedback_app(monkeypatch, endpoint):
    """A Flask app whose OTLP headers name an MLflow experiment at ``endpoint``; its spans stay
    in memory (the assessments' destination is read from the same settings)."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint + "/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-mlflow-experiment-id=0")
    registry = CollectorRegistry()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", registry=registry, tracer_provider=TracerProvider(),
                      log_stream=io.StringIO(), feedback_secret=SECRET)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return {"id": monitor.prediction_id("setosa")}

    @app.post("/feedback")
    def feedback():
        body = request.get_json()
        try:
            return {"result": monitor.record_feedback(body["id"], body["label"])}
        except InvalidFeedback as exc:
            return {"refused": exc.reason}, 400

    client = app.test_client()

    def dropped():
        return registry.get_sample_value("mlmonitor_telemetry_dropped_total", {"signal": "assessments"}) or 0
    return client, dropped


def test_mlflow_down_never_fails_feedback_and_drops_are_counted_and_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(assessments, "RETRY_DELAYS_S", (0.05, 0.05))
    monkeypatch.setattr(assessments, "_warned", [False])  # as in a fresh process
    client, dropped = feedback_app(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nothing listens
    caplog.set_level(logging.WARNING, "mlmonitor")
    for label in ("setosa", "virginica"):
        pid = client.post("/predict").get_json()["id"]
        answer = client.post("/feedback", json={"id": pid, "label": label})
        assert answer.status_code == 200, answer.get_json()
    wait_for(lambda: dropped() == 4, 30, what="two assessments of each feedback dropped")
    warnings = [r.getMessage() for r in caplog.records if "MLflow" in r.getMessage()]
    assert len(warnings) == 1 and "ConnectionRefusedError" in warnings[0], warnings


class _Hanging(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        time.sleep(30)


def test_the_queue_is_bounded_a_full_one_drops_and_counts(monkeypatch):
    """The sending thread hangs on a server that never answers: the feedback requests still
    answer, and what the queue cannot hold is dropped at once, counted."""
    hanging = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hanging)
    hanging.daemon_threads = True
    threading.Thread(target=hanging.serve_forever, daemon=True).start()
    monkeypatch.setattr(assessments, "MAX_QUEUED", 3)
    monkeypatch.setattr(assessments, "TIMEOUT_S", 5.0)  # longer than the ten requests take
    monkeypatch.setattr(assessments, "RETRY_DELAYS_S", ())
    monkeypatch.setattr(assessments._Process, "sender", None)  # a fresh queue of 3
    try:
        client, dropped = feedback_app(monkeypatch, f"http://127.0.0.1:{hanging.server_address[1]}")
        for _ in range(10):
            pid = client.post("/predict").get_json()["id"]
            assert client.post("/feedback", json={"id": pid, "label": "setosa"}).status_code == 200
        # 1 taken by the hanging thread (or not yet), 3 queued: 6 or 7 feedbacks, 2 assessments each
        assert dropped() in (12, 14)
        wait_for(lambda: dropped() == 20, 60, what="the rest dropped once the calls time out")
    finally:
        hanging.shutdown()
        hanging.server_close()


def test_a_forked_child_sends_with_a_thread_of_its_own(monkeypatch):
    monkeypatch.setattr(assessments, "RETRY_DELAYS_S", ())
    dead = (f"http://127.0.0.1:{free_port()}", {})
    parent_counts = []
    parts = assessments.assessments_for("iris", "1", "setosa", "correct", redactor(DEFAULT_REDACT))
    assessments.submit(dead, "ab" * 16, "n1", parts, lambda _signal, n: parent_counts.append(n))
    wait_for(lambda: parent_counts == [2], 30, what="the parent's thread")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its parent's thread is not here
        try:
            counts = []
            assessments.submit(dead, "cd" * 16, "n2", parts, lambda _signal, n: counts.append(n))
            deadline = time.monotonic() + 30
            while not counts and time.monotonic() < deadline:
                time.sleep(0.02)
            os.write(write, json.dumps(counts).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        assert json.loads(pipe.read() or "null") == [2]
    os.waitpid(pid, 0)


def test_labels_are_redacted_and_capped_as_previews_are():
    redact = redactor(DEFAULT_REDACT)
    [expectation, judgement] = assessments.assessments_for(
        "iris", "1", {"species": "setosa", "password": "hunter2"}, "incorrect", redact)
    serialized = expectation["expectation"]["serialized_value"]
    assert serialized["serialization_format"] == "JSON_FORMAT"
    assert "hunter2" not in serialized["value"] and json.loads(serialized["value"])["species"] == "setosa"
    assert judgement["assessment_name"] == "correct" and judgement["feedback"] == {"value": False}
    [expectation, _] = assessments.assessments_for("iris", "1", "token=abc " + "x" * 10_000, "correct", redact)
    text = expectation["expectation"]["value"]
    assert "abc" not in text and len(text) <= PREVIEW_CHARS
    [expectation, judgement] = assessments.assessments_for("house", "2", 5.0, 1.5, redact)
    assert expectation["expectation"] == {"value": 5.0}
    assert judgement == {"assessment_name": "absolute_error", "feedback": {"value": 1.5},
                         "source": {"source_type": "CODE", "source_id": "mlmonitor"},
                         "metadata": {"model_name": "house", "model_version": "2"}}


def test_no_assessment_without_mlflow_as_the_trace_backend(monkeypatch):
    """Traces to a collector (no x-mlflow-experiment-id): nothing is queued."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        client, dropped = feedback_app(monkeypatch, f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        monkeypatch.setattr(assessments._Process, "sender", None)
        pid = client.post("/predict").get_json()["id"]
        assert client.post("/feedback", json={"id": pid, "label": "setosa"}).status_code == 200
        assert assessments._Process.sender is None
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.slow
def test_the_mlflow_demo_counts_the_traces_that_carry_ground_truth():
    """``make demo-mlflow``: the example app's feedback (sent by the load generator) lands on the
    traces in MLflow, and the summary says on how many."""
    import sys  # noqa: PLC0415 (only this test runs a command)
    mlflow_tool("mlflow")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PROMETHEUS_MULTIPROC_DIR", "MLMONITOR_", "MLFLOW_"))}
    run = subprocess.run([sys.executable, "-m", "example_app.demo", "--with-mlflow", "--once",
                          "--requests", "20", "--workers", "2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-3000:]
    [line] = [line for line in run.stdout.splitlines() if "traces with ground truth:" in line]
    labelled, judged = int(line.split(":")[1].split()[0]), int(line.split("(of ")[1].split()[0])
    assert judged > 0 and 0 < labelled <= judged, line


def test_the_server_is_mlflows_and_the_otlp_credentials_go_only_to_the_otlp_endpoint(monkeypatch):
    from mlmonitor import mlflow as connected  # noqa: PLC0415 (only this test asks it directly)
    monkeypatch.setattr(connected, "_enabled", [])  # not the connected mode
    for name in (*OTEL_VARIABLES, "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://mlflow.example:5000/prefix/v1/traces")
    assert connected.assessment_server() is None  # traces to a backend that is not MLflow
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-mlflow-experiment-id=3,Authorization=Basic%20abc")
    assert connected.assessment_server() == ("https://mlflow.example:5000/prefix", {"Authorization": "Basic abc"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000/")  # another host: not the OTLP credentials
    assert connected.assessment_server() == ("http://tracking:5000", {})
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ann")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert connected.assessment_server() == ("http://tracking:5000", {"Authorization": "Basic YW5uOnB3"})
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    assert connected.assessment_server() == ("http://tracking:5000", {"Authorization": "Bearer t0k"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # a local store: no server to write to
    assert connected.assessment_server() is None
