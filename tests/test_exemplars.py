"""Issue 27: exemplars (trace and span id of a sampled request) on the latency histograms.

Single-process mode goes through prometheus-client's own ``observe(v, exemplar)``; in
multiprocess mode, where prometheus-client drops them, each worker keeps its own file of
checked slots (``mlmonitor.exemplars``) and the OpenMetrics scrape merges them. Workers run
as real separate processes on a shared directory; the full disk is a real small tmpfs.
The end-to-end tests (gunicorn, Prometheus, OTLP) are in ``test_exemplars_e2e.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from helpers.gunicorn_proc import REPO
from helpers.promstack import require_binary
from helpers.tmpfs import fill, small_tmpfs
from mlmonitor import exemplars, guard
from mlmonitor.config import Settings, resolve
from mlmonitor.metrics import EXEMPLAR_INTERVAL, MetricsSink
from mlmonitor.multiprocess import CheckedCollector, check_directory, merge_dead_worker
from mlmonitor.record import RequestRecord

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
HISTOGRAMS = ("mlmonitor_http_request_duration_seconds", "mlmonitor_prediction_duration_seconds",
              "mlmonitor_stage_duration_seconds", "mlmonitor_time_to_first_chunk_seconds")


def record(n: int, duration: float = 0.003, *, sampled: bool = True, start: float | None = None,
           version: str = "v1") -> RequestRecord:
    """A finished prediction request with a stage and a first chunk; trace id n, span id n + 1."""
    rec = RequestRecord({"PATH_INFO": "/predict"}, "POST", 1000.0 + 10 * n if start is None else start, 0)
    rec.route, rec.status_code, rec.duration = "/predict", 200, duration
    rec.is_prediction, rec.model_name, rec.model_version = True, "iris", version
    rec.prediction_seconds, rec.first_chunk = duration / 2, duration / 4
    rec.stages = [("inference", duration / 3)]
    rec.trace_id, rec.span_id, rec.sampled = f"{n + 1:032x}", f"{n + 2:016x}", sampled
    return rec


def found_in(text: str) -> dict:
    """(bucket sample name, labels) -> (trace_id, span_id, value) of each exemplar, parsed."""
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.exemplar is not None:
                assert s.name.endswith("_bucket"), s
                assert set(s.exemplar.labels) == {"trace_id", "span_id"}
                assert len("".join(k + v for k, v in s.exemplar.labels.items())) <= 128
                found[(s.name, tuple(sorted(s.labels.items())))] = (
                    s.exemplar.labels["trace_id"], s.exemplar.labels["span_id"], s.exemplar.value)
    return found


def scrape(path: Path, *, openmetrics: bool = True) -> str:
    registry = CollectorRegistry()
    registry.register(CheckedCollector(str(path), exemplars=openmetrics))
    return (generate_openmetrics if openmetrics else generate_latest)(registry).decode()


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    path = tmp_path / "prom"
    path.mkdir(mode=0o700)
    return path


#: a worker: a multiprocess sink on argv[1] finishes the records described in argv[2] (JSON)
WORKER = r"""
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
sys.path.insert(0, "tests")
from test_exemplars import record
from mlmonitor import guard
from mlmonitor.config import resolve
from mlmonitor.metrics import MetricsSink
sink = MetricsSink(resolve({"model_name": "iris", "model_version": "v1"}))
for args in json.loads(sys.argv[2]):
    sink.finish(record(**args))
out = {"pid": os.getpid(), "faults": guard.fault_counts}
if len(sys.argv) > 3:
    out["openmetrics"] = sink.exposition("application/openmetrics-text")[0].decode()
    out["text"] = sink.exposition("")[0].decode()
