"""Exemplars attacked from outside (issue 27): an app that is not the example app, hostile label
values, hand-made junk in the metrics directory, killed workers, a full disk, many scrapes.

The fast tests run multiprocess sinks as real separate processes on a shared directory; the
slow ones run ``tests/apps/exemplar_models.py`` (a Starlette app serving several regression
models on ``/models/{name}/versions/{version}/predict``) under real gunicorn and
``uvicorn --workers``, with spans to a real OTLP receiver and a real Prometheus keeping exemplars.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers.gunicorn_proc import REPO
from mlmonitor import exemplars, guard
from mlmonitor.multiprocess import CheckedCollector, merge_dead_worker
from test_exemplars import found_in, scrape

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

#: a worker: a multiprocess sink on argv[1] finishes one sampled prediction per (name, version,
#: stage) of argv[2] (JSON), each in the seconds given, and prints its pid and faults
WORKER = r"""
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from mlmonitor import guard
from mlmonitor.config import resolve
from mlmonitor.metrics import MetricsSink
from mlmonitor.record import RequestRecord
sink = MetricsSink(resolve({"model_name": "m", "model_version": "v", "max_label_values": 5}))
for n, (name, version, stage, seconds) in enumerate(json.loads(sys.argv[2])):
    rec = RequestRecord({"PATH_INFO": "/p"}, "POST", 1000.0 + n, 0)
    rec.route, rec.status_code, rec.duration = "/models/{name}/versions/{version}/predict", 200, seconds
    rec.is_prediction, rec.model_name, rec.model_version = True, name, version
    rec.prediction_seconds, rec.stages = seconds, [(stage, seconds)]
    rec.trace_id, rec.span_id, rec.sampled = f"{n + 1:032x}", f"{n + 1:016x}", True
    sink.finish(rec)
print(json.dumps({"pid": os.getpid(), "faults": guard.fault_counts}))
"""


def run_worker(prom: Path, requests: list) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, str(prom), json.dumps(requests)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    path = tmp_path / "prom"
    path.mkdir(mode=0o700)
    return path


def exemplar_series(text: str) -> dict:
    """family name -> {label values without le} of the buckets that carry an exemplar."""
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.exemplar is not None:
                out.setdefault(family.name, set()).add(tuple(sorted((k, v) for k, v in s.labels.items()
                                                                    if k != "le")))
    return out


# -- label values at the caps: every series keeps its exemplar ---------------------------------

@pytest.mark.parametrize("char", ["m", "é", "模", "🙂", '"\\\n{}#'])
def test_labels_at_their_128_character_caps_keep_their_exemplars(prom, char):
    """name, version and stage of 128 characters each (the caps; the stage key is ~500 bytes of
    ASCII and 1.5 kB of emoji, beyond a 512-byte slot) still get their exemplar on the prediction
    and stage histograms, and the OpenMetrics text parses; so do quotes, backslashes, newlines."""
    text = char * 128
    name, version, stage = text[:128], "v" + text[:127], "s" + text[:127]
    out = run_worker(prom, [[name, version, stage, 0.004]])
    assert out["faults"] == {}
    text = scrape(prom)
    assert len(found_in(text)) == 3  # request, prediction, stage: one bucket each
    series = exemplar_series(text)
    assert series["mlmonitor_stage_duration_seconds"] == {
        (("model_name", name), ("model_version", version), ("stage", stage))}
    assert series["mlmonitor_prediction_duration_seconds"] == {
        (("model_name", name), ("model_version", version))}


def test_the_file_stays_bounded_with_100k_distinct_long_keys(prom):
    """100,000 distinct buckets whose keys are stored by digest: one file of FILE_SIZE, at most SLOTS
    exemplars, every one readable."""
    out = exemplars.ExemplarFile(str(prom))
    route = "/r" + "x" * 500
    for n in range(100_000):
        key = exemplars.bucket_keys("h", {"route": f"{route}{n}"}, ["0.1"])[0]
        assert key is not None and key[1].startswith(b"#")
        out.write(key[0], key[1], f"{n:032x}", f"{n:016x}", 0.05)
    assert [p.name for p in prom.iterdir()] == [f"exemplars_{os.getpid()}.db"]
    assert (prom / f"exemplars_{os.getpid()}.db").stat().st_size == exemplars.FILE_SIZE
    found, faults = exemplars.read_all(str(prom))
    assert not faults and exemplars.SLOTS * 0.9 < len(found) <= exemplars.SLOTS


def test_a_long_keys_exemplar_survives_its_workers_death(prom):
    """The master's merge keeps a long key's exemplar (stored by digest) like any other."""
    long = "x" * 128
    pid = run_worker(prom, [[long, long, long, 0.004]])["pid"]
    assert merge_dead_worker(pid, str(prom)) >= 1
    assert not (prom / f"exemplars_{pid}.db").exists()
    series = exemplar_series(scrape(prom))
    assert series["mlmonitor_stage_duration_seconds"] == {
        (("model_name", long), ("model_version", long), ("stage", long))}


def test_many_versions_overflow_to_other_and_other_gets_exemplars(prom):
    """Beyond max_label_values (5 here) versions become ``other``: its buckets get exemplars too."""
    run_worker(prom, [["m", f"v{i}", "inference", 0.004] for i in range(40)])
    series = exemplar_series(scrape(prom))
    versions = {dict(labels)["model_version"] for labels in series["mlmonitor_prediction_duration_seconds"]}
    assert "other" in versions and len(versions) <= 6


# -- hand-made junk named like an exemplar or value file: counted, never a hang ------------------

def scrape_in_time(prom: Path, timeout: float = 60.0) -> str:
    """A scrape in a thread: a hang fails the test instead of blocking the run."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(scrape(prom)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert out, "the scrape hung"
    return out[0]


