"""Start a real gunicorn for a test and stop it by PID: free port, readiness wait, output capture.

gunicorn runs in its own process group (``start_new_session``), so stopping it can never
touch anything the test did not start: SIGTERM to the master, then SIGKILL to that group if
it has not exited in time. stdout (the app's JSON log lines) and stderr (gunicorn's own log)
are collected line by line by reader threads, so the pipes never fill up.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "example_app" / "gunicorn.conf.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 60.0) -> tuple[int, str]:
    """Status and body text of a GET; HTTP errors are returned, not raised. ``timeout`` guards
    against a hang, not latency (a loaded machine is slow); a poll passes a short one."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def post_json(url: str, body: Any, timeout: float = 60.0) -> tuple[int, Any]:
    """Status and JSON answer of a POST of ``body`` as JSON; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class GunicornProcess:
    """One gunicorn master and its workers, bound to 127.0.0.1 on a free port.

    >>> with GunicornProcess(workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp)}) as g:
    ...     http_get(g.url + "/healthz")
    """

    def __init__(self, app: str = "example_app.app:app", config: str | Path = EXAMPLE_CONFIG,
                 env: Optional[Mapping[str, str]] = None, workers: Optional[int] = None,
                 port: Optional[int] = None, args: Sequence[str] = (), cwd: str | Path = REPO,
                 ready_path: str = "/healthz") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ready_path = ready_path
        self.cwd = str(cwd)
        workers_args = ["--workers", str(workers)] if workers is not None else []
        self.command = [sys.executable, "-m", "gunicorn", "-c", str(config),
                        "--bind", f"127.0.0.1:{self.port}", *workers_args, *args, app]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.stdout_lines: List[str] = []
        self.stderr_lines: List[str] = []
        self.proc: Optional[subprocess.Popen] = None
        self._readers: List[threading.Thread] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def _read(self, stream: Any, sink: List[str]) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line.rstrip("\n"))
        stream.close()

    def start(self, timeout: float = 90.0) -> "GunicornProcess":
        """Start and wait until ``ready_path`` answers 200; raises with gunicorn's stderr if not."""
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        for stream, sink in ((self.proc.stdout, self.stdout_lines), (self.proc.stderr, self.stderr_lines)):
            reader = threading.Thread(target=self._read, args=(stream, sink), daemon=True)
            reader.start()
            self._readers.append(reader)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if http_get(self.url + self.ready_path, timeout=2.0)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not become ready (exit {self.proc.returncode});"
                           f" stderr:\n" + "\n".join(self.stderr_lines[-40:]))

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM the master; SIGKILL its process group after ``timeout``. Returns the exit code."""
        if self.proc is None:
            return 0
        pgid = self.proc.pid  # start_new_session: the master leads its own group
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(5)
        deadline = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pgid):  # a worker outlived its master: never leave one behind
            os.killpg(pgid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(5)
        return self.proc.returncode

    def json_lines(self) -> List[Dict[str, Any]]:
        """stdout lines that are JSON objects (the app's log lines)."""
        out = []
        for line in list(self.stdout_lines):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def __enter__(self) -> "GunicornProcess":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
