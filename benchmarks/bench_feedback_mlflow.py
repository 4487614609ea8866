"""The feedback request's latency with MLflow up and down (issue 29), in one run.

Three copies of one small Flask app run under gunicorn (2 sync workers each, ``-c
python:mlmonitor.gunicorn``): two send their spans over OTLP to MLflow (``x-mlflow-experiment-id``),
one to a live ``mlflow server`` (sqlite, from .venv-mlflow), one to a port where nothing listens; the
third, the baseline, traces without exporting anything (no MLflow, no assessments). Each first serves
``--requests`` predictions (each returns a signed id that carries its trace context); then their
feedback goes out to the three apps in turn (the order rotating), ``--rate`` a second each, one
connection a request, and the client times each answer. With MLflow up every feedback is written as
two assessments on its trace; with it down both are tried for ~30 s and dropped. The run checks what
really happened: the traces MLflow holds with ground truth, and the down app's
``mlmonitor_telemetry_dropped_total{signal="assessments"}``. Prints median, p90, p99 and worst
latency per app.

Run: python benchmarks/bench_feedback_mlflow.py [--requests N] [--rate R] [--quick] [--out PATH]
(needs .venv-mlflow: make venv-mlflow)
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MLFLOW = REPO / ".venv-mlflow" / "bin" / "mlflow"
DEFAULT_OUT = HERE / "results" / "feedback_mlflow.json"
sys.path.insert(0, str(REPO))  # the demo's count of traces with ground truth
from example_app.demo import mlflow_expectations  # noqa: E402

APP = '''
from flask import Flask, request
from mlmonitor import Monitor
from mlmonitor.tokens import InvalidFeedback

app = Flask(__name__)
monitor = Monitor(app, model_name="iris")


@app.post("/predict")
@monitor.prediction
def predict():
    return {"id": monitor.prediction_id("setosa")}


@app.post("/feedback")
def feedback():
    body = request.get_json()
    try:
        return {"result": monitor.record_feedback(body["id"], body["label"])}
    except InvalidFeedback as exc:
        return {"refused": exc.reason}, 400


@app.get("/healthz")
def healthz():
    return "ok"
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def post(port: int, path: str, body: Any) -> tuple[int, Any, float]:
    """Status, JSON answer and milliseconds of one POST on its own connection."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json", "Connection": "close"})
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()
    return response.status, answer, (time.perf_counter() - started) * 1000.0


def summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "max_ms": ordered[-1]}


def dropped(port: int) -> dict[str, float]:
    """The app's ``mlmonitor_telemetry_dropped_total`` by signal (spans, assessments, ...)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        lines = response.read().decode().splitlines()
    prefix = 'mlmonitor_telemetry_dropped_total{signal="'
    return {line[len(prefix):].split('"')[0]: float(line.split()[-1]) for line in lines if line.startswith(prefix)}


def traces(url: str) -> int:
    """All traces of the Default experiment (the predictions' and the feedbacks')."""
    count, token = 0, ""
    while True:
        query = f"&page_token={token}" if token else ""
        request = urllib.request.Request(f"{url}/api/2.0/mlflow/traces?experiment_ids=0&max_results=500{query}")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        count += len(answer.get("traces", []))
        token = answer.get("next_page_token", "")
        if not token:
            return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="feedback requests per app")
    parser.add_argument("--rate", type=float, default=20.0, help="feedback requests a second, per app")
    parser.add_argument("--quick", action="store_true", help="50 requests (numbers meaningless)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    count = 50 if args.quick else args.requests
    if not MLFLOW.exists():
        print(f"needs {MLFLOW}: make venv-mlflow", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-feedback-"))
    (tmp / "feedback_app.py").write_text(APP)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        mlflow_port = free_port()
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        procs.append(subprocess.Popen(
            [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}", "--default-artifact-root", str(tmp / "art")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_up(mlflow_url + "/health", procs[0], 240)
        apps = {}
        for name, endpoint in (("up", mlflow_url), ("down", f"http://127.0.0.1:{free_port()}"), ("off", None)):
            port = free_port()
            metrics = tmp / f"prom-{name}"
            metrics.mkdir()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MLFLOW_", "MLMONITOR_"))}
            env.update({"PYTHONPATH": str(tmp), "PROMETHEUS_MULTIPROC_DIR": str(metrics),
                        "OTEL_BSP_SCHEDULE_DELAY": "500"})
            env.update({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint + "/v1/traces",
                        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-mlflow-experiment-id=0"}
                       if endpoint else {"OTEL_TRACES_EXPORTER": "none"})
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "python:mlmonitor.gunicorn", "--workers", "2",
                 "--bind", f"127.0.0.1:{port}", "feedback_app:app"], cwd=tmp, env=env,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            wait_up(f"http://127.0.0.1:{port}/healthz", procs[-1], 120)
            apps[name] = port
        ids = {name: [post(port, "/predict", {})[1]["id"] for _ in range(count)] for name, port in apps.items()}
        time.sleep(3)  # the predictions' spans reach MLflow before the feedback starts
        ms: dict[str, list[float]] = {name: [] for name in apps}
        interval = 1.0 / args.rate
        started = time.monotonic()
        for i in range(count):
            order = list(apps)[i % 3:] + list(apps)[:i % 3]
            for name in order:
                status, answer, took = post(apps[name], "/feedback", {"id": ids[name][i], "label": "setosa"})
                if status != 200:
                    raise RuntimeError(f"{name}: feedback answered {status}: {answer}")
                ms[name].append(took)
            time.sleep(max(0.0, started + (i + 1) * interval - time.monotonic()))
        deadline = time.monotonic() + 120
        while True:  # what happened behind the answers
            landed, lost = mlflow_expectations(mlflow_url), {name: dropped(port) for name, port in apps.items()}
            done = landed + lost["up"].get("assessments", 0) // 2
            if (done >= count and lost["down"].get("assessments", 0) >= 2 * count) or time.monotonic() > deadline:
                break
            time.sleep(2)
        report = {"requests": count, "rate_per_s": args.rate, "quick": args.quick,
                  "mlflow_up": summary(ms["up"]), "mlflow_down": summary(ms["down"]),
                  "no_mlflow": summary(ms["off"]),
                  "traces_in_mlflow": traces(mlflow_url), "traces_with_ground_truth": landed,
                  "dropped": lost}
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    print(f"feedback requests: {count} per app at {args.rate:g}/s, 2 sync gunicorn workers each")
    print(f"{'MLflow':8} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}  (ms, client side)")
    for name, key in (("up", "mlflow_up"), ("down", "mlflow_down"), ("none", "no_mlflow")):
        row = report[key]
        print(f"{name:8} {row['median_ms']:8.2f} {row['p90_ms']:8.2f} {row['p99_ms']:8.2f} {row['max_ms']:8.2f}")
    print(f"traces in MLflow: {report['traces_in_mlflow']} (predictions and feedback); with ground truth: "
          f"{landed} of {count}")
    print(f"dropped (mlmonitor_telemetry_dropped_total by signal): {json.dumps(lost)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
