"""MonitorMiddleware: the pure WSGI core; owns the request from start to ``close()``.

It imports no Flask. It creates the :class:`RequestRecord`, starts the clock and
the server span, captures the status, wraps the body so the record is finished
when the server closes it, and hands the record to the three sinks (metrics,
logs, traces), each under the fail-open guard. The app's own exceptions pass
through untouched; mlmonitor's faults are counted and never raised.

Example::

    from mlmonitor import MonitorMiddleware
    app = MonitorMiddleware(wsgi_app, model_name="iris", model_version="v1",
                            prediction_paths=["/predict", "/v1/models/<name>:predict"],
                            routes=["/healthz", "/items/{id}"])

A request is charged to a model only once the model is known for it (a prediction path
matched, or an app layer's prediction view started) and its answer is not 401, 403, 404 or
405 (:data:`NOT_CHARGED`): those are HTTP-only. A client that went away is recorded as 499
(:mod:`mlmonitor.disconnect`).
"""
from __future__ import annotations

import functools
import os
import random
import re
import time
from typing import Any, Callable, Iterable, Optional, TextIO

from opentelemetry import context as otel_context

from . import guard
from .body import MonitoredBody, StreamedBody
from .config import Settings, resolve
from .disconnect import settle, watch_input
from .record import (ENVIRON_KEY, KNOWN_METHODS, OTHER, UNMATCHED_ROUTE, RequestRecord, _current,
                     error_type_of)

__all__ = ["MonitorMiddleware", "MATERIALISED", "NOT_CHARGED", "RouteTemplate", "is_template"]

#: environ key an app layer sets when its body is a materialised sequence (nothing left to run):
#: the record is then finished when the app returns, not at ``close()``, which a server or a
#: test client may never call
MATERIALISED = "mlmonitor.materialised"
#: what :func:`mlmonitor.testing.capture` hands to the monitors created inside it
_captures: list = []

# fullmatch: "$" would also accept a trailing newline and echo it into a response header
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch
_perf = time.perf_counter
_now_ns = time.time_ns  # the span's start time: wall clock, not perf_counter
_random_bits = random.getrandbits

#: statuses that say the request never reached a model (not authenticated, not allowed, no such
#: model, wrong method): HTTP-only, never charged to a model's prediction or error families
NOT_CHARGED = frozenset((401, 403, 404, 405))
#: a path longer than this is never matched against templates (bounded work per request)
MAX_TEMPLATE_PATH = 2048
_PLACEHOLDER = re.compile(r"<(?:([A-Za-z_][A-Za-z0-9_]*):)?([A-Za-z_][A-Za-z0-9_]*)>"
                          r"|\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z_][A-Za-z0-9_]*))?\}")


def is_template(path: str) -> bool:
    """Whether a configured path is a template (checked as one, so a stray ``>`` is refused)."""
    return "<" in path or "{" in path or ">" in path or "}" in path


