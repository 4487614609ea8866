"""RequestRecord: what one request carried, filled as it goes, read by the three sinks.

The record lives in ``environ["mlmonitor.request"]`` and in a context variable
while the app runs and while each chunk of its body is produced and the body
closed (a streamed response), so helpers such as ``monitor.stage()`` find it
without Flask. The app reads it through :func:`current_record` (a read-only view),
:func:`request_id` and :func:`trace_id`; only mlmonitor writes to it.
"""
from __future__ import annotations

import contextvars
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .contract import CLIENT_CLOSED, HTTP_5XX, INVALID_INPUT, OTHER, UNMATCHED_ROUTE

if TYPE_CHECKING:  # the engine imports this module: the link is typed, not imported
    from .engine import Recorder

__all__ = ["ENVIRON_KEY", "KNOWN_METHODS", "MAX_TAGS", "OTHER", "UNMATCHED_ROUTE", "RequestRecord",
           "RecordView", "current_record", "request_id", "trace_id", "error_type_of", "stage_totals"]

ENVIRON_KEY = "mlmonitor.request"

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
#: tags a request keeps (``monitor.tag()``), and so span attributes made of them
MAX_TAGS = 32

#: the record of the request served in this context: set by the engine (``Recorder.enter``) and
#: the streamed body, read by the in-request helpers and the framework layers
RECORD_VAR: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "mlmonitor_request", default=None)


def current_record() -> RecordView | None:
    """A read-only view of the request being served in this context, or None outside one.

    The view reads the live record (a tag added later shows), but cannot change it: use
    ``tag()``, ``set_model_version()`` and ``observe()`` for that.
    """
    rec = RECORD_VAR.get()
    if rec is None:
        return None
    view = rec.view
    if view is None:
        view = rec.view = RecordView(rec)
    return view


def request_id() -> str | None:
    """The id of the request being served (its ``X-Request-ID``), or None outside one."""
    rec = RECORD_VAR.get()
    return rec.request_id or None if rec is not None else None


def trace_id() -> str | None:
    """The trace id of the request being served (32 hex digits), or None outside one or when
    it has no trace."""
    rec = RECORD_VAR.get()
    return rec.trace_id or None if rec is not None else None


class RequestRecord:
    """Facts about one request. Plain slots: cheap to create, cheap to read.

    ``recorder``: the :class:`~mlmonitor.engine.Recorder` that began it (settings, sinks,
    references), which the in-request helpers and the framework layers report to."""

    __slots__ = (
        "duration",
        "environ",
        "error_detail",
        "error_type",
        "exc",
        "excluded",
        "finished",
        "first_chunk",
        "gone_at",
        "in_progress",
        "is_prediction",
        "method",
        "model_name",
        "model_version",
        "observations",
        "own_span",
        "path",
        "prediction_seconds",
        "prediction_trace_id",
        "query",
        "recorder",
        "request_id",
        "route",
        "sampled",
        "span",
        "span_id",
        "stages",
        "start",
        "start_ns",
        "status_code",
        "tags",
        "trace_id",
        "view",
    )

    def __init__(self, environ: dict[str, Any], method: str, start: float, start_ns: int,
                 recorder: Recorder | None = None) -> None:
        self.environ = environ
        # None only for a record handed to a sink directly (a sink's own tests)
        self.recorder: Recorder = recorder  # type: ignore[assignment]
        self.method = method
        self.start = start
        self.start_ns = start_ns
        self.duration = 0.0
        self.path = environ.get("PATH_INFO", "") or "/"
        self.query = environ.get("QUERY_STRING", "")
        self.route: str | None = None
        self.status_code = 0
        self.request_id = ""
        self.trace_id = ""
        self.span_id = ""
        self.span: Any = None
        self.sampled = False
        self.own_span = False
        self.is_prediction = False
        self.model_name = ""
        self.model_version = ""
        self.prediction_seconds: float | None = None
        #: a feedback request: the trace id of the prediction it judges ("" if none)
        self.prediction_trace_id = ""
        #: what an excluded URL leaves this request out of (engine's NO_SPAN | NO_LOG | NO_METRICS)
        self.excluded = 0
        self.stages: list[tuple[str, float]] = []
        self.exc: BaseException | None = None
        self.error_type: str | None = None
        self.tags: dict[str, Any] = {}
        self.observations: list[Any] = []
        self.finished = False
        self.in_progress: Any = None
        self.error_detail: tuple[str, str] | None = None
        #: a streamed response: seconds from the start to its first non-empty chunk
        self.first_chunk: float | None = None
        self.view: RecordView | None = None
        #: the client went away: the status chosen by then (0: none yet); None: it did not
        self.gone_at: int | None = None


class RecordView:
    """What the app may read of its request's record; setting an attribute raises AttributeError."""

    __slots__ = ("_rec",)

    def __init__(self, rec: RequestRecord) -> None:
        object.__setattr__(self, "_rec", rec)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"the request record is read-only ({name!r}); use mlmonitor.tag(), "
                             "set_model_version() or observe()")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    request_id = property(lambda self: self._rec.request_id)
    trace_id = property(lambda self: self._rec.trace_id)
    span_id = property(lambda self: self._rec.span_id)
    method = property(lambda self: self._rec.method)
    path = property(lambda self: self._rec.path)
    route = property(lambda self: self._rec.route)
    status_code = property(lambda self: self._rec.status_code)
    is_prediction = property(lambda self: self._rec.is_prediction)
    model_name = property(lambda self: self._rec.model_name)
    model_version = property(lambda self: self._rec.model_version)
    #: the tags so far, as a read-only mapping
    tags = property(lambda self: MappingProxyType(self._rec.tags))
    #: the stages timed so far, as ``((name, seconds), ...)``
    stages = property(lambda self: tuple(self._rec.stages))

    def __repr__(self) -> str:
        return f"<RecordView {self.method} {self.path} request_id={self.request_id!r}>"


def stage_totals(stages: list[tuple[str, float]]) -> tuple[dict[str, float], dict[str, int]]:
    """Each stage's seconds summed over its blocks (in first-entered order), and how many blocks
    the repeated ones had: what the stage histogram holds, for the log line and the span."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name, seconds in stages:
        if name in totals:
            totals[name] += seconds
            counts[name] = counts.get(name, 1) + 1
        else:
            totals[name] = seconds
    return totals, counts


def error_type_of(rec: RequestRecord) -> str | None:
    """The ``error_type`` of a finished request: the exception class, ``http_5xx``, or
    ``invalid_input`` for a 4xx charged to a model (as ``prediction_errors_total`` counts it);
    None for a success and for a 4xx no model answered (a 401, a 404, a route that is no
    prediction) and for a client that went away (499, never an error of the model): its status
    says it all. Read once the request is charged or not."""
    code = rec.status_code
    if code == CLIENT_CLOSED:
        return None
    if code == 0 or code >= 500:
        exc = rec.exc
        if exc is not None and not isinstance(exc, GeneratorExit):
            return type(exc).__name__[:64]
        return HTTP_5XX
    if code >= 400:
        return INVALID_INPUT if rec.is_prediction else None
    if rec.exc is not None and not isinstance(rec.exc, GeneratorExit):
        return type(rec.exc).__name__[:64]  # the body failed after a 2xx status was sent
    return None
