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

@pytest.mark.parametrize("char", ["m", "é", "模", "🙂"])
def test_labels_at_their_128_character_caps_keep_their_exemplars(prom, char):
    """name, version and stage of 128 characters each (the caps; the stage key is ~500 bytes of
    ASCII and 1.5 kB of emoji, beyond a 512-byte slot) still get their exemplar on the prediction
    and stage histograms, and the OpenMetrics text parses."""
    name, version, stage = char * 128, "v" + char * 127, "s" + char * 127
    out = run_worker(prom, [[name, version, stage, 0.004]])
    assert out["faults"] == {}
    text = scrape(prom)
    assert len(found_in(text)) == 3  # request, prediction, stage: one bucket each
    series = exemplar_series(text)
    assert series["mlmonitor_stage_duration_seconds"] == {
        (("model_name", name), ("model_version", version), ("stage", stage))}
    assert series["mlmonitor_prediction_duration_seconds"] == {
        (("model_name", name), ("model_version", version))}


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
