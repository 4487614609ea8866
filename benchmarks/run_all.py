"""Run every overhead benchmark in turn: in-process, gunicorn, scrape, memory, instructions,
stage spans against stage events.

Run: python benchmarks/run_all.py [--quick] [--out-dir DIR]
Each script prints its table and writes ``<out-dir>/<name>.json``
(default ``benchmarks/results/``, git-ignored).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List

HERE = Path(__file__).resolve().parent
SCRIPTS = {"overhead": "bench_overhead.py", "gunicorn": "bench_gunicorn.py",
           "scrape": "bench_scrape.py", "memory": "bench_memory.py",
           "instructions": "bench_instructions.py", "stage_events": "bench_stage_events.py"}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--out-dir", default=str(HERE / "results"))
    parser.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset")
    args = parser.parse_args(argv)
    failed = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        command = [sys.executable, str(HERE / SCRIPTS[name]),
                   "--out", str(Path(args.out_dir) / f"{name}.json")]
        if args.quick:
            command.append("--quick")
        print(f"== {name} ==", flush=True)
        if subprocess.run(command).returncode != 0:
            failed.append(name)
        print(flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
