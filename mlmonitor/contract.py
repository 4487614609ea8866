"""The metric contract: every name that dashboards, alert rules and users' queries rely on.

Spelled once here and imported by the sinks, the rules and the dashboards, so a
rename is one change that everything follows: metric family names, label names
and the label values that queries match, recording-rule names and their windows,
``OTHER``, ``UNMATCHED_ROUTE``, ``PSI_FLOOR`` and the default buckets. Read at
import time by request-time and offline code alike, so it imports nothing (not
even prometheus-client) and creates nothing.

Family names come in two forms: the base name given to prometheus-client
(``PREDICTIONS``) and, where queries read it, the name of the exposed series
(``PREDICTIONS_TOTAL``, ``PREDICTION_DURATION_BUCKET``). Recording rules are named
``level:metric:operations`` (``model_version:mlmonitor_predictions:rate5m``); change a
window below and every rule name, rule and dashboard query follows.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = [
    # sentinels, floors, buckets
    "OTHER", "UNMATCHED_ROUTE", "PSI_FLOOR", "SCORE_BUCKETS", "DEFAULT_BUCKETS",
    # metric families
    "HTTP_REQUESTS", "HTTP_REQUESTS_TOTAL", "HTTP_REQUEST_DURATION", "HTTP_REQUEST_DURATION_BUCKET",
    "HTTP_REQUESTS_IN_PROGRESS", "PREDICTIONS", "PREDICTIONS_TOTAL", "PREDICTION_ERRORS",
    "PREDICTION_ERRORS_TOTAL", "PREDICTION_DURATION", "PREDICTION_DURATION_BUCKET",
    "PREDICTION_DURATION_COUNT", "STAGE_DURATION", "STAGE_DURATION_BUCKET", "STAGE_DURATION_SUM",
    "TIME_TO_FIRST_CHUNK", "TIME_TO_FIRST_CHUNK_BUCKET",
    "STAGE_DURATION_COUNT", "MODEL_INFO", "PREDICTION_SCORE", "PREDICTION_SCORE_BUCKET",
    "PREDICTED_CLASS", "PREDICTED_CLASS_TOTAL", "FEATURE_BIN", "FEATURE_BIN_TOTAL",
    "FEATURE_REFERENCE_RATIO", "FEATURE_MISSING", "FEATURE_MISSING_TOTAL", "FEEDBACK",
    "FEEDBACK_TOTAL", "FEEDBACK_REJECTED", "FEEDBACK_REJECTED_TOTAL", "REFERENCE_ACCURACY",
    "REFERENCE_CLASS_RATIO", "TOKENS", "TOKENS_TOTAL", "COST", "COST_TOTAL", "INTERNAL_ERRORS",
    "INTERNAL_ERRORS_TOTAL", "INTERNAL_ERRORS_HELP", "TELEMETRY_DROPPED", "TELEMETRY_DROPPED_TOTAL",
    "PROCESS_MEMORY", "PROCESS_CPU", "PROCESS_CPU_TOTAL", "GPU_UTILIZATION", "GPU_MEMORY_USED",
    "GPU_MEMORY_TOTAL", "PREDICTION_BIN", "PREDICTION_BIN_TOTAL", "PREDICTION_REFERENCE_RATIO",
    "FEEDBACK_ABSOLUTE_ERROR", "FEEDBACK_ABSOLUTE_ERROR_BUCKET", "FEEDBACK_ABSOLUTE_ERROR_SUM",
    "FEEDBACK_ABSOLUTE_ERROR_COUNT", "REFERENCE_ABSOLUTE_ERROR", "FEATURE_UNKNOWN",
    "FEATURE_UNKNOWN_TOTAL", "ABSOLUTE_ERROR_BUCKETS", "REGRESSION", "CLASSIFICATION",
    # labels and label values
    "JOB", "MODEL_NAME", "MODEL_VERSION", "MODEL_LABELS", "VERSION_LABELS", "RUN_ID", "MODEL_ID",
    "MODEL_INFO_LABELS", "METHOD", "ROUTE",
    "STATUS", "HTTP_LABELS", "IN_PROGRESS_LABELS", "ERROR_TYPE", "STAGE", "CLASS", "FEATURE", "BIN",
    "OUTCOME", "DIRECTION", "COMPONENT", "SIGNAL", "WORKER", "GPU", "REASON", "INVALID_INPUT",
    "HTTP_5XX", "CLIENT_CLOSED", "CORRECT", "INCORRECT", "ASSESSMENTS",
    # recording rules
    "RATE_WINDOW", "DRIFT_WINDOW", "ACCURACY_WINDOW", "SLO_WINDOWS", "LATENCY_QUANTILES",
    "PREDICTIONS_RATE", "PREDICTION_ERRORS_RATE", "INVALID_INPUT_RATE", "INVALID_INPUT_RATIO",
    "latency_quantile", "LATENCY_P99", "error_ratio", "slow_ratio", "ERROR_RATIO", "ERROR_RATIO_STEM",
    "SLOW_RATIO_STEM", "Distribution", "FEATURE_DRIFT", "CLASS_DRIFT", "FEEDBACK_RATE", "ACCURACY",
    "REFERENCE_ACCURACY_MAX", "OUTPUT_DRIFT", "ABSOLUTE_ERROR_MEAN", "REFERENCE_ABSOLUTE_ERROR_MAX",
    # what the shipped rules assume
    "GAUGE_WINDOW", "LATENCY_THRESHOLD", "DEFAULT_JOB",
]

# -- sentinels, floors, buckets ------------------------------------------------------------------

#: the value that stands for every label value beyond a cap
OTHER = "other"
#: the route label of a path that matches no known route
UNMATCHED_ROUTE = "<unmatched>"
#: shares below this count as this in the population stability index (no log(0))
PSI_FLOOR = 1e-4
#: buckets of the prediction score histogram (confidence, 0..1)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: buckets of the regression feedback's absolute error (one family for every model: fixed, 1-2-5)
ABSOLUTE_ERROR_BUCKETS = tuple(m * 10.0 ** e for e in range(-3, 5) for m in (1, 2, 5))
#: the ``task`` of a reference profile
REGRESSION = "regression"
CLASSIFICATION = "classification"
#: inference-friendly latency buckets, 1 ms .. 30 s
DEFAULT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: the p99 SLA and latency SLO bound of the shipped rules (seconds): a bound of DEFAULT_BUCKETS, as
#: the slow-ratio rules read the bucket ``le`` equal to it; buckets without it make those rules empty
LATENCY_THRESHOLD = 0.5
#: the scrape ``job`` the shipped rules select (``job="mlmonitor"``); render with ``--selector`` for others
DEFAULT_JOB = "mlmonitor"

# -- metric families: base name as given to prometheus-client, then the exposed series read -------

HTTP_REQUESTS = "mlmonitor_http_requests"
HTTP_REQUESTS_TOTAL = HTTP_REQUESTS + "_total"
HTTP_REQUEST_DURATION = "mlmonitor_http_request_duration_seconds"
HTTP_REQUEST_DURATION_BUCKET = HTTP_REQUEST_DURATION + "_bucket"
HTTP_REQUESTS_IN_PROGRESS = "mlmonitor_http_requests_in_progress"
PREDICTIONS = "mlmonitor_predictions"
PREDICTIONS_TOTAL = PREDICTIONS + "_total"
PREDICTION_ERRORS = "mlmonitor_prediction_errors"
PREDICTION_ERRORS_TOTAL = PREDICTION_ERRORS + "_total"
PREDICTION_DURATION = "mlmonitor_prediction_duration_seconds"
PREDICTION_DURATION_BUCKET = PREDICTION_DURATION + "_bucket"
PREDICTION_DURATION_COUNT = PREDICTION_DURATION + "_count"
STAGE_DURATION = "mlmonitor_stage_duration_seconds"
STAGE_DURATION_BUCKET = STAGE_DURATION + "_bucket"
STAGE_DURATION_SUM = STAGE_DURATION + "_sum"
STAGE_DURATION_COUNT = STAGE_DURATION + "_count"
#: a streamed prediction response: request start to its first non-empty body chunk
TIME_TO_FIRST_CHUNK = "mlmonitor_time_to_first_chunk_seconds"
TIME_TO_FIRST_CHUNK_BUCKET = TIME_TO_FIRST_CHUNK + "_bucket"
MODEL_INFO = "mlmonitor_model_info"
PREDICTION_SCORE = "mlmonitor_prediction_score"
PREDICTION_SCORE_BUCKET = PREDICTION_SCORE + "_bucket"
PREDICTED_CLASS = "mlmonitor_predicted_class"
PREDICTED_CLASS_TOTAL = PREDICTED_CLASS + "_total"
FEATURE_BIN = "mlmonitor_feature_bin"
FEATURE_BIN_TOTAL = FEATURE_BIN + "_total"
FEATURE_REFERENCE_RATIO = "mlmonitor_feature_reference_ratio"
FEATURE_MISSING = "mlmonitor_feature_missing"
FEATURE_MISSING_TOTAL = FEATURE_MISSING + "_total"
FEEDBACK = "mlmonitor_feedback"
FEEDBACK_TOTAL = FEEDBACK + "_total"
FEEDBACK_REJECTED = "mlmonitor_feedback_rejected"
FEEDBACK_REJECTED_TOTAL = FEEDBACK_REJECTED + "_total"
REFERENCE_ACCURACY = "mlmonitor_reference_accuracy"
REFERENCE_CLASS_RATIO = "mlmonitor_reference_class_ratio"
TOKENS = "mlmonitor_tokens"
TOKENS_TOTAL = TOKENS + "_total"
COST = "mlmonitor_cost"
COST_TOTAL = COST + "_total"
INTERNAL_ERRORS = "mlmonitor_internal_errors"
INTERNAL_ERRORS_TOTAL = INTERNAL_ERRORS + "_total"
#: its help text: the gunicorn master writes this series itself (multiprocess.py), and a
#: sample's key holds the help, so both writers spell it from here
INTERNAL_ERRORS_HELP = "mlmonitor's own faults (should stay 0)."
TELEMETRY_DROPPED = "mlmonitor_telemetry_dropped"
TELEMETRY_DROPPED_TOTAL = TELEMETRY_DROPPED + "_total"
PROCESS_MEMORY = "mlmonitor_process_resident_memory_bytes"
PROCESS_CPU = "mlmonitor_process_cpu_seconds"
PROCESS_CPU_TOTAL = PROCESS_CPU + "_total"
#: written by the NVML collector (gpu.py), one series per device
GPU_UTILIZATION = "mlmonitor_gpu_utilization_ratio"
GPU_MEMORY_USED = "mlmonitor_gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "mlmonitor_gpu_memory_total_bytes"
#: regression: live numeric predictions binned by the reference's output edges, the reference's
#: share of each output bin, feedback's absolute error and the reference's mean absolute error
PREDICTION_BIN = "mlmonitor_prediction_bin"
PREDICTION_BIN_TOTAL = PREDICTION_BIN + "_total"
PREDICTION_REFERENCE_RATIO = "mlmonitor_prediction_reference_ratio"
FEEDBACK_ABSOLUTE_ERROR = "mlmonitor_feedback_absolute_error"
FEEDBACK_ABSOLUTE_ERROR_BUCKET = FEEDBACK_ABSOLUTE_ERROR + "_bucket"
FEEDBACK_ABSOLUTE_ERROR_SUM = FEEDBACK_ABSOLUTE_ERROR + "_sum"
FEEDBACK_ABSOLUTE_ERROR_COUNT = FEEDBACK_ABSOLUTE_ERROR + "_count"
REFERENCE_ABSOLUTE_ERROR = "mlmonitor_reference_absolute_error"
#: observed feature names the reference does not know (no name label: names are unbounded)
FEATURE_UNKNOWN = "mlmonitor_feature_unknown"
FEATURE_UNKNOWN_TOTAL = FEATURE_UNKNOWN + "_total"

# -- label names and the label values that rules and dashboards match ------------------------------

#: the scrape job, added by Prometheus; every per-version aggregation keeps it
JOB = "job"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
MODEL_LABELS: tuple[str, ...] = (MODEL_NAME, MODEL_VERSION)
#: lineage (MLflow run and logged model), on mlmonitor_model_info only: join on model_name,
#: model_version to see it beside any other family; one value per served version
RUN_ID = "run_id"
MODEL_ID = "model_id"
MODEL_INFO_LABELS: tuple[str, ...] = MODEL_LABELS + (RUN_ID, MODEL_ID)
#: what every per-version aggregation keeps, so an alert names the version that fails
VERSION_LABELS: tuple[str, ...] = (JOB, MODEL_NAME, MODEL_VERSION)
METHOD = "method"
ROUTE = "route"
STATUS = "status"
HTTP_LABELS: tuple[str, ...] = (METHOD, ROUTE, STATUS)
IN_PROGRESS_LABELS: tuple[str, ...] = (METHOD, ROUTE)
ERROR_TYPE = "error_type"
STAGE = "stage"
CLASS = "class"
FEATURE = "feature"
BIN = "bin"
OUTCOME = "outcome"
DIRECTION = "direction"
COMPONENT = "component"
SIGNAL = "signal"
WORKER = "worker"
GPU = "gpu"
REASON = "reason"
#: ``error_type`` of a 4xx: the client's fault, counted apart from server errors
INVALID_INPUT = "invalid_input"
#: ``error_type`` of a 5xx response without an exception
HTTP_5XX = "http_5xx"
#: ``status`` of a request whose client went away before its answer was delivered (nginx's
#: "client closed request"): never a server error nor invalid input, never in ``error_type``
CLIENT_CLOSED = 499
#: ``outcome`` values of feedback
CORRECT = "correct"
INCORRECT = "incorrect"
#: ``signal`` of feedback that did not reach MLflow as assessments on the prediction's trace
ASSESSMENTS = "assessments"

# -- recording rules: windows and names ----------------------------------------------------------

#: window of the short-term rates, ratios and latency quantiles (and of the alerts on them)
RATE_WINDOW = "5m"
#: window of the population stability index of features and predicted classes
DRIFT_WINDOW = "1h"
#: window of accuracy from feedback
ACCURACY_WINDOW = "1h"
#: gauges are read as ``last_over_time`` over this window (a few scrape intervals), so a missed
#: scrape shorter than it changes no recording-rule series and resets no alert's ``for:``
GAUGE_WINDOW = "5m"
#: windows of the error and slow ratios (the SLO burn-rate alerts read them)
SLO_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
#: latency quantiles recorded per version, as percentages
LATENCY_QUANTILES: tuple[str, ...] = ("50", "95", "99")

_VERSION = "model_version"
PREDICTIONS_RATE = f"{_VERSION}:{PREDICTIONS}:rate{RATE_WINDOW}"
#: server errors only (every error_type but invalid_input)
PREDICTION_ERRORS_RATE = f"{_VERSION}:{PREDICTION_ERRORS}:rate{RATE_WINDOW}"
_INVALID_INPUT_STEM = "mlmonitor_prediction_invalid_input"
INVALID_INPUT_RATE = f"{_VERSION}:{_INVALID_INPUT_STEM}:rate{RATE_WINDOW}"
INVALID_INPUT_RATIO = f"{_VERSION}:{_INVALID_INPUT_STEM}:ratio_rate{RATE_WINDOW}"
#: the metric part of the server-error and slow-prediction ratio rules
ERROR_RATIO_STEM = PREDICTION_ERRORS
SLOW_RATIO_STEM = "mlmonitor_prediction_slow"


def latency_quantile(q: str) -> str:
    """The recording rule of the ``q``-th percentile of prediction latency (``"99"``)."""
    return f"{_VERSION}:{PREDICTION_DURATION}:p{q}_{RATE_WINDOW}"


def error_ratio(window: str) -> str:
    """The recording rule of the server-error share of predictions over ``window``."""
    return f"{_VERSION}:{ERROR_RATIO_STEM}:ratio_rate{window}"


def slow_ratio(window: str) -> str:
    """The recording rule of the share of predictions slower than the latency SLO bound."""
    return f"{_VERSION}:{SLOW_RATIO_STEM}:ratio_rate{window}"


LATENCY_P99 = latency_quantile("99")
ERROR_RATIO = error_ratio(RATE_WINDOW)


class Distribution(NamedTuple):
    """A live counter's bin shares against a reference gauge's: the PSI recording rules' names.

    ``group`` is the label that splits the comparison (``feature``; empty for the
    predicted classes), ``bin_label`` the label of the bins.
    """

    counter: str
    reference: str
    stem: str
    level: str
    bin_level: str
    group: str
    bin_label: str
    window: str

    @property
    def live(self) -> str:
        """Live rate per bin, summed over workers and replicas."""
        return f"{self.bin_level}:{self.stem}:rate{self.window}"

    @property
    def total(self) -> str:
        """Live rate of all bins of a group."""
        return f"{self.level}:{self.stem}:rate{self.window}"

    @property
    def reference_max(self) -> str:
        """The reference's share of each bin, one series over workers and replicas."""
        return f"{self.bin_level}:{self.reference}:max"

    @property
    def share(self) -> str:
        """Live share of each bin (0 for reference bins without traffic in the window)."""
        return f"{self.bin_level}:{self.stem}:ratio_rate{self.window}"

    @property
    def psi(self) -> str:
        """Population stability index of a group over the window."""
        return f"{self.level}:{self.stem}:psi{self.window}"


