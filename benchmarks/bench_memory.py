"""Resident memory after 100,000 requests: mlmonitor full vs bare Flask (and the peer stack).

Method (issue 8, part 4): each configuration runs in its own fresh process,
calling the WSGI app in a loop (the same loop as the in-process benchmark, not
a gunicorn worker: no sockets, so the numbers are the app's and the
instrumentation's own). Resident memory (``/proc/self/statm``) is read after
1,000 warm-up requests and then at ten checkpoints up to ``--requests``; the
growth after warm-up shows whether anything accumulates per request
(records, label children, spans queued by the batch processor, which is
bounded at 2,048), and the growth over the last nine tenths, once bounded
buffers are full, is what a leak would look like.

Run: python benchmarks/bench_memory.py [--quick] [--requests N] [--out PATH]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from report import write_report  # noqa: E402

DEFAULT_OUT = HERE / "results" / "memory.json"
CONFIGS = ["bare", "mlmonitor_full", "peer_stack"]
WARMUP = 1000


def rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(config: str, requests: int) -> Dict[str, Any]:
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from bench_apps import make_app, request_loop

    before_app = rss_bytes()
    app, handles = make_app(config)
    request_loop(app, WARMUP)
    gc.collect()
    after_warmup = rss_bytes()
    checkpoints = []
    step = max(1, requests // 10)
    done = 0
    while done < requests:
        count = min(step, requests - done)
        _, _, status = request_loop(app, count)
        if status != 200:
            raise SystemExit(f"{config}: status {status}")
        done += count
        checkpoints.append([done, rss_bytes()])
    gc.collect()
    end = rss_bytes()
    return {"config": config, "requests": requests, "rss_before_app_mb": before_app / 2**20,
            "rss_after_warmup_mb": after_warmup / 2**20, "rss_end_mb": end / 2**20,
            "growth_after_warmup_mb": (end - after_warmup) / 2**20,
            # after the first tenth, bounded buffers (the span queue) are full: what grows now leaks
            "growth_after_first_checkpoint_mb": (end - checkpoints[0][1]) / 2**20,
            "checkpoints_mb": [[n, b / 2**20] for n, b in checkpoints]}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.requests)))
        return 0
    if args.quick:
        args.requests = 2000
    started = time.time()
    results = {}
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    print(f"{'configuration':16} {'RSS warm MB':>11} {'RSS end MB':>10} {'growth MB':>9} "
          f"{'last 9/10 MB':>12} {'vs bare MB':>10}")
    for config in CONFIGS:
        proc = subprocess.run([sys.executable, __file__, "--child", config,
                               "--requests", str(args.requests)],
                              env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
        row = results[config] = json.loads(proc.stdout.strip().splitlines()[-1])
        row["vs_bare_end_mb"] = row["rss_end_mb"] - results["bare"]["rss_end_mb"]
        print(f"{config:16} {row['rss_after_warmup_mb']:11.1f} {row['rss_end_mb']:10.1f} "
              f"{row['growth_after_warmup_mb']:+9.2f} {row['growth_after_first_checkpoint_mb']:+12.2f} "
              f"{row['vs_bare_end_mb']:+10.1f}", flush=True)
    report = {"benchmark": "memory", "quick": args.quick, "requests": args.requests,
              "method": "in-process WSGI loop, one fresh process per configuration",
              "results": results}
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
