"""Feedback labels that cannot be counted (issue 24, defects 2 and 7a): a regression label is a true
value, a finite number within MAX_OBSERVED, or the feedback is refused as ``bad_label``, counted in
``mlmonitor_feedback_rejected_total`` and raised as a ValueError, whatever fails converting it. One
hostile label can then no longer absorb every later error in the absolute error's sum (live MAE 0,
``MLModelAbsoluteErrorHigh`` silenced) or make it +Inf."""
from __future__ import annotations

import io
import math
import random
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from example_app import model
from example_app.app import create_app
from helpers.gunicorn_proc import GunicornProcess, http_get, post_json
from mlmonitor.config import MAX_OBSERVED, Settings, number_in
from mlmonitor.feedback import FeedbackRecorder
from mlmonitor.metrics import MetricsSink
from mlmonitor.tools.profiling import build_profile
from mlmonitor.tokens import FEEDBACK_REASONS, InvalidFeedback

SECRET = "feedback-bounds-secret-0123456789abcdef"
ROWS, TARGETS = model.regression_rows()
DIABETES = {"model_name": "diabetes", "model_version": "v2"}
MODEL = {"model_name": "m", "model_version": "v"}


class _Fails:
    def __float__(self):
        raise RuntimeError("no float")

    def __str__(self):
        raise RuntimeError("no text")

    __repr__ = __str__


# -- the library: any label that cannot be a true value is bad_label ------------------------------

@pytest.fixture
def sink():
    registry = CollectorRegistry()
    profile = build_profile({"a": [float(i) for i in range(40)]},
                            predictions=[float(i) for i in range(40)],
                            labels=[float(i) + 1.0 for i in range(40)], task="regression")
    assert profile.regression
    sink = MetricsSink(Settings(model_name="m", model_version="v"), registry, {"m": profile})
    sink.registry = registry
    return sink


