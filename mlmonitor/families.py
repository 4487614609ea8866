"""The metric families of the contract, created once per registry, and the caps on label values.

Created when the first metrics sink of a registry is built (never at import: the
multiprocess directory must be set first); every sink on that registry shares them.
Names and label names come from :mod:`mlmonitor.contract`.
"""
from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from . import contract as c
from . import guard
from .contract import OTHER
from .gpu import GpuCollector, make_gpu_collector
from .multiprocess import AdmittedValues, multiprocess_dir, use_multiprocess_values

__all__ = ["Families", "LabelCap", "clean_label", "families_for", "gpu_collector"]

MODEL = c.MODEL_LABELS


def clean_label(value: object, limit: int = 128) -> str:
    r"""A label value that always encodes: text, at most ``limit`` characters, no lone surrogates.

    A lone surrogate (JSON ``"\ud800"``) in a label would make every later scrape fail.
    """
    text = (value if type(value) is str else str(value))[:limit]
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class LabelCap:
    """Keeps the first ``limit`` distinct values of a label; later ones become ``other``.

    With ``shared`` (multiprocess mode) the first values are those of every process on
    the directory, so worker restarts cannot add more. A value seen before costs a set
    lookup; a new one costs a read of the shared file, until the cap is known full.
    Configured values (``preset``) are always kept. ``owner`` counts a fault of the file.
    """

    def __init__(self, limit: int, preset: Iterable[str] = (),
                 shared: AdmittedValues | None = None, owner: Any = None) -> None:
        self.limit = limit
        self.values = set(preset)
        self.lock = threading.Lock()
        self.shared = shared
        self.owner = owner
        self.full = False
        if shared is not None:
            for value in list(self.values):
                self._share(value, force=True)

    def __call__(self, value: str) -> str:
        if value in self.values:
            return value
        value = clean_label(value)
        if value in self.values:
            return value
        if self.full:
            return OTHER
        with self.lock:
            if self.shared is not None:
                return value if self._share(value) else OTHER
            if len(self.values) < self.limit:
                self.values.add(value)
                return value
            self.full = True
        return OTHER

    def _share(self, value: str, force: bool = False) -> bool:
        try:
            values, admitted = self.shared.admit(value, self.values, self.limit, force)  # type: ignore[union-attr]
        except OSError as exc:  # the directory cannot be written: stay within the cap
            guard.report_fault("metrics", exc, self.owner)
            return force
        self.values = values  # a new set: lookups outside the lock stay safe
        self.full = not admitted or len(values) >= self.limit
        return admitted


