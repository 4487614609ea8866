"""The example's GenAI endpoint (issue 18, item 5): a deterministic text model trained at start-up
from text scikit-learn ships, streamed as server-sent events, with tokens, cost, time to first
chunk and the GenAI span attributes counted, in the Flask app and its FastAPI twin."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from example_app import asgi, textgen
from example_app.app import create_app
from mlmonitor.testing import capture

CONFIG = {"MLMONITOR_FEEDBACK_SECRET": "example-genai-test-secret-0123456789abcdef"}
LABELS = {"model_name": textgen.MODEL_NAME, "model_version": textgen.MODEL_VERSION}
PROMPT = "Tell me about the iris flowers"


def events(text):
    return [json.loads(block[len("data: "):]) for block in text.split("\n\n") if block]


def flask_post(body):
    client = create_app(CONFIG).test_client()
    response = client.post("/generate", json=body)
    text = response.get_data(as_text=True)
    response.close()
    return response.status_code, response.mimetype, text


def asgi_post(body):
    with TestClient(asgi.create_app(CONFIG)) as client:
        response = client.post("/generate", json=body)
        return response.status_code, response.headers["content-type"].split(";")[0], response.text


@pytest.mark.parametrize("post", [flask_post, asgi_post], ids=["flask", "asgi"])
def test_a_generation_streams_tokens_and_counts_them(post):
    with capture() as monitored:
        status, mimetype, text = post({"prompt": PROMPT, "max_tokens": 12})
    assert (status, mimetype) == (200, "text/event-stream")
    *tokens, usage = events(text)
    assert len(tokens) == 12 and all(set(t) == {"token"} for t in tokens)
    tokens_in = len(textgen.words(PROMPT))
    assert usage == {"done": True, "model": "textgen", "tokens_in": tokens_in, "tokens_out": 12,
                     "cost": pytest.approx((tokens_in + 12) * textgen.COST_PER_TOKEN)}
    assert monitored.value("mlmonitor_tokens_total", direction="input", **LABELS) == tokens_in
    assert monitored.value("mlmonitor_tokens_total", direction="output", **LABELS) == 12
    assert monitored.value("mlmonitor_cost_total", **LABELS) == pytest.approx(usage["cost"])
    assert monitored.value("mlmonitor_time_to_first_chunk_seconds_count", **LABELS) == 1
    assert monitored.value("mlmonitor_stage_duration_seconds_count", stage="decode", **LABELS) == 12
    (span,) = [s for s in monitored.spans() if s.name == "POST /generate"]
    assert span.attributes["gen_ai.request.model"] == "textgen"
    assert span.attributes["gen_ai.usage.input_tokens"] == tokens_in
    assert span.attributes["gen_ai.usage.output_tokens"] == 12


def test_the_same_prompt_gives_the_same_answer_and_another_prompt_another():
    def answer(prompt):
        return "".join(e["token"] for e in events(flask_post({"prompt": prompt})[2])[:-1])

    first = answer(PROMPT)
    assert len(first.split()) >= textgen.DEFAULT_TOKENS - first.count(".") - first.count(",")
    assert answer(PROMPT) == first
    assert answer("diabetes progression") != first


@pytest.mark.parametrize("post", [flask_post, asgi_post], ids=["flask", "asgi"])
@pytest.mark.parametrize("body", [{"prompt": ""}, {"prompt": "hi", "max_tokens": 0},
                                  {"prompt": "hi", "max_tokens": True}, {"prompt": "hi", "temperature": 1},
                                  ["hi"], {"prompt": "x" * (textgen.MAX_PROMPT_CHARS + 1)}])
def test_a_bad_request_is_a_400_counted_as_invalid_input(post, body):
    with capture() as monitored:
        status, _, text = post(body)
    assert status == 400 and "error" in json.loads(text)
    assert monitored.value("mlmonitor_prediction_errors_total", error_type="invalid_input", **LABELS) == 1
    assert monitored.value("mlmonitor_tokens_total", direction="output", **LABELS) == 0


def test_the_model_trains_on_text_that_ships_with_scikit_learn():
    model = textgen.TextGen()
    assert model.vocabulary > 500  # the dataset descriptions, not a stub
    assert list(model.tokens("iris", 5)) == list(textgen.TextGen().tokens("iris", 5))


def test_loadgen_sends_generations_apart_and_its_summary_matches_the_counters():
    import threading

    from werkzeug.serving import make_server

    from example_app import loadgen

    with capture() as monitored:
        server = make_server("127.0.0.1", 0, create_app(CONFIG), threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_port}"
            summary = loadgen.run(loadgen.Options(url=url, requests=40, generate_fraction=0.1, seed=1))
            forced = loadgen.run(loadgen.Options(url=url, requests=5, version="v2", seed=1))
        finally:
            server.shutdown()
            thread.join(10)
    assert summary["requests"] == 40 and summary["by_status"] == {"200": 40}  # predict requests only
    generation = summary["generation"]
    assert generation == {"requests": 4, "by_status": {"200": 4}, "transport_errors": 0,
                          "tokens_in": generation["tokens_in"], "tokens_out": sum(loadgen.MAX_TOKENS)}
    assert generation["tokens_in"] == sum(len(textgen.words(p)) for p in loadgen.PROMPTS)
    assert monitored.value("mlmonitor_tokens_total", direction="output", **LABELS) == generation["tokens_out"]
    assert monitored.value("mlmonitor_tokens_total", direction="input", **LABELS) == generation["tokens_in"]
    assert monitored.value("mlmonitor_predictions_total", **LABELS) == 4
    assert monitored.value("mlmonitor_predictions_total", model_name="iris", model_version="v1") + \
        monitored.value("mlmonitor_predictions_total", model_name="iris", model_version="v2") == 45
    assert forced["generation"]["requests"] == 0  # --version forces the predict model: no generations
