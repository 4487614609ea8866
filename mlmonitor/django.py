"""The Django integration: ``mlmonitor.django.MonitorDjangoMiddleware`` in ``MIDDLEWARE``.

Django turns a view's exception into a 500 response before any WSGI layer sees it, and
its URL patterns are not paths; this middleware adds what only Django knows:

* the route label is the URL pattern (``request.resolver_match.route``, with a leading
  ``/``: ``/v1/models/<str:name>:predict``), ``unmatched`` when no pattern matched;
* a view's exception (``process_exception``) is kept on the request's record, so a 500
  has its error type, message and stack (secrets redacted) in the log line and span;
* :func:`prediction` marks a view (``def`` or ``async def``) as a prediction endpoint, with
  the same wrapper as ``@monitor.prediction``.

The middleware is sync and async capable: under Django's ASGI handler it runs on the event
loop, so an ``async def`` view is called without a hop to a thread. Two ways to use it (list it
first in ``MIDDLEWARE``, so it sees every answer):

* **alone**: the middleware owns the request (metrics, one log line, a span, ``/metrics``).
  Settings come from the ``MLMONITOR`` dict in Django's settings (the keyword arguments of
  ``MonitorMiddleware``), ``MLMONITOR_<SETTING>`` settings, then the environment.
* **with** ``MonitorMiddleware`` around ``get_wsgi_application()``: the WSGI layer owns the
  request (and times a streamed body to its end); this middleware only labels the route,
  keeps the exception and marks predictions. Its own settings are then unused.

Example::

    # settings.py
    MIDDLEWARE = ["mlmonitor.django.MonitorDjangoMiddleware", ...]
    MLMONITOR = {"model_version": "v1", "references": {"glucose": "ref/glucose.json"}}

    # views.py
    from mlmonitor.django import prediction

    @prediction(model_name=lambda request, name: name)   # the view's arguments
    def predict(request, name): ...

    @prediction(model_uri="models:/iris-clf/3")
    async def predict_async(request): ...
"""
from __future__ import annotations

import functools
import threading
import weakref
from typing import Any
from collections.abc import Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async

from . import guard, previews
from .config import resolve
from .disconnect import WatchedInput, declared_length, gone_at_close
from .engine import Recorder, Tokens
from .record import ENVIRON_KEY, UNMATCHED_ROUTE, RequestRecord
from .views import ViewLayer, from_model_uri, prediction_view

__all__ = ["MonitorDjangoMiddleware", "prediction", "set_reference"]

#: (model_name, model_version) of the views marked with @prediction, and the references set
_declared_models: list[tuple[Any, Any]] = []
_declared_references: list[tuple[str, Any]] = []
#: the recorders these declarations were applied to (both ways of use), weakly
_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
_lock = threading.Lock()
MAX_ROUTE = 256


def _adopt(recorder: Recorder) -> None:
    """Apply the declared models and references to a recorder seen for the first time."""
    with _lock:
        if recorder in _recorders:
            return
        _recorders.add(recorder)
        models, references = list(_declared_models), list(_declared_references)
    for name, reference in references:
        recorder.set_reference(name, reference)
    for name, version in models:
        recorder.declare_model(name, version)


def set_reference(model_name: str, reference: Any) -> None:
    """Use a reference profile (a ``ReferenceProfile`` or a JSON path) for one model's drift
    metrics, in every Django monitor of this process, now and later; a bad file raises
    ConfigError. (The ``references`` setting does the same from settings.)"""
    for recorder in list(_recorders):
        recorder.set_reference(model_name, reference)
    with _lock:
        _declared_references.append((model_name, reference))


def _settings_of_django() -> tuple[Any, ...]:
    """The ``MLMONITOR`` dict and the ``MLMONITOR_*`` settings of the Django project."""
    from django.conf import settings  # noqa: PLC0415 (optional dependency: imported when Django runs this)
    options = dict(getattr(settings, "MLMONITOR", None) or {})
    flat = {name: getattr(settings, name) for name in dir(settings)
            if name.startswith("MLMONITOR_")}
    return options, flat


