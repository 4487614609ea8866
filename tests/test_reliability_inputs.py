"""Bad inputs answered (issue 9, items 5-10): malformed bodies, hostile labels, fuzzed logs,
fuzzed WSGI behaviour and bad configuration. In-process, with each library's own doubles."""
from __future__ import annotations

import io
import json
import logging
import random
import re
import subprocess
import tracemalloc

import pytest
from flask import Flask, jsonify, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import mlmonitor
from helpers.doubles import Doubles
from mlmonitor import ConfigError, Monitor, MonitorMiddleware
from mlmonitor.config import Settings
from mlmonitor.logs import LogSink
from mlmonitor.rendering import render_json
from mlmonitor.record import RequestRecord

from conftest import require_binary

FUZZ = settings(deadline=None, max_examples=150, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BODY_MARKER = "BODYMARKER7f3a"


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_loads(line: str):
    """json.loads that refuses NaN / Infinity, as strict parsers do."""
    return json.loads(line, parse_constant=_reject_constant)


class Monitored(Doubles):
    """A small prediction app, monitored or bare, with a fresh registry, exporter and log buffer."""

    def __init__(self, monitored: bool = True, provider=None, **options):
        super().__init__(provider)
        app = self.app = Flask(__name__)
        app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
        self.monitor = m = (Monitor(app, model_name="iris", model_version="v1",
                                    **self.monitor_options, **options) if monitored else None)

        def prediction(view):
            return m.prediction(view) if m is not None else view

        @app.post("/predict")
        @prediction
        def predict():
            body = request.get_json()  # Flask's own 400 / 415 for bad bodies
            if not isinstance(body, dict):
                return jsonify(error="expected a JSON object"), 400
            if m is not None:
                if "version" in body:
                    m.set_model_version(body["version"], model_name=body.get("model"))
                with m.stage(str(body.get("stage", "inference"))):
                    m.observe(prediction=body.get("class", "setosa"), score=0.5)
            return jsonify(prediction="setosa")

        self.client = app.test_client()

    def post(self, path="/predict", **kwargs):
        return self.client.post(path, buffered=True, **kwargs)

    def value(self, name, labels):
        return self.registry.get_sample_value(name, labels) or 0.0

    def lines(self):
        return [strict_loads(line) for line in self.logs.getvalue().splitlines()]

    def exposition(self) -> str:
        return self.client.get("/metrics", buffered=True).get_data(as_text=True)

    def series(self) -> set:
        return {(s.name, tuple(sorted(s.labels.items())))
                for fam in text_string_to_metric_families(self.exposition()) for s in fam.samples}


# -- 5. malformed and oversized bodies ---------------------------------------------------------

MALFORMED = {
    "truncated_json": dict(data='{"features": [1, 2', content_type="application/json"),
    "wrong_content_type": dict(data=f'{{"x": "{BODY_MARKER}"}}', content_type="text/plain"),
    "invalid_utf8": dict(data=b'{"x": "\xff\xfe' + BODY_MARKER.encode() + b'"}',
                         content_type="application/json"),
    "empty": dict(data=b"", content_type="application/json"),
    "array_not_object": dict(data=f'["{BODY_MARKER}"]', content_type="application/json"),
    "form_body": dict(data={"x": BODY_MARKER}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_body_answer_unchanged_counted_invalid_input_one_line_no_body(case):
    bare = Monitored(monitored=False).post(**MALFORMED[case])
    h = Monitored()
    got = h.post(**MALFORMED[case])
    assert (got.status_code, got.get_data()) == (bare.status_code, bare.get_data())
    assert 400 <= got.status_code < 500
    assert h.value("mlmonitor_prediction_errors_total",
                   {"model_name": "iris", "model_version": "v1", "error_type": "invalid_input"}) == 1
    [line] = h.lines()
    assert line["status"] == got.status_code and line["error_type"] == "invalid_input"
    captured = h.logs.getvalue() + json.dumps([dict(s.attributes) for s in h.exporter.get_finished_spans()])
    assert BODY_MARKER not in captured and "\\xff" not in captured


class CountingStream(io.RawIOBase):
    """An endless request body that counts what the app (or mlmonitor) read from it."""

    def __init__(self):
        self.read_bytes = 0

    def readable(self):
        return True

    def tell(self):
        return 0

    def readinto(self, buffer):
        n = len(buffer)
        buffer[:n] = b"x" * n
        self.read_bytes += n
        return n


def test_oversized_body_gets_413_without_being_read():
    h = Monitored()
    stream = CountingStream()
    declared = 64 * 1024 * 1024
    response = h.post(content_type="application/json",
                      environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(declared)})
    assert response.status_code == 413
    assert stream.read_bytes < 1024 * 1024  # nowhere near the 64 MiB declared
    assert h.value("mlmonitor_prediction_errors_total",
                   {"model_name": "iris", "model_version": "v1", "error_type": "invalid_input"}) == 1
    assert [line["status"] for line in h.lines()] == [413]


def test_oversized_header_is_not_logged_and_the_line_stays_capped():
    h = Monitored()
    bare = Monitored(monitored=False)
    headers = {"X-Huge": BODY_MARKER * 20_000, "User-Agent": BODY_MARKER * 20_000}
    got = h.post(json={"a": 1}, headers=headers)
    want = bare.post(json={"a": 1}, headers=headers)
    assert (got.status_code, got.get_data()) == (want.status_code, want.get_data())
    [line] = h.lines()
    assert BODY_MARKER not in h.logs.getvalue()
    assert len(h.logs.getvalue().encode()) <= 16384 + 1
    [span] = [s for s in h.exporter.get_finished_spans() if s.name == "POST /predict"]
    assert all(len(str(v)) <= 1024 for v in span.attributes.values())


# -- 6. unknown model names and versions: bounded series, steady memory -------------------------

def test_a_thousand_unknown_models_and_versions_add_a_bounded_number_of_series():
    h = Monitored(max_label_values=5)
    h.post(json={"a": 1})
    rng = random.Random(3)
    sent = [{"version": f"v{rng.random()}", "model": f"m{i % 997}", "stage": f"s{i}",
             "class": f"c{rng.random()}"} for i in range(1000)]
    for body in sent:
        h.post(json=body)
    after = h.series()
    # each label admits 5 values, the rest are "other": model_name iris + m0..m3, model_version v1 +
    # the versions of requests 0..3, stage inference + s0..s3. m0..m2 come back (requests 997-999)
    # with versions past the cap; m4..m996 are "other" with any version.
    first = {sent[i]["model"]: sent[i]["version"] for i in range(4)}
    pairs = {("iris", "v1"), ("other", "other"), *first.items(), *((m, "other") for m in ("m0", "m1", "m2"))}
    assert len(pairs) == 9
    for name, labels in after:
        labels = dict(labels)
        if "model_name" in labels:
            assert (labels["model_name"], labels["model_version"]) in pairs, (name, labels)
    predicted = {(dict(labels)["model_name"], dict(labels)["model_version"])
                 for name, labels in after if name == "mlmonitor_predictions_total"}
    assert predicted == pairs
    stages = {dict(labels)["stage"] for name, labels in after if name == "mlmonitor_stage_duration_seconds_count"}
    assert stages == {"inference", "s0", "s1", "s2", "s3", "other"}
    classes = {dict(labels)["class"] for name, labels in after if name == "mlmonitor_predicted_class_total"}
    assert len(classes) == 50 + 1 and "other" in classes  # the class cap is max(limit, 50)
    assert h.value("mlmonitor_predictions_total", {"model_name": "other", "model_version": "other"}) == 1000 - 7
    for model, version in first.items():
        assert h.value("mlmonitor_predictions_total", {"model_name": model, "model_version": version}) == 1


def test_random_paths_leave_memory_steady():
    # spans made and dropped (no exporter keeps them); no log buffer growing by design
    h = Monitored(provider=TracerProvider(), logs=False)
    rng = random.Random(5)

    def burst(n):
        for _ in range(n):
            path = "/x" + "".join(rng.choice("abcxyz/%-_.") for _ in range(rng.randint(1, 40)))
            h.client.open(path, method=rng.choice(["GET", "BREW", "POST", "X" * rng.randint(1, 9)]),
                          buffered=True)

    burst(300)
    tracemalloc.start()
    try:
        burst(300)
        first = tracemalloc.get_traced_memory()[0]
        burst(2000)
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert second - first < 1024 * 1024, (first, second)


# -- 7. hostile label values still give a parseable exposition ---------------------------------

HOSTILE = ["new\nline", 'quo"te', "brace}{", "nul\x00byte", "back\\slash", "uni\u2028code",
           "lone\ud800surrogate", "x" * 1_000_000, "# HELP fake", "", " ", "tab\tval"]


def test_hostile_label_values_keep_the_exposition_parseable_by_both_parsers():
    promtool = require_binary("promtool")
    h = Monitored(max_label_values=50)
    h.app.config["MAX_CONTENT_LENGTH"] = 16 * 1024 * 1024
    for value in HOSTILE:
        response = h.post(json={"version": value, "model": value, "stage": value, "class": value})
        assert response.status_code == 200
    text = h.client.get("/metrics", buffered=True)
    assert text.status_code == 200
    body = text.get_data()
    families = list(text_string_to_metric_families(body.decode("utf-8")))
    versions = {s.labels.get("model_version") for f in families for s in f.samples}
    assert all(v is None or len(v) <= 128 for v in versions)
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True,
                            timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()[:2000]


def test_hostile_exception_class_name_becomes_a_safe_error_type():
    h = Monitored()
    hostile = type('Bad\n"}{x', (Exception,), {})

    @h.app.post("/hostile")
    @h.monitor.prediction
    def raising():
        raise hostile("no")

    long_name = type("E" * 200, (Exception,), {})

    @h.app.post("/long")
    @h.monitor.prediction
    def raising_long():
        raise long_name("no")

    assert h.post("/hostile").status_code == 500
    assert h.post("/long").status_code == 500
    errors = {s.labels["error_type"]: s.value for f in text_string_to_metric_families(h.exposition())
              for s in f.samples if s.name == "mlmonitor_prediction_errors_total"}
    # the name round-trips through the exposition's escaping; a long one is cut to 64 characters
    assert errors == {'Bad\n"}{x': 1.0, "E" * 64: 1.0}
    assert [line["error_type"] for line in h.lines()] == ['Bad\n"}{x', "E" * 64]


# -- 8. render_json and the log sink under fuzz --------------------------------------------------

ARMED = {"on": False}  # hypothesis reprs examples itself: the faults fire only inside mlmonitor


class BadRepr:
    def __repr__(self):
        if ARMED["on"]:
            raise RuntimeError("repr failed")
        return "BadRepr()"

    __str__ = __repr__


class BadStr(str):
    def __str__(self):
        if ARMED["on"]:
            raise RuntimeError("str failed")
        return "BadStr"


class armed:
    def __enter__(self):
        ARMED["on"] = True

    def __exit__(self, *exc):
        ARMED["on"] = False


def _circular():
    d = {"a": 1}
    d["self"] = d
    lst = [1]
    lst.append(lst)
    d["list"] = lst
    return d


def _deep(n=200):
    d = {}
    cur = d
    for _ in range(n):
        cur["d"] = {}
        cur = cur["d"]
    return d


def _numpy_values():
    np = pytest.importorskip("numpy")
    return [np.float32(1.5), np.int64(7), np.float64("nan"), np.bool_(True), np.array([1, 2])]


INJECTION = ['\n{"level":"critical","event":"forged"}', '\r{"level":"critical"}', "\x1b[31mred\x1b[0m",
             "a\u2028b\u2029c", "\x00", '"}\n{"x":1']

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.text(), st.binary(),
    st.sampled_from(INJECTION), st.just(BadRepr()), st.just(BadStr("x")),
    st.text(min_size=1, max_size=3).map(lambda s: s * 700_000),  # ~2 MB strings
    st.builds(_circular), st.builds(_deep), st.sampled_from(_numpy_values()) if True else st.none(),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.tuples(children, children),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(), st.tuples(st.integers()),
                                  st.just(BadRepr())), children, max_size=5),
        st.frozensets(st.integers(), max_size=3)),
    max_leaves=12)


