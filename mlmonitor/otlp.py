"""OTLP span encoding written straight to protobuf wire format, and an exporter that uses it.

The SDK's encoder builds a protobuf message per span, attribute and value, then
serializes them: ~33 us a span here, all of it holding the GIL. ``encode_spans``
writes the bytes directly (field tags precomputed, resource and scope blocks
cached by identity, the encoding of a repeated ``(key, str or int value)``
attribute cached), about 0.1x the SDK's time (benchmarks/README.md).

Its output parses to the message the installed SDK encoder
(``opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans``) builds
for the same spans, grouping and ``flags`` included (the flags are read off that
encoder at import, as SDK versions differ); so far it is the same bytes
(``tests/test_otlp_encoder.py``). Like the SDK it leaves out a link's trace state
and drops an attribute whose value OTLP cannot carry (an int beyond int64). One
deliberate difference: a string holding a lone surrogate (not UTF-8) makes the
SDK drop that attribute or fail the whole batch; here it becomes U+FFFD and the
span is sent.

Imported only when mlmonitor builds an OTLP exporter; the SDK's HTTP exporter
(requests) is loaded on first use of ``FastOTLPSpanExporter``.
"""
from __future__ import annotations

import logging
import re
import struct
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState

__all__ = ["encode_spans", "encode_spans_sliced", "FastOTLPSpanExporter", "SLICE"]  # noqa: F822

log = logging.getLogger("mlmonitor")

#: spans encoded between two hand-overs of the GIL in the exporter
SLICE = 64
#: the pause that hands the GIL over: sleep(0) re-takes it before a waiting thread wakes
_YIELD_S = 0.0001

_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_VARINT1 = [bytes((n,)) for n in range(128)]
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SURROGATE = re.compile("[\ud800-\udfff]")


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINT1[n]
    if n < 16384:
        return bytes((n & 127 | 128, n >> 7))
    out = bytearray()
    while n > 127:
        out.append(n & 127 | 128)
        n >>= 7
    out.append(n)
    return bytes(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: not UTF-8, protobuf parsers refuse them
        return _SURROGATE.sub("\ufffd", text).encode()


def _string(tag: bytes, text: str) -> bytes:
    """A length-delimited string field; proto3 leaves out the empty string."""
    if not text:
        return b""
    data = _utf8(text)
    return tag + _varint(len(data)) + data


# -- attributes: KeyValue and AnyValue ------------------------------------------------------

def _any(value: Any) -> bytes:
    """The body of an AnyValue, in the SDK's order of isinstance checks."""
    kind = type(value)
    if kind is str:
        data = _utf8(value)
        return b"\x0a" + _varint(len(data)) + data
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _int64(value)
    if kind is float:
        return b"\x21" + _pack_double(value)
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        data = _utf8(value)
        return b"\x0a" + _varint(len(data)) + data
    if isinstance(value, int):
        return b"\x18" + _int64(int(value))
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return b"\x3a" + _varint(len(value)) + bytes(value)
    if isinstance(value, Sequence):
        body = b"".join([b"\x0a" + _varint(len(v)) + v for v in map(_any, value)])
        return b"\x2a" + _varint(len(body)) + body
    if isinstance(value, Mapping):
        body = b"".join([b"\x0a" + _keyvalue(str(k), v) for k, v in value.items()])
        return b"\x32" + _varint(len(body)) + body
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _int64(value: int) -> bytes:
    if value >= 0:
        if value > _INT64_MAX:
            raise ValueError("int attribute out of int64 range")
        return _varint(value)
    if value < _INT64_MIN:
        raise ValueError("int attribute out of int64 range")
    return _varint(value + (1 << 64))


_CACHE_MAX = 4096
_PAIR_VALUE_MAX = 256
_KEYS: dict[str, bytes] = {}
#: per field tag: (key, str value) -> the encoded field; only str values, as (k, 1) == (k, True)
_PAIRS: dict[bytes, dict[tuple[str, Any], bytes]] = {}
#: (key, int value) -> the encoded KeyValue, looked up only for values whose type is int
_INTS: dict[tuple[str, int], bytes] = {}


def _key(key: str) -> bytes:
    encoded = _KEYS.get(key)
    if encoded is None:
        if not isinstance(key, str):
            raise TypeError(f"attribute key of type {type(key).__name__}")
        if len(_KEYS) >= _CACHE_MAX:
            _KEYS.clear()
        encoded = _KEYS[key] = _string(b"\x0a", key)
    return encoded


def _keyvalue(key: str, value: Any) -> bytes:
    """A KeyValue with its length prefix (the caller writes the field tag)."""
    anyvalue = _any(value)
    body = _key(key) + b"\x12" + _varint(len(anyvalue)) + anyvalue
    return _varint(len(body)) + body


def _attribute(tag: bytes, item: tuple[str, Any]) -> bytes:
    """One attribute as field ``tag``; b"" for a value OTLP cannot carry (the SDK drops the key too)."""
    key, value = item
    kind = type(value)
    try:
        if kind is int:
            body = _INTS.get(item)
            if body is None:
                if len(_INTS) >= _CACHE_MAX:
                    _INTS.clear()
                body = _INTS[item] = _keyvalue(key, value)
            return tag + body
        encoded = tag + _keyvalue(key, value)
    except Exception as exc:  # the SDK's encoder catches every error here too
        log.warning("mlmonitor: span attribute %r not exported: %s", key, exc)
        return b""
    if kind is str and len(value) <= _PAIR_VALUE_MAX:
        pairs = _PAIRS.setdefault(tag, {})
        if len(pairs) >= _CACHE_MAX:
            pairs.clear()
        pairs[item] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Any) -> bytes:
    """Every attribute of a mapping, each as field ``tag``."""
    if not attributes:
        return b""
    pairs = _PAIRS.get(tag) or {}
    try:  # the items are (key, value) tuples already: the cache key costs nothing
        return b"".join([pairs.get(item) or _attribute(tag, item) for item in attributes.items()])
    except TypeError:  # an unhashable value (a mapping)
        return b"".join([_attribute(tag, item) for item in attributes.items()])


