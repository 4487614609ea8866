"""The example model server: an iris classifier and a diabetes regressor, each in two versions
behind a canary split.

Endpoints: ``POST /predict`` (iris: one instance or a batch of named features), ``POST /feedback``
(the true label for an iris prediction id), ``POST /v1/models/<name>:predict`` and
``POST /v1/models/<name>:feedback`` (the same for ``iris`` or ``diabetes``; any other name is a
404), ``GET /healthz``; ``/metrics`` is served by mlmonitor.

The diabetes model imputes a missing feature with its training mean and ignores fields it does
not know, as many services do; mlmonitor still counts both (``mlmonitor_feature_missing_total``,
``mlmonitor_feature_unknown_total``), so a renamed or dropped input column shows on the quality
dashboard. Its feedback ``label`` is the true value (a number); mlmonitor records the absolute error.
Run it with ``gunicorn -c example_app/gunicorn.conf.py example_app.app:app``.

Request headers the demo uses to make the dashboards move:
``X-Model-Version: v1|v2`` forces a version, ``X-Fail: 1`` raises on purpose (a 500),
``X-Slow: <seconds>`` sleeps inside the inference stage (capped at 2 s).
Every ``/predict`` response, a 500 included, carries the ``X-Model-Version`` that handled it.

Config keys (``create_app(config)``, else the environment): ``CANARY_FRACTION`` (share of
requests routed to ``v2``, default 0.2), ``MAX_BATCH`` (default 64), ``CANARY_RNG`` (an object
with ``random()``; tests pass a seeded ``random.Random``), ``MAX_SLOW_SECONDS`` (default 2),
``MONITOR_OPTIONS`` (extra keyword arguments for ``Monitor``, e.g. a test's own ``registry``).
"""
from __future__ import annotations

import math
import os
import random
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from flask import Flask, g, jsonify, request

from mlmonitor import Monitor

from example_app import model

PRIMARY, CANARY = "v1", "v2"


class InvalidRequest(ValueError):
    """A client error; its message is the 400 body's ``error``."""


class UnknownModel(LookupError):
    """A /v1/models/<name> request for a model this server does not serve: a 404."""


class InjectedFailure(RuntimeError):
    """Raised when a request asks for ``X-Fail: 1``: feeds the error dashboards and alerts."""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _plural(names: List[str]) -> str:
    return "s" if len(names) > 1 else ""


