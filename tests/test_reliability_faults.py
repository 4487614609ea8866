"""Faults survived (issue 9, items 1-4) under a real gunicorn with 4 workers and loopback load.

Latency is measured and reported (``-s`` prints it); the only latency assertions are generous
bounds, because this machine is shared and noisy.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers.gunicorn_proc import GunicornProcess, free_port, http_get
from helpers.otlp import OTLPReceiver

pytestmark = pytest.mark.slow

APP = "tests.apps.simple_app:app"
WORKERS = 4
GRACEFUL = 10
REQUESTS = 240
TRACING = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "32",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
    "OTEL_BSP_SCHEDULE_DELAY": "50",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
}


def predict(url: str, headers: dict | None = None, timeout: float = 60.0):
    req = urllib.request.Request(url + "/predict", data=b'{"x": 1}', method="POST",
                                 headers={"Content-Type": "application/json", "X-Sleep": "0.003",
                                          **(headers or {})})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        body, status = err.read(), err.code
    return status, body, time.perf_counter() - started


def load(url: str, n: int = REQUESTS, concurrency: int = 4, headers: dict | None = None):
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: predict(url, headers), range(n)))


def p99(results) -> float:
    latencies = sorted(r[2] for r in results)
    return latencies[int(len(latencies) * 0.99) - 1]


def samples(url: str) -> dict:
    status, text = http_get(url + "/metrics", timeout=60)
    assert status == 200, text[:500]
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = out.get(key, 0.0) + s.value
    return out


def total(values: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in values.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def children(pid: int) -> list:
    """The worker pids of a gunicorn master."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def server(tmp_path: Path, extra_env: dict, args=()) -> GunicornProcess:
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp"), "GRACEFUL_TIMEOUT": str(GRACEFUL),
           "OTEL_SERVICE_NAME": "faults", **extra_env}
    return GunicornProcess(app=APP, env=env, workers=WORKERS, args=list(args))


def stop_within_graceful_timeout(g: GunicornProcess) -> float:
    started = time.monotonic()
    code = g.stop(timeout=GRACEFUL + 20)
    elapsed = time.monotonic() - started
    assert code == 0, "\n".join(g.stderr_lines[-30:])
    assert elapsed < GRACEFUL + 3, f"shutdown took {elapsed:.1f}s"
    return elapsed


# -- broken OTLP endpoints ------------------------------------------------------------------

class BlackHole:
    """Accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held = []
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping = True
        self.sock.close()
        for conn in self.held:
            conn.close()


class SlowReceiver:
    """Answers every export with 200 after a delay longer than half the exporter's timeout."""

    def __init__(self, delay: float = 0.4):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def closed_port():
    yield type("Closed", (), {"endpoint": f"http://127.0.0.1:{free_port()}"})()


