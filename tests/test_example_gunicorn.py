"""The example app under real gunicorn (4 workers): the loadgen's summary equals the scraped counters."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.gunicorn_proc import REPO, GunicornProcess, http_get

pytestmark = pytest.mark.slow

SECRET = "gunicorn-test-secret-0123456789abcdef"


def scrape(url):
    status, text = http_get(url + "/metrics")
    assert status == 200, text[:500]
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append(sample)
    return samples


def totals(samples, name, *labels, **match):
    out = defaultdict(float)
    for s in samples[name]:
        if all(s.labels.get(k) == v for k, v in match.items()):
            out[tuple(s.labels[label] for label in labels)] += s.value
    return {k if len(k) > 1 else k[0]: int(v) for k, v in out.items() if v}


class Delta:
    """Counters moved since the last ``take()``: the tests share one server."""

    def __init__(self, url):
        self.url = url
        self.before = scrape(url)

    def take(self):
        """Scrape once the counts are still: a request is counted when the server closes its
        body, just after the client has the answer, so the last ones may land a moment later."""
        deadline = time.monotonic() + 10
        self.after = scrape(self.url)
        while time.monotonic() < deadline:
            time.sleep(0.2)
            again = scrape(self.url)
            idle = not any(s.value for s in again["mlmonitor_http_requests_in_progress"])
            same = totals(again, "mlmonitor_http_requests_total", "status") == \
                totals(self.after, "mlmonitor_http_requests_total", "status")
            self.after = again
            if idle and same:
                return

    def __call__(self, name, *labels, **match):
        old = totals(self.before, name, *labels, **match)
        new = totals(self.after, name, *labels, **match)
        return {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0)}


def run_loadgen(url, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "example_app.loadgen", "--url", url, "--json", *args],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    prom = tmp_path_factory.mktemp("prom")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom), "MLMONITOR_FEEDBACK_SECRET": SECRET,
           "CANARY_FRACTION": "0.3", "MLMONITOR_TRACES": "false"}
    with GunicornProcess(workers=4, env=env) as proc:
        yield proc


def test_loadgen_summary_matches_the_scraped_counters_exactly(server):
    delta = Delta(server.url)
    summary = run_loadgen(
        server.url, "--requests", "400", "--concurrency", "8", "--invalid-fraction", "0.1",
        "--error-fraction", "0.05", "--slow-fraction", "0.02", "--slow-seconds", "0.05",
        "--drift", "petal_length_cm:1.0", "--feedback-accuracy", "0.8", "--seed", "3")
    assert summary["transport_errors"] == 0
    assert summary["requests"] == 400
    assert summary["by_status"] == {"200": 340, "400": 40, "500": 20}

    delta.take()
    assert delta("mlmonitor_http_requests_total", "status", route="/predict") == summary["by_status"]
    predictions = delta("mlmonitor_predictions_total", "model_version", model_name="iris")
    assert predictions == {v: s["requests"] for v, s in summary["by_version"].items()}
    assert set(predictions) == {"v1", "v2"}  # the canary split reached both versions

    feedback = delta("mlmonitor_feedback_total", "model_version", "outcome", model_name="iris")
    expected = {(v, outcome): n for v, counts in summary["feedback"].items() for outcome, n in counts.items() if n}
    assert feedback == expected
    # exactly round(0.8 * 340) correct labels, however the requests were spread over workers
    assert sum(n for (_, outcome), n in feedback.items() if outcome == "correct") == 272
    assert summary["feedback_status"] == {"200": 340}
    assert delta("mlmonitor_http_requests_total", "status", route="/feedback") == {"200": 340}

    errors = delta("mlmonitor_prediction_errors_total", "error_type", model_name="iris")
    assert errors == {"invalid_input": 40, "InjectedFailure": 20}


def test_forced_version_sends_everything_to_that_version(server):
    delta = Delta(server.url)
    summary = run_loadgen(server.url, "--requests", "60", "--version", "v2", "--seed", "5")
    assert summary["by_version"] == {"v2": {"requests": 60, "by_status": {"200": 60}, "predictions": 60}}
    delta.take()
    assert delta("mlmonitor_predictions_total", "model_version") == {"v2": 60}


def test_every_prediction_logs_one_json_line_on_stdout(server):
    def predict_lines():
        return [line for line in server.json_lines() if line.get("route") == "/predict"]

    before = len(predict_lines())
    run_loadgen(server.url, "--requests", "120", "--concurrency", "8", "--seed", "9")
    deadline = time.monotonic() + 10  # the reader thread may still be on the last lines
    while len(predict_lines()) < before + 120 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = predict_lines()[before:]
    assert len(lines) == 120
    assert {line["model_version"] for line in lines} <= {"v1", "v2"}


def test_diabetes_loadgen_summary_matches_the_scraped_counters_exactly(server):
    """The regressor behind /v1/models/diabetes:predict: predictions per version, output bins,
    feedback as absolute errors, and renamed columns as missing + unknown features, exactly."""
    delta = Delta(server.url)
    summary = run_loadgen(
        server.url, "--model", "diabetes", "--requests", "200", "--concurrency", "8",
        "--invalid-fraction", "0.1", "--error-fraction", "0.05", "--mismatch-fraction", "0.1",
        "--drift", "bmi:2", "--feedback-accuracy", "0.5", "--seed", "4")
    assert summary["transport_errors"] == 0
    assert summary["by_status"] == {"200": 170, "400": 20, "500": 10}
    assert summary["by_kind"] == {"error": 10, "invalid": 20, "mismatch": 20, "ok": 150}

    delta.take()
    route = "/v1/models/<name>:predict"
    assert delta("mlmonitor_http_requests_total", "status", route=route) == summary["by_status"]
    predictions = delta("mlmonitor_predictions_total", "model_version", model_name="diabetes")
    assert predictions == {v: s["requests"] for v, s in summary["by_version"].items()}
    assert set(predictions) == {"v1", "v2"}
    binned = delta("mlmonitor_prediction_bin_total", "model_version", model_name="diabetes")
    assert binned == {v: s["predictions"] for v, s in summary["by_version"].items()}
    feedback = delta("mlmonitor_feedback_absolute_error_count", "model_version", model_name="diabetes")
    assert feedback == {v: c["correct"] + c["incorrect"] for v, c in summary["feedback"].items()}
    assert summary["feedback_status"] == {"200": 170}
    assert delta("mlmonitor_feature_unknown_total", "model_version", model_name="diabetes") and \
        sum(delta("mlmonitor_feature_unknown_total", "model_version", model_name="diabetes").values()) == 20
    # each renamed column is missing once under its own name
    assert sum(delta("mlmonitor_feature_missing_total", "feature", model_name="diabetes").values()) == 20
    assert delta("mlmonitor_predictions_total", "model_version", model_name="iris") == {}
