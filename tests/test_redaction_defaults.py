"""The default redaction list covers the usual families of secret names (issue 24, 7e).

Before, ``aws_secret_access_key``, ``private_key``, ``pwd`` and ``sessionid`` (and most of the names
below) reached logs and spans in clear. The families follow sentry-python's scrubber and the common
secret scanners; ordinary model fields must stay visible.
"""
from __future__ import annotations

import json

import pytest
from flask import Flask, jsonify, request

from mlmonitor import Monitor
from mlmonitor.config import DEFAULT_REDACT
from mlmonitor.redact import redactor
from mlmonitor.testing import capture

R = redactor(DEFAULT_REDACT)
SECRET = "Zq7SecretValue42"

FAMILIES = {
    "passwords": ["password", "db_password", "passwd", "pwd", "MYSQL_PWD", "passphrase"],
    "secrets and tokens": ["secret", "client_secret", "token", "access_token", "x-auth-token",
                           "aws_session_token", "X-Amz-Security-Token", "jwt", "id_jwt"],
    "API keys": ["api_key", "apikey", "X-Api-Key", "x-goog-api-key", "openai_api_key",
                 "Ocp-Apim-Subscription-Key"],
    "HTTP authentication": ["Authorization", "Proxy-Authorization", "auth", "basic_auth",
                            "credentials", "GOOGLE_APPLICATION_CREDENTIALS", "client_credential"],
    "cookies, sessions, CSRF": ["Cookie", "Set-Cookie", "sessionid", "session_id", "PHPSESSID",
                                "session_key", "connect.sid", "csrftoken", "X-CSRFToken", "_csrf",
                                "_xsrf", "XSRF-TOKEN"],
    "private and cloud keys": ["private_key", "ssh_private_key", "ssh_key", "signing_key",
                               "SECRET_KEY", "aws_secret_access_key", "AWS_SECRET_ACCESS_KEY",
                               "AccountKey", "storage_account_key"],
    "payment cards": ["card_number", "credit_card_number", "cvv", "cvc"],
}
NAMES = [(family, name) for family, names in FAMILIES.items() for name in names]
#: fields a model server sends that share a part with a secret name, and must stay visible
ORDINARY = ["tokens_out", "key", "monkey", "feature_key", "session", "session_length",
            "inference_session", "author", "keyboard", "cards", "card_type", "passenger_count",
            "model_signature", "accuracy", "keyword"]


@pytest.mark.parametrize("family,name", NAMES, ids=[n for _, n in NAMES])
def test_each_family_is_hidden_as_a_field_a_text_and_a_query_parameter(family, name):
    assert R.is_secret_key(name), family
    assert R.mapping({name: SECRET, "x": 1}) == {name: "[REDACTED]", "x": 1}
    assert SECRET not in R.text(f"failed with {name}={SECRET}")
    assert SECRET not in R.text(json.dumps({name: SECRET}))
    assert SECRET not in R.query(f"{name}={SECRET}&q=1")


@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_model_fields_stay_visible(name):
    assert not R.is_secret_key(name)
    assert R.mapping({name: "visible"}) == {name: "visible"}


def test_the_four_names_the_issue_found_are_hidden_in_logs_and_spans():
    names = ["aws_secret_access_key", "private_key", "pwd", "sessionid"]
    with capture() as monitored:
        app = Flask(__name__)
        monitor = Monitor(app, model_name="m", mlflow=True, capture_io=True)

        @app.post("/predict")
        @monitor.prediction
        def predict():
            body = request.get_json()
            monitor.tag(**body)
            return jsonify(echo=body)

        query = "&".join(f"{name}={SECRET}" for name in names)
        answer = app.test_client().post(f"/predict?{query}", json={n: SECRET for n in names})
        assert answer.status_code == 200
        logs = json.dumps(monitored.logs())
    spans = json.dumps([{k: str(v) for k, v in s.attributes.items()} for s in monitored.spans()])
    assert SECRET not in logs and SECRET not in spans
    assert "aws_secret_access_key" in spans  # the names are shown, their values hidden
