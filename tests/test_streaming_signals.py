"""Streaming signals (issue 18, item 4): time to first chunk of a streamed prediction, WSGI and ASGI."""
from __future__ import annotations

import time

from fastapi.testclient import TestClient
from flask import Flask

from mlmonitor import Monitor
from mlmonitor.testing import capture

from apps import fastapi_app

TTFC = "mlmonitor_time_to_first_chunk_seconds"


def flask_stream_app() -> Flask:
    app = Flask(__name__)
    monitor = Monitor(app, model_name="writer", model_version="w1")

    @app.post("/generate")
    @monitor.prediction
    def generate():
        def tokens():
            yield ""                 # an empty chunk is not the first chunk
            time.sleep(0.03)
            yield "data: one\n\n"
            time.sleep(0.06)
            yield "data: two\n\n"
        return app.response_class(tokens(), mimetype="text/event-stream")

    @app.post("/whole")
    @monitor.prediction
    def whole():
        return {"y": 1}

    return app


def test_a_streamed_flask_prediction_records_its_time_to_first_chunk_and_a_whole_one_none():
    with capture() as monitored:
        app = flask_stream_app()
        c = app.test_client()
        response = c.post("/generate")
        assert response.get_data(as_text=True).count("data:") == 2
        response.close()
        c.post("/whole")
    labels = {"model_name": "writer", "model_version": "w1"}
    assert monitored.value(TTFC + "_count", **labels) == 1
    first = monitored.value(TTFC + "_sum", **labels)
    (line,) = [line for line in monitored.logs() if line["route"] == "/generate"]
    assert 0.03 <= first < line["duration_ms"] / 1000  # after the empty chunk's sleep, before the end
    assert monitored.value("mlmonitor_predictions_total", **labels) == 2


def test_a_streamed_fastapi_prediction_records_its_time_to_first_chunk_once():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with TestClient(app) as c:
            c.post("/v1/generate", json={"tokens": 4})
            c.post("/v1/models/sentiment:predict", json={"text": "good"})
    assert monitored.value(TTFC + "_count", model_name="writer", model_version="w1") == 1
    assert monitored.value(TTFC + "_count", model_name="sentiment", model_version="s1") == 0
    (line,) = [line for line in monitored.logs() if line["route"] == "/v1/generate"]
    assert 0 < monitored.value(TTFC + "_sum", model_name="writer", model_version="w1") \
        <= line["duration_ms"] / 1000