print(json.dumps(out))
"""


def worker(path: Path, records: list, *, scrape_too: bool = False, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, str(path), json.dumps(records)]
                          + (["scrape"] if scrape_too else []),
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


# -- single process: prometheus-client keeps them ---------------------------------------------

def single_sink(**settings) -> MetricsSink:
    return MetricsSink(Settings(model_name="iris", model_version="v1", **settings), CollectorRegistry())


def test_a_sampled_request_puts_its_trace_and_span_id_on_all_four_histograms():
    sink = single_sink()
    sink.finish(record(0))
    found = found_in(sink.exposition(OPENMETRICS)[0].decode())
    names = {name[:-len("_bucket")] for name, _labels in found}
    assert names == set(HISTOGRAMS)
    assert set(found.values()) >= {("0" * 31 + "1", "0" * 15 + "2", 0.003)}
    assert len(found) == 4  # one bucket each: never a label, never a new series


def test_an_unsampled_request_or_exemplars_off_adds_none():
    sink = single_sink()
    sink.finish(record(0, sampled=False))
    assert found_in(sink.exposition(OPENMETRICS)[0].decode()) == {}
    off = single_sink(exemplars=False)
    off.finish(record(0))
    assert found_in(off.exposition(OPENMETRICS)[0].decode()) == {}


def test_the_environment_turns_exemplars_off():
    assert resolve({}, environ={"MLMONITOR_EXEMPLARS": "false"}).exemplars is False
    assert resolve({}, environ={}).exemplars is True


def test_a_busy_bucket_is_rate_limited_without_starving_the_others():
    sink = single_sink()
    sink.finish(record(0, 0.003, start=5.0))
    sink.finish(record(1, 0.003, start=5.0 + EXEMPLAR_INTERVAL / 2))  # same buckets, not due yet
    sink.finish(record(2, 2.0, start=5.0 + EXEMPLAR_INTERVAL / 2))  # other buckets: due at once
    found = found_in(sink.exposition(OPENMETRICS)[0].decode())
    traces = {trace for trace, _span, _value in found.values()}
    assert traces == {f"{1:032x}", f"{3:032x}"}
    sink.finish(record(3, 0.003, start=5.0 + EXEMPLAR_INTERVAL))
    traces = {trace for trace, _span, _value in found_in(sink.exposition(OPENMETRICS)[0].decode()).values()}
    assert f"{4:032x}" in traces and f"{1:032x}" not in traces


# -- multiprocess: mlmonitor's own storage ------------------------------------------------------

def test_multiprocess_exemplars_are_served_in_openmetrics_only(prom):
    out = worker(prom, [{"n": 0}], scrape_too=True)
    found = found_in(out["openmetrics"])
    assert {name[:-len("_bucket")] for name, _labels in found} == set(HISTOGRAMS)
    assert " # {" not in out["text"] and "trace_id" not in out["text"]
    assert os.path.getsize(prom / f"exemplars_{out['pid']}.db") == exemplars.FILE_SIZE


def test_an_unsampled_request_writes_no_exemplar_file(prom):
    worker(prom, [{"n": 0, "sampled": False}, {"n": 1, "sampled": False}])
    assert not [p for p in os.listdir(prom) if p.startswith("exemplars_")]
    assert found_in(scrape(prom)) == {}


def test_two_workers_newest_exemplar_of_a_bucket_wins(prom):
    first = worker(prom, [{"n": 0}])
    second = worker(prom, [{"n": 1}])
    worker(prom, [{"n": 2, "duration": 2.0}])  # other buckets: they keep their own
    found = found_in(scrape(prom))
    http = {labels: ids for (name, labels), ids in found.items()
            if name == "mlmonitor_http_request_duration_seconds_bucket"}
    assert sorted(trace for trace, _s, _v in http.values()) == [f"{2:032x}", f"{3:032x}"]
    assert first["pid"] != second["pid"]
    # the dead workers' files are folded into one merged file, and still served
    for pid in (first["pid"], second["pid"]):
        merge_dead_worker(pid, str(prom))
        assert not (prom / f"exemplars_{pid}.db").exists()
    assert (prom / "exemplars_merged.db").stat().st_size == exemplars.FILE_SIZE
    assert found_in(scrape(prom)) == found


def test_a_dead_workers_exemplars_age_out(prom):
    pid = worker(prom, [{"n": 0}])["pid"]
    merge_dead_worker(pid, str(prom))
    found, faults = exemplars.read_all(str(prom))
    assert len(found) == 4 and not faults
    later, _faults = exemplars.read_all(str(prom), now=time.time() + exemplars.MAX_AGE + 1)
    assert later == {}


def used_slots(data: bytes) -> list:
    return [o for o in range(16, len(data), exemplars.SLOT_SIZE) if data[o:o + 4] != bytes(4)]


@pytest.mark.internal_errors_expected
def test_a_corrupted_or_torn_slot_drops_only_itself_and_is_counted(prom):
    path = prom / f"exemplars_{worker(prom, [{'n': 0}])['pid']}.db"
    data = bytearray(path.read_bytes())
    used = used_slots(data)
    assert len(used) == 4
    data[used[0] + 30] ^= 0xFF  # a flipped byte in the payload
    data[used[1] + 40:used[1] + exemplars.SLOT_SIZE] = bytes(exemplars.SLOT_SIZE - 40)  # a torn write
    path.write_bytes(bytes(data))
    found, faults = exemplars.read_all(str(prom))
    assert len(found) == 2 and faults == [(path.name, 2)]
    before = guard.fault_counts.get("exemplars", 0)
    assert len(found_in(scrape(prom))) == 2
    assert guard.fault_counts["exemplars"] == before + 1


@pytest.mark.internal_errors_expected
@pytest.mark.parametrize("content", [b"x", b"garbage" * 100, None])
def test_a_garbage_or_truncated_file_drops_only_itself_and_is_counted(prom, content):
    good = prom / f"exemplars_{worker(prom, [{'n': 0}])['pid']}.db"
    bad = prom / "exemplars_2.db"
    bad.write_bytes(good.read_bytes()[:-1] if content is None else content)
    found, faults = exemplars.read_all(str(prom))
    assert len(found) == 4
    assert [base for base, _why in faults] == ["exemplars_2.db"]
    before = guard.fault_counts.get("exemplars", 0)
    assert len(found_in(scrape(prom))) == 4
    assert guard.fault_counts["exemplars"] == before + 1


def test_the_file_never_grows_with_distinct_series(prom):
    out = exemplars.ExemplarFile(str(prom))
    keys = [key for i in range(100_000)
            for key in exemplars.bucket_keys("h", {"route": f"/r{i}"}, ["0.1"]) if key is not None]
    for n, (slot, key) in enumerate(keys):
        out.write(slot, key, f"{n:032x}", f"{n:016x}", 0.05)
    assert os.listdir(prom) == [f"exemplars_{os.getpid()}.db"]
    assert os.path.getsize(prom / os.listdir(prom)[0]) == exemplars.FILE_SIZE
    found, faults = exemplars.read_all(str(prom))
    assert not faults and exemplars.SLOTS * 0.9 < len(found) <= exemplars.SLOTS


FULL_DISK = r"""
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
sys.path.insert(0, "tests")
from test_exemplars import record
from helpers.tmpfs import fill
from pathlib import Path
from mlmonitor import guard
from mlmonitor.config import resolve
from mlmonitor.metrics import MetricsSink
sink = MetricsSink(resolve({"model_name": "iris", "model_version": "v1"}))
sink.finish(record(0, sampled=False))   # the value files exist; the exemplar file does not
sink.child(sink.f.internal_errors, "exemplars")  # the series exists at 0: counting needs no block
fill(Path(sys.argv[2]))
for n in range(1, 6):
    sink.finish(record(n))              # never raises: the exemplar file cannot be made
