"""Instructions per request under callgrind: the in-process comparison without the machine's noise.

Time on a shared 2-core machine moves by 10-30% from run to run; instruction
counts do not (the same count twice, whatever else runs). Each configuration of
``bench_apps`` runs twice under ``valgrind --tool=callgrind``: once building the
app and warming it up, once doing the same plus ``--requests`` more requests.
The difference divided by the requests is the instructions per request, every
thread counted (the span export thread too). Instructions are not time: they
miss cache misses, lock hand-offs and the GIL hand-offs between the request
thread and the span export thread, which ``bench_overhead.py`` does see. The
two together tell what is code and what is contention.

Run: python benchmarks/bench_instructions.py [--quick] [--requests N] [--configs a,b] [--out PATH]
Needs Debian's ``valgrind``.

``--budget`` checks the instruction budget in ``benchmarks/budget.toml`` (``make budget``, CI):
it runs the configurations the budget names, at its request count, and exits 1 when
mlmonitor's added instructions over bare Flask exceed their share of a peer's, both
measured in this run. The counts do not depend on the machine's load, so this is a gate,
not a timing.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_apps import CONFIGS, configs_from  # noqa: E402
from report import target as target_row  # noqa: E402
from report import verdict, write_report  # noqa: E402

DEFAULT_OUT = HERE / "results" / "instructions.json"
BUDGET = HERE / "budget.toml"
WARMUP = 300
TARGETS = (  # (name, configuration, over, target): added instructions of one over the other
    ("full_vs_peer_stack_added", "mlmonitor_full", "peer_stack", 0.30),
    ("metrics_vs_prometheus_flask_exporter_added", "mlmonitor_metrics",
     "prometheus_flask_exporter", 0.60),
)


def child(config: str, requests: int) -> None:
    """Inside callgrind: build, warm up, then run ``requests`` more requests and flush."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from bench_apps import make_app, request_loop

    app, handles = make_app(config)
    _, _, status = request_loop(app, WARMUP)
    if status != 200:
        raise SystemExit(f"{config}: POST /predict answered {status}")
    # what start-up and warm-up allocated is kept out of later collections: a full collection
    # walks the whole heap (tens of millions of instructions), and whether one falls among the
    # measured requests depends on allocations that vary with the clock (exemplars, process
    # metrics), so without this one run could differ from the next by a full collection
    gc.collect()
    gc.freeze()
    if requests:
        request_loop(app, requests)
    provider = handles.get("provider")
    if provider is not None:
        provider.force_flush(10_000)


def instructions(config: str, requests: int) -> int:
    """Total instructions of one child run, as callgrind reports them."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--child", config, "--requests", str(requests)],
        capture_output=True, text=True, timeout=1800,
        env={**os.environ, "PYTHONHASHSEED": "0"})
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"{config}: callgrind run failed:\n{proc.stderr[-2000:]}")
    return int(match.group(1))


def per_request(config: str, requests: int) -> float:
    return (instructions(config, requests) - instructions(config, 0)) / requests


def read_budget(path: str) -> Dict[str, Any]:
    """The budget file: ``requests`` and ``[[budget]]`` rows of name, config, over and max."""
    with open(path, "rb") as handle:
        budget = tomllib.load(handle)
    for row in budget["budget"]:
        for key in ("config", "over"):
            if row[key] not in CONFIGS:
                raise SystemExit(f"{path}: unknown configuration {row[key]!r}")
    return budget


def check_budget(budget: Dict[str, Any], results: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, Any]]:
    """Each budget row's share (added over bare, of the peer's added) against its maximum."""
    rows = {}
    for row in budget["budget"]:
        value = results[row["config"]]["added"] / results[row["over"]]["added"]
        rows[row["name"]] = target_row(value, row["max"], "<=", config=row["config"], over=row["over"],
                                       added=results[row["config"]]["added"],
                                       over_added=results[row["over"]]["added"])
    return rows


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--budget", nargs="?", const=str(BUDGET), metavar="PATH",
                        help="check the instruction budget (default benchmarks/budget.toml); exit 1 when over")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.quick:
        args.requests, args.configs = 20, "mlmonitor_metrics"
    budget = read_budget(args.budget) if args.budget else None
    if budget is not None:  # its own configurations and request count, whatever else was asked
        args.requests = budget["requests"]
        args.configs = ",".join(dict.fromkeys(r[k] for r in budget["budget"] for k in ("config", "over")))
    configs = configs_from(args.configs)
    started = time.time()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        counts = dict(zip(configs, pool.map(lambda c: per_request(c, args.requests), configs)))
    bare = counts["bare"]
    results: Dict[str, Dict[str, float]] = {
        c: {"instructions_per_request": n, "added": n - bare, "ratio_to_bare": n / bare}
        for c, n in counts.items()}
    targets = {}
    for name, config, over, bound in TARGETS:
        if config in results and over in results and results[over]["added"] > 0:
            value = results[config]["added"] / results[over]["added"]
            targets[name] = target_row(value, bound, "<=")
    if "mlmonitor_unsampled" in counts and "mlmonitor_no_traces" in counts:
        # informational: the target for this one is in microseconds (bench_overhead.py)
        targets["unsampled_tracing_instructions"] = {
            "value": counts["mlmonitor_unsampled"] - counts["mlmonitor_no_traces"],
            "of_bare": (counts["mlmonitor_unsampled"] - counts["mlmonitor_no_traces"]) / bare}
    print(f"{'configuration':28} {'instr/req':>10} {'added':>9} {'x bare':>7}")
    for config, row in results.items():
        print(f"{config:28} {row['instructions_per_request']:10.0f} {row['added']:+9.0f} "
              f"{row['ratio_to_bare']:7.2f}")
    print()
    for name, row in targets.items():
        if "target" not in row:
            print(f"{name:45} {row['value']:.0f} ({row['of_bare']:.2f}x a bare request)")
            continue
        print(f"{name:45} {row['value']:.3f} (target <= {row['target']}) "
              f"{verdict(row)}  [instructions, not time]")
    report = {"benchmark": "instructions", "quick": args.quick, "requests": args.requests,
              "warmup": WARMUP, "results": results, "targets": targets}
    over = []
    if budget is not None:
        report["budget"] = check_budget(budget, results)
        print()
        for name, row in report["budget"].items():
            print(f"budget {name:45} {row['value']:.3f} (max {row['target']}) {verdict(row)}")
            if not row["met"]:
                over.append(name)
    write_report(report, args.out, started)
    if over:
        print(f"over the instruction budget ({args.budget}): {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
