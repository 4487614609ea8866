"""ASGI (FastAPI) overhead: in-process on one event loop, and under uvicorn driven by ``wrk``.

Method (issue 20, item 6), the house method of bench_overhead.py and bench_gunicorn.py:

1. In-process: each configuration of ``asgi_apps`` lives in its own fresh Python process,
   started once. The parent drives rounds over a pipe, the order rotated round by round; in
   every round each process calls the ASGI app ``--requests`` times on one event loop (after
   ``--warmup`` untimed calls): the ``http`` scope is built once and copied per request, the
   receive callable returns the body once, the send callable discards. Per round: microseconds
   per request (process CPU time, all threads; wall time beside it), ratio to bare FastAPI and
   added cost over bare; the table shows medians over rounds and the targets are medians of
   per-round ratios of added costs: mlmonitor full / peer stack (<= 0.3), mlmonitor metrics
   only / prometheus-fastapi-instrumentator (<= 0.6). Each process reports what it did
   (requests counted by its registry, spans exported, mlmonitor internal errors).
2. uvicorn: each configuration served by its own single uvicorn process on 127.0.0.1 (free
   port, ``--log-level warning --no-access-log``, uvicorn's default loop and HTTP
   implementation), ``wrk`` POSTing the JSON body for a bounded time after a short warm-up;
   configurations alternate (A B C, then C B A, ...), requests/s and p99 are compared to bare
   within each repetition and the medians reported.

``PROMETHEUS_MULTIPROC_DIR`` is unset in every child: one process, one private registry.

Run: python benchmarks/bench_asgi.py [--quick] [--part both|inprocess|uvicorn] [--out PATH]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from asgi_apps import CONFIGS  # noqa: E402
from bench_gunicorn import LUA, ServerProcess, free_port, wrk  # noqa: E402
from bench_overhead import machine  # noqa: E402
from report import target, verdict, write_report  # noqa: E402
from rounds import (child_checks, median, per_config, ratio_of_added, run_rounds,  # noqa: E402
                    serve_rounds)

DEFAULT_OUT = HERE / "results" / "asgi.json"


#: request counters of mlmonitor, prometheus-fastapi-instrumentator and the hand-written app
COUNTERS = (("mlmonitor_http_requests_total", {"method": "POST", "route": "/predict", "status": "200"}),
            ("http_requests_total", {"handler": "/predict", "method": "POST", "status": "2xx"}),
            ("app_requests_total", {"method": "POST", "route": "/predict", "status": "200"}))


def _child_env() -> Dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}


# -- in-process: the child, one configuration --------------------------------------------

def child(config: str, warmup: int) -> None:
    """Build the app, warm it up, then run a batch for each line read from stdin."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import asyncio

    from asgi_apps import make_app, request_loop

    app, handles = make_app(config)
    loop = asyncio.new_event_loop()
    serve_rounds(config, lambda count: request_loop(loop, app, count), warmup,
                 lambda: child_checks(config, handles, COUNTERS))


def in_process(configs: List[str], rounds: int, requests: int, warmup: int,
               clock: str) -> Dict[str, Any]:
    per_round, checks = run_rounds(__file__, configs, rounds, requests, warmup)
    report = summarize(per_round[clock], checks)
    other = "wall" if clock == "cpu" else "cpu"
    report["other_clock"] = {"clock": other, **summarize(per_round[other], {})}
    report.update(clock=clock, rounds=rounds, requests_per_round=requests, warmup=warmup)
    return report


def summarize(per_round: List[Dict[str, float]], checks: Dict[str, Any]) -> Dict[str, Any]:
    targets = {
        "full_vs_peer_stack_added":
            target(ratio_of_added(per_round, "mlmonitor_full", "peer_stack"), 0.30, "<="),
        "metrics_vs_instrumentator_added":
            target(ratio_of_added(per_round, "mlmonitor_metrics", "instrumentator"), 0.6, "<="),
    }
    return {"results": per_config(per_round, checks, CONFIGS.__getitem__), "targets": targets}


def print_in_process(report: Dict[str, Any]) -> None:
    other = report["other_clock"]
    print(f"In-process, {report['rounds']} rounds x {report['requests_per_round']} requests")
    print(f"{'':20} {report['clock'] + ' time (headline)':^26} | {other['clock'] + ' time':^26}")
    print(f"{'configuration':20} {'us/req':>8} {'added us':>9} {'x bare':>7} | "
          f"{'us/req':>8} {'added us':>9} {'x bare':>7}")
    for name, row in report["results"].items():
        o = other["results"][name]
        print(f"{name:20} {row['us_per_request']:8.1f} {row['added_us']:+9.1f} "
              f"{row['ratio_to_bare']:7.2f} | {o['us_per_request']:8.1f} {o['added_us']:+9.1f} "
              f"{o['ratio_to_bare']:7.2f}")
    for name, row in report["targets"].items():
        value = row["value"]
        shown = "n/a" if value is None else f"{value:.3f}"
        value = other["targets"][name]["value"]
        also = "n/a" if value is None else f"{value:.3f}"
        print(f"{name:36} {shown:>8} (target {row['op']} {row['target']}) {verdict(row)}"
              f"   [{other['clock']} time: {also}]")


