"""Request record -> one strict JSON line; safe rendering, size cap, redaction.

mlmonitor logs through its own structlog chain (it never calls
``structlog.configure()``). :func:`render_json` never raises: whatever an app
puts in a line (cycles, tuple keys, NaN, objects whose ``__repr__`` raises,
bytes, numpy scalars, megabyte strings) comes out as one valid JSON object on
one line, at most ``max_bytes`` long, with ``"truncated": true`` when cut, and
valid UTF-8 (no lone surrogate escapes). :class:`LogSink` writes each line with
one ``write``, at most PIPE_BUF bytes on a pipe, so workers' lines never mix.
:func:`configure_logging` is the opt-in helper that makes the app's own
structlog and stdlib logging emit the same JSON with the request's context.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import select
import stat
import sys
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Optional, TextIO

import structlog

from .config import DEFAULT_REDACT, Settings
from .guard import report_fault
from .record import RequestRecord, current_record
from .redact import REDACTED, TRUNCATED_MARK, describe_exception, redact_mapping, redact_text, redactor

__all__ = ["render_json", "SafeJSONRenderer", "LogSink", "add_request_context", "RedactSecrets",
           "configure_logging", "REDACTED", "redact_text", "redact_mapping"]
_MAX_DEPTH = 12
_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
#: a write of at most this many bytes reaches a pipe whole, whoever else writes to it
PIPE_BUF = getattr(select, "PIPE_BUF", 512)
# a JSON escape: a surrogate pair, a lone surrogate (group 1), or any other escape
_ESCAPE = re.compile(r"\\(?:ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|(ud[89a-f][0-9a-f]{2})|.)")


def _lone_to_fffd(match: re.Match[str]) -> str:
    return "\\ufffd" if match.group(1) else match.group()


def valid_utf8(text: str) -> str:
    """JSON text with each lone surrogate escape (``\\ud800``) made ``\\ufffd``.

    json writes a lone surrogate from client text as an escape that strict UTF-8
    parsers reject; pairs (emoji) are kept. Same length, so size caps still hold.
    """
    return _ESCAPE.sub(_lone_to_fffd, text) if "\\ud" in text else text


def _default(obj: Any) -> Any:
    """Called by json for values it cannot encode: numpy scalars, bytes, anything else."""
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy":
        return item()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return _safe_repr(obj)


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception:
        try:
            return f"<unrepresentable {type(obj).__name__}>"
        except Exception:
            return "<unrepresentable>"


def _sanitize(obj: Any, depth: int, seen: set, max_str: int) -> Any:
    """A JSON-safe copy: string keys, finite floats, no cycles, bounded depth and strings."""
    if obj is None or isinstance(obj, (bool, int)):
        if obj is None or type(obj) is bool:
            return obj
        number = int(obj)
        # json cannot write ints beyond Python's 4300-digit conversion limit
        return number if number.bit_length() <= 8192 else f"<int of {number.bit_length()} bits>"
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, str):
        text = str(obj)
        return text if len(text) <= max_str else text[:max_str] + TRUNCATED_MARK
    if depth >= _MAX_DEPTH:
        return "<max depth>"
    if isinstance(obj, dict):
        if id(obj) in seen:
            return "<cycle>"
        seen.add(id(obj))
        try:
            out = {}
            for key, value in list(obj.items())[:1000]:
                key_text = key if type(key) is str else _safe_text(key)
                out[key_text[:max_str]] = _sanitize(value, depth + 1, seen, max_str)
            return out
        finally:
            seen.discard(id(obj))
    if isinstance(obj, (list, tuple, set, frozenset)):
        if id(obj) in seen:
            return "<cycle>"
        seen.add(id(obj))
        try:
            return [_sanitize(v, depth + 1, seen, max_str) for v in list(obj)[:1000]]
        finally:
            seen.discard(id(obj))
    try:
        converted = _default(obj)
    except Exception:
        converted = "<unrepresentable>"
    if converted is obj or isinstance(converted, (dict, list)):
        return _safe_repr(obj)[:max_str]
    return _sanitize(converted, depth + 1, seen, max_str)


def _safe_text(obj: Any) -> str:
    try:
        return str(obj)
    except Exception:
        return _safe_repr(obj)


def render_json(event: dict, max_bytes: int = 16384) -> str:
    """One strict-JSON line (ASCII, so bytes == characters), never raising, at most max_bytes.

    Valid UTF-8 too: a lone surrogate becomes U+FFFD (see :func:`valid_utf8`).
    """
    return valid_utf8(_render(event, max_bytes))


def _render(event: dict, max_bytes: int) -> str:
    try:
        text = _encode(event)
    except Exception:
        text = None
    if text is None or len(text) > max_bytes:
        max_str = max_bytes // 4
        while True:
            try:
                clean = _sanitize(event, 0, set(), max_str)
                if text is not None or len(_encode(clean)) > max_bytes:
                    clean["truncated"] = True
                text = _encode(clean)
            except Exception:
                text = None
            if text is not None and len(text) <= max_bytes:
                return text
            if max_str <= 64:
                break
            max_str //= 4
        # last resort: only the short scalar fields survive
        try:
            core = {k: v for k, v in event.items() if isinstance(k, str) and _short_scalar(v)}
            core["truncated"] = True
            text = _encode(_sanitize(core, 0, set(), 256))
        except Exception:
            text = '{"event":"unrenderable","truncated":true}'
        return text[:max_bytes] if len(text) <= max_bytes else '{"event":"unrenderable","truncated":true}'
    return text


def _fit(line: dict, limit: int, max_bytes: int) -> str:
    """The line in at most ``limit`` bytes: the stack's oldest part goes first, then the
    end of the error message, then whatever render_json's own cap cuts."""
    text = render_json(line, max_bytes)
    for key in ("stack", "error"):
        value = line.get(key)
        if len(text) <= limit:
            return text
        if not isinstance(value, str):
            continue
        # every character is at least one byte of JSON: cutting this many is enough
        cut = len(text) - limit + len(TRUNCATED_MARK) + len(',"truncated":true')
        if cut >= len(value):
            line[key] = TRUNCATED_MARK
        elif key == "stack":
            line[key] = TRUNCATED_MARK + value[cut:]
        else:
            line[key] = value[:-cut] + TRUNCATED_MARK
        line["truncated"] = True
        text = render_json(line, max_bytes)
    return text if len(text) <= limit else render_json(line, limit)