class MonitorDjangoMiddleware:
    """Django middleware: route labels from URL patterns, 500s with their exception, and
    (without a ``MonitorMiddleware`` around the WSGI app) the request itself."""

    sync_capable = True
    async_capable = True  # under Django's ASGI handler: no thread hop around async views

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response
        options, flat = _settings_of_django()
        registry = options.pop("registry", None)
        tracer_provider = options.pop("tracer_provider", None)
        log_stream = options.pop("log_stream", None)
        # built now, so that a bad setting or reference fails at start-up, not in a request
        self.recorder = Recorder(settings=resolve(options, flat), registry=registry,
                                 tracer_provider=tracer_provider, log_stream=log_stream,
                                 route_from_app=True, framework="DJANGO")
        _adopt(self.recorder)
        self._last_outer: Recorder | None = None
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        rec = request.META.get(ENVIRON_KEY)
        if rec is not None:  # a MonitorMiddleware around the WSGI app owns the request
            self._outer(rec)
            response = self.get_response(request)
            self._outer_answered(request, rec)
            return response
        recorder = self.recorder
        if recorder.metrics_path is not None and request.path_info == recorder.metrics_path:
            return self._metrics(request)
        started = self._begin(request)
        if started is None:
            return self.get_response(request)
        rec, tokens = started
        try:
            response = self.get_response(request)
        except BaseException as exc:  # Django answers most exceptions itself; not this one
            self._failed(rec, exc)
            raise
        finally:
            recorder.leave(tokens)
        return self._answered(request, rec, response)

    async def _acall(self, request: Any) -> Any:
        """:meth:`__call__` under Django's ASGI handler: the same steps, the rest awaited."""
        rec = request.META.get(ENVIRON_KEY)
        if rec is not None:  # an outer layer owns the request
            self._outer(rec)
            response = await self.get_response(request)
            self._outer_answered(request, rec)
            return response
        recorder = self.recorder
        if recorder.metrics_path is not None and request.path_info == recorder.metrics_path:
            return await sync_to_async(self._metrics)(request)  # collected off the event loop
        started = self._begin(request)
        if started is None:
            return await self.get_response(request)
        rec, tokens = started
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            self._failed(rec, exc)
            raise
        finally:
            recorder.leave(tokens)
        return self._answered(request, rec, response)

    def _outer(self, rec: RequestRecord) -> None:
        """The outer layer's recorder gets the declared models and references once."""
        recorder = rec.recorder
        if recorder is not self._last_outer:
            try:
                _adopt(recorder)
            except Exception as exc:
                guard.report_fault("django", exc, recorder)
            self._last_outer = recorder

    def _outer_answered(self, request: Any, rec: RequestRecord) -> None:
        if rec.route is None and not rec.finished:
            try:
                rec.recorder.route_known(rec, _pattern_of(request))
            except Exception as exc:
                guard.report_fault("django", exc, rec.recorder)

    def _begin(self, request: Any) -> tuple[RequestRecord, Tokens] | None:
        """Alone: the request begins and its context is entered (None: a fault, unmonitored)."""
        recorder = self.recorder
        try:
            rec = recorder.begin(request.META)
        except Exception as exc:
            guard.report_fault("middleware", exc, recorder)
            return None
        try:
            watch_request_body(request, rec)  # a body that ends early: the client went away
        except Exception as exc:
            guard.report_fault("django", exc, recorder)
        return rec, recorder.enter(rec)

    def _failed(self, rec: RequestRecord, exc: BaseException) -> None:
        if rec.exc is None:
            rec.exc = exc
        rec.status_code = 0
        self.recorder.finish(rec)

    def _answered(self, request: Any, rec: RequestRecord, response: Any) -> Any:
        """Django's response: its status and route, the request id header, and the record
        finished now or, for a streamed response, when Django closes it."""
        recorder = self.recorder
        try:
            rec.status_code = response.status_code
            if rec.route is None:
                recorder.route_known(rec, _pattern_of(request))
            if not response.has_header(recorder.request_id_header):
                response[recorder.request_id_header] = rec.request_id
            closers = getattr(response, "_resource_closers", None)
            if response.streaming and closers is not None:
                closers.append(functools.partial(_finish_at_close, recorder, rec))
            else:
                recorder.finish(rec)
        except Exception as exc:
            guard.report_fault("django", exc, recorder)
        return response

    def _metrics(self, request: Any) -> Any:
        """``/metrics`` answered by the recorder's endpoint, as a Django response."""
        from django.http import HttpResponse  # noqa: PLC0415 (optional dependency: imported when Django runs this)
        answer: dict[str, Any] = {}
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], object]:  # noqa: ARG001 (WSGI's signature)
            answer["status"], answer["headers"] = int(status[:3]), headers
            return written.append  # WSGI's write(): the endpoint never calls it

        body = b"".join(self.recorder.endpoint(request.META, start_response))  # type: ignore[misc]
        response = HttpResponse(body, status=answer["status"])
        for name, value in answer["headers"]:
            response[name] = value
        return response

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:  # noqa: ARG002
        """The URL pattern is known: it is the route label."""
        rec = request.META.get(ENVIRON_KEY)
        if rec is None or rec.finished:
            return
        try:
            route = _label(request.resolver_match)
            gauge = rec.in_progress
            if gauge is not None and rec.route != route:  # labelled by path before Django ran
                gauge.inc(-1)  # the gauge child's value (see MetricsSink.start)
                rec.in_progress = None
            rec.recorder.route_known(rec, route)
        except Exception as exc:
            guard.report_fault("django", exc, rec.recorder)
        return

    def process_exception(self, request: Any, exception: BaseException) -> None:
        """Django is about to answer with its error page: keep the exception for the
        log line and the span (type, message, stack). Django's answer is unchanged."""
        rec = request.META.get(ENVIRON_KEY)
        if rec is not None and not rec.finished:
            rec.exc = exception


