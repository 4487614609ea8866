"""The log line's ``error_type`` says what the metrics charge: ``invalid_input`` only for a 4xx
charged to a model (issue 25, item 6a)."""
from __future__ import annotations

from flask import Flask, abort, jsonify, request

from mlmonitor import Monitor
from mlmonitor.testing import capture

KEY = "let-me-in"


def create_app():
    """An app with its own auth hook, a prediction view that refuses bad input, and a health route."""
    app = Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # a 500 page, as in production
    monitor = Monitor(app, model_name="iris", model_version="v1")

    @app.before_request
    def authenticate():
        if request.path.startswith("/predict") and request.headers.get("X-Key") != KEY:
            return jsonify(error="who are you?"), 401
        return None

    @app.post("/predict/<name>")
    @monitor.prediction
    def predict(name):
        if name != "iris":
            abort(404)
        if not isinstance(request.get_json(silent=True), dict):
            return jsonify(error="a JSON object, please"), 400
        return jsonify(label="setosa")

    @app.get("/health")
    def health():
        if request.args.get("strict"):
            return jsonify(error="unknown option"), 400
        raise RuntimeError("the health check broke")

    return app


def test_a_4xx_logs_invalid_input_only_when_a_model_is_charged_with_it():
    calls = [("post", "/predict/iris", {}, 401),              # the app's auth hook
             ("post", "/predict/tulip", {"X-Key": KEY}, 404),  # no such model
             ("get", "/predict/iris", {"X-Key": KEY}, 405),
             ("post", "/nowhere", {}, 404),
             ("get", "/health?strict=1", {}, 400),             # a 4xx of a route that is no prediction
             ("post", "/predict/iris", {"X-Key": KEY}, 400),   # the model refuses the input: charged
             ("get", "/health", {}, 500)]
    with capture() as monitored:
        client = create_app().test_client()
        for method, path, headers, status in calls:
            assert getattr(client, method)(path, headers=headers, data="[1]",
                                           content_type="application/json").status_code == status
    lines = monitored.logs()
    assert [line["status"] for line in lines] == [c[3] for c in calls]
    assert [line.get("error_type") for line in lines[:6]] == [
        None, None, None, None, None, "invalid_input"]
    assert lines[6]["error_type"] in ("RuntimeError", "http_5xx")  # a server error stays one
    # and the metrics charge the model with exactly the one invalid input
    assert monitored.value("mlmonitor_prediction_errors_total", model_name="iris") == 1
    assert monitored.value("mlmonitor_prediction_errors_total", error_type="invalid_input") == 1
    assert monitored.value("mlmonitor_predictions_total", model_name="iris") == 1