def _short_scalar(value: Any) -> bool:
    if type(value) is int:
        return value.bit_length() < 800
    return type(value) in (str, float, bool) and len(str(value)) < 256


class SafeJSONRenderer:
    """structlog processor: the final step of a chain, renders with :func:`render_json`."""

    def __init__(self, max_bytes: int = 16384) -> None:
        self.max_bytes = max_bytes

    def __call__(self, logger: Any, method_name: str, event_dict: dict) -> str:
        return render_json(event_dict, self.max_bytes)


_second: tuple = (0, "")
_json_string = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_PLAIN_LINE = ('{"timestamp":"%s","level":"info","event":"request","method":%s,"route":%s,'
               '"status":%d,"duration_ms":%.3f,"request_id":%s,"trace_id":"%s","span_id":"%s"')


def _timestamp(now: float) -> str:
    """ISO-8601 UTC with milliseconds; the formatted second is reused within that second."""
    global _second
    cached = _second
    whole = int(now)
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return "%s.%03dZ" % (cached[1], int(now * 1000) % 1000)


def _failed(rec: RequestRecord) -> bool:
    """A request whose line is always written, at warning or error level."""
    code = rec.status_code
    return code >= 400 or code == 0 or rec.error_type is not None


def _pipe_fd(stream: Any) -> tuple:
    """(fd, is a pipe or FIFO) of a stream; (None, False) for one without a file descriptor."""
    try:
        fd = stream.fileno()
        return fd, stat.S_ISFIFO(os.fstat(fd).st_mode)
    except Exception:  # io.StringIO, a closed stream, a wrapper without fileno()
        return None, False


_sinks: weakref.WeakSet[LogSink] = weakref.WeakSet()


