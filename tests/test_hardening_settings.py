"""Issue 13, item 9: a setting that passes start-up never fails inside a request.

Every bad value stops start-up with one ConfigError line naming the setting (never a secret's
value), and a prediction id is made for any model version or predicted value without raising.
"""
from __future__ import annotations

import io

import pytest
from flask import Flask, jsonify, request
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

from mlmonitor import ConfigError, Monitor, MonitorMiddleware
from mlmonitor.config import Settings, resolve
from mlmonitor.feedback import FeedbackRecorder
from mlmonitor.tokens import MAX_TOKEN_LEN, verify_prediction

SECRET = "hardening-settings-secret-0123456789"
SHORT_SECRET = "ZqShortKey9"  # 11 bytes: below the 16 the HMAC key needs
LONG_VERSION = "é" * 107  # 107 characters (within the 128 cap), 214 UTF-8 bytes

#: setting -> a value that used to start and then fail in requests (or fail start-up with a traceback)
BAD_VALUES = [
    ("feedback_secret", SHORT_SECRET),
    ("feedback_secret", ""),
    ("feedback_max_age", float("nan")),
    ("feedback_max_age", float("inf")),
    ("feedback_max_age", -1),
    ("feedback_max_age", 0),
    ("feedback_max_age", 10**400),
    ("model_version", "v\udcff"),  # a non-UTF-8 environment byte: every scrape failed
    ("model_name", "\ud800"),
    ("log_sample_rate", True),
    ("log_max_bytes", 2048.5),
    ("max_label_values", 2.5),
    ("metrics", 2),
    ("buckets", 5),
    ("buckets", [0.1, "1"]),
    ("tags", {"status": "overwritten"}),  # would replace the status field of every log line
    ("tags", {"": "x"}),
    ("tags", {"env": 3}),
    ("redact", [1]),
    ("redact", [""]),
    ("request_id_header", "X Request Id"),
    ("request_id_header", "X-Id\r\nSet-Cookie: a=b"),
    ("prediction_paths", ["predict"]),
    ("routes", ["/é"]),  # PATH_INFO is latin-1 of the raw bytes: it can never match
    ("metrics_path", "/metrics\n"),
    ("metrics_token", ""),  # an unset ${VAR} in a template turned auth off
    ("metrics_token", "ZqToken with space"),
]


def _one_line_naming(exc: ConfigError, name: str, secret: str | None = None) -> None:
    message = str(exc)
    assert name in message
    assert "\n" not in message
    if secret:
        assert secret not in message


@pytest.mark.parametrize("name, value", BAD_VALUES, ids=[f"{n}={v!r:.20}" for n, v in BAD_VALUES])
def test_bad_setting_is_a_one_line_config_error_at_start_up(name, value):
    with pytest.raises(ConfigError) as info:
        resolve({name: value}, environ={})
    _one_line_naming(info.value, name, value if name in ("feedback_secret", "metrics_token") else None)


#: the same class through the environment, as a deployment sets it
BAD_ENVIRONMENT = {
    "MLMONITOR_FEEDBACK_SECRET": SHORT_SECRET,
    "MLMONITOR_FEEDBACK_MAX_AGE": "nan",
    "MLMONITOR_MODEL_VERSION": "v\udcff",  # the byte 0xff, decoded with surrogateescape
    "MLMONITOR_REQUEST_ID_HEADER": "X Request Id",
    "MLMONITOR_PREDICTION_PATHS": "/predict,score",
    "MLMONITOR_TAGS": "env=prod,level=debug",
    "MLMONITOR_METRICS_TOKEN": "",
}


@pytest.mark.parametrize("variable", sorted(BAD_ENVIRONMENT) + ["MLMONITOR_FEEDBACK_MAX_AGE=-1"])
def test_bad_environment_variable_stops_start_up_naming_it(variable, monkeypatch):
    variable, _, value = variable.partition("=")
    value = value or BAD_ENVIRONMENT[variable]
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        MonitorMiddleware(lambda environ, start_response: [], registry=CollectorRegistry(),
                          tracer_provider=TracerProvider(), log_stream=io.StringIO())
    secret = value if variable in ("MLMONITOR_FEEDBACK_SECRET", "MLMONITOR_METRICS_TOKEN") else None
    _one_line_naming(info.value, variable[len("MLMONITOR_"):].lower(), secret)


