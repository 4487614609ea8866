"""Found by driving a bare-WSGI regression app of our own (not the example) with hostile input.

* A WSGI app that calls ``start_response("400 ...")`` and then raises gets a 500 from the
  server (the headers were never sent): mlmonitor must count and log the 500, not the 400.
* A lone surrogate in a model version, a tag or an error message must not cost the span:
  OTLP's protobuf encoder refuses such text and would drop the whole batch.
"""
from __future__ import annotations

import json

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from werkzeug.test import Client

from helpers.doubles import Doubles
from mlmonitor import MonitorMiddleware, set_model_version, tag


def raising_app(environ, start_response):
    start_response("400 Bad Request", [("Content-Type", "text/plain")])
    raise ValueError("could not parse the body")


def test_an_app_that_raises_after_start_response_is_counted_as_the_500_the_server_sends():
    d = Doubles()
    app = MonitorMiddleware(raising_app, prediction_paths=["/score"], **d.monitor_options)
    with pytest.raises(ValueError):
        Client(app).post("/score", data=b"x")
    line = json.loads(d.logs.getvalue())
    assert line["status"] == 500 and line["error_type"] == "ValueError"
    assert d.registry.get_sample_value("mlmonitor_http_requests_total",
                                       {"method": "POST", "route": "/score", "status": "500"}) == 1
    assert d.registry.get_sample_value("mlmonitor_http_requests_total",
                                       {"method": "POST", "route": "/score", "status": "400"}) is None
    (span,) = d.exporter.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 500


def surrogate_app(environ, start_response):
    set_model_version("v\ud800")
    tag(client="caf\udce9", ok="pair \U0001F600")
    if environ.get("HTTP_X_FAIL"):
        raise RuntimeError("bad byte \udcff in input")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.mark.parametrize("fail", [False, True])
def test_lone_surrogates_never_make_a_span_unexportable(fail):
    d = Doubles()
    app = MonitorMiddleware(surrogate_app, prediction_paths=["/score"], **d.monitor_options)
    headers = {"X-Fail": "1"} if fail else {}
    if fail:
        with pytest.raises(RuntimeError):
            Client(app).post("/score", headers=headers)
    else:
        Client(app).post("/score", buffered=True)
    spans = d.exporter.get_finished_spans()
    encoded = encode_spans(spans).SerializeToString()  # raises on a lone surrogate
    assert encoded
    (span,) = spans
    assert span.attributes["ml.tag.ok"] == "pair \U0001F600"
    assert "\ud800" not in span.attributes["ml.model.version"]
