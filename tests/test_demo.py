"""The README's main command, ``python -m example_app.demo --once``: runs, reports, cleans up."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from helpers.gunicorn_proc import REPO

pytestmark = pytest.mark.slow


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


def test_demo_once_prints_where_to_look_and_leaves_nothing_running():
    tag = str(os.getpid())
    env = {**os.environ, "MLMONITOR_DEMO_ONCE": "1", "MLMONITOR_DEMO_TEST_TAG": tag}
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
    match = re.search(r"Metrics URL:\s+(http://127\.0\.0\.1:\d+/metrics)", out)
    assert match, out
    predictions = re.search(r"predictions per version:\s+(\{.*\})", out)
    assert predictions, out
    counts = json.loads(predictions.group(1))
    assert set(counts) == {"v1", "v2"} and sum(counts.values()) == 180  # 120 + 60 requests
    assert re.search(r"p95 /predict latency:\s+\d+(\.\d+)? ms", out), out
    assert re.search(r"feedback outcomes:\s+\{.*correct", out), out
    log_line = out.split("Example JSON log line (stdout of the app):\n", 1)[1].splitlines()[0].strip()
    assert json.loads(log_line)["route"] == "/predict"
    assert _gunicorn_children_of(int(tag)) == []
