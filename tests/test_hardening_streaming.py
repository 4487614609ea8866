"""Issue 13, item 7: a streamed body runs in the request's context, and only while it runs.

The view returns at once; the generator is iterated and closed by the server later. What it
observes, tags and times must reach the metrics, the log line and the trace like any other
request's, and nothing of the request may stay set in the server's thread between chunks.
"""
from __future__ import annotations

import json

import pytest
from flask import Flask, Response, stream_with_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from werkzeug.test import Client, EnvironBuilder

import mlmonitor
from helpers.doubles import Doubles
from mlmonitor import Monitor, MonitorMiddleware
from mlmonitor.record import current_record

TOKENS = [b"once ", b"upon ", b"a time"]
LLM_V1 = {"model_name": "llm", "model_version": "v1"}
LLM_V9 = {"model_name": "llm", "model_version": "v9"}


def generate(seen=None):
    """What an LLM endpoint does: a stage, a tag, a token count per chunk, a version chosen late."""
    mlmonitor.tag(tier="gold")
    mlmonitor.set_model_version("v9")
    with mlmonitor.stage("decode"):
        for token in TOKENS:
            if seen is not None:
                seen.append(current_record())
            mlmonitor.observe(tokens_out=1)
            yield token


class Streamed(Doubles):
    """One app (Flask or plain WSGI) whose /generate body is a generator."""

    def __init__(self, kind):
        super().__init__()
        self.seen = []
        if kind == "wsgi":
            def app(environ, start_response):
                start_response("200 OK", [("Content-Type", "text/plain")])
                return generate(self.seen)

            self.app = MonitorMiddleware(app, model_name="llm", model_version="v1",
                                         prediction_paths=["/generate"], **self.monitor_options)
            return
        flask_app = Flask(__name__)
        monitor = Monitor(flask_app, model_name="llm", model_version="v1", **self.monitor_options)

        @flask_app.post("/generate")
        @monitor.prediction
        def view():
            body = generate(self.seen)
            return Response(stream_with_context(body) if kind == "flask_swc" else body)

        self.app = flask_app

    def value(self, name, labels):
        return self.registry.get_sample_value(name, labels)

    def line(self):
        [line] = self.logs.getvalue().splitlines()
        return json.loads(line)


KINDS = ["wsgi", "flask_swc", "flask_generator"]


@pytest.mark.parametrize("kind", KINDS)
def test_observations_stages_tags_and_version_made_while_streaming_are_recorded(kind):
    s = Streamed(kind)
    response = Client(s.app).post("/generate", buffered=True)
    assert response.get_data() == b"".join(TOKENS)
    assert s.value("mlmonitor_tokens_total", {**LLM_V9, "direction": "output"}) == 3
    assert s.value("mlmonitor_stage_duration_seconds_count", {**LLM_V9, "stage": "decode"}) == 1
    assert s.value("mlmonitor_predictions_total", LLM_V9) == 1
    assert s.value("mlmonitor_predictions_total", LLM_V1) in (None, 0)
    line = s.line()
    assert line["model_version"] == "v9"
    assert line["tags"] == {"tier": "gold"}
    assert set(line["stages_ms"]) == {"decode"}


@pytest.mark.parametrize("kind", KINDS)
def test_stage_span_opened_in_the_body_is_a_child_of_the_server_span(kind):
    s = Streamed(kind)
    Client(s.app).post("/generate", buffered=True)
    spans = s.exporter.get_finished_spans()
    [server] = [sp for sp in spans if sp.kind == SpanKind.SERVER]
    [decode] = [sp for sp in spans if sp.name == "decode"]
    assert decode.parent is not None and decode.parent.span_id == server.context.span_id
    assert decode.context.trace_id == server.context.trace_id
    assert server.attributes["ml.model.version"] == "v9"


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_of_the_request_stays_set_between_chunks(kind):
    s = Streamed(kind)
    environ = EnvironBuilder(path="/generate", method="POST").get_environ()
    body = s.app(environ, lambda status, headers, exc_info=None: None)
    assert current_record() is None
    chunks = []
    for chunk in body:  # the server's loop: between chunks its context is its own
        chunks.append(chunk)
        assert current_record() is None
        assert not trace.get_current_span().get_span_context().is_valid
    body.close()
    assert current_record() is None
    assert not trace.get_current_span().get_span_context().is_valid
    assert chunks == TOKENS
    # and inside the body, the request was there
    assert len(s.seen) == 3 and s.seen[0] is not None and all(r is s.seen[0] for r in s.seen)
    assert s.value("mlmonitor_tokens_total", {**LLM_V9, "direction": "output"}) == 3


