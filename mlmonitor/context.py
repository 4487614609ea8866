"""Helpers called inside a request: stages, tags, the model version, observations.

They find the request through a context variable, so they work the same under
the Flask extension and under the bare WSGI middleware, and do nothing outside
a request. None of them ever raises into the app because of mlmonitor.
"""
from __future__ import annotations

import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from . import guard
from .record import MAX_TAGS, RECORD_VAR, RequestRecord
from .traces import link_feedback

if TYPE_CHECKING:  # the type only: these helpers reach the engine through the record
    from .engine import Recorder

__all__ = ["Stage", "stage", "tag", "set_model_version", "observe", "observe_batch",
           "prediction_id", "prediction_ids", "record_feedback", "annotate_borrowed",
           "MAX_OBSERVATIONS"]

_perf = time.perf_counter


class Stage:
    """``with stage("inference"):`` times a block and opens a child span (or, with
    ``stage_spans="events"``, adds an event to the server span when the block ends)."""

    __slots__ = ("event", "name", "rec", "span", "started", "token")

    def __init__(self, name: str) -> None:
        self.name = str(name)[:64]
        self.rec: RequestRecord | None = None
        self.span: Any = None
        self.token: Any = None
        self.event = False

    def __enter__(self) -> Self:
        rec = self.rec = RECORD_VAR.get()
        if rec is not None:
            traces = rec.recorder.traces
            if traces is not None and rec.span is not None:
                if traces.stage_events:
                    self.event = True  # no span, no context: the event is added in __exit__
                else:
                    try:  # every stage: a try, not guarded()
                        self.span = traces.stage_span(self.name)
                        self.token = otel_context.attach(trace.set_span_in_context(self.span))
                    except Exception as exc:
                        guard.report_fault("traces", exc, rec.recorder)
        self.started = _perf()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        seconds = _perf() - self.started
        rec = self.rec
        if rec is not None:
            rec.stages.append((self.name, seconds))
            if self.event:
                try:  # stamped from the span's start: one clock for the span and its events
                    start_ns = rec.start_ns + int((self.started - rec.start) * 1e9)
                    traces = rec.recorder.traces
                    if traces is not None:  # it was when the stage began (self.event)
                        traces.stage_event(rec.span, self.name, start_ns, seconds, exc)
                except Exception as fault:
                    guard.report_fault("traces", fault, rec.recorder)
        if self.span is not None:
            try:
                # not where it was attached (a generator's stage across a yield, resumed by a
                # thread pool in a fresh copy of the context): nothing to undo there
                if self.token is not None and trace.get_current_span() is self.span:
                    otel_context.detach(self.token)
                if exc is not None:
                    self.span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    self.span.set_attribute("error.type", type(exc).__qualname__)
                self.span.end()
            except Exception as fault:
                guard.report_fault("traces", fault, rec.recorder if rec is not None else None)
        return False  # the app's exception goes on untouched


def stage(name: str) -> Stage:
    """A :class:`Stage`: times a block as one stage of this request."""
    return Stage(name)


def annotate_borrowed(rec: RequestRecord) -> None:
    """Copy model and tags onto a span another instrumentation owns, if there is one."""
    traces = rec.recorder.traces
    if traces is not None and rec.span is not None and not rec.own_span:
        try:  # after every prediction when the span is borrowed: a try, not guarded()
            traces.annotate_borrowed(rec)
        except Exception as exc:
            guard.report_fault("traces", exc, rec.recorder)


def tag(**tags: Any) -> None:
    """Add searchable context to this request's log line and span (never a metric label)."""
    rec = RECORD_VAR.get()
    if rec is None:
        return
    with guard.guarded("tag", rec.recorder):
        for key, value in tags.items():
            if key in rec.tags or len(rec.tags) < MAX_TAGS:
                rec.tags[key] = value
    annotate_borrowed(rec)


