"""mlmonitor under real gunicorn (issue 3): exact counts across workers, fork-safe spans, a bounded directory.

Every test starts gunicorn with ``-c python:mlmonitor.gunicorn`` on 127.0.0.1 (free port, own
multiprocess directory under ``tmp_path``), drives it with a threaded ``http.client`` load
(two model versions chosen by the ``X-Model-Version`` header), scrapes ``/metrics`` and parses
the exposition with prometheus-client's parser. Processes are stopped by PID.

Float sums (``_sum`` of histograms, CPU seconds) are compared with a relative slack of 1e-9
between scrapes: merging a dead worker's file adds the same numbers in another order, which
can move the last bit of a float; counts are whole numbers and compared exactly.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter as Tally
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from helpers.gunicorn_proc import REPO, GunicornProcess
from helpers.otlp import OTLPReceiver

pytestmark = pytest.mark.slow

CONFIG = "python:mlmonitor.gunicorn"
APP = "tests.apps.simple_app:app"
BODY = json.dumps({"features": {"sepal_length": 5.1}}).encode()
Key = Tuple[str, Tuple[Tuple[str, str], ...]]


# -- helpers ----------------------------------------------------------------------------

def start(tmp_path: Path, workers: int = 4, args: Tuple[str, ...] = (), env: Optional[dict] = None,
          prom: Optional[Path] = None) -> GunicornProcess:
    """A gunicorn not started yet: ``with start(...) as server`` starts and stops it."""
    prom = prom or tmp_path / "prom"
    environment = {"PROMETHEUS_MULTIPROC_DIR": str(prom), "MLMONITOR_TRACES": "false", **(env or {})}
    return GunicornProcess(app=APP, config=CONFIG, workers=workers, args=list(args),
                           env=environment)


def get(port: int, path: str, timeout: float = 60.0) -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape(port: int, attempts: int = 20) -> Dict[Key, float]:
    """Every counter and histogram sample, and the in-progress gauge; retried past a killed worker."""
    for attempt in range(attempts):
        try:
            status, body = get(port, "/metrics")
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
            continue
        assert status == 200, body[:300]
        out: Dict[Key, float] = {}
        for family in text_string_to_metric_families(body.decode()):
            if family.type in ("counter", "histogram") or family.name == "mlmonitor_http_requests_in_progress":
                for s in family.samples:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out
    raise AssertionError("no scrape succeeded")


def settled(port: int, predictions: int, timeout: float = 10.0) -> Dict[Key, float]:
    """A scrape once the last answered requests are recorded.

    A request is recorded when the server closes its body, just after the client got the
    response, so a scrape right after the load can miss the last few by a moment; wait until
    ``predictions`` are in and nothing is in progress (then the tests compare exactly).
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        done = (total(samples, "mlmonitor_predictions_total") >= predictions
                and total(samples, "mlmonitor_http_requests_in_progress") == 0)
        if done or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def total(samples: Dict[Key, float], name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def by_label(samples: Dict[Key, float], name: str, label: str) -> Dict[str, int]:
    out: Dict[str, float] = defaultdict(float)
    for (n, labels), v in samples.items():
        if n == name:
            out[dict(labels)[label]] += v
    return {k: int(v) for k, v in out.items() if v}


def decreases(before: Dict[Key, float], after: Dict[Key, float]) -> List[str]:
    """Counter and histogram series that went down (or vanished) between two scrapes."""
    bad = []
    for key, old in before.items():
        name = key[0]
        if name == "mlmonitor_http_requests_in_progress":
            continue
        new = after.get(key)
        if new is None:
            bad.append(f"{key} vanished (was {old})")
        elif new < old - 1e-9 * abs(old):
            bad.append(f"{key}: {old} -> {new}")
    return bad


def check_histograms(samples: Dict[Key, float]) -> None:
    """Every histogram series: _count equals its +Inf bucket."""
    counts = {(n[:-len("_count")], labels): v for (n, labels), v in samples.items() if n.endswith("_count")}
    assert counts, "no histogram in the exposition"
    for (base, labels), count in counts.items():
        inf = samples[(base + "_bucket", tuple(sorted(labels + (("le", "+Inf"),))))]
        assert inf == count, f"{base}{dict(labels)}: _count {count} != +Inf bucket {inf}"


class Load:
    """Threads posting predictions over keep-alive connections; tallies what came back.

    Each connection is reopened every 25 requests: gthread workers keep a connection for
    good, and 8 connections would all stay with whichever worker accepted them.

    Request ``i`` asks for model version ``v2`` when ``i % 3 == 0``, else ``v1``. A request
    that got no response (connection reset by a killed worker) is counted in ``lost``.
    """

    def __init__(self, port: int, requests: Optional[int], threads: int,
                 headers: Optional[Dict[str, str]] = None) -> None:
        self.port = port
        self.limit = requests
        self.threads = threads
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.ids = itertools.count()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok: Tally = Tally()          # model version -> responses
        self.status: Tally = Tally()
        self.pids: Tally = Tally()
        self.lost = 0
        self.workers: List[threading.Thread] = []

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        ok: Tally = Tally()
        status: Tally = Tally()
        pids: Tally = Tally()
        lost = 0
        while not self.stop.is_set():
            i = next(self.ids)
            if self.limit is not None and i >= self.limit:
                break
            version = "v2" if i % 3 == 0 else "v1"
            if i % 25 == 0:  # new connections now and then, so gthread workers share the load
                conn.close()
            try:
                conn.request("POST", "/predict", BODY, {**self.headers, "X-Model-Version": version})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                lost += 1
                conn.close()
                continue
            status[resp.status] += 1
            ok[version] += 1
            if resp.status == 200:
                pids[json.loads(body)["pid"]] += 1
        conn.close()
        with self.lock:
            self.ok.update(ok)
            self.status.update(status)
            self.pids.update(pids)
            self.lost += lost

    def start(self) -> "Load":
        self.started = time.monotonic()
        self.workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for t in self.workers:
            t.start()
        return self

    def join(self, timeout: float = 120.0) -> "Load":
        deadline = time.monotonic() + timeout
        for t in self.workers:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.workers), "load did not finish in time"
        self.seconds = time.monotonic() - self.started
        return self

    @property
    def responses(self) -> int:
        return sum(self.ok.values())