# -- spans -----------------------------------------------------------------------------------

_KINDS = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}
_STATUS_NO_MESSAGE = {0: b"\x7a\x00", 1: b"\x7a\x02\x18\x01", 2: b"\x7a\x02\x18\x02"}
_NAMES: dict[str, bytes] = {}


def _sdk_classes() -> tuple[Any, Any, Any]:
    """The SDK classes whose fields ``_span`` may read directly, if they still have them."""
    fields = {"_name", "_context", "_parent", "_kind", "_start_time", "_end_time", "_attributes",
              "_events", "_links", "_status"}
    if (fields <= set(ReadableSpan.__init__.__code__.co_names)
            and {"_dict", "dropped"} <= set(BoundedAttributes.__init__.__code__.co_names)
            and {"_dq", "dropped"} <= set(BoundedList.__init__.__code__.co_names)):
        return ReadableSpan, BoundedAttributes, BoundedList
    return None, None, None


_READABLE_SPAN, _BOUNDED_ATTRIBUTES, _BOUNDED_LIST = _sdk_classes()


def _span_context_class() -> Any:
    """SpanContext, if it is still the tuple (trace_id, span_id, is_remote, flags, state, valid)."""
    state = TraceState([("k", "v")])
    probe = SpanContext(1, 2, True, None, state)
    return SpanContext if tuple(probe)[:3] == (1, 2, True) and probe[4] is state and len(probe) == 6 else None


_SPAN_CONTEXT = _span_context_class()


