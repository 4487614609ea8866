"""The Flask layer: what ``Monitor(app)`` / ``monitor.init_app(app)`` adds to a Flask app.

It wraps ``app.wsgi_app`` with :class:`~mlmonitor.middleware.MonitorMiddleware` (the request is
handled there, once) and adds only what Flask knows: the URL rule as the route label, the
``capture_io`` previews from the request's and the response's JSON, and the span of
``FlaskInstrumentor`` when the app already uses it. :class:`mlmonitor.Monitor` calls
:func:`attach`.

Flask config keys (``MLMONITOR_<SETTING>``, read when ``MLMONITOR_*`` keyword
arguments are absent): ``MLMONITOR_MODEL_NAME``, ``MLMONITOR_MODEL_VERSION``,
``MLMONITOR_METRICS``, ``MLMONITOR_LOGS``, ``MLMONITOR_TRACES``,
``MLMONITOR_METRICS_PATH``, ``MLMONITOR_METRICS_TOKEN``,
``MLMONITOR_METRICS_BASIC_AUTH``, ``MLMONITOR_BUCKETS``,
``MLMONITOR_LOG_SAMPLE_RATE``, ``MLMONITOR_MAX_LABEL_VALUES``, ``MLMONITOR_TAGS``,
``MLMONITOR_REDACT``, ``MLMONITOR_REFERENCE``, ``MLMONITOR_REFERENCES``,
``MLMONITOR_FEEDBACK_SECRET``;
see the README's configuration table.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import flask.globals
from flask import Flask, after_this_request, current_app, has_app_context, request
from opentelemetry import trace
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from . import context, guard, previews
from .config import resolve
from .engine import Recorder
from .middleware import MATERIALISED, MonitorMiddleware
from .previews import MAX_IO_BYTES, json_within
from .record import RECORD_VAR, UNMATCHED_ROUTE, RequestRecord
from .traces import TraceSink

__all__ = ["attach", "is_flask_app", "current_recorder", "EXTENSION_KEY"]

#: Flask >= 2.3 keeps the request context in a context variable (None if a later Flask does not)
_cv_request: ContextVar[Any] | None = getattr(flask.globals, "_cv_request", None)

EXTENSION_KEY = "mlmonitor"


def is_flask_app(app: Any) -> bool:
    """Whether ``Monitor`` gets the WSGI adapter for this app (else the ASGI one)."""
    return isinstance(app, Flask)


def attach(app: Flask, options: dict[str, Any]) -> Recorder:
    """Wrap ``app.wsgi_app`` and the app's request steps (:func:`_wrap_hooks`); the app's
    recorder, also kept in ``app.extensions["mlmonitor"]``."""
    if EXTENSION_KEY in app.extensions:
        raise RuntimeError("mlmonitor is already registered on this Flask app; "
                           "call Monitor(app) or monitor.init_app(app) once per app")
    options = dict(options)
    registry = options.pop("registry", None)
    tracer_provider = options.pop("tracer_provider", None)
    log_stream = options.pop("log_stream", None)
    settings = resolve(options, app.config)
    middleware = MonitorMiddleware(
        app.wsgi_app, settings=settings, registry=registry, tracer_provider=tracer_provider,
        log_stream=log_stream, route_from_app=True, borrow_span=lambda: _borrows(app, recorder),
        framework="FLASK")
    recorder = middleware.recorder
    traces = recorder.traces
    if traces is not None:
        recorder.prediction_hook = _borrow_span  # FlaskInstrumentor's hook may run after ours
        if traces.mlflow:  # named from the start
            traces.route_at_start = lambda environ: _route_at_start(app, environ)
    app.wsgi_app = middleware  # type: ignore[method-assign]
    _wrap_hooks(app)
    app.extensions[EXTENSION_KEY] = recorder
    return recorder


def _wrap_hooks(app: Flask) -> None:
    """Ours before the app's before-request hooks (an auth hook may answer before the others
    run) and after its after-request hooks (it sees the response the app really sends).

    Wrapped around the app's own two steps, not registered as hooks: Flask asks of each hook,
    in every request, whether it is a coroutine function (``ensure_sync``, ~60 bytecodes each).
    """
    preprocess, process = app.preprocess_request, app.process_response

    def preprocess_request() -> Any:
        rec = RECORD_VAR.get()  # set by this app's middleware, which runs around this step
        if rec is not None and not rec.finished:
            _before_request(rec)
        return preprocess()

    def process_response(response: Any) -> Any:
        return _after_request_last(process(response))

    app.preprocess_request = preprocess_request  # type: ignore[method-assign]
    app.process_response = process_response  # type: ignore[method-assign]


def current_recorder() -> Recorder | None:
    """The recorder of the current Flask app, if there is one and it is monitored."""
    if has_app_context():
        recorder: Recorder | None = current_app.extensions.get(EXTENSION_KEY)
        return recorder
    return None


def _borrow_span(rec: RequestRecord) -> None:
    """Use FlaskInstrumentor's span when the app has one (one server span, never two); a
    fault counts as ``flask`` and never raises."""
    if rec.span is not None or rec.recorder.traces is None:
        return  # ours, or one borrowed already, or no tracing
    try:
        span = trace.get_current_span()
        if span.get_span_context().is_valid:
            rec.own_span = False
            TraceSink.adopt(rec, span)
    except Exception as exc:
        guard.report_fault("flask", exc, rec.recorder)


def _borrows(app: Flask, recorder: Recorder) -> bool:
    """Whether FlaskInstrumentor owns the server span: it does unless its spans go nowhere
    (no global provider set, so mlmonitor traces with its own)."""
    if not getattr(app, "_is_instrumented_by_opentelemetry", False):
        return False
    traces = recorder.traces  # set: the engine asks only when it traces
    provider = trace._TRACER_PROVIDER  # noqa: SLF001 (the global provider, read without os.environ)
    return traces is None or not traces.own_provider or provider is not None


def _route_at_start(app: Flask, environ: dict[str, Any]) -> Any:
    """The URL rule before Flask routes (spans for MLflow only: it reads the name at start)."""
    rule, _ = app.url_map.bind_to_environ(environ).match(return_rule=True)
    return rule.rule


def _capture_io(rec: RequestRecord, response: Any) -> None:
    """``capture_io=True``, after the view: the request's JSON and the JSON the view returned.

    The request's is what the view already parsed or read (Werkzeug caches both); if it read
    nothing, at most :data:`~mlmonitor.previews.MAX_IO_BYTES` + 1 bytes are read now, and only
    for a buffered response (a streamed one may still read the request). A response is copied
    only when its buffered body is within the cap. A chunked upload of any size costs no more.
    """
    req = _current_request()
    inputs = None
    if req.is_json:
        parsed = [v for v in getattr(req, "_cached_json", ()) if v is not Ellipsis]
        if parsed:  # the view's get_json() / .json
            inputs = parsed[0]
        else:
            data = getattr(req, "_cached_data", None)  # the view's get_data() / .data
            if data is None and response.is_sequence:  # the client went away, a 413...
                inputs = previews.read_json(req.stream.read, (OSError, ValueError, HTTPException))
            else:
                inputs = json_within(data)
    outputs = None
    if response.is_json and response.is_sequence \
            and response.calculate_content_length() <= MAX_IO_BYTES:
        outputs = json_within(response.get_data())
    previews.keep(rec, inputs, outputs)


def _current_request() -> Any:
    """The request without the LocalProxy indirection (~1 us), where Flask allows it."""
    ctx = _cv_request.get(None) if _cv_request is not None else None
    return ctx.request if ctx is not None else request


def _before_request(rec: RequestRecord) -> None:
    """The URL rule is the route; FlaskInstrumentor's span is borrowed if it has one."""
    try:  # every request: a try, not guarded()
        ctx = _cv_request.get(None) if _cv_request is not None else None  # _current_request()
        rule = (ctx.request if ctx is not None else request).url_rule
        rec.recorder.route_known(rec, rule.rule if rule is not None else UNMATCHED_ROUTE)
        if rec.span is None and rec.recorder.traces is not None:
            _borrow_span(rec)
            if rec.span is None:  # FlaskInstrumentor's hook may run after ours: look again later
                after_this_request(_after_request)
    except Exception as exc:
        guard.report_fault("flask", exc, rec.recorder)


