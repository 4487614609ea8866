"""``capture_io`` previews (MLflow's ``mlflow.spanInputs`` / ``mlflow.spanOutputs``), one way for
every framework.

A framework layer hands over only what its view already holds: the parsed body or the value it
returned (:func:`json_like`), or body bytes it knows to be at most :data:`MAX_IO_BYTES`
(:func:`json_within`); a body nobody read yet is read here, once, no further than that cap
(:func:`read_json`), and a larger response is never copied. :func:`preview` turns one value into
the attribute's text: only the head it can show is read, every key is made text *before* redaction
(a ``date`` or ``UUID`` key cannot make the encoder fail over to raw text), and a value it cannot
show redacted gives no preview at all.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from collections.abc import Callable

from .record import RequestRecord
from .redact import MAX_DEPTH, Redactor, safe_text
from .trace_provider import MAX_ATTRIBUTE_LENGTH

__all__ = ["IO_KEY", "MAX_IO_BYTES", "PREVIEW_CHARS", "keep", "json_like", "json_within",
           "read_json", "preview"]

#: the environ key where a framework layer leaves ``(inputs, outputs)`` with ``capture_io``
IO_KEY = "mlmonitor.io"
#: the most bytes of a request or response body read or copied for a preview
MAX_IO_BYTES = 65536
#: a preview's cap, under the provider's attribute length limit
PREVIEW_CHARS = MAX_ATTRIBUTE_LENGTH


def keep(rec: RequestRecord, inputs: Any, outputs: Any) -> None:
    """Leave a request's inputs and outputs for the trace sink, in place of any kept before
    (both None: no preview)."""
    if inputs is not None or outputs is not None:
        rec.environ[IO_KEY] = (inputs, outputs)
    else:
        rec.environ.pop(IO_KEY, None)


def json_like(value: Any) -> Any:
    """A view's argument or result if it is JSON-like (a pydantic model too), else None. Kept
    as it is, not copied: the preview reads only its head."""
    if isinstance(value, (Mapping, list, tuple, str, int, float)) or _is_model(value):
        return value
    return None


def json_within(data: Any) -> Any:
    """Body bytes parsed as JSON when at most :data:`MAX_IO_BYTES`; else (or not JSON, or nested
    deeper than the parser allows) None."""
    if not isinstance(data, (bytes, bytearray, str)) or len(data) > MAX_IO_BYTES:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def read_json(read: Callable[[int], Any],
              failures: tuple[type[BaseException], ...] = (OSError,)) -> Any:
    """The one bounded read of a request body: at most :data:`MAX_IO_BYTES` + 1 bytes with
    ``read(n)``, parsed by :func:`json_within` (so a longer body gives None). A read failing
    with one of ``failures`` (the client went away, the framework's size limit) gives None."""
    try:
        data = read(MAX_IO_BYTES + 1)
    except failures:
        return None
    return json_within(data)


def preview(redactor: Redactor, value: Any) -> str | None:
    """``value`` as JSON text of at most :data:`PREVIEW_CHARS`, secret fields redacted as in
    logs; a cut one becomes a JSON string of its head, so MLflow still parses it. None when the
    value cannot be shown redacted: never the raw text of unredacted data. (The trace sink
    makes the text UTF-8-safe.)"""
    budget = [PREVIEW_CHARS]
    try:  # only the head is redacted and encoded: a 60 KB body costs what a small one does
        head = redactor.value(_head(value, budget, 0, lambda key: _redacted_key(redactor, key)))
        text = json.dumps(head, ensure_ascii=False,
                          default=lambda item: redactor.text(safe_text(item)))
    except Exception:  # a mapping whose items() raise, a model that cannot be iterated...
        return None
    if len(text) > PREVIEW_CHARS or budget[0] < 0:
        kept = PREVIEW_CHARS - 8
        while True:  # escaping lengthens the text: cut until the JSON string fits whole
            cut = json.dumps(text[:kept] + "...", ensure_ascii=False)
            if len(cut) <= PREVIEW_CHARS:
                break
            kept = max(0, min(kept - 1, kept * (PREVIEW_CHARS - 8) // len(cut)))
        text = cut
    return text


def _is_model(value: Any) -> bool:
    """A pydantic model: iterating it gives its ``(field, value)`` pairs, no copy made."""
    try:  # a proxy or mock may raise anything from getattr
        return callable(getattr(value, "model_dump", None)) and not isinstance(value, type)
    except Exception:
        return False


def _key(key: Any) -> str:
    """A key as text, as JSON would show it: a ``date``, ``UUID``, tuple or bytes key is named
    by its text, so the redactor sees ``b"api_key"`` as ``api_key``."""
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray)):
        return bytes(key[:256]).decode("utf-8", "backslashreplace")
    return safe_text(key)[:256]


def _redacted_key(redactor: Redactor, key: Any) -> str:
    """A key's text with secrets hidden: a tuple key ``("api_key", "sk-...")`` is a pair whose
    value the redactor hides, any other the text rules (``token=...``)."""
    if isinstance(key, tuple):
        shown = redactor.value(key)
        key = safe_text(tuple(shown) if isinstance(shown, list) else shown)
    return redactor.text(_key(key))


def _head(value: Any, budget: list[int], depth: int = 0, key_text: Callable[[Any], str] = _key) -> Any:
    """The head of a JSON-like value, in document order, about as much as its JSON can show in
    ``budget[0]`` characters (each text cut at its head, so a name is never separated from its
    value), every key as ``key_text`` makes it: a large body is read no further than its
    preview. The budget goes below zero when something was left out."""
    if isinstance(value, str):
        budget[0] -= len(value) + 2
        return value[:PREVIEW_CHARS]
    if value is None or isinstance(value, (bool, int, float)):
        budget[0] -= 8
        return value
    model = _is_model(value)
    if model or isinstance(value, (Mapping, list, tuple)):
        if depth >= MAX_DEPTH:  # a circular or very deep value: the redactor's own marker
            budget[0] -= 12
            return "<max depth>"
        budget[0] -= 2
        mapping = model or isinstance(value, Mapping)
        out: Any = {} if mapping else []
        for entry in (iter(value) if model else value.items() if mapping else value):
            if budget[0] <= 0:
                budget[0] = -1
                break
            if mapping:
                key, item = entry
                key = key_text(key)
                budget[0] -= len(key) + 4
                out[key] = _head(item, budget, depth + 1, key_text)
            else:
                out.append(_head(entry, budget, depth + 1, key_text))
        return out
    budget[0] -= 8  # something the redactor renders as text
    return value


