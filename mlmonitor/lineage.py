"""Model lineage: which MLflow run and logged model a served version came from.

Filled at start-up (a ``model_uri`` setting, ``@monitor.prediction(model_uri=...)``, or
``model_run_id``/``model_id``) and read per request by the three sinks (:func:`lineage`: a
label of ``mlmonitor_model_info``, a span attribute, log fields). It imports nothing of
mlmonitor, so settings and sinks import it downward; a URI that does not parse or resolve
raises ValueError, which settings turn into ConfigError. MLflow's client is imported only to
resolve an alias (or a version's run id).
"""
from __future__ import annotations

import os
import re
import threading
from typing import Any

__all__ = ["LINEAGE_OK", "lineage", "register_lineage", "parse_model_uri", "resolve_model_uri",
           "apply_model_uri", "mlflow_client"]

#: a run id or model id as it may appear in a label, a span attribute and a log field
LINEAGE_OK = re.compile(r"[A-Za-z0-9_.-]{1,64}").fullmatch
#: (model name, version) -> (run id, model id): labels of mlmonitor_model_info, span
#: attributes and log fields; bounded by the models this process declares
_LINEAGE: dict[tuple[str, str], tuple[str, str]] = {}
_lock = threading.Lock()
_NAME = r"[^/@]{1,128}"
_MODELS = re.compile(rf"models:/({_NAME})(?:/([^/@]{{1,128}})|@([A-Za-z0-9_-]{{1,64}}))/?")
_LOGGED = re.compile(r"models:/(m-[0-9a-f]{1,64})/?")
_RUNS = re.compile(r"runs:/([0-9a-zA-Z_-]{1,64})(?:/.*)?")


def register_lineage(name: str, version: str, run_id: str | None, model_id: str | None) -> None:
    """Remember a served version's lineage (start-up only)."""
    if run_id or model_id:
        with _lock:
            _LINEAGE[(name, version)] = (_clean(run_id), _clean(model_id))


def lineage(name: str, version: str) -> tuple[str, str]:
    """``(run_id, model_id)`` of a served version, ``("", "")`` when unknown."""
    found = _LINEAGE.get((name, version))
    if found is None and _LINEAGE:  # a runs:/ URI without a version: any version of the name
        found = _LINEAGE.get((name, ""))
    return found or ("", "")


def _clean(value: Any) -> str:
    text = str(value) if value else ""
    return text if LINEAGE_OK(text) else ""


def parse_model_uri(uri: str) -> dict[str, str | None]:
    """The parts of an MLflow model URI; ValueError when it is none of the known forms."""
    parts: dict[str, str | None] = {"name": None, "version": None, "alias": None, "run_id": None,
                                    "model_id": None}
    match = _LOGGED.fullmatch(uri)
    if match:
        parts["model_id"] = match.group(1)
        return parts
    match = _MODELS.fullmatch(uri)
    if match:
        parts.update(name=match.group(1), version=match.group(2), alias=match.group(3))
        if parts["version"] == "latest" or (parts["version"] and not parts["version"].isdigit()):
            raise ValueError(f"mlmonitor setting model_uri={uri!r}: a registered model's version "
                              "must be a number (or use models:/name@alias)")
        return parts
    match = _RUNS.fullmatch(uri)
    if match:
        parts["run_id"] = match.group(1)
        return parts
    raise ValueError(f"mlmonitor setting model_uri={uri!r}: expected models:/name/version, "
                      "models:/name@alias, models:/m-<model id> or runs:/<run id>/<path>")


def mlflow_client() -> Any:
    """MLflow's client with bounded retries: start-up must not hang on a server that is down."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    from mlflow import MlflowClient  # noqa: PLC0415 (optional dependency: only an alias or run id needs it)
    return MlflowClient()


def resolve_model_uri(uri: str) -> dict[str, str | None]:
    """Name, version, run id and model id of ``uri``; an alias is resolved now with MLflow's
    client (ValueError when the registry cannot be reached); for a numbered version the
    run and model ids come from the registry when it answers, else stay unknown."""
    parts = parse_model_uri(uri)
    if parts["alias"] is None and (parts["version"] is None or not os.environ.get("MLFLOW_TRACKING_URI")):
        return parts
    try:
        client = mlflow_client()
        if parts["alias"] is not None:
            found = client.get_model_version_by_alias(parts["name"], parts["alias"])
        else:
            found = client.get_model_version(parts["name"], parts["version"])
    except ImportError:
        if parts["alias"] is None:
            return parts
        raise ValueError(f"mlmonitor setting model_uri={uri!r}: resolving an alias needs MLflow's "
                          "client: pip install 'mlmonitor-serving[mlflow]'") from None
    except Exception as exc:
        if parts["alias"] is None:
            return parts  # the URI's name and version stand; the lineage stays unknown
        raise ValueError(f"mlmonitor setting model_uri={uri!r}: the model registry at "
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
