"""Bring your own model (issue 16): a user's Flask app factory serving two scikit-learn
regressors at ``POST /v1/models/<name>:predict``, fed numpy arrays, lists of rows and pandas
DataFrames, with regression references built from data and by the CLI from a CSV."""
from __future__ import annotations

import csv
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flask import Flask, abort, jsonify, request
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LinearRegression

from mlmonitor import Monitor
from mlmonitor.reference import ReferenceProfile
from mlmonitor.reference_format import InvalidReference
from mlmonitor.tools.profiling import build_profile

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["age", "bmi", "bp"]


def _data(seed=0, n=400):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [10.0, 4.0, 12.0] + [50.0, 26.0, 90.0]
    y = X @ np.array([0.8, 3.0, 0.5]) + rng.normal(scale=5.0, size=n)
    return X, y


def create_app(reference_features=FEATURES, feature_names=None, input_kind="array"):
    """The user's app factory: two regressors, one route template."""
    X, y = _data()
    models = {"glucose": LinearRegression().fit(X, y), "pressure": LinearRegression().fit(X, y * 2)}
    registry = CollectorRegistry()
    monitor = Monitor()
    app = Flask(__name__)
    monitor.init_app(app, registry=registry, log_stream=io.StringIO(), traces=False,
                     feedback_secret="s" * 32, model_version="v1")
    for name, model in models.items():
        frame = X if reference_features == FEATURES else X[:, :len(reference_features)]
        profile = build_profile(frame, feature_names=reference_features,
                                predictions=model.predict(X), labels=y if name == "glucose" else y * 2)
        app.extensions["mlmonitor"].set_reference(name, profile)

    @app.post("/v1/models/<name>:predict")
    @monitor.prediction(model_name=lambda name: name)
    def predict(name):
        if name not in models:
            abort(404)
        rows = np.asarray(request.get_json()["instances"], dtype=float)
        y_hat = models[name].predict(rows)
        features = rows
        if input_kind == "rows":
            features = rows.tolist()
        elif input_kind == "frame":
            import pandas as pd
            features = pd.DataFrame(rows, columns=feature_names or FEATURES)
        monitor.observe_batch(features=features, predictions=y_hat, feature_names=feature_names)
        return jsonify(predictions=y_hat.tolist(), ids=monitor.prediction_ids(y_hat.tolist()))

    @app.post("/feedback")
    def feedback():
        body = request.get_json()
        return jsonify(result=monitor.record_feedback(body["id"], body["label"]))

    app.registry = registry  # type: ignore[attr-defined]
    return app


def value(app, name, **labels):
    return app.registry.get_sample_value(name, labels) or 0.0


def total(app, name, **labels):
    """Sum of a family's samples whose labels include ``labels``."""
    out = 0.0
    for family in app.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                out += sample.value
    return out


def predict(app, name, rows):
    response = app.test_client().post(f"/v1/models/{name}:predict", json={"instances": rows})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


LIVE = _data(seed=1, n=20)[0].tolist()


# -- (a) inputs as people have them ---------------------------------------------------------------

@pytest.mark.parametrize("input_kind", ["array", "rows", "frame"])
def test_observe_batch_counts_numpy_rows_and_dataframes_by_the_reference_feature_order(input_kind):
    if input_kind == "frame":
        pytest.importorskip("pandas")
    app = create_app(input_kind=input_kind)
    predict(app, "glucose", LIVE)
    for feature in FEATURES:
        assert total(app, "mlmonitor_feature_bin_total", model_name="glucose", feature=feature) == 20
        assert value(app, "mlmonitor_feature_missing_total", model_name="glucose", model_version="v1",
                     feature=feature) == 0
    assert total(app, "mlmonitor_prediction_bin_total", model_name="glucose") == 20
    assert value(app, "mlmonitor_internal_errors_total", component="observe") == 0


def test_feature_names_name_the_columns_of_an_array():
    app = create_app(feature_names=["bp", "bmi", "age"])  # the caller's column order
    predict(app, "glucose", [[1e6, 26.0, -1e6]])  # age -1e6, bp 1e6: the extreme bins
    assert value(app, "mlmonitor_feature_bin_total", model_name="glucose", model_version="v1",
                 feature="age", bin="00") == 1
    assert value(app, "mlmonitor_feature_bin_total", model_name="glucose", model_version="v1",
                 feature="bp", bin="09") == 1


