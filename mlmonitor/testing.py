"""Test helpers for apps that use mlmonitor: a fresh registry, the log lines and the spans.

Every ``Monitor`` / ``MonitorMiddleware`` created inside :func:`capture` uses its fresh
``CollectorRegistry``, an in-memory span exporter and a log buffer (unless given its own),
so an app factory needs no test-only arguments. Like structlog's ``capture_logs``.
The examples below run as doctests in mlmonitor's own test suite.

>>> from flask import Flask
>>> from mlmonitor import Monitor
>>> from mlmonitor.testing import capture
>>> def create_app():                       # the app's own factory, as in production
...     app = Flask("iris_service")
...     monitor = Monitor(app, model_name="iris", model_version="v1")
...     @app.post("/predict")
...     @monitor.prediction
...     def predict():
...         return {"label": "setosa"}
...     return app
>>> with capture() as monitored:
...     client = create_app().test_client()
...     for _ in range(2):
...         _ = client.post("/predict", json={"x": [1, 2]})
>>> monitored.value("mlmonitor_predictions_total", model_name="iris", model_version="v1")
2.0
>>> monitored.value("mlmonitor_predictions_total", model_name="iris")   # a subset sums
2.0
>>> monitored.value("mlmonitor_prediction_errors_total", model_name="iris")  # no such child yet
0.0
>>> monitored.value("mlmonitor_predictions_total", modelname="iris")
Traceback (most recent call last):
KeyError: "mlmonitor_predictions_total has no label 'modelname' (its labels: model_name, model_version)"
>>> monitored.logs()[0]["route"]
'/predict'
>>> [s.name for s in monitored.spans()]
['POST /predict', 'POST /predict']

With pytest, ``from mlmonitor.testing import mlmonitor_capture`` in ``conftest.py`` (or
``pytest_plugins = ["mlmonitor.testing"]`` in the root one) gives the ``mlmonitor_capture``
fixture; create the app inside the test or in a fixture that uses it.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from . import engine

__all__ = ["Captured", "capture", "mlmonitor_capture"]

#: the samples each family type exposes, after prometheus-client's own table (CollectorRegistry)
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "info": ("_info",),
}


class Captured:
    """The doubles of one :func:`capture`: ``registry``, ``exporter``, ``provider``, ``log_stream``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.log_stream = io.StringIO()

    def value(self, name: str, **labels: Any) -> float:
        """The sum of the samples ``name`` whose labels include ``labels``, as PromQL's
        ``sum(name{...})``: 0.0 only for a family with no such child yet. KeyError for a sample
        name no family exposes or a label name its family does not have (a typo), so that an
        ``== 0`` assertion cannot pass by mistake; a ``_bucket`` needs its ``le``. Values are
        compared as the exposition writes them (``status=200`` is ``"200"``, ``le=1`` is ``"1.0"``)."""
        family, suffix = self._family(name)
        if suffix == "_bucket" and "le" not in labels:
            raise KeyError(f"{name} needs le= (buckets do not add up across bounds)")
        known = self._label_names(family)
        if known is not None:
            allowed = known + (("le",) if suffix == "_bucket" else ("quantile",)
                               if family.type == "summary" and not suffix else ())
            for label in labels:
                if label not in allowed:
                    raise KeyError(f"{name} has no label {label!r} "
                                   f"(its labels: {', '.join(allowed) or 'none'})")
        wanted = {label: floatToGoString(value) if label in ("le", "quantile")
                  and isinstance(value, (int, float)) else str(value)
                  for label, value in labels.items()}.items()
        return float(sum(s.value for s in family.samples
                         if s.name == name and wanted <= s.labels.items()))

    def _family(self, name: str) -> tuple[Any, str]:
        """The family that exposes the sample ``name``, and the suffix it adds (``_total``...)."""
        for family in self.registry.collect():
            for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",)):
                if family.name + suffix == name:
                    return family, suffix
        raise KeyError(f"no metric family exposes {name!r} in this registry")

    def _label_names(self, family: Any) -> tuple[str, ...] | None:
        """The family's label names: as defined (prometheus-client's collector), else as its
        samples show them; None for a custom collector's family without samples (unknown)."""
        collector = getattr(self.registry, "_names_to_collectors", {}).get(family.name)
        defined = getattr(collector, "_labelnames", None)
        if defined is not None:
            return tuple(defined)
        seen: dict[str, None] = {}
        for sample in family.samples:
            seen.update(dict.fromkeys(k for k in sample.labels if k not in ("le", "quantile")))
        return tuple(seen) if family.samples else None

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far, parsed."""
        return [json.loads(line) for line in self.log_stream.getvalue().splitlines()]

    def spans(self) -> list[Any]:
        """The finished spans so far (``ReadableSpan``), oldest first."""
        return list(self.exporter.get_finished_spans())


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Monitors created inside use fresh doubles; see the module docstring."""
    captured = Captured()
    engine._captures.append(captured)  # noqa: SLF001 (the engine's hook for this function only)
    try:
        yield captured
    finally:
        engine._captures.remove(captured)  # noqa: SLF001 (as above)


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    mlmonitor_capture: Any | None = None
else:
    @pytest.fixture
    def mlmonitor_capture() -> Iterator[Captured]:
        """:func:`capture` for one test."""
        with capture() as captured:
            yield captured