def check_line(text: str, max_bytes: int = 16384) -> dict:
    assert "\n" not in text and "\r" not in text and "\u2028" not in text
    assert len(text.encode("utf-8")) <= max_bytes
    obj = strict_loads(text)
    assert isinstance(obj, dict)
    return obj


@FUZZ
@given(st.dictionaries(st.text(max_size=20), values, max_size=6))
def test_render_json_never_raises_and_gives_one_strict_capped_line(event):
    with armed():
        text = render_json(event)
    obj = check_line(text)
    try:
        plain = json.dumps(event, allow_nan=False)
    except Exception:
        plain = None
    if plain is None or len(plain) > 16384:
        # cut or made safe: a visible marker whenever something had to be cut
        if plain is not None:
            assert obj.get("truncated") is True


def test_render_json_survives_ints_beyond_the_conversion_limit():
    obj = check_line(render_json({"event": "x", "big": 10 ** 5000, "n": 1}))
    assert obj["event"] == "x" and obj["n"] == 1 and "bits" in obj["big"]


def test_render_json_marks_truncation_of_a_2mb_string():
    obj = check_line(render_json({"event": "x", "blob": "y" * 2_000_000}))
    assert obj["truncated"] is True and obj["event"] == "x"


@pytest.mark.parametrize("payload", INJECTION)
def test_log_injection_yields_no_forged_line(payload):
    stream = io.StringIO()
    sink = LogSink(Settings(), stream)
    rec = RequestRecord({"PATH_INFO": "/p" + payload}, "GET", 0.0, 0)
    rec.route, rec.status_code, rec.request_id = payload, 500, payload
    rec.tags = {payload: payload, "k": payload}
    rec.exc = ValueError(payload)
    rec.error_type = payload
    sink.record(rec)
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 2
    obj = check_line(lines[0])
    assert obj["event"] == "request" and obj["level"] == "error"


