"""The OpenTelemetry TracerProvider mlmonitor builds when the app has none, and its dropped spans.

mlmonitor never sets the global provider on its own: its own provider serves only its own
tracer, until the app sets a global one (before or after ``Monitor(app)``); an app that
wants mlmonitor to set the global one from ``OTEL_*`` calls :func:`configure_tracing`.

Runs at start-up (and once in each forked worker), never per request: the provider is
built from the standard ``OTEL_*`` variables, always with a batching processor, and
malformed values stop start-up with one line (secrets not echoed). Spans the exporter
fails to deliver or the full queue drops are counted once, by the newest live trace
sink that uses this provider. The SDK is imported where a provider is built (it takes
longer to import than all of mlmonitor): an app that brings its own provider never pays for it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import weakref
from typing import Any

from opentelemetry import trace

from .config import ConfigError, Settings

__all__ = ["build_tracer_provider", "configure_tracing", "provider_for", "is_built", "shutdown",
           "reset_after_fork", "add_drop_counter", "notify_dropped", "CountingExporter",
           "MAX_ATTRIBUTE_LENGTH"]

log = logging.getLogger("mlmonitor")

MAX_ATTRIBUTE_LENGTH = 1024

_provider_lock = threading.Lock()
_built_provider: Any = None
_built_pid = 0
_configured: Any = None  # the global provider configure_tracing() set
#: bumped in a forked child; cheaper per request than os.getpid()
_fork_generation = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _fork_generation.__setitem__(0, _fork_generation[0] + 1))
_built_ever: list[Any] = []
#: trace sinks that count dropped spans (``sink.on_dropped(n)``), held weakly, newest last
_drop_counters: list[weakref.ref[Any]] = []


def add_drop_counter(sink: Any) -> None:
    """``sink.on_dropped(count)`` counts dropped spans while it is the newest live one."""
    with _provider_lock:
        _drop_counters[:] = [ref for ref in _drop_counters if ref() is not None]
        _drop_counters.append(weakref.ref(sink))


def notify_dropped(count: int) -> None:
    """Count ``count`` dropped spans once (not once per monitored app in the process)."""
    for ref in reversed(_drop_counters):
        sink = ref()
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.on_dropped(count)
            return


def is_built(provider: Any) -> bool:
    """Whether mlmonitor built ``provider`` (so its dropped spans are counted)."""
    return any(provider is built for built in _built_ever)


def exporter_names() -> list[str]:
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
        try:  # the SDK's exporter for transport, mlmonitor's encoder (~0.12x the SDK's time)
            from .otlp import FastOTLPSpanExporter  # noqa: PLC0415 (optional: the otlp extra)
        except ImportError:
            raise ConfigError("OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: "
                              "pip install 'mlmonitor-serving[otlp]'") from None
        for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
            _check_headers(variable)
        try:
            return FastOTLPSpanExporter()
        except ValueError as exc:  # exporters before ~1.35 refuse e.g. OTEL_EXPORTER_OTLP_TIMEOUT=abc
            raise ConfigError(f"OTLP exporter settings (OTEL_EXPORTER_OTLP_*): {exc}") from None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415 (start-up: see the module docstring)
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
        from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: PLC0415 (start-up: see the module docstring)
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


def _batch_processor(exporter: Any) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415 (start-up: see the module docstring)

    class CountingBatchSpanProcessor(BatchSpanProcessor):
        """Counts the spans the SDK drops silently when its queue is full."""

        def on_end(self, span: Any) -> None:
            batch = getattr(self, "_batch_processor", None)
            queue = getattr(batch, "_queue", None)
            if queue is not None and len(queue) >= getattr(batch, "_max_queue_size", 1 << 30):
                notify_dropped(1)
            super().on_end(span)

    # CountingExporter is a SpanExporter by its methods: subclassing would import the SDK at start-up
    processor = CountingBatchSpanProcessor(CountingExporter(exporter))  # type: ignore[arg-type]
    if not hasattr(getattr(processor, "_batch_processor", None), "_queue"):  # SDK < 1.34
        log.warning("mlmonitor: this opentelemetry-sdk's BatchSpanProcessor differs; spans it "
                    "drops when its queue is full are not counted (failed exports still are)")
    return processor


def build_tracer_provider(service_name: str) -> Any:
    """A TracerProvider from OTEL_* variables; raises ConfigError on values that do not parse."""
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 (start-up: see the module docstring)
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider  # noqa: PLC0415 (start-up: see the module docstring)

    names = exporter_names()
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
    """The provider passed in, else the global one if the app set one, else one built per
    process from OTEL_* and used by mlmonitor's tracer only (never set as the global one).

    A provider built before a fork (gunicorn ``--preload``) is replaced in each
    worker by its own, with the worker's ``process.pid`` in the resource.
    """
    global _built_provider, _built_pid  # noqa: PLW0603 (the process's provider)
    if tracer_provider is not None:
        return tracer_provider
    current = trace.get_tracer_provider()
    if current is _configured or (not isinstance(current, trace.ProxyTracerProvider)
                                  and not is_built(current)):
        return current  # in a forked worker too: the SDK restarts its batch thread there
    with _provider_lock:
        if _built_provider is None or _built_pid != os.getpid():
            _built_provider = build_tracer_provider(
                os.environ.get("OTEL_SERVICE_NAME") or settings.model_name)
            _built_pid = os.getpid()
            _built_ever.append(_built_provider)  # for mlmonitor's tracer only: the global
            # provider stays the app's to set, before or after Monitor(app)
        return _built_provider


def configure_tracing(service_name: str | None = None) -> Any:
    """Opt-in: build a provider from ``OTEL_*`` and set it as the global one (mlmonitor never
    does that on its own), for apps that want OpenTelemetry set up by mlmonitor. Call it once,
    before ``Monitor(app)`` and other instrumentation; returns the provider."""
    global _built_provider, _built_pid, _configured  # noqa: PLW0603 (the process's provider)
    provider = build_tracer_provider(service_name or os.environ.get("OTEL_SERVICE_NAME")
                                     or "mlmonitor")
    with _provider_lock:
        _built_provider, _built_pid = provider, os.getpid()  # flushed by shutdown()
        _built_ever.append(provider)  # its dropped spans are counted
    trace.set_tracer_provider(provider)  # refused (with OTel's warning) when one is set
    if trace.get_tracer_provider() is provider:
        _configured = provider
    return provider


def shutdown(timeout_s: float = 5.0) -> None:
    """Flush and stop the provider mlmonitor built (gunicorn's worker_exit calls this)."""
    provider = _built_provider
    if provider is not None and _built_pid == os.getpid():
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()


def reset_after_fork() -> None:
    """Forget the provider built before a fork; the worker builds its own on first use.
    The global one ``configure_tracing()`` set stays (OpenTelemetry sets it once per process,
    and the app's other instrumentation and MLflow's connected mode use it): the worker keeps
    it, with the master's ``process.pid`` in its resource, and flushes it on exit."""
    global _built_provider, _built_pid  # noqa: PLW0603 (the process's provider)
    if _built_provider is not None and _built_provider is _configured:
        _built_pid = os.getpid()
    else:
        _built_provider = None