def _after_fork() -> None:
    for sink in list(_sinks):
        sink.detect()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class LogSink:
    """Writes one JSON line per finished request; errors always, successes sampled.

    A line goes out with one ``write`` to the stream's file descriptor, so lines of
    several workers sharing stdout never mix. When that is a pipe or FIFO (Docker,
    systemd, a collector) a line is at most PIPE_BUF bytes (4096 on Linux) with its
    newline, the most a pipe keeps whole: a longer line loses the oldest part of its
    stack first, then the end of its error message, then whatever render_json's cap
    cuts, and says ``"truncated": true``. Files and ttys keep ``log_max_bytes``; a
    stream without a descriptor (io.StringIO) is written and flushed as it is. A
    failed write (EPIPE, ENOSPC, a closed stream) drops that line, counted through
    ``on_dropped(1)``; it is never an error in the request.
    """

    def __init__(self, settings: Settings, stream: Optional[TextIO] = None,
                 on_dropped: Optional[Callable[[int], None]] = None) -> None:
        self.settings = settings
        self.sample_rate = settings.log_sample_rate
        self.redact = settings.redact_set
        self.redactor = redactor(self.redact)
        self.static_tags = self.redactor.mapping(dict(settings.tags))
        self.max_bytes = settings.log_max_bytes
        self.stream = stream if stream is not None else sys.stdout
        #: called with the number of lines lost to a failed write (wired to the metrics sink)
        self.on_dropped = on_dropped
        self._lock = threading.Lock()
        self.detect()
        _sinks.add(self)

    def detect(self) -> None:
        """Find the stream's descriptor and line limit; again in a forked child."""
        self.fd, pipe = _pipe_fd(self.stream)
        self.limit = min(self.max_bytes, PIPE_BUF - 1) if pipe else self.max_bytes

    def finish(self, rec: RequestRecord) -> None:
        failed = _failed(rec)
        if not failed and self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if not failed and not rec.tags and not self.static_tags:
            try:
                text = self.plain_line(rec)
            except Exception:  # a field that is not what mlmonitor put there: the careful path
                text = None
            if text is not None and len(text) <= self.limit:
                self.write(text)
                return
        line = self.line(rec)
        self.write(render_json(line, self.limit) if self.limit == self.max_bytes
                   else _fit(line, self.limit, self.max_bytes))

    record = finish  # the name before the sinks were made symmetric

    def write(self, text: str) -> None:
        """One line out in one write; a failed write is one dropped line."""
        data = (text + "\n").encode("utf-8", "replace")  # ASCII already
        try:
            if self.fd is None:
                with self._lock:
                    self.stream.write(text + "\n")
                    self.stream.flush()
                return
            self.stream.flush()  # what the app left in the stream's buffer goes first
            written = os.write(self.fd, data)
            while 0 < written < len(data):  # only a non-blocking fd or a signal cuts one short
                data = data[written:]
                written = os.write(self.fd, data)
        except (OSError, ValueError):  # ValueError: the stream was closed
            callback = self.on_dropped
            if callback is not None:
                try:
                    callback(1)
                except Exception as exc:
                    report_fault("logs", exc)

    @staticmethod
    def plain_line(rec: RequestRecord) -> str:
        """The line of a successful request without tags, formatted directly.

        Same keys, order and values as :meth:`line` through :func:`render_json`, at a
        third of the cost: every field is a known scalar, the text goes through json's
        own string encoder, and the trace and span ids are hex made by mlmonitor.
        """
        route = rec.route
        text = _PLAIN_LINE % (
            _timestamp(time.time()), _json_string(rec.method),
            _json_string(route) if route is not None else "null",
            rec.status_code, rec.duration * 1000.0, _json_string(rec.request_id),
            rec.trace_id, rec.span_id)
        if rec.is_prediction:
            text = '%s,"model_name":%s,"model_version":%s' % (
                text, _json_string(rec.model_name), _json_string(rec.model_version))
            if rec.stages:
                stages = dict(rec.stages)  # a repeated stage keeps its last time, as in line()
                text = '%s,"stages_ms":{%s}' % (text, ",".join(
                    '%s:%.3f' % (_json_string(name), seconds * 1000.0)
                    for name, seconds in stages.items()))
        text += "}"
        return valid_utf8(text) if "\\ud" in text else text

    def line(self, rec: RequestRecord) -> dict:
        """The request's log line as a dict, in key order."""
        code = rec.status_code
        level = "error" if (code >= 500 or code == 0) else ("warning" if _failed(rec) else "info")
        line = {
            "timestamp": _timestamp(time.time()),
            "level": level,
            "event": "request",
            "method": rec.method,
            "route": rec.route,
            "status": code or 500,
            "duration_ms": round(rec.duration * 1000.0, 3),
            "request_id": rec.request_id,
            "trace_id": rec.trace_id,
            "span_id": rec.span_id,
        }
        if rec.is_prediction:
            line["model_name"] = rec.model_name
            line["model_version"] = rec.model_version
            if rec.stages:
                line["stages_ms"] = {name: round(s * 1000.0, 3) for name, s in rec.stages}
        if self.static_tags:
            line.update(self.static_tags)
        if rec.tags:
            line["tags"] = self.redactor.mapping(rec.tags)
        if rec.error_type is not None:
            line["error_type"] = rec.error_type
            exc = rec.exc
            if exc is not None:
                message, stack = describe_exception(rec, self.redact)
                line["error"] = message[:2000]
                if code >= 500 or code == 0:
                    line["stack"] = stack[-8000:]
        return line


# -- opt-in: the app's own logs as JSON, with the request's context ----------------------

def add_request_context(logger: Any, method_name: str, event_dict: dict) -> dict:
    """structlog processor: adds request_id, trace_id, span_id, model_name, model_version."""
    rec = current_record()
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
    if _pipe_fd(stream)[1]:  # a pipe keeps a write whole up to PIPE_BUF bytes only
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