@pytest.mark.internal_errors_expected
@pytest.mark.parametrize("junk", ["fifo", "directory", "symlink to a FIFO", "symlink to /dev/zero",
                                  "symlink to a good file"])
@pytest.mark.parametrize("base", ["exemplars_123.db", "exemplars_merged.db", "counter_123.db"])
def test_a_fifo_directory_or_symlink_in_the_directory_is_counted_never_a_hang(prom, tmp_path, junk, base):
    good = run_worker(prom, [["m", "v", "inference", 0.004]])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = {"symlink to a FIFO": fifo, "symlink to /dev/zero": Path("/dev/zero"),
              "symlink to a good file": prom / f"exemplars_{good['pid']}.db"}.get(junk)
    path = prom / base
    if junk == "fifo":
        os.mkfifo(path)
    elif junk == "directory":
        path.mkdir()
    else:
        path.symlink_to(target)
    before = sum(guard.fault_counts.values())
    text = scrape_in_time(prom)
    assert len(found_in(text)) == 3  # the good worker's exemplars are all there
    assert sum(guard.fault_counts.values()) == before + 1
    assert 'mlmonitor_predictions_total{model_name="m",model_version="v"} 1.0' in text


@pytest.mark.internal_errors_expected
@pytest.mark.parametrize("base", ["counter_4242.db", "counter_merged.db", "exemplars_4242.db", "exemplars_merged.db"])
def test_a_fifo_never_hangs_the_masters_merge_of_a_dead_worker(prom, base):
    """gunicorn's child_exit merges a dead worker's files into the merged ones: a FIFO named like
    either would have blocked the master in open() for good."""
    good = run_worker(prom, [["m", "v", "inference", 0.004]])["pid"]
    os.mkfifo(prom / base)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(
        [merge_dead_worker(pid, str(prom)) for pid in (4242, good)]), daemon=True)
    thread.start()
    thread.join(60)
    assert done, "the merge hung"
    assert not list(prom.glob(f"*_{good}.db"))  # the real dead worker's files were merged all the same
    assert 'mlmonitor_predictions_total{model_name="m",model_version="v"} 1.0' in scrape_in_time(prom)