@FUZZ
@given(tags=st.dictionaries(st.text(max_size=30), values, max_size=8),
       message=st.one_of(st.text(), st.sampled_from(INJECTION)),
       route=st.one_of(st.none(), st.text(max_size=50)))
def test_log_sink_writes_exactly_one_strict_line_whatever_the_app_tagged(tags, message, route):
    stream = io.StringIO()
    sink = LogSink(Settings(), stream)
    rec = RequestRecord({"PATH_INFO": "/x"}, "POST", 0.0, 0)
    rec.route, rec.status_code, rec.request_id = route, 500, "r"
    rec.is_prediction, rec.model_name, rec.model_version = True, "m", message[:128] or "v"
    rec.tags = tags
    rec.exc = RuntimeError(message)
    rec.error_type = "RuntimeError"
    with armed():
        sink.record(rec)
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    check_line(text[:-1])


@FUZZ
@given(route=st.one_of(st.none(), st.text(max_size=60)), method=st.text(max_size=10),
       request_id=st.text(max_size=40), model=st.text(max_size=40),
       version=st.text(max_size=40), status=st.integers(100, 399),
       duration=st.floats(0, 1e5), prediction=st.booleans(),
       sampled_ids=st.booleans(),
       stages=st.lists(st.tuples(st.text(max_size=64), st.floats(0, 1e3)), max_size=5))
