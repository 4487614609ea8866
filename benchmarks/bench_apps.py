"""The benchmarked app: one trivial JSON ``POST /predict`` Flask app, in every configuration.

Each configuration adds one kind of instrumentation to the same app, the way a
user would set it up: bare Flask, mlmonitor (metrics only, full, full at 10%
sampling, unsampled tracing), the peers people assemble by hand
(prometheus-flask-exporter, opentelemetry-instrumentation-flask, a structlog
JSON line per request, the three together) and a hand-written prometheus_client
floor. Spans go through a ``BatchSpanProcessor`` to an exporter that drops
them; log lines go to ``os.devnull``. Shared by the in-process, gunicorn and
memory benchmarks.

``EXTRA_CONFIGS`` run only when named (``--configs``): stages as span events, and a real
OTLP/HTTP export, which needs a receiver at ``OTEL_EXPORTER_OTLP_ENDPOINT``
(``bench_gunicorn.py`` starts one, ``otlp_receiver.py``). With ``BENCH_STAGE=1`` in the
environment the view runs its model call inside one stage named ``inference``, as a
model server does: ``monitor.stage`` under mlmonitor (any configuration), a span of
the same provider (``start_as_current_span``) under the peers' OpenTelemetry, nothing otherwise.
"""
from __future__ import annotations

import io
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from flask import Flask, g, jsonify, request

#: the request body every benchmark sends
BODY = b'{"features": {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}}'

#: configuration name -> what it is (the order of the tables)
CONFIGS: Dict[str, str] = {
    "bare": "bare Flask",
    "mlmonitor_metrics": "mlmonitor, metrics only",
    "mlmonitor_full": "mlmonitor, metrics + JSON log + span (every request sampled)",
    "mlmonitor_full_10pct": "mlmonitor full, TraceIdRatioBased(0.1)",
    "mlmonitor_unsampled": "mlmonitor metrics + log + traces with ALWAYS_OFF sampler",
    "mlmonitor_no_traces": "mlmonitor metrics + log, traces off",
    "prometheus_flask_exporter": "prometheus-flask-exporter",
    "otel_flask": "opentelemetry-instrumentation-flask, batch processor, every request sampled",
    "structlog": "a structlog JSON line per request (before/after_request hooks)",
    "peer_stack": "prometheus-flask-exporter + OTel Flask + structlog line",
    "prometheus_floor": "hand-written prometheus_client counter + histogram in the view",
}
#: run only when named: they change the stage's form or need an OTLP receiver
EXTRA_CONFIGS: Dict[str, str] = {
    "mlmonitor_full_events": "mlmonitor full, stage_spans='events' (drop exporter)",
    "mlmonitor_full_otlp": "mlmonitor full, its own provider from OTEL_EXPORTER_OTLP_ENDPOINT "
                           "(real OTLP/HTTP export, mlmonitor's encoder)",
    "mlmonitor_full_otlp_events": "mlmonitor full, real OTLP/HTTP export, stage_spans='events'",
    "peer_stack_otlp": "peer stack, its batch processor to the SDK's OTLPSpanExporter (OTLP/HTTP)",
}


def configs_from(text: str) -> List[str]:
    """A comma-separated list of configuration names, with bare Flask first (ratios need it)."""
    configs = [c.strip() for c in text.split(",") if c.strip()]
    return ["bare"] + [c for c in configs if c != "bare"]


class DropExporter:
    """A span exporter that counts and drops (nothing leaves the process)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def tracer_provider(sampler: str = "always_on") -> Tuple[Any, DropExporter]:
    """An SDK provider with the batch processor every configuration uses."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, TraceIdRatioBased

    chosen = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF,
              "ratio_0.1": TraceIdRatioBased(0.1)}[sampler]
    exporter = DropExporter()
    provider = TracerProvider(sampler=chosen)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def otlp_tracer_provider() -> Tuple[Any, Any]:
    """The peers' provider with the SDK's OTLP/HTTP exporter (endpoint from OTEL_EXPORTER_OTLP_*)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider, exporter


def _peer_stage(view: Callable, tracer: Any) -> Callable:
    """The peers' stage: a child span of the same provider around the model call."""
    import functools

    @functools.wraps(view)
    def staged(*args: Any, **kwargs: Any) -> Any:
        with tracer.start_as_current_span("inference", attributes={"ml.stage": "inference"}):
            return view(*args, **kwargs)

    return staged


def _devnull() -> Any:
    return open(os.devnull, "w")


def _plain_app() -> Flask:
    app = Flask("bench")

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


def _predict(body: Any) -> Any:
    if not isinstance(body, dict):
        return jsonify(error="expected a JSON object"), 400
    return jsonify(prediction="setosa", score=0.93)