# -- a histogram caught half made: the OpenMetrics scrape stays valid -----------------------------

def test_a_histogram_series_without_its_inf_bucket_yet_still_parses(prom):
    """A scrape racing a new series' creation (prometheus-client writes ``_sum``, then the buckets,
    ``+Inf`` last), or a worker killed inside it, sees buckets without ``+Inf``: found by 8
    OpenMetrics scrapers against the app under gunicorn. The scrape adds ``+Inf`` from the count."""
    from mlmonitor.multiprocess import write_db

    def key(sample: str, **labels: str) -> str:
        return json.dumps(["h_seconds", sample, {"route": "/r", **labels}, "help"], sort_keys=True)
    write_db(str(prom / "histogram_1.db"), [(key("h_seconds_sum"), 0.5, 0.0),
                                            (key("h_seconds_bucket", le="0.1"), 2.0, 0.0),
                                            (key("h_seconds_bucket", le="1.0"), 1.0, 0.0)])
    write_db(str(prom / "histogram_2.db"), [(key("h_seconds_sum"), 0.0, 0.0),
                                            (key("h_seconds_bucket", le="0.1"), 0.0, 0.0)])
    parsed = samples(scrape(prom))
    assert parsed[("h_seconds_bucket", (("le", "+Inf"), ("route", "/r")))] == 3.0
    assert parsed[("h_seconds_count", (("route", "/r"),))] == 3.0
    text = scrape(prom, openmetrics=False)
    assert 'h_seconds_bucket{le="+Inf",route="/r"} 3.0' in text


# -- uvicorn --workers: no hooks, dead workers' files must not pile up ----------------------------

def test_a_dead_workers_file_is_removed_once_it_has_nothing_left_to_serve(prom):
    """Without gunicorn's merge hook each killed worker leaves 1 MiB: a scrape removes it once its
    newest exemplar is older than MAX_AGE; a fresh one, a live worker's and the merged file stay."""
    dead = run_worker(prom, [["m", "v", "inference", 0.004]])["pid"]
    fresh = run_worker(prom, [["m", "v", "inference", 0.004]])["pid"]
    live = exemplars.ExemplarFile(str(prom))
    slot, key = exemplars.bucket_keys("h", {"a": "b"}, ["0.1"])[0]
    live.write(slot, key, "1" * 32, "2" * 16, 0.05)
    (prom / "exemplars_merged.db").write_bytes((prom / f"exemplars_{fresh}.db").read_bytes())
    old = time.time() - exemplars.MAX_AGE - 5
    for name in (f"exemplars_{dead}.db", f"exemplars_{os.getpid()}.db", "exemplars_merged.db"):
        os.utime(prom / name, (old, old))
    found, faults = exemplars.read_all(str(prom))
    assert not faults and len(found) == 4  # the fresh worker's 3 (the merged copy is the same), the live one's
    assert sorted(p.name for p in prom.iterdir() if p.name.startswith("exemplars_")) == sorted(
        [f"exemplars_{fresh}.db", f"exemplars_{os.getpid()}.db", "exemplars_merged.db"])


