"""Feedback as MLflow assessments, attacked from outside: an app of our own, not the example
(tests/helpers/outsider_app.py: FastAPI, a numpy 3-class grader and a regressor, its own routes),
set up as the README says and run under ``uvicorn --workers 2`` (spawned workers sharing the
secret file of PROMETHEUS_MULTIPROC_DIR), its spans over OTLP to a real ``mlflow server``.

Hostile labels, forged, replayed, unsampled and old ids; an MLflow that hangs, trickles or
answers 500/429 while the feedback latency is compared with a healthy one in the same run; MLflow
restarted mid-run; a worker SIGKILLed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlmonitor import assessments
from mlmonitor.config import DEFAULT_REDACT
from mlmonitor.redact import redactor
from mlmonitor.tokens import sign_prediction, verify_prediction
from tests.helpers.gunicorn_proc import GunicornProcess, http_get, post_json
from tests.helpers.promstack import wait_for
from tests.test_exemplars_e2e import workers
from tests.test_mlflow_server import REPO, call, mlflow_server  # noqa: F401 (a fixture)

SECRET_KEY = "sk-LIVE-0123456789abcdefDEADBEEF"
OTEL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                  "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_TRACES_EXPORTER",
                  "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLMONITOR_FEEDBACK_SECRET")


def outsider(tmp: Path, mlflow_url: str, experiment_id: str, **env: str) -> GunicornProcess:
    """``uvicorn --workers 2`` serving the outsider app, configured only through the README's
    variables (an emptied PROMETHEUS_MULTIPROC_DIR, no feedback secret: the workers share its file)."""
    prom = tmp / f"prom-{len(list(tmp.glob('prom-*')))}"
    prom.mkdir()
    server = GunicornProcess(ready_path="/ready")
    for name in OTEL_VARIABLES:
        server.env.pop(name, None)
    server.env.update({"PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": str(prom),
                       "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": mlflow_url + "/v1/traces",
                       "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-mlflow-experiment-id={experiment_id}",
                       "OTEL_BSP_SCHEDULE_DELAY": "500", **env})
    server.command = [sys.executable, "-m", "uvicorn", "tests.helpers.outsider_app:app", "--host", "127.0.0.1",
                      "--port", str(server.port), "--workers", "2", "--log-level", "warning"]
    server.prom = prom
    return server


def secret(server: GunicornProcess) -> str:
    return (server.prom / ".feedback_secret").read_text().strip()


def grade(server, tenant="acme", traceparent=None):
    body = json.dumps({"income": 1.0, "debt": 0.5}).encode()
    headers = {"content-type": "application/json", **({"traceparent": traceparent} if traceparent else {})}
    req = urllib.request.Request(f"{server.url}/v2/score/{tenant}", body, headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def truth(server, pid, label, hold=0.0):
    """POST /v2/truth: (status, answer, seconds)."""
    data = json.dumps({"pid": pid, "truth": label}).encode()
    req = urllib.request.Request(f"{server.url}/v2/truth?hold={hold}", data, {"content-type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    return status, json.loads(text) if text.startswith(b"{") else text, time.perf_counter() - started


def metric(server, name, labels=""):
    text = http_get(server.url + "/metrics")[1]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{" + labels) or (not labels and line.startswith(name + " ")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def dropped(server):
    return metric(server, "mlmonitor_telemetry_dropped_total", 'signal="assessments"')


def held(mlflow_url, otel_trace_id):
    info = call(f"{mlflow_url}/api/3.0/mlflow/traces/tr-{otel_trace_id}", timeout=30)["trace"]["trace_info"]
    return info.get("assessments") or []


def written(mlflow_url, otel_trace_id):
    """The assessments on a trace, none while MLflow does not hold the trace yet."""
    try:
        return held(mlflow_url, otel_trace_id)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def trace_of(server, pid):
    return verify_prediction(secret(server), pid, 3600).trace_id


def warnings(server):
    return [line for line in server.stderr_lines + server.stdout_lines
            if "could not be written to MLflow" in line]


@pytest.fixture(scope="module")
def app(mlflow_server, tmp_path_factory):
    """The outsider app over OTLP to the real MLflow, its assessments too (the README's defaults)."""
    server = outsider(tmp_path_factory.mktemp("outsider"), mlflow_server.url, mlflow_server.experiment_id)
    with server:
        yield server


def landed(mlflow_url, trace_ids, count=2, timeout=60):
    """The assessments MLflow holds on each trace, once each holds ``count``."""
    def found():
        held_now = {t: held(mlflow_url, t) for t in trace_ids}
        return held_now if all(len(a) >= count for a in held_now.values()) else None
    return wait_for(found, timeout, what=f"{count} assessments on each of {len(trace_ids)} traces")


@pytest.mark.slow
def test_hostile_labels_are_answered_counted_redacted_and_capped(app, mlflow_server):
    hostile = {
        "huge": "x" * 1_000_000,
        "deep": json.loads("[" * 900 + "]" * 900),
        "nan": float("nan"),
        "nested_nan": {"p": [float("inf"), float("nan")]},
        "secret": {"api_key": SECRET_KEY, "note": f"Authorization: Bearer {SECRET_KEY}"},
        "surrogate": "A\ud800B",  # valid JSON (a lone \\ud800 escape), not encodable as UTF-8
    }
    before = metric(app, "mlmonitor_feedback_total")
    predictions = {name: grade(app) for name in hostile}
    for name, label in hostile.items():
        status, answer, _ = truth(app, predictions[name]["pid"], label)
        assert status == 202 and answer["result"] == "incorrect", (name, answer)
    assert metric(app, "mlmonitor_feedback_total") == before + len(hostile)
    ids = {name: trace_of(app, predictions[name]["pid"]) for name in hostile}
    found = landed(mlflow_server.url, list(ids.values()))
    text = json.dumps(found)
    assert "sk-LIVE" not in text and "[REDACTED]" in text
    for name, trace_id in ids.items():
        assert sorted(a["assessment_name"] for a in found[trace_id]) == ["correct", "ground_truth"], name
        assert len(json.dumps(found[trace_id])) < 4000, name  # a 1 MB label sends at most 1 KiB
    assert dropped(app) == 0


@pytest.mark.slow
def test_forged_unsampled_and_old_ids(app, mlflow_server):
    key = secret(app)
    real = grade(app)
    forged = sign_prediction("not-the-secret-" * 4, "grader", "2026.12", "A",
                             trace_context=(trace_of(app, real["pid"]), "ab" * 8))
    assert truth(app, forged, "A")[1]["refused"] == "bad_signature"
    unsampled = grade(app, traceparent=f"00-{'ab' * 16}-{'cd' * 8}-00")
    assert verify_prediction(key, unsampled["pid"], 60).trace_id == ""  # no trace context, as short as before
    old = sign_prediction(key, "grader", "2026.12", "B")  # minted by an mlmonitor without trace context
    for pid, result in ((unsampled["pid"], "correct"), (old, "correct")):
        status, answer, _ = truth(app, pid, unsampled["grade"] if pid != old else "B")
        assert (status, answer["result"]) == (202, result), answer
    assert truth(app, real["pid"], "A")[0] == 202
    landed(mlflow_server.url, [trace_of(app, real["pid"])])
    assert held(mlflow_server.url, trace_of(app, real["pid"]))[0]["metadata"]["model_name"] == "grader"
    assert dropped(app) == 0


@pytest.mark.slow
def test_an_id_replayed_to_both_workers_at_once_is_written_once(app, mlflow_server):
    """Each worker's duplicate check passes (neither saw the id); both threads read the trace
    before either wrote: the later writer must not leave a second pair."""
    predictions = [grade(app) for _ in range(8)]
    answers = []
    with ThreadPoolExecutor(2) as pool:
        for p in predictions:
            answers += pool.map(lambda p: truth(app, p["pid"], "A", hold=0.2), [p, p])
    assert {a["worker"] for _, a, _ in answers} == workers(app.pid)
    ids = [trace_of(app, p["pid"]) for p in predictions]
    landed(mlflow_server.url, ids)
    time.sleep(2)  # both writers done (their trace was there: no retry waits)
    counts = {t: len(held(mlflow_server.url, t)) for t in ids}
    assert set(counts.values()) == {2}, counts


@pytest.mark.slow
def test_a_sigkilled_worker_the_other_keeps_sending(app, mlflow_server):
    """The other worker answers and sends; uvicorn's supervisor spawns a new one, which reads the
    same secret file: ids minted before the kill are accepted by both, and land."""
    minted = [grade(app) for _ in range(8)]
    landed(mlflow_server.url, [trace_of(app, p["pid"]) for p in minted], count=0)  # exported before the kill
    victim = min(workers(app.pid))
    os.kill(victim, signal.SIGKILL)
    predictions = [grade(app) for _ in range(6)]
    answers = [truth(app, p["pid"], "A") for p in predictions]
    assert all(status == 202 for status, _, _ in answers), answers
    assert victim not in {a["worker"] for _, a, _ in answers}
    def both_serve():
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: truth(app, "not-an-id", "A", hold=0.2)[1], range(2)))
        return len({a["worker"] for a in answers}) == 2 and victim not in workers(app.pid)
    wait_for(both_serve, 60, what="a new worker serving beside the other")
    later = []
    with ThreadPoolExecutor(2) as pool:
        for pair in zip(minted[::2], minted[1::2]):
            later += pool.map(lambda p: truth(app, p["pid"], "A", hold=0.2), pair)
    assert [status for status, _, _ in later] == [202] * len(minted), later
    assert {a["worker"] for _, a, _ in later} - {victim} - {a["worker"] for _, a, _ in answers}, \
        "the new worker took none"
    landed(mlflow_server.url, [trace_of(app, p["pid"]) for p in predictions + minted])


