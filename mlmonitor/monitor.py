"""``Monitor``: the one-line extension for Flask and FastAPI/Starlette apps alike.

``Monitor(app)`` or ``Monitor()`` then ``init_app(app)``: a Flask app gets the WSGI adapter
(:mod:`mlmonitor.flask`), a FastAPI or Starlette app the ASGI one (:mod:`mlmonitor.fastapi`);
either way one :class:`~mlmonitor.engine.Recorder` per app, and the same ``@monitor.prediction``
and in-request helpers. Views may be declared before ``init_app`` (an app factory).

Example::

    from flask import Flask
    from mlmonitor import Monitor

    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="v1")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        with monitor.stage("inference"):
            ...
"""
from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable

from . import context, fastapi, flask
from .engine import Recorder
from .record import RECORD_VAR
from .views import from_model_uri, prediction_view

__all__ = ["Monitor"]


class Monitor:
    """Observability for a Flask, FastAPI or Starlette model server in one line.

    Keyword options are settings (see the README's configuration table) plus ``registry``,
    ``tracer_provider`` and ``log_stream``; those given to :meth:`init_app` override them.
    """

    def __init__(self, app: Any = None, **options: Any) -> None:
        self.options = options
        self._view_references: list[tuple[str, Any]] = []
        self._view_models: list[tuple[Any, Any]] = []
        self._recorders: list[Recorder] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any, **options: Any) -> None:
        """Monitor ``app`` (before it serves); RuntimeError when it is monitored already."""
        merged = {**self.options, **options}
        if fastapi.is_starlette_app(app):
            recorder = fastapi.attach(app, merged)
        elif flask.is_flask_app(app):
            recorder = flask.attach(app, merged)
        else:
            raise TypeError("Monitor(app) takes a Flask, FastAPI or Starlette app; wrap any other "
                            "WSGI app with MonitorMiddleware, an ASGI app with MonitorASGIMiddleware")
        for name, reference in self._view_references:  # declared so far: they apply to it
            recorder.set_reference(name, reference)
        for model_name, model_version in self._view_models:
            recorder.declare_model(model_name, model_version)
        self._recorders.append(recorder)

    def prediction(self, view: Callable[..., Any] | None = None, *, model_name: Any = None,
                   model_version: Any = None, reference: Any = None,
                   model_uri: str | None = None) -> Any:
        """Mark a view as a prediction endpoint (``@monitor.prediction`` or with arguments).

        ``model_name`` and ``model_version`` may be callables, called per request with the
        view's arguments (Flask: the URL variables; FastAPI: the endpoint's parameters, as
        keywords); ``def`` and ``async def`` views alike. The view is called as it is: its
        exceptions reach the framework's error handling untouched. A fixed model gets its
        series at start-up. ``model_uri`` (an MLflow model URI) gives the name, version and
        lineage, resolved now.
        """
        if view is None:
            return functools.partial(self.prediction, model_name=model_name,
                                     model_version=model_version, reference=reference,
                                     model_uri=model_uri)
        if model_uri is not None:
            model_name, model_version = from_model_uri(model_uri, model_name, model_version)
        if reference is not None:
            if model_name is None or callable(model_name):
                raise ValueError("@monitor.prediction(reference=...) needs a fixed model_name=; "
                                 "for per-request names use monitor.set_reference(name, ref)")
            self.set_reference(model_name, reference)
        self._view_models.append((model_name, model_version))
        for recorder in self._recorders:  # views declared after init_app
            recorder.declare_model(model_name, model_version)
        return prediction_view(view, model_name, model_version)

    def set_reference(self, model_name: str, reference: Any) -> None:
        """Use a reference profile (a ``ReferenceProfile`` or a JSON path) for one model's
        drift metrics: one call per model of a multi-model server. Before or after
        ``init_app``; a bad file raises ConfigError (and is not kept)."""
        for recorder in self._recorders:
            recorder.set_reference(model_name, reference)
        self._view_references.append((model_name, reference))

    def record_feedback(self, prediction_id: str, label: Any) -> str | float:
        """Count ground truth for a signed prediction id (see :mod:`mlmonitor.feedback`)."""
        rec = RECORD_VAR.get()
        recorder = rec.recorder if rec is not None else self._recorder()
        return context.record_feedback(prediction_id, label, middleware=recorder)

    def _recorder(self) -> Recorder:
        """Outside a request: the current Flask app's recorder, else the newest app's."""
        if not self._recorders:
            raise RuntimeError("mlmonitor: call Monitor(app) or monitor.init_app(app) first")
        current = flask.current_recorder()
        return current if current is not None else self._recorders[-1]

    # -- in-request helpers (also usable as module functions) ------------------------
    stage = staticmethod(context.stage)
    tag = staticmethod(context.tag)
    set_model_version = staticmethod(context.set_model_version)
    observe = staticmethod(context.observe)
    observe_batch = staticmethod(context.observe_batch)
    prediction_id = staticmethod(context.prediction_id)
    prediction_ids = staticmethod(context.prediction_ids)
