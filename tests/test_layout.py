"""The house by when code runs: nothing a request runs imports offline code."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"mlmonitor.profiling", "mlmonitor.drift", "mlmonitor.rules", "mlmonitor.dashboards",
           "mlmonitor.cli", "mlmonitor.quality", "mlmonitor.alerting", "argparse"}

SERVE = """
import json, os, sys
from flask import Flask, jsonify
from prometheus_client import CollectorRegistry
from mlmonitor import Monitor

app = Flask(__name__)
monitor = Monitor(app, model_name="m", model_version="v1", registry=CollectorRegistry(),
                  log_stream=open(os.devnull, "w"), feedback_secret="x" * 32, reference=sys.argv[1])

@app.post("/predict")
@monitor.prediction
def predict():
    with monitor.stage("inference"):
        monitor.observe(features={"a": 1.0}, prediction="cat", score=0.5)
    return jsonify(id=monitor.prediction_id("cat"))

client = app.test_client()
token = client.post("/predict", json={}).get_json()["id"]
with app.test_request_context():
    monitor.record_feedback(token, "cat")
assert client.get("/metrics").status_code == 200
print(json.dumps(sorted(sys.modules)))
"""


def test_serving_requests_imports_no_offline_code(tmp_path):
    from mlmonitor.tools.profiling import build_profile

    path = tmp_path / "reference.json"
    build_profile({"a": [0.1 * i for i in range(50)]}).save(path)
    proc = subprocess.run([sys.executable, "-c", SERVE, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) & OFFLINE == set()
