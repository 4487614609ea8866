"""Issue 13, item 12: an incoming request id must match whole; /metrics auth schemes are
case-insensitive (RFC 7235) while the credentials stay exact and constant-time compared."""
from __future__ import annotations

import base64
import json

import pytest
from werkzeug.test import Client, EnvironBuilder

from helpers.doubles import Doubles
from mlmonitor import MonitorMiddleware


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def call(wrapped, **environ_extra):
    """Call the WSGI app directly: werkzeug's client refuses a header holding a newline."""
    environ = EnvironBuilder(path="/").get_environ()
    environ.update(environ_extra)
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["headers"] = headers

    body = wrapped(environ, start_response)
    list(body)
    body.close()
    return seen["headers"]


@pytest.mark.parametrize("incoming", ["abc-1\n", "abc-1\r\nSet-Cookie: a=b", "\nabc", "abc def",
                                      "x" * 129, ""])
def test_a_request_id_that_does_not_match_whole_is_replaced_not_echoed(incoming):
    d = Doubles()
    wrapped = MonitorMiddleware(hello, **d.monitor_options)
    headers = call(wrapped, HTTP_X_REQUEST_ID=incoming)
    [echoed] = [v for k, v in headers if k == "X-Request-ID"]
    assert echoed != incoming and len(echoed) == 32 and int(echoed, 16) >= 0
    assert json.loads(d.logs.getvalue())["request_id"] == echoed


def test_a_well_formed_request_id_is_still_echoed():
    d = Doubles()
    wrapped = MonitorMiddleware(hello, **d.monitor_options)
    headers = call(wrapped, HTTP_X_REQUEST_ID="req-42.a:b_c")
    assert ("X-Request-ID", "req-42.a:b_c") in headers


BASIC = base64.b64encode(b"prom:pa55word").decode()


@pytest.mark.parametrize("auth", ["bearer t0ken-Value", "BEARER t0ken-Value", "bEaReR t0ken-Value",
                                  "Bearer  t0ken-Value", "basic " + BASIC, "BASIC " + BASIC])
def test_metrics_auth_scheme_is_case_insensitive(auth):
    wrapped = MonitorMiddleware(hello, metrics_token="t0ken-Value",
                                metrics_basic_auth="prom:pa55word", **Doubles().monitor_options)
    response = Client(wrapped).get("/metrics", headers={"Authorization": auth}, buffered=True)
    assert response.status_code == 200 and b"mlmonitor_http_requests_total" in response.data


@pytest.mark.parametrize("auth", ["bearer t0ken-value", "bearer T0KEN-VALUE", "basic " + BASIC.lower(),
                                  "bearer " + BASIC, "basic t0ken-Value", "bearert0ken-Value",
                                  "bearer t0ken-Value ", "token t0ken-Value", "t0ken-Value"])
def test_metrics_auth_credentials_stay_exact_and_bound_to_their_scheme(auth):
    wrapped = MonitorMiddleware(hello, metrics_token="t0ken-Value",
                                metrics_basic_auth="prom:pa55word", **Doubles().monitor_options)
    response = Client(wrapped).get("/metrics", headers={"Authorization": auth}, buffered=True)
    assert response.status_code == 401


def test_a_lowercase_scheme_is_still_compared_in_constant_time(monkeypatch):
    import mlmonitor.exposition as exposition
    calls = []
    real = exposition.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(exposition.hmac, "compare_digest", spy)
    wrapped = MonitorMiddleware(hello, metrics_token="t0ken-Value", **Doubles().monitor_options)
    response = Client(wrapped).get("/metrics", headers={"Authorization": "bearer t0ken-Value"},
                                   buffered=True)
    assert response.status_code == 200
    assert (b"t0ken-Value", b"t0ken-Value") in calls