class Scraper(threading.Thread):
    """Scrapes every ``interval`` seconds and records any counter/histogram series that went down."""

    def __init__(self, port: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.halt = threading.Event()
        self.scrapes = 0
        self.problems: List[str] = []
        self.last: Dict[Key, float] = {}

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            current = scrape(self.port)
            if self.last:
                self.problems.extend(decreases(self.last, current))
            self.last = current
            self.scrapes += 1

    def finish(self) -> None:
        self.halt.set()
        self.join(30)


def children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def wait_workers(master: int, count: int, exclude: set, timeout: float = 30.0) -> List[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in children(master) if p not in exclude]
        if len(pids) == count:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"gunicorn did not get back to {count} workers: {children(master)}")


def assert_exact(samples: Dict[Key, float], load: Load) -> None:
    predictions = by_label(samples, "mlmonitor_predictions_total", "model_version")
    assert predictions == dict(load.ok), (predictions, dict(load.ok))
    assert total(samples, "mlmonitor_predictions_total") == load.responses
    assert total(samples, "mlmonitor_http_requests_total", route="/predict") == load.responses
    assert total(samples, "mlmonitor_prediction_duration_seconds_count") == load.responses
    check_histograms(samples)
    assert total(samples, "mlmonitor_http_requests_in_progress") == 0


def db_files(path: Path) -> List[str]:
    return sorted(p.name for p in path.glob("*.db"))


# -- exact counts -------------------------------------------------------------------------

