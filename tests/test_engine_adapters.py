"""Issue 26: one engine under thin adapters. One ``Monitor`` type for Flask and FastAPI/Starlette
(``init_app`` alike), one rule for what a ``model_name``/``model_version`` callable receives (the
view's arguments) in every framework, Django's async prediction views and ``model_uri=`` (with
Django's async test client and under uvicorn), and adapters that reach the engine only through
its public lifecycle."""
from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import django
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_project.settings")
django.setup()

from django.test import AsyncClient, override_settings  # noqa: E402
from helpers.gunicorn_proc import REPO, free_port, http_get  # noqa: E402

import mlmonitor  # noqa: E402
from mlmonitor import Monitor  # noqa: E402
from mlmonitor.engine import Recorder  # noqa: E402
from mlmonitor.testing import capture  # noqa: E402

PACKAGE = REPO / "mlmonitor"


def fastapi_client(app):
    from fastapi.testclient import TestClient
    return TestClient(app)


# -- one Monitor type ------------------------------------------------------------------------

def test_monitor_of_a_fastapi_app_is_an_mlmonitor_monitor():
    from fastapi import FastAPI
    with capture():
        monitor = Monitor(FastAPI(), model_name="churn")
    assert isinstance(monitor, mlmonitor.Monitor)
    assert type(monitor) is type(Monitor(Flask(__name__), metrics=False, logs=False,
                                         traces=False))


@pytest.mark.parametrize("kind", ["fastapi", "starlette"])
def test_init_app_after_monitor_works_for_fastapi_and_starlette(kind):
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    with capture() as monitored:
        monitor = Monitor(model_name="churn", model_version="c9")

        if kind == "fastapi":
            @monitor.prediction  # declared before init_app: an app factory
            async def predict(body: dict):
                return {"ok": True}

            app = FastAPI()
            app.post("/predict")(predict)
        else:
            @monitor.prediction
            async def predict_request(request):
                return JSONResponse({"ok": True})

            app = Starlette(routes=[Route("/predict", predict_request, methods=["POST"])])
        monitor.init_app(app)
        assert isinstance(app.state.mlmonitor, Recorder)
        with pytest.raises(RuntimeError, match="already registered"):
            monitor.init_app(app)
        with fastapi_client(app) as client:
            assert client.post("/predict", json={}).status_code == 200
    assert monitored.value("mlmonitor_predictions_total", model_name="churn",
                           model_version="c9") == 1
    assert monitored.logs()[0]["route"] == "/predict"


def test_init_app_after_monitor_works_for_flask():
    with capture() as monitored:
        monitor = Monitor(model_name="iris", model_version="v1")
        app = Flask(__name__)

        @app.post("/predict")
        @monitor.prediction
        def predict():
            return {"ok": True}

        monitor.init_app(app)
        assert isinstance(app.extensions["mlmonitor"], Recorder)
        assert app.test_client().post("/predict").status_code == 200
    assert monitored.value("mlmonitor_predictions_total", model_name="iris",
                           model_version="v1") == 1


def test_monitor_refuses_an_app_it_cannot_monitor():
    with pytest.raises(TypeError, match="MonitorMiddleware"):
        Monitor(lambda environ, start_response: [])


# -- one rule for a model_name / model_version callable: the view's arguments ------------------

def test_a_flask_callable_gets_the_views_arguments():
    seen = []
    with capture() as monitored:
        app = Flask(__name__)
        monitor = Monitor(app, model_version="v1")

        @app.post("/v1/models/<name>:predict")
        @monitor.prediction(model_name=lambda name: seen.append(name) or name,
                            model_version=lambda name: f"{name}-7")
        def predict(name):
            return {"name": name}

        assert app.test_client().post("/v1/models/glucose:predict").status_code == 200
    assert seen == ["glucose"]
    assert monitored.value("mlmonitor_predictions_total", model_name="glucose",
                           model_version="glucose-7") == 1


def test_a_fastapi_callable_gets_the_views_arguments():
    from fastapi import FastAPI
    seen = []
    with capture() as monitored:
        app = FastAPI()
        monitor = Monitor(app, model_version="v1")

        @app.post("/v1/models/{name}:predict")
        @monitor.prediction(model_name=lambda name, body: seen.append((name, body)) or name,
                            model_version=lambda name, body: f"{name}-7")
        async def predict(name: str, body: dict):
            return {"name": name}

        with fastapi_client(app) as client:
            assert client.post("/v1/models/glucose:predict", json={"x": 1}).status_code == 200
    assert seen == [("glucose", {"x": 1})]
    assert monitored.value("mlmonitor_predictions_total", model_name="glucose",
                           model_version="glucose-7") == 1


def test_a_plain_starlette_callable_gets_the_request_the_endpoint_gets():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    seen = []
    with capture() as monitored:
        monitor = Monitor(model_version="v1")

        @monitor.prediction(model_name=lambda request: seen.append(request.url.path)
                            or request.path_params["name"])
        async def predict(request):
            return JSONResponse({"name": request.path_params["name"]})

        app = Starlette(routes=[Route("/v1/models/{name}/predict", predict, methods=["POST"])])
        monitor.init_app(app)
        with fastapi_client(app) as client:
            assert client.post("/v1/models/glucose/predict").status_code == 200
    assert seen == ["/v1/models/glucose/predict"]
    assert monitored.value("mlmonitor_predictions_total", model_name="glucose", model_version="v1") == 1