def test_unreadable_features_still_count_the_predictions_and_count_features_missing():
    app = Flask(__name__)
    registry = CollectorRegistry()
    monitor = Monitor(app, registry=registry, log_stream=io.StringIO(), traces=False,
                      model_name="m", model_version="v1",
                      reference=build_profile({"a": list(range(100))}))

    @app.post("/p")
    @monitor.prediction
    def p():
        monitor.observe_batch(features=object(), predictions=np.array([1.5, 2.5]))
        monitor.observe(features=np.array([3.0]), prediction=np.float64(40.0))
        return "ok"

    assert app.test_client().post("/p").status_code == 200
    assert registry.get_sample_value("mlmonitor_predicted_class_total",
                                     {"model_name": "m", "model_version": "v1", "class": "other"}) == 3
    # the one-value row is named by the reference ("a"); the unreadable batch counts missing
    assert registry.get_sample_value("mlmonitor_feature_missing_total",
                                     {"model_name": "m", "model_version": "v1", "feature": "a"}) == 2
    assert sum(registry.get_sample_value("mlmonitor_feature_bin_total",
                                         {"model_name": "m", "model_version": "v1", "feature": "a",
                                          "bin": f"{i:02d}"}) or 0 for i in range(10)) == 1


# -- (b) feature names that do not match ----------------------------------------------------------

def test_unknown_feature_names_count_without_a_name_label_and_absent_ones_count_missing(caplog):
    app = Flask(__name__)
    registry = CollectorRegistry()
    monitor = Monitor(app, registry=registry, log_stream=io.StringIO(), traces=False,
                      model_name="m", model_version="v1",
                      reference=build_profile({"Chins": list(range(100)),
                                               "Weight": list(range(100))}))

    @app.post("/p")
    @monitor.prediction
    def p():
        monitor.observe(features={"chins": 5, "Weight": 50})
        monitor.observe_batch(features=[{"chins": 1, "Weight": 1}, {f"x-{i}": 1 for i in range(3)}])
        return "ok"

    with caplog.at_level(logging.WARNING, logger="mlmonitor"):
        assert app.test_client().post("/p").status_code == 200
        assert app.test_client().post("/p").status_code == 200
    labels = {"model_name": "m", "model_version": "v1"}
    assert registry.get_sample_value("mlmonitor_feature_unknown_total", labels) == 2 * 5
    assert registry.get_sample_value("mlmonitor_feature_missing_total",
                                     {**labels, "feature": "Chins"}) == 2 * 3
    assert registry.get_sample_value("mlmonitor_feature_missing_total",
                                     {**labels, "feature": "Weight"}) == 2 * 1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert text.count("'chins'") == 1  # once per process, naming it
    scraped = app.test_client().get("/metrics").get_data(as_text=True)
    assert "chins" not in scraped and "x-0" not in scraped


# -- (c) a callable model name, per request -------------------------------------------------------

def test_callable_model_name_is_evaluated_per_request():
    app = create_app()
    predict(app, "glucose", LIVE[:2])
    predict(app, "pressure", LIVE[:3])
    assert value(app, "mlmonitor_predictions_total", model_name="glucose", model_version="v1") == 1
    assert value(app, "mlmonitor_predictions_total", model_name="pressure", model_version="v1") == 1
    assert total(app, "mlmonitor_prediction_bin_total", model_name="pressure") == 3
    scraped = app.test_client().get("/metrics").get_data(as_text=True)
    assert "<function" not in scraped
    assert total(app, "mlmonitor_internal_errors_total") == 0


@pytest.mark.internal_errors_expected
def test_a_failing_model_name_callable_counts_a_fault_and_the_default_model():
    app = Flask(__name__)
    registry = CollectorRegistry()
    monitor = Monitor(app, registry=registry, log_stream=io.StringIO(), traces=False,
                      model_name="fallback", model_version="v1")

    @app.post("/p")
    @monitor.prediction(model_name=lambda: 1 / 0)
    def p():
        return "ok"

    assert app.test_client().post("/p").status_code == 200
    assert registry.get_sample_value("mlmonitor_predictions_total",
                                     {"model_name": "fallback", "model_version": "v1"}) == 1
    assert registry.get_sample_value("mlmonitor_internal_errors_total",
                                     {"component": "model_name"}) == 1


