"""Spans leave the process over OTLP/HTTP to a real receiver, matching the log lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.helpers.otlp import OTLPReceiver

SCRIPT = textwrap.dedent("""
    from tests.apps.simple_app import create_app
    import mlmonitor.trace_provider
    app = create_app()
    client = app.test_client()
    for i in range(5):
        client.post("/predict", json={}, headers={"X-Model-Version": f"v{i % 2}"}, buffered=True)
    client.post("/predict", json={}, headers={"X-Fail": "1"}, buffered=True)
    mlmonitor.trace_provider.shutdown()
""")


def run_app(env):
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, cwd=os.getcwd())


def test_spans_reach_an_otlp_receiver_with_the_log_lines_trace_ids():
    with OTLPReceiver() as receiver:
        result = run_app({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                          "OTEL_SERVICE_NAME": "iris-server"})
        assert result.returncode == 0, result.stderr
        spans = receiver.wait_for(12)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 6
    servers = {s["trace_id"]: s for s in spans if s["name"].startswith("POST")}
    assert len(servers) == 6
    for line in lines:
        span = servers[line["trace_id"]]
        assert span["span_id"] == line["span_id"]
        assert span["attributes"]["ml.model.version"] == line["model_version"]
        assert span["resource"]["service.name"] == "iris-server"
    failed = [s for s in servers.values() if s["attributes"]["http.response.status_code"] == 500]
    assert len(failed) == 1 and failed[0]["status"] == 2  # STATUS_CODE_ERROR
    stages = [s for s in spans if s["name"] == "inference"]
    assert {s["parent_span_id"] for s in stages} == {s["span_id"] for s in servers.values()}


def test_nothing_is_exported_without_an_exporter_configured():
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                                timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        assert receiver.wait_for(1, timeout=1.0) == []
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert all(len(line["trace_id"]) == 32 for line in lines)  # ids exist for correlation anyway


def test_unknown_exporter_name_fails_at_start_up_naming_the_variable():
    result = run_app({"OTEL_TRACES_EXPORTER": "zipkin-over-carrier-pigeon"})
    assert result.returncode != 0
    assert "OTEL_TRACES_EXPORTER" in result.stderr.strip().splitlines()[-1]