def _probe_flags() -> tuple[dict[Any, int], bool, dict[bool, int], bool]:
    """Span.flags and Link.flags as the installed SDK encoder sets them, read off probe spans.

    The SDK's choice changed across versions (none before 1.25, then the
    is_remote bits; W3C trace flags proposed): span flags by parent (None, local,
    remote) and whether the span's trace flags are added; the same for links.
    """
    try:
        # optional (the otlp extra), and a private module that may move
        from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import encode_spans  # noqa: PLC0415

        def context(span_id: int, remote: bool = False, sampled: int = 0) -> Any:
            return SpanContext(1, span_id, remote, TraceFlags(sampled))

        links = [Link(context(2)), Link(context(3, True)), Link(context(4, sampled=1))]
        probes = [ReadableSpan("p", context(5), links=links), ReadableSpan("p", context(6, sampled=1)),
                  ReadableSpan("p", context(7), parent=context(9)),
                  ReadableSpan("p", context(8), parent=context(9, True))]
        spans = encode_spans(probes).resource_spans[0].scope_spans[0].spans
        link_flags = [link.flags for link in spans[0].links]
        return ({None: spans[0].flags, False: spans[2].flags, True: spans[3].flags},
                spans[1].flags - spans[0].flags == 1,
                {False: link_flags[0], True: link_flags[1]}, link_flags[2] - link_flags[0] == 1)
    except Exception:  # no SDK encoder installed: the SDK 1.25-1.45 choice
        return {None: 0x100, False: 0x100, True: 0x300}, False, {False: 0x100, True: 0x300}, False


_SPAN_FLAGS, _SPAN_ADDS_TRACE_FLAGS, _LINK_FLAGS, _LINK_ADDS_TRACE_FLAGS = _probe_flags()


def _fixed32(tag: bytes, value: int) -> bytes:
    return tag + _pack_fixed32(value) if value else b""


_SPAN_FLAG_FIELDS = {key: _fixed32(b"\x85\x01", flags) for key, flags in _SPAN_FLAGS.items()}
_LINK_FLAG_FIELDS = {key: _fixed32(b"\x35", flags) for key, flags in _LINK_FLAGS.items()}


def _trace_state(state: Any) -> str:
    return ",".join([f"{key}={value}" for key, value in state.items()])


def _status(status: Any) -> bytes:
    if status is None:
        return b""
    code = status.status_code._value_  # an Enum's .value is a slow descriptor
    message = status.description
    if not message:
        encoded = _STATUS_NO_MESSAGE.get(code)
        if encoded is not None:
            return encoded
    body = _string(b"\x12", message or "") + (b"\x18" + _varint(code) if code else b"")
    return b"\x7a" + _varint(len(body)) + body


def _event(event: Any) -> bytes:
    timestamp = event.timestamp
    body = (b"\x09" + _pack_fixed64(timestamp) if timestamp else b"") + _string(b"\x12", event.name)
    body += _attributes(b"\x1a", event.attributes)
    dropped = event.dropped_attributes
    if dropped:
        body += b"\x20" + _varint(dropped)
    return b"\x5a" + _varint(len(body)) + body


def _link(link: Any) -> bytes:
    context = link.context
    body: bytes = (b"\x0a\x10" + context.trace_id.to_bytes(16, "big")
            + b"\x12\x08" + context.span_id.to_bytes(8, "big")
            + _attributes(b"\x22", link.attributes))  # the SDK encoder leaves the trace state out
    dropped = link.dropped_attributes
    if dropped:
        body += b"\x28" + _varint(dropped)
    remote = bool(context and context.is_remote)
    if _LINK_ADDS_TRACE_FLAGS:
        body += _fixed32(b"\x35", _LINK_FLAGS[remote] | context.trace_flags & 0xFF)
    else:
        body += _LINK_FLAG_FIELDS[remote]
    return b"\x6a" + _varint(len(body)) + body


