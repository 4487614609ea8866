"""The example app's endpoints with Flask's test client: predictions, validation, canary, feedback."""
from __future__ import annotations

import io
import json
import random

import pytest
from prometheus_client import CollectorRegistry

from example_app import model
from example_app.app import create_app

GOOD = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
SECRET = "example-app-test-secret-0123456789abcdef"


def make_app(**config):
    registry = CollectorRegistry()
    settings = {
        "MONITOR_OPTIONS": {"registry": registry, "log_stream": io.StringIO()},
        "MLMONITOR_FEEDBACK_SECRET": SECRET,
        "MLMONITOR_TRACES": False,
        **config,
    }
    app = create_app(settings)
    app.registry = registry
    return app


@pytest.fixture
def app():
    return make_app(CANARY_RNG=random.Random(0))


@pytest.fixture
def client(app):
    return app.test_client()


def predict(client, body, **headers):
    if isinstance(body, (bytes, str)):
        return client.post("/predict", data=body, headers={"Content-Type": "application/json", **headers},
                           buffered=True)  # mlmonitor records when the body is closed
    return client.post("/predict", json=body, headers=headers, buffered=True)


def error_of(response):
    assert response.status_code == 400, response.get_data(as_text=True)
    return response.get_json()["error"]


# -- good requests ---------------------------------------------------------------------------