def validate_instance(raw: Any, where: str, features: Tuple[str, ...],
                      lenient: bool = False) -> Dict[str, float]:
    """Check one instance and return it as floats; the error names ``where`` and the field.

    ``lenient``: missing and unknown features are no error; the row holds the known features
    that were sent (the caller imputes the others) and the unknown fields as they came."""
    if not isinstance(raw, dict):
        raise InvalidRequest(
            f"{where} must be an object mapping feature name to number, got {_type_name(raw)}")
    missing = [name for name in features if name not in raw]
    if missing and not lenient:
        raise InvalidRequest(f"{where}: missing feature{_plural(missing)}: {', '.join(missing)}")
    unknown = sorted(str(name) for name in raw if name not in features)
    if unknown and not lenient:
        raise InvalidRequest(f"{where}: unknown feature{_plural(unknown)}: {', '.join(unknown)}"
                             f" (expected {', '.join(features)})")
    row = {}
    for name in features:
        if name not in raw:
            continue
        value = raw[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"{where}: feature '{name}' must be a number, got {_type_name(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            shown = {math.inf: "Infinity", -math.inf: "-Infinity"}.get(number, "NaN")
            raise InvalidRequest(f"{where}: feature '{name}' must be finite, got {shown}")
        row[name] = number
    if lenient:  # unknown fields ride along to monitor.observe (counted as unknown), not to the model
        row.update((str(key), value) for key, value in raw.items() if key not in features)
    return row


def json_object(body: Any, allowed: Tuple[str, ...], unknown: str, expected: str) -> Dict[str, Any]:
    """The body if it is a JSON object with no fields beyond ``allowed``; else a 400 naming them."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {_type_name(body)}")
    extra = sorted(str(key) for key in body if key not in allowed)
    if extra:
        raise InvalidRequest(f"{unknown}{_plural(extra)}: {', '.join(extra)} ({expected})")
    return body


def parse_body(body: Any, features: Tuple[str, ...], max_batch: int,
               lenient: bool = False) -> Tuple[List[Dict[str, float]], bool]:
    """The instances of a predict body and whether it was a batch."""
    json_object(body, ("features", "instances"), "unknown top-level field",
                "expected 'features' or 'instances'")
    if "features" in body and "instances" in body:
        raise InvalidRequest("give either 'features' (one instance) or 'instances' (a batch), not both")
    if "features" in body:
        return [validate_instance(body["features"], "features", features, lenient)], False
    if "instances" not in body:
        raise InvalidRequest("request body must have 'features' (one instance) or 'instances' (a batch)")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidRequest(f"'instances' must be an array of objects, got {_type_name(instances)}")
    if not instances:
        raise InvalidRequest("'instances' must not be empty")
    if len(instances) > max_batch:
        raise InvalidRequest(f"'instances' has {len(instances)} items; the limit is {max_batch}")
    rows = [validate_instance(item, f"instances[{i}]", features, lenient) for i, item in enumerate(instances)]
    return rows, True


def _read_json() -> Any:
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError:  # absurdly nested arrays: not a body anyone meant to send
        raise InvalidRequest("request body must be valid JSON") from None
    if body is None and request.get_data(cache=True).strip() != b"null":
        raise InvalidRequest("request body must be valid JSON")
    return body


def _slow_seconds(header: Optional[str], cap: float) -> float:
    if header is None:
        return 0.0
    try:
        seconds = float(header)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest(f"header X-Slow must be a non-negative number of seconds, got {header!r}")
    return min(seconds, cap)


class CanaryRouter:
    """Chooses a version per request: a forced header wins, else ``v2`` with the canary fraction."""

    def __init__(self, fraction: float, rng: Any = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"CANARY_FRACTION must be between 0 and 1, got {fraction}")
        self.fraction = fraction
        self.rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()

    def choose(self, forced: Optional[str], versions: Mapping[str, Any]) -> str:
        if forced is not None:
            if forced not in versions:
                raise InvalidRequest(f"header X-Model-Version must be one of {', '.join(versions)},"
                                     f" got {forced!r}")
            return forced
        with self._lock:
            draw = self.rng.random()
        return CANARY if draw < self.fraction else PRIMARY


def create_app(config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the app; ``config`` overrides Flask config keys (see the module docstring)."""
    app = Flask(__name__)
    app.config.update(
        CANARY_FRACTION=float(os.environ.get("CANARY_FRACTION", "0.2")),
        MAX_BATCH=int(os.environ.get("MAX_BATCH", "64")),
        MAX_SLOW_SECONDS=2.0,
        CANARY_RNG=None,
        MONITOR_OPTIONS={},
        MAX_CONTENT_LENGTH=1 << 20,  # 64 instances of a few numbers fit many times over
    )
    app.config.update(config or {})
    models = model.load_models()
    router = CanaryRouter(float(app.config["CANARY_FRACTION"]), app.config["CANARY_RNG"])
    max_batch = int(app.config["MAX_BATCH"])
    slow_cap = float(app.config["MAX_SLOW_SECONDS"])
    features = models[PRIMARY].features
    classes = models[PRIMARY].classes
    regressors = model.load_regressors()
    means = model.feature_means(model.REGRESSOR_NAME)

    monitor = Monitor(app, model_name=model.MODEL_NAME, model_version=PRIMARY,
                      reference=model.reference_profile(), **app.config["MONITOR_OPTIONS"])
    # the second model's reference: its output bins and MAE make the regression panels
    monitor.set_reference(model.REGRESSOR_NAME, model.regression_reference_profile())
    served = (model.MODEL_NAME, model.REGRESSOR_NAME)

    def served_model() -> Optional[str]:
        """The model of a /v1/models/<name> request; None (not yet a model's request) if unknown."""
        name = (request.view_args or {}).get("name")
        return name if name in served else None

    @app.errorhandler(InvalidRequest)
    def invalid(exc: InvalidRequest):
        return jsonify(error=str(exc)), 400

    @app.errorhandler(UnknownModel)
    def unknown_model(exc: UnknownModel):
        return jsonify(error=str(exc)), 404

    @app.after_request
    def version_header(response):
        version = g.get("model_version")
        if version:
            response.headers["X-Model-Version"] = version
        return response

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return predict_iris()

    @app.post("/v1/models/<name>:predict")
    @monitor.prediction(model_name=served_model)
    def predict_model(name: str):
        if name not in served:
            raise UnknownModel(f"no model {name[:64]!r}; served: {', '.join(served)}")
        return predict_iris() if name == model.MODEL_NAME else predict_diabetes()

    def predict_diabetes():
        version = router.choose(request.headers.get("X-Model-Version"), regressors)
        g.model_version = version
        monitor.set_model_version(version, model_name=model.REGRESSOR_NAME)
        with monitor.stage("preprocess"):
            rows, batch = parse_body(_read_json(), regressors[version].features, max_batch, lenient=True)
        with monitor.stage("inference"):
            if request.headers.get("X-Fail", "").strip() not in ("", "0"):
                raise InjectedFailure("failure requested by the X-Fail header")
            values = [float(v) for v in regressors[version].predict([{**means, **row} for row in rows])]
        with monitor.stage("postprocess"):
            monitor.observe_batch(features=rows, predictions=values)
            ids = monitor.prediction_ids(predictions=values)
            results = [{"prediction": value, "prediction_id": pid} for value, pid in zip(values, ids)]
        head = {"model_name": model.REGRESSOR_NAME, "model_version": version}
        return jsonify({**head, "predictions": results} if batch else {**head, **results[0]})

    def predict_iris():
        version = router.choose(request.headers.get("X-Model-Version"), models)
        g.model_version = version
        monitor.set_model_version(version)
        chosen = models[version]
        with monitor.stage("preprocess"):
            rows, batch = parse_body(_read_json(), features, max_batch)
            slow = _slow_seconds(request.headers.get("X-Slow"), slow_cap)
        with monitor.stage("inference"):
            if request.headers.get("X-Fail", "").strip() not in ("", "0"):
                raise InjectedFailure("failure requested by the X-Fail header")
            if slow:
                time.sleep(slow)
            probabilities = chosen.predict_proba(rows)
        with monitor.stage("postprocess"):
            winners = probabilities.argmax(axis=1)
            labels = [classes[int(i)] for i in winners]
            scores = [float(p[i]) for p, i in zip(probabilities, winners)]
            monitor.observe_batch(features=rows, predictions=labels, scores=scores)
            ids = monitor.prediction_ids(predictions=labels)
            results = [
                {"prediction": label, "prediction_id": pid,
                 "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)}}
                for label, pid, probs in zip(labels, ids, probabilities)
            ]
        head = {"model_name": model.MODEL_NAME, "model_version": version}
        return jsonify({**head, "predictions": results} if batch else {**head, **results[0]})

    @app.post("/feedback")
    def feedback():
        return feedback_for(model.MODEL_NAME)

    @app.post("/v1/models/<name>:feedback")
    def feedback_model(name: str):
        if name not in served:
            raise UnknownModel(f"no model {name[:64]!r}; served: {', '.join(served)}")
        return feedback_for(name)

    def feedback_for(name: str):
        body = json_object(_read_json(), ("prediction_id", "label"), "unknown field",
                           "expected 'prediction_id' and 'label'")
        pid, label = body.get("prediction_id"), body.get("label")
        if not isinstance(pid, str) or not pid:
            got = "an empty string" if pid == "" else _type_name(pid)
            raise InvalidRequest(f"'prediction_id' must be a non-empty string, got {got}")
        if name == model.REGRESSOR_NAME:
            try:
                number = not isinstance(label, bool) and isinstance(label, (int, float)) and math.isfinite(label)
            except OverflowError:  # an integer beyond any float
                number = False
            if not number:
                raise InvalidRequest(f"'label' must be a finite number (the true value), got {_type_name(label)}")
        elif not isinstance(label, str):
            raise InvalidRequest(f"'label' must be a string, got {_type_name(label)}")
        elif label not in classes:
            raise InvalidRequest(f"'label' must be one of {', '.join(classes)}, got {label!r}")
        try:
            outcome = monitor.record_feedback(prediction_id=pid, label=label)
        except ValueError as exc:  # mlmonitor.quality.InvalidFeedback: forged, expired, duplicate
            raise InvalidRequest(f"'prediction_id' rejected: {exc}") from None
        if name == model.REGRESSOR_NAME:
            return jsonify(status="recorded", absolute_error=outcome)
        return jsonify(status="recorded", outcome=outcome)

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok", model_name=model.MODEL_NAME, versions=list(models),
                       models={name: list(models) for name in served}, canary_fraction=router.fraction)

    return app


app = create_app()
