"""Bytecodes and calls per request, per Python function: where the added instructions come from.

Callgrind (``bench_instructions.py``) counts a configuration's instructions but cannot name
the Python functions behind them on CPython 3.11. This runs the same requests under
``sys.settrace`` with opcode events and counts, per function, the bytecodes executed and the
calls made, for a configuration and for a base one (bare Flask by default), after the same
warm-up; then prints what the configuration adds, function by function. The counts are
deterministic (no clock, no sampling); C code is not counted, and only the request thread is
(not the span export thread), so use it to find the costs and callgrind to measure them.
A Python call costs a few hundred instructions beyond its bytecodes on 3.11: fewer calls count.

Run: python benchmarks/bench_bytecodes.py mlmonitor_metrics [--base bare] [--requests 200] [--top 40]
"""
from __future__ import annotations

import argparse
import gc
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

WARMUP = 300
Key = Tuple[str, int, str]


def _name(key: Key) -> str:
    path, line, name = key
    short = path.split("site-packages/")[-1]
    root = str(HERE.parent) + "/"
    return f"{short.replace(root, '')}:{line} {name}"


def count(config: str, requests: int) -> Dict[str, Tuple[float, float]]:
    """``{function: (bytecodes, calls)}`` per request of ``config``, after the warm-up."""
    from bench_apps import make_app, request_loop

    app, _ = make_app(config)
    request_loop(app, WARMUP)
    opcodes: Counter[Key] = Counter()
    calls: Counter[Key] = Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        calls[key] += 1

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                opcodes[key] += 1
            return local
        return local

    gc.collect()
    gc.freeze()
    sys.settrace(tracer)
    try:
        request_loop(app, requests)
    finally:
        sys.settrace(None)
    return {_name(k): (opcodes[k] / requests, calls[k] / requests) for k in calls}


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--base", default="bare")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one configuration per process: the apps share no module state
        print(repr(count(args.config, args.requests)))
        return 0
    counts = []
    for config in (args.base, args.config):
        out = subprocess.run([sys.executable, __file__, config, "--requests", str(args.requests),
                              "--child"], capture_output=True, text=True, check=True).stdout
        counts.append(eval(out.strip().splitlines()[-1]))  # noqa: S307 (our own child's repr)
    base, measured = counts
    rows = []
    for name in set(base) | set(measured):
        b_ops, b_calls = base.get(name, (0.0, 0.0))
        m_ops, m_calls = measured.get(name, (0.0, 0.0))
        rows.append((m_ops - b_ops, m_calls - b_calls, name))
    added = sum(r[0] for r in rows)
    added_calls = sum(r[1] for r in rows)
    print(f"{args.config} over {args.base}: {added:+.0f} bytecodes, {added_calls:+.0f} calls a request "
          f"({args.requests} requests after {WARMUP})")
    print(f"{'bytecodes':>10} {'calls':>6}  function")
    for ops, n, name in sorted(rows, key=lambda r: -abs(r[0]))[:args.top]:
        if abs(ops) >= 0.5 or abs(n) >= 0.5:
            print(f"{ops:+10.1f} {n:+6.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
