"""Nobody let in (issue 9, items 13-16): redaction under fuzz, /metrics auth, config secrets
kept out of every log line, span attributes capped."""
from __future__ import annotations

import base64
import json
import logging

import pytest
from flask import Flask, jsonify, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from helpers.doubles import Doubles
from mlmonitor import ConfigError, Monitor
from mlmonitor.config import DEFAULT_REDACT

from helpers.otlp import OTLPReceiver

#: the names the issue requires redacted by default
REQUIRED_DEFAULTS = ("authorization", "cookie", "password", "token", "api_key", "secret")
FIELD_NAMES = [n for n in DEFAULT_REDACT if "-" not in n and n not in ("set-cookie",)]
HEADER_NAMES = ["Authorization", "Cookie", "X-Api-Key", "Proxy-Authorization"]


def secrets_():
    return st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789",
                   min_size=10, max_size=24).map(lambda s: "Zq" + s)


def case(name):
    return st.sampled_from([name, name.upper(), name.title()])


class SecretApp(Doubles):
    """An app that tags its parsed body (as apps do) and may raise with the body in the message."""

    def __init__(self, provider=None, **options):
        super().__init__(provider)
        self.app = app = Flask(__name__)
        m = self.monitor = Monitor(app, model_name="iris", model_version="v1",
                                   **self.monitor_options, **options)

        @app.post("/predict")
        @m.prediction
        def predict():
            body = request.get_json(silent=True) or {}
            m.tag(payload=body, **{k: v for k, v in body.items() if isinstance(k, str)})
            message = request.headers.get("X-Raise")
            if message:
                raise ValueError(message)
            return jsonify(ok=True)

        self.client = app.test_client()

    def captured(self) -> str:
        spans = []
        for s in self.exporter.get_finished_spans():
            spans.append({"name": s.name, "attributes": dict(s.attributes),
                          "events": [dict(e.attributes) for e in s.events],
                          "status": s.status.description})
        metrics = self.client.get("/metrics", buffered=True).get_data(as_text=True)
        return self.logs.getvalue() + json.dumps(spans, default=str) + metrics


def test_the_required_names_are_redacted_by_default():
    assert set(REQUIRED_DEFAULTS) <= set(DEFAULT_REDACT)


def test_user_names_add_to_the_defaults_never_replace_them():
    h = SecretApp(redact=["ssn"])
    assert {"ssn", "password"} <= h.monitor._recorders[0].settings.redact_set


placements = st.fixed_dictionaries({
    "secret": secrets_(),
    "field": st.sampled_from(FIELD_NAMES).flatmap(case),
    "header": st.sampled_from(HEADER_NAMES),
    "nest": st.sampled_from(["flat", "dict", "list", "list_of_lists"]),
    "message": st.sampled_from(["{n}={s}", "{n}: {s}", "json", "repr", "{n} {s}", "none"]),
    "path": st.sampled_from(["/predict", "/x/{n}={s}", "/x;{n}={s}"]),
})