def make_app(config: str, *, multiprocess: bool = False,
             log_stream: Optional[Any] = None) -> Tuple[Flask, Dict[str, Any]]:
    """The app in ``config``; returns it with handles the harness inspects (exporter, registry).

    ``multiprocess`` (gunicorn): metrics use prometheus-client's shared files
    (``PROMETHEUS_MULTIPROC_DIR``) instead of a private registry.
    """
    if config not in CONFIGS and config not in EXTRA_CONFIGS:
        raise SystemExit(f"unknown configuration {config!r}; choose from "
                         f"{', '.join(list(CONFIGS) + list(EXTRA_CONFIGS))}")
    from prometheus_client import CollectorRegistry

    app = _plain_app()
    handles: Dict[str, Any] = {}
    stream = log_stream if log_stream is not None else _devnull()
    registry = None if multiprocess else CollectorRegistry()
    handles["registry"] = registry
    decorate: Callable[[Callable], Callable] = lambda view: view
    staged = os.environ.get("BENCH_STAGE") == "1"
    stage: Optional[Callable[[str], Any]] = None  # mlmonitor's stage, when the view has one

    if config.startswith("mlmonitor_"):
        from mlmonitor import Monitor
        options: Dict[str, Any] = dict(model_name="iris", model_version="v1",
                                       registry=registry, log_stream=stream)
        sampler = {"mlmonitor_full": "always_on", "mlmonitor_full_10pct": "ratio_0.1",
                   "mlmonitor_unsampled": "always_off",
                   "mlmonitor_full_events": "always_on"}.get(config)
        options["metrics"] = True
        options["logs"] = config != "mlmonitor_metrics"
        options["traces"] = sampler is not None or "_otlp" in config
        if config.endswith("_events"):
            options["stage_spans"] = "events"
        if sampler is not None:  # the _otlp ones: mlmonitor builds its provider from OTEL_*
            provider, exporter = tracer_provider(sampler)
            options["tracer_provider"] = provider
            handles["provider"], handles["exporter"] = provider, exporter
        monitor = Monitor(app, **options)
        handles["monitor"] = monitor
        decorate = monitor.prediction
        if staged:  # the same view code whatever the configuration: stage timings in the log too
            stage = monitor.stage

    if config in ("prometheus_flask_exporter", "peer_stack", "peer_stack_otlp"):
        if multiprocess:
            from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics
            handles["pfe"] = GunicornInternalPrometheusMetrics(app)
        else:
            from prometheus_flask_exporter import PrometheusMetrics
            handles["pfe"] = PrometheusMetrics(app, registry=registry)

    if config in ("otel_flask", "peer_stack", "peer_stack_otlp"):
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
        if config == "peer_stack_otlp":
            provider, exporter = otlp_tracer_provider()
        else:
            provider, exporter = tracer_provider("always_on")
        FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
        handles["provider"], handles["exporter"] = provider, exporter
        if staged:
            peer_tracer = provider.get_tracer("bench")
            decorate = lambda view: _peer_stage(view, peer_tracer)

    if config in ("structlog", "peer_stack", "peer_stack_otlp"):
        _add_structlog_line(app, stream)

    floor = None
    if config == "prometheus_floor":
        from prometheus_client import Counter, Histogram
        counter = Counter("app_requests", "Requests.", ("method", "route", "status"),
                          registry=registry)
        histogram = Histogram("app_request_duration_seconds", "Latency.",
                              ("method", "route", "status"), registry=registry)
        # the floor: children bound once, then one inc and one observe per request
        floor = (counter.labels("POST", "/predict", "200"),
                 histogram.labels("POST", "/predict", "200"))

    @app.post("/predict")
    @decorate
    def predict():
        if stage is not None:
            with stage("inference"):
                return _predict(request.get_json(silent=True))
        if floor is None:
            return _predict(request.get_json(silent=True))
        started = time.perf_counter()
        response = _predict(request.get_json(silent=True))
        floor[0].inc()
        floor[1].observe(time.perf_counter() - started)
        return response

    return app, handles


def _add_structlog_line(app: Flask, stream: Any) -> None:
    """What people write today: structlog's JSON renderer in before/after_request hooks."""
    import structlog

    logger = structlog.wrap_logger(
        structlog.WriteLogger(stream),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.BoundLogger, cache_logger_on_first_use=True)

    @app.before_request
    def _start_clock() -> None:
        g.bench_started = time.perf_counter()

    @app.after_request
    def _log_line(response: Any) -> Any:
        logger.info("request", method=request.method, path=request.path,
                    status=response.status_code,
                    duration_ms=round((time.perf_counter() - g.bench_started) * 1000, 3))
        return response


def wsgi_environ() -> dict:
    """The environ of one ``POST /predict`` (built once; the harness copies it per request)."""
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path="/predict", method="POST", data=BODY,
                             headers={"Content-Type": "application/json",
                                      "User-Agent": "bench/1"})
    try:
        environ = builder.get_environ()
    finally:
        builder.close()
    environ.pop("wsgi.input", None)
    environ["REMOTE_ADDR"] = "127.0.0.1"
    return environ


def request_loop(app: Callable, count: int) -> Tuple[float, float, int]:
    """Call the WSGI app ``count`` times; returns (wall seconds, CPU seconds, last status code).

    CPU time is the process's (all threads, the span export thread included): on
    a shared machine it does not count the time spent waiting for a core.
    """
    base = wsgi_environ()
    body = BODY
    status = [""]

    def start_response(line: str, headers: list, exc_info: Any = None) -> Callable:
        status[0] = line
        return lambda data: None

    perf = time.perf_counter
    bytes_io = io.BytesIO
    cpu_started = time.process_time()
    started = perf()
    for _ in range(count):
        environ = base.copy()
        environ["wsgi.input"] = bytes_io(body)
        result = app(environ, start_response)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    wall = perf() - started
    return wall, time.process_time() - cpu_started, int(status[0][:3] or 0)


def gunicorn_app() -> Flask:
    """gunicorn entry point: ``bench_apps:gunicorn_app()`` with ``BENCH_CONFIG`` set."""
    app, _ = make_app(os.environ["BENCH_CONFIG"], multiprocess=True,
                      log_stream=__import__("sys").stdout)
    return app
