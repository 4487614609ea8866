r"""Mlmonitor's Prometheus recording and alerting rules, rendered from the metric contract.

Offline: runs when the rules are rendered (``mlmonitor alerts render``, at release
or when a user changes a threshold), never in a request. Owns the rule
expressions, the alert texts, the thresholds and their checks, and the block-YAML
emitter that writes them; every metric and recording-rule name comes from
:mod:`mlmonitor.contract`, and the command line lives in :mod:`mlmonitor.tools.cli`.

The shipped files in ``alerts/`` are this module's output with default thresholds
(``mlmonitor alerts render --prometheus-operator --out-dir alerts``); a test keeps
them in sync. Change a threshold, SLO target, selector or runbook address by
rendering again, never by editing the YAML by hand::

    mlmonitor alerts render --error-ratio 0.02 --latency-p99 1.0 \
        --selector '{job="my-model"}' --runbook-base-url https://wiki.example.com/runbooks \
        --availability-slo 0.995 --out-dir my-alerts/

Every read, of a raw series (``up`` included) and of a recording rule alike, carries
``--selector`` (default ``job="mlmonitor"``), and every aggregation keeps the selector's
label names besides ``job``, ``model_name`` and ``model_version``: the rules never judge
targets that are not mlmonitor's, an alert names the version that fails, and renders
with disjoint selectors (one per app) write disjoint series, so they load side by side
in one Prometheus. Counters are read through ``rate()``, so counter
resets (restarts) do not fire alerts; gauges are read through ``last_over_time``
over ``GAUGE_WINDOW``, so a missed scrape (a target briefly unreachable, a
recycled worker) changes no recording-rule series and resets no ``for:``. Every
ratio divides by a rate filtered ``> 0``: no traffic gives no series, never NaN.
Latency thresholds must be bucket bounds (``--buckets``, default mlmonitor's):
the slow-ratio rules read the bucket whose ``le`` is the threshold.
``--time-scale N`` divides every range window, ``for:`` and Alertmanager time by N
(tests only); rule names keep their nominal windows so dashboards and queries do
not change.

The output is plain block YAML written by a small emitter here, so the package
needs no YAML library at run time.
"""
from __future__ import annotations

import bisect
import json
import os
import re
from dataclasses import dataclass, fields
from typing import Any
from collections.abc import Callable

from mlmonitor.contract import (
    ACCURACY, ACCURACY_WINDOW, CLASS_DRIFT, COMPONENT, CORRECT, DEFAULT_BUCKETS, DEFAULT_JOB,
    ERROR_RATIO, ERROR_TYPE, FEATURE_DRIFT, FEEDBACK_RATE, FEEDBACK_TOTAL, GAUGE_WINDOW,
    GPU_MEMORY_TOTAL, GPU_MEMORY_USED, INTERNAL_ERRORS_TOTAL, INVALID_INPUT, INVALID_INPUT_RATE,
    INVALID_INPUT_RATIO, JOB, LATENCY_P99, LATENCY_QUANTILES, LATENCY_THRESHOLD, MODEL_NAME, OUTCOME,
    PREDICTION_DURATION_BUCKET, PREDICTION_DURATION_COUNT, PREDICTION_ERRORS_RATE,
    PREDICTION_ERRORS_TOTAL, PREDICTIONS_RATE, PREDICTIONS_TOTAL, PROCESS_MEMORY, PSI_FLOOR,
    RATE_WINDOW, REFERENCE_ACCURACY, REFERENCE_ACCURACY_MAX, SIGNAL, SLO_WINDOWS,
    TELEMETRY_DROPPED_TOTAL, TIME_TO_FIRST_CHUNK_BUCKET, VERSION_LABELS, Distribution, error_ratio,
    latency_quantile, slow_ratio)
from mlmonitor.contract import (ABSOLUTE_ERROR_MEAN, FEEDBACK_ABSOLUTE_ERROR_COUNT, FEEDBACK_ABSOLUTE_ERROR_SUM,
                              OUTPUT_DRIFT, REFERENCE_ABSOLUTE_ERROR, REFERENCE_ABSOLUTE_ERROR_MAX)
from mlmonitor.reference import PSI_THRESHOLD
from .selectors import parse_selector, selector_labels

__all__ = ["Thresholds", "render_groups", "render_files", "render_text", "render_alertmanager",
           "to_yaml", "RECORDING_FILE", "ALERTS_FILE", "OPERATOR_FILE", "ALERTMANAGER_FILE"]

