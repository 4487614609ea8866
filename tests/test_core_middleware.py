"""The pure WSGI middleware with a plain WSGI callable, no Flask."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from werkzeug.test import Client

import mlmonitor
from helpers.doubles import Doubles
from mlmonitor import MonitorMiddleware

from conftest import require_binary


def plain_app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/predict":
        with mlmonitor.stage("inference"):
            mlmonitor.observe(prediction="cat", score=0.9, tokens_in=12, tokens_out=3, cost=0.002)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"label": "cat"}']
    if path == "/explode":
        raise KeyError("boom")
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"nope"]


class ClosingBody:
    def __init__(self):
        self.closed = False

    def __iter__(self):
        yield b"a"
        yield b"b"

    def close(self):
        self.closed = True


def build(app=plain_app, **options):
    d = Doubles()
    options.setdefault("prediction_paths", ["/predict"])
    wrapped = MonitorMiddleware(app, model_name="pets", model_version="v3", **d.monitor_options,
                                **options)
    return wrapped, d.registry, d.exporter, d.logs


def test_prediction_path_is_counted_with_model_labels():
    wrapped, registry, exporter, logs = build()
    client = Client(wrapped)
    response = client.post("/predict", buffered=True)
    assert response.status_code == 200 and response.get_data() == b'{"label": "cat"}'
    labels = {"model_name": "pets", "model_version": "v3"}
    assert registry.get_sample_value("mlmonitor_predictions_total", labels) == 1
    assert registry.get_sample_value("mlmonitor_predicted_class_total", {**labels, "class": "cat"}) == 1
    assert registry.get_sample_value("mlmonitor_prediction_score_count", labels) == 1
    assert registry.get_sample_value("mlmonitor_tokens_total", {**labels, "direction": "input"}) == 12
    assert registry.get_sample_value("mlmonitor_cost_total", labels) == pytest.approx(0.002)
    assert registry.get_sample_value("mlmonitor_stage_duration_seconds_count",
                                     {**labels, "stage": "inference"}) == 1
    line = json.loads(logs.getvalue())
    assert line["route"] == "/predict" and line["model_version"] == "v3"
    assert {s.name for s in exporter.get_finished_spans()} == {"POST /predict", "inference"}


def test_unknown_path_collapses_to_one_route_value():
    wrapped, registry, _, _ = build()
    client = Client(wrapped)
    for i in range(20):
        client.get(f"/random/{i}", buffered=True)
    assert registry.get_sample_value(
        "mlmonitor_http_requests_total",
        {"method": "GET", "route": "<unmatched>", "status": "404"}) == 20


def test_app_exception_passes_through_untouched_and_is_counted_once():
    wrapped, registry, exporter, logs = build(prediction_paths=["/explode"])
    with pytest.raises(KeyError, match="boom"):
        Client(wrapped).get("/explode", buffered=True)
    labels = {"model_name": "pets", "model_version": "v3", "error_type": "KeyError"}
    assert registry.get_sample_value("mlmonitor_prediction_errors_total", labels) == 1
    [line] = logs.getvalue().splitlines()
    assert json.loads(line)["status"] == 500


def test_body_close_is_always_called_and_the_record_finished_then():
    body = ClosingBody()

    def app(environ, start_response):
        start_response("200 OK", [])
        return body

    wrapped, registry, _, _ = build(app)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/predict", "wsgi.url_scheme": "http"}
    result = wrapped(environ, lambda status, headers, exc_info=None: None)
    assert list(result) == [b"a", b"b"]
    labels = {"model_name": "pets", "model_version": "v3"}
    assert registry.get_sample_value("mlmonitor_predictions_total", labels) == 0  # not yet closed
    result.close()
    assert body.closed
    assert registry.get_sample_value("mlmonitor_predictions_total", labels) == 1


def test_request_id_header_is_added_once():
    wrapped, *_ = build()
    response = Client(wrapped).post("/predict", headers={"X-Request-ID": "abc-1"}, buffered=True)
    assert response.headers.getlist("X-Request-ID") == ["abc-1"]


def test_in_progress_returns_to_zero():
    wrapped, registry, _, _ = build()
    Client(wrapped).post("/predict", buffered=True)
    assert registry.get_sample_value("mlmonitor_http_requests_in_progress",
                                     {"method": "POST", "route": "/predict"}) == 0


def test_exposition_passes_promtool_check_metrics():
    promtool = require_binary("promtool")
    wrapped, *_ = build()
    client = Client(wrapped)
    client.post("/predict", buffered=True)
    client.get("/missing", buffered=True)
    text = client.get("/metrics", buffered=True).get_data()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    # promtool exits 0 when clean; lint output (if any) names the offending metric
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_a_deleted_multiprocess_directory_does_not_stop_a_worker_from_booting(tmp_path):
    gone = tmp_path / "deleted-under-us"
    code = ("from tests.apps.simple_app import app; c = app.test_client(); "
            "assert c.post('/predict', json={}, buffered=True).status_code == 200; "
            "assert b'mlmonitor_predictions_total' in c.get('/metrics', buffered=True).data")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(gone)})
    assert gone.is_dir() and (gone.stat().st_mode & 0o777) == 0o700


def test_merging_a_corrupted_dead_worker_file_neither_hangs_nor_loses_good_counts(tmp_path):
    # a negative entry length makes prometheus-client's reader loop forever
    bad = bytearray(4096)
    bad[0:4] = (64).to_bytes(4, "little")
    bad[8:12] = (-24).to_bytes(4, "little", signed=True)
    (tmp_path / "bad.bin").write_bytes(bytes(bad))
    code = ("import os, shutil, sys; from mlmonitor.gunicorn import merge_dead_worker; "
            "shutil.copy(os.path.join(sys.argv[1], 'bad.bin'), "
            "os.path.join(sys.argv[1], 'counter_4242.db')); "  # after the import's clean-up
            "from prometheus_client import Counter; "
            "Counter('kept', 'a good count').inc(3); "
            "merge_dead_worker(os.getpid(), sys.argv[1]); "
            "print(merge_dead_worker(4242, sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                            text=True, timeout=30,
                            env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # the bad file is gone
    assert "counter_4242.db: bad entry length" in result.stderr
    from prometheus_client.mmap_dict import MmapedDict
    merged = MmapedDict.read_all_values_from_file(str(tmp_path / "counter_merged.db"))
    assert [value for key, value, _, _ in merged if '"kept_total"' in key] == [3.0]
