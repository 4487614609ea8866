"""Scrape cost of the multiprocess exposition with 1, 4, 16 workers' files and after recycles.

Method (issue 8, part 3): every scenario runs in a fresh process with its own
private ``PROMETHEUS_MULTIPROC_DIR``. Worker files are made the real way: the
scenario process forks workers; each builds the benchmark app with mlmonitor
(after the fork, as a gunicorn worker does), serves a few requests (200, 400,
404, /healthz) through the WSGI app and exits. The scenario process then plays
the last live worker: it serves the same requests and times
``MetricsSink.exposition()`` (what ``GET /metrics`` returns), median of
``--scrapes`` runs. For recycled workers it plays the gunicorn master too,
after each worker's exit: either ``prometheus_client.multiprocess.mark_process_dead``
alone (client_python's documented ``child_exit``; counter and histogram files
stay) or mlmonitor's ``child_exit`` merge (``mlmonitor.gunicorn.merge_dead_worker``
folds them into one file per type). The total request count in the exposition
is checked against the requests served, so a fast but lossy merge cannot pass.

Run: python benchmarks/bench_scrape.py [--quick] [--recycles N] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import target, verdict, write_report  # noqa: E402

DEFAULT_OUT = HERE / "results" / "scrape.json"
TARGET_MS = 50.0


def _serve(client: Any) -> int:
    """The requests each worker serves; returns how many it made."""
    body = b'{"features": {"sepal_length": 5.1, "petal_width": 0.2}}'
    made = 0
    for _ in range(3):
        client.post("/predict", data=body, content_type="application/json").close()
        made += 1
    client.post("/predict", data=b"[1]", content_type="application/json").close()  # 400
    client.get("/healthz").close()
    client.get("/no/such/path").close()  # 404, the unmatched route
    return made + 3


def _worker(slot: int) -> None:
    """In a forked child: be a worker for a moment, then exit without clean-up."""
    code = 0
    try:
        os.environ["MLMONITOR_WORKER_SLOT"] = str(slot)
        from bench_apps import make_app
        app, _ = make_app("mlmonitor_metrics", multiprocess=True)
        _serve(app.test_client())
    except BaseException:
        code = 1
    os._exit(code)


def scenario(live: int, recycles: int, merge: str, scrapes: int) -> Dict[str, Any]:
    """Run in a fresh process whose PROMETHEUS_MULTIPROC_DIR is set and empty."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    import mlmonitor.gunicorn as hooks  # what gunicorn imports first; prepares the directory
    from prometheus_client import multiprocess
    from prometheus_client.parser import text_string_to_metric_families

    import bench_apps  # noqa: F401  (imports Flask and mlmonitor before the forks)

    per_worker = 6
    served = 0
    merge_ms: List[float] = []
    generation_started = time.perf_counter()

    def fork(slot: int) -> int:
        pid = os.fork()
        if pid == 0:
            _worker(slot)
        return pid

    def reap(pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"worker {pid} failed ({status})")

    for index in range(recycles):  # workers that lived and died, one after another
        pid = fork(index % 2)
        reap(pid)
        served += per_worker
        started = time.perf_counter()
        if merge == "mlmonitor":
            hooks.merge_dead_worker(pid, path)
        else:
            multiprocess.mark_process_dead(pid, path)
        merge_ms.append((time.perf_counter() - started) * 1000)
    for slot in range(live - 1):  # the other live workers (their files stay as they are)
        reap(fork(slot + 1))
        served += per_worker
    generation_s = time.perf_counter() - generation_started

    from bench_apps import make_app
    app, _ = make_app("mlmonitor_metrics", multiprocess=True)  # this process: the last live worker
    served += _serve(app.test_client())
    sink = app.extensions["mlmonitor"].metrics
    files = len([n for n in os.listdir(path) if n.endswith(".db")])
    data, _ = sink.exposition("")
    timings = []
    for _ in range(scrapes):
        started = time.perf_counter()
        data, _ = sink.exposition("")
        timings.append((time.perf_counter() - started) * 1000)
    counted = 0.0
    for family in text_string_to_metric_families(data.decode()):
        if family.name == "mlmonitor_http_requests":
            counted = sum(s.value for s in family.samples if s.name.endswith("_total"))
    return {"live_workers": live, "recycled_workers": recycles, "dead_worker_handling": merge,
            "db_files": files, "exposition_bytes": len(data),
            "scrape_ms_median": statistics.median(timings), "scrape_ms_min": min(timings),
            "scrapes": scrapes, "requests_served": served, "requests_counted": counted,
            "merge_ms_median": statistics.median(merge_ms) if merge_ms else None,
            "generation_s": round(generation_s, 2)}


def run_scenario(name: str, live: int, recycles: int, merge: str, scrapes: int) -> Dict[str, Any]:
    directory = tempfile.mkdtemp(prefix="mlmonitor-bench-scrape-")
    try:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        proc = subprocess.run(
            [sys.executable, __file__, "--scenario", json.dumps([live, recycles, merge, scrapes])],
            env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result["name"] = name
    return result


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--recycles", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=15)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scenario:
        live, recycles, merge, scrapes = json.loads(args.scenario)
        print(json.dumps(scenario(live, recycles, merge, scrapes)))
        return 0
    if args.quick:
        args.recycles, args.scrapes = 10, 3
    plan = [("workers_1", 1, 0, "none"), ("workers_4", 4, 0, "none"),
            ("workers_16", 16, 0, "none"),
            ("recycled_client_python", 2, args.recycles, "client_python"),
            ("recycled_mlmonitor_merge", 2, args.recycles, "mlmonitor")]
    started = time.time()
    results = {}
    print(f"{'scenario':26} {'files':>6} {'scrape ms':>10} {'merge ms':>9} {'counted/served':>15}")
    for name, live, recycles, merge in plan:
        row = results[name] = run_scenario(name, live, recycles, merge, args.scrapes)
        merge_ms = "" if row["merge_ms_median"] is None else f"{row['merge_ms_median']:.2f}"
        print(f"{name:26} {row['db_files']:6d} {row['scrape_ms_median']:10.2f} {merge_ms:>9} "
              f"{row['requests_counted']:>7.0f}/{row['requests_served']:<7d}", flush=True)
    merged = results["recycled_mlmonitor_merge"]["scrape_ms_median"]
    report = {
        "benchmark": "scrape", "quick": args.quick, "recycles": args.recycles,
        "results": results,
        "targets": {"scrape_after_recycles_ms": target(merged, TARGET_MS, "<",
                                                       recycles=args.recycles)},
    }
    print(f"\nscrape after {args.recycles} recycles with mlmonitor's merge: {merged:.2f} ms "
          f"(target < {TARGET_MS} ms) {verdict(report['targets']['scrape_after_recycles_ms'])}")
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
