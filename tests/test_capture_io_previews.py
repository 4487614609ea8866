"""capture_io previews are built from redacted data whatever the keys and values (issue 24, defect 1).

Before, a ``date`` or ``UUID`` dict key made ``json.dumps`` raise and the preview fell back to
``str()`` of the raw, unredacted value: ``'api_key': 'sk-LIVE-...'`` reached ``mlflow.spanInputs``.
"""
from __future__ import annotations

import datetime
import json
import uuid
from typing import Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from mlmonitor.previews import PREVIEW_CHARS, preview
from mlmonitor.redact import redactor
from mlmonitor.testing import capture

SECRET = "sk-LIVE-0123456789abcdef"
REDACT = redactor(("api_key", "password", "token"))


class Query(BaseModel):
    api_key: str
    history: Dict[datetime.date, float]


def _all_attribute_text(monitored) -> str:
    return json.dumps([{k: str(v) for k, v in span.attributes.items()}
                       for span in monitored.spans()])


def test_fastapi_date_and_uuid_keys_never_leak_the_secret_beside_them():
    """The issue's reproduction: a pydantic body with ``dict[date, float]`` and a result with
    UUID keys; the previews still show the data, keys as text, the secret as [REDACTED]."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlmonitor import Monitor as AsgiMonitor

    owner = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with capture() as monitored:
        app = FastAPI()
        monitor = AsgiMonitor(app, model_name="m", mlflow=True, capture_io=True)

        @app.post("/predict")
        @monitor.prediction
        def predict(query: Query):
            return {owner: {"password": SECRET, "score": 0.5}, "days": len(query.history)}

        with TestClient(app) as client:
            answer = client.post("/predict", json={"api_key": SECRET,
                                                   "history": {"2024-01-01": 1.5}})
            assert answer.status_code == 200
    (span,) = [s for s in monitored.spans() if s.kind == SpanKind.SERVER]
    assert SECRET not in _all_attribute_text(monitored)
    inputs = json.loads(span.attributes["mlflow.spanInputs"])
    assert inputs == {"query": {"api_key": "[REDACTED]", "history": {"2024-01-01": 1.5}}}
    outputs = json.loads(span.attributes["mlflow.spanOutputs"])
    assert outputs == {str(owner): {"password": "[REDACTED]", "score": 0.5}, "days": 1}


class _Unprintable:
    def __str__(self):
        raise RuntimeError("no str")

    __repr__ = __str__


def _circular():
    loop: dict = {"api_key": SECRET}
    loop["self"] = loop
    items: list = [{"token": SECRET}]
    items.append(items)
    return {"loop": loop, "items": items}


@pytest.mark.parametrize("value", [
    {("api_key",): SECRET, "x": 1},                       # a tuple key naming a secret
    {b"api_key": SECRET, b"x": 1},                        # bytes keys
    {_Unprintable(): 1, "api_key": SECRET},               # a key whose str and repr raise
    {"api_key": SECRET, "obj": _Unprintable()},           # a value whose str and repr raise
    {datetime.date(2024, 1, 1): {"password": SECRET}},    # a date key above a secret
    {uuid.uuid4(): [SECRET and {"token": SECRET}]},       # a UUID key
    {frozenset({1}): 1, None: 2, 3.5: 3, "api_key": SECRET},
    {("api_key", SECRET): 1, f"token={SECRET}": 2},       # a secret inside a key's own text
    _circular(),                                          # circular dict and list
], ids=["tuple-key", "bytes-key", "raising-key", "raising-value", "date-key", "uuid-key",
        "odd-keys", "secret-in-key", "circular"])
def test_odd_keys_and_values_give_a_redacted_preview(value):
    text = preview(REDACT, value)
    assert text is not None and SECRET not in text
    assert len(text) <= PREVIEW_CHARS
    json.loads(text)


def test_bytes_and_tuple_keys_are_matched_by_their_text():
    shown = json.loads(preview(REDACT, {b"api_key": SECRET, ("password",): SECRET, "n": 1}))
    assert shown == {"api_key": "[REDACTED]", "('password',)": "[REDACTED]", "n": 1}


def test_a_value_that_cannot_be_read_gives_no_preview_never_its_raw_text():
    class Broken(dict):
        def items(self):
            raise RuntimeError(f"api_key={SECRET}")

    assert preview(REDACT, Broken(api_key=SECRET)) is None
    assert preview(REDACT, [Broken(api_key=SECRET)]) is None


_KEYS = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.booleans(),
                  st.dates().map(lambda d: d), st.uuids(), st.binary(max_size=8),
                  st.tuples(st.text(max_size=4), st.integers()),
                  st.sampled_from([b"api_key", ("token",), "Password"]))
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
    | st.dates() | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(_KEYS, inner, max_size=6),
    max_leaves=40)


@settings(max_examples=100, deadline=None)
@given(_VALUES, st.sampled_from(["api_key", "password", "token"]), st.integers(0, 5))
def test_a_secret_under_a_secret_name_never_reaches_a_preview(value, name, where):
    """Any keys (text, numbers, dates, UUIDs, bytes, tuples) and values around a secret field:
    the preview is JSON within the limit, and the secret is never in it."""
    planted = {datetime.date(2024, 1, where + 1): value, name: SECRET}
    holder = [value] * where + [planted] if where % 2 else {uuid.UUID(int=where): planted}
    text = preview(REDACT, holder)
    assert text is not None and SECRET not in text
    assert len(text) <= PREVIEW_CHARS
    json.loads(text)
