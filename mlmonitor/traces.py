"""The trace sink: server spans with HTTP semantic conventions and model attributes; stage spans.

Runs in every request (``start`` opens the span, ``finish`` ends it when the body is
closed). mlmonitor starts the server span itself through the OpenTelemetry API (W3C
``traceparent`` honoured), because the Flask instrumentation package costs
~117-180 us a request here (+73 us even unsampled); see benchmarks/README.md. An
app that already runs ``FlaskInstrumentor`` keeps its one span, which mlmonitor
annotates. If the app has no TracerProvider, one is built from the standard
``OTEL_*`` variables (:mod:`mlmonitor.trace_provider`).

Attributes mlmonitor adds: ``ml.model.name``, ``ml.model.version``,
``ml.stage`` (stage spans), ``ml.tag.<key>`` for ``monitor.tag(key=value)``, and on a
prediction's span, as in its log line, ``ml.stages_ms.<stage>`` (the sum of the stage's
blocks) and ``ml.stage_counts.<stage>`` (for a stage entered more than once). With
``stage_spans="events"`` a stage is an event on the server span instead of a child span
(one span per request): named after the stage, at the stage's start, with ``ml.stage`` and
``ml.stage.duration_ms``. A prediction that observed tokens also carries the OpenTelemetry GenAI
attributes ``gen_ai.request.model`` and ``gen_ai.usage.input_tokens``/``output_tokens``.

For MLflow (``mlflow=True``, or OTLP headers naming ``x-mlflow-experiment-id``) the server
span also carries what MLflow reads: the trace name ``{method} {route}`` as its span name
from the start and as ``mlflow.traceTag.mlflow.traceName``, the model's name, version, run
id and model id as trace tags (``mlflow.traceTag.ml.model.*``), ``mlflow.spanType`` and,
only with ``capture_io=True``, redacted and capped request/response previews
(``mlflow.spanInputs`` / ``mlflow.spanOutputs``). MLflow json-decodes these string
attributes, so their values are sent JSON-encoded (a version ``"1.10"`` stays ``1.10``).
With ``mlflow_new_root=True`` a request with an incoming ``traceparent`` starts a new
trace linked to the caller's span: MLflow keeps a trace without its root ``IN_PROGRESS``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import __version__
from .config import MAX_OBSERVED, Settings, number_in
from .lineage import lineage
from .mlflow import enable, headers_name_mlflow, json_text
from .previews import IO_KEY, preview
from .record import MAX_TAGS, UNMATCHED_ROUTE, RequestRecord, stage_totals
from .redact import REDACTED, describe_exception, redactor, safe_text
from .trace_provider import MAX_ATTRIBUTE_LENGTH, _fork_generation, add_drop_counter, is_built, provider_for

__all__ = ["TraceSink"]


class _EnvironGetter(Getter[dict[str, Any]]):
    """Reads W3C headers straight from the WSGI environ."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return [value] if value is not None else None

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = _EnvironGetter()