def test_plain_success_line_is_the_rendered_line(route, method, request_id, model, version,
                                                 status, duration, prediction, sampled_ids,
                                                 stages):
    """The fast path of a plain successful request writes what render_json would write."""
    sink = LogSink(Settings(), io.StringIO())
    rec = RequestRecord({"PATH_INFO": "/x"}, method, 0.0, 0)
    rec.route, rec.status_code, rec.request_id, rec.duration = route, status, request_id, duration
    rec.is_prediction, rec.model_name, rec.model_version = prediction, model, version
    rec.stages = stages
    if sampled_ids:
        rec.trace_id, rec.span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with armed():
        fast = check_line(sink.plain_line(rec))
        slow = check_line(render_json(sink.line(rec)))
    assert list(fast) == list(slow)
    for line in (fast, slow):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line.pop("timestamp"))
    assert fast.pop("duration_ms") == pytest.approx(slow.pop("duration_ms"), abs=1e-9)
    if "stages_ms" in slow:
        fast_stages, slow_stages = fast.pop("stages_ms"), slow.pop("stages_ms")
        assert list(fast_stages) == list(slow_stages)
        assert all(fast_stages[k] == pytest.approx(v, abs=1e-9) for k, v in slow_stages.items())
    assert fast == slow


# -- 9. the WSGI middleware is transparent, whatever the app does ----------------------------------