def test_good_values_are_normalised_not_refused():
    s = resolve({"buckets": "0.1,1", "metrics": 0, "feedback_max_age": 60, "redact": "ssn",
                 "feedback_secret": b"\x00" * 16, "tags": {"env": "prod"}}, environ={})
    assert s.buckets == (0.1, 1.0) and s.metrics is False and s.feedback_max_age == 60.0
    assert "ssn" in s.redact and "s" not in s.redact  # a string is a list of one name, not letters
    assert s.tags == {"env": "prod"}


def test_a_secret_never_appears_in_the_error_or_the_settings_repr():
    with pytest.raises(ConfigError) as info:
        Settings(feedback_secret=SHORT_SECRET)
    assert SHORT_SECRET not in str(info.value) and "feedback_secret" in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings(metrics_basic_auth="ZqNoColonPassword")
    assert "ZqNoColonPassword" not in str(info.value)


# -- prediction ids never raise into the request -------------------------------------------------

def _recorder(secret=SECRET):
    return FeedbackRecorder(Settings(feedback_secret=secret), None)


def test_a_107_character_accented_version_gets_a_valid_verifiable_id():
    token = _recorder().sign("iris", LONG_VERSION, "setosa")
    assert 0 < len(token) <= MAX_TOKEN_LEN
    facts = verify_prediction(SECRET, token, 60)
    assert (facts.model_name, facts.model_version, facts.predicted) == ("iris", LONG_VERSION, "setosa")


@pytest.mark.parametrize("predicted, signed", [
    (float("nan"), "nan"),
    (float("-inf"), "-inf"),
    (10**200, str(10**200)[:128]),
    ("é" * 100, "é" * 64),  # 200 bytes, cut to 128 at a character boundary
    ("\ud800x", "?x"),
    (True, True),
    (2.5, 2.5),
], ids=["nan", "-inf", "10**200", "200-byte-text", "lone-surrogate", "bool", "float"])
def test_any_predicted_value_gets_an_id_cut_to_fit(predicted, signed):
    token = _recorder().sign("m" * 300, "\udcff" * 3, predicted)
    facts = verify_prediction(SECRET, token, 60)
    assert facts.predicted == signed and type(facts.predicted) is type(signed)
    assert facts.model_name == "m" * 128 and facts.model_version == "???"
    assert len(token) <= MAX_TOKEN_LEN


def test_worst_case_fields_fit_in_the_id_length_limit():
    token = _recorder().sign("\x01" * 128, "\U0001f600" * 128, "\x01" * 200)
    assert len(token) <= MAX_TOKEN_LEN
    assert verify_prediction(SECRET, token, 60).model_version == "\U0001f600" * 128


def test_feedback_on_a_cut_prediction_compares_the_label_cut_the_same_way():
    recorder = _recorder()
    answer = "é" * 100
    assert recorder.record(recorder.sign("m", "v", answer), answer) == "correct"
    assert recorder.record(recorder.sign("m", "v", answer), "e" + "é" * 99) == "incorrect"


@pytest.mark.internal_errors_expected
def test_an_id_that_cannot_be_signed_is_empty_and_counted_not_raised():
    from mlmonitor import guard
    recorder = _recorder()
    recorder.secret = "short"  # cannot happen through Settings; stands for any fault inside
    before = guard.fault_counts.get("feedback", 0)
    assert recorder.sign("m", "v", "x") == ""
    assert guard.fault_counts.get("feedback", 0) == before + 1


def test_flask_app_with_a_long_accented_version_answers_200_with_a_working_id():
    registry = CollectorRegistry()
    app = Flask(__name__)
    monitor = Monitor(app, model_name="iris", model_version=LONG_VERSION, feedback_secret=SECRET,
                      registry=registry, tracer_provider=TracerProvider(), log_stream=io.StringIO())

    @app.post("/predict")
    @monitor.prediction
    def predict():
        return jsonify(ids=monitor.prediction_ids(["setosa", float("nan"), "x" * 500]))

    @app.post("/feedback")
    def feedback():
        return jsonify(outcome=monitor.record_feedback(request.get_json()["id"], "setosa"))

    client = app.test_client()
    response = client.post("/predict", buffered=True)
    assert response.status_code == 200
    ids = response.get_json()["ids"]
    assert all(ids) and len(ids) == 3
    assert client.post("/feedback", json={"id": ids[0]}, buffered=True).get_json() == {"outcome": "correct"}
    assert registry.get_sample_value("mlmonitor_feedback_total", {
        "model_name": "iris", "model_version": LONG_VERSION, "outcome": "correct"}) == 1.0
    generate_latest(registry)  # the exposition still encodes
