"""Opt-in: the app's own structlog and stdlib logging as mlmonitor's JSON lines.

mlmonitor never calls ``structlog.configure()`` for you; :func:`configure_logging`
does it when the app asks, with :func:`add_request_context` (request, trace and
model ids) and :class:`RedactSecrets` (the same redaction rules as mlmonitor's own lines).
Runs at start-up and in the app's own log calls.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Iterable, Optional, TextIO

import structlog

from .config import DEFAULT_REDACT
from .record import _current
from .redact import redactor
from .rendering import PIPE_BUF, SafeJSONRenderer, pipe_fd

__all__ = ["add_request_context", "RedactSecrets", "configure_logging"]


def add_request_context(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: adds request_id, trace_id, span_id, model_name, model_version."""
    rec = _current.get()  # the record itself: no read-only view to build per log call
    if rec is not None:
        event_dict.setdefault("request_id", rec.request_id)
        if rec.trace_id:
            event_dict.setdefault("trace_id", rec.trace_id)
            event_dict.setdefault("span_id", rec.span_id)
        if rec.is_prediction:
            event_dict.setdefault("model_name", rec.model_name)
            event_dict.setdefault("model_version", rec.model_version)
    return event_dict


class RedactSecrets:
    """structlog processor: hides secret values in an event, by key and as ``name=value`` text.

    Runs after the exception is formatted, so a secret in an exception message or
    traceback is hidden too.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names = frozenset(dict.fromkeys(DEFAULT_REDACT + tuple(n.lower() for n in names)))
        self.redactor = redactor(self.names)

    def __call__(self, logger: Any, method_name: str, event_dict: dict) -> dict:
        return self.redactor.mapping(event_dict)


def configure_logging(level: int = logging.INFO, stream: Optional[TextIO] = None,
                      max_bytes: int = 16384, redact: Iterable[str] = ()) -> None:
    """Opt-in: route the app's structlog and stdlib logging to JSON lines with request context.

    Secrets are hidden as in mlmonitor's own lines (``redact`` adds names to the
    defaults), in messages and tracebacks too: Flask's "Exception on /predict"
    record goes through the same chain. Call it once at start-up if you want it;
    mlmonitor never calls it for you. On a pipe, lines are cut to PIPE_BUF bytes, the
    most a pipe keeps whole when several workers write to it.
    """
    stream = stream if stream is not None else sys.stdout
    if pipe_fd(stream)[1]:  # a pipe keeps a write whole up to PIPE_BUF bytes only
        max_bytes = min(max_bytes, PIPE_BUF - 1)
    shared = [
        structlog.contextvars.merge_contextvars,
        add_request_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    redact_secrets = RedactSecrets(redact)
    structlog.configure(
        processors=shared + [redact_secrets, SafeJSONRenderer(max_bytes)],
        logger_factory=structlog.WriteLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared[:-1] + [structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact_secrets,
                    SafeJSONRenderer(max_bytes)],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
