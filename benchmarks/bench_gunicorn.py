"""Throughput under gunicorn: 2 sync workers on loopback, Debian's ``wrk`` as the load generator.

Method (issue 8, part 2): bare Flask, mlmonitor full (``-c python:mlmonitor.gunicorn``,
multiprocess metrics, a JSON line per request to stdout, a span per request
through a batch processor to an exporter that drops) and the peer stack
(prometheus-flask-exporter's ``GunicornInternalPrometheusMetrics``, OTel Flask
instrumentation with the same batch processor, a structlog line) each run under
gunicorn with 2 sync workers on 127.0.0.1 and a free port. wrk POSTs the JSON
body (a small Lua script) for a bounded time after a short warm-up. The
configurations alternate (A B C, then C B A, ...) so drift of the shared
machine hits all of them; requests/s is compared to bare within each
repetition and the medians are reported. gunicorn's stdout (the log lines)
goes to /dev/null.

Real export (issue 19): the ``_otlp`` configurations send their spans over OTLP/HTTP
to a live receiver in its own process on 127.0.0.1 (``otlp_receiver.py``: it reads
and discards, answering 200): mlmonitor building its own provider from
``OTEL_EXPORTER_OTLP_ENDPOINT``, and the peer stack with the SDK's ``OTLPSpanExporter``.
The requests and bytes the receiver got from each run are recorded, so an export
that silently failed cannot pass as a cheap one. The view runs its model call in one
stage (``BENCH_STAGE=1``, see bench_apps.py; ``--no-stage`` to leave it out), so a
traced request makes two spans, or one with ``stage_spans="events"``.

Run: python benchmarks/bench_gunicorn.py [--quick] [--duration S] [--reps N] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from bench_apps import BODY, configs_from  # noqa: E402
from report import target, verdict, write_report  # noqa: E402

DEFAULT_OUT = HERE / "results" / "gunicorn.json"
CONFIGS = ["bare", "mlmonitor_no_traces", "mlmonitor_full", "mlmonitor_full_otlp",
           "mlmonitor_full_otlp_events", "peer_stack", "peer_stack_otlp"]
TARGET = 0.85
#: p99 with real export at most this many times mlmonitor's metrics + log configuration's
P99_TARGET = 2.0

LUA = """wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
""" % BODY.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A benchmarked server in its own session (``proc``, ``url``, ``stderr`` log file, set by
    the subclass); ready when ``/healthz`` answers, stopped by PID (SIGTERM, then SIGKILL to
    its group)."""

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        self.stderr.seek(0)
        raise RuntimeError(f"{type(self).__name__.lower()} did not start:\n{self.stderr.read()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.stderr.close()


class Gunicorn(ServerProcess):
    """gunicorn, two sync workers, with mlmonitor's hooks for mlmonitor's configurations."""

    def __init__(self, config: str, workdir: str, extra_env: Dict[str, str]) -> None:
        self.port = free_port()
        self.metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=workdir)
        os.chmod(self.metrics_dir, 0o700)
        command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "sync",
                   "--bind", f"127.0.0.1:{self.port}", "--pythonpath", str(HERE),
                   "--log-level", "warning"]
        if config.startswith("mlmonitor"):
            command += ["-c", "python:mlmonitor.gunicorn"]
        command.append("bench_apps:gunicorn_app()")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_")}
        env.update({"BENCH_CONFIG": config, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
                    "OTEL_SDK_DISABLED": "false", **extra_env})
        self.stderr = open(os.path.join(workdir, f"gunicorn-{config}-{self.port}.log"), "w+")
        self.proc = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"



def parse_wrk(text: str) -> Dict[str, Any]:
    """Requests/s and the latency percentiles of ``wrk --latency`` output."""
    units = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    result: Dict[str, Any] = {}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    result["requests_per_s"] = float(match.group(1)) if match else 0.0
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        result[f"p{pct}_ms"] = float(value) * units[unit]
    match = re.search(r"(\d+) requests in", text)
    result["requests"] = int(match.group(1)) if match else 0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result["socket_errors"] = sum(int(x) for x in match.groups()) if match else 0
    return result


