"""The prediction wrapper every framework shares: ``@monitor.prediction`` and Django's ``@prediction``.

Written once, for ``def`` and ``async def`` views alike, and used by Flask, FastAPI/Starlette
and Django; a framework says only what it adds: through a small :class:`ViewLayer` (where the
record is, where the ``capture_io`` previews come from) and the recorder's ``prediction_hook``
(Flask adopts FlaskInstrumentor's span there). The record is found in the context variable, which
Flask's asgiref, Starlette's thread pool, Django's async adapters and asyncio tasks all copy.

One rule for a ``model_name`` / ``model_version`` callable, in every framework: it is called
per request with the arguments the view is called with (Flask: the URL variables as keywords;
FastAPI: the endpoint's parameters as keywords; Django: the request, then the URL arguments).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import time
from typing import Any
from collections.abc import Callable

from . import context, guard, previews
from .config import ConfigError
from .engine import Recorder
from .lineage import register_lineage, resolve_model_uri
from .record import RECORD_VAR, RequestRecord

__all__ = ["ViewLayer", "prediction_view", "model_of", "keep_io", "from_model_uri"]

_perf = time.perf_counter


class ViewLayer:
    """What a framework adds around a prediction view; these defaults suit FastAPI/Starlette."""

    #: the ``component`` of a fault while a prediction begins
    component = "prediction"

    def record_of(self, args: tuple[Any, ...]) -> RequestRecord | None:  # noqa: ARG002 (a framework's layer reads them)
        """The request's record (None: not a request mlmonitor serves)."""
        return RECORD_VAR.get()

    def previews(self, rec: RequestRecord, args: tuple[Any, ...], kwargs: dict[str, Any],  # noqa: ARG002 (as above)
                 result: Any) -> None:
        """``capture_io``: the view's parsed arguments and its result."""
        keep_io(rec, kwargs, result)


VIEWS = ViewLayer()


def model_of(value: Any, recorder: Recorder, component: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A name or version of a prediction view: a callable is called with the view's arguments
    (the one rule); a fault counts and gives None (the default), never raises into the view."""
    if not callable(value):
        return value
    try:
        value = value(*args, **kwargs)
    except Exception as exc:
        guard.report_fault(component, exc, recorder)
        return None
    return str(value)[:128] if value is not None and value != "" else None


def prediction_view(view: Callable[..., Any], model_name: Any, model_version: Any,
                    layer: ViewLayer = VIEWS) -> Callable[..., Any]:
    """``view`` wrapped so that each call is a prediction of the model; sync or async alike.
    Its exceptions pass through untouched (the framework's error handling answers them)."""
    dynamic = callable(model_name) or callable(model_version)
    # the default layer finds the record in the context variable: no call per request
    record_of = None if type(layer) is ViewLayer else layer.record_of

    def begin(rec: RequestRecord, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        recorder = rec.recorder
        try:  # every prediction: a try costs nothing, guarded() ~2-4k instructions
            if dynamic:
                name = model_of(model_name, recorder, "model_name", args, kwargs)
                version = model_of(model_version, recorder, "model_version", args, kwargs)
                recorder.begin_prediction(rec, name, version)
            else:
                recorder.begin_prediction(rec, model_name, model_version)
            hook = recorder.prediction_hook
            if hook is not None:
                hook(rec)
        except Exception as exc:
            guard.report_fault(layer.component, exc, recorder)

    def previews(rec: RequestRecord, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any) -> None:
        """``capture_io``: the layer's previews, once the view returned."""
        if rec.environ is not None:
            try:
                layer.previews(rec, args, kwargs, result)
            except Exception as exc:
                guard.report_fault("traces", exc, rec.recorder)

    if inspect.iscoroutinefunction(view):
        @functools.wraps(view)
        async def monitored_async_view(*args: Any, **kwargs: Any) -> Any:
            rec = RECORD_VAR.get() if record_of is None else record_of(args)
            if rec is None or rec.finished:
                return await view(*args, **kwargs)
            begin(rec, args, kwargs)
            started = _perf()
            try:
                result = await view(*args, **kwargs)
            except BaseException as exc:
                rec.exc = exc
                raise
            finally:
                rec.prediction_seconds = _perf() - started
                if rec.span is not None and not rec.own_span:  # a borrowed span: no call else
                    context.annotate_borrowed(rec)
            if rec.recorder.settings.capture_io:
                previews(rec, args, kwargs, result)
            return result

        monitored_async_view.mlmonitor_prediction = True  # type: ignore[attr-defined]
        return _with_signature(monitored_async_view, view)

    @functools.wraps(view)
    def monitored_view(*args: Any, **kwargs: Any) -> Any:
        rec = RECORD_VAR.get() if record_of is None else record_of(args)
        if rec is None or rec.finished:
            return view(*args, **kwargs)
        begin(rec, args, kwargs)
        started = _perf()
        try:
            result = view(*args, **kwargs)
        except BaseException as exc:
            rec.exc = exc
            raise
        finally:
            rec.prediction_seconds = _perf() - started
            if rec.span is not None and not rec.own_span:  # a borrowed span: no call else
                context.annotate_borrowed(rec)
        if rec.recorder.settings.capture_io:
            previews(rec, args, kwargs, result)
        return result

    monitored_view.mlmonitor_prediction = True  # type: ignore[attr-defined]
    return _with_signature(monitored_view, view)


def keep_io(rec: RequestRecord, kwargs: dict[str, Any], result: Any) -> None:
    """``capture_io=True`` (MLflow previews): the view's parsed arguments (FastAPI hands the
    JSON body to the view, as a dict or a pydantic model) and the JSON-like value it returned,
    kept as they are (the preview reads only their heads; no request stream is read here).
    Flask's and Django's layers read the request's and the response's JSON instead (Flask's
    replaces these once the response is final)."""
    inputs = {k: v for k, v in kwargs.items() if previews.json_like(v) is not None}
    previews.keep(rec, inputs or None, previews.json_like(result))


def _with_signature(wrapper: Callable[..., Any], view: Callable[..., Any]) -> Callable[..., Any]:
    """The view's signature with its annotations evaluated where the view was written: a
    framework that reads string annotations (``from __future__ import annotations``) in the
    wrapper's module would not find them (FastAPI before 0.116 answered 422)."""
    # a name only known to type checkers: leave the signature as it is
    with contextlib.suppress(Exception):
        wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
    return wrapper


def from_model_uri(uri: str, model_name: Any, model_version: Any) -> tuple[Any, Any]:
    """Name and version of ``@prediction(model_uri=...)``; its lineage registered."""
    try:
        parts = resolve_model_uri(uri)
    except ValueError as exc:  # it does not parse or cannot be resolved
        raise ConfigError(str(exc)) from None
    model_name = model_name or parts["name"]
    model_version = model_version or parts["version"]
    if not isinstance(model_name, str):
        raise ConfigError(f"@monitor.prediction(model_uri={uri!r}): the URI names no registered "
                          "model; give model_name= too")
    register_lineage(model_name, "" if model_version is None or callable(model_version)
                     else str(model_version)[:128], parts["run_id"], parts["model_id"])
    return model_name, model_version