def test_single_instance_returns_class_probabilities_version_and_id(client):
    response = predict(client, {"features": GOOD}, **{"X-Model-Version": "v1"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_name"] == "iris"
    assert body["model_version"] == "v1"
    assert response.headers["X-Model-Version"] == "v1"
    assert body["prediction"] == "setosa"
    assert set(body["probabilities"]) == {"setosa", "versicolor", "virginica"}
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert max(body["probabilities"], key=body["probabilities"].get) == "setosa"
    assert isinstance(body["prediction_id"], str) and body["prediction_id"]


def test_batch_returns_one_result_per_instance_in_order(client):
    rows, labels = model.reference_rows()
    response = predict(client, {"instances": rows[:10]}, **{"X-Model-Version": "v2"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["model_version"] == "v2"
    assert len(body["predictions"]) == 10
    ids = [p["prediction_id"] for p in body["predictions"]]
    assert len(set(ids)) == 10
    expected = model.load_models()["v2"].predict_proba(rows[:10]).argmax(axis=1)
    assert [p["prediction"] for p in body["predictions"]] == [model.dataset().classes[i] for i in expected]


def test_integers_are_accepted_as_numbers(client):
    response = predict(client, {"features": {**GOOD, "sepal_length_cm": 5}})
    assert response.status_code == 200


def test_batch_at_the_limit_is_accepted(client):
    assert predict(client, {"instances": [GOOD] * 64}).status_code == 200


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["versions"] == ["v1", "v2"]


def test_metrics_are_served_by_mlmonitor(client):
    predict(client, {"features": GOOD}, **{"X-Model-Version": "v2"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "mlmonitor_predictions_total" in response.get_data(as_text=True)


def test_prediction_is_counted_per_version_with_stages(app, client):
    predict(client, {"features": GOOD}, **{"X-Model-Version": "v2"})
    predict(client, {"features": GOOD}, **{"X-Model-Version": "v2"})
    get = app.registry.get_sample_value
    assert get("mlmonitor_predictions_total", {"model_name": "iris", "model_version": "v2"}) == 2
    for stage in ("preprocess", "inference", "postprocess"):
        assert get("mlmonitor_stage_duration_seconds_count",
                   {"model_name": "iris", "model_version": "v2", "stage": stage}) == 2


# -- bad requests: every kind, with the exact message ----------------------------------------

@pytest.mark.parametrize("body, message", [
    ([GOOD], "request body must be a JSON object, got array"),
    ("null", "request body must be a JSON object, got null"),
    ("42", "request body must be a JSON object, got number"),
    ("{", "request body must be valid JSON"),
    ("", "request body must be valid JSON"),
    ({}, "request body must have 'features' (one instance) or 'instances' (a batch)"),
    ({"features": GOOD, "instances": [GOOD]},
     "give either 'features' (one instance) or 'instances' (a batch), not both"),
    ({"features": GOOD, "model": "x"}, "unknown top-level field: model (expected 'features' or 'instances')"),
    ({"features": [5.1, 3.5, 1.4, 0.2]},
     "features must be an object mapping feature name to number, got array"),
    ({"features": {k: v for k, v in GOOD.items() if k != "petal_width_cm"}},
     "features: missing feature: petal_width_cm"),
    ({"features": {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5}},
     "features: missing features: petal_length_cm, petal_width_cm"),
    ({"features": {**GOOD, "colour": 1}},
     "features: unknown feature: colour (expected sepal_length_cm, sepal_width_cm, petal_length_cm,"
     " petal_width_cm)"),
    ({"features": {**GOOD, "sepal_width_cm": "3.5"}},
     "features: feature 'sepal_width_cm' must be a number, got string"),
    ({"features": {**GOOD, "sepal_width_cm": True}},
     "features: feature 'sepal_width_cm' must be a number, got boolean"),
    ({"features": {**GOOD, "sepal_width_cm": None}},
     "features: feature 'sepal_width_cm' must be a number, got null"),
    ({"features": {**GOOD, "sepal_width_cm": [3.5]}},
     "features: feature 'sepal_width_cm' must be a number, got array"),
    ('{"features": {"sepal_length_cm": NaN, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, '
     '"petal_width_cm": 0.2}}', "features: feature 'sepal_length_cm' must be finite, got NaN"),
    ('{"features": {"sepal_length_cm": 5.1, "sepal_width_cm": -Infinity, "petal_length_cm": 1.4, '
     '"petal_width_cm": 0.2}}', "features: feature 'sepal_width_cm' must be finite, got -Infinity"),
    ('{"features": {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1e999, '
     '"petal_width_cm": 0.2}}', "features: feature 'petal_length_cm' must be finite, got Infinity"),
    ({"features": {**GOOD, "petal_width_cm": 10 ** 400}},
     "features: feature 'petal_width_cm' must be finite, got Infinity"),
    ({"instances": GOOD}, "'instances' must be an array of objects, got object"),
    ({"instances": []}, "'instances' must not be empty"),
    ({"instances": [GOOD] * 65}, "'instances' has 65 items; the limit is 64"),
    ({"instances": [GOOD, 7]}, "instances[1] must be an object mapping feature name to number, got number"),
    ({"instances": [GOOD, GOOD, {**GOOD, "petal_length_cm": "x"}]},
     "instances[2]: feature 'petal_length_cm' must be a number, got string"),
])
def test_bad_input_is_a_400_naming_what_is_wrong(client, body, message):
    assert error_of(predict(client, body)) == message


def test_bad_input_is_counted_as_invalid_input(app, client):
    predict(client, {"features": {}}, **{"X-Model-Version": "v1"})
    assert app.registry.get_sample_value(
        "mlmonitor_prediction_errors_total",
        {"model_name": "iris", "model_version": "v1", "error_type": "invalid_input"}) == 1


def test_deeply_nested_body_is_a_400(client):
    assert error_of(predict(client, "[" * 100_000 + "]" * 100_000)) == "request body must be valid JSON"


def test_oversized_body_is_refused(client):
    assert predict(client, '{"features": "' + "x" * (2 << 20) + '"}').status_code == 413


def test_unknown_forced_version_is_a_400(client):
    response = predict(client, {"features": GOOD}, **{"X-Model-Version": "v3"})
    assert error_of(response) == "header X-Model-Version must be one of v1, v2, got 'v3'"


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_bad_slow_header_is_a_400(client, value):
    response = predict(client, {"features": GOOD}, **{"X-Slow": value})
    assert error_of(response) == f"header X-Slow must be a non-negative number of seconds, got {value!r}"


def test_slow_header_is_honoured(client):
    assert predict(client, {"features": GOOD}, **{"X-Slow": "0.01"}).status_code == 200


# -- injected failures --------------------------------------------------------------------------

def test_fail_header_gives_a_500_carrying_the_version(app, client):
    response = predict(client, {"features": GOOD}, **{"X-Fail": "1", "X-Model-Version": "v2"})
    assert response.status_code == 500
    assert response.headers["X-Model-Version"] == "v2"
    assert app.registry.get_sample_value(
        "mlmonitor_prediction_errors_total",
        {"model_name": "iris", "model_version": "v2", "error_type": "InjectedFailure"}) == 1


# -- canary ------------------------------------------------------------------------------------

def test_canary_fraction_is_respected_within_tolerance():
    client = make_app(CANARY_FRACTION=0.3, CANARY_RNG=random.Random(42)).test_client()
    n = 1000
    versions = [predict(client, {"features": GOOD}).get_json()["model_version"] for _ in range(n)]
    share = versions.count("v2") / n
    # binomial sd at p=0.3, n=1000 is 0.0145: four of them
    assert abs(share - 0.3) < 0.058
    assert set(versions) == {"v1", "v2"}


def test_canary_is_repeatable_with_the_same_seed():
    runs = []
    for _ in range(2):
        client = make_app(CANARY_RNG=random.Random(7)).test_client()
        runs.append([predict(client, {"features": GOOD}).get_json()["model_version"] for _ in range(50)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("fraction, version", [(0.0, "v1"), (1.0, "v2")])
def test_canary_extremes_route_everything_one_way(fraction, version):
    client = make_app(CANARY_FRACTION=fraction, CANARY_RNG=random.Random(1)).test_client()
    assert {predict(client, {"features": GOOD}).get_json()["model_version"] for _ in range(30)} == {version}


def test_forced_version_overrides_the_canary():
    client = make_app(CANARY_FRACTION=1.0).test_client()
    for _ in range(10):
        assert predict(client, {"features": GOOD}, **{"X-Model-Version": "v1"}).get_json()["model_version"] == "v1"


def test_canary_fraction_out_of_range_fails_at_start_up():
    with pytest.raises(ValueError, match="CANARY_FRACTION must be between 0 and 1, got 1.5"):
        make_app(CANARY_FRACTION=1.5)


# -- feedback ----------------------------------------------------------------------------------

def feedback(client, body):
    if isinstance(body, str):
        return client.post("/feedback", data=body, headers={"Content-Type": "application/json"})
    return client.post("/feedback", json=body)


def test_feedback_is_counted_for_the_version_that_predicted(app, client):
    first = predict(client, {"features": GOOD}, **{"X-Model-Version": "v2"}).get_json()
    second = predict(client, {"features": GOOD}, **{"X-Model-Version": "v2"}).get_json()
    assert feedback(client, {"prediction_id": first["prediction_id"], "label": "setosa"}).status_code == 200
    assert feedback(client, {"prediction_id": second["prediction_id"], "label": "virginica"}).status_code == 200
    get = app.registry.get_sample_value
    labels = {"model_name": "iris", "model_version": "v2"}
    assert get("mlmonitor_feedback_total", {**labels, "outcome": "correct"}) == 1
    assert get("mlmonitor_feedback_total", {**labels, "outcome": "incorrect"}) == 1


def test_feedback_from_a_batch_prediction(app, client):
    body = predict(client, {"instances": [GOOD, GOOD]}, **{"X-Model-Version": "v1"}).get_json()
    for item in body["predictions"]:
        assert feedback(client, {"prediction_id": item["prediction_id"], "label": "setosa"}).status_code == 200
    assert app.registry.get_sample_value(
        "mlmonitor_feedback_total",
        {"model_name": "iris", "model_version": "v1", "outcome": "correct"}) == 2


def test_feedback_signed_by_another_app_instance_with_the_same_secret_is_accepted(client):
    other = make_app().test_client()
    pid = predict(other, {"features": GOOD}).get_json()["prediction_id"]
    assert feedback(client, {"prediction_id": pid, "label": "setosa"}).status_code == 200


@pytest.mark.parametrize("body, message", [
    ("[1]", "request body must be a JSON object, got array"),
    ("{", "request body must be valid JSON"),
    ({"label": "setosa"}, "'prediction_id' must be a non-empty string, got null"),
    ({"prediction_id": "", "label": "setosa"}, "'prediction_id' must be a non-empty string, got an empty string"),
    ({"prediction_id": 12, "label": "setosa"}, "'prediction_id' must be a non-empty string, got number"),
    ({"prediction_id": "abc", "label": 1}, "'label' must be a string, got number"),
    ({"prediction_id": "abc"}, "'label' must be a string, got null"),
    ({"prediction_id": "abc", "label": "rose"},
     "'label' must be one of setosa, versicolor, virginica, got 'rose'"),
    ({"prediction_id": "abc", "label": "setosa", "extra": 1},
     "unknown field: extra (expected 'prediction_id' and 'label')"),
])
def test_bad_feedback_is_a_400_naming_what_is_wrong(client, body, message):
    assert error_of(feedback(client, body)) == message


def test_feedback_with_a_forged_id_is_rejected(client):
    pid = predict(client, {"features": GOOD}).get_json()["prediction_id"]
    payload, tag = pid.split(".")
    forged = payload + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
    message = error_of(feedback(client, {"prediction_id": forged, "label": "setosa"}))
    assert message.startswith("'prediction_id' rejected: bad_signature")


def test_feedback_with_a_garbage_id_is_rejected(client):
    message = error_of(feedback(client, {"prediction_id": "not-an-id", "label": "setosa"}))
    assert message.startswith("'prediction_id' rejected: malformed")


def test_feedback_signed_with_another_secret_is_rejected(client):
    other = make_app(MLMONITOR_FEEDBACK_SECRET="a-different-secret-0123456789abcdef").test_client()
    pid = predict(other, {"features": GOOD}).get_json()["prediction_id"]
    message = error_of(feedback(client, {"prediction_id": pid, "label": "setosa"}))
    assert message.startswith("'prediction_id' rejected: bad_signature")


def test_response_bodies_are_strict_json(client):
    raw = predict(client, {"instances": [GOOD] * 3}).get_data(as_text=True)
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
