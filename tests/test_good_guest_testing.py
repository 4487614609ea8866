"""mlmonitor.testing as a user's own test suite would use it (issue 15)."""
from __future__ import annotations

import pytest
from flask import Flask, jsonify

from mlmonitor import Monitor
from mlmonitor.testing import capture, mlmonitor_capture  # noqa: F401  (the fixture)


def create_app():
    """A user's app factory: nothing test-only in it."""
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="v1")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("inference"):
            pass
        return jsonify(label="setosa")

    return app


def test_capture_gives_the_counts_logs_and_spans_of_an_app_factory():
    with capture() as monitored:
        app = create_app()
        app.test_client().post("/predict", json={"x": [1, 2]})
    assert monitored.value("mlmonitor_predictions_total", model_name="iris", model_version="v1") == 1
    assert monitored.value("mlmonitor_prediction_errors_total", model_name="iris",
                           model_version="v1", error_type="ValueError") == 0.0
    [line] = monitored.logs()
    assert line["route"] == "/predict" and line["model_name"] == "iris"
    assert sorted(s.name for s in monitored.spans()) == ["POST /predict", "inference"]


def test_each_capture_starts_from_zero():
    for _ in range(2):
        with capture() as monitored:
            create_app().test_client().post("/predict", json={})
        assert monitored.value("mlmonitor_predictions_total", model_name="iris",
                               model_version="v1") == 1
        assert len(monitored.logs()) == 1


def test_a_misspelt_metric_name_is_an_error_not_zero():
    with capture() as monitored:
        create_app()
    with pytest.raises(KeyError):
        monitored.value("mlmonitor_prediction_total", model_name="iris")


def test_the_fixture(mlmonitor_capture):  # noqa: F811
    create_app().test_client().post("/predict", json={})
    assert mlmonitor_capture.value("mlmonitor_http_requests_total", method="POST",
                                   route="/predict", status="200") == 1
