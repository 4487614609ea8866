"""Bring your own model (issue 16, items 4 and 5): route templates for any WSGI app, requests
charged to a model only once the model is known, no phantom default model, the model-name cap,
and per-model references through ``references=`` and ``set_reference()``."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from flask import Flask, abort, jsonify, request
from prometheus_client import CollectorRegistry
from werkzeug.test import Client

from mlmonitor import ConfigError, Monitor, MonitorMiddleware
from mlmonitor.tools.profiling import build_profile

KEY = "k-test"


def total(registry, name, **labels):
    """Sum of a family's samples whose labels include ``labels``."""
    out = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                out += sample.value
    return out


def label_values(registry, name, label):
    return {s.labels[label] for f in registry.collect() for s in f.samples
            if s.name == name and label in s.labels}


def wsgi_app(environ, start_response):
    """A plain WSGI model server: auth, a model table, one method."""
    path = environ["PATH_INFO"]
    if environ.get("HTTP_AUTHORIZATION") != f"Key {KEY}":
        status = "401 Unauthorized"
    elif path.startswith("/v1/models/") and environ["REQUEST_METHOD"] != "POST":
        status = "405 Method Not Allowed"
    elif path.startswith("/v1/models/") and not path.startswith(("/v1/models/glucose:",
                                                                  "/v1/models/pressure:")):
        status = "404 Not Found"
    elif environ.get("QUERY_STRING") == "bad":
        status = "400 Bad Request"
    else:
        status = "200 OK"
    start_response(status, [("Content-Type", "text/plain")])
    return [status.encode()]


class BufferedClient(Client):
    """A server reads the whole body and closes it: the request is then recorded."""

    def open(self, *args, **kwargs):
        kwargs["buffered"] = True
        return super().open(*args, **kwargs)


def wrapped(**options):
    registry, log = CollectorRegistry(), io.StringIO()
    app = MonitorMiddleware(wsgi_app, registry=registry, log_stream=log, traces=False,
                            model_name="reg", model_version="v1", **options)
    return BufferedClient(app), registry, log


TEMPLATES = dict(prediction_paths=["/v1/models/<name>:predict"],
                 routes=["/healthz", "/items/{id}", "/orders/<int:n>/lines"])


# -- item 5: templates --------------------------------------------------------------------------

def test_templates_label_routes_and_mark_predictions_segment_by_segment():
    client, registry, _ = wrapped(**TEMPLATES)
    auth = {"Authorization": f"Key {KEY}"}
    for name in ("glucose", "pressure"):
        assert client.post(f"/v1/models/{name}:predict", headers=auth).status_code == 200
    client.get("/items/42", headers=auth)
    client.get("/items/abc", headers=auth)
    client.get("/orders/7/lines", headers=auth)
    client.get("/healthz", headers=auth)
    for path in ("/v1/models/glucose:explain", "/v1/models/:predict", "/v1/models/a/b:predict",
                 "/items/42/extra", "/items/", "/orders/x7/lines", "/orders/7/line"):
        client.get(path, headers=auth)

    def http(route):
        return total(registry, "mlmonitor_http_requests_total", route=route)

    assert http("/v1/models/<name>:predict") == 2
    assert http("/items/{id}") == 2
    assert http("/orders/<int:n>/lines") == 1
    assert http("/healthz") == 1
    assert http("<unmatched>") == 7
    assert total(registry, "mlmonitor_predictions_total", model_name="reg") == 2


def test_a_hostile_long_path_is_unmatched_and_answered():
    client, registry, _ = wrapped(**TEMPLATES)
    path = "/v1/models/" + "a" * 200_000 + ":predict"
    assert client.post(path, headers={"Authorization": f"Key {KEY}"}).status_code == 404
    assert total(registry, "mlmonitor_http_requests_total", route="<unmatched>") == 1
    deep = "/items" + "/1" * 50_000
    client.get(deep, headers={"Authorization": f"Key {KEY}"})
    assert total(registry, "mlmonitor_http_requests_total", route="<unmatched>") == 2


@pytest.mark.parametrize("template", ["/a/<x><y>", "/a/<path:rest>", "/a/{rest:path}", "/a/<x",
                                      "/a/{}", "/a/x>"])
def test_a_bad_template_fails_at_start_up_in_one_line(template):
    with pytest.raises(ConfigError) as err:
        MonitorMiddleware(wsgi_app, registry=CollectorRegistry(), routes=[template])
    message = str(err.value)
    assert "\n" not in message and "routes=" in message and "template" in message


