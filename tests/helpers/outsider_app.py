"""An app written from the README only, not the example: a FastAPI tenant scorer, run by
tests/test_mlflow_outsider.py under ``uvicorn --workers 2`` (spawned workers).

``/v2/score/{tenant}`` grades a loan application with a 3-class numpy softmax; ``/v2/price/{tenant}``
prices it with a linear regressor (a regression reference makes its feedback an absolute error);
``POST /v2/truth`` takes ``{"pid": ..., "truth": ...}`` and answers 202, or 409 with the reason.
"""
import os
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from mlmonitor import Monitor
from mlmonitor.tokens import InvalidFeedback
from mlmonitor.tools.profiling import build_profile

GRADES = np.array(["A", "B", "C"])
WEIGHTS = np.array([[0.8, -0.2], [0.1, 0.3], [-0.9, 0.5]])
PRICE = np.array([120.0, -3.5])
_train = np.random.default_rng(7).normal(size=(200, 2))
PRICING = build_profile(_train, feature_names=["income", "debt"], predictions=list(_train @ PRICE),
                        labels=list(_train @ PRICE + 1.0), task="regression")

if os.environ.get("OUTSIDER_QUEUE"):  # the test's knob: a queue it can fill, retries it can wait out
    from mlmonitor import assessments
    assessments.MAX_QUEUED = int(os.environ["OUTSIDER_QUEUE"])
    assessments.RETRY_DELAYS_S = tuple(float(s) for s in os.environ["OUTSIDER_RETRIES"].split(",") if s)

app = FastAPI()
monitor = Monitor(app, model_name="grader", model_version="2026.12")


@app.post("/v2/score/{tenant}")
@monitor.prediction
async def score(tenant: str, body: dict):
    x = np.asarray([body["income"], body["debt"]], dtype=float)
    with monitor.stage("inference"):
        logits = WEIGHTS @ x
    grade = str(GRADES[int(np.argmax(logits))])
    monitor.observe(features={"income": x[0], "debt": x[1]}, prediction=grade)
    return {"tenant": tenant, "grade": grade, "pid": monitor.prediction_id(grade), "worker": os.getpid()}


@app.post("/v2/price/{tenant}")
@monitor.prediction(model_name="pricer", model_version="7", reference=PRICING)
async def price(tenant: str, body: dict):
    y = float(np.asarray([body["income"], body["debt"]], dtype=float) @ PRICE)
    return {"tenant": tenant, "price": y, "pid": monitor.prediction_id(y), "worker": os.getpid()}


@app.post("/v2/truth")
async def truth(request: Request):
    body = await request.json()
    time.sleep(float(request.query_params.get("hold", 0)))  # the test's: holds this worker, the next goes to the other
    try:
        result = monitor.record_feedback(body["pid"], body["truth"])
    except InvalidFeedback as exc:
        return JSONResponse({"refused": exc.reason, "worker": os.getpid()}, status_code=409)
    return JSONResponse({"result": result, "worker": os.getpid()}, status_code=202)


@app.get("/ready")
async def ready():
    return {"ok": True}
