"""Traffic generator for the example app: ``python -m example_app.loadgen --help``.

It sends a known mix (valid, invalid, forced failures, slow, drifted features, ground-truth
feedback) and counts what came back, so its ``--json`` summary can be compared exactly with
what ``/metrics`` says. The plan is fixed by ``--seed``: which requests are invalid, failing
or slow, and exactly ``round(P * n)`` of the feedback labels that are correct.
Bounded (at most ``MAX_REQUESTS`` requests, a timeout on each) and loopback only unless
``--allow-remote``.

``--model iris`` (the default) posts to ``/predict`` and ``/feedback``; ``--model diabetes`` to
``/v1/models/diabetes:predict`` and ``:feedback``, with the true value as the feedback label
(``--feedback-accuracy P``: exactly ``round(P * n)`` labels are the true value, the others are off
by ``FEEDBACK_MISS`` target standard deviations, which raises the live MAE) and
``--mismatch-fraction``: requests with one feature renamed (one missing, one unknown feature).

``--generate-fraction F`` (default ``GENERATE_FRACTION``) adds ``round(F * n)`` streamed generations
(``POST /generate``, the ``textgen`` model) spread among the n predict requests, none with
``--version`` (that forces the predict model's version). They are counted apart, under
``generation`` in the summary (requests, statuses, and the tokens of each stream's usage event),
so every other field still counts the predict requests alone.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from example_app import model

MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 64
SLOW_SECONDS = 0.25
MODELS = (model.MODEL_NAME, model.REGRESSOR_NAME)
#: how far (in target standard deviations) a wrong regression feedback label is from the truth
FEEDBACK_MISS = 3.0
#: streamed generations per predict request, by default: few, so every LLM and streaming panel has data
GENERATE_FRACTION = 0.05
#: the prompts of the generations, taken in turn, and their max_tokens
PROMPTS = ("Tell me about the iris flowers", "What does the diabetes dataset measure",
           "Describe the wine recognition data", "The breast cancer features are")
MAX_TOKENS = (8, 16, 24, 32)

#: bodies that the app must refuse with a 400, one per kind of mistake
def _invalid_bodies(good: Dict[str, float], lenient: bool = False) -> List[Any]:
    """``lenient``: for the diabetes model, which accepts missing and unknown features."""
    first = next(iter(good))
    missing = dict(good)
    missing.pop(first)
    return [
        *([] if lenient else [{"features": missing}, {"features": {**good, "colour": 1.0}}]),
        {"features": {**good, first: "5.1"}},
        {"features": {**good, first: True}},
        {"features": {**good, first: None}},
        {"instances": [good] * 65},
        {"instances": good},
        [good],
        {"feature": good},
    ]


@dataclass
class Options:
    """What to send; mirrors the command-line flags."""

    url: str = "http://127.0.0.1:8000"
    requests: int = 200
    concurrency: int = 4
    rate: float = 0.0
    invalid_fraction: float = 0.0
    error_fraction: float = 0.0
    slow_fraction: float = 0.0
    slow_seconds: float = SLOW_SECONDS
    mismatch_fraction: float = 0.0
    drift: Dict[str, float] = field(default_factory=dict)
    feedback_accuracy: Optional[float] = None
    version: Optional[str] = None
    seed: int = 0
    timeout: float = 10.0
    allow_remote: bool = False
    model: str = model.MODEL_NAME
    generate_fraction: float = GENERATE_FRACTION


@dataclass
class Planned:
    """One request decided before sending: its kind, body, headers and feedback fate."""

    kind: str  # ok | slow | invalid | error | mismatch
    body: Any
    headers: Dict[str, str]
    feedback_correct: Optional[bool] = None
    rng_seed: int = 0
    target: Optional[float] = None  # regression: the true value of the row


class Summary:
    """Thread-safe tally of what was sent and what came back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_status: Dict[str, int] = {}
        self.by_version: Dict[str, Dict[str, Any]] = {}
        self.by_kind: Dict[str, int] = {}
        self.predictions = 0
        self.feedback: Dict[str, Dict[str, int]] = {}
        self.feedback_status: Dict[str, int] = {}
        self.transport_errors = 0
        self.generation: Dict[str, Any] = {"requests": 0, "by_status": {}, "tokens_in": 0, "tokens_out": 0,
                                           "transport_errors": 0}

    def response(self, kind: str, status: int, version: str, predicted: int) -> None:
        with self._lock:
            key = str(status)
            self.by_status[key] = self.by_status.get(key, 0) + 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            entry = self.by_version.setdefault(version, {"requests": 0, "by_status": {}, "predictions": 0})
            entry["requests"] += 1
            entry["by_status"][key] = entry["by_status"].get(key, 0) + 1
            entry["predictions"] += predicted
            self.predictions += predicted

    def feedback_sent(self, status: int, version: str, correct: bool) -> None:
        with self._lock:
            self.feedback_status[str(status)] = self.feedback_status.get(str(status), 0) + 1
            if status == 200:
                entry = self.feedback.setdefault(version, {"correct": 0, "incorrect": 0})
                entry["correct" if correct else "incorrect"] += 1

    def transport_error(self) -> None:
        with self._lock:
            self.transport_errors += 1

    def generated(self, status: Optional[int], usage: Dict[str, Any]) -> None:
        """One generation: its status (None: a transport error) and its stream's usage event."""
        with self._lock:
            entry = self.generation
            entry["requests"] += 1
            if status is None:
                entry["transport_errors"] += 1
                return
            entry["by_status"][str(status)] = entry["by_status"].get(str(status), 0) + 1
            entry["tokens_in"] += int(usage.get("tokens_in", 0))
            entry["tokens_out"] += int(usage.get("tokens_out", 0))

    def as_dict(self, elapsed: float) -> Dict[str, Any]:
        return {
            "requests": sum(self.by_status.values()) + self.transport_errors,
            "by_status": dict(sorted(self.by_status.items())),
            "by_version": dict(sorted(self.by_version.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "predictions": self.predictions,
            "feedback": dict(sorted(self.feedback.items())),
            "feedback_status": dict(sorted(self.feedback_status.items())),
            "transport_errors": self.transport_errors,
            "generation": {**self.generation, "by_status": dict(sorted(self.generation["by_status"].items()))},
            "elapsed_s": round(elapsed, 3),
        }


def check_url(url: str, allow_remote: bool) -> str:
    """The URL without a trailing slash; refuses hosts that are not loopback unless allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--url must be http(s)://host[:port], got {url!r}")
    host = parts.hostname
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not allow_remote:
        raise ValueError(f"refusing to send load to non-loopback host {host!r}; pass --allow-remote")
    return url.rstrip("/")


def _fractions_ok(opts: Options) -> None:
    for name in ("invalid_fraction", "error_fraction", "slow_fraction", "mismatch_fraction", "generate_fraction"):
        value = getattr(opts, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    if opts.invalid_fraction + opts.error_fraction + opts.slow_fraction + opts.mismatch_fraction > 1.0:
        raise ValueError("--invalid-fraction + --error-fraction + --slow-fraction + --mismatch-fraction"
                         " must not exceed 1")
    if opts.model not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {opts.model!r}")
    if opts.mismatch_fraction and opts.model != model.REGRESSOR_NAME:
        raise ValueError("--mismatch-fraction needs --model diabetes (iris refuses unknown features with a 400)")
    if opts.feedback_accuracy is not None and not 0.0 <= opts.feedback_accuracy <= 1.0:
        raise ValueError(f"--feedback-accuracy must be between 0 and 1, got {opts.feedback_accuracy}")
    if not 1 <= opts.requests <= MAX_REQUESTS:
        raise ValueError(f"--requests must be between 1 and {MAX_REQUESTS}")
    if not 1 <= opts.concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"--concurrency must be between 1 and {MAX_CONCURRENCY}")
    if opts.rate < 0:
        raise ValueError("--rate must be >= 0 (0 = as fast as possible)")


def plan(opts: Options) -> List[Planned]:
    """Decide every request up front from the seed, so a run can be repeated exactly."""
    _fractions_ok(opts)
    rng = random.Random(opts.seed)
    regression = opts.model == model.REGRESSOR_NAME
    rows, targets = model.regression_rows() if regression else model.reference_rows()
    stats = model.feature_stats(opts.model)
    unknown = sorted(set(opts.drift) - set(stats))
    if unknown:
        raise ValueError(f"--drift: unknown feature(s) {', '.join(unknown)}; known: {', '.join(stats)}")
    n = opts.requests
    counts = {kind: round(getattr(opts, f"{kind}_fraction") * n)
              for kind in ("invalid", "error", "slow", "mismatch")}
    kinds = (["invalid"] * counts["invalid"] + ["error"] * counts["error"] + ["slow"] * counts["slow"]
             + ["mismatch"] * counts["mismatch"])
    kinds += ["ok"] * (n - len(kinds))
    rng.shuffle(kinds)
    base_headers = {"Content-Type": "application/json"}
    if opts.version:
        base_headers["X-Model-Version"] = opts.version
    planned = []
    for i, kind in enumerate(kinds):
        index = rng.randrange(len(rows)) if regression else None
        row = dict(rows[index] if index is not None else rng.choice(rows))
        for name, shift in opts.drift.items():
            row[name] = round(row[name] + shift * stats[name][1], 4)
        headers = dict(base_headers)
        body: Any = {"features": row}
        if kind == "invalid":
            choices = _invalid_bodies(row, lenient=regression)
            body = choices[i % len(choices)]
        elif kind == "error":
            headers["X-Fail"] = "1"
        elif kind == "slow":
            headers["X-Slow"] = str(opts.slow_seconds)
        elif kind == "mismatch":  # one column renamed upstream: missing under its name, unknown under the new
            renamed = list(row)[i % len(row)]
            body = {"features": {(name.upper() if name == renamed else name): v for name, v in row.items()}}
        planned.append(Planned(kind, body, headers, rng_seed=rng.randrange(2**31),
                               target=targets[index] if index is not None else None))
    if opts.feedback_accuracy is not None:
        valid = [p for p in planned if p.kind in ("ok", "slow", "mismatch")]
        correct = round(opts.feedback_accuracy * len(valid))
        fates = [True] * correct + [False] * (len(valid) - correct)
        rng.shuffle(fates)
        for p, fate in zip(valid, fates):
            p.feedback_correct = fate
    return planned


def _post(url: str, body: Any, headers: Dict[str, str], timeout: float) -> Tuple[int, Any, Any]:
    """(status, response headers, JSON body or None); the headers are looked up case-insensitively
    (HTTP/1.1 servers such as uvicorn send them in lower case)."""
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, resp_headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, resp_headers, raw = err.code, err.headers, err.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    return status, resp_headers, payload


def _paths(name: str) -> Tuple[str, str]:
    """(predict path, feedback path) of a model: iris keeps the app's original routes."""
    if name == model.MODEL_NAME:
        return "/predict", "/feedback"
    return f"/v1/models/{name}:predict", f"/v1/models/{name}:feedback"


def _label(item: Planned, predicted: Any, rng: random.Random, classes: Sequence[str], miss: float) -> Any:
    """The feedback label: the truth when the plan says correct, else a wrong class or a far value."""
    if item.target is not None:
        return item.target if item.feedback_correct else round(item.target + miss, 4)
    return predicted if item.feedback_correct else rng.choice([c for c in classes if c != predicted])


def _send(opts: Options, base: str, item: Planned, summary: Summary, classes: Sequence[str],
          miss: float = 0.0) -> None:
    predict_path, feedback_path = _paths(opts.model)
    try:
        status, headers, payload = _post(base + predict_path, item.body, item.headers, opts.timeout)
    except (OSError, urllib.error.URLError):
        summary.transport_error()
        return
    version = headers.get("X-Model-Version", "unknown")
    results: List[Dict[str, Any]] = []
    if status == 200 and isinstance(payload, dict):
        results = payload["predictions"] if "predictions" in payload else [payload]
    summary.response(item.kind, status, version, len(results))
    if item.feedback_correct is None or status != 200:
        return
    rng = random.Random(item.rng_seed)
    for result in results:
        label = _label(item, result["prediction"], rng, classes, miss)
        body = {"prediction_id": result["prediction_id"], "label": label}
        try:
            fb_status, _, _ = _post(base + feedback_path, body, {"Content-Type": "application/json"},
                                    opts.timeout)
        except (OSError, urllib.error.URLError):
            summary.transport_error()
            continue
        summary.feedback_sent(fb_status, version, item.feedback_correct)


def generations(opts: Options) -> int:
    """How many streamed generations go with the predict requests (none with a forced version)."""
    return 0 if opts.version else round(opts.generate_fraction * opts.requests)


def _generate(opts: Options, base: str, j: int, summary: Summary) -> None:
    """One streamed generation, read to its end; its last server-sent event is the usage."""
    body = {"prompt": PROMPTS[j % len(PROMPTS)], "max_tokens": MAX_TOKENS[j % len(MAX_TOKENS)]}
    req = urllib.request.Request(base + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        try:
            with urllib.request.urlopen(req, timeout=opts.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
    except (OSError, urllib.error.URLError):
        summary.generated(None, {})
        return
    events = [block[len(b"data: "):] for block in raw.split(b"\n\n") if block.startswith(b"data: ")]
    try:
        usage = json.loads(events[-1]) if status == 200 and events else {}
    except ValueError:
        usage = {}
    summary.generated(status, usage if isinstance(usage, dict) else {})


def run(opts: Options) -> Dict[str, Any]:
    """Send the planned traffic and return the summary dict (what ``--json`` prints)."""
    base = check_url(opts.url, opts.allow_remote)
    items = plan(opts)
    classes = model.dataset().classes
    targets = model.regression_rows()[1] if opts.model == model.REGRESSOR_NAME else [0.0]
    miss = FEEDBACK_MISS * statistics.pstdev(targets)
    summary = Summary()
    # generations spread evenly among the predict requests: ("generate", j) or ("predict", i)
    n, g = len(items), generations(opts)
    spots = {(j + 1) * (n + g) // (g + 1) for j in range(g)}
    schedule, i, j = [], 0, 0
    for position in range(n + g):
        if position in spots:
            schedule.append(("generate", j))
            j += 1
        else:
            schedule.append(("predict", i))
            i += 1
    start = time.monotonic()
    counter = iter(range(len(schedule)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            if opts.rate > 0:
                delay = start + index / opts.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            kind, k = schedule[index]
            if kind == "generate":
                _generate(opts, base, k, summary)
            else:
                _send(opts, base, items[k], summary, classes, miss)

    with ThreadPoolExecutor(max_workers=opts.concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(opts.concurrency)]:
            future.result()
    return summary.as_dict(time.monotonic() - start)


def _drift(text: str) -> Tuple[str, float]:
    name, sep, shift = text.partition(":")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(shift)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FEATURE:SHIFT (e.g. petal_length_cm:1.5), got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m example_app.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=Options.url, help="the app's base URL (loopback only)")
    parser.add_argument("--requests", type=int, default=Options.requests, help="predict requests to send")
    parser.add_argument("--concurrency", type=int, default=Options.concurrency, help="parallel clients")
    parser.add_argument("--rate", type=float, default=0.0, help="requests per second, 0 = unlimited")
    parser.add_argument("--invalid-fraction", type=float, default=0.0, help="share of bad bodies (400)")
    parser.add_argument("--error-fraction", type=float, default=0.0, help="share sent with X-Fail (500)")
    parser.add_argument("--slow-fraction", type=float, default=0.0, help="share sent with X-Slow")
    parser.add_argument("--slow-seconds", type=float, default=SLOW_SECONDS, help="X-Slow value (app caps at 2)")
    parser.add_argument("--model", choices=MODELS, default=model.MODEL_NAME,
                        help="iris (POST /predict) or diabetes, the regressor (POST /v1/models/diabetes:predict)")
    parser.add_argument("--mismatch-fraction", type=float, default=0.0,
                        help="share sent with one feature renamed: a missing and an unknown feature (diabetes)")
    parser.add_argument("--drift", type=_drift, action="append", default=[], metavar="FEATURE:SHIFT",
                        help="add SHIFT x the feature's reference std to it (repeatable; the --model's features)")
    parser.add_argument("--feedback-accuracy", type=float, default=None, metavar="P",
                        help="send ground truth for every prediction; exactly round(P*n) are correct"
                             " (diabetes: the true value, the others off by 3 target std)")
    parser.add_argument("--version", choices=list(model.VERSIONS),
                        help="force one model version (no generations then)")
    parser.add_argument("--generate-fraction", type=float, default=GENERATE_FRACTION, metavar="F",
                        help="also send round(F*n) streamed generations (POST /generate), counted apart"
                             " under 'generation'")
    parser.add_argument("--seed", type=int, default=0, help="fixes the whole plan")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line, last")
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    return Options(
        url=args.url, requests=args.requests, concurrency=args.concurrency, rate=args.rate,
        invalid_fraction=args.invalid_fraction, error_fraction=args.error_fraction,
        slow_fraction=args.slow_fraction, slow_seconds=args.slow_seconds, drift=dict(args.drift),
        mismatch_fraction=args.mismatch_fraction, model=args.model,
        feedback_accuracy=args.feedback_accuracy, version=args.version, seed=args.seed,
        generate_fraction=args.generate_fraction,
        timeout=args.timeout, allow_remote=args.allow_remote)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(options_from_args(args))
    except ValueError as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for key, value in summary.items():
            print(f"{key:>16}: {json.dumps(value, sort_keys=True)}")
    return 1 if summary["transport_errors"] or summary["generation"]["transport_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
