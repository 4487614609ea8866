"""MLflow: model lineage from a model URI, traces shaped for MLflow, and the connected mode.

Runs at start-up (:func:`apply_model_uri` and :func:`register_lineage` resolve and remember a
served version's run and model ids; :func:`enable` starts the connected mode) and in every request:
:func:`lineage` is a dict lookup that the metrics, log and trace sinks make for each request's
model, and :func:`json_text` encodes the MLflow span attributes. MLflow's client is imported only
to resolve an alias (or a version's run id) and by :func:`enable`; the OTLP path to an MLflow
server needs none of it: the span attributes MLflow reads (``mlflow.traceTag.*``,
``mlflow.spanType``, ``mlflow.spanInputs``) are plain OpenTelemetry attributes set in
:mod:`mlmonitor.traces`.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import threading
from typing import Any, Dict, Optional, Tuple

from .config import _LINEAGE_OK, DEFAULT_REDACT, ConfigError
from .redact import redactor

__all__ = ["parse_model_uri", "resolve_model_uri", "apply_model_uri", "lineage", "register_lineage",
           "headers_name_mlflow", "json_text", "enable"]

log = logging.getLogger("mlmonitor")

#: (model name, version) -> (run id, model id): labels of mlmonitor_model_info, span
#: attributes and log fields; bounded by the models this process declares
_LINEAGE: Dict[Tuple[str, str], Tuple[str, str]] = {}
_lock = threading.Lock()
_NAME = r"[^/@]{1,128}"
_MODELS = re.compile(rf"models:/({_NAME})(?:/([^/@]{{1,128}})|@([A-Za-z0-9_-]{{1,64}}))/?")
_LOGGED = re.compile(r"models:/(m-[0-9a-f]{1,64})/?")
_RUNS = re.compile(r"runs:/([0-9a-zA-Z_-]{1,64})(?:/.*)?")


def register_lineage(name: str, version: str, run_id: Optional[str], model_id: Optional[str]) -> None:
    """Remember a served version's lineage (start-up only)."""
    if run_id or model_id:
        with _lock:
            _LINEAGE[(name, version)] = (_clean(run_id), _clean(model_id))


def lineage(name: str, version: str) -> Tuple[str, str]:
    """``(run_id, model_id)`` of a served version, ``("", "")`` when unknown."""
    found = _LINEAGE.get((name, version))
    if found is None and _LINEAGE:  # a runs:/ URI without a version: any version of the name
        found = _LINEAGE.get((name, ""))
    return found or ("", "")


def _clean(value: Any) -> str:
    text = str(value) if value else ""
    return text if _LINEAGE_OK(text) else ""


def parse_model_uri(uri: str) -> Dict[str, Optional[str]]:
    """The parts of an MLflow model URI; ConfigError when it is none of the known forms."""
    parts: Dict[str, Optional[str]] = dict(name=None, version=None, alias=None, run_id=None,
                                           model_id=None)
    match = _LOGGED.fullmatch(uri)
    if match:
        parts["model_id"] = match.group(1)
        return parts
    match = _MODELS.fullmatch(uri)
    if match:
        parts.update(name=match.group(1), version=match.group(2), alias=match.group(3))
        if parts["version"] in ("latest",) or (parts["version"] and not parts["version"].isdigit()):
            raise ConfigError(f"mlmonitor setting model_uri={uri!r}: a registered model's version "
                              "must be a number (or use models:/name@alias)")
        return parts
    match = _RUNS.fullmatch(uri)
    if match:
        parts["run_id"] = match.group(1)
        return parts
    raise ConfigError(f"mlmonitor setting model_uri={uri!r}: expected models:/name/version, "
                      "models:/name@alias, models:/m-<model id> or runs:/<run id>/<path>")


