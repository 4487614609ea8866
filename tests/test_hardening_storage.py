"""Issue 13, items 2, 4, 5, 8, 10: the multiprocess storage on real files (and a real small tmpfs).

The gunicorn side of the same items is in ``test_hardening_storage_gunicorn.py``. Code that
could die of SIGBUS before the fix runs in a subprocess, so the test sees the signal.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from helpers.gunicorn_proc import REPO
from helpers.tmpfs import small_tmpfs
from mlmonitor import guard
from mlmonitor.metrics import LabelCap
from mlmonitor.multiprocess import (AdmittedValues, BadFile, CheckedCollector, UnsafeDirectory,
                                    check_directory, keep_merged, merge_dead_worker, read_db)
from mlmonitor.record import OTHER

MODEL = ("model_name", "model_version")
BUCKETS = ("0.005", "0.01", "+Inf")


def predictions_key(version: str = "v1") -> str:
    return mmap_key("mlmonitor_predictions", "mlmonitor_predictions_total", MODEL, ("iris", version),
                    "Calls of prediction endpoints, failed ones included.")


def bucket_key(le: str, version: str = "v1") -> str:
    return mmap_key("mlmonitor_prediction_duration_seconds", "mlmonitor_prediction_duration_seconds_bucket",
                    MODEL + ("le",), ("iris", version, le), "Time spent in the prediction handler.")


def sum_key(version: str = "v1") -> str:
    return mmap_key("mlmonitor_prediction_duration_seconds", "mlmonitor_prediction_duration_seconds_sum",
                    MODEL, ("iris", version), "Time spent in the prediction handler.")


def write(path: Path, entries, raw: bytes = b"") -> None:
    """A file as prometheus-client writes it; ``raw`` is one more key written byte for byte."""
    f = MmapedDict(str(path))
    for key, value in entries:
        f.write_value(key, value, 0.0)
    f.close()
    if raw:
        data = bytearray(path.read_bytes())
        used = struct.unpack_from("i", data)[0]
        padded = raw + b" " * (8 - (len(raw) + 4) % 8)
        entry = struct.pack(f"i{len(padded)}sdd", len(raw), padded, 1.0, 0.0)
        data[used:used + len(entry)] = entry
        struct.pack_into("i", data, 0, used + len(entry))
        path.write_bytes(bytes(data))


def histogram(version: str = "v1", count: float = 2.0):
    """``count`` observations in the first bucket (files hold each bucket's own count)."""
    return ([(bucket_key(le, version), count if le == BUCKETS[0] else 0.0) for le in BUCKETS]
            + [(sum_key(version), 0.001 * count)])


def scrape(path: Path) -> dict:
    registry = CollectorRegistry()
    registry.register(CheckedCollector(str(path)))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items()
               if n == name and all(dict(ls).get(k) == w for k, w in labels.items()))


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    path = tmp_path / "prom"
    path.mkdir(mode=0o700)
    return path


# -- item 8: one bad file or entry never blacks out the scrape --------------------------------

BAD_KEYS = {
    # each made every scrape fail before (prometheus-client's merge or the text encoder raised)
    "le_not_a_number": json.dumps(["mlmonitor_prediction_duration_seconds",
                                   "mlmonitor_prediction_duration_seconds_bucket",
                                   {"le": "0.00u", "model_name": "iris", "model_version": "v1"}, "h"],
                                  sort_keys=True).encode(),
    "label_value_not_text": b'["m", "m_bucket", {"le": "0.01", "model_name": 7}, "h"]',
    "lone_surrogate": b'["m", "m_bucket", {"le": "0.01", "model_name": "\\ud800"}, "h"]',
    "not_utf8": b'["m", "m_bucket", {"le": "0.01", "model_name": "\xff"}, "h"]',
    "three_items": b'["m", "m_bucket", {"le": "0.01"}]',
}


@pytest.mark.internal_errors_expected
@pytest.mark.parametrize("bad", sorted(BAD_KEYS))
def test_one_bad_key_costs_only_its_own_entry_and_is_counted(prom, bad):
    write(prom / "counter_11.db", [(predictions_key(), 3.0)])
    write(prom / "histogram_12.db", histogram(count=2.0), raw=BAD_KEYS[bad])
    write(prom / "histogram_merged.db", histogram(count=5.0))
    before = guard.fault_counts.get("exposition", 0)
    samples = scrape(prom)
    assert total(samples, "mlmonitor_predictions_total") == 3.0
    assert total(samples, "mlmonitor_prediction_duration_seconds_count") == 7.0
    assert guard.fault_counts.get("exposition", 0) == before + 1