text = sink.exposition("")[0].decode()
print(json.dumps({"faults": guard.fault_counts, "files": sorted(os.listdir(sys.argv[1])),
                  "text": text}))
"""


def test_a_full_disk_stops_exemplars_once_and_never_raises_into_the_request(tmp_path):
    with small_tmpfs(tmp_path / "tmpfs") as mount:
        prom = mount / "prom"
        prom.mkdir(mode=0o700)
        done = subprocess.run([sys.executable, "-c", FULL_DISK, str(prom), str(mount)],
                              cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ})
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.splitlines()[-1])
    assert out["faults"] == {"exemplars": 1}, done.stderr[-2000:]
    assert "No space left on device" in done.stderr
    assert not [f for f in out["files"] if f.startswith("exemplars_")]
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in out["text"].splitlines()
              if line and not line.startswith("#")}
    assert counts['mlmonitor_http_requests_total{method="POST",route="/predict",status="200"}'] == 6.0
    assert counts['mlmonitor_internal_errors_total{component="exemplars"}'] == 1.0


# -- exposition: text unchanged, OpenMetrics valid, the same as prometheus-client's ----------------

def test_the_text_exposition_is_the_same_with_and_without_exemplars(prom):
    out = worker(prom, [{"n": n, "duration": 0.001 * 3 ** n} for n in range(8)], scrape_too=True)
    assert len(found_in(out["openmetrics"])) > 8
    without = scrape(prom, openmetrics=False)
    for name in os.listdir(prom):
        if name.startswith("exemplars_"):
            os.remove(prom / name)
    assert out["text"] == without == scrape(prom, openmetrics=False)
    promtool = require_binary("promtool")
    checked = subprocess.run([promtool, "check", "metrics"], input=out["text"], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_exemplars_match_what_prometheus_client_renders_in_one_process(prom):
    """Differential: the same observations, through mlmonitor's multiprocess storage, its single-process
    sink and prometheus-client's own histograms' observe(v, exemplar), give the same exemplar per bucket."""
    observations = [{"n": n, "duration": d, "version": v}
                    for n, (d, v) in enumerate([(0.003, "v1"), (0.2, "v1"), (0.003, "v2"), (7.0, "v2"),
                                                (0.004, "v1"), (0.0001, "v2"), (0.3, "v1")])]
    ours = found_in(worker(prom, observations, scrape_too=True)["openmetrics"])

    registry = CollectorRegistry()
    buckets = Settings().buckets
    http = Histogram("mlmonitor_http_request_duration_seconds", "h", ("method", "route", "status"),
                     registry=registry, buckets=buckets)
    model = ("model_name", "model_version")
    families = {name: Histogram(name, "h", model + (("stage",) if "stage" in name else ()),
                                registry=registry, buckets=buckets) for name in HISTOGRAMS[1:]}
    for args in observations:
        rec = record(**args)
        ids = {"trace_id": rec.trace_id, "span_id": rec.span_id}
        http.labels("POST", "/predict", "200").observe(rec.duration, ids)
        labels = ("iris", rec.model_version)
        families[HISTOGRAMS[1]].labels(*labels).observe(rec.prediction_seconds, ids)
        families[HISTOGRAMS[2]].labels(*labels, "inference").observe(rec.stages[0][1], ids)
        families[HISTOGRAMS[3]].labels(*labels).observe(rec.first_chunk, ids)
    theirs = found_in(generate_openmetrics(registry).decode())
    assert len(theirs) > 12
    assert ours == theirs
    single = single_sink()  # mlmonitor's single-process way: the bucket's exemplar set directly
    for args in observations:
        single.finish(record(**args))
    assert found_in(single.exposition(OPENMETRICS)[0].decode()) == theirs


# -- through a real app: the exemplar is the request's span ------------------------------------

def test_the_exemplar_of_a_scrape_is_the_trace_and_span_of_the_request():
    from flask import Flask
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from mlmonitor import Monitor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", tracer_provider=provider, registry=CollectorRegistry())

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return {"y": 1}

    client = app.test_client()
    assert client.post("/predict", json={"x": 1}).status_code == 200
    scraped = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert scraped.content_type.startswith("application/openmetrics-text")
    found = found_in(scraped.get_data(as_text=True))
    server = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert len(server) == 1
    ids = (f"{server[0].context.trace_id:032x}", f"{server[0].context.span_id:016x}")
    assert {(trace, span) for trace, span, _v in found.values()} == {ids}
    assert {name for name, _labels in found} == {
        "mlmonitor_http_request_duration_seconds_bucket", "mlmonitor_prediction_duration_seconds_bucket"}
    assert "trace_id" not in client.get("/metrics").get_data(as_text=True)


WRITER = r"""
import sys
from mlmonitor import exemplars
out = exemplars.ExemplarFile(sys.argv[1])
keys = [k for i in range(5000) for k in exemplars.bucket_keys("h", {"route": f"/r{i}"}, ["0.1"])]
print("writing", flush=True)
n = 0
while True:
    slot, key = keys[n % len(keys)]
    out.write(slot, key, f"{n:032x}", f"{n:016x}", 0.05)
    n += 1