def test_two_streams_interleaved_in_one_thread_each_see_their_own_request():
    s = Streamed("wsgi")
    environ = EnvironBuilder(path="/generate", method="POST").get_environ
    first = s.app(environ(), lambda *a: None)
    second = s.app(environ(), lambda *a: None)
    for a, b in zip(first, second):  # one chunk of each in turn, as an evented server does
        assert a == b
    first.close()
    second.close()
    one, two = s.seen[0::2], s.seen[1::2]
    assert one[0] is not two[0] and all(r is one[0] for r in one) and all(r is two[0] for r in two)
    assert s.value("mlmonitor_tokens_total", {**LLM_V9, "direction": "output"}) == 6


def test_closing_a_stream_early_runs_its_cleanup_in_the_request_context():
    """A client that goes away: the generator's finally still counts what was sent."""
    d = Doubles()

    def app(environ, start_response):
        start_response("200 OK", [])

        def body():
            sent = 0
            try:
                for token in TOKENS:
                    sent += 1
                    yield token
            finally:
                mlmonitor.observe(tokens_out=sent)

        return body()

    wrapped = MonitorMiddleware(app, model_name="llm", model_version="v1",
                                prediction_paths=["/generate"], **d.monitor_options)
    environ = EnvironBuilder(path="/generate", method="POST").get_environ()
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    iterator = iter(body)
    assert next(iterator) == TOKENS[0]
    assert next(iterator) == TOKENS[1]
    body.close()
    assert current_record() is None
    assert d.registry.get_sample_value("mlmonitor_tokens_total",
                                       {**LLM_V1, "direction": "output"}) == 2


def test_an_exception_raised_mid_stream_passes_through_and_leaves_the_context_clean():
    d = Doubles()

    class Overloaded(RuntimeError):
        pass

    def app(environ, start_response):
        start_response("200 OK", [])

        def body():
            yield b"partial"
            raise Overloaded("gpu out of memory")

        return body()

    wrapped = MonitorMiddleware(app, model_name="llm", model_version="v1",
                                prediction_paths=["/generate"], **d.monitor_options)
    environ = EnvironBuilder(path="/generate", method="POST").get_environ()
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    iterator = iter(body)
    assert next(iterator) == b"partial"
    with pytest.raises(Overloaded, match="gpu out of memory"):
        next(iterator)
    assert current_record() is None
    assert not trace.get_current_span().get_span_context().is_valid
    body.close()
    assert d.registry.get_sample_value("mlmonitor_prediction_errors_total",
                                       {**LLM_V1, "error_type": "Overloaded"}) == 1



@pytest.mark.parametrize("with_context", [True, False])
def test_with_flask_instrumentor_the_stage_span_in_the_body_is_a_child_of_its_server_span(
        with_context):
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    d = Doubles()
    app = Flask(__name__)
    FlaskInstrumentor().instrument_app(app, tracer_provider=d.provider)
    monitor = Monitor(app, model_name="llm", model_version="v1", **d.monitor_options)

    @app.post("/generate")
    @monitor.prediction
    def view():
        return Response(stream_with_context(generate()) if with_context else generate())

    try:
        assert Client(app).post("/generate", buffered=True).get_data() == b"".join(TOKENS)
    finally:
        FlaskInstrumentor().uninstrument_app(app)
    spans = d.exporter.get_finished_spans()
    [server] = [sp for sp in spans if sp.kind == SpanKind.SERVER]
    [decode] = [sp for sp in spans if sp.name == "decode"]
    assert decode.parent is not None and decode.parent.span_id == server.context.span_id
    assert d.registry.get_sample_value("mlmonitor_tokens_total",
                                       {**LLM_V9, "direction": "output"}) == 3
