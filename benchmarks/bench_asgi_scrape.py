"""What unauthenticated scrapers cost the requests of a uvicorn app (issue 24, 7g).

Method: one ``uvicorn`` process (one event loop) serves the ASGI benchmark app
(``asgi_apps``, mlmonitor metrics only, ``/metrics`` without a token), its registry holding
``--series`` more series (default 2,000: a model with a reference's feature bins, several
versions; the exposition's size is printed). One client sends
``POST /predict`` one after another on a keep-alive connection and times each answer: first
alone, then while ``--scrapers`` threads (default 8) each scrape ``/metrics`` in a loop. The
p99 of each phase and their ratio are printed; the scrapes answered 200 and 503 (refused: over
the per-process bound) are counted. ``--source DIR`` puts another mlmonitor tree first on the
server's path, to compare two versions on one machine in one run.

Run: python benchmarks/bench_asgi_scrape.py [--quick] [--requests N] [--scrapers N]
     [--series N] [--source DIR] [--out PATH]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import write_report  # noqa: E402

DEFAULT_OUT = HERE / "results" / "asgi_scrape.json"
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]})


def server_app() -> Any:
    """uvicorn entry point (``--factory bench_asgi_scrape:server_app``): the benchmark app with
    ``BENCH_SERIES`` more series in its registry."""
    from asgi_apps import make_app
    from prometheus_client import Gauge

    app, handles = make_app("mlmonitor_metrics")
    extra = Gauge("bench_reference_ratio", "series a scrape carries", ("feature", "bin"),
                  registry=handles["registry"])
    for i in range(int(os.environ.get("BENCH_SERIES", "0"))):
        extra.labels(f"feature_{i // 10}", f"bin_{i % 10}").set(i / 10)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def p99(values: List[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def timed_requests(port: int, count: int) -> List[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            conn.request("POST", "/predict", body=BODY,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            out.append((time.perf_counter() - start) * 1000.0)
            assert response.status == 200, response.status
    finally:
        conn.close()
    return out


def scraper(port: int, stop: threading.Event, counts: Dict[int, int], lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        while not stop.is_set():
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            response.read()
            with lock:
                counts[response.status] = counts.get(response.status, 0) + 1
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("uvicorn exited: " + (proc.stderr.read() if proc.stderr else ""))
        try:
            timed_requests(port, 1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("uvicorn did not answer within 60 s")


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts (CI smoke run)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--scrapers", type=int, default=8)
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--source", help="an mlmonitor source tree to run the server with")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    requests = 50 if args.quick else args.requests
    started = time.time()
    port = free_port()
    path = [str(HERE)] + ([str(Path(args.source).resolve())] if args.source else [])
    env = {**os.environ, "BENCH_SERIES": str(10 if args.quick else args.series),
           "PYTHONPATH": os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")])}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "bench_asgi_scrape:server_app",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"],
                            cwd=str(HERE), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_ready(port, proc)
        timed_requests(port, min(200, requests))  # warm-up
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/metrics")
        exposition_bytes = len(conn.getresponse().read())
        conn.close()
        alone = timed_requests(port, requests)
        stop, lock, counts = threading.Event(), threading.Lock(), {}  # type: ignore[var-annotated]
        threads = [threading.Thread(target=scraper, args=(port, stop, counts, lock), daemon=True)
                   for _ in range(args.scrapers)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        scraped = timed_requests(port, requests)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        proc.terminate()
        proc.wait(30)
    report = {"requests": requests, "scrapers": args.scrapers, "source": args.source,
              "exposition_bytes": exposition_bytes,
              "alone": {"p50_ms": statistics.median(alone), "p99_ms": p99(alone)},
              "with_scrapers": {"p50_ms": statistics.median(scraped), "p99_ms": p99(scraped)},
              "scrapes": {str(k): v for k, v in sorted(counts.items())}}
    report["p99_ratio"] = report["with_scrapers"]["p99_ms"] / report["alone"]["p99_ms"]
    print(f"/predict p99 alone {report['alone']['p99_ms']:.2f} ms, with {args.scrapers} scrapers "
          f"{report['with_scrapers']['p99_ms']:.2f} ms (x{report['p99_ratio']:.1f}); "
          f"scrapes answered: {report['scrapes']}; exposition {exposition_bytes} bytes")
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