@pytest.fixture(scope="module")
def healthy_p99(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("healthy")
    with OTLPReceiver() as receiver:
        g = server(tmp, {**TRACING, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}).start()
        try:
            load(g.url, 40)  # warm-up
            results = load(g.url)
        finally:
            g.stop(timeout=GRACEFUL + 20)
    assert all(r[0] == 200 for r in results)
    return p99(results)


@pytest.mark.parametrize("endpoint", ["closed_port", "black_hole", "slow"])
def test_broken_otlp_endpoint_costs_no_latency_or_answers_and_drops_are_counted(
        endpoint, healthy_p99, tmp_path):
    target = {"closed_port": closed_port, "black_hole": BlackHole, "slow": SlowReceiver}[endpoint]()
    with target as sink:
        g = server(tmp_path, {**TRACING, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint}).start()
        try:
            load(g.url, 40)
            results = load(g.url)
            values = samples(g.url)
        finally:
            elapsed = stop_within_graceful_timeout(g)
    statuses = {r[0] for r in results}
    assert statuses == {200}, statuses
    assert all(b'"prediction":"setosa"' in r[1] for r in results)
    fault_p99 = p99(results)
    print(f"\n[{endpoint}] p99 {fault_p99 * 1000:.1f} ms vs healthy {healthy_p99 * 1000:.1f} ms "
          f"(ratio {fault_p99 / healthy_p99:.2f}); shutdown {elapsed:.1f}s; dropped spans "
          f"{total(values, 'mlmonitor_telemetry_dropped_total', signal='traces'):.0f}")
    # what this guards against is an exporter on the request path: a synchronous span processor
    # adds about 1 s a request when the collector is down; the slack keeps a loaded machine's
    # jitter (0.14 s p99 seen beside a full test run) from failing it
    assert fault_p99 < healthy_p99 * 3 + 0.5
    assert not any("Traceback" in line for line in g.stderr_lines), "\n".join(g.stderr_lines[-30:])
    if endpoint != "slow":
        assert total(values, "mlmonitor_telemetry_dropped_total", signal="traces") > 0
    assert total(values, "mlmonitor_internal_errors_total") == 0


# -- the multiprocess directory ------------------------------------------------------------------

def test_deleted_multiprocess_directory_spares_predictions_and_metrics_recover(tmp_path):
    g = server(tmp_path, {}).start()
    try:
        load(g.url, 40)
        before = total(samples(g.url), "mlmonitor_http_requests_total")
        shutil.rmtree(tmp_path / "mp", ignore_errors=True)  # as rm -rf: live workers may race it
        statuses = []
        for _ in range(4):
            results = load(g.url, 20)
            assert {r[0] for r in results} == {200}
            status, text = http_get(g.url + "/metrics", timeout=60)  # a hang would time out here
            assert status in (200, 503) and "Traceback" not in text
            statuses.append(status)
        # each worker checks its files every 5 s, on its next request: poll until the counts are back
        deadline = time.monotonic() + 30
        while True:
            load(g.url, 20)
            after = samples(g.url)
            if total(after, "mlmonitor_http_requests_total") >= before + 60 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(f"\n/metrics while the directory was gone: {statuses}; "
              f"requests counted before {before:.0f}, after recovery {total(after, 'mlmonitor_http_requests_total'):.0f}")
        assert total(after, "mlmonitor_http_requests_total") >= before + 60
        assert total(after, "mlmonitor_predictions_total") > 0
    finally:
        g.stop(timeout=GRACEFUL + 20)


@pytest.mark.parametrize("garbage", ["random", "negative_length", "huge_used"])
def test_corrupted_metrics_file_gives_partial_answer_counted_never_a_hang(garbage, tmp_path):
    g = server(tmp_path, {}).start()
    try:
        load(g.url, 40)
        good = total(samples(g.url), "mlmonitor_predictions_total")
        bad = tmp_path / "mp" / "counter_999999.db"
        data = bytearray(64 * 1024)
        if garbage == "random":
            data[:] = os.urandom(len(data))
        elif garbage == "negative_length":  # makes prometheus-client's reader loop forever
            data[0:4] = (64).to_bytes(4, "little")
            data[8:12] = (-24).to_bytes(4, "little", signed=True)
        else:
            data[0:4] = (0x7FFFFFFF).to_bytes(4, "little")
        bad.write_bytes(bytes(data))
        status, text = http_get(g.url + "/metrics", timeout=60)
        # the bad file costs only its own entries: the answer is the good files' counts, exactly
        assert status == 200 and "Traceback" not in text
        values = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                values[key] = values.get(key, 0.0) + s.value
        assert total(values, "mlmonitor_predictions_total") == good == 40
        assert total(values, "mlmonitor_internal_errors_total", component="exposition") == 1
        assert {r[0] for r in load(g.url, 20)} == {200}
        bad.unlink()  # recovered without a restart once the file is gone
        errors = total(samples(g.url), "mlmonitor_internal_errors_total", component="exposition")
        assert total(samples(g.url), "mlmonitor_internal_errors_total", component="exposition") == errors
    finally:
        g.stop(timeout=GRACEFUL + 20)


# -- a hung model ---------------------------------------------------------------------------------

def test_hung_model_worker_is_killed_others_answer_counters_stay_monotonic(tmp_path):
    g = server(tmp_path, {"TIMEOUT": "3"}).start()
    try:
        load(g.url, 20)
        first = samples(g.url)
        workers = set(children(g.pid))
        hung = ThreadPoolExecutor(1).submit(predict, g.url, {"X-Sleep": "30"}, 20.0)
        results = load(g.url, 60, concurrency=3)
        assert {r[0] for r in results} == {200}
        try:
            hung_status = hung.result(timeout=20)[0]
        except Exception as exc:  # the killed worker closed the connection
            hung_status = type(exc).__name__
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("WORKER TIMEOUT" in line for line in g.stderr_lines):
            time.sleep(0.2)
        assert any("WORKER TIMEOUT" in line for line in g.stderr_lines)
        deadline = time.monotonic() + 60  # the master replaces the killed worker
        while time.monotonic() < deadline and (
                len(children(g.pid)) != len(workers) or set(children(g.pid)) == workers):
            time.sleep(0.1)
        assert len(children(g.pid)) == len(workers) and set(children(g.pid)) != workers
        load(g.url, 20)
        second = samples(g.url)
        for key, value in first.items():
            if key[0].endswith(("_total", "_count", "_bucket", "_sum")) and "process" not in key[0]:
                assert second.get(key, 0.0) >= value, key
        assert total(second, "mlmonitor_http_requests_in_progress") == 0
        print(f"\nhung request ended as {hung_status}")
    finally:
        g.stop(timeout=GRACEFUL + 20)


# -- stdout nobody reads -----------------------------------------------------------------------------

def test_blocked_stdout_makes_requests_wait_and_loses_no_line(tmp_path):
    """Documented behaviour: log lines are written synchronously. When stdout is a full pipe
    that nobody reads, a request waits on its write (its answer is already sent when the body is
    closed, so the *next* request on that worker waits); reading again releases them all and no
    line is lost."""
    import fcntl
    import json
    import subprocess
    import sys
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ: a small pipe fills in a few lines
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stderr = open(tmp_path / "stderr.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "mp"),
           "TIMEOUT": "60"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "example_app/gunicorn.conf.py", "--bind",
         f"127.0.0.1:{port}", "--workers", "1", APP], cwd=str(Path(__file__).parents[1]),
        env=env, stdout=write_end, stderr=stderr, start_new_session=True)
    os.close(write_end)
    answered, blocked = 0, False
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if http_get(url + "/healthz", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        for _ in range(60):  # ~250-byte lines: the 4 KiB pipe is full after ~16
            try:
                status = predict(url, timeout=2.0)[0]
            except OSError:
                blocked = True
                break
            assert status == 200
            answered += 1
        assert blocked, "stdout never blocked the worker"
        lines = []
        drained = threading.Event()

        def drain():
            with os.fdopen(read_end, "r") as stream:
                for line in stream:
                    lines.append(line)
            drained.set()

        threading.Thread(target=drain, daemon=True).start()
        results = load(url, 10, concurrency=2)
        assert {r[0] for r in results} == {200}
        deadline = time.monotonic() + 15  # the drain thread reads what the worker wrote
        while time.monotonic() < deadline and sum('"/predict"' in line for line in lines) < answered + 10:
            time.sleep(0.05)
        served = [json.loads(line) for line in lines if line.startswith("{")]
        # every predict answered (and the one that timed out on the client side) is logged
        assert sum(1 for x in served if x.get("route") == "/predict") >= answered + 10
        print(f"\nstdout blocked after {answered} requests; all lines delivered once drained")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(GRACEFUL + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        stderr.close()
