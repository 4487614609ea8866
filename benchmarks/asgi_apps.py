"""The ASGI benchmark's app: one trivial JSON ``POST /predict`` FastAPI endpoint, in every configuration.

The endpoint is ``async def`` and returns a small dict, the body is ``bench_apps.BODY``.
Each configuration adds one kind of instrumentation the way a user would set it up:
bare FastAPI; mlmonitor metrics only and full (metrics + a JSON line to ``os.devnull`` + a
span through a ``BatchSpanProcessor`` to an exporter that drops); prometheus-fastapi-instrumentator
alone (its default metrics); a hand-written floor (one pure-ASGI layer, one counter inc and
one histogram observe); and the hand-assembled peer stack: the instrumentator,
opentelemetry-instrumentation-fastapi (its defaults, so the ``http send``/``http receive``
child spans too) with the same batch processor and drop exporter, and a structlog JSON line per
request from a small pure-ASGI middleware (cheaper than ``@app.middleware("http")``, which
people often write: the comparison is not made easier for mlmonitor).
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

from bench_apps import BODY, DropExporter, tracer_provider

__all__ = ["BODY", "CONFIGS", "DropExporter", "make_app", "http_scope", "request_loop",
           "uvicorn_app"]

#: configuration name -> what it is (the order of the tables)
CONFIGS: Dict[str, str] = {
    "bare": "bare FastAPI",
    "mlmonitor_metrics": "mlmonitor, metrics only (logs=False, traces=False)",
    "mlmonitor_full": "mlmonitor, metrics + JSON log + span (every request sampled)",
    "instrumentator": "prometheus-fastapi-instrumentator (default metrics)",
    "peer_stack": "instrumentator + OTel FastAPI instrumentation + structlog line",
    "asgi_floor": "hand-written pure-ASGI middleware: send wrapper, one counter inc + one "
                  "histogram observe (children bound once)",
}


def make_app(config: str, log_stream: Optional[Any] = None) -> Tuple[Any, Dict[str, Any]]:
    """The app in ``config``; returns it with handles the harness inspects (exporter, registry)."""
    if config not in CONFIGS:
        raise SystemExit(f"unknown configuration {config!r}; choose from {', '.join(CONFIGS)}")
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    app = FastAPI()
    handles: Dict[str, Any] = {}
    stream = log_stream if log_stream is not None else open(os.devnull, "w")
    registry = CollectorRegistry()
    handles["registry"] = registry
    decorate: Callable[[Callable], Callable] = lambda view: view

    if config.startswith("mlmonitor_"):
        from mlmonitor import Monitor
        full = config == "mlmonitor_full"
        options: Dict[str, Any] = dict(model_name="iris", model_version="v1", registry=registry,
                                       log_stream=stream, metrics=True, logs=full, traces=full)
        if full:
            provider, exporter = tracer_provider("always_on")
            options["tracer_provider"] = provider
            handles["provider"], handles["exporter"] = provider, exporter
        monitor = Monitor(app, **options)
        handles["monitor"] = monitor
        decorate = monitor.prediction

    if config in ("instrumentator", "peer_stack"):
        from prometheus_fastapi_instrumentator import Instrumentator
        handles["instrumentator"] = Instrumentator(registry=registry).instrument(app)

    if config == "peer_stack":
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        provider, exporter = tracer_provider("always_on")
        FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
        handles["provider"], handles["exporter"] = provider, exporter
        app.add_middleware(StructlogLine, stream=stream)

    if config == "asgi_floor":
        app.add_middleware(FloorMetrics, registry=registry)

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.post("/predict")
    @decorate
    async def predict(payload: dict):
        return {"prediction": "setosa", "score": 0.93}

    return app, handles


class StructlogLine:
    """What people write today: structlog's JSON renderer, one line per request, in a middleware."""

    def __init__(self, app: Any, stream: Any) -> None:
        import structlog

        self.app = app
        self.logger = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=[structlog.processors.add_log_level,
                        structlog.processors.TimeStamper(fmt="iso", utc=True),
                        structlog.processors.JSONRenderer()],
            wrapper_class=structlog.BoundLogger, cache_logger_on_first_use=True)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.logger.info("request", method=scope["method"], path=scope["path"],
                             status=status[0],
                             duration_ms=round((time.perf_counter() - started) * 1000, 3))


class FloorMetrics:
    """The floor of any metrics middleware: one ASGI layer, one inc and one observe a request."""

    def __init__(self, app: Any, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.app = app
        counter = Counter("app_requests", "Requests.", ("method", "route", "status"),
                          registry=registry)
        histogram = Histogram("app_request_duration_seconds", "Latency.",
                              ("method", "route", "status"), registry=registry)
        self.counter = counter.labels("POST", "/predict", "200")
        self.histogram = histogram.labels("POST", "/predict", "200")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()

        async def send_through(message: dict) -> None:
            await send(message)

        await self.app(scope, receive, send_through)
        self.counter.inc()
        self.histogram.observe(time.perf_counter() - started)


def http_scope() -> dict:
    """The scope of one ``POST /predict`` (built once; the harness copies it per request)."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(BODY)).encode()), (b"user-agent", b"bench/1")],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


async def _requests(app: Callable, count: int, status: list) -> None:
    base = http_scope()
    first = {"type": "http.request", "body": BODY, "more_body": False}
    gone = {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    for _ in range(count):
        pending = [first]

        async def receive() -> dict:
            return pending.pop() if pending else gone

        await app(dict(base), receive, send)


def request_loop(loop: asyncio.AbstractEventLoop, app: Callable,
                 count: int) -> Tuple[float, float, int]:
    """Call the ASGI app ``count`` times on ``loop``; returns (wall s, CPU s, last status).

    CPU time is the process's (all threads, the span export thread included).
    """
    status = [0]
    cpu_started = time.process_time()
    started = time.perf_counter()
    loop.run_until_complete(_requests(app, count, status))
    wall = time.perf_counter() - started
    return wall, time.process_time() - cpu_started, status[0]


def uvicorn_app() -> Any:
    """uvicorn entry point: ``--factory asgi_apps:uvicorn_app`` with ``BENCH_CONFIG`` set."""
    app, _ = make_app(os.environ["BENCH_CONFIG"])
    return app
