"""The example app's second model (issue 16, item 6): a diabetes regressor behind
``POST /v1/models/<name>:predict``, with its reference, feedback as absolute error, and the
missing and unknown features a renamed column gives; Flask's test client, the app's own registry."""
from __future__ import annotations

import io
import random

import pytest
from prometheus_client import CollectorRegistry

from example_app import model
from example_app.app import create_app

SECRET = "example-regression-secret-0123456789abcdef"
ROWS, TARGETS = model.regression_rows()


@pytest.fixture
def app():
    registry = CollectorRegistry()
    app = create_app({"MONITOR_OPTIONS": {"registry": registry, "log_stream": io.StringIO()},
                      "MLMONITOR_FEEDBACK_SECRET": SECRET, "MLMONITOR_TRACES": False,
                      "CANARY_RNG": random.Random(0)})
    app.registry = registry
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, path, body, **headers):
    return client.post(path, json=body, headers=headers, buffered=True)


def value(app, name, **labels):
    return app.registry.get_sample_value(name, labels)


def series(app, name):
    return [s for metric in app.registry.collect() for s in metric.samples if s.name == name]


DIABETES = {"model_name": "diabetes", "model_version": "v2"}


def test_a_regression_prediction_is_a_number_counted_in_the_output_bins(app, client):
    response = post(client, "/v1/models/diabetes:predict", {"instances": ROWS[:20]}, **{"X-Model-Version": "v2"})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert (body["model_name"], body["model_version"]) == ("diabetes", "v2")
    assert response.headers["X-Model-Version"] == "v2"
    expected = model.load_regressors()["v2"].predict(ROWS[:20])
    assert [p["prediction"] for p in body["predictions"]] == pytest.approx(list(expected))
    assert value(app, "mlmonitor_predictions_total", **DIABETES) == 1
    bins = [s for s in series(app, "mlmonitor_prediction_bin_total") if s.labels["model_name"] == "diabetes"]
    assert sum(s.value for s in bins) == 20
    profile = model.regression_reference_profile()
    shares = [s for s in series(app, "mlmonitor_prediction_reference_ratio") if s.labels == {**DIABETES, "bin": "00"}]
    assert len(shares) == 1 and 0 < shares[0].value < 1
    assert value(app, "mlmonitor_reference_absolute_error", **DIABETES) == pytest.approx(profile.mae)
    # no class is counted for a regressor, and iris saw nothing
    assert not [s for s in series(app, "mlmonitor_predicted_class_total") if s.labels["model_name"] == "diabetes"]
    assert value(app, "mlmonitor_predictions_total", model_name="iris", model_version="v1") in (None, 0)


def test_regression_feedback_records_the_absolute_error(app, client):
    response = post(client, "/v1/models/diabetes:predict", {"features": ROWS[0]}, **{"X-Model-Version": "v2"})
    predicted, pid = response.get_json()["prediction"], response.get_json()["prediction_id"]
    answer = post(client, "/v1/models/diabetes:feedback", {"prediction_id": pid, "label": TARGETS[0]})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["absolute_error"] == pytest.approx(abs(predicted - TARGETS[0]))
    assert value(app, "mlmonitor_feedback_absolute_error_count", **DIABETES) == 1
    assert value(app, "mlmonitor_feedback_absolute_error_sum", **DIABETES) == pytest.approx(abs(predicted - TARGETS[0]))
    assert not [s for s in series(app, "mlmonitor_feedback_total") if s.labels["model_name"] == "diabetes"
                and s.value]


@pytest.mark.parametrize("label", ["150", None, True])
def test_regression_feedback_needs_a_number(client, label):
    response = post(client, "/v1/models/diabetes:predict", {"features": ROWS[0]})
    answer = post(client, "/v1/models/diabetes:feedback",
                  {"prediction_id": response.get_json()["prediction_id"], "label": label})
    assert answer.status_code == 400
    assert "'label' must be a finite number" in answer.get_json()["error"]


def test_a_renamed_column_counts_one_missing_and_one_unknown_feature(app, client):
    row = dict(ROWS[0])
    row["BMI"] = row.pop("bmi")
    response = post(client, "/v1/models/diabetes:predict", {"features": row}, **{"X-Model-Version": "v2"})
    assert response.status_code == 200  # the model imputes the training mean
    imputed = model.load_regressors()["v2"].predict([{**ROWS[0], "bmi": model.feature_means("diabetes")["bmi"]}])
    assert response.get_json()["prediction"] == pytest.approx(float(imputed[0]))
    assert value(app, "mlmonitor_feature_missing_total", feature="bmi", **DIABETES) == 1
    assert value(app, "mlmonitor_feature_unknown_total", **DIABETES) == 1
    assert not [s for s in series(app, "mlmonitor_feature_missing_total") if s.labels.get("feature") == "BMI"]


def test_iris_on_the_multi_model_route_answers_as_predict_does(app, client):
    good = dict(model.reference_rows()[0][0])
    multi = post(client, "/v1/models/iris:predict", {"features": good}, **{"X-Model-Version": "v1"})
    plain = post(client, "/predict", {"features": good}, **{"X-Model-Version": "v1"})
    assert multi.status_code == plain.status_code == 200
    strip = lambda body: {k: v for k, v in body.items() if k != "prediction_id"}  # noqa: E731
    assert strip(multi.get_json()) == strip(plain.get_json())
    assert value(app, "mlmonitor_predictions_total", model_name="iris", model_version="v1") == 2
    # the iris route stays strict: an unknown feature is a 400
    assert post(client, "/v1/models/iris:predict", {"features": {**good, "colour": 1}}).status_code == 400


def test_an_unknown_model_is_a_404_that_creates_no_model_series(app, client):
    response = post(client, "/v1/models/wine:predict", {"features": ROWS[0]})
    assert response.status_code == 404
    assert response.get_json()["error"] == "no model 'wine'; served: iris, diabetes"
    assert post(client, "/v1/models/wine:feedback", {"prediction_id": "x", "label": 1}).status_code == 404
    names = {s.labels.get("model_name") for metric in app.registry.collect() for s in metric.samples}
    assert "wine" not in names
    # the model was never known for these requests: HTTP-only, no model's error (nor its alert) fed
    assert not [s for s in series(app, "mlmonitor_prediction_errors_total") if s.value]
    assert not [s for s in series(app, "mlmonitor_predictions_total") if s.value]


def test_healthz_lists_both_models(client):
    assert client.get("/healthz").get_json()["models"] == {"iris": ["v1", "v2"], "diabetes": ["v1", "v2"]}


def test_the_reference_is_a_regression_profile_with_output_bins_and_mae():
    profile = model.regression_reference_profile()
    assert profile.task == "regression" and profile.regression
    assert profile.features == model.diabetes_dataset().features
    assert 30 < profile.mae < 60  # ridge on diabetes: about 43 on its training split
    assert model.holdout_mae("v1") < 60


def test_regression_feedback_refuses_a_number_beyond_any_float(client):
    response = post(client, "/v1/models/diabetes:predict", {"features": ROWS[0]})
    answer = client.post("/v1/models/diabetes:feedback", headers={"Content-Type": "application/json"},
                         data='{"prediction_id": "%s", "label": 1%s}' % (response.get_json()["prediction_id"],
                                                                          "0" * 400))
    assert answer.status_code == 400
    assert "'label' must be a finite number" in answer.get_json()["error"]