# -- (d) regression ------------------------------------------------------------------------------

def test_regression_reference_exports_output_shares_and_mae():
    app = create_app()
    X, y = _data()
    mae = float(np.mean(np.abs(LinearRegression().fit(X, y).predict(X) - y)))
    labels = {"model_name": "glucose", "model_version": "v1"}
    predict(app, "glucose", X[:40].tolist())  # exported once the version serves
    assert value(app, "mlmonitor_reference_absolute_error", **labels) == pytest.approx(mae)
    assert total(app, "mlmonitor_prediction_reference_ratio", **labels) == pytest.approx(1.0)
    assert total(app, "mlmonitor_prediction_bin_total", **labels) == 40
    live = LinearRegression().fit(X, y).predict(X[:40])
    profile = app.extensions["mlmonitor"].references["glucose"]
    for label in {profile.output_bin_of(v) for v in live}:  # each by the reference's edges
        assert value(app, "mlmonitor_prediction_bin_total", bin=label, **labels) == \
            sum(profile.output_bin_of(v) == label for v in live)
    assert total(app, "mlmonitor_predicted_class_total", **labels) == 0  # no float "classes"


def test_regression_feedback_records_the_absolute_error():
    app = create_app()
    answer = predict(app, "glucose", LIVE[:1])
    prediction, token = answer["predictions"][0], answer["ids"][0]
    response = app.test_client().post("/feedback", json={"id": token, "label": prediction + 2.5})
    assert response.get_json()["result"] == pytest.approx(2.5)
    labels = {"model_name": "glucose", "model_version": "v1"}
    assert value(app, "mlmonitor_feedback_absolute_error_count", **labels) == 1
    assert value(app, "mlmonitor_feedback_absolute_error_sum", **labels) == pytest.approx(2.5)
    assert value(app, "mlmonitor_feedback_absolute_error_bucket", le="5.0", **labels) == 1
    assert value(app, "mlmonitor_feedback_absolute_error_bucket", le="2.0", **labels) == 0
    assert total(app, "mlmonitor_feedback_total", **labels) == 0  # no exact-equality outcome


def test_a_classification_reference_refuses_fractional_classes():
    with pytest.raises(InvalidReference, match="regression"):
        build_profile({"a": [1.0, 2.0]}, predictions=[0.5, 1.5], task="classification")
    profile = build_profile({"a": list(range(60))}, predictions=[i % 3 for i in range(60)])
    assert profile.task == "classification" and not profile.regression


def _cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", "reference", *map(str, args)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_builds_a_regression_reference_from_a_csv(tmp_path):
    X, y = _data(n=300)
    y_hat = LinearRegression().fit(X, y).predict(X)
    path = tmp_path / "diabetes.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FEATURES + ["y", "y_hat"])
        for row, label, pred in zip(X, y, y_hat):
            writer.writerow([*row, label, pred])
    out = tmp_path / "reference.json"
    built = _cli("build", "--csv", path, "--label-column", "y", "--prediction-column", "y_hat",
                 "--out", out, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    profile = ReferenceProfile.load(out)
    assert profile.task == "regression"
    assert profile.mae == pytest.approx(float(np.mean(np.abs(y_hat - y))), rel=1e-6)
    assert len(list(profile.output_ratios())) == 10
    assert profile.to_dict()["classes"] is None and profile.accuracy is None
    shown = _cli("show", out, cwd=tmp_path)
    assert "task: regression" in shown.stdout and "mean absolute error" in shown.stdout

    small = tmp_path / "small.csv"
    small.write_text("a,y\n" + "".join(f"{i},{i + 0.5}\n" for i in range(20)))
    refused = _cli("build", "--csv", small, "--label-column", "y", "--task", "classification",
                   "--out", tmp_path / "r.json", cwd=tmp_path)
    assert refused.returncode != 0 and "regression" in refused.stderr
    warned = _cli("build", "--csv", small, "--label-column", "y", "--out", tmp_path / "r.json",
                  cwd=tmp_path)
    assert warned.returncode == 0 and "only 20 reference rows" in warned.stderr
