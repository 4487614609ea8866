"""mlmonitor: one line makes a Flask, FastAPI, Django (or any WSGI or ASGI) model server observable.

Names are imported lazily: importing ``mlmonitor`` (as ``gunicorn -c
python:mlmonitor.gunicorn`` does) must not import prometheus-client before the
multiprocess directory is set.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

#: the distribution's name on PyPI ("mlmonitor" there is an unrelated project); the import
#: package and the command are ``mlmonitor``
DISTRIBUTION = "mlmonitor-serving"

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = [
    "Monitor", "MonitorMiddleware", "ConfigError", "Settings", "current_record", "request_id",
    "trace_id", "stage", "tag", "set_model_version", "observe", "observe_batch", "prediction_id",
    "prediction_ids", "record_feedback", "configure_logging", "redact_server_logs", "configure_tracing",
    "__version__",
]

_LOCATIONS = {
    "Monitor": "mlmonitor.monitor",
    "MonitorMiddleware": "mlmonitor.middleware",
    "ConfigError": "mlmonitor.config",
    "Settings": "mlmonitor.config",
    "current_record": "mlmonitor.record",
    "request_id": "mlmonitor.record",
    "trace_id": "mlmonitor.record",
    "stage": "mlmonitor.context",
    "tag": "mlmonitor.context",
    "set_model_version": "mlmonitor.context",
    "observe": "mlmonitor.context",
    "observe_batch": "mlmonitor.context",
    "prediction_id": "mlmonitor.context",
    "prediction_ids": "mlmonitor.context",
    "record_feedback": "mlmonitor.context",
    "configure_logging": "mlmonitor.app_logging",
    "redact_server_logs": "mlmonitor.app_logging",
    "configure_tracing": "mlmonitor.trace_provider",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'mlmonitor' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
