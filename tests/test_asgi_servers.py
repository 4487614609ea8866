"""The ASGI layer under real servers (issue 20): gunicorn with uvicorn workers and the mlmonitor
hooks (exact counts per version across workers, a killed worker included; spans and log lines
correlated through a real OTLP receiver), and uvicorn alone (a streamed response with tokens)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.gunicorn_proc import REPO, GunicornProcess, free_port, http_get
from helpers.otlp import OTLPReceiver
from helpers.promstack import wait_for

pytestmark = pytest.mark.slow

APP = "tests.apps.fastapi_app:app"


def post(url: str, body: dict, headers: dict | None = None, timeout: float = 120.0):
    """``timeout``: a guard against a hang, not a bound on latency (a loaded machine is slow)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read().decode(), dict(response.headers)


def samples(url: str, name: str) -> dict:
    status, text = http_get(url + "/metrics", timeout=120)
    assert status == 200, text[:300]
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def per_version(url: str) -> dict:
    return {dict(k)["model_version"]: v for k, v in samples(url, "mlmonitor_predictions_total").items()
            if dict(k)["model_name"] == "sentiment" and v}


def post_spans(receiver: OTLPReceiver) -> dict:
    """The prediction requests' server spans the receiver holds, by trace id."""
    return {s["trace_id"]: s for s in receiver.wait_for(0) if s["name"].startswith("POST ")}


def test_gunicorn_uvicorn_workers_count_exactly_across_workers_and_a_killed_one(tmp_path):
    receiver = OTLPReceiver().__enter__()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
           "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "MLMONITOR_FEEDBACK_SECRET": "s" * 32}
    server = GunicornProcess(app=APP, config="python:mlmonitor.gunicorn", workers=2,
                             args=["-k", "uvicorn.workers.UvicornWorker"], env=env)
    sent = {"v1": 0, "v2": 0}
    pids = set()
    try:
        server.start()

        def one(i):
            version = "v1" if i % 3 else "v2"
            status, body, headers = post(server.url + "/v1/models/sentiment:predict",
                                         {"text": "good"}, {"X-Model-Version": version})
            return version, json.loads(body)["pid"], headers["x-request-id"]

        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(one, range(120)))
        for version, pid, _ in first:
            sent[version] += 1
            pids.add(pid)
        # every request of the first half counted (a request is counted just after its last
        # byte is handed to the server), then one worker is killed while idle
        wait_for(lambda: per_version(server.url) == sent or None, timeout=120)
        # its server spans exported too, counted by name: scrapes of /metrics send spans as well
        wait_for(lambda: len(post_spans(receiver)) >= 120 or None, timeout=120)
        os.kill(first[-1][1], signal.SIGKILL)
        with ThreadPoolExecutor(8) as pool:
            second = list(pool.map(one, range(120, 240)))
        for version, pid, _ in second:
            sent[version] += 1
            pids.add(pid)
        assert wait_for(lambda: per_version(server.url) == sent or None, timeout=120), \
            (per_version(server.url), sent)
        routes = samples(server.url, "mlmonitor_http_requests_total")
        assert {dict(k)["route"] for k, v in routes.items() if v} >= {"/v1/models/{name}:predict"}
        assert len(pids) >= 2  # a new worker replaced the killed one
        request_ids = {rid for _, _, rid in first + second}
        wait_for(lambda: len(post_spans(receiver)) >= 240 or None, timeout=120)
    finally:
        server.stop()
        receiver.__exit__(None, None, None)
    # killed while idle: nothing it served is lost; each request one line and one server span
    lines = [line for line in server.json_lines() if line.get("route") == "/v1/models/{name}:predict"]
    assert sorted(line["request_id"] for line in lines) == sorted(request_ids)
    servers = post_spans(receiver)
    assert len(servers) == 240
    for line in lines:
        span = servers[line["trace_id"]]
        assert span["name"] == "POST /v1/models/{name}:predict"
        assert span["attributes"]["ml.model.version"] == line["model_version"]


