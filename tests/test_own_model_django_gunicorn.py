"""Django (issue 16, item 5) under a real gunicorn, 2 workers, ``-c python:mlmonitor.gunicorn``:
the test project (tests/apps/django_project) alone and inside ``MonitorMiddleware``; exact
counts across the workers, the URL pattern as the route label, a 500 with its exception in the
log line, secrets redacted, unknown models and the app's 401 not charged to any model."""
from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.promstack import wait_for
from helpers.gunicorn_proc import GunicornProcess

pytestmark = pytest.mark.slow

PATTERN = "/v1/models/<str:name>:predict"
BODY = json.dumps({"instances": [[1.0, 2.0]]})
#: (method, path, with the API key) -> how many times
PLAN = {("POST", "/v1/models/glucose:predict", True): 60,
        ("POST", "/v1/models/pressure:predict", True): 40,
        ("POST", "/v1/models/bogus:predict", True): 20,
        ("POST", "/v1/models/glucose:predict", False): 20,
        ("GET", "/boom?password=hunter2", True): 10,
        ("GET", "/items/3", True): 10}


def call(port: int, method: str, path: str, auth: bool) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Key k-test"
        conn.request(method, path, body=BODY if method == "POST" else None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def scrape(port: int) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200, body[:300]
    finally:
        conn.close()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("app", ["wsgi:application", "wsgi_wrapped:application"])
def test_django_project_under_gunicorn_with_two_workers(tmp_path, app):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), "MLMONITOR_TRACES": "false",
           "MLMONITOR_MODEL_VERSION": "v1",
           "DJANGO_SETTINGS_MODULE": "tests.apps.django_project.settings"}
    server = GunicornProcess(app=f"tests.apps.django_project.{app}",
                             config="python:mlmonitor.gunicorn", workers=2, env=env)
    jobs = [key for key, times in PLAN.items() for _ in range(times)]
    with server:
        def both_workers_answer():  # the second worker may still be loading Django
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: call(server.port, "GET", "/healthz", True), range(8)))
            return len({line["tags"]["pid"] for line in server.json_lines()
                        if line.get("route") == "/healthz"}) == 2

        wait_for(both_workers_answer, 60, what="both workers answering")
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda key: (key, call(server.port, *key)), jobs))
        # a request is counted just after its answer: scrape until the last one is in
        samples = wait_for(lambda: (lambda s: s if value(s, "mlmonitor_predictions_total",
                                                          model_name="glucose", model_version="v1")
                                    + value(s, "mlmonitor_predictions_total", model_name="pressure",
                                            model_version="v1") == 100
                                    and sum(v for (n, labels), v in s.items()
                                            if n == "mlmonitor_http_requests_total"
                                            and dict(labels)["route"] != "/healthz") == len(jobs)
                                    else None)(scrape(server.port)), 30, what="every request counted")
    expected = {("POST", "/v1/models/glucose:predict", True): 200,
                ("POST", "/v1/models/pressure:predict", True): 200,
                ("POST", "/v1/models/bogus:predict", True): 404,
                ("POST", "/v1/models/glucose:predict", False): 401,
                ("GET", "/boom?password=hunter2", True): 500,
                ("GET", "/items/3", True): 200}
    assert all(status == expected[key] for key, status in statuses)
    booted = [line for line in server.stderr_lines if "Booting worker" in line]
    assert len(booted) >= 2, server.stderr_lines[-20:]

    def http_total(method, route, status):
        return value(samples, "mlmonitor_http_requests_total", method=method, route=route,
                     status=status)

    assert http_total("POST", PATTERN, "200") == 100
    assert http_total("POST", PATTERN, "404") == 20
    assert http_total("POST", PATTERN, "401") == 20
    assert http_total("GET", "/boom", "500") == 10
    assert http_total("GET", "/items/<int:item>", "200") == 10
    assert value(samples, "mlmonitor_predictions_total", model_name="glucose",
                 model_version="v1") == 60
    assert value(samples, "mlmonitor_predictions_total", model_name="pressure",
                 model_version="v1") == 40
    charged = {dict(labels)["model_name"] for name, labels in samples
               if name in ("mlmonitor_predictions_total", "mlmonitor_model_info",
                           "mlmonitor_prediction_errors_total")}
    assert charged == {"glucose", "pressure"}  # not "bogus", not a phantom default "model"

    lines = [line for line in server.json_lines() if line.get("event") == "request"
             and line.get("route") != "/healthz"]
    assert len(lines) == len(jobs)  # metrics = log lines, across both workers
    assert sum(1 for line in lines if line.get("model_name") == "glucose") == 60
    pids = {line["tags"]["pid"] for line in lines if "model_name" in line}
    assert len(pids) == 2, pids  # both workers served predictions
    booms = [line for line in lines if line["route"] == "/boom"]
    assert len(booms) == 10
    for line in booms:
        assert line["status"] == 500 and line["error_type"] == "RuntimeError"
        assert line["error"] == "model store unreachable: password=[REDACTED] at db.internal"
        assert "in boom" in line["stack"] and "RuntimeError" in line["stack"]
    assert "hunter2" not in "\n".join(server.stdout_lines + server.stderr_lines)
