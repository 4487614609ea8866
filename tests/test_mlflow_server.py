"""MLflow as the trace backend, with a real ``mlflow server`` on 127.0.0.1 (sqlite store in tmp).

MLflow pins gunicorn<27 and our venv has 27: the server, and every app process that imports
mlflow, run from .venv-mlflow (``make venv-mlflow``; ``make test`` builds it). This process
talks HTTP to them. In CI a missing .venv-mlflow fails these tests; elsewhere they skip.
"""
import io
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from flask import Flask, jsonify, request

from mlmonitor import Monitor
from mlmonitor.trace_provider import build_tracer_provider

from tests.helpers.gunicorn_proc import GunicornProcess, free_port
from tests.helpers.promstack import wait_for

pytestmark = pytest.mark.slow
IN_CI = os.environ.get("CI", "").lower() == "true"

REPO = Path(__file__).resolve().parents[1]
MLFLOW_VENV = REPO / ".venv-mlflow"
MLFLOW_LOWEST = REPO / ".venv-mlflow-lowest"  # mlflow-skinny and OpenTelemetry at their lower bounds


def mlflow_tool(name, venv=MLFLOW_VENV):
    path = venv / "bin" / name
    if not (venv / ".installed").exists() or not path.exists():
        message = f"{venv} is missing: run `make venv-mlflow` (mlflow pins gunicorn<27)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def call(url, body=None, timeout=60.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Server:
    def __init__(self, url, experiment_id):
        self.url, self.experiment_id = url, experiment_id

    def trace(self, trace_id, spans=0):
        """The finished trace of our log line's trace id, once it has ``spans`` spans."""
        def found():
            traces = call(f"{self.url}/api/3.0/mlflow/traces/batchGet?trace_ids=tr-{trace_id}")
            traces = traces.get("traces") or []
            if traces and traces[0]["trace_info"].get("state") == "OK" \
                    and len(traces[0].get("spans", [])) >= spans:
                return traces[0]
            return None
        return wait_for(found, 60, what=f"trace tr-{trace_id} in MLflow")


