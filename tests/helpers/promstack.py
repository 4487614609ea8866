"""A real Prometheus, a real Alertmanager and a webhook receiver for tests, all on 127.0.0.1.

Each server runs from Debian's binary in its own process group with its own temp storage and
a free port; it is stopped by its PID (SIGTERM, then SIGKILL) when the test ends. Output goes
to files in the temp dir, quoted when something fails. Prometheus scrapes its first targets
about 6 s after it starts: wait on a query result (``wait_for(lambda: query(...))``), not
on readiness.

    with Prometheus(tmp_path, targets={"app": [host_port]}, rule_files=[...]) as prom:
        wait_for(lambda: query(prom.url, 'up{job="app"} == 1'), 30)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

import pytest

from .gunicorn_proc import free_port

__all__ = ["require_binary", "promtool_test", "wait_for", "query", "Prometheus", "Alertmanager", "WebhookReceiver"]

T = TypeVar("T")


def require_binary(name: str) -> str:
    """The binary's path; a missing one fails the test under CI (CI=true) and skips it elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    package = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}.get(name, name)
    message = f"{name} is not installed (Debian: apt-get install {package})"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message + "; CI must have it", pytrace=False)
    pytest.skip(message)


def promtool_test(path: Path, context: str = "") -> subprocess.CompletedProcess:
    """``promtool test rules path``, which must pass (its output, and ``context``, shown if not)."""
    proc = subprocess.run([require_binary("promtool"), "test", "rules", str(path)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr + context
    return proc
    raise AssertionError("unreachable")


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.25,
             what: str = "") -> T:
    """Call ``predicate`` until it returns something truthy and return that; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except (OSError, ValueError) as exc:  # server not up yet, half-written answer
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"not true within {timeout:.0f}s: {what or predicate}{detail}")
        time.sleep(interval)


def _get_json(url: str, timeout: float = 60.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def query(promurl: str, expr: str) -> List[Dict[str, Any]]:
    """Instant query; a list of ``{"metric": {...}, "value": float}`` (empty when no series)."""
    url = f"{promurl}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = _get_json(url)
    if body.get("status") != "success":
        raise ValueError(f"query {expr!r} failed: {body}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": float(data["result"][1])}]
    return [{"metric": r["metric"], "value": float(r["value"][1])} for r in data["result"]]


class _Server:
    """A binary in its own process group, its output in files, stopped by PID."""

    name = "server"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path) -> None:
        self.dir = Path(workdir) / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None

    def command(self) -> List[str]:
        raise NotImplementedError

    @property
    def log(self) -> str:
        path = self.dir / "output.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self, timeout: float = 30.0) -> "_Server":
        out = open(self.dir / "output.log", "wb")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir,
                                         start_new_session=True)
        finally:
            out.close()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log}")
            with urllib.request.urlopen(self.url + self.ready_path, timeout=2) as resp:
                return resp.status == 200

        try:
            wait_for(ready, timeout, what=f"{self.name} ready at {self.url}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> "_Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class Prometheus(_Server):
    """Prometheus scraping ``targets`` (job -> ["host:port", ...]) every second, evaluating
    ``rule_files`` every second and sending alerts to ``alertmanager_url`` if given; ``features``
    are passed to ``--enable-feature`` (e.g. ``("exemplar-storage",)``)."""

    name = "prometheus"

    def __init__(self, workdir: Path, targets: Mapping[str, Sequence[str]],
                 rule_files: Sequence[str | Path] = (), alertmanager_url: Optional[str] = None,
                 interval: str = "1s", features: Sequence[str] = ()) -> None:
        super().__init__(workdir)
        self.features = list(features)
        self.binary = require_binary("prometheus")
        config: Dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(Path(f).resolve()) for f in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(addrs)}]}
                for job, addrs in targets.items()
            ],
        }
        if alertmanager_url:
            host = urllib.parse.urlsplit(alertmanager_url).netloc
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [host]}]}]}
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is valid YAML

    def command(self) -> List[str]:
        return [self.binary, f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--rules.alert.resend-delay=1s", "--log.level=warn",
                *(f"--enable-feature={feature}" for feature in self.features)]

    def exemplars(self, expr: str, start: float, end: float) -> List[Dict[str, Any]]:
        """``/api/v1/query_exemplars``: ``[{"seriesLabels": {...}, "exemplars": [{"labels": {...},
        "value": "0.01", "timestamp": 1700000000.1}, ...]}, ...]`` between ``start`` and ``end`` (unix s)."""
        params = urllib.parse.urlencode({"query": expr, "start": start, "end": end})
        body = _get_json(f"{self.url}/api/v1/query_exemplars?{params}")
        if body.get("status") != "success":
            raise ValueError(f"query_exemplars {expr!r} failed: {body}")
        return body["data"] or []

    def alerts(self) -> List[Dict[str, Any]]:
        """Alerts Prometheus holds now (pending and firing)."""
        return _get_json(self.url + "/api/v1/alerts")["data"]["alerts"]


class Alertmanager(_Server):
    """Alertmanager with the given config text, no clustering (``--cluster.listen-address=``)."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_text: str) -> None:
        super().__init__(workdir)
        self.binary = require_binary("prometheus-alertmanager")
        self.config_path = self.dir / "alertmanager.yml"
        self.config_path.write_text(config_text)

    def command(self) -> List[str]:
        return [self.binary, f"--config.file={self.config_path}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=", "--log.level=warn"]


class WebhookReceiver:
    """An HTTP server on a free 127.0.0.1 port, in a thread, that keeps every JSON payload POSTed."""

    def __init__(self) -> None:
        self.payloads: List[Dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    payload = json.loads(self.rfile.read(length) or b"null")
                except ValueError:
                    payload = {"invalid": True}
                with receiver._lock:
                    receiver.payloads.append(payload)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self) -> List[Dict[str, Any]]:
        """Every alert of every payload so far, each with its payload's ``receiver`` added."""
        with self._lock:
            payloads = list(self.payloads)
        return [{**alert, "receiver": p.get("receiver")} for p in payloads
                for alert in p.get("alerts", [])]

    def find(self, status: str = "firing", **labels: str) -> List[Dict[str, Any]]:
        """Alerts received with this status whose labels include ``labels``."""
        return [a for a in self.alerts() if a.get("status") == status
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