@pytest.mark.internal_errors_expected
def test_a_bad_merged_file_is_set_aside_and_not_read_again(prom):
    """Its good entries take its place at once: no scrape sees the merged counts drop."""
    write(prom / "counter_11.db", [(predictions_key(), 3.0)])
    write(prom / "histogram_merged.db", histogram(count=5.0), raw=BAD_KEYS["le_not_a_number"])
    before = guard.fault_counts.get("exposition", 0)
    first = scrape(prom)
    second = scrape(prom)
    for samples in (first, second):
        assert total(samples, "mlmonitor_predictions_total") == 3.0
        assert total(samples, "mlmonitor_prediction_duration_seconds_count") == 5.0
    assert guard.fault_counts.get("exposition", 0) == before + 1  # counted once, then set aside
    assert sorted(p.name for p in prom.iterdir()) == [
        "counter_11.db", "histogram_merged.db", "histogram_merged.db.bad"]
    assert b"0.00u" in (prom / "histogram_merged.db.bad").read_bytes()
    assert read_db(str(prom / "histogram_merged.db"), "histogram")[1] == 0


@pytest.mark.internal_errors_expected
def test_a_dead_workers_bad_entry_is_never_merged(prom):
    write(prom / "counter_21.db", [(predictions_key(), 4.0)])
    write(prom / "histogram_21.db", histogram(count=4.0), raw=BAD_KEYS["le_not_a_number"])
    before = guard.fault_counts.get("merge", 0)
    assert merge_dead_worker(21, str(prom)) == 2
    assert guard.fault_counts.get("merge", 0) == before + 1
    entries, bad = read_db(str(prom / "histogram_merged.db"), "histogram")
    assert bad == 0 and len(entries) == len(BUCKETS) + 1
    samples = scrape(prom)
    assert total(samples, "mlmonitor_predictions_total") == 4.0
    assert total(samples, "mlmonitor_prediction_duration_seconds_count") == 4.0


def test_a_file_that_is_not_prometheus_clients_is_not_read(prom):
    """An app's SQLite file in the directory was read as metrics and counted as a fault on every
    scrape (with a valid-looking header, prometheus-client would fail on its type 'customers.db')."""
    write(prom / "counter_11.db", [(predictions_key(), 3.0)])
    (prom / "customers.db").write_bytes(b"SQLite format 3\0" + bytes(4080))
    before = guard.total_faults()
    assert total(scrape(prom), "mlmonitor_predictions_total") == 3.0
    assert guard.total_faults() == before


@pytest.mark.parametrize("field, value", [("used", 0x7FFFFFFF), ("length", -24), ("length", 0x7FFFFFF0)])
def test_a_bad_length_field_is_refused_at_once(prom, field, value):
    """Negative or huge lengths: refused by their bounds, never looped on or allocated."""
    name = prom / "counter_31.db"
    write(name, [(predictions_key(), 1.0)])
    data = bytearray(name.read_bytes())
    struct.pack_into("i", data, 0 if field == "used" else 8, value)
    name.write_bytes(bytes(data))
    with pytest.raises(BadFile):
        read_db(str(name), "counter")


# -- item 2: a full disk: the merge is skipped, nothing SIGBUS --------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path):
    with small_tmpfs(tmp_path / "tmpfs") as mount:
        yield mount


FULL_DISK_MERGE = r"""
import json, os, sys
from prometheus_client.mmap_dict import MmapedDict
path, filler = sys.argv[1], sys.argv[2]
from mlmonitor.gunicorn import merge_dead_worker
f = MmapedDict(os.path.join(path, "counter_41.db"))
for i in range(200):
    f.write_value(json.dumps(["c", "c_total", {"i": str(i)}, "h"]), 1.0, 0.0)
f.close()
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass
os.close(fd)
merge_dead_worker(41, path)                     # before the fix: SIGBUS here
full = sorted(os.listdir(path))
os.unlink(filler)
merge_dead_worker(42, path)                     # the next worker exit retries the merge
values = [v for _, v, _, _ in MmapedDict.read_all_values_from_file(os.path.join(path, "counter_merged.db"))]
print(json.dumps({"full": full, "after": sorted(os.listdir(path)), "merged": sum(values)}))
"""


