"""mlmonitor.otlp.encode_spans against its oracle, the OpenTelemetry SDK's own OTLP encoder.

Random spans (every attribute value type, arrays and empty arrays, nested values,
events, links, statuses, kinds, parents, trace states, several resources and
scopes) must serialize to the request the SDK builds for the same spans: the
parsed messages are equal, and so are the bytes.
"""
from __future__ import annotations

import logging
import math
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from mlmonitor.otlp import encode_spans, encode_spans_sliced
from tests.helpers.spans import OtherReadableSpan, flattened, span_batches

TRACE_ID, SPAN_ID = 0x0123456789ABCDEF0123456789ABCDEF, 0x0123456789ABCDEF


@pytest.fixture(autouse=True)
def quiet_sdk():
    """The SDK logs each attribute it drops or cannot encode (full dict, int beyond int64)."""
    loggers = [logging.getLogger(name) for name in (
        "opentelemetry.exporter.otlp.proto.common._internal", "opentelemetry.attributes")]
    previous = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    yield
    for logger, disabled in zip(loggers, previous):
        logger.disabled = disabled


def sdk_bytes(spans) -> bytes:
    return sdk_encode_spans(spans).SerializePartialToString()


def parse(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(data)


def assert_same_as_sdk(spans) -> bytes:
    ours = encode_spans(spans)
    assert parse(ours) == sdk_encode_spans(spans)
    assert ours == sdk_bytes(spans)
    return ours


def span(name="op", attributes=None, **kwargs) -> ReadableSpan:
    kwargs.setdefault("context", SpanContext(TRACE_ID, SPAN_ID, False))
    kwargs.setdefault("resource", Resource({"service.name": "svc"}))
    kwargs.setdefault("start_time", 1_700_000_000_000_000_000)
    kwargs.setdefault("end_time", 1_700_000_000_000_500_000)
    return ReadableSpan(name=name, attributes=attributes, **kwargs)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(span_batches)
def test_random_spans_encode_exactly_as_the_sdk_encoder(spans):
    """300 batches of 1-20 spans: ~1,800 spans (~500 read through the public properties),
    ~1,700 events and ~1,600 links."""
    assert_same_as_sdk(spans)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(span_batches, st.integers(1, 7))
def test_sliced_encoding_carries_the_same_spans(spans, size):
    """Slices split the grouping into more ResourceSpans entries; every span keeps its resource and scope."""
    assert flattened(parse(encode_spans_sliced(spans, size))) == flattened(sdk_encode_spans(spans))


def test_empty_sequence_is_an_empty_request():
    assert encode_spans([]) == b"" == sdk_bytes([])
    assert encode_spans_sliced([]) == b""


def test_span_without_parent_and_with_a_remote_parent():
    assert_same_as_sdk([span()])
    local = SpanContext(TRACE_ID, 7, is_remote=False)
    remote = SpanContext(TRACE_ID, 7, is_remote=True)
    request = parse(assert_same_as_sdk([span(parent=local), span(parent=remote)]))
    flags = [s.flags for s in request.resource_spans[0].scope_spans[0].spans]
    assert flags == [0x100, 0x300]  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK, + IS_REMOTE
    assert request.resource_spans[0].scope_spans[0].spans[0].parent_span_id == (7).to_bytes(8, "big")


def test_flags_follow_what_the_installed_sdk_sets(monkeypatch):
    """Flags are read off the SDK encoder at import; other SDK versions' choices are honoured."""
    from mlmonitor import otlp

    assert otlp._SPAN_FLAGS == {None: 0x100, False: 0x100, True: 0x300}  # SDK 1.25 to 1.45 at least
    remote = SpanContext(TRACE_ID, 7, is_remote=True)
    sampled = SpanContext(TRACE_ID, SPAN_ID, False, trace_flags=TraceFlags(1))
    spans = [span(context=sampled, parent=remote, links=[Link(sampled)])]
    # an SDK that adds the W3C trace flags (proposed upstream)
    monkeypatch.setattr(otlp, "_SPAN_ADDS_TRACE_FLAGS", True)
    monkeypatch.setattr(otlp, "_LINK_ADDS_TRACE_FLAGS", True)
    decoded = parse(encode_spans(spans)).resource_spans[0].scope_spans[0].spans[0]
    assert decoded.flags == 0x301 and decoded.links[0].flags == 0x101
    # an SDK older than 1.25 sets no flags at all
    monkeypatch.setattr(otlp, "_SPAN_ADDS_TRACE_FLAGS", False)
    monkeypatch.setattr(otlp, "_LINK_ADDS_TRACE_FLAGS", False)
    monkeypatch.setattr(otlp, "_SPAN_FLAG_FIELDS", {None: b"", False: b"", True: b""})
    monkeypatch.setattr(otlp, "_LINK_FLAG_FIELDS", {False: b"", True: b""})
    decoded = parse(encode_spans(spans)).resource_spans[0].scope_spans[0].spans[0]
    assert decoded.flags == 0 and decoded.links[0].flags == 0


def test_int64_limits_and_beyond():
    attributes = {"min": -(1 << 63), "max": (1 << 63) - 1, "minus_one": -1, "zero": 0,
                  "array": (-(1 << 63), 0, (1 << 63) - 1)}
    value = parse(assert_same_as_sdk([span(attributes=attributes)])).resource_spans[0] \
        .scope_spans[0].spans[0].attributes
    assert [kv.value.int_value for kv in value[:4]] == [-(1 << 63), (1 << 63) - 1, -1, 0]
    # beyond int64 the SDK drops the key (and logs it); so does mlmonitor
    assert_same_as_sdk([span(attributes={"big": 1 << 63, "ok": 1, "small": -(1 << 63) - 1,
                                         "in_array": (1, 1 << 64)})])


def test_nan_and_infinities_keep_their_bits():
    attributes = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-0": -0.0,
                  "array": (math.nan, 1.5, -math.inf)}
    ours = encode_spans([span(attributes=attributes)])
    assert ours == sdk_bytes([span(attributes=attributes)])  # NaN != NaN: compare the bytes
    decoded = {kv.key: kv.value for kv in parse(ours).resource_spans[0].scope_spans[0].spans[0].attributes}
    assert math.isnan(decoded["nan"].double_value)
    assert decoded["-inf"].double_value == -math.inf
    assert struct.pack("<d", decoded["-0"].double_value) == struct.pack("<d", -0.0)


