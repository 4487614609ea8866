"""The public surface an app reads and calls, tested as a user's own tests would (issue 15, item 7)."""
from __future__ import annotations

import inspect
import json
import operator

import pytest
from flask import Flask, jsonify
from werkzeug.test import Client

import mlmonitor
from mlmonitor import Monitor, MonitorMiddleware
from mlmonitor.testing import capture

SECRET = "s" * 32
IRIS = {"model_name": "iris", "model_version": "v1"}


def flask_app_reporting(read):
    """A Flask app whose /predict answers with what ``read()`` returns inside the request."""
    app = Flask(__name__)
    monitor = Monitor(app, **IRIS)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        monitor.tag(tier="gold")
        return jsonify(read())

    return app


def test_request_id_and_trace_id_are_the_requests_own():
    with capture() as monitored:
        app = flask_app_reporting(lambda: {"request_id": mlmonitor.request_id(),
                                           "trace_id": mlmonitor.trace_id()})
        response = app.test_client().post("/predict", json={})
    [line] = monitored.logs()
    assert response.get_json() == {"request_id": response.headers["X-Request-ID"],
                                   "trace_id": line["trace_id"]}
    assert len(line["trace_id"]) == 32


def test_request_id_and_trace_id_are_none_outside_a_request():
    assert mlmonitor.request_id() is None
    assert mlmonitor.trace_id() is None
    assert mlmonitor.current_record() is None


def test_current_record_can_be_read_but_not_changed():
    def read():
        rec = mlmonitor.current_record()
        refused = []
        for change in (lambda: setattr(rec, "route", "/elsewhere"),
                       lambda: setattr(rec, "model_version", "v9"),
                       lambda: operator.setitem(rec.tags, "tier", "free")):
            try:
                change()
            except (AttributeError, TypeError) as exc:
                refused.append(type(exc).__name__)
        return {"request_id": rec.request_id, "tags": dict(rec.tags), "route": rec.route,
                "model_version": rec.model_version, "refused": refused,
                "same": rec is mlmonitor.current_record()}

    with capture() as monitored:
        response = flask_app_reporting(read).test_client().post("/predict", json={})
    body = response.get_json()
    assert body == {"request_id": response.headers["X-Request-ID"], "tags": {"tier": "gold"},
                    "route": "/predict", "model_version": "v1",
                    "refused": ["AttributeError", "AttributeError", "TypeError"], "same": True}
    [line] = monitored.logs()
    assert line["route"] == "/predict" and line["model_version"] == "v1"
    assert line["tags"] == {"tier": "gold"}


def wsgi_model_server():
    """A plain WSGI app (no Flask) that returns a prediction id and takes feedback."""
    def app(environ, start_response):
        if environ["PATH_INFO"] == "/predict":
            body = {"label": "setosa", "id": mlmonitor.prediction_id("setosa"),
                    "ids": mlmonitor.prediction_ids(["setosa", "virginica"])}
        else:
            sent = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
            body = {"outcome": mlmonitor.record_feedback(sent["id"], label=sent["label"])}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    return MonitorMiddleware(app, prediction_paths=["/predict"], feedback_secret=SECRET, **IRIS)


def test_module_level_prediction_ids_and_feedback_in_a_plain_wsgi_app():
    with capture() as monitored:
        client = Client(wsgi_model_server())
        predicted = json.loads(client.post("/predict").get_data())
        assert len(predicted["ids"]) == 2 and len(set(predicted["ids"])) == 2
        for pid, label in ((predicted["id"], "setosa"), (predicted["ids"][1], "setosa")):
            client.post("/feedback", json={"id": pid, "label": label})
    assert monitored.value("mlmonitor_feedback_total", outcome="correct", **IRIS) == 1
    assert monitored.value("mlmonitor_feedback_total", outcome="incorrect", **IRIS) == 1


def test_module_level_helpers_take_the_arguments_monitors_do():
    for name in ("prediction_id", "prediction_ids", "record_feedback"):
        module_params = inspect.signature(getattr(mlmonitor, name)).parameters
        method_params = list(inspect.signature(getattr(Monitor, name)).parameters.values())
        if method_params and method_params[0].name == "self":
            method_params = method_params[1:]
        positional = [p.name for p in module_params.values() if p.kind != p.KEYWORD_ONLY]
        assert positional == [p.name for p in method_params], name
    assert {"prediction_id", "prediction_ids", "record_feedback", "request_id",
            "trace_id"} <= set(mlmonitor.__all__)


def test_prediction_id_outside_a_request_says_why():
    with pytest.raises(RuntimeError, match="inside a request"):
        mlmonitor.prediction_id("setosa")


@pytest.mark.parametrize("call", [
    lambda: mlmonitor.set_model_version("v2", model_name="churn"),
    lambda: mlmonitor.set_model_version(model_version="v2", model_name="churn"),
], ids=["positional", "model_version"])
def test_set_model_version_names_its_arguments_as_prediction_does(call):
    with capture() as monitored:
        app = flask_app_reporting(lambda: call() or {})
        assert app.test_client().post("/predict", json={}).status_code == 200
    assert monitored.value("mlmonitor_predictions_total", model_name="churn", model_version="v2") == 1
    assert monitored.value("mlmonitor_predictions_total", **IRIS) == 0


def test_set_model_version_takes_model_name_only_by_keyword():
    params = inspect.signature(mlmonitor.set_model_version).parameters
    assert params["model_name"].kind == inspect.Parameter.KEYWORD_ONLY
    assert list(params)[0] == "model_version"
    with pytest.raises(TypeError):
        mlmonitor.set_model_version("v2", "churn")  # the old order, version before name
