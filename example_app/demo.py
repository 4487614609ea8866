"""The five-minute demo: ``python -m example_app.demo`` (what ``make demo`` runs).

Starts the example app under gunicorn on 127.0.0.1, drives a short burst of mixed traffic
(valid, invalid, forced failures, slow, drifted, ground-truth feedback), reads the key
numbers back from ``/metrics``, shows one JSON log line and keeps serving until Ctrl-C.
``--port`` (or ``PORT``, as in ``PORT=8000 make demo``) picks the port, else a free one is used.
``--once`` (or ``MLMONITOR_DEMO_ONCE=1``) exits after the burst, for CI; the "Try it" lines are
printed only when the app keeps serving.
``--with-prometheus`` also starts Debian's ``prometheus`` and ``prometheus-alertmanager`` on
127.0.0.1 with temporary storage, the shipped rules (``alerts/*.rules.yml``) and routing
(``alerts/alertmanager.yml``), scraping the app every 5 s as job ``mlmonitor`` (the job the
shipped rules select).
Every process it starts runs in its own process group and is stopped by PID on the way out.
"""
from __future__ import annotations

import argparse
import collections
import glob
import importlib.util
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

from mlmonitor.assessments import GROUND_TRUTH
from mlmonitor.contract import DEFAULT_JOB
from mlmonitor.tools.drift import psi

