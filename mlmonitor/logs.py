"""The log sink: a finished request -> one strict JSON line, written whole.

mlmonitor logs through its own writer (it never calls ``structlog.configure()``).
:class:`LogSink` writes each line with one ``write``, at most PIPE_BUF bytes on a
pipe, so workers' lines never mix; a line that cannot be written is counted as
dropped. Rendering lives in :mod:`mlmonitor.rendering`, redaction in
:mod:`mlmonitor.redact`, and the opt-in helpers for the app's own logs
(:func:`configure_logging`, :func:`add_request_context`, :class:`RedactSecrets`)
in :mod:`mlmonitor.app_logging`.
"""
from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TextIO

from .config import Settings
from .guard import report_fault
from .lineage import lineage
from .record import RequestRecord, stage_totals
from .redact import describe_exception, redactor
from .rendering import PIPE_BUF, _fit, pipe_fd, render_json, valid_utf8

__all__ = ["LogSink"]


_second: tuple[int, str] = (0, "")
_json_string = json.encoder.encode_basestring_ascii
_PLAIN_LINE = ('{"timestamp":"%s","level":"info","event":"request","method":%s,"route":%s,'
               '"status":%d,"duration_ms":%.3f,"request_id":%s,"trace_id":"%s","span_id":"%s"')


def _timestamp(now: float) -> str:
    """ISO-8601 UTC with milliseconds; the formatted second is reused within that second."""
    global _second  # noqa: PLW0603 (the formatted second, reused within that second)
    cached = _second
    whole = int(now)
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return "%s.%03dZ" % (cached[1], int(now * 1000) % 1000)


def _failed(rec: RequestRecord) -> bool:
    """A request whose line is always written, at warning or error level."""
    code = rec.status_code
    return code >= 400 or code == 0 or rec.error_type is not None


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

    def __init__(self, settings: Settings, stream: TextIO | None = None,
                 on_dropped: Callable[[int], None] | None = None) -> None:
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
        self.fd, pipe = pipe_fd(self.stream)
        self.limit = min(self.max_bytes, PIPE_BUF - 1) if pipe else self.max_bytes

    def finish(self, rec: RequestRecord) -> None:
        failed = _failed(rec)
        if not failed and self.sample_rate < 1.0 and random.random() >= self.sample_rate:  # noqa: S311 (sampling, not secrecy)
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
        if rec.prediction_trace_id:  # hex from a verified id: no escaping
            text = f'{text},"prediction_trace_id":"{rec.prediction_trace_id}"'
        if rec.is_prediction:
            text = (f'{text},"model_name":{_json_string(rec.model_name)},'
                    f'"model_version":{_json_string(rec.model_version)}')
            run_id, model_id = lineage(rec.model_name, rec.model_version)
            if run_id or model_id:  # ids checked at start-up: [A-Za-z0-9_.-], no escaping
                text = f'{text},"model_run_id":"{run_id}","model_id":"{model_id}"'
            if rec.stages:
                totals, counts = stage_totals(rec.stages)
                text = '{},"stages_ms":{{{}}}'.format(text, ",".join(
                    f"{_json_string(name)}:{seconds * 1000.0:.3f}"
                    for name, seconds in totals.items()))
                if counts:
                    text = '{},"stage_counts":{{{}}}'.format(text, ",".join(
                        "%s:%d" % (_json_string(name), count) for name, count in counts.items()))
        text += "}"
        return valid_utf8(text) if "\\ud" in text else text

    def line(self, rec: RequestRecord) -> dict[str, Any]:
        """The request's log line as a dict, in key order."""
        code = rec.status_code
        level = "error" if (code >= 500 or code == 0) else ("warning" if _failed(rec) else "info")
        line: dict[str, Any] = {
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
        if rec.prediction_trace_id:
            line["prediction_trace_id"] = rec.prediction_trace_id
        if rec.is_prediction:
            line["model_name"] = rec.model_name
            line["model_version"] = rec.model_version
            run_id, model_id = lineage(rec.model_name, rec.model_version)
            if run_id or model_id:
                line["model_run_id"], line["model_id"] = run_id, model_id
            if rec.stages:  # a stage entered several times: its sum, and its count
                totals, counts = stage_totals(rec.stages)
                line["stages_ms"] = {name: round(s * 1000.0, 3) for name, s in totals.items()}
                if counts:
                    line["stage_counts"] = counts
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

