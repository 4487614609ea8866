"""A small monitored Flask app for the tests: two model versions and failure switches."""
from __future__ import annotations

import os
import time

from flask import Flask, abort, jsonify, request

from mlmonitor import Monitor


def create_app(**options) -> Flask:
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version="v1", **options)

    @app.post("/predict")
    @monitor.prediction
    def predict():
        version = request.headers.get("X-Model-Version")
        if version:
            monitor.set_model_version(version)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, "expected a JSON object")
        with monitor.stage("inference"):
            delay = float(request.headers.get("X-Sleep", "0"))
            if delay:
                time.sleep(min(delay, 30.0))
            if request.headers.get("X-Fail"):
                raise RuntimeError("model failed on purpose")
        return jsonify(prediction="setosa", pid=os.getpid())

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    app.extensions["test_monitor"] = monitor
    return app


app = create_app()
