"""Exemplars end to end (issue 27): the example app under real servers with two workers (gunicorn
with sync workers for the Flask app; gunicorn with uvicorn workers, and ``uvicorn --workers 2``,
for the FastAPI one), one worker SIGKILLed midway and replaced by the server,
spans exported over OTLP/HTTP to a real receiver, and a real Prometheus with exemplar storage
scraping ``/metrics`` (it asks for OpenMetrics itself). Every exemplar Prometheus returns for the
request, prediction and stage latency buckets names a trace the receiver got and a log line the
app wrote; request and prediction ones cover both model versions, before and after the kill.

No client timeouts decide anything: each step waits on a condition with a generous deadline."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest

from helpers.gunicorn_proc import REPO, GunicornProcess, http_get
from helpers.otlp import OTLPReceiver
from helpers.promstack import Prometheus, query, wait_for
from mlmonitor.contract import HTTP_REQUEST_DURATION_BUCKET, PREDICTION_DURATION_BUCKET, STAGE_DURATION_BUCKET

pytestmark = pytest.mark.slow

JOB = "mlmonitor"
VERSIONS = ("v1", "v2")
GOOD = {"sepal_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}
PER_PHASE = 80  # requests before the kill, and again after it
DEADLINE = 180.0  # seconds for any one condition on a loaded 2-core machine


def post_predict(url: str, version: str, slow: str = "") -> Tuple[str, str]:
    """(X-Request-ID, X-Model-Version) of one iris prediction; the timeout guards against a hang only."""
    headers = {"Content-Type": "application/json", "X-Model-Version": version, **({"X-Slow": slow} if slow else {})}
    request = urllib.request.Request(url + "/predict", data=json.dumps({"features": GOOD}).encode(),
                                     headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
        return response.headers["X-Request-ID"], response.headers["X-Model-Version"]


def traffic(url: str, count: int, offset: int) -> List[Tuple[str, str]]:
    """``count`` predictions, 4 at a time, alternating versions; a few slow ones reach higher buckets."""
    def one(i: int) -> Tuple[str, str]:
        return post_predict(url, VERSIONS[i % 2], "0.03" if i % 10 == 0 else "")
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(offset, offset + count)))
    assert [v for _, v in answers] == [VERSIONS[i % 2] for i in range(offset, offset + count)]
    return answers


def workers(master: int) -> Set[int]:
    """The master's worker processes: its children, but for multiprocessing's resource tracker
    (uvicorn starts its workers with multiprocessing)."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return {int(pid) for pid in children if b"resource_tracker" not in _cmdline(int(pid))}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone meanwhile
        return b"resource_tracker"


def uvicorn_workers(env: Dict[str, str]) -> GunicornProcess:
    """``uvicorn --workers 2`` for the FastAPI example, started, read and stopped as the gunicorn
    helper does it (own process group, output captured, stopped by PID); no gunicorn hooks, so a
    fresh metrics directory, as the README says for ``uvicorn --workers``."""
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
    server = GunicornProcess(env=env)
    server.command = [sys.executable, "-m", "uvicorn", "example_app.asgi:app", "--host", "127.0.0.1",
                      "--port", str(server.port), "--workers", "2", "--log-level", "warning"]
    return server


def lines_by_trace(server: GunicornProcess) -> Dict[str, Dict[str, Any]]:
    return {line["trace_id"]: line for line in server.json_lines()
            if line.get("route") == "/predict" and line.get("trace_id")}


def served(server: GunicornProcess, receiver: OTLPReceiver, request_ids: Set[str]) -> bool:
    """Every one of these requests has its log line, and its trace reached the receiver."""
    lines = {line["request_id"]: line for line in server.json_lines() if line.get("request_id") in request_ids}
    with receiver.lock:
        traces = {span["trace_id"] for span in receiver.spans}
    return len(lines) == len(request_ids) and all(line["trace_id"] in traces for line in lines.values())


def exemplars(prom: Prometheus, bucket: str, start: float) -> List[Dict[str, Any]]:
    """Every stored exemplar of ``bucket`` since ``start``, each with its series' labels."""
    found = prom.exemplars(f'{bucket}{{job="{JOB}"}}', start, time.time() + 60)
    return [{**exemplar, "series": series["seriesLabels"]} for series in found for exemplar in series["exemplars"]]