class TraceSink:
    """Starts and ends the server span of a record; annotates a borrowed one."""

    def __init__(self, settings: Settings, tracer_provider: Any = None,
                 on_dropped: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.redact = settings.redact_set
        self.redactor = redactor(self.redact)
        self.version = __version__
        self.tracer_provider = tracer_provider
        if settings.mlflow and tracer_provider is None:  # connected mode, set up before any span
            enable(required=False)
        self.provider = provider_for(settings, tracer_provider)  # validates OTEL_* at start-up
        self.tracer = self.provider.get_tracer("mlmonitor", __version__)
        self.generation = _fork_generation[0]
        #: mlmonitor's own provider, until the app sets a global one (then that one is used)
        self.own_provider = (tracer_provider is None and is_built(self.provider)
                             and hasattr(trace, "_TRACER_PROVIDER"))  # the API's global, None until set
        self.route_paths: dict[str, str] = {}
        #: stages as events on the server span (stage_event) instead of child spans (stage_span)
        self.stage_events = settings.stage_spans == "events"
        self.static_attributes = {
            "ml.tag." + k: self.redactor.text(str(v)[:MAX_ATTRIBUTE_LENGTH])
            for k, v in settings.tags.items() if not self.redactor.is_secret_key(k)}
        #: counts spans the built provider drops (None: not counted here)
        self.on_dropped = on_dropped
        if on_dropped is not None and is_built(self.provider):
            add_drop_counter(self)
        #: spans shaped for MLflow (see the module's docstring)
        self.mlflow = settings.mlflow or headers_name_mlflow()
        self.new_root = self.mlflow and settings.mlflow_new_root
        self.capture_io = settings.capture_io
        #: ``environ -> route or None``: a framework layer's route before the app routes
        #: (MLflow reads the trace name when the span starts)
        self.route_at_start: Callable[[dict[str, Any]], str | None] | None = None

    def start(self, rec: RequestRecord) -> Any:
        """Open the server span and make it current; returns the context token."""
        if self.generation != _fork_generation[0]:  # forked (gunicorn): this process's provider
            self.provider = provider_for(self.settings, self.tracer_provider)
            self.tracer = self.provider.get_tracer("mlmonitor", self.version)
            self.generation = _fork_generation[0]
        if self.own_provider and trace._TRACER_PROVIDER is not None:  # noqa: SLF001 (no os.environ read)
            self.use_global_provider()
        environ = rec.environ
        parent = extract(environ, getter=_GETTER) if "HTTP_TRACEPARENT" in environ else None
        if self.mlflow:
            span = self.start_for_mlflow(rec, parent)
        else:
            span = self.tracer.start_span(rec.method, context=parent, kind=SpanKind.SERVER,
                                          start_time=rec.start_ns)
        rec.own_span = True
        self.adopt(rec, span)
        return otel_context.attach(trace.set_span_in_context(span))

    def start_for_mlflow(self, rec: RequestRecord, parent: Any) -> Any:
        """The server span named ``{method} {route}`` from its start, typed for MLflow; with
        ``mlflow_new_root`` a caller's trace is linked to, not continued."""
        route = rec.route
        if route is None and self.route_at_start is not None:
            try:
                route = self.route_at_start(rec.environ)
            except Exception:
                route = None
        name = rec.method if not route or route == UNMATCHED_ROUTE else f"{rec.method} {route}"
        attributes = {"mlflow.spanType": '"CHAIN"',
                      "mlflow.traceTag.mlflow.traceName": json_text(_utf8(name))}
        links = None
        if parent is not None and self.new_root:
            remote = trace.get_current_span(parent).get_span_context()
            links = [Link(remote)] if remote.is_valid else None
            parent = otel_context.Context()  # an empty context: a root span
        return self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes, links=links, start_time=rec.start_ns)

    def mlflow_attributes(self, rec: RequestRecord, attributes: dict[str, Any]) -> dict[str, Any]:
        """What MLflow shows of the finished request, from the span's own ``attributes``: its
        name and model as trace tags (JSON text), and the previews."""
        shown: dict[str, Any] = {}
        if "http.route" in attributes:
            shown["mlflow.traceTag.mlflow.traceName"] = json_text(_utf8(f"{rec.method} {rec.route}"))
        for key in _MLFLOW_TAGGED:
            if key in attributes:
                shown["mlflow.traceTag." + key] = json_text(attributes[key])
        if self.capture_io:
            previews = rec.environ.get(IO_KEY) if rec.environ is not None else None
            if previews:
                for key, value in zip(("mlflow.spanInputs", "mlflow.spanOutputs"), previews, strict=False):
                    text = self.preview(value) if value is not None else None
                    if text is not None:
                        shown[key] = text
        return shown

    def preview(self, value: Any) -> str | None:
        """``value``'s capture_io preview (see :mod:`mlmonitor.previews`), safe for OTLP."""
        text = preview(self.redactor, value)
        return None if text is None else _utf8(text)

    def use_global_provider(self) -> None:
        """The app set a global provider after Monitor(app): use it, as if set before."""
        self.own_provider = False
        self.provider = provider_for(self.settings, None)
        self.tracer = self.provider.get_tracer("mlmonitor", self.version)

    def request_attributes(self, rec: RequestRecord, environ: dict[str, Any]) -> dict[str, Any]:
        """HTTP semantic-convention attributes known at the start, secrets redacted."""
        path = rec.path
        if path == rec.route:  # a static route: redacted once, the cache bounded by the routes
            redacted = self.route_paths.get(path)
            if redacted is None:
                redacted = self.route_paths[path] = self.redactor.text(path)
        else:  # a head cut first: it cannot separate a secret's name from its value
            redacted = self.redactor.text(path[:MAX_ATTRIBUTE_LENGTH])
        attributes = {
            "http.request.method": rec.method,
            "url.path": redacted,
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
        }
        if rec.query:
            attributes["url.query"] = self.redactor.query(rec.query)[:MAX_ATTRIBUTE_LENGTH]
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes["user_agent.original"] = agent[:256]
        client = environ.get("REMOTE_ADDR")
        if client:
            attributes["client.address"] = client
        if self.static_attributes:
            attributes.update(self.static_attributes)
        return attributes

    @staticmethod
    def adopt(rec: RequestRecord, span: Any) -> None:
        """Remember the span and copy its ids into the record."""
        rec.span = span
        ctx = span.get_span_context()
        if ctx.is_valid:  # ids in range: to_bytes().hex() is format()'s result at half the cost
            rec.trace_id = ctx.trace_id.to_bytes(16, "big").hex()
            rec.span_id = ctx.span_id.to_bytes(8, "big").hex()
            rec.sampled = bool(ctx.trace_flags & 1)

    def annotation(self, rec: RequestRecord) -> dict[str, Any]:
        attributes: dict[str, Any] = {}
        if rec.is_prediction:
            attributes["ml.model.name"] = _utf8(rec.model_name)
            attributes["ml.model.version"] = _utf8(rec.model_version)
            run_id, model_id = lineage(rec.model_name, rec.model_version)
            if run_id:
                attributes["ml.model.run_id"] = run_id
            if model_id:
                attributes["ml.model.id"] = model_id
            if rec.observations:
                attributes.update(_genai_usage(rec))
            if rec.stages:  # as the log line: each stage's sum, and the count of repeated ones
                totals, counts = stage_totals(rec.stages)
                for name, seconds in list(totals.items())[:MAX_TAGS]:
                    attributes["ml.stages_ms." + _utf8(name)] = seconds * 1000.0
                    if name in counts:
                        attributes["ml.stage_counts." + _utf8(name)] = counts[name]
        for key, tag in list(rec.tags.items())[:MAX_TAGS]:
            value = tag
            if self.redactor.is_secret_key(key):
                value = REDACTED
            elif isinstance(tag, str):
                value = _utf8(self.redactor.text(tag[:MAX_ATTRIBUTE_LENGTH]))
            elif not isinstance(tag, (bool, int, float)):
                # a mapping or list keeps its secret fields hidden; str() of anything never raises here
                value = _utf8(self.redactor.text(
                    safe_text(self.redactor.value(tag))[:MAX_ATTRIBUTE_LENGTH]))
            elif type(tag) is int and not -(1 << 63) <= tag < (1 << 63):
                value = safe_text(tag)[:64]  # OTLP carries int64: one big int would drop the batch
            attributes["ml.tag." + _utf8(str(key)[:64])] = value
        return attributes

    def annotate_borrowed(self, rec: RequestRecord) -> None:
        """Set model attributes on a span someone else owns (FlaskInstrumentor)."""
        if rec.span.is_recording():
            rec.span.set_attributes(_fit(self.annotation(rec), _length_limit(rec.span)))

    def finish(self, rec: RequestRecord) -> None:
        span = rec.span
        if span is None or not rec.own_span:
            return
        if span.is_recording():  # an unsampled request pays for no attribute at all
            # one set_attributes call at the end: the SDK locks the span once, not twice
            attributes = self.request_attributes(rec, rec.environ)
            attributes.update(self.annotation(rec))
            code = rec.status_code or 500
            attributes["http.response.status_code"] = code
            if rec.route is not None and rec.route != UNMATCHED_ROUTE:
                attributes["http.route"] = rec.route
                span.update_name(f"{rec.method} {rec.route}")
            if self.mlflow or self.capture_io:
                attributes.update(self.mlflow_attributes(rec, attributes))
            limit = _length_limit(span)
            if code >= 500:
                attributes["error.type"] = rec.error_type or str(code)
                exc = rec.exc
                if exc is not None:
                    message, stack = describe_exception(rec, self.redact)
                    cap = min(limit or MAX_STACK_CHARS, MAX_STACK_CHARS)  # what the span keeps
                    message = _utf8(message[:min(cap, MAX_ATTRIBUTE_LENGTH)])
                    stack = _utf8(stack[-cap:])  # its most recent part (the SDK would cut the tail)
                    span.add_event("exception", {
                        "exception.type": type(exc).__qualname__,
                        "exception.message": message,
                        "exception.stacktrace": stack,
                    })
                    span.set_status(Status(StatusCode.ERROR, message[:256]))
                else:
                    span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(_fit(attributes, limit))
        span.end()

    def stage_span(self, name: str) -> Any:
        name = _utf8(name)
        return self.tracer.start_span(name, attributes={"ml.stage": name})

    @staticmethod
    def stage_event(span: Any, name: str, start_ns: int, seconds: float, exc: Any) -> None:
        """A finished stage as an event on ``span``, stamped at the stage's start: the span's
        own clock plus the stage's offset, so a trace UI puts it where the stage began."""
        if span.is_recording():  # unsampled, or already ended (a stage after the response)
            name = _utf8(name)
            attributes = {"ml.stage": name, "ml.stage.duration_ms": seconds * 1000.0}
            if exc is not None:
                attributes["error.type"] = type(exc).__qualname__
            span.add_event(name, attributes, start_ns)


