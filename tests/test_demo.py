"""The README's main command, ``python -m example_app.demo --once``: runs, reports, cleans up.

And ``make demo``: takes ``PORT``, installs only the example extras (``make test`` adds the test ones).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

from example_app import demo
from helpers.gunicorn_proc import REPO, free_port
from mlmonitor.contract import DEFAULT_JOB


def make_dry_run(*args: str, env: dict | None = None) -> str:
    """The commands ``make`` would run from scratch (-n -B), for a throw-away venv path."""
    outer = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(["make", "--no-print-directory", "-n", "-B", "VENV=/nonexistent/venv", *args],
                          cwd=REPO, text=True, capture_output=True, timeout=60,
                          env={**outer, **(env or {})})  # as if typed, also when run under `make test`
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_demo_takes_a_port_and_installs_only_the_example_extras():
    out = make_dry_run("demo", env={"PORT": "8123"})
    assert "pip install -q -e '.[example]'" in out
    assert "test" not in out and "bench" not in out
    assert out.strip().splitlines()[-1].endswith("-m example_app.demo --port 8123")
    assert make_dry_run("demo", "PORT=8124").strip().endswith("--port 8124")
    assert make_dry_run("demo", env={"PORT": ""}).strip().endswith("-m example_app.demo")
    assert "pip install -q -e '.[example,test]'" in make_dry_run("test")


def test_the_demo_scrapes_the_job_the_shipped_rules_select():
    config = yaml.safe_load(demo.prometheus_config(8000, 9093, []))
    assert [job["job_name"] for job in config["scrape_configs"]] == [DEFAULT_JOB]


def _gunicorn_children_of(pid: int) -> list:
    """Processes whose command line names the demo's gunicorn config and whose ancestry is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:
            continue
        if "example_app/gunicorn.conf.py" in cmdline and f"MLMONITOR_DEMO_TEST_TAG={pid}".encode() in environ:
            found.append(int(entry))
    return found


@pytest.mark.slow
def test_demo_once_prints_where_to_look_and_leaves_nothing_running():
    tag = str(os.getpid())
    port = free_port()
    env = {**os.environ, "MLMONITOR_DEMO_ONCE": "1", "MLMONITOR_DEMO_TEST_TAG": tag, "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "example_app.demo", "--requests", "120"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"demo did not finish in 180 s:\n{out[-3000:]}\n{err[-3000:]}")
    assert proc.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert f"Metrics URL:  http://127.0.0.1:{port}/metrics" in out, out
    assert "Try it" not in out and "curl" not in out  # nothing serves any more
    predictions = re.search(r"predictions per version:\s+(\{.*\})", out)
    assert predictions, out
    counts = json.loads(predictions.group(1))
    assert set(counts) == {"v1", "v2"} and sum(counts.values()) == 180  # 120 + 60 requests
    assert re.search(r"p95 /predict latency:\s+\d+(\.\d+)? ms", out), out
    assert re.search(r"feedback outcomes:\s+\{.*correct", out), out
    log_line = out.split("Example JSON log line (stdout of the app):\n", 1)[1].splitlines()[0].strip()
    assert json.loads(log_line)["route"] == "/predict"
    assert _gunicorn_children_of(int(tag)) == []


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_demo_stopped_by_a_signal_leaves_nothing_running(stop_signal):
    """`timeout make demo`, a supervisor or a closed terminal stop the demo as Ctrl-C does: before,
    its gunicorn (in a session of its own) kept serving on the port."""
    tag = str(os.getpid())
    port = free_port()
    env = {**os.environ, "MLMONITOR_DEMO_TEST_TAG": tag, "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "example_app.demo", "--requests", "20"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        for line in proc.stdout:  # until it serves
            if line.startswith("Serving; press Ctrl-C"):
                break
        assert _gunicorn_children_of(int(tag)), "the demo's gunicorn should be serving"
        proc.send_signal(stop_signal)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        left = _gunicorn_children_of(int(tag))
        for pid in left:  # what a failed run left serving: this test's own processes
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 0
    assert left == []