def test_uvicorn_alone_streams_once_with_tokens_and_keeps_1000_concurrent_requests_apart(tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out: list = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=120)
        status, body, _ = post(url + "/v1/generate", {"prompt": "a b c", "tokens": 6})
        assert status == 200 and body.count("data:") == 6
        tokens = wait_for(lambda: samples(url, "mlmonitor_tokens_total") or None, timeout=60)
        decode = (("model_name", "writer"), ("model_version", "w1"), ("stage", "decode"))
        stage = wait_for(lambda: {n: v for n in ("count", "sum") for k, v in samples(
            url, f"mlmonitor_stage_duration_seconds_{n}").items() if k == decode}, timeout=60)
        answers = asyncio.run(_concurrent(url, 1000))  # one process: one event loop
    finally:
        proc.terminate()
        proc.wait(15)
        reader.join(5)
    assert [a["tag"] for a in answers] == [f"c{i}" for i in range(1000)]
    lines = [json.loads(line) for line in out if line.startswith("{")]
    tagged = [line for line in lines if line.get("tags", {}).get("client")]
    assert len(tagged) == 1000
    for line in tagged:  # each request carried only its own tag and version
        assert line["model_version"] == f"v{int(line['tags']['client'][1:]) % 7}"
    assert len({line["trace_id"] for line in tagged}) == 1000
    assert _most_in_flight(tagged) >= 10  # the requests did overlap: there was something to mix
    assert tokens[(("direction", "input"), ("model_name", "writer"), ("model_version", "w1"))] == 3
    assert tokens[(("direction", "output"), ("model_name", "writer"), ("model_version", "w1"))] == 6
    generated = [line for line in lines if line.get("route") == "/v1/generate"]
    assert len(generated) == 1 and generated[0]["status"] == 200
    # the six decode blocks measured, summed in the line as in the histogram
    assert generated[0]["stage_counts"]["decode"] == 6 == stage["count"]
    assert generated[0]["stages_ms"]["decode"] > 0
    assert generated[0]["stages_ms"]["decode"] == pytest.approx(stage["sum"] * 1000, abs=0.001)


async def _concurrent(url: str, count: int) -> list:
    """``count`` requests, 200 at a time on one event loop. No client timeout (a request waiting
    for a connection of the pool on a loaded machine is no fault of the server); one deadline
    for the whole run instead, a guard against a hang."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=None) as client:
        async def one(i: int) -> dict:
            response = await client.post(
                "/v1/models/sentiment:predict", json={"text": "good"},
                headers={"X-Tag": f"c{i}", "X-Model-Version": f"v{i % 7}", "X-Sleep": "0.05"})
            return response.json()
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 600)


def _most_in_flight(lines: list) -> int:
    """The most requests the server held at once, from each line's end time and duration."""
    events = []
    for line in lines:
        end = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
        events += [(end - line["duration_ms"] / 1000, 1), (end, -1)]
    most = now = 0
    for _, step in sorted(events):
        now += step
        most = max(most, now)
    return most


def _ready(url: str):
    try:
        return http_get(url + "/healthz", timeout=2)[0] == 200 or None
    except OSError:
        return None



def test_uvicorn_workers_count_exactly_with_a_fresh_multiprocess_directory(tmp_path):
    """``uvicorn --workers N`` (no gunicorn hooks): exact counts when PROMETHEUS_MULTIPROC_DIR
    is a fresh directory; what the hooks add (dead-worker merge, worker slots) is documented."""
    port = free_port()
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom), "MLMONITOR_TRACES": "false",
           "MLMONITOR_FEEDBACK_SECRET": "s" * 32}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", APP, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "2", "--log-level", "warning"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _ready(url), timeout=120)
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: post(url + "/v1/models/sentiment:predict", {"text": "fine"},
                                         {"X-Model-Version": f"v{i % 2}"}), range(90)))
        wait_for(lambda: per_version(url) == {"v0": 45, "v1": 45} or None, timeout=120,
                 what="exact counts across uvicorn workers")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
