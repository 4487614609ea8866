"""The metrics sink: a finished RequestRecord becomes observations; ``/metrics`` reads them back.

Runs in every request (``start`` once the route is known, ``finish`` when the body is
closed). The families it writes are shared per registry (:mod:`mlmonitor.families`).
Label children are cached in plain dicts keyed by label tuples, so a request costs a
dict lookup and an increment, not label formatting. The children of every request are
updated through their value objects, as their own ``inc()`` and ``observe()`` do, without
the three nested calls of each (see ``_FAST``). With ``PROMETHEUS_MULTIPROC_DIR``
set, values go to prometheus-client's mmap files and the exposition aggregates every
worker through the checked multiprocess collector.

Exemplars (the trace and span id of a sampled request) go on the latency histograms, at most
one per bucket of a series every ``EXEMPLAR_INTERVAL``: through prometheus-client's own
``observe(v, exemplar)`` in one process, into this worker's exemplar file
(:mod:`mlmonitor.exemplars`) in multiprocess mode, where prometheus-client drops them.
"""
from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left
from collections.abc import Mapping
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from . import guard
from .config import MAX_OBSERVED, Settings, number_in
from .contract import (CLASS, CORRECT, ERROR_TYPE, HTTP_5XX, INCORRECT, INVALID_INPUT, LATENCY_THRESHOLD,
                       MODEL_NAME, MODEL_VERSION, OTHER, STAGE, UNMATCHED_ROUTE)
from .families import Families, LabelCap, clean_label, families_for, gpu_collector
from .exemplars import ExemplarFile, bucket_keys
from .lineage import lineage
from .multiprocess import (AdmittedValues, CheckedCollector, directory_lock, multiprocess_dir,
                           restore_deleted_files)
from .record import RequestRecord
from .reference import UNKNOWN_FEATURE
from .tokens import FEEDBACK_REASONS

__all__ = ["MetricsSink", "Families", "LabelCap", "clean_label", "families_for"]

PROCESS_UPDATE_INTERVAL = 5.0
EXEMPLAR_INTERVAL = 0.1
CHILD_CACHE_LIMIT = 4096


_warned_buckets: set[tuple[float, ...]] = set()

#: whether a child's inc() is its value's inc() after the observable check (a labelled child
#: always passes it) and observe() the sum's and the bucket's, with an exemplar the bucket's
#: set_exemplar() (probed: off if prometheus-client differs)
_FAST = ({"_raise_if_not_observable", "_value"} <= set(Counter.inc.__code__.co_names)
         and {"_raise_if_not_observable", "_is_most_recent", "_value"} <= set(Gauge.inc.__code__.co_names)
         and {"_raise_if_not_observable", "_sum", "_upper_bounds", "_buckets", "set_exemplar"}
         <= set(Histogram.observe.__code__.co_names))
#: a histogram child as the request path updates it: (child, upper bounds, bucket values, sum value,
#: each bucket's next due time for an exemplar)
Observer = tuple[Any, Any, Any, Any, list[float]]


def _counter(child: Any) -> Any:
    """What ``inc(1)`` is called on: the child's value, or the child itself."""
    return child._value if _FAST else child  # noqa: SLF001 (see _FAST)


def _observer(child: Any) -> Observer:
    if not _FAST:
        return child, None, None, None, [0.0]
    bounds = child._upper_bounds  # noqa: SLF001 (see _FAST)
    return child, bounds, child._buckets, child._sum, [0.0] * len(bounds)  # noqa: SLF001 (see _FAST)


def warn_if_buckets_miss_the_rules(buckets: tuple[float, ...]) -> bool:
    """One warning per process when the latency buckets lack the shipped rules' threshold:
    the slow-ratio rules read the bucket at that bound, so they would return nothing."""
    if any(abs(b - LATENCY_THRESHOLD) < 1e-9 for b in buckets) or buckets in _warned_buckets:
        return False
    _warned_buckets.add(buckets)
    logging.getLogger("mlmonitor").warning(
        "mlmonitor: buckets %s lack %s s, the latency bound of the shipped alert rules: the "
        "slow-ratio rules return nothing and MLModelLatencyBudgetBurn cannot fire; render rules "
        "for these buckets: mlmonitor alerts render --buckets '%s' --latency-p99 <one of them> "
        "--out-dir DIR", ",".join(map(str, buckets)), LATENCY_THRESHOLD,
        ",".join(map(str, buckets)))
    return True


