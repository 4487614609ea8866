"""A monitored app whose model version and predicted class come from the client (issue 13, item 4)."""
from __future__ import annotations

import os

from flask import Flask, jsonify, request

import mlmonitor
from mlmonitor import Monitor

app = Flask(__name__)
monitor = Monitor(app, model_name="iris", model_version="v1")


@app.post("/predict")
@monitor.prediction
def predict():
    version = request.headers.get("X-Model-Version")
    if version:
        mlmonitor.set_model_version(version)
    mlmonitor.observe(prediction=request.headers.get("X-Class", "setosa"))
    return jsonify(pid=os.getpid())


@app.get("/healthz")
def healthz():
    return {"ok": True}