from example_app import loadgen, model, textgen

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GUNICORN_CONF = HERE / "gunicorn.conf.py"
ALERTS = REPO / "alerts"
APT_HINT = "sudo apt-get install -y prometheus prometheus-alertmanager"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 3.0) -> Tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_http(url: str, timeout: float, proc: Optional[subprocess.Popen] = None) -> bool:
    """True once ``url`` answers 200; False on timeout or when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if _get(url, 2.0)[0] == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


class Child:
    """A subprocess in its own process group whose output is drained into a bounded buffer."""

    def __init__(self, name: str, command: List[str], env: Optional[Dict[str, str]] = None,
                 echo: bool = False) -> None:
        self.name = name
        self.lines: Deque[str] = collections.deque(maxlen=2000)
        self.echo = echo
        self.proc = subprocess.Popen(
            command, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.append(line.rstrip("\n"))
            if self.echo:
                print(f"[{self.name}] {line}", end="", flush=True)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID, then SIGKILL to the child's own process group if it lingers."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for _ in range(100):  # workers leave shortly after their master
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.killpg(self.proc.pid, signal.SIGKILL)


# -- reading /metrics --------------------------------------------------------------------------

def scrape(url: str) -> Dict[str, List[Any]]:
    """Samples of every family, keyed by sample name (``..._total``, ``..._bucket``)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = _get(url)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}")
    samples: Dict[str, List[Any]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append(sample)
    return samples


def total_by(samples: Dict[str, List[Any]], name: str, *labels: str, **match: str) -> Dict[Tuple[str, ...], float]:
    """Sum of a sample's values grouped by ``labels``, over samples matching ``match``."""
    out: Dict[Tuple[str, ...], float] = collections.defaultdict(float)
    for s in samples.get(name, []):
        if all(s.labels.get(k) == v for k, v in match.items()):
            out[tuple(s.labels.get(label, "") for label in labels)] += s.value
    return dict(out)


def histogram_quantile(q: float, buckets: Dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative bucket counts (upper bound -> count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return math.nan
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return bounds[-1]


def key_numbers(metrics_url: str) -> Dict[str, Any]:
    """The numbers the demo prints: predictions and errors per version, statuses, p95, feedback."""
    samples = scrape(metrics_url)
    iris = model.MODEL_NAME  # the burst's model (the streamed generations are textgen's, read apart)
    predictions = total_by(samples, "mlmonitor_predictions_total", "model_version", model_name=iris)
    errors = total_by(samples, "mlmonitor_prediction_errors_total", "model_version", "error_type", model_name=iris)
    llm = {"model_name": textgen.MODEL_NAME}
    tokens = total_by(samples, "mlmonitor_tokens_total", "direction", **llm)
    first = total_by(samples, "mlmonitor_time_to_first_chunk_seconds_bucket", "le", **llm)
    statuses = total_by(samples, "mlmonitor_http_requests_total", "status", route="/predict")
    feedback = total_by(samples, "mlmonitor_feedback_total", "model_version", "outcome")
    buckets = total_by(samples, "mlmonitor_http_request_duration_seconds_bucket", "le", route="/predict")
    p95 = histogram_quantile(0.95, {float(k[0]): v for k, v in buckets.items()})
    live = total_by(samples, "mlmonitor_feature_bin_total", "feature", "bin")
    reference: Dict[Tuple[str, str], float] = {}
    for s in samples.get("mlmonitor_feature_reference_ratio", []):
        key = (s.labels["feature"], s.labels["bin"])
        reference[key] = max(reference.get(key, 0.0), s.value)
    drift = {}
    for feature in sorted({f for f, _ in reference}):
        counts = {b: v for (f, b), v in live.items() if f == feature}
        ratios = {b: v for (f, b), v in reference.items() if f == feature}
        drift[feature] = round(psi(counts, ratios), 3)
    return {
        "predictions": {k[0]: int(v) for k, v in sorted(predictions.items())},
        "errors": {f"{k[0]}/{k[1]}": int(v) for k, v in sorted(errors.items())},
        "http_status": {k[0]: int(v) for k, v in sorted(statuses.items())},
        "feedback": {f"{k[0]}/{k[1]}": int(v) for k, v in sorted(feedback.items())},
        "p95_latency_s": p95,
        "psi": drift,
        "generations": int(sum(total_by(samples, "mlmonitor_predictions_total", **llm).values())),
        "tokens": {k[0]: int(v) for k, v in sorted(tokens.items())},
        "ttfc_p95_s": histogram_quantile(0.95, {float(k[0]): v for k, v in first.items()}),
    }


def example_log_line(lines: Sequence[str]) -> Optional[str]:
    """One JSON log line of a successful prediction (else any JSON line)."""
    fallback = None
    for line in list(lines):
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if not isinstance(item, dict):
            continue
        if item.get("route") == "/predict" and str(item.get("status")) == "200":
            return line
        fallback = fallback or line
    return fallback


# -- Prometheus and Alertmanager ----------------------------------------------------------------

def prometheus_config(app_port: int, alertmanager_port: int, rule_files: Sequence[str]) -> str:
    """A scrape config for the demo (JSON is valid YAML)."""
    return json.dumps({
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": list(rule_files),
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": DEFAULT_JOB,
                            "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}]}],
    }, indent=2)


def start_prometheus(app_port: int, workdir: Path, echo: bool) -> List[Child]:
    prom_port, am_port = free_port(), free_port()
    rules = sorted(glob.glob(str(ALERTS / "*.rules.yml")))
    config = workdir / "prometheus.yml"
    config.write_text(prometheus_config(app_port, am_port, rules))
    am_config = ALERTS / "alertmanager.yml"
    children = [
        Child("alertmanager", ["prometheus-alertmanager", f"--config.file={am_config}",
                               f"--storage.path={workdir / 'alertmanager'}",
                               f"--web.listen-address=127.0.0.1:{am_port}",
                               "--cluster.listen-address="], echo=echo),
        Child("prometheus", ["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={workdir / 'prometheus'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"], echo=echo),
    ]
    for child, port in zip(children, (am_port, prom_port)):
        child.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        if not wait_http(child.url + "/-/ready", 30, child.proc):  # type: ignore[attr-defined]
            tail = "\n".join(list(child.lines)[-20:])
            raise RuntimeError(f"{child.name} did not start:\n{tail}")
    print(f"Prometheus:   http://127.0.0.1:{prom_port}/alerts  ({len(rules)} rule files from alerts/)")
    print(f"Alertmanager: http://127.0.0.1:{am_port}/")
    return children


# -- MLflow ------------------------------------------------------------------------------------

#: MLflow pins gunicorn<27, so its server runs from its own venv (``make venv-mlflow``)
MLFLOW_BIN = REPO / ".venv-mlflow" / "bin" / "mlflow"


def start_mlflow(workdir: Path, env: Dict[str, str], echo: bool) -> Child:
    """A local MLflow tracking server (sqlite store) taking the app's spans over OTLP/HTTP: the
    environment it gets makes mlmonitor export there, into the Default experiment (id 0)."""
    port = free_port()
    child = Child("mlflow", [str(MLFLOW_BIN), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                             "--workers", "1"], echo=echo)
    child.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    if not wait_http(child.url + "/health", 120, child.proc):  # type: ignore[attr-defined]
        raise RuntimeError("mlflow did not start:\n" + "\n".join(list(child.lines)[-20:]))
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = f"{child.url}/v1/traces"  # type: ignore[attr-defined]
    env["OTEL_EXPORTER_OTLP_TRACES_HEADERS"] = "x-mlflow-experiment-id=0"
    env["OTEL_BSP_SCHEDULE_DELAY"] = "500"
    print(f"MLflow:       {child.url}/#/experiments/0 (traces of the Default experiment)")  # type: ignore[attr-defined]
    return child


def wait_http_count(read: Any, timeout: float, want: int) -> int:
    """``read()`` once it reaches ``want``, or once it has stopped growing for 12 s (MLflow
    ingests OTLP slowly, about a second a batch here, and each worker exports on its own)."""
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        seen.append(read())
        if seen[-1] >= want or (len(seen) >= 7 and seen[-1] == seen[-7] > 0):
            break
        time.sleep(2)
    return seen[-1] if seen else 0


def mlflow_traces(url: str) -> int:
    """How many traces MLflow holds in the Default experiment (its REST API)."""
    request = urllib.request.Request(
        url + "/api/2.0/mlflow/traces?experiment_ids=0&max_results=500", method="GET")
    with urllib.request.urlopen(request, timeout=10) as response:
        return len(json.loads(response.read()).get("traces", []))


def mlflow_expectations(url: str) -> int:
    """How many traces of the Default experiment carry the ground truth that feedback wrote on them
    (an expectation; MLflow's REST API, counted here: MLflow 3.7 cannot filter on its presence)."""
    count, token = 0, ""
    while True:
        body = {"locations": [{"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": "0"}}],
                "max_results": 500, **({"page_token": token} if token else {})}
        request = urllib.request.Request(url + "/api/3.0/mlflow/traces/search", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        count += sum(any(a.get("assessment_name") == GROUND_TRUTH and "expectation" in a
                         for a in trace.get("assessments", [])) for trace in answer.get("traces", []))
        token = answer.get("next_page_token", "")
        if not token:
            return count


# -- the run ------------------------------------------------------------------------------------

def burst(url: str, requests: int, seed: int) -> List[Dict[str, Any]]:
    """Mixed traffic in two phases: normal, then drifted with worse ground truth."""
    phases = [
        loadgen.Options(url=url, requests=requests, concurrency=4, invalid_fraction=0.05,
                        error_fraction=0.03, slow_fraction=0.02, feedback_accuracy=0.95, seed=seed),
        loadgen.Options(url=url, requests=max(1, requests // 2), concurrency=4, invalid_fraction=0.05,
                        error_fraction=0.03, drift={"petal_length_cm": 1.5, "petal_width_cm": 1.0},
                        feedback_accuracy=0.6, seed=seed + 1),
    ]
    return [loadgen.run(opts) for opts in phases]


def background(url: str, stop: threading.Event, rate: float) -> None:
    """Gentle steady traffic while serving, so rates and dashboards stay alive: iris and, every
    other round, the diabetes regressor (with a renamed column now and then)."""
    seed = 1000
    while not stop.is_set():
        seed += 1
        extra = ({"model": "diabetes", "mismatch_fraction": 0.05} if seed % 2 else {})
        try:
            loadgen.run(loadgen.Options(url=url, requests=max(1, int(rate * 10)), rate=rate,
                                        concurrency=1, invalid_fraction=0.02, error_fraction=0.01,
                                        feedback_accuracy=0.9, seed=seed, **extra))
        except Exception:  # the server is going away; the main thread reports that
            stop.wait(1.0)


def _truthy(text: Optional[str]) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m example_app.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or "0"),
                        help="port on 127.0.0.1 (default: $PORT, else a free one)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "4")))
    parser.add_argument("--requests", type=int, default=300, help="size of the first traffic phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--once", action="store_true", default=_truthy(os.environ.get("MLMONITOR_DEMO_ONCE")),
                        help="exit after the burst (also MLMONITOR_DEMO_ONCE=1)")
    parser.add_argument("--with-prometheus", action="store_true",
                        help="also start prometheus and prometheus-alertmanager on 127.0.0.1")
    parser.add_argument("--with-mlflow", action="store_true",
                        help="also start an MLflow tracking server (make venv-mlflow) and send it the traces")
    parser.add_argument("--background-rate", type=float, default=2.0,
                        help="requests/s sent while serving after the burst (0 = none)")
    parser.add_argument("--follow-logs", action="store_true", help="echo every server log line")
    parser.add_argument("--asgi", action="store_true",
                        help="serve the FastAPI example (example_app.asgi) on uvicorn workers instead")
    return parser


def _stop_like_ctrl_c(signum: int, _frame: object) -> None:
    """SIGTERM (a supervisor, `timeout make demo`) or SIGHUP (the terminal closed) stops the demo as
    Ctrl-C does: the servers run in their own sessions and would outlive it otherwise."""
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _stop_like_ctrl_c)
    if args.with_prometheus:
        missing = [b for b in ("prometheus", "prometheus-alertmanager") if shutil.which(b) is None]
        if missing:
            print(f"demo: {', '.join(missing)} not on PATH; install with: {APT_HINT}", file=sys.stderr)
            return 2
    if args.with_mlflow and not MLFLOW_BIN.exists():
        print(f"demo: --with-mlflow needs {MLFLOW_BIN}; build it with: make venv-mlflow", file=sys.stderr)
        return 2
    if args.asgi:  # not in the example extra: the FastAPI example is optional
        missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            print(f"demo: --asgi needs {', '.join(missing)}; pip install fastapi uvicorn", file=sys.stderr)
            return 2
    port = args.port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="mlmonitor-demo-"))
    env = {**os.environ, "PORT": str(port), "WORKERS": str(args.workers), "PYTHONUNBUFFERED": "1"}
    env.pop("BIND", None)
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(workdir / "metrics"))
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    children: List[Child] = []
    stop = threading.Event()
    try:
        if args.with_mlflow:
            children.append(start_mlflow(workdir, env, args.follow_logs))
        served = ["-k", "uvicorn.workers.UvicornWorker", "example_app.asgi:app"] if args.asgi else ["example_app.app:app"]
        app = Child("gunicorn", [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), *served],
                    env=env, echo=args.follow_logs)
        children.append(app)
        print(f"Starting the {'FastAPI' if args.asgi else 'Flask'} example app under gunicorn"
              f" ({args.workers} workers) on {base} ...", flush=True)
        if not wait_http(base + "/healthz", 60, app.proc):
            print("demo: the app did not become ready; its output:", file=sys.stderr)
            print("\n".join(list(app.lines)[-40:]), file=sys.stderr)
            return 1
        if args.with_prometheus:
            children.extend(start_prometheus(port, workdir, args.follow_logs))
        print(f"Sending a burst of mixed traffic (seed {args.seed}) ...", flush=True)
        summaries = burst(base, args.requests, args.seed)
        numbers = key_numbers(base + "/metrics")
        sent = sum(s["requests"] for s in summaries)
        print()
        print(f"Metrics URL:  {base}/metrics")
        print(f"Health:       {base}/healthz")
        print(f"Sent {sent} predict requests; the app's own counters say:")
        print(f"  predictions per version:   {json.dumps(numbers['predictions'])}")
        print(f"  /predict responses:        {json.dumps(numbers['http_status'])}")
        print(f"  prediction errors:         {json.dumps(numbers['errors'])}")
        print(f"  feedback outcomes:         {json.dumps(numbers['feedback'])}")
        print(f"  p95 /predict latency:      {numbers['p95_latency_s'] * 1000:.1f} ms (from the histogram)")
        print(f"  feature drift (PSI, run):  {json.dumps(numbers['psi'])}  (> 0.2 = drifted)")
        print(f"  streamed generations:      {numbers['generations']} ({textgen.MODEL_NAME}), tokens"
              f" {json.dumps(numbers['tokens'])}, time to first chunk p95 {numbers['ttfc_p95_s'] * 1000:.1f} ms")
        if args.with_mlflow:
            mlflow_url = children[0].url  # type: ignore[attr-defined]
            try:
                traced = wait_http_count(lambda: mlflow_traces(mlflow_url), 120, sent)
            except OSError as exc:
                traced = f"not readable ({exc})"
            print(f"  traces in MLflow so far:   {traced}  ({mlflow_url}/#/experiments/0; more may still arrive)")
            judged = sum(numbers["feedback"].values())
            try:
                labelled: Any = wait_http_count(lambda: mlflow_expectations(mlflow_url), 120, judged)
            except OSError as exc:
                labelled = f"not readable ({exc})"
            print(f"  traces with ground truth:  {labelled}  (of {judged} feedback; the wrong ones: "
                  "mlflow.search_traces(filter_string=\"feedback.correct = 'false'\"))")
        line = example_log_line(app.lines)
        print("Example JSON log line (stdout of the app):")
        print(f"  {line}" if line else "  (no JSON log line seen)")
        sys.stdout.flush()
        if args.once:
            return 0
        if args.background_rate > 0:
            threading.Thread(target=background, args=(base, stop, args.background_rate), daemon=True).start()
        print("Try it (while the demo serves):")
        print(f"  curl -s -XPOST {base}/predict -H 'Content-Type: application/json' -d "
              "'{\"features\": {\"sepal_length_cm\": 5.1, \"sepal_width_cm\": 3.5, "
              "\"petal_length_cm\": 1.4, \"petal_width_cm\": 0.2}}'")
        print(f"  curl -s -XPOST {base}/v1/models/diabetes:predict -H 'Content-Type: application/json' -d "
              "'{\"features\": {\"age\": 50, \"sex\": 1, \"bmi\": 26.5, \"bp\": 94, \"s1\": 189, "
              "\"s2\": 115, \"s3\": 50, \"s4\": 4, \"s5\": 4.6, \"s6\": 91}}'")
        print(f"  curl -N -XPOST {base}/generate -H 'Content-Type: application/json' -d "
              "'{\"prompt\": \"Tell me about the iris flowers\", \"max_tokens\": 16}'")
        print(f"  curl -s {base}/metrics | grep mlmonitor_predictions_total")
        print("Serving; press Ctrl-C to stop.", flush=True)
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        dead = [c.name for c in children if c.proc.poll() is not None]
        print(f"demo: {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping ...")
        return 0
    finally:
        stop.set()
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