@pytest.mark.parametrize("worker_args, requests", [
    ((), 20_000),
    (("--worker-class", "gthread", "--threads", "4"), 20_000),
], ids=["sync", "gthread"])
def test_every_prediction_is_counted_exactly_across_workers(tmp_path, worker_args, requests):
    with start(tmp_path, workers=4, args=worker_args) as server:
        load = Load(server.port, requests, threads=8).start().join(180)
        samples = settled(server.port, load.responses)
    print(f"\n{worker_args or 'sync'}: {requests} requests in {load.seconds:.1f} s "
          f"({requests / load.seconds:.0f}/s), served by {len(load.pids)} workers")
    assert load.lost == 0 and load.responses == requests
    assert dict(load.status) == {200: requests}
    assert len(load.pids) == 4
    assert load.ok == {"v1": requests - (requests + 2) // 3, "v2": (requests + 2) // 3}
    assert_exact(samples, load)


def test_no_series_ever_decreases_between_scrapes(tmp_path):
    with start(tmp_path, workers=4) as server:
        scraper = Scraper(server.port, 0.1)
        scraper.start()
        load = Load(server.port, 6_000, threads=6).start().join(120)
        scraper.finish()
        samples = settled(server.port, load.responses)
    print(f"\n{scraper.scrapes} scrapes during {load.seconds:.1f} s of load")
    assert scraper.scrapes >= 10
    assert scraper.problems == []
    assert decreases(scraper.last, samples) == []
    assert_exact(samples, load)


def test_killed_workers_lose_no_counts_and_are_replaced(tmp_path):
    """SIGKILL a worker while it sleeps inside a request: the request in flight is lost with its
    worker (no response, not counted); every answered one stays counted."""
    kills = 5
    with start(tmp_path, workers=4) as server:
        scraper = Scraper(server.port, 0.1)
        scraper.start()
        load = Load(server.port, None, threads=3).start()
        sleeper = Load(server.port, None, threads=1, headers={"X-Sleep": "0.5"}).start()
        killed: set = set()
        replacements = []
        deadline = time.monotonic() + 60
        while len(killed) < kills and time.monotonic() < deadline:
            for pid in children(server.pid):
                try:
                    with open(f"/proc/{pid}/wchan") as fh:
                        sleeping = "nanosleep" in fh.read()
                except OSError:
                    continue
                if sleeping:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                    before = set(children(server.pid))
                    new = [p for p in wait_workers(server.pid, 4, killed) if p not in before]
                    replacements.extend(new)
                    break
            time.sleep(0.02)
        time.sleep(1.5)  # the last replacement serves some load too
        load.stop.set()
        sleeper.stop.set()
        load.join(60)
        sleeper.join(60)
        scraper.finish()
        samples = settled(server.port, load.responses + sleeper.responses)
        alive = set(children(server.pid))
    print(f"\nkilled {sorted(killed)}, replaced by {replacements}; {load.responses + sleeper.responses}"
          f" answered, {sleeper.lost} lost with their worker, {scraper.scrapes} scrapes")
    assert len(killed) == kills
    assert scraper.problems == []
    assert decreases(scraper.last, samples) == []
    assert sleeper.lost >= 1 and load.lost == 0
    served = set(load.pids) | set(sleeper.pids)
    assert [p for p in replacements if p in alive and p not in served] == []
    answered: Tally = load.ok + sleeper.ok
    predictions = by_label(samples, "mlmonitor_predictions_total", "model_version")
    assert predictions == dict(answered)
    check_histograms(samples)
    assert total(samples, "mlmonitor_http_requests_in_progress") == 0


# -- a bounded directory ------------------------------------------------------------------

FILE_TYPES = 4  # counter, histogram, gauge_livesum, gauge_livemax (the simple app sets no max gauge)


def test_recycled_workers_keep_counts_and_the_directory_stays_bounded(tmp_path):
    """--max-requests 8 with --preload: hundreds of recycles; the directory holds at most
    (live workers + the preloading master) x file types + the two merged files."""
    prom = tmp_path / "prom"
    workers, requests = 4, 2_000
    bound = (workers + 1) * FILE_TYPES + 2
    with start(tmp_path, workers=workers, args=("--max-requests", "8", "--preload")) as server:
        seen: List[int] = []
        halt = threading.Event()

        def watch() -> None:
            while not halt.wait(0.02):
                seen.append(len(db_files(prom)))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        scraper = Scraper(server.port, 0.1)
        scraper.start()
        load = Load(server.port, requests, threads=6).start().join(240)
        scraper.finish()
        halt.set()
        watcher.join(10)
        samples = settled(server.port, load.responses)
        timings = []
        for _ in range(20):
            begin = time.perf_counter()
            get(server.port, "/metrics")
            timings.append(time.perf_counter() - begin)
        files = db_files(prom)
        recycles = sum("Autorestarting worker" in line for line in server.stderr_lines)
    print(f"\n{requests} requests, {len(load.pids)} worker pids ({recycles} autorestarts logged), "
          f"files now {len(files)}: {files}, max seen {max(seen)} (bound {bound}), "
          f"scrape median {statistics.median(timings) * 1000:.1f} ms; {scraper.scrapes} scrapes during the load")
    assert load.lost == 0
    assert len(load.pids) >= 200  # hundreds of workers came and went
    assert scraper.problems == [] and decreases(scraper.last, samples) == []
    assert_exact(samples, load)
    assert max(seen) <= bound
    assert len(files) <= bound
    assert "counter_merged.db" in files and "histogram_merged.db" in files


def test_leftover_files_of_a_previous_run_do_not_leak(tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir(mode=0o700)
    labels = ("model_name", "model_version")
    for fname in ("counter_99999.db", "counter_merged.db"):
        old = MmapedDict(str(prom / fname))
        old.write_value(mmap_key("mlmonitor_predictions", "mlmonitor_predictions_total", labels,
                                 ("iris", "v1"), "old"), 1e6, 0.0)
        old.close()
    old = MmapedDict(str(prom / "histogram_merged.db"))
    old.write_value(mmap_key("mlmonitor_prediction_duration_seconds",
                             "mlmonitor_prediction_duration_seconds_bucket", labels + ("le",),
                             ("iris", "v1", "+Inf"), "old"), 1e6, 0.0)
    old.close()
    with start(tmp_path, workers=2) as server:
        load = Load(server.port, 60, threads=2).start().join(60)
        samples = settled(server.port, load.responses)
        files = db_files(prom)
    assert "counter_99999.db" not in files
    assert_exact(samples, load)


MERGE_ONE = """
import os, sys
from prometheus_client.mmap_dict import MmapedDict, mmap_key
path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
import mlmonitor.gunicorn as hooks   # prepares (and empties) the directory, as in the master
key = mmap_key("mlmonitor_predictions", "mlmonitor_predictions_total",
               ("model_name", "model_version"), ("iris", "v1"), "h")
for pid, value in ((123, 5.0), (1123, 7.0)):
    for kind in ("counter", "gauge_livesum"):
        f = MmapedDict(os.path.join(path, f"{kind}_{pid}.db"))
        f.write_value(key, value, 0.0)
        f.close()
hooks.merge_dead_worker(123, path)
print(sorted(n for n in os.listdir(path) if n.endswith(".db")))
print([v for _, v, _, _ in MmapedDict.read_all_values_from_file(os.path.join(path, "counter_merged.db"))])
"""


def test_merging_a_dead_worker_leaves_a_live_worker_with_a_longer_pid_alone(tmp_path):
    """Worker 123 died; worker 1123 lives on: only 123's files are merged and removed."""
    proc = subprocess.run([sys.executable, "-c", MERGE_ONE], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom")},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    files, merged = proc.stdout.splitlines()
    assert files == str(["counter_1123.db", "counter_merged.db", "gauge_livesum_1123.db"])
    assert merged == "[5.0]"


def test_a_second_master_on_a_directory_in_use_keeps_the_first_ones_counts(tmp_path):
    """A second gunicorn on the same directory (a USR2 upgrade, a mistaken second start)
    must not clean away the files of the master still serving from it."""
    with start(tmp_path, workers=2) as first:
        Load(first.port, 300, threads=2).start().join(60)
        with start(tmp_path, workers=1):
            pass
        load = Load(first.port, 30, threads=1).start().join(60)
        samples = settled(first.port, 330)
    assert total(samples, "mlmonitor_predictions_total") == 330
    assert load.responses == 30


# -- per-worker process metrics -----------------------------------------------------------

@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-load", "preload"])
def test_process_metrics_carry_one_stable_slot_per_worker(tmp_path, preload):
    """mlmonitor_process_*{worker} is labelled by the worker's slot (0..3), also when the app
    (and its metrics sink) was made in the master before the fork."""
    with start(tmp_path, workers=4, args=("--preload",) if preload else ()) as server:
        load = Load(server.port, 400, threads=8, headers={"X-Sleep": "0.002"}).start().join(60)
        status, body = get(server.port, "/metrics")
    assert status == 200 and len(load.pids) == 4
    slots = defaultdict(set)
    for family in text_string_to_metric_families(body.decode()):
        if family.name in ("mlmonitor_process_resident_memory_bytes", "mlmonitor_process_cpu_seconds"):
            for s in family.samples:
                if s.value > 0:
                    slots[family.name].add(s.labels["worker"])
    assert slots["mlmonitor_process_resident_memory_bytes"] == {"0", "1", "2", "3"}
    # CPU is sampled on a worker's first request and then every 5 s. A worker that loaded the app
    # itself has used CPU by then; a fresh fork of a preloaded master may still show 0 ticks
    cpu = slots["mlmonitor_process_cpu_seconds"]
    if preload:
        assert cpu and cpu <= {"0", "1", "2", "3"}
    else:
        assert cpu == {"0", "1", "2", "3"}


# -- spans ------------------------------------------------------------------------------

@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-load", "preload"])
def test_spans_from_every_worker_reach_the_receiver_once(tmp_path, preload):
    requests = 400
    with OTLPReceiver() as receiver:
        env = {"MLMONITOR_TRACES": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
        with start(tmp_path, workers=4, args=("--preload",) if preload else (), env=env) as server:
            trace_ids = [os.urandom(16).hex() for _ in range(requests)]
            served: Dict[str, int] = {}
            lock = threading.Lock()
            queue = iter(trace_ids)

            def client() -> None:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                for tid in queue:
                    headers = {"Content-Type": "application/json", "X-Sleep": "0.005",
                               "traceparent": f"00-{tid}-{os.urandom(8).hex()}-01"}
                    conn.request("POST", "/predict", BODY, headers)
                    resp = conn.getresponse()
                    assert resp.status == 200
                    with lock:
                        served[tid] = json.loads(resp.read())["pid"]
                conn.close()

            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            workers = set(children(server.pid))
            receiver.wait_for(2 * requests, timeout=30)  # a server span and a stage span each
            time.sleep(0.5)  # anything sent twice would arrive by now
            spans = list(receiver.spans)
    servers = [s for s in spans if s["name"].startswith("POST")]
    per_trace = Tally(s["trace_id"] for s in servers)
    assert len(served) == requests
    assert set(served.values()) == workers and len(workers) == 4
    assert {s["resource"]["process.pid"] for s in servers} == workers
    assert per_trace == {tid: 1 for tid in trace_ids}
    for s in servers:
        assert s["resource"]["process.pid"] == served[s["trace_id"]]


def test_a_graceful_worker_exit_flushes_its_spans(tmp_path):
    """With a 60 s batch delay nothing is sent while serving; stopping gunicorn flushes every span."""
    with OTLPReceiver() as receiver:
        env = {"MLMONITOR_TRACES": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "60000"}
        server = start(tmp_path, workers=2, env=env).start(timeout=45)
        try:
            load = Load(server.port, 50, threads=2).start().join(60)
            time.sleep(0.5)
            early = len(receiver.spans)
        finally:
            server.stop()
        spans = receiver.wait_for(2 * 50, timeout=60)
    assert load.responses == 50
    assert early == 0
    assert len([s for s in spans if s["name"].startswith("POST")]) == 50


# -- logs -------------------------------------------------------------------------------

def test_every_request_logs_exactly_one_json_line(tmp_path):
    server = start(tmp_path, workers=4).start(timeout=45)
    ids: List[str] = []
    statuses: Tally = Tally()
    pids: set = set()
    lock = threading.Lock()
    plan = iter(range(600))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for i in plan:
            headers = {"Content-Type": "application/json", "X-Model-Version": "v2" if i % 2 else "v1",
                       "X-Sleep": "0.002"}
            body = BODY
            if i % 10 == 3:
                body = b"[1, 2"           # 400
            elif i % 10 == 7:
                headers["X-Fail"] = "1"   # 500 with a stack in the line
            conn.request("POST", "/predict", body, headers)
            resp = conn.getresponse()
            payload = resp.read()
            with lock:
                ids.append(resp.getheader("X-Request-ID"))
                statuses[resp.status] += 1
                if resp.status == 200:
                    pids.add(json.loads(payload)["pid"])
        conn.close()

    try:
        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        server.stop()

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    lines = [line for line in server.stdout_lines if line.strip()]
    records = [strict(line) for line in lines]   # every stdout line is one JSON object
    assert all(isinstance(r, dict) for r in records)
    predict = [r for r in records if r.get("route") == "/predict"]
    logged = Tally(r["request_id"] for r in predict)
    assert statuses == {200: 480, 400: 60, 500: 60}
    assert len(pids) >= 2
    assert None not in ids and len(set(ids)) == 600
    assert logged == {rid: 1 for rid in ids}
    assert Tally(r["status"] for r in predict) == statuses
    assert all(r.get("error_type") for r in predict if r["status"] >= 400)


# -- start-up checks ------------------------------------------------------------------

@pytest.mark.parametrize("config", ["module", "user-file"])
def test_an_unsafe_directory_stops_gunicorn_with_one_clear_line(tmp_path, config):
    prom = tmp_path / "prom"
    prom.mkdir()
    prom.chmod(0o777)
    conf = CONFIG
    if config == "user-file":
        conf = str(tmp_path / "gunicorn.conf.py")
        Path(conf).write_text("from mlmonitor.gunicorn import *  # noqa: F401,F403\nworkers = 2\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", conf, "--bind", "127.0.0.1:0", APP],
        cwd=REPO, env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)},
        capture_output=True, text=True, timeout=60)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr
    assert "PROMETHEUS_MULTIPROC_DIR" in lines[0] and "world-writable" in lines[0]
