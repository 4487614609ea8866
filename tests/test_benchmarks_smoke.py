"""The overhead benchmarks run: each script with ``--quick`` exits 0 and writes its JSON.

No timing assertions: the figures belong in benchmarks/README.md, not in a test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_binary

pytestmark = pytest.mark.slow  # each runs a benchmark script: `make test` keeps them, test-fast not

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
IN_CI = os.environ.get("CI", "").lower() == "true"


def run_quick(script: str, out: Path, timeout: float = 120) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_overhead_quick_writes_every_configuration(tmp_path):
    report = run_quick("bench_overhead.py", tmp_path / "overhead.json")
    assert set(report["results"]) == {
        "bare", "mlmonitor_metrics", "mlmonitor_full", "mlmonitor_full_10pct",
        "mlmonitor_unsampled", "mlmonitor_no_traces", "prometheus_flask_exporter",
        "otel_flask", "structlog", "peer_stack", "prometheus_floor"}
    assert set(report["targets"]) == {"full_vs_peer_stack_added",
                                      "metrics_vs_prometheus_flask_exporter_added",
                                      "unsampled_tracing_us"}
    results = report["results"]
    served = report["rounds"] * report["requests_per_round"] + report["warmup"]
    assert results["mlmonitor_full"]["checks"]["requests_counted"] == served
    assert results["mlmonitor_full"]["checks"]["spans_exported"] > 0
    assert results["mlmonitor_unsampled"]["checks"]["spans_exported"] == 0
    assert all(r["checks"]["mlmonitor_internal_errors"] == 0 for r in results.values())
    encoder = report["encoder"]  # both OTLP encoders timed on the same spans (checked equal)
    assert encoder["spans"] == 64 and encoder["ratio"] > 0


def test_memory_quick_writes_bare_and_full(tmp_path):
    report = run_quick("bench_memory.py", tmp_path / "memory.json")
    assert set(report["results"]) == {"bare", "mlmonitor_full", "peer_stack"}
    assert all(r["rss_end_mb"] > 0 for r in report["results"].values())
    assert all(len(r["checkpoints_mb"]) == 10 and "growth_after_first_checkpoint_mb" in r
               for r in report["results"].values())


def test_scrape_quick_keeps_every_count(tmp_path):
    report = run_quick("bench_scrape.py", tmp_path / "scrape.json")
    assert set(report["results"]) == {"workers_1", "workers_4", "workers_16",
                                      "recycled_client_python", "recycled_mlmonitor_merge"}
    for row in report["results"].values():
        assert row["requests_counted"] == row["requests_served"]
    merged = report["results"]["recycled_mlmonitor_merge"]
    alone = report["results"]["recycled_client_python"]
    assert merged["db_files"] < alone["db_files"]


def test_gunicorn_quick_alternates_the_configurations_and_really_exports(tmp_path):
    if shutil.which("wrk") is None:
        message = "wrk is not installed (Debian: apt-get install wrk)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    report = run_quick("bench_gunicorn.py", tmp_path / "gunicorn.json", timeout=180)
    configs = ["bare", "mlmonitor_no_traces", "mlmonitor_full", "mlmonitor_full_otlp",
               "mlmonitor_full_otlp_events", "peer_stack", "peer_stack_otlp"]
    assert set(report["results"]) == set(configs)
    assert report["reps"] >= 2
    assert [r["config"] for r in report["runs"]][:len(configs)] == configs
    assert all(r["requests"] > 0 and r["non_2xx"] == 0 for r in report["runs"])
    # the real-export runs reached the live receiver (issue 19)
    assert all(r["exported_requests"] > 0 and r["exported_bytes"] > 0
               for r in report["runs"] if "_otlp" in r["config"])


def test_instructions_quick_counts_bare_and_metrics(tmp_path):
    require_binary("valgrind")
    report = run_quick("bench_instructions.py", tmp_path / "instructions.json", timeout=600)
    results = report["results"]
    assert set(results) == {"bare", "mlmonitor_metrics"}
    # mlmonitor adds work to the same app: a count that says otherwise is a broken run
    assert results["mlmonitor_metrics"]["added"] > 0
    assert results["bare"]["instructions_per_request"] > 10_000


def test_asgi_quick_runs_every_configuration_in_process_and_under_uvicorn(tmp_path):
    require_binary("wrk")
    report = run_quick("bench_asgi.py", tmp_path / "asgi.json", timeout=240)
    configs = {"bare", "mlmonitor_metrics", "mlmonitor_full", "instrumentator", "peer_stack",
               "asgi_floor"}
    results = report["in_process"]["results"]
    assert set(results) == configs
    assert set(report["targets"]) == {"full_vs_peer_stack_added",
                                      "metrics_vs_instrumentator_added"}
    served = report["in_process"]["rounds"] * report["in_process"]["requests_per_round"] \
        + report["in_process"]["warmup"]
    assert all(results[c]["checks"]["requests_counted"] == served
               for c in configs - {"bare"})
    assert results["mlmonitor_full"]["checks"]["spans_exported"] >= served
    assert results["peer_stack"]["checks"]["spans_exported"] >= served
    assert all(r["checks"]["mlmonitor_internal_errors"] == 0 for r in results.values())
    uvicorn = report["uvicorn"]
    assert set(uvicorn["results"]) == configs and uvicorn["reps"] >= 2
    assert all(r["requests"] > 0 and r["non_2xx"] == 0 for r in uvicorn["runs"])
