"""Nothing lost (issue 9, items 11-12): counters == log lines == spans under 4 gunicorn workers,
no request context leaking between gthread threads, and a graceful shutdown under load that
delivers the span and log line of every answered request."""
from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.gunicorn_proc import GunicornProcess, http_get
from tests.helpers.otlp import OTLPReceiver

pytestmark = pytest.mark.slow

WORKERS = 4


def create_tag_app():
    """gunicorn factory: a view that tags its request and reports the tags it then sees."""
    import time as _time

    from flask import Flask, jsonify, request

    from mlmonitor import Monitor, current_record

    app = Flask(__name__)
    monitor = Monitor(app, model_name="tags", model_version="v1")

    @app.post("/tagged")
    @monitor.prediction
    def tagged():
        mine = request.headers["X-Tag"]
        monitor.tag(client=mine)
        _time.sleep(0.01)  # let other threads' requests interleave
        rec = current_record()
        return jsonify(tags=dict(rec.tags), request_id=rec.request_id)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


def post(url: str, path: str, headers: dict, timeout: float = 10.0):
    req = urllib.request.Request(url + path, data=b'{"x": 1}', method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read(), resp.headers.get("X-Request-ID")


def counter(url: str, name: str, **labels) -> float:
    status, text = http_get(url + "/metrics")
    assert status == 200
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def request_lines(g: GunicornProcess, route: str) -> list:
    return [line for line in g.json_lines() if line.get("route") == route]


def test_counters_log_lines_and_received_spans_agree_under_four_workers(tmp_path):
    n = 200
    with OTLPReceiver() as receiver:
        env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp"),
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "lost"}
        with GunicornProcess(app="tests.apps.simple_app:app", env=env, workers=WORKERS) as g:
            ids = [uuid.uuid4().hex for _ in range(n)]
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda i: post(g.url, "/predict", {"X-Request-ID": i}), ids))
            assert {a[0] for a in answers} == {200}
            # a request is counted when the server closes its body, just after the client has
            # the answer: poll until the last ones are in (bounded), then compare exactly
            deadline = time.monotonic() + 60
            while True:
                predictions = counter(g.url, "mlmonitor_predictions_total")
                requests = counter(g.url, "mlmonitor_http_requests_total", route="/predict")
                if predictions >= n and requests >= n or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        # stopped gracefully: each worker flushed its spans on exit
        lines = request_lines(g, "/predict")
        spans = [s for s in receiver.wait_for(n) if s["name"] == "POST /predict"]
    assert predictions == requests == len(lines) == len(spans) == n
    assert sorted(line["request_id"] for line in lines) == sorted(ids)
    received = {(s["trace_id"], s["span_id"]) for s in spans}
    assert {(line["trace_id"], line["span_id"]) for line in lines} == received
    assert len({s["resource"].get("process.pid") for s in spans}) >= 2  # several workers served


def test_gthread_requests_never_see_each_others_context(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp"), "OTEL_TRACES_EXPORTER": "none"}
    with GunicornProcess(app="tests.test_reliability_nothing_lost:create_tag_app()", env=env,
                         workers=2, args=["--worker-class", "gthread", "--threads", "8"]) as g:
        tags = [uuid.uuid4().hex for _ in range(240)]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda t: (t, post(g.url, "/tagged", {"X-Tag": t})), tags))
        time.sleep(0.3)
        lines = {line["request_id"]: line for line in request_lines(g, "/tagged")}
    import json
    for tag, (status, body, request_id) in answers:
        assert status == 200
        seen = json.loads(body)
        assert seen["tags"] == {"client": tag}, seen
        assert seen["request_id"] == request_id
        assert lines[request_id]["tags"] == {"client": tag}
    assert len(lines) == len(tags)


def test_graceful_shutdown_under_load_delivers_every_answered_requests_span_and_line(tmp_path):
    with OTLPReceiver() as receiver:
        env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp"),
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "shutdown",
               "OTEL_BSP_SCHEDULE_DELAY": "5000"}  # spans wait in the queue: the exit must flush them
        g = GunicornProcess(app="tests.apps.simple_app:app", env=env, workers=WORKERS).start()
        answered, stop = [], threading.Event()
        lock = threading.Lock()

        def client():
            while not stop.is_set():
                try:
                    status, _, request_id = post(g.url, "/predict", {"X-Sleep": "0.005"}, timeout=10)
                except (urllib.error.URLError, ConnectionError, OSError):
                    continue
                if status == 200:
                    with lock:
                        answered.append(request_id)

        threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        code = g.stop(timeout=30)  # SIGTERM while the clients keep sending
        stop.set()
        for t in threads:
            t.join(15)
        assert code == 0, "\n".join(g.stderr_lines[-30:])
        lines = {line["request_id"]: line for line in request_lines(g, "/predict")}
        spans = receiver.wait_for(len(answered) * 2, timeout=60)
    received = {(s["trace_id"], s["span_id"]) for s in spans if s["name"] == "POST /predict"}
    assert answered, "no request was answered before the shutdown"
    missing_lines = [r for r in answered if r not in lines]
    assert not missing_lines, f"{len(missing_lines)} of {len(answered)} answered requests have no log line"
    missing_spans = [r for r in answered if (lines[r]["trace_id"], lines[r]["span_id"]) not in received]
    assert not missing_spans, f"{len(missing_spans)} of {len(answered)} answered requests have no span"
    print(f"\n{len(answered)} answered during shutdown under load: every line and span delivered")
