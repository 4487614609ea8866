"""Random SDK ``ReadableSpan``s for the OTLP encoder's oracle, and helpers to compare requests.

The spans are built the way the SDK holds them (BoundedAttributes, BoundedList,
SpanContext, TraceState), with every attribute value type the SDK keeps.
"""
from __future__ import annotations

from typing import Any, List, Tuple

from hypothesis import strategies as st
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState


class OtherReadableSpan(ReadableSpan):
    """A ReadableSpan subclass: the encoder reads it through the public properties."""


INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
UTF8 = st.characters(codec="utf-8")  # no lone surrogates: the SDK cannot encode them (tested apart)
text = st.text(UTF8, max_size=12) | st.text(st.characters(min_codepoint=0x80, codec="utf-8"), max_size=6)
floats = st.floats(allow_nan=False)  # NaN != NaN would make equal messages compare unequal
scalars = st.one_of(text, st.booleans(), INT64, floats, st.binary(max_size=8), st.none())
homogeneous = st.one_of(*[st.lists(s, max_size=4).map(tuple)
                          for s in (text, st.booleans(), INT64, floats, st.binary(max_size=4))])
values = st.recursive(
    scalars | homogeneous,
    lambda inner: st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(st.text(UTF8, min_size=1, max_size=5), inner, max_size=3),
    max_leaves=6)
keys = st.text(UTF8, min_size=1, max_size=10)
attribute_dicts = st.dictionaries(keys, values, max_size=5)


@st.composite
def bounded_attributes(draw: Any) -> Any:
    """Plain dict, None, or BoundedAttributes that may have dropped some (dropped count > 0)."""
    attributes = draw(attribute_dicts)
    form = draw(st.sampled_from(["bounded", "bounded", "dict", "none"]))
    if form == "none":
        return None
    if form == "dict":
        return attributes
    return BoundedAttributes(maxlen=draw(st.none() | st.integers(0, 4)), attributes=attributes,
                             immutable=False)


# W3C tracestate members: key = lcalpha *(lcalpha / DIGIT / "_" / "-" / "*" / "/"), value printable but , =
trace_state_keys = st.builds(lambda head, tail: head + tail, st.sampled_from("abcxyz"),
                             st.text("abz09_-*/", max_size=6))
trace_state_values = st.text("".join(chr(c) for c in range(0x21, 0x7f) if chr(c) not in ",="),
                             min_size=1, max_size=6)
trace_states = st.none() | st.dictionaries(trace_state_keys, trace_state_values, max_size=3).map(
    lambda d: TraceState(list(d.items())))


@st.composite
def span_contexts(draw: Any) -> SpanContext:
    return SpanContext(draw(st.integers(1, (1 << 128) - 1)), draw(st.integers(1, (1 << 64) - 1)),
                       is_remote=draw(st.booleans()),
                       trace_flags=TraceFlags(draw(st.sampled_from([0, 1]))),
                       trace_state=draw(trace_states))


timestamps = st.none() | st.integers(0, (1 << 64) - 1)


@st.composite
def events(draw: Any) -> Event:
    return Event(draw(text), attributes=draw(bounded_attributes()),
                 timestamp=draw(st.integers(0, (1 << 64) - 1)))


@st.composite
def links(draw: Any) -> Link:
    return Link(draw(span_contexts()), attributes=draw(bounded_attributes()))


@st.composite
def bounded_list(draw: Any, items: Any) -> Any:
    drawn = draw(st.lists(items, max_size=3))
    if draw(st.booleans()):
        return tuple(drawn)
    kept = BoundedList(draw(st.none() | st.integers(0, 3)))
    kept.extend(drawn)
    return kept


statuses = st.one_of(
    st.just(Status(StatusCode.UNSET)), st.just(Status(StatusCode.OK)),
    st.builds(Status, st.just(StatusCode.ERROR), st.none() | text))

#: a few resources and scopes, some equal but not identical, as spans of several providers share
RESOURCES = [Resource({"service.name": "a", "process.pid": 1}),
             Resource({"service.name": "a", "process.pid": 1}),  # equal to the first
             Resource({"service.name": "b", "list": (1, 2), "flag": True}, schema_url="https://s/1"),
             Resource({}),
             Resource({"x": 1.5, "bytes": b"\x00\xff", "empty": ()})]
SCOPES = [None,
          InstrumentationScope("mlmonitor", "0.5.0"),
          InstrumentationScope("mlmonitor", "0.5.0"),  # equal to the one before
          InstrumentationScope("other", None, "https://schema/2", {"scope.attr": "v", "n": 3}),
          InstrumentationScope("", "")]


@st.composite
def readable_spans(draw: Any) -> ReadableSpan:
    cls = draw(st.sampled_from([ReadableSpan, ReadableSpan, OtherReadableSpan]))
    return cls(
        name=draw(text),
        context=draw(span_contexts()),
        parent=draw(st.none() | span_contexts()),
        resource=draw(st.sampled_from(RESOURCES) | st.builds(Resource, attribute_dicts)),
        attributes=draw(bounded_attributes()),
        events=draw(bounded_list(events())),
        links=draw(bounded_list(links())),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=draw(statuses),
        start_time=draw(timestamps),
        end_time=draw(timestamps),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


#: 1 to 20 spans, the size drawn first so that batches average ~10 spans (lists alone stay short)
span_batches = st.integers(1, 20).flatmap(lambda n: st.lists(readable_spans(), min_size=n, max_size=n))


def flattened(request: ExportTraceServiceRequest) -> List[Tuple[bytes, str, bytes, str, bytes]]:
    """Every span with its resource and scope, sorted: equal however the request groups them."""
    rows = []
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource.SerializeToString(deterministic=True)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.SerializeToString(deterministic=True)
            for span in scope_spans.spans:
                rows.append((resource, resource_spans.schema_url, scope, scope_spans.schema_url,
                             span.SerializeToString(deterministic=True)))
    return sorted(rows)
