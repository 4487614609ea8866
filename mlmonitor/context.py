"""Helpers called inside a request: stages, tags, the model version, observations.

They find the request through a context variable, so they work the same under
the Flask extension and under the bare WSGI middleware, and do nothing outside
a request. None of them ever raises into the app because of mlmonitor.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from . import guard
from .record import MAX_TAGS, RequestRecord, current_record

__all__ = ["Stage", "stage", "tag", "set_model_version", "observe", "observe_batch",
           "prediction_id", "prediction_ids", "record_feedback", "annotate_borrowed",
           "MAX_OBSERVATIONS"]

_perf = time.perf_counter


class Stage:
    """``with stage("inference"):`` times a block and opens a child span."""

    __slots__ = ("name", "rec", "span", "token", "started")

    def __init__(self, name: str) -> None:
        self.name = str(name)[:64]
        self.rec: Optional[RequestRecord] = None
        self.span: Any = None
        self.token: Any = None

    def __enter__(self) -> "Stage":
        rec = self.rec = current_record()
        if rec is not None:
            traces = rec.middleware.traces
            if traces is not None and rec.span is not None:
                try:  # every stage: a try, not guarded()
                    self.span = traces.stage_span(self.name)
                    self.token = otel_context.attach(trace.set_span_in_context(self.span))
                except Exception as exc:
                    guard.report_fault("traces", exc, rec.middleware)
        self.started = _perf()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        seconds = _perf() - self.started
        rec = self.rec
        if rec is not None:
            rec.stages.append((self.name, seconds))
        if self.span is not None:
            try:
                if self.token is not None:
                    otel_context.detach(self.token)
                if exc is not None:
                    self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    self.span.set_attribute("error.type", type(exc).__qualname__)
                self.span.end()
            except Exception as fault:
                guard.report_fault("traces", fault, rec.middleware if rec is not None else None)
        return False  # the app's exception goes on untouched


def stage(name: str) -> Stage:
    return Stage(name)


def annotate_borrowed(rec: RequestRecord) -> None:
    """Copy model and tags onto a span another instrumentation owns, if there is one."""
    traces = rec.middleware.traces
    if traces is not None and rec.span is not None and not rec.own_span:
        try:  # after every prediction when the span is borrowed: a try, not guarded()
            traces.annotate_borrowed(rec)
        except Exception as exc:
            guard.report_fault("traces", exc, rec.middleware)


def tag(**tags: Any) -> None:
    """Add searchable context to this request's log line and span (never a metric label)."""
    rec = current_record()
    if rec is None:
        return
    with guard.guarded("tag", rec.middleware):
        for key, value in tags.items():
            if key in rec.tags or len(rec.tags) < MAX_TAGS:
                rec.tags[key] = value
    annotate_borrowed(rec)


def set_model_version(version: Any, model_name: Optional[str] = None) -> None:
    """Say which model version answers this request (canary, A/B, shadow)."""
    rec = current_record()
    if rec is None:
        return
    with guard.guarded("model_version", rec.middleware):
        rec.middleware.begin_prediction(rec, model_name or rec.model_name or None, version)


def observe(features: Any = None, prediction: Any = None, score: Any = None,
            tokens_in: Any = None, tokens_out: Any = None, cost: Any = None) -> None:
    """Model-quality facts of this request's prediction, counted when the request ends.

    ``features`` (a mapping) are binned by the model's reference profile;
    ``prediction`` feeds the class distribution, ``score`` (0..1) the score
    histogram; ``tokens_in``/``tokens_out``/``cost`` the LLM counters.
    """
    rec = current_record()
    if rec is None or len(rec.observations) >= MAX_OBSERVATIONS:
        return
    rec.observations.append((features, prediction, score, tokens_in, tokens_out, cost))


def observe_batch(features: Any = None, predictions: Any = None, scores: Any = None) -> None:
    """:func:`observe` for each instance of a batch (sequences of equal length)."""
    rec = current_record()
    if rec is None:
        return
    with guard.guarded("observe", rec.middleware):
        rows = list(features) if features is not None else []
        preds = list(predictions) if predictions is not None else []
        confidences = list(scores) if scores is not None else []
        for i in range(max(len(rows), len(preds), len(confidences))):
            observe(features=rows[i] if i < len(rows) else None,
                    prediction=preds[i] if i < len(preds) else None,
                    score=confidences[i] if i < len(confidences) else None)


def prediction_ids(predictions: Any) -> list:
    """Signed ids, one per prediction, that carry model, version and class (see record_feedback)."""
    rec = current_record()
    if rec is None:
        raise RuntimeError("prediction_ids() is called inside a prediction request")
    feedback = rec.middleware.feedback
    return [feedback.sign(rec.model_name or rec.middleware.settings.model_name,
                          rec.model_version or rec.middleware.settings.model_version, p)
            for p in predictions]


def prediction_id(prediction: Any) -> str:
    return prediction_ids([prediction])[0]


def record_feedback(prediction_id: str, label: Any, middleware: Any = None) -> str:
    """Count ground truth for a signed prediction id; returns "correct" or "incorrect".

    Works on any worker or replica sharing the feedback secret. Raises
    ``mlmonitor.tokens.InvalidFeedback`` (a ValueError) for a bad, expired or
    duplicate id, after counting it in ``mlmonitor_feedback_rejected_total``.
    """
    if middleware is None:
        rec = current_record()
        if rec is None:
            raise RuntimeError("record_feedback() outside a request needs middleware=")
        middleware = rec.middleware
    return middleware.feedback.record(prediction_id, label)


MAX_OBSERVATIONS = 1024