def set_model_version(model_version: Any, *, model_name: str | None = None) -> None:
    """Say which model (and version) answers this request: canary, A/B, shadow, or a server of
    several models, e.g. ``set_model_version("v3", model_name=name)`` in a view serving
    ``/v1/models/<name>:predict``. Call it before ``observe`` so the right reference is used.

    ``model_name`` is keyword-only, as in ``@monitor.prediction``."""
    rec = RECORD_VAR.get()
    if rec is None:
        return
    with guard.guarded("model_version", rec.recorder):
        rec.recorder.begin_prediction(rec, model_name or rec.model_name or None, model_version)


def _plain(values: Any) -> list[Any]:
    """A list of plain values from a list, tuple, 1-D numpy array or pandas Series."""
    if values is None:
        return []
    if hasattr(values, "tolist"):
        values = values.tolist()  # numpy scalars become Python numbers
        return values if isinstance(values, list) else [values]
    if isinstance(values, (str, bytes, dict)):
        return [values]
    return list(values)


def _names(feature_names: Any, rec: RequestRecord) -> Any:
    """Column names: those given, else the model's reference profile's feature order."""
    if feature_names is not None:
        return [str(n) for n in feature_names]
    recorder = rec.recorder
    profile = recorder.references.get(rec.model_name or recorder.settings.model_name)
    return profile.features if profile is not None else None


def _feature_rows(features: Any, feature_names: Any, rec: RequestRecord, single: bool) -> list[Any]:
    """Rows as dicts from a dict, rows of dicts, a 2-D array, rows of values, a DataFrame or a
    Series; a row whose columns have no names is ``{}`` (its reference features count missing)."""
    if features is None:
        return []
    if isinstance(features, dict):
        return [features]
    columns = getattr(features, "columns", None)
    if columns is not None and hasattr(features, "itertuples"):  # a pandas DataFrame
        keys = [str(c) for c in columns]
        return [dict(zip(keys, row, strict=False)) for row in features.itertuples(index=False, name=None)]
    if hasattr(features, "index") and hasattr(features, "to_dict"):  # a pandas Series: one row
        return [{str(k): v for k, v in features.to_dict().items()}]
    if hasattr(features, "keys") and hasattr(features, "items"):  # another mapping
        return [dict(features.items())]
    rows = _plain(features)
    if single or (rows and not _is_row(rows[0])):
        rows = [rows]  # one row of values (a 1-D array, a flat list)
    names: Any = None
    out = []
    for row in rows:
        if isinstance(row, dict) or hasattr(row, "items"):
            out.append(row)
            continue
        if names is None:
            names = _names(feature_names, rec) or ()
        out.append(dict(zip(names, _plain(row), strict=False)) if names and _is_row(row) else {})
    return out


def _is_row(value: Any) -> bool:
    return isinstance(value, (list, tuple, dict)) or hasattr(value, "items") or (
        hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1)


def observe(features: Any = None, prediction: Any = None, score: Any = None,
            tokens_in: Any = None, tokens_out: Any = None, cost: Any = None,
            feature_names: Any = None) -> None:
    """Model-quality facts of this request's prediction, counted when the request ends.

    ``features`` (a mapping, a pandas Series, or a row of values named by ``feature_names`` or
    else the reference's feature order) are binned by the model's reference profile;
    ``prediction`` feeds the class distribution (or, for a regression reference, the output
    bins), ``score`` (0..1) the score histogram; ``tokens_in``/``tokens_out``/``cost`` the LLM
    counters.
    """
    rec = RECORD_VAR.get()
    if rec is None or len(rec.observations) >= MAX_OBSERVATIONS:
        return
    if features is not None and type(features) is not dict:
        try:
            rows = _feature_rows(features, feature_names, rec, single=True)
            features = rows[0] if rows else None
        except (TypeError, ValueError, LookupError):  # unreadable: its features count missing
            features = {}
        except Exception as exc:
            guard.report_fault("observe", exc, rec.recorder)
            features = {}
    if prediction is not None and hasattr(prediction, "item") and getattr(prediction, "size", 0) == 1:
        prediction = prediction.item()  # a numpy scalar
    rec.observations.append((features, prediction, score, tokens_in, tokens_out, cost))


