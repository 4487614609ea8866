"""Excluded URLs (issue 28, item 3): a probe's path matched by ``excluded_urls`` writes no log
line and opens no span, in Flask, FastAPI, Django and plain WSGI; it is counted in the metrics
unless ``exclude_from_metrics`` is on; OpenTelemetry's ``OTEL_PYTHON_EXCLUDED_URLS`` keeps it
out of spans; a bad regex fails at start-up."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from werkzeug.test import Client

from helpers.gunicorn_proc import GunicornProcess, http_get
from mlmonitor import ConfigError, MonitorMiddleware
from mlmonitor.config import resolve
from mlmonitor.testing import capture

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.django_project.settings")


def _plain(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _wsgi(**options):
    client = Client(MonitorMiddleware(_plain, **options))
    return lambda path: client.get(path, buffered=True)  # buffered: the body is closed


def _flask(**options):
    from flask import Flask

    from mlmonitor import Monitor
    app = Flask(__name__)
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    app.add_url_rule("/items", "items", lambda: "ok")
    Monitor(app, **options)
    return app.test_client().get


def _fastapi(**options):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlmonitor import Monitor
    app = FastAPI()
    app.get("/healthz")(lambda: "ok")
    app.get("/items")(lambda: "ok")
    Monitor(app, **options)
    return TestClient(app).get


def _django(**options):
    import django
    django.setup()
    from django.test import Client as DjangoClient, override_settings
    override = override_settings(MLMONITOR={"model_version": "v1", **options})
    override.enable()
    _overrides.append(override)
    client = DjangoClient()
    return lambda path: client.get(path if path != "/items" else "/items/7")


_overrides: list = []


@pytest.fixture(autouse=True)
def _undo_django_settings():
    yield
    while _overrides:
        _overrides.pop().disable()


FRAMEWORKS = {"wsgi": _wsgi, "flask": _flask, "fastapi": _fastapi, "django": _django}


def _requests(monitored, total_routes=("/healthz", "/items", "/items/<int:item>")):
    return sum(monitored.value("mlmonitor_http_requests_total", route=route) for route in total_routes)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("from_metrics", [False, True])
def test_an_excluded_probe_has_no_log_line_and_no_span_and_is_counted_unless_asked(framework, from_metrics):
    routes = {"routes": ["/healthz", "/items"]} if framework == "wsgi" else {}
    with capture() as monitored:
        get = FRAMEWORKS[framework](excluded_urls=["^/healthz$"], exclude_from_metrics=from_metrics, **routes)
        for _ in range(3):
            assert get("/healthz").status_code == 200
        assert get("/items").status_code == 200
        lines, spans = monitored.logs(), monitored.spans()
        assert [line["route"] for line in lines] == ["/items/<int:item>" if framework == "django" else "/items"]
        assert len([s for s in spans if s.parent is None]) == 1
        assert all("healthz" not in s.name for s in spans)
        probes = monitored.value("mlmonitor_http_requests_total", route="/healthz")
        assert probes == (0 if from_metrics else 3)
        assert _requests(monitored) == (1 if from_metrics else 4)
        assert monitored.value("mlmonitor_http_requests_in_progress") == 0


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_without_the_setting_every_request_is_logged_and_traced(framework):
    routes = {"routes": ["/healthz", "/items"]} if framework == "wsgi" else {}
    with capture() as monitored:
        get = FRAMEWORKS[framework](**routes)
        get("/healthz")
        get("/items")
        assert len(monitored.logs()) == 2
        assert len([s for s in monitored.spans() if s.parent is None]) == 2


def test_otel_python_excluded_urls_keeps_spans_out_but_not_log_lines(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz, ready")
    with capture() as monitored:
        get = _wsgi(routes=["/healthz", "/items"])
        get("/healthz")
        get("/items")
        assert [s.name for s in monitored.spans()] == ["GET /items"]
        assert [line["route"] for line in monitored.logs()] == ["/healthz", "/items"]


def test_the_environment_variables_are_comma_separated_regexes():
    settings = resolve({}, environ={"MLMONITOR_EXCLUDED_URLS": " /healthz , ^/ready$,,",
                                    "MLMONITOR_EXCLUDE_FROM_METRICS": "true"})
    assert settings.excluded_urls == ("/healthz", "^/ready$")
    assert settings.exclude_from_metrics is True
    assert resolve({}, environ={}).excluded_urls == ()
    assert resolve({}, environ={}).exclude_from_metrics is False


@pytest.mark.parametrize(("source", "name"), [
    ({"excluded_urls": ["/ok", "/bad(["]}, "excluded_urls"),
    ({"excluded_urls": [""]}, "excluded_urls"),
    ({"environ": {"MLMONITOR_EXCLUDED_URLS": "/a,*b"}}, "excluded_urls"),
    ({"environ": {"OTEL_PYTHON_EXCLUDED_URLS": "/a,(b"}}, "OTEL_PYTHON_EXCLUDED_URLS"),
])
def test_an_invalid_regex_fails_start_up_naming_the_setting(source, name, monkeypatch):
    for key, value in source.get("environ", {}).items():
        monkeypatch.setenv(key, value)
    options = {k: v for k, v in source.items() if k != "environ"}
    with pytest.raises(ConfigError) as raised:
        MonitorMiddleware(_plain, **options)
    message = str(raised.value)
    assert "\n" not in message and f"mlmonitor setting {name}=" in message


def test_a_bad_regex_in_the_environment_stops_a_process_with_one_line():
    script = "from mlmonitor import MonitorMiddleware; MonitorMiddleware(lambda e, s: [])"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLMONITOR_EXCLUDED_URLS": "/healthz,[oops"}, check=False)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(
        "mlmonitor.config.ConfigError: mlmonitor setting excluded_urls='[oops': not a regular expression")


def test_gunicorn_probes_leave_no_log_line(tmp_path):
    env = {"MLMONITOR_EXCLUDED_URLS": "^/healthz$", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    server = GunicornProcess(workers=2, env=env)
    with server:
        for _ in range(50):
            assert http_get(server.url + "/healthz")[0] == 200
        for _ in range(4):  # not excluded: these are logged
            assert http_get(server.url + "/no-such-page")[0] == 404
        status, text = http_get(server.url + "/metrics")
        assert status == 200
    # stopped: every worker has exited and its stdout is read to the end
    assert [line["status"] for line in server.json_lines() if "route" in line] == [404] * 4
    assert not [line for line in server.stdout_lines if "healthz" in line]
    assert "mlmonitor_http_requests_total" in text
    probes = [line for line in text.splitlines() if line.startswith("mlmonitor_http_requests_total{")
              and 'route="/healthz"' in line]
    assert probes and float(probes[0].rsplit(" ", 1)[1]) >= 50  # counted: exclude_from_metrics is off
