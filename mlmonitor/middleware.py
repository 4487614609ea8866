"""MonitorMiddleware: the WSGI adapter; turns a WSGI request into the engine's calls.

It imports no Flask. It begins the request with the app's :class:`~mlmonitor.engine.Recorder`,
captures the status, adds the request id header, and wraps the body so the record is finished
when the server closes it (:mod:`mlmonitor.body`). The app's own exceptions pass through
untouched; mlmonitor's faults are counted and never raised.

Example::

    from mlmonitor import MonitorMiddleware
    app = MonitorMiddleware(wsgi_app, model_name="iris", model_version="v1",
                            prediction_paths=["/predict", "/v1/models/<name>:predict"],
                            routes=["/healthz", "/items/{id}"])

Which requests are charged to a model, and how: see :mod:`mlmonitor.engine`.
"""
from __future__ import annotations

from typing import Any, TextIO
from collections.abc import Callable, Iterable

from . import guard
from .body import MonitoredBody, StreamedBody
from .config import Settings
from .disconnect import watch_input
from .engine import Recorder

__all__ = ["MonitorMiddleware", "MATERIALISED"]

#: environ key an app layer sets when its body is a materialised sequence (nothing left to run):
#: the record is then finished when the app returns, not at ``close()``, which a server or a
#: test client may never call
MATERIALISED = "mlmonitor.materialised"


class MonitorMiddleware:
    """Wrap any WSGI app: metrics, one JSON log line and a span for every request.

    The keyword arguments are those of :class:`~mlmonitor.engine.Recorder`: the settings,
    ``registry``, ``tracer_provider``, ``log_stream``, ``route_from_app`` (the app names the
    route, as the Flask layer and Django do), ``borrow_span`` and ``framework``. ``recorder``: the engine
    underneath (its settings, sinks, references and feedback).
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], *, settings: Settings | None = None,
                 registry: Any = None, tracer_provider: Any = None,
                 log_stream: TextIO | None = None, route_from_app: bool = False,
                 borrow_span: Callable[[], bool] | None = None, framework: str | None = None,
                 **options: Any) -> None:
        self.app = app
        self.recorder = Recorder(settings=settings, registry=registry,
                                 tracer_provider=tracer_provider, log_stream=log_stream,
                                 route_from_app=route_from_app, borrow_span=borrow_span,
                                 framework=framework, **options)

    def set_reference(self, model_name: str, reference: Any) -> None:
        """Use a reference profile (object or JSON path) for a model's drift metrics."""
        self.recorder.set_reference(model_name, reference)

    def count_fault(self, component: str) -> None:
        """One fault of mlmonitor, in this app's metrics (an owner for :mod:`mlmonitor.guard`)."""
        self.recorder.count_fault(component)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        recorder = self.recorder
        if recorder.metrics_path is not None and environ.get("PATH_INFO") == recorder.metrics_path:
            return recorder.endpoint(environ, start_response)  # type: ignore[misc]
        try:
            rec = recorder.begin(environ)
        except Exception as exc:
            guard.report_fault("middleware", exc, recorder)
            return self.app(environ, start_response)
        try:
            watch_input(environ, rec)  # a body that ends early: the client went away
        except Exception as exc:
            guard.report_fault("middleware", exc, recorder)
        tokens = recorder.enter(rec)

        def monitored_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            try:
                rec.status_code = int(status[:3])
                wanted = recorder.request_id_header_lower
                for name, _ in headers:  # a plain loop: ~1 us cheaper than any() on a generator
                    if name.lower() == wanted:
                        break
                else:
                    headers = list(headers)
                    headers.append((recorder.request_id_header, rec.request_id))
            except Exception as exc:
                guard.report_fault("middleware", exc, recorder)
            return start_response(status, headers, exc_info)

        try:
            body = self.app(environ, monitored_start_response)
        except BaseException as exc:
            rec.exc = exc
            rec.status_code = 0  # nothing was sent: the server answers 500, whatever start_response said
            recorder.finish(rec)
            raise
        finally:
            recorder.leave(tokens)
        if type(body) is list or type(body) is tuple:  # buffered: no app code runs in iteration
            return MonitoredBody(body, rec, recorder)
        if MATERIALISED in environ:  # the Flask layer saw a materialised body: record it now
            recorder.finish(rec)
            return body
        return StreamedBody(body, rec, recorder)