def test_a_merge_on_a_full_disk_is_skipped_keeps_the_files_and_is_retried(tmpfs):
    prom = tmpfs / "prom"
    done = subprocess.run([sys.executable, "-c", FULL_DISK_MERGE, str(prom), str(tmpfs / "filler")],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    result = json.loads(done.stdout)
    assert "counter_41.db" in result["full"] and "counter_merged.db" not in result["full"]
    assert "counter_41.db" not in result["after"] and "counter_merged.db" in result["after"]
    assert result["merged"] == 200.0
    lines = [line for line in done.stderr.splitlines() if "cannot write merged metrics" in line]
    assert len(lines) == 1, done.stderr


FULL_DISK_WORKER = r"""
import os, sys
filler = sys.argv[1]
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, b"x" * 4096)
except OSError:
    pass
os.close(fd)
from tests.apps.simple_app import app     # creates the metrics: before the fix SIGBUS here
client = app.test_client()
print(client.post("/predict", json={"x": 1}).status_code, client.get("/metrics").status_code)
"""


def test_a_worker_on_a_full_disk_serves_and_counts_faults_instead_of_dying(tmpfs):
    prom = tmpfs / "prom"
    prom.mkdir(mode=0o700)
    done = subprocess.run([sys.executable, "-c", FULL_DISK_WORKER, str(tmpfs / "filler")],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom),
                               "MLMONITOR_TRACES": "false", "MLMONITOR_LOGS": "false"})
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["200", "200"]
    assert "No space left on device" in done.stderr


# -- item 4: label caps shared by every process --------------------------------------------------

def test_label_caps_are_shared_by_every_process_and_restart(prom):
    """Two workers and a restarted one: together at most ``limit`` values, the same ones."""
    def worker() -> LabelCap:
        return LabelCap(5, ("v1",), AdmittedValues(str(prom), "model_version"))

    first, second = worker(), worker()
    assert [first(v) for v in ("a", "b", "c")] == ["a", "b", "c"]
    assert [second(v) for v in ("d", "e", "f", "a")] == ["d", OTHER, OTHER, "a"]
    restarted = worker()
    assert [restarted(v) for v in ("g", "b", "d", "v1")] == [OTHER, "b", "d", "v1"]
    assert first("e") == OTHER and first("d") == "d"
    assert first.values == second.values == restarted.values == {"v1", "a", "b", "c", "d"}


def test_a_full_cap_costs_no_file_access(prom):
    cap = LabelCap(2, ("v1",), AdmittedValues(str(prom), "model_version"))
    assert cap("a") == "a"
    shutil.rmtree(prom)  # a look at the shared file would create the directory again
    assert [cap(v) for v in ("b", "c", "a", "v1")] == [OTHER, OTHER, "a", "v1"]
    assert not prom.exists()


# -- item 5: the directory ---------------------------------------------------------------------

OURS = ["counter_123.db", "gauge_livesum_123.db", "gauge_max_9.db", "gauge_mostrecent_9.db",
        "gauge_all_9.db", "histogram_123.db", "summary_4.db", "counter_merged.db",
        "histogram_merged.db", "histogram_merged.db.bad", "counter_merged.db.tmp",
        "counter_master_77.db", "mlmonitor_labels_model_version.jsonl"]
THEIRS = ["customers.db", "orders.db", "app.sqlite", "counter.db", "counter_.db", "gauge_1.db",
          "counter_1.db.orig", "my_counter_1.db"]


def test_start_up_removes_only_metric_files(prom):
    for name in OURS + THEIRS:
        (prom / name).write_bytes(b"x")
    check_directory(str(prom), clean=True)
    assert sorted(p.name for p in prom.iterdir() if p.name != ".users") == sorted(THEIRS)


def test_a_symlinked_directory_is_refused_and_nothing_in_it_removed(tmp_path, prom):
    (prom / "customers.db").write_bytes(b"x")
    (prom / "counter_1.db").write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(prom)
    os.lchown(link, 12345, 12345)  # another user's link, as in the issue
    with pytest.raises(UnsafeDirectory) as refused:
        check_directory(str(link), clean=True)
    assert "symbolic link" in str(refused.value) and "\n" not in str(refused.value)
    assert sorted(p.name for p in prom.iterdir()) == ["counter_1.db", "customers.db"]


def test_a_directory_owned_by_someone_else_is_refused(prom):
    """(This held before the fix too; it guards the rewritten check.)"""
    (prom / "counter_1.db").write_bytes(b"x")
    os.chown(prom, 12345, 12345)
    with pytest.raises(UnsafeDirectory, match="owned by uid 12345"):
        check_directory(str(prom), clean=True)
    assert (prom / "counter_1.db").exists()


# -- item 10: the master keeps what it merged ------------------------------------------------------

def test_the_master_writes_merged_files_again_after_the_directory_is_deleted(prom):
    write(prom / "counter_51.db", [(predictions_key(), 50.0)])
    write(prom / "histogram_51.db", histogram(count=50.0))
    merge_dead_worker(51, str(prom))
    shutil.rmtree(prom)
    assert keep_merged(str(prom)) == 2
    samples = scrape(prom)
    assert total(samples, "mlmonitor_predictions_total") == 50.0
    assert total(samples, "mlmonitor_prediction_duration_seconds_count") == 50.0
    assert keep_merged(str(prom)) == 0  # nothing missing: nothing written
