"""The example model server: an iris classifier and a diabetes regressor, each in two versions
behind a canary split.

Endpoints: ``POST /predict`` (iris: one instance or a batch of named features), ``POST /feedback``
(the true label for an iris prediction id), ``POST /v1/models/<name>:predict`` and
``POST /v1/models/<name>:feedback`` (the same for ``iris`` or ``diabetes``; any other name is a
404), ``POST /generate`` (a streamed text generation, model ``textgen``: :mod:`example_app.textgen`),
``GET /healthz``; ``/metrics`` is served by mlmonitor.

The diabetes model imputes a missing feature with its training mean and ignores fields it does
not know, as many services do; mlmonitor still counts both (``mlmonitor_feature_missing_total``,
``mlmonitor_feature_unknown_total``), so a renamed or dropped input column shows on the quality
dashboard. Its feedback ``label`` is the true value (a number); mlmonitor records the absolute error.
Run it with ``gunicorn -c example_app/gunicorn.conf.py example_app.app:app``. What the endpoints do
is :class:`Service`, framework-neutral: ``example_app.asgi`` serves the same with FastAPI.

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

import json
import math
import os
import random
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from flask import Flask, g, jsonify, request

from mlmonitor import Monitor

from example_app import model, textgen

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


def json_of(data: bytes) -> Any:
    """A request body parsed as JSON, whatever the framework that read it; a 400 if it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
        raise InvalidRequest("request body must be valid JSON") from None


def _read_json() -> Any:
    return json_of(request.get_data(cache=True))


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


def default_config() -> Dict[str, Any]:
    """The config keys of the module docstring with their defaults (the environment's first)."""
    return dict(
        CANARY_FRACTION=float(os.environ.get("CANARY_FRACTION", "0.2")),
        MAX_BATCH=int(os.environ.get("MAX_BATCH", "64")),
        MAX_SLOW_SECONDS=2.0,
        CANARY_RNG=None,
        MONITOR_OPTIONS={},
        MAX_CONTENT_LENGTH=1 << 20,  # 64 instances of a few numbers fit many times over
    )


