"""Signed prediction ids: ground truth can come back to any worker or replica, no shared state.

A prediction id is ``<payload>.<tag>``: the payload is base64url JSON of the model,
version, predicted value, timestamp and a nonce; the tag an HMAC-SHA256 of it,
truncated to 128 bits. :func:`verify_prediction` refuses forged, malformed,
expired and future ids with :class:`InvalidFeedback`, whose ``reason`` is a
safe metric label. The id of a traced, sampled prediction also carries its trace and
span ids (a seventh payload field, 24 bytes as base64url), so feedback can link to
that span from any worker; ids without it stay valid. Nothing here imports the rest of mlmonitor.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets as _secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["sign_prediction", "verify_prediction", "fit_fields", "fit_text", "InvalidFeedback",
           "PredictionFacts", "SeenTokens", "FEEDBACK_REASONS", "MAX_CLOCK_SKEW_S", "MAX_TOKEN_LEN",
           "MAX_NAME_CHARS", "MAX_PREDICTED_BYTES"]

_TOKEN_VERSION = 1
_TAG_BYTES = 16  # 128-bit truncated HMAC-SHA256 tag
MAX_NAME_CHARS = 128  # model name and version: the label cap, whatever their UTF-8 size
MAX_PREDICTED_BYTES = 128  # the predicted value, as UTF-8 text
#: the longest id: three fields of 128 characters, each JSON-escaped to at most 6 bytes a character,
#: and the trace context (about 3,200 characters)
MAX_TOKEN_LEN = 4096
MAX_CLOCK_SKEW_S = 300.0
#: why feedback is refused: the id's faults, then ``bad_label`` (a label that cannot be counted,
#: see :mod:`mlmonitor.feedback`); the values of ``mlmonitor_feedback_rejected_total{reason}``
FEEDBACK_REASONS = ("malformed", "bad_signature", "expired", "future", "duplicate", "bad_label")

Secret = str | bytes


class InvalidFeedback(ValueError):
    """Feedback that cannot be counted; ``reason`` is one of :data:`FEEDBACK_REASONS` (a safe label)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class PredictionFacts:
    """What a verified prediction id says: enough to count feedback on any worker or replica."""

    model_name: str
    model_version: str
    predicted: str | int | float | bool
    ts: int
    token_id: str
    #: the prediction's trace and span ids (32 and 16 hex digits), "" when it was not sampled
    trace_id: str = ""
    span_id: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: Secret) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < 16:
        raise ValueError("the feedback secret must be at least 16 bytes (32 random bytes recommended)")
    return key


def _tag(key: bytes, payload: str) -> bytes:
    return hmac.new(key, b"mlmonitor.feedback." + payload.encode("ascii"), hashlib.sha256).digest()[:_TAG_BYTES]