FEATURE_DRIFT = Distribution(FEATURE_BIN_TOTAL, FEATURE_REFERENCE_RATIO, FEATURE_BIN,
                             "model_version_feature", "model_version_feature_bin", FEATURE, BIN,
                             DRIFT_WINDOW)
CLASS_DRIFT = Distribution(PREDICTED_CLASS_TOTAL, REFERENCE_CLASS_RATIO, PREDICTED_CLASS,
                           _VERSION, "model_version_class", "", CLASS, DRIFT_WINDOW)

FEEDBACK_RATE = f"{_VERSION}:{FEEDBACK}:rate{ACCURACY_WINDOW}"
#: accuracy from feedback: the share of feedback with outcome correct
ACCURACY = f"{_VERSION}:{FEEDBACK}_{CORRECT}:ratio_rate{ACCURACY_WINDOW}"
REFERENCE_ACCURACY_MAX = f"{_VERSION}:{REFERENCE_ACCURACY}:max"
#: regression: output drift (PSI of the numeric predictions' bins against the reference's shares)
OUTPUT_DRIFT = Distribution(PREDICTION_BIN_TOTAL, PREDICTION_REFERENCE_RATIO, PREDICTION_BIN,
                            _VERSION, "model_version_bin", "", BIN, DRIFT_WINDOW)
#: regression: mean absolute error from feedback over the window, and the reference's, per version
ABSOLUTE_ERROR_MEAN = f"{_VERSION}:{FEEDBACK_ABSOLUTE_ERROR}:mean{ACCURACY_WINDOW}"
REFERENCE_ABSOLUTE_ERROR_MAX = f"{_VERSION}:{REFERENCE_ABSOLUTE_ERROR}:max"