def _client() -> Any:
    """MLflow's client with bounded retries: start-up must not hang on a server that is down."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from mlflow import MlflowClient
    return MlflowClient()


def resolve_model_uri(uri: str) -> Dict[str, Optional[str]]:
    """Name, version, run id and model id of ``uri``; an alias is resolved now with MLflow's
    client (ConfigError when the registry cannot be reached); for a numbered version the
    run and model ids come from the registry when it answers, else stay unknown."""
    parts = parse_model_uri(uri)
    if parts["alias"] is None and (parts["version"] is None or not os.environ.get("MLFLOW_TRACKING_URI")):
        return parts
    try:
        client = _client()
        if parts["alias"] is not None:
            found = client.get_model_version_by_alias(parts["name"], parts["alias"])
        else:
            found = client.get_model_version(parts["name"], parts["version"])
    except ImportError:
        if parts["alias"] is None:
            return parts
        raise ConfigError(f"mlmonitor setting model_uri={uri!r}: resolving an alias needs MLflow's "
                          "client: pip install 'mlmonitor-serving[mlflow]'") from None
    except Exception as exc:
        if parts["alias"] is None:
            return parts  # the URI's name and version stand; the lineage stays unknown
        raise ConfigError(f"mlmonitor setting model_uri={uri!r}: the model registry at "
                          f"MLFLOW_TRACKING_URI could not resolve the alias "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    parts["version"] = str(found.version)
    parts["run_id"] = getattr(found, "run_id", None) or None
    parts["model_id"] = getattr(found, "model_id", None) or None
    return parts


def apply_model_uri(settings: Any) -> None:
    """Fill a Settings' model name, version and lineage fields from its ``model_uri``
    (start-up; Settings registers the lineage once they are final)."""
    parts = resolve_model_uri(settings.model_uri)
    for field, value in (("model_name", parts["name"]), ("model_version", parts["version"]),
                         ("model_run_id", parts["run_id"]), ("model_id", parts["model_id"])):
        default = {"model_name": "model", "model_version": "unknown"}.get(field)
        if value and getattr(settings, field) in (None, default):
            object.__setattr__(settings, field, str(value)[:128])


def headers_name_mlflow() -> bool:
    """Whether the OTLP headers send traces to an MLflow experiment (``x-mlflow-experiment-id``)."""
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        if "x-mlflow-experiment-id" in os.environ.get(variable, "").lower():
            return True
    return False


def _header_experiment_id() -> Optional[str]:
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        for member in os.environ.get(variable, "").split(","):
            key, _, value = member.partition("=")
            if key.strip().lower() == "x-mlflow-experiment-id" and value.strip():
                return value.strip()
    return None


def json_text(value: Any) -> str:
    """A string attribute MLflow shows as this text: MLflow json-decodes string attributes
    (``"1.10"`` would show as ``1.1``), so the text is sent JSON-encoded."""
    return json.dumps(value, ensure_ascii=False)


_enabled: list = []


def enabled_before_fork() -> bool:
    """True in a forked worker whose parent enabled the connected mode (gunicorn ``--preload``)."""
    return bool(_enabled) and os.getpid() not in _enabled


#: the first MLflow whose tracing joins a shared provider and finishes a trace whose root is
#: an OpenTelemetry span: 3.1-3.4 refuse the experiment destination, 3.5 keeps its own provider
#: (no trace arrives), 3.6 leaves such traces STATE_UNSPECIFIED
MIN_CONNECTED = (3, 7)


def _installed_version() -> Optional[str]:
    """MLflow's version from its distribution (full, skinny or tracing-only), not importing it."""
    from importlib import metadata
    for dist in ("mlflow-skinny", "mlflow", "mlflow-tracing"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def _check_version(version: Optional[str]) -> None:
    """ConfigError naming the installed MLflow when it is older than the connected mode needs."""
    parts = tuple(int(p) for p in re.findall(r"\d+", version or "")[:2])
    if version is not None and parts < MIN_CONNECTED:
        raise ConfigError(f"mlmonitor.mlflow.enable(): the connected mode needs MLflow >= 3.7 "
                          f"(installed: {version}): pip install 'mlmonitor-serving[mlflow]'")


def enable(experiment_id: Optional[str] = None, required: bool = True) -> Any:
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
    from opentelemetry import trace

    from .trace_provider import _exporter_names, configure_tracing
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
    if "otlp" in _exporter_names():
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
            found = _client().get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
        except Exception as exc:
            raise ConfigError(f"MLFLOW_EXPERIMENT_NAME: the tracking server could not be asked "
                              f"({type(exc).__name__})") from None
        if found is None:
            raise ConfigError("MLFLOW_EXPERIMENT_NAME: no such experiment")
        experiment = found.experiment_id
    try:
        import mlflow
        from mlflow.entities.trace_location import MlflowExperimentLocation
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