def link_feedback(span: Any, trace_id: str, span_id: str, result: str | float) -> None:
    """The feedback request's span gets the outcome and a link to the judged prediction's span.

    Linked after the span started (``Span.add_link``, in the SDK since 1.23): the prediction id
    is verified inside the request. No link when the prediction was not sampled.
    """
    if span is None or not span.is_recording():
        return
    if trace_id:
        span.add_link(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True,
                                  trace_flags=TraceFlags(TraceFlags.SAMPLED)))
    if isinstance(result, str):
        span.set_attribute("ml.feedback.outcome", result)
    else:
        span.set_attribute("ml.feedback.absolute_error", float(result))


def _genai_usage(rec: RequestRecord) -> dict[str, Any]:
    """OpenTelemetry GenAI attributes of a request that observed tokens: the sums over its
    ``observe(tokens_in=, tokens_out=)`` calls (values the token counter ignores are ignored
    here too), so a trace UI shows usage beside the metrics."""
    totals = [0, 0]
    seen = False
    for observation in rec.observations:
        for i, value in enumerate(observation[3:5]):
            if number_in(value, 0.0, MAX_OBSERVED):
                totals[i] += int(float(value))
                seen = True
    if not seen:
        return {}
    return {"gen_ai.request.model": _utf8(rec.model_name),
            "gen_ai.usage.input_tokens": totals[0], "gen_ai.usage.output_tokens": totals[1]}


#: the span attributes MLflow also gets as trace tags
_MLFLOW_TAGGED = ("ml.model.name", "ml.model.version", "ml.model.run_id", "ml.model.id")
#: the most recent characters of an exception's stack kept on its span event
MAX_STACK_CHARS = 4000


def _length_limit(span: Any) -> int | None:
    """The span's attribute length limit, from its provider (mlmonitor's own:
    ``MAX_ATTRIBUTE_LENGTH``; None: no limit). The SDK cuts a longer text with a warning on
    stderr, once per attribute (each 5xx's stack did)."""
    limit = getattr(getattr(span, "_limits", None), "max_attribute_length", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def _fit(attributes: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """``attributes`` with each text cut to ``limit`` (redaction can lengthen a cut text)."""
    if limit is not None:
        for key, value in attributes.items():
            if type(value) is str and len(value) > limit:
                attributes[key] = value[:limit]
    return attributes


def _utf8(text: str) -> str:
    r"""Text that encodes as UTF-8: OTLP's protobuf encoder refuses a lone surrogate (from a
    client's JSON ``"\ud800"``) and the whole batch of spans with it."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")

