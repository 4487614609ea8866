"""The libraries' own test doubles for one monitored app, made fresh for each test."""
from __future__ import annotations

import io
from typing import Any, Dict

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry


class Doubles:
    """A fresh registry, an in-memory span exporter behind its own provider (unless one is
    given), and a log buffer; ``monitor_options`` hands all three to Monitor or the middleware."""

    def __init__(self, provider: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        if provider is None:
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.provider = provider
        self.logs = io.StringIO()

    @property
    def monitor_options(self) -> Dict[str, Any]:
        return {"registry": self.registry, "tracer_provider": self.provider,
                "log_stream": self.logs}