# -- uvicorn -----------------------------------------------------------------------------

def uvicorn_flavour() -> Dict[str, str]:
    """What uvicorn's ``auto`` picks here: uvloop and httptools when installed."""
    found = importlib.util.find_spec
    return {"loop": "uvloop" if found("uvloop") else "asyncio",
            "http": "httptools" if found("httptools") else "h11"}


class Uvicorn(ServerProcess):
    """One uvicorn process serving one configuration."""

    def __init__(self, config: str, workdir: str) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "uvicorn", "--factory", "asgi_apps:uvicorn_app",
                   "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "warning", "--no-access-log"]
        env = _child_env()
        env["BENCH_CONFIG"] = config
        self.stderr = open(os.path.join(workdir, f"uvicorn-{config}-{self.port}.log"), "w+")
        self.proc = subprocess.Popen(command, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"



def under_uvicorn(configs: List[str], duration: float, warmup: float, reps: int,
                  connections: int) -> Dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="mlmonitor-bench-asgi-")
    script = os.path.join(workdir, "post.lua")
    Path(script).write_text(LUA)
    runs: List[Dict[str, Any]] = []
    try:
        print(f"uvicorn, 1 process ({uvicorn_flavour()}), wrk -t1 -c{connections}")
        print(f"{'rep':>3} {'configuration':20} {'req/s':>8} {'x bare':>7} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'errors':>6}")
        for rep in range(reps):
            order = configs if rep % 2 == 0 else configs[::-1]
            rep_runs = {}
            for config in order:
                server = Uvicorn(config, workdir)
                try:
                    server.wait_ready()
                    if warmup > 0:
                        wrk(server.url, script, warmup, connections)
                    result = wrk(server.url, script, duration, connections)
                finally:
                    server.stop()
                result.update(config=config, rep=rep)
                rep_runs[config] = result
                runs.append(result)
            bare = rep_runs["bare"]
            for config in configs:
                result = rep_runs[config]
                result["ratio_to_bare"] = result["requests_per_s"] / bare["requests_per_s"]
                result["p99_x_bare"] = result.get("p99_ms", 0.0) / bare.get("p99_ms", 1.0)
                print(f"{rep:3d} {config:20} {result['requests_per_s']:8.0f} "
                      f"{result['ratio_to_bare']:7.2f} {result.get('p50_ms', 0):7.2f} "
                      f"{result.get('p99_ms', 0):7.2f} "
                      f"{result['non_2xx'] + result['socket_errors']:6d}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        summary[config] = {
            "requests_per_s": median([r["requests_per_s"] for r in mine]),
            "ratio_to_bare": median([r["ratio_to_bare"] for r in mine]),
            "ratio_range": [min(r["ratio_to_bare"] for r in mine),
                            max(r["ratio_to_bare"] for r in mine)],
            **{k: median([r.get(k, 0.0) for r in mine])
               for k in ("p50_ms", "p99_ms", "p99_x_bare")},
            "errors": sum(r["non_2xx"] + r["socket_errors"] for r in mine),
        }
    return {"server": uvicorn_flavour(), "duration_s": duration, "warmup_s": warmup,
            "reps": reps, "connections": connections, "results": summary, "runs": runs}


def print_uvicorn(report: Dict[str, Any]) -> None:
    for config, row in report["results"].items():
        low, high = row["ratio_range"]
        print(f"{config:20} median {row['requests_per_s']:8.0f} req/s, "
              f"{row['ratio_to_bare']:.2f}x bare ({low:.2f}-{high:.2f}), p50 {row['p50_ms']:.2f} ms, "
              f"p99 {row['p99_ms']:.2f} ms ({row['p99_x_bare']:.2f}x bare)")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--part", choices=("both", "inprocess", "uvicorn"), default="both")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated, from asgi_apps.CONFIGS (bare is always run)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of wrk load per run")
    parser.add_argument("--wrk-warmup", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3, help="alternating uvicorn repetitions")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.warmup)
        return 0
    if args.quick:
        args.rounds, args.requests, args.warmup = 2, 30, 20
        args.duration, args.wrk_warmup, args.reps = 1.0, 0.0, 2
    configs = ["bare"] + [c.strip() for c in args.configs.split(",")
                          if c.strip() and c.strip() != "bare"]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS)}")
    if args.part != "inprocess" and shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    started = time.time()
    report: Dict[str, Any] = {"benchmark": "asgi", "quick": args.quick, "machine": machine(),
                              "targets": {}}
    if args.part != "uvicorn":
        report["in_process"] = in_process(configs, args.rounds, args.requests, args.warmup,
                                          args.clock)
        report["targets"].update(report["in_process"]["targets"])
        print_in_process(report["in_process"])
        print()
    if args.part != "inprocess":
        report["uvicorn"] = under_uvicorn(configs, args.duration, args.wrk_warmup, args.reps,
                                          args.connections)
        print()
        print_uvicorn(report["uvicorn"])
        print()
    report["loadavg_end"] = os.getloadavg()[0]
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