# -- Django: async prediction views, the same rule, model_uri= --------------------------------

BODY = json.dumps({"instances": [[1.0, 2.0]]})


def test_a_django_async_prediction_view_is_charged_to_the_model_its_callable_names():
    async def requests(client):
        return [await client.post(f"/v1/models/{name}:predict", data=BODY,
                                  content_type="application/json") for name in ("a", "b", "a")]

    with override_settings(ROOT_URLCONF="tests.apps.django_async.urls",
                           MIDDLEWARE=["mlmonitor.django.MonitorDjangoMiddleware"],
                           MLMONITOR={"model_version": "v1"}), capture() as monitored:
        responses = asyncio.run(requests(AsyncClient()))
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[0].json() == {"predictions": [6.0]}
    assert monitored.value("mlmonitor_predictions_total", model_name="a", model_version="a-7") == 2
    assert monitored.value("mlmonitor_predictions_total", model_name="b", model_version="b-7") == 1
    assert monitored.value("mlmonitor_stage_duration_seconds_count", model_name="a",
                           model_version="a-7", stage="inference") == 2
    assert monitored.value("mlmonitor_prediction_duration_seconds_count", model_name="b",
                           model_version="b-7") == 1
    lines = monitored.logs()
    assert [line["route"] for line in lines] == ["/v1/models/<str:name>:predict"] * 3
    assert [line["model_name"] for line in lines] == ["a", "b", "a"]
    assert all(line["request_id"] == r["X-Request-ID"] for line, r in zip(lines, responses))


def test_the_django_middleware_is_async_under_an_async_chain_and_sync_under_a_sync_one():
    from asgiref.sync import iscoroutinefunction

    from mlmonitor.django import MonitorDjangoMiddleware

    async def get_response(request):
        return None

    with capture():
        assert iscoroutinefunction(MonitorDjangoMiddleware(get_response))
        assert not iscoroutinefunction(MonitorDjangoMiddleware(lambda request: None))


def _post(url: str) -> int:
    request = urllib.request.Request(url, data=BODY.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return response.status


def _samples(url: str, name: str) -> dict:
    status, text = http_get(url + "/metrics", timeout=60)
    assert status == 200, text[:300]
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


@pytest.mark.slow
def test_django_async_views_and_model_uri_under_uvicorn():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.apps.django_async.settings",
           "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.apps.django_async.asgi:application",
         "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if http_get(url + "/metrics", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.2)
        assert _post(url + "/v1/models/glucose:predict") == 200
        assert _post(url + "/classify") == 200
        assert _post(url + "/classify") == 200
        predictions = {dict(k)["model_name"] + "/" + dict(k)["model_version"]: v
                       for k, v in _samples(url, "mlmonitor_predictions_total").items() if v}
        assert predictions == {"glucose/glucose-7": 1, "iris-clf/3": 2}
        # the name and version from the URI, declared when Django imported the view
        info = _samples(url, "mlmonitor_model_info")
        assert info[(("model_id", ""), ("model_name", "iris-clf"), ("model_version", "3"),
                     ("run_id", ""))] == 1
    finally:
        server.terminate()
        out, err = server.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    served = [(line["route"], line.get("model_name")) for line in lines
              if line["route"] != "/metrics" and line["method"] == "POST"]
    assert served == [("/v1/models/<str:name>:predict", "glucose"), ("/classify", "iris-clf"),
                      ("/classify", "iris-clf")], err[-2000:]


# -- the adapters reach the engine only through its public lifecycle --------------------------

def _private_calls_across_modules(path: Path) -> list:
    """``obj._name(...)`` / ``obj._name`` where ``obj`` is not ``self``/``cls`` (the module's
    own private names and Python's dunders aside)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                and node.value.id not in ("self", "cls"):
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("module", ["middleware", "asgi", "django", "flask", "fastapi",
                                    "views", "monitor", "engine", "context", "body"])
def test_an_adapter_calls_no_private_method_of_another_mlmonitor_object(module):
    allowed = {"django": {"request._stream", "response._resource_closers",
                          "response._container"},  # Django's own objects, not mlmonitor's
               "flask": {"trace._TRACER_PROVIDER"}}.get(module, set())
    calls = [c for c in _private_calls_across_modules(PACKAGE / f"{module}.py")
             if c.split(": ")[1] not in allowed]
    assert calls == []


def test_the_request_record_links_its_recorder_by_type():
    from mlmonitor.record import RequestRecord
    assert "recorder" in RequestRecord.__slots__ and "middleware" not in RequestRecord.__slots__
    source = (PACKAGE / "record.py").read_text()
    assert re.search(r'self\.recorder: "?Recorder"?', source)  # quoted or not (ruff's UP037 unquotes it)