def value(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def recorder(metrics):
    return FeedbackRecorder(Settings(feedback_secret=SECRET), metrics)


@pytest.mark.parametrize("label", [
    1e300, -1e300, 1.7e308, MAX_OBSERVED * 1.000001, -MAX_OBSERVED * 2, float("nan"), float("inf"),
    float("-inf"), True, False, None, "1e300", "nan", "inf", "abc", "", 10**400, -(10**400), 10**5000,
    Decimal("1e400"), Decimal("sNaN"), [1.0], {"v": 1.0}, _Fails(),
], ids=lambda v: type(v).__name__ + ":" + (repr(v)[:12] if not isinstance(v, (_Fails, int)) else "x"))
def test_a_regression_label_that_is_not_a_bounded_number_is_refused_and_counted(sink, label):
    feedback = recorder(sink)
    with pytest.raises(InvalidFeedback) as info:
        feedback.record(feedback.sign("m", "v", 20.0), label)
    assert isinstance(info.value, ValueError) and info.value.reason == "bad_label"
    assert str(info.value).startswith("bad_label: the label must be a finite number")
    assert len(str(info.value)) < 160  # a 5000-digit label is not echoed
    assert value(sink.registry, "mlmonitor_feedback_rejected_total", reason="bad_label") == 1
    assert value(sink.registry, "mlmonitor_feedback_absolute_error_count", **MODEL) == 0


@pytest.mark.parametrize("label, error", [
    (-0.0, 20.0), (0, 20.0), (MAX_OBSERVED, MAX_OBSERVED - 20.0), (-MAX_OBSERVED, MAX_OBSERVED),
    ("25.5", 5.5), (Decimal("17"), 3.0),
])
def test_a_bounded_regression_label_is_counted(sink, label, error):
    feedback = recorder(sink)
    assert feedback.record(feedback.sign("m", "v", 20.0), label) == error
    assert value(sink.registry, "mlmonitor_feedback_absolute_error_count", **MODEL) == 1
    assert value(sink.registry, "mlmonitor_feedback_absolute_error_sum", **MODEL) == error
    assert value(sink.registry, "mlmonitor_feedback_rejected_total", reason="bad_label") == 0


def test_a_refused_label_does_not_use_the_id_up(sink):
    feedback = recorder(sink)
    token = feedback.sign("m", "v", 20.0)
    with pytest.raises(InvalidFeedback):
        feedback.record(token, float("nan"))
    assert feedback.record(token, 22.0) == 2.0
    with pytest.raises(InvalidFeedback) as info:
        feedback.record(token, 22.0)
    assert info.value.reason == "duplicate"


@pytest.mark.parametrize("predicted", [1e300, float("nan"), "not a number"])
def test_a_prediction_beyond_the_bound_counts_as_the_largest_error_not_infinity(sink, predicted):
    """The model's own wild output is its fault, not the client's: counted, and bounded."""
    feedback = recorder(sink)
    assert feedback.record(feedback.sign("m", "v", predicted), 1.0) == MAX_OBSERVED
    assert value(sink.registry, "mlmonitor_feedback_absolute_error_sum", **MODEL) == MAX_OBSERVED


def test_honest_errors_after_hostile_labels_still_move_the_sum(sink):
    feedback = recorder(sink)
    for label in (1e300, 1.7e308, 1.7e308, MAX_OBSERVED):
        try:
            feedback.record(feedback.sign("m", "v", 0.0), label)
        except InvalidFeedback:
            pass
    before = value(sink.registry, "mlmonitor_feedback_absolute_error_sum", **MODEL)
    for _ in range(100):
        feedback.record(feedback.sign("m", "v", 10.0), 15.0)
    after = value(sink.registry, "mlmonitor_feedback_absolute_error_sum", **MODEL)
    assert math.isfinite(after) and after - before == pytest.approx(500.0)
    assert value(sink.registry, "mlmonitor_feedback_rejected_total", reason="bad_label") == 3


def test_a_classification_label_that_cannot_be_compared_is_bad_label_not_a_raw_error():
    registry = CollectorRegistry()
    feedback = recorder(MetricsSink(Settings(model_name="m", model_version="v"), registry))
    for label in (10**5000, _Fails()):  # str() past the digit limit; a failing __str__
        with pytest.raises(InvalidFeedback) as info:
            feedback.record(feedback.sign("m", "v", "cat"), label)
        assert info.value.reason == "bad_label"
    assert value(registry, "mlmonitor_feedback_rejected_total", reason="bad_label") == 2
    assert feedback.record(feedback.sign("m", "v", "cat"), "cat") == "correct"


def test_rejected_reasons_are_a_bounded_set(sink):
    sink.count_feedback_rejected("anything a caller made up")
    reasons = {s.labels["reason"] for m in sink.registry.collect() for s in m.samples
               if s.name == "mlmonitor_feedback_rejected_total"}
    assert reasons <= set(FEEDBACK_REASONS) and "bad_label" in FEEDBACK_REASONS


@pytest.mark.parametrize("number", [10**400, Decimal("sNaN"), _Fails(), "1e999"],
                         ids=["400-digit-int", "sNaN", "failing-float", "1e999-text"])
def test_number_in_says_no_to_any_conversion_failure(number):
    assert number_in(number, 0.0, MAX_OBSERVED) is False


# -- the example app: the client's view ------------------------------------------------------------

@pytest.fixture
def app():
    registry = CollectorRegistry()
    app = create_app({"MONITOR_OPTIONS": {"registry": registry, "log_stream": io.StringIO()},
                      "MLMONITOR_FEEDBACK_SECRET": SECRET, "MLMONITOR_TRACES": False,
                      "CANARY_RNG": random.Random(0)})
    app.registry = registry
    return app


def _predict(client):
    response = client.post("/v1/models/diabetes:predict", json={"features": ROWS[0]},
                           headers={"X-Model-Version": "v2"}, buffered=True)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    return body["prediction"], body["prediction_id"]


def test_example_app_refuses_a_hostile_label_and_honest_feedback_still_moves_the_mae(app):
    client = app.test_client()
    _, pid = _predict(client)
    answer = client.post("/v1/models/diabetes:feedback", json={"prediction_id": pid, "label": 1e300})
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith("'label' rejected: bad_label: the label must be a finite number")
    assert value(app.registry, "mlmonitor_feedback_rejected_total", reason="bad_label") == 1
    for _ in range(100):
        predicted, pid = _predict(client)
        ok = client.post("/v1/models/diabetes:feedback", json={"prediction_id": pid, "label": predicted + 5})
        assert ok.status_code == 200
    total = value(app.registry, "mlmonitor_feedback_absolute_error_sum", **DIABETES)
    count = value(app.registry, "mlmonitor_feedback_absolute_error_count", **DIABETES)
    assert count == 100 and total / count == pytest.approx(5.0)
    assert b"+Inf" not in generate_latest(app.registry).split(b"mlmonitor_feedback_absolute_error_sum")[1][:80]


# -- a real gunicorn with several workers and the shared multiprocess storage ----------------------

def _scrape(url):
    status, text = http_get(url + "/metrics")
    assert status == 200, text[:300]
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("mlmonitor_feedback_absolute_error_sum", "mlmonitor_feedback_absolute_error_count") \
                    and s.labels.get("model_name") == "diabetes":
                out[s.name] = out.get(s.name, 0.0) + s.value
            elif s.name == "mlmonitor_feedback_rejected_total":
                out[s.labels["reason"]] = s.value
    return out


@pytest.mark.slow
def test_under_gunicorn_hostile_labels_are_refused_and_the_live_mae_still_moves(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "MLMONITOR_TRACES": "false"}
    with GunicornProcess(workers=2, env=env) as server:
        def predict():
            status, body = post_json(server.url + "/v1/models/diabetes:predict", {"features": ROWS[0]})
            assert status == 200, body
            return body["prediction"], body["prediction_id"]

        for label in (1e300, 1.7e308, 1.7e308, -1e300):
            status, body = post_json(server.url + "/v1/models/diabetes:feedback",
                                {"prediction_id": predict()[1], "label": label})
            assert status == 400 and "bad_label" in body["error"], body
        before = _scrape(server.url)
        for _ in range(40):
            predicted, pid = predict()
            status, body = post_json(server.url + "/v1/models/diabetes:feedback",
                                {"prediction_id": pid, "label": predicted + 5})
            assert status == 200, body
        after = _scrape(server.url)
    assert before.get("bad_label") == after.get("bad_label") == 4
    moved = after["mlmonitor_feedback_absolute_error_sum"] - before.get("mlmonitor_feedback_absolute_error_sum", 0)
    counted = after["mlmonitor_feedback_absolute_error_count"] - before.get("mlmonitor_feedback_absolute_error_count", 0)
    assert counted == 40 and moved / counted == pytest.approx(5.0)