class RouteTemplate:
    """``/v1/models/<name>:predict`` (Flask/Werkzeug) or ``/items/{id}`` (Starlette/Django):
    matched segment by segment, with no regular expression at request time.

    A segment holds at most one placeholder, with literal text around it (``<name>:predict``);
    a placeholder matches one non-empty segment part without ``/`` (``int`` converters:
    ASCII digits only). The work is one comparison per segment: bounded, no backtracking.
    """

    __slots__ = ("template", "segments", "prediction")

    def __init__(self, template: str, prediction: bool = False) -> None:
        self.template = template
        self.prediction = prediction
        #: per segment: the literal text, or (prefix, suffix, digits_only)
        self.segments: list = []
        for part in template.split("/")[1:]:
            found = list(_PLACEHOLDER.finditer(part))
            rest = _PLACEHOLDER.sub("", part)
            if "<" in rest or ">" in rest or "{" in rest or "}" in rest:
                raise ValueError(f"segment {part!r} is not a placeholder like <name>, <int:id>, "
                                 "{id} or {id:int} with literal text around it")
            if not found:
                self.segments.append(part)
                continue
            if len(found) > 1:
                raise ValueError(f"segment {part!r} has more than one placeholder")
            match = found[0]
            converter = match.group(1) or match.group(4) or ""
            if converter == "path":
                raise ValueError(f"segment {part!r}: a path placeholder spans segments; "
                                 "a template matches one segment per placeholder")
            self.segments.append((part[:match.start()], part[match.end():], converter == "int"))

    def matches(self, parts: list) -> bool:
        """``parts``: the request path split on ``/`` (after the leading one), same length."""
        for want, got in zip(self.segments, parts):
            if type(want) is str:
                if want != got:
                    return False
                continue
            prefix, suffix, digits = want
            if len(got) <= len(prefix) + len(suffix) or not got.startswith(prefix) \
                    or not got.endswith(suffix):
                return False
            if digits:  # ASCII only, as Starlette's and Django's converters: not "²", "٣"
                value = got[len(prefix):len(got) - len(suffix)]
                if not (value.isascii() and value.isdigit()):
                    return False
        return True