@settings(deadline=None, max_examples=120, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(placements)
def test_fuzzed_secrets_never_reach_logs_spans_or_metrics(p):
    h = SecretApp()
    s, n = p["secret"], p["field"]
    value = {n: s}
    body = {"flat": value, "dict": {"user": value},
            "list": {"items": [value, {"x": 1}]},
            "list_of_lists": {"rows": [[value], [[value]]]}}[p["nest"]]
    message = {"{n}={s}": f"{n}={s}", "{n}: {s}": f"{n}: {s}", "json": json.dumps(value),
               "repr": repr(value), "{n} {s}": f"{n} {s}", "none": ""}[p["message"]]
    headers = {p["header"]: ("Bearer " + s) if "Auth" in p["header"] else s}
    if message:
        headers["X-Raise"] = message
    query = f"{n}={s}&q=1"
    path = p["path"].format(n=n, s=s)
    response = h.client.post(f"{path}?{query}", json=body, headers=headers, buffered=True)
    assert response.status_code in (200, 404, 500)
    captured = h.captured()
    assert s not in captured
    assert h.logs.getvalue().count("\n") == 1


def test_secrets_never_reach_a_real_otlp_receiver():
    with OTLPReceiver() as receiver:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces")))
        h = SecretApp(provider=provider)
        secret = "ZqRealReceiverSecret42"
        h.client.post(f"/predict?api_key={secret}", json={"password": secret, "rows": [[{"token": secret}]]},
                      headers={"Authorization": f"Bearer {secret}", "X-Raise": f"secret={secret}"},
                      buffered=True)
        h.client.post(f"/nowhere;token={secret}", buffered=True)
        provider.force_flush()
        spans = receiver.wait_for(2)
        provider.shutdown()
    assert len(spans) >= 2
    assert secret not in json.dumps(spans, default=str)
    assert secret not in h.logs.getvalue()


# -- 14. /metrics protection ------------------------------------------------------------------

def test_default_metrics_are_open_so_the_readme_says_how_to_protect_them():
    h = SecretApp()
    assert h.client.get("/metrics", buffered=True).status_code == 200


@pytest.mark.parametrize("configured", ["token", "basic", "both"])
def test_metrics_auth_refuses_missing_or_wrong_credentials_and_admits_the_right_ones(configured):
    options = {}
    if configured in ("token", "both"):
        options["metrics_token"] = "t0ken-Value"
    if configured in ("basic", "both"):
        options["metrics_basic_auth"] = "prom:pa55word"
    h = SecretApp(**options)

    def get(auth=None):
        headers = {"Authorization": auth} if auth is not None else {}
        return h.client.get("/metrics", headers=headers, buffered=True)

    basic = "Basic " + base64.b64encode(b"prom:pa55word").decode()
    wrong = ["", "Bearer", "Bearer t0ken-Valu", "Bearer t0ken-Value ", "bearer t0ken-value",
             "Basic " + base64.b64encode(b"prom:wrong").decode(), "Basic !!!", "\u00e9\u00e9",
             "Bearer " + "x" * 10_000]
    assert get().status_code == 401 and "WWW-Authenticate" in get().headers
    for auth in wrong:
        assert get(auth).status_code == 401, auth
    right = {"token": ["Bearer t0ken-Value"], "basic": [basic],
             "both": ["Bearer t0ken-Value", basic]}[configured]
    for auth in right:
        response = get(auth)
        assert response.status_code == 200 and b"mlmonitor_http_requests_total" in response.data
    # the endpoint counts nothing about the refused attempts' credentials
    assert "t0ken" not in h.logs.getvalue() and "pa55" not in h.logs.getvalue()


def test_credentials_are_compared_in_constant_time(monkeypatch):
    import mlmonitor.exposition as exposition
    calls = []
    real = exposition.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(exposition.hmac, "compare_digest", spy)
    h = SecretApp(metrics_token="t0ken-Value")
    assert h.client.get("/metrics", headers={"Authorization": "Bearer nope"},
                        buffered=True).status_code == 401
    assert calls, "credentials were not compared with hmac.compare_digest"


# -- 15. secrets from configuration never in a log line -----------------------------------------

def test_config_secrets_never_appear_in_any_log_line_debug_included(monkeypatch, caplog):
    header_secret, token, password, feedback = ("ZqHeaderSecret1", "ZqMetricsToken2",
                                                "ZqBasicPass3", "ZqFeedbackKey4-at-least-16-bytes")
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{header_secret}")
        monkeypatch.setenv("MLMONITOR_FEEDBACK_SECRET", feedback)
        caplog.set_level(logging.DEBUG)  # every logger, mlmonitor's and the SDK's, at debug
        from mlmonitor import trace_provider
        provider = trace_provider.build_tracer_provider("secrets-test")
        h = SecretApp(provider=provider, metrics_token=token, metrics_basic_auth=f"prom:{password}")
        h.client.post("/predict", json={"a": 1}, buffered=True)
        h.client.get("/metrics", headers={"Authorization": "Bearer wrong"}, buffered=True)
        h.client.get("/metrics", headers={"Authorization": f"Bearer {token}"}, buffered=True)
        provider.force_flush()
        receiver.wait_for(1)
        provider.shutdown()
    # the header did reach the receiver, so it was in use
    assert any(v == f"Bearer {header_secret}" for seen in receiver.headers_seen
               for k, v in seen.items() if k.lower() == "authorization")
    settings = h.monitor._recorders[0].settings
    text = h.logs.getvalue() + caplog.text + repr(settings) + str(settings)
    for secret in (header_secret, token, password, feedback):
        assert secret not in text


def test_malformed_otlp_headers_are_refused_without_echoing_the_secret(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer ZqOk,x-key ZqLeak7")
    from mlmonitor import trace_provider
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_HEADERS") as info:
        trace_provider.build_tracer_provider("x")
    assert "ZqLeak7" not in str(info.value) and "ZqLeak7" not in caplog.text


def test_bad_basic_auth_setting_error_does_not_echo_it():
    with pytest.raises(ConfigError) as info:
        Monitor(Flask(__name__), metrics_basic_auth="ZqNoColonSecret", registry=CollectorRegistry())
    assert "ZqNoColonSecret" not in str(info.value)


# -- 16. span attributes capped ---------------------------------------------------------------

def test_tags_on_spans_are_capped_in_count_and_length():
    h = SecretApp()

    @h.app.post("/many")
    @h.monitor.prediction
    def many():
        h.monitor.tag(**{f"k{i}": "v" * 100_000 for i in range(200)})
        h.monitor.tag(big=10 ** 40, nested={"a": ["b" * 100_000]})
        return "ok"

    h.client.post("/many", buffered=True)
    [span] = [s for s in h.exporter.get_finished_spans() if s.kind.name == "SERVER"]
    tags = {k: v for k, v in span.attributes.items() if k.startswith("ml.tag.")}
    assert len(tags) <= 32
    assert all(len(str(v)) <= 1024 for v in span.attributes.values())
    [line] = [json.loads(x) for x in h.logs.getvalue().splitlines()]
    assert len(line["tags"]) <= 32 and line.get("truncated") is True


def test_built_provider_caps_attributes_the_app_sets_itself(monkeypatch):
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    from mlmonitor import trace_provider
    provider = trace_provider.build_tracer_provider("limits")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("s") as span:
        for i in range(500):
            span.set_attribute(f"a{i}", "x" * 100_000)
        for i in range(100):
            span.add_event(f"e{i}")
    [done] = exporter.get_finished_spans()
    provider.shutdown()
    assert len(done.attributes) <= 64 and len(done.events) <= 32
    assert all(len(v) <= trace_provider.MAX_ATTRIBUTE_LENGTH for v in done.attributes.values())