def test_exemplars_off_write_no_file(prom):
    done = subprocess.run([sys.executable, "-c", WORKER, str(prom), json.dumps([["m", "v", "s", 0.004]])],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MLMONITOR_EXEMPLARS": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert not [p for p in prom.iterdir() if p.name.startswith("exemplars_")]
    text = scrape(prom)
    assert found_in(text) == {} and "mlmonitor_predictions_total" in text


def test_a_scrape_reads_the_directory_once_per_collect(prom):
    """CheckedCollector is what /metrics registers: it gives the same exemplars twice in a row."""
    run_worker(prom, [["m", "v", "inference", 0.004]])
    collector = CheckedCollector(str(prom), exemplars=True)
    first = [s.exemplar for m in collector.collect() for s in m.samples if s.exemplar]
    assert len(first) == 3
    assert first == [s.exemplar for m in collector.collect() for s in m.samples if s.exemplar]


# -- real servers: an outsider's Starlette app under gunicorn and uvicorn --workers ------------------

OUTSIDER_APP = "tests.apps.exemplar_models:app"
DEADLINE = 180.0  # seconds for any one condition on a loaded 2-core machine
HOSTILE_NAME = "模" * 128  # at the model name cap, 384 bytes of UTF-8
LONG_STAGE = "s" * 128  # a stage name is cut to 64 characters: with the hostile name, beyond a 512-byte slot


def outsider_env(tmp_path: Path, receiver_endpoint: str, **extra: str) -> dict:
    return {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": "outsider", **extra}


def predict(url: str, name: str, version: str, stage: str = "", sleep: float = 0.0) -> int:
    """One prediction's status; the timeout guards against a hang only."""
    import urllib.error
    import urllib.parse
    import urllib.request
    path = f"/models/{urllib.parse.quote(name, safe='')}/versions/{urllib.parse.quote(version, safe='')}/predict"
    body = json.dumps({"x": [1, 2, 3], "stage": stage or None, "sleep": sleep}).encode()
    request = urllib.request.Request(url + path, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:  # its worker was SIGKILLed while serving it
        return 0


def openmetrics(url: str) -> str:
    import urllib.request
    request = urllib.request.Request(url + "/metrics", headers={"Accept": OPENMETRICS})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        return response.read().decode()


def samples(text: str) -> dict:
    """(name, sorted labels) -> value of every sample, parsed by prometheus-client's OpenMetrics parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(parsed: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in parsed.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


def requests_for(n: int, offset: int = 0) -> list:
    """Several models, many versions (beyond the cap of 20: ``other``), the hostile name, the long stage."""
    names = ("glucose", "pressure", HOSTILE_NAME)
    return [(names[i % 3], f"v{i % 30}", LONG_STAGE if i % 5 == 0 else "", 0.02 if i % 11 == 0 else 0.0)
            for i in range(offset, offset + n)]


@pytest.mark.slow
@pytest.mark.internal_errors_expected  # the junk put into the directory is counted, in the workers
def test_gunicorn_three_workers_killed_repeatedly_under_scrapes_and_junk(tmp_path):
    """The outsider app under gunicorn (3 uvicorn workers), traffic of hostile labels, 8 OpenMetrics
    scrapers at once and 4 that never read, junk in the directory, a worker SIGKILLed three times mid-traffic: every
    request served, every prediction counted, every scrape parsed, the junk counted, the exemplar
    files bounded, and Prometheus keeps exemplars of the hostile series that name received traces."""
    import signal
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from helpers.gunicorn_proc import GunicornProcess, http_get
    from helpers.otlp import OTLPReceiver
    from helpers.promstack import Prometheus, query, require_binary, wait_for
    from test_exemplars_e2e import workers

    with OTLPReceiver() as receiver:
        env = outsider_env(tmp_path, receiver.endpoint)
        server = GunicornProcess(app=OUTSIDER_APP, config="python:mlmonitor.gunicorn", workers=3, env=env,
                                 args=("-k", "uvicorn.workers.UvicornWorker"))
        with server, Prometheus(tmp_path / "prom", targets={"outsider": [server.url.split("//")[1]]},
                                features=("exemplar-storage",)) as prom:
            start = time.time() - 5
            directory = Path(env["PROMETHEUS_MULTIPROC_DIR"])
            os.mkfifo(directory / "exemplars_999999999.db")  # never a live pid: a FIFO would hang a plain open
            (directory / "exemplars_123.db").mkdir()
            (directory / "exemplars_7.db").write_bytes(b"garbage" * 1000)
            stalled = []  # scrapers that ask for OpenMetrics and never read the answer
            for _ in range(4):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {OPENMETRICS}\r\n\r\n".encode())
                stalled.append(sock)
            scrapes: list = []
            lost: list = []  # scrapes on a worker as it was killed
            stop = threading.Event()

            def scraper() -> None:
                while not stop.is_set():
                    try:
                        text = openmetrics(server.url)
                    except OSError as exc:
                        lost.append(exc)
                        continue
                    scrapes.append(samples(text))
            with ThreadPoolExecutor(8 + 4) as pool:
                scrapers = [pool.submit(scraper) for _ in range(8)]
                sent = 0
                for _kill in range(3):
                    batch = requests_for(60, sent)
                    answers = pool.map(lambda r: predict(server.url, *r), batch)
                    victim = min(workers(server.pid))
                    os.kill(victim, signal.SIGKILL)  # while the batch is in flight
                    codes = list(answers)
                    sent += len(batch)
                    wait_for(lambda v=victim: (w := workers(server.pid)) and len(w) == 3 and v not in w,
                             DEADLINE, what="gunicorn replaced the killed worker")
                    assert set(codes) <= {200, 0}, codes  # a request on the killed worker is lost
                stop.set()
                for each in scrapers:
                    each.result()
            for sock in stalled:
                sock.close()
            codes = [predict(server.url, *r) for r in requests_for(30, sent)]  # and all is well after
            assert set(codes) == {200}
            wait_for(lambda: http_get(server.url + "/healthz")[0] == 200, DEADLINE)
            final = samples(openmetrics(server.url))
            served = [line for line in server.json_lines() if line.get("route", "").startswith("/models/")]
            # a worker SIGKILLed between a request's count and its log line loses the line (the
            # sinks run in that order): at most the requests it had in flight, 12 a kill
            counted = total(final, "mlmonitor_predictions_total")
            assert len(served) <= counted <= len(served) + 3 * 12, (counted, len(served))
            hostile = len([line for line in served if line.get("model_name") == HOSTILE_NAME])
            assert hostile <= total(final, "mlmonitor_predictions_total", model_name=HOSTILE_NAME) \
                <= hostile + 3 * 12
            assert counted <= sent + 30
            assert total(final, "mlmonitor_internal_errors_total", component="exemplars") > 0  # the junk
            assert total(final, "mlmonitor_internal_errors_total", component="guard") == 0
            assert len(scrapes) > 8 and len(lost) <= 8 * 3, (len(scrapes), lost)
            files = sorted(p.name for p in directory.iterdir() if p.name.startswith("exemplars_"))
            live = {f"exemplars_{pid}.db" for pid in workers(server.pid)}
            junk = {"exemplars_999999999.db", "exemplars_123.db", "exemplars_7.db"}
            assert set(files) - junk - live <= {"exemplars_merged.db"}, files  # the killed ones were merged

            def hostile_exemplars() -> list:
                found = prom.exemplars(f'mlmonitor_stage_duration_seconds_bucket{{model_name="{HOSTILE_NAME}",'
                                       f'stage="{LONG_STAGE[:64]}"}}', start, time.time() + 60)
                return [e for series in found for e in series["exemplars"]]
            stored = wait_for(hostile_exemplars, DEADLINE, what="Prometheus stored the hostile series' exemplars")
            assert query(prom.url, f'count(mlmonitor_predictions_total{{model_name="{HOSTILE_NAME}"}})')
            text = http_get(server.url + "/metrics")[1]
        with receiver.lock:
            traces = {span["trace_id"] for span in receiver.spans}
    assert {e["labels"]["trace_id"] for e in stored} & traces
    assert "# {" not in text and "trace_id" not in text  # the classic text carries none
    checked = subprocess.run([require_binary("promtool"), "check", "metrics"], input=text, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def uvicorn_workers(env: dict, count: int):
    """``uvicorn --workers N`` for the outsider app (no hooks: a fresh directory, as the README says)."""
    from helpers.gunicorn_proc import GunicornProcess
    Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
    server = GunicornProcess(env=env)
    server.command = [sys.executable, "-m", "uvicorn", OUTSIDER_APP, "--host", "127.0.0.1",
                      "--port", str(server.port), "--workers", str(count), "--log-level", "warning"]
    return server


@pytest.mark.slow
def test_uvicorn_workers_killed_workers_files_stay_until_they_have_nothing_to_serve(tmp_path):
    """``uvicorn --workers 3`` has no merge hook: each SIGKILLed worker leaves its exemplar file
    (1 MiB), served until its exemplars are MAX_AGE old; then the next scrape removes it."""
    import signal

    from helpers.otlp import OTLPReceiver
    from helpers.promstack import wait_for
    from test_exemplars_e2e import workers

    with OTLPReceiver() as receiver, uvicorn_workers(outsider_env(tmp_path, receiver.endpoint), 3) as server:
        directory = tmp_path / "multiproc"
        killed = []
        for round_ in range(2):
            wait_for(lambda: len(workers(server.pid)) == 3, DEADLINE, what="three workers")
            for request in requests_for(30, 30 * round_):
                assert predict(server.url, *request) == 200
            sent = 30 * (round_ + 1)  # counted just after the hand-off: wait, then kill (see the README)
            wait_for(lambda n=sent: total(samples(openmetrics(server.url)), "mlmonitor_predictions_total") == n,
                     DEADLINE, what="every answered prediction counted")
            mine = {int(p.name[len("exemplars_"):-3]) for p in directory.glob("exemplars_[0-9]*.db")}
            victim = min(workers(server.pid) & mine)  # a worker that has written exemplars
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            wait_for(lambda v=victim: (w := workers(server.pid)) and len(w) == 3 and v not in w,
                     DEADLINE, what="uvicorn replaced the killed worker")
        for request in requests_for(30, 60):
            assert predict(server.url, *request) == 200
        dead_files = {directory / f"exemplars_{pid}.db" for pid in killed}
        assert all(path.exists() for path in dead_files)  # served for MAX_AGE, as the docs say
        first = samples(openmetrics(server.url))
        assert total(first, "mlmonitor_predictions_total") == 90
        old = time.time() - exemplars.MAX_AGE - 5
        for path in dead_files:
            os.utime(path, (old, old))  # their newest exemplar ten minutes old
        wait_for(lambda: openmetrics(server.url) and not any(p.exists() for p in dead_files), DEADLINE,
                 what="a scrape removed the dead workers' files")
        live = {f"exemplars_{pid}.db" for pid in workers(server.pid)}
        assert {p.name for p in directory.glob("exemplars_*")} <= live
        assert total(samples(openmetrics(server.url)), "mlmonitor_predictions_total") == 90


def counted(url: str, predictions: int, **labels: str) -> str:
    """An OpenMetrics scrape once ``predictions`` are counted: an ASGI request is counted just
    after its last byte is handed to the server, so a scrape right after the answer may miss it."""
    from helpers.promstack import wait_for

    def scrape() -> str | None:
        text = openmetrics(url)
        return text if total(samples(text), "mlmonitor_predictions_total", **labels) >= predictions else None

    return wait_for(scrape, DEADLINE, what=f"{predictions} predictions counted")


@pytest.mark.slow
@pytest.mark.parametrize("env", [{"MLMONITOR_EXEMPLARS": "false"}, {"OTEL_TRACES_SAMPLER": "always_off"},
                                 {"OTEL_SDK_DISABLED": "true"},
                                 {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"}],
                         ids=["exemplars off", "sampler always_off", "sdk disabled", "sampler ratio 0.3"])
def test_exemplars_off_or_unsampled_under_gunicorn(tmp_path, env):
    """Off or unsampled: no exemplar file, no exemplar in the OpenMetrics scrape; with a ratio
    sampler every exemplar names a trace the receiver got."""
    from helpers.gunicorn_proc import GunicornProcess
    from helpers.otlp import OTLPReceiver
    from helpers.promstack import wait_for

    with OTLPReceiver() as receiver:
        server = GunicornProcess(app=OUTSIDER_APP, config="python:mlmonitor.gunicorn", workers=3,
                                 env=outsider_env(tmp_path, receiver.endpoint, **env),
                                 args=("-k", "uvicorn.workers.UvicornWorker"))
        with server:
            for request in requests_for(60):
                assert predict(server.url, *request) == 200
            text = counted(server.url, 60)  # a request is counted just after its answer
            files = [p.name for p in (tmp_path / "multiproc").iterdir() if p.name.startswith("exemplars_")]
            found = found_in(text)
            if "OTEL_TRACES_SAMPLER_ARG" in env:
                traces = {e[0] for e in found.values()}
                wait_for(lambda: traces <= {s["trace_id"] for s in receiver.wait_for(1, timeout=1)}, DEADLINE,
                         what="every exemplar's trace received")
    assert total(samples(text), "mlmonitor_predictions_total") == 60
    if "OTEL_TRACES_SAMPLER_ARG" in env:
        assert found and files
        assert len({s["trace_id"] for s in receiver.spans}) < 60  # a ratio: some requests unsampled
    else:
        assert found == {} and files == []
        assert bool(receiver.spans) == ("MLMONITOR_EXEMPLARS" in env)  # traces stay on with exemplars off


@pytest.mark.slow
@pytest.mark.internal_errors_expected  # the full disk, in the worker
def test_a_full_disk_under_gunicorn_costs_one_fault_and_no_request(tmp_path):
    """The metrics directory on a small tmpfs, full once the worker's value files exist: sampled
    requests are still answered and counted; the exemplar file cannot be made, one fault."""
    import urllib.request

    from helpers.gunicorn_proc import GunicornProcess
    from helpers.otlp import OTLPReceiver
    from helpers.tmpfs import fill, small_tmpfs

    with OTLPReceiver() as receiver, small_tmpfs(tmp_path / "tmpfs", "16m") as mount:
        env = outsider_env(tmp_path, receiver.endpoint, PROMETHEUS_MULTIPROC_DIR=str(mount / "multiproc"),
                           MLMONITOR_EXCLUDED_URLS="^/healthz$")  # the readiness polls: no span, no exemplar
        server = GunicornProcess(app=OUTSIDER_APP, config="python:mlmonitor.gunicorn", workers=1, env=env,
                                 args=("-k", "uvicorn.workers.UvicornWorker"))
        with server:
            unsampled = urllib.request.Request(  # the parent said no: the value files, no exemplar file
                server.url + "/models/glucose/versions/v1/predict", method="POST",
                data=json.dumps({"x": [1, 2, 3]}).encode(), headers={
                    "Content-Type": "application/json", "traceparent": f"00-{'a' * 32}-{'b' * 16}-00"})
            with urllib.request.urlopen(unsampled, timeout=300) as response:
                assert response.status == 200
            openmetrics(server.url)
            assert not list((mount / "multiproc").glob("exemplars_*"))
            filler = fill(mount)
            codes = [predict(server.url, "glucose", "v1") for _ in range(20)]
            full = samples(counted(server.url, 21, model_name="glucose", model_version="v1"))
            filler.unlink()
            files = [p.name for p in (mount / "multiproc").iterdir() if p.name.startswith("exemplars_")]
    assert codes == [200] * 20
    assert total(full, "mlmonitor_predictions_total", model_name="glucose", model_version="v1") == 21
    assert total(full, "mlmonitor_internal_errors_total", component="exemplars") == 1
    assert files == []