def test_unicode_and_very_long_strings():
    long = "ü" * 70_000 + "\U0001F600"  # a length prefix of three varint bytes
    assert_same_as_sdk([span(name="名前 \U0001F600", attributes={
        "emoji": "\U0001F600", "long": long, "nul": "a\x00b", "ключ": "значение",
        "tuple": ("α", "", long)})])


def test_every_kind_and_status():
    spans = [span(kind=kind) for kind in SpanKind]
    spans += [span(status=Status(StatusCode.UNSET)), span(status=Status(StatusCode.OK)),
              span(status=Status(StatusCode.ERROR)), span(status=Status(StatusCode.ERROR, "boom")),
              span(status=None)]
    assert_same_as_sdk(spans)


def test_events_links_and_empty_values():
    linked = SpanContext(TRACE_ID, 9, is_remote=True)
    assert_same_as_sdk([span(
        name="",
        attributes={"empty_tuple": (), "empty_str": "", "none": None, "false": False, "bytes": b"",
                    "mapping": {"a": {"b": (1, "x", None)}}, "empty_mapping": {}},
        events=[Event("e", {"k": "v"}, timestamp=5), Event("", None, timestamp=0)],
        links=[Link(linked, {"l": 1.5}), Link(linked)],
        start_time=None, end_time=None)])


def test_lone_surrogates_become_replacement_characters():
    """The SDK encoder fails on them (the whole batch for a name); mlmonitor sends U+FFFD."""
    bad = span(name="op\ud800", attributes={"k\udfff": "v\ud83d", "tuple": ("\udc00",)})
    with pytest.raises(UnicodeEncodeError):
        sdk_bytes([bad])
    decoded = parse(encode_spans([bad])).resource_spans[0].scope_spans[0].spans[0]
    assert decoded.name == "op\ufffd"
    assert decoded.attributes[0].key == "k\ufffd" and decoded.attributes[0].value.string_value == "v\ufffd"
    assert decoded.attributes[1].value.array_value.values[0].string_value == "\ufffd"


def test_a_readable_span_subclass_reads_the_public_properties():
    attributes = {"a": 1, "b": "x"}
    plain = span(attributes=attributes, events=[Event("e", {"k": 2}, timestamp=3)])
    other = OtherReadableSpan(name="op", context=plain.context, resource=plain.resource,
                              attributes=attributes, events=plain.events,
                              start_time=plain.start_time, end_time=plain.end_time)
    assert encode_spans([other]) == encode_spans([plain]) == sdk_bytes([plain])


def test_spans_of_a_real_provider_with_cached_blocks():
    """A real TracerProvider's spans, encoded twice: the cached resource and scope blocks still match."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import set_span_in_context

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "iris"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("mlmonitor", "1.0", schema_url="https://opentelemetry.io/schemas/1.21.0")
    for index in range(5):
        server = tracer.start_span("POST /predict", kind=SpanKind.SERVER)
        stage = tracer.start_span("inference", context=set_span_in_context(server),
                                  attributes={"ml.stage": "inference"})
        stage.add_event("exception", {"exception.type": "ValueError"})
        stage.end()
        server.set_attributes({"http.response.status_code": 200 + index, "url.path": "/predict"})
        server.set_status(Status(StatusCode.ERROR, "bad input"))
        server.end()
    spans = exporter.get_finished_spans()
    assert_same_as_sdk(spans)
    assert_same_as_sdk(spans)
    provider.shutdown()


def test_importing_the_encoder_does_not_load_the_http_exporter():
    code = ("import sys, mlmonitor, mlmonitor.otlp; "
            "assert 'opentelemetry.exporter.otlp.proto.http' not in sys.modules; "
            "assert 'requests' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
    code = "import sys, mlmonitor; print('mlmonitor.otlp' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
