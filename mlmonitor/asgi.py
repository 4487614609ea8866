"""MonitorASGIMiddleware: the ASGI 3 adapter; turns an ASGI request into the engine's calls.

Pure ASGI: it imports no Starlette or FastAPI. The app's :class:`~mlmonitor.engine.Recorder`
does everything but the protocol: the settings, the :class:`RequestRecord`, the route matching,
the three sinks and ``/metrics``. Only the ``http`` scope is monitored; ``lifespan`` and
``websocket`` pass through untouched. A request is finished when its last body chunk has
been sent (time to last byte), when the app raises, or when the app returns without
finishing its response; a client that went away first is a 499 (:mod:`mlmonitor.disconnect`).
``/metrics`` is collected in a thread, one scrape at a time (see ``_scrape``).

Example::

    from mlmonitor.asgi import MonitorASGIMiddleware
    app = MonitorASGIMiddleware(asgi_app, model_name="iris", model_version="v1",
                                prediction_paths=["/predict"])
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO
from collections.abc import Awaitable, Callable

from . import guard
from .config import Settings
from .disconnect import client_gone
from .engine import Recorder
from .exposition import BUSY, MAX_CONCURRENT_SCRAPES
from .record import UNMATCHED_ROUTE, RequestRecord

__all__ = ["MonitorASGIMiddleware", "environ_of"]

#: the environ key holding the ASGI scope (the framework layers read the matched route there)
SCOPE_KEY = "asgi.scope"
_perf = time.perf_counter


#: the request headers the record and the sinks read (the request id header is added per app)
READ_HEADERS = frozenset((b"traceparent", b"tracestate", b"baggage", b"user-agent"))


def environ_of(scope: dict[str, Any], only: frozenset[bytes] | None = None) -> dict[str, Any]:
    """The WSGI-style view of an ASGI ``http`` scope that the record and the sinks read.

    Header names become ``HTTP_*`` keys and repeated headers are joined with ``,`` (as
    WSGI servers do); bytes are read as latin-1, as PEP 3333 says. ``only``: the lower-case
    header names to keep (None: all).
    """
    environ = {
        "REQUEST_METHOD": scope.get("method", "GET"),
        "PATH_INFO": scope.get("path", "") or "/",
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        SCOPE_KEY: scope,
    }
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = client[0]
    for name, value in scope.get("headers", ()):
        if only is not None and name.lower() not in only:
            continue
        key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = environ[key] + "," + text if key in environ else text
    return environ


class MonitorASGIMiddleware:
    """Wrap any ASGI 3 app: metrics, one JSON log line and a span for every HTTP request.

    Takes the settings of :class:`~mlmonitor.middleware.MonitorMiddleware` (``model_name``,
    ``model_version``, ``prediction_paths`` and the rest). ``route_of``: a callable
    ``scope -> template or None`` a framework layer gives to label routes with its router's
    templates. ``recorder``: an engine built by that layer (the settings are then its own);
    else one is built from the settings here.
    """

    def __init__(self, app: Callable[..., Any], *, settings: Settings | None = None,
                 registry: Any = None, tracer_provider: Any = None,
                 log_stream: TextIO | None = None,
                 route_of: Callable[[dict[str, Any]], str | None] | None = None,
                 recorder: Recorder | None = None, **options: Any) -> None:
        self.app = app
        self.route_of = route_of
        if recorder is None:
            recorder = Recorder(settings=settings, registry=registry,
                                tracer_provider=tracer_provider, log_stream=log_stream,
                                route_from_app=route_of is not None, **options)
        #: the engine: settings, sinks, references and feedback live there
        self.recorder = recorder
        #: scrapes admitted now, collecting or waiting their turn (see _scrape)
        self.scrapes = 0
        self._scrape_turn: tuple[Any, ...] = (None, None)  # (event loop, its asyncio.Lock)
        self.header_name = recorder.request_id_header.lower().encode("latin-1")
        self.read_headers = READ_HEADERS | {self.header_name}

    def set_reference(self, model_name: str, reference: Any) -> None:
        """Use a reference profile (object or JSON path) for a model's drift metrics."""
        self.recorder.set_reference(model_name, reference)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope.get("type") != "http":  # lifespan, websocket: not ours
            await self.app(scope, receive, send)
            return
        recorder = self.recorder
        try:
            if recorder.metrics_path is not None and scope.get("path") == recorder.metrics_path:
                await self._scrape(environ_of(scope), send)
                return
            environ = environ_of(scope, self.read_headers)
            rec = recorder.begin(environ)
            if self.route_of is not None:
                recorder.route_known(rec, self._route(scope))
        except Exception as exc:
            guard.report_fault("middleware", exc, recorder)
            await self.app(scope, receive, send)
            return
        tokens = recorder.enter(rec)
        header_name = self.header_name
        trailers = False
        delivered = False  # the last message went out: a disconnect after it is no news

        async def monitored_receive() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if not delivered and message.get("type") == "http.disconnect":
                client_gone(rec)
            return message

        async def monitored_send(message: dict[str, Any]) -> None:
            nonlocal trailers, delivered
            kind = message.get("type")
            if kind == "http.response.start":
                try:
                    rec.status_code = int(message.get("status", 0))
                    trailers = bool(message.get("trailers"))
                    headers = message.get("headers") or ()
                    for name, _ in headers:
                        if name.lower() == header_name:
                            break
                    else:  # a new list: the response object's own headers are left as they are
                        message = {**message, "headers": [
                            *headers, (header_name, rec.request_id.encode("latin-1"))]}
                except Exception as exc:
                    guard.report_fault("middleware", exc, recorder)
            elif kind == "http.response.body" and message.get("more_body") \
                    and rec.first_chunk is None and message.get("body"):
                rec.first_chunk = _perf() - rec.start  # streamed: more chunks follow
            elif _is_last(kind, message, trailers):
                # counted after the hand-off, never before: a send that fails is a 499
                try:
                    await send(message)
                except OSError:  # the server could not send: the client is gone
                    client_gone(rec)
                    raise
                delivered = True
                if rec.status_code < 500:  # a 5xx: the app's exception may follow (Starlette's
                    self._finish(rec, scope)  # error middleware re-raises): finished below
                return
            try:
                await send(message)
            except OSError:
                if not delivered:
                    client_gone(rec)
                raise

        try:
            await self.app(scope, monitored_receive, monitored_send)
        except BaseException as exc:
            if not rec.finished:  # before the status went out it stays 0: the server answers 500
                rec.exc = _leaf(exc)
                self._finish(rec, scope)
            raise
        finally:
            recorder.leave(tokens)
        if not rec.finished:  # returned without the last chunk (a stream cut short when its
            self._finish(rec, scope)  # client went away: see mlmonitor.disconnect)

    def _route(self, scope: dict[str, Any]) -> str:
        try:
            route = self.route_of(scope)  # type: ignore[misc]
        except Exception as exc:
            guard.report_fault("asgi", exc, self.recorder)
            route = None
        return route or UNMATCHED_ROUTE

    def _finish(self, rec: RequestRecord, scope: dict[str, Any]) -> None:
        """Hand the record to the sinks; a route the walk before routing could not name (a
        router kind it does not know) is read from what Starlette and FastAPI leave in the
        scope after routing."""
        if rec.route == UNMATCHED_ROUTE and self.route_of is not None:
            path = getattr(scope.get("route"), "path", None)
            if type(path) is str and path.startswith("/") and len(path) <= 256:
                rec.route = path
        self.recorder.finish(rec)

    async def _scrape(self, environ: dict[str, Any], send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """``/metrics`` off the event loop: collected and encoded in a thread, one scrape at a
        time; up to ``MAX_CONCURRENT_SCRAPES`` wait their turn (no thread, no work), one more
        is refused at once (503, Retry-After) and counted. A refusal for the method or the
        credentials is answered on the loop before any of that. Eight scrapers in a loop had
        as many encoding threads take the GIL from the loop (/predict p99 2.2 -> 80 ms)."""
        endpoint = self.recorder.endpoint
        if endpoint is None:  # called only when the recorder serves /metrics
            return
        refused = endpoint.refusal(environ)
        if refused is None and self.scrapes >= MAX_CONCURRENT_SCRAPES:
            refused = BUSY
            self.recorder.count_dropped("metrics", 1)
        if refused is not None:
            text, body, extra = refused
            status = int(text[:3])
            headers = [("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Length", str(len(body))), *extra]
        else:
            self.scrapes += 1
            try:
                loop = asyncio.get_running_loop()
                if self._scrape_turn[0] is not loop:  # an asyncio.Lock serves one loop
                    self._scrape_turn = (loop, asyncio.Lock())
                async with self._scrape_turn[1]:
                    status, headers, body = await loop.run_in_executor(
                        None, _call_wsgi, endpoint.serve, environ)
            finally:
                self.scrapes -= 1
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                                for k, v in headers]})
        await send({"type": "http.response.body", "body": body})


def _is_last(kind: Any, message: dict[str, Any], trailers: bool) -> bool:
    if kind == "http.response.body":
        return not trailers and not message.get("more_body", False)
    if kind == "http.response.trailers":
        return not message.get("more_trailers", False)
    return kind in ("http.response.pathsend", "http.response.zerocopy") and not message.get(
        "more_body", False)


def _leaf(exc: BaseException) -> BaseException:
    """The one exception inside task-group wrappers (Starlette streams in an anyio task group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _call_wsgi(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[Any, ...]:
    """Run a small WSGI app (the metrics endpoint) and collect its answer."""
    answer: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:  # noqa: ARG001 (WSGI's signature)
        answer[:] = [int(status[:3]), headers]

    body = b"".join(app(environ, start_response))
    return answer[0], answer[1], body

