"""The engine: one :class:`Recorder` per monitored app owns the request lifecycle; no protocol.

A protocol adapter (WSGI :mod:`mlmonitor.middleware`, ASGI :mod:`mlmonitor.asgi`, Django
:mod:`mlmonitor.django`) turns its request into these calls, and a framework layer adds
what its framework knows through the same calls:

* :meth:`Recorder.begin` a :class:`RequestRecord` from a WSGI-style environ (clock, request
  id, the route when the settings name it), then :meth:`~Recorder.enter` the request's
  context (the record and its server span) and :meth:`~Recorder.leave` it again;
* :meth:`~Recorder.route_known` when the app's router found the route,
  :meth:`~Recorder.begin_prediction` when a prediction view starts (or a prediction path
  matched), :meth:`~Recorder.declare_model` for a model served from start-up;
* :meth:`~Recorder.finish` once the answer is done: the record goes to the metrics, traces
  and logs sinks, each under the fail-open guard.

The Recorder holds the settings, the sinks (built at start-up, so a bad setting fails then),
the reference profiles, the feedback recorder and ``/metrics``. A request is charged to a model
only once the model is known for it and its answer is not 401, 403, 404 or 405
(:data:`NOT_CHARGED`): those are HTTP-only. A client that went away is recorded as 499
(:mod:`mlmonitor.disconnect`).
"""
from __future__ import annotations

import functools
import os
import random
import re
import time
from typing import TYPE_CHECKING, Any, TextIO
from collections.abc import Callable

from opentelemetry import context as otel_context

from . import guard
from .config import ConfigError, Settings, excluded_urls_pattern, parse_list, resolve
from .disconnect import settle
from .feedback import FeedbackRecorder
from .record import (ENVIRON_KEY, KNOWN_METHODS, OTHER, RECORD_VAR, UNMATCHED_ROUTE, RequestRecord,
                     error_type_of)
from .reference import ReferenceProfile
from .reference_format import InvalidReference
from .routes import RouteTable, RouteTemplate

if TYPE_CHECKING:  # the sinks are imported when a Recorder turns them on (see __init__)
    from .exposition import MetricsEndpoint
    from .logs import LogSink
    from .metrics import MetricsSink
    from .testing import Captured
    from .traces import TraceSink

__all__ = ["Recorder", "NOT_CHARGED", "NO_SPAN", "NO_LOG", "NO_METRICS"]
#: statuses that say the request never reached a model (not authenticated, not allowed, no such
#: model, wrong method): HTTP-only, never charged to a model's prediction or error families
NOT_CHARGED = frozenset((401, 403, 404, 405))
#: what an excluded request is left out of (``RequestRecord.excluded``, set once in begin)
NO_SPAN, NO_LOG, NO_METRICS = 1, 2, 4
#: OpenTelemetry's own list for its instrumentations (opentelemetry-util-http): spans only;
#: ``OTEL_PYTHON_<FRAMEWORK>_EXCLUDED_URLS``, when set, takes its place for that framework
OTEL_EXCLUDED_URLS = "OTEL_PYTHON_EXCLUDED_URLS"
#: what :func:`mlmonitor.testing.capture` hands to the recorders created inside it
_captures: list[Captured] = []

# fullmatch: "$" would also accept a trailing newline and echo it into a response header
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:\-]{1,128}").fullmatch
_perf = time.perf_counter
_now_ns = time.time_ns  # the span's start time: wall clock, not perf_counter
_random_bits = random.getrandbits
#: what :meth:`Recorder.enter` returns and :meth:`Recorder.leave` takes
Tokens = tuple[Any, Any]


