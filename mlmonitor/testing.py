"""Test helpers for apps that use mlmonitor: a fresh registry, the log lines and the spans.

Every ``Monitor`` / ``MonitorMiddleware`` created inside :func:`capture` uses its fresh
``CollectorRegistry``, an in-memory span exporter and a log buffer (unless given its own),
so an app factory needs no test-only arguments. Like structlog's ``capture_logs``.

Example::

    from mlmonitor.testing import capture

    def test_predict_is_counted():
        with capture() as monitored:
            app = create_app()                      # calls Monitor(app, ...) as in production
            app.test_client().post("/predict", json={"x": [1, 2]})
        assert monitored.value("mlmonitor_predictions_total", model_name="iris") == 1
        assert monitored.logs()[0]["route"] == "/predict"
        assert [s.name for s in monitored.spans()] == ["POST /predict"]

With pytest, ``from mlmonitor.testing import mlmonitor_capture`` in ``conftest.py`` (or
``pytest_plugins = ["mlmonitor.testing"]`` in the root one) gives the ``mlmonitor_capture``
fixture; create the app inside the test or in a fixture that uses it.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
from typing import Any, Dict, Iterator, List, Optional

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from . import middleware

__all__ = ["Captured", "capture", "mlmonitor_capture"]

_SUFFIX = re.compile(r"(_total|_count|_sum|_bucket|_created)$")


class Captured:
    """The doubles of one :func:`capture`: ``registry``, ``exporter``, ``provider``, ``log_stream``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.log_stream = io.StringIO()

    def value(self, name: str, **labels: str) -> float:
        """A sample's value by name and labels (a subset is not enough); 0.0 for a family
        with no such child yet; KeyError for a name no family has (a typo)."""
        found = self.registry.get_sample_value(name, labels)
        if found is not None:
            return found
        known = {family.name for family in self.registry.collect()}
        if name not in known and _SUFFIX.sub("", name) not in known:
            raise KeyError(f"no metric family {name!r} in this registry")
        return 0.0

    def logs(self) -> List[Dict[str, Any]]:
        """The JSON log lines written so far, parsed."""
        return [json.loads(line) for line in self.log_stream.getvalue().splitlines()]

    def spans(self) -> List[Any]:
        """The finished spans so far (``ReadableSpan``), oldest first."""
        return list(self.exporter.get_finished_spans())


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Monitors created inside use fresh doubles; see the module docstring."""
    captured = Captured()
    middleware._captures.append(captured)
    try:
        yield captured
    finally:
        middleware._captures.remove(captured)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    mlmonitor_capture: Optional[Any] = None
else:
    @pytest.fixture
    def mlmonitor_capture() -> Iterator[Captured]:
        """:func:`capture` for one test."""
        with capture() as captured:
            yield captured
