"""The cost of a request to an excluded URL (issue 28): a probe's ``GET /healthz`` in-process.

Four Flask apps in one process, each serving the same ``/healthz`` view: bare Flask; mlmonitor
full (metrics, JSON log line to /dev/null, span to a dropping exporter) with nothing excluded;
the same with ``excluded_urls=["^/healthz$"]`` (no log line, no span, still counted); and with
``exclude_from_metrics`` too (nothing but the path's regex search). Rounds alternate the apps
(rotated each round); per round each runs ``--requests`` requests, timed in CPU seconds of the
process (the span export thread included). The table shows the median over rounds of the
microseconds a request and of mlmonitor's added cost over bare Flask in the same round; the
ratio compares the excluded request's added cost with the normal one's, measured in the same
rounds.

Run: python benchmarks/bench_excluded.py [--rounds N] [--requests N] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_apps import tracer_provider  # noqa: E402

CONFIGS = {
    "bare": "bare Flask",
    "full": "mlmonitor full (metrics + log line + span), nothing excluded",
    "excluded": "mlmonitor full, excluded_urls=['^/healthz$'] (counted, no log line, no span)",
    "excluded_all": "the same with exclude_from_metrics (no metrics either)",
}


def make_app(config: str) -> Callable[..., Any]:
    from flask import Flask
    from prometheus_client import CollectorRegistry

    app = Flask(f"bench-{config}")
    app.add_url_rule("/healthz", "healthz", lambda: {"ok": True})
    if config != "bare":
        from mlmonitor import Monitor
        provider, _ = tracer_provider("always_on")
        options: Dict[str, Any] = dict(model_name="iris", model_version="v1", registry=CollectorRegistry(),
                                       log_stream=open(os.devnull, "w"), metrics=True, logs=True, traces=True,
                                       tracer_provider=provider)
        if config.startswith("excluded"):
            options["excluded_urls"] = ["^/healthz$"]
            options["exclude_from_metrics"] = config == "excluded_all"
        Monitor(app, **options)
    return app


def environ() -> Dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/healthz", method="GET", headers={"User-Agent": "kube-probe/1.30"})
    try:
        env = builder.get_environ()
    finally:
        builder.close()
    env["REMOTE_ADDR"] = "10.0.0.1"
    return env


def run(app: Callable[..., Any], count: int) -> float:
    """CPU seconds for ``count`` requests (each body consumed and closed)."""
    base = environ()

    def start_response(line: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        assert line.startswith("200"), line
        return lambda data: None

    started = time.process_time()
    for _ in range(count):
        env = base.copy()
        env["wsgi.input"] = io.BytesIO(b"")
        result = app(env, start_response)
        try:
            for _chunk in result:
                pass
        finally:
            getattr(result, "close", lambda: None)()
    return time.process_time() - started


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    apps = {name: make_app(name) for name in CONFIGS}
    for app in apps.values():
        run(app, 300)  # warm-up
    per_request: Dict[str, List[float]] = {name: [] for name in CONFIGS}
    added: Dict[str, List[float]] = {name: [] for name in CONFIGS if name != "bare"}
    ratio: Dict[str, List[float]] = {name: [] for name in ("excluded", "excluded_all")}
    names = list(CONFIGS)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        us = {name: run(apps[name], args.requests) / args.requests * 1e6 for name in order}
        for name in names:
            per_request[name].append(us[name])
        for name in added:
            added[name].append(us[name] - us["bare"])
        for name in ratio:
            ratio[name].append((us[name] - us["bare"]) / (us["full"] - us["bare"]))
    result = {
        "rounds": args.rounds, "requests": args.requests, "python": sys.version.split()[0],
        "us_per_request": {n: round(statistics.median(v), 2) for n, v in per_request.items()},
        "added_us_over_bare": {n: round(statistics.median(v), 2) for n, v in added.items()},
        "added_cost_vs_full": {n: round(statistics.median(v), 3) for n, v in ratio.items()},
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.rounds} rounds x {args.requests} GET /healthz, CPU time, median over rounds")
    print(f"{'configuration':<14} {'us/request':>10} {'added us':>9} {'added vs full':>13}")
    for name, what in CONFIGS.items():
        add = result["added_us_over_bare"].get(name)
        rel = result["added_cost_vs_full"].get(name)
        print(f"{name:<14} {result['us_per_request'][name]:>10.2f} {'' if add is None else f'{add:9.2f}':>9}"
              f" {'' if rel is None else f'{rel:13.3f}':>13}  {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
