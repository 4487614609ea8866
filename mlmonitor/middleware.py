"""MonitorMiddleware: the pure WSGI core; owns the request from start to ``close()``.

It imports no Flask. It creates the :class:`RequestRecord`, starts the clock and
the server span, captures the status, wraps the body so the record is finished
when the server closes it, and hands the record to the three sinks (metrics,
logs, traces), each under the fail-open guard. The app's own exceptions pass
through untouched; mlmonitor's faults are counted and never raised.

Example::

    from mlmonitor import MonitorMiddleware
    app = MonitorMiddleware(wsgi_app, model_name="iris", model_version="v1",
                            prediction_paths=["/predict"])
"""
from __future__ import annotations

import base64
import hmac
import os
import random
import re
import time
from typing import Any, Callable, Iterable, Optional, TextIO

from opentelemetry import context as otel_context
from opentelemetry import trace

from . import guard
from .config import Settings, resolve
from .record import ENVIRON_KEY, KNOWN_METHODS, UNMATCHED_ROUTE, RequestRecord, _current
# fullmatch: "$" would also accept a trailing newline and echo it into a response header
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch
_perf = time.perf_counter
_now_ns = time.time_ns  # the span's start time: wall clock, not perf_counter
_random_bits = random.getrandbits


class MonitorMiddleware:
    """Wrap any WSGI app: metrics, one JSON log line and a span for every request."""

    def __init__(self, app: Callable, *, settings: Optional[Settings] = None,
                 registry: Any = None, tracer_provider: Any = None,
                 log_stream: Optional[TextIO] = None, **options: Any) -> None:
        self.app = app
        self.settings = settings if settings is not None else resolve(options)
        s = self.settings
        # sinks are built here so that a bad setting fails at start-up, not in a request
        self.metrics = None
        self.logs = None
        self.traces = None
        if s.metrics:
            from .metrics import MetricsSink
            self.metrics = MetricsSink(s, registry)
            guard.add_fault_listener(self.metrics.count_fault)
        if s.logs:
            from .logs import LogSink
            self.logs = LogSink(s, log_stream)
            self.logs.on_dropped = (lambda n: self.metrics.count_dropped("logs", n)) if self.metrics else None
        if s.traces:
            from .traces import TraceSink
            dropped = (lambda n: self.metrics.count_dropped("traces", n)) if self.metrics else None
            self.traces = TraceSink(s, tracer_provider, dropped)
        #: the three sinks in order, each fed the finished record under the guard
        self._sinks = tuple((name, fn) for name, fn in (
            ("metrics", self.metrics and self.metrics.record),
            ("traces", self.traces and self.traces.finish),
            ("logs", self.logs and self.logs.record)) if fn)
        self.metrics_path = s.metrics_path if s.metrics else None
        self.prediction_paths = frozenset(s.prediction_paths)
        self.known_routes = frozenset(s.routes) | self.prediction_paths
        self.request_id_key = "HTTP_" + s.request_id_header.upper().replace("-", "_")
        self.request_id_header = s.request_id_header
        self.request_id_header_lower = s.request_id_header.lower()
        #: set by the Flask layer: the route comes from Flask's URL rule, not from paths
        self.defer_route = False
        #: set by the Flask layer: a callable saying whether another instrumentation owns the span
        self.borrow_span: Optional[Callable[[], bool]] = None
        self.references: dict = {}
        if self.metrics is not None:
            self.metrics.reference_for = self.references.get  # type: ignore[method-assign]
        if s.reference is not None:
            self.set_reference(s.model_name, s.reference)
        from .feedback import FeedbackRecorder
        self.feedback = FeedbackRecorder(s, self.metrics)
        self._expected_auth = _expected_auth(s)

    def set_reference(self, model_name: str, reference: Any) -> None:
        """Use a reference profile (object or JSON path) for a model's drift metrics."""
        from .config import ConfigError
        from .reference import InvalidReference, ReferenceProfile
        if not isinstance(reference, ReferenceProfile):
            try:
                reference = ReferenceProfile.load(os.fspath(reference))
            except (OSError, InvalidReference, TypeError) as exc:
                raise ConfigError(f"mlmonitor setting reference={reference!r}: {exc}") from None
        self.references[model_name] = reference
        if self.metrics is not None:
            self.metrics.reference_added(model_name)

    # -- the request --------------------------------------------------------------
    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.metrics_path is not None and environ.get("PATH_INFO") == self.metrics_path:
            return self.serve_metrics(environ, start_response)
        try:
            rec = self._begin(environ)
        except Exception as exc:
            guard.report_fault("middleware", exc)
            return self.app(environ, start_response)
        record_token = _current.set(rec)
        context_token = None
        if self.traces is not None and not (self.borrow_span is not None and self._borrowing()):
            try:
                context_token = self.traces.start(rec)
            except Exception as exc:
                guard.report_fault("traces", exc)

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
                guard.report_fault("middleware", exc)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, monitored_start_response)
        except BaseException as exc:
            rec.exc = exc
            self.finish(rec)
            raise
        finally:
            if context_token is not None:
                try:
                    otel_context.detach(context_token)
                except Exception as exc:
                    guard.report_fault("traces", exc)
            _current.reset(record_token)
        if type(body) is list or type(body) is tuple:  # buffered: no app code runs in iteration
            return _MonitoredBody(body, rec, self)
        return _StreamedBody(body, rec, self)

    def _borrowing(self) -> bool:
        try:
            return bool(self.borrow_span())  # type: ignore[misc]
        except Exception:
            return False

    def _begin(self, environ: dict) -> RequestRecord:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = "other"
        rec = RequestRecord(environ, method, _perf(), _now_ns())
        rec.middleware = self
        incoming = environ.get(self.request_id_key)
        # 128 random bits; the random module reseeds in each forked worker
        rec.request_id = (incoming if incoming and _REQUEST_ID_OK(incoming)
                          else _random_bits(128).to_bytes(16, "big").hex())
        environ[ENVIRON_KEY] = rec
        if not self.defer_route:
            path = rec.path
            if path in self.known_routes:
                rec.route = path
                if path in self.prediction_paths:
                    self.begin_prediction(rec, None, None)
            else:
                rec.route = UNMATCHED_ROUTE
            if self.metrics is not None:
                self.metrics.start(rec)
        return rec

    def route_known(self, rec: RequestRecord, route: str) -> None:
        """The Flask layer found the URL rule: label with it and count in-progress."""
        rec.route = route
        if self.metrics is not None:
            self.metrics.start(rec)

    def begin_prediction(self, rec: RequestRecord, model_name: Any, model_version: Any) -> None:
        """Mark the request as a prediction of a model; a callable version is evaluated now."""
        rec.is_prediction = True
        rec.model_name = model_name or self.settings.model_name
        if callable(model_version):
            try:
                model_version = model_version()
            except Exception as exc:
                guard.report_fault("model_version", exc)
                model_version = None
        rec.model_version = str(model_version)[:128] if model_version else self.settings.model_version

    def finish(self, rec: RequestRecord) -> None:
        """The body is closed (or the app raised): hand the record to each sink, guarded."""
        if rec.finished:
            return
        rec.finished = True
        rec.duration = _perf() - rec.start
        try:
            rec.error_type = _error_type(rec)
        except Exception as exc:
            guard.report_fault("middleware", exc)
        for name, sink in self._sinks:
            try:
                sink(rec)
            except Exception as exc:
                guard.report_fault(name, exc)
        rec.environ = None  # type: ignore[assignment]  # let the environ go with the request

    # -- /metrics -------------------------------------------------------------------
    def serve_metrics(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _plain(start_response, "405 Method Not Allowed", b"method not allowed\n",
                          [("Allow", "GET, HEAD")])
        if self._expected_auth and not self._authorized(environ.get("HTTP_AUTHORIZATION", "")):
            return _plain(start_response, "401 Unauthorized", b"unauthorized\n",
                          [("WWW-Authenticate", 'Basic realm="metrics"')
                           if self.settings.metrics_basic_auth else
                           ("WWW-Authenticate", 'Bearer realm="metrics"')])
        try:
            data, content_type = self.metrics.exposition(environ.get("HTTP_ACCEPT", ""))  # type: ignore[union-attr]
        except Exception as exc:
            guard.report_fault("exposition", exc)
            return _plain(start_response, "503 Service Unavailable", b"metrics unavailable\n", [])
        if environ.get("REQUEST_METHOD") == "HEAD":
            data = b""
        start_response("200 OK", [("Content-Type", content_type),
                                  ("Content-Length", str(len(data))),
                                  ("Cache-Control", "no-store")])
        return [data]

    def _authorized(self, header: str) -> bool:
        """The scheme is case-insensitive (RFC 7235); the credentials compare in constant time."""
        scheme, _, supplied = header.encode("latin-1", "replace").partition(b" ")
        scheme = scheme.lower()  # bytes.lower(): ASCII letters only
        supplied = supplied.lstrip(b" ")  # 1*SP between scheme and credentials
        ok = False
        for expected_scheme, expected in self._expected_auth:
            ok |= hmac.compare_digest(supplied, expected) & (scheme == expected_scheme)
        return ok


def _expected_auth(settings: Settings) -> list:
    """(lowercase scheme, credentials) pairs that /metrics admits."""
    expected = []
    if settings.metrics_token:
        expected.append((b"bearer", settings.metrics_token.encode()))
    if settings.metrics_basic_auth:
        expected.append((b"basic", base64.b64encode(settings.metrics_basic_auth.encode())))
    return expected


def _plain(start_response: Callable, status: str, body: bytes, headers: list) -> list:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))] + headers)
    return [body]