class AppError(Exception):
    pass


class CloseError(Exception):
    pass


class Body:
    """A response iterable that may raise mid-stream or on close; remembers close()."""

    def __init__(self, chunks, raise_at, close_raises, log):
        self.chunks, self.raise_at, self.close_raises, self.log = chunks, raise_at, close_raises, log

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if i == self.raise_at:
                raise AppError("mid-stream")
            yield chunk

    def close(self):
        self.log.append("closed")
        if self.close_raises:
            raise CloseError("close failed")


behaviours = st.fixed_dictionaries({
    "status": st.sampled_from(["200 OK", "201 Created", "204 No Content", "302 Found",
                               "400 Bad Request", "404 Not Found", "413 Payload Too Large",
                               "500 Internal Server Error", "503 Service Unavailable"]),
    "headers": st.lists(st.tuples(st.sampled_from(["Content-Type", "X-A", "Set-Cookie", "X-Request-ID"]),
                                  st.text(alphabet="abc123;=/ ", max_size=10)), max_size=3),
    "raise_before": st.booleans(),
    "raise_after": st.booleans(),
    "chunks": st.lists(st.binary(max_size=20), max_size=4),
    "raise_at": st.one_of(st.none(), st.integers(0, 4)),
    "close_raises": st.booleans(),
    "exc_info": st.booleans(),
    "generator": st.booleans(),
})

