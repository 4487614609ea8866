"""The FastAPI/Starlette layer: the ASGI adapter plus the router's route templates.

``mlmonitor.Monitor(app)`` (or ``Monitor()`` then ``init_app(app)``) puts
:class:`~mlmonitor.asgi.MonitorASGIMiddleware` around the app's whole middleware stack (outside
Starlette's ``ServerErrorMiddleware``, so its 500 carries the request id, and the exception it
re-raises is recorded with its stack) and labels each request with the path template of the route
that matches it (``/v1/models/{name}:predict``), found the way Starlette's router finds it.
``@monitor.prediction`` works on ``async def`` and plain ``def`` endpoints: FastAPI runs the
latter in a thread pool that copies the request's context, so the record follows it.

Example::

    from fastapi import FastAPI
    from mlmonitor import Monitor

    app = FastAPI()
    monitor = Monitor(app, model_name="iris", model_version="v1")

    @app.post("/predict")
    @monitor.prediction
    async def predict(payload: dict):
        with monitor.stage("inference"):
            ...
"""
from __future__ import annotations

import sys
from typing import Any

from .asgi import MonitorASGIMiddleware
from .config import resolve
from .engine import Recorder

__all__ = ["attach", "is_starlette_app", "route_template", "RouteTemplates"]

#: the route cache holds (method, path) keys of at most this many bytes (``/items/123``, not an
#: attacker's 60 KB path: that one is matched again each time, as the router itself does)
_KEY_BYTES = 512
#: ... and this many bytes in all, counting each entry's overhead; when full it starts afresh,
#: so that paths a hostile client sent once cannot keep the app's own ones out
_CACHE_BYTES = 1 << 20
#: a cache entry beyond its two strings: the key's tuple and the dict's slot
_ENTRY_BYTES = 160


def is_starlette_app(app: Any) -> bool:
    """A FastAPI or Starlette app (checked by class, without importing either)."""
    return any(klass.__module__.split(".")[0] in ("starlette", "fastapi")
               for klass in type(app).__mro__)


def attach(app: Any, options: dict[str, Any]) -> Recorder:
    """Put the ASGI adapter around ``app``'s middleware stack (before it starts); the app's
    recorder, also kept in ``app.state.mlmonitor``."""
    state = getattr(app, "state", None)
    if state is not None and getattr(state, "mlmonitor", None) is not None:
        raise RuntimeError("mlmonitor is already registered on this app; "
                           "call Monitor(app) or monitor.init_app(app) once per app")
    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("mlmonitor: call Monitor(app) before the app starts serving")
    options = dict(options)
    registry = options.pop("registry", None)
    tracer_provider = options.pop("tracer_provider", None)
    log_stream = options.pop("log_stream", None)
    fastapi = any(klass.__module__.split(".")[0] == "fastapi" for klass in type(app).__mro__)
    recorder = Recorder(settings=resolve(options), registry=registry,
                        tracer_provider=tracer_provider, log_stream=log_stream,
                        route_from_app=True, framework="FASTAPI" if fastapi else "STARLETTE")
    route_of = RouteTemplates(app)
    build = app.build_middleware_stack

    def build_middleware_stack() -> Any:  # outermost, as OTel's FastAPI instrumentation is
        return MonitorASGIMiddleware(build(), recorder=recorder, route_of=route_of)

    app.build_middleware_stack = build_middleware_stack
    if state is not None:
        state.mlmonitor = recorder
    return recorder


class RouteTemplates:
    """``scope -> template``: the path template of the route the app's router would pick."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cache: dict[Any, str | None] = {}
        #: bytes the cache holds, as counted when adding (at most ``_CACHE_BYTES``)
        self.size = 0

    def __call__(self, scope: dict[str, Any]) -> str | None:
        method, path = scope.get("method"), scope.get("path")
        key = (method, path)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        template = route_template(getattr(self.app, "routes", ()), scope)
        if template is not None and type(method) is str and type(path) is str:
            size = sys.getsizeof(method) + sys.getsizeof(path)
            if size <= _KEY_BYTES:
                if self.size + size + _ENTRY_BYTES > _CACHE_BYTES:
                    self.cache = {}
                    self.size = 0
                self.cache[key] = template
                self.size += size + _ENTRY_BYTES
        return template


def route_template(routes: Any, scope: dict[str, Any]) -> str | None:
    """The template of the first route matching ``scope`` in full (else of the first partial
    match: a wrong method), mounted routers followed with their prefix."""
    from starlette.routing import Match, Mount  # noqa: PLC0415 (optional dependency: this module imports none)
    partial = None
    for route in routes:
        match, child_scope = route.matches(scope)
        if match == Match.NONE:
            continue
        if isinstance(route, Mount):
            inner_routes = route.routes
            if not inner_routes:  # a mounted app without routes (static files, a sub-app)
                template: str | None = route.path
            else:
                inner = route_template(inner_routes, {**scope, **child_scope})
                template = route.path + inner if inner is not None else None
        else:
            template = getattr(route, "path", None)
        if match == Match.FULL:
            return template
        if partial is None:
            partial = template
    return partial
