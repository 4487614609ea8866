"""Any value -> one strict JSON line: never raising, size-capped, valid UTF-8.

:func:`render_json` renders whatever an app puts in a line (cycles, tuple keys, NaN,
objects whose ``__repr__`` raises, bytes, numpy scalars, megabyte strings) as one
valid JSON object on one line, at most ``max_bytes`` long, with ``"truncated": true``
when cut; lone surrogates become U+FFFD. Used by the log sink and by the app's own
logs (:mod:`mlmonitor.app_logging`).
"""
from __future__ import annotations

import json
import math
import re
import os
import select
import stat
from collections.abc import Mapping, MutableMapping
from typing import Any

from .redact import TRUNCATED_MARK

__all__ = ["render_json", "SafeJSONRenderer", "valid_utf8", "PIPE_BUF", "pipe_fd"]

_MAX_DEPTH = 12
_encode = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
#: a write of at most this many bytes reaches a pipe whole, whoever else writes to it
PIPE_BUF = getattr(select, "PIPE_BUF", 512)
# a JSON escape: a surrogate pair, a lone surrogate (group 1), or any other escape
_ESCAPE = re.compile(r"\\(?:ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|(ud[89a-f][0-9a-f]{2})|.)")


def _lone_to_fffd(match: re.Match[str]) -> str:
    return "\\ufffd" if match.group(1) else match.group()


def valid_utf8(text: str) -> str:
    r"""JSON text with each lone surrogate escape (``\ud800``) made ``\ufffd``.

    json writes a lone surrogate from client text as an escape that strict UTF-8
    parsers reject; pairs (emoji) are kept. Same length, so size caps still hold.
    """
    return _ESCAPE.sub(_lone_to_fffd, text) if "\\ud" in text else text


def _default(obj: Any) -> Any:
    """Called by json for values it cannot encode: numpy scalars, bytes, anything else."""
    item = getattr(obj, "item", None)
    if callable(item) and type(obj).__module__ == "numpy":
        return item()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return _safe_repr(obj)


def _safe_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception:
        try:
            return f"<unrepresentable {type(obj).__name__}>"
        except Exception:
            return "<unrepresentable>"


def _sanitize(obj: Any, depth: int, seen: set[int], max_str: int) -> Any:
    """A JSON-safe copy: string keys, finite floats, no cycles, bounded depth and strings."""
    if obj is None or isinstance(obj, (bool, int)):
        if obj is None or type(obj) is bool:
            return obj
        number = int(obj)
        # json cannot write ints beyond Python's 4300-digit conversion limit
        return number if number.bit_length() <= 8192 else f"<int of {number.bit_length()} bits>"
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, str):
        text = str(obj)
        return text if len(text) <= max_str else text[:max_str] + TRUNCATED_MARK
    if depth >= _MAX_DEPTH:
        return "<max depth>"
    if isinstance(obj, dict):
        if id(obj) in seen:
            return "<cycle>"
        seen.add(id(obj))
        try:
            out = {}
            for key, value in list(obj.items())[:1000]:
                key_text = key if type(key) is str else safe_text(key)
                out[key_text[:max_str]] = _sanitize(value, depth + 1, seen, max_str)
            return out
        finally:
            seen.discard(id(obj))
    if isinstance(obj, (list, tuple, set, frozenset)):
        if id(obj) in seen:
            return "<cycle>"
        seen.add(id(obj))
        try:
            return [_sanitize(v, depth + 1, seen, max_str) for v in list(obj)[:1000]]
        finally:
            seen.discard(id(obj))
    try:
        converted = _default(obj)
    except Exception:
        converted = "<unrepresentable>"
    if converted is obj or isinstance(converted, (dict, list)):
        return _safe_repr(obj)[:max_str]
    return _sanitize(converted, depth + 1, seen, max_str)


def safe_text(obj: Any) -> str:
    try:
        return str(obj)
    except Exception:
        return _safe_repr(obj)


def render_json(event: Mapping[str, Any], max_bytes: int = 16384) -> str:
    """One strict-JSON line (ASCII, so bytes == characters), never raising, at most max_bytes.

    Valid UTF-8 too: a lone surrogate becomes U+FFFD (see :func:`valid_utf8`).
    """
    return valid_utf8(_render(event, max_bytes))


def _render(event: Mapping[str, Any], max_bytes: int) -> str:
    try:
        text = _encode(event)
    except Exception:
        text = None
    if text is None or len(text) > max_bytes:
        max_str = max_bytes // 4
        while True:
            try:
                clean = _sanitize(event, 0, set(), max_str)
                if text is not None or len(_encode(clean)) > max_bytes:
                    clean["truncated"] = True
                text = _encode(clean)
            except Exception:
                text = None
            if text is not None and len(text) <= max_bytes:
                return text
            if max_str <= 64:
                break
            max_str //= 4
        # last resort: only the short scalar fields survive
        try:
            core = {k: v for k, v in event.items() if isinstance(k, str) and _short_scalar(v)}
            core["truncated"] = True
            text = _encode(_sanitize(core, 0, set(), 256))
        except Exception:
            text = '{"event":"unrenderable","truncated":true}'
        return text[:max_bytes] if len(text) <= max_bytes else '{"event":"unrenderable","truncated":true}'
    return text


def _fit(line: dict[str, Any], limit: int, max_bytes: int) -> str:
    """The line in at most ``limit`` bytes: the stack's oldest part goes first, then the
    end of the error message, then whatever render_json's own cap cuts."""
    text = render_json(line, max_bytes)
    for key in ("stack", "error"):
        value = line.get(key)
        if len(text) <= limit:
            return text
        if not isinstance(value, str):
            continue
        # every character is at least one byte of JSON: cutting this many is enough
        cut = len(text) - limit + len(TRUNCATED_MARK) + len(',"truncated":true')
        if cut >= len(value):
            line[key] = TRUNCATED_MARK
        elif key == "stack":
            line[key] = TRUNCATED_MARK + value[cut:]
        else:
            line[key] = value[:-cut] + TRUNCATED_MARK
        line["truncated"] = True
        text = render_json(line, max_bytes)
    return text if len(text) <= limit else render_json(line, limit)


def _short_scalar(value: Any) -> bool:
    if type(value) is int:
        return value.bit_length() < 800
    return type(value) in (str, float, bool) and len(str(value)) < 256


class SafeJSONRenderer:
    """structlog processor: the final step of a chain, renders with :func:`render_json`."""

    def __init__(self, max_bytes: int = 16384) -> None:
        self.max_bytes = max_bytes

    def __call__(self, logger: Any, method_name: str,  # noqa: ARG002 (structlog's renderer)
                 event_dict: MutableMapping[str, Any]) -> str:
        return render_json(event_dict, self.max_bytes)


def pipe_fd(stream: Any) -> tuple[Any, ...]:
    """(fd, is a pipe or FIFO) of a stream; (None, False) for one without a file descriptor."""
    try:
        fd = stream.fileno()
        return fd, stat.S_ISFIFO(os.fstat(fd).st_mode)
    except Exception:  # io.StringIO, a closed stream, a wrapper without fileno()
        return None, False
