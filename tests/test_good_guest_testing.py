"""mlmonitor.testing as a user's own test suite would use it (issue 15)."""
from __future__ import annotations

import doctest

import pytest
from flask import Flask, jsonify
from prometheus_client import Counter

import mlmonitor.testing
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


def two_routes_app():
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="v1")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return jsonify(label="setosa")

    @app.post("/explain")
    @monitor.prediction
    def explain():
        return jsonify(why="petals")

    return app


def test_a_label_subset_sums_the_matching_samples():
    with capture() as monitored:
        client = two_routes_app().test_client()
        for path in ("/predict", "/predict", "/explain"):
            client.post(path, json={})
    value = monitored.value
    assert value("mlmonitor_http_requests_total", method="POST", route="/predict", status="200") == 2
    assert value("mlmonitor_http_requests_total", route="/predict") == 2
    assert value("mlmonitor_http_requests_total", method="POST") == 3
    assert value("mlmonitor_http_requests_total") == 3
    assert value("mlmonitor_predictions_total", model_name="iris") == 3
    assert value("mlmonitor_http_request_duration_seconds_count", status="200") == 3
    assert value("mlmonitor_http_request_duration_seconds_bucket", route="/explain", le="+Inf") == 1
    assert value("mlmonitor_http_requests_total", route="/nowhere") == 0.0
    # values as the exposition writes them, not a silent 0.0 for an int or a float
    assert value("mlmonitor_http_requests_total", route="/predict", status=200) == 2
    assert value("mlmonitor_http_request_duration_seconds_bucket", route="/explain",
                 le=float("inf")) == 1
    assert value("mlmonitor_http_request_duration_seconds_bucket", route="/explain", le=30) == 1


def test_a_misspelt_label_name_is_an_error_not_zero():
    with capture() as monitored:
        create_app().test_client().post("/predict", json={})
    with pytest.raises(KeyError, match="model_nmae"):   # a family with children
        monitored.value("mlmonitor_predictions_total", model_nmae="iris")
    with pytest.raises(KeyError, match="errortype"):    # a family with no child yet
        monitored.value("mlmonitor_prediction_errors_total", model_name="iris", errortype="x")
    with pytest.raises(KeyError, match="le"):           # a label of buckets only
        monitored.value("mlmonitor_stage_duration_seconds_count", stage="inference", le="0.1")
    assert monitored.value("mlmonitor_prediction_errors_total", model_name="iris",
                           error_type="ValueError") == 0.0
    # the app's own family in the same registry, no child yet
    Counter("app_cache_misses", "Cache misses.", ["cache"], registry=monitored.registry)
    assert monitored.value("app_cache_misses_total", cache="features") == 0.0
    with pytest.raises(KeyError, match="cahce"):
        monitored.value("app_cache_misses_total", cahce="features")


def test_a_name_that_exposes_no_sample_is_an_error_not_zero():
    with capture() as monitored:
        create_app().test_client().post("/predict", json={})
    for name in ("mlmonitor_predictions",                    # a counter's samples end in _total
                 "mlmonitor_stage_duration_seconds",         # a histogram's in _count, _sum, _bucket
                 "mlmonitor_predictions_total_total"):
        with pytest.raises(KeyError, match="no metric family"):
            monitored.value(name, model_name="iris")
    with pytest.raises(KeyError, match="le="):               # buckets do not add up across bounds
        monitored.value("mlmonitor_stage_duration_seconds_bucket", stage="inference")


def test_the_module_docstring_examples_run_as_doctests():
    result = doctest.testmod(mlmonitor.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


def test_the_fixture(mlmonitor_capture):  # noqa: F811
    create_app().test_client().post("/predict", json={})
    assert mlmonitor_capture.value("mlmonitor_http_requests_total", method="POST",
                                   route="/predict", status="200") == 1
