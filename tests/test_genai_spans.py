"""GenAI span attributes (issue 18, item 4): a request that observed tokens carries the OpenTelemetry
GenAI usage attributes on its server span, summed over its observations, WSGI and ASGI."""
from __future__ import annotations

from fastapi.testclient import TestClient
from flask import Flask

from mlmonitor import Monitor
from mlmonitor.testing import capture

from apps import fastapi_app


def flask_generation_app() -> Flask:
    app = Flask(__name__)
    monitor = Monitor(app, model_name="writer", model_version="w1")

    @app.post("/generate")
    @monitor.prediction
    def generate():
        def chunks():
            for word in ("one", "two", "three"):
                monitor.observe(tokens_out=1, cost=0.002)  # one token a chunk, inside the stream
                yield f"data: {word}\n\n"
            monitor.observe(tokens_in=7)
            monitor.observe(tokens_in=float("nan"), tokens_out=-3)  # ignored, as by the counter
        return app.response_class(chunks(), mimetype="text/event-stream")

    @app.post("/predict")
    @monitor.prediction
    def predict():
        monitor.observe(prediction="a", score=0.9)  # an observation without tokens
        return {"y": "a"}

    return app


def _span(monitored, name):
    (span,) = [s for s in monitored.spans() if s.name == name]
    return dict(span.attributes)


def test_a_streamed_flask_generation_span_carries_the_summed_genai_usage():
    with capture() as monitored:
        app = flask_generation_app()
        c = app.test_client()
        response = c.post("/generate")
        assert response.get_data(as_text=True).count("data:") == 3
        response.close()
        c.post("/predict")
    attributes = _span(monitored, "POST /generate")
    assert attributes["gen_ai.request.model"] == "writer"
    assert attributes["gen_ai.usage.input_tokens"] == 7
    assert attributes["gen_ai.usage.output_tokens"] == 3
    assert monitored.value("mlmonitor_tokens_total", model_name="writer", model_version="w1",
                           direction="output") == 3
    plain = _span(monitored, "POST /predict")
    assert plain["ml.model.name"] == "writer"
    assert not [key for key in plain if key.startswith("gen_ai.")]


def test_a_streamed_fastapi_generation_span_carries_the_genai_usage():
    with capture() as monitored:
        app = fastapi_app.create_app()
        with TestClient(app) as c:
            c.post("/v1/generate", json={"prompt": "tell me a story", "tokens": 4})
            c.post("/v1/models/sentiment:predict", json={"text": "good"})
    attributes = _span(monitored, "POST /v1/generate")
    assert attributes["gen_ai.request.model"] == "writer"
    assert attributes["gen_ai.usage.input_tokens"] == 4
    assert attributes["gen_ai.usage.output_tokens"] == 4
    (other,) = [s for s in monitored.spans() if s.name.startswith("POST /v1/models")]
    assert not [key for key in other.attributes if key.startswith("gen_ai.")]