def _error_type(rec: RequestRecord) -> Optional[str]:
    code = rec.status_code
    if code == 0 or code >= 500:
        exc = rec.exc
        if exc is not None and not isinstance(exc, GeneratorExit):
            return type(exc).__name__[:64]
        return "http_5xx"
    if code >= 400:
        return "invalid_input"
    if rec.exc is not None and not isinstance(rec.exc, GeneratorExit):
        return type(rec.exc).__name__[:64]  # the body failed after a 2xx status was sent
    return None


class _MonitoredBody:
    """The app's body iterable; finishing the record when the server closes it."""

    __slots__ = ("body", "rec", "middleware")

    def __init__(self, body: Iterable[bytes], rec: RequestRecord, middleware: MonitorMiddleware):
        self.body = body
        self.rec = rec
        self.middleware = middleware

    def __iter__(self):
        try:
            yield from self.body
        except Exception as exc:
            self.rec.exc = exc
            raise

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.middleware.finish(self.rec)


_END = object()


class _StreamedBody(_MonitoredBody):
    """A body whose iteration runs app code (a generator): each chunk and the close run in
    the request's context, so observe/stage/tag there count and stage spans are children of
    the server span. Set before and reset after each step, in the server's own context: its
    thread is left clean between chunks."""

    __slots__ = ("otel",)

    def __init__(self, body: Iterable[bytes], rec: RequestRecord, middleware: MonitorMiddleware):
        self.body = body
        self.rec = rec
        self.middleware = middleware
        self.otel: Any = None
        if rec.span is not None:
            try:
                self.otel = trace.set_span_in_context(rec.span)
            except Exception as exc:
                guard.report_fault("traces", exc)

    def __iter__(self):
        # a generator runs in its caller's context: all is reset before each yield
        rec = self.rec
        otel = self.otel
        iterator = None
        while True:
            otel_token = self._attach() if otel is not None else None
            record_token = _current.set(rec)
            try:
                if iterator is None:
                    iterator = iter(self.body)
                chunk = next(iterator, _END)  # no StopIteration raised through this frame
            except Exception as exc:
                rec.exc = exc
                raise
            finally:
                _current.reset(record_token)
                if otel_token is not None:
                    otel_context.detach(otel_token)  # logs, never raises, on a foreign token
            if chunk is _END:
                return
            yield chunk

    def close(self) -> None:
        otel_token = self._attach() if self.otel is not None else None
        record_token = _current.set(self.rec)
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            _current.reset(record_token)
            if otel_token is not None:
                otel_context.detach(otel_token)
            self.middleware.finish(self.rec)

    def _attach(self) -> Any:
        try:
            return otel_context.attach(self.otel)
        except Exception as exc:
            guard.report_fault("traces", exc)
            return None
