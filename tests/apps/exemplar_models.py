"""An outsider's Starlette app (not the example app): several linear regression models, each in
several versions, on ``/models/{name}/versions/{version}/predict``, set up as the README says.

The body is ``{"x": [numbers], "stage": optional stage name, "sleep": optional seconds}``; a
stage name from the client is hostile on purpose (tests of label caps), so is any model name.
"""
from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mlmonitor import Monitor

WEIGHTS = {"glucose": [0.5, -1.0, 2.0], "pressure": [1.5, 0.25, -0.5]}

monitor = Monitor(model_name="glucose", model_version="v1")


@monitor.prediction
async def predict(request: Request) -> JSONResponse:
    name, version = request.path_params["name"], request.path_params["version"]
    monitor.set_model_version(version, model_name=name)
    body = await request.json()
    with monitor.stage("preprocess"):
        x = [float(v) for v in body["x"]]
    with monitor.stage(str(body.get("stage") or "inference")):
        await asyncio.sleep(float(body.get("sleep", 0)))
        weights = WEIGHTS.get(name, [1.0, 1.0, 1.0])
        y = sum(w * v for w, v in zip(weights, x))
    monitor.observe(features={f"x{i}": v for i, v in enumerate(x)}, prediction=y)
    return JSONResponse({"model": name, "version": version, "y": y})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/models/{name}/versions/{version}/predict", predict, methods=["POST"]),
                        Route("/healthz", healthz)])
monitor.init_app(app)