def observe_batch(features: Any = None, predictions: Any = None, scores: Any = None,
                  feature_names: Any = None) -> None:
    """:func:`observe` for each instance of a batch.

    ``features``: rows as dicts, a 2-D numpy array or rows of values (columns named by
    ``feature_names`` or else the reference's feature order), or a pandas DataFrame (its
    columns). ``predictions`` and ``scores``: lists, 1-D arrays or Series. Each part is read
    on its own: one that cannot be read is left out, the others still count.
    """
    rec = RECORD_VAR.get()
    if rec is None:
        return
    parts: list[Any] = []
    for kind, values in (("features", features), ("predictions", predictions), ("scores", scores)):
        try:
            if kind == "features":
                parts.append(_feature_rows(values, feature_names, rec, single=False))
            else:
                parts.append(_plain(values))
        except (TypeError, ValueError, LookupError):  # unreadable: left out, the rest counts
            parts.append(None)
        except Exception as exc:
            guard.report_fault("observe", exc, rec.recorder)
            parts.append(None)
    rows, preds, confidences = (part or [] for part in parts)
    if parts[0] is None:  # features given but unreadable: each instance's features count missing
        rows = [{}] * max(len(preds), len(confidences), 1)
    with guard.guarded("observe", rec.recorder):
        for i in range(max(len(rows), len(preds), len(confidences))):
            if len(rec.observations) >= MAX_OBSERVATIONS:
                return
            rec.observations.append((rows[i] if i < len(rows) else None,
                                     preds[i] if i < len(preds) else None,
                                     confidences[i] if i < len(confidences) else None,
                                     None, None, None))


def prediction_ids(predictions: Any) -> list[str]:
    """Signed ids, one per prediction, that carry model, version and class (see record_feedback).

    Called inside a request that mlmonitor serves (a ``Monitor`` or a ``MonitorMiddleware``);
    RuntimeError outside one."""
    rec = RECORD_VAR.get()
    if rec is None:
        raise RuntimeError("prediction_ids() is called inside a request mlmonitor serves")
    recorder = rec.recorder
    settings = recorder.settings
    # a sampled span's ids ride in the id, for feedback to link to; an unsampled id stays short
    context = (rec.trace_id, rec.span_id) if rec.sampled and rec.trace_id else None
    return [recorder.feedback.sign(rec.model_name or settings.model_name,
                                   rec.model_version or settings.model_version, p, context)
            for p in predictions]


def prediction_id(prediction: Any) -> str:
    """The signed id of one prediction (see :func:`prediction_ids`)."""
    return prediction_ids([prediction])[0]


def record_feedback(prediction_id: str, label: Any, *, middleware: Any = None) -> str | float:
    """Count ground truth for a signed prediction id; returns "correct" or "incorrect", or for
    a model whose reference is a regression the absolute error (a float, at most ``MAX_OBSERVED``).

    Works on any worker or replica sharing the feedback secret. Raises
    ``mlmonitor.tokens.InvalidFeedback`` (a ValueError) for a bad, expired or duplicate id
    and for a label that cannot be counted (``bad_label``: for a regression, anything but a
    finite number within ``MAX_OBSERVED``), after counting it in
    ``mlmonitor_feedback_rejected_total{reason}``. ``middleware``, needed outside a request:
    the app's ``MonitorMiddleware`` or ``MonitorASGIMiddleware``, or its ``Recorder``.
    """
    rec = RECORD_VAR.get()
    if middleware is None:
        if rec is None:
            raise RuntimeError("record_feedback() outside a request needs middleware=")
        recorder: Recorder = rec.recorder
    else:  # a MonitorMiddleware or MonitorASGIMiddleware, or a Recorder itself
        recorder = getattr(middleware, "recorder", middleware)
    facts, result = recorder.feedback.check(prediction_id, label)
    if rec is not None:  # only a verified, first-seen id gets here: a forged or replayed one raised
        rec.prediction_trace_id = facts.trace_id
        with guard.guarded("traces", rec.recorder):
            link_feedback(rec.span, facts.trace_id, facts.span_id, result)
    return result


MAX_OBSERVATIONS = 1024