#: this project's runbooks, a path in its repository (one ``## AlertName`` section per alert); render
#: with ``--runbook-base-url`` pointing at where the team's own copy lives (a wiki, their repository)
RUNBOOK_BASE = "docs/runbooks.md"
RECORDING_FILE = "mlmonitor-recording.rules.yml"
ALERTS_FILE = "mlmonitor-alerts.rules.yml"
OPERATOR_FILE = os.path.join("prometheus-operator", "mlmonitor-prometheusrule.yaml")
ALERTMANAGER_FILE = "alertmanager.yml"

#: (severity, long window, short window, burn-rate factor, for) of the multi-window
#: multi-burn-rate SLO alerts (SRE workbook, ch. 5)
BURN_RATES = (
    ("critical", "1h", "5m", 14.4, "2m"),
    ("critical", "6h", "30m", 6.0, "2m"),
    ("warning", "1d", "2h", 3.0, "15m"),
    ("warning", "3d", "6h", 1.0, "15m"),
)
_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))
#: server errors: every error_type but invalid input (the client's fault, counted apart)
SERVER_ERRORS = f'{ERROR_TYPE}!="{INVALID_INPUT}"'
INVALID = f'{ERROR_TYPE}="{INVALID_INPUT}"'


@dataclass
class Thresholds:
    """Every knob of the rules, with the shipped defaults."""

    error_ratio: float = 0.01
    invalid_input_ratio: float = 0.05
    latency_p99: float = LATENCY_THRESHOLD
    availability_slo: float = 0.999
    latency_slo: float = 0.99
    latency_slo_threshold: float = 0.0  # 0: same as latency_p99; must be a histogram bucket bound
    ttfc_p95: float = 1.0  # streamed predictions: time to first chunk p95 (seconds), a bucket bound
    psi_threshold: float = PSI_THRESHOLD  # the one reference.min_rows sizes references for
    drift_min_count: int = 100
    accuracy_drop: float = 0.05
    accuracy_min_feedback: int = 20
    mae_factor: float = 1.5  # live MAE above this many times the reference MAE (regression)
    mae_min_feedback: int = 20
    canary_error_delta: float = 0.01
    canary_latency_factor: float = 1.5
    memory_bytes: float = float(4 * 2**30)
    gpu_memory_ratio: float = 0.9
    selector: str = f'{JOB}="{DEFAULT_JOB}"'
    runbook_base_url: str = RUNBOOK_BASE
    buckets: tuple[float, ...] = DEFAULT_BUCKETS
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.latency_slo_threshold:
            self.latency_slo_threshold = self.latency_p99
        for name in ("error_ratio", "invalid_input_ratio", "availability_slo", "latency_slo",
                     "accuracy_drop", "gpu_memory_ratio"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
        for name in ("time_scale", "latency_p99", "ttfc_p95", "psi_threshold", "mae_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        self.selector = self.selector.strip()
        if self.selector.startswith("{") and self.selector.endswith("}"):
            self.selector = self.selector[1:-1].strip()
        parse_selector(self.selector)
        if not re.fullmatch(r"https?://\S+|[^\s:]+", self.runbook_base_url) or not self.runbook_base_url.isprintable():
            raise ValueError(f"--runbook-base-url {self.runbook_base_url!r}: not an http(s) URL or a path")
        self.buckets = tuple(sorted({float(b) for b in self.buckets}))
        for name in ("latency_p99", "latency_slo_threshold", "ttfc_p95"):
            setattr(self, name, bucket_bound(name, getattr(self, name), self.buckets))


# -- small helpers -------------------------------------------------------------------------------

def _join(*labels: str) -> str:
    """Label names for a ``by (...)`` / ``on (...)`` clause, each once."""
    return ", ".join(dict.fromkeys(labels))


def parse_duration(text: str) -> int:
    """Milliseconds in a Prometheus duration such as ``1h30m``."""
    parts = re.findall(r"(\d+)(ms|[smhdw])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}")
    scale = dict(_UNITS, w=7 * 86_400_000)
    return sum(int(n) * scale[u] for n, u in parts)


def format_duration(ms: int) -> str:
    out = ""
    for unit, size in _UNITS:
        if ms >= size:
            out += f"{ms // size}{unit}"
            ms %= size
    return out or "0s"


def num(value: float) -> str:
    """A number for PromQL and YAML: short, without float noise."""
    return f"{value:.10g}"


def bucket_bound(name: str, value: float, buckets: tuple[float, ...]) -> float:
    """``value`` if it is one of ``buckets`` (the bound itself), else ValueError naming the nearest bounds."""
    for bound in buckets:
        if abs(bound - value) <= 1e-9 * max(abs(value), 1.0):
            return bound
    i = bisect.bisect(buckets, value)
    near = " and ".join(num(b) for b in buckets[max(i - 1, 0):i + 1])
    option = "--" + name.replace("_", "-")
    raise ValueError(
        f"{option} {num(value)} is not a bucket bound of the latency histogram, so the rules on it"
        f" could never fire; nearest bounds: {near}. Pick one of them, or pass the app's buckets"
        f" (MLMONITOR_BUCKETS) with --buckets")


def le_label(value: float) -> str:
    """A bucket bound as prometheus_client writes it in ``le`` (``0.5``, ``1.0``)."""
    return repr(float(value))


class _Builder:
    def __init__(self, t: Thresholds) -> None:
        self.t = t
        #: the selector's label names: every aggregation keeps them, so that the recording rules of
        #: renders with disjoint selectors are disjoint series, and each render reads back its own
        keep = selector_labels(t.selector)
        #: labels every per-version aggregation keeps
        self.version = _join(*VERSION_LABELS, *keep)
        #: labels of the comparison of a version with the other versions of its model
        self.model = _join(JOB, MODEL_NAME, *keep)
        #: labels of the per-target (platform) alerts
        self.target = _join(JOB, "instance", *keep)

    def w(self, nominal: str) -> str:
        """A range window or ``for:`` duration, divided by the time scale."""
        ms = parse_duration(nominal)
        return format_duration(max(1000 if ms else 0, round(ms / self.t.time_scale)))

    def m(self, metric: str, *matchers: str) -> str:
        """A raw series or a recording rule, read with the render's selector (and ``matchers``)."""
        parts = [p for p in (self.t.selector, *matchers) if p]
        return f"{metric}{{{', '.join(parts)}}}" if parts else metric

    def gauge(self, metric: str) -> str:
        """A gauge's last value within GAUGE_WINDOW: present across a missed scrape."""
        return f"last_over_time({self.m(metric)}[{self.w(GAUGE_WINDOW)}])"

    def runbook(self, alert: str) -> str:
        """``{alert}`` in the base URL is replaced by the alert's name in lower case, else ``#name``."""
        base, anchor = self.t.runbook_base_url, alert.lower()
        return base.replace("{alert}", anchor) if "{alert}" in base else f"{base}#{anchor}"

    def seconds(self, nominal: str) -> str:
        return num(parse_duration(self.w(nominal)) / 1000)


def _alert(name: str, expr: str, severity: str, family: str, for_: str, summary: str,
           description: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"severity": severity, "family": family, **(extra_labels or {})}
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = labels
    rule["annotations"] = {"summary": summary, "description": description}  # + runbook_url: _alerts
    return rule


_WHO = "{{ $labels.model_name }} {{ $labels.model_version }} (job {{ $labels.job }})"


# -- recording rules -----------------------------------------------------------------------------

def slo_windows() -> list[str]:
    """Windows of the error and slow ratios: the contract's, and every one an alert reads."""
    needed = {*SLO_WINDOWS, RATE_WINDOW, *(w for r in BURN_RATES for w in r[1:3])}
    return sorted(needed, key=parse_duration)


def _recording(b: _Builder) -> list[dict[str, Any]]:
    t = b.t
    pred, err = PREDICTIONS_TOTAL, PREDICTION_ERRORS_TOTAL
    rate = RATE_WINDOW
    requests: list[dict[str, str]] = [
        {"record": PREDICTIONS_RATE,
         "expr": f"sum by ({b.version}) (rate({b.m(pred)}[{b.w(rate)}]))"},
        {"record": PREDICTION_ERRORS_RATE,
         "expr": f"sum by ({b.version}) (rate({b.m(err, SERVER_ERRORS)}[{b.w(rate)}]))"},
        {"record": INVALID_INPUT_RATE,
         "expr": f"sum by ({b.version}) (rate({b.m(err, INVALID)}[{b.w(rate)}]))"},
        {"record": INVALID_INPUT_RATIO,
         "expr": (f"(\n  {b.m(INVALID_INPUT_RATE)}\n"
                  f"  or 0 * {b.m(PREDICTIONS_RATE)}\n)\n"
                  f"/ ({b.m(PREDICTIONS_RATE)} > 0)")},
    ]
    requests.extend({
        "record": latency_quantile(q),
        "expr": (f"histogram_quantile(0.{q}, sum by ({b.version}, le) "
                 f"(rate({b.m(PREDICTION_DURATION_BUCKET)}[{b.w(rate)}])))"),
    } for q in LATENCY_QUANTILES)

    slo: list[dict[str, str]] = []
    le = f'le="{le_label(t.latency_slo_threshold)}"'
    for win in slo_windows():
        total = f"sum by ({b.version}) (rate({b.m(pred)}[{b.w(win)}]))"
        slo.append({
            "record": error_ratio(win),
            "expr": (f"(\n  sum by ({b.version}) (rate({b.m(err, SERVER_ERRORS)}[{b.w(win)}]))\n"
                     f"  or 0 * {total}\n)\n/ ({total} > 0)"),
        })
        slo.append({
            "record": slow_ratio(win),
            "expr": (f"1 - (\n  sum by ({b.version}) (rate({b.m(PREDICTION_DURATION_BUCKET, le)}[{b.w(win)}]))\n"
                     f"  / (sum by ({b.version}) (rate({b.m(PREDICTION_DURATION_COUNT)}[{b.w(win)}])) > 0)\n)"),
        })

    quality = _distribution_rules(b, FEATURE_DRIFT) + _distribution_rules(b, CLASS_DRIFT)
    correct = f'{OUTCOME}="{CORRECT}"'
    acc = ACCURACY_WINDOW
    quality += [
        {"record": FEEDBACK_RATE,
         "expr": f"sum by ({b.version}) (rate({b.m(FEEDBACK_TOTAL)}[{b.w(acc)}]))"},
        {"record": ACCURACY,
         "expr": (f"(\n  sum by ({b.version}) (rate({b.m(FEEDBACK_TOTAL, correct)}[{b.w(acc)}]))\n"
                  f"  or 0 * {b.m(FEEDBACK_RATE)}\n)\n"
                  f"/ ({b.m(FEEDBACK_RATE)} > 0)")},
        {"record": REFERENCE_ACCURACY_MAX,
         "expr": f"max by ({b.version}) ({b.gauge(REFERENCE_ACCURACY)})"},
    ]
    # regression: output drift, and the mean absolute error from feedback beside the reference's
    quality += _distribution_rules(b, OUTPUT_DRIFT) + [
        {"record": ABSOLUTE_ERROR_MEAN,
         "expr": (f"sum by ({b.version}) (rate({b.m(FEEDBACK_ABSOLUTE_ERROR_SUM)}[{b.w(acc)}]))\n"
                  f"/ (sum by ({b.version}) (rate({b.m(FEEDBACK_ABSOLUTE_ERROR_COUNT)}[{b.w(acc)}])) > 0)")},
        {"record": REFERENCE_ABSOLUTE_ERROR_MAX,
         "expr": f"max by ({b.version}) ({b.gauge(REFERENCE_ABSOLUTE_ERROR)})"},
    ]
    return [
        {"name": "mlmonitor.recording.requests", "rules": requests},
        {"name": "mlmonitor.recording.slo", "rules": slo},
        {"name": "mlmonitor.recording.quality", "rules": quality},
    ]


def _distribution_rules(b: _Builder, d: Distribution) -> list[dict[str, str]]:
    """PSI of a live counter's bin shares against a reference gauge's shares.

    Live counts are summed over workers and replicas first, the reference is
    joined with ``max`` over the same labels (its last value within GAUGE_WINDOW, so a
    missed scrape keeps it). Reference bins with no live count in the window count as
    share 0 (then floored), but only where the group had traffic in the window. Shares
    are floored at PSI_FLOOR on both sides.
    """
    outer = f"{b.version}, {d.group}" if d.group else b.version
    inner = f"{outer}, {d.bin_label}"
    live, total, ref, share = b.m(d.live), b.m(d.total), b.m(d.reference_max), b.m(d.share)
    floor = num(PSI_FLOOR)
    p, q = f"clamp_min({share}, {floor})", f"clamp_min({ref}, {floor})"
    return [
        {"record": d.live, "expr": f"sum by ({inner}) (rate({b.m(d.counter)}[{b.w(d.window)}]))"},
        {"record": d.total, "expr": f"sum by ({outer}) ({live})"},
        {"record": d.reference_max, "expr": f"max by ({inner}) ({b.gauge(d.reference)})"},
        {"record": d.share,
         "expr": (f"(\n  {live}\n  / on ({outer}) group_left ()\n  ({total} > 0)\n)\n"
                  f"or\n(\n  0 * {ref}\n  and on ({outer})\n  ({total} > 0)\n)")},
        {"record": d.psi,
         "expr": f"sum by ({outer}) (\n  ({p} - {q})\n  * ln({p} / {q})\n)"},
    ]


# -- alerting rules ------------------------------------------------------------------------------

def _alerts(b: _Builder) -> list[dict[str, Any]]:
    t = b.t
    rate = RATE_WINDOW
    model: list[dict[str, Any]] = [
        _alert("MLModelServerErrorRatioHigh",
               f"{b.m(ERROR_RATIO)} > {num(t.error_ratio)}",
               "critical", "availability", b.w("5m"),
               f"Server error ratio of a model version above {num(t.error_ratio * 100)}%.",
               "{{ $value | humanizePercentage }} of predictions of " + _WHO
               + f" failed with a server error over the last {rate} (threshold {num(t.error_ratio * 100)}%)."),
        _alert("MLModelInvalidInputRatioHigh",
               f"{b.m(INVALID_INPUT_RATIO)} > {num(t.invalid_input_ratio)}",
               "warning", "input", b.w("5m"),
               "Invalid-input ratio spike for a model version.",
               "{{ $value | humanizePercentage }} of predictions of " + _WHO
               + f" were rejected as invalid input over the last {rate}"
               f" (threshold {num(t.invalid_input_ratio * 100)}%):"
               " a client or schema change upstream?"),
        _alert("MLModelLatencyP99High",
               f"{b.m(LATENCY_P99)} > {num(t.latency_p99)}",
               "warning", "latency", b.w("5m"),
               f"P99 prediction latency of a model version above {num(t.latency_p99)}s.",
               "p99 prediction latency of " + _WHO
               + f" is {{{{ $value | humanizeDuration }}}} over the last {rate}"
               + f" (threshold {num(t.latency_p99)}s)."),
        # streamed predictions (GenAI): the wait before the first chunk, which a user watches
        _alert("MLModelTimeToFirstChunkHigh",
               (f"histogram_quantile(0.95, sum by ({b.version}, le) "
                f"(rate({b.m(TIME_TO_FIRST_CHUNK_BUCKET)}[{b.w(rate)}])))\n> {num(t.ttfc_p95)}"),
               "warning", "latency", b.w("5m"),
               f"Time to first chunk p95 of a model version above {num(t.ttfc_p95)}s.",
               "p95 time from request start to the first streamed chunk of " + _WHO
               + f" is {{{{ $value | humanizeDuration }}}} over the last {rate}"
               + f" (threshold {num(t.ttfc_p95)}s)."),
        _alert("MLModelPredictionsStopped",
               (f"{b.m(PREDICTIONS_RATE)} == 0\n"
                f"and on ({b.version})\n"
                f"sum by ({b.version}) (rate({b.m(PREDICTIONS_TOTAL)}[{b.w('1h')}])) > 0"),
               "warning", "traffic", b.w("5m"),
               "Predictions stopped for a model version.",
               _WHO + f" served predictions in the last hour but none in the last {rate}."),
        _alert("MLModelTargetDown", f"{b.m('up')} == 0", "critical", "traffic", b.w("2m"),
               "A scrape target selected by mlmonitor's rules is down.",
               "Prometheus could not scrape {{ $labels.instance }} (job {{ $labels.job }}) for 2m:"
               " the server is down or /metrics fails."),
        _alert("MLModelCanaryErrorsWorse",
               (f"{b.m(ERROR_RATIO)}\n"
                f"  > on ({b.model}) group_left ()\n"
                f"  (min by ({b.model}) ({b.m(ERROR_RATIO)}) + {num(t.canary_error_delta)})\n"
                "and\n"
                f"{b.m(ERROR_RATIO)}\n"
                f"  > on ({b.model}) group_left ()\n"
                f"  (2 * min by ({b.model}) ({b.m(ERROR_RATIO)}))"),
               "warning", "canary", b.w("10m"),
               "A model version has more server errors than another version of its model.",
               "Server error ratio of " + _WHO + " is {{ $value | humanizePercentage }}, more than"
               f" {num(t.canary_error_delta * 100)} percentage points above, and twice, the best other version of"
               f" {{{{ $labels.model_name }}}} over the last {rate}: hold or roll back the rollout."),
        _alert("MLModelCanaryLatencyWorse",
               (f"{b.m(LATENCY_P99)}\n"
                f"  > on ({b.model}) group_left ()\n"
                f"  ({num(t.canary_latency_factor)} * min by ({b.model}) ({b.m(LATENCY_P99)}))"),
               "warning", "canary", b.w("10m"),
               "A model version is slower than another version of its model.",
               "p99 prediction latency of " + _WHO + " is {{ $value | humanizeDuration }}, more than"
               f" {num(t.canary_latency_factor)} times the best other version of"
               f" {{{{ $labels.model_name }}}} over the last {rate}: hold or roll back the rollout."),
    ]

    slo: list[dict[str, Any]] = []
    budgets: tuple[tuple[str, str, Callable[[str], str], float, str], ...] = (
        ("MLModelAvailabilityBudgetBurn", "availability", error_ratio,
         t.availability_slo, "server errors"),
        ("MLModelLatencyBudgetBurn", "latency", slow_ratio,
         t.latency_slo, f"predictions slower than {num(t.latency_slo_threshold)}s"),
    )
    for name, family, ratio, target, what in budgets:
        budget = 1 - target
        for severity in ("critical", "warning"):
            pairs = [r for r in BURN_RATES if r[0] == severity]
            expr = "\nor\n".join(
                f"(\n  {b.m(ratio(long))} > {num(factor * budget)}\n"
                f"  and\n  {b.m(ratio(short))} > {num(factor * budget)}\n)"
                for _, long, short, factor, _ in pairs)
            windows = " or ".join(f"{num(f)}x over {lw} and {sw}" for _, lw, sw, f, _ in pairs)
            slo.append(_alert(
                name, expr, severity, family, b.w(pairs[0][4]),
                f"A model version burns the error budget of its {num(target * 100)}% {family} SLO too fast.",
                f"The share of {what} of " + _WHO + " burns the error budget of its"
                f" {num(target * 100)}% SLO at {windows} (long-window value"
                " {{ $value | humanizePercentage }}).",
                {"slo": family}))

    feature, classes, output, acc = FEATURE_DRIFT, CLASS_DRIFT, OUTPUT_DRIFT, ACCURACY_WINDOW

    def drift_alert(name: str, d: Distribution, summary: str, what: str) -> dict[str, Any]:
        """PSI of one distribution over its threshold, with enough counts in its window."""
        group = f", {d.group}" if d.group else ""
        return _alert(name,
                      (f"{b.m(d.psi)} > {num(t.psi_threshold)}\n"
                       f"and on ({b.version}{group})\n"
                       f"{b.m(d.total)} * {b.seconds(d.window)} >= {num(t.drift_min_count)}"),
                      "warning", "drift", b.w("15m"), summary,
                      f"The population stability index of {what} of " + _WHO
                      + f' is {{{{ $value | printf "%.3f" }}}} over the last {d.window}'
                      f" (threshold {num(t.psi_threshold)}).")

    quality = [
        drift_alert("MLModelFeatureDrift", feature,
                    "A feature's distribution drifted from its reference.",
                    "feature {{ $labels.feature }}"),
        drift_alert("MLModelPredictionDrift", classes,
                    "Predicted-class distribution drifted from its reference.", "the predicted classes"),
        _alert("MLModelAccuracyDrop",
               (f"{b.m(ACCURACY)}\n"
                f"  < on ({b.version}) ({b.m(REFERENCE_ACCURACY_MAX)} - {num(t.accuracy_drop)})\n"
                f"and on ({b.version})\n"
                f"{b.m(FEEDBACK_RATE)} * {b.seconds(acc)} >= {num(t.accuracy_min_feedback)}"),
               "warning", "quality", b.w("15m"),
               "Accuracy of a model version dropped below its reference.",
               "Accuracy from feedback of " + _WHO + " is {{ $value | humanizePercentage }} over the last"
               f" {acc}, more than {num(t.accuracy_drop * 100)} points below the reference accuracy."),
        # regression models: drift of the numeric outputs, and live MAE against the reference's
        drift_alert("MLModelOutputDrift", output, "Output distribution drifted from its reference.",
                    "the predicted values (regression output bins)"),
        _alert("MLModelAbsoluteErrorHigh",
               (f"{b.m(ABSOLUTE_ERROR_MEAN)}\n"
                f"  > on ({b.version}) ({num(t.mae_factor)} * {b.m(REFERENCE_ABSOLUTE_ERROR_MAX)})\n"
                f"and on ({b.version})\n"
                f"sum by ({b.version}) (rate({b.m(FEEDBACK_ABSOLUTE_ERROR_COUNT)}[{b.w(acc)}]))"
                f" * {b.seconds(acc)} >= {num(t.mae_min_feedback)}"),
               "warning", "quality", b.w("15m"),
               "Mean absolute error of a model version rose above its reference.",
               "Mean absolute error from feedback of " + _WHO + ' is {{ $value | printf "%.4g" }} over the'
               f" last {acc}, more than {num(t.mae_factor)} times the reference mean absolute error."),
    ]

    platform = [
        _alert("MLModelProcessMemoryHigh",
               f"{b.gauge(PROCESS_MEMORY)} > {num(t.memory_bytes)}",
               "warning", "resources", b.w("10m"),
               f"Worker resident memory above {num(t.memory_bytes / 2**30)}GiB.",
               "Resident memory of worker {{ $labels.worker }} on {{ $labels.instance }} (job {{ $labels.job }}) is"
               " {{ $value | humanize1024 }}B" + f" (threshold {num(t.memory_bytes / 2**30)}GiB)."),
        _alert("MLModelGPUMemoryHigh",
               (f"{b.gauge(GPU_MEMORY_USED)}\n"
                f"/ ({b.gauge(GPU_MEMORY_TOTAL)} > 0)\n> {num(t.gpu_memory_ratio)}"),
               "warning", "resources", b.w("5m"),
               f"GPU memory use above {num(t.gpu_memory_ratio * 100)}%.",
               "GPU memory use on {{ $labels.instance }} (job {{ $labels.job }}) is"
               " {{ $value | humanizePercentage }}" + f" (threshold {num(t.gpu_memory_ratio * 100)}%)."),
        _alert("MLMonitorInternalErrors",
               f"sum by ({b.target}, {COMPONENT}) (increase({b.m(INTERNAL_ERRORS_TOTAL)}[{b.w('5m')}])) > 0",
               "warning", "mlmonitor", "",
               "Internal errors in mlmonitor: telemetry was lost.",
               "mlmonitor's {{ $labels.component }} failed {{ $value | printf \"%.0f\" }} times over the last 5m"
               " on {{ $labels.instance }} (job {{ $labels.job }}); requests were served, telemetry was lost."),
        _alert("MLMonitorTelemetryDropped",
               f"sum by ({b.target}, {SIGNAL}) (increase({b.m(TELEMETRY_DROPPED_TOTAL)}[{b.w('10m')}])) > 0",
               "info", "mlmonitor", "",
               "Telemetry dropped by mlmonitor: exporter down or queue full.",
               'mlmonitor dropped {{ $value | printf "%.0f" }} {{ $labels.signal }} items over the last 10m'
               " on {{ $labels.instance }} (job {{ $labels.job }}): exporter down or queue full."),
    ]
    for rule in model + slo + quality + platform:
        rule["annotations"]["runbook_url"] = b.runbook(rule["alert"])
    return [
        {"name": "mlmonitor.alerts.model", "rules": model},
        {"name": "mlmonitor.alerts.slo", "rules": slo},
        {"name": "mlmonitor.alerts.quality", "rules": quality},
        {"name": "mlmonitor.alerts.platform", "rules": platform},
    ]


def render_groups(thresholds: Thresholds | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(recording groups, alerting groups) as plain dicts."""
    b = _Builder(thresholds or Thresholds())
    return _recording(b), _alerts(b)


# -- output --------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./:-]*")
_NUMBERLIKE = re.compile(r"[-+]?(\.\d+|\d[\d_]*(\.\d*)?)([eE][-+]?\d+)?|0x[0-9a-fA-F]+|0o[0-7]+")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return num(value)
    text = str(value)
    if (_PLAIN.fullmatch(text) and not _NUMBERLIKE.fullmatch(text)
            and text.lower() not in _RESERVED and not text.endswith(":")):
        return text
    if text.isprintable():
        return "'" + text.replace("'", "''") + "'"
    return json.dumps(text, ensure_ascii=False)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; multi-line strings as ``|-`` blocks."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            lines.append(_entry(f"{pad}{_scalar(key)}:", item, indent))
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2:]}")
            else:
                lines.append(_entry(f"{pad}-", item, indent))
    else:
        lines.append(pad + _scalar(value))
    return "\n".join(lines)


def _entry(head: str, item: Any, indent: int) -> str:
    if isinstance(item, (dict, list)) and item:
        return f"{head}\n{to_yaml(item, indent + 2)}"
    if isinstance(item, str) and "\n" in item and _block_safe(item):
        body = "\n".join((" " * (indent + 2) + line) if line else "" for line in item.split("\n"))
        return f"{head} |-\n{body}"
    if isinstance(item, (dict, list)):
        return f"{head} {'{}' if isinstance(item, dict) else '[]'}"
    return f"{head} {_scalar(item)}"


def _block_safe(text: str) -> bool:
    """A ``|-`` block keeps this text exactly: no leading blank, no trailing newline, no tabs."""
    first = text.split("\n", 1)[0]
    return bool(first) and not first[0].isspace() and not text.endswith("\n") and "\t" not in text \
        and all(line.isprintable() for line in text.split("\n"))


def _header(t: Thresholds) -> str:
    opts = []
    for f in fields(t):
        value = getattr(t, f.name)
        if value == f.default or (f.name == "latency_slo_threshold" and value == t.latency_p99):
            continue
        if f.name == "buckets":
            value = ",".join(num(b) for b in value)
        opts.append(f"--{f.name.replace('_', '-')} {value!r}")
    return ("# Generated by `mlmonitor alerts render" + "".join(f" {o}" for o in opts)
            + "`: do not edit by hand.\n")


def render_text(thresholds: Thresholds, prometheus_operator: bool = False) -> str:
    """One rule file with every group (or the PrometheusRule manifest): what goes to stdout."""
    recording, alerting = render_groups(thresholds)
    head = _header(thresholds)
    if prometheus_operator:
        return head + to_yaml(_manifest(recording + alerting)) + "\n"
    return head + to_yaml({"groups": recording + alerting}) + "\n"


def _manifest(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "mlmonitor", "labels": {"app.kubernetes.io/name": "mlmonitor",
                                                     "role": "alert-rules"}},
        "spec": {"groups": groups},
    }


#: Alertmanager routing; every time in it is divided by --time-scale
_ALERTMANAGER = """\
# Alertmanager routing for mlmonitor's alerts (mlmonitor-alerts.rules.yml).
#
# Load with: prometheus-alertmanager --config.file=alerts/alertmanager.yml
# Check with: amtool check-config alerts/alertmanager.yml
#
# Every alert carries `severity` (critical / warning / info) and `family` (the alert family:
# availability, latency, traffic, input, drift, quality, canary, resources, mlmonitor).
# Replace the webhook URL with your own receiver, or uncomment the Slack / PagerDuty stubs.

global:
  resolve_timeout: {resolve}

route:
  receiver: default
  # one notification per alert and model version: it names the version that fails
  group_by: [alertname, job, model_name, model_version]
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: {repeat}
  routes:
    - matchers: ['severity="critical"']
      receiver: critical
      repeat_interval: {repeat_critical}
    - matchers: ['severity="warning"']
      receiver: warning
    - matchers: ['severity="info"']
      receiver: info
      repeat_interval: {repeat_info}

inhibit_rules:
  # a critical alert silences the warnings of the same family for the same model version
  # (e.g. the critical availability burn silences the slow-burn warning)
  - source_matchers: ['severity="critical"']
    target_matchers: ['severity="warning"']
    equal: [job, model_name, model_version, family]

receivers:
  - name: default
    webhook_configs:
      - url: 'http://127.0.0.1:5001/'
        send_resolved: true

  - name: critical
    webhook_configs:
      - url: 'http://127.0.0.1:5001/'
        send_resolved: true
    # pagerduty_configs:
    #   - routing_key: '<your PagerDuty Events v2 integration key>'
    #     severity: critical
    #     send_resolved: true

  - name: warning
    webhook_configs:
      - url: 'http://127.0.0.1:5001/'
        send_resolved: true
    # slack_configs:
    #   - api_url: 'https://hooks.slack.com/services/XXX/YYY/ZZZ'
    #     channel: '#ml-alerts'
    #     title: '{{{{ .CommonAnnotations.summary }}}}'
    #     text: '{{{{ .CommonAnnotations.description }}}} {{{{ .CommonAnnotations.runbook_url }}}}'
    #     send_resolved: true

  - name: info
    webhook_configs:
      - url: 'http://127.0.0.1:5001/'
        send_resolved: true
"""


def render_alertmanager(thresholds: Thresholds) -> str:
    """The Alertmanager config, its times divided by ``time_scale`` like every rule window."""
    b = _Builder(thresholds)
    times = {"resolve": "5m", "group_wait": "30s", "group_interval": "5m", "repeat": "4h",
             "repeat_critical": "1h", "repeat_info": "24h"}
    return _header(thresholds) + _ALERTMANAGER.format(**{k: b.w(v) for k, v in times.items()})


def render_files(thresholds: Thresholds, out_dir: str, prometheus_operator: bool = False) -> list[str]:
    """Write the rule files, the Alertmanager config (and the PrometheusRule manifest); return their paths."""
    recording, alerting = render_groups(thresholds)
    head = _header(thresholds)
    outputs = {
        RECORDING_FILE: head + to_yaml({"groups": recording}) + "\n",
        ALERTS_FILE: head + to_yaml({"groups": alerting}) + "\n",
        ALERTMANAGER_FILE: render_alertmanager(thresholds),
    }
    if prometheus_operator:
        outputs[OPERATOR_FILE] = head + to_yaml(_manifest(recording + alerting)) + "\n"
    written = []
    for name, text in outputs.items():
        path = os.path.join(out_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written
