"""Issue 25, item 3: a secret in an unhandled exception reaches neither stdout nor stderr of a
real server, while the server's own traceback is still printed (redacted).

gunicorn sync + Flask and gunicorn + UvicornWorker + FastAPI run with mlmonitor's hooks
(``-c python:mlmonitor.gunicorn``: on by default); uvicorn alone runs an app that calls the
documented one line, ``mlmonitor.redact_server_logs()``. Access logs are on, so a secret in a
query string is checked too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers.gunicorn_proc import GunicornProcess, free_port, http_get

pytestmark = pytest.mark.slow

SECRETS = ("hunter2-secret", "sk-live-0123456789abcdef", "abc-query-secret")

FLASK_APP = '''
from flask import Flask
from mlmonitor import Monitor
app = Flask(__name__)
monitor = Monitor(app, model_name="m")

@app.get("/healthz")
def healthz():
    return "ok"

@app.post("/predict")
@monitor.prediction
def predict():
    raise ValueError({"password": "hunter2-secret"})

@app.get("/key")
def key():
    raise RuntimeError("upstream refused api_key=sk-live-0123456789abcdef")
'''

FASTAPI_APP = '''
import mlmonitor
from fastapi import FastAPI
from mlmonitor import Monitor
%s
app = FastAPI()
monitor = Monitor(app, model_name="m")

@app.get("/healthz")
def healthz():
    return "ok"

@app.post("/predict")
@monitor.prediction
async def predict():
    raise ValueError({"password": "hunter2-secret"})

@app.get("/key")
def key():
    raise RuntimeError("upstream refused api_key=sk-live-0123456789abcdef")
'''


def send_failing_requests(url: str) -> None:
    for path, method in (("/predict", "POST"), ("/key?token=abc-query-secret", "GET")):
        request = urllib.request.Request(url + path, method=method, data=b"{}" if method == "POST" else None)
        try:
            urllib.request.urlopen(request, timeout=120)
            pytest.fail(f"{path} answered 2xx")
        except urllib.error.HTTPError as err:
            assert err.code == 500


def wait_for(lines: list, text: str, count: int, timeout: float = 120.0) -> None:
    """Until ``count`` lines hold ``text`` (the server printed both tracebacks)."""
    deadline = time.monotonic() + timeout
    while sum(text in line for line in list(lines)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def assert_hidden_with_tracebacks(stdout: str, stderr: str, header: str) -> None:
    for secret in SECRETS:
        assert secret not in stdout and secret not in stderr, secret
    assert stderr.count(header) == 2, stderr[-3000:]
    assert stderr.count("Traceback (most recent call last):") == 2
    assert "ValueError: {'password': '[REDACTED]'}" in stderr
    assert "RuntimeError: upstream refused api_key=[REDACTED]" in stderr
    assert "/key?token=[REDACTED]" in stdout  # the access line, its query hidden


@pytest.mark.parametrize("kind", ["flask-sync", "fastapi-uvicorn-worker"])
def test_gunicorn_with_mlmonitors_hooks_prints_the_traceback_with_secrets_hidden(tmp_path, kind):
    flask = kind == "flask-sync"
    (tmp_path / "secret_app.py").write_text(FLASK_APP if flask else FASTAPI_APP % "")
    args = ["--access-logfile", "-"] + ([] if flask else ["-k", "uvicorn.workers.UvicornWorker"])
    server = GunicornProcess("secret_app:app", config="python:mlmonitor.gunicorn", workers=1, args=args,
                             cwd=tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")})
    header = "Exception on /" if flask else "Exception in ASGI application"
    with server:
        send_failing_requests(server.url)
        wait_for(server.stderr_lines, "Traceback (most recent call last):", 2)
        wait_for(server.stdout_lines, "/key?token=", 1)
    assert_hidden_with_tracebacks("\n".join(server.stdout_lines), "\n".join(server.stderr_lines), header)


def test_uvicorn_alone_with_the_documented_line(tmp_path):
    (tmp_path / "secret_app.py").write_text(FASTAPI_APP % "mlmonitor.redact_server_logs()")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "--host", "127.0.0.1",
                             "--port", str(port), "secret_app:app"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if http_get(url + "/healthz", timeout=30)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        send_failing_requests(url)
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
    assert_hidden_with_tracebacks(stdout, stderr, "Exception in ASGI application")