def wrk(url: str, script: str, duration: float, connections: int) -> Dict[str, Any]:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(duration))}s", "--latency",
               "-s", script, url + "/predict"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=duration + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr}")
    return parse_wrk(proc.stdout)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_and_parent(pid: str) -> Any:
    """(parent pid, CPU seconds of all its threads) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(parent: int) -> float:
    """CPU time so far of the children of ``parent`` (gunicorn's workers, export threads
    included); on a loaded machine this counts work, not waiting for a core."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            row = _cpu_and_parent(pid)
            if row is not None and row[0] == parent:
                total += row[1]
    return total


def own_cpu_seconds(pid: int) -> float:
    row = _cpu_and_parent(str(pid))
    return row[1] if row is not None else 0.0


class Receiver:
    """otlp_receiver.py in its own process; stopped by PID."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "otlp_receiver.py")],
                                     stdout=subprocess.PIPE, text=True, start_new_session=True)
        port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{port}"

    def stats(self) -> Dict[str, int]:
        with urllib.request.urlopen(self.endpoint + "/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


def measure(config: str, workdir: str, script: str, duration: float, warmup: float,
            connections: int, receiver: Any, stage: bool) -> Dict[str, Any]:
    extra_env = {"BENCH_STAGE": "1" if stage else "0"}
    if "_otlp" in config:
        extra_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        before = receiver.stats()
    server = Gunicorn(config, workdir, extra_env)
    try:
        server.wait_ready()
        if warmup > 0:
            wrk(server.url, script, warmup, connections)
        cpu_before = cpu_seconds(server.proc.pid)
        receiver_before = own_cpu_seconds(receiver.proc.pid) if receiver is not None else 0.0
        result = wrk(server.url, script, duration, connections)
        served = max(result["requests"], 1)
        result["worker_cpu_us_per_request"] = (cpu_seconds(server.proc.pid) - cpu_before) / served * 1e6
        if "_otlp" in config:
            result["receiver_cpu_us_per_request"] = (
                own_cpu_seconds(receiver.proc.pid) - receiver_before) / served * 1e6
    finally:
        server.stop()  # the workers flush their spans as they exit
    result["config"] = config
    if "_otlp" in config:
        after = receiver.stats()
        result["exported_requests"] = after["requests"] - before["requests"]
        result["exported_bytes"] = after["bytes"] - before["bytes"]
    return result


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of load per run")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions (>= 2)")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated, from bench_apps.CONFIGS (bare is always run)")
    parser.add_argument("--no-stage", action="store_true",
                        help="the view without its stage (BENCH_STAGE=0)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    configs = configs_from(args.configs)
    if args.quick:
        args.duration, args.warmup, args.reps = 1.0, 0.0, 2
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    started = time.time()
    workdir = tempfile.mkdtemp(prefix="mlmonitor-bench-gunicorn-")
    script = os.path.join(workdir, "post.lua")
    Path(script).write_text(LUA)
    runs: List[Dict[str, Any]] = []
    ratios: Dict[str, List[float]] = {c: [] for c in configs}
    receiver = Receiver() if any("_otlp" in c for c in configs) else None
    try:
        print(f"{'rep':>3} {'configuration':26} {'req/s':>8} {'x bare':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'errors':>6} {'exported':>9} {'CPU us':>8} {'bare/CPU':>6}")
        for rep in range(args.reps):
            order = configs if rep % 2 == 0 else configs[::-1]
            rep_runs = {}
            for config in order:
                result = measure(config, workdir, script, args.duration, args.warmup,
                                 args.connections, receiver, not args.no_stage)
                result["rep"] = rep
                rep_runs[config] = result
                runs.append(result)
            for config in configs:
                result = rep_runs[config]
                ratio = result["requests_per_s"] / rep_runs["bare"]["requests_per_s"]
                result["ratio_to_bare"] = ratio
                ratios[config].append(ratio)
                # load-robust: bare's worker CPU per request over this one's
                result["cpu_ratio_to_bare"] = (rep_runs["bare"]["worker_cpu_us_per_request"]
                                               / result["worker_cpu_us_per_request"])
                exported = result.get("exported_bytes")
                print(f"{rep:3d} {config:26} {result['requests_per_s']:8.0f} {ratio:7.2f} "
                      f"{result.get('p50_ms', 0):7.2f} {result.get('p99_ms', 0):7.2f} "
                      f"{result['non_2xx'] + result['socket_errors']:6d} "
                      f"{'-' if exported is None else f'{exported / 1e6:.1f} MB':>9} "
                      f"{result['worker_cpu_us_per_request']:8.0f} {result['cpu_ratio_to_bare']:6.2f}",
                      flush=True)
    finally:
        if receiver is not None:
            receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        summary[config] = {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in mine),
            "ratio_to_bare": statistics.median(ratios[config]),
            **{k: statistics.median(r.get(k, 0.0) for r in mine)
               for k in ("p50_ms", "p75_ms", "p90_ms", "p99_ms")},
            "errors": sum(r["non_2xx"] + r["socket_errors"] for r in mine),
            "worker_cpu_us_per_request": statistics.median(r["worker_cpu_us_per_request"] for r in mine),
            "cpu_ratio_to_bare": statistics.median(r["cpu_ratio_to_bare"] for r in mine),
        }
        if "_otlp" in config:
            summary[config]["exported_bytes_per_request"] = statistics.median(
                r["exported_bytes"] / max(r["requests"], 1) for r in mine)
            summary[config]["receiver_cpu_us_per_request"] = statistics.median(
                r["receiver_cpu_us_per_request"] for r in mine)
    # p99 over mlmonitor's own metrics + log configuration, per repetition, then the median
    if "mlmonitor_no_traces" in configs:
        for config in configs:
            p99s = [r.get("p99_ms", 0.0) / base.get("p99_ms", 1.0) for r in runs
                    if r["config"] == config
                    for base in runs if base["config"] == "mlmonitor_no_traces"
                    and base["rep"] == r["rep"]]
            summary[config]["p99_x_metrics_log"] = statistics.median(p99s)
    report = {"benchmark": "gunicorn", "quick": args.quick, "workers": 2, "stage": not args.no_stage,
              "duration_s": args.duration, "warmup_s": args.warmup, "reps": args.reps,
              "connections": args.connections, "results": summary, "runs": runs, "targets": {}}
    value = summary.get("mlmonitor_full", {}).get("ratio_to_bare")
    if value is not None:
        report["targets"]["gunicorn_full_vs_bare"] = target(value, TARGET, ">=")
    real = summary.get("mlmonitor_full_otlp", {})
    if "ratio_to_bare" in real:
        report["targets"]["gunicorn_real_export_vs_bare"] = target(real["ratio_to_bare"], TARGET, ">=")
    if "p99_x_metrics_log" in real:
        report["targets"]["gunicorn_real_export_p99_x_metrics_log"] = target(
            real["p99_x_metrics_log"], P99_TARGET, "<=")
    print()
    for config, row in summary.items():
        print(f"{config:26} median {row['requests_per_s']:8.0f} req/s, {row['ratio_to_bare']:.2f}x "
              f"bare, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, worker CPU "
              f"{row['worker_cpu_us_per_request']:.0f} us/request ({row['cpu_ratio_to_bare']:.2f} bare/this)"
              + (f" ({row['p99_x_metrics_log']:.2f}x metrics+log)" if "p99_x_metrics_log" in row else "")
              + (f", {row['exported_bytes_per_request']:.0f} B/request exported"
                 if "exported_bytes_per_request" in row else ""))
    for name, row in report["targets"].items():
        print(f"{name}: {row['value']:.2f} (target {row['op']} {row['target']}) {verdict(row)}")
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
