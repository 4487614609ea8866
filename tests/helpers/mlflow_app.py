"""A Flask model server in connected mode (``Monitor(app, mlflow=True)`` with ``@mlflow.trace``),
run by tests/test_mlflow_server.py from .venv-mlflow (MLflow pins gunicorn<27, our venv has 27).

``python mlflow_app.py N``: serves N predictions through the test client, flushes MLflow's
exporter and prints one JSON line: the log lines' trace ids and each request's milliseconds.
Also importable by gunicorn (``tests.helpers.mlflow_app:app``).
"""
import io
import json
import os
import sys
import time

from flask import Flask, jsonify, request

from mlmonitor import Monitor
from mlmonitor.tokens import InvalidFeedback

LOGS = io.StringIO() if __name__ == "__main__" else None
app = Flask(__name__)
monitor = Monitor(app, model_name="iris", model_version="1.10", mlflow=True, log_stream=LOGS,
                  metrics_path=None)

import mlflow  # noqa: E402  (after Monitor: the connected mode is set up by then)


@mlflow.trace(span_type="LLM")
def model(features):
    return [x * 2 for x in features]


@app.post("/predict")
@monitor.prediction
def predict():
    with monitor.stage("inference"):
        out = model(request.get_json()["x"])
    return jsonify(y=out, id=monitor.prediction_id(out[0]), pid=os.getpid())


@app.post("/feedback")
def feedback():
    body = request.get_json()
    time.sleep(float(request.args.get("sleep", 0)))  # holds this worker: the next goes to the other
    try:
        return jsonify(result=monitor.record_feedback(body["id"], body["label"]), pid=os.getpid())
    except InvalidFeedback as exc:
        return jsonify(refused=exc.reason, pid=os.getpid()), 400


@app.get("/healthz")
def healthz():
    return jsonify(ok=True)


if __name__ == "__main__":
    client = app.test_client()
    ms = []
    for i in range(int(sys.argv[1])):
        started = time.perf_counter()
        assert client.post("/predict", json={"x": [i, 1]}).status_code == 200
        ms.append((time.perf_counter() - started) * 1000.0)
    flushed = time.perf_counter()
    if os.environ.get("FLUSH", "1") == "1":
        mlflow.flush_trace_async_logging(terminate=False)
    trace_ids = [json.loads(line)["trace_id"] for line in LOGS.getvalue().splitlines()]
    print(json.dumps({"trace_ids": trace_ids, "ms": ms,
                      "flush_ms": (time.perf_counter() - flushed) * 1000.0}), flush=True)
    os._exit(0)  # a down server: MLflow's exit hook would wait on its queue
