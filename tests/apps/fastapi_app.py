"""A FastAPI text service for the ASGI tests: a sentiment scorer behind a multi-model route,
a sync ``def`` endpoint, a streamed generation endpoint with tokens, and a WebSocket."""
from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import StreamingResponse

from mlmonitor import Monitor

WEIGHTS = {"good": 1.0, "great": 2.0, "bad": -1.0, "awful": -2.0, "fine": 0.5}
MODELS = {"sentiment": "s1", "toxicity": "t1"}


def score(text: str) -> float:
    words = text.lower().split()
    return sum(WEIGHTS.get(w, 0.0) for w in words) / max(len(words), 1)


def create_app(**options) -> FastAPI:
    app = FastAPI()
    options.setdefault("model_name", "sentiment")
    options.setdefault("model_version", "s1")
    monitor = Monitor(app, **options)
    app.state.test_monitor = monitor

    @app.post("/v1/models/{name}:predict")
    @monitor.prediction
    async def predict(name: str, request: Request):
        if name not in MODELS:
            raise HTTPException(404, f"no model {name!r}")
        monitor.set_model_version(request.headers.get("X-Model-Version") or MODELS[name],
                                  model_name=name)
        tag = request.headers.get("X-Tag")
        if tag:
            monitor.tag(client=tag)
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise HTTPException(400, "expected {\"text\": \"...\"}")
        with monitor.stage("inference"):
            delay = float(request.headers.get("X-Sleep", "0"))
            if delay:
                await asyncio.sleep(min(delay, 5.0))
            if request.headers.get("X-Fail"):
                raise RuntimeError("model failed on purpose")
            value = score(body["text"])
        monitor.observe(features={"length": len(body["text"])}, prediction=value)
        return {"score": value, "pid": os.getpid(), "id": monitor.prediction_id(value),
                "tag": tag}

    @app.post("/score")
    @monitor.prediction
    def score_sync(body: dict):
        with monitor.stage("inference"):
            value = score(str(body.get("text", "")))
        monitor.tag(thread="pool")
        return {"score": value, "id": monitor.prediction_id(value)}

    @app.post("/feedback")
    def feedback(body: dict):
        return {"result": monitor.record_feedback(body["id"], body["label"])}

    @app.post("/v1/generate")
    @monitor.prediction(model_name="writer", model_version="w1")
    async def generate(body: dict):
        prompt = str(body.get("prompt", ""))
        count = int(body.get("tokens", 5))
        fail_at = body.get("fail_at")

        async def tokens():
            for i in range(count):
                if fail_at is not None and i == fail_at:
                    raise RuntimeError("generation failed on purpose")
                with monitor.stage("decode"):
                    word = ("good", "bad", "fine")[i % 3]
                yield f"data: {word}\n\n"
                await asyncio.sleep(0)
            monitor.observe(tokens_in=len(prompt.split()), tokens_out=count, cost=0.001 * count)

        return StreamingResponse(tokens(), media_type="text/event-stream")

    @app.post("/v1/generate-sync")
    @monitor.prediction(model_name="writer", model_version="w1")
    def generate_sync(body: dict):
        def tokens():  # a plain generator: Starlette resumes it in its thread pool
            for i in range(int(body.get("tokens", 3))):
                with monitor.stage("decode"):  # across the yield
                    yield f"data: {i}\n\n"
            monitor.observe(tokens_out=int(body.get("tokens", 3)))

        return StreamingResponse(tokens(), media_type="text/event-stream")

    @app.get("/healthz")
    async def healthz():
        return {"ok": True}

    @app.websocket("/ws")
    async def echo(websocket: WebSocket):
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    return app


app = create_app()
