"""The house by when code runs: serving a Flask, an ASGI (FastAPI) or a Django app imports no offline
code (``mlmonitor.tools``), and the README's layout table lists every module there is."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = "mlmonitor.tools"

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

SERVE_ASGI = """
import json, os, sys
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from mlmonitor import Monitor

app = FastAPI()
monitor = Monitor(app, model_name="m", model_version="v1", registry=CollectorRegistry(),
                  log_stream=open(os.devnull, "w"), feedback_secret="x" * 32, reference=sys.argv[1])

@app.post("/predict")
@monitor.prediction
async def predict():
    with monitor.stage("inference"):
        monitor.observe(features={"a": 1.0}, prediction="cat", score=0.5)
    return {"id": monitor.prediction_id("cat")}

@app.post("/feedback")
async def feedback(request: Request):
    monitor.record_feedback((await request.json())["id"], "cat")
    return {}

with TestClient(app) as client:
    token = client.post("/predict", json={}).json()["id"]
    assert client.post("/feedback", json={"id": token}).status_code == 200
    assert client.get("/metrics").status_code == 200
print(json.dumps(sorted(sys.modules)))
"""

SERVE_DJANGO = """
import json, os, sys
import django
from django.conf import settings
from prometheus_client import CollectorRegistry

settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__, INSTALLED_APPS=[], DATABASES={},
    MIDDLEWARE=["mlmonitor.django.MonitorDjangoMiddleware"],
    MLMONITOR={"model_name": "m", "model_version": "v1", "registry": CollectorRegistry(),
               "log_stream": open(os.devnull, "w"), "feedback_secret": "x" * 32,
               "references": {"m": sys.argv[1]}})
django.setup()

from django.http import JsonResponse
from django.test import Client
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
import mlmonitor
from mlmonitor.django import prediction

@csrf_exempt
@prediction
def predict(request):
    with mlmonitor.stage("inference"):
        mlmonitor.observe(features={"a": 1.0}, prediction="cat", score=0.5)
    return JsonResponse({"id": mlmonitor.prediction_id("cat")})

@csrf_exempt
def feedback(request):
    mlmonitor.record_feedback(json.loads(request.body)["id"], "cat")
    return JsonResponse({})

urlpatterns = [path("predict", predict), path("feedback", feedback)]

client = Client()
token = client.post("/predict", data="{}", content_type="application/json").json()["id"]
assert client.post("/feedback", data=json.dumps({"id": token}),
                   content_type="application/json").status_code == 200
assert client.get("/metrics").status_code == 200
print(json.dumps(sorted(sys.modules)))
"""


def served_modules(script: str, tmp_path: Path) -> set:
    """The modules imported by a process that loaded a reference, served predictions, feedback and
    /metrics with ``script``."""
    from mlmonitor.tools.profiling import build_profile

    path = tmp_path / "reference.json"
    build_profile({"a": [0.005 * i for i in range(200)]}).save(path)
    proc = subprocess.run([sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


# Django imports argparse itself (its management commands), so there only mlmonitor.tools is checked
@pytest.mark.parametrize(("script", "offline"), [(SERVE, {"argparse"}), (SERVE_ASGI, {"argparse"}),
                                                 (SERVE_DJANGO, set())], ids=["flask", "asgi", "django"])
def test_serving_requests_imports_no_offline_code(tmp_path, script, offline):
    modules = served_modules(script, tmp_path)
    assert "mlmonitor.middleware" in modules or "mlmonitor.engine" in modules  # it did serve
    imported = {m for m in modules if m == TOOLS or m.startswith(TOOLS + ".")} | (modules & offline)
    assert imported == set()


# -- the README's layout table -------------------------------------------------------------------

#: when a module runs, the first words of its "runs" cell
WHEN = ("request time", "start-up", "process hooks", "offline")


def layout_table() -> dict:
    """``{path under mlmonitor/: runs}`` from the README's "How the code is laid out" table."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3 or set(cells[0]) <= {"-"} or cells[0] == "module":
            continue
        for name in re.findall(r"`([^`]+\.py)`", cells[0]):
            assert name not in rows, f"{name} is listed twice"
            rows[name] = cells[1]
    return rows


def test_the_layout_table_lists_every_module_and_only_those():
    files = {p.relative_to(REPO / "mlmonitor").as_posix() for p in (REPO / "mlmonitor").rglob("*.py")}
    listed = set(layout_table())
    assert not files - listed, f"modules missing from the README's layout table: {sorted(files - listed)}"
    assert not listed - files, f"the README's layout table lists modules that do not exist: {sorted(listed - files)}"


def test_the_layout_table_says_when_each_module_runs():
    for name, runs in layout_table().items():
        assert runs.startswith(WHEN), f"{name}: '{runs}' starts with none of {WHEN}"
        assert name.startswith("tools/") == runs.startswith("offline"), f"{name}: {runs}"