class Recorder:
    """Settings, sinks, references and feedback of one monitored app, and its request lifecycle.

    ``route_from_app``: the app names the route (a framework layer calls :meth:`route_known`)
    instead of ``routes`` / ``prediction_paths``. ``borrow_span``: a callable saying whether
    another instrumentation owns the server span now. ``framework``: the app's framework as
    OpenTelemetry's variables spell it (``FLASK``, ``FASTAPI``, ``STARLETTE``, ``DJANGO``), whose
    ``OTEL_PYTHON_<framework>_EXCLUDED_URLS`` is read before ``OTEL_PYTHON_EXCLUDED_URLS``.
    Other keyword arguments are settings.
    """

    def __init__(self, *, settings: Settings | None = None, registry: Any = None,
                 tracer_provider: Any = None, log_stream: TextIO | None = None,
                 route_from_app: bool = False, borrow_span: Callable[[], bool] | None = None,
                 framework: str | None = None, **options: Any) -> None:
        if _captures:  # inside mlmonitor.testing.capture(): its doubles, unless given here
            capture = _captures[-1]
            registry = capture.registry if registry is None else registry
            tracer_provider = capture.provider if tracer_provider is None else tracer_provider
            log_stream = capture.log_stream if log_stream is None else log_stream
        self.settings = settings if settings is not None else resolve(options)
        s = self.settings
        self.route_from_app = route_from_app
        self.borrow_span = borrow_span
        #: a framework layer's step once a prediction view's model is known (Flask: adopt
        #: FlaskInstrumentor's span); called by the prediction wrapper, faults counted there
        self.prediction_hook: Callable[[RequestRecord], None] | None = None
        #: model name -> reference profile; the metrics sink reads it at each use
        self.references: dict[str, Any] = {}
        # sinks are built here so that a bad setting fails at start-up, not in a request; each
        # is imported only when on (start-up cost, -X importtime: logs ~135 ms with structlog,
        # metrics ~60 ms with prometheus-client, traces ~33 ms)
        self.metrics: MetricsSink | None = None
        self.logs: LogSink | None = None
        self.traces: TraceSink | None = None
        self.endpoint: MetricsEndpoint | None = None
        if s.metrics:
            from .exposition import MetricsEndpoint  # noqa: PLC0415 (start-up cost, see above)
            from .metrics import MetricsSink  # noqa: PLC0415 (start-up cost, see above)
            self.metrics = MetricsSink(s, registry, self.references)
            if s.metrics_path is not None:
                self.endpoint = MetricsEndpoint(s, self.metrics)
        if s.logs:
            from .logs import LogSink  # noqa: PLC0415 (start-up cost, see above)
            self.logs = LogSink(s, log_stream, functools.partial(self.count_dropped, "logs")
                                if self.metrics else None)
        if s.traces:
            from .traces import TraceSink  # noqa: PLC0415 (start-up cost, see above)
            dropped = functools.partial(self.count_dropped, "traces") if self.metrics else None
            self.traces = TraceSink(s, tracer_provider, dropped)
        #: the three sinks in order, each fed the finished record under the guard
        self._sinks = tuple((name, fn) for name, fn in (
            ("metrics", self.metrics and self.metrics.finish),
            ("traces", self.traces and self.traces.finish),
            ("logs", self.logs and self.logs.finish)) if fn)
        self._excluders = self._build_excluders(s, framework)
        #: an excluded request's bits -> the sinks it still goes to
        self._sinks_for = {bits: tuple((name, fn) for name, fn in self._sinks if not bits & _BIT[name])
                           for bits in range(8)}
        #: the path ``/metrics`` is served at (None: not served)
        self.metrics_path = s.metrics_path if self.endpoint is not None else None
        table = RouteTable(s.prediction_paths, s.routes)
        self.route_table = table
        self.prediction_paths = table.prediction_paths
        self.known_routes = table.known
        self.request_id_key = "HTTP_" + s.request_id_header.upper().replace("-", "_")
        self.request_id_header = s.request_id_header
        self.request_id_header_lower = s.request_id_header.lower()
        if s.reference is not None:
            self.set_reference(s.model_name, s.reference)
        for name, reference in s.references.items():
            self.set_reference(name, reference)
        if not route_from_app and s.prediction_paths:  # the default model is served here
            self.declare_model(None, None)
        self.feedback = FeedbackRecorder(s, self.metrics, self)
        guard.add_owner(self)  # counts faults outside any request while it is the newest app

    # -- start-up and outside requests ----------------------------------------------------
    @staticmethod
    def _build_excluders(s: Settings, framework: str | None) -> tuple[tuple[Callable[[str], Any], int], ...] | None:
        """(search, bits) per excluded-URL list: ``excluded_urls`` (no span, no log line, and
        no metrics if asked) and OpenTelemetry's list (no span); None when both are empty, so
        that a request pays for one ``is None`` test. OpenTelemetry's list is the framework's
        variable when it is set, even empty, else the generic one: the precedence of
        opentelemetry-util-http's ``get_excluded_urls(framework)``."""
        excluders = []
        pattern = excluded_urls_pattern(s.excluded_urls, "excluded_urls")
        if pattern is not None:
            excluders.append((pattern.search, NO_SPAN | NO_LOG | (NO_METRICS if s.exclude_from_metrics else 0)))
        own = f"OTEL_PYTHON_{framework}_EXCLUDED_URLS"
        name = own if framework and own in os.environ else OTEL_EXCLUDED_URLS
        otel = excluded_urls_pattern(parse_list(os.environ.get(name, "")), name)
        if otel is not None:
            excluders.append((otel.search, NO_SPAN))
        return tuple(excluders) or None

    def _exclude(self, rec: RequestRecord, excluders: tuple[tuple[Callable[[str], Any], int], ...]) -> None:
        """Mark an excluded request (its path matches a list) once, at its start."""
        bits = 0
        for search, bit in excluders:
            if search(rec.path):
                bits |= bit
        rec.excluded = bits

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

    # -- the request ----------------------------------------------------------------------
    def begin(self, environ: dict[str, Any]) -> RequestRecord:
        """A request starts: its record (kept in ``environ``), clock and request id; with
        settings that name routes, its route too (else the app layer calls :meth:`route_known`).
        May raise: the adapter reports the fault and serves the request unmonitored."""
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in KNOWN_METHODS:
            method = OTHER
        rec = RequestRecord(environ, method, _perf(), _now_ns(), self)
        incoming = environ.get(self.request_id_key)
        # 128 random bits; the random module reseeds in each forked worker
        rec.request_id = (incoming if incoming and _REQUEST_ID_OK(incoming)
                          else _random_bits(128).to_bytes(16, "big").hex())
        environ[ENVIRON_KEY] = rec
        if self._excluders is not None:
            self._exclude(rec, self._excluders)
        if not self.route_from_app:
            path = rec.path
            if path in self.known_routes:
                rec.route = path
                if path in self.prediction_paths:
                    self.begin_prediction(rec, None, None)
            else:
                template = self.route_table.templates and self.route_table.match_template(path)
                if template:
                    rec.route = template.template
                    if template.prediction:
                        self.begin_prediction(rec, None, None)
                else:
                    rec.route = UNMATCHED_ROUTE
            if self.metrics is not None and not rec.excluded & NO_METRICS:
                self.metrics.start(rec)
        return rec

    def enter(self, rec: RequestRecord) -> Tokens:
        """Make ``rec`` the current request and, when traced (and no other instrumentation
        owns the server span), open its span as the current one; :meth:`leave` undoes both."""
        record_token = RECORD_VAR.set(rec)
        context_token = None
        if self.traces is not None and not rec.excluded & NO_SPAN and not (
                self.borrow_span is not None and self._borrowing()):
            try:
                context_token = self.traces.start(rec)
            except Exception as exc:
                guard.report_fault("traces", exc, self)
        return record_token, context_token

    def leave(self, tokens: Tokens) -> None:
        """Undo :meth:`enter` in the context it ran in; never raises."""
        record_token, context_token = tokens
        if context_token is not None:
            try:
                otel_context.detach(context_token)
            except Exception as exc:
                guard.report_fault("traces", exc, self)
        RECORD_VAR.reset(record_token)

    def _borrowing(self) -> bool:
        try:
            return bool(self.borrow_span())  # type: ignore[misc]
        except Exception:
            return False

    def match_template(self, path: str) -> RouteTemplate | None:
        """The first configured template matching ``path``."""
        return self.route_table.match_template(path)

    def route_known(self, rec: RequestRecord, route: str) -> None:
        """The app layer (Flask, Starlette, Django) found the route: label with it and count
        the request in progress."""
        rec.route = route
        if self.metrics is not None and not rec.excluded & NO_METRICS:
            self.metrics.start(rec)

    def begin_prediction(self, rec: RequestRecord, model_name: str | None,
                         model_version: Any) -> None:
        """The request is a prediction of a model (None: the default one); a callable version
        is called now, with no arguments (views call theirs with the view's arguments first)."""
        rec.is_prediction = True
        rec.model_name = model_name or self.settings.model_name
        if callable(model_version):
            version, model_version = model_version, None
            with guard.guarded("model_version", self):
                model_version = version()
        rec.model_version = str(model_version)[:128] if model_version else self.settings.model_version

    def finish(self, rec: RequestRecord) -> None:
        """The answer is done (or the app raised): hand the record to each sink, guarded."""
        if rec.finished:
            return
        rec.finished = True
        rec.duration = _perf() - rec.start
        try:
            if rec.gone_at is not None:
                settle(rec)  # the client went away: 499, see mlmonitor.disconnect
            if rec.is_prediction and rec.status_code in NOT_CHARGED:
                rec.is_prediction = False  # the model was never reached: HTTP-only
            code = rec.status_code
            # a 1xx-3xx answer without an exception has none (error_type_of's last line)
            rec.error_type = None if 0 < code < 400 and rec.exc is None else error_type_of(rec)
        except Exception as exc:
            guard.report_fault("middleware", exc, self)
        sinks = self._sinks_for[rec.excluded] if rec.excluded else self._sinks
        for name, sink in sinks:  # try, not guarded(): no object and no calls per sink
            try:
                sink(rec)
            except Exception as exc:
                guard.report_fault(name, exc, self)
        rec.environ = None  # type: ignore[assignment]  # let the environ go with the request

#: which sink each exclusion bit keeps a request out of
_BIT = {"traces": NO_SPAN, "logs": NO_LOG, "metrics": NO_METRICS}