# -- an MLflow that hangs, trickles or refuses ------------------------------------------------------

def listener():
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what it accepted too: bound again later
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    return sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def trickling():
    """Accepts, answers a status line, then one byte of a header every 0.2 s, for ever: no read
    ever times out. Returns its URL and the connections it took."""
    sock, url = listener()
    taken = []

    def feed(conn):
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while True:
                conn.sendall(b"a")
                time.sleep(0.2)
        except OSError:
            conn.close()

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            taken.append(conn)
            threading.Thread(target=feed, args=(conn,), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return sock, url, taken


def refusing():
    """Answers every call at once, 429 and 500 in turn."""
    sock, url = listener()
    answers = [b"HTTP/1.1 429 Too Many Requests\r\n", b"HTTP/1.1 500 Internal Server Error\r\n"]

    def serve():
        n = 0
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answers[n % 2] + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            n += 1
    threading.Thread(target=serve, daemon=True).start()
    return sock, url


def test_a_trickling_server_holds_the_sending_thread_no_longer_than_a_call(monkeypatch):
    """Every read gets a byte before its timeout: only the call's own deadline frees the thread,
    which then tries again (a second connection) and counts the drop."""
    monkeypatch.setattr(assessments, "CALL_S", 1.0, raising=False)
    monkeypatch.setattr(assessments, "RETRY_DELAYS_S", (0.1,))
    monkeypatch.setattr(assessments._Process, "sender", None)
    sock, url, taken = trickling()
    counts = []
    try:
        parts = assessments.assessments_for("grader", "1", "A", "correct", redactor(DEFAULT_REDACT))
        assessments.submit((url, {}), "ef" * 16, "n1", parts, lambda _signal, n: counts.append(n))
        wait_for(lambda: counts == [2], 30, what="the trickled call cut, tried again, dropped")
        assert len(taken) == 2
    finally:
        sock.close()
        for conn in taken:
            conn.close()


@pytest.mark.slow
def test_a_hanging_trickling_or_refusing_mlflow_costs_feedback_nothing(mlflow_server, tmp_path):
    """Four copies of the app, the feedback to each interleaved: assessments to the real MLflow,
    to one that never answers, one that trickles, one that answers 429/500. Latency alike, the
    queue bounded (20 a process here), drops counted, one warning a worker, a prompt SIGTERM."""
    hang, hang_url = listener()
    trickle, trickle_url, taken = trickling()
    refuse, refuse_url = refusing()
    knobs = {"OUTSIDER_QUEUE": "20", "OUTSIDER_RETRIES": "0.2,0.2"}
    servers = {"mlflow": outsider(tmp_path, mlflow_server.url, mlflow_server.experiment_id)}
    for name, url in (("hanging", hang_url), ("trickling", trickle_url), ("refusing", refuse_url)):
        servers[name] = outsider(tmp_path, mlflow_server.url, mlflow_server.experiment_id,
                                 MLFLOW_TRACKING_URI=url, **knobs)
    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            list(pool.map(GunicornProcess.start, servers.values()))
        ms = {name: [] for name in servers}
        for _ in range(50):
            for name, server in servers.items():
                status, answer, seconds = truth(server, grade(server)["pid"], "A")
                assert status == 202, answer
                ms[name].append(seconds * 1000.0)
        report = {name: (statistics.median(v), sorted(v)[int(len(v) * 0.99) - 1], max(v)) for name, v in ms.items()}
        print("feedback ms (median, p99, max):", {k: tuple(round(x, 2) for x in v) for k, v in report.items()})
        for name in ("hanging", "trickling", "refusing"):
            assert report[name][0] < report["mlflow"][0] + 5.0, report
            assert report[name][2] < 1000.0, report  # never waited on a call
        # 100 assessments a server; a worker holds at most 20 queued + 1 in its call (2 assessments each)
        wait_for(lambda: dropped(servers["refusing"]) == 100, 30, what="every refused one dropped")
        for name in ("hanging", "trickling"):
            assert 100 - 2 * 2 * 21 <= dropped(servers[name]) < 100, name
        assert dropped(servers["mlflow"]) == 0
        for name in ("hanging", "trickling", "refusing"):
            assert 1 <= len(warnings(servers[name])) <= 2, warnings(servers[name])  # one a worker that dropped
        for name in ("hanging", "trickling"):  # SIGTERM with a full queue and a call in flight
            pids = workers(servers[name].pid)
            started = time.monotonic()
            assert servers[name].stop(timeout=30) == 0
            took = time.monotonic() - started
            assert took < 10 and not [p for p in pids if Path(f"/proc/{p}").exists()], (name, took)
            print(f"{name}: SIGTERM to exit {took:.2f} s")
    finally:
        for server in servers.values():
            server.stop()
        for sock in (hang, trickle, refuse):
            sock.close()
        for conn in taken:
            conn.close()


class Relay:
    """MLflow as the app's assessments see it, stopped and started again on the same port: a
    TCP relay to the real server that, stopped, refuses connections and resets those open."""

    def __init__(self, target: str) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.sock, self.url = listener()
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.serve, args=(self.sock,), daemon=True).start()

    def serve(self, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self):
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes its accept(): else the port stays bound
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        threading.Thread(target=self.serve, args=(self.sock,), daemon=True).start()


@pytest.mark.slow
def test_mlflow_down_mid_run_then_back_later_feedback_lands_again(mlflow_server, tmp_path):
    """Feedback while MLflow is down is retried (1, 2, 4, ... s) and lands once it is back within
    the bound; feedback after it is back lands; nothing is dropped here."""
    relay = Relay(mlflow_server.url)
    server = outsider(tmp_path, mlflow_server.url, mlflow_server.experiment_id, MLFLOW_TRACKING_URI=relay.url)
    try:
        with server:
            before = grade(server)
            assert truth(server, before["pid"], "A")[0] == 202
            landed(mlflow_server.url, [trace_of(server, before["pid"])])
            relay.stop()
            during = [grade(server) for _ in range(4)]
            assert [truth(server, p["pid"], "B")[0] for p in during] == [202] * 4
            time.sleep(1.5)  # each has been refused at least once
            assert not any(written(mlflow_server.url, trace_of(server, p["pid"])) for p in during)
            relay.start()
            after = [grade(server) for _ in range(4)]
            assert [truth(server, p["pid"], "C")[0] for p in after] == [202] * 4
            landed(mlflow_server.url, [trace_of(server, p["pid"]) for p in during + after])
            assert dropped(server) == 0
    finally:
        relay.stop()