def _span(span: Any) -> bytes:
    """One Span message, length-prefixed as field 2 of ScopeSpans."""
    if type(span) is _READABLE_SPAN:  # the SDK's class: its fields, not properties that copy them
        context, parent, name, kind = span._context, span._parent, span._name, span._kind  # noqa: SLF001 (the SDK's own fields)
        start, end, status = span._start_time, span._end_time, span._status  # noqa: SLF001
        attributes, events, links = span._attributes, span._events, span._links  # noqa: SLF001
        # as the properties: a dropped count only from the SDK's bounded containers
        dropped_attributes = attributes.dropped if isinstance(attributes, _BOUNDED_ATTRIBUTES) else 0
        dropped_events = events.dropped if isinstance(events, _BOUNDED_LIST) else 0
        dropped_links = links.dropped if isinstance(links, _BOUNDED_LIST) else 0
        if type(attributes) is _BOUNDED_ATTRIBUTES:
            attributes = attributes._dict  # noqa: SLF001
        if type(events) is _BOUNDED_LIST:
            events = events._dq  # noqa: SLF001
        if type(links) is _BOUNDED_LIST:
            links = links._dq  # noqa: SLF001
    else:
        context, parent, name, kind = span.get_span_context(), span.parent, span.name, span.kind
        start, end, status = span.start_time, span.end_time, span.status
        attributes, events, links = span.attributes, span.events, span.links
        dropped_attributes, dropped_events = span.dropped_attributes, span.dropped_events
        dropped_links = span.dropped_links
    if type(context) is _SPAN_CONTEXT:  # a tuple: unpacking skips five property calls
        trace_id, span_id, _, trace_flags, state, _ = context
    else:
        trace_id, span_id, state = context.trace_id, context.span_id, context.trace_state
        trace_flags = context.trace_flags
    out = bytearray(b"\x0a\x10")
    out += trace_id.to_bytes(16, "big")
    out += b"\x12\x08"
    out += span_id.to_bytes(8, "big")
    if state:
        out += _string(b"\x1a", _trace_state(state))
    remote = None  # no parent
    if parent:
        if type(parent) is _SPAN_CONTEXT:
            _, parent_id, remote, _, _, _ = parent
        else:
            parent_id, remote = parent.span_id, parent.is_remote
        remote = bool(remote)
        out += b"\x22\x08"
        out += parent_id.to_bytes(8, "big")
    if name:
        encoded = _NAMES.get(name)
        if encoded is None:
            if len(_NAMES) >= _CACHE_MAX:
                _NAMES.clear()
            encoded = _NAMES[name] = _string(b"\x2a", name)
        out += encoded
    out += _KINDS[kind]
    if start:
        out += b"\x39"
        out += _pack_fixed64(start)
    if end:
        out += b"\x41"
        out += _pack_fixed64(end)
    if attributes:
        out += _attributes(b"\x4a", attributes)
    if dropped_attributes:
        out += b"\x50"
        out += _varint(dropped_attributes)
    if events:
        for event in events:
            out += _event(event)
    if dropped_events:
        out += b"\x60"
        out += _varint(dropped_events)
    if links:
        for link in links:
            out += _link(link)
    if dropped_links:
        out += b"\x70"
        out += _varint(dropped_links)
    if status is not None:
        out += _status(status)
    if _SPAN_ADDS_TRACE_FLAGS:
        out += _fixed32(b"\x85\x01", _SPAN_FLAGS[remote] | trace_flags & 0xFF)
    else:
        out += _SPAN_FLAG_FIELDS[remote]
    return b"\x12" + _varint(len(out)) + out


# -- resources and scopes ---------------------------------------------------------------------

_BLOCKS: dict[int, tuple[Any, bytes]] = {}


def _cached(obj: Any, encode: Callable[[Any], bytes]) -> bytes:
    """``encode(obj)``, cached by identity; the entry holds ``obj``, so its id is not reused."""
    hit = _BLOCKS.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    block = encode(obj)
    if len(_BLOCKS) >= 256:
        _BLOCKS.clear()
    _BLOCKS[id(obj)] = (obj, block)
    return block


def _resource(resource: Any) -> bytes:
    body = _attributes(b"\x0a", resource.attributes)
    return b"\x0a" + _varint(len(body)) + body


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b"\x0a\x00"
    body = (_string(b"\x0a", scope.name) + _string(b"\x12", scope.version or "")
            + _attributes(b"\x1a", getattr(scope, "attributes", None)))
    return b"\x0a" + _varint(len(body)) + body


