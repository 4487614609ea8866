"""A monitored app whose failed predictions log long lines (issue 13, item 3): ~10 KB with the stack."""
from __future__ import annotations

from flask import Flask

from mlmonitor import Monitor

app = Flask(__name__)
app.logger.disabled = True  # Flask's own copy of the traceback would only fill stderr
monitor = Monitor(app, model_name="iris", model_version="v1")


@app.get("/predict")
@monitor.prediction
def predict():
    raise RuntimeError("model failed: " + "x" * 9000)


@app.get("/healthz")
def healthz():
    return {"ok": True}