def _after_request(response: Any) -> Any:
    rec = RECORD_VAR.get()
    if rec is not None and rec.span is None:
        try:
            _borrow_span(rec)
        except Exception as exc:
            guard.report_fault("flask", exc, rec.recorder)
        context.annotate_borrowed(rec)
    return response


def _after_request_last(response: Any) -> Any:
    """Runs after the app's own after-request hooks: the route if a hook answered before
    ours ran, and a materialised body is recorded when the app returns (the test client
    without ``buffered=True`` never closes it); a streamed one still at ``close()``."""
    rec = RECORD_VAR.get()
    if rec is None or rec.finished:
        return response
    try:
        if rec.route is None:
            rule = _current_request().url_rule
            rec.recorder.route_known(rec, rule.rule if rule is not None else UNMATCHED_ROUTE)
        sequence = response.is_sequence
        if not sequence and type(response.response) is ClosingIterator \
                and response.status_code >= 400 and not response.direct_passthrough:
            response.make_sequence()  # an HTTPException's page (abort, 404, 500): a few bytes
            sequence = response.is_sequence
        if sequence:
            rec.environ[MATERIALISED] = True
        if rec.recorder.settings.capture_io and rec.is_prediction:
            _capture_io(rec, response)
    except Exception as exc:
        guard.report_fault("flask", exc, rec.recorder)
    return response
