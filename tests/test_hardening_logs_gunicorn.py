"""Issue 13, item 3: under real gunicorn, long lines from 4 workers reach a slowly read pipe whole.

A pipe keeps a write whole only up to PIPE_BUF bytes; a longer line is split when the pipe is
full and another worker's line lands in its middle. gunicorn's stdout here is a pipe that the
test drains slowly (1 KB every 3 ms), as a busy log collector would, so the pipe stays full.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers.gunicorn_proc import EXAMPLE_CONFIG, REPO, free_port

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS_EACH = 8, 40


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


class SlowReader(threading.Thread):
    """Reads a pipe 1 KB at a time with a pause after each read, until end of file."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, bytearray()

    def run(self) -> None:
        while True:
            chunk = os.read(self.fd, 1024)
            if not chunk:
                return
            self.data += chunk
            time.sleep(0.003)


@pytest.fixture
def loud_gunicorn(tmp_path):
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLE_CONFIG), "--workers", "4",
         "--bind", f"127.0.0.1:{port}", "tests.apps.loud_app:app"],
        cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        start_new_session=True)
    reader = SlowReader(proc.stdout.fileno())
    reader.start()
    errors = []  # gunicorn's own log and Flask's tracebacks, read as fast as they come
    threading.Thread(target=lambda: errors.extend(iter(proc.stderr.readline, b"")), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if _get(url + "/healthz") == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            pytest.fail("gunicorn did not answer")
        assert proc.poll() is None, b"".join(errors[-40:]).decode(errors="replace")
        yield url, proc, reader
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
                proc.wait(5)
        reader.join(30)
        proc.stdout.close()
        proc.stderr.close()


def test_long_lines_from_four_workers_reach_a_slow_pipe_whole(loud_gunicorn):
    url, proc, reader = loud_gunicorn
    total = CLIENTS * REQUESTS_EACH
    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = list(pool.map(lambda _: _get(url + "/predict"), range(total)))
    assert statuses == [500] * total
    os.kill(proc.pid, signal.SIGTERM)  # workers finish their writes; the reader reads to the end
    proc.wait(60)
    reader.join(60)
    assert not reader.is_alive()
    lines = bytes(reader.data).decode("utf-8").split("\n")
    assert lines[-1] == ""
    broken, failed = 0, []
    for line in lines[:-1]:
        try:
            obj = json.loads(line)
        except ValueError:
            broken += 1
            continue
        if obj.get("route") == "/predict":
            failed.append((obj, line))
    assert broken == 0, f"{broken} of {len(lines) - 1} lines are not JSON"
    assert len(failed) == total
    for obj, line in failed:
        assert len(line) + 1 <= 4096 and obj["truncated"] is True
        assert obj["status"] == 500 and obj["error_type"] == "RuntimeError"
        # the stack keeps its most recent part: the raise and the exception's own line
        assert obj["stack"].rstrip().endswith("x" * 40) and obj["error"].startswith("model failed")
