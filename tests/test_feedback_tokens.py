"""Signed prediction ids: feedback that any worker can count without shared state."""

from __future__ import annotations

import base64
import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmonitor.reference import absolute_error, outcome
from mlmonitor.tokens import (
    FEEDBACK_REASONS,
    MAX_TOKEN_LEN,
    InvalidFeedback,
    PredictionFacts,
    SeenTokens,
    sign_prediction,
    verify_prediction,
)

SECRET = "0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000


def _reason(token, secret=SECRET, max_age_s=3600, now=NOW + 10, **kw):
    with pytest.raises(InvalidFeedback) as info:
        verify_prediction(secret, token, max_age_s, now=now, **kw)
    assert info.value.reason in FEEDBACK_REASONS
    return info.value.reason


def test_round_trip_carries_model_version_and_prediction():
    token = sign_prediction(SECRET, "iris", "v2", "setosa", ts=NOW)
    facts = verify_prediction(SECRET, token, 3600, now=NOW + 10)
    assert isinstance(facts, PredictionFacts)
    assert (facts.model_name, facts.model_version, facts.predicted, facts.ts) == ("iris", "v2", "setosa", NOW)
    assert facts.token_id


def test_token_is_compact_and_url_safe():
    token = sign_prediction(SECRET, "iris", "v2", "setosa", ts=NOW)
    assert len(token) < 120
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_two_tokens_for_the_same_prediction_differ():
    assert sign_prediction(SECRET, "m", "v", 1, ts=NOW) != sign_prediction(SECRET, "m", "v", 1, ts=NOW)


def test_numeric_predictions_keep_their_type():
    token = sign_prediction(SECRET, "house", "v1", 123.5, ts=NOW)
    assert verify_prediction(SECRET, token, 60, now=NOW).predicted == 123.5


def test_wrong_secret_is_bad_signature():
    token = sign_prediction(SECRET, "iris", "v1", "setosa", ts=NOW)
    assert _reason(token, secret="another-secret-another-secret!!") == "bad_signature"


def test_tampered_payload_is_bad_signature():
    token = sign_prediction(SECRET, "iris", "v1", "setosa", ts=NOW)
    payload, tag = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body[3] = "virginica"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    assert _reason(f"{forged}.{tag}") == "bad_signature"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "!!!.???", "x" * (MAX_TOKEN_LEN + 1), None, 42])
def test_malformed_tokens(token):
    assert _reason(token) in ("malformed", "bad_signature")


def test_signed_garbage_payload_is_malformed():
    from mlmonitor.tokens import _b64, _key, _tag

    payload = _b64(b'{"not": "a list"}')
    token = f"{payload}.{_b64(_tag(_key(SECRET), payload))}"
    assert _reason(token) == "malformed"


def test_late_feedback_is_expired():
    token = sign_prediction(SECRET, "iris", "v1", "setosa", ts=NOW)
    assert verify_prediction(SECRET, token, 60, now=NOW + 60).ts == NOW
    assert _reason(token, max_age_s=60, now=NOW + 61) == "expired"


def test_token_from_the_future_is_refused():
    token = sign_prediction(SECRET, "iris", "v1", "setosa", ts=NOW + 3600)
    assert _reason(token, now=NOW) == "future"


def test_rotated_secrets_verify_old_tokens():
    token = sign_prediction(SECRET, "iris", "v1", "setosa", ts=NOW)
    facts = verify_prediction(["new-secret-new-secret-new-secret", SECRET], token, 60, now=NOW)
    assert facts.predicted == "setosa"


def test_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        sign_prediction("short", "iris", "v1", "setosa")


def test_oversized_fields_are_refused():
    with pytest.raises(ValueError, match="model_name longer"):
        sign_prediction(SECRET, "m" * 129, "v1", "x")
    with pytest.raises(ValueError, match="predicted longer"):
        sign_prediction(SECRET, "m", "v1", "é" * 65)


def test_duplicate_on_the_same_worker_is_caught():
    seen = SeenTokens(maxsize=10)
    token = sign_prediction(SECRET, "iris", "v1", "setosa", ts=NOW)
    verify_prediction(SECRET, token, 60, now=NOW, seen=seen)
    assert _reason(token, max_age_s=60, now=NOW, seen=seen) == "duplicate"
    assert verify_prediction(SECRET, token, 60, now=NOW).predicted == "setosa"  # no cache, no check


def test_seen_tokens_is_bounded_lru():
    seen = SeenTokens(maxsize=3)
    assert all(seen.add(t) for t in "abc")
    assert not seen.add("a")  # refreshes "a"
    assert seen.add("d")  # evicts "b", the least recently seen
    assert len(seen) == 3
    assert seen.add("b")
    assert not seen.add("a")


def test_seen_tokens_is_thread_safe():
    seen = SeenTokens(maxsize=100_000)
    results = []

    def worker():
        results.append(sum(seen.add(str(i)) for i in range(2000)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 2000


@pytest.mark.parametrize(
    "predicted, true_label, expected",
    [
        ("setosa", "setosa", "correct"),
        ("setosa", "virginica", "incorrect"),
        (1, 1.0, "correct"),
        (1, "1", "correct"),
        (0, 1, "incorrect"),
        (True, "True", "correct"),
        (1.0, "1", "incorrect"),
    ],
)
def test_outcome(predicted, true_label, expected):
    assert outcome(predicted, true_label) == expected


def test_absolute_error():
    assert absolute_error(2.5, 4) == 1.5
    assert absolute_error("2.5", "1") == 1.5
    with pytest.raises(ValueError):
        absolute_error("cat", 1)
    with pytest.raises(ValueError):
        absolute_error(float("nan"), 1)


@settings(max_examples=100, deadline=None)
@given(
    name=st.text(min_size=1, max_size=30),
    version=st.text(max_size=30),
    predicted=st.one_of(
        st.text(max_size=40),
        st.integers(-(10**9), 10**9),
        st.booleans(),
        st.floats(allow_nan=False, allow_infinity=False),
    ),
)
def test_property_any_prediction_round_trips(name, version, predicted):
    token = sign_prediction(SECRET, name, version, predicted, ts=NOW)
    assert len(token) <= MAX_TOKEN_LEN
    facts = verify_prediction(SECRET, token, 60, now=NOW)
    assert (facts.model_name, facts.model_version, facts.predicted) == (name, version, predicted)
    assert type(facts.predicted) is type(predicted)