def versions_covered(prom: Prometheus, server: GunicornProcess, since: float, start: float) -> Dict[str, Set[str]]:
    """Per latency family, the model versions with an exemplar stamped after ``since`` (the
    request histogram has no version label: the exemplar's log line says which version)."""
    lines = lines_by_trace(server)
    covered: Dict[str, Set[str]] = {}
    for name, bucket in (("request", HTTP_REQUEST_DURATION_BUCKET), ("prediction", PREDICTION_DURATION_BUCKET)):
        covered[name] = {lines[e["labels"]["trace_id"]]["model_version"] for e in exemplars(prom, bucket, start)
                         if e["timestamp"] > since and e["labels"].get("trace_id") in lines
                         and (name == "prediction" or e["series"].get("route") == "/predict")}
    return covered


def mlmonitor_check(metrics_url: str, prometheus: str) -> List[str]:
    """``mlmonitor check URL --prometheus PROM``: its finding lines about exemplars."""
    proc = subprocess.run([sys.executable, "-m", "mlmonitor.tools.cli", "check", metrics_url,
                           "--prometheus", prometheus, "--timeout", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.stdout.strip(), proc.stderr
    return [line for line in proc.stdout.splitlines() if ": exemplars: " in line]


def run_stack(tmp_path: Path, app: str, args: Tuple[str, ...] = (), plain: bool = False,
              server_of: Callable[[Dict[str, str]], GunicornProcess] | None = None) -> Dict[str, Any]:
    """The whole run; what the assertions need, gathered once the servers are stopped. ``plain``:
    a second Prometheus, without exemplar storage, scrapes the app too (for ``mlmonitor check``);
    ``server_of(env)``: another server than gunicorn with ``app`` and ``args``."""
    receiver = OTLPReceiver().__enter__()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"), "MLMONITOR_FEEDBACK_SECRET": "e" * 32,
           "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "iris-exemplars", "CANARY_FRACTION": "0.5"}
    server = server_of(env) if server_of else GunicornProcess(app=app, workers=2, env=env, args=args)
    result: Dict[str, Any] = {}
    start = time.time() - 5
    try:
        server.start(timeout=DEADLINE)
        host_port = server.url.split("//")[1]
        with contextlib.ExitStack() as stack:
            prom = stack.enter_context(Prometheus(tmp_path / "exemplar-storage", targets={JOB: [host_port]},
                                                  features=("exemplar-storage",)))
            others = [stack.enter_context(Prometheus(tmp_path / "plain", targets={JOB: [host_port]}))] if plain else []
            for each in (prom, *others):
                wait_for(lambda p=each: query(p.url, f'up{{job="{JOB}"}} == 1'), DEADLINE, what="the app scraped")
            first = traffic(server.url, PER_PHASE, 0)
            # everything the first phase served is logged and exported before a worker dies with it
            wait_for(lambda: served(server, receiver, {rid for rid, _ in first}), DEADLINE,
                     what="first phase's log lines and spans")
            wait_for(lambda: all(v == set(VERSIONS) for v in versions_covered(prom, server, 0, start).values()),
                     DEADLINE, what="exemplars of both versions scraped before the kill")
            before = set(workers(server.pid))
            assert len(before) == 2
            victim = min(before)
            os.kill(victim, signal.SIGKILL)
            killed_at = time.time()
            after = wait_for(lambda: (w := workers(server.pid)) and len(w) == 2 and victim not in w and w,
                             DEADLINE, what="gunicorn replaced the killed worker")
            wait_for(lambda: http_get(server.url + "/healthz", timeout=30)[0] == 200, DEADLINE)
            second = traffic(server.url, PER_PHASE, PER_PHASE)
            wait_for(lambda: served(server, receiver, {rid for rid, _ in second}), DEADLINE,
                     what="second phase's log lines and spans")
            result["after_kill"] = wait_for(
                lambda: (c := versions_covered(prom, server, killed_at, start))
                and all(v == set(VERSIONS) for v in c.values()) and c,
                DEADLINE, what="exemplars of both versions scraped after the kill")
            time.sleep(3)  # a few more scrapes: what the last ones stored is compared too
            result["exemplars"] = {bucket: exemplars(prom, bucket, start) for bucket in
                                   (HTTP_REQUEST_DURATION_BUCKET, PREDICTION_DURATION_BUCKET, STAGE_DURATION_BUCKET)}
            result["check"] = [mlmonitor_check(server.url + "/metrics", p.url) for p in (prom, *others)]
            result["replaced"] = after - before
    finally:
        server.stop()
        receiver.__exit__(None, None, None)
    with receiver.lock:
        result["spans"] = list(receiver.spans)
    result["lines"] = server.json_lines()
    result["requests"] = first + second
    return result


def assert_every_exemplar_is_followed_to_its_span_and_log_line(result: Dict[str, Any]) -> None:
    spans_by_trace: Dict[str, List[Dict[str, Any]]] = {}
    for span in result["spans"]:
        spans_by_trace.setdefault(span["trace_id"], []).append(span)
    lines = {line["trace_id"]: line for line in result["lines"] if line.get("trace_id")}
    sent = {rid for rid, _ in result["requests"]}
    for bucket, found in result["exemplars"].items():
        assert found, f"no exemplar for {bucket}"
        for exemplar in found:
            labels, series = exemplar["labels"], exemplar["series"]
            assert set(labels) == {"trace_id", "span_id"}, labels  # ids only, never a label of the series
            trace_id = labels["trace_id"]
            assert len(trace_id) == 32 and int(trace_id, 16), trace_id
            assert trace_id in spans_by_trace, f"{bucket} exemplar {exemplar}: no span of that trace received"
            assert trace_id in lines, f"{bucket} exemplar {exemplar}: no log line of that trace"
            line = lines[trace_id]
            if line["route"] == "/predict":  # the readiness polls of /healthz have exemplars too
                assert line["request_id"] in sent
            value = float(exemplar["value"])
            assert value <= float(series["le"]), exemplar  # the observation lies in its bucket
            if bucket == PREDICTION_DURATION_BUCKET:
                assert series["model_version"] == line["model_version"]
                assert series["model_name"] == line["model_name"] == "iris"
            elif bucket == STAGE_DURATION_BUCKET:
                assert (series["model_name"], series["model_version"]) == (line["model_name"], line["model_version"])
                assert series["stage"] in line["stages_ms"]
            else:
                assert (series["route"], series["status"]) == (line["route"], str(line["status"]))
                assert value * 1000 == pytest.approx(line["duration_ms"], abs=0.01)  # the same request's time
            assert labels["span_id"] in {s["span_id"] for s in spans_by_trace[trace_id]}
    for family, versions in result["after_kill"].items():
        assert versions == set(VERSIONS), family


def test_gunicorn_sync_workers_exemplars_lead_to_spans_and_log_lines_across_a_killed_worker(tmp_path):
    result = run_stack(tmp_path, "example_app.app:app", plain=True)
    assert len(result["replaced"]) == 1
    with_storage, without = result["check"]
    assert with_storage == []  # `mlmonitor check` is content with the exemplar-storage Prometheus
    assert len(without) == 1 and without[0].startswith("warning: exemplars: the app serves exemplars (")
    assert "--enable-feature=exemplar-storage" in without[0]
    assert_every_exemplar_is_followed_to_its_span_and_log_line(result)


def test_gunicorn_uvicorn_workers_exemplars_lead_to_spans_and_log_lines_across_a_killed_worker(tmp_path):
    result = run_stack(tmp_path, "example_app.asgi:app", ("-k", "uvicorn.workers.UvicornWorker"))
    assert len(result["replaced"]) == 1
    assert result["check"] == [[]]
    assert_every_exemplar_is_followed_to_its_span_and_log_line(result)


def test_uvicorn_workers_exemplars_lead_to_spans_and_log_lines_across_a_killed_worker(tmp_path):
    result = run_stack(tmp_path, "example_app.asgi:app", server_of=uvicorn_workers)
    assert len(result["replaced"]) == 1  # uvicorn's supervisor started a new worker
    assert result["check"] == [[]]
    assert_every_exemplar_is_followed_to_its_span_and_log_line(result)