def test_templates_from_the_environment(monkeypatch):
    monkeypatch.setenv("MLMONITOR_PREDICTION_PATHS", "/v1/models/<name>:predict,/score")
    client, registry, _ = wrapped()
    client.post("/v1/models/glucose:predict", headers={"Authorization": f"Key {KEY}"})
    assert total(registry, "mlmonitor_predictions_total", model_name="reg") == 1


# -- item 4: a request is charged to a model only once the model is known ------------------------

def test_401_404_405_are_http_only_and_a_400_is_still_the_models_invalid_input():
    client, registry, log = wrapped(**TEMPLATES)
    auth = {"Authorization": f"Key {KEY}"}
    assert client.post("/v1/models/glucose:predict").status_code == 401  # the app's auth
    assert client.post("/v1/models/nope:predict", headers=auth).status_code == 404
    assert client.get("/v1/models/glucose:predict", headers=auth).status_code == 405
    assert total(registry, "mlmonitor_predictions_total") == 0
    assert total(registry, "mlmonitor_prediction_errors_total") == 0
    assert total(registry, "mlmonitor_http_requests_total", route="/v1/models/<name>:predict") == 3
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [line["status"] for line in lines] == [401, 404, 405]
    assert not any("model_name" in line for line in lines)

    assert client.post("/v1/models/glucose:predict?bad", headers=auth).status_code == 400
    assert total(registry, "mlmonitor_prediction_errors_total", model_name="reg",
                 error_type="invalid_input") == 1
    assert total(registry, "mlmonitor_predictions_total", model_name="reg") == 1


def flask_app(**options):
    """The user's multi-model Flask server: an auth hook and a 404 for an unknown model."""
    registry = CollectorRegistry()
    monitor = Monitor()
    app = Flask(__name__)
    monitor.init_app(app, registry=registry, log_stream=io.StringIO(), traces=False, **options)
    models = {"glucose": 2.0, "pressure": 3.0}

    @app.before_request
    def auth():
        if request.headers.get("Authorization") != f"Key {KEY}":
            return jsonify(error="unauthorized"), 401
        return None

    @app.post("/v1/models/<name>:predict")
    @monitor.prediction(model_name=lambda name: name)
    def predict(name):
        if name not in models:
            abort(404)
        return jsonify(y=models[name])

    app.registry = registry  # type: ignore[attr-defined]
    app.monitor = monitor  # type: ignore[attr-defined]
    return app


def test_flask_unknown_model_auth_and_method_are_not_charged_to_any_model():
    app = flask_app(model_version="v1")
    client = app.test_client()
    auth = {"Authorization": f"Key {KEY}"}
    assert client.post("/v1/models/glucose:predict", headers=auth).status_code == 200
    assert client.post("/v1/models/bogus:predict", headers=auth).status_code == 404
    assert client.post("/v1/models/glucose:predict").status_code == 401
    assert client.get("/v1/models/glucose:predict", headers=auth).status_code == 405
    registry = app.registry
    assert total(registry, "mlmonitor_predictions_total") == 1
    assert total(registry, "mlmonitor_prediction_errors_total") == 0
    assert label_values(registry, "mlmonitor_model_info", "model_name") == {"glucose"}
    assert label_values(registry, "mlmonitor_predictions_total", "model_name") == {"glucose"}
    assert total(registry, "mlmonitor_http_requests_total", status="404") == 1


def test_no_model_info_for_a_default_model_that_no_view_serves():
    app = flask_app()  # no model_name: the default "model" is served by no view
    assert total(app.registry, "mlmonitor_model_info") == 0
    app.test_client().post("/v1/models/glucose:predict", headers={"Authorization": f"Key {KEY}"})
    assert label_values(app.registry, "mlmonitor_model_info", "model_name") == {"glucose"}
    assert label_values(app.registry, "mlmonitor_model_info", "model_version") == {"unknown"}

    _, registry, _ = wrapped(routes=["/healthz"])  # WSGI without prediction paths: no model
    assert total(registry, "mlmonitor_model_info") == 0


def test_a_view_of_the_default_model_declares_it_at_start_up():
    registry = CollectorRegistry()
    monitor = Monitor()
    app = Flask(__name__)
    monitor.init_app(app, registry=registry, log_stream=io.StringIO(), traces=False)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return "ok"

    @app.post("/wine")
    @monitor.prediction(model_name="wine", model_version="v3")
    def wine():
        return "ok"

    assert registry.get_sample_value("mlmonitor_model_info",
                                     {"model_name": "model", "model_version": "unknown",
                                      "run_id": "", "model_id": ""}) == 1
    assert registry.get_sample_value("mlmonitor_predictions_total",
                                     {"model_name": "wine", "model_version": "v3"}) == 0

    _, registry, _ = wrapped(prediction_paths=["/v1/models/<name>:predict"])
    assert registry.get_sample_value("mlmonitor_model_info",
                                     {"model_name": "reg", "model_version": "v1",
                                      "run_id": "", "model_id": ""}) == 1


