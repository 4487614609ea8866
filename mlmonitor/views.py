"""What every framework's ``Monitor`` shares: ``@monitor.prediction`` and the in-request helpers.

A framework layer (Flask, Starlette/FastAPI) subclasses :class:`MonitorBase` and adds only
how it wraps the app and learns the route. The prediction wrapper is the same for sync and
``async def`` views: the record is found in the context variable, which Flask's asgiref,
Starlette's thread pool and asyncio tasks all copy.
"""
from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable, Optional

from . import context, guard, previews
from .record import RequestRecord, _current

__all__ = ["MonitorBase", "prediction_view", "begin_view"]

_perf = time.perf_counter


def begin_view(rec: RequestRecord, model_name: Any, model_version: Any) -> None:
    """A prediction view starts: its model (a callable is evaluated now) and version."""
    middleware = rec.middleware
    try:  # every prediction: a try costs nothing, guarded() ~2-4k instructions
        middleware.begin_prediction(rec, context.model_name_of(model_name, middleware),
                                    model_version)
    except Exception as exc:
        guard.report_fault("prediction", exc, middleware)


def prediction_view(view: Callable, model_name: Any, model_version: Any,
                    begin: Callable[[RequestRecord, Any, Any], None] = begin_view,
                    previews_from_view: bool = True) -> Callable:
    """``view`` wrapped so that each call is a prediction of the model; sync or async alike.
    Its exceptions pass through untouched (the framework's error handling answers them)."""
    if inspect.iscoroutinefunction(view):
        @functools.wraps(view)
        async def monitored_async_view(*args: Any, **kwargs: Any) -> Any:
            rec = _current.get()
            if rec is None:
                return await view(*args, **kwargs)
            begin(rec, model_name, model_version)
            started = _perf()
            try:
                result = await view(*args, **kwargs)
                if previews_from_view and rec.middleware.settings.capture_io:
                    keep_io(rec, kwargs, result)
                return result
            except BaseException as exc:
                rec.exc = exc
                raise
            finally:
                rec.prediction_seconds = _perf() - started
                context.annotate_borrowed(rec)

        monitored_async_view.mlmonitor_prediction = True  # type: ignore[attr-defined]
        return _with_signature(monitored_async_view, view)

    @functools.wraps(view)
    def monitored_view(*args: Any, **kwargs: Any) -> Any:
        rec = _current.get()
        if rec is None:
            return view(*args, **kwargs)
        begin(rec, model_name, model_version)
        started = _perf()
        try:
            result = view(*args, **kwargs)
            if previews_from_view and rec.middleware.settings.capture_io:
                keep_io(rec, kwargs, result)
            return result
        except BaseException as exc:
            rec.exc = exc
            raise
        finally:
            rec.prediction_seconds = _perf() - started
            context.annotate_borrowed(rec)

    monitored_view.mlmonitor_prediction = True  # type: ignore[attr-defined]
    return _with_signature(monitored_view, view)


def keep_io(rec: RequestRecord, kwargs: dict, result: Any) -> None:
    """``capture_io=True`` (MLflow previews): the view's parsed arguments (FastAPI hands the
    JSON body to the view, as a dict or a pydantic model) and the JSON-like value it returned,
    kept as they are (the preview reads only their heads; no request stream is read here).
    Not for Flask, whose layer reads the request's and the response's JSON instead."""
    try:
        inputs = {k: v for k, v in kwargs.items() if previews.json_like(v) is not None}
        previews.keep(rec, inputs or None, previews.json_like(result))
    except Exception as exc:
        guard.report_fault("traces", exc, rec.middleware)


def _with_signature(wrapper: Callable, view: Callable) -> Callable:
    """The view's signature with its annotations evaluated where the view was written: a
    framework that reads string annotations (``from __future__ import annotations``) in the
    wrapper's module would not find them (FastAPI before 0.116 answered 422)."""
    try:
        wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
    except Exception:  # a name only known to type checkers: leave the signature as it is
        pass
    return wrapper


