"""The example model server as a FastAPI app: the same models, routes, answers and headers as
``example_app.app`` (Flask), for the ASGI half of the field.

Everything the endpoints do is :class:`example_app.app.Service`, shared with the Flask app; this
module only maps it onto FastAPI: ``InvalidRequest`` is a 400 and ``UnknownModel`` a 404 with
``{"error": ...}``, ``InjectedFailure`` (``X-Fail: 1``) a 500, a body over ``MAX_CONTENT_LENGTH``
a 413, and every ``/predict`` answer, a 400 or 500 included, carries ``X-Model-Version``. The
endpoints are plain ``def`` (FastAPI runs them in its thread pool), so ``X-Slow`` sleeps there,
never on the event loop; the body is read on the loop when the handler asks for it, as Flask
reads it. Config keys as in ``example_app.app``, plus ``MLMONITOR_*`` keys, passed to
``Monitor`` as its settings (Flask reads them from ``app.config``).

Run it with the same gunicorn settings and hooks, uvicorn workers::

    gunicorn -k uvicorn.workers.UvicornWorker -c example_app/gunicorn.conf.py example_app.asgi:app
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

from anyio import from_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from example_app import model, textgen
from example_app.app import (InjectedFailure, InvalidRequest, Service, UnknownModel, default_config,
                             json_of)

PREFIX = "MLMONITOR_"


class BodyTooLarge(Exception):
    """A body over ``MAX_CONTENT_LENGTH``: a 413, as Flask answers it."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes without reading it all."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise BodyTooLarge(f"request body is larger than {limit} bytes")
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def version_header(request: Request) -> Dict[str, str]:
    version = getattr(request.state, "model_version", None)
    return {"X-Model-Version": version} if version else {}


def create_app(config: Optional[Mapping[str, Any]] = None) -> FastAPI:
    """Build the app; ``config`` overrides the keys of ``example_app.app.default_config()``."""
    settings = {**default_config(), **(config or {})}
    options = {key[len(PREFIX):].lower(): value for key, value in settings.items() if key.startswith(PREFIX)}
    # no /docs or /openapi.json: the same routes as the Flask app, nothing more
    app = FastAPI(title="mlmonitor example", docs_url=None, redoc_url=None, openapi_url=None)
    service = Service(app, settings, **{**options, **settings["MONITOR_OPTIONS"]})
    app.state.service = service
    monitor, limit = service.monitor, int(settings["MAX_CONTENT_LENGTH"])

    def reader(request: Request) -> Callable[[], Any]:
        """The JSON body, read when the handler asks (from FastAPI's thread pool)."""
        return lambda: json_of(from_thread.run(read_body, request, limit))

    def chosen(request: Request) -> Callable[[str], None]:
        return lambda version: setattr(request.state, "model_version", version)

    @app.exception_handler(InvalidRequest)
    async def invalid(request: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 400, headers=version_header(request))

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 404, headers=version_header(request))

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 413, headers=version_header(request))

    @app.exception_handler(InjectedFailure)  # answered inside mlmonitor's middleware, as Flask does:
    async def injected(request: Request, exc: InjectedFailure) -> PlainTextResponse:  # X-Request-ID too
        return PlainTextResponse("Internal Server Error", 500, headers=version_header(request))

    @app.exception_handler(Exception)  # anything else: Starlette's outermost handler, still raised
    async def server_error(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("Internal Server Error", 500, headers=version_header(request))

    def prediction_of(name: str) -> Callable[[Request], JSONResponse]:
        """One served model's prediction endpoint body (a prediction of that model). As in the
        Flask app, only the default model (iris) has its series declared at start-up: the
        others' come with their first prediction (a callable name), so no version of them
        starts its counters before another (the canary panels compare their rates)."""
        @monitor.prediction(model_name=None if name == model.MODEL_NAME else (lambda request: name))
        def predict(request: Request) -> JSONResponse:
            answer = service.predict(name, request.headers, reader(request), chosen(request))
            return JSONResponse(answer, headers=version_header(request))
        return predict

    predictions = {name: prediction_of(name) for name in service.served}

    @app.post("/predict")
    def predict(request: Request) -> JSONResponse:
        return predictions[model.MODEL_NAME](request)

    @app.post("/v1/models/{name}:predict")
    def predict_model(name: str, request: Request) -> JSONResponse:
        service.check_served(name)  # an unknown model is no model's prediction: HTTP-only
        return predictions[name](request)

    @app.post("/feedback")
    def feedback(request: Request) -> JSONResponse:
        return JSONResponse(service.feedback(model.MODEL_NAME, reader(request)))

    @app.post("/v1/models/{name}:feedback")
    def feedback_model(name: str, request: Request) -> JSONResponse:
        service.check_served(name)
        return JSONResponse(service.feedback(name, reader(request)))

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse(service.health())

    writer = textgen.TextGen()  # trained now, at start-up, from text scikit-learn ships

    @app.post("/generate")
    @monitor.prediction(model_name=textgen.MODEL_NAME, model_version=textgen.MODEL_VERSION)
    def generate(request: Request) -> StreamingResponse:
        """A streamed generation, as the Flask app's; the plain generator runs in the thread pool."""
        try:
            prompt, max_tokens = textgen.parse(reader(request)())
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        return StreamingResponse(writer.stream(monitor, prompt, max_tokens), media_type="text/event-stream")

    return app


app = create_app()
