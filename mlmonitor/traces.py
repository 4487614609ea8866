"""Server spans with HTTP semantic conventions and model attributes; stage spans.

mlmonitor starts the server span itself through the OpenTelemetry API (W3C
``traceparent`` honoured), because the Flask instrumentation package costs
~117-180 us a request here (+73 us even unsampled); see benchmarks/README.md. An
app that already runs ``FlaskInstrumentor`` keeps its one span, which mlmonitor
annotates. If the app has no TracerProvider, one is built from the standard
``OTEL_*`` variables, always with a batching processor; with no exporter
configured nothing is exported.

Attributes mlmonitor adds: ``ml.model.name``, ``ml.model.version``,
``ml.stage`` (stage spans) and ``ml.tag.<key>`` for ``monitor.tag(key=value)``.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any, Callable, Dict, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from .config import ConfigError, Settings
from .redact import REDACTED, _safe_text, describe_exception, redactor
from .record import MAX_TAGS, UNMATCHED_ROUTE, RequestRecord

log = logging.getLogger("mlmonitor")

MAX_ATTRIBUTE_LENGTH = 1024

_provider_lock = threading.Lock()
_built_provider: Any = None
_built_pid = 0
#: bumped in a forked child; cheaper per request than os.getpid()
_fork_generation = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _fork_generation.__setitem__(0, _fork_generation[0] + 1))
_built_ever: list = []
_drop_listeners: list = []


def _environ_getter() -> Any:
    from opentelemetry.propagators.textmap import Getter

    class EnvironGetter(Getter):
        """Reads W3C headers straight from the WSGI environ."""

        def get(self, carrier: dict, key: str):  # type: ignore[override]
            value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
            return [value] if value is not None else None

        def keys(self, carrier: dict):  # type: ignore[override]
            return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]

    return EnvironGetter()


_GETTER = _environ_getter()


def _exporter_names() -> list:
    names = os.environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        return ["otlp"] if endpoint else []
    return [n.strip().lower() for n in names.split(",") if n.strip() and n.strip().lower() != "none"]


def _make_exporter(name: str) -> Any:
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        if protocol != "http/protobuf":
            log.warning("mlmonitor: OTEL_EXPORTER_OTLP_PROTOCOL=%r is not supported; using "
                        "http/protobuf", protocol)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: "
                              "pip install 'mlmonitor[otlp]'") from None
        for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
            _check_headers(variable)
        return OTLPSpanExporter()
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    raise ConfigError(f"OTEL_TRACES_EXPORTER={name!r}: mlmonitor supports otlp, console or none")


# the OpenTelemetry SDK's (liberal) grammar of OTEL_EXPORTER_OTLP_HEADERS members
_HEADER_MEMBER = re.compile(
    r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
    r"[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*[ \t]*")


def _check_headers(variable: str) -> None:
    """Refuse malformed headers at start-up without echoing them.

    The SDK would log the malformed member, secret value included, and drop it.
    """
    members = re.split(r"[ \t]*,[ \t]*", os.environ.get(variable, ""))
    for index, member in enumerate(members, 1):
        if member and not _HEADER_MEMBER.fullmatch(member.strip()):
            raise ConfigError(f"{variable}: member {index} is not name=value (URL-encode the "
                              f"value; it is not shown here because it may be a secret)")


class CountingExporter:
    """Wraps an exporter; spans it fails to deliver are counted as dropped."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult
        try:
            result = self.inner.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result != SpanExportResult.SUCCESS:
            notify_dropped(len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        flush = getattr(self.inner, "force_flush", None)
        return flush(timeout_millis) if flush else True


def notify_dropped(count: int) -> None:
    for listener in list(_drop_listeners):
        try:
            listener(count)
        except Exception:
            pass


def _batch_processor(exporter: Any) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    class CountingBatchSpanProcessor(BatchSpanProcessor):
        """Counts the spans the SDK drops silently when its queue is full."""

        def on_end(self, span: Any) -> None:
            batch = getattr(self, "_batch_processor", None)
            queue = getattr(batch, "_queue", None)
            if queue is not None and len(queue) >= getattr(batch, "_max_queue_size", 1 << 30):
                notify_dropped(1)
            super().on_end(span)

    return CountingBatchSpanProcessor(CountingExporter(exporter))


def build_tracer_provider(service_name: str) -> Any:
    """A TracerProvider from OTEL_* variables; raises ConfigError on values that do not parse."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider

    names = _exporter_names()
    exporters = [_make_exporter(name) for name in names]
    try:
        provider = TracerProvider(
            resource=Resource.create({"service.name": service_name, "process.pid": os.getpid()}),
            span_limits=SpanLimits(max_attributes=64, max_events=32, max_links=32,
                                   max_attribute_length=MAX_ATTRIBUTE_LENGTH),
        )
    except ValueError as exc:  # e.g. OTEL_TRACES_SAMPLER_ARG that does not parse
        raise ConfigError(f"OpenTelemetry settings (OTEL_*): {exc}") from None
    for exporter in exporters:
        try:
            processor = _batch_processor(exporter)
        except ValueError as exc:  # e.g. OTEL_BSP_SCHEDULE_DELAY=-5
            given = ", ".join(f"{k}={v!r}" for k, v in sorted(os.environ.items())
                              if k.startswith("OTEL_BSP_"))
            raise ConfigError(f"OpenTelemetry batch settings ({given}): {exc}") from None
        provider.add_span_processor(processor)
    return provider


def provider_for(settings: Settings, tracer_provider: Any = None) -> Any:
    """The app's provider if it has one, else one built per process from OTEL_*.

    A provider built before a fork (gunicorn ``--preload``) is replaced in each
    worker by its own, with the worker's ``process.pid`` in the resource.
    """
    global _built_provider, _built_pid
    if tracer_provider is not None:
        return tracer_provider
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider) and not any(
            current is built for built in _built_ever):
        return current
    with _provider_lock:
        if _built_provider is None or _built_pid != os.getpid():
            _built_provider = build_tracer_provider(
                os.environ.get("OTEL_SERVICE_NAME") or settings.model_name)
            _built_pid = os.getpid()
            _built_ever.append(_built_provider)
            if isinstance(current, trace.ProxyTracerProvider):
                trace.set_tracer_provider(_built_provider)
        return _built_provider


def shutdown(timeout_s: float = 5.0) -> None:
    """Flush and stop the provider mlmonitor built (gunicorn's worker_exit calls this)."""
    provider = _built_provider
    if provider is not None and _built_pid == os.getpid():
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()


def reset_after_fork() -> None:
    """Forget the provider built before a fork; the worker builds its own on first use."""
    global _built_provider
    _built_provider = None


class TraceSink:
    """Starts and ends the server span of a record; annotates a borrowed one."""

    def __init__(self, settings: Settings, tracer_provider: Any = None,
                 on_dropped: Optional[Callable[[int], None]] = None) -> None:
        from . import __version__
        self.settings = settings
        self.redact = settings.redact_set
        self.redactor = redactor(self.redact)
        self.version = __version__
        self.tracer_provider = tracer_provider
        self.provider = provider_for(settings, tracer_provider)  # validates OTEL_* at start-up
        self.tracer = self.provider.get_tracer("mlmonitor", __version__)
        self.generation = _fork_generation[0]
        self.route_paths: Dict[str, str] = {}
        self.static_attributes = {
            "ml.tag." + k: self.redactor.text(str(v)[:MAX_ATTRIBUTE_LENGTH])
            for k, v in settings.tags.items() if not self.redactor.is_secret_key(k)}
        if on_dropped is not None:
            _drop_listeners.append(on_dropped)

    def start(self, rec: RequestRecord) -> Any:
        """Open the server span and make it current; returns the context token."""
        if self.generation != _fork_generation[0]:  # forked (gunicorn): this process's provider
            self.provider = provider_for(self.settings, self.tracer_provider)
            self.tracer = self.provider.get_tracer("mlmonitor", self.version)
            self.generation = _fork_generation[0]
        environ = rec.environ
        parent = extract(environ, getter=_GETTER) if "HTTP_TRACEPARENT" in environ else None
        span = self.tracer.start_span(rec.method, context=parent, kind=SpanKind.SERVER,
                                      start_time=rec.start_ns)
        rec.own_span = True
        self.adopt(rec, span)
        return otel_context.attach(trace.set_span_in_context(span))

    def request_attributes(self, rec: RequestRecord, environ: dict) -> Dict[str, Any]:
        """HTTP semantic-convention attributes known at the start, secrets redacted."""
        path = rec.path
        if path == rec.route:  # a static route: redacted once, the cache bounded by the routes
            redacted = self.route_paths.get(path)
            if redacted is None:
                redacted = self.route_paths[path] = self.redactor.text(path)
        else:  # a head cut first: it cannot separate a secret's name from its value
            redacted = self.redactor.text(path[:MAX_ATTRIBUTE_LENGTH])
        attributes = {
            "http.request.method": rec.method,
            "url.path": redacted,
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
        }
        if rec.query:
            attributes["url.query"] = self.redactor.query(rec.query)[:MAX_ATTRIBUTE_LENGTH]
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes["user_agent.original"] = agent[:256]
        client = environ.get("REMOTE_ADDR")
        if client:
            attributes["client.address"] = client
        if self.static_attributes:
            attributes.update(self.static_attributes)
        return attributes

    @staticmethod
    def adopt(rec: RequestRecord, span: Any) -> None:
        """Remember the span and copy its ids into the record."""
        rec.span = span
        ctx = span.get_span_context()
        if ctx.is_valid:  # ids in range: to_bytes().hex() is format()'s result at half the cost
            rec.trace_id = ctx.trace_id.to_bytes(16, "big").hex()
            rec.span_id = ctx.span_id.to_bytes(8, "big").hex()
            rec.sampled = bool(ctx.trace_flags & 1)

    def annotation(self, rec: RequestRecord) -> Dict[str, Any]:
        attributes: Dict[str, Any] = {}
        if rec.is_prediction:
            attributes["ml.model.name"] = rec.model_name
            attributes["ml.model.version"] = rec.model_version
        for key, value in list(rec.tags.items())[:MAX_TAGS]:
            if self.redactor.is_secret_key(key):
                value = REDACTED
            elif isinstance(value, str):
                value = self.redactor.text(value[:MAX_ATTRIBUTE_LENGTH])
            elif not isinstance(value, (bool, int, float)):
                # a mapping or list keeps its secret fields hidden; str() of anything never raises here
                value = self.redactor.text(_safe_text(self.redactor.value(value))[:MAX_ATTRIBUTE_LENGTH])
            elif type(value) is int and not -(1 << 63) <= value < (1 << 63):
                value = _safe_text(value)[:64]  # OTLP carries int64: one big int would drop the batch
            attributes["ml.tag." + str(key)[:64]] = value
        return attributes

    def annotate_borrowed(self, rec: RequestRecord) -> None:
        """Set model attributes on a span someone else owns (FlaskInstrumentor)."""
        if rec.span.is_recording():
            rec.span.set_attributes(self.annotation(rec))

    def finish(self, rec: RequestRecord) -> None:
        span = rec.span
        if span is None or not rec.own_span:
            return
        if span.is_recording():  # an unsampled request pays for no attribute at all
            # one set_attributes call at the end: the SDK locks the span once, not twice
            attributes = self.request_attributes(rec, rec.environ)
            attributes.update(self.annotation(rec))
            code = rec.status_code or 500
            attributes["http.response.status_code"] = code
            if rec.route is not None and rec.route != UNMATCHED_ROUTE:
                attributes["http.route"] = rec.route
                span.update_name(f"{rec.method} {rec.route}")
            if code >= 500:
                attributes["error.type"] = rec.error_type or str(code)
                exc = rec.exc
                if exc is not None:
                    message, stack = describe_exception(rec, self.redact)
                    message = message[:MAX_ATTRIBUTE_LENGTH]
                    span.add_event("exception", {
                        "exception.type": type(exc).__qualname__,
                        "exception.message": message,
                        "exception.stacktrace": stack[-4000:],
                    })
                    span.set_status(Status(StatusCode.ERROR, message[:256]))
                else:
                    span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attributes)
        span.end()

    def stage_span(self, name: str) -> Any:
        return self.tracer.start_span(name, attributes={"ml.stage": name})