def test_model_names_beyond_the_cap_become_other():
    registry = CollectorRegistry()
    app = Flask(__name__)
    monitor = Monitor(app, registry=registry, log_stream=io.StringIO(), traces=False,
                      model_name="m0", max_label_values=3)

    @app.post("/v1/models/<name>:predict")
    @monitor.prediction(model_name=lambda name: name)
    def predict(name):
        return "ok"

    client = app.test_client()
    for i in range(6):
        assert client.post(f"/v1/models/m{i}:predict").status_code == 200
    assert label_values(registry, "mlmonitor_predictions_total", "model_name") == {
        "m0", "m1", "m2", "other"}
    assert total(registry, "mlmonitor_predictions_total", model_name="other") == 3
    assert total(registry, "mlmonitor_predictions_total") == 6


# -- item 5: per-model references ----------------------------------------------------------------

def _profile(weight, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 2)) * [3.0, 5.0] + [10.0, 20.0]
    return build_profile(X, feature_names=["a", "b"], predictions=weight * X.sum(axis=1))


def _reference_models(registry):
    return label_values(registry, "mlmonitor_feature_reference_ratio", "model_name")


def test_references_setting_gives_each_model_its_reference(tmp_path):
    paths = {}
    for name, weight in (("glucose", 2.0), ("pressure", 3.0)):
        paths[name] = tmp_path / f"{name}.json"
        _profile(weight, seed=len(name)).save(paths[name])
    app = flask_app(model_version="v1", references={k: str(v) for k, v in paths.items()})
    client = app.test_client()
    for name in ("glucose", "pressure"):
        client.post(f"/v1/models/{name}:predict", headers={"Authorization": f"Key {KEY}"})
    assert _reference_models(app.registry) == {"glucose", "pressure"}
    assert label_values(app.registry, "mlmonitor_prediction_reference_ratio",
                        "model_name") == {"glucose", "pressure"}


def test_references_from_the_environment_and_a_missing_file_fails_at_start_up(tmp_path,
                                                                               monkeypatch):
    profile = _profile(2.0, 1)
    profile.save(tmp_path / "g.json")
    monkeypatch.setenv("MLMONITOR_REFERENCES", f"glucose={tmp_path / 'g.json'}")
    app = flask_app(model_version="v1")  # no references= given: only the environment names it
    for name in ("glucose", "pressure"):
        app.test_client().post(f"/v1/models/{name}:predict",
                               headers={"Authorization": f"Key {KEY}"})
    exported = {(s.labels["feature"], s.labels["bin"]): s.value
                for f in app.registry.collect() for s in f.samples
                if s.name == "mlmonitor_feature_reference_ratio"
                and s.labels["model_name"] == "glucose"}
    assert exported == {(feature, bin_label): share
                        for feature, bin_label, share in profile.reference_ratios()}
    assert {feature for feature, _ in exported} == {"a", "b"}
    assert _reference_models(app.registry) == {"glucose"}  # pressure has none
    monkeypatch.setenv("MLMONITOR_REFERENCES", f"glucose={tmp_path / 'missing.json'}")
    with pytest.raises(ConfigError) as err:
        wrapped()
    assert "\n" not in str(err.value) and "missing.json" in str(err.value)


def test_monitor_set_reference_before_and_after_init_app():
    registry = CollectorRegistry()
    monitor = Monitor()
    monitor.set_reference("glucose", _profile(2.0, 1))  # before init_app
    app = Flask(__name__)
    monitor.init_app(app, registry=registry, log_stream=io.StringIO(), traces=False,
                     model_version="v1")
    monitor.set_reference("pressure", _profile(3.0, 2))  # after

    @app.post("/v1/models/<name>:predict")
    @monitor.prediction(model_name=lambda name: name)
    def predict(name):
        monitor.observe(features={"a": 10.0, "b": 20.0}, prediction=60.0)
        return "ok"

    client = app.test_client()
    for name in ("glucose", "pressure"):
        client.post(f"/v1/models/{name}:predict")
    assert _reference_models(registry) == {"glucose", "pressure"}
    for name in ("glucose", "pressure"):
        assert total(registry, "mlmonitor_feature_bin_total", model_name=name, feature="a") == 1