def sign_prediction(
    secret: Secret,
    model_name: str,
    model_version: str,
    predicted: object,  # a str, int, float or bool signs as itself, anything else as its text
    ts: float | None = None,
    trace_context: tuple[str, str] | None = None,
) -> str:
    """A compact URL-safe prediction id: ``<payload>.<tag>``, payload = base64url JSON of
    ``[1, model_name, model_version, predicted, ts, nonce]``, tag = HMAC-SHA256 truncated to 128 bits.

    Return it with the prediction; the client sends it back with the true label, to any worker.
    The payload is signed, not encrypted: the client can read the predicted value.
    Raises ValueError for a value that does not fit (model name or version over 128 characters,
    predicted over 128 bytes as text, a non-finite float, a lone surrogate); :func:`fit_fields`
    makes any values fit. ``trace_context``: the prediction's trace and span ids as hex (32 and
    16 digits, not all zero), signed with the rest; leave it out for an unsampled request.
    """
    context = _trace_field(trace_context) if trace_context is not None else None
    if isinstance(predicted, float) and not math.isfinite(predicted):
        raise ValueError("predicted must be finite")
    if not isinstance(predicted, (str, int, float, bool)):
        predicted = str(predicted)
    for name, value in (("model_name", model_name), ("model_version", model_version)):
        if len(str(value)) > MAX_NAME_CHARS:
            raise ValueError(f"{name} longer than {MAX_NAME_CHARS} characters")
    if len(str(predicted).encode("utf-8")) > MAX_PREDICTED_BYTES:
        raise ValueError(f"predicted longer than {MAX_PREDICTED_BYTES} bytes")
    stamp = int(time.time() if ts is None else ts)
    body = [_TOKEN_VERSION, str(model_name), str(model_version), predicted, stamp, _b64(_secrets.token_bytes(6))]
    if context is not None:
        body.append(context)
    payload = _b64(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    return f"{payload}.{_b64(_tag(_key(secret), payload))}"


def _trace_field(trace_context: tuple[str, str]) -> str:
    """Trace and span ids as one base64url field of 24 bytes; ValueError if not valid ids."""
    trace_id, span_id = trace_context
    try:
        raw = bytes.fromhex(trace_id) + bytes.fromhex(span_id)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 24 or len(trace_id) != 32 or not any(raw[:16]) or not any(raw[16:]):
        raise ValueError("trace_context must be a valid trace id and span id in hex")
    return _b64(raw)


def _trace_ids(field: object) -> tuple[str, str]:
    """The trace and span ids of a signed id's seventh field; ``malformed`` if it is not one."""
    try:
        raw = _unb64(field) if isinstance(field, str) and len(field) == 32 else b""
    except ValueError:
        raw = b""
    if len(raw) != 24 or not any(raw[:16]) or not any(raw[16:]):
        raise InvalidFeedback("malformed", "bad trace context")
    return raw[:16].hex(), raw[16:].hex()


def fit_fields(model_name: Any, model_version: Any, predicted: Any) -> tuple[str, str, str | int | float | bool]:
    """The three values made to fit an id, so that signing never fails inside a request.

    Name and version are cut to 128 characters (as their metric labels are); the predicted value
    stays a str, int, finite float or bool when its text fits in 128 bytes, else becomes its text
    cut at a UTF-8 character boundary (a non-finite float becomes ``"nan"``, ``"inf"``, ``"-inf"``).
    Lone surrogates become ``"?"``, as in metric labels.
    """
    name = _clean(_text(model_name)[:MAX_NAME_CHARS])
    version = _clean(_text(model_version)[:MAX_NAME_CHARS])
    if isinstance(predicted, bool) or (isinstance(predicted, float) and math.isfinite(predicted)):
        return name, version, predicted
    if isinstance(predicted, int) and predicted.bit_length() <= 400:  # at most 122 characters
        return name, version, predicted
    return name, version, fit_text(_text(predicted))


def fit_text(text: str) -> str:
    """``text`` without lone surrogates, cut to 128 UTF-8 bytes at a character boundary."""
    return text.encode("utf-8", "replace")[:MAX_PREDICTED_BYTES].decode("utf-8", "ignore")


def _clean(text: str) -> str:
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    try:
        return str(value)
    except Exception:  # an int past str()'s digit limit, a failing __str__
        return f"<{type(value).__name__}>"


def verify_prediction(
    secret: Secret | Sequence[Secret],
    token: str,
    max_age_s: float,
    *,
    now: float | None = None,
    seen: SeenTokens | None = None,
) -> PredictionFacts:
    """Check a prediction id and return its facts, or raise :class:`InvalidFeedback`.

    ``secret`` may be a list (first = current, others = previous) to rotate keys. Feedback older
    than ``max_age_s`` is ``expired`` (late labels are refused, not counted against a version that
    may be gone). ``seen`` catches a duplicate only when it reaches the same worker: without
    shared state duplicates across workers are counted again, so send each label once.
    """
    if not (isinstance(max_age_s, (int, float)) and 0 < max_age_s < math.inf):
        raise ValueError("max_age_s must be a finite number of seconds above 0")  # nan: never expire
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LEN or token.count(".") != 1:
        raise InvalidFeedback("malformed", "not a prediction id")
    payload, tag_text = token.split(".")
    try:
        tag = _unb64(tag_text)
        raw = _unb64(payload)
    except (ValueError, TypeError):
        raise InvalidFeedback("malformed", "not base64url") from None
    keys = [secret] if isinstance(secret, (str, bytes)) else list(secret)
    if not any(hmac.compare_digest(tag, _tag(_key(k), payload)) for k in keys):
        raise InvalidFeedback("bad_signature")
    try:
        body = json.loads(raw)
        version, model_name, model_version, predicted, stamp, nonce, *rest = body
    except (ValueError, TypeError):
        raise InvalidFeedback("malformed", "bad payload") from None
    if (
        version != _TOKEN_VERSION
        or not isinstance(model_name, str)
        or not isinstance(model_version, str)
        or not isinstance(predicted, (str, int, float, bool))
        or not isinstance(stamp, int)
        or isinstance(stamp, bool)
        or not isinstance(nonce, str)
        or len(rest) > 1
    ):
        raise InvalidFeedback("malformed", "unsupported payload")
    trace_id, span_id = _trace_ids(rest[0]) if rest else ("", "")
    current = time.time() if now is None else now
    if stamp > current + MAX_CLOCK_SKEW_S:
        raise InvalidFeedback("future", "timestamp ahead of this clock")
    if current - stamp > max_age_s:
        raise InvalidFeedback("expired", f"prediction is {int(current - stamp)} s old, limit {max_age_s:g} s")
    if seen is not None and not seen.add(nonce):
        raise InvalidFeedback("duplicate", "this prediction id was already counted here")
    return PredictionFacts(model_name, model_version, predicted, stamp, nonce, trace_id, span_id)


class SeenTokens:
    """A small thread-safe in-process LRU of prediction ids already counted.

    Catches duplicates that land on the same worker only; bounded to ``maxsize`` ids.
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, token_id: str) -> bool:
        """Remember ``token_id``; False if it was already there."""
        with self._lock:
            if token_id in self._ids:
                self._ids.move_to_end(token_id)
                return False
            self._ids[token_id] = None
            if len(self._ids) > self.maxsize:
                self._ids.popitem(last=False)
            return True

    def __len__(self) -> int:
        return len(self._ids)
