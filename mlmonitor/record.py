"""RequestRecord: what one request carried, filled as it goes, read by the three sinks.

The record lives in ``environ["mlmonitor.request"]`` and in a context variable
while the app runs and while each chunk of its body is produced and the body
closed (a streamed response), so helpers such as ``monitor.stage()`` find it
without Flask.
"""
from __future__ import annotations

import contextvars
from typing import Any, Dict, List, Optional, Tuple

from .contract import HTTP_5XX, INVALID_INPUT, OTHER, UNMATCHED_ROUTE

__all__ = ["ENVIRON_KEY", "KNOWN_METHODS", "MAX_TAGS", "OTHER", "UNMATCHED_ROUTE", "RequestRecord",
           "current_record", "error_type_of"]

ENVIRON_KEY = "mlmonitor.request"

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
#: tags a request keeps (``monitor.tag()``), and so span attributes made of them
MAX_TAGS = 32

_current: contextvars.ContextVar[Optional["RequestRecord"]] = contextvars.ContextVar(
    "mlmonitor_request", default=None)


def current_record() -> Optional["RequestRecord"]:
    """The record of the request being served in this context, or None outside one."""
    return _current.get()


class RequestRecord:
    """Facts about one request. Plain slots: cheap to create, cheap to read."""

    __slots__ = (
        "start", "start_ns", "duration", "method", "path", "query", "route", "status_code",
        "request_id", "trace_id", "span_id", "span", "sampled", "own_span",
        "is_prediction", "model_name", "model_version", "prediction_seconds", "stages",
        "exc", "error_type", "tags", "observations", "environ", "middleware", "finished",
        "in_progress", "error_detail",
    )

    def __init__(self, environ: dict, method: str, start: float, start_ns: int) -> None:
        self.environ = environ
        self.method = method
        self.start = start
        self.start_ns = start_ns
        self.duration = 0.0
        self.path = environ.get("PATH_INFO", "") or "/"
        self.query = environ.get("QUERY_STRING", "")
        self.route: Optional[str] = None
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
        self.prediction_seconds: Optional[float] = None
        self.stages: List[Tuple[str, float]] = []
        self.exc: Optional[BaseException] = None
        self.error_type: Optional[str] = None
        self.tags: Dict[str, Any] = {}
        self.observations: List[Any] = []
        self.middleware: Any = None
        self.finished = False
        self.in_progress: Any = None
        self.error_detail: Optional[Tuple[str, str]] = None


def error_type_of(rec: RequestRecord) -> Optional[str]:
    """The ``error_type`` of a finished request: the exception class, ``http_5xx`` or
    ``invalid_input`` (4xx); None for a success."""
    code = rec.status_code
    if code == 0 or code >= 500:
        exc = rec.exc
        if exc is not None and not isinstance(exc, GeneratorExit):
            return type(exc).__name__[:64]
        return HTTP_5XX
    if code >= 400:
        return INVALID_INPUT
    if rec.exc is not None and not isinstance(rec.exc, GeneratorExit):
        return type(rec.exc).__name__[:64]  # the body failed after a 2xx status was sent
    return None