environs = st.fixed_dictionaries({
    "REQUEST_METHOD": st.sampled_from(["GET", "POST", "BREW", "", "get", "M" * 300]),
    "PATH_INFO": st.one_of(st.sampled_from(["/predict", "/metricsx", "", "/"]),
                           st.text(alphabet=st.characters(max_codepoint=255), max_size=60)),
    "QUERY_STRING": st.text(alphabet=st.characters(max_codepoint=255), max_size=60),
}, optional={
    "HTTP_X_REQUEST_ID": st.text(alphabet=st.characters(max_codepoint=255), max_size=200),
    "HTTP_TRACEPARENT": st.one_of(st.text(max_size=60), st.just(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
    "HTTP_USER_AGENT": st.text(max_size=50),
    "CONTENT_LENGTH": st.sampled_from(["", "0", "abc", "-1", "99999999999"]),
})


def make_app(b, close_log):
    def app(environ, start_response):
        if b["raise_before"]:
            raise AppError("before start_response")
        write = start_response(b["status"], list(b["headers"]))
        assert callable(write)
        if b["exc_info"]:
            try:
                raise AppError("late")
            except AppError:
                import sys
                start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                               sys.exc_info())
        if b["raise_after"]:
            raise AppError("after start_response")
        body = Body(b["chunks"], b["raise_at"], b["close_raises"], close_log)
        if b["generator"]:
            def gen():
                try:
                    yield from body
                finally:
                    close_log.append("closed")
            return gen()
        return body
    return app


def run_wsgi(app, environ):
    """A minimal WSGI server: iterate, always close; returns what a client would see."""
    seen = {}

    def start_response(status, headers, exc_info=None):
        if exc_info is not None and seen.get("sent"):
            raise exc_info[1].with_traceback(exc_info[2])
        seen["status"], seen["headers"] = status, list(headers)
        return lambda data: None

    chunks, error = [], None
    try:
        result = app(dict(environ), start_response)
    except Exception as exc:
        return seen.get("status"), seen.get("headers"), b"", type(exc)
    try:
        for chunk in result:
            seen["sent"] = True
            chunks.append(chunk)
    except Exception as exc:
        error = type(exc)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                error = error or type(exc)
    return seen.get("status"), seen.get("headers"), b"".join(chunks), error


@FUZZ
@given(behaviour=behaviours, environ=environs)
def test_middleware_response_is_identical_to_the_bare_apps(behaviour, environ):
    base = {"SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": io.StringIO(), **environ}
    bare_closes, monitored_closes = [], []
    want = run_wsgi(make_app(behaviour, bare_closes), base)
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    logs = io.StringIO()
    wrapped = MonitorMiddleware(make_app(behaviour, monitored_closes), registry=registry,
                                tracer_provider=provider, log_stream=logs,
                                prediction_paths=["/predict"])
    got = run_wsgi(wrapped, base)
    status, headers, data, error = got
    if headers is not None:
        supplied = any(n.lower() == "x-request-id" for n, _ in want[1] or [])
        added = [h for h in headers if h[0] == "X-Request-ID"]
        if not supplied:
            assert len(added) == 1
            headers = [h for h in headers if h[0] != "X-Request-ID"]
    assert (status, headers, data, error) == want
    assert monitored_closes == bare_closes  # close() called exactly as often as without mlmonitor
    total = sum(s.value for fam in registry.collect() if fam.name == "mlmonitor_http_requests"
                for s in fam.samples if s.name == "mlmonitor_http_requests_total")
    assert total == 1
    lines = logs.getvalue().splitlines()
    assert len(lines) == 1
    check_line(lines[0])
    assert len([s for s in exporter.get_finished_spans() if s.kind.name == "SERVER"]) == 1
    assert registry.get_sample_value("mlmonitor_http_requests_in_progress",
                                     {"method": "POST", "route": "/predict"}) in (None, 0.0)


# -- 10. bad configuration fails at start-up, in one line naming the variable -----------------------

BAD_MLMONITOR = {
    "MLMONITOR_METRICS": "maybe", "MLMONITOR_LOG_SAMPLE_RATE": "often",
    "MLMONITOR_MAX_LABEL_VALUES": "many", "MLMONITOR_BUCKETS": "1,a", "MLMONITOR_TAGS": "novalue",
    "MLMONITOR_LOG_MAX_BYTES": "10", "MLMONITOR_METRICS_PATH": "metrics",
    "MLMONITOR_METRICS_BASIC_AUTH": "nocolon", "MLMONITOR_FEEDBACK_MAX_AGE": "soon",
    "MLMONITOR_REFERENCE": "/nonexistent/reference.json",
}


@pytest.mark.parametrize("variable", sorted(BAD_MLMONITOR))
def test_bad_mlmonitor_variable_is_one_line_config_error_naming_it(variable, monkeypatch):
    monkeypatch.setenv(variable, BAD_MLMONITOR[variable])
    with pytest.raises(ConfigError) as info:
        Monitor(Flask(__name__), registry=CollectorRegistry(), tracer_provider=TracerProvider(),
                log_stream=io.StringIO())
    message = str(info.value)
    name = variable[len("MLMONITOR_"):].lower()
    assert variable in message or name in message
    assert "\n" not in message


def test_impossible_combination_is_refused_at_start_up():
    with pytest.raises(ConfigError, match="buckets"):
        Monitor(Flask(__name__), buckets=[0.5, 0.1], registry=CollectorRegistry())
    with pytest.raises(ConfigError, match="unknown mlmonitor setting"):
        Monitor(Flask(__name__), metrics_tokn="x", registry=CollectorRegistry())


BAD_OTEL = {
    "OTEL_BSP_SCHEDULE_DELAY": "-5",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "0",
    "OTEL_TRACES_EXPORTER": "zipkin",
    "OTEL_EXPORTER_OTLP_HEADERS": "bad header value",
}
#: values the OpenTelemetry SDK itself replaces by its default with one warning (documented fallback),
#: and what that warning names (the SDK's words: the variable or the value)
FALLBACK_OTEL = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "abc", "OTEL_EXPORTER_OTLP_TIMEOUT": "abc",
    "OTEL_TRACES_SAMPLER": "bogus", "OTEL_TRACES_SAMPLER_ARG": "abc",
}
FALLBACK_NAMED = {
    "OTEL_BSP_MAX_QUEUE_SIZE": "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_EXPORTER_OTLP_TIMEOUT": "'abc'",
    "OTEL_TRACES_SAMPLER": "bogus", "OTEL_TRACES_SAMPLER_ARG": "TRACES_SAMPLER_ARG",
}


