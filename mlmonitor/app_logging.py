"""Opt-in: the app's own structlog and stdlib logging as mlmonitor's JSON lines, and
mlmonitor's redaction on the lines servers and frameworks print themselves.

mlmonitor never calls ``structlog.configure()`` for you; :func:`configure_logging`
does it when the app asks, with :func:`add_request_context` (request, trace and
model ids) and :class:`RedactSecrets` (the same redaction rules as mlmonitor's own lines).
:func:`redact_server_logs` puts :class:`RedactRecords` on the loggers through which
gunicorn, uvicorn, Django and Flask print an unhandled exception (its message and
traceback hold whatever the app put in the exception). Runs at start-up and in log calls.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .config import DEFAULT_REDACT, ENV_PREFIX
from .guard import report_fault
from .record import RECORD_VAR
from .redact import redactor
from .rendering import PIPE_BUF, SafeJSONRenderer, pipe_fd

__all__ = ["add_request_context", "RedactSecrets", "RedactRecords", "redact_server_logs",
           "configure_logging", "SERVER_LOGGERS"]

#: the loggers servers and frameworks print an unhandled exception (or a request line) to;
#: each logs there directly, so a filter on the logger sees every record before any handler
SERVER_LOGGERS = ("gunicorn.error", "gunicorn.access", "uvicorn.error", "uvicorn.access",
                  "django.request", "django.server", "werkzeug")


def add_request_context(logger: WrappedLogger, method_name: str,  # noqa: ARG001 (a structlog processor)
                        event_dict: EventDict) -> EventDict:
    """A structlog processor: adds request_id, trace_id, span_id, model_name, model_version."""
    rec = RECORD_VAR.get()  # the record itself: no read-only view to build per log call
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

    def __call__(self, logger: WrappedLogger, method_name: str,  # noqa: ARG002 (a structlog processor)
                 event_dict: EventDict) -> EventDict:
        return self.redactor.mapping(event_dict)


class RedactRecords(logging.Filter):
    """logging filter: hides secrets in a record's message, arguments, traceback and stack.

    The record is changed in place and always let through. A message that holds a secret
    keeps its arguments when hiding them one by one is enough (uvicorn's access formatter
    unpacks them), else it becomes the hidden text. An exception becomes its traceback text,
    redacted, in ``exc_text`` with ``exc_info`` cleared, so no formatter can print the raw
    exception again. Names: mlmonitor's defaults, ``MLMONITOR_REDACT`` and ``names``. In a
    dictConfig: ``"filters": {"redact": {"()": "mlmonitor.app_logging.RedactRecords"}}``.
    """

    def __init__(self, names: Iterable[str] = ()) -> None:
        super().__init__()
        extra = [n.strip() for n in os.environ.get(ENV_PREFIX + "REDACT", "").split(",")]
        self.redactor = redactor(frozenset(
            n.lower() for n in DEFAULT_REDACT + tuple(extra) + tuple(names) if n))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._message(record)
            self._traceback(record)
        except Exception as exc:  # never the raw text: the message alone, hidden as text
            record.msg, record.args, record.exc_info = self._text(record.msg), None, None
            record.exc_text = record.stack_info = None
            report_fault("logs", exc)
        return True

    def _text(self, value: Any) -> str:
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception:
            text = "<unrepresentable>"
        return self.redactor.text(text)

    def _message(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # the caller's format and arguments disagree: both, as hidden text
            record.msg, record.args = self._text(record.msg) + " " + self._text(record.args), None
            return
        hidden = self.redactor.text(message)
        if hidden == message:
            return
        args = record.args
        if isinstance(args, tuple) and args:
            each = tuple(a if a is None or isinstance(a, (bool, int, float)) else self._arg(a) for a in args)
            try:
                again = str(record.msg) % each
            except Exception:
                again = None
            if again is not None and self.redactor.text(again) == again:
                record.args = each
                return
        record.msg, record.args = hidden, None
        record.__dict__.pop("color_message", None)  # uvicorn's coloured copy of the format

    def _arg(self, value: Any) -> Any:
        """An argument as it was, or its text hidden when that holds a secret."""
        try:
            plain = value if isinstance(value, str) else str(value)
        except Exception:
            return "<unrepresentable>"
        hidden = self.redactor.text(plain)
        return value if hidden == plain else hidden

    def _traceback(self, record: logging.LogRecord) -> None:
        exc_info = record.exc_info
        if exc_info and exc_info[1] is not None:
            stack = self.redactor.exception(exc_info[1])[1]
            record.exc_text, record.exc_info = stack.rstrip("\n"), None
        elif record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.text(record.stack_info)


def _attach(target: logging.Filterer, chosen: RedactRecords) -> None:
    for old in [f for f in target.filters if isinstance(f, RedactRecords)]:
        target.removeFilter(old)
    target.addFilter(chosen)


def redact_server_logs(*loggers: str | logging.Logger, redact: Iterable[str] = ()) -> RedactRecords:
    """Hide secrets in what the server and the framework log themselves: one call at start-up.

    uvicorn's "Exception in ASGI application", gunicorn's "Error handling request", Django's
    "Internal Server Error" and Flask's "Exception on ..." print the exception's message and
    traceback, secrets and all. This puts one :class:`RedactRecords` on :data:`SERVER_LOGGERS`,
    on ``loggers`` (names or loggers: your own), and on Flask's default handler once Flask is
    imported (what ``app.logger`` prints through, whatever the app's name). Filters on a logger
    outlive the server's own logging set-up (dictConfig keeps them, handlers may change); call
    it again to change the names. ``gunicorn -c python:mlmonitor.gunicorn`` and
    :func:`configure_logging` call it for you.
    """
    chosen = RedactRecords(redact)
    for logger in SERVER_LOGGERS + loggers:
        _attach(logging.getLogger(logger) if isinstance(logger, str) else logger, chosen)
    flask_logging = sys.modules.get("flask.logging")
    if flask_logging is not None:
        _attach(flask_logging.default_handler, chosen)
    return chosen


#: where _JSONFormatter keeps a record's redacted traceback text for _exception_text
_EXC_TEXT = "_mlmonitor_exc_text"


class _JSONFormatter(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter that keeps a record's traceback text (RedactRecords turns the
    exception into redacted text): structlog clears ``exc_text`` on its copy of the record,
    before the pre-chain runs in some versions (23.1) and after it in others."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info is None and record.exc_text:
            record = logging.makeLogRecord({**record.__dict__, _EXC_TEXT: record.exc_text})
        return super().format(record)


def _exception_text(logger: WrappedLogger, method_name: str,  # noqa: ARG001 (a structlog processor)
                    event_dict: EventDict) -> EventDict:
    """A structlog processor: a stdlib record's traceback already turned into redacted text."""
    text = event_dict.pop(_EXC_TEXT, None) or getattr(event_dict.get("_record"), _EXC_TEXT, None)
    if text and "exc_info" not in event_dict:
        event_dict.setdefault("exception", text)
    return event_dict


def configure_logging(level: int = logging.INFO, stream: TextIO | None = None,
                      max_bytes: int = 16384, redact: Iterable[str] = ()) -> None:
    """Opt-in: route the app's structlog and stdlib logging to JSON lines with request context.

    Secrets are hidden as in mlmonitor's own lines (``redact`` adds names to the
    defaults), in messages and tracebacks too: Flask's "Exception on /predict"
    record goes through the same chain, and :func:`redact_server_logs` covers the
    server's own loggers, which have handlers of their own. Call it once at start-up if you want it;
    mlmonitor never calls it for you. On a pipe, lines are cut to PIPE_BUF bytes, the
    most a pipe keeps whole when several workers write to it.
    """
    stream = stream if stream is not None else sys.stdout
    if pipe_fd(stream)[1]:  # a pipe keeps a write whole up to PIPE_BUF bytes only
        max_bytes = min(max_bytes, PIPE_BUF - 1)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    redact_secrets = RedactSecrets(redact)
    structlog.configure(
        processors=[*shared, redact_secrets, SafeJSONRenderer(max_bytes)],
        logger_factory=structlog.WriteLoggerFactory(stream),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_JSONFormatter(
        foreign_pre_chain=[*shared[:-1], structlog.stdlib.ExtraAdder(), _exception_text],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact_secrets,
                    SafeJSONRenderer(max_bytes)],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    redact_server_logs(redact=redact)