class MonitorMiddleware:
    """Wrap any WSGI app: metrics, one JSON log line and a span for every request.

    ``route_from_app``: the app names the route (the Flask layer calls :meth:`route_known`
    with the URL rule) instead of ``routes`` / ``prediction_paths``. ``borrow_span``: a
    callable saying whether another instrumentation owns the server span now.
    """

    def __init__(self, app: Callable, *, settings: Optional[Settings] = None,
                 registry: Any = None, tracer_provider: Any = None,
                 log_stream: Optional[TextIO] = None, route_from_app: bool = False,
                 borrow_span: Optional[Callable[[], bool]] = None, **options: Any) -> None:
        self.app = app
        if _captures:  # inside mlmonitor.testing.capture(): its doubles, unless given here
            capture = _captures[-1]
            registry = capture.registry if registry is None else registry
            tracer_provider = capture.provider if tracer_provider is None else tracer_provider
            log_stream = capture.log_stream if log_stream is None else log_stream
        self.settings = settings if settings is not None else resolve(options)
        s = self.settings
        self.route_from_app = route_from_app
        self.borrow_span = borrow_span
        #: model name -> reference profile; the metrics sink reads it at each use
        self.references: dict = {}
        # sinks are built here so that a bad setting fails at start-up, not in a request
        self.metrics = None
        self.logs = None
        self.traces = None
        self.endpoint = None
        if s.metrics:
            from .exposition import MetricsEndpoint
            from .metrics import MetricsSink
            self.metrics = MetricsSink(s, registry, self.references)
            if s.metrics_path is not None:
                self.endpoint = MetricsEndpoint(s, self.metrics)
        if s.logs:
            from .logs import LogSink
            self.logs = LogSink(s, log_stream, functools.partial(self.count_dropped, "logs")
                                if self.metrics else None)
        if s.traces:
            from .traces import TraceSink
            dropped = functools.partial(self.count_dropped, "traces") if self.metrics else None
            self.traces = TraceSink(s, tracer_provider, dropped)
        #: the three sinks in order, each fed the finished record under the guard
        self._sinks = tuple((name, fn) for name, fn in (
            ("metrics", self.metrics and self.metrics.finish),
            ("traces", self.traces and self.traces.finish),
            ("logs", self.logs and self.logs.finish)) if fn)
        self.metrics_path = s.metrics_path if self.endpoint is not None else None
        self.prediction_paths = frozenset(p for p in s.prediction_paths if not is_template(p))
        self.known_routes = frozenset(p for p in s.routes if not is_template(p)) \
            | self.prediction_paths
        #: segment count -> templates of that length, prediction paths first, in the order given
        self.templates: dict = {}
        for path, prediction in [(p, True) for p in s.prediction_paths] + \
                [(p, False) for p in s.routes]:
            if is_template(path):
                template = RouteTemplate(path, prediction)  # checked by Settings already
                self.templates.setdefault(len(template.segments), []).append(template)
        self.max_segments = max(self.templates, default=0)
        self.request_id_key = "HTTP_" + s.request_id_header.upper().replace("-", "_")
        self.request_id_header = s.request_id_header
        self.request_id_header_lower = s.request_id_header.lower()
        if s.reference is not None:
            self.set_reference(s.model_name, s.reference)
        for name, reference in s.references.items():
            self.set_reference(name, reference)
        if not route_from_app and s.prediction_paths:  # the default model is served here
            self.declare_model(None, None)
        from .feedback import FeedbackRecorder
        self.feedback = FeedbackRecorder(s, self.metrics, self)
        guard.add_owner(self)  # counts faults outside any request while it is the newest app

    def count_fault(self, component: str) -> None:
        """One fault of mlmonitor, in this app's metrics (see :mod:`mlmonitor.guard`)."""
        if self.metrics is not None:
            self.metrics.count_fault(component)

    def count_dropped(self, signal: str, count: int) -> None:
        """Spans or log lines lost (exporter down, queue full, failed write); never raises."""
        with guard.guarded(signal, self):
            if self.metrics is not None:
                self.metrics.count_dropped(signal, count)

    def set_reference(self, model_name: str, reference: Any) -> None:
        """Use a reference profile (object or JSON path) for a model's drift metrics."""
        from .config import ConfigError
        from .reference import ReferenceProfile
        from .reference_format import InvalidReference
        if not isinstance(reference, ReferenceProfile):
            try:
                reference = ReferenceProfile.load(os.fspath(reference))
            except (OSError, InvalidReference, TypeError) as exc:
                raise ConfigError(f"mlmonitor setting reference={reference!r}: {exc}") from None
        self.references[model_name] = reference
        if self.metrics is not None:
            self.metrics.reference_added(model_name)

    def declare_model(self, model_name: Any, model_version: Any) -> None:
        """A view serves this model (None: the default): its ``model_info`` and prediction
        counters exist from start-up, at 0. A callable name or version is known only per
        request, and is declared by its first prediction instead."""
        if self.metrics is None or callable(model_name) or callable(model_version):
            return
        try:
            self.metrics.mark_model(model_name or self.settings.model_name,
                                    str(model_version)[:128] if model_version
                                    else self.settings.model_version)
        except OSError as exc:  # a full metrics disk must not stop the app from starting
            guard.report_fault("metrics", exc, self)

    # -- the request --------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.metrics_path is not None and environ.get("PATH_INFO") == self.metrics_path:
            return self.endpoint(environ, start_response)  # type: ignore[misc]
        try:
            rec = self._begin(environ)
        except Exception as exc:
            guard.report_fault("middleware", exc, self)
            return self.app(environ, start_response)
        try:
            watch_input(environ, rec)  # a body that ends early: the client went away
        except Exception as exc:
            guard.report_fault("middleware", exc, self)
        tokens = self.enter(rec)

        def monitored_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            try:
                rec.status_code = int(status[:3])
                wanted = self.request_id_header_lower
                for name, _ in headers:  # a plain loop: ~1 us cheaper than any() on a generator
                    if name.lower() == wanted:
                        break
                else:
                    headers = list(headers)
                    headers.append((self.request_id_header, rec.request_id))
            except Exception as exc:
                guard.report_fault("middleware", exc, self)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, monitored_start_response)
        except BaseException as exc:
            rec.exc = exc
            rec.status_code = 0  # nothing was sent: the server answers 500, whatever start_response said
            self.finish(rec)
            raise
        finally:
            self.leave(tokens)
        if type(body) is list or type(body) is tuple:  # buffered: no app code runs in iteration
            return MonitoredBody(body, rec, self)
        if MATERIALISED in environ:  # the Flask layer saw a materialised body: record it now
            self.finish(rec)
            return body
        return StreamedBody(body, rec, self)

    def enter(self, rec: RequestRecord) -> tuple:
        """Make ``rec`` the current request and, when traced (and no other instrumentation
        owns the server span), open its span as the current one; :meth:`leave` undoes both."""
        record_token = _current.set(rec)
        context_token = None
        if self.traces is not None and not (self.borrow_span is not None and self._borrowing()):
            try:
                context_token = self.traces.start(rec)
            except Exception as exc:
                guard.report_fault("traces", exc, self)
        return record_token, context_token

    def leave(self, tokens: tuple) -> None:
        """Undo :meth:`enter` in the context it ran in; never raises."""
        record_token, context_token = tokens
        if context_token is not None:
            try:
                otel_context.detach(context_token)
            except Exception as exc:
                guard.report_fault("traces", exc, self)
        _current.reset(record_token)

    def _borrowing(self) -> bool:
        try:
            return bool(self.borrow_span())  # type: ignore[misc]
        except Exception:
            return False

    def _begin(self, environ: dict) -> RequestRecord:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = OTHER
        rec = RequestRecord(environ, method, _perf(), _now_ns())
        rec.middleware = self
        incoming = environ.get(self.request_id_key)
        # 128 random bits; the random module reseeds in each forked worker
        rec.request_id = (incoming if incoming and _REQUEST_ID_OK(incoming)
                          else _random_bits(128).to_bytes(16, "big").hex())
        environ[ENVIRON_KEY] = rec
        if not self.route_from_app:
            path = rec.path
            if path in self.known_routes:
                rec.route = path
                if path in self.prediction_paths:
                    self.begin_prediction(rec, None, None)
            else:
                template = self.templates and self.match_template(path)
                if template:
                    rec.route = template.template
                    if template.prediction:
                        self.begin_prediction(rec, None, None)
                else:
                    rec.route = UNMATCHED_ROUTE
            if self.metrics is not None:
                self.metrics.start(rec)
        return rec

    def match_template(self, path: str) -> Optional[RouteTemplate]:
        """The first template matching ``path`` (exact paths are looked up before this)."""
        if len(path) > MAX_TEMPLATE_PATH or path.count("/") > self.max_segments:
            return None
        parts = path.split("/")[1:]
        for template in self.templates.get(len(parts), ()):
            if template.matches(parts):
                return template
        return None

    def route_known(self, rec: RequestRecord, route: str) -> None:
        """The app layer (Flask, Django) found the route: label with it and count in-progress."""
        rec.route = route
        if self.metrics is not None:
            self.metrics.start(rec)

    def begin_prediction(self, rec: RequestRecord, model_name: Any, model_version: Any) -> None:
        """Mark the request as a prediction of a model; a callable version is evaluated now."""
        rec.is_prediction = True
        rec.model_name = model_name or self.settings.model_name
        if callable(model_version):
            version, model_version = model_version, None
            with guard.guarded("model_version", self):
                model_version = version()
        rec.model_version = str(model_version)[:128] if model_version else self.settings.model_version

    def finish(self, rec: RequestRecord) -> None:
        """The body is closed (or the app raised): hand the record to each sink, guarded."""
        if rec.finished:
            return
        rec.finished = True
        rec.duration = _perf() - rec.start
        try:
            if rec.gone_at is not None:
                settle(rec)  # the client went away: 499, see mlmonitor.disconnect
            if rec.is_prediction and rec.status_code in NOT_CHARGED:
                rec.is_prediction = False  # the model was never reached: HTTP-only
            rec.error_type = error_type_of(rec)
        except Exception as exc:
            guard.report_fault("middleware", exc, self)
        for name, sink in self._sinks:  # try, not guarded(): no object and no calls per sink
            try:
                sink(rec)
            except Exception as exc:
                guard.report_fault(name, exc, self)
        rec.environ = None  # type: ignore[assignment]  # let the environ go with the request