def _build_with_env(monkeypatch, variable, value):
    from mlmonitor import trace_provider
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    if variable == "OTEL_TRACES_SAMPLER_ARG":  # only ratio samplers read the argument
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv(variable, value)
    return trace_provider.build_tracer_provider("test")


@pytest.mark.parametrize("variable", sorted(BAD_OTEL))
def test_bad_otel_variable_is_a_config_error_naming_it(variable, monkeypatch):
    with pytest.raises(ConfigError) as info:
        _build_with_env(monkeypatch, variable, BAD_OTEL[variable]).shutdown()
    assert variable in str(info.value) and "\n" not in str(info.value)
    assert BAD_OTEL[variable] not in str(info.value) or variable != "OTEL_EXPORTER_OTLP_HEADERS"


@pytest.mark.parametrize("variable", sorted(FALLBACK_OTEL))
def test_unparsable_otel_value_falls_back_with_a_warning_not_a_request_error(variable, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    try:
        provider = _build_with_env(monkeypatch, variable, FALLBACK_OTEL[variable])
    except ConfigError as exc:  # an OTLP exporter before ~1.35 refuses the value: at start, named
        assert variable == "OTEL_EXPORTER_OTLP_TIMEOUT" and "OTEL_EXPORTER_OTLP_" in str(exc)
        return
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(FALLBACK_NAMED[variable] in w for w in warnings), warnings
        # the fallback is the default: every new trace is sampled
        rng = random.Random(7)
        decisions = [provider.sampler.should_sample(None, rng.getrandbits(128), "POST /predict")
                     for _ in range(50)]
        assert all(d.decision.is_sampled() for d in decisions)
    finally:
        provider.shutdown()


def test_no_configuration_error_ever_surfaces_at_request_time(monkeypatch):
    """Start-up succeeded: afterwards, garbage in the environment changes nothing."""
    h = Monitored()
    for variable in list(BAD_MLMONITOR) + list(BAD_OTEL):
        monkeypatch.setenv(variable, "garbage\n")
    assert h.post(json={"a": 1}).status_code == 200
    assert h.client.get("/metrics", buffered=True).status_code == 200
    assert mlmonitor.current_record() is None


def test_a_stage_name_that_is_not_text_still_gives_one_line():
    stream = io.StringIO()
    sink = LogSink(Settings(), stream)
    rec = RequestRecord({"PATH_INFO": "/x"}, "POST", 0.0, 0)
    rec.route, rec.status_code, rec.request_id = "/x", 200, "r"
    rec.is_prediction, rec.model_name, rec.model_version = True, "m", "v"
    rec.stages = [(("not", "text"), 0.001), ("inference", 0.002)]
    with armed():
        sink.record(rec)
    line = check_line(stream.getvalue().rstrip("\n"))
    assert line["stages_ms"]["inference"] == 2.0 and len(line["stages_ms"]) == 2