def _finish_at_close(recorder: Recorder, rec: RequestRecord) -> None:
    """A streamed response's close(): a failed write in flight there means the client left."""
    gone_at_close(rec)
    recorder.finish(rec)


def watch_request_body(request: Any, rec: RequestRecord) -> None:
    """Read the request's body stream (Django's own, made before any middleware runs) through
    :class:`WatchedInput`, so a body that ends before its Content-Length is seen."""
    stream = request.__dict__.get("_stream")
    length = declared_length(request.META)
    if stream is not None and length is not None:
        request._stream = WatchedInput(stream, rec, length)  # noqa: SLF001 (Django's own request object)


def _label(match: Any) -> str:
    """``/`` + the URL pattern of a resolver match, or ``unmatched``."""
    route = getattr(match, "route", None) if match is not None else None
    return ("/" + route.lstrip("/"))[:MAX_ROUTE] if route else UNMATCHED_ROUTE


def _pattern_of(request: Any) -> str:
    """The pattern of a request answered before its view ran (an auth middleware's 401):
    resolved now, as Django would have; ``unmatched`` when no pattern matches."""
    from django.urls import Resolver404, get_resolver  # noqa: PLC0415 (optional dependency, as above)
    try:
        return _label(get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info))
    except Resolver404:
        return UNMATCHED_ROUTE


class DjangoViews(ViewLayer):
    """Django's part of the shared prediction wrapper: the record is on the request (its
    ``META``), and the ``capture_io`` previews come from the request's and the response's JSON."""

    component = "django"

    def record_of(self, args: tuple[Any, ...]) -> RequestRecord | None:
        meta = getattr(args[0], "META", None) if args else None
        return meta.get(ENVIRON_KEY) if meta is not None else None

    def previews(self, rec: RequestRecord, args: tuple[Any, ...], kwargs: dict[str, Any],  # noqa: ARG002 (ViewLayer's signature)
                 result: Any) -> None:
        _capture_io(rec, args[0], result)


DJANGO_VIEWS = DjangoViews()


def prediction(view: Callable[..., Any] | None = None, *, model_name: Any = None,
               model_version: Any = None, reference: Any = None,
               model_uri: str | None = None) -> Any:
    """Mark a Django view (``def`` or ``async def``) as a prediction endpoint (``@prediction``
    or with arguments), with the wrapper ``@monitor.prediction`` uses.

    ``model_name`` and ``model_version`` may be callables, called with the view's own
    arguments (``lambda request, name: name``) for each request. ``model_uri`` (an MLflow model
    URI) gives the name, version and lineage, resolved now. The request is charged to the
    model once the view starts; a 401, 403, 404 or 405 answer stays HTTP-only.
    """
    if view is None:
        return functools.partial(prediction, model_name=model_name, model_version=model_version,
                                 reference=reference, model_uri=model_uri)
    if model_uri is not None:
        model_name, model_version = from_model_uri(model_uri, model_name, model_version)
    if reference is not None:
        if model_name is None or callable(model_name):
            raise ValueError("@prediction(reference=...) needs a fixed model_name=; "
                             "for per-request names use mlmonitor.django.set_reference()")
        set_reference(model_name, reference)
    with _lock:
        _declared_models.append((model_name, model_version))
        recorders = list(_recorders)
    for recorder in recorders:
        recorder.declare_model(model_name, model_version)
    return prediction_view(view, model_name, model_version, DJANGO_VIEWS)


def _capture_io(rec: RequestRecord, request: Any, response: Any) -> None:
    """``capture_io=True`` (MLflow previews): the JSON request body and the JSON response, each
    at most :data:`~mlmonitor.previews.MAX_IO_BYTES`. The body is the one the view read, or one
    whose Content-Length is within the cap (read through Django, so it stays readable); a body
    of unknown length the view did not read is not read. A streamed response is not read, and a
    larger buffered one is not copied."""
    from django.core.exceptions import RequestDataTooBig  # noqa: PLC0415 (optional dependency, as above)
    from django.http.request import RawPostDataException  # noqa: PLC0415 (optional dependency, as above)

    inputs = outputs = None
    if request.content_type == "application/json":
        length = request.META.get("CONTENT_LENGTH") or ""
        known = length.isascii() and length.isdigit() and int(length) <= previews.MAX_IO_BYTES
        if known or "_body" in request.__dict__:  # within the cap, or read by the view
            # the view read the stream itself, a smaller upload limit, or the client went away
            inputs = previews.read_json(lambda _size: request.body,
                                        (RawPostDataException, RequestDataTooBig, OSError))
    container = getattr(response, "_container", None)
    if not getattr(response, "streaming", True) and isinstance(container, list) and \
            response.get("Content-Type", "").startswith("application/json") and \
            sum(len(chunk) for chunk in container) <= previews.MAX_IO_BYTES:
        outputs = previews.json_within(response.content)
    previews.keep(rec, inputs, outputs)
