"""MLflow: traces shaped for MLflow, and the connected mode (:func:`enable`).

Runs at start-up, except the two small helpers the trace sink calls per request
(:func:`headers_name_mlflow` at its start, :func:`json_text`). MLflow's client is imported
only by :func:`enable`; the OTLP path to an MLflow server needs none of it: the span
attributes MLflow reads (``mlflow.traceTag.*``, ``mlflow.spanType``, ``mlflow.spanInputs``)
are plain OpenTelemetry attributes set in :mod:`mlmonitor.traces`. Model lineage from a model
URI lives in :mod:`mlmonitor.lineage`.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import re
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry import trace

from .config import DEFAULT_REDACT, ConfigError
from .lineage import mlflow_client
from .redact import redactor
from .trace_provider import configure_tracing, exporter_names

__all__ = ["headers_name_mlflow", "json_text", "enable", "enabled_before_fork", "assessment_server"]

log = logging.getLogger("mlmonitor")

def headers_name_mlflow() -> bool:
    """Whether the OTLP headers send traces to an MLflow experiment (``x-mlflow-experiment-id``)."""
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        if "x-mlflow-experiment-id" in os.environ.get(variable, "").lower():
            return True
    return False


def _header_experiment_id() -> str | None:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        for member in os.environ.get(variable, "").split(","):
            key, _, value = member.partition("=")
            if key.strip().lower() == "x-mlflow-experiment-id" and value.strip():
                return value.strip()
    return None


def assessment_server() -> tuple[str, dict[str, str]] | None:
    """Where feedback goes as assessments (:mod:`mlmonitor.assessments`): the MLflow tracking
    server's URL and the headers to send it, or None when traces do not go to MLflow.

    The connected mode's tracking server (MLflow's tracking URI); else, when the OTLP headers
    name an MLflow experiment, ``MLFLOW_TRACKING_URI`` or else the OTLP endpoint without its
    ``/v1/traces`` (an MLflow server serves both), with the OTLP headers (their credentials).
    ``MLFLOW_TRACKING_TOKEN`` or ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD`` authenticate as
    MLflow's own client does. Only an http(s) server: a local store (files, sqlite) or
    Databricks gets none, said once in the log.
    """
    headers: dict[str, str] = {}
    if _enabled:
        connected = sys.modules.get("mlflow")  # imported by enable(): its tracking URI, set in code too
        uri = connected.get_tracking_uri() if connected is not None else os.environ.get("MLFLOW_TRACKING_URI")
    elif headers_name_mlflow():
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the OTLP endpoint's own server: its headers (credentials) go there, nowhere else
            uri = _otlp_server()
            for variable in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
                for member in os.environ.get(variable, "").split(","):
                    key, _, value = member.partition("=")
                    if value.strip() and key.strip().lower() != "x-mlflow-experiment-id":
                        headers[key.strip()] = unquote(value.strip())
    else:
        return None
    if not uri or urlsplit(uri).scheme not in ("http", "https"):
        log.info("mlmonitor: feedback is not written to MLflow as assessments: the tracking URI is "
                 "not an http(s) server")
        return None
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {pair}"
    return str(uri).rstrip("/"), headers


def _otlp_server() -> str | None:
    """The server of the OTLP traces endpoint: the signal's URL less ``/v1/traces``, or the
    base endpoint; None when neither is set (the default endpoint is a collector)."""
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip().rstrip("/")
    if endpoint:
        return endpoint.removesuffix("/v1/traces")
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/") or None


def json_text(value: Any) -> str:
    """A string attribute MLflow shows as this text: MLflow json-decodes string attributes
    (``"1.10"`` would show as ``1.1``), so the text is sent JSON-encoded."""
    return json.dumps(value, ensure_ascii=False)


_enabled: list[Any] = []


def enabled_before_fork() -> bool:
    """True in a forked worker whose parent enabled the connected mode (gunicorn ``--preload``)."""
    return bool(_enabled) and os.getpid() not in _enabled


#: the first MLflow whose tracing joins a shared provider and finishes a trace whose root is
#: an OpenTelemetry span: 3.1-3.4 refuse the experiment destination, 3.5 keeps its own provider
#: (no trace arrives), 3.6 leaves such traces STATE_UNSPECIFIED
MIN_CONNECTED = (3, 7)


def _installed_version() -> str | None:
    """MLflow's version from its distribution (full, skinny or tracing-only), not importing it."""
    from importlib import metadata  # noqa: PLC0415 (start-up cost (~9 ms): only the connected mode asks)
    for dist in ("mlflow-skinny", "mlflow", "mlflow-tracing"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _check_version(version: str | None) -> None:
    """ConfigError naming the installed MLflow when it is older than the connected mode needs."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version or "")[:2])
    if version is not None and parts < MIN_CONNECTED:
        raise ConfigError(f"mlmonitor.mlflow.enable(): the connected mode needs MLflow >= 3.7 "
                          f"(installed: {version}): pip install 'mlmonitor-serving[mlflow]'")


def enable(experiment_id: str | None = None, required: bool = True) -> Any:
    """Connected mode: ``@mlflow.trace`` spans join mlmonitor's server span, one trace.

    Call at start-up in each process that serves requests (``Monitor(app, mlflow=True)`` does,
    and gunicorn's ``post_fork`` hook in each worker), never lazily: MLflow reads its set-up
    when the first span starts. It shares one global provider (mlmonitor's, built from
    ``OTEL_*`` when the app set none), turns MLflow's own OTLP exporter off when mlmonitor
    exports OTLP (else every span is exported twice), resolves the experiment once (from the
    argument, the ``x-mlflow-experiment-id`` OTLP header, ``MLFLOW_EXPERIMENT_ID`` or
    ``MLFLOW_EXPERIMENT_NAME``) so that no request asks the tracking server for it, and bounds
    MLflow's HTTP retries. Returns the provider (None when MLflow is not installed and
    ``required`` is false: spans are then only shaped for MLflow); idempotent per process.
    """
    pid = os.getpid()
    if pid in _enabled:
        return trace.get_tracer_provider()
    if importlib.util.find_spec("mlflow") is None:
        if not required:
            log.info("mlmonitor: mlflow=True without MLflow installed: spans are shaped for "
                     "MLflow, @mlflow.trace is not connected (pip install 'mlmonitor-serving[mlflow]')")
            return None
        raise ConfigError("mlmonitor.mlflow.enable(): the connected mode needs MLflow: "
                          "pip install 'mlmonitor-serving[mlflow]'")
    _check_version(_installed_version())
    # MLflow reads these when its tracing starts (after this), not at import
    os.environ["MLFLOW_USE_DEFAULT_TRACER_PROVIDER"] = "false"
    if "otlp" in exporter_names():
        os.environ["MLFLOW_ENABLE_OTLP_EXPORTER"] = "false"
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "true")
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = configure_tracing()
    experiment = (experiment_id or _header_experiment_id()
                  or os.environ.get("MLFLOW_EXPERIMENT_ID"))
    if experiment is None and os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        try:
            found = mlflow_client().get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
        except Exception as exc:
            raise ConfigError(f"MLFLOW_EXPERIMENT_NAME: the tracking server could not be asked "
                              f"({type(exc).__name__})") from None
        if found is None:
            raise ConfigError("MLFLOW_EXPERIMENT_NAME: no such experiment")
        experiment = found.experiment_id
    try:  # optional dependency: the [mlflow] extra, checked above
        import mlflow  # noqa: PLC0415
        from mlflow.entities.trace_location import MlflowExperimentLocation  # noqa: PLC0415
        if experiment is not None:
            mlflow.tracing.set_destination(MlflowExperimentLocation(experiment_id=str(experiment)))
        mlflow.tracing.enable()
    except Exception as exc:  # e.g. mlflow-skinny >= 3.18 whose default store (sqlite) it cannot open
        raise ConfigError(_not_started(exc)) from None
    _enabled.append(pid)
    return provider


def _not_started(exc: Exception) -> str:
    """One line saying why MLflow's tracing did not start and what to set (secrets hidden)."""
    where = (f"MLFLOW_TRACKING_URI={os.environ['MLFLOW_TRACKING_URI']!r}"
             if os.environ.get("MLFLOW_TRACKING_URI") else
             "MLFLOW_TRACKING_URI is not set, so MLflow uses its default store")
    detail = " ".join(str(exc).split())[:300]
    return redactor(DEFAULT_REDACT).text(
        f"mlmonitor.mlflow.enable(): MLflow's tracing did not start ({where}): "
        f"{type(exc).__name__}: {detail}; set MLFLOW_TRACKING_URI to your tracking server "
        "(e.g. http://mlflow:5000) or leave mlflow=True out")
