"""The FastAPI example (example_app/asgi.py) answers exactly as the Flask one: one table of
requests sent to both in-process (Flask's test client, FastAPI's TestClient), the same canary
seed, the same status, X-Model-Version and JSON body (prediction ids aside, they are signed per
call), and the same model metrics counted."""
from __future__ import annotations

import io
import json
import random
from typing import Any, Dict, List, Tuple

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from example_app import asgi, model
from example_app.app import create_app

GOOD = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
ROW = dict(model.regression_rows()[0][0])
SECRET = "example-asgi-test-secret-0123456789abcdef"
LAST = "<the last prediction id>"
#: the model metrics compared between the two apps (HTTP ones differ in the route's spelling only)
MODEL_FAMILIES = ("mlmonitor_model_info", "mlmonitor_predictions_total", "mlmonitor_prediction_errors_total",
                  "mlmonitor_feedback_total", "mlmonitor_stage_duration_seconds_count",
                  "mlmonitor_feature_missing_total", "mlmonitor_feature_unknown_total")

#: (method, path, body: JSON value or raw str, headers)
REQUESTS: List[Tuple[str, str, Any, Dict[str, str]]] = [
    ("POST", "/predict", {"features": GOOD}, {}),  # canary draws: the same seed, the same versions
    ("POST", "/predict", {"features": GOOD}, {}),
    ("POST", "/predict", {"features": GOOD}, {"X-Model-Version": "v2"}),
    ("POST", "/predict", {"instances": [GOOD, {**GOOD, "petal_length_cm": 5.0}, GOOD]}, {}),
    ("POST", "/predict", {"features": {**GOOD, "sepal_length_cm": 5}}, {"X-Slow": "0.01"}),
    ("POST", "/feedback", {"prediction_id": LAST, "label": "setosa"}, {}),
    ("POST", "/feedback", {"prediction_id": LAST, "label": "setosa"}, {}),  # a duplicate
    ("POST", "/predict", "{", {"X-Model-Version": "v2"}),
    ("POST", "/predict", "", {}),
    ("POST", "/predict", "null", {}),
    ("POST", "/predict", [GOOD], {}),
    ("POST", "/predict", "[" * 100_000 + "]" * 100_000, {}),
    ("POST", "/predict", {}, {}),
    ("POST", "/predict", {"features": GOOD, "model": "x"}, {}),
    ("POST", "/predict", {"features": {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5}}, {}),
    ("POST", "/predict", {"features": {**GOOD, "colour": 1}}, {}),
    ("POST", "/predict", {"features": {**GOOD, "sepal_width_cm": "3.5"}}, {}),
    ("POST", "/predict", '{"features": {"sepal_length_cm": NaN, "sepal_width_cm": 3.5, "petal_length_cm": 1.4,'
                         ' "petal_width_cm": 0.2}}', {}),
    ("POST", "/predict", {"instances": [GOOD] * 65}, {}),
    ("POST", "/predict", {"instances": [GOOD, 7]}, {}),
    ("POST", "/predict", {"features": GOOD}, {"X-Model-Version": "v3"}),
    ("POST", "/predict", {"features": GOOD}, {"X-Slow": "nan"}),
    ("POST", "/predict", {"features": GOOD}, {"X-Fail": "1", "X-Model-Version": "v2"}),
    ("POST", "/predict", '{"features": "' + "x" * (2 << 20) + '"}', {}),
    ("POST", "/v1/models/iris:predict", {"features": GOOD}, {"X-Model-Version": "v1"}),
    ("POST", "/v1/models/iris:predict", {"features": {**GOOD, "colour": 1}}, {}),
    ("POST", "/v1/models/diabetes:predict", {"features": ROW}, {"X-Model-Version": "v2"}),
    ("POST", "/v1/models/diabetes:feedback", {"prediction_id": LAST, "label": 151.0}, {}),
    ("POST", "/v1/models/diabetes:predict",
     {"instances": [ROW, {**{k: v for k, v in ROW.items() if k != "bmi"}, "body_mass": 0.01}]}, {}),
    ("POST", "/v1/models/diabetes:feedback", {"prediction_id": LAST, "label": "high"}, {}),
    ("POST", "/v1/models/diabetes:predict", {"features": ROW}, {"X-Fail": "1"}),
    ("POST", "/v1/models/wine:predict", {"features": GOOD}, {}),
    ("POST", "/v1/models/wine:feedback", {"prediction_id": "x", "label": 1}, {}),
    ("POST", "/feedback", "{", {}),
    ("POST", "/feedback", {"label": "setosa"}, {}),
    ("POST", "/feedback", {"prediction_id": "abc", "label": "rose"}, {}),
    ("POST", "/feedback", {"prediction_id": "abc", "label": "setosa", "extra": 1}, {}),
    ("POST", "/feedback", {"prediction_id": "not-an-id", "label": "setosa"}, {}),
    ("GET", "/healthz", None, {}),
]


