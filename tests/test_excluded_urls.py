"""Excluded URLs (issue 28, item 3): a probe's path matched by ``excluded_urls`` writes no log
line and opens no span, in Flask, FastAPI, Django and plain WSGI; it is counted in the metrics
unless ``exclude_from_metrics`` is on; OpenTelemetry's ``OTEL_PYTHON_EXCLUDED_URLS`` keeps it
out of spans; a bad regex fails at start-up."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
from werkzeug.test import Client

from helpers.gunicorn_proc import GunicornProcess, http_get
from helpers.otlp import OTLPReceiver
from mlmonitor import ConfigError, MonitorMiddleware, config
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


def _starlette(**options):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from mlmonitor import Monitor
    app = Starlette(routes=[Route(p, lambda request: PlainTextResponse("ok")) for p in ("/healthz", "/items")])
    Monitor(app, **options)
    return TestClient(app).get


#: the framework layers and the variable OpenTelemetry's instrumentation of each reads first
OWN_VARIABLE = {"flask": (_flask, "OTEL_PYTHON_FLASK_EXCLUDED_URLS"),
                "fastapi": (_fastapi, "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS"),
                "starlette": (_starlette, "OTEL_PYTHON_STARLETTE_EXCLUDED_URLS"),
                "django": (_django, "OTEL_PYTHON_DJANGO_EXCLUDED_URLS")}


def _span_paths(monitored, get):
    """Which of /healthz and /items open a server span."""
    for path in ("/healthz", "/items"):
        assert get(path).status_code == 200
    return sorted(p for p in ("/healthz", "/items")
                  if any(p in s.name for s in monitored.spans() if s.parent is None))


@pytest.mark.parametrize("framework", OWN_VARIABLE)
def test_the_frameworks_own_otel_variable_comes_before_the_generic_one(framework, monkeypatch):
    """As opentelemetry-util-http's get_excluded_urls(FRAMEWORK): the framework's variable
    when set, else OTEL_PYTHON_EXCLUDED_URLS; another framework's variable is not read."""
    make, own = OWN_VARIABLE[framework]
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz")
    other = "OTEL_PYTHON_DJANGO_EXCLUDED_URLS" if framework != "django" else "OTEL_PYTHON_FLASK_EXCLUDED_URLS"
    monkeypatch.setenv(other, "healthz,items")
    with capture() as monitored:
        assert _span_paths(monitored, make()) == ["/items"]
    monkeypatch.setenv(own, "items")
    with capture() as monitored:
        get = make()
        assert _span_paths(monitored, get) == ["/healthz"]
        assert len(monitored.logs()) == 2  # spans only
    monkeypatch.setenv(own, "")  # set but empty: nothing excluded, as in OpenTelemetry
    with capture() as monitored:
        assert _span_paths(monitored, make()) == ["/healthz", "/items"]


def test_plain_wsgi_reads_the_generic_otel_variable_only(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "items")
    monkeypatch.setenv("OTEL_PYTHON_EXCLUDED_URLS", "healthz")
    with capture() as monitored:
        assert _span_paths(monitored, _wsgi(routes=["/healthz", "/items"])) == ["/items"]


def test_a_bad_regex_in_the_frameworks_variable_fails_start_up_naming_it(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", "/a,(b")
    with pytest.raises(ConfigError, match="mlmonitor setting OTEL_PYTHON_FLASK_EXCLUDED_URLS="):
        _flask()


def test_each_list_is_compiled_once_at_start_up(monkeypatch):
    """The settings check the list and the engine uses it: one compile of the joined regex."""
    compiled = []
    real = re.compile
    monkeypatch.setattr(config.re, "compile", lambda p, *a: compiled.append(p) or real(p, *a))
    mine, otel = f"^/probe-{uuid.uuid4().hex}$", f"^/otel-{uuid.uuid4().hex}$"
    monkeypatch.setenv("OTEL_PYTHON_FLASK_EXCLUDED_URLS", otel)
    with capture() as monitored:
        get = _flask(excluded_urls=[mine, "^/ready$"])
        for _ in range(3):
            get("/items")
        assert len(monitored.logs()) == 3
    assert [p for p in compiled if isinstance(p, str) and ("/probe-" in p or "/otel-" in p)] == [
        f"{mine}|^/ready$", otel]


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


def test_gunicorn_probes_leave_no_log_line_and_no_span(tmp_path):
    with OTLPReceiver() as receiver:
        env = {"MLMONITOR_EXCLUDED_URLS": "^/healthz$", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
               "MLMONITOR_TRACES": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
        server = GunicornProcess(workers=2, env=env)
        with server:
            for _ in range(50):
                assert http_get(server.url + "/healthz")[0] == 200
            for _ in range(4):  # not excluded: these are logged and traced
                assert http_get(server.url + "/no-such-page")[0] == 404
            status, text = http_get(server.url + "/metrics")
            assert status == 200
        # stopped: every worker has exited, flushed its spans, and its stdout is read to the end
        spans = receiver.wait_for(4, timeout=60)
    assert len(spans) == 4
    assert all(s["attributes"].get("http.status_code", s["attributes"].get("http.response.status_code")) == 404
               for s in spans)
    assert not [s for s in spans if "healthz" in json.dumps(s, default=str)]
    assert [line["status"] for line in server.json_lines() if "route" in line] == [404] * 4
    assert not [line for line in server.stdout_lines if "healthz" in line]
    assert "mlmonitor_http_requests_total" in text
    probes = [line for line in text.splitlines() if line.startswith("mlmonitor_http_requests_total{")
              and 'route="/healthz"' in line]
    assert probes and float(probes[0].rsplit(" ", 1)[1]) >= 50  # counted: exclude_from_metrics is off


def test_the_cost_benchmark_runs_and_reports_each_configuration():
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "bench_excluded.py")
    done = subprocess.run([sys.executable, script, "--rounds", "1", "--requests", "50", "--json"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert set(report["us_per_request"]) == {"bare", "full", "excluded", "excluded_all"}
    assert set(report["added_cost_vs_full"]) == {"excluded", "excluded_all"}
