"""The traffic generator's plan and guards (no server needed)."""
from __future__ import annotations

import pytest

from example_app import loadgen, model


def opts(**kw):
    return loadgen.Options(**kw)


def test_plan_is_fixed_by_the_seed():
    a = loadgen.plan(opts(requests=50, invalid_fraction=0.2, error_fraction=0.1, seed=4))
    b = loadgen.plan(opts(requests=50, invalid_fraction=0.2, error_fraction=0.1, seed=4))
    assert [(p.kind, p.body, p.headers) for p in a] == [(p.kind, p.body, p.headers) for p in b]


def test_plan_has_exact_counts_of_each_kind():
    items = loadgen.plan(opts(requests=200, invalid_fraction=0.1, error_fraction=0.05, slow_fraction=0.025))
    kinds = [p.kind for p in items]
    assert (kinds.count("invalid"), kinds.count("error"), kinds.count("slow"), kinds.count("ok")) == (20, 10, 5, 165)
    assert all(p.headers.get("X-Fail") == "1" for p in items if p.kind == "error")
    assert all("X-Slow" in p.headers for p in items if p.kind == "slow")


def test_feedback_accuracy_is_exact_over_valid_requests():
    items = loadgen.plan(opts(requests=101, invalid_fraction=0.1, feedback_accuracy=0.7, seed=2))
    valid = [p for p in items if p.kind in ("ok", "slow")]
    assert sum(p.feedback_correct for p in valid) == round(0.7 * len(valid))
    assert all(p.feedback_correct is None for p in items if p.kind == "invalid")


def test_drift_shifts_by_the_reference_std():
    stats = model.feature_stats()
    plain = loadgen.plan(opts(requests=20, seed=1))
    shifted = loadgen.plan(opts(requests=20, seed=1, drift={"petal_length_cm": 2.0}))
    for a, b in zip(plain, shifted):
        delta = b.body["features"]["petal_length_cm"] - a.body["features"]["petal_length_cm"]
        assert delta == pytest.approx(2.0 * stats["petal_length_cm"][1], abs=1e-3)
        assert b.body["features"]["sepal_length_cm"] == a.body["features"]["sepal_length_cm"]


def test_forced_version_is_sent_as_a_header():
    assert all(p.headers["X-Model-Version"] == "v2" for p in loadgen.plan(opts(requests=5, version="v2")))


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:1", "http://[::1]:8000/"])
def test_loopback_urls_are_accepted(url):
    assert loadgen.check_url(url, allow_remote=False) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:8000"])
def test_other_hosts_are_refused_unless_allowed(url):
    with pytest.raises(ValueError, match="non-loopback"):
        loadgen.check_url(url, allow_remote=False)
    assert loadgen.check_url(url, allow_remote=True)


@pytest.mark.parametrize("kw, message", [
    ({"invalid_fraction": 0.7, "error_fraction": 0.5}, "must not exceed 1"),
    ({"requests": 0}, "--requests must be between"),
    ({"requests": loadgen.MAX_REQUESTS + 1}, "--requests must be between"),
    ({"concurrency": 1000}, "--concurrency must be between"),
    ({"feedback_accuracy": 1.5}, "--feedback-accuracy must be between 0 and 1"),
    ({"drift": {"colour": 1.0}}, "unknown feature"),
    ({"rate": -1}, "--rate must be >= 0"),
])
def test_bad_options_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        loadgen.plan(opts(**kw))


def test_cli_refuses_a_remote_url_with_exit_code_2(capsys):
    assert loadgen.main(["--url", "http://192.0.2.1:8000", "--requests", "1"]) == 2
    assert "pass --allow-remote" in capsys.readouterr().err


# -- the regression model (--model diabetes) ---------------------------------------------------------

def test_diabetes_plan_draws_diabetes_rows_with_their_true_values():
    rows, targets = model.regression_rows()
    items = loadgen.plan(opts(requests=30, model="diabetes", seed=3))
    for p in items:
        index = rows.index(p.body["features"])
        assert p.target == targets[index]


def test_diabetes_drift_shifts_by_the_reference_std():
    stats = model.feature_stats("diabetes")
    plain = loadgen.plan(opts(requests=20, seed=1, model="diabetes"))
    shifted = loadgen.plan(opts(requests=20, seed=1, model="diabetes", drift={"bmi": 2.0}))
    for a, b in zip(plain, shifted):
        assert b.body["features"]["bmi"] - a.body["features"]["bmi"] == pytest.approx(2.0 * stats["bmi"][1], abs=1e-3)
        assert b.body["features"]["age"] == a.body["features"]["age"]
    with pytest.raises(ValueError, match="unknown feature"):
        loadgen.plan(opts(requests=5, model="diabetes", drift={"petal_length_cm": 1.0}))


def test_mismatch_requests_rename_exactly_one_feature():
    features = set(model.diabetes_dataset().features)
    items = loadgen.plan(opts(requests=100, model="diabetes", mismatch_fraction=0.1, invalid_fraction=0.1))
    mismatched = [p for p in items if p.kind == "mismatch"]
    assert len(mismatched) == 10
    for p in mismatched:
        sent = set(p.body["features"])
        assert len(features - sent) == 1 and sent - features == {(features - sent).pop().upper()}
    # diabetes accepts missing and unknown features: its invalid bodies are the ones it refuses
    for p in items:
        if p.kind == "invalid" and isinstance(p.body, dict) and isinstance(p.body.get("features"), dict):
            assert set(p.body["features"]) == features


def test_mismatch_is_refused_for_iris():
    with pytest.raises(ValueError, match="--mismatch-fraction needs --model diabetes"):
        loadgen.plan(opts(requests=5, mismatch_fraction=0.1))


def test_regression_feedback_labels_are_the_truth_or_far_from_it():
    items = loadgen.plan(opts(requests=40, model="diabetes", feedback_accuracy=0.5, seed=2))
    assert sum(p.feedback_correct for p in items) == 20
    rng = __import__("random").Random(0)
    for p in items:
        label = loadgen._label(p, 100.0, rng, (), miss=231.0)
        assert label == (p.target if p.feedback_correct else pytest.approx(p.target + 231.0, abs=1e-3))


def test_iris_keeps_its_routes_and_diabetes_gets_the_multi_model_ones():
    assert loadgen._paths("iris") == ("/predict", "/feedback")
    assert loadgen._paths("diabetes") == ("/v1/models/diabetes:predict", "/v1/models/diabetes:feedback")
