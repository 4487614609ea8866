"""A hostile-input target: a price regressor whose errors echo the client's text, as many apps do.

``POST /v1/price`` answers 400 with the raw body in the message when it is not a JSON
object, and 500 with the body in the exception message when ``X-Fail`` is set.
"""
from __future__ import annotations

from flask import Flask, abort, jsonify, request

from mlmonitor import Monitor


def create_app(**options) -> Flask:
    app = Flask(__name__)
    monitor = Monitor(app, model_name="price", model_version="2024-06", **options)

    @app.post("/v1/price")
    @monitor.prediction
    def price():
        text = request.get_data(as_text=True)
        if request.headers.get("X-Fail"):
            raise ValueError(f"could not score {text}")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, f"expected a JSON object, got: {text}")
        monitor.tag(request=body)
        return jsonify(price=12.5 * len(body))

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    return app


app = create_app()