class Service:
    """The models and what each endpoint does with a request, framework-neutral: the Flask app
    below and the FastAPI app (``example_app.asgi``) pass the request's headers and a body
    reader and answer with the dict returned. Errors are raised: InvalidRequest (400),
    UnknownModel (404), InjectedFailure (500)."""

    served = (model.MODEL_NAME, model.REGRESSOR_NAME)

    def __init__(self, app: Any, config: Mapping[str, Any], **monitor_options: Any) -> None:
        self.models = model.load_models()
        self.router = CanaryRouter(float(config["CANARY_FRACTION"]), config["CANARY_RNG"])
        self.max_batch = int(config["MAX_BATCH"])
        self.slow_cap = float(config["MAX_SLOW_SECONDS"])
        self.features = self.models[PRIMARY].features
        self.classes = self.models[PRIMARY].classes
        self.regressors = model.load_regressors()
        self.means = model.feature_means(model.REGRESSOR_NAME)
        # mlmonitor.Monitor recognises a Flask or a FastAPI app: the one line for both
        self.monitor = Monitor(app, model_name=model.MODEL_NAME, model_version=PRIMARY,
                               reference=model.reference_profile(), **monitor_options)
        # the second model's reference: its output bins and MAE make the regression panels
        self.monitor.set_reference(model.REGRESSOR_NAME, model.regression_reference_profile())

    def check_served(self, name: str) -> None:
        if name not in self.served:
            raise UnknownModel(f"no model {name[:64]!r}; served: {', '.join(self.served)}")

    def predict(self, name: str, headers: Mapping[str, str], read_json: Callable[[], Any],
                chosen: Callable[[str], None]) -> Dict[str, Any]:
        """A served model's prediction; ``chosen(version)`` as soon as the version is known
        (the response's X-Model-Version, a 400 or 500 included)."""
        if name == model.MODEL_NAME:
            return self._predict_iris(headers, read_json, chosen)
        return self._predict_diabetes(headers, read_json, chosen)

    def _predict_diabetes(self, headers: Mapping[str, str], read_json: Callable[[], Any],
                          chosen: Callable[[str], None]) -> Dict[str, Any]:
        monitor, regressors = self.monitor, self.regressors
        version = self.router.choose(headers.get("X-Model-Version"), regressors)
        chosen(version)
        monitor.set_model_version(version, model_name=model.REGRESSOR_NAME)
        with monitor.stage("preprocess"):
            rows, batch = parse_body(read_json(), regressors[version].features, self.max_batch, lenient=True)
        with monitor.stage("inference"):
            if headers.get("X-Fail", "").strip() not in ("", "0"):
                raise InjectedFailure("failure requested by the X-Fail header")
            values = [float(v) for v in regressors[version].predict([{**self.means, **row} for row in rows])]
        with monitor.stage("postprocess"):
            monitor.observe_batch(features=rows, predictions=values)
            ids = monitor.prediction_ids(predictions=values)
            results = [{"prediction": value, "prediction_id": pid} for value, pid in zip(values, ids)]
        head = {"model_name": model.REGRESSOR_NAME, "model_version": version}
        return {**head, "predictions": results} if batch else {**head, **results[0]}

    def _predict_iris(self, headers: Mapping[str, str], read_json: Callable[[], Any],
                      chosen: Callable[[str], None]) -> Dict[str, Any]:
        monitor, classes = self.monitor, self.classes
        version = self.router.choose(headers.get("X-Model-Version"), self.models)
        chosen(version)
        monitor.set_model_version(version)
        picked = self.models[version]
        with monitor.stage("preprocess"):
            rows, batch = parse_body(read_json(), self.features, self.max_batch)
            slow = _slow_seconds(headers.get("X-Slow"), self.slow_cap)
        with monitor.stage("inference"):
            if headers.get("X-Fail", "").strip() not in ("", "0"):
                raise InjectedFailure("failure requested by the X-Fail header")
            if slow:
                time.sleep(slow)
            probabilities = picked.predict_proba(rows)
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
        return {**head, "predictions": results} if batch else {**head, **results[0]}

    def feedback(self, name: str, read_json: Callable[[], Any]) -> Dict[str, Any]:
        """The true label (or value) for a served model's prediction id."""
        body = json_object(read_json(), ("prediction_id", "label"), "unknown field",
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
        elif label not in self.classes:
            raise InvalidRequest(f"'label' must be one of {', '.join(self.classes)}, got {label!r}")
        try:
            outcome = self.monitor.record_feedback(prediction_id=pid, label=label)
        except ValueError as exc:  # mlmonitor.tokens.InvalidFeedback: forged, expired, duplicate, bad_label
            field = "label" if getattr(exc, "reason", "") == "bad_label" else "prediction_id"
            raise InvalidRequest(f"'{field}' rejected: {exc}") from None
        if name == model.REGRESSOR_NAME:
            return {"status": "recorded", "absolute_error": outcome}
        return {"status": "recorded", "outcome": outcome}

    def health(self) -> Dict[str, Any]:
        return {"status": "ok", "model_name": model.MODEL_NAME, "versions": list(self.models),
                "models": {name: list(self.models) for name in self.served},
                "canary_fraction": self.router.fraction}


def create_app(config: Optional[Mapping[str, Any]] = None) -> Flask:
    """Build the app; ``config`` overrides Flask config keys (see the module docstring)."""
    app = Flask(__name__)
    app.config.update(default_config())
    app.config.update(config or {})
    service = Service(app, app.config, **app.config["MONITOR_OPTIONS"])
    monitor, served = service.monitor, service.served

    def served_model(name: str) -> Optional[str]:
        """The model of a /v1/models/<name> request (called with the view's arguments); None
        (not yet a model's request) if unknown."""
        return name if name in served else None

    def chosen(version: str) -> None:
        g.model_version = version

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
        return jsonify(service.predict(model.MODEL_NAME, request.headers, _read_json, chosen))

    @app.post("/v1/models/<name>:predict")
    @monitor.prediction(model_name=served_model)
    def predict_model(name: str):
        service.check_served(name)
        return jsonify(service.predict(name, request.headers, _read_json, chosen))

    @app.post("/feedback")
    def feedback():
        return jsonify(service.feedback(model.MODEL_NAME, _read_json))

    @app.post("/v1/models/<name>:feedback")
    def feedback_model(name: str):
        service.check_served(name)
        return jsonify(service.feedback(name, _read_json))

    @app.get("/healthz")
    def healthz():
        return jsonify(service.health())

    writer = textgen.TextGen()  # trained now, at start-up, from text scikit-learn ships

    @app.post("/generate")
    @monitor.prediction(model_name=textgen.MODEL_NAME, model_version=textgen.MODEL_VERSION)
    def generate():
        """A streamed generation (server-sent events): see example_app.textgen."""
        try:
            prompt, max_tokens = textgen.parse(_read_json())
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return app.response_class(writer.stream(monitor, prompt, max_tokens), mimetype="text/event-stream")

    return app


app = create_app()
