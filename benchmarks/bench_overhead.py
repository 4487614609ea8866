"""In-process overhead: the WSGI app called in a loop, every configuration in its own process.

Method (issue 8, part 1): each configuration of ``bench_apps`` lives in its own
fresh Python process, started once. The parent drives rounds over a pipe: in
every round each process runs ``--requests`` requests (after ``--warmup``
untimed ones at start), in an order rotated round by round. The environ is
built once and copied per request, the body is a BytesIO, the response
iterable is consumed and closed (mlmonitor finishes its record on close()).
Per round we take the microseconds per request, the ratio to bare Flask and
the added cost over bare Flask in that same round; the table shows the median
over rounds. Conclusions use ratios of added costs measured in the same round,
never absolute numbers.

The same run also times the OTLP span encoders (issue 19): the SDK's
``encode_spans(spans).SerializePartialToString()`` against ``mlmonitor.otlp.encode_spans``
on the same 1,024 spans shaped like mlmonitor's (server + stage, the attributes
traces.py sets), alternating, after the configurations' processes have exited.

Run: python benchmarks/bench_overhead.py [--quick] [--rounds N] [--requests N] [--out PATH]
     python benchmarks/bench_overhead.py --encoder-only   # the encoder figure alone
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_apps import CONFIGS, EXTRA_CONFIGS, configs_from  # noqa: E402
from report import target, verdict, write_report  # noqa: E402
from rounds import (child_checks, median, per_config, ratio_of_added, run_rounds,  # noqa: E402
                    serve_rounds)

DEFAULT_OUT = HERE / "results" / "overhead.json"


# -- the child: one configuration ------------------------------------------------------

def child(config: str, warmup: int) -> None:
    """Build the app, warm it up, then run a batch for each line read from stdin."""
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from bench_apps import make_app, request_loop

    app, handles = make_app(config)
    serve_rounds(config, lambda count: request_loop(app, count), warmup,
                 lambda: child_checks(config, handles, COUNTERS))


#: request counters of mlmonitor, prometheus-flask-exporter and the hand-written app
COUNTERS = (("mlmonitor_http_requests_total", {"method": "POST", "route": "/predict", "status": "200"}),
            ("flask_http_request_total", {"method": "POST", "status": "200"}),
            ("app_requests_total", {"method": "POST", "route": "/predict", "status": "200"}))


# -- the OTLP encoder micro-benchmark ------------------------------------------------------

def mlmonitor_like_spans(count: int) -> List[Any]:
    """Finished spans as mlmonitor makes them: one server span and one stage span a request.

    Resource, span limits and attributes as traces.py sets them for a successful
    ``POST /predict`` with a user agent and a client address.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, set_span_in_context

    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "iris-server", "process.pid": os.getpid()}),
        span_limits=SpanLimits(max_attributes=64, max_events=32, max_links=32,
                               max_attribute_length=1024))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("mlmonitor", "0.1.0")
    for index in range(count // 2):
        server = tracer.start_span("POST", kind=SpanKind.SERVER)
        stage = tracer.start_span("inference", context=set_span_in_context(server),
                                  attributes={"ml.stage": "inference"})
        stage.end()
        server.set_attributes({
            "http.request.method": "POST", "url.path": "/predict", "url.scheme": "http",
            "user_agent.original": "python-requests/2.32.3", "client.address": "127.0.0.1",
            "ml.model.name": "iris", "ml.model.version": "v2", "http.response.status_code": 200,
            "http.route": "/predict"})
        server.update_name("POST /predict")
        server.end()
    provider.shutdown()
    return list(exporter.get_finished_spans())


def encoder_benchmark(spans_count: int, repeats: int) -> Dict[str, Any]:
    """Both encoders on the same spans, alternating; medians of per-repetition times and ratios."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from mlmonitor.otlp import encode_spans

    spans = mlmonitor_like_spans(spans_count)
    sdk_bytes = sdk_encode(spans).SerializePartialToString()
    ours = encode_spans(spans)
    parse = ExportTraceServiceRequest.FromString
    if parse(ours) != parse(sdk_bytes):  # a broken encoder cannot pass as a fast one
        raise RuntimeError("mlmonitor.otlp.encode_spans differs from the SDK encoder")
    sdk_s: List[float] = []
    ours_s: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        sdk_encode(spans).SerializePartialToString()
        middle = time.perf_counter()
        encode_spans(spans)
        sdk_s.append(middle - start)
        ours_s.append(time.perf_counter() - middle)
    ratio = median([o / s for o, s in zip(ours_s, sdk_s)])
    return {"spans": len(spans), "repeats": repeats, "bytes": len(ours),
            "identical_bytes": ours == sdk_bytes,
            "sdk_us_per_span": median(sdk_s) / len(spans) * 1e6,
            "mlmonitor_us_per_span": median(ours_s) / len(spans) * 1e6,
            "ratio": ratio, "target": target(ratio, 0.2, "<=")}


def print_encoder(row: Dict[str, Any]) -> None:
    print(f"OTLP encoder, {row['spans']} mlmonitor-like spans ({row['bytes']:,} bytes), "
          f"median of {row['repeats']}: SDK {row['sdk_us_per_span']:.1f} us/span, "
          f"mlmonitor {row['mlmonitor_us_per_span']:.1f} us/span, ratio {row['ratio']:.3f} "
          f"(target <= 0.2) {verdict(row['target'])}; bytes identical: {row['identical_bytes']}")


# -- the parent: rounds, interleaved -----------------------------------------------------

def run(configs: List[str], rounds: int, requests: int, warmup: int,
        clock: str) -> Dict[str, Any]:
    per_round, checks = run_rounds(__file__, configs, rounds, requests, warmup)
    report = summarize(per_round[clock], checks)
    other = "wall" if clock == "cpu" else "cpu"
    report["other_clock"] = {"clock": other, **summarize(per_round[other], checks)}
    for row in report["other_clock"]["results"].values():
        row.pop("checks", None)
    report["clock"] = clock
    return report


def summarize(per_round: List[Dict[str, float]], checks: Dict[str, Any]) -> Dict[str, Any]:
    def difference(a: str, b: str) -> Any:
        if a not in per_round[0] or b not in per_round[0]:
            return None
        return median([r[a] - r[b] for r in per_round])

    targets = {
        "full_vs_peer_stack_added":
            target(ratio_of_added(per_round, "mlmonitor_full", "peer_stack"), 0.30, "<="),
        "metrics_vs_prometheus_flask_exporter_added":
            target(ratio_of_added(per_round, "mlmonitor_metrics", "prometheus_flask_exporter"),
                   0.6, "<="),
        "unsampled_tracing_us":
            target(difference("mlmonitor_unsampled", "mlmonitor_no_traces"), 5.0, "<="),
    }
    results = per_config(per_round, checks, lambda name: CONFIGS.get(name) or EXTRA_CONFIGS[name])
    return {"results": results, "targets": targets}


def machine() -> Dict[str, Any]:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        info["loadavg_start"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def print_table(report: Dict[str, Any]) -> None:
    other = report["other_clock"]
    print(f"{'':28} {report['clock'] + ' time (headline)':^26} | {other['clock'] + ' time':^26}")
    print(f"{'configuration':28} {'us/req':>8} {'added us':>9} {'x bare':>7} | "
          f"{'us/req':>8} {'added us':>9} {'x bare':>7}")
    for name, row in report["results"].items():
        o = other["results"][name]
        print(f"{name:28} {row['us_per_request']:8.1f} {row['added_us']:+9.1f} "
              f"{row['ratio_to_bare']:7.2f} | {o['us_per_request']:8.1f} {o['added_us']:+9.1f} "
              f"{o['ratio_to_bare']:7.2f}")
    print()
    for name, row in report["targets"].items():
        value = row["value"]
        shown = "n/a" if value is None else f"{value:.3f}"
        value = other["targets"][name]["value"]
        also = "n/a" if value is None else f"{value:.3f}"
        print(f"{name:44} {shown:>8} (target {row['op']} {row['target']}) {verdict(row)}"
              f"   [{other['clock']} time: {also}]")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: tiny counts")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="headline clock: process CPU time (default; robust on a shared "
                             "machine) or wall time")
    parser.add_argument("--encoder-spans", type=int, default=1024)
    parser.add_argument("--encoder-repeats", type=int, default=21)
    parser.add_argument("--encoder-only", action="store_true",
                        help="only the OTLP encoder micro-benchmark")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.warmup)
        return 0
    if args.quick:
        args.rounds, args.requests, args.warmup = 2, 30, 20
        args.encoder_spans, args.encoder_repeats = 64, 3
    started = time.time()
    if args.encoder_only:
        report: Dict[str, Any] = {"benchmark": "overhead", "quick": args.quick, "machine": machine()}
    else:
        report = run(configs_from(args.configs), args.rounds, args.requests, args.warmup,
                     args.clock)
        report.update(benchmark="overhead", quick=args.quick, rounds=args.rounds,
                      requests_per_round=args.requests, warmup=args.warmup, machine=machine())
        print_table(report)
        print()
    report["encoder"] = encoder_benchmark(args.encoder_spans, args.encoder_repeats)
    print_encoder(report["encoder"])
    print()
    write_report(report, args.out, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