class Families:
    """The metric contract of DESIGN.md, created once per registry."""

    def __init__(self, registry: CollectorRegistry | None, buckets: tuple[float, ...]) -> None:
        r = registry
        self.http_requests = Counter(
            c.HTTP_REQUESTS, "HTTP requests seen by mlmonitor.", c.HTTP_LABELS, registry=r)
        self.http_duration = Histogram(
            c.HTTP_REQUEST_DURATION, "Time from request start until the response body is closed.",
            c.HTTP_LABELS, buckets=buckets, registry=r)
        self.in_progress = Gauge(
            c.HTTP_REQUESTS_IN_PROGRESS, "Requests being served now.", c.IN_PROGRESS_LABELS,
            multiprocess_mode="livesum", registry=r)
        self.predictions = Counter(
            c.PREDICTIONS, "Calls of prediction endpoints, failed ones included.", MODEL, registry=r)
        self.prediction_errors = Counter(
            c.PREDICTION_ERRORS,
            "Failed predictions: invalid_input for 4xx, else the exception class or http_5xx.",
            MODEL + (c.ERROR_TYPE,), registry=r)
        self.prediction_duration = Histogram(
            c.PREDICTION_DURATION, "Time spent in the prediction handler.", MODEL,
            buckets=buckets, registry=r)
        self.stage_duration = Histogram(
            c.STAGE_DURATION, "Time spent in a named stage of a prediction.", MODEL + (c.STAGE,),
            buckets=buckets, registry=r)
        self.time_to_first_chunk = Histogram(
            c.TIME_TO_FIRST_CHUNK, "Streamed predictions: request start to the first non-empty "
            "body chunk.", MODEL, buckets=buckets, registry=r)
        self.model_info = Gauge(
            c.MODEL_INFO, "Model versions this process serves (value 1), with their lineage "
            "(MLflow run id and model id, empty when unknown).", c.MODEL_INFO_LABELS,
            multiprocess_mode="livemax", registry=r)
        self.prediction_score = Histogram(
            c.PREDICTION_SCORE, "Confidence score of each prediction.", MODEL,
            buckets=c.SCORE_BUCKETS, registry=r)
        self.predicted_class = Counter(
            c.PREDICTED_CLASS, "Predicted classes.", MODEL + (c.CLASS,), registry=r)
        self.feature_bin = Counter(
            c.FEATURE_BIN, "Live feature values, binned by the reference's edges.",
            MODEL + (c.FEATURE, c.BIN), registry=r)
        self.feature_reference_ratio = Gauge(
            c.FEATURE_REFERENCE_RATIO, "The reference's share of each feature bin.",
            MODEL + (c.FEATURE, c.BIN), multiprocess_mode="max", registry=r)
        self.feature_missing = Counter(
            c.FEATURE_MISSING, "Missing or non-numeric feature values.", MODEL + (c.FEATURE,),
            registry=r)
        self.feedback = Counter(
            c.FEEDBACK, "Ground truth received, by outcome.", MODEL + (c.OUTCOME,), registry=r)
        self.feedback_rejected = Counter(
            c.FEEDBACK_REJECTED, "Feedback refused: malformed, bad_signature, expired, "
            "future, duplicate or bad_label.", (c.REASON,), registry=r)
        self.reference_accuracy = Gauge(
            c.REFERENCE_ACCURACY, "Accuracy measured on the reference data.", MODEL,
            multiprocess_mode="max", registry=r)
        self.reference_class_ratio = Gauge(
            c.REFERENCE_CLASS_RATIO, "The reference's share of each predicted class.",
            MODEL + (c.CLASS,), multiprocess_mode="max", registry=r)
        self.feature_unknown = Counter(
            c.FEATURE_UNKNOWN, "Observed feature names the reference does not know.", MODEL,
            registry=r)
        self.prediction_bin = Counter(
            c.PREDICTION_BIN, "Numeric (regression) predictions, binned by the reference's "
            "output edges.", MODEL + (c.BIN,), registry=r)
        self.prediction_reference_ratio = Gauge(
            c.PREDICTION_REFERENCE_RATIO, "The reference's share of each output bin.",
            MODEL + (c.BIN,), multiprocess_mode="max", registry=r)
        self.feedback_absolute_error = Histogram(
            c.FEEDBACK_ABSOLUTE_ERROR, "Regression ground truth: abs(label - prediction).", MODEL,
            buckets=c.ABSOLUTE_ERROR_BUCKETS, registry=r)
        self.reference_absolute_error = Gauge(
            c.REFERENCE_ABSOLUTE_ERROR, "Mean absolute error measured on the reference data.",
            MODEL, multiprocess_mode="max", registry=r)
        self.tokens = Counter(
            c.TOKENS, "LLM tokens, by direction (input / output).", MODEL + (c.DIRECTION,),
            registry=r)
        self.cost = Counter(
            c.COST, "Cost of predictions in the configured currency.", MODEL, registry=r)
        self.internal_errors = Counter(
            c.INTERNAL_ERRORS, c.INTERNAL_ERRORS_HELP, (c.COMPONENT,), registry=r)
        self.telemetry_dropped = Counter(
            c.TELEMETRY_DROPPED, "Spans, log lines or MLflow assessments dropped (queue full, exporter down),"
            " and scrapes refused.",
            (c.SIGNAL,), registry=r)
        self.process_memory = Gauge(
            c.PROCESS_MEMORY, "Resident memory of each worker.", (c.WORKER,),
            multiprocess_mode="livemax", registry=r)
        self.process_cpu = Counter(
            c.PROCESS_CPU, "CPU time of each worker slot (user + system).", (c.WORKER,), registry=r)
        # exported from the start, so alerts and dashboards see 0 rather than nothing; under
        # gunicorn the master counts "merge" faults in a series that needs no new disk block
        try:
            for component in ("guard", "merge") if r is None else ("guard",):
                self.internal_errors.labels(component)
            for signal in ("traces", "logs", c.ASSESSMENTS):
                self.telemetry_dropped.labels(signal)
        except OSError as exc:  # a full metrics disk: serve, and count once it has room
            guard.report_fault("metrics", exc)

_families_by_registry: weakref.WeakKeyDictionary[Any, Families] = weakref.WeakKeyDictionary()
_multiprocess_families: Families | None = None
_families_lock = threading.Lock()


def families_for(registry: CollectorRegistry | None, buckets: tuple[float, ...]) -> Families:
    """One Families per registry (and one in multiprocess mode), however many sinks."""
    global _multiprocess_families  # noqa: PLW0603 (one Families per process in multiprocess mode)
    with _families_lock:
        path = multiprocess_dir()
        if path and registry is None:
            if _multiprocess_families is None:
                # a worker that boots after the directory was deleted must still start
                os.makedirs(path, mode=0o700, exist_ok=True)
                use_multiprocess_values()
                _multiprocess_families = Families(None, buckets)
            return _multiprocess_families
        target = REGISTRY if registry is None else registry
        fams = _families_by_registry.get(target)
        if fams is None:
            fams = _families_by_registry[target] = Families(target, buckets)
            gpu = gpu_collector()
            if gpu is not None:
                target.register(gpu)
        return fams


_gpu: list[GpuCollector | None] = []


def gpu_collector() -> GpuCollector | None:
    """The NVML collector, looked for once per process; None without pynvml or a GPU."""
    if not _gpu:
        _gpu.append(make_gpu_collector())
    return _gpu[0]