def settings(registry: CollectorRegistry) -> Dict[str, Any]:
    return {"MONITOR_OPTIONS": {"registry": registry, "log_stream": io.StringIO()},
            "MLMONITOR_FEEDBACK_SECRET": SECRET, "MLMONITOR_TRACES": False,
            "CANARY_FRACTION": 0.5, "CANARY_RNG": random.Random(3)}


def without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_ids(v) for k, v in value.items() if k != "prediction_id"}
    if isinstance(value, list):
        return [without_ids(v) for v in value]
    return value


def last_id(body: Any) -> Any:
    if not isinstance(body, dict):
        return None
    if "predictions" in body:
        return body["predictions"][-1]["prediction_id"]
    return body.get("prediction_id")


def exchange(send) -> List[Tuple[str, int, str, Any]]:
    """The table sent through ``send(method, path, data, headers) -> (status, headers, text)``;
    per request (path, status, X-Model-Version, whether X-Request-ID came, JSON body without ids)."""
    answers, pid = [], None
    for method, path, body, headers in REQUESTS:
        if isinstance(body, dict) and body.get("prediction_id") == LAST:
            body = {**body, "prediction_id": pid}
        data = None if body is None else body if isinstance(body, str) else json.dumps(body)
        status, response_headers, text = send(method, path, data, headers)
        try:
            payload = json.loads(text)
        except ValueError:  # Flask's HTML error pages (500, 413): the status is what is compared
            payload = None
        if status == 200:
            pid = last_id(payload) or pid
        if status in (413, 500):
            payload = None
        answers.append((path, status, response_headers.get("X-Model-Version"), "X-Request-ID" in response_headers,
                        without_ids(payload)))
    return answers


def model_samples(registry: CollectorRegistry) -> Dict[Tuple[str, Tuple], float]:
    """Zeros included: a series declared at start-up by one app and not the other would start
    one version's rates before another's on the canary dashboard."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for metric in registry.collect()
            for s in metric.samples if s.name in MODEL_FAMILIES}


@pytest.fixture(scope="module")
def both():
    flask_registry, asgi_registry = CollectorRegistry(), CollectorRegistry()
    flask_client = create_app(settings(flask_registry)).test_client()

    def flask_send(method, path, data, headers):
        response = flask_client.open(path, method=method, data=data, buffered=True,
                                     headers={"Content-Type": "application/json", **headers})
        return response.status_code, response.headers, response.get_data(as_text=True)

    with TestClient(asgi.create_app(settings(asgi_registry)), raise_server_exceptions=False) as client:
        def asgi_send(method, path, data, headers):
            response = client.request(method, path, content=data,
                                      headers={"Content-Type": "application/json", **headers})
            return response.status_code, response.headers, response.text

        yield (exchange(flask_send), flask_registry), (exchange(asgi_send), asgi_registry)


def test_every_request_of_the_table_gets_the_same_answer(both):
    (flask_answers, _), (asgi_answers, _) = both
    assert len(flask_answers) == len(REQUESTS)
    for request, flask_answer, asgi_answer in zip(REQUESTS, flask_answers, asgi_answers):
        assert asgi_answer == flask_answer, request[:2]
    # the table covers what it claims: both versions by the canary, every kind of status
    assert {a[2] for a in flask_answers[:2]} == {"v1", "v2"}
    assert {a[1] for a in flask_answers} == {200, 400, 404, 413, 500}


def test_the_same_model_metrics_are_counted(both):
    (_, flask_registry), (_, asgi_registry) = both
    flask_samples = model_samples(flask_registry)
    assert ("mlmonitor_feedback_total", (("model_name", "iris"), ("model_version", "v1"),
                                         ("outcome", "correct"))) in flask_samples
    assert model_samples(asgi_registry) == flask_samples


def test_the_same_model_series_exist_before_any_request():
    flask_registry, asgi_registry = CollectorRegistry(), CollectorRegistry()
    create_app(settings(flask_registry))
    asgi.create_app(settings(asgi_registry))
    assert model_samples(asgi_registry) == model_samples(flask_registry)


def test_route_labels_are_the_routers_templates(both):
    (_, _), (_, asgi_registry) = both
    routes = {s.labels["route"] for metric in asgi_registry.collect() for s in metric.samples
              if s.name == "mlmonitor_http_requests_total"}
    assert routes == {"/predict", "/feedback", "/v1/models/{name}:predict", "/v1/models/{name}:feedback",
                      "/healthz"}