def encode_spans(spans: Sequence[Any]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for ``spans`` (SDK ``ReadableSpan``s).

    Grouped as the SDK groups: by resource, then by instrumentation scope (dict
    keys, so equal objects share a group), in order of first appearance.
    """
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        ids = (id(resource), id(scope))
        encoded = by_identity.get(ids)
        if encoded is None:  # once per (resource, scope) pair: dict lookups by equality, as the SDK
            encoded = by_identity[ids] = groups.setdefault(resource, {}).setdefault(scope, [])
        encoded.append(_span(span))
    out = bytearray()
    for resource, scopes in groups.items():
        body = bytearray(_cached(resource, _resource))
        for scope, encoded in scopes.items():
            scope_spans = bytearray(b"\x0a\x00" if scope is None else _cached(scope, _scope))
            for span_bytes in encoded:
                scope_spans += span_bytes
            if scope is not None:
                scope_spans += _string(b"\x1a", scope.schema_url or "")
            body += b"\x12"
            body += _varint(len(scope_spans))
            body += scope_spans
        body += _string(b"\x1a", resource.schema_url or "")
        out += b"\x0a"
        out += _varint(len(body))
        out += body
    return bytes(out)


def encode_spans_sliced(spans: Sequence[Any], size: int = SLICE) -> bytes:
    """``encode_spans`` over slices of ``size`` spans, pausing between slices.

    Each slice becomes its own ResourceSpans entries (repeated fields concatenate:
    valid OTLP). The pause lets a request thread waiting for the GIL run.
    """
    if len(spans) <= size:
        return encode_spans(spans)
    if not isinstance(spans, (list, tuple)):
        spans = list(spans)
    parts = []
    for start in range(0, len(spans), size):
        if start:
            time.sleep(_YIELD_S)
        parts.append(encode_spans(spans[start:start + size]))
    return b"".join(parts)


# -- the exporter ------------------------------------------------------------------------------

class _Encoded:
    """Stands where the SDK's export() expects a message: it only serializes it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def SerializeToString(self, **_: Any) -> bytes:  # noqa: N802 (protobuf's names)
        return self.data

    SerializePartialToString = SerializeToString


def _encode_for_export(spans: Sequence[Any]) -> _Encoded:
    return _Encoded(encode_spans_sliced(spans))


def _export_with_fast_encoder(export: Any) -> Any | None:
    """The SDK's own export() with its module's ``encode_spans`` bound to ours, or None.

    Same code object, so endpoint, headers, timeout, compression, size limit,
    retries, metrics and shutdown stay exactly the installed SDK's.
    """
    code = getattr(export, "__code__", None)
    if (code is None or code.co_freevars or "encode_spans" not in code.co_names
            or not {"SerializeToString", "SerializePartialToString"} & set(code.co_names)):
        return None
    namespace = dict(export.__globals__, encode_spans=_encode_for_export)
    function = types.FunctionType(code, namespace, export.__name__, export.__defaults__)
    function.__kwdefaults__ = export.__kwdefaults__
    function.__doc__ = "The SDK's export(), encoding with mlmonitor.otlp.encode_spans."
    return function


_exporter_class: list[Any] = []


def _fast_exporter_class() -> Any:
    if not _exporter_class:
        # optional: the otlp extra
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        namespace: dict[str, Any] = {
            "__module__": __name__,
            "__doc__": "The SDK's OTLP/HTTP span exporter with mlmonitor's encoder.",
        }
        export = _export_with_fast_encoder(OTLPSpanExporter.__dict__.get("export"))
        if export is None:
            log.warning("mlmonitor: this opentelemetry-exporter-otlp-proto-http's export() cannot "
                        "take mlmonitor's span encoder; spans are encoded by the SDK's")
        else:
            namespace["export"] = export
        _exporter_class.append(type("FastOTLPSpanExporter", (OTLPSpanExporter,), namespace))
    return _exporter_class[0]


def __getattr__(name: str) -> Any:
    if name == "FastOTLPSpanExporter":  # built on first use: the SDK exporter imports requests
        return _fast_exporter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