def start_mlflow_server(tmp):
    """``mlflow server`` on a free port, up and answering; None when it exited first (another
    process took the port between free_port() and its bind)."""
    port = free_port()
    log = open(tmp / f"server-{port}.log", "wb")
    proc = subprocess.Popen(
        [mlflow_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
         "--default-artifact-root", str(tmp / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            return "exited"
        with urllib.request.urlopen(url + "/health", timeout=5) as resp:
            return resp.status == 200 and "up"
    if wait_for(up, 240, what="mlflow server /health") == "exited":
        print((tmp / f"server-{port}.log").read_text()[-2000:])
        return None, None
    return proc, url


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    proc = url = None
    for _ in range(3):
        proc, url = start_mlflow_server(tmp)
        if proc is not None:
            break
    assert proc is not None, "mlflow server exited three times before answering (see stdout)"
    try:
        experiment = wait_for(lambda: call(url + "/api/2.0/mlflow/experiments/create",
                                           {"name": "mlmonitor"}, timeout=30), 120,
                              what="the experiment created")
        yield Server(url, experiment["experiment_id"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_otlp_traces_are_named_with_model_tags(mlflow_server, monkeypatch):
    """The OTLP path needs no MLflow code: env vars alone, our own process and venv."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", mlflow_server.url + "/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                       f"x-mlflow-experiment-id={mlflow_server.experiment_id}")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    provider = build_tracer_provider("mlflow-test")
    logs = io.StringIO()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="1.10", tracer_provider=provider,
                      log_stream=logs, model_run_id="0a1b2c3d4e")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("inference"):
            body = request.get_json()
        return jsonify(y=body["x"])

    client = app.test_client()
    assert client.post("/predict", json={"x": [1]}).status_code == 200
    caller = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert client.post("/predict", json={"x": [2]}, headers={
        "traceparent": f"00-{caller}-00f067aa0ba902b7-01"}).status_code == 200
    provider.force_flush()
    provider.shutdown()
    first, remote = [json.loads(line)["trace_id"] for line in logs.getvalue().splitlines()]
    trace = mlflow_server.trace(first, spans=2)  # the log line's trace id finds it
    info = trace["trace_info"]
    assert info["tags"]["mlflow.traceName"] == "POST /predict"
    assert info["tags"]["ml.model.name"] == "iris"
    assert info["tags"]["ml.model.version"] == "1.10"  # not 1.1
    assert info["tags"]["ml.model.run_id"] == "0a1b2c3d4e"
    assert info["trace_location"]["mlflow_experiment"]["experiment_id"] == \
        mlflow_server.experiment_id
    assert not info.get("request_preview") and not info.get("response_preview")  # not by default
    names = sorted(span["name"] for span in trace["spans"])
    assert names == ["POST /predict", "inference"]
    # a caller's trace: our server span is not its root; MLflow keeps it IN_PROGRESS (documented;
    # mlflow_new_root=True makes a root of its own, tested with doubles in test_mlflow.py)
    assert remote == caller


def run_connected(server_url, experiment_id, count, flush=True, venv=MLFLOW_VENV):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_url, "MLFLOW_EXPERIMENT_ID": experiment_id,
           "FLUSH": "1" if flush else "0", "PYTHONPATH": str(REPO)}
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_TRACES_EXPORTER"):
        env.pop(name, None)
    out = subprocess.run([mlflow_tool("python", venv), str(REPO / "tests/helpers/mlflow_app.py"),
                          str(count)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def lowest_allowed(package):
    from tests.test_good_guest_bounds import lower_bounds
    return lower_bounds(("otlp", "mlflow"))[package]


@pytest.mark.parametrize("venv", [MLFLOW_VENV, MLFLOW_LOWEST], ids=["latest", "lowest"])
def test_connected_mode_one_trace_with_mlflow_spans(mlflow_server, venv):
    """With the latest MLflow, and with mlflow-skinny, OpenTelemetry and Flask at the lowest
    versions setup.cfg allows (3.5 kept MLflow's own provider, 3.6 left the trace unfinished)."""
    if venv == MLFLOW_LOWEST:
        installed = subprocess.run(
            [mlflow_tool("python", venv), "-c", "import mlflow, opentelemetry.sdk.version as v;"
             "print(mlflow.__version__, v.__version__)"], capture_output=True, text=True)
        versions = installed.stdout.split()
        for version, package in zip(versions, ("mlflow-skinny", "opentelemetry-sdk")):
            assert (version + ".").startswith(lowest_allowed(package) + "."), installed
        assert len(versions) == 2, installed
    result, _ = run_connected(mlflow_server.url, mlflow_server.experiment_id, 3, venv=venv)
    assert len(result["trace_ids"]) == 3
    for trace_id in result["trace_ids"]:  # every request, the first of the process included
        trace = mlflow_server.trace(trace_id, spans=3)
        assert trace["trace_info"]["tags"]["mlflow.traceName"] == "POST /predict"
        spans = trace["spans"]
        names = sorted(span["name"] for span in spans)
        assert names == ["POST /predict", "inference", "model"]  # each exported once
        by_id = {span["span_id"]: span for span in spans}
        parents = {span["name"]: by_id.get(span.get("parent_span_id"), {}).get("name")
                   for span in spans}
        assert parents == {"POST /predict": None, "inference": "POST /predict",
                           "model": "inference"}


@pytest.mark.parametrize("preload", [False, True])
def test_connected_mode_in_each_gunicorn_worker(mlflow_server, tmp_path, preload):
    """Set up at import in each worker, or (--preload) once in the master and again by the
    post_fork hook: every worker's first request is whole, and so is every request of the
    worker that replaces one killed with SIGKILL. (The killed worker's spans still in memory
    are lost with it; a graceful exit flushes them.)"""
    env = {"MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_EXPERIMENT_ID":
           mlflow_server.experiment_id, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "PYTHONPATH": str(REPO)}
    server = GunicornProcess(app="tests.helpers.mlflow_app:app", workers=2, env=env,
                             args=["--preload"] if preload else [])
    server.command[0] = mlflow_tool("python")  # gunicorn<27 with mlflow, from .venv-mlflow
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_TRACES_EXPORTER"):
        server.env.pop(name, None)

    def whole(trace_ids):
        for trace_id in trace_ids:
            trace = mlflow_server.trace(trace_id, spans=3)
            assert sorted(span["name"] for span in trace["spans"]) == \
                ["POST /predict", "inference", "model"]

    def served():
        return [line for line in server.json_lines() if line.get("route") == "/predict"]

    server.start(timeout=120)
    try:
        for i in range(6):  # a new connection each: both workers serve some
            assert call(server.url + "/predict", {"x": [i]})["y"] == [2 * i]
        wait_for(lambda: len(served()) == 6, 30, what="six log lines")
        whole([line["trace_id"] for line in served()])  # exported while the workers live
        workers = set(subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                     text=True).stdout.split())
        os.kill(int(sorted(workers)[0]), signal.SIGKILL)
        wait_for(lambda: len(set(subprocess.run(["pgrep", "-P", str(server.pid)],
                                                capture_output=True, text=True).stdout.split())
                             - workers) == 1, 60, what="a replacement worker")
        for i in range(6):
            assert call(server.url + "/predict", {"x": [i]})["y"] == [2 * i]
    finally:
        server.stop()
    after = served()[6:]
    assert len(after) == 6
    whole([line["trace_id"] for line in after])


LINEAGE_APP = """
import json, os
from flask import Flask
from prometheus_client import CollectorRegistry, generate_latest
from mlmonitor import Monitor
registry = CollectorRegistry()
app = Flask("lineage")
monitor = Monitor(app, model_uri=os.environ["URI"], registry=registry, traces=False)
app.post("/predict")(monitor.prediction(lambda: "ok"))
print(json.dumps([line for line in generate_latest(registry).decode().splitlines()
                  if line.startswith("mlmonitor_model_info")]))
"""


def test_registered_model_alias_gives_version_and_run_id(mlflow_server):
    url, api = mlflow_server.url, mlflow_server.url + "/api/2.0/mlflow"
    run = call(api + "/runs/create", {"experiment_id": mlflow_server.experiment_id})["run"]
    run_id = run["info"]["run_id"]
    call(api + "/registered-models/create", {"name": "iris-clf"})
    version = call(api + "/model-versions/create", {
        "name": "iris-clf", "source": f"runs:/{run_id}/model", "run_id": run_id})
    number = version["model_version"]["version"]
    call(api + "/registered-models/alias", {"name": "iris-clf", "alias": "champion",
                                             "version": number})
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONPATH": str(REPO)}
    for uri in ("models:/iris-clf@champion", f"models:/iris-clf/{number}"):
        out = subprocess.run([mlflow_tool("python"), "-c", LINEAGE_APP], env={**env, "URI": uri},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        (line,) = json.loads(out.stdout.strip().splitlines()[-1])
        assert 'model_name="iris-clf"' in line and f'model_version="{number}"' in line
        assert f'run_id="{run_id}"' in line
    env["URI"] = "models:/iris-clf@champion"
    # unreachable registry: a clear error at start-up, not a request-time failure
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run([mlflow_tool("python"), "-c", LINEAGE_APP], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "ConfigError" in out.stderr and "champion" in out.stderr


def test_a_down_tracking_server_never_fails_a_request(mlflow_server):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result, _ = run_connected(dead, mlflow_server.experiment_id, 20, flush=False)
    assert len(result["trace_ids"]) == 20  # each answered 200 and logged
    # how much slower: measured and reported by the benchmark note in the README, not asserted
    print("server down, ms per request:", sorted(result["ms"]))


def test_the_mlflow_demo_sends_its_traces_to_a_local_mlflow_server():
    """``make demo-mlflow``'s run: the demo starts MLflow from .venv-mlflow, the example app's
    spans land in its Default experiment, and the demo reads the count back."""
    import sys
    mlflow_tool("mlflow")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PROMETHEUS_MULTIPROC_DIR", "MLMONITOR_"))}
    run = subprocess.run([sys.executable, "-m", "example_app.demo", "--with-mlflow", "--once",
                          "--requests", "40", "--workers", "2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [line] = [line for line in run.stdout.splitlines() if "traces in MLflow so far:" in line]
    assert int(line.split(":")[1].split()[0]) >= 40  # the predict requests alone


SKLEARN_LINEAGE = """
import json, os
import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from prometheus_client import CollectorRegistry, generate_latest

X, y = load_iris(return_X_y=True)
mlflow.set_experiment(experiment_id=os.environ["EXPERIMENT"])
with mlflow.start_run() as run:  # trained, logged and registered as a user would
    mlflow.sklearn.log_model(LogisticRegression(max_iter=500).fit(X, y), name="model",
                             registered_model_name="iris-sk")

from flask import Flask, jsonify, request
from mlmonitor import Monitor
registry = CollectorRegistry()
app = Flask("served")
monitor = Monitor(app, model_uri="models:/iris-sk/1", registry=registry, traces=False)
model = mlflow.pyfunc.load_model("models:/iris-sk/1")

@app.post("/predict")
@monitor.prediction
def predict():
    return jsonify(y=[int(v) for v in model.predict(request.get_json()["x"])])

answer = app.test_client().post("/predict", json={"x": [list(X[0]), list(X[100])]}).get_json()
print(json.dumps({"run_id": run.info.run_id, "answer": answer,
                  "info": [line for line in generate_latest(registry).decode().splitlines()
                           if line.startswith("mlmonitor_model_info")],
                  "predictions": [line for line in generate_latest(registry).decode().splitlines()
                                  if line.startswith("mlmonitor_predictions_total")]}))
"""


def test_a_registered_scikit_learn_model_served_by_model_uri_shows_its_run_id(mlflow_server):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url, "PYTHONPATH": str(REPO),
           "EXPERIMENT": mlflow_server.experiment_id}
    out = subprocess.run([mlflow_tool("python"), "-c", SKLEARN_LINEAGE], env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["answer"] == {"y": [0, 2]}
    (info,) = result["info"]
    assert 'model_name="iris-sk"' in info and 'model_version="1"' in info
    assert f'run_id="{result["run_id"]}"' in info
    assert any('model_name="iris-sk"' in line and line.endswith(" 1.0")
               for line in result["predictions"])