def _from_model_uri(uri: str, model_name: Any, model_version: Any) -> Any:
    """Name and version of ``@monitor.prediction(model_uri=...)``; its lineage registered."""
    from .config import ConfigError
    from .mlflow import register_lineage, resolve_model_uri
    parts = resolve_model_uri(uri)
    model_name = model_name or parts["name"]
    model_version = model_version or parts["version"]
    if not isinstance(model_name, str):
        raise ConfigError(f"@monitor.prediction(model_uri={uri!r}): the URI names no registered "
                          "model; give model_name= too")
    register_lineage(model_name, "" if model_version is None or callable(model_version)
                     else str(model_version)[:128], parts["run_id"], parts["model_id"])
    return model_name, model_version


class MonitorBase:
    """``@monitor.prediction``, references and the in-request helpers of a framework Monitor.

    A subclass builds one :class:`~mlmonitor.middleware.MonitorMiddleware` per app in
    ``init_app``, passes it to :meth:`_attach`, and may override :meth:`_begin_view` (Flask
    borrows FlaskInstrumentor's span there) and :meth:`_middleware`.
    """

    def __init__(self, app: Any = None, **options: Any) -> None:
        self.options = options
        self._view_references: list = []
        self._view_models: list = []
        self._middlewares: list = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any, **options: Any) -> None:  # pragma: no cover - per framework
        raise NotImplementedError

    def _attach(self, middleware: Any) -> None:
        """A new app's middleware: the references and models declared so far apply to it."""
        for name, reference in self._view_references:
            middleware.set_reference(name, reference)
        for name, version in self._view_models:
            middleware.declare_model(name, version)
        self._middlewares.append(middleware)

    def prediction(self, view: Optional[Callable] = None, *, model_name: Any = None,
                   model_version: Any = None, reference: Any = None,
                   model_uri: Optional[str] = None) -> Any:
        """Mark a view as a prediction endpoint (``@monitor.prediction`` or with arguments).

        ``model_name`` and ``model_version`` may be callables evaluated per request; ``def``
        and ``async def`` views alike. The view is called as it is: its exceptions reach the
        framework's error handling untouched. A fixed model gets its series at start-up.
        ``model_uri`` (an MLflow model URI) gives the name, version and lineage, resolved now.
        """
        if view is None:
            return functools.partial(self.prediction, model_name=model_name,
                                     model_version=model_version, reference=reference,
                                     model_uri=model_uri)
        if model_uri is not None:
            model_name, model_version = _from_model_uri(model_uri, model_name, model_version)
        if reference is not None:
            if model_name is None or callable(model_name):
                raise ValueError("@monitor.prediction(reference=...) needs a fixed model_name=; "
                                 "for per-request names use monitor.set_reference(name, ref)")
            self.set_reference(model_name, reference)
        self._view_models.append((model_name, model_version))
        for middleware in self._middlewares:  # views declared after init_app
            middleware.declare_model(model_name, model_version)
        return prediction_view(view, model_name, model_version, self._begin_view,
                               self._previews_from_view)

    _begin_view = staticmethod(begin_view)
    #: capture_io previews from the view's arguments and result (False: the framework layer
    #: reads them from the request and response, as Flask does)
    _previews_from_view = True

    def set_reference(self, model_name: str, reference: Any) -> None:
        """Use a reference profile (a ``ReferenceProfile`` or a JSON path) for one model's
        drift metrics: one call per model of a multi-model server. Before or after
        ``init_app``; a bad file raises ConfigError (and is not kept)."""
        for middleware in self._middlewares:
            middleware.set_reference(model_name, reference)
        self._view_references.append((model_name, reference))

    def record_feedback(self, prediction_id: str, label: Any) -> str:
        """Count ground truth for a signed prediction id (see :mod:`mlmonitor.feedback`)."""
        rec = _current.get()
        middleware = rec.middleware if rec is not None else self._middleware()
        return context.record_feedback(prediction_id, label, middleware=middleware)

    def _middleware(self) -> Any:
        """The middleware outside a request: the newest app's."""
        if not self._middlewares:
            raise RuntimeError("mlmonitor: call Monitor(app) or monitor.init_app(app) first")
        return self._middlewares[-1]

    # -- in-request helpers (also usable as module functions) ------------------------
    stage = staticmethod(context.stage)
    tag = staticmethod(context.tag)
    set_model_version = staticmethod(context.set_model_version)
    observe = staticmethod(context.observe)
    observe_batch = staticmethod(context.observe_batch)
    prediction_id = staticmethod(context.prediction_id)
    prediction_ids = staticmethod(context.prediction_ids)