class MetricsSink:
    """Turns finished records into observations and serves the exposition."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 references: Mapping[str, Any] | None = None) -> None:
        """``references``: model name -> reference profile, read at each use (a dict the
        middleware keeps filling as references are set)."""
        self.settings = settings
        #: the reference profile of a model, or None (the mapping's own ``get``: a C call)
        self.reference_for = (references if references is not None else {}).get
        self.multiprocess = bool(multiprocess_dir()) and registry is None
        self.registry = registry
        self.f = families_for(registry, settings.buckets)
        warn_if_buckets_miss_the_rules(settings.buckets)
        self.exemplars = settings.exemplars
        path = multiprocess_dir() if self.multiprocess else None
        #: this worker's exemplar file (multiprocess mode): None where prometheus-client keeps them
        self.exemplar_file = ExemplarFile(path) if path and self.exemplars else None
        self._exemplar_keys: dict[int, list[tuple[int, bytes] | None]] = {}  # id(child) -> per bucket
        limit = settings.max_label_values
        self._children: dict[Any, Any] = {}  # before the caps: a fault of theirs is counted here

        def cap(label: str, limit: int, preset: tuple[str, ...] = ()) -> LabelCap:
            return LabelCap(limit, preset, AdmittedValues(path, label) if path else None, self)

        self.cap_model = cap(MODEL_NAME, limit, (settings.model_name,))
        self.cap_version = cap(MODEL_VERSION, limit, (settings.model_version,))
        self.cap_error = cap(ERROR_TYPE, limit, (INVALID_INPUT, HTTP_5XX))
        self.cap_stage = cap(STAGE, limit)
        self.cap_class = cap(CLASS, max(limit, 50))
        self._http: dict[Any, Any] = {}
        self._gauges: dict[tuple[str, str], Any] = {}  # (method, route) -> in-progress value
        self._models: dict[Any, Any] = {}
        self._observers: dict[Any, Observer] = {}
        self._seen_models: set[tuple[str, str]] = set()
        self._process_next = 0.0
        self._process_cpu_last = 0.0
        self.worker = os.environ.get("MLMONITOR_WORKER_SLOT", "0")
        self._process_pid = os.getpid()
        # no model is marked here: a model's info series appears once a view declares it
        # (Recorder.declare_model) or a prediction is charged to it, never for a
        # default model that nothing serves

    # -- label children, cached -------------------------------------------------
    def child(self, family: Any, *labels: str) -> Any:
        key = (id(family),) + labels
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*labels)
        return found

    def model_labels(self, name: str, version: str) -> tuple[str, str]:
        return self.cap_model(name), self.cap_version(version)

    def mark_model(self, name: str, version: str) -> tuple[str, str]:
        labels = self.model_labels(name, version)
        if labels not in self._seen_models:
            self.child(self.f.model_info, *labels, *lineage(name, version)).set(1)
            self._seen_models.add(labels)  # after the write: a full disk retries next time
            self.child(self.f.predictions, *labels)  # exported at 0 before the first request
            self.export_reference(labels, name)
        return labels

    def reference_added(self, model_name: str) -> None:
        """A model got its reference: export it for the versions already served."""
        for labels in list(self._seen_models):
            if labels[0] == model_name:
                self.export_reference(labels, model_name)

    def export_reference(self, labels: tuple[str, str], model_name: str) -> None:
        """The reference's shares, per served version, for the drift rules to join with.

        The live counters are created at 0 beside them: a series first seen at 1
        loses that count in ``rate()``.
        """
        profile = self.reference_for(model_name)
        if profile is None or OTHER in labels:
            return
        for feature, bin_label, share in profile.reference_ratios():
            self.f.feature_reference_ratio.labels(*labels, feature, bin_label).set(share)
            self.child(self.f.feature_bin, *labels, feature, bin_label)
        for cls, share in profile.class_ratios():
            self.f.reference_class_ratio.labels(*labels, cls).set(share)
            self.child(self.f.predicted_class, *labels, cls)
        if profile.accuracy is not None:
            self.f.reference_accuracy.labels(*labels).set(profile.accuracy)
        for bin_label, share in profile.output_ratios():
            self.f.prediction_reference_ratio.labels(*labels, bin_label).set(share)
            self.child(self.f.prediction_bin, *labels, bin_label)
        if profile.mae is not None:
            self.f.reference_absolute_error.labels(*labels).set(profile.mae)
        if profile.regression:
            self.child(self.f.feedback_absolute_error, *labels)
        else:
            for outcome in (CORRECT, INCORRECT):
                self.child(self.f.feedback, *labels, outcome)
        self.child(self.f.feature_unknown, *labels)

    def observe(self, labels: tuple[str, str], profile: Any, features: Any, prediction: Any,
                score: Any, tokens_in: Any, tokens_out: Any, cost: Any) -> None:
        """Model-quality facts of one instance; values that cannot count are ignored.

        Features: a reference feature absent from the mapping counts as missing; a name the
        reference does not know counts in the unknown counter (no name label) and is logged
        once per process (the first ``MAX_UNKNOWN_LOGGED`` names).
        """
        if features is not None and profile is not None:
            items = features.items() if hasattr(features, "items") else ()
            known = 0
            for feature, value in items:
                bin_label = profile.bin_of(feature, value)
                if bin_label is UNKNOWN_FEATURE:
                    self.child(self.f.feature_unknown, *labels).inc()
                    _warn_unknown(feature, labels)
                    continue  # not in the reference: no label is made for it
                known += 1
                if bin_label is None:
                    self.child(self.f.feature_missing, *labels, feature).inc()
                else:
                    self.child(self.f.feature_bin, *labels, feature, bin_label).inc()
            if known < len(profile.features):
                for feature in profile.features:
                    if feature not in features:
                        self.child(self.f.feature_missing, *labels, feature).inc()
        if prediction is not None:
            if profile is not None and profile.regression:
                bin_label = profile.output_bin_of(prediction)
                if bin_label is not None:
                    self.child(self.f.prediction_bin, *labels, bin_label).inc()
            else:
                cls = (profile.class_of(prediction) if profile is not None
                       else self.cap_class(str(prediction)[:64]))
                self.child(self.f.predicted_class, *labels, cls).inc()
        if number_in(score, 0.0, 1.0):
            self.child(self.f.prediction_score, *labels).observe(float(score))
        if number_in(tokens_in, 0.0, MAX_OBSERVED):
            self.child(self.f.tokens, *labels, "input").inc(float(tokens_in))
        if number_in(tokens_out, 0.0, MAX_OBSERVED):
            self.child(self.f.tokens, *labels, "output").inc(float(tokens_out))
        if number_in(cost, 0.0, MAX_OBSERVED):
            self.child(self.f.cost, *labels).inc(float(cost))

    def count_feedback(self, model_name: str, model_version: str, outcome: str) -> None:
        labels = self.mark_model(model_name, model_version)
        self.child(self.f.feedback, *labels, outcome).inc()

    def count_absolute_error(self, model_name: str, model_version: str, error: float) -> None:
        labels = self.mark_model(model_name, model_version)
        self.child(self.f.feedback_absolute_error, *labels).observe(error)

    def count_feedback_rejected(self, reason: str) -> None:
        self.child(self.f.feedback_rejected, reason if reason in FEEDBACK_REASONS else "malformed").inc()

    # -- per request ------------------------------------------------------------
    def start(self, rec: RequestRecord) -> None:
        """Count the request as in progress once its route is known; ``rec.in_progress`` is
        then what ``inc(-1)`` takes it back on (the gauge child's value, or the child)."""
        route = rec.route
        if route is not None and rec.in_progress is None:
            key = (rec.method, route)
            gauge = self._gauges.get(key)
            if gauge is None:
                gauge = _counter(self.child(self.f.in_progress, *key))
                if len(self._gauges) < CHILD_CACHE_LIMIT:
                    self._gauges[key] = gauge
            gauge.inc(1)
            rec.in_progress = gauge

    def finish(self, rec: RequestRecord) -> None:
        """The body is closed: count the request, its prediction and its observations."""
        gauge = rec.in_progress
        if gauge is not None:
            gauge.inc(-1)
            rec.in_progress = None
        sampled = self.exemplars and rec.sampled
        key = (rec.method, rec.route or UNMATCHED_ROUTE, rec.status_code or 500)
        http = self._http.get(key)
        if http is None:
            http = self._http_children(key)
        counter, observer = http
        _child, bounds, buckets, total, due = observer
        counter.inc(1)
        seconds = rec.duration
        # child.observe(seconds) written out, here and below (see _FAST): the first bucket whose
        # bound is >= seconds, and the sum; NaN falls to observe(), no bucket. A sampled
        # request whose bucket is due for an exemplar takes the longer way.
        if bounds is None or seconds != seconds:
            self.histogram(observer, seconds, rec if sampled else None)
        else:
            i = bisect_left(bounds, seconds)
            if sampled and rec.start >= due[i]:
                self.exemplar(observer, i, seconds, rec)
            else:
                total.inc(seconds)
                buckets[i].inc(1)
        if rec.is_prediction:
            model_key = (rec.model_name, rec.model_version)
            model = self._models.get(model_key)
            if model is None:
                model = self._model_children(model_key)
            labels, counter, observer = model
            _child, bounds, buckets, total, due = observer
            counter.inc(1)
            if rec.error_type:
                self.child(self.f.prediction_errors, *labels, self.cap_error(rec.error_type)).inc()
            if rec.prediction_seconds is not None:
                seconds = rec.prediction_seconds
            if bounds is None or seconds != seconds:
                self.histogram(observer, seconds, rec if sampled else None)
            else:
                i = bisect_left(bounds, seconds)
                if sampled and rec.start >= due[i]:
                    self.exemplar(observer, i, seconds, rec)
                else:
                    total.inc(seconds)
                    buckets[i].inc(1)
            if rec.first_chunk is not None:
                self.histogram(self.observer(self.f.time_to_first_chunk, *labels), rec.first_chunk,
                               rec if sampled else None)
            for stage, stage_seconds in rec.stages:
                self.histogram(self.observer(self.f.stage_duration, *labels, self.cap_stage(stage)),
                               stage_seconds, rec if sampled else None)
            if rec.observations:
                profile = self.reference_for(rec.model_name)
                for observation in rec.observations:
                    self.observe(labels, profile, *observation)
        if rec.start > self._process_next:
            self.update_process()

    # -- histograms and their exemplars -------------------------------------------
    def observer(self, family: Any, *labels: str) -> Observer:
        key = (id(family),) + labels
        found = self._observers.get(key)
        if found is None:
            found = self._observers[key] = _observer(self.child(family, *labels))
        return found

    def histogram(self, observer: Observer, seconds: float, rec: RequestRecord | None) -> None:
        """``observe(seconds)``, with an exemplar of ``rec`` (a sampled request) if its bucket is due."""
        child, bounds, buckets, total, due = observer
        if bounds is None or seconds != seconds:  # NaN: observe() takes it, in no bucket
            if rec is not None and seconds == seconds and rec.start >= due[0]:
                self.exemplar(observer, 0, seconds, rec)
            else:
                child.observe(seconds)
            return
        i = bisect_left(bounds, seconds)
        if rec is not None and rec.start >= due[i]:
            self.exemplar(observer, i, seconds, rec)
        else:
            total.inc(seconds)
            buckets[i].inc(1)

    def exemplar(self, observer: Observer, i: int, seconds: float, rec: RequestRecord) -> None:
        """Observe with an exemplar in bucket ``i``; the next one there is due in EXEMPLAR_INTERVAL
        (Prometheus keeps one a bucket a scrape: a few a second are plenty)."""
        child, bounds, buckets, total, due = observer
        due[i] = rec.start + EXEMPLAR_INTERVAL
        file = self.exemplar_file
        if bounds is None:
            child.observe(seconds, None if file else {"trace_id": rec.trace_id, "span_id": rec.span_id})
            return
        total.inc(seconds)  # first: a fault of the exemplar's never costs the count
        buckets[i].inc(1)
        if file is None:  # observe(seconds, exemplar) without checking our own two hex labels again
            buckets[i].set_exemplar(Exemplar({"trace_id": rec.trace_id, "span_id": rec.span_id}, seconds,
                                             time.time()))
            return
        if file.failed or not rec.trace_id:
            return
        try:
            keys = self._exemplar_keys.get(id(child))
            if keys is None:
                labels = dict(zip(child._labelnames, child._labelvalues, strict=True))  # noqa: SLF001 (see _FAST)
                keys = self._exemplar_keys[id(child)] = bucket_keys(
                    child._name, labels, [floatToGoString(b) for b in bounds])  # noqa: SLF001 (see _FAST)
            key = keys[i]
            if key is not None:
                file.write(key[0], key[1], rec.trace_id, rec.span_id, seconds)
        except Exception as exc:  # e.g. a full disk when the file is made: one fault, then no more
            file.failed = True  # exemplars in this worker; its counts go on
            guard.report_fault("exemplars", exc, self)

    def _http_children(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        method, route, code = key
        status = str(code)
        children = (_counter(self.child(self.f.http_requests, method, route, status)),
                    _observer(self.child(self.f.http_duration, method, route, status)))
        if len(self._http) < CHILD_CACHE_LIMIT:
            self._http[key] = children
        return children

    def _model_children(self, key: tuple[str, str]) -> tuple[Any, Any, Any]:
        labels = self.mark_model(*key)
        children = (labels, _counter(self.child(self.f.predictions, *labels)),
                    _observer(self.child(self.f.prediction_duration, *labels)))
        if len(self._models) < CHILD_CACHE_LIMIT and len(key[0]) + len(key[1]) <= 256:
            self._models[key] = children  # raw values: a hostile 1 MB version is never kept
        return children

    def count_fault(self, component: str) -> None:
        self.child(self.f.internal_errors, component[:64]).inc()

    def count_dropped(self, signal: str, amount: int = 1) -> None:
        self.child(self.f.telemetry_dropped, signal).inc(amount)

    # -- process metrics per worker slot ------------------------------------------
    def update_process(self) -> None:
        self._process_next = time.perf_counter() + PROCESS_UPDATE_INTERVAL
        if self.multiprocess:
            restore_deleted_files()
            if self.exemplar_file is not None:
                self.exemplar_file.reopen_if_gone()
        if self._process_pid != os.getpid():  # made before a fork (gunicorn --preload)
            self._process_pid = os.getpid()
            self.worker = os.environ.get("MLMONITOR_WORKER_SLOT", "0")  # set by post_fork
            self._process_cpu_last = 0.0  # a forked child's CPU times start at zero
        times = os.times()
        cpu = times.user + times.system
        if cpu > self._process_cpu_last:
            self.child(self.f.process_cpu, self.worker).inc(cpu - self._process_cpu_last)
            self._process_cpu_last = cpu
        rss = _resident_memory()
        if rss:
            self.child(self.f.process_memory, self.worker).set(rss)

    # -- exposition -------------------------------------------------------------
    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The text (or OpenMetrics) exposition; every worker's values in multiprocess mode."""
        try:
            self.update_process()
        except Exception as exc:  # e.g. a full disk: the other files still answer
            guard.report_fault("metrics", exc, self)
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        if self.multiprocess:
            path = multiprocess_dir()
            if not path or not os.path.isdir(path):
                raise FileNotFoundError(f"multiprocess directory {path} is gone")  # -> 503
            registry = CollectorRegistry()
            registry.register(CheckedCollector(path, exemplars=self.exemplars and openmetrics))
            gpu = gpu_collector()
            if gpu is not None:
                registry.register(gpu)
            with directory_lock(path, exclusive=False):  # not while a dead worker is merged
                return encoder(registry), content_type
        registry = REGISTRY if self.registry is None else self.registry
        return encoder(registry), content_type


MAX_UNKNOWN_LOGGED = 100
_unknown_logged: set[tuple[str, str]] = set()


def _warn_unknown(feature: Any, labels: tuple[str, str]) -> None:
    """Log an unknown feature name once per process and model (at most MAX_UNKNOWN_LOGGED)."""
    key = (labels[0], str(feature)[:128])
    if key in _unknown_logged or len(_unknown_logged) >= MAX_UNKNOWN_LOGGED:
        return
    _unknown_logged.add(key)
    logging.getLogger("mlmonitor").warning(
        "mlmonitor: feature %r is not in the reference of model %r (a renamed column?); "
        "counted in the unknown-feature counter, not binned", key[1], key[0])


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident_memory() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0