"""


@pytest.mark.internal_errors_expected
def test_a_worker_killed_while_writing_leaves_a_readable_file(prom):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(prom)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
        time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait(30)
    found, faults = exemplars.read_all(str(prom))
    assert len(found) > 100
    assert sum(bad for _base, bad in faults) <= 1  # at most the slot being written


RESTORE = r"""
import json, os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
sys.path.insert(0, "tests")
from test_exemplars import record
from mlmonitor.config import resolve
from mlmonitor.metrics import MetricsSink
sink = MetricsSink(resolve({"model_name": "iris", "model_version": "v1"}))
sink.finish(record(0))
os.remove(os.path.join(sys.argv[1], f"exemplars_{os.getpid()}.db"))
sink.update_process()
sink.finish(record(1))
print(sink.exposition("application/openmetrics-text")[0].decode())
"""


def test_an_exemplar_file_deleted_under_a_worker_is_made_again(prom):
    done = subprocess.run([sys.executable, "-c", RESTORE, str(prom)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {trace for trace, _s, _v in found_in(done.stdout.rstrip("\n") + "\n").values()} == {f"{2:032x}"}


def test_a_master_start_removes_the_last_runs_exemplar_files_only(prom):
    ours = ["exemplars_41.db", "exemplars_merged.db", "exemplars_merged.db.7.tmp"]
    theirs = ["exemplars.txt", "exemplars_x.db"]
    for name in ours + theirs:
        (prom / name).write_bytes(b"x")
    check_directory(str(prom), clean=True)
    assert sorted(p.name for p in prom.iterdir() if p.name != ".users") == sorted(theirs)
