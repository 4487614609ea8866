"""Stages as child spans or as span events (issue 19, item 3): what a request sends, and encodes.

The benchmarked view (bench_apps.py with ``BENCH_STAGE=1``: one ``inference`` stage)
served in-process ``--requests`` times in each mode, every span kept by an in-memory
exporter behind a ``SimpleSpanProcessor``; then, per request: spans, OTLP bytes
(``mlmonitor.otlp.encode_spans`` of all of them in one request, as a batch is sent)
and the time to encode them with mlmonitor's encoder and with the SDK's (median of
``--repeats``, the two modes alternating). The request path's own cost in both modes
comes from bench_instructions.py / bench_overhead.py with ``--configs
mlmonitor_full,mlmonitor_full_events`` and ``BENCH_STAGE=1``.

Run: python benchmarks/bench_stage_events.py [--quick] [--requests N] [--out PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import write_report  # noqa: E402

DEFAULT_OUT = HERE / "results" / "stage_events.json"
MODES = {"children": "mlmonitor_full", "events": "mlmonitor_full_events"}


def spans_of(config: str, requests: int) -> List[Any]:
    """The finished spans of ``requests`` POST /predict to the app in ``config``."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import bench_apps
    from bench_apps import make_app, request_loop

    memory = InMemorySpanExporter()
    build = bench_apps.tracer_provider

    def kept(sampler: str = "always_on") -> Any:  # the benchmark's provider, spans kept too
        provider, exporter = build(sampler)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        return provider, exporter

    bench_apps.tracer_provider = kept
    try:
        app, handles = make_app(config)
    finally:
        bench_apps.tracer_provider = build
    _, _, status = request_loop(app, requests)
    if status != 200:
        raise SystemExit(f"{config}: POST /predict answered {status}")
    handles["provider"].shutdown()
    return list(memory.get_finished_spans())


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.repeats = 20, 3
    os.environ["BENCH_STAGE"] = "1"
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode

    from mlmonitor.otlp import encode_spans

    started = time.time()
    spans = {mode: spans_of(config, args.requests) for mode, config in MODES.items()}
    times: Dict[str, Dict[str, List[float]]] = {m: {"mlmonitor": [], "sdk": []} for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            for name, encode in (("mlmonitor", encode_spans),
                                 ("sdk", lambda s: sdk_encode(s).SerializePartialToString())):
                begun = time.perf_counter()
                encode(spans[mode])
                times[mode][name].append((time.perf_counter() - begun) / args.requests * 1e6)
    results = {}
    for mode, kept in spans.items():
        events = sum(len(s.events) for s in kept)
        results[mode] = {
            "spans_per_request": len(kept) / args.requests,
            "events_per_request": events / args.requests,
            "bytes_per_request": len(encode_spans(kept)) / args.requests,
            "mlmonitor_encode_us_per_request": statistics.median(times[mode]["mlmonitor"]),
            "sdk_encode_us_per_request": statistics.median(times[mode]["sdk"]),
        }
    # the machine's speed drifts: events over children within each repetition, then the median
    ratios = {name: statistics.median(e / c for e, c in zip(times["events"][name],
                                                              times["children"][name]))
              for name in ("mlmonitor", "sdk")}
    print(f"{'stages as':10} {'spans/req':>9} {'events/req':>10} {'bytes/req':>9} "
          f"{'mlmonitor us':>12} {'SDK us':>8}")
    for mode, row in results.items():
        print(f"{mode:10} {row['spans_per_request']:9.2f} {row['events_per_request']:10.2f} "
              f"{row['bytes_per_request']:9.0f} {row['mlmonitor_encode_us_per_request']:12.1f} "
              f"{row['sdk_encode_us_per_request']:8.1f}")
    print(f"encoding time, events / children (median of per-repetition ratios): mlmonitor "
          f"{ratios['mlmonitor']:.2f}, SDK {ratios['sdk']:.2f}")
    report = {"benchmark": "stage_events", "quick": args.quick, "requests": args.requests,
              "repeats": args.repeats, "results": results,
              "encode_events_over_children": ratios}
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
